"""Numbers written in the code that scale a weight layer's output: folded into that layer's rows.

``x + 0.1 * f(x)`` (a scaled residual branch), ``f(x) / 2``, ``-f(x)``, ``x - f(x)`` and
``torch.add(x, f(x), alpha=0.1)`` apply a fixed number to the raw output of the layer ``f``: the graph
holds ``0.1 * W`` (or ``-W``) for it, as it holds a learned scale's, and lists the fold
(``"f: 0.1 (number in the code)"``); training recomputes it as that constant. A number is folded only into
the raw output of a weight layer, where it is exact; elsewhere it is the model's own arithmetic (a hand-written
GELU's ``0.5 * x``, an attention score's scale) and changes no edge. A number on an operand of a sum that is
not a layer's raw output, where two node sets merge, is noted: the graph's weights there are the raw
parameters. So is a fold undone at the end of the trace (the layer's raw output is also read unscaled) when the
scaled value entered a sum (:func:`graphinterp.graph.trace_settle.settle`); otherwise it was the model's own
arithmetic on that output and is dropped without a note.
"""
from __future__ import annotations

import math
import weakref
from numbers import Real
from typing import Any, Dict, List, Optional

import torch

from graphinterp.graph import trace_ops as T
from graphinterp.graph.trace_folds import DIVS, MULS, NUMBER, _fold_out, _fold_scale, _per_node, _producer
from graphinterp.graph.trace_rules_layout import arg as _arg

__all__ = ["NEGS", "NUMBER", "ScaledSums", "as_number", "negate", "scale_by_number", "signed_operand"]

NEGS = {"neg", "__neg__", "negative", "neg_"}


def as_number(v: Any) -> Optional[float]:
    """``v`` as a float when it is a real number written in the code (not a bool, not a tensor), else None."""
    if isinstance(v, bool) or not isinstance(v, Real):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class ScaledSums:
    """Sums that merged two node sets, how often each was read, and the numbers in the code that scaled them.

    ``(a(h) + b(h)) / 2`` scales every branch of the sum, which no single layer can hold: noted when the trace
    ends, unless the sum was also read by anything but the number (a hand-written GELU on it, ``0.5 * y * (1 +
    tanh(...y...))``, is the model's own arithmetic, as for a layer's raw output, see
    :func:`graphinterp.graph.trace_settle.settle`). A view of a sum (``(a + b).reshape(...) / 2``, a transformer's
    heads) shares its sum's record: the view's own read is not counted, its readers' are. Sums are held weakly: an entry goes with its tensor, so a
    later tensor reusing the id is not taken for it, and no activation is kept alive.
    """

    def __init__(self) -> None:
        self._alive: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()
        self._records: Dict[int, list] = {}  # id -> [reads, note]; the record of a live sum
        self._scaled: List[list] = []  # records of sums a number scaled, kept to the end of the trace

    def add(self, out: torch.Tensor) -> None:
        """``out`` is a sum that merged the nodes of its operands."""
        self._alive[id(out)] = out
        self._records[id(out)] = [0, None]

    def read(self, operands: List[torch.Tensor]) -> None:
        """An operation read ``operands``: count the reads of live sums among them."""
        if self._alive:
            for t in operands:
                if self._alive.get(id(t)) is t:
                    self._records[id(t)][0] += 1

    def follow(self, operands: List[torch.Tensor], out: Any) -> None:
        """A layout or identity operation made ``out`` from ``operands``: a view of one live sum joins its record."""
        if len(operands) != 1 or not isinstance(out, torch.Tensor) or self._alive.get(id(operands[0])) is not operands[0]:
            return
        record = self._records[id(operands[0])]
        record[0] -= 1  # the view itself reads nothing: its readers are the sum's
        self._alive[id(out)] = out
        self._records[id(out)] = record

    def scaled(self, x: torch.Tensor, note: str) -> None:
        """A number in the code scaled ``x``: if it is a live sum, ``note`` is due unless the sum is read elsewhere."""
        if self._alive.get(id(x)) is x:
            record = self._records[id(x)]
            record[1] = note
            self._scaled.append(record)

    def notes(self) -> List[str]:
        """The notes due when the trace ends: sums read only by the number that scaled them."""
        return [note for reads, note in self._scaled if reads <= 1]


def _tag(value: float) -> str:
    """The number as a fold's tag shows it: short where that is exact (``0.1``, ``-1``), else every digit, so that
    training recomputes the very value folded."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def scale_by_number(tr: Any, name: str, args, kwargs, tensors: List[torch.Tensor], out) -> bool:
    """``x * c``, ``c * x`` or ``x / c`` with ``c`` a number, ``x`` a weight layer's raw output: fold ``c``; True when folded.

    On any other ``x`` with nodes the number is remembered (``tr.number_scaled``), for a note if the result
    then merges with other nodes in a sum (:func:`signed_operand`)."""
    if (name not in MULS and name not in DIVS) or len(tensors) != 1 or not isinstance(out, torch.Tensor) or (
            kwargs.get("rounding_mode") is not None):  # a floor or truncating division is no scale
        return False
    x = tensors[0]
    numbers = [n for n in (as_number(a) for a in list(args) + list(kwargs.values()) if a is not x) if n is not None]
    if len(numbers) != 1 or tr.shadow(x) is None or (name in DIVS and (not args or args[0] is not x)):
        return False
    if name in DIVS and numbers[0] == 0:
        return False
    value = 1 / numbers[0] if name in DIVS else numbers[0]
    if value == 1:
        return False
    if not tr.fold or _producer(tr, x, out)[0] is None:
        tr.number_scaled[id(out)] = value
        if tr.fold:
            tr.merged_sums.scaled(x, f"{name}: a sum of branches scaled by a number in the code ((a + b) * c, e.g. an "
                                     "average of two branches or a scaled residual sum): not folded (no single layer "
                                     "holds it), the graph's weights of the summed branches are the raw parameters "
                                     "(per-layer E is unaffected; the model-wide E and the whole-network graph's "
                                     "magnitudes are)")
        return False
    return _fold_number(tr, x, out, value)


def _fold_number(tr: Any, x: torch.Tensor, out, value: float) -> bool:
    """Fold ``value`` into the layer whose raw output ``x`` is, ``out`` becoming its (scaled) direct output."""
    if not _fold_scale(tr, x, out, torch.tensor(value, dtype=torch.float64), _tag(value), NUMBER,
                       torch.zeros((), dtype=torch.long)):
        return False
    tr.number_folds.append((tr._direct.get(id(out)), f"{_tag(value)} ({NUMBER})", id(out)))  # the layer folded into
    return True


def negate(tr: Any, args, out) -> bool:
    """``-x`` with ``x`` a weight layer's raw output: fold -1 into its rows; True when folded."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or tr.shadow(x) is None:
        return False
    if _producer(tr, x, out)[0] is None:
        return False
    return _fold_number(tr, x, out, -1.0)


def signed_operand(tr: Any, name: str, args, kwargs) -> None:
    """The numbers on the operands of a sum, called before its nodes merge: the coefficient of ``b`` in ``a - b``
    (-1), ``c - b`` (``__rsub__``) or ``torch.add(a, b, alpha=c)`` is folded into ``b``'s layer when ``b`` is a weight
    layer's raw output; a coefficient that cannot be folded, or an operand scaled by a number after a non-weight
    operation (``0.1 * relu(f(x))``), is noted when the sum merges it with other nodes."""
    if name not in T.SUBS and name not in T.ADDS:
        return
    alpha = _arg(args, kwargs, 2, "alpha", 1)
    alpha = as_number(alpha)
    if alpha is None:
        return
    if name in ("__rsub__", "rsub"):  # b.__rsub__(a) is a - b: b is the first operand
        b, a = (args[0] if args else None), (args[1] if len(args) > 1 else None)
    else:
        b, a = (args[1] if len(args) > 1 else kwargs.get("other")), (args[0] if args else None)
    if not isinstance(b, torch.Tensor) or tr.shadow(b) is None:
        return
    coeff = -alpha if name in T.SUBS else alpha
    scaled = {_tag(v) for v in (tr.number_scaled.get(id(t)) for t in (a, b) if isinstance(t, torch.Tensor))
              if v is not None}
    layer = tr._direct.get(id(b))
    if coeff != 1 and layer is not None and tr.fold:
        s = tr.shadow(b)
        ids, scale = _per_node(s, torch.full(s.shape, coeff, dtype=torch.float64))
        if ids is not None:
            tag = f"{_tag(coeff)} ({NUMBER})"
            _fold_out(tr, layer, ids, scale, tag, b, torch.zeros(len(ids), dtype=torch.long))
            tr.number_folds.append((layer, tag, None))  # a sum's coefficient: noted if the fold is undone
            coeff = 1
    if coeff != 1:
        scaled.add(_tag(coeff))
    if not scaled or not _merges(tr, a, b):
        return
    size = ("magnitudes and E are unaffected" if scaled <= {"-1"} else
            "per-layer E is unaffected; the whole-network graph's magnitudes are")
    tr.notes[f"{name}: an operand scaled by {', '.join(sorted(scaled))} (a number in the code) after a non-weight "
             f"operation joins other nodes in a sum: not folded, the graph's weights before it are the raw parameters "
             f"({size})"] += 1


def _merges(tr: Any, a, b) -> bool:
    """Whether a sum of ``a`` and ``b`` joins different nodes (both carry nodes, not the same ones)."""
    if not isinstance(a, torch.Tensor) or tr.shadow(a) is None or tr.shadow(b) is None:
        return False
    try:
        sa, sb = torch.broadcast_tensors(tr.shadow(a), tr.shadow(b))
    except RuntimeError:
        return False
    return bool(((sa >= 0) & (sb >= 0) & (sa != sb)).any())
