"""Cluster a layered graph: per layer (the paper's bipartite BSGC) or network-wide (one label per neuron)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from graphinterp.clustering.bsgc import BSGC, normalize_bipartite  # noqa: F401  (BSGC re-exported)
from graphinterp.clustering.eigen import top_eigenvectors
from graphinterp.common.devices import resolve_device
from graphinterp.common.errors import ClusteringError
from graphinterp.clustering.dag_cluster import cluster_dag
from graphinterp.clustering.matrix_checks import check_values
from graphinterp.clustering.labels import Clustering
from graphinterp.clustering.validation import check_k, refuse_block_diagonal
from graphinterp.common.seeds import check_random_state, layer_seed
from graphinterp.common.text import parse_k_values
from graphinterp.graph.layered import LayeredGraph

__all__ = ["BSGC", "Clustering", "cluster_layers", "cluster_network", "parse_k_range"]


def parse_k_range(text: str) -> List[int]:
    """Parse ``"4"``, ``"2..10"`` or ``"2,4,8"`` into a list of k values (each >= 2).

    Examples
    --------
    >>> parse_k_range("2..5"), parse_k_range("3,6")
    ([2, 3, 4, 5], [3, 6])
    """
    try:
        ks = parse_k_values(text)  # the one reader of k values, shared with the CLI's --k
    except ValueError as err:
        raise ClusteringError(f"cannot read k from {text!r} ({err}): use 4, 2..10 or 2,4,8") from None
    return [check_k(k) for k in ks]


def _similarities(graph: LayeredGraph, names: Sequence[str], similarity) -> Dict[str, torch.Tensor]:
    out = {}
    for name in names:
        layer = graph[name]
        if similarity is None:
            out[name] = layer.magnitude()
            continue
        if name not in similarity:
            raise ClusteringError(f"no similarity matrix given for layer {name!r}")
        A = torch.as_tensor(similarity[name])
        if tuple(A.shape) != layer.shape():
            raise ClusteringError(
                f"similarity for layer {name!r} has shape {tuple(A.shape)}, expected {layer.shape()} (n_in, n_out)"
            )
        check_values(A, f"similarity for layer {name!r}: ")  # as BSGC checks it (network-wide runs do not use BSGC)
        out[name] = A
    return out


def cluster_layers(
    graph: LayeredGraph,
    k: int,
    *,
    layers: Optional[Sequence[str]] = None,
    similarity: Optional[Mapping[str, Any]] = None,
    pairing: str = "joint",
    random_state=None,
    device=None,
    progress: Optional[Callable[[], Any]] = None,
) -> Clustering:
    """Cluster each layer on its own with :class:`BSGC` (the paper's bipartite clustering).

    Parameters
    ----------
    graph : LayeredGraph
    k : int
        Number of clusters, ``2 <= k <= min(non-isolated inputs, non-isolated outputs)`` of every
        selected layer (:func:`graphinterp.clustering.validation.check_k`).
    layers : sequence of str, optional
        Layers to cluster. By default every layer except depthwise and grouped convolutions, which are
        block-diagonal by construction (E = 1 whatever was learned): they are named, with the reason, in
        the result's ``meta["left_out"]``; naming one here raises :class:`ClusteringError`.
    similarity : mapping of layer name to (n_in, n_out) array, optional
        Similarity matrices (e.g. from :mod:`graphinterp.training.gradsim`); default ``|W|``.
    pairing : {"joint", "matched", "independent"}
    random_state : int or None
    device : str or torch.device, optional
        Where BSGC runs (``"auto"``: CUDA when available); each similarity matrix is moved there in
        turn. Default: where the matrix already is (the model's device for ``|W|``). Labels on CUDA
        can differ from the CPU's where float rounding decides between two nearly equal candidates.
    progress : callable, optional
        Called with no argument after each layer is clustered (a tqdm bar's ``update``).

    Returns
    -------
    Clustering
        Per-layer labels (``network_wide=False``), with the method, pairing and seed in ``meta``.

    Raises
    ------
    ClusteringError
        A k out of range, a named block-diagonal layer, a missing or misshapen similarity matrix, or no
        layer that can be clustered.
    KeyError
        A name in ``layers`` that is not a layer of the graph.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> g = LayeredGraph.from_module(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)))
    >>> c = cluster_layers(g, 2, random_state=0)
    >>> c.layer_names, c.sizes("0").sum(0).tolist()
    (['0', '2'], [8, 6])
    """
    names, left_out = _selected(graph, k, layers)
    sims = _similarities(graph, names, similarity)
    k = check_k(k, sims, names)  # the similarity's zero rows / columns are the isolated nodes
    rng = check_random_state(random_state)
    per_layer = isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool)
    where = None if device is None else resolve_device(device)
    rows, cols = {}, {}
    for name in names:
        # an integer seed gives each layer its own (layer_seed): its labels do not depend on the other layers
        seed = layer_seed(random_state, graph.index(name)) if per_layer else int(rng.randint(2**31 - 1))
        try:
            A = sims[name] if where is None else sims[name].to(where)
            est = BSGC(k, pairing=pairing, random_state=seed).fit(A)
        except ClusteringError as err:
            raise ClusteringError(f"layer {name!r}: {err}") from None
        rows[name], cols[name] = est.row_labels_, est.column_labels_
        if progress is not None:
            progress()
    kind = "weight" if similarity is None else "given"
    meta = {"method": "bsgc", "pairing": pairing, "random_state": _seed_repr(random_state)}
    return Clustering(k, rows, cols, network_wide=False, similarity=kind,
                      meta={**meta, "left_out": left_out} if left_out else meta)


def _selected(graph: LayeredGraph, k: int, layers: Optional[Sequence[str]]):
    """The layers to cluster and those left out (name -> reason). Named layers are all kept, and refused if
    one is block-diagonal by construction (a depthwise or grouped convolution); by default every layer
    but those. Either way k must then fit every kept layer (``check_k``: an error, not a skip)."""
    k = check_k(k)
    if layers is not None:
        names = list(layers)
        refuse_block_diagonal(graph, names)  # KeyError with the valid names for an unknown layer
        return names, {}
    names = [n for n in graph.layer_names if graph[n].block_diagonal_reason is None]
    left_out = {n: graph[n].block_diagonal_reason for n in graph.layer_names if n not in names}
    if not names:
        raise ClusteringError(f"no layer of the graph can be clustered at k={k}: "
                              + "; ".join(f"{n}: {why}" for n, why in list(left_out.items())[:3]))
    return names, left_out


def cluster_network(
    graph: LayeredGraph,
    k: int,
    *,
    layers: Optional[Sequence[str]] = None,
    similarity: Optional[Mapping[str, Any]] = None,
    n_init: int = 10,
    random_state=None,
) -> Clustering:
    """Network-wide clustering: one label per node, shared by consecutive clustered layers.

    The selected layers are split into runs of consecutive layers. Each run spans levels
    ``l0 .. l1`` of the layered graph; its nodes form one multipartite graph with symmetric
    adjacency built from the similarities (``|W|`` by default). The adjacency is normalised,
    :math:`\\tilde A = D^{-1/2} A D^{-1/2}` (as in Algorithm 1), its ``k`` leading eigenvectors form
    the rows :math:`X_i` of the embedding, each row is scaled to unit length,
    :math:`Z_i = X_i / \\|X_i\\|` (Ng, Jordan & Weiss), and one KMeans on all nodes gives every node
    one label. For a single layer the eigenvectors of :math:`[[0, \\tilde A], [\\tilde A^T, 0]]` are the
    stacked singular vectors ``[U; V]`` (and their sign-flipped pairs), so this is a joint embedding
    of rows and columns like :class:`BSGC`'s ``"joint"`` pairing, though that one scales by
    :math:`D^{-1/2}` instead of row-normalising; for a run of layers, the output label of layer ``l``
    is by construction the input label of layer ``l + 1``. Isolated nodes get ``-1``.

    Parameters are as in :func:`cluster_layers`; ``k`` follows the same rule, on each side of each
    selected layer (:func:`graphinterp.clustering.validation.check_k`), except on a DAG (limit: its
    connected nodes, see :func:`graphinterp.clustering.dag_cluster.cluster_dag`).

    Parameters
    ----------
    graph : LayeredGraph
        A chained graph or a :class:`~graphinterp.graph.dag.ModelGraph` (not a layer-by-layer one).
    k : int
        Number of clusters.
    layers : sequence of str, optional
        Layers to cluster; default every layer but depthwise and grouped convolutions (named in
        ``meta["left_out"]``).
    similarity : mapping of layer name to (n_in, n_out) array, optional
        Similarity matrices (non-negative); default ``|W|``.
    n_init : int, default 10
        KMeans restarts on the embedding of each run of consecutive layers.
    random_state : int or None

    Returns
    -------
    Clustering
        Network-wide labels (``network_wide=True``).

    Raises
    ------
    ClusteringError
        A k out of range, a layer-by-layer graph, or as in :func:`cluster_layers`.
    """
    if hasattr(graph, "src_nodes"):  # a DAG (residual streams, attention): one label per shared node
        names, left_out = _selected(graph, k, layers)
        sims = None if similarity is None else _similarities(graph, names, similarity)
        out = cluster_dag(graph, k, layers=names, similarity=sims, n_init=n_init, random_state=random_state)
        if left_out:
            out.meta["left_out"] = left_out
        return out
    if not graph.chained:
        raise ClusteringError("network-wide clustering needs a chained or DAG graph; use cluster_layers")
    names, left_out = _selected(graph, k, layers)
    sims = _similarities(graph, names, similarity)
    k = check_k(k, sims, names)
    idx = sorted(graph.index(n) for n in names)
    runs: List[List[int]] = []
    for i in idx:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    rng = check_random_state(random_state)
    rows, cols = {}, {}
    for run in runs:
        mats = [sims[graph.layers[i].name].double() for i in run]
        levels = _cluster_run(mats, k, n_init, rng)
        for j, i in enumerate(run):
            name = graph.layers[i].name
            rows[name], cols[name] = levels[j], levels[j + 1]
    ordered = [graph.layers[i].name for i in idx]
    meta = {"method": "spectral-network", "random_state": _seed_repr(random_state)}
    return Clustering(k, {n: rows[n] for n in ordered}, {n: cols[n] for n in ordered}, network_wide=True,
                      similarity="weight" if similarity is None else "given",
                      meta={**meta, "left_out": left_out} if left_out else meta)


def _cluster_run(mats: List[torch.Tensor], k: int, n_init: int, rng) -> List[np.ndarray]:
    sizes = [mats[0].shape[0]] + [m.shape[1] for m in mats]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])
    A = torch.zeros(n, n, dtype=torch.float64)
    for j, M in enumerate(mats):
        a, b, c = offsets[j], offsets[j + 1], offsets[j + 2]
        A[a:b, b:c] = M
        A[b:c, a:b] = M.T
    deg = A.sum(1)
    live = deg > 0
    sub = A[live][:, live]
    An, d_is, _ = normalize_bipartite(sub)
    sides = np.repeat(np.arange(len(sizes)) % 2 == 0, sizes)[live.numpy()]  # a chain: levels alternate sides
    X = torch.from_numpy(top_eigenvectors(An.numpy(), k, sides))
    Z = (X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()
    with threadpool_limits(1, user_api="openmp"):  # see bsgc._kmeans
        from sklearn.cluster import KMeans  # imported here: a second at import time

        km = KMeans(n_clusters=k, n_init=n_init, random_state=int(rng.randint(2**31 - 1))).fit(Z)
    labels = np.full(n, -1, dtype=np.int64)
    labels[live.numpy()] = km.labels_
    Z_full = np.zeros((n, k))
    Z_full[live.numpy()] = Z
    levels = []
    for j in range(len(sizes)):
        lab = labels[offsets[j]:offsets[j + 1]].copy()
        on = lab >= 0
        if np.unique(lab[on]).size < k:  # a cluster has no node at this level: give it the nearest ones
            lab[on] = _fill_empty(lab[on], Z_full[offsets[j]:offsets[j + 1]][on], km.cluster_centers_)
        levels.append(lab)
    return levels


def _fill_empty(labels: np.ndarray, Z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Give every cluster without a node at this level the one node whose move costs least.

    KMeans over all levels can leave a cluster without any node at some level (e.g. a level of few,
    nearly identical conv channels), which would cut that cluster off from the rest of the network.
    Each empty cluster takes the node with the smallest increase in squared distance (its distance
    to the empty cluster's centre less that to its own), from a cluster that keeps at least one node;
    every other node keeps its KMeans label, so the level's structure is kept (an earlier version
    rebalanced the whole level into equal sizes, which erased a trained model's modules).
    """
    k = len(centers)
    out = labels.copy()
    cost = ((Z[:, None, :] - centers[None, :, :]) ** 2).sum(-1)  # (n, k)
    counts = np.bincount(out, minlength=k)
    for c in np.flatnonzero(counts == 0):
        extra = cost[:, c] - cost[np.arange(len(out)), out]
        extra[counts[out] < 2] = np.inf
        if not np.isfinite(extra).any():
            break  # fewer nodes than clusters at this level
        i = int(np.argmin(extra))
        counts[out[i]] -= 1
        counts[c] += 1
        out[i] = c
    return out


def _seed_repr(random_state) -> Optional[int]:
    return int(random_state) if isinstance(random_state, (int, np.integer)) else None
