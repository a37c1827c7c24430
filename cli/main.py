"""Entry point of the ``graphinterp`` command: a click group whose commands load lazily.

Ctrl-C ends every command with exit code 130 and one line ``error: interrupted; ...`` saying what it
left behind. Python raises the :class:`KeyboardInterrupt` wherever the main thread happens to be,
and in some places it is lost there, so while a command runs :class:`_InterruptGuard` handles SIGINT
instead and delays the exception out of those places (see its docstring).
"""
from __future__ import annotations

import _thread
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
import warnings
from types import FrameType
from typing import Iterator, List, Optional

import click

from graphinterp import GraphinterpError
from graphinterp.cli._paths import interrupted_message

__all__ = ["cli", "main"]

# command name -> (module under graphinterp.cli defining ``command``, one-line help)
COMMANDS = {
    "analyze": ("analyze", "Cluster each layer with BSGC and report clusterability E per layer."),
    "export": ("export", "Write the clustered layered graph to GraphML (Gephi, Cytoscape, networkx)."),
    "train": ("train", "Train a model for modularity: cross-entropy + lambda * enmeshment loss."),
    "ablate": ("ablate", "Class-wise accuracy with each cluster switched ON and OFF."),
    "circuits": ("circuits", "Extract per-label circuits by edge pruning; Effective Circuit Size."),
    "benchmark": ("benchmark", "Clusterability of many models against k, with a shuffle significance test."),
    "plot": ("plot", "Figures, e.g. a clustered layer drawn as a bipartite graph."),
}


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
        self._previous = None
        self._held_since: Optional[float] = None  # when the held interrupt arrived; None when none is held
        self._outer: Optional[FrameType] = None  # the outermost losing frame the held interrupt waits for
        self._resent = False  # the SIGINT now arriving is the poller's, not another Ctrl-C
        self._wake = threading.Event()  # set by the handler when it holds an interrupt, and on exit
        self._poller: Optional[threading.Thread] = None

    def __enter__(self) -> "_InterruptGuard":
        if (self._home is None and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._home = sys._getframe(1)
            self._wake.clear()
            self._poller = threading.Thread(target=self._poll, name="graphinterp-interrupt", daemon=True)
            self._poller.start()
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._home is None:
            return
        self._home = None  # the poller stops; a SIGINT it has just sent is ignored while it is joined
        self._wake.set()
        self._poller.join()
        signal.signal(signal.SIGINT, self._previous)
        self._held_since, self._outer, self._resent, self._poller = None, None, False, None

    def settle(self) -> None:
        """Raise an interrupt still held when the command returns (the poller re-sends it within ms)."""
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


_INTERRUPTS = _InterruptGuard()


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Python warnings as one line ``warning: <message>`` while a command runs (not the file, line and source
    line of the code that warned, which mean nothing to a user of the command)."""
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = previous


class _LazyGroup(click.Group):
    """Import each command's module only when it is used (keeps ``--help`` and startup fast)."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"graphinterp.cli.{COMMANDS[name][0]}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])

    def invoke(self, ctx: click.Context):
        try:
            rv = super().invoke(ctx)
            _INTERRUPTS.settle()  # a Ctrl-C held during the command's last import is not lost
            return rv
        except GraphinterpError as err:
            _fail(str(err), 1)
        except MemoryError:
            _fail("out of memory; use a smaller input, fewer values or a smaller --batch-size", 1)
        except BrokenPipeError:  # the reader of the output has gone (`... | head`): stop as quietly as a shell tool
            _close_stdout()
            sys.exit(141)  # 128 + SIGPIPE, as a shell reports a pipeline's writer killed by it
        except OSError as err:  # a file that vanished or cannot be read/written outside our checks
            where = f": {err.filename}" if getattr(err, "filename", None) else ""
            _fail(f"{(err.strerror or str(err) or type(err).__name__)}{where}", 1)
        except KeyboardInterrupt:  # what the command left behind: its own note (train), else its outputs
            _fail(interrupted_message(ctx), 130)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Like click's, but a usage error is one ``error: ...`` line on stderr (exit code 2), and Ctrl-C
        is handled by :class:`_InterruptGuard` while the command runs."""
        with _INTERRUPTS, _one_line_warnings():
            return self._main(args, prog_name, complete_var, standalone_mode, **extra)

    def _main(self, args, prog_name, complete_var, standalone_mode, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as err:  # pragma: no cover - returned, not raised, by click 8
            sys.exit(err.exit_code)
        except click.ClickException as err:
            if type(err).__name__ == "NoArgsIsHelpError" and err.ctx is not None:  # click >= 8.2: bare group
                click.echo(err.ctx.get_help())
                sys.exit(err.exit_code)
            hint = ""
            if isinstance(err, click.UsageError) and err.ctx is not None:
                hint = f" (see '{err.ctx.command_path} --help')"
            _fail(f"{err.format_message()}{hint}", err.exit_code)
        except click.Abort as err:
            if isinstance(err.__cause__, KeyboardInterrupt):  # Ctrl-C while click parsed the arguments
                _fail(interrupted_message(None), 130)
            _fail("aborted", 1)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


def _close_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (e.g. click's test runner): nothing to flush
        pass


def _fail(message: str, code: int):
    """Print ``error: <message>`` as one line on stderr and exit with ``code``."""
    text = " ".join(str(message).split()) or "failed"
    click.echo(f"error: {text}", err=True)
    sys.exit(code)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="graphinterp")
def cli() -> None:
    """graphinterp: neural networks as layered graphs.

    Cluster layers with bipartite spectral graph clustering (BSGC), measure clusterability,
    train modular models with the enmeshment loss, ablate clusters and extract per-label circuits.
    Run `graphinterp COMMAND --help` for each command.
    """


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="graphinterp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
