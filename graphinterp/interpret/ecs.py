"""Effective circuit size (ECS): how much of a model's weights a circuit keeps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping

import torch

from graphinterp.interpret.edges import EdgeLayer

__all__ = ["CircuitSize", "circuit_size"]


@dataclass
class CircuitSize:
    """Effective circuit size: kept non-zero weights over the model's non-zero weights.

    ``ecs = kept_params / total_params`` (the paper's "fraction of non-zero weights"),
    ``ecs_edges = kept_edges / total_edges`` counts a conv kernel as one edge; both also per layer.
    """

    ecs: float
    ecs_edges: float
    ecs_per_layer: Dict[str, float]
    ecs_edges_per_layer: Dict[str, float]
    kept_params: int
    total_params: int
    kept_edges: int
    total_edges: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def circuit_size(layers: List[EdgeLayer], masks: Mapping[str, torch.Tensor]) -> CircuitSize:
    """ECS of ``masks`` (a layer without a mask is kept whole).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from graphinterp.interpret.edges import edge_layers
    >>> model = nn.Sequential(nn.Linear(2, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 3.0]]))
    >>> size = circuit_size(edge_layers(model), {"0": torch.tensor([[True, True], [False, True]])})
    >>> size.kept_params, size.total_params, round(size.ecs, 3)
    (2, 3, 0.667)
    """
    per, per_edges = {}, {}
    kp = tp = ke = te = 0
    for layer in layers:
        m = masks.get(layer.name)
        m = torch.ones_like(layer.live) if m is None else m.to(layer.live.device)
        lp, lt = int(layer.params[m].sum()), int(layer.params.sum())
        le, lte = int((layer.live & m).sum()), int(layer.live.sum())
        per[layer.name] = lp / lt if lt else 0.0
        per_edges[layer.name] = le / lte if lte else 0.0
        kp, tp, ke, te = kp + lp, tp + lt, ke + le, te + lte
    return CircuitSize(kp / tp if tp else 0.0, ke / te if te else 0.0, per, per_edges, kp, tp, ke, te)
