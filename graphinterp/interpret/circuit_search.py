"""The search behind :func:`graphinterp.interpret.circuits.extract_circuit`: pruning rounds, final passes, result.

Candidates are evaluated by :class:`graphinterp.interpret.circuit_eval.TaskEvaluator` (incremental, in place).
What the search is asked for (:class:`~graphinterp.interpret.circuit_settings.Tolerance`, ``Schedule``) is
in :mod:`graphinterp.interpret.circuit_settings`.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from graphinterp.interpret.circuit_batch import TaskMetrics, forward_metrics, sequential_pass
from graphinterp.interpret.linear_states import capture_inputs
from graphinterp.interpret.circuit_eval import TaskEvaluator
from graphinterp.interpret.circuit_result import Circuit
from graphinterp.interpret.circuit_settings import AUTHORS_RTOL, Schedule, Tolerance
from graphinterp.interpret.conv_pass import channel_pass, walks_channels
from graphinterp.interpret.interventions import interventions
from graphinterp.interpret.edges import EdgeLayer, flat_live, flat_masks, flat_scores
from graphinterp.interpret.label_tasks import LabelTask
from graphinterp.interpret.scores import ScoreContext

__all__ = ["Tolerance", "Schedule", "TaskEvaluator", "PruneStep", "iter_prune", "prune", "iter_authors_prune",
           "authors_prune", "Circuit", "masked_in_place", "AUTHORS_RTOL"]

ScoreFn = Callable[[ScoreContext], Dict[str, torch.Tensor]]


@dataclass(frozen=True)
class PruneStep:
    """One step of :func:`iter_prune` (an evaluated block, ``phase="round"``, or a final pass, ``"final"``)
    or of :func:`iter_authors_prune` (a layer, ``"authors"``; ``round`` counts layers from the last).

    ``tried`` candidate edges were tried; ``kept`` edges are kept after the step (for a rejected block,
    the state it tried, as in ``Circuit.history``); ``n_evals`` counts all evaluations so far;
    ``accuracy`` and ``loss`` are the evaluated candidate's (NaN for a pass or a layer).
    """

    phase: str
    round: int
    tried: int
    accepted: bool
    kept: int
    n_evals: int
    accuracy: float = math.nan
    loss: float = math.nan


def prune(ev: TaskEvaluator, layers: List[EdgeLayer], score_fn: ScoreFn, ok: Callable[[float, float], bool],
          schedule: Schedule, history: Optional[list] = None, *, ok_all: Optional[Callable] = None,
          status: Optional[dict] = None) -> Dict[str, torch.Tensor]:
    """Exhaust :func:`iter_prune` (same arguments) and return its result, the kept-edge masks (on the CPU)."""
    return _drain(iter_prune(ev, layers, score_fn, ok, schedule, history, ok_all=ok_all, status=status))


def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def iter_prune(ev: TaskEvaluator, layers: List[EdgeLayer], score_fn: ScoreFn, ok: Callable[[float, float], bool],
               schedule: Schedule, history: Optional[list] = None, *, ok_all: Optional[Callable] = None,
               status: Optional[dict] = None):
    """Run the rounds of the schedule, then the final passes, yielding a :class:`PruneStep` per step.

    Each round re-scores the kept edges and walks them weakest first: a block that keeps the task
    within tolerance is pruned and the step doubles; otherwise it is restored and the step halves,
    and a block that fails at the round's smallest step is kept. Rounds stop when one at the
    one-edge resolution prunes nothing, or the budget is spent. With ``schedule.final_pass`` (and
    ``ok_all``, the elementwise form of ``ok``), single-edge passes follow until one removes
    nothing. ``status["converged"]`` tells whether the result is a local minimum (False when the
    budget ran out first, None without final passes); ``status["n_evals"]`` counts all evaluations.

    Returns (as ``StopIteration.value``) the kept-edge masks (on the CPU), what :func:`prune` returns.
    Closing the generator early restores the model's weights (the masking is undone in ``finally``).

    Examples
    --------
    >>> import torch; from torch import nn
    >>> from graphinterp.graph.layered import LayeredGraph
    >>> from graphinterp.interpret.edges import edge_layers
    >>> from graphinterp.interpret.label_tasks import label_task
    >>> from graphinterp.interpret.scores import magnitude_score
    >>> _ = torch.manual_seed(0); model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> x = torch.randn(64, 4); y = model(x).argmax(1)
    >>> layers = edge_layers(model, LayeredGraph.from_module(model, input_shape=(4,)))
    >>> ev = TaskEvaluator(model, layers, label_task(x, y, 0), modules=[model[0], model[2]])
    >>> full_acc, full_loss = ev({l.name: torch.ones_like(l.live) for l in layers})
    >>> w = model[0].weight.detach().clone()
    >>> gen = iter_prune(ev, layers, magnitude_score, lambda a, l: Tolerance().accepts(a, l, full_acc, full_loss),
    ...                  Schedule(final_pass=False))
    >>> first = next(gen); first.phase, first.round, first.n_evals
    ('round', 0, 2)
    >>> gen.close()  # stopping early leaves the weights untouched
    >>> torch.equal(model[0].weight, w)
    True
    """
    live = flat_live(layers)
    keep = live.clone()
    masks = flat_masks(layers, keep)
    min_step = max(1, math.ceil(schedule.resolution * int(live.sum())))
    history = history if history is not None else []
    status = status if status is not None else {}
    with ev.session():
        yield from _rounds(ev, layers, score_fn, ok, schedule, history, keep, masks, min_step)
    status.update(converged=None, n_evals=ev.n_evals)
    if schedule.final_pass and ok_all is not None:
        converged, n = yield from _final_passes(ev, layers, score_fn, ok_all, masks, schedule.max_evals - ev.n_evals,
                                                history, schedule.max_rounds, schedule.focus)
        status.update(converged=converged, n_evals=ev.n_evals + n)
    return {name: m.detach().cpu().clone() for name, m in masks.items()}


@contextlib.contextmanager
def masked_in_place(model: nn.Module, layers: List[EdgeLayer], modules: List[nn.Module], masks: Dict[str, torch.Tensor]):
    """Write the masked weights into the modules for a block (one :func:`interventions` block: restored in ``finally``)."""
    with interventions(model) as iv:
        for layer, mod in zip(layers, modules):
            iv.set_weight(mod, layer.masked(masks[layer.name]).to(mod.weight.dtype))
        yield


def _final_passes(ev: TaskEvaluator, layers, score_fn, ok_all, masks, budget: int, history, round0: int,
                  focus: float = 0.0):
    """Single-edge passes until a full one removes nothing, yielding a step per pass; returns (converged, evaluations).

    A full pass (``phase="final"``) walks every kept edge, weakest first, last layer first. After a
    full pass that removed edges, ``focus`` > 0 runs focused passes (``phase="focus"``) first: they
    walk only the ``focus`` share of kept edges that came closest to being removable in the pass
    before (lowest loss with the edge removed), nearest first, while they remove something; then a
    full pass again. Only a full pass that removes nothing ends the search, so the result is a local
    minimum either way; the focused passes find most of the edges that earlier removals freed at a
    fraction of a full pass's cost.
    """
    metrics, used, near = TaskMetrics(ev.task, ev.x.device), 0, None
    with masked_in_place(ev.model, layers, ev.modules, masks):
        for rnd in itertools.count(round0):
            scores = None if near is not None else score_fn(score_context(ev, layers, masks))
            removed_pass, tried, kept, inputs = 0, 0, [], None
            walk = list(zip(layers, ev.modules))
            for pos in range(len(walk) - 1, -1, -1):
                layer, mod = walk[pos]
                mask, seen = masks[layer.name], []
                if near is None:
                    cand = torch.nonzero(mask.flatten()).flatten()
                    cand = cand[torch.argsort(scores[layer.name].detach().flatten()[cand].to(torch.float64), stable=True)]
                else:
                    cand = torch.tensor(near.get(layer.name, []), dtype=torch.long, device=mask.device)
                    cand = cand[mask.view(-1)[cand]]  # still kept
                if walks_channels(ev, layer):
                    removed, n, finished = channel_pass(ev, masks, layer, mod, cand, ok_all, max_evals=budget - used,
                                                        kept=seen)
                else:
                    if inputs is None and cand.numel() and isinstance(mod, nn.Linear):
                        inputs = _linear_inputs(ev, walk[:pos + 1], metrics)
                    removed, n, finished = sequential_pass(ev.model, layer, mod, mask, cand, metrics, ok_all,
                                                           batch_size=ev.batch_size, max_evals=budget - used, kept=seen,
                                                           layer_input=(inputs or {}).pop(id(mod), None))
                used, removed_pass, tried = used + n, removed_pass + removed, tried + n
                kept += [(layer.name, i, loss) for i, loss in seen]
                if not finished:
                    return False, used
            history.append((int(sum(int(m.sum()) for m in masks.values())), removed_pass > 0))
            yield PruneStep("final" if near is None else "focus", rnd, tried, removed_pass > 0, history[-1][0],
                            ev.n_evals + used)
            if removed_pass == 0 and near is None:
                return True, used
            if used >= budget:
                return False, used
            near = _nearest(kept, focus, history[-1][0]) if removed_pass and focus > 0 else None


def _linear_inputs(ev: TaskEvaluator, walk: list, metrics: TaskMetrics) -> Dict[int, torch.Tensor]:
    """The inputs of the Linear layers among ``walk`` (the layers not yet walked in this pass, in model
    order), from one forward pass: walking a layer changes only what comes after it, and a pass walks
    the layers from the last, so each input stays valid until its layer's turn."""
    linear = [m for l, m in walk if isinstance(m, nn.Linear) and not l.is_conv]
    return dict(zip(map(id, linear), capture_inputs(ev.model, linear, metrics.x, ev.batch_size)))


def _nearest(kept: list, focus: float, n_kept: int) -> Dict[str, list]:
    """The ``focus`` share of kept edges with the lowest loss when removed, per layer, nearest first."""
    top = sorted(kept, key=lambda t: t[2])[:max(1, math.ceil(focus * n_kept))]
    out: Dict[str, list] = {}
    for name, i, _ in top:
        out.setdefault(name, []).append(i)
    return out


def authors_prune(model: nn.Module, layers: List[EdgeLayer], modules: List[nn.Module], task: LabelTask, *,
                  batch_size: int = 4096, rtol: float = AUTHORS_RTOL) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Exhaust :func:`iter_authors_prune` (same arguments) and return its result."""
    return _drain(iter_authors_prune(model, layers, modules, task, batch_size=batch_size, rtol=rtol))


def iter_authors_prune(model: nn.Module, layers: List[EdgeLayer], modules: List[nn.Module], task: LabelTask, *,
                       batch_size: int = 4096, rtol: float = AUTHORS_RTOL):
    """The paper's authors' criterion: weight by weight, Linear layers only, last layer first.

    Every non-zero weight of every Linear layer is visited once, layers from the last to the first
    and weights in row-major ``(out, in)`` order; it stays removed unless removing it (on top of
    the removals kept so far) raises the task's loss above the full model's loss (times
    ``1 + rtol``, which absorbs the float rounding between a batched evaluation and a forward
    pass). Convolution kernels are never removed. Evaluated in exact batches
    (:func:`graphinterp.interpret.circuit_batch.sequential_pass`). Yields a :class:`PruneStep` per
    layer (``phase="authors"``) and returns the masks (on the CPU) and
    ``{"full_accuracy", "full_loss", "accuracy", "loss", "n_evals"}``, as :func:`authors_prune`.
    """
    metrics = TaskMetrics(task, task_device(layers))
    masks = {l.name: l.live.clone() for l in layers}
    info: dict = {"n_evals": 0}
    with masked_in_place(model, layers, modules, masks):
        info["full_accuracy"], info["full_loss"] = forward_metrics(model, metrics, batch_size)
        limit = info["full_loss"] + rtol * abs(info["full_loss"])
        for rnd, (layer, mod) in enumerate(reversed(list(zip(layers, modules)))):
            if layer.is_conv or not isinstance(mod, nn.Linear):
                continue
            order = torch.nonzero(masks[layer.name].flatten()).flatten()
            removed, n, _ = sequential_pass(model, layer, mod, masks[layer.name], order, metrics,
                                            lambda acc, loss: loss <= limit, batch_size=batch_size)
            info["n_evals"] += n
            yield PruneStep("authors", rnd, n, removed > 0, sum(int(m.sum()) for m in masks.values()), info["n_evals"])
        info["accuracy"], info["loss"] = forward_metrics(model, metrics, batch_size)
    return {name: m.cpu().clone() for name, m in masks.items()}, info


def score_context(ev: TaskEvaluator, layers: List[EdgeLayer], masks: Dict[str, torch.Tensor]) -> ScoreContext:
    """What a score sees in a round of ``ev``'s search: the masks, the task's gradients and loss, the search's state."""
    return ScoreContext(layers, masks, grad_fn=lambda: ev.gradients(masks), loss_fn=ev.task_loss,
                        n_examples=len(ev.x), state=ev.score_state)


def task_device(layers: List[EdgeLayer]) -> torch.device:
    return layers[0].weight.device


def _rounds(ev, layers, score_fn, ok, schedule, history, keep, masks, min_step):
    for rnd in range(schedule.max_rounds):
        scores = flat_scores(score_fn(score_context(ev, layers, masks)), layers).to(keep.device)
        cand = torch.nonzero(keep).flatten()
        cand = cand[torch.argsort(scores[cand], stable=True)]
        pos, step, fails, pruned = 0, max(min_step, math.ceil(schedule.initial_step * cand.numel())), 0, 0
        n_kept = cand.numel()  # keep.sum(), counted along (every block is kept when it is tried)
        while pos < cand.numel() and ev.n_evals < schedule.max_evals and fails < schedule.patience:
            block = cand[pos:pos + step]
            keep[block] = False
            acc, loss = ev(masks, changed=block)
            accepted = ok(acc, loss)
            n_kept -= block.numel() if accepted else 0
            history.append((n_kept, accepted))
            yield PruneStep("round", rnd, block.numel(), accepted, history[-1][0], ev.n_evals, float(acc), float(loss))
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
