"""How each torch operation moves node identities (see :mod:`graphinterp.graph.trace`).

One function per family of operations; :func:`apply_rule` picks it by the operation's name. Here: weight
layers (linear, conv, ``x @ W``, attention projections, embeddings), norms and their folded gains, and
element-wise merges (residual sums); the families that only carry nodes (layout, padding, reductions,
matmuls between activations, the element-wise fallback) are in :mod:`graphinterp.graph.trace_rules_layout`.
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch

from graphinterp.graph import trace_ops as T
from graphinterp.graph.trace_rules_layout import (arg as _arg, broadcast_from as _broadcast_from,
                                                 channel_vector as _channel_vector, channelwise as _channelwise,
                                                 identity as _identity, layout as _layout, matmul as _matmul,
                                                 pad as _pad, reduce as _reduce)

__all__ = ["apply_rule"]


def apply_rule(tr: Any, name: str, args, kwargs, out) -> None:
    """Update the tracer's shadows (and layer calls) for one operation ``name(*args) -> out``
    (``tr`` is the :class:`~graphinterp.graph.trace.ChannelTracer` that saw it)."""
    if name == "linear":
        return _weight_op(tr, args[0], _arg(args, kwargs, 1, "weight"), out, "linear")
    if name in T._CONV:
        groups = _arg(args, kwargs, 6, "groups", 1)
        return _weight_op(tr, args[0], _arg(args, kwargs, 1, "weight"), out, T._CONV[name], groups=groups)
    if name == "addmm" and len(args) >= 3 and _param(tr, args[2]):
        return _weight_op(tr, args[1], args[2], out, "linear", matmul=True)
    if name in ("matmul", "__matmul__", "mm") and len(args) >= 2 and _param(tr, args[1]):
        return _weight_op(tr, args[0], args[1], out, "linear", matmul=True)
    if name == "multi_head_attention_forward":
        return _mha(tr, args, kwargs, out)
    if name == "embedding":
        return _embedding(tr, args, kwargs, out)
    if name == "batch_norm":
        return _batch_norm(tr, args, kwargs, out)
    if name in T._NORMS:
        return _norm(tr, name, args, kwargs, out)
    if name in T._IDENTITY:
        return _identity(tr, args[0] if args else None, out)
    if name in T._LAYOUT:
        return _layout(tr, name, args, kwargs, out)
    if name in T._BINARY:
        return _binary(tr, name, args, kwargs, out)
    if name == "scaled_dot_product_attention":
        return _broadcast_from(tr, _arg(args, kwargs, 2, "value"), out, along=-2)
    if name in T._MATMUL:
        return _matmul(tr, name, args, out)
    if name in T._REDUCE:
        return _reduce(tr, args, kwargs, out)
    if name == "pad":
        return _pad(tr, args, kwargs, out)
    if name in T._SPATIAL:
        return _channelwise(tr, args[0], out, known=True, name=name)
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is None or tr.shadow(first) is None:
        return None
    _channelwise(tr, first, out, known=name in T._KNOWN, name=name)


# ---------------------------------------------------------------- helpers
def _param(tr, t) -> bool:
    return isinstance(t, torch.Tensor) and (id(t) in tr.param_names or id(t) in tr._param_view)


def _features(tr, x: torch.Tensor, dim: int, n: int, name: str) -> torch.Tensor:
    """Node id of each of ``x``'s ``n`` features along ``dim`` (fresh nodes where it has none)."""
    s = tr.shadow(x)
    vec = None
    if s is not None:
        vec = _channel_vector(s, dim)
        if vec is None:
            tr.notes[f"{name}: input features map to different nodes at different positions (first used)"] += 1
            vec = s.movedim(dim, -1).reshape(-1, s.shape[dim])[0].clone()
    if vec is None:
        vec = torch.full((n,), -1, dtype=torch.long)
    missing = vec < 0
    if bool(missing.any()):
        vec[missing] = tr.new_space(f"{name}:in", int(missing.sum()))
    return vec


def _layer_name(param_name: str) -> str:
    for suffix in (".weight", "_weight"):
        if param_name.endswith(suffix):
            return param_name[: -len(suffix)] or "weight"
    return param_name


def _weight_op(tr, x, w, out, kind: str, *, groups: int = 1, matmul: bool = False) -> None:
    if not isinstance(out, torch.Tensor) or not _param(tr, w):
        return _channelwise(tr, x, out, known=False, name=kind) if isinstance(x, torch.Tensor) else None
    if id(w) in tr._param_view:
        pname, raw = tr._param_view[id(w)]
        transposed = not matmul  # F.linear(x, W.t()) reads W as (in, out); W.t() @ in matmul form is (out, in)
    else:
        pname, raw, transposed = tr.param_names[id(w)], w, matmul
    weight = (raw.t() if transposed else raw).detach()
    tr._uses[pname] += 1
    name = _layer_name(tr.tied.get(id(raw), pname)) + (f"#{tr._uses[pname]}" if tr._uses[pname] > 1 else "")
    dim = 1 if kind != "linear" else -1
    n_in = weight.shape[1] * (groups if kind != "linear" else 1)
    src = _features(tr, x, dim, n_in, name)
    dst = tr.new_space(name, weight.shape[0])
    call = T.LayerCall(name, pname, kind, weight, transposed, int(groups), src, dst)
    gain = tr._gain.get(id(x))
    if gain is not None:
        call.in_scale = torch.tensor([gain.by_id.get(int(i), 1.0) for i in src], dtype=weight.dtype)
        call.folded.append(f"{gain.source} (input gain)")
        call.fold_maps.append((f"{gain.source} (input gain)", "in", T.fold_index(gain.elem_by_id, src)))
        gain.used = True
        gain.folded_by.append(len(tr.calls))  # undone at the end if anything else reads the tensor
    tr.calls.append(call)
    shape = [1] * out.dim()
    shape[dim] = -1
    tr._set(out, dst.view(shape).expand(out.shape))
    tr._direct[id(out)] = len(tr.calls) - 1


def _mha(tr, args, kwargs, out) -> None:
    """``nn.MultiheadAttention``: q, k, v projections (fused or separate), then the output projection.

    Attention mixes positions, not channels, so the output projection reads the value nodes.
    """
    names = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
             "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias")
    a = dict(zip(names, args), **kwargs)
    query, key, value, result = a["query"], a["key"], a["value"], out[0]
    E = int(a["embed_dim_to_check"])
    if a.get("use_separate_proj_weight"):
        projections = [(query, a["q_proj_weight"]), (key, a["k_proj_weight"]), (value, a["v_proj_weight"])]
        v_nodes = None
        for x, w in projections:
            _weight_op(tr, x, w, _Probe(x.shape[:-1] + (w.shape[0],)), "linear")
            v_nodes = tr.calls[-1].dst
    elif key is query and value is query:
        _weight_op(tr, query, a["in_proj_weight"], _Probe(query.shape[:-1] + (3 * E,)), "linear")
        v_nodes = tr.calls[-1].dst[2 * E:]
    else:  # cross-attention with a fused weight: q from query, k and v from key / value
        _weight_op(tr, query, a["in_proj_weight"], _Probe(query.shape[:-1] + (3 * E,)), "linear")
        tr.notes["cross-attention with a fused in_proj: k and v inputs taken as the query's nodes"] += 1
        v_nodes = tr.calls[-1].dst[2 * E:]
    probe = _Probe(tuple(result.shape[:-1]) + (E,))
    tr._set(probe, v_nodes.expand(probe.shape))
    _weight_op(tr, probe, a["out_proj_weight"], result, "linear")


def _Probe(shape) -> torch.Tensor:
    """A shape-only stand-in (meta tensor) for a tensor computed inside a fused operation."""
    return torch.empty(tuple(shape), device="meta")


def _embedding(tr, args, kwargs, out) -> None:
    w = _arg(args, kwargs, 1, "weight")
    if not isinstance(out, torch.Tensor) or not _param(tr, w):
        return
    pname = tr.param_names.get(id(w), "embedding")
    tr.embeddings[pname] = int(w.numel())
    tr.tag(out, tr.new_space(_layer_name(pname), w.shape[1]), -1)


def _binary(tr, name: str, args, kwargs, out) -> None:
    if not isinstance(out, torch.Tensor):
        return
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    tracked = [t for t in tensors if tr.shadow(t) is not None]
    if not tracked:
        return
    if name in ("mul", "__mul__", "__rmul__", "mul_", "__imul__") and len(tensors) == 2:
        if tr.fold and _scale_by_param(tr, tensors, out):
            return
        p = next((t for t in tensors if id(t) in tr.param_names and t.numel() > 1), None)
        if not tr.fold and p is not None:  # a gain written as param * x (HF RMSNorm, layer_scale), left as asked
            tr.unfolded[_layer_name(tr.param_names[id(p)])] = _NOT_FOLDING
    res = None
    for t in tracked:
        s = tr.shadow(t).expand(out.shape) if t.dim() <= out.dim() else None
        if s is None:
            continue
        if res is None:
            res = s.clone()
            continue
        both = (res >= 0) & (s >= 0) & (res != s)
        if bool(both.any()):
            tr._merge(res[both], s[both])
        res = torch.where(res >= 0, res, s)
    tr._set(out, res)


def _scale_by_param(tr, tensors: List[torch.Tensor], out) -> bool:
    """``param * x`` with a per-channel parameter: fold it (layer_scale, RMSNorm gain)."""
    p, x = (tensors[0], tensors[1]) if id(tensors[0]) in tr.param_names else (tensors[1], tensors[0])
    if id(p) not in tr.param_names or tr.shadow(x) is None or p.numel() <= 1 or p.dim() > x.dim():
        return False
    s = tr.shadow(x).expand(out.shape)
    vals = p.detach().expand(out.shape)
    ids, scale = _per_node(s, vals)
    if ids is None:
        return False
    # the element of p behind each node's scale (for following the fold live while training)
    elem_ids, elems = _per_node(s, torch.arange(p.numel(), dtype=torch.float64).view(p.shape).expand(out.shape))
    known = elem_ids is not None and torch.equal(elem_ids, ids)
    elems = elems.long() if known else None
    pname = tr.param_names[id(p)]
    tr._set(out, s)
    layer = tr._direct.get(id(x))
    if layer is not None:  # exact for any sign (so is a gain read directly by the next layer)
        _fold_out(tr, layer, ids, scale, f"{_layer_name(pname)} (scale)", x, elems, known)
        tr._direct[id(out)] = layer
    else:
        _pending_gain(tr, out, T._Gain(ids, scale, _layer_name(pname), "per-channel scale", elems, known))
        tr.unfolded.setdefault(_layer_name(pname), "gain not directly followed by a weight layer")
    return True


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
    by_id = dict(zip(ids.tolist(), scale.tolist()))
    vec = torch.tensor([by_id.get(int(i), 1.0) for i in call.dst], dtype=call.weight.dtype)
    call.out_scale = vec if call.out_scale is None else call.out_scale * vec
    call.folded.append(what)
    call.fold_maps.append((what, "out", T.fold_index(T.element_index(ids, elems, known), call.dst)))
    tr.unfolded.pop(what.split(" ")[0], None)


def _batch_norm(tr, args, kwargs, out) -> None:
    x = args[0]
    s = tr.shadow(x)
    if s is None or not isinstance(out, torch.Tensor):
        return
    tr._set(out, s)
    var = _arg(args, kwargs, 2, "running_var")  # the running mean only shifts (a bias): not an edge weight
    weight, eps = _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 7, "eps", 1e-5)
    name = (_layer_name(tr.param_names[id(weight)]) if weight is not None and id(weight) in tr.param_names
            else tr.buffer_owner.get(id(var), "batchnorm"))  # affine=False: named after its statistics' module
    if var is None:  # no running statistics: it divides by each batch's own spread, which no weight can hold
        tr.unfolded[name] = ("BatchNorm without running statistics (track_running_stats=False): it normalises by "
                             "each batch's own statistics, so no fixed scale can be folded; the graph's weights "
                             "around it are the raw parameters")
        return
    if not tr.fold:
        tr.unfolded[name] = _NOT_FOLDING
        return
    scale = (weight.detach() if weight is not None else torch.ones_like(var)) / torch.sqrt(var.detach() + eps)
    vec = _channel_vector(s, 1)
    layer = tr._direct.get(id(x))
    if vec is None or not bool(torch.isfinite(scale).all()):
        tr.unfolded[name] = "BatchNorm channels ambiguous or scale not finite"
        return
    if layer is not None:  # exact for any sign: BN(conv(x)) = conv'(x) + b with rows scaled
        _fold_out(tr, layer, vec, scale, f"{name} (BatchNorm scale)", x)
        tr._direct[id(out)] = layer
    else:  # folded into the layers that read it directly (a gain is never carried through an activation)
        _pending_gain(tr, out, T._Gain(vec, scale, name, "BatchNorm scale"))
        tr.unfolded[name] = "BatchNorm after a non-weight operation (e.g. a concatenation or residual sum)"


#: Why a normalisation is not folded when folding is off (``fold=False``, ``--no-fold``).
_NOT_FOLDING = ("not folded as asked (fold=False, --no-fold): the graph's weights are the raw parameters, not the "
                "function the model computes")


def _norm(tr, name: str, args, kwargs, out) -> None:
    x = args[0]
    s = tr.shadow(x)
    if s is None or not isinstance(out, torch.Tensor):
        return
    tr._set(out, s)
    weight = _arg(args, kwargs, 2, "weight")
    if weight is None or id(weight) not in tr.param_names:
        return
    if not tr.fold:
        tr.unfolded[_layer_name(tr.param_names[id(weight)])] = _NOT_FOLDING
        return
    dim = 1 if name in ("group_norm", "instance_norm") else -1
    vec = _channel_vector(s, dim)
    pname = _layer_name(tr.param_names[id(weight)])
    w = weight.detach().reshape(-1)
    if vec is None or w.numel() != vec.numel():
        tr.unfolded[pname] = "norm gain over several dimensions"
        return
    if not bool(torch.isfinite(w).all()):
        tr.unfolded[pname] = "norm gain not finite"
        return
    _pending_gain(tr, out, T._Gain(vec, w, pname, _NORM_KIND.get(name, "norm gain")))
    tr.unfolded.setdefault(pname, "gain not directly followed by a weight layer")
