"""Edge masks, edge scores, effective circuit size and the per-label task behind circuit extraction.

An *edge* of the layered graph is one weight of a Linear layer, or one whole kernel (in-channel
``i`` to out-channel ``j``) of a Conv2d. A *mask* is a boolean tensor of shape ``(out, in)`` per
layer (torch layout without the kernel dimensions); pruning an edge zeroes its weight or kernel.
Biases are not edges: they are kept, and not counted in the ECS. Masks are applied to the
parameters at call time (``torch.func.functional_call`` with ``weight * mask``), so the model is
never rebuilt nor modified; :func:`apply_masks` writes them in place for a ``with`` block instead.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn

from graphinterp.common.errors import DataError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.hooks import module_of

__all__ = [
    "EdgeLayer", "edge_layers", "apply_masks", "CircuitSize", "circuit_size", "ScoreContext",
    "magnitude_score", "attribution_score", "SCORES", "LabelTask", "label_task", "task_terms",
]


@dataclass(eq=False)
class EdgeLayer:
    """One weight layer seen as edges: its module, original weight and which edges exist.

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
    out = []
    for layer in graph.layers:
        mod, key = module_of(model, graph, layer.name)
        w = mod.weight.detach().to(device if device is not None else mod.weight.device).clone()
        nz = w != 0
        params = nz.flatten(2).sum(-1) if w.dim() == 4 else nz.long()
        if w.dim() == 4 and mod.groups != 1:
            raise DataError(f"layer {layer.name!r} is a grouped convolution; circuit extraction needs dense Conv2d layers")
        out.append(EdgeLayer(layer.name, f"{key}weight", w, params > 0, params))
    return out


@contextlib.contextmanager
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], graph: Optional[LayeredGraph] = None) -> Iterator[nn.Module]:
    """Zero the pruned edges of ``model`` in place for a ``with`` block; the weights are restored in ``finally``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.fill_(1.0)
    >>> with apply_masks(model, {"0": torch.tensor([[True, False]])}):
    ...     model[0].weight.tolist()
    [[1.0, 0.0]]
    >>> model[0].weight.tolist()
    [[1.0, 1.0]]
    """
    graph = graph if graph is not None else LayeredGraph.from_module(model)
    saved = []
    try:
        with torch.no_grad():
            for name, mask in masks.items():
                mod, _ = module_of(model, graph, name)
                saved.append((mod.weight, mod.weight.detach().clone()))
                m = mask.to(mod.weight.device)
                mod.weight.mul_((m[..., None, None] if mod.weight.dim() == 4 else m).to(mod.weight.dtype))
        yield model
    finally:
        with torch.no_grad():
            for param, original in saved:
                param.copy_(original)


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


# ----------------------------------------------------------------------------- scores
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


# ----------------------------------------------------------------------------- the per-label task
@dataclass
class LabelTask:
    """One-vs-rest task of a label: its examples (positives) and a sample of the others (negatives)."""

    label: int
    x: torch.Tensor
    positive: torch.Tensor

    @property
    def n_pos(self) -> int:
        return int(self.positive.sum())

    @property
    def n_neg(self) -> int:
        return int((~self.positive).sum())

    def weights(self) -> torch.Tensor:
        """Per-example weights: positives and negatives each weigh 1/2 in total (all 1/n without negatives)."""
        n_pos, n_neg = self.n_pos, self.n_neg
        if n_neg == 0:
            return torch.full((n_pos,), 1.0 / n_pos, dtype=torch.float64)
        return torch.where(self.positive, 0.5 / n_pos, 0.5 / n_neg).to(torch.float64)

    def metrics(self, logits: torch.Tensor) -> Tuple[float, float]:
        """``(accuracy, loss)`` of the task's logits (see :mod:`graphinterp.interpret.circuits`)."""
        hit, loss = task_terms(logits, self.label, self.positive.to(logits.device))
        w = self.weights().to(logits.device)
        return float(w @ hit.double()), float(w @ loss.double())


def task_terms(logits: torch.Tensor, label: int, positive: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per example: whether the one-vs-rest decision is right, and its binary cross-entropy.

    The decision is "the model says ``label``" (argmax); the loss is ``-log p`` for a positive and
    ``-log(1 - p)`` for a negative, with ``p = softmax(logits)[label]`` (computed in log space).
    """
    says = logits.argmax(-1) == label
    others = logits.clone()
    others[:, label] = -float("inf")
    z, lse_others = logits[:, label], torch.logsumexp(others, -1)
    lse = torch.logaddexp(z, lse_others)
    return says == positive, torch.where(positive, lse - z, lse - lse_others)


def label_task(x: torch.Tensor, y: torch.Tensor, label: int, *, max_examples: int = 500,
               negative_ratio: float = 1.0, random_state: int = 0) -> LabelTask:
    """Build the task of ``label``: up to ``max_examples`` of its examples and ``negative_ratio``
    times as many examples of other labels, drawn uniformly without replacement.

    Raises
    ------
    DataError
        If ``label`` has no example in ``y``.

    Examples
    --------
    >>> import torch
    >>> task = label_task(torch.zeros(10, 3), torch.tensor([0, 1] * 5), 1, max_examples=4)
    >>> task.n_pos, task.n_neg, float(task.weights().sum())
    (4, 4, 1.0)
    """
    gen = torch.Generator().manual_seed(int(random_state) + 7919 * int(label))
    pos = torch.nonzero(y == label).flatten()
    neg = torch.nonzero(y != label).flatten()
    if pos.numel() == 0:
        raise DataError(f"label {label} has no example in the data; pass data that contains it or leave it out of --labels")
    pos = pos[torch.randperm(pos.numel(), generator=gen)[:max_examples]]
    n_neg = min(neg.numel(), int(round(negative_ratio * pos.numel())))
    neg = neg[torch.randperm(neg.numel(), generator=gen)[:n_neg]]
    idx = torch.cat([pos, neg])
    positive = torch.zeros(idx.numel(), dtype=torch.bool)
    positive[: pos.numel()] = True
    return LabelTask(int(label), x[idx], positive)


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
