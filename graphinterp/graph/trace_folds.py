"""How normalisation scales are recorded for folding: BatchNorm, layer_scale, ``x / param``, a single learned
scale and scales computed from buffers (FrozenBatchNorm2d) into the layer before,
LayerNorm / RMSNorm / GroupNorm gains and per-channel scales into the layers after.

The rules of :mod:`graphinterp.graph.trace_rules` for ``batch_norm``, the norm functions, ``param * x``,
``x / param`` and ``x * c`` with ``c`` computed from buffers.
A scale is folded only where one value per node (or, for a layer reading the normalised tensor itself,
one per input feature) reproduces the model; otherwise it is listed in the tracer's ``unfolded`` with why.
The folds that another reader makes inexact are undone when the trace ends (:mod:`graphinterp.graph.trace_settle`).
"""
from __future__ import annotations

from typing import List, Optional

import torch

from graphinterp.graph import trace_ops as T
from graphinterp.graph.trace_rules_layout import arg as _arg, channel_vector as _channel_vector

__all__ = ["DIVS", "MULS", "NOT_FOLDING", "NUMBER", "batch_norm", "norm", "scale_by_constant", "scale_by_param",
           "scale_operands"]


def scale_by_param(tr, tensors: List[torch.Tensor], out) -> bool:
    """``param * x`` with a per-channel parameter (layer_scale, RMSNorm gain), or a single one on a layer's
    output (ReZero's alpha): fold it."""
    p, x = (tensors[0], tensors[1]) if tr.is_param_like(tensors[0]) else (tensors[1], tensors[0])
    source = tr.param_of(p)
    if source is None or tr.shadow(x) is None or tr.shadow(p) is not None or p.dim() > x.dim() or (
            p.numel() <= 1 and _producer(tr, x, out)[0] is None):
        return False
    # the element of the parameter behind each node's scale (for following the fold live while training); not
    # known for a scale computed from the parameter (Gemma's 1 + weight): training refuses to follow that fold
    pname, index, exact = source
    index = index if exact and index is not None else None
    return _fold_scale(tr, x, out, p.detach(), T.layer_name(pname), "per-channel scale", index)


#: The kind of a fold of a number written in the code (its tag: ``"0.1 (number in the code)"``; see trace_numbers).
NUMBER = "number in the code"

#: The operations that scale a tensor: ``x * c``, ``c * x`` and ``x / c``.
MULS = {"mul", "__mul__", "__rmul__", "mul_", "__imul__"}
DIVS = {"div", "__truediv__", "div_", "__itruediv__", "true_divide"}


def scale_by_constant(tr, name: str, tensors: List[torch.Tensor], out) -> bool:
    """``x * c`` or ``x / c`` with ``c`` computed from buffers (FrozenBatchNorm2d's scale), or ``x / param``: fold it.

    The values are the model's now (a buffer's); training cannot follow such a fold (no parameter element
    per node) and refuses it with the reason."""
    x, c = scale_operands(tr, name, tensors)
    if x is None or c.dim() > x.dim() or (c.numel() <= 1 and _producer(tr, x, out)[0] is None):
        return False
    owner, src = tr.constant_owner(c), tr.param_of(c)
    if owner is None and (src is None or name not in DIVS):
        return False
    vals = c.detach()
    source = owner if owner is not None else T.layer_name(src[0])
    return _fold_scale(tr, x, out, 1 / vals if name in DIVS else vals, source,
                       "constant scale" if owner is not None else "scale by 1 / parameter", None)


def scale_operands(tr, name: str, tensors: List[torch.Tensor]):
    """``(x, c)``: the tensor with nodes and the one that scales it, or ``(None, None)`` (both or neither carry
    nodes, ``c / x``)."""
    if len(tensors) != 2 or (name not in MULS and name not in DIVS):
        return None, None
    tracked = [tr.shadow(t) is not None for t in tensors]
    if tracked[0] == tracked[1] or (name in DIVS and not tracked[0]):
        return None, None
    return (tensors[0], tensors[1]) if tracked[0] else (tensors[1], tensors[0])


def _fold_scale(tr, x: torch.Tensor, out, vals: torch.Tensor, source: str, kind: str,
                index: Optional[torch.Tensor]) -> bool:
    """Fold ``vals`` (broadcast to ``out``) into the layer that produced ``x``, or the layers reading ``out``;
    False when it is not one value per node. ``index``: the source element of each value, when known."""
    s = tr.shadow(x).expand(out.shape)
    ids, scale = _per_node(s, vals.expand(out.shape))
    if ids is None:
        return False
    known, elems = False, None
    if index is not None:
        elem_ids, elems = _per_node(s, index.double().expand(out.shape))
        known = elem_ids is not None and torch.equal(elem_ids, ids)
    elems = elems.long() if known else None
    tr._set(out, s)
    layer, via = _producer(tr, x, out)
    if layer is not None:  # exact for any sign (so is a gain read directly by the next layer)
        _fold_out(tr, layer, ids, scale, f"{source} ({'scale' if kind == 'per-channel scale' else kind})", via,
                  elems, known)
        tr._direct[id(out)] = layer
    else:
        _pending_gain(tr, out, T._Gain(ids, scale, source, kind, elems, known))
        tr.unfolded.setdefault(source, "gain not directly followed by a weight layer")
    return True


def _producer(tr, x: torch.Tensor, out):
    """``(layer, via)``: the weight layer whose raw output ``x`` is (or None), and the tensor a fold into it reads.

    ``y.mul_(gamma)`` scales ``y`` in place: ``y`` was the layer's raw output until this operation, and
    nothing can read its raw values afterwards, so the fold reads a stand-in (unless ``y`` was read before,
    or, for ``y.view(...).mul_(gamma)``, the tensor ``y`` is a view of)."""
    layer = tr._direct.get(id(x))
    reads = tr._out_folds.reads
    if layer is not None or x is not out or tr.inplace_direct is None or reads.get(id(x)) or (
            x._base is not None and reads.get(id(x._base))):
        return layer, x
    return tr.inplace_direct, torch.empty(0)


def _pending_gain(tr, out, gain) -> None:
    """Attach a scale to ``out`` for the weight layers that read it (see :meth:`ChannelTracer.settle_gains`)."""
    tr._gain[id(out)] = gain
    tr._gains.append(gain)


_NORM_KIND = {"layer_norm": "LayerNorm gain", "rms_norm": "RMSNorm gain", "group_norm": "GroupNorm gain",
              "instance_norm": "InstanceNorm gain"}


def _per_node(s: torch.Tensor, vals: torch.Tensor):
    flat_s, flat_v = s.reshape(-1), vals.reshape(-1)
    keep = flat_s >= 0
    ids, inv = torch.unique(flat_s[keep], return_inverse=True)
    first = torch.full((ids.numel(),), float("nan"), dtype=flat_v.dtype).scatter_reduce(
        0, inv, flat_v[keep], reduce="amax", include_self=False)
    low = torch.full_like(first, float("nan")).scatter_reduce(0, inv, flat_v[keep], reduce="amin",
                                                             include_self=False)
    if not torch.equal(first, low) or not bool(torch.isfinite(first).all()):
        return None, None  # not one scale per node: cannot fold as a diagonal
    return ids, first


def _fold_out(tr, layer: int, ids: torch.Tensor, scale: torch.Tensor, what: str, via: torch.Tensor,
              elems: Optional[torch.Tensor] = None, known: bool = True) -> None:
    """Fold a per-node ``scale`` into ``layer``'s output rows, read through ``via`` (undone if ``via`` has other readers).

    ``elems[i]`` is the index of node ``ids[i]``'s scale in the source's flattened vector (default: ``i``);
    ``known=False`` when there is no such index."""
    tr._out_folds.fold(via, layer, what)
    call = tr.calls[layer]
    if torch.equal(ids, call.dst):  # the common case (BN(conv(x))): one scale per row, in order
        vec = scale.to(call.weight.dtype).clone()
        index = None if not known else (elems if elems is not None else torch.arange(len(ids))).tolist()
    else:  # by root: ids may be roots of call.dst's raw ids, in another order or a subset
        by_id = {tr._find(i): v for i, v in zip(ids.tolist(), scale.tolist())}
        roots = torch.tensor([tr._find(int(i)) for i in call.dst])
        vec = torch.tensor([by_id.get(int(r), 1.0) for r in roots], dtype=call.weight.dtype)
        elem = T.element_index(ids, elems, known)
        index = T.fold_index(None if elem is None else {tr._find(k): v for k, v in elem.items()}, roots)
    call.out_scale = vec if call.out_scale is None else call.out_scale * vec
    call.folded.append(what)
    call.fold_maps.append((what, "out", index))
    if not what.endswith(f"({NUMBER})"):  # a number's tag names no module ("2 (number ...)" is not module "2")
        tr.unfolded.pop(what.split(" ")[0], None)


def batch_norm(tr, args, kwargs, out, kind: str = "BatchNorm") -> None:
    """``F.batch_norm`` (or ``F.instance_norm`` with running statistics, ``kind="InstanceNorm"``: the same
    arguments in the same places): fold ``weight / sqrt(running_var + eps)`` into the layer before, or the
    layers reading its output, or list it as not folded."""
    x = args[0]
    s = tr.shadow(x)
    if s is None or not isinstance(out, torch.Tensor):
        return
    tr._set(out, s)
    var = _arg(args, kwargs, 2, "running_var")  # the running mean only shifts (a bias): not an edge weight
    weight, eps = _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 7, "eps", 1e-5)
    name = (T.layer_name(tr.param_names[id(weight)]) if weight is not None and id(weight) in tr.param_names
            else tr.buffer_owner.get(id(var), "batchnorm"))  # affine=False: named after its statistics' module
    if var is None or _arg(args, kwargs, 5, "training", False):  # each batch's own spread, which no weight can hold
        why = ("without running statistics (track_running_stats=False)" if var is None else
               "called with training=True (F.batch_norm, or a BatchNorm module in training mode)")
        tr.unfolded[name] = (f"{kind} {why}: it normalises by each batch's own statistics, so no fixed scale can be "
                             "folded; the graph's weights around it are the raw parameters")
        return
    if not tr.fold:
        tr.unfolded[name] = NOT_FOLDING
        return
    scale = (weight.detach() if weight is not None else torch.ones_like(var)) / torch.sqrt(var.detach() + eps)
    vec = _channel_vector(s, 1)
    if vec is None:
        vec = _channel_vector(tr.canon(s), 1)
    layer = tr._direct.get(id(x))
    if vec is None or not bool(torch.isfinite(scale).all()):
        tr.unfolded[name] = f"{kind} channels ambiguous or scale not finite"
        return
    per_node = T.one_per_node(vec, scale)
    if layer is not None and per_node is not None:  # exact for any sign: BN(conv(x)) = conv'(x) + b, rows scaled
        _fold_out(tr, layer, per_node[0], per_node[1], f"{name} ({kind} scale)", x, per_node[2])
        tr._direct[id(out)] = layer
        return
    # folded into the layers that read it directly (a gain is never carried through an activation); also a
    # BatchNorm1d over a conv's flattened output, whose features of one channel have different scales
    _pending_gain(tr, out, T._Gain(vec, scale, name, f"{kind} scale", dim=1, tensor=out))
    tr.unfolded[name] = (f"{kind} after a non-weight operation (e.g. a concatenation or residual sum)"
                         if layer is None else f"{kind} scale differs between the features of one node of {tr.calls[layer].name} "
                         "(a BatchNorm1d over a flattened conv output: one node per channel), so its rows cannot "
                         "hold it, and no weight layer reads its output directly")


#: Why a normalisation is not folded when folding is off (``fold=False``, ``--no-fold``).
NOT_FOLDING = ("not folded as asked (fold=False, --no-fold): the graph's weights are the raw parameters, not the "
               "function the model computes")


def norm(tr, name: str, args, kwargs, out) -> None:
    if name == "instance_norm" and _arg(args, kwargs, 5, "use_input_stats", True) is False:
        # running statistics (an InstanceNorm with track_running_stats in eval mode): a fixed per-channel scale,
        # gain / sqrt(running_var + eps), as a BatchNorm's; its gain alone is not what the model applies
        return batch_norm(tr, args, kwargs, out, kind="InstanceNorm")
    x = args[0]
    s = tr.shadow(x)
    if s is None or not isinstance(out, torch.Tensor):
        return
    tr._set(out, s)
    weight = _arg(args, kwargs, 2, "weight")
    if not isinstance(weight, torch.Tensor):
        return
    # the parameter itself, or a tensor computed from it alone (Megatron's 1 + weight, a cast)
    source = tr.param_of(weight)
    if source is None:
        owner = tr.constant_owner(weight)
        if owner is not None:
            tr.unfolded[owner] = (f"{name} gain computed from buffers or several parameters: not folded; the graph's "
                                  "weights around it are raw")
        else:
            tr.notes[f"{name} with a gain computed from the input (adaptive normalisation): not folded, the graph's "
                     "weights around it are raw"] += 1
        return
    pname = T.layer_name(source[0])
    if not tr.fold:
        tr.unfolded[pname] = NOT_FOLDING
        return
    dim = 1 if name in ("group_norm", "instance_norm") else -1
    vec = _channel_vector(s, dim)
    if vec is None:
        vec = _channel_vector(tr.canon(s), dim)
    w = weight.detach().reshape(-1)
    exact = source[2] and source[1] is not None and source[1].numel() == w.numel()
    if vec is None or w.numel() != vec.numel():
        tr.unfolded[pname] = (f"norm gain over several dimensions ({tuple(weight.shape)}: not one value per node); "
                              "the graph's weights around it are the raw parameters")
        return
    if not bool(torch.isfinite(w).all()):
        tr.unfolded[pname] = "norm gain not finite"
        return
    # the parameter element behind each value (for following the fold while training): unknown for a computed gain
    elems = source[1].reshape(-1) if exact else None
    _pending_gain(tr, out, T._Gain(vec, w, pname, _NORM_KIND.get(name, "norm gain"), elems, known=exact, dim=dim,
                                   tensor=out))
    tr.unfolded.setdefault(pname, "gain not directly followed by a weight layer")
