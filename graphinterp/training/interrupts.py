"""Ctrl-C during a training run: :func:`training_run` frames it and reports what its checkpoint holds.

:func:`training_run` frames a run and turns a :class:`KeyboardInterrupt` into
:class:`TrainingInterrupted`, which says what the checkpoint holds. Two places must not be cut by
the interrupt, so a Ctrl-C there is held (:func:`held_interrupts`) and raised when they end:
writing a checkpoint together with recording it (:meth:`CheckpointProgress.saving`; otherwise an
interrupt right after the file is renamed into place would report the previous epoch), and switching
subnormal flushing on and off (:func:`graphinterp.common.denormal.flush_denormals` runs Python in a
ctypes callback, and ctypes prints and drops an exception raised there: the Ctrl-C would be lost
and training would go on). The checkpoint itself is written and read by
:mod:`graphinterp.training.train_state`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import ContextManager, Iterator, List, Optional

from graphinterp.common.denormal import flush_denormals
from graphinterp.common.files import check_writable, output_lock

__all__ = ["TrainingInterrupted", "CheckpointProgress", "held_interrupts", "training_run"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by an interrupt (Ctrl-C), saying what its checkpoint holds.

    A :class:`KeyboardInterrupt`, so code that catches that still does; raised by
    :func:`graphinterp.training.train.train` and :func:`graphinterp.training.train_transformer.train_transformer`
    from the interrupt. The checkpoint is written atomically, so it always holds a whole state.
    Each parameter is kept as the attribute of the same name.

    Parameters
    ----------
    checkpoint : str or None
        The checkpoint path, None when none was asked for (or on a rank that does not write it).
    unit : {"epoch", "step"}
        What training counts.
    total : int
        Epochs (steps) the run was to reach.
    saved : int or None
        Epochs (steps) in the checkpoint this run wrote; None when it wrote none.
    resumed_from : int or None
        Epochs (steps) in the checkpoint the run resumed from, which is still there when ``saved``
        is None; None when it did not resume (or was interrupted before reading it).
    existed : bool
        Whether ``checkpoint`` existed when the run started.
    resume : bool
        Whether the run was asked to resume.
    """

    def __init__(self, checkpoint: Optional[str], *, unit: str, total: int, saved: Optional[int],
                 resumed_from: Optional[int], existed: bool, resume: bool) -> None:
        self.checkpoint, self.unit, self.total = checkpoint, unit, total
        self.saved, self.resumed_from, self.existed, self.resume = saved, resumed_from, existed, resume
        super().__init__(f"training interrupted; {self.describe('train again with resume=True to continue')}")

    @property
    def resumable(self) -> bool:
        """Whether the checkpoint holds a state that resuming continues."""
        return self.checkpoint is not None and (self.saved is not None or self.resumed_from is not None
                                                or (self.existed and self.resume))

    def describe(self, how_to_resume: str) -> str:
        """What the checkpoint holds and, when it can be resumed, ``how_to_resume``; one sentence.

        Parameters
        ----------
        how_to_resume : str
            The hint appended when resuming continues the run (e.g. ``"rerun with --resume"``).

        Returns
        -------
        str

        Examples
        --------
        >>> TrainingInterrupted("m.pt", unit="epoch", total=11, saved=3, resumed_from=None, existed=False,
        ...                     resume=False).describe("rerun with --resume")
        'm.pt holds the training state after epoch 3 of 11; rerun with --resume'
        """
        path, unit = self.checkpoint, self.unit
        if path is None:
            return "this process writes no checkpoint, so nothing was saved"
        if self.saved is not None:
            return f"{path} holds the training state after {unit} {self.saved} of {self.total}; {how_to_resume}"
        if self.resumed_from is not None:
            return (f"no {unit} finished since resuming; {path} is unchanged and holds the training state after "
                    f"{unit} {self.resumed_from} of {self.total}; {how_to_resume}")
        if self.existed:
            return f"nothing was written; {path} is unchanged" + (f"; {how_to_resume}" if self.resume else "")
        return f"no checkpoint had been written to {path} yet; run again to start over"


class CheckpointProgress:
    """What a training run has saved so far, to raise :class:`TrainingInterrupted` from an interrupt.

    Parameters
    ----------
    checkpoint : path or None
        The run's checkpoint (None where this process writes none).
    unit : {"epoch", "step"}
    total : int
    resume : bool
    """

    def __init__(self, checkpoint, *, unit: str, total: int, resume: bool) -> None:
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.unit, self.total, self.resume = unit, total, resume
        self.existed = self.checkpoint is not None and os.path.exists(self.checkpoint)
        self.saved: Optional[int] = None
        self.resumed_from: Optional[int] = None

    def interrupted(self) -> TrainingInterrupted:
        """The exception to raise from the interrupt."""
        return TrainingInterrupted(self.checkpoint, unit=self.unit, total=self.total, saved=self.saved,
                                   resumed_from=self.resumed_from, existed=self.existed, resume=self.resume)

    @contextlib.contextmanager
    def saving(self, count: int) -> Iterator[None]:
        """Write the checkpoint after ``count`` epochs (steps) in the block; ``saved`` becomes ``count`` after it.

        A Ctrl-C during the block is held until the checkpoint is written and recorded, so what
        :meth:`interrupted` reports is what the file holds.
        """
        with held_interrupts():
            yield
            self.saved = count


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) for the block and deliver it when the block ends; never lose it.

    Within the block a SIGINT is only recorded; afterwards the previous handler is restored and
    the signal raised again, so it acts as it would have (a :class:`KeyboardInterrupt` with
    Python's handler, nothing when SIGINT is ignored). When the block ends with an exception the
    held interrupt still follows it, unless that exception is itself a ``KeyboardInterrupt``. Only
    the main thread handles signals: elsewhere, or where Python does not own the SIGINT handler,
    the block runs unchanged.

    Examples
    --------
    >>> import signal
    >>> try:
    ...     with held_interrupts():
    ...         signal.raise_signal(signal.SIGINT)
    ...         print("the block ends first")
    ... except KeyboardInterrupt:
    ...     print("then the interrupt")
    the block ends first
    then the interrupt
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    held: List[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    except KeyboardInterrupt:
        held.clear()  # one is on its way already
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)


def _enter_held(stack: contextlib.ExitStack, cm: ContextManager) -> None:
    """Enter ``cm`` on ``stack``, holding Ctrl-C while it is entered and while it is left."""
    def leave(exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            return cm.__exit__(exc_type, exc, tb)  # interrupted already: a second Ctrl-C changes nothing
        with held_interrupts():
            return cm.__exit__(exc_type, exc, tb)

    with held_interrupts():  # a Ctrl-C held here is raised after ``leave`` is on the stack
        cm.__enter__()
        stack.push(leave)


@contextlib.contextmanager
def training_run(progress: CheckpointProgress) -> Iterator[None]:
    """Frame one training run: its checkpoint checked and locked, subnormals flushed, Ctrl-C reported.

    ``progress.checkpoint`` (None where this process writes none) is checked to be writable and
    locked for the block (:func:`graphinterp.common.files.output_lock`); subnormal floats are
    flushed to zero (:func:`graphinterp.common.denormal.flush_denormals`); a
    :class:`KeyboardInterrupt` anywhere in the frame, setting up and tearing down included, leaves
    it as ``progress.interrupted()``. Set ``progress.saved`` through :meth:`CheckpointProgress.saving`.
    """
    try:
        with contextlib.ExitStack() as stack:
            if progress.checkpoint is not None:
                check_writable(progress.checkpoint)
                _enter_held(stack, output_lock(progress.checkpoint))
            _enter_held(stack, flush_denormals())  # its ctypes callback would swallow a KeyboardInterrupt
            yield
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt as err:
        raise progress.interrupted() from err
