"""The whole-network test in a benchmark report: ``network.csv`` rows and the lines under the terminal table.

The test itself is :func:`graphinterp.clustering.network_null.network_shuffle_test`; here each model's
result (or why it was not run) becomes one CSV row and one or two lines of text.
"""
from __future__ import annotations

import math
from typing import List

__all__ = ["NETWORK_COLUMNS", "network_rows", "network_lines"]

NETWORK_COLUMNS = ("model", "k", "n_shuffles", "nonzero_only", "layers", "n_cut", "n_cut_null_mean", "n_cut_null_std",
                   "n_cut_z", "n_cut_p", "E", "E_null_mean", "E_null_std", "E_z", "E_p", "sizes", "notes", "skipped")


def network_rows(report) -> List[dict]:
    """One dict per model with the whole-network test asked for: the test's figures, or why it was not run."""
    rows = []
    for m in report.models:
        t = m.network
        if t is None and not m.network_skipped:
            continue
        row = {"model": m.name, "skipped": m.network_skipped or ""}
        if t is not None:
            row.update({"k": t.k, "n_shuffles": t.n_shuffles, "nonzero_only": t.nonzero_only, "layers": len(t.layers),
                        "sizes": " ".join(map(str, t.sizes.tolist())), "notes": "; ".join(t.notes)})
            for key, c in (("n_cut", t.n_cut), ("E", t.E)):
                row.update({key: c.observed, f"{key}_null_mean": c.mean, f"{key}_null_std": c.std,
                            f"{key}_z": c.z, f"{key}_p": c.p_value})
        rows.append(row)
    return rows


def _versus(c, digits: int = 3) -> str:
    z = "-" if math.isnan(c.z) else f"{c.z:+.1f}"
    spread = f"{c.mean:.{digits}f}±{c.std:.{digits}f}" if math.isfinite(c.std) else f"{c.mean:.{digits}f}"
    return f"{c.observed:.{digits}f} (shuffles {spread}, z {z}, p {c.p_value:.3f})"


def network_lines(report) -> List[str]:
    """The lines under the table: per model, its n-cut and E against the shuffled networks, or why there is no test."""
    lines = []
    for m in report.models:
        t = m.network
        if t is not None:
            lines.append(f"{m.name}: whole network at k={t.k} ({len(t.layers)} layers, {int(t.sizes.sum())} nodes, "
                         f"n={t.n_shuffles} shuffled networks): n-cut {_versus(t.n_cut)} (lower is more clusterable), "
                         f"E {_versus(t.E)}")
            lines.extend(f"{m.name}: whole network: {note}" for note in t.notes)
        elif m.network_skipped:
            lines.append(f"{m.name}: no whole-network test: {m.network_skipped}")
    return lines
