"""Checkpointing of a training run: write the full training state, and resume from it exactly.

A checkpoint holds the model, its architecture, the clustering, the history and the training state
(optimiser, epoch, RNG streams, the clustering trained against, accumulated gradient similarities),
so a resumed run ends with exactly the weights an uninterrupted one would have.

Ctrl-C: :func:`training_run` frames a run and turns a :class:`KeyboardInterrupt` into
:class:`TrainingInterrupted`, which says what the checkpoint holds. Two places must not be cut by
the interrupt, so a Ctrl-C there is held (:func:`held_interrupts`) and raised when they end:
writing a checkpoint together with recording it (:meth:`CheckpointProgress.saving`; otherwise an
interrupt right after the file is renamed into place would report the previous epoch), and switching
subnormal flushing on and off (:func:`graphinterp.common.denormal.flush_denormals` runs Python in a
ctypes callback, and ctypes prints and drops an exception raised there: the Ctrl-C would be lost
and training would go on).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterator, List, Optional

import torch
from torch import nn

from graphinterp.sources.checkpoint import load_checkpoint, save_checkpoint
from graphinterp.clustering.labels import stored_clustering
from graphinterp.common.denormal import flush_denormals
from graphinterp.common.errors import GraphinterpError, TrainingError
from graphinterp.common.files import check_writable, output_lock
from graphinterp.training.train_config import RESUME_FIXED, TrainConfig, settings_mismatch, too_many_done

__all__ = ["load_train_state", "save_train_state", "check_history", "TrainingInterrupted", "CheckpointProgress",
           "held_interrupts", "training_run"]

_PHASES = ("warmup", "modular", "train")


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


def check_history(history: Any, epochs: int, path) -> List[Dict[str, Any]]:
    """Raise :class:`TrainingError` unless ``history`` is the per-epoch table of ``epochs`` finished epochs.

    Each row is a dict with ``epoch`` (1, 2, ...), ``phase`` (warmup, modular or train) and finite
    numbers for ``loss``, ``ce``, ``test_acc`` and ``time``; ``l_e``, ``E``, ``lam``, ``E_refit`` and
    their baselines (``E_random``, ``score``, ``E_random_refit``, ``score_refit``; absent in older
    checkpoints) are finite numbers or None, ``E_layers`` a dict of numbers or None.
    """
    def bad(why: str):
        raise TrainingError(f"cannot resume {path}: its history is malformed ({why}); train into another --out")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not isinstance(history, list):
        bad(f"a {type(history).__name__}, not a list of epochs")
    if len(history) != epochs:
        bad(f"{len(history)} rows for {epochs} finished epochs")
    for i, row in enumerate(history, start=1):
        if not isinstance(row, dict):
            bad(f"row {i} is a {type(row).__name__}, not a dict")
        if row.get("epoch") != i or isinstance(row.get("epoch"), bool):
            bad(f"row {i} has epoch {row.get('epoch')!r}")
        if row.get("phase") not in _PHASES:
            bad(f"row {i} has phase {row.get('phase')!r}")
        for key in ("loss", "ce", "test_acc", "time"):
            if not number(row.get(key)):
                bad(f"row {i} has {key}={row.get(key)!r}")
        for key in ("l_e", "E", "lam", "E_refit", "E_random", "score", "E_random_refit", "score_refit"):
            if row.get(key) is not None and not number(row[key]):
                bad(f"row {i} has {key}={row[key]!r}")
        layers = row.get("E_layers")
        if layers is not None and not (isinstance(layers, dict) and all(
                isinstance(k, str) and number(v) for k, v in layers.items())):
            bad(f"row {i} has E_layers={layers!r}")
    return [dict(row) for row in history]


def without_refit(history: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """``history`` for a resumed run: the baseline's ``*_refit`` scores belong to the end of the run that wrote
    them, so they leave its last row (a resumed run records its own when it ends; an uninterrupted run has
    none at that epoch).

    Examples
    --------
    >>> without_refit([{"E": 0.3}, {"E": 0.4, "E_refit": 0.5, "score_refit": 0.1}])
    [{'E': 0.3}, {'E': 0.4}]
    """
    if not history:
        return history
    last = {key: value for key, value in history[-1].items() if not key.endswith("_refit")}
    return [*history[:-1], last]


def load_train_state(path: Path, config: TrainConfig, arch, model: nn.Module, opt, gen,
                     data_sha256: Optional[str] = None) -> Dict[str, Any]:
    """The state of the checkpoint ``path``, loaded into ``model``, ``opt`` and ``gen``; refused (TrainingError)
    when the run would continue it wrongly: other settings or architecture, more epochs done than asked for,
    or other training data than ``data_sha256`` (the training set's fingerprint; checkpoints written before
    2026-12-07 hold none and are not checked)."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("train_state") or {}
    if "step" in state and "epoch" not in state:  # a transformer's run counts steps
        task = (state.get("config") or {}).get("task") if isinstance(state.get("config"), dict) else None
        raise TrainingError(f"{path} is a transformer checkpoint (trained in steps{f' on {task}' if task else ''}), "
                            f"not a {config.dataset} one; resume it with --dataset {task or 'modadd or chars'}, or "
                            "train into another --out")
    if "epoch" not in state or "config" not in state:
        raise TrainingError(f"{path} holds no training state and cannot be resumed; train into another --out")
    if not isinstance(state["config"], dict):
        raise TrainingError(f"cannot resume {path}: its training settings are damaged; train into another --out")
    mismatch = settings_mismatch(path, state["config"], config.to_dict(), RESUME_FIXED)
    if mismatch:
        raise TrainingError(mismatch)
    if isinstance(state["epoch"], int) and state["epoch"] > config.total_epochs:
        raise TrainingError(too_many_done(path, state["epoch"], "epoch", "warmup_epochs", "epochs", config))
    if arch is not None and ckpt["arch"] != arch:
        raise TrainingError(f"cannot resume {path}: its architecture {ckpt['arch']} differs from {arch}")
    stored = (ckpt.get("meta") or {}).get("data_sha256")
    if data_sha256 is not None and stored is not None and stored != data_sha256:
        raise TrainingError(f"cannot resume {path}: it was trained on other examples than this run's training set "
                            f"(fingerprint {stored}, now {data_sha256}); train on the same examples or into another "
                            "--out")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise TrainingError(f"cannot resume {path}: its weights do not fit the model ({first})") from err
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise TrainingError(f"cannot resume {path}: its training state has epoch {epoch!r}; train into another --out")
    history = without_refit(check_history(ckpt["history"], epoch, path))
    try:
        clustering = stored_clustering(state.get("train_clustering"))
    except GraphinterpError as err:
        raise TrainingError(f"cannot resume {path}: {err}") from None
    try:
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        gen.set_state(state["rng"]["shuffle"])
        if state["rng"].get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise TrainingError(f"cannot resume {path}: its optimiser or random state is damaged ({first}); "
                            "train into another --out") from None
    return {"epoch": epoch, "history": history, "gradsim": state.get("gradsim"), "clustering": clustering}


def save_train_state(path, model, *, arch, config, history, clustering, train_clustering, opt, gen, epoch: int,
                     gradsim, data_sha256: Optional[str] = None) -> None:
    """Write the checkpoint of a training run after ``epoch`` epochs (atomically, see
    :func:`graphinterp.sources.checkpoint.save_checkpoint`): the model and its ``arch``, the
    ``clustering`` to report (the refit one after a baseline's last epoch), the ``history``, and what
    resuming needs: the ``config``, the clustering the loss was trained with (``train_clustering``),
    the optimiser ``opt``, the random streams (torch's and the shuffle generator ``gen``) and the
    gradient-similarity accumulator ``gradsim`` (or None), and the training set's fingerprint ``data_sha256``
    (:attr:`graphinterp.data.datasets.LabeledTensors.fingerprint`). Everything after ``model`` is keyword-only."""
    rng = {"torch": torch.get_rng_state(), "shuffle": gen.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    train_state = {"epoch": epoch, "config": config.to_dict(), "optimizer": opt.state_dict(), "rng": rng,
                   "train_clustering": train_clustering.to_dict() if train_clustering else None,
                   "gradsim": gradsim.state_dict() if gradsim is not None else None}
    meta = {"producer": "graphinterp.training.train", "dataset": config.dataset, "k": config.k, "lam": float(config.lam),
            "similarity": config.similarity, "epochs_done": epoch}
    if data_sha256 is not None:
        meta["data_sha256"] = data_sha256
    save_checkpoint(path, model, arch=arch, clustering=clustering.to_dict() if clustering else None,
                    history=history, train_state=train_state, meta=meta)
