"""Clusterability of one graph's layers: BSGC at every k, the scores, and the shuffle test, layer by layer.

:func:`benchmark_graph` benchmarks the layers of one :class:`~graphinterp.graph.layered.LayeredGraph`;
:func:`graphinterp.reports.benchmarking.run_benchmark` runs the same layer tasks for all the layers of many
models at once. Each layer is one self-contained task (``_run_layer``: BSGC for every k that fits it from
one SVD, E, the random-partition expectation and the normalised score, then
:func:`graphinterp.clustering.significance.shuffle_test` of the layer's lone fit at its k, as each shuffled copy
is clustered, whatever other k are benchmarked: the sweep's own fit where its SVD has that rank), seeded from the
run's ``random_state`` and the layer's index, so it runs here under one progress bar, in worker processes
or on Dask (:func:`graphinterp.common.parallel.run_tasks`) with the same result.
"""
from __future__ import annotations

import contextlib
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from graphinterp.common.files import resolve_device
from graphinterp.reports.benchmark_report import LayerBenchmark
from graphinterp.clustering.bsgc import BSGC
from graphinterp.clustering.bsgc_batch import fit_k_range
from graphinterp.common.errors import ClusteringError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.graph.layer import Layer
from graphinterp.clustering.metrics import clusterability, normalized_score, random_partition_expectation
from graphinterp.clustering.kmeans_batch import one_thread
from graphinterp.common.parallel import run_tasks
from graphinterp.clustering.significance import shuffle_test
from graphinterp.common.threads import single_threaded_blas
from graphinterp.clustering.validation import check_k, clusterable_layers, live_sizes

__all__ = ["benchmark_graph"]


def _benchmark_layer(layer: Layer, live: Tuple[int, int], ks: List[int], significance_k: Optional[int],
                     n_shuffles: int, nonzero_only: bool, pairing: str, n_init: int, device, rng,
                     progress: bool) -> LayerBenchmark:
    """BSGC at every k that fits the layer (one SVD for all k), the scores, and the shuffle test of the layer's
    lone fit at its k (:func:`_alone`), as its shuffled copies are clustered."""
    start = time.perf_counter()
    A = layer.magnitude().to(device)  # clustered in the layer's precision (float32 weights: float32, as analyze does)
    sq = A.double().square()  # E and the layer's squared mass in float64
    lb = LayerBenchmark(layer.name, layer.kind, tuple(layer.shape()), float(sq.sum()))
    fitting = [k for k in ks if min(live) >= k]
    seed = int(rng.randint(2**31 - 1))  # drawn even when no k fits (a layer only the shuffle test's k fits)
    tested = significance_k is not None and n_shuffles > 0 and min(live) >= significance_k
    fits = fit_k_range(A, fitting, pairing=pairing, n_init=n_init, random_state=seed) if fitting else {}
    for k in ks:
        if min(live) < k:
            lb.skipped_k[k] = _too_few(k, live)
            continue
        rows, cols = fits[k].row_labels_, fits[k].column_labels_
        E, E_rand = float(clusterability(sq, rows, cols)), random_partition_expectation(rows, cols, k, sq)
        lb.labels[k] = (rows, cols)
        row_sizes, col_sizes = (np.bincount(x[x >= 0], minlength=k).tolist() for x in (rows, cols))
        lb.scores[k] = {"E": E, "E_random": E_rand, "score": normalized_score(E, E_rand),
                        "sizes": [row_sizes, col_sizes], "row_sizes": row_sizes, "col_sizes": col_sizes}
    if significance_k is not None and n_shuffles > 0 and not tested:
        lb.significance_skipped = _too_few(significance_k, live)
    elif tested:
        test_seed = int(rng.randint(2**31 - 1))
        try:
            lb.significance = shuffle_test(
                layer, significance_k, n_shuffles=n_shuffles, nonzero_only=nonzero_only,
                labels=_alone(A, lb.labels, fitting, significance_k, pairing, n_init, seed), pairing=pairing,
                n_init=n_init, device=device, random_state=test_seed, progress=progress)
        except ClusteringError as err:  # one degenerate shuffled copy: this layer untested, not the whole run
            lb.significance_skipped = str(err)
    lb.seconds = time.perf_counter() - start
    return lb


def _alone(A, labels: Dict[int, Tuple[np.ndarray, np.ndarray]], fitting: List[int], k: int, pairing: str, n_init: int,
           seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """The layer's clustering at the shuffle test's ``k`` as each shuffled copy gets its own: a lone fit (an SVD of
    rank k), whatever other k are benchmarked beside it (the sweep's fit is one when its SVD has rank k, the
    largest k fitted, and it is reused then). The seed is the layer's, drawn whatever ``--k`` is, so the test
    (observed value and null) does not depend on the k benchmarked."""
    if k in labels and max(fitting) == k:
        return labels[k]
    fit = BSGC(k, pairing=pairing, n_init=n_init, random_state=seed).fit(A)
    return fit.row_labels_, fit.column_labels_


def _too_few(k: int, live: Tuple[int, int]) -> str:
    return f"fewer than k={k} nodes with weights ({live[0]}x{live[1]})"


def _layer_tasks(graph: LayeredGraph, ks: List[int], names: Sequence[str], random_state: Optional[int],
                 tested_k: Optional[int] = None):
    """``([(layer, live, seed), ...], {layer: reason})``: the layers to benchmark and those left out.

    A layer is benchmarked when it fits the smallest k, or ``tested_k`` (the shuffle test's, which need not
    be among ``ks``) if that is smaller. A layer's seed is ``[random_state, its index in the graph]``: its
    result depends on nothing else, so it is the same whichever layers, models, processes or machines are involved.
    """
    chosen, skipped = clusterable_layers(graph, min(ks[0], tested_k or ks[0]), names)
    tasks = [(graph[lname], live_sizes(graph[lname]), None if random_state is None else
              [int(random_state), graph.index(lname)]) for lname in chosen]
    return tasks, skipped


_SMALL_LAYER = 1 << 20  # below this many weights a layer is benchmarked on one thread (see bsgc._threads_for)


def _run_layer(layer: Layer, live, seed, ks, significance_k, n_shuffles, nonzero_only, pairing, n_init, device,
               progress) -> LayerBenchmark:
    """One layer's benchmark, as a self-contained task (run here, in a worker process, or on Dask)."""
    small = layer.weight.numel() < _SMALL_LAYER and not resolve_device(device).type == "cuda"
    with single_threaded_blas(), (one_thread() if small else contextlib.nullcontext()):
        return _benchmark_layer(layer, live, ks, significance_k, n_shuffles, nonzero_only, pairing, n_init,
                                resolve_device(device), np.random.RandomState(seed), progress)


def benchmark_graph(graph: LayeredGraph, ks: Sequence[int], *, significance_k: Optional[int] = 4,
                    n_shuffles: int = 20, nonzero_only: bool = False, pairing: str = "joint", n_init: int = 10,
                    layers: Optional[Sequence[str]] = None, device=None, random_state: Optional[int] = 0,
                    progress: bool = False, name: str = "model", n_jobs: int = 1,
                    scheduler=None) -> Tuple[List[LayerBenchmark], Dict[str, str]]:
    """Score each layer of ``graph`` for every k and test it at ``significance_k``.

    Returns the per-layer results and ``{layer: reason}`` for layers left out entirely (fewer live
    nodes on a side than the smallest k, or no non-zero weight). Seeds are derived per layer from
    ``random_state`` and the layer's index, so one layer's result does not depend on which other
    layers are benchmarked, nor on ``n_jobs`` / ``scheduler`` (see :func:`graphinterp.common.parallel.run_tasks`).

    Examples
    --------
    >>> from torch import nn
    >>> g = LayeredGraph.from_module(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 6)))
    >>> res, skipped = benchmark_graph(g, [2, 4], significance_k=None)
    >>> [r.layer for r in res], sorted(res[0].scores), res[0].skipped_k, skipped
    (['0', '2'], [2], {4: 'fewer than k=4 nodes with weights (3x8)'}, {})
    """
    ks = _check_ks(ks, significance_k)
    names = list(layers) if layers is not None else graph.layer_names
    tasks, skipped = _layer_tasks(graph, ks, names, random_state, significance_k if n_shuffles > 0 else None)
    serial = n_jobs == 1 and scheduler is None
    common = (ks, significance_k, n_shuffles, nonzero_only, pairing, n_init, resolve_device(device), False)
    if serial:
        return _serial([(*t, *common) for t in tasks], [name] * len(tasks), progress), skipped
    return run_tasks(_run_layer, [(*t, *common) for t in tasks], n_jobs=n_jobs, scheduler=scheduler), skipped


def _serial(tasks: list, owners: List[str], progress: bool) -> List[LayerBenchmark]:
    """Run the layer tasks here under one progress bar (stderr) that advances per layer, names the layer in
    hand and is cleared when done (no inner bar per layer: a small layer's shuffles are one batch)."""
    if not progress or not tasks:
        return [_run_layer(*t) for t in tasks]
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(tasks), desc="benchmark", unit="layer", leave=False, position=0, dynamic_ncols=True) as bar:
        for task, owner in zip(tasks, owners):
            bar.set_postfix_str(f"{owner} {task[0].name}", refresh=True)
            out.append(_run_layer(*task))
            bar.update(1)
    return out


def _check_ks(ks: Sequence[int], significance_k: Optional[int]) -> List[int]:
    """The k values, sorted and unique, each checked by :func:`check_k` (layers too small are skipped, not errors)."""
    ks = sorted(set(check_k(k) for k in ks))
    if not ks:
        raise ClusteringError("give at least one k (each >= 2)")
    if significance_k is not None:
        check_k(significance_k)
    return ks
