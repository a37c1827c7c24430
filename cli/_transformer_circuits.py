"""``graphinterp circuits`` on transformer checkpoints: the task data and the extraction (modadd only)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

__all__ = ["TransformerData", "transformer_data", "extract_transformer"]


@dataclass
class TransformerData:
    """The modular-addition examples the circuits are extracted on (what the report prints)."""

    x: Any
    y: Any
    classes: list
    name: str
    scope: str = " in the MLP blocks (attention, embeddings and unembedding kept whole)"

    def __len__(self) -> int:
        return len(self.y)


def _config(path: str, ckpt: Dict[str, Any]):
    from graphinterp import validate_checkpoint
    from graphinterp import DataError
    from graphinterp import TransformerConfig

    ckpt = validate_checkpoint(ckpt)
    saved = (ckpt.get("train_state") or {}).get("config")
    if not saved:
        raise DataError(f"{path} holds no transformer training settings; cannot rebuild its task data")
    config = TransformerConfig.from_dict(saved)
    if config.task != "modadd":
        raise DataError(f"{path} is a transformer trained on {config.task}; circuits support modular-addition "
                        "(modadd) transformers only")
    return config


def transformer_data(path: str, ckpt: Dict[str, Any], other: Optional[str], other_ckpt: Optional[Dict[str, Any]],
                     split: str, limit: Optional[int], seed: int) -> TransformerData:
    """The split of the first model's modular-addition task (both models must share the modulus)."""
    import torch

    from graphinterp import DataError
    from graphinterp import task_data

    config = _config(path, ckpt)
    if other_ckpt is not None:
        cfg_b = _config(other, other_ckpt)
        if cfg_b.p != config.p:
            raise DataError(f"{path} adds mod {config.p} but {other} adds mod {cfg_b.p}; compare models of one task")
    data = task_data(config)
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
    circuits = extract_transformer_circuits(net, data.x, data.y, labels, label_names=data.classes, **kwargs)
    return None, clustering, circuits
