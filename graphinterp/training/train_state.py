"""Checkpointing of a training run: write the full training state, and resume from it exactly.

A checkpoint holds the model, its architecture, the clustering, the history and the training state
(optimiser, epoch, RNG streams, the clustering trained against, accumulated gradient similarities),
so a resumed run ends with exactly the weights an uninterrupted one would have.

A run is framed, and Ctrl-C reported with what the checkpoint holds, by
:func:`~graphinterp.training.interrupts.training_run` (:mod:`graphinterp.training.interrupts`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from graphinterp.sources.checkpoint import load_checkpoint, save_checkpoint
from graphinterp.clustering.labels import stored_clustering
from graphinterp.common.errors import GraphinterpError, TrainingError
# the run's frame and Ctrl-C, re-exported: their home before the split
from graphinterp.training.interrupts import CheckpointProgress, TrainingInterrupted, held_interrupts, training_run
from graphinterp.training.settings import settings_mismatch, too_many_done
from graphinterp.training.train_config import RESUME_FIXED, TrainConfig

__all__ = ["load_train_state", "save_train_state", "check_history", "TrainingInterrupted", "CheckpointProgress",
           "held_interrupts", "training_run"]

_PHASES = ("warmup", "modular", "train")


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
                     data_sha256: Optional[str] = None, default_layers: Optional[List[str]] = None) -> Dict[str, Any]:
    """The state of the checkpoint ``path``, loaded into ``model``, ``opt`` and ``gen``; refused (TrainingError)
    when the run would continue it wrongly: other settings or architecture, more epochs done than asked for,
    or other training data than ``data_sha256`` (the training set's fingerprint; checkpoints written before
    2026-12-07 hold none and are not checked). ``layers`` left unset means ``default_layers`` (the model's
    default clustered layers), on either side: naming the default layers resumes a run that left them unset."""
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
    saved, now = dict(state["config"]), config.to_dict()
    if default_layers is not None:
        for settings in (saved, now):
            if settings.get("layers") is None:
                settings["layers"] = list(default_layers)
    mismatch = settings_mismatch(path, saved, now, RESUME_FIXED)
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
