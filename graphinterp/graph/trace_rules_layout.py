"""How the operations that move data without weights move node identities: layout, padding, reductions, matmuls.

The rules of :mod:`graphinterp.graph.trace_rules` for the operations that carry a tensor's nodes to its
output (view, permute, cat, pad, identity, sum over a dimension, attention's mixing of positions, and
the element-wise fallback); :func:`graphinterp.graph.trace_rules.apply_rule` dispatches to them.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["arg", "channel_vector", "identity", "layout", "pad", "broadcast_from", "matmul", "channelwise", "carry"]


def arg(args, kwargs, i: int, key: str, default: Any = None) -> Any:
    """Argument ``i`` of an operation, given by position or by the keyword ``key`` (else ``default``)."""
    if len(args) > i:
        return args[i]
    return kwargs.get(key, default)


def channel_vector(s: torch.Tensor, dim: int) -> Optional[torch.Tensor]:
    """The node id along ``dim`` if ``s`` is constant along every other dimension, else None."""
    moved = s.movedim(dim, -1).reshape(-1, s.shape[dim])
    high = moved.max(0).values
    low = torch.where(moved >= 0, moved, torch.full_like(moved, torch.iinfo(moved.dtype).max)).min(0).values
    if not bool(((high == low) | (high < 0)).all()):
        return None  # positions without a node (e.g. a class token) are ignored
    return high.clone()


def identity(tr, x, out) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
        return
    if id(x) in tr.param_names and out.shape == x.shape:
        return
    s = tr.shadow(x)
    if s is not None and out.shape == x.shape:
        tr._set(out, s)
        carry(tr, x, out)
        gain = tr._gain.get(id(out))
        if gain is not None and id(x) in gain.tensors:  # dropout, a cast: the normalised tensor itself
            gain.tensors.add(id(out))


def carry(tr, x, out) -> None:
    """Keep 'direct layer output' and pending gains across identity and layout operations."""
    if id(x) in tr._direct:
        tr._direct[id(out)] = tr._direct[id(x)]
    if id(x) in tr._gain:
        tr._gain[id(out)] = tr._gain[id(x)]


def layout(tr, name: str, args, kwargs, out) -> None:
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
    elif name in ("view", "view_as"):  # the model's tensor allowed the view; its shadow may be a strided copy
        res = s.reshape(*args[1:], **kwargs) if name == "view" else s.reshape_as(args[1])
    else:
        fn = getattr(torch.Tensor, name, None) or getattr(torch, name)
        res = fn(s, *args[1:], **kwargs)
    if isinstance(out, torch.Tensor):
        tr._set(out, res)
        carry(tr, x, out)  # gains and direct outputs are per node: any re-layout keeps them
    else:
        for o, r in zip(out, res):
            tr._set(o, r)


def pad(tr, args, kwargs, out) -> None:
    """Padding adds elements without a node (constant) or copies existing ones (reflect, replicate)."""
    s = tr.shadow(args[0])
    if s is None or not isinstance(out, torch.Tensor):
        return
    pad = arg(args, kwargs, 1, "pad")
    mode = arg(args, kwargs, 2, "mode", "constant") or "constant"
    if mode == "constant":
        res = torch.nn.functional.pad(s, pad, value=-1)
    else:
        res = torch.nn.functional.pad(s.double(), pad, mode=mode).round().long()
    tr._set(out, res)


def broadcast_from(tr, v, out, *, along: int) -> None:
    """``out`` carries ``v``'s node ids, constant ``along`` a dimension (attention output: the value's features).

    With grouped-query attention (``scaled_dot_product_attention(..., enable_gqa=True)``) the value
    has fewer heads (dimension -3) than the output; as the operation does, each value head serves
    ``heads / kv_heads`` consecutive query heads (``repeat_interleave``).
    """
    s = tr.shadow(v)
    if s is None or not isinstance(out, torch.Tensor) or s.dim() != out.dim():
        return
    row = s.narrow(along, 0, 1)
    if not bool((s == row).all()):
        return
    if row.dim() >= 3 and row.shape[-3] != out.shape[-3] and out.shape[-3] % row.shape[-3] == 0:
        row = row.repeat_interleave(out.shape[-3] // row.shape[-3], dim=-3)
    tr._set(out, row.expand(out.shape))


def einsum(tr, args, out) -> None:
    """``torch.einsum`` of two operands where one carries nodes and the other none (attention weights):
    the output keeps the carrier's nodes along the indices it keeps, if they do not vary along the indices
    summed over (``"bhij,bhjd->bhid"``: attention times values). Anything else is noted, not followed."""
    if _einsum_nodes(tr, args, out) is None:
        tr.notes["einsum: node identities not followed (layers reading its output start from fresh nodes)"] += 1


def _einsum_nodes(tr, args, out) -> Optional[bool]:
    ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    if not isinstance(args[0], str) or "->" not in args[0] or len(ops) != 2 or not isinstance(out, torch.Tensor):
        return None
    lhs, rhs = args[0].replace(" ", "").split("->")
    terms = lhs.split(",")
    if len(terms) != 2 or not all(isinstance(o, torch.Tensor) for o in ops):
        return None
    if "..." in args[0]:  # name the ellipsis' dimensions, aligned on the right as einsum broadcasts them
        spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in args[0]][:max(out.dim() - (len(rhs) - 3), 0)]
        terms = [_ellipsis(t, o.dim(), spare) for t, o in zip(terms, ops)]
        rhs = _ellipsis(rhs, out.dim(), spare)
    shadows = [tr.shadow(o) for o in ops]
    carriers = [i for i, sh in enumerate(shadows) if sh is not None and bool((sh >= 0).any())]
    if len(rhs) != out.dim() or any(len(t) != o.dim() for t, o in zip(terms, ops)):
        return None
    if len(carriers) == 2 and all(any(c not in rhs and not bool((sh == sh.narrow(d, 0, 1)).all())
                                      for d, c in enumerate(t)) for t, sh in zip(terms, shadows)):
        return True  # features contracted against features (q . k): scores, which belong to no node
    if len(carriers) != 1:
        return None
    term, sh = terms[carriers[0]], shadows[carriers[0]]
    if len(term) != sh.dim() or len(set(term)) != len(term):
        return None
    for d in reversed(range(len(term))):
        if term[d] not in rhs:  # summed over: the nodes must not depend on it
            if not bool((sh == sh.narrow(d, 0, 1)).all()):
                return None
            sh = sh.select(d, 0)
    kept = [c for c in term if c in rhs]
    sh = sh.permute(*sorted(range(len(kept)), key=lambda j: rhs.index(kept[j])))
    shape = [sh.shape[sorted(kept, key=rhs.index).index(c)] if c in kept else 1 for c in rhs]
    tr._set(out, sh.reshape(shape).expand(out.shape))
    return True


def _ellipsis(term: str, ndim: int, spare) -> str:
    """``term`` with ``...`` replaced by the last of the letters ``spare`` it stands for (``ndim`` dimensions in all)."""
    if "..." not in term:
        return term
    n = ndim - (len(term) - 3)
    return term.replace("...", "".join(spare[len(spare) - n:]) if n > 0 else "")


def matmul(tr, name: str, args, out) -> None:
    if name == "einsum":
        return einsum(tr, args, out)
    if not isinstance(out, torch.Tensor):
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
    # both carry nodes: attention weights whose scores got a learned bias from a layer (Swin V2's position-bias
    # MLP), nodes only along the heads (constant over both matrix dimensions), times the values (constant along
    # the summed one): the output holds the values' nodes. Anything else (an outer product, a gate) is not followed.
    if (len(cand) == 2 and sb is not None and bool((cand[0][0] >= 0).any())
            and bool((sa == sa.narrow(-2, 0, 1)).all())):
        try:
            return tr._set(out, cand[0][0].expand(out.shape))
        except RuntimeError:
            return None
    # nodes along a dimension the product keeps (a's rows, b's columns), not followed: a bilinear mix of two
    # activations (linear attention's k^T v), noted; nodes only along the summed dimension (q k^T: scores, which
    # belong to no node) vanish as they should
    if any(sh is not None and bool((sh >= 0).any()) and not bool((sh == sh.narrow(d, 0, 1)).all())
           for sh, d in ((sa, -2), (sb, -1))):
        tr.notes[f"{name}: a product of two activations whose nodes it keeps (e.g. linear attention's k^T v): node "
                 "identities not followed (layers reading its output start from fresh nodes)"] += 1


def channelwise(tr, x, out, *, known: bool, name: str) -> None:
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
        vec = channel_vector(s, d)
        shape = [1] * o.dim()
        shape[d] = -1
        tr._set(o, vec.view(shape).expand(o.shape))
        if not known:
            tr.notes[f"{name}: assumed to act per channel"] += 1
        return
    if bool((s >= 0).any()):
        tr.notes[f"{name}: node identities lost"] += 1
