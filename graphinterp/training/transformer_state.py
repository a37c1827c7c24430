"""Checkpoints of transformer training: write the run's state, and check and load it to resume.

:func:`graphinterp.training.train_transformer.train_transformer` saves every evaluation step with
:func:`save_state` and resumes with :func:`resume_state`, which refuses a checkpoint the run would
continue wrongly. :func:`check_vocabulary` checks that a character LM's text is the one it was trained on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

from graphinterp.clustering.labels import stored_clustering
from graphinterp.common.errors import DataError, GraphinterpError, TrainingError
from graphinterp.sources.checkpoint import load_checkpoint, save_checkpoint
from graphinterp.training.settings import settings_mismatch, too_many_done
from graphinterp.training.train_state import without_refit
from graphinterp.training.transformer_config import TransformerConfig

__all__ = ["check_vocabulary", "save_state", "resume_state"]


def check_vocabulary(ckpt: Dict[str, Any], corpus, path: str) -> None:
    size = ckpt["arch"].get("kwargs", {}).get("vocab")
    stored = (ckpt.get("meta") or {}).get("vocabulary")
    text = "".join(corpus.chars)
    if (size is not None and size != corpus.vocab) or (stored is not None and stored != text):
        extra = sorted(set(text) - set(stored or text))
        missing = sorted(set(stored or "") - set(text))
        detail = "".join(f"; {what}: {''.join(chars)!r}" for what, chars in
                         (("characters the model never saw", extra), ("characters of its training text missing", missing))
                         if chars)
        trained = size if size is not None else len(stored)
        how = (f"{corpus.vocab} distinct characters but {path} was trained on {trained}" if trained != corpus.vocab
               else f"{corpus.vocab} distinct characters, as many as {path} was trained on, but not the same ones")
        raise DataError(f"corpus {corpus.path} has {how}{detail}; pass its training text with --corpus")


def save_state(path, model, arch, config, history, clustering, opt, gen, step, gradsim, trained=None, data=None) -> None:
    state = {"step": step, "optimizer": opt.state_dict(), "generator": gen.get_state(),
             "torch_rng": torch.get_rng_state(), "config": config.to_dict(),
             "train_clustering": (trained or clustering).to_dict() if (trained or clustering) else None,
             "gradsim": gradsim.state_dict() if gradsim is not None else None}
    save_checkpoint(path, model, arch=arch, clustering=clustering.to_dict() if clustering else None,
                    history=history, train_state=state, meta=_meta(data))


def _meta(data) -> Dict[str, Any]:
    """The checkpoint's meta: the trainer, and a character LM's vocabulary (checked by :func:`checkpoint_task_data`)."""
    meta = {"trainer": "graphinterp.training.train_transformer"}
    if data is not None and "corpus" in data:
        meta["vocabulary"] = "".join(data["corpus"].chars)
        meta["corpus_sha256"] = data["corpus"].fingerprint
    return meta


def resume_state(path, config: TransformerConfig, arch, model, opt, gen, gradsim, data):
    """Load the state of ``path`` into the run; refused when the run would continue it wrongly: other settings
    or architecture, more steps done than asked for (it would be returned as if it were the shorter run), or a
    character LM's text with other characters (ids would silently mean other characters)."""
    if not Path(path).exists():
        return 0, [], None
    try:
        ckpt = load_checkpoint(path)
        state = ckpt["train_state"] or {}
        if "epoch" in state and "step" not in state:  # an MLP's or CNN's run counts epochs
            dataset = (state.get("config") or {}).get("dataset") if isinstance(state.get("config"), dict) else None
            raise TrainingError(f"{path} is a checkpoint of an MLP or CNN trained in epochs"
                                f"{f' on {dataset}' if dataset else ''}, not a {config.task} transformer; resume it "
                                f"with --dataset {dataset or 'its dataset'}, or train into another --out")
        saved = state.get("config") or {}
        if isinstance(saved, dict) and "clusters" not in saved:  # written before 2026-12-08: BSGC was the only way
            saved = {**saved, "clusters": "bsgc"}
        mismatch = settings_mismatch(path, saved, config.to_dict(), config.resume_fixed())
        if mismatch:
            raise TrainingError(mismatch)
        if ckpt["arch"] != arch:
            raise TrainingError(f"cannot resume {path}: it holds another architecture")
        if int(state["step"]) > config.warmup_steps + config.steps:
            raise TrainingError(too_many_done(path, int(state["step"]), "step", "warmup_steps", "steps", config))
        if config.task == "chars":
            try:
                check_vocabulary(ckpt, data["corpus"], str(path))
            except DataError as err:
                raise TrainingError(f"cannot resume {path}: {err}") from None
            stored = (ckpt.get("meta") or {}).get("corpus_sha256")
            if stored is not None and stored != data["corpus"].fingerprint:  # same characters, another text
                raise TrainingError(f"cannot resume {path}: it was trained on another text than {data['corpus'].path} "
                                    "(same characters, other content); pass its training text with --corpus")
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if gradsim is not None and state.get("gradsim") is not None:
            gradsim.load_state_dict(state["gradsim"])
        trained = state.get("train_clustering")
        return int(state["step"]), without_refit(list(ckpt["history"])), stored_clustering(trained)
    except GraphinterpError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise TrainingError(f"cannot resume {path}: it is not a transformer training checkpoint ({err})") from None
