"""The search behind :func:`graphinterp.interpret.circuits.extract_circuit`: tolerance, schedule, pruning rounds, result.

Candidates are evaluated by :class:`graphinterp.interpret.circuit_eval.TaskEvaluator` (incremental, in place).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from torch import nn

from graphinterp.interpret.circuit_batch import TaskMetrics, forward_metrics, sequential_pass
from graphinterp.interpret.circuit_eval import TaskEvaluator
from graphinterp.graph.layered import LayeredGraph
from graphinterp.graph.layer import Layer
from graphinterp.interpret.ecs import CircuitSize
from graphinterp.interpret.interventions import interventions
from graphinterp.interpret.edges import EdgeLayer, flat_live, flat_masks, flat_scores
from graphinterp.interpret.label_tasks import LabelTask
from graphinterp.interpret.scores import ScoreContext

__all__ = ["Tolerance", "Schedule", "TaskEvaluator", "prune", "authors_prune", "Circuit"]

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

    def accepts_all(self, acc: torch.Tensor, loss: torch.Tensor, full_acc: float, full_loss: float) -> torch.Tensor:
        """:meth:`accepts` elementwise over tensors of states."""
        return (acc >= self.min_accuracy * full_acc - 1e-12) & (loss <= full_loss + self.max_loss_increase)


@dataclass(frozen=True)
class Schedule:
    """Step sizes and budget of the pruning rounds (see :mod:`graphinterp.interpret.circuits`).

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
        Safety caps per label (``max_evals`` counts every evaluated candidate, batched ones included).
    final_pass : bool
        After the rounds, walk every kept edge (weakest first, layer by layer from the last) and
        remove it if the task stays within tolerance, until a whole pass removes nothing: the
        circuit is then a local minimum (no single kept edge can be removed). Evaluated in exact
        batches (:func:`graphinterp.interpret.circuit_batch.sequential_pass`).
    """

    initial_step: float = 0.05
    resolution: float = 1e-3
    patience: int = 64
    max_rounds: int = 20
    max_evals: int = 10000
    final_pass: bool = True


def prune(ev: TaskEvaluator, layers: List[EdgeLayer], score_fn: ScoreFn, ok: Callable[[float, float], bool],
          schedule: Schedule, history: Optional[list] = None, *, ok_all: Optional[Callable] = None,
          status: Optional[dict] = None) -> Dict[str, torch.Tensor]:
    """Run the rounds of the schedule, then the final passes; returns the kept-edge masks (on the CPU).

    Each round re-scores the kept edges and walks them weakest first: a block that keeps the task
    within tolerance is pruned and the step doubles; otherwise it is restored and the step halves,
    and a block that fails at the round's smallest step is kept. Rounds stop when one at the
    one-edge resolution prunes nothing, or the budget is spent. With ``schedule.final_pass`` (and
    ``ok_all``, the elementwise form of ``ok``), single-edge passes follow until one removes
    nothing. ``status["converged"]`` tells whether the result is a local minimum (False when the
    budget ran out first, None without final passes); ``status["n_evals"]`` counts all evaluations.
    """
    live = flat_live(layers)
    keep = live.clone()
    masks = flat_masks(layers, keep)
    min_step = max(1, math.ceil(schedule.resolution * int(live.sum())))
    history = history if history is not None else []
    status = status if status is not None else {}
    with ev.session():
        _rounds(ev, layers, score_fn, ok, schedule, history, keep, masks, min_step)
    status.update(converged=None, n_evals=ev.n_evals)
    if schedule.final_pass and ok_all is not None:
        converged, n = _final_passes(ev, layers, score_fn, ok_all, masks, schedule.max_evals - ev.n_evals, history)
        status.update(converged=converged, n_evals=ev.n_evals + n)
    return {name: m.detach().cpu().clone() for name, m in masks.items()}


@contextlib.contextmanager
def _masked_in_place(model: nn.Module, layers: List[EdgeLayer], modules: List[nn.Module], masks: Dict[str, torch.Tensor]):
    """Write the masked weights into the modules for a block (one :func:`interventions` block: restored in ``finally``)."""
    with interventions(model) as iv:
        for layer, mod in zip(layers, modules):
            iv.set_weight(mod, layer.masked(masks[layer.name]).to(mod.weight.dtype))
        yield


def _final_passes(ev: TaskEvaluator, layers, score_fn, ok_all, masks, budget: int, history) -> Tuple[bool, int]:
    """Single-edge passes (weakest first, last layer first) until one removes nothing; (converged, evaluations)."""
    metrics, used = TaskMetrics(ev.task, ev.x.device), 0
    with _masked_in_place(ev.model, layers, ev.modules, masks):
        while True:
            scores = score_fn(ScoreContext(layers, masks, grad_fn=lambda: ev.gradients(masks)))
            removed_pass = 0
            for layer, mod in reversed(list(zip(layers, ev.modules))):
                mask = masks[layer.name]
                cand = torch.nonzero(mask.flatten()).flatten()
                cand = cand[torch.argsort(scores[layer.name].detach().flatten()[cand].to(torch.float64), stable=True)]
                removed, n, finished = sequential_pass(ev.model, layer, mod, mask, cand, metrics, ok_all,
                                                       batch_size=ev.batch_size, max_evals=budget - used)
                used, removed_pass = used + n, removed_pass + removed
                if not finished:
                    return False, used
            history.append((int(sum(int(m.sum()) for m in masks.values())), removed_pass > 0))
            if removed_pass == 0:
                return True, used
            if used >= budget:
                return False, used


def authors_prune(model: nn.Module, layers: List[EdgeLayer], modules: List[nn.Module], task: LabelTask, *,
                  batch_size: int = 4096, rtol: float = 1e-6) -> Tuple[Dict[str, torch.Tensor], dict]:
    """The paper's authors' criterion: weight by weight, Linear layers only, last layer first.

    Every non-zero weight of every Linear layer is visited once, layers from the last to the first
    and weights in row-major ``(out, in)`` order; it stays removed unless removing it (on top of
    the removals kept so far) raises the task's loss above the full model's loss (times
    ``1 + rtol``, which absorbs the float rounding between a batched evaluation and a forward
    pass). Convolution kernels are never removed. Evaluated in exact batches
    (:func:`graphinterp.interpret.circuit_batch.sequential_pass`). Returns the masks (on the CPU) and
    ``{"full_accuracy", "full_loss", "accuracy", "loss", "n_evals"}``.
    """
    metrics = TaskMetrics(task, task_device(layers))
    masks = {l.name: l.live.clone() for l in layers}
    info: dict = {"n_evals": 0}
    with _masked_in_place(model, layers, modules, masks):
        info["full_accuracy"], info["full_loss"] = forward_metrics(model, metrics, batch_size)
        limit = info["full_loss"] + rtol * abs(info["full_loss"])
        for layer, mod in reversed(list(zip(layers, modules))):
            if layer.is_conv or not isinstance(mod, nn.Linear):
                continue
            order = torch.nonzero(masks[layer.name].flatten()).flatten()
            _, n, _ = sequential_pass(model, layer, mod, masks[layer.name], order, metrics,
                                      lambda acc, loss: loss <= limit, batch_size=batch_size)
            info["n_evals"] += n
        info["accuracy"], info["loss"] = forward_metrics(model, metrics, batch_size)
    return {name: m.cpu().clone() for name, m in masks.items()}, info


def task_device(layers: List[EdgeLayer]) -> torch.device:
    return layers[0].weight.device


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
        Kept edges after each evaluation of the rounds (and after each final pass), and whether
        that step was accepted (whether the pass removed anything).
    mode : {"graphinterp", "authors"}
        The criterion (see :func:`graphinterp.interpret.circuits.extract_circuit`).
    converged : bool or None
        Whether the search ended at a local minimum (a final pass removed nothing) before its
        budget; always True in ``"authors"`` mode (one pass by definition), None when the final
        pass was switched off.
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
    mode: str = "graphinterp"
    converged: Optional[bool] = None

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
                                             "full_loss", "n_pos", "n_neg", "n_evals", "seconds", "score", "mode",
                                             "converged")}
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
