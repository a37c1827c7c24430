"""Edge scores for the circuit search: which edges to try to prune first (lowest score first)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from graphinterp.interpret.edges import EdgeLayer

__all__ = ["ScoreContext", "magnitude_score", "attribution_score", "SCORES"]


@dataclass
class ScoreContext:
    """What a score function sees: the edge layers, the current masks, and lazily the gradients.

    ``gradients()`` returns, per layer, the gradient of the task loss with respect to the masked
    weight at the current masks (computed once per context).
    """

    layers: List[EdgeLayer]
    masks: Dict[str, torch.Tensor]
    grad_fn: Optional[Callable[[], Dict[str, torch.Tensor]]] = None
    _grads: Optional[Dict[str, torch.Tensor]] = field(default=None, repr=False)

    def gradients(self) -> Dict[str, torch.Tensor]:
        if self._grads is None:
            if self.grad_fn is None:
                raise ValueError("this score needs gradients but the context has no task to differentiate")
            self._grads = self.grad_fn()
        return self._grads


def magnitude_score(ctx: ScoreContext) -> Dict[str, torch.Tensor]:
    """``|w|`` (a conv kernel's L2 norm), divided by the layer's mean over its live edges.

    Normalising per layer makes the global ranking invariant to rescaling a layer by ``a`` and the
    next by ``1/a``, which leaves a ReLU network's function unchanged.
    """
    out = {}
    for layer in ctx.layers:
        w = layer.weight
        s = w.flatten(2).norm(dim=-1) if layer.is_conv else w.abs()
        live = layer.live & ctx.masks[layer.name]
        mean = s[live].mean() if bool(live.any()) else s.new_ones(())
        out[layer.name] = s / mean.clamp_min(torch.finfo(s.dtype).tiny)
    return out


def attribution_score(ctx: ScoreContext) -> Dict[str, torch.Tensor]:
    """``|w * dL/dw|``: first-order change of the task loss when the edge is removed (summed over a kernel)."""
    grads = ctx.gradients()
    out = {}
    for layer in ctx.layers:
        wg = layer.masked(ctx.masks[layer.name]) * grads[layer.name]
        out[layer.name] = (wg.flatten(2).sum(-1) if layer.is_conv else wg).abs()
    return out


#: Score functions by name (``score=`` of :func:`graphinterp.interpret.circuits.extract_circuits`).
SCORES: Dict[str, Callable[[ScoreContext], Dict[str, torch.Tensor]]] = {
    "magnitude": magnitude_score, "attribution": attribution_score,
}
