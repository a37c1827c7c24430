"""Follow every channel through one forward pass: the raw material of a model's DAG.

A :class:`ChannelTracer` is a ``TorchFunctionMode``: while a model runs one example forward pass,
it sees every torch call and keeps, beside each tensor, a *shadow*: an integer tensor of the same
shape giving, for every element, the graph node (neuron, channel, residual-stream dimension) that
the element belongs to, or ``-1`` when it has none (attention scores, statistics).

* A weight layer (``F.linear``, ``F.conv1d/2d/3d``, GPT-2's ``addmm`` / ``x @ W``) reads its input
  nodes from the shadow of its input, and creates a fresh node per output channel.
* Layout operations (view, reshape, permute, slicing, ``split``, ``cat``, ``unflatten``, ...) are
  applied to the shadow itself, so channel identity survives any reshaping: a fused qkv projection
  split into heads, a channels-last flatten, a DenseNet concatenation.
* Elementwise operations merge node identities: a residual ``x + f(x)`` makes ``f``'s output
  channels the same nodes as ``x``'s (the residual stream is one set of nodes that blocks read from
  and write to); a gate ``act(gate(x)) * up(x)`` makes gate and up units one set of hidden units.
* ``attn @ v`` and ``scaled_dot_product_attention`` keep ``v``'s nodes; ``q @ k^T`` has none.
* Normalisation is recorded for folding: BatchNorm's eval scale and layer_scale into the weight
  layer that produced the tensor, LayerNorm / RMSNorm gains into the layers that consume it. A gain
  is folded into its consumers only when weight layers are the only readers of the normalised tensor
  (pre-LN: ``ln_1 -> q, k, v``); when anything else reads it too (a post-LN or ConvNeXt-stem norm whose
  output is the residual stream, an activation, a concatenation) no layer can absorb it exactly, so the
  fold is undone and the norm is listed in ``unfolded`` with the readers that prevent it.

Operations the tracer does not know are never silent: they are counted in ``notes``.

Two parts of the tracer live in modules of their own and are mixed into :class:`ChannelTracer`: the node
ids, their spaces and merges in :mod:`graphinterp.graph.trace_nodes` (:class:`NodeSpaces`, with
``SAME_SPACE_MIX``, still importable from here), and the tensors computed from parameters, buffers and
other constants alone in :mod:`graphinterp.graph.trace_params` (:class:`ParamTensors`).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.overrides import TorchFunctionMode

from graphinterp.graph.trace_nodes import SAME_SPACE_MIX, NodeSpaces  # noqa: F401 - SAME_SPACE_MIX re-exported
from graphinterp.graph.trace_numbers import ScaledSums
from graphinterp.graph.trace_ops import _IDENTITY, _LAYOUT, _SKIP, LayerCall, _Gain, _OutFolds
from graphinterp.graph.trace_params import ParamTensors, _tensor_attributes
from graphinterp.graph.trace_settle import RETURNED, settle
from graphinterp.graph.trace_rules import apply_rule
from graphinterp.graph.trace_ties import TieOwners, embedding_ties

__all__ = ["ChannelTracer", "LayerCall"]

class ChannelTracer(NodeSpaces, ParamTensors, TorchFunctionMode):
    """Record weight-layer calls and channel identities during one forward pass.

    Parameters
    ----------
    model : torch.nn.Module
        Its parameters are what makes a call a weight layer; its module names name the layers.
    fold : bool
        Record normalisation scales for folding (BatchNorm, LayerNorm/RMSNorm gains, layer_scale).
    """

    def __init__(self, model: torch.nn.Module, *, fold: bool = True) -> None:
        super().__init__()
        self.fold = fold
        self.param_names: Dict[int, str] = {}
        aliases: Dict[int, List[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self.param_names.setdefault(id(p), name)
            aliases.setdefault(id(p), []).append(name)
        self.tied = embedding_ties(model, aliases)
        # first names of the parameters registered under several names (tied weights)
        self.aliased = {names[0] for names in aliases.values() if len(names) > 1}
        self.ties = TieOwners(model, aliases)
        self.params: Dict[str, torch.Tensor] = dict(model.named_parameters())  # first name -> tensor
        # buffer id -> its module's name (a BatchNorm without affine weight is named by its running statistics)
        self.buffer_owner: Dict[int, str] = {id(b): name.rpartition(".")[0] for name, b in model.named_buffers()}
        self.calls: List[LayerCall] = []
        self.embeddings: Dict[str, int] = {}
        self.position_mixing: set = set()  # parameters of Linears applied over positions (token mixing): not edges
        self.spaces: List[Tuple[str, int, int]] = []  # (name, first id, size)
        self._space_names: set = set()
        self.notes: Counter = Counter()
        self.number_scaled: Dict[int, float] = {}  # tensor id -> a number in the code that scaled it (trace_numbers)
        self.merged_sums = ScaledSums()  # sums of two node sets and the numbers that scaled them (trace_numbers)
        self.number_folds: List[Tuple[int, str, Optional[int]]] = []  # (layer, tag, scaled output id or None: a sum's)
        self.unfolded: Dict[str, str] = {}
        self.fresh_inputs: Dict[str, int] = {}  # layer -> input features it read without nodes (not the first layer)
        self._parent: List[int] = []
        self._space_of: List[int] = []
        self._shadow: Dict[int, torch.Tensor] = {}
        self._direct: Dict[int, int] = {}
        self._out_folds = _OutFolds()  # out-folds (BatchNorm, layer_scale) and the other readers of their inputs
        self._gain: Dict[int, _Gain] = {}
        self._gains: List[_Gain] = []  # every pending gain, settled when the trace ends
        self._settled = False
        self._param_view: Dict[int, Tuple[str, torch.Tensor]] = {}
        # a tensor computed from one parameter alone (gamma.view(1, -1, 1, 1), Gemma's 1 + weight, a cast):
        # id -> (parameter name, flat index into it of each element or None, whether the values are the parameter's)
        self._derived: Dict[int, Tuple[str, Optional[torch.Tensor], bool]] = {}
        # a tensor computed from buffers, plain tensor attributes or several parameters alone, not from the input:
        # id -> the module it comes from (FrozenBatchNorm2d's weight * (running_var + eps).rsqrt(), g * h); such a
        # scale is folded or reported
        self._const: Dict[int, str] = {id(b): name.rpartition(".")[0] or name for name, b in model.named_buffers()}
        self._const.update(_tensor_attributes(model, self._const))
        self._keep: List[Any] = []
        self.inplace_direct: Optional[int] = None  # the layer whose raw output the in-place op being applied modifies
        self._uses: Counter = Counter()
        self.mixed_spaces: Dict[str, None] = {}  # spaces whose nodes an element-wise sum mixed (SAME_SPACE_MIX)

    # ------------------------------------------------------------ nodes (the rest: trace_nodes.NodeSpaces)
    def tag(self, tensor: torch.Tensor, ids: torch.Tensor, dim: int) -> None:
        """Give ``tensor``'s dimension ``dim`` the node ids ``ids`` (the model input, an embedding)."""
        shape = [1] * tensor.dim()
        shape[dim] = -1
        self._set(tensor, ids.view(shape).expand(tensor.shape))

    # ------------------------------------------------------------ shadows
    def _set(self, tensor: Any, shadow: Optional[torch.Tensor]) -> None:
        if isinstance(tensor, torch.Tensor) and shadow is not None and tuple(shadow.shape) == tuple(tensor.shape):
            self._keep.append(tensor)
            self._shadow[id(tensor)] = shadow

    def shadow(self, tensor: Any) -> Optional[torch.Tensor]:
        """The node ids of ``tensor``'s elements, or None if it carries no node."""
        return self._shadow.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None

    def _shadow_or_none(self, t: torch.Tensor) -> torch.Tensor:
        s = self.shadow(t)
        return s if s is not None else torch.full(t.shape, -1, dtype=torch.long)

    # ------------------------------------------------------------ dispatch
    def __torch_function__(self, func, types_=(), args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "") or ""
        if name == "__get__":
            name = getattr(getattr(func, "__self__", None), "__name__", "__get__")
        out = func(*args, **kwargs)
        if self._derived and args and isinstance(args[0], torch.Tensor) and id(args[0]) in self._derived and (
                name in _IN_PLACE or (name.endswith("_") and not name.startswith("__"))):
            del self._derived[id(args[0])]  # written in place: no longer the parameter's values (w.mul_(mask))
        if name == "__setitem__" and args and isinstance(args[0], torch.Tensor):
            self._setitem(args)
            return out
        if name in _SKIP or not _has_tensor(out):
            return out
        operands = [t for a in list(args) + list(kwargs.values())
                    for t in (a if isinstance(a, (list, tuple)) else (a,)) if isinstance(t, torch.Tensor)]
        if isinstance(out, torch.Tensor) and id(out) not in self.param_names:
            self._derive(name, operands, args, kwargs, out)
        read = self._gains_read(args, kwargs) if self._gain else []
        direct = [id(t) for t in operands if id(t) in self._direct]
        self.merged_sums.read(operands)
        if name in _IDENTITY or name in _LAYOUT:
            self.merged_sums.follow(operands, out)
        if isinstance(out, torch.Tensor) and name not in _IDENTITY and name not in _LAYOUT:
            self._gain.pop(id(out), None)  # an in-place op (relu_) on a normalised or direct output
            popped = self._direct.pop(id(out), None)
            self.inplace_direct = popped if args and out is args[0] else None  # y.mul_(gamma) may fold into y's layer
        try:
            apply_rule(self, name, args, kwargs, out)
        except Exception as exc:  # never break the model's forward; report instead
            self.notes[f"{name}: not followed ({type(exc).__name__})"] += 1
        if isinstance(out, torch.Tensor) and self.shadow(out) is None:
            self._constant(operands, out)
        if direct:
            self._out_folds.read(name, direct, out, self._direct)
        for gain, n_folded in read:
            outs = [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)]
            if len(gain.folded_by) == n_folded and not any(self._gain.get(id(o)) is gain for o in outs):
                gain.leaks[name] += 1  # read by something that neither folds nor carries the gain
        return out

    def __enter__(self):
        self.ties.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self.ties.__exit__(None, None, None)
            raise

    def __exit__(self, *exc):
        try:
            result = super().__exit__(*exc)
            self.settle_gains()
        finally:
            self.ties.__exit__(*exc)
        return result

    def _setitem(self, args) -> None:
        """``target[index] = value``: the target's elements at ``index`` now carry ``value``'s nodes.

        Writing into a normalised tensor or a layer's raw output changes it for every reader, so a pending
        gain or an out-fold on either tensor is treated as read by an operation that does not fold it.
        """
        target, index, value = args[0], args[1], args[2] if len(args) > 2 else None
        s_value = self.shadow(value)
        s_target = self.shadow(target)
        if s_value is None and s_target is None:
            return
        try:
            res = (s_target if s_target is not None else torch.full(target.shape, -1, dtype=torch.long)).clone()
            res[index] = s_value if s_value is not None else -1
        except Exception as exc:  # never break the model's forward; report instead
            self.notes[f"__setitem__: not followed ({type(exc).__name__})"] += 1
            return
        self._shadow.pop(id(target), None)
        self._set(target, res)
        for t in (target, value):
            gain = self._gain.get(id(t)) if isinstance(t, torch.Tensor) else None
            if gain is not None:
                gain.leaks["__setitem__"] += 1
        direct = [id(t) for t in (target, value) if isinstance(t, torch.Tensor) and id(t) in self._direct]
        if direct:
            self._out_folds.read("__setitem__", direct, target, self._direct)
        self._gain.pop(id(target), None)
        self._direct.pop(id(target), None)

    def returned(self, output: Any) -> None:
        """Count the model's return value as a reader of every tensor in it (call before the trace ends).

        A normalised tensor that the model also returns (a bare ``BertModel``'s last hidden state, read
        by the pooler too) keeps its gain on that path, so folding the gain into the weight layers
        would describe another function; a layer's raw output that is returned likewise keeps a
        BatchNorm scale out of that layer. Tensors are found in tuples, lists, dicts (HuggingFace
        ``ModelOutput`` included) and dataclasses, a few levels deep.
        """
        for t in _tensors_in(output):
            gain = self._gain.get(id(t))
            if gain is not None:
                gain.leaks[RETURNED] += 1
            if id(t) in self._direct:
                self._out_folds.returned(id(t), RETURNED)

    # ------------------------------------------------------------ gains
    def _gains_read(self, args, kwargs) -> List[Tuple[_Gain, int]]:
        """The pending gains on the tensors an operation reads, with how many layers had folded each."""
        found: Dict[int, Tuple[_Gain, int]] = {}
        for a in list(args) + list(kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                gain = self._gain.get(id(t)) if isinstance(t, torch.Tensor) else None
                if gain is not None:
                    found.setdefault(id(gain), (gain, len(gain.folded_by)))
        return list(found.values())

    def settle_gains(self) -> None:
        """Undo the input-gain folds of every gain whose tensor was also read by a non-weight operation.

        ``W @ (g * x)`` equals ``(W * g) @ x`` for each layer that reads ``g * x``, but a residual sum
        ``g * x + f(g * x)`` (or an activation, a concatenation) keeps ``g`` outside every layer: folding
        it into some of the readers only would make the graph describe another function. Such a norm is
        left unfolded (raw weights, as for any unfoldable normalisation) and listed in ``unfolded``.
        Called when the trace ends; idempotent.
        """
        if self._settled:
            return
        self._settled = True
        settle(self)
        for note in self.merged_sums.notes():
            self.notes[note] += 1


_IN_PLACE = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__ipow__", "copy_"}


def _tensors_in(value: Any, depth: int = 4) -> List[torch.Tensor]:
    """The tensors in a model's return value: itself, or inside tuples, lists, dicts and dataclasses."""
    if isinstance(value, torch.Tensor):
        return [value]
    if depth == 0:
        return []
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (tuple, list)):
        items = list(value)
    elif hasattr(value, "__dataclass_fields__"):
        items = [getattr(value, f, None) for f in value.__dataclass_fields__]
    else:
        return []
    return [t for v in items for t in _tensors_in(v, depth - 1)]


def _has_tensor(out: Any) -> bool:
    if isinstance(out, torch.Tensor):
        return True
    return isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out)
