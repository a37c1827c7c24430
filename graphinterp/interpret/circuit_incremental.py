"""The incremental layer of a :class:`~graphinterp.interpret.circuit_eval.TaskEvaluator`: :class:`IncrementalLayer`.

Most candidates of an iterative pruning search differ from the last accepted circuit in a few
edges of one layer, so the evaluator avoids recomputing what cannot have changed. The *incremental
layer* is the first Linear layer:

* its input is fixed as long as the masks of the layers before it (a CNN's convolutions; none in an
  MLP) stay as accepted, so that input is captured once per accepted prefix;
* its output is kept for the last accepted mask and updated for a candidate from the changed edges
  only: removing edge ``(o, i)`` subtracts ``w_oi * a_i`` from output ``o`` (in a sequence model,
  at every position: the input's leading dimensions are flattened into rows; exact up to float
  rounding; recomputed exactly after large changes, and at the latest every ``EXACT_EVERY`` = 256th
  accepted step);
* when it is the first layer (an MLP) the model runs with that layer's output overridden by the
  lookup (:meth:`~graphinterp.interpret.interventions.Interventions.override`); when layers come before it, the model must be an ``nn.Sequential`` with the layer as a
  direct child, and only the modules after it run (for the paper's CNN this skips the convolution
  and pooling, about three quarters of a forward pass, and the 4096-input ``fc1``).

A candidate that changes an edge before the incremental layer is evaluated by a full forward pass,
and accepting it re-captures the layer's input, unless that edge is a kernel of a single
convolution right before it (the paper's CNN): then
:class:`~graphinterp.interpret.conv_prefix.ChannelPrefix` recomputes only the changed output
channels and the layer's output is updated from the input features they feed (re-captured every 64
such accepted steps).

:class:`IncrementalLayer` holds these methods and is mixed into the evaluator, whose ``__init__``
sets up the state they use (``first``, ``j``, ``offset``, ``a_t``, ``z_t``, ``committed``, ``prefix``,
``conv_prefix``, ...); :class:`LastEval` is what the last evaluation left for ``accept`` to commit.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from graphinterp.interpret.conv_prefix import ChannelPrefix
from graphinterp.interpret.edges import EdgeLayer
from graphinterp.interpret.interventions import interventions
from graphinterp.interpret.linear_states import sequential_suffix

__all__ = ["IncrementalLayer", "EXACT_EVERY", "Pending", "LastEval"]

#: The incremental layer's output is recomputed exactly at the latest at every this many accepted steps.
EXACT_EVERY = 256


class Pending(enum.Enum):
    """What the last evaluation left for :meth:`TaskEvaluator.accept` to commit."""

    NOTHING = "nothing"  # no incremental state to update (or already committed)
    PREFIX = "prefix"  # a layer before the incremental layer changed: its input must be captured again
    LAYER = "layer"  # only the incremental layer changed: commit the evaluated mask and output
    CHANNELS = "channels"  # the convolution before it changed too: also commit the recomputed channels


@dataclass(frozen=True)
class LastEval:
    """The last evaluation of the incremental layer: ``kind``, and for ``Pending.LAYER`` its mask and output."""

    kind: Pending = Pending.NOTHING
    mask: Optional[torch.Tensor] = None
    z_t: Optional[torch.Tensor] = None
    exact: bool = False
    channels: Optional[tuple] = None  # Pending.CHANNELS: (prefix masks, features, their values, conv channels)


_NOTHING = LastEval()


class IncrementalLayer:
    """The incremental layer of a :class:`~graphinterp.interpret.circuit_eval.TaskEvaluator` (module docstring)."""

    # ------------------------------------------------------------------ the incremental layer
    def _choose_incremental_layer(self) -> None:
        for j, (layer, mod) in enumerate(zip(self.layers, self.modules)):
            if isinstance(mod, nn.Linear) and not layer.is_conv:
                break
        else:
            return
        if "forward" in self.modules[j].__dict__:  # a wrapper installed on the instance: its output is not W a + b
            return
        after = sequential_suffix(self.model, self.modules[j]) if j > 0 else None
        if j > 0 and after is None:
            return
        self.j, self.first = j, self.modules[j]
        if after is not None:
            self.suffix = nn.Sequential(*after)
        self.offset = sum(layer.live.numel() for layer in self.layers[:j])
        self.recommit_after = max(64, self.layers[j].live.numel() // 20)
        if j == 1 and self.layers[0].is_conv:
            self.conv_prefix = ChannelPrefix.build(self.model, self.modules[0], self.first)
        self._capture_first_input({l.name: l.live for l in self.layers[:j]})  # prune starts from the live edges
        if self.first is not None:
            ones = torch.ones_like(self.layers[j].live)
            self._commit(ones, self._full_first(ones))

    @property
    def inc_layer(self) -> EdgeLayer:
        return self.layers[self.j]

    def _capture_first_input(self, prefix: Dict[str, torch.Tensor]) -> None:
        """The incremental layer's input on the task, with the model's weights as they are now."""
        seen: list = []
        with interventions(self.model) as iv, torch.no_grad():
            iv.record(self.first, lambda a: seen.append(a.detach()))
            if self.conv_prefix is not None:
                self.conv_prefix.hooks(iv)
            for start in range(0, len(self.x), self.batch_size):
                self.model(self.x[start:start + self.batch_size])
        if self.conv_prefix is not None:
            self.conv_prefix.capture()
            self.channel_commits = 0
        a = torch.cat(seen)
        if a.dim() < 2 or a.shape[0] != len(self.x) or (a.dim() > 2 and self.suffix is not None):
            self.first = None
            return
        self.extra = tuple(a.shape[1:-1])  # a sequence model's positions: N x positions rows
        self.a_t = a.reshape(-1, a.shape[-1]).T.contiguous()  # (in, rows)
        self.bias = None if self.first.bias is None else self.first.bias.detach()[:, None]
        self.prefix = {name: m.clone() for name, m in prefix.items()}

    def _full_first(self, mask: torch.Tensor) -> torch.Tensor:
        z = self.inc_layer.masked(mask) @ self.a_t
        return z if self.bias is None else z + self.bias

    def _commit(self, mask: torch.Tensor, z_t: torch.Tensor, exact: bool = True) -> None:
        """Make ``mask`` (with the layer's output ``z_t``) the state later diffs start from."""
        self.since_exact = 0 if exact else self.since_exact + 1
        self.committed, self.z_t, self._last = mask.clone(), z_t, _NOTHING

    def _prefix_changed(self, masks: Dict[str, torch.Tensor], changed: Optional[torch.Tensor]) -> bool:
        if self.j == 0:
            return False
        if changed is not None:
            return bool((changed < self.offset).any())
        return any(not torch.equal(masks[l.name], self.prefix[l.name]) for l in self.layers[:self.j])

    def _first_output(self, mask: torch.Tensor, changed: Optional[torch.Tensor]) -> torch.Tensor:
        if changed is not None:  # flat edge indices that differ from the committed state
            idx = changed - self.offset
            idx = idx[(idx >= 0) & (idx < mask.numel())]
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
                    z_t = z_t.index_add(0, o, self.a_t[i] * self.inc_layer.weight[o, i][:, None], alpha=sign)
        self._last = LastEval(Pending.LAYER, mask.clone(), z_t, exact)
        return z_t

    def _prefix_output(self, masks: Dict[str, torch.Tensor], changed: Optional[torch.Tensor]) -> torch.Tensor:
        """The layer's output for a candidate that also changes the convolution before it (channel by channel)."""
        conv = self.layers[0]
        feats, vals, chans = self.conv_prefix.changed_inputs(conv.weight, self.prefix[conv.name], masks[conv.name])
        mask = masks[self.inc_layer.name]
        z_t = self._first_output(mask, changed)  # the layer's own changes, on the committed input
        if feats.numel():
            w = self.inc_layer.weight[:, feats] * mask[:, feats].to(self.inc_layer.weight.dtype)  # those columns only
            z_t = z_t + w @ (vals - self.a_t[feats])
        prefix = {conv.name: masks[conv.name].clone()}
        self._last = LastEval(Pending.CHANNELS, mask.clone(), z_t, False, (prefix, feats, vals, chans))
        return z_t

    def _rows(self, z_t: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """The layer's output for examples ``start:end``, in the shape the model expects."""
        per = z_t.shape[1] // len(self.x)
        out = z_t[:, start * per:end * per].T
        return out.reshape(-1, *self.extra, out.shape[-1]) if self.extra else out

    def accept(self, masks: Dict[str, torch.Tensor]) -> None:
        """Tell the evaluator that ``masks`` (just evaluated) is the new state: later diffs start from it."""
        last = self._last
        if self.first is None or last.kind is Pending.NOTHING:
            return
        if last.kind is Pending.PREFIX:  # the layers before changed: capture the new input (weights are in place)
            mask = masks[self.inc_layer.name]
            self._capture_first_input({l.name: masks[l.name] for l in self.layers[:self.j]})
            if self.first is not None:
                self._commit(mask, self._full_first(mask))
            return
        if not torch.equal(last.mask, masks[self.inc_layer.name]):
            return
        if last.kind is Pending.CHANNELS:
            prefix, feats, vals, chans = last.channels
            if any(not torch.equal(m, masks[name]) for name, m in prefix.items()):
                return
            self.channel_commits += 1
            if self.channel_commits >= 64:  # bound the accumulation of rounding errors: capture again
                self._capture_first_input(prefix)
                if self.first is not None:
                    self._commit(last.mask, self._full_first(last.mask))
                return
            self.a_t[feats] = vals
            self.conv_prefix.commit(chans)
            self.prefix = prefix
        mask, z_t, exact = last.mask, last.z_t, last.exact
        if not exact and self.since_exact + 1 >= EXACT_EVERY:  # bound the accumulation of rounding errors
            z_t, exact = self._full_first(mask), True
        self._commit(mask, z_t, exact)

    def rebase(self, masks: Dict[str, torch.Tensor]) -> None:
        """Make ``masks`` the state later diffs start from, the model's weights holding them in place
        (a final pass changes masks and weights without the evaluator): the layer's input is captured
        again if the layers before it changed, its output recomputed exactly if its own mask did."""
        if self.first is None:
            return
        prefix = {l.name: masks[l.name] for l in self.layers[:self.j]}
        moved = any(not torch.equal(m, self.prefix[name]) for name, m in prefix.items())
        if moved:
            self._capture_first_input(prefix)
        mask = masks[self.inc_layer.name]
        if self.first is not None and (moved or not torch.equal(mask, self.committed)):
            self._commit(mask, self._full_first(mask))
        self._last = _NOTHING
