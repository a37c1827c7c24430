"""The terminal table of a benchmark report (:func:`format_report`), one row per model and layer."""
from __future__ import annotations

import math
from typing import List, Optional

from graphinterp.clustering.shuffle_results import multiple_tests_line
from graphinterp.common.text import format_table
from graphinterp.reports.network_report import network_lines

__all__ = ["format_report"]


def _spread(c) -> Optional[str]:
    """A null's ``mean±sd``; the mean alone, marked, when one shuffle gives no sd."""
    if c is None:
        return None
    return f"{c.mean:.3f}±{c.std:.3f}" if math.isfinite(c.std) else f"{c.mean:.3f} (n=1, no sd)"


def _z(x: float) -> Optional[float]:
    """A z-score for the table: None (shown '-') when undefined (NaN), an infinity as itself."""
    return None if math.isnan(x) else x


MAX_K_COLUMNS = 5  # up to this many k get their own E and E_rand columns; beyond it the first, last and tested k


def shown_ks(ks, kk: int) -> list:
    """The k with E and E_rand columns in the table: every k when there are at most :data:`MAX_K_COLUMNS`,
    else the first, the last and ``kk`` (the significance k, or the last k without a test); ``kk`` is always in.

    Examples
    --------
    >>> shown_ks([2, 3], 4), shown_ks(list(range(2, 11)), 4)
    ([2, 3, 4], [2, 4, 10])
    """
    ks = list(ks)
    picked = ks if len(ks) <= MAX_K_COLUMNS else [ks[0], ks[-1]]
    return sorted(set(picked) | {kk})


def format_report(report) -> str:
    """The terminal table of a :class:`graphinterp.reports.benchmark_report.BenchmarkReport` (not imported
    here: that module imports this one): one row per model and layer, then the layers left out and why.

    Columns: shape, E and E_random at each k (every k when there are at most five, else the first, the last
    and the significance k, with a line naming the others, which are in clusterability.csv and the JSON),
    the normalised score at the significance k (the largest k without a shuffle test), then the shuffle
    test on both measures (null mean±sd, z and p; left out when no test was run). When the significance k
    is not among the report's k, its E, E_random and score are those of the shuffle test's own clustering
    (said below).

    Parameters
    ----------
    report : BenchmarkReport
        The benchmark's results.

    Returns
    -------
    str
        The table and the lines below it, joined by newlines.
    """
    tested = report.significance_k is not None and report.n_shuffles > 0
    kk = report.significance_k if tested else report.ks[-1]
    cols = shown_ks(report.ks, kk)
    hidden = [k for k in report.ks if k not in cols]
    headers = ["model", "layer", "in x out"]
    for k in cols:
        headers += [f"E k={k}", f"E_rand k={k}"] + ([f"score k={k}"] if k == kk else [])
    if tested:
        headers += ["null E", "z(E)", "p(E)", "null score", "z(score)", "p(score)"]
    rows = []
    for m in report.models:
        for lb in m.layers:
            t = lb.significance if tested else None
            row = [m.name, lb.layer, f"{lb.shape[0]}x{lb.shape[1]}"]
            for k in cols:
                s = lb.scores.get(k, {})
                if k == kk and not s and t is not None:  # kk not among report.ks: the shuffle test's clustering
                    s = {"E": t.E.observed, "E_random": t.E_random, "score": t.score.observed}
                row += [s.get("E"), s.get("E_random")] + ([s.get("score")] if k == kk else [])
            if tested:
                row += [_spread(t.E if t else None), _z(t.E.z) if t else None,
                        t.E.p_value if t else None, _spread(t.score if t else None),
                        _z(t.score.z) if t else None, t.score.p_value if t else None]
            rows.append(row)
    lines = [format_table(rows, headers)]
    if hidden:
        lines.append(f"E and E_rand at k={','.join(map(str, hidden))} are not in this table (more than "
                     f"{MAX_K_COLUMNS} k: only the first, last and {'significance' if tested else 'score'} k are "
                     f"shown): every layer at every k is in clusterability.csv and benchmark.json (--json)")
    if tested:
        lines.append(f"shuffle test at k={kk} with n={report.n_shuffles} shuffles per layer (smallest possible "
                     f"p = {1 / (report.n_shuffles + 1):.3f}); z = (observed - null mean) / null sd; p = (r + 1) / (n + 1), "
                     f"r = the shuffles scoring at least the observed value (one-sided)"
                     + ("; n=1 has no sd, so no z" if report.n_shuffles == 1 else ""))
        lines.extend(report_notes(report))
        if kk not in report.ks:
            lines.append(f"k={kk} (the significance k) is not among the k benchmarked "
                         f"({','.join(map(str, report.ks))}): its E, E_rand and score are from the shuffle test's "
                         f"own clustering, and it is not in clusterability.csv")
    else:
        lines.append("no shuffle test (0 shuffles): E is compared only with the random-partition baseline "
                     "E_rand, not with a shuffled null")
    lines.extend(_same_name_lines(report.models))
    for m in report.models:
        curve, base = m.curve(report.ks)
        if curve:
            out = [lb.layer for lb in m.layers if not all(k in lb.scores for k in report.ks)]
            over = (f" (over the {len(m.layers) - len(out)} of {len(m.layers)} layers scored at every k; "
                    f"left out: {', '.join(out)})" if out else "")
            rest = (f"; k={','.join(map(str, hidden))} in benchmark.json (models[].mass_weighted)" if hidden else "")
            lines.append(f"{m.name}: {m.structure}, mass-weighted E " + ", ".join(
                f"k={k}: {curve[k]:.3f} (rand {base[k]:.3f})" for k in cols if k in curve) + over + rest)
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
        lines.extend(f"{m.name}: layer {lb.layer}: {note}" for lb in m.layers if lb.significance
                     for note in lb.significance.notes())
    lines.extend(network_lines(report))
    for name, why in report.failed.items():
        lines.append(f"{name}: FAILED, not benchmarked: {why}")
    return "\n".join(lines)


def report_notes(report) -> List[str]:
    """The notes on the whole report (the table's text and ``benchmark.json``'s ``notes``): that its p-values are
    uncorrected for one another, and where the tested layers' own clusterings differ from the k columns."""
    notes = []
    layers = [(m, lb) for m in report.models for lb in m.layers if lb.significance is not None]
    networks = sum(m.network is not None for m in report.models)
    n_tests = 2 * (len(layers) + networks)  # E and score per layer; n-cut and E per network
    if n_tests > 2:
        what = f"E and score of {len(layers)} layer(s)" + (f", n-cut and E of {networks} network(s)" if networks else "")
        notes.append(multiple_tests_line(n_tests, report.n_shuffles, what))
    kk = report.significance_k
    differ = [f"{m.name}:{lb.layer}" for m, lb in layers
              if kk in lb.scores and abs(lb.scores[kk]["E"] - lb.significance.E.observed) > 1e-12]
    if differ:
        notes.append(f"the shuffle test clusters each layer alone at k={kk} (an SVD of rank {kk}), as it clusters the "
                     f"shuffled copies; the k columns come from one SVD for all k, and at k={kk} they differ from the "
                     f"test's observed E and score (which z and p compare) in {len(differ)} layer(s): "
                     + ", ".join(differ[:5]) + (", ..." if len(differ) > 5 else "")
                     + " (benchmark.json: layers[].significance)")
    return notes


def _same_name_lines(models) -> List[str]:
    """Which file each model is, where models of one name (``label``) were told apart by a suffix (``model-2``).

    Examples
    --------
    >>> from types import SimpleNamespace as M
    >>> _same_name_lines([M(name="model", label="model", source="a/model.pt"),
    ...                   M(name="model-2", label="model", source="b/model.pt")])
    ['model is a/model.pt; model-2 is b/model.pt (models of one file name, told apart by a suffix)']
    >>> _same_name_lines([M(name="mlp", label="mlp", source="mlp.pt"), M(name="mlp-2", label="mlp-2", source="mlp-2.pt")])
    []
    """
    shared = {m.label for m in models if m.label is not None and m.name != m.label}
    same = [m for m in models if m.label in shared]
    if not same:
        return []
    return ["; ".join(f"{m.name} is {m.source}" for m in same) + " (models of one file name, told apart by a suffix)"]
