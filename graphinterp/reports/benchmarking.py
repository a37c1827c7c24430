"""Clusterability of any set of models, layer by layer, with a shuffle-null significance test.

This is the library side of ``graphinterp benchmark``. A :class:`ModelSource` names a model file
(graphinterp checkpoint, bare or wrapped state_dict, TorchScript), a torchvision architecture with a
local weights file, or a torchvision architecture with random weights (a reference).
:func:`run_benchmark` builds each model's layered graph (chained when the model is a chain, else
layer by layer, saying why), clusters every layer with BSGC for each k, and reports E, the
random-partition expectation and the normalised score per layer and k, plus
:func:`graphinterp.clustering.significance.shuffle_test` at one k. The report is written as JSON, CSV and
figures by :mod:`graphinterp.reports.benchmark_report`.

This module loads the models, checks the significance k against their layers and assembles each model's
results (its notes, and with ``network`` Filan et al.'s whole-network test); the layers themselves are
benchmarked in :mod:`graphinterp.reports.benchmark_layers`, home of :func:`benchmark_graph` (one graph's
layers; still importable from here).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

from graphinterp.common.files import resolve_device
from graphinterp.reports.benchmark_layers import _check_ks, _layer_tasks, _run_layer, _serial, benchmark_graph
from graphinterp.reports.benchmark_report import BenchmarkReport, LayerBenchmark, ModelBenchmark, safe_name
from graphinterp.common.errors import ClusteringError, GraphinterpError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.clustering.metrics import dominant_note
from graphinterp.common.parallel import run_tasks
from graphinterp.clustering.network_null import network_shuffle_test
from graphinterp.clustering.validation import nothing_clusterable
from graphinterp.reports.model_sources import ModelSource, graph_with_fallback, load_source

__all__ = ["ModelSource", "LayerBenchmark", "ModelBenchmark", "BenchmarkReport", "load_source", "graph_with_fallback",
           "benchmark_graph", "run_benchmark", "safe_name", "SignificanceKError"]


class SignificanceKError(ClusteringError):
    """The significance k is larger than every layer of every model: the shuffle test could test nothing.

    Raised by :func:`run_benchmark` after loading the models and before any clustering.
    """


def _check_significance_k(loaded, significance_k: Optional[int], n_shuffles: int, failed: Dict[str, str]) -> None:
    """Refuse a shuffle test that no layer of any loaded model can take (too few nodes for its k); the models
    that failed to load are named in the same message (it ends the run)."""
    if significance_k is None or n_shuffles <= 0 or not loaded:
        return
    best = max((min(live), name, layer.name, live) for _, name, _, _, tasks, _, _ in loaded
               for layer, live, _ in tasks)
    if best[0] < significance_k:
        largest, name, lname, live = best
        raise SignificanceKError(
            f"no layer can be tested at k={significance_k}: every layer has fewer than {significance_k} nodes with "
            f"weights on one side (the largest, {name} {lname}, has {live[0]}x{live[1]}); use a k of at most "
            f"{largest}" + "".join(f"; besides, {n} failed: {why}" for n, why in failed.items()))


def _scaled_tested(tasks: list, layers: List[LayerBenchmark]) -> List[str]:
    """The shuffle-tested layers whose folded normalisation gave their channels scales of their own
    (not one that scales every channel alike, as an untrained BatchNorm does: the shuffles keep that)."""
    return [lb.layer for (layer, *_), lb in zip(tasks, layers) if layer.has_unit_scales and lb.significance is not None]


def _scaled_note(scaled: List[str], layers: List[LayerBenchmark]) -> str:
    tested = sum(lb.significance is not None for lb in layers)
    return (f"{len(scaled)} of {tested} shuffle-tested layers have per-channel scales from a normalisation folded "
            f"into their weights (e.g. {', '.join(scaled[:3])}): the shuffles do not keep these scales, and "
            "a layer with such scales but no other structure scores below its shuffles, so on these layers the test "
            "is conservative (a large p is weak evidence of no structure)")


def _network_test(model: ModelBenchmark, graph: LayeredGraph, structure: str, k: int, n_shuffles: int,
                  nonzero_only: bool, n_init: int, random_state, progress: bool, drop_pieces: bool, n_jobs: int = 1,
                  scheduler=None) -> None:
    """Filan et al.'s whole-network test of one model, into ``model.network`` (or why not, ``network_skipped``)."""
    if structure not in ("chained", "dag"):
        model.network_skipped = ("its graph is layer by layer (--layerwise, or layers whose shapes do not chain), "
                                 "so its layers share no nodes: there is no network to cluster")
        return
    t0 = time.perf_counter()
    try:
        model.network = network_shuffle_test(graph, k, n_shuffles=n_shuffles, nonzero_only=nonzero_only, n_init=n_init,
                                             random_state=random_state, progress=progress, drop_pieces=drop_pieces,
                                             n_jobs=n_jobs, scheduler=scheduler)
    except ClusteringError as err:
        model.network_skipped = str(err)
    model.seconds += time.perf_counter() - t0


def _describe(source: ModelSource) -> str:
    if source.kind == "file":
        return str(source.path)
    if source.weights:
        return f"torchvision {source.arch} + {source.weights}"
    return f"torchvision {source.arch}, random weights"


def _unique_names(sources: Sequence[ModelSource]) -> List[str]:
    """One name per source: its label, with ``-2``, ``-3``, ... for the second and later of one label, skipping
    suffixed names that another source already bears (``a/model.pt``, ``b/model.pt``, ``model-2.pt``).

    Examples
    --------
    >>> _unique_names([ModelSource(path=p) for p in ("a/model.pt", "b/model.pt", "c/model-2.pt")])
    ['model', 'model-3', 'model-2']
    """
    labels = [s.label for s in sources]
    taken, names = set(labels), []
    for base in labels:
        name, n = base, 1
        while name in names or (name != base and name in taken):
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def run_benchmark(sources: Sequence[ModelSource], ks: Sequence[int] = tuple(range(2, 11)), *,
                  significance_k: Optional[int] = 4, n_shuffles: int = 20, nonzero_only: bool = False,
                  layerwise: bool = False, trust_pickle: bool = False, pairing: str = "joint", n_init: int = 10,
                  device=None, random_state: Optional[int] = 0, progress: bool = False, n_jobs: int = 1,
                  scheduler=None, network: bool = False, unit_norm: bool = False,
                  drop_pieces: bool = False) -> BenchmarkReport:
    """Benchmark the clusterability of several models (see the module docstring).

    Parameters
    ----------
    sources : sequence of ModelSource
    ks : sequence of int
        Numbers of clusters (each >= 2).
    significance_k : int or None, default 4
        k of the shuffle test; None (or ``n_shuffles=0``) skips it.
    n_shuffles : int, default 20
        Shuffled copies per layer (p-values down to ``1 / (n_shuffles + 1)``).
    nonzero_only, pairing, n_init
        See :func:`graphinterp.clustering.significance.shuffle_test` and :class:`graphinterp.clustering.bsgc.BSGC`.
    layerwise : bool
        Analyse every model layer by layer even when it is a chain.
    trust_pickle : bool
        Allow pickled modules (runs code from the file; only for trusted files).
    device : str, optional
    random_state : int or None
        Seeds every layer from ``[random_state, the layer's index in its graph]``, so the layers at one index of two
        models, if they have one shape, are shuffled by the same permutations (common random numbers: their nulls
        are correlated, which makes a difference between the models less noisy; they are not independent samples).
    progress : bool
        A tqdm bar over the models being loaded, then one over all layers of all models (serial runs
        only; both cleared when done).
    n_jobs : int, default 1
        Worker processes over the layers of all models, and with ``network`` over each model's shuffled
        networks (joblib); results do not depend on it.
    scheduler : str or distributed.Client, optional
        Run them on this Dask cluster instead (see :func:`graphinterp.common.parallel.run_tasks`).
    network : bool, default False
        Also test each model as one graph (Filan et al.'s test: n-cut and E of a network-wide clustering at
        ``significance_k`` against ``n_shuffles`` networks with every layer's weights permuted, see
        :func:`graphinterp.clustering.network_null.network_shuffle_test`; its shuffled networks on ``n_jobs`` /
        ``scheduler`` as well, one model at a time, with the same result). A model
        analysed layer by layer, or whose network clustering fails (a k not below its connected
        nodes), gets the reason in ``ModelBenchmark.network_skipped``.
    drop_pieces : bool, default False
        In the whole-network test, leave out the pieces of each graph that do not join its inputs to its
        outputs, as Filan et al. do (``network_shuffle_test(drop_pieces=True)``).
    unit_norm : bool, default False
        Rescale each chained model's weights first, as Filan et al. do (:func:`graphinterp.graph.rescale.unit_norm_rescaled`:
        every hidden unit's incoming weights to unit norm, the factor pushed into the next layer; the same
        function through ReLU-like activations). A model whose graph is not a chain is analysed as it is; its
        notes say which was done.

    Returns
    -------
    BenchmarkReport
        A source that cannot be loaded (missing or corrupt file, unknown architecture, weights that
        do not fit), or none of whose layers has k nodes on both sides for the smallest k, is listed in
        ``failed`` with its error; the others are benchmarked.

    Raises
    ------
    ClusteringError
        For a k below 2.
    SignificanceKError
        When the shuffle test is asked for (``significance_k`` and ``n_shuffles > 0``) and no layer of
        any loaded model has ``significance_k`` nodes with weights on both sides (checked after loading,
        before any clustering). Layers of some models too small for it are benchmarked without the
        test, with the reason in ``LayerBenchmark.significance_skipped``.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from torch import nn
    >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
    >>> torch.save(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5)).state_dict(), path)
    >>> rep = run_benchmark([ModelSource(path=path)], [2, 3], significance_k=2, n_shuffles=3, n_init=2)
    >>> [lb.layer for lb in rep.models[0].layers], rep.models[0].layers[0].significance.n_shuffles
    (['0', '2'], 3)
    """
    ks = _check_ks(ks, significance_k)
    start = time.perf_counter()
    names = _unique_names(sources)
    loaded, failed, coverages, graphs = [], {}, {}, {}
    iterator = list(zip(sources, names))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="loading models", leave=False, position=0, dynamic_ncols=True)
    for source, name in iterator:
        t0 = time.perf_counter()
        try:
            graph, structure, notes = load_source(source, trust_pickle=trust_pickle, layerwise=layerwise,
                                                  random_state=random_state, unit_norm=unit_norm)
        except GraphinterpError as err:  # named once: most loading errors already name the file
            what = _describe(source)
            failed[name] = str(err) if what in str(err) else f"{what}: {err}"
            continue
        tasks, skipped = _layer_tasks(graph, ks, graph.layer_names, random_state)
        if not tasks:  # no layer fits any k asked for: a failure, not an empty report (nor one of shuffle tests alone)
            failed[name] = f"{_describe(source)}: {nothing_clusterable(ks[0], skipped)}"
            continue
        if n_shuffles > 0 and significance_k is not None and significance_k < ks[0]:  # and those only the test's k fits
            tasks, skipped = _layer_tasks(graph, ks, graph.layer_names, random_state, significance_k)
        loaded.append((source, name, structure, notes, tasks, skipped, time.perf_counter() - t0))
        if network:
            graphs[name] = (graph, structure)
        coverages[name] = graph.coverage.to_dict() if graph.coverage is not None else None
    _check_significance_k(loaded, significance_k, n_shuffles, failed)
    serial = n_jobs == 1 and scheduler is None
    common = (ks, significance_k, n_shuffles, nonzero_only, pairing, n_init, resolve_device(device), False)
    everything = [(*t, *common) for *_, tasks, _, _ in loaded for t in tasks]  # all layers of all models at once
    if serial:
        owners = [name for _, name, _, _, tasks, _, _ in loaded for _ in tasks]
        results = iter(_serial(everything, owners, progress))
    else:
        results = iter(run_tasks(_run_layer, everything, n_jobs=n_jobs, scheduler=scheduler))
    models = []
    for source, name, structure, notes, tasks, skipped, load_seconds in loaded:
        layers = [next(results) for _ in tasks]
        scaled = _scaled_tested(tasks, layers)
        dominant = dominant_note({lb.layer: lb.mass for lb in layers}, "the mass-weighted E")
        models.append(ModelBenchmark(name, _describe(source), structure, layers, skipped,
                                     notes + ([_scaled_note(scaled, layers)] if scaled else []) + ([dominant] if dominant else []),
                                     load_seconds + sum(lb.seconds for lb in layers), coverages[name],
                                     label=source.label))
        if network and significance_k is not None and n_shuffles > 0:
            _network_test(models[-1], *graphs.pop(name), significance_k, n_shuffles, nonzero_only, n_init,
                          random_state, progress and serial, drop_pieces, n_jobs, scheduler)
    settings = {"pairing": pairing, "n_init": n_init, "nonzero_only": nonzero_only, "layerwise": layerwise,
                "unit_norm": unit_norm, "drop_pieces": drop_pieces,
                "random_state": random_state, "device": str(resolve_device(device))}
    return BenchmarkReport(models, ks, significance_k, int(n_shuffles), settings, time.perf_counter() - start,
                           failed=failed)
