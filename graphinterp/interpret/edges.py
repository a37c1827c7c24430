"""A model's weight layers as edges: :class:`EdgeLayer`, and the flat views the circuit search works on.

An *edge* of the layered graph is one weight of a Linear layer, or one whole kernel (in-channel
``i`` to out-channel ``j``) of a Conv2d. A *mask* is a boolean tensor of shape ``(out, in)`` per
layer (torch layout without the kernel dimensions); pruning an edge zeroes its weight or kernel
(:meth:`EdgeLayer.masked`; in a model, through :func:`graphinterp.interpret.interventions.interventions`).
Biases are not edges: they are kept, and not counted in the ECS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import torch
from torch import nn

from graphinterp.common.errors import DataError, UnsupportedModelError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.interventions import module_of, tied_edges_message

__all__ = ["EdgeLayer", "edge_layers", "flat_masks", "flat_live", "flat_scores"]


@dataclass(eq=False)
class EdgeLayer:
    """One weight layer seen as edges: its module, original weight and which edges exist.

    Built by :func:`edge_layers`; the circuit search prunes its ``live`` edges and sizes circuits by ``params``.

    Attributes
    ----------
    name : str
    key : str
        Parameter name for ``functional_call`` (``"fc1.weight"``).
    weight : Tensor
        Original weight in torch layout (a detached copy).
    live : BoolTensor of shape (out, in)
        Edges with at least one non-zero parameter; only these can be pruned.
    params : LongTensor of shape (out, in)
        Number of non-zero parameters behind each edge (1 or 0 for Linear, up to kh*kw for Conv2d).
    """

    name: str
    key: str
    weight: torch.Tensor
    live: torch.Tensor
    params: torch.Tensor

    @property
    def is_conv(self) -> bool:
        return self.weight.dim() == 4

    def expand(self, mask: torch.Tensor) -> torch.Tensor:
        """Broadcast an ``(out, in)`` edge mask to the weight's shape."""
        return mask[..., None, None] if self.is_conv else mask

    def masked(self, mask: torch.Tensor) -> torch.Tensor:
        """The weight with pruned edges zeroed."""
        return self.weight * self.expand(mask).to(self.weight.dtype)


def edge_layers(model: nn.Module, graph: Optional[LayeredGraph] = None, *, device=None) -> List[EdgeLayer]:
    """The model's Linear/Conv2d layers in forward order, with copies of their weights on ``device``."""
    graph = graph if graph is not None else LayeredGraph.from_module(model)
    out, seen = [], {}
    for layer in graph.layers:
        mod, key = module_of(model, graph, layer.name)
        first = seen.setdefault(id(mod.weight), layer.name)
        if first != layer.name:
            raise UnsupportedModelError(tied_edges_message(first, layer.name))
        w = mod.weight.detach().to(device if device is not None else mod.weight.device).clone()
        nz = w != 0
        params = nz.flatten(2).sum(-1) if w.dim() == 4 else nz.long()
        if w.dim() == 4 and mod.groups != 1:
            raise DataError(f"layer {layer.name!r} is a grouped convolution; circuit extraction needs dense Conv2d layers")
        out.append(EdgeLayer(layer.name, f"{key}weight", w, params > 0, params))
    return out


def flat_masks(layers: List[EdgeLayer], flat: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-layer ``(out, in)`` views into one flat boolean tensor (edits to ``flat`` show through)."""
    out, offset = {}, 0
    for layer in layers:
        n = layer.live.numel()
        out[layer.name] = flat[offset:offset + n].view_as(layer.live)
        offset += n
    return out


def flat_live(layers: List[EdgeLayer]) -> torch.Tensor:
    return torch.cat([layer.live.flatten() for layer in layers])


def flat_scores(scores: Mapping[str, torch.Tensor], layers: List[EdgeLayer]) -> torch.Tensor:
    return torch.cat([scores[layer.name].detach().flatten().to(torch.float64) for layer in layers])
