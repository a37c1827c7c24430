"""The terminal table of a benchmark report (:func:`format_report`), one row per model and layer."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

from graphinterp.common.text import format_table

if TYPE_CHECKING:  # pragma: no cover
    from graphinterp.reports.benchmark_report import BenchmarkReport

__all__ = ["format_report"]


def _spread(c) -> Optional[str]:
    """A null's ``mean±sd``; the mean alone, marked, when one shuffle gives no sd."""
    if c is None:
        return None
    return f"{c.mean:.3f}±{c.std:.3f}" if math.isfinite(c.std) else f"{c.mean:.3f} (n=1, no sd)"


def _z(x: float) -> Optional[float]:
    """A z-score for the table: None (shown '-') when undefined (NaN), an infinity as itself."""
    return None if math.isnan(x) else x


def format_report(report: BenchmarkReport) -> str:
    """The terminal table: one row per model and layer, then the layers left out and why.

    Columns: shape, E at the smallest k and at the significance k (the largest k without a shuffle
    test), E_random and the normalised score at that k, then the shuffle test on both measures (null
    mean±sd, z and p; left out when no test was run). When the significance k is not among the
    report's k, its E, E_random and score are those of the shuffle test's own clustering (said below).
    """
    tested = report.significance_k is not None and report.n_shuffles > 0
    k0 = report.ks[0]
    kk = report.significance_k if tested else report.ks[-1]
    headers = ["model", "layer", "in x out", f"E k={k0}"] + ([f"E k={kk}"] if kk != k0 else []) + [
        f"E_rand k={kk}", f"score k={kk}"]
    if tested:
        headers += ["null E", "z(E)", "p(E)", "null score", "z(score)", "p(score)"]
    rows = []
    for m in report.models:
        for lb in m.layers:
            s = lb.scores.get(kk, {})
            t = lb.significance if tested else None
            if not s and t is not None:  # kk is not among report.ks: the shuffle test's clustering at kk
                s = {"E": t.E.observed, "E_random": t.E_random, "score": t.score.observed}
            row = [m.name, lb.layer, f"{lb.shape[0]}x{lb.shape[1]}", lb.scores.get(k0, {}).get("E")]
            row += ([s.get("E")] if kk != k0 else []) + [s.get("E_random"), s.get("score")]
            if tested:
                row += [_spread(t.E if t else None), _z(t.E.z) if t else None,
                        t.E.p_value if t else None, _spread(t.score if t else None),
                        _z(t.score.z) if t else None, t.score.p_value if t else None]
            rows.append(row)
    lines = [format_table(rows, headers)]
    if tested:
        lines.append(f"shuffle test at k={kk} with n={report.n_shuffles} shuffles per layer (smallest possible "
                     f"p = {1 / (report.n_shuffles + 1):.3f}); z = (observed - null mean) / null sd"
                     + ("; n=1 has no sd, so no z" if report.n_shuffles == 1 else ""))
        if kk not in report.ks:
            lines.append(f"k={kk} (the significance k) is not among the k benchmarked "
                         f"({','.join(map(str, report.ks))}): its E, E_rand and score are from the shuffle test's "
                         f"own clustering, and it is not in clusterability.csv")
    else:
        lines.append("no shuffle test (0 shuffles): E is compared only with the random-partition baseline "
                     "E_rand, not with a shuffled null")
    for m in report.models:
        curve, base = m.curve(report.ks)
        if curve:
            n_common = sum(all(k in lb.scores for k in report.ks) for lb in m.layers)
            over = (f" (over the {n_common} of {len(m.layers)} layers scored at every k)"
                    if n_common < len(m.layers) else "")
            lines.append(f"{m.name}: {m.structure}, mass-weighted E " + ", ".join(
                f"k={k}: {curve[k]:.3f} (rand {base[k]:.3f})" for k in dict.fromkeys((k0, kk)) if k in curve) + over)
        for note in m.notes:
            lines.append(f"{m.name}: {note}")
        for layer, why in m.skipped.items():
            lines.append(f"{m.name}: skipped layer {layer}: {why}")
        partial = {lb.layer: sorted(lb.skipped_k) for lb in m.layers if lb.skipped_k}
        for layer, kss in partial.items():
            lines.append(f"{m.name}: layer {layer} has too few nodes for k={','.join(map(str, kss))}")
        untested = {lb.layer: lb.significance_skipped for lb in m.layers if lb.significance_skipped}
        if tested and untested and len(untested) == len(m.layers):
            lines.append(f"{m.name}: no layer shuffle-tested: every layer has fewer than k={kk} nodes with weights "
                         f"on one side")
        elif tested:
            for layer, why in untested.items():
                lines.append(f"{m.name}: layer {layer} not shuffle-tested at k={kk}: {why}")
    for name, why in report.failed.items():
        lines.append(f"{name}: FAILED, not benchmarked: {why}")
    return "\n".join(lines)
