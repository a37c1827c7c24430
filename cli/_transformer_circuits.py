"""``graphinterp circuits`` on transformer checkpoints: the task data and the extraction.

Modular addition: the split's pairs, a label is an answer. Character LM: windows of the split's text
(every position, a seeded subset of ``--limit`` windows, default :data:`CHAR_WINDOWS`), a label is the
character after the window; ``--labels all`` takes the characters that occur as such.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

__all__ = ["TransformerData", "transformer_data", "extract_transformer", "CHAR_WINDOWS"]

#: Windows of a character LM's split that its circuits are extracted on, unless --limit says otherwise.
CHAR_WINDOWS = 20000


@dataclass
class TransformerData:
    """The examples the circuits are extracted on (what the report prints)."""

    x: Any
    y: Any
    classes: list
    name: str
    scope: str = " in the MLP blocks (attention, embeddings and unembedding kept whole)"
    present: Optional[list] = None  # labels with at least one example (a character LM's "all")

    def __len__(self) -> int:
        return len(self.y)


def _config(path: str, ckpt: Dict[str, Any], corpus: Optional[str] = None):
    from graphinterp import validate_checkpoint
    from graphinterp import DataError
    from graphinterp import TransformerConfig

    ckpt = validate_checkpoint(ckpt)
    saved = (ckpt.get("train_state") or {}).get("config")
    if not saved:
        raise DataError(f"{path} holds no transformer training settings; cannot rebuild its task data")
    config = TransformerConfig.from_dict({**saved, **({"corpus": corpus} if corpus else {})})
    if corpus and config.task != "chars":
        raise DataError(f"--corpus applies to transformers trained on chars; {path} was trained on {config.task}")
    return config


def transformer_data(path: str, ckpt: Dict[str, Any], other: Optional[str], other_ckpt: Optional[Dict[str, Any]],
                     split: str, limit: Optional[int], seed: int, corpus: Optional[str] = None) -> TransformerData:
    """The split of the first model's task (both models must share the task: the modulus, or the vocabulary)."""
    import torch

    from graphinterp import DataError
    from graphinterp import checkpoint_task_data

    config = _config(path, ckpt, corpus)
    if other_ckpt is not None:
        cfg_b = _config(other, other_ckpt, corpus)
        if cfg_b.task != config.task:
            raise DataError(f"{path} was trained on {config.task} but {other} on {cfg_b.task}; compare models of one task")
        if config.task == "modadd" and cfg_b.p != config.p:
            raise DataError(f"{path} adds mod {config.p} but {other} adds mod {cfg_b.p}; compare models of one task")
    data = checkpoint_task_data(ckpt, config, path, [(other_ckpt, other)] if other_ckpt is not None else [])
    if config.task == "chars":
        return _char_data(config, data, split, limit, seed)
    part = data["test" if split == "test" else "train"]
    x, y = part.x, part.y
    if limit is not None and limit < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        x, y = x[idx], y[idx]
    return TransformerData(x, y, list(data["classes"]), part.name)


def extract_transformer(path: str, ckpt: Dict[str, Any], data: TransformerData, labels, kwargs: Dict[str, Any]):
    """``(None, clustering or None, circuits)`` of one transformer checkpoint."""
    from graphinterp import stored_clustering
    from graphinterp import build_model
    from graphinterp import extract_transformer_circuits

    net = build_model(ckpt["arch"])
    net.load_state_dict(ckpt["state_dict"])
    clustering = stored_clustering(ckpt.get("clustering"))
    if labels == "all" and data.present is not None:
        labels = data.present
    circuits = extract_transformer_circuits(net, data.x, data.y, labels, label_names=data.classes, **kwargs)
    return None, clustering, circuits


def _char_data(config, data, split, limit, seed) -> TransformerData:
    """Next-character windows of a character LM's split (``test`` reads the validation text)."""
    corpus = data["corpus"]  # its vocabulary was checked against both models by checkpoint_task_data
    part = corpus.next_char_windows(config.n_ctx, "val" if split == "test" else "train",
                                    limit=CHAR_WINDOWS if limit is None else limit, seed=seed)
    present = sorted(set(part.y.tolist()))
    names = [c if c.isprintable() and not c.isspace() else repr(c) for c in corpus.chars]  # ' ' and '\n' visible
    return TransformerData(part.x, part.y, names, f"{part.name} of {corpus.path}", present=present)
