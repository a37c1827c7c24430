"""How reductions and scans move node identities: ``sum``/``mean``/``amax`` over a dimension, ``cumsum`` and kin.

A reduction keeps the nodes of a dimension along which they are constant (a sum over positions). Over a dimension
holding different nodes it is either a statistic of one layer's features (a norm's variance, an attention score:
no node) or a sum of branches stacked there (``torch.stack([f(x), g(x)]).sum(0)`` is ``f(x) + g(x)``), whose nodes
merge as in a residual sum. A scan along different nodes mixes them and is noted.
"""
from __future__ import annotations

import torch

from graphinterp.graph.trace_rules_layout import arg

__all__ = ["reduce", "scan"]


#: reductions that combine the slices they reduce as a sum or a choice does (``stack([f(x), g(x)]).sum(0)`` is
#: ``f(x) + g(x)``): their nodes merge, as in a residual sum
_MERGING = {"sum", "mean", "nansum", "nanmean", "amax", "amin", "max", "min", "logsumexp"}


def reduce(tr, name: str, args, kwargs, out) -> None:
    """A reduction over dimensions: the nodes of a dimension along which they are constant are kept; a dimension
    holding different nodes is either a feature dimension (a statistic: no node, e.g. a norm's variance or an
    attention score) or a stack of branches from different spaces (``stack([f(x), g(x)]).sum(0)``), whose slices'
    nodes merge (noted for other reductions)."""
    x = args[0]
    s = tr.shadow(x)
    res_out = out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, (tuple, list)) else None)
    if s is None or not isinstance(res_out, torch.Tensor):
        return
    dims = arg(args, kwargs, 1, "dim")
    if dims is None or not isinstance(dims, (int, tuple, list)):
        return
    dims = [dims] if isinstance(dims, int) else list(dims)
    keep = bool(arg(args, kwargs, 2, "keepdim", False)) if not isinstance(arg(args, kwargs, 2, "keepdim"), torch.Tensor) else False
    r = s
    for d in sorted((d % s.dim() for d in dims), reverse=True):
        row = r.narrow(d, 0, 1)
        if bool((r == row).all()):
            r = row
        elif _stacked(tr, r, d):  # slices of nodes of different spaces: branches stacked along d
            if name in _MERGING:
                if name in ("mean", "nanmean"):
                    tr.notes[f"{name} over stacked branches: each enters times 1/{r.shape[d]} (a number in the code), "
                             "not folded; their nodes are merged as in a sum"] += 1
                r = _merge_slices(tr, r, d, name)
            else:
                tr.notes[f"{name} over a dimension of stacked node layouts: node identities not followed (layers "
                         "reading its output start from fresh nodes)"] += 1
                r = torch.full_like(row, -1)
        else:
            r = torch.full_like(row, -1)
        if not keep:
            r = r.squeeze(d)
    if tuple(r.shape) == tuple(res_out.shape) and bool((r >= 0).any()):
        tr._set(res_out, r)


def _stacked(tr, r: torch.Tensor, d: int) -> bool:
    """Whether the slices of ``r`` along ``d`` are branches stacked there: each a layout of several nodes, no two
    holding nodes of one space (the features of one layer reduced over, e.g. a QK-norm's or an attention score's
    sum over a head's dimensions, are a statistic, not branches)."""
    seen: set = set()
    for i in range(r.shape[d]):
        ids = r.narrow(d, i, 1)
        ids = torch.unique(ids[ids >= 0])
        if ids.numel() < 2:
            return False
        spaces = {tr._group(tr._find(int(v))) for v in ids.tolist()}
        if spaces & seen:
            return False
        seen |= spaces
    return True


def _merge_slices(tr, r: torch.Tensor, d: int, name: str) -> torch.Tensor:
    """The slices of ``r`` along ``d`` merged element by element into the first (kept, size 1 along ``d``)."""
    res = r.narrow(d, 0, 1).clone()
    for i in range(1, r.shape[d]):
        s = r.narrow(d, i, 1)
        both = (res >= 0) & (s >= 0) & (res != s)
        if bool(both.any()):
            tr._merge(res[both], s[both], name)
        res = torch.where(res >= 0, res, s)
    return res


def scan(tr, name: str, args, kwargs, out) -> None:
    """``cumsum`` and kin: element ``j`` along ``dim`` mixes elements ``0..j``. Along a dimension of different nodes
    that mixes nodes (not an edge of the graph): noted; the output keeps the input's nodes."""
    x = args[0] if args else None
    o = out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, (tuple, list)) and out else None)
    s = tr.shadow(x)
    if s is None or not isinstance(o, torch.Tensor) or tuple(o.shape) != tuple(s.shape):
        return
    d = arg(args, kwargs, 1, "dim")
    if isinstance(d, int) and s.dim() and not bool((s == s.narrow(d % s.dim(), 0, 1)).all()):
        tr.notes[f"{name} along a dimension of different nodes: mixes them (not an edge of the graph); the output "
                 "keeps the input's nodes"] += 1
    tr._set(o, s)
