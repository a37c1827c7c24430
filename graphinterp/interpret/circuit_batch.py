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

A state of a Linear layer ``L`` is its output ``z`` on the task with some edges removed; removing
edge ``(o, i)`` subtracts ``w_oi * a_i`` from output ``o`` (``a``: the layer's input, fixed during
the pass because only ``L`` changes). When ``L`` is a direct child of a plain ``nn.Sequential``,
only the modules after it run (a model may also list them itself, ``model.linear_suffix(layer, x)``:
:class:`graphinterp.interpret.transformer_circuits.AnswerTail`); when they start with an elementwise
activation followed by a Linear layer ``M``, ``M``'s output is updated by rank-one terms
``W_M[:, o] (act(z_o') - act(z_o))`` and only the modules after ``M`` run (for the paper's CNN
this turns ``fc1``'s states into a cumulative sum and one 64 x 10 product per example).
Other Linear layers are evaluated by a forward pass of the whole model over the ``T`` states (a
forward hook replaces ``L``'s output); convolution kernels one at a time by a forward pass. Values
equal those of a forward pass up to float rounding (a decision whose test value lies within
rounding of its threshold may differ).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from graphinterp.interpret.edges import EdgeLayer
from graphinterp.interpret.piecewise import piecewise_logits
from graphinterp.interpret.label_tasks import LabelTask, task_terms

__all__ = ["TaskMetrics", "LinearStates", "forward_metrics", "sequential_pass", "ELEMENTWISE"]

#: Modules that act elementwise (in eval mode): the fast path may look through them.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.Identity, nn.Dropout)
_MAX_ELEMENTS = 1 << 24  # largest (states x examples x width) tensor of one batch (64 MB in float32)

Accept = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TaskMetrics:
    """Balanced ``(accuracy, loss)`` of a :class:`LabelTask` for a stack of ``T`` states' logits."""

    def __init__(self, task: LabelTask, device) -> None:
        self.label, self.x = task.label, task.x.to(device)
        self.pos, self.w = task.positive.to(device), task.weights().to(device)

    def __call__(self, logits: torch.Tensor, examples_first: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """``logits`` of shape ``(T, N, C)`` (``(N, T, C)`` with ``examples_first``) -> accuracy and loss,
        float64 tensors of shape ``(T,)``."""
        if examples_first:
            logits = logits.transpose(0, 1)
        t, n = logits.shape[:2]
        if bool(self.pos.all()):  # positives only: plain cross-entropy, without copies
            loss = torch.logsumexp(logits, -1) - logits[..., self.label]
            hit = logits.argmax(-1) == self.label
            return hit.double() @ self.w, loss.double() @ self.w
        hit, loss = task_terms(logits.reshape(t * n, -1), self.label, self.pos.repeat(t))
        return hit.view(t, n).double() @ self.w, loss.view(t, n).double() @ self.w


def _sequential_children(model: nn.Module, module: nn.Module) -> Optional[List[nn.Module]]:
    if not isinstance(model, nn.Sequential) or type(model).forward is not nn.Sequential.forward:
        return None
    children = list(model)
    for k, child in enumerate(children):
        if child is module:
            return children[k + 1:]
    return None


class LinearStates:
    """Cumulative single-edge removals in one Linear layer, evaluated as a batch of states.

    The model's weights must hold the current circuit (masked in place) while this object lives;
    the layer's own weight is read from ``module`` and written back by :meth:`commit`.
    """

    def __init__(self, model: nn.Module, module: nn.Linear, metrics: TaskMetrics, batch_size: int = 4096) -> None:
        self.model, self.module, self.metrics = model, module, metrics
        seen: list = []
        handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        try:
            with torch.no_grad():
                for s in range(0, len(metrics.x), batch_size):
                    model(metrics.x[s:s + batch_size])
        finally:
            handle.remove()
        self.a = torch.cat(seen)
        if self.a.dim() != 2:
            raise ValueError("the layer's input is not (N, features)")
        self.w = module.weight.detach()
        self.bias = None if module.bias is None else module.bias.detach()
        suffix = _sequential_children(model, module)
        if suffix is None and hasattr(model, "linear_suffix"):  # a model that says what follows the layer
            suffix = model.linear_suffix(module, metrics.x)
        self.suffix, self.M, self.acts, self.rest = suffix, None, [], None
        if suffix is not None:
            k = 0
            while k < len(suffix) and isinstance(suffix[k], ELEMENTWISE):
                k += 1
            if 0 < k < len(suffix) and isinstance(suffix[k], nn.Linear):
                self.acts, self.M, self.rest = suffix[:k], suffix[k], nn.Sequential(*suffix[k + 1:])
            else:
                self.rest = nn.Sequential(*suffix)
        rest = list(self.rest) if self.rest is not None else []
        # rest = ReLU -> Linear: the logits are piecewise linear in a rank-one change of M's output
        self.pl = self.M is not None and len(rest) == 2 and type(rest[0]) is nn.ReLU and isinstance(rest[1], nn.Linear)
        self.width = self.M.out_features if self.M is not None else module.out_features
        self._exact()

    def _act(self, z: torch.Tensor) -> torch.Tensor:
        for m in self.acts:
            z = m(z)
        return z

    def _exact(self) -> None:
        with torch.no_grad():
            self.z = self.a @ self.w.T
            if self.bias is not None:
                self.z += self.bias
            self.y = self.M(self._act(self.z)) if self.M is not None else None
        self.commits = 0

    def max_states(self) -> int:
        return max(1, _MAX_ELEMENTS // max(1, len(self.a) * max(self.width, self.z.shape[1])))

    @torch.no_grad()
    def evaluate(self, o: torch.Tensor, i: torch.Tensor, cumulative: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Metrics of the states "edges ``(o[:t+1], i[:t+1])`` removed", t = 0..T-1 (edges not yet removed);
        with ``cumulative=False``, of the states "edge ``(o[t], i[t])`` removed alone"."""
        d = -(self.w[o, i][:, None] * self.a[:, i].T)  # (T, N): change of output o_t
        t, n = d.shape
        acc = (lambda v: torch.cumsum(v, 0)) if cumulative else (lambda v: v)
        if self.M is not None:
            after = torch.empty_like(d)
            before = torch.empty_like(d)
            start = 0
            bounds = torch.nonzero(o[1:] != o[:-1]).flatten().tolist() + [t - 1]
            for end in bounds:  # runs of the same output unit (row-major order keeps them contiguous)
                run = slice(start, end + 1)
                col = self.z[:, o[start]]
                after[run] = col + acc(d[run])
                before[run] = torch.cat([col[None], after[start:end]]) if cumulative else col
                start = end + 1
            if self.pl and len(bounds) == 1:
                return self.metrics(piecewise_logits(self.rest[1], self.M.weight[:, int(o[0])], self.y,
                                                     self._act(after) - self._act(self.z[:, o[0]])),
                                    examples_first=True)
            r = self._act(after) - self._act(before)  # (T, N)
            upd = r[:, :, None] * self.M.weight.T[o][:, None, :]  # (T, N, width)
            y = self.y + acc(upd)
            logits = self.rest(y.reshape(t * n, -1)).reshape(t, n, -1)
            return self.metrics(logits)
        e = torch.zeros(t, n, self.z.shape[1], dtype=d.dtype, device=d.device)
        e[torch.arange(t, device=d.device), :, o] = d
        z = self.z + acc(e)
        if self.rest is not None:
            logits = self.rest(z.reshape(t * n, -1)).reshape(t, n, -1)
            return self.metrics(logits)
        return self._through_model(z)

    def _through_model(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        t, n = z.shape[:2]
        handle = self.module.register_forward_hook(lambda _m, _args, _out: z.reshape(t * n, -1))
        try:
            x = self.metrics.x.repeat(t, *([1] * (self.metrics.x.dim() - 1)))
            logits = self.model(x).reshape(t, n, -1)
        finally:
            handle.remove()
        return self.metrics(logits)

    @torch.no_grad()
    def commit(self, o: torch.Tensor, i: torch.Tensor) -> None:
        """Remove edges ``(o, i)`` for good: zero them in the module's weight and update the state."""
        if o.numel() == 0:
            return
        self.z.index_add_(1, o, -(self.w[o, i][None, :] * self.a[:, i]))
        self.module.weight[o, i] = 0.0
        self.commits += 1
        if self.commits >= 64:
            self._exact()
        elif self.M is not None:
            self.y = self.M(self._act(self.z))


def forward_metrics(model: nn.Module, metrics: TaskMetrics, batch_size: int) -> Tuple[float, float]:
    logits = []
    with torch.no_grad():
        for s in range(0, len(metrics.x), batch_size):
            logits.append(model(metrics.x[s:s + batch_size]))
    acc, loss = metrics(torch.cat(logits)[None])
    return float(acc[0]), float(loss[0])


def sequential_pass(model: nn.Module, layer: EdgeLayer, module: nn.Module, mask: torch.Tensor, order: torch.Tensor,
                    metrics: TaskMetrics, accept: Accept, *, batch_size: int = 4096,
                    max_evals: Optional[int] = None, kept: Optional[list] = None) -> Tuple[int, int, bool]:
    """Walk the edges ``order`` (flat indices into ``mask``, all kept) of one layer and remove each unless
    ``accept(acc, loss)`` fails for the state with it removed; updates ``mask`` and ``module.weight`` in place.

    The model's weights must hold the current circuit (masked in place). Returns ``(removed,
    evaluations, finished)``; ``finished`` is False when ``max_evals`` stopped the walk. When a list
    ``kept`` is given, ``(flat index, loss)`` of every edge the walk kept is appended to it, the loss
    being that of the state that removed the edge (how far it was from being removable).

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
        states = LinearStates(model, module, metrics, batch_size)
    except ValueError:
        return _one_by_one(model, layer, module, mask, order, metrics, accept, batch_size, max_evals, kept)
    cap, size, pos, removing = states.max_states(), 16, 0, True
    while pos < order.numel():
        if max_evals is not None and evals >= max_evals:
            return removed, evals, False
        block = order[pos:pos + min(size, cap, max_evals - evals if max_evals is not None else cap)]
        o, i = block // n_cols, block % n_cols
        if states.pl:  # one output unit per block: the piecewise-linear evaluation applies
            same = int((o == o[0]).sum()) if bool((o == o[0])[-1]) else int(torch.nonzero(o != o[0])[0])
            block, o, i = block[:same], o[:same], i[:same]
        acc, loss = states.evaluate(o, i, cumulative=removing)
        evals += block.numel()
        ok = accept(acc, loss)
        change = torch.nonzero(~ok if removing else ok).flatten()  # where the run of equal decisions ends
        j = int(change[0]) if change.numel() else block.numel()
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
