"""A Linear layer's output under many sets of removed edges at once: :class:`LinearStates`.

Used by :func:`graphinterp.interpret.circuit_batch.sequential_pass`. A *state* of a Linear layer
``L`` is its output ``z`` on the task with some edges removed; removing edge ``(o, i)`` subtracts
``w_oi * a_i`` from output ``o`` (``a``: the layer's input, fixed during a pass because only ``L``
changes). When ``L`` is a direct child of a plain ``nn.Sequential``, only the modules after it run
(a model may also list them itself, ``model.linear_suffix(layer, x)``:
:class:`graphinterp.interpret.transformer_circuits.AnswerTail`). When they start with an
elementwise activation followed by a Linear layer ``M``, ``M``'s output is updated by rank-one
terms ``W_M[:, o] (act(z_o') - act(z_o))`` and only the modules after ``M`` run (for the paper's
CNN this turns ``fc1``'s states into a cumulative sum and one 64 x 10 product per example); when
those are ``ReLU -> Linear``, the states of one unit may go through
:class:`~graphinterp.interpret.piecewise.PiecewiseLogits` instead, built once per unit (worth it
for units with many edges to walk, as in the authors' criterion). Other Linear layers are
evaluated by a forward pass of the whole model over the ``T`` states (a forward hook replaces
``L``'s output). Values equal those of a forward pass up to float rounding.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from graphinterp.interpret.label_tasks import TaskMetrics
from graphinterp.interpret.piecewise import PiecewiseLogits

__all__ = ["LinearStates", "ELEMENTWISE", "capture_inputs", "sequential_suffix"]

#: Modules that act elementwise (in eval mode): the fast path may look through them.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.Identity, nn.Dropout)
# largest (states x examples x width) tensor of one batch: 16 MB in float32, under glibc's largest mmap
# threshold (32 MB), so the batches reuse heap memory instead of mapping (and zeroing) fresh pages each
# time: on CIFAR-10 the final passes spent a fifth of their time in the kernel with 64 MB batches
_MAX_ELEMENTS = 1 << 22


def sequential_suffix(model: nn.Module, module: nn.Module) -> Optional[List[nn.Module]]:
    """The modules after ``module`` when ``model`` is a plain ``nn.Sequential`` holding it as a child, else None."""
    if not isinstance(model, nn.Sequential) or type(model).forward is not nn.Sequential.forward:
        return None
    children = list(model)
    for k, child in enumerate(children):
        if child is module:
            return children[k + 1:]
    return None


def capture_inputs(model: nn.Module, modules: List[nn.Module], x: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
    """The input of each of ``modules`` on ``x`` (its calls concatenated), from one forward pass of ``model``
    with its weights as they are now."""
    seen: List[list] = [[] for _ in modules]
    handles = [m.register_forward_pre_hook(lambda _m, args, out=out: out.append(args[0].detach()))
               for m, out in zip(modules, seen)]
    try:
        with torch.no_grad():
            for s in range(0, len(x), batch_size):
                model(x[s:s + batch_size])
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(out) for out in seen]


class LinearStates:
    """Cumulative single-edge removals in one Linear layer, evaluated as a batch of states.

    The model's weights must hold the current circuit (masked in place) while this object lives;
    the layer's own weight is read from ``module`` and written back by :meth:`commit`.
    """

    def __init__(self, model: nn.Module, module: nn.Linear, metrics: TaskMetrics, batch_size: int = 4096,
                 layer_input: Optional[torch.Tensor] = None) -> None:
        self.model, self.module, self.metrics = model, module, metrics
        a = capture_inputs(model, [module], metrics.x, batch_size)[0] if layer_input is None else layer_input
        self.n_examples = len(metrics.x)
        if a.dim() < 2 or a.shape[0] != self.n_examples:
            raise ValueError("the layer's input is not (N, ..., features)")
        self.extra = tuple(a.shape[1:-1])  # positions of a sequence model: rows = N x positions
        self.a_t = a.reshape(-1, a.shape[-1]).T.contiguous()  # (in, rows): one row per input unit
        self.w = module.weight.detach()
        self.bias = None if module.bias is None else module.bias.detach()
        suffix = None if self.extra else sequential_suffix(model, module)
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
        self.pl = (self.M is not None and len(rest) == 2 and type(rest[0]) is nn.ReLU and isinstance(rest[1], nn.Linear)
                   and self.a_t.shape[1] == self.n_examples)
        self.width = self.M.out_features if self.M is not None else module.out_features
        self._pieces: Optional[Tuple[int, PiecewiseLogits, torch.Tensor]] = None
        self._exact()

    def _act(self, z: torch.Tensor) -> torch.Tensor:
        for m in self.acts:
            z = m(z)
        return z

    def _exact(self) -> None:
        with torch.no_grad():
            self.z_t = self.w @ self.a_t  # (out, N): one row per output unit
            if self.bias is not None:
                self.z_t += self.bias[:, None]
        self._y: Optional[torch.Tensor] = None
        self.commits = 0

    @property
    def y(self) -> Optional[torch.Tensor]:
        """``M``'s output for the current circuit (computed when first needed after a change)."""
        if self._y is None and self.M is not None:
            with torch.no_grad():
                self._y = self.M(self._act(self.z_t.T))
        return self._y

    def _piecewise(self, o: int) -> Tuple[PiecewiseLogits, torch.Tensor]:
        """The logits as a function of output ``o``'s shift, and the activation it shifts from.

        Valid while only column ``o`` of ``z`` changes: removing edges into ``o`` moves ``M``'s output
        along ``M.weight[:, o]`` only, so the pieces built here serve every later state of ``o``."""
        if self._pieces is None or self._pieces[0] != o:
            self._pieces = (o, PiecewiseLogits(self.rest[1], self.M.weight[:, o], self.y), self._act(self.z_t[o]).clone())
        return self._pieces[1], self._pieces[2]

    def max_states(self) -> int:
        return max(1, _MAX_ELEMENTS // max(1, self.a_t.shape[1] * max(self.width, self.z_t.shape[0])))

    @torch.no_grad()
    def evaluate(self, o: torch.Tensor, i: torch.Tensor, cumulative: bool = True,
                 piecewise: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Metrics of the states "edges ``(o[:t+1], i[:t+1])`` removed", t = 0..T-1 (edges not yet removed);
        with ``cumulative=False``, of the states "edge ``(o[t], i[t])`` removed alone".

        ``piecewise`` (default: whenever it applies) evaluates a block of one output unit through
        :class:`PiecewiseLogits`, built once per unit: worth it for units with many edges to walk."""
        d = -(self.w[o, i][:, None] * self.a_t[i])  # (T, N): change of output o_t
        t, n = d.shape
        acc = (lambda v: torch.cumsum(v, 0)) if cumulative else (lambda v: v)
        if self.M is not None:
            bounds = torch.nonzero(o[1:] != o[:-1]).flatten().tolist() + [t - 1]
            if (self.pl if piecewise is None else piecewise and self.pl) and len(bounds) == 1:
                logits_of, base = self._piecewise(int(o[0]))  # one output unit: piecewise linear in its shift
                g = self._act(self.z_t[o[0]] + acc(d)) - base
                return self.metrics.class_first(logits_of(g), examples_first=True)
            after, before, start = torch.empty_like(d), torch.empty_like(d), 0
            for end in bounds:  # runs of the same output unit (row-major order keeps them contiguous)
                run = slice(start, end + 1)
                col = self.z_t[o[start]]
                after[run] = col + acc(d[run])
                before[run] = torch.cat([col[None], after[start:end]]) if cumulative else col
                start = end + 1
            r = self._act(after) - self._act(before)  # (T, N)
            upd = r[:, :, None] * self.M.weight.T[o][:, None, :]  # (T, N, width)
            y = self.y + acc(upd)
            logits = self.rest(y.reshape(t * n, -1)).reshape(t, self.n_examples, -1)
            return self.metrics(logits)
        e = torch.zeros(t, n, self.z_t.shape[0], dtype=d.dtype, device=d.device)
        e[torch.arange(t, device=d.device), :, o] = d
        z = self.z_t.T + acc(e)
        if self.rest is not None:
            logits = self.rest(z.reshape(t * n, -1)).reshape(t, self.n_examples, -1)
            return self.metrics(logits)
        return self._through_model(z)

    def _through_model(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        t, n = z.shape[0], self.n_examples
        handle = self.module.register_forward_hook(lambda _m, _args, _out: z.reshape(t * n, *self.extra, -1))
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
        self.z_t.index_add_(0, o, -(self.w[o, i][:, None] * self.a_t[i]))
        self.module.weight[o, i] = 0.0
        self.commits += 1
        self._y = None
        if self._pieces is not None and bool((o != self._pieces[0]).any()):
            self._pieces = None
        if self.commits >= 64:
            self._exact()
