"""The part of a graphinterp transformer that a circuit search re-runs: :class:`AnswerTail`.

Circuits of a transformer prune its MLP weights only (:mod:`graphinterp.interpret.transformer_circuits`),
so everything before the first MLP (embeddings, first attention) is computed once
(:func:`stream_input`) and each candidate runs :class:`AnswerTail`, the model from that residual
stream to the answer logits. Three things keep a candidate cheap:

* **pruned hidden units are skipped**: an MLP runs ``fc_in`` and ``fc_out`` over the hidden units
  whose ``fc_out`` column is not all zero only (the others add exactly 0);
* **unchanged stages are reused** (models of two or more layers): the tail runs in stages (block
  ``i``'s attention, block ``i``'s MLP) and keeps each stage's output with what it was computed
  from; a stage whose input is the same tensor as before and whose weights are equal to those it
  was computed with is not run again, so a candidate that only changes the last block re-runs that
  block's MLP on the last position, not the whole model. A stage whose modules carry hooks or an
  overridden ``forward`` always runs;
* **the last block's MLP has a linear suffix** (:meth:`AnswerTail.linear_suffix`): what follows its
  ``fc_in`` / ``fc_out`` on the last position is ``act -> fc_out -> readout`` / ``readout``, which
  :class:`graphinterp.interpret.linear_states.LinearStates` evaluates for many single-edge states
  at once.
"""
from __future__ import annotations

import itertools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from graphinterp.common.errors import DataError, UnsupportedModelError
from graphinterp.common.inference import eval_mode
from graphinterp.sources.transformer import _ACTS

__all__ = ["AnswerTail", "stream_input", "check_transformer"]

_TOKENS = itertools.count(1)  # identities of stage outputs
_SPARSE_DENSITY = 0.1  # fc_out with fewer non-zero weights than this share runs as a sparse product


def check_transformer(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` unless ``model`` is a graphinterp transformer (or its tail)."""
    if not (hasattr(model, "blocks") and hasattr(model, "unembed") and hasattr(model, "readout")):
        raise UnsupportedModelError(f"{type(model).__name__} is not a graphinterp transformer "
                                    "(graphinterp.sources.transformer.transformer); transformer circuits need one")
    if model.readout not in ("last", "all"):
        raise UnsupportedModelError(f"unknown transformer readout {model.readout!r}; expected 'last' or 'all'")


class _Stage:
    """One cached stage output: the input it was computed from and snapshots of its weights.

    The input is either the token of the stage before (``("stage", token)``) or a tensor, identified
    by its storage, shape, strides and version counter; the tensor itself is held (``anchor``) so
    that its memory cannot be handed to another tensor that would then look the same.
    """

    def __init__(self) -> None:
        self.key: Optional[tuple] = None
        self.anchor: Optional[torch.Tensor] = None
        self.params: List[Tuple[torch.Tensor, int, torch.Tensor]] = []  # (param, version seen, snapshot)
        self.out: Optional[torch.Tensor] = None
        self.token = 0

    def valid(self, key: tuple) -> bool:
        if self.out is None or key != self.key:
            return False
        for n, (p, version, snap) in enumerate(self.params):
            if p._version != version:  # rewritten (the search writes every weight each time): compare values
                if not torch.equal(p, snap):
                    return False
                self.params[n] = (p, p._version, snap)
        return True

    def store(self, key: tuple, anchor: Optional[torch.Tensor], params: Sequence[torch.Tensor],
              out: torch.Tensor) -> None:
        self.key, self.anchor, self.out, self.token = key, anchor, out, next(_TOKENS)
        self.params = [(p, p._version, p.detach().clone()) for p in params]


def _plain(modules: Sequence[nn.Module]) -> bool:
    """No hooks and no overridden ``forward`` on any of the modules or their children."""
    for top in modules:
        for m in top.modules():
            if m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__:
                return False
    return True


def _key(src) -> tuple:
    """The identity of a stage's input: a stage token, or a tensor's storage, layout and version."""
    if isinstance(src, torch.Tensor):
        return ("tensor", src.data_ptr(), tuple(src.shape), src.stride(), src._version, src.dtype, src.device)
    return ("stage", src)


class AnswerTail(nn.Module):
    """The transformer from the residual stream before the first MLP block to the answer logits.

    Input: :func:`stream_input` of the token ids, ``(N, d_model)`` for a one-layer model (the last
    position only), ``(N, T, d_model)`` otherwise. Output: the logits ``(N, n_out)``, equal to
    ``model(ids)``. The modules are the model's own (shared, not copied), and parameter names match
    the model's (``blocks.0.mlp.fc_in.weight``). Stage outputs are reused while their inputs and
    weights are unchanged (see the module docstring); ``cache=False`` always recomputes.
    """

    def __init__(self, model: nn.Module, cache: bool = True) -> None:
        super().__init__()
        check_transformer(model)
        self.blocks, self.ln_f, self.unembed = model.blocks, model.ln_f, model.unembed
        self.cache = cache and len(self.blocks) > 1
        self._stages: Dict[tuple, _Stage] = {}

    # ------------------------------------------------------------------ stages
    def _run(self, name: tuple, src, modules: Sequence[nn.Module], compute: Callable[[], torch.Tensor]):
        """``(output, source for the next stage)`` of one stage, reused when its input (a tensor, or the
        token of the stage before) and the modules' weights are unchanged."""
        if not self.cache or torch.is_grad_enabled() or not _plain(modules):
            out = compute()
            return out, out
        stage = self._stages.setdefault(name, _Stage())
        key = _key(src)
        if not stage.valid(key):
            stage.store(key, src if isinstance(src, torch.Tensor) else None,
                        [p for m in modules for p in m.parameters()], compute())
        return stage.out, stage.token

    def _stream(self, h: torch.Tensor, upto: Optional[int] = None) -> torch.Tensor:
        """Run the blocks on ``h`` and return the stream; with ``upto``, stop before block ``upto``'s MLP."""
        last, src = len(self.blocks) - 1, h
        for i, block in enumerate(self.blocks):
            if i > 0:  # block 0's attention is part of the input
                h, src = self._run((i, "attn"), src, [block.ln1, block.attn],
                                   lambda b=block, x=h, lo=i == last: (x[:, -1:] if lo else x) + b.attn(b.ln1(x), lo))
            if i == upto:
                return h
            h, src = self._run((i, "mlp"), src, [block.ln2, block.mlp],
                               lambda b=block, x=h: x + _sparse_mlp(b.mlp, b.ln2(x)))
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self._stream(h)
        if h.dim() == 3:
            h = h[:, -1]
        return self.unembed(self.ln_f(h))

    def linear_suffix(self, module: nn.Module, x: torch.Tensor) -> Optional[List[nn.Module]]:
        """What follows ``module`` on the task input ``x``, as modules applied in turn to its ``(rows, out)``
        output, for the batched single-edge passes (:class:`graphinterp.interpret.linear_states.LinearStates`).

        For every block's ``fc_in`` (``act -> fc_out -> readout``) and ``fc_out`` (``readout``); the
        readout adds the stream the MLP reads (computed here, with the current weights: only
        ``module`` changes during a pass) and runs the blocks after it. ``rows`` is a multiple of
        ``len(x)`` (states of the same examples one after the other) times the positions the MLP
        runs on (the last one for the last block). None for other modules."""
        for i, block in enumerate(self.blocks):
            mlp = block.mlp
            if module is mlp.fc_in or module is mlp.fc_out:
                break
        else:
            return None
        last = len(self.blocks) - 1
        with torch.no_grad():
            if len(self.blocks) == 1:
                if x.dim() != 2:
                    return None
                stream = x
            else:
                stream = self._stream(x, upto=i)
                stream = stream[:, -1] if i == last else stream
        readout = _Readout(stream, self.ln_f, self.unembed, list(self.blocks)[i + 1:])
        if module is mlp.fc_out:
            return [readout]
        return [nn.ReLU() if mlp.act == "relu" else nn.GELU(), mlp.fc_out, readout]


def _sparse_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` computed over the hidden units that ``fc_out`` still reads (the others add exactly 0).

    Pruned circuits keep few units, so this spares most of ``fc_in`` and ``fc_out``; with hooks on
    either (the batched passes capture their input), or when gradients are recorded (the attribution
    score differentiates the task loss with respect to every weight, pruned units' included), the
    module runs as usual.
    """
    fc_in, out = mlp.fc_in, mlp.fc_out
    act = _ACTS[mlp.act]
    if not _plain([out]) or torch.is_grad_enabled():
        return mlp(x)
    w = out.weight.detach()
    nonzero = w.ne(0)
    if int(nonzero.sum()) < _SPARSE_DENSITY * w.numel() and x.dim() >= 2:
        # few weights left: act(fc_in(x)) with units first, then one sparse product
        u = fc_in(x)
        z_t = act(u.reshape(-1, u.shape[-1]).T)  # (hidden, rows); a view when fc_in's output is units-first
        y = torch.sparse.mm(w.to_sparse(), z_t if z_t.is_contiguous() else z_t.contiguous()).T
        y = y.reshape(*u.shape[:-1], w.shape[0])
        return y if out.bias is None else y + out.bias
    alive = torch.nonzero(nonzero.any(0)).flatten()
    if alive.numel() > 0.5 * out.in_features:
        return out(act(fc_in(x)))
    if _plain([fc_in]):
        bias = None if fc_in.bias is None else fc_in.bias.index_select(0, alive)
        z = act(F.linear(x, fc_in.weight.index_select(0, alive), bias))
    else:  # fc_in's output is overridden (the search's incremental layer): take the live units from it
        z = act(fc_in(x).index_select(-1, alive))
    return F.linear(z, w.index_select(1, alive), out.bias)


class _Readout(nn.Module):
    """``unembed(ln_f(rest(y + h)))`` for an MLP output ``y`` of the examples whose stream is ``h`` (tiled):
    ``rest`` are the blocks after the MLP (the last on its last position)."""

    def __init__(self, h: torch.Tensor, ln_f: nn.Module, unembed: nn.Module, rest=()) -> None:
        super().__init__()
        self.h, self.ln_f, self.unembed, self.rest = h, ln_f, unembed, list(rest)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = self.h.to(y.dtype)
        s = y.view(-1, *h.shape) + h  # (states, N, ..., d)
        s = s.view(-1, *h.shape[1:])
        for j, block in enumerate(self.rest):
            s = block(s, last_only=j == len(self.rest) - 1)
        if s.dim() == 3:
            s = s[:, -1]
        return self.unembed(self.ln_f(s))


@torch.no_grad()
def stream_input(model: nn.Module, ids: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
    """The residual stream that :class:`AnswerTail` reads: embeddings plus the first attention layer."""
    check_transformer(model)
    if ids.dim() != 2:
        raise DataError(f"expected token ids of shape (N, T), got {tuple(ids.shape)}")
    device = next(model.parameters()).device
    first, one = model.blocks[0], len(model.blocks) == 1
    out = []
    with eval_mode(model):
        for s in range(0, len(ids), batch_size):
            x = ids[s:s + batch_size, -model.n_ctx:].to(device)
            h = model.embed(x) + model.pos(torch.arange(x.shape[1], device=device))
            a = first.attn(first.ln1(h), one)
            out.append(h[:, -1] + a[:, 0] if one else h + a)
    return torch.cat(out)
