"""Evaluating a candidate circuit on its label's task, fast: :class:`TaskEvaluator`.

Evaluations write the masked weights into the model's parameters in place, inside a session that
is one :func:`graphinterp.interpret.interventions.interventions` block (everything is restored in
``finally``: the model is never rebuilt, and is unchanged afterwards); gradients for attribution
scores use ``torch.func.functional_call``.

Most candidates of an iterative pruning search differ from the last accepted circuit in a few
edges of one layer, so the evaluator avoids recomputing what cannot have changed: the output of its
*incremental layer*, the first Linear layer, is updated from the changed edges only
(:class:`~graphinterp.interpret.circuit_incremental.IncrementalLayer`, mixed into :class:`TaskEvaluator`;
:mod:`graphinterp.interpret.circuit_incremental` says how).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from graphinterp.interpret.circuit_incremental import EXACT_EVERY, _NOTHING, IncrementalLayer, LastEval, Pending
from graphinterp.interpret.conv_prefix import ChannelPrefix
from graphinterp.interpret.edges import EdgeLayer
from graphinterp.interpret.interventions import Interventions, interventions
from graphinterp.interpret.label_tasks import LabelTask, split_hits, task_terms

__all__ = ["TaskEvaluator", "EXACT_EVERY"]


class TaskEvaluator(IncrementalLayer):
    """``(accuracy, loss)`` of the task under given masks, batched on ``device``; counts calls.

    Inside :meth:`session` (which :func:`graphinterp.interpret.circuit_search.prune` opens) the masked weights
    are written into the model's parameters in place and the incremental layer's output is overridden
    by the lookup, through one :func:`~graphinterp.interpret.interventions.interventions` block that
    restores both in ``finally``. Outside a session each call opens one. ``incremental=False``
    evaluates every candidate by a full forward pass (the reference).
    """

    def __init__(self, model: nn.Module, layers: List[EdgeLayer], task: LabelTask, *, modules: List[nn.Module],
                 batch_size: int = 4096, device=None, incremental: bool = True) -> None:
        self.model, self.layers, self.task, self.batch_size = model, layers, task, batch_size
        self.modules = modules
        self.x, self.pos = task.x.to(device), task.positive.to(device)
        self.w = task.weights().to(device)
        self.n_evals = 0
        self.score_state: Dict[str, Any] = {}  # what a score keeps between the rounds of this search (ScoreContext.state)
        self._session: Optional[Interventions] = None  # the open session's interventions
        self._lookup: Optional[torch.Tensor] = None  # the incremental layer's output for the current batch
        self._last: LastEval = _NOTHING
        # the incremental layer (None: every candidate is evaluated by a full forward pass)
        self.first: Optional[nn.Module] = None
        self.j, self.suffix = 0, None  # its index; the modules after it when only they need to run
        self.offset = 0  # flat index of its first edge
        self.recommit_after = 0  # more changed edges than this: recompute its output exactly
        self.a_t: Optional[torch.Tensor] = None  # its input on the task, (in, rows), rows = N x positions
        self.extra: Tuple[int, ...] = ()  # the positions of its input, if any
        self.bias: Optional[torch.Tensor] = None  # its bias as a column, or None
        self.prefix: Dict[str, torch.Tensor] = {}  # the masks of the layers before it when a_t was captured
        self.committed: Optional[torch.Tensor] = None  # its accepted mask ...
        self.z_t: Optional[torch.Tensor] = None  # ... and output, (out, rows)
        self.since_exact = 0  # accepted steps since z_t was last computed exactly
        self.conv_prefix: Optional[ChannelPrefix] = None  # a convolution before it, evaluated channel by channel
        self.channel_commits = 0  # candidates committed through it since the last capture
        if incremental:
            self._choose_incremental_layer()

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def session(self) -> Iterator["TaskEvaluator"]:
        """Write masked weights in place for the block; the weights and the layer's output are restored in ``finally``."""
        if self._session is not None:
            yield self
            return
        with interventions(self.model) as iv:
            for mod in self.modules:
                iv.original(mod)
            if self.first is not None:
                iv.override(self.first, lambda: self._lookup)
            self._session = iv
            try:
                yield self
            finally:
                self._session, self._lookup = None, None

    def __call__(self, masks: Dict[str, torch.Tensor], changed: Optional[torch.Tensor] = None) -> Tuple[float, float]:
        """Evaluate ``masks``; ``changed`` optionally lists the flat edge indices (layers concatenated) that
        differ from the last accepted state, which spares diffing the incremental layer's mask."""
        self.n_evals += 1
        with self.session(), torch.no_grad():
            z_t = None
            if self.first is not None:
                if self._prefix_changed(masks, changed):
                    if self.conv_prefix is not None:
                        z_t = self._prefix_output(masks, changed)
                    else:
                        self._last = LastEval(Pending.PREFIX)
                else:
                    z_t = self._first_output(masks[self.inc_layer.name], changed)
            for layer, mod in zip(self.layers, self.modules):
                if z_t is None or mod is not self.first:
                    self._session.set_weight(mod, layer.masked(masks[layer.name]))
            hits_pos = hits_neg = loss = 0.0
            try:
                for start in range(0, len(self.x), self.batch_size):
                    end = start + self.batch_size
                    if z_t is not None and self.suffix is not None:
                        logits = self.suffix(z_t[:, start:end].T)
                    else:
                        self._lookup = None if z_t is None else self._rows(z_t, start, end)
                        logits = self.model(self.x[start:end])
                    hit, l = task_terms(logits, self.task.label, self.pos[start:end])
                    hp, hn = split_hits(hit, self.pos[start:end])
                    hits_pos, hits_neg = hits_pos + float(hp), hits_neg + float(hn)
                    loss += float(self.w[start:end] @ l.double())
            finally:
                self._lookup = None
        return float(self.task.accuracy(hits_pos, hits_neg)), loss

    def gradients(self, masks: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Gradient of the task loss with respect to each masked weight (``functional_call``).

        ``torch.autograd.grad`` over the masked weights only: the model's own parameters (biases, norms) take
        part in the forward but their ``.grad`` is left as it was."""
        params = {l.key: l.masked(masks[l.name]).requires_grad_(True) for l in self.layers}
        keys = [l.key for l in self.layers]
        total = [torch.zeros_like(params[k]) for k in keys]
        with torch.enable_grad():
            for start in range(0, len(self.x), self.batch_size):
                index = torch.arange(start, min(start + self.batch_size, len(self.x)), device=self.x.device)
                grads = torch.autograd.grad(self.task_loss(params, index, normalise=False), [params[k] for k in keys],
                                            allow_unused=True)
                for acc, g in zip(total, grads):
                    if g is not None:
                        acc.add_(g)
        return {l.name: g for l, g in zip(self.layers, total)}

    def task_loss(self, params: Dict[str, torch.Tensor], index: torch.Tensor, *, normalise: bool = True) -> torch.Tensor:
        """The task loss on the examples ``index`` with the weights ``params`` (``{parameter name: tensor}``), differentiable.

        The model runs through ``functional_call`` (its own parameters are not touched); the loss is
        the examples' weighted binary cross-entropy (float64), over the weights' sum when ``normalise``
        (a mini-batch's estimate of the task loss) or as is (its share of the task loss)."""
        logits = torch.func.functional_call(self.model, params, (self.x[index],))
        _, l = task_terms(logits, self.task.label, self.pos[index])
        w = self.w[index]
        total = w @ l.double()
        return total / w.sum() if normalise else total
