"""Spectral clustering of a whole network as one graph, as Filan et al. (2021) cluster it.

Every node (neuron, channel, residual-stream dimension) of the chosen layers is a node of one undirected
graph with edge weights ``|W|`` (a Conv2d edge: the kernel's norm), a node shared by several layers
(a chain's level, a DAG's stream) being one node. As scikit-learn's ``SpectralClustering`` on that
precomputed graph (Filan et al.'s clustering): the ``k`` leading eigenvectors of
:math:`D^{-1/2} A D^{-1/2}`, divided by :math:`\\sqrt{d}` (scikit-learn's ``spectral_embedding``), then
KMeans. Unlike :func:`~graphinterp.clustering.cluster.cluster_network` (the labels training uses), rows
are not scaled to unit length and a level need not hold every cluster, so every layer can take part
whatever its width. The operator is applied layer by layer (never an ``n x n`` matrix above 2,000 nodes).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from graphinterp.clustering.labels import Clustering
from graphinterp.clustering.eigen import DENSE_MAX, node_sides, top_eigenvectors
from graphinterp.common.threads import single_threaded_blas
from graphinterp.common.errors import ClusteringError
from graphinterp.graph.layered import LayeredGraph

__all__ = ["adjacency_product", "node_ids", "spectral_network_clustering"]


def node_ids(graph: LayeredGraph, names: Sequence[str]) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Global node ids ``(inputs, outputs)`` of each layer: a DAG's own, or a chain's levels (a layer and the
    next share the nodes between them only when both are in ``names``)."""
    if hasattr(graph, "src_nodes"):
        return {n: (np.asarray(graph.src_nodes(n)), np.asarray(graph.dst_nodes(n))) for n in names}
    out, nxt, prev = {}, 0, None
    for i in sorted(graph.index(n) for n in names):
        layer = graph.layers[i]
        n_in, n_out = layer.shape()
        if prev is not None and prev[0] == i - 1:
            src = prev[1]
        else:
            src, nxt = np.arange(nxt, nxt + n_in), nxt + n_in
        dst, nxt = np.arange(nxt, nxt + n_out), nxt + n_out
        out[layer.name], prev = (src, dst), (i, dst)
    return out


def adjacency_product(mats: Sequence[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Callable:
    """``X -> A X`` for the symmetric node adjacency ``A`` of the layers' ``(src, dst, |W|)`` blocks, matrix-free:
    every layer's block in both orientations, summed in the layers' order (``X`` of shape (n, c), float64).

    Examples
    --------
    >>> times = adjacency_product([(torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([[2.0, 3.0]]))])
    >>> times(torch.ones(3, 1))[:, 0].tolist()
    [5.0, 2.0, 3.0]
    """
    def times(X: torch.Tensor) -> torch.Tensor:
        Y = torch.zeros_like(X)
        for s, d, M in mats:
            Y.index_add_(0, s, M @ X[d])
            Y.index_add_(0, d, M.T @ X[s])
        return Y

    return times


def _dense_adjacency(mats, n: int, d_is: torch.Tensor) -> np.ndarray:
    """The normalised adjacency :math:`D^{-1/2} A D^{-1/2}` (n, n) from the layers' ``(src, dst, |W|)`` blocks.

    Each block written in place, scaled, in both orientations, so the result is exactly symmetric; a
    pair of nodes that several layers join gets their sum, in the layers' order.
    """
    A = torch.zeros(n, n, dtype=torch.float64)
    for s, d, M in mats:
        block = d_is[s, None] * M * d_is[None, d]
        A[s[:, None], d[None, :]] += block
        A[d[:, None], s[None, :]] += block.T
    return A.numpy()


def spectral_network_clustering(graph: LayeredGraph, names: Sequence[str], k: int, *,
                                similarity: Optional[Mapping[str, torch.Tensor]] = None, n_init: int = 10,
                                random_state: Optional[int] = None) -> Clustering:
    """One label per node of the graph of ``names`` (see the module docstring); ``-1`` for a node without edges.

    Parameters
    ----------
    graph : LayeredGraph
        A chained graph or a DAG.
    names : sequence of str
        The layers whose edges form the graph.
    k : int
        Clusters, fewer than the nodes with an edge.
    similarity : mapping of layer name to (n_in, n_out) tensor, optional
        Edge weights instead of ``|W|`` (e.g. a shuffled copy), non-negative.
    n_init : int, default 10
        KMeans restarts.
    random_state : int, optional

    Returns
    -------
    Clustering
        Network-wide: a layer's row (column) labels are the labels of the nodes it reads (writes).

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)))
    ...     _ = net[2].weight.copy_(torch.block_diag(torch.ones(1, 2), torch.ones(1, 2)))
    >>> c = spectral_network_clustering(LayeredGraph.from_module(net), ["0", "2"], 2, random_state=0)
    >>> bool((c.row_labels["0"][:2] == c.col_labels["2"][0]).all()), len(set(c.row_labels["0"]))
    (True, 2)
    """
    ids = node_ids(graph, names)
    n = 1 + max(int(max(s.max(initial=-1), d.max(initial=-1))) for s, d in ids.values())
    mats = []
    for name in names:
        M = graph[name].magnitude() if similarity is None else torch.as_tensor(similarity[name])
        src, dst = ids[name]
        mats.append((torch.as_tensor(src), torch.as_tensor(dst), M.double().cpu()))

    adjacency_times = adjacency_product(mats)
    deg = adjacency_times(torch.ones(n, 1, dtype=torch.float64))[:, 0]
    live = (deg > 0).numpy()
    n_live = int(live.sum())
    if not 2 <= k < n_live:
        raise ClusteringError(f"k={k} is out of range for a network with {n_live} connected nodes: use 2 <= k < {n_live}")
    d_is = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))

    def normalised(x) -> np.ndarray:
        X = torch.as_tensor(np.asarray(x), dtype=torch.float64).reshape(n, -1)
        return (d_is[:, None] * adjacency_times(d_is[:, None] * X)).numpy()

    rng = np.random.RandomState(random_state)
    if n <= DENSE_MAX:
        dense, sides = _dense_adjacency(mats, n, d_is), node_sides(ids, n)
        if not live.all():
            dense, sides = dense[np.ix_(live, live)], None if sides is None else sides[live]
        vecs = top_eigenvectors(dense, k, sides)
    else:
        op = LinearOperator((n, n), matvec=normalised, matmat=normalised, dtype=np.float64)
        with single_threaded_blas():  # ARPACK's BLAS beside torch's products (see common.threads)
            vecs = eigsh(op, k=k, which="LA", v0=rng.uniform(-1, 1, n) * live, tol=1e-6)[1][live]
    embedding = vecs * d_is.numpy()[live][:, None]  # scikit-learn's spectral_embedding: eigenvectors / sqrt(degree)
    from sklearn.cluster import KMeans  # imported here: a second at import time

    labels = np.full(n, -1, dtype=np.int64)
    with single_threaded_blas():
        labels[live] = KMeans(n_clusters=k, n_init=n_init, random_state=rng.randint(2**31 - 1)).fit_predict(embedding)
    rows = {name: labels[ids[name][0]] for name in names}
    cols = {name: labels[ids[name][1]] for name in names}
    return Clustering(int(k), rows, cols, network_wide=True,
                      meta={"method": "spectral-filan", "node_labels": labels.tolist(), "random_state": random_state})
