"""A resolved model source: :class:`OpenedModel`, what :func:`graphinterp.graph.load.open_model` returns.

:func:`opened_from_loaded` wraps what a model file held (:class:`~graphinterp.sources.loading.LoadedModel`);
a bare state_dict of a known architecture gets its module there (``_with_known_architecture``), and
``_cpu_state`` is the detached state_dict of a module, which every reader of a source records.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

__all__ = ["OpenedModel", "opened_from_loaded"]


@dataclass
class OpenedModel:
    """A resolved model source.

    Attributes
    ----------
    name : str
    kind : str
        ``module``, ``checkpoint``, ``state_dict``, ``torchscript``, ``safetensors``, ``hf`` or ``torchvision``.
    module : nn.Module or None
        A runnable module when the source has an architecture.
    state_dict : dict
    loaded : LoadedModel or None
        The file's contents (history, stored clustering, meta) for model files.
    notes : list of str
    """

    name: str
    kind: str
    module: Optional[nn.Module]
    state_dict: Dict[str, torch.Tensor]
    loaded: Any = None
    notes: List[str] = field(default_factory=list)
    path: str = ""

    @property
    def clustering(self) -> Optional[dict]:
        """The clustering stored in a graphinterp checkpoint, else None."""
        return getattr(self.loaded, "clustering", None)

    @property
    def history(self) -> list:
        """The training history stored in a graphinterp checkpoint, else empty."""
        return list(getattr(self.loaded, "history", None) or [])


def opened_from_loaded(loaded) -> OpenedModel:
    """Wrap a :class:`~graphinterp.sources.loading.LoadedModel` (what a model file held)."""
    module = loaded.module if loaded.kind != "torchscript" else None
    notes = ["TorchScript cannot be traced: layers read from its parameters"] if loaded.kind == "torchscript" else []
    opened = OpenedModel(Path(loaded.path).stem if loaded.path else "model", loaded.kind, module, loaded.state_dict,
                         loaded, notes, loaded.path)
    return _with_known_architecture(opened) if loaded.kind == "state_dict" else opened


def _with_known_architecture(opened: OpenedModel) -> OpenedModel:
    """Give a bare state_dict its module when its keys and shapes are those of a known architecture.

    Known: the CIFAR ResNets of He et al. (:mod:`graphinterp.sources.cifar_resnet`). The module makes the
    graph a traced DAG (residual streams linked, BatchNorm folded) instead of unlinked layers.
    """
    from graphinterp.sources.cifar_resnet import recognise

    found = recognise(opened.state_dict)
    if found is not None:
        opened.module = found[0]
        opened.notes.append(f"architecture recognised from the state_dict's keys and shapes: {found[1]}")
    return opened


def _cpu_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in module.state_dict().items()}
