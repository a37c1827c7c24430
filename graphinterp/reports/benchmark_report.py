"""Results of :mod:`graphinterp.reports.benchmarking` and their outputs: terminal table, JSON, CSV, figures.

Files written by :func:`write_report` into one folder (all atomically):

* ``benchmark.json``: everything, including each layer's cluster sizes and null samples;
* ``clusterability.csv``: one row per model, layer and k (E, E_random, normalised score, sizes);
* ``significance.csv``: one row per model and layer (observed E and score, their null mean and
  standard deviation, z-scores and empirical p-values, number of shuffles; ``seconds`` is the layer's whole
  benchmark, every k and the shuffle test);
* ``network.csv`` (with the whole-network test): one row per model, its n-cut and E against the shuffled
  networks (:mod:`graphinterp.reports.network_report`);
* ``clusterability_vs_k.png``/``.svg``: mass-weighted E against k, one line per model, with the
  random-partition expectation dashed (the paper's Figure 1); ``<model>_layers.png``: E against k per
  layer of one model; ``<model>_significance.png``: each layer's E against its shuffled null (split
  into ``_1``, ``_2``, ... files for models with more than 10 / 20 layers).
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from graphinterp.common.files import atomic_write
from graphinterp.clustering.metrics import normalized_score
from graphinterp.clustering.network_null import NetworkShuffleTest
from graphinterp.clustering.significance import ShuffleTest
from graphinterp.reports.benchmark_table import format_report, report_notes
from graphinterp.reports.io import json_safe, write_json
from graphinterp.reports.network_report import NETWORK_COLUMNS, network_rows

__all__ = ["LayerBenchmark", "ModelBenchmark", "BenchmarkReport", "clusterability_rows", "significance_rows",
           "format_report", "write_report", "safe_name"]


@dataclass
class LayerBenchmark:
    """One layer's clusterability for each k and its significance test.

    ``scores[k]`` holds ``E``, ``E_random``, ``score``, ``row_sizes`` and ``col_sizes`` (one list of k each) and
    ``sizes``, the two lists ``[row_sizes, col_sizes]`` (not ``analyze``'s per-cluster pairs);
    ``labels[k]`` the BSGC clustering ``(row_labels, col_labels)`` (kept in memory, not in the JSON);
    ``skipped_k[k]`` says why a k was left out (too few nodes); ``significance_skipped`` why the layer was
    not shuffle-tested when the test was asked for (too few nodes for the significance k).
    """

    layer: str
    kind: str
    shape: Tuple[int, int]
    mass: float
    scores: Dict[int, dict] = field(default_factory=dict)
    skipped_k: Dict[int, str] = field(default_factory=dict)
    labels: Dict[int, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    significance: Optional[ShuffleTest] = None
    seconds: float = 0.0
    significance_skipped: Optional[str] = None

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"layer": self.layer, "kind": self.kind, "shape": list(self.shape), "mass": self.mass,
                "scores": {str(k): v for k, v in self.scores.items()},
                "skipped_k": {str(k): v for k, v in self.skipped_k.items()},
                "significance": self.significance.to_dict() if self.significance else None,
                "significance_skipped": self.significance_skipped, "seconds": self.seconds}


@dataclass
class ModelBenchmark:
    """All benchmarked layers of one model, the layers left out and why, and how the graph was built."""

    name: str
    source: str
    structure: str
    layers: List[LayerBenchmark]
    skipped: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0
    coverage: Optional[dict] = None  # Coverage.to_dict() of its graph, as analyze --json gives it
    network: Optional[NetworkShuffleTest] = None  # the whole-network test (``network=True``)
    network_skipped: Optional[str] = None  # why the whole-network test was asked for but not run
    label: Optional[str] = None  # the source's own name; ``name`` adds -2, -3, ... where several share it

    def curve(self, ks: Sequence[int]) -> Tuple[Dict[int, float], Dict[int, float]]:
        """Mass-weighted E and E_random against k over the layers scored at every k in ``ks``."""
        common = [lb for lb in self.layers if all(k in lb.scores for k in ks)]
        mass = sum(lb.mass for lb in common)
        if not common or mass <= 0:
            return {}, {}
        E = {k: sum(lb.scores[k]["E"] * lb.mass for lb in common) / mass for k in ks}
        R = {k: sum(lb.scores[k]["E_random"] * lb.mass for lb in common) / mass for k in ks}
        return E, R

    def mass_weighted(self, ks: Sequence[int]) -> Optional[dict]:
        """The model-wide curve for JSON: E, E_random and score per k over the layers scored at every k
        (``layers``), the layers left out of it and the k they lack (``left_out``); None when no layer is
        scored at every k (the same rule as ``analyze``)."""
        E, R = self.curve(ks)
        if not E:
            return None
        common = [lb.layer for lb in self.layers if all(k in lb.scores for k in ks)]
        left_out = {lb.layer: f"not scored at k={','.join(map(str, sorted(lb.skipped_k)))} (too few nodes)"
                    for lb in self.layers if lb.layer not in common}
        return {"layers": common, "left_out": left_out, "E": {str(k): E[k] for k in ks},
                "E_random": {str(k): R[k] for k in ks},
                "score": {str(k): normalized_score(E[k], R[k]) for k in ks}}

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"name": self.name, "source": self.source, "structure": self.structure,
                "layers": [lb.to_dict() for lb in self.layers], "skipped": dict(self.skipped),
                "notes": list(self.notes), "coverage": self.coverage, "seconds": self.seconds,
                "network": self.network.to_dict() if self.network else None, "network_skipped": self.network_skipped}


@dataclass
class BenchmarkReport:
    """Result of :func:`run_benchmark`; see :mod:`graphinterp.reports.benchmark_report` for its outputs."""

    models: List[ModelBenchmark]
    ks: List[int]
    significance_k: Optional[int]
    n_shuffles: int
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    failed: Dict[str, str] = field(default_factory=dict)  # model name -> why it could not be loaded

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN and infinite values become None)."""
        return json_safe({"ks": list(self.ks), "significance_k": self.significance_k, "n_shuffles": self.n_shuffles,
                          "settings": dict(self.settings), "seconds": self.seconds,
                          "models": [{**m.to_dict(), "mass_weighted": m.mass_weighted(self.ks)} for m in self.models],
                          "failed": dict(self.failed), "notes": report_notes(self)})


def safe_name(name: str) -> str:
    """A file-name-safe version of a model name.

    Examples
    --------
    >>> safe_name("resnet18 (random)")
    'resnet18_random'
    """
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "model"


_CLUSTER_COLUMNS = ("model", "layer", "kind", "n_in", "n_out", "k", "E", "E_random", "score", "row_sizes",
                    "col_sizes")
_SIG_COLUMNS = ("model", "layer", "kind", "n_in", "n_out", "k", "n_shuffles", "nonzero_only", "E", "E_null_mean",
                "E_null_std", "E_z", "E_p", "E_random", "score", "score_null_mean", "score_null_std", "score_z",
                "score_p", "seconds")


def clusterability_rows(report: BenchmarkReport) -> List[dict]:
    """One dict per model, layer and k with E, E_random, score and the cluster sizes."""
    rows = []
    for m in report.models:
        for lb in m.layers:
            for k, s in sorted(lb.scores.items()):
                rows.append({"model": m.name, "layer": lb.layer, "kind": lb.kind, "n_in": lb.shape[0],
                             "n_out": lb.shape[1], "k": k, "E": s["E"], "E_random": s["E_random"],
                             "score": s["score"], "row_sizes": " ".join(map(str, s["row_sizes"])),
                             "col_sizes": " ".join(map(str, s["col_sizes"]))})
    return rows


def significance_rows(report: BenchmarkReport) -> List[dict]:
    """One dict per model and tested layer with both measures against the shuffled null."""
    rows = []
    for m in report.models:
        for lb in m.layers:
            t = lb.significance
            if t is None:
                continue
            rows.append({"model": m.name, "layer": lb.layer, "kind": lb.kind, "n_in": lb.shape[0],
                         "n_out": lb.shape[1], "k": t.k, "n_shuffles": t.n_shuffles, "nonzero_only": t.nonzero_only,
                         "E": t.E.observed, "E_null_mean": t.E.mean, "E_null_std": t.E.std, "E_z": t.E.z,
                         "E_p": t.E.p_value, "E_random": t.E_random, "score": t.score.observed,
                         "score_null_mean": t.score.mean, "score_null_std": t.score.std, "score_z": t.score.z,
                         "score_p": t.score.p_value, "seconds": lb.seconds})
    return rows


def _write_csv(path: Path, rows: List[dict], columns: Sequence[str]) -> None:
    with atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) and not math.isfinite(v) else v)
                             for k, v in row.items()})


#: The title of ``clusterability_vs_k.png`` (two lines: one was wider than the figure and lost its start).
CURVES_TITLE = "Clusterability against k\n(each model's layers scored at every k, mass-weighted)"


def _figures(report: BenchmarkReport, out: Path, names: Dict[str, str], formats: Sequence[str]) -> Dict[str, Path]:
    from graphinterp.reports.viz import plot_clusterability_vs_k, plot_significance

    written: Dict[str, Path] = {}
    curves, bases = {}, {}
    for m in report.models:
        curve, base = m.curve(report.ks)
        if curve:
            curves[m.name], bases[m.name] = curve, base
    if curves:
        fig = plot_clusterability_vs_k(curves, baselines=bases, title=CURVES_TITLE)
        for fmt in formats:
            written[f"clusterability_vs_k.{fmt}"] = _save(fig, out / f"clusterability_vs_k.{fmt}")
    for m in report.models:
        scored = [lb for lb in m.layers if lb.scores]
        for part, chunk in _chunks(scored, _LAYERS_PER_FIGURE):
            fig = plot_clusterability_vs_k({lb.layer: {k: s["E"] for k, s in lb.scores.items()} for lb in chunk},
                                           title=f"{m.name}: clusterability of each layer{part[1]}")
            written[f"{names[m.name]}_layers{part[0]}.png"] = _save(fig, out / f"{names[m.name]}_layers{part[0]}.png")
        tested = [lb for lb in m.layers if lb.significance is not None]
        for part, chunk in _chunks(tested, _TESTS_PER_FIGURE):
            # the normalised score, as the table leads with: raw E rewards uneven cluster sizes
            fig = plot_significance({lb.layer: lb.significance.score.observed for lb in chunk},
                                    {lb.layer: lb.significance.score.null for lb in chunk},
                                    title=f"{m.name}: score at k={report.significance_k} against "
                                          f"{report.n_shuffles} shuffles of each layer{part[1]}",
                                    xlabel="normalised score (E - E_random) / (1 - E_random)")
            stem = f"{names[m.name]}_significance{part[0]}.png"
            written[stem] = _save(fig, out / stem)
    return written


_LAYERS_PER_FIGURE, _TESTS_PER_FIGURE = 10, 20  # more lines or rows than this are unreadable in one figure


def _chunks(items: list, size: int):
    """``((file suffix, title suffix), chunk)`` pairs; one unsuffixed chunk when everything fits."""
    if len(items) <= size:
        return [(("", ""), items)] if items else []
    n = (len(items) + size - 1) // size
    return [((f"_{i + 1}", f" (part {i + 1}/{n})"), items[i * size:(i + 1) * size]) for i in range(n)]


def _save(fig, path: Path) -> Path:
    from graphinterp.reports.viz import save_figure

    return save_figure(fig, path)


def write_report(report: BenchmarkReport, out: Union[str, Path], *, figures: bool = True,
                 formats: Sequence[str] = ("png", "svg")) -> Dict[str, Path]:
    """Write JSON, the CSVs (network.csv only with the whole-network test) and (optionally) the figures into the folder ``out``.

    Returns ``{file name: path}`` of everything written. Every file is written atomically.

    Parameters
    ----------
    report : BenchmarkReport
        The benchmark's results.
    out : str or pathlib.Path
        Output folder (``~`` expanded); created with its parents when missing.
    figures : bool, default True
        Also draw the figures: E against k over all models, and per model its layers' E against k and
        its shuffle tests.
    formats : sequence of str, default ("png", "svg")
        File formats of the all-models figure (the per-model figures are PNG).

    Returns
    -------
    dict of str to pathlib.Path
        File name to path, for every file written.
    """
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    write_json(out / "benchmark.json", report.to_dict())
    written["benchmark.json"] = out / "benchmark.json"
    _write_csv(out / "clusterability.csv", clusterability_rows(report), _CLUSTER_COLUMNS)
    written["clusterability.csv"] = out / "clusterability.csv"
    _write_csv(out / "significance.csv", significance_rows(report), _SIG_COLUMNS)
    written["significance.csv"] = out / "significance.csv"
    if any(m.network or m.network_skipped for m in report.models):
        _write_csv(out / "network.csv", network_rows(report), NETWORK_COLUMNS)
        written["network.csv"] = out / "network.csv"
    if figures:
        names, used = {}, set()
        for m in report.models:
            base = name = safe_name(m.name)
            i = 1
            while name in used:
                i += 1
                name = f"{base}-{i}"
            used.add(name)
            names[m.name] = name
        written.update(_figures(report, out, names, formats))
    return written
