"""Ctrl-C, SIGTERM and warnings while a ``graphinterp`` command runs (:func:`command_frame`).

Ctrl-C ends every command with exit code 130 and one line ``error: interrupted; ...`` saying what it
left behind; SIGTERM (``kill``, ``timeout``, a batch scheduler's time limit, ``docker stop``) is handled
the same way, with exit code 143 and ``error: terminated (SIGTERM); ...``: the command's cleanup runs (no
temporary output or lock file is left beside its outputs) where the default action would kill it at once. Python raises the :class:`KeyboardInterrupt` wherever the main thread happens to be,
and in some places it is lost there, so while a command runs :class:`_InterruptGuard` handles SIGINT
instead and delays the exception out of those places (see its docstring). Python warnings are
printed as one line ``warning: <message>``.

Only the outermost command of the main thread switches either on, and only it switches them off: a
command run inside another (or in another thread, e.g. by a test runner) changes nothing.
"""
from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import time
import warnings
from types import FrameType
from typing import Iterator, Optional

__all__ = ["command_frame", "settle_interrupts", "terminated"]

#: The guard of the command now running in the main thread (None between commands).
_ACTIVE: Optional["_InterruptGuard"] = None


@contextlib.contextmanager
def command_frame() -> Iterator[None]:
    """Frame one command: SIGINT handled by an :class:`_InterruptGuard`, warnings on one line."""
    global _ACTIVE
    guard = _InterruptGuard()
    with guard:
        outer = guard._activated
        if outer:
            _ACTIVE = guard
        try:
            with _one_line_warnings(outer):
                yield
        finally:
            if outer:
                _ACTIVE = None


def terminated() -> bool:
    """True when the interrupt of the command now running came from SIGTERM, not Ctrl-C."""
    return _ACTIVE is not None and _ACTIVE.terminated


def settle_interrupts() -> None:
    """Raise a Ctrl-C still held when the command returns (see :meth:`_InterruptGuard.settle`)."""
    if _ACTIVE is not None:
        _ACTIVE.settle()


@contextlib.contextmanager
def _one_line_warnings(active: bool) -> Iterator[None]:
    """Python warnings as one line ``warning: <message>`` while a command runs (not the file, line and source
    line of the code that warned, which mean nothing to a user of the command); only where ``active``."""
    if not active:
        yield
        return
    previous = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        yield
    finally:
        warnings.formatwarning = previous


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {' '.join(str(message).split())}\n"


def _let_pending_handlers_run() -> None:
    """A Python-level call: the interpreter runs signal handlers that are pending at its start."""


class _InterruptGuard:
    """The command's SIGINT handler: a KeyboardInterrupt at once, except where it would be lost.

    Python raises KeyboardInterrupt wherever the main thread is when it handles SIGINT, and two
    kinds of place lose it:

    * an import: C extensions run Python code while they initialise, and not all of them pass an
      exception from it on. ``import torch`` imports numpy from the initialisation of ``torch._C``,
      which drops a KeyboardInterrupt raised there: ``graphinterp train`` then trained to the end.
      Others turn it into ImportError or RecursionError, or abort the process. Commands import while
      they run (the command's module with torch and scipy, then lazily ``torch._dynamo`` and more).
    * a ``__del__`` method or a weakref callback, where Python prints "Exception ignored" and goes on.

    There the interrupt is held until the outermost of those frames has returned (the outermost
    ``import`` has loaded its module): a helper thread, started with the guard and idle until
    then, looks for that frame on the main thread's stack every :attr:`POLL` seconds and, once it
    is gone, sends SIGINT to the main thread again, whose handler raises the KeyboardInterrupt (or
    holds it once more, if the main thread has gone straight into another such place). After
    :attr:`LONGEST` seconds it is raised wherever the main thread is. Only frames below the one
    that entered the guard count. The handler takes no lock that the main thread could hold.
    The guard is entered in the main thread while SIGINT has Python's default handler;
    otherwise it changes nothing.
    """

    POLL = 0.002  #: seconds between two looks at the main thread while an interrupt is held
    LONGEST = 10.0  #: seconds an interrupt is held at most
    _LOSING_MODULES = frozenset({"importlib._bootstrap", "importlib._bootstrap_external", "weakref", "_weakrefset"})

    def __init__(self) -> None:
        self._home: Optional[FrameType] = None  # the frame that entered the guard; None while inactive
        self._activated = False  # this guard switched SIGINT handling on (and only it switches it off)
        self._lock = threading.Lock()  # the poller's look-and-send against __exit__ switching the guard off
        self._previous = None
        self._held_since: Optional[float] = None  # when the held interrupt arrived; None when none is held
        self._outer: Optional[FrameType] = None  # the outermost losing frame the held interrupt waits for
        self._resent = False  # the SIGINT now arriving is the poller's, not another Ctrl-C
        self._wake = threading.Event()  # set by the handler when it holds an interrupt, and on exit
        self._poller: Optional[threading.Thread] = None
        self._previous_term = None  # SIGTERM's handler before the guard (restored on exit); None: not taken over
        self.terminated = False  # the interrupt came from SIGTERM

    def __enter__(self) -> "_InterruptGuard":
        if (self._home is None and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._activated = True
            self._home = sys._getframe(1)
            self._wake.clear()
            self._poller = threading.Thread(target=self._poll, name="graphinterp-interrupt", daemon=True)
            self._poller.start()
            self._previous = signal.signal(signal.SIGINT, self._handle)
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # a handler someone installed is left alone
                self._previous_term = signal.signal(signal.SIGTERM, self._handle_term)
        return self

    def __exit__(self, *exc) -> None:
        if not self._activated:  # entered in another thread, or inside a command that holds the guard
            return
        with self._lock:  # the poller is not between its look and its send
            self._home = None  # the poller stops; a SIGINT it sent is ignored by _handle from now on
        self._wake.set()
        self._poller.join()
        _let_pending_handlers_run()  # the poller's last SIGINT, if any, reaches _handle (ignored), not the next handler
        signal.signal(signal.SIGINT, self._previous)
        if self._previous_term is not None:
            signal.signal(signal.SIGTERM, self._previous_term)
            self._previous_term = None
        self._held_since, self._outer, self._resent, self._poller = None, None, False, None
        self.terminated = False
        self._activated = False

    def settle(self) -> None:
        """Raise an interrupt still held when the command returns (the poller re-sends it within ms)."""
        if not self._activated or threading.current_thread() is not threading.main_thread():
            return
        deadline = time.monotonic() + self.LONGEST
        while self._held_since is not None and time.monotonic() < deadline:
            time.sleep(self.POLL)  # the KeyboardInterrupt is raised here
        if self._held_since is not None:
            self._held_since = self._outer = None
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._home is None:
            return
        if self._held_since is not None and not self._resent and not self._overdue():
            return  # another Ctrl-C while one is held: still one interrupt
        self._resent = False
        outer = self._outermost_losing(frame)
        if outer is not None and not self._overdue():
            if self._held_since is None:
                self._held_since = time.monotonic()
            self._outer = outer
            self._wake.set()
            return
        self._held_since = self._outer = None
        raise KeyboardInterrupt

    def _handle_term(self, signum: int, frame: Optional[FrameType]) -> None:
        """SIGTERM: an interrupt like Ctrl-C's (held where it would be lost), remembered as a termination; a
        second SIGTERM before the command has ended kills at once, as the default action does (a process stuck
        in a C call never reaches a Python handler)."""
        if self._home is None:
            return
        if self.terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.terminated = True
        self._handle(signum, frame)

    def _overdue(self) -> bool:
        held_since = self._held_since
        return held_since is not None and time.monotonic() - held_since >= self.LONGEST

    def _poll(self) -> None:
        """While an interrupt is held, re-send SIGINT to the main thread once the frame it waits for is gone."""
        main = threading.main_thread().ident
        while True:
            self._wake.wait()
            if self._home is None:
                return
            outer = self._outer
            frame = sys._current_frames().get(main)
            while frame is not None and frame is not outer:
                frame = frame.f_back
            if outer is not None and frame is not None and not self._overdue():
                time.sleep(self.POLL)
                continue
            self._wake.clear()  # before the signal: its handler may hold the interrupt again
            with self._lock:
                if self._home is not None and self._held_since is not None:
                    self._resent = True
                    if hasattr(signal, "pthread_kill"):
                        signal.pthread_kill(main, signal.SIGINT)  # a real signal also ends a blocking call
                    else:  # pragma: no cover - Windows
                        _thread.interrupt_main()

    def _outermost_losing(self, frame: Optional[FrameType]) -> Optional[FrameType]:
        """The outermost frame below the guard's in which a KeyboardInterrupt could be lost, or None."""
        outer = None
        while frame is not None and frame is not self._home:
            code = frame.f_code
            if (code.co_name == "__del__" or code.co_filename.startswith("<frozen importlib._bootstrap")
                    or frame.f_globals.get("__name__") in self._LOSING_MODULES):
                outer = frame
            frame = frame.f_back
        return outer
