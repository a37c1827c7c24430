"""The search behind :func:`graphinterp.circuits.extract_circuit`: task evaluation, the schedule, the result.

Evaluations write the masked weights into the model's parameters in place, inside a session that
restores them in ``finally`` (the model is never rebuilt, and is unchanged afterwards); gradients
for attribution scores use ``torch.func.functional_call``. When the first weight layer is a Linear
(an MLP), its input is fixed, so its output is kept for the last accepted mask and updated for a
candidate from the changed edges only: removing edge ``(o, i)`` subtracts ``w_oi * a_i`` from output
``o`` (exact up to float rounding; recomputed after large changes and every 256 accepted steps).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from .graph import LayeredGraph
from .layer import Layer
from .pruning import CircuitSize, EdgeLayer, LabelTask, ScoreContext, flat_live, flat_masks, flat_scores, task_terms

__all__ = ["Tolerance", "Schedule", "TaskEvaluator", "prune", "Circuit"]

ScoreFn = Callable[[ScoreContext], Dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Tolerance:
    """How much worse than the full model a circuit may be on its label's task.

    Accepted while ``accuracy >= min_accuracy * full_accuracy`` and
    ``loss <= full_loss + max_loss_increase``.
    """

    min_accuracy: float = 0.95
    max_loss_increase: float = 0.1

    def accepts(self, acc: float, loss: float, full_acc: float, full_loss: float) -> bool:
        return acc >= self.min_accuracy * full_acc - 1e-12 and loss <= full_loss + self.max_loss_increase


@dataclass(frozen=True)
class Schedule:
    """Step sizes and budget of the pruning rounds (see :mod:`graphinterp.circuits`).

    Attributes
    ----------
    initial_step : float
        First step of a round, as a fraction of the round's candidate edges.
    resolution : float
        Smallest step of the first round as a fraction of the live edges; it halves every round
        down to one edge.
    patience : int
        A round ends after this many blocks in a row were kept at the smallest step.
    max_rounds, max_evals : int
        Safety caps per label. With the defaults, the circuits of the paper's MNIST MLP converge
        (a round at one-edge resolution prunes nothing) after 3,000-7,000 evaluations.
    """

    initial_step: float = 0.05
    resolution: float = 1e-3
    patience: int = 64
    max_rounds: int = 20
    max_evals: int = 10000


class TaskEvaluator:
    """``(accuracy, loss)`` of the task under given masks, batched on ``device``; counts calls.

    Inside :meth:`session` (which :func:`prune` opens) the masked weights are written into the
    model's parameters in place and the first Linear's ``forward`` is replaced by the incremental
    lookup; both are restored in ``finally``. Outside a session each call opens one.
    """

    def __init__(self, model: nn.Module, layers: List[EdgeLayer], task: LabelTask, *, modules: List[nn.Module],
                 batch_size: int = 4096, device=None, incremental: bool = True) -> None:
        self.model, self.layers, self.task, self.batch_size = model, layers, task, batch_size
        self.modules = modules
        self.x, self.pos = task.x.to(device), task.positive.to(device)
        self.w = task.weights().to(device)
        self.n_evals = 0
        self._active = False
        self._lookup: Optional[torch.Tensor] = None
        first = modules[0]
        self.first = first if (incremental and isinstance(first, nn.Linear) and not layers[0].is_conv) else None
        if self.first is not None:
            self._capture_first_input()

    # ------------------------------------------------------------------ first layer, incrementally
    def _capture_first_input(self) -> None:
        seen: list = []
        handle = self.first.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        try:
            with torch.no_grad():
                for start in range(0, len(self.x), self.batch_size):
                    self.model(self.x[start:start + self.batch_size])
        finally:
            handle.remove()
        a = torch.cat(seen)
        if a.dim() != 2:
            self.first = None
            return
        self.a_t = a.T.contiguous()  # (in, N)
        self.bias = None if self.first.bias is None else self.first.bias.detach()[:, None]
        self.recommit_after = max(64, self.layers[0].live.numel() // 20)
        self._commit(torch.ones_like(self.layers[0].live), self._full_first(torch.ones_like(self.layers[0].live)))

    def _full_first(self, mask: torch.Tensor) -> torch.Tensor:
        z = self.layers[0].masked(mask) @ self.a_t
        return z if self.bias is None else z + self.bias

    def _commit(self, mask: torch.Tensor, z_t: torch.Tensor, exact: bool = True) -> None:
        """Make ``mask`` (with first-layer output ``z_t``) the state later diffs start from."""
        self.since_exact = 0 if exact else self.since_exact + 1
        self.committed, self.z_t, self._last = mask.clone(), z_t, None

    def _first_output(self, mask: torch.Tensor, changed: Optional[torch.Tensor]) -> torch.Tensor:
        if changed is not None:  # flat edge indices that differ from the committed state
            idx = changed[changed < mask.numel()]
            o, i = idx // mask.shape[1], idx % mask.shape[1]
            now = mask[o, i]
            parts = ((o[~now], i[~now], -1.0), (o[now], i[now], 1.0))
        else:
            removed, added = self.committed & ~mask, mask & ~self.committed
            parts = (torch.nonzero(removed, as_tuple=True) + (-1.0,), torch.nonzero(added, as_tuple=True) + (1.0,))
        exact = sum(p[0].numel() for p in parts) > self.recommit_after
        if exact:
            z_t = self._full_first(mask)
        else:
            z_t = self.z_t
            for o, i, sign in parts:
                if o.numel():
                    z_t = z_t.index_add(0, o, self.a_t[i] * self.layers[0].weight[o, i][:, None], alpha=sign)
        self._last = (mask.clone(), z_t, exact)
        return z_t

    def accept(self, masks: Dict[str, torch.Tensor]) -> None:
        """Tell the evaluator that ``masks`` (just evaluated) is the new state: later diffs start from it."""
        if self.first is None or self._last is None or not torch.equal(self._last[0], masks[self.layers[0].name]):
            return
        mask, z_t, exact = self._last
        if not exact and self.since_exact >= 255:  # bound the accumulation of rounding errors
            z_t, exact = self._full_first(mask), True
        self._commit(mask, z_t, exact)

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def session(self) -> Iterator["TaskEvaluator"]:
        """Write masked weights in place for the block; the weights and ``forward`` are restored in ``finally``."""
        if self._active:
            yield self
            return
        saved = [(m.weight, m.weight.detach().clone()) for m in self.modules]
        first = self.first
        if first is not None:
            def forward(*args, **kwargs):
                if self._lookup is not None:
                    return self._lookup
                return type(first).forward(first, *args, **kwargs)
            first.forward = forward
        self._active = True
        try:
            yield self
        finally:
            self._active, self._lookup = False, None
            if first is not None:
                del first.forward
            with torch.no_grad():
                for param, original in saved:
                    param.copy_(original)

    def __call__(self, masks: Dict[str, torch.Tensor], changed: Optional[torch.Tensor] = None) -> Tuple[float, float]:
        """Evaluate ``masks``; ``changed`` optionally lists the flat edge indices (layers concatenated) that
        differ from the last accepted state, which spares diffing the first layer's mask."""
        self.n_evals += 1
        with self.session(), torch.no_grad():
            z_t = self._first_output(masks[self.layers[0].name], changed) if self.first is not None else None
            for layer, mod in zip(self.layers, self.modules):
                if z_t is None or mod is not self.first:
                    mod.weight.copy_(layer.masked(masks[layer.name]))
            acc = loss = 0.0
            try:
                for start in range(0, len(self.x), self.batch_size):
                    end = start + self.batch_size
                    self._lookup = None if z_t is None else z_t[:, start:end].T
                    logits = self.model(self.x[start:end])
                    hit, l = task_terms(logits, self.task.label, self.pos[start:end])
                    acc += float(self.w[start:end] @ hit.double())
                    loss += float(self.w[start:end] @ l.double())
            finally:
                self._lookup = None
        return acc, loss

    def gradients(self, masks: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Gradient of the task loss with respect to each masked weight (``functional_call``)."""
        params = {l.key: l.masked(masks[l.name]).requires_grad_(True) for l in self.layers}
        with torch.enable_grad():
            for start in range(0, len(self.x), self.batch_size):
                end = start + self.batch_size
                logits = torch.func.functional_call(self.model, params, (self.x[start:end],))
                _, l = task_terms(logits, self.task.label, self.pos[start:end])
                (self.w[start:end] @ l.double()).backward()
        return {l.name: params[l.key].grad for l in self.layers}


def prune(ev: TaskEvaluator, layers: List[EdgeLayer], score_fn: ScoreFn, ok: Callable[[float, float], bool],
          schedule: Schedule, history: Optional[list] = None) -> Dict[str, torch.Tensor]:
    """Run the rounds of the schedule; returns the kept-edge masks (on the CPU).

    Each round re-scores the kept edges and walks them weakest first: a block that keeps the task
    within tolerance is pruned and the step doubles; otherwise it is restored and the step halves,
    and a block that fails at the round's smallest step is kept. Rounds stop when one at the
    one-edge resolution prunes nothing, or the budget is spent.
    """
    live = flat_live(layers)
    keep = live.clone()
    masks = flat_masks(layers, keep)
    min_step = max(1, math.ceil(schedule.resolution * int(live.sum())))
    history = history if history is not None else []
    with ev.session():
        _rounds(ev, layers, score_fn, ok, schedule, history, keep, masks, min_step)
    return {name: m.detach().cpu().clone() for name, m in masks.items()}


def _rounds(ev, layers, score_fn, ok, schedule, history, keep, masks, min_step) -> None:
    for _ in range(schedule.max_rounds):
        ctx = ScoreContext(layers, masks, grad_fn=lambda: ev.gradients(masks))
        scores = flat_scores(score_fn(ctx), layers).to(keep.device)
        cand = torch.nonzero(keep).flatten()
        cand = cand[torch.argsort(scores[cand], stable=True)]
        pos, step, fails, pruned = 0, max(min_step, math.ceil(schedule.initial_step * cand.numel())), 0, 0
        while pos < cand.numel() and ev.n_evals < schedule.max_evals and fails < schedule.patience:
            block = cand[pos:pos + step]
            keep[block] = False
            accepted = ok(*ev(masks, changed=block))
            history.append((int(keep.sum()) + (0 if accepted else block.numel()), accepted))
            if accepted:
                ev.accept(masks)
                pos, pruned, step, fails = pos + block.numel(), pruned + block.numel(), step * 2, 0
                continue
            keep[block] = True
            if step > min_step:
                step = max(min_step, step // 2)
            else:
                pos, fails = pos + block.numel(), fails + 1
        if ev.n_evals >= schedule.max_evals or (min_step == 1 and pruned == 0):
            break
        min_step = max(1, min_step // 2)


@dataclass
class Circuit:
    """The circuit of one label: kept edges (masks), its ECS and its performance on the task.

    Attributes
    ----------
    label : int
    label_name : str
    masks : dict of str to BoolTensor of shape (out, in)
        Kept edges per layer (a conv edge is a kernel).
    size : CircuitSize
    accuracy, loss : float
        The circuit on its task; ``full_accuracy``, ``full_loss``: the full model on it.
    n_pos, n_neg, n_evals : int
    seconds : float
    history : list of (int, bool)
        Kept edges after each evaluation, and whether that step was accepted.
    """

    label: int
    label_name: str
    masks: Dict[str, torch.Tensor]
    size: CircuitSize
    accuracy: float
    loss: float
    full_accuracy: float
    full_loss: float
    n_pos: int
    n_neg: int
    n_evals: int = 0
    seconds: float = 0.0
    score: str = "magnitude"
    history: List[Tuple[int, bool]] = field(default_factory=list, repr=False)

    @property
    def ecs(self) -> float:
        """Fraction of the model's non-zero weights kept."""
        return self.size.ecs

    @property
    def ecs_per_layer(self) -> Dict[str, float]:
        return dict(self.size.ecs_per_layer)

    def to_dict(self, *, include_masks: bool = False) -> Dict[str, Any]:
        """Plain values for JSON (masks as nested lists only when asked)."""
        out = {k: getattr(self, k) for k in ("label", "label_name", "accuracy", "loss", "full_accuracy",
                                             "full_loss", "n_pos", "n_neg", "n_evals", "seconds", "score")}
        out.update(ecs=self.ecs, size=self.size.to_dict())
        if include_masks:
            out["masks"] = {k: v.int().tolist() for k, v in self.masks.items()}
        return out

    def to_networkx(self, graph: LayeredGraph, clustering=None):
        """The circuit as a subgraph of ``graph``'s networkx graph: kept edges and the nodes they touch.

        Attributes are those of :meth:`LayeredGraph.to_networkx` (cluster labels included when
        ``clustering`` is given), all GraphML types; graph attributes hold ``label``,
        ``label_name``, ``ecs``, ``ecs_edges``, ``accuracy``, ``loss`` and ``ecs:<layer>`` per
        layer. Nodes are in the graph's ``"grouped"`` view: after a Flatten of conv channels, a
        channel-to-neuron edge is present when any of its kept weights is non-zero.
        """
        layers = []
        for layer in graph.layers:
            m = self.masks[layer.name].to(layer.weight.device)
            w = layer.weight * (m[..., None, None] if layer.kind == "conv2d" else m).to(layer.weight.dtype)
            layers.append(Layer(layer.name, layer.kind, w, in_groups=layer.in_groups, groups=layer.groups))
        G = LayeredGraph(layers, chained=graph.chained).to_networkx(clustering)
        G.remove_nodes_from([n for n in list(G.nodes) if G.degree(n) == 0])
        for _, data in G.nodes(data=True):  # a level labelled only as a clustered layer's input keeps that label
            if data.get("cluster", -1) < 0 and data.get("cluster_in", -1) >= 0:
                data["cluster"] = data["cluster_in"]
        G.graph.update(label=int(self.label), label_name=str(self.label_name), ecs=float(self.ecs),
                       ecs_edges=float(self.size.ecs_edges), accuracy=float(self.accuracy), loss=float(self.loss))
        G.graph.update({f"ecs:{k}": float(v) for k, v in self.size.ecs_per_layer.items()})
        return G
