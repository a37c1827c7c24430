"""How each torch operation moves node identities (see :mod:`graphinterp.graph.trace`).

One function per family of operations; :func:`apply_rule` picks it by the operation's name.
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch

from graphinterp.graph import trace_ops as T

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
def _arg(args, kwargs, i: int, key: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(key, default)


def _param(tr, t) -> bool:
    return isinstance(t, torch.Tensor) and (id(t) in tr.param_names or id(t) in tr._param_view)


def _first_tensor_out(out):
    return out if isinstance(out, torch.Tensor) else None


def _channel_vector(s: torch.Tensor, dim: int) -> Optional[torch.Tensor]:
    """The node id along ``dim`` if ``s`` is constant along every other dimension, else None."""
    moved = s.movedim(dim, -1).reshape(-1, s.shape[dim])
    high = moved.max(0).values
    low = torch.where(moved >= 0, moved, torch.full_like(moved, torch.iinfo(moved.dtype).max)).min(0).values
    if not bool(((high == low) | (high < 0)).all()):
        return None  # positions without a node (e.g. a class token) are ignored
    return high.clone()


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
    name = _layer_name(pname) + (f"#{tr._uses[pname]}" if tr._uses[pname] > 1 else "")
    dim = 1 if kind != "linear" else -1
    n_in = weight.shape[1] * (groups if kind != "linear" else 1)
    src = _features(tr, x, dim, n_in, name)
    dst = tr.new_space(name, weight.shape[0])
    call = T.LayerCall(name, pname, kind, weight, transposed, int(groups), src, dst)
    gain = tr._gain.get(id(x))
    if gain is not None:
        call.in_scale = torch.tensor([gain.by_id.get(int(i), 1.0) for i in src], dtype=weight.dtype)
        call.folded.append(f"{gain.source} (input gain)")
        gain.used = True
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


def _pad(tr, args, kwargs, out) -> None:
    """Padding adds elements without a node (constant) or copies existing ones (reflect, replicate)."""
    s = tr.shadow(args[0])
    if s is None or not isinstance(out, torch.Tensor):
        return
    pad = _arg(args, kwargs, 1, "pad")
    mode = _arg(args, kwargs, 2, "mode", "constant") or "constant"
    if mode == "constant":
        res = torch.nn.functional.pad(s, pad, value=-1)
    else:
        res = torch.nn.functional.pad(s.double(), pad, mode=mode).round().long()
    tr._set(out, res)


def _embedding(tr, args, kwargs, out) -> None:
    w = _arg(args, kwargs, 1, "weight")
    if not isinstance(out, torch.Tensor) or not _param(tr, w):
        return
    pname = tr.param_names.get(id(w), "embedding")
    tr.embeddings[pname] = int(w.numel())
    tr.tag(out, tr.new_space(_layer_name(pname), w.shape[1]), -1)


def _identity(tr, x, out) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
        return
    if id(x) in tr.param_names and out.shape == x.shape:
        return
    s = tr.shadow(x)
    if s is not None and out.shape == x.shape:
        tr._set(out, s)
        _carry(tr, x, out)


def _carry(tr, x, out) -> None:
    """Keep 'direct layer output' and pending gains across identity and layout operations."""
    if id(x) in tr._direct:
        tr._direct[id(out)] = tr._direct[id(x)]
    if id(x) in tr._gain:
        tr._gain[id(out)] = tr._gain[id(x)]


def _layout(tr, name: str, args, kwargs, out) -> None:
    if name in ("cat", "concat", "concatenate", "stack"):
        seq = args[0] if args else kwargs.get("tensors")
        shadows = [tr._shadow_or_none(t) for t in seq]
        if all(tr.shadow(t) is None for t in seq):
            return
        res = getattr(torch, name)(shadows, *args[1:], **{k: v for k, v in kwargs.items() if k != "tensors"})
        return tr._set(out, res)
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and id(x) in tr.param_names and name in ("t", "T", "mT", "transpose") and x.dim() == 2:
        tr._param_view[id(out)] = (tr.param_names[id(x)], x)
        tr._keep.append(out)
        return
    if not isinstance(x, torch.Tensor) or tr.shadow(x) is None:
        return
    s = tr.shadow(x)
    if name in ("T", "mT"):
        res = getattr(s, name)
    else:
        fn = getattr(torch.Tensor, name, None) or getattr(torch, name)
        res = fn(s, *args[1:], **kwargs)
    if isinstance(out, torch.Tensor):
        tr._set(out, res)
        _carry(tr, x, out)  # gains and direct outputs are per node: any re-layout keeps them
    else:
        for o, r in zip(out, res):
            tr._set(o, r)


def _binary(tr, name: str, args, kwargs, out) -> None:
    if not isinstance(out, torch.Tensor):
        return
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    tracked = [t for t in tensors if tr.shadow(t) is not None]
    if not tracked:
        return
    if tr.fold and name in ("mul", "__mul__", "__rmul__", "mul_", "__imul__") and len(tensors) == 2:
        if _scale_by_param(tr, tensors, out):
            return
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
    pname = tr.param_names[id(p)]
    tr._set(out, s)
    layer = tr._direct.get(id(x))
    if layer is not None:  # exact for any sign (so is a gain read directly by the next layer)
        _fold_out(tr, layer, ids, scale, f"{_layer_name(pname)} (scale)")
        tr._direct[id(out)] = layer
    else:
        tr._gain[id(out)] = T._Gain(ids, scale, _layer_name(pname))
        tr.unfolded.setdefault(_layer_name(pname), "gain not directly followed by a weight layer")
    return True


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


def _fold_out(tr, layer: int, ids: torch.Tensor, scale: torch.Tensor, what: str) -> None:
    call = tr.calls[layer]
    by_id = dict(zip(ids.tolist(), scale.tolist()))
    vec = torch.tensor([by_id.get(int(i), 1.0) for i in call.dst], dtype=call.weight.dtype)
    call.out_scale = vec if call.out_scale is None else call.out_scale * vec
    call.folded.append(what)
    tr.unfolded.pop(what.split(" ")[0], None)


def _batch_norm(tr, args, kwargs, out) -> None:
    x = args[0]
    s = tr.shadow(x)
    if s is None or not isinstance(out, torch.Tensor):
        return
    tr._set(out, s)
    mean, var = _arg(args, kwargs, 1, "running_mean"), _arg(args, kwargs, 2, "running_var")
    weight, eps = _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 7, "eps", 1e-5)
    name = _layer_name(tr.param_names.get(id(weight), "batchnorm")) if weight is not None else "batchnorm"
    if not tr.fold or var is None:
        return
    scale = (weight.detach() if weight is not None else torch.ones_like(var)) / torch.sqrt(var.detach() + eps)
    vec = _channel_vector(s, 1)
    layer = tr._direct.get(id(x))
    if vec is None or not bool(torch.isfinite(scale).all()):
        tr.unfolded[name] = "BatchNorm channels ambiguous or scale not finite"
        return
    if layer is not None:  # exact for any sign: BN(conv(x)) = conv'(x) + b with rows scaled
        _fold_out(tr, layer, vec, scale, f"{name} (BatchNorm scale)")
        tr._direct[id(out)] = layer
    else:  # folded into the layers that read it directly (a gain is never carried through an activation)
        tr._gain[id(out)] = T._Gain(vec, scale, name)
        tr.unfolded[name] = "BatchNorm after a non-weight operation (e.g. a concatenation or residual sum)"


def _norm(tr, name: str, args, kwargs, out) -> None:
    x = args[0]
    s = tr.shadow(x)
    if s is None or not isinstance(out, torch.Tensor):
        return
    tr._set(out, s)
    weight = _arg(args, kwargs, 2, "weight")
    if not tr.fold or weight is None or id(weight) not in tr.param_names:
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
    tr._gain[id(out)] = T._Gain(vec, w, pname)
    tr.unfolded.setdefault(pname, "gain not directly followed by a weight layer")


def _broadcast_from(tr, v, out, *, along: int) -> None:
    s = tr.shadow(v)
    if s is None or not isinstance(out, torch.Tensor) or s.dim() != out.dim():
        return
    row = s.narrow(along, 0, 1)
    if not bool((s == row).all()):
        return
    tr._set(out, row.expand(out.shape))


def _matmul(tr, name: str, args, out) -> None:
    if name == "einsum" or not isinstance(out, torch.Tensor):
        tr.notes[f"{name}: node identities not followed"] += 1
        return
    a, b = (args[1], args[2]) if name == "baddbmm" else (args[0], args[1])
    sa, sb = tr.shadow(a), tr.shadow(b)
    if a.dim() < 2 or b.dim() < 2:
        return
    cand = []
    if sb is not None and bool((sb == sb.narrow(-2, 0, 1)).all()):
        cand.append((sb.narrow(-2, 0, 1), sa is None or bool((sa < 0).all())))
    if sa is not None and bool((sa == sa.narrow(-1, 0, 1)).all()):
        cand.append((sa.narrow(-1, 0, 1), sb is None or bool((sb < 0).all())))
    for s, other_blank in cand:
        if other_blank and bool((s >= 0).any()):
            try:
                return tr._set(out, s.expand(out.shape))
            except RuntimeError:
                return None


def _reduce(tr, args, kwargs, out) -> None:
    x = args[0]
    s = tr.shadow(x)
    res_out = out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, (tuple, list)) else None)
    if s is None or not isinstance(res_out, torch.Tensor):
        return
    dims = _arg(args, kwargs, 1, "dim")
    if dims is None or not isinstance(dims, (int, tuple, list)):
        return
    dims = [dims] if isinstance(dims, int) else list(dims)
    keep = bool(_arg(args, kwargs, 2, "keepdim", False)) if not isinstance(_arg(args, kwargs, 2, "keepdim"), torch.Tensor) else False
    r = s
    for d in sorted((d % s.dim() for d in dims), reverse=True):
        row = r.narrow(d, 0, 1)
        r = row if bool((r == row).all()) else torch.full_like(row, -1)
        if not keep:
            r = r.squeeze(d)
    if tuple(r.shape) == tuple(res_out.shape) and bool((r >= 0).any()):
        tr._set(res_out, r)


def _channelwise(tr, x, out, *, known: bool, name: str) -> None:
    """Outputs keep the input's nodes: elementwise when shapes match, else along the one channel dim."""
    outs = [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)]
    s = tr.shadow(x)
    if s is None or not outs:
        return
    o = outs[0]
    if tuple(o.shape) == tuple(s.shape):
        tr._set(o, s)
        if not known:
            tr.notes[f"{name}: assumed elementwise (output keeps the input's nodes)"] += 1
        return
    varying = [d for d in range(s.dim()) if s.shape[d] > 1 and not bool((s == s.narrow(d, 0, 1)).all())]
    if len(varying) == 1 and o.dim() == s.dim() and o.shape[varying[0]] == s.shape[varying[0]]:
        d = varying[0]
        vec = _channel_vector(s, d)
        shape = [1] * o.dim()
        shape[d] = -1
        tr._set(o, vec.view(shape).expand(o.shape))
        if not known:
            tr.notes[f"{name}: assumed to act per channel"] += 1
        return
    if bool((s >= 0).any()):
        tr.notes[f"{name}: node identities lost"] += 1
