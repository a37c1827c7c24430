"""Single-edge pruning passes evaluated in batches, exactly: :func:`sequential_pass`.

A *sequential pass* walks a list of edges in a fixed order and removes each one in turn unless
its removal (on top of every removal accepted before it) fails a test; the decision for one edge
depends on all earlier decisions, so the pass is sequential by nature. It is evaluated in batches
without changing any decision: for the next ``T`` edges, the ``T`` *cumulative* states (the first
edge removed, the first two, ..., all ``T``) are evaluated at once; every state before the first
failing one is accepted (each passed its test with exactly the earlier removals in place), the
first failing edge is kept, and the walk resumes after it. After a kept edge the next batch
holds *single* removals instead (edge ``t`` removed alone from the current circuit): while edges
are kept the circuit does not change, so every state before the first passing one is a valid
"keep", the first passing edge is removed, and the walk switches back to cumulative states. Each
batch thus speculates that the current run of equal decisions goes on, and ``T`` adapts to the
observed run length, so few states are evaluated past the end of a run (passes that keep almost
every edge, such as the last passes of a search, cost about one state per edge).

Linear layers are evaluated as stacks of states by
:class:`~graphinterp.interpret.linear_states.LinearStates`; convolution kernels one at a time by a
forward pass (a search's final passes walk the kernels of a CNN's convolution through its evaluator
instead, :mod:`graphinterp.interpret.conv_pass`). Logits are reduced with the classes first
(:class:`~graphinterp.interpret.label_tasks.TaskMetrics`). A pass counts one evaluation per edge
walked (the states a one-at-a-time walk evaluates), whatever the batching.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from graphinterp.interpret.edges import EdgeLayer
from graphinterp.interpret.label_tasks import TaskMetrics
from graphinterp.interpret.linear_states import ELEMENTWISE, LinearStates

__all__ = ["TaskMetrics", "LinearStates", "batched_logits", "forward_metrics", "sequential_pass", "ELEMENTWISE"]

#: A unit needs this many edges in a pass for PiecewiseLogits (built once per unit) to beat direct evaluation.
PIECEWISE_MIN_EDGES = 256

Accept = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``model(x)`` without gradients, ``batch_size`` examples per forward pass."""
    with torch.no_grad():
        return torch.cat([model(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])


def forward_metrics(model: nn.Module, metrics: TaskMetrics, batch_size: int) -> Tuple[float, float]:
    acc, loss = metrics(batched_logits(model, metrics.x, batch_size)[None])
    return float(acc[0]), float(loss[0])


def sequential_pass(model: nn.Module, layer: EdgeLayer, module: nn.Module, mask: torch.Tensor, order: torch.Tensor,
                    metrics: TaskMetrics, accept: Accept, *, batch_size: int = 4096,
                    max_evals: Optional[int] = None, kept: Optional[list] = None,
                    layer_input: Optional[torch.Tensor] = None) -> Tuple[int, int, bool]:
    """Walk the edges ``order`` (flat indices into ``mask``, all kept) of one layer and remove each unless
    ``accept(acc, loss)`` fails for the state with it removed; updates ``mask`` and ``module.weight`` in place.

    The model's weights must hold the current circuit (masked in place). Returns ``(removed,
    evaluations, finished)``; ``finished`` is False when ``max_evals`` stopped the walk.
    Evaluations count the states decided on, one per edge walked, as a one-at-a-time walk would
    evaluate them: states evaluated speculatively past the end of a run and discarded are not
    counted, so the decisions and the count do not depend on how the walk is batched. When a list
    ``kept`` is given, ``(flat index, loss)`` of every edge the walk kept is appended to it, the loss
    being that of the state that removed the edge (how far it was from being removable).
    ``layer_input``, the layer's input on the task for the current circuit
    (:func:`~graphinterp.interpret.linear_states.capture_inputs`), spares a forward pass.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from graphinterp.interpret.edges import edge_layers
    >>> from graphinterp.interpret.label_tasks import label_task
    >>> model = nn.Sequential(nn.Linear(2, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    >>> x = torch.eye(2).repeat(5, 1); y = torch.tensor([0, 1]).repeat(5)
    >>> task = label_task(x, y, 0, negative_ratio=0.0)
    >>> m, layer = torch.ones(2, 2, dtype=torch.bool), edge_layers(model)[0]
    >>> full = forward_metrics(model, TaskMetrics(task, "cpu"), 64)[1]
    >>> sequential_pass(model, layer, model[0], m, torch.arange(4), TaskMetrics(task, "cpu"),
    ...                 lambda acc, loss: loss <= full + 1e-9)[0], m.tolist()
    (3, [[True, False], [False, False]])
    """
    n_cols = mask.shape[1]
    removed = evals = 0
    if order.numel() == 0:
        return 0, 0, True
    if layer.is_conv or not isinstance(module, nn.Linear):
        return _one_by_one(model, layer, module, mask, order, metrics, accept, batch_size, max_evals, kept)
    try:
        states = LinearStates(model, module, metrics, batch_size, layer_input)
    except ValueError:
        return _one_by_one(model, layer, module, mask, order, metrics, accept, batch_size, max_evals, kept)
    cap, size, pos, removing = states.max_states(), 16, 0, True
    # units with many edges to walk go through PiecewiseLogits (built once per unit); the others directly
    many = torch.bincount(order // n_cols, minlength=mask.shape[0]) >= PIECEWISE_MIN_EDGES if states.pl else None
    while pos < order.numel():
        if max_evals is not None and evals >= max_evals:
            return removed, evals, False
        block = order[pos:pos + min(size, cap, max_evals - evals if max_evals is not None else cap)]
        o, i = block // n_cols, block % n_cols
        piecewise = many is not None and bool(many[o[0]])
        if piecewise:  # one output unit per block: the piecewise-linear evaluation applies
            same = int((o == o[0]).sum()) if bool((o == o[0])[-1]) else int(torch.nonzero(o != o[0])[0])
            block, o, i = block[:same], o[:same], i[:same]
        acc, loss = states.evaluate(o, i, cumulative=removing, piecewise=piecewise)
        ok = accept(acc, loss)
        change = torch.nonzero(~ok if removing else ok).flatten()  # where the run of equal decisions ends
        j = int(change[0]) if change.numel() else block.numel()
        evals += min(j + 1, block.numel())  # the states decided on; those past the run's end are discarded
        if removing:  # states 0..j-1 removed their edges cumulatively; state j (if any) keeps its edge
            states.commit(o[:j], i[:j])
            mask.view(-1)[block[:j]] = False
            removed += j
            if kept is not None and j < block.numel():
                kept.append((int(block[j]), float(loss[j])))
        else:  # edges 0..j-1 kept (each tested alone on the current circuit); edge j (if any) removed
            if kept is not None:
                kept.extend(zip(block[:j].tolist(), loss[:j].tolist()))
            if j < block.numel():
                states.commit(o[j:j + 1], i[j:j + 1])
                mask.view(-1)[block[j]] = False
                removed += 1
        pos += j + (1 if j < block.numel() else 0)
        if j < block.numel():
            removing = not removing
        size = min(cap, size * 2) if j == block.numel() else max(4, 2 * (j + 1))
    return removed, evals, True


def _one_by_one(model, layer, module, mask, order, metrics, accept, batch_size, max_evals,
                kept=None) -> Tuple[int, int, bool]:
    removed = evals = 0
    n_cols = mask.shape[1]
    for idx in order.tolist():
        if max_evals is not None and evals >= max_evals:
            return removed, evals, False
        o, i = divmod(idx, n_cols)
        with torch.no_grad():
            saved = module.weight[o, i].clone()
            module.weight[o, i] = 0.0
            acc, loss = forward_metrics(model, metrics, batch_size)
            evals += 1
            if bool(accept(torch.tensor([acc], dtype=torch.float64), torch.tensor([loss], dtype=torch.float64))[0]):
                mask[o, i] = False
                removed += 1
            else:
                module.weight[o, i] = saved
                if kept is not None:
                    kept.append((idx, loss))
    return removed, evals, True
