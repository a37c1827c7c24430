"""Is a whole network more clusterable than its shuffles? The network-level test of Filan et al. (2021).

:mod:`graphinterp.clustering.significance` tests one layer at a time. Filan et al. test the network as
one graph: its nodes (every layer's inputs and outputs) joined by edges of weight :math:`|w|`, clustered
by spectral clustering, and scored by the **normalised cut** of the partition into clusters
:math:`X_1 .. X_k`,

.. math:: \\text{n-cut} = \\sum_c \\frac{\\text{cut}(X_c, \\bar X_c)}{\\text{vol}(X_c)},

where :math:`\\text{cut}` sums the weights of the edges that leave a cluster and :math:`\\text{vol}` the
degrees of its nodes. It lies between 0 (no edge between clusters) and ``k - 1``; **lower is more
clusterable**. The null is the same network with each layer's edge weights permuted (as the layer test
permutes them: a Conv2d edge is a whole kernel, isolated nodes stay isolated, ``nonzero_only`` keeps the
sparsity pattern), reclustered the same way. Beside the n-cut the share of squared weight inside the
clusters, E over all the clustered layers (the paper's measure), is compared with the same null.

The clustering is :func:`graphinterp.clustering.cluster.cluster_network` (normalised adjacency, ``k``
leading eigenvectors, rows scaled to unit length, KMeans: scikit-learn's ``SpectralClustering`` on the
``|W|`` graph, as Filan et al. use), on a chained graph or a DAG (residual streams shared by the layers
that read and write them); depthwise and grouped convolutions are left out, as there.

References
----------
Filan, D., Casper, S., Hod, S., Wild, C., Critch, A. and Russell, S. (2021). Clusterability in
neural networks. arXiv:2103.03386.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from graphinterp.clustering.cluster import cluster_network
from graphinterp.clustering.labels import Clustering
from graphinterp.clustering.shuffle_results import NullComparison
from graphinterp.clustering.significance import null_support, shuffle_weights, single_threaded_blas
from graphinterp.clustering.validation import clusterable_layers
from graphinterp.common.errors import ClusteringError
from graphinterp.common.seeds import check_random_state
from graphinterp.graph.layered import LayeredGraph

__all__ = ["NetworkShuffleTest", "network_measures", "network_shuffle_test"]


def network_measures(graph: LayeredGraph, clustering: Clustering,
                     similarity: Optional[Mapping[str, torch.Tensor]] = None) -> Tuple[float, float]:
    """``(n_cut, E)`` of a network-wide clustering over the layers it labels.

    The n-cut is over the undirected graph with edge weights ``|W|`` (or ``similarity[layer]``), E the
    share of their squares inside clusters. A node's degree sums its edges in every layer that reads or
    writes it, so a cluster's volume and its internal weight add up layer by layer.

    Parameters
    ----------
    graph : LayeredGraph
        A chained graph or a :class:`~graphinterp.graph.dag.ModelGraph`.
    clustering : Clustering
        Network-wide (one label per node, :func:`~graphinterp.clustering.cluster.cluster_network`).
    similarity : mapping of layer name to (n_in, n_out) tensor, optional
        Edge weights to score instead of ``|W|`` (e.g. a shuffled copy).

    Returns
    -------
    n_cut, E : float

    Examples
    --------
    >>> from torch import nn
    >>> from graphinterp.clustering.cluster import cluster_network
    >>> net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False))
    >>> with torch.no_grad():
    ...     for m in (net[0], net[2]):
    ...         _ = m.weight.copy_(torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)))
    >>> g = LayeredGraph.from_module(net)
    >>> n_cut, E = network_measures(g, cluster_network(g, 2, random_state=0))
    >>> round(n_cut, 6), round(E, 6)
    (0.0, 1.0)
    """
    if not clustering.network_wide:
        raise ClusteringError("network_measures needs a network-wide clustering (cluster_network)")
    k = clustering.k
    vol, inside = np.zeros(k), np.zeros(k)
    within_sq = total_sq = 0.0
    for name in clustering.layer_names:
        M = (graph[name].magnitude() if similarity is None else torch.as_tensor(similarity[name])).double().cpu()
        rows, cols = (torch.as_tensor(x) for x in clustering.labels(name))
        r, c = torch.where(rows >= 0, rows, k), torch.where(cols >= 0, cols, k)  # -1 (isolated): spare bucket k
        R = torch.nn.functional.one_hot(r, k + 1).double()
        C = torch.nn.functional.one_hot(c, k + 1).double()
        mass, mass_sq = R.T @ M @ C, R.T @ M.square() @ C
        vol += (mass.sum(1) + mass.sum(0))[:k].numpy()  # a node's degree: its row sum here plus its column sum
        inside += 2 * torch.diagonal(mass)[:k].numpy()  # an edge inside a cluster counts at both ends
        within_sq += float(torch.diagonal(mass_sq)[:k].sum())
        total_sq += float(mass_sq.sum())
    used = vol > 0
    n_cut = float(((vol[used] - inside[used]) / vol[used]).sum())
    return max(n_cut, 0.0), within_sq / total_sq if total_sq > 0 else 0.0


@dataclass(frozen=True)
class NetworkShuffleTest:
    """Result of :func:`network_shuffle_test`.

    Attributes
    ----------
    k, n_shuffles : int
    nonzero_only : bool
    layers : list of str
        The layers whose edges form the graph.
    n_cut : NullComparison
        Normalised cut against the null; lower is more clusterable, so its p-value counts the shuffles
        with an n-cut ``<=`` the observed one and a negative z means fewer cut edges than chance.
    E : NullComparison
        Share of squared weight inside the clusters (all layers together) against the same null.
    sizes : ndarray of shape (k,)
        Nodes in each cluster.
    notes : list of str
        What the test leaves out or cannot see (e.g. layers left out, a graph in several pieces).
    """

    k: int
    n_shuffles: int
    nonzero_only: bool
    layers: List[str]
    n_cut: NullComparison
    E: NullComparison
    sizes: np.ndarray
    notes: List[str] = field(default_factory=list)

    @property
    def min_p_value(self) -> float:
        """Smallest attainable p-value, ``1 / (n_shuffles + 1)``."""
        return 1.0 / (self.n_shuffles + 1)

    def to_dict(self, *, include_null: bool = True) -> dict:
        """JSON-ready dict; ``include_null=False`` leaves out the per-shuffle values."""
        out = {"k": self.k, "n_shuffles": self.n_shuffles, "nonzero_only": self.nonzero_only, "layers": list(self.layers),
               "sizes": self.sizes.tolist(), "min_p_value": self.min_p_value, "n_cut": self.n_cut.to_dict(),
               "E": self.E.to_dict(), "notes": list(self.notes)}
        if not include_null:
            out["n_cut"].pop("null")
            out["E"].pop("null")
        return out


def _node_ids(graph: LayeredGraph, names: Sequence[str]) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
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


def _pieces(graph: LayeredGraph, names: Sequence[str]) -> List[int]:
    """Sizes of the connected components of the nodes with an edge, largest first (a dense layer joins all its
    nodes with an edge: a star of its rows and columns stands for its edges)."""
    ids = _node_ids(graph, names)
    src_all, dst_all = [], []
    for name in names:
        M = graph[name].magnitude()
        src, dst = ids[name]
        nz = (M != 0).cpu().numpy()
        if nz.all():
            nodes = np.concatenate([src, dst])
            src_all.append(np.full(len(nodes), nodes[0]))
            dst_all.append(nodes)
        else:
            i, j = np.nonzero(nz)
            src_all.append(src[i])
            dst_all.append(dst[j])
    a, b = np.concatenate(src_all), np.concatenate(dst_all)
    n = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
    adj = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, comp = connected_components(adj, directed=False)
    touched = np.zeros(n, dtype=bool)
    touched[a], touched[b] = True, True
    return sorted(np.bincount(comp[touched]).tolist(), reverse=True)


def network_shuffle_test(
    graph: LayeredGraph, k: int = 4, *, n_shuffles: int = 20, layers: Optional[Sequence[str]] = None,
    nonzero_only: bool = False, n_init: int = 10, random_state=None, progress: bool = False,
) -> NetworkShuffleTest:
    """Test a network's clusterability as one graph against copies with every layer's weights permuted.

    Parameters
    ----------
    graph : LayeredGraph
        A chained graph or a DAG (:class:`~graphinterp.graph.dag.ModelGraph`); not a layer-by-layer one.
    k : int, default 4
        Number of clusters (as :func:`~graphinterp.clustering.cluster.cluster_network` allows it).
    n_shuffles : int, default 20
        Size of the null sample; the smallest attainable p-value is ``1 / (n_shuffles + 1)``.
    layers : sequence of str, optional
        Layers whose edges form the graph. Default: every layer but depthwise and grouped convolutions,
        and on a chain also those with fewer than ``k`` nodes with weight on a side (there every level
        gets all ``k`` clusters); the ones left out are in ``notes``.
    nonzero_only : bool, default False
        Permute only non-zero weights (keeps a pruned network's sparsity pattern).
    n_init : int, default 10
        KMeans restarts of each clustering.
    random_state : int or None
        Seeds the observed clustering, the permutations and the null's clusterings.
    progress : bool, default False
        A tqdm bar over the shuffles.

    Returns
    -------
    NetworkShuffleTest

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False))
    >>> with torch.no_grad():
    ...     for m in (net[0], net[2]):
    ...         _ = m.weight.copy_(torch.block_diag(*[torch.ones(4, 4)] * 2) + 0.01)
    >>> t = network_shuffle_test(LayeredGraph.from_module(net), 2, n_shuffles=9, random_state=0)
    >>> t.n_cut.observed < t.n_cut.mean, t.n_cut.p_value == t.min_p_value
    (True, True)
    """
    if isinstance(n_shuffles, bool) or not isinstance(n_shuffles, (int, np.integer)) or n_shuffles < 1:
        raise ClusteringError(f"n_shuffles must be a positive integer, got {n_shuffles!r}")
    left_out: Dict[str, str] = {}
    if layers is None and not hasattr(graph, "src_nodes"):  # a chain: every level needs k nodes, so small layers go
        layers, left_out = clusterable_layers(graph, k)
        if not layers:
            raise ClusteringError(f"no layer of the network can be clustered at k={k}: "
                                  + "; ".join(f"{n}: {why}" for n, why in list(left_out.items())[:3]))
    rng = check_random_state(random_state)
    with single_threaded_blas():
        observed = cluster_network(graph, k, layers=layers, n_init=n_init, random_state=int(rng.randint(2**31 - 1)))
        names = observed.layer_names
        cut_obs, E_obs = network_measures(graph, observed)
        gen = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
        seeds = [int(rng.randint(2**31 - 1)) for _ in range(n_shuffles)]
        mags = {n: graph[n].magnitude().double().cpu() for n in names}
        supports = {n: null_support(graph[n], mags[n], nonzero_only) for n in names}
        shuffles = range(n_shuffles)
        if progress:
            from tqdm.auto import tqdm

            shuffles = tqdm(shuffles, desc="network shuffles", leave=False)
        null = np.empty((n_shuffles, 2))
        for i in shuffles:
            sims = {n: shuffle_weights(mags[n], 1, nonzero_only=nonzero_only, generator=gen, support=supports[n])[0]
                    for n in names}
            try:
                clustered = cluster_network(graph, k, layers=names, similarity=sims, n_init=n_init, random_state=seeds[i])
            except ClusteringError as err:
                raise ClusteringError(f"a shuffled copy of the network: {err} (use a smaller k or nonzero_only)") from None
            null[i] = network_measures(graph, clustered, sims)
    sizes = np.bincount(_node_labels(observed, graph, names), minlength=observed.k)
    return NetworkShuffleTest(int(observed.k), int(n_shuffles), bool(nonzero_only), list(names),
                              NullComparison.from_samples(cut_obs, null[:, 0], lower_is_better=True),
                              NullComparison.from_samples(E_obs, null[:, 1]), sizes,
                              _notes(graph, names, {**left_out, **(observed.meta.get("left_out") or {})}))


def _node_labels(clustering: Clustering, graph: LayeredGraph, names: Sequence[str]) -> np.ndarray:
    """The label of every distinct node with an edge (a node shared by two layers counted once)."""
    ids = _node_ids(graph, names)
    n = 1 + max(int(max(s.max(initial=-1), d.max(initial=-1))) for s, d in ids.values())
    out = np.full(n, -1, dtype=np.int64)
    for name in names:
        rows, cols = clustering.labels(name)
        src, dst = ids[name]
        out[src] = np.maximum(out[src], rows)
        out[dst] = np.maximum(out[dst], cols)
    return out[out >= 0]


def _notes(graph: LayeredGraph, names: Sequence[str], left_out: Mapping[str, str]) -> List[str]:
    notes = []
    if left_out:
        notes.append(f"{len(left_out)} layer(s) left out of the graph: "
                     + "; ".join(f"{n} ({why})" for n, why in list(left_out.items())[:3]) + ("; ..." if len(left_out) > 3 else ""))
    pieces = _pieces(graph, names)
    if len(pieces) > 1:
        notes.append(f"the graph is in {len(pieces)} pieces (nodes: {', '.join(map(str, pieces[:5]))}"
                     f"{', ...' if len(pieces) > 5 else ''}): a cluster that follows a piece cuts no edge, so the "
                     "n-cut can be low for that reason alone (Filan et al. first remove the pieces that do not "
                     "join the first and last layers)")
    return notes
