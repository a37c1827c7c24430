"""Folds undone when the trace ends: a scale folded into a layer is exact only if nothing else reads what it scaled.

:func:`settle` runs once the forward pass is over (:meth:`ChannelTracer.settle_gains`), when every reader of every
tensor is known: an input gain (LayerNorm, RMSNorm) whose normalised tensor is also read by a non-weight
operation, and an out-fold (BatchNorm, layer_scale, a number in the code) whose layer's raw output is also read by
anything but the fold, are taken back out of the layer and listed in ``unfolded`` (or, for a number, noted where it
scaled a path into a sum) with the readers that made them inexact.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Tuple

from graphinterp.graph import trace_ops as T
from graphinterp.graph.trace_folds import NUMBER

__all__ = ["MIXED_READ", "RETURNED", "settle"]

#: The reader counted as a leak of a gain with several values per node, read re-laid out (see ``_Gain``).
MIXED_READ = "a layer reading it re-laid out, where one node has several gains"
RETURNED = "the model's output"  # the reader name of a returned tensor (see ChannelTracer.returned)


def settle(tr) -> None:
    """Undo every fold that another reader of its tensor makes inexact (see ``ChannelTracer.settle_gains``):
    input gains whose normalised tensor is also read by a non-weight operation, and out-folds (BatchNorm,
    layer_scale) whose layer's raw output is also read by anything but the fold."""
    undone: Dict[str, Tuple[str, Counter, List[str]]] = {}  # source -> its kind, readers and layers, over its applications
    for gain in tr._gains:
        if not gain.leaks or (not gain.folded_by and MIXED_READ not in gain.leaks):
            continue
        tag = f"{gain.source} (input gain)"
        _, leaks, layers = undone.setdefault(gain.source, (gain.kind, Counter(), []))
        leaks.update(gain.leaks)
        for i in gain.folded_by:
            call = tr.calls[i]
            if tag in call.folded:
                call.folded.remove(tag)
            call.fold_maps = [m for m in call.fold_maps if m[0] != tag]
            call.in_scale = None
            if call.name not in layers:
                layers.append(call.name)
        gain.used = False
    for source, (kind, leaks, layers) in undone.items():  # a norm applied several times (ALBERT's shared layer): one reason
        tr.unfolded[source] = _leak_reason(kind, leaks, layers)
    for layer, readers in tr._out_folds.leaking().items():  # BN(conv(x)) where conv's output is read too
        call = tr.calls[layer]
        call.out_scale = None
        call.fold_maps = [m for m in call.fold_maps if m[1] != "out"]
        tags = tr._out_folds.tags.get(layer, [])
        for tag in tags:
            if tag in call.folded:
                call.folded.remove(tag)
            if tag.endswith(f"({NUMBER})"):
                _number_undone(tr, layer, tag, call.name)
                continue
            source, kind = tag.split(" ", 1)
            others = sorted(set(readers) - {source}) or sorted({t.split(" ", 1)[0] for t in tags} - {source})
            tr.unfolded[source] = (f"{kind.strip('()')}: the raw output of {call.name} is also read by "
                                   f"{', '.join(others[:4])}; folding the scale into {call.name} would change "
                                   "what those read")


def _number_undone(tr, layer: int, tag: str, name: str) -> None:
    """A number's fold undone because the layer's raw output is read elsewhere too: noted when the scaled value
    entered a sum (a coefficient of a sum's operand, or ``0.5 * y + 0.25 * y``), where it scales an edge path;
    silent when it fed the model's own arithmetic on that output (a hand-written GELU's ``0.5 * x``, a rotary
    sign, attention's ``q * scale``), which changes no edge's weight."""
    for where, t, out_id in tr.number_folds:
        if where != layer or t != tag:
            continue
        if out_id is None or set(tr._out_folds.reads.get(out_id, ())) & (T.ADDS | T.SUBS):
            tr.notes[f"{name}: its output times {tag.split(' (')[0]} (a number in the code) enters a sum, and the "
                     "output is also read unscaled elsewhere: not folded, the graph's weights there are the raw "
                     "parameters"] += 1
            return


def _leak_reason(kind: str, leaks: Counter, layers: List[str]) -> str:
    """Why a gain of kind ``kind`` (its readers ``leaks``, over all its applications) is not folded, for ``unfolded``:
    ``"LayerNorm gain: its output is read by a residual sum (add): it is the residual stream, as well as by the
    layer b.0; folding ..."``."""
    others = sorted(set(leaks) - T.ADDS - {RETURNED, MIXED_READ})
    readers = []
    if MIXED_READ in leaks:
        readers.append(MIXED_READ + " (a norm over a flattened conv's features)")
    if RETURNED in leaks:
        readers.append("the model's output (the model returns it)")
    if set(leaks) & T.ADDS:
        readers.append("a residual sum (add): it is the residual stream")
    if others:
        readers.append("non-weight operations (" + ", ".join(others[:4]) + (", ..." if len(others) > 4 else "") + ")")
    if not layers:
        return f"{kind}: its output is read by " + " and by ".join(readers) + "; no weight layer can hold it"
    shown = ", ".join(layers[:3]) + (f", ... ({len(layers)} layers)" if len(layers) > 3 else "")
    one = len(layers) == 1
    return (f"{kind}: its output is read by " + " and by ".join(readers)
            + f", as well as by the layer{'' if one else 's'} {shown}; folding the gain into "
            + ("that layer" if one else "those layers") + " alone would change the model's function")
