"""Checkpointing of a training run: write the full training state, and resume from it exactly.

A checkpoint holds the model, its architecture, the clustering, the history and the training state
(optimiser, epoch, RNG streams, the clustering trained against, accumulated gradient similarities),
so a resumed run ends with exactly the weights an uninterrupted one would have.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .cluster import Clustering
from .errors import TrainingError
from .train_config import RESUME_FIXED, TrainConfig

__all__ = ["load_train_state", "save_train_state"]


def load_train_state(path: Path, config: TrainConfig, arch, model: nn.Module, opt, gen) -> Dict[str, Any]:
    ckpt = load_checkpoint(path)
    state = ckpt.get("train_state") or {}
    if "epoch" not in state or "config" not in state:
        raise TrainingError(f"{path} holds no training state and cannot be resumed; train into another --out")
    old, new = state["config"], config.to_dict()
    diff = [k for k in RESUME_FIXED if old.get(k) != new.get(k)]
    if diff:
        was = ", ".join(f"{k}={old.get(k)!r}" for k in diff)
        raise TrainingError(f"cannot resume {path}: it was trained with other settings ({was}); "
                            "use the same settings or another --out")
    if state["epoch"] > config.total_epochs:
        raise TrainingError(f"{path} already has {state['epoch']} epochs, "
                            f"more than the {config.total_epochs} requested")
    if arch is not None and ckpt["arch"] != arch:
        raise TrainingError(f"cannot resume {path}: its architecture {ckpt['arch']} differs from {arch}")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise TrainingError(f"cannot resume {path}: its weights do not fit the model ({first})") from err
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    gen.set_state(state["rng"]["shuffle"])
    if state["rng"].get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return {"epoch": int(state["epoch"]), "history": list(ckpt["history"]), "gradsim": state.get("gradsim"),
            "clustering": Clustering.from_dict(state["train_clustering"]) if state.get("train_clustering") else None}


def save_train_state(path, model, arch, config, history, clustering, train_clustering, opt, gen, epoch, gradsim) -> None:
    rng = {"torch": torch.get_rng_state(), "shuffle": gen.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    train_state = {"epoch": epoch, "config": config.to_dict(), "optimizer": opt.state_dict(), "rng": rng,
                   "train_clustering": train_clustering.to_dict() if train_clustering else None,
                   "gradsim": gradsim.state_dict() if gradsim is not None else None}
    meta = {"producer": "graphinterp.train", "dataset": config.dataset, "k": config.k, "lam": float(config.lam),
            "similarity": config.similarity, "epochs_done": epoch}
    save_checkpoint(path, model, arch=arch, clustering=clustering.to_dict() if clustering else None,
                    history=history, train_state=train_state, meta=meta)
