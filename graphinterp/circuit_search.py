"""The search behind :func:`graphinterp.circuits.extract_circuit`: tolerance, schedule, pruning rounds, result.

Candidates are evaluated by :class:`graphinterp.circuit_eval.TaskEvaluator` (incremental, in place).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .circuit_eval import TaskEvaluator
from .graph import LayeredGraph
from .layer import Layer
from .pruning import CircuitSize, EdgeLayer, ScoreContext, flat_live, flat_masks, flat_scores

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
