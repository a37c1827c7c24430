"""How each torch operation moves node identities (see :mod:`graphinterp.graph.trace`).

One function per family of operations; :func:`apply_rule` picks it by the operation's name. Here: weight
layers (linear, conv, ``x @ W``, attention projections, embeddings), norms and their folded gains, and
element-wise merges (residual sums); the families that only carry nodes (layout, padding, reductions,
matmuls between activations, the element-wise fallback) are in :mod:`graphinterp.graph.trace_rules_layout`.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from graphinterp.graph import trace_ops as T
from graphinterp.graph.trace_fused import FUSED_SCALES, einsum_scale, fused_scale
from graphinterp.graph.trace_numbers import NEGS, negate, scale_by_number, signed_operand
from graphinterp.graph.trace_folds import (DIVS, MULS, NOT_FOLDING, batch_norm, norm, scale_by_constant,
                                          scale_by_param, scale_operands)
from graphinterp.graph.trace_rules_layout import (arg as _arg, broadcast_from as _broadcast_from,
                                                 channel_vector as _channel_vector, channelwise as _channelwise,
                                                 identity as _identity, layout as _layout, matmul as _matmul,
                                                 pad as _pad)
from graphinterp.graph.trace_reduce import reduce as _reduce, scan as _scan
from graphinterp.graph.trace_settle import MIXED_READ

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
    if name in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        return _unbound(tr, out, name, 1, "(a transposed convolution; not supported)")
    if name == "bilinear":
        return _unbound(tr, out, name, -1, "(a bilinear layer, which reads two inputs; not supported)")
    if name in ("lstm", "gru", "rnn_tanh", "rnn_relu") and isinstance(out, (tuple, list)) and out:
        return _unbound(tr, out[0], name, -1, "(a recurrent layer; not supported)")
    if name == "multi_head_attention_forward":
        return _mha(tr, args, kwargs, out)
    if name == "embedding":
        return _embedding(tr, args, kwargs, out)
    if name == "batch_norm":
        return batch_norm(tr, args, kwargs, out)
    if name in T._NORMS:
        return norm(tr, name, args, kwargs, out)
    if name in T._IDENTITY:
        return _identity(tr, args[0] if args else None, out)
    if name in T._LAYOUT:
        return _layout(tr, name, args, kwargs, out)
    if name in T._BINARY:
        return _binary(tr, name, args, kwargs, out)
    if name == "scaled_dot_product_attention":
        return _broadcast_from(tr, _arg(args, kwargs, 2, "value"), out, along=-2)
    if name in T._MATMUL:
        _matmul(tr, name, args, out)
        return einsum_scale(tr, args, out) if name == "einsum" else None
    if name in T._REDUCE:
        return _reduce(tr, name, args, kwargs, out)
    if name in T._SCANS:
        return _scan(tr, name, args, kwargs, out)
    if name == "pad":
        return _pad(tr, args, kwargs, out)
    if name in T._SPATIAL:
        return _channelwise(tr, args[0], out, known=True, name=name)
    if name == "copy_" and len(args) >= 2 and isinstance(out, torch.Tensor):  # target.copy_(source): the source's nodes
        s = tr.shadow(args[1])
        tr._shadow.pop(id(out), None)  # the old nodes are overwritten, whether or not the source carries any
        return tr._set(out, s.expand(out.shape).clone() if s is not None else None)
    if name in NEGS and tr.fold and negate(tr, args, out):
        return None
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is None or tr.shadow(first) is None:
        if any(tr.shadow(a) is not None for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)):
            tr.notes[f"{name}: node identities not followed (its first operand carries none; layers reading its "
                     "output start from fresh nodes)"] += 1
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
        if vec is None:  # positions holding two raw ids of one merged node (a class token beside patches)
            vec = _channel_vector(tr.canon(s), dim)
        if vec is None:
            vec = s.movedim(dim, -1).reshape(-1, s.shape[dim])[0].clone()
            held, used = (int(torch.unique(c[c >= 0]).numel()) for c in (tr.canon(s), tr.canon(vec)))
            tr.notes[f"{name}: input features map to different nodes at different positions (e.g. a Linear's outputs "
                     f"reshaped into a feature map): the first position's {used} node(s) are used, and {held - used} of "
                     f"the {held} nodes its input holds get no edge to it"] += 1
    if vec is None:
        vec = torch.full((n,), -1, dtype=torch.long)
    missing = vec < 0
    if bool(missing.any()):
        vec[missing] = tr.new_space(f"{name}:in", int(missing.sum()))
        if tr.calls:  # not the model's first layer: something between lost the nodes (or a learned constant input)
            tr.fresh_inputs[name] = int(missing.sum())
    return vec


def _mixes_positions(s) -> bool:
    """Whether a Linear reading a tensor of shadow ``s`` mixes positions, not nodes: along its feature (last) dim
    every element is the same node, which differs along another dim (MLP-Mixer's token mixing, ``x.transpose``)."""
    if s is None or s.dim() < 2 or s.shape[-1] < 2 or not bool((s >= 0).all()):
        return False
    return bool((s == s[..., :1]).all()) and s.unique().numel() > 1


def _position_mixing(tr, x, out, pname: str) -> None:
    """A Linear over positions: like attention, it moves each node's values between positions, so its output
    keeps the input's nodes and its weight is not an edge of the graph (listed in the coverage with why)."""
    tr.position_mixing.add(pname)
    if isinstance(out, torch.Tensor):
        s = tr.shadow(x)
        tr._set(out, s[..., :1].expand(out.shape))


def _unbound(tr, out, kind: str, dim: int, why: str) -> None:
    """A weight layer the graph cannot hold: its output gets fresh nodes (the graph is cut there), with a note."""
    if isinstance(out, torch.Tensor) and out.dim() > 0:
        shape = [1] * out.dim()
        shape[dim] = -1
        tr._set(out, tr.new_space(f"{kind}:unbound", out.shape[dim]).view(shape).expand(out.shape))
    tr.notes[f"{kind} {why}: not an edge of the graph; layers after it start from fresh nodes (the graph is cut "
             "there)"] += 1


def _weight_op(tr, x, w, out, kind: str, *, groups: int = 1, matmul: bool = False,
               rows: Optional[Tuple[int, int, str]] = None) -> None:
    """A weight layer ``kind`` applying parameter ``w`` to ``x``; ``rows=(start, stop, part)``: only those rows of
    ``w``, a layer of their own named ``<layer>[part]`` (a fused projection whose parts read different inputs)."""
    if isinstance(w, torch.Tensor) and not _param(tr, w):
        derived = tr.param_of(w)  # a cast of a parameter (W.to(x.dtype)) is that parameter
        raw = tr.params.get(derived[0]) if derived is not None else None
        if (derived is not None and derived[2] and raw is not None and raw.shape == w.shape
                and (derived[1] is None or torch.equal(derived[1].reshape(-1), torch.arange(w.numel())))
                and isinstance(out, torch.Tensor)):
            return _weight_op(tr, x, tr.params[derived[0]], out, kind, groups=groups, matmul=matmul, rows=rows)
        if isinstance(out, torch.Tensor) and not matmul:
            why = (f"with a weight computed from parameter {derived[0]} (a slice, a reshape or arithmetic on it: "
                   f"{tuple(w.shape)} from {tuple(raw.shape)}), which the graph cannot bind to the parameter"
                   if derived is not None and raw is not None else
                   "with a weight that is not a parameter (a torch.nn.utils.parametrize parametrization such "
                   "as weight_norm or spectral_norm, a pruning mask, or a buffer)")
            return _unbound(tr, out, kind, 1 if kind != "linear" else -1, why)
    if not isinstance(out, torch.Tensor) or not _param(tr, w):
        return _channelwise(tr, x, out, known=False, name=kind) if isinstance(x, torch.Tensor) else None
    if id(w) in tr._param_view:
        pname, raw = tr._param_view[id(w)]
        transposed = not matmul  # F.linear(x, W.t()) reads W as (in, out); W.t() @ in matmul form is (out, in)
    else:
        pname, raw, transposed = tr.param_names[id(w)], w, matmul
    if kind == "linear" and _mixes_positions(tr.shadow(x)):
        return _position_mixing(tr, x, out, pname)
    weight = (raw.t() if transposed else raw).detach()
    # named after the module applying it: the owner running now of a tied weight, else its first name
    base = T.layer_name(tr.ties.applier(id(raw)) or tr.tied.get(id(raw), pname))
    if rows is not None:
        weight, base = weight[rows[0]:rows[1]], f"{base}[{rows[2]}]"
    tr._uses[base] += 1
    name = base + (f"#{tr._uses[base]}" if tr._uses[base] > 1 else "")
    dim = -1 if kind == "linear" else (0 if x.dim() == int(kind[4]) + 1 else 1)  # a conv's unbatched input: (C, ...)
    n_in = weight.shape[1] * (groups if kind != "linear" else 1)
    src = _features(tr, x, dim, n_in, name)
    dst = tr.new_space(name, weight.shape[0])
    call = T.LayerCall(name, pname, kind, weight, transposed, int(groups), src, dst,
                       rows=None if rows is None else (int(rows[0]), int(rows[1])))
    gain = tr._gain.get(id(x))
    per_feature = gain.for_reader(x, dim, src, tr._find) if gain is not None else None
    if per_feature is not None:
        call.in_scale = torch.tensor(per_feature[0], dtype=weight.dtype)
        call.folded.append(f"{gain.source} (input gain)")
        call.fold_maps.append((f"{gain.source} (input gain)", "in", per_feature[1]))
        gain.used = True
        gain.folded_by.append(len(tr.calls))  # undone at the end if anything else reads the tensor
    elif gain is not None:  # one node, several gains, read re-laid out: no per-feature scale is exact
        gain.leaks[MIXED_READ] += 1
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
    else:  # cross-attention with a fused weight: its q, k and v rows read the query, key and value
        for part, x, start in (("q", query, 0), ("k", key, E), ("v", value, 2 * E)):
            _weight_op(tr, x, a["in_proj_weight"], _Probe(x.shape[:-1] + (E,)), "linear", rows=(start, start + E, part))
            if part == "k" and value is key and tr.shadow(key) is None:  # fresh input nodes: v reads the same ones
                tr.tag(key, tr.calls[-1].src, -1)
        v_nodes = tr.calls[-1].dst
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
    tr.tag(out, tr.new_space(T.layer_name(pname), w.shape[1]), -1)


def _binary(tr, name: str, args, kwargs, out) -> None:
    if not isinstance(out, torch.Tensor):
        return
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    tracked = [t for t in tensors if tr.shadow(t) is not None]
    if not tracked:
        return
    if name in MULS and len(tensors) == 2 and tr.fold and scale_by_param(tr, tensors, out):
        return
    if tr.fold and scale_by_constant(tr, name, tensors, out):
        return
    if scale_by_number(tr, name, args, kwargs, tensors, out):
        return
    if name in FUSED_SCALES and fused_scale(tr, name, args, kwargs, out):
        return
    _unfolded_scale(tr, name, tensors)
    signed_operand(tr, name, args, kwargs)
    res = None
    merged = False
    for t in tracked:
        s = tr.shadow(t).expand(out.shape) if t.dim() <= out.dim() else None
        if s is None:
            continue
        if res is None:
            res = s.clone()
            continue
        both = (res >= 0) & (s >= 0) & (res != s)
        if bool(both.any()):
            a, b = res[both], s[both]
            one_a, one_b = _one_node(tr, a), _one_node(tr, b)
            if one_a != one_b:  # one node onto several (not one node per node): no merge
                tr.notes[f"{name}: one node broadcast onto several (e.g. a one-output layer added to a wider "
                         "tensor): not merged; the output keeps the wider operand's nodes"] += 1
                res = torch.where(s >= 0, s, res) if one_a else res
                continue
            tr._merge(a, b, name)
            merged = True
        res = torch.where(res >= 0, res, s)
    tr._set(out, res)
    if merged and (name in T.ADDS or name in T.SUBS):
        tr.merged_sums.add(out)


def _one_node(tr, ids: torch.Tensor) -> bool:
    """Whether the node ids ``ids`` (>= 0) are all one node: one raw id, or ids merged into one root (the
    roots are looked up only when the smallest and largest id share theirs: one unique per residual add
    made tracing a ResNet-50 twice as slow)."""
    lo, hi = int(ids.min()), int(ids.max())
    if lo == hi:
        return True
    if tr._find(lo) != tr._find(hi):
        return False
    return len(torch.unique(tr.canon(ids))) == 1


def _unfolded_scale(tr, name: str, tensors) -> None:
    """List in ``unfolded`` a scale by a parameter or a constant (buffers, tensor attributes, several parameters:
    ``constant_owner``) that was not folded (the graph's weights around it are the raw parameters): never a
    silent difference between the graph and the model."""
    x, c = scale_operands(tr, name, tensors)
    if x is None:
        return
    src, owner = tr.param_of(c), tr.constant_owner(c)
    if src is None and owner is None:
        return  # a scale computed from the input (a gate) or a constant written in the code
    where = T.layer_name(src[0]) if src is not None else owner
    if not tr.fold:
        tr.unfolded[where] = NOT_FOLDING
    elif c.numel() == 1:
        tr.unfolded.setdefault(where, f"a single {'parameter' if src is not None else 'constant'} value "
                                      f"({float(c.detach())}) scaling a tensor that no weight layer produced directly "
                                      "(e.g. after an activation): not folded; the graph's weights around it are the "
                                      "raw parameters")
    else:
        what = "a parameter" if src is not None else "a constant tensor (from buffers, tensor attributes or parameters)"
        op = "division by" if name in DIVS else "scale by"
        tr.unfolded.setdefault(where, f"a {op} {what} that is not one value per node of the tensor it "
                                      f"{'divides' if name in DIVS else 'multiplies'}: no weight layer can hold it; "
                                      "the graph's weights around it are the raw parameters")
