"""Scales by a parameter inside fused operations: ``torch.addcmul``, ``addcdiv``, ``lerp`` and ``einsum``.

``torch.addcmul(beta, alpha, x)`` is ``x * alpha + beta`` (timm's ResMLP ``Affine``) and
``torch.einsum("bd,d->bd", x, g)`` is ``x * g``: the same per-node scale as ``x * param``, written as
one operation. The first is folded as ``x * param`` is (the additive ``beta`` carries no nodes, so it is
a bias, which the graph does not hold); every other scale by a parameter or a buffer inside these
operations is listed in the coverage's ``unfolded``, so that the graph's raw weights around it are
never a silent difference from the model.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from graphinterp.graph import trace_ops as T
from graphinterp.graph.trace_folds import NOT_FOLDING, scale_by_param
from graphinterp.graph.trace_numbers import as_number
from graphinterp.graph.trace_rules_layout import arg as _arg

__all__ = ["FUSED_SCALES", "einsum_scale", "fused_scale", "unfolded_operand"]

#: element-wise operations with multiplicative operands (``tensor1`` and ``tensor2``; ``lerp``'s ``weight``)
FUSED_SCALES = {"addcmul", "addcdiv", "lerp"}


def fused_scale(tr: Any, name: str, args, kwargs, out) -> bool:
    """Fold ``addcmul(bias, param, x)`` (``value`` 1, ``bias`` without nodes) as ``x * param``; True when folded.

    Otherwise any parameter or buffer among the operation's multiplicative operands is listed as not
    folded (:func:`unfolded_operand`), and False is returned: the caller merges the nodes as for any
    element-wise operation.
    """
    if name == "lerp":
        ops = [_arg(args, kwargs, 2, "weight")]
        end, w = _arg(args, kwargs, 1, "end"), as_number(ops[0])
        if (w is not None and isinstance(end, torch.Tensor) and tr.shadow(end) is not None and tr.shadow(args[0] if args else kwargs.get("input")) is not None):
            tr.notes[f"torch.lerp with weight {w:g} (a number in the code): its inputs enter times {1 - w:g} and {w:g}, "
                     "not folded; the graph's weights before it are the raw parameters (per-layer E is "
                     "unaffected)"] += 1
    else:
        ops = [_arg(args, kwargs, 1, "tensor1"), _arg(args, kwargs, 2, "tensor2")]
    base = args[0] if args else kwargs.get("input")
    if (tr.fold and name == "addcmul" and _arg(args, kwargs, 3, "value", 1) == 1 and len(ops) == 2
            and all(isinstance(o, torch.Tensor) for o in ops) and tr.shadow(base) is None):
        carries = [tr.shadow(o) is not None for o in ops]
        if carries.count(True) == 1:
            x, p = (ops[0], ops[1]) if carries[0] else (ops[1], ops[0])
            if tr.is_param_like(p) and scale_by_param(tr, [p, x], out):
                return True
    for op in ops:
        unfolded_operand(tr, f"torch.{name}", op)
    return False


def einsum_scale(tr: Any, args, out) -> None:
    """After the einsum rule: a two-operand einsum that kept one operand's nodes (``"bd,d->bd"``) scaled them by
    the other; when that one is a parameter or a buffer, it is listed as not folded."""
    ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    if len(ops) != 2 or not isinstance(out, torch.Tensor) or tr.shadow(out) is None:
        return
    carries = [isinstance(o, torch.Tensor) and tr.shadow(o) is not None for o in ops]
    if carries.count(True) == 1:
        unfolded_operand(tr, "torch.einsum", ops[carries.index(False)])


def unfolded_operand(tr: Any, where: str, c: Optional[torch.Tensor]) -> None:
    """List parameter (or buffer-derived) operand ``c`` of operation ``where`` as a scale that was not folded."""
    src, owner = tr.param_of(c), tr.constant_owner(c)
    if src is None and owner is None:
        return  # computed from the input (a gate, attention weights) or a constant written in the code
    key = T.layer_name(src[0]) if src is not None else owner
    if not tr.fold:
        tr.unfolded[key] = NOT_FOLDING
        return
    tr.unfolded.setdefault(key, f"a scale by a {'parameter' if src is not None else 'constant tensor'} inside {where}, "
                                "which the tracer does not fold (x * scale it can); the graph's weights around it "
                                "are the raw parameters")
