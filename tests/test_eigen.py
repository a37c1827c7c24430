"""The leading eigenvectors of network graphs: the bipartite (Gram) route against the general decomposition."""
import numpy as np
import pytest
import torch
from scipy.linalg import eigh
from torch import nn

from _graph_helpers import Residual

import graphinterp.clustering.eigen as eigen
from graphinterp import LayeredGraph
from graphinterp.clustering.cluster import cluster_network
from graphinterp.clustering.eigen import node_sides, top_eigenvectors
from graphinterp.clustering.network_spectral import node_ids, spectral_network_clustering


def _chain_adjacency(sizes, rng, blocks=None):
    """Normalised adjacency of a chain with levels ``sizes`` and |Gaussian| weights (block-diagonal if ``blocks``)."""
    n = sum(sizes)
    A = np.zeros((n, n))
    off = np.concatenate([[0], np.cumsum(sizes)])
    for j in range(len(sizes) - 1):
        W = np.abs(rng.standard_normal((sizes[j], sizes[j + 1])))
        if blocks:
            W *= (np.arange(sizes[j])[:, None] * blocks // sizes[j]) == (np.arange(sizes[j + 1])[None, :] * blocks // sizes[j + 1])
        A[off[j]:off[j + 1], off[j + 1]:off[j + 2]] = W
    A = A + A.T
    d = A.sum(1)
    sides = np.repeat(np.arange(len(sizes)) % 2 == 0, sizes)
    return A / np.sqrt(np.outer(d, d)), sides


def _general(S, k):
    return eigh(S, subset_by_index=[len(S) - k, len(S) - 1])


@pytest.mark.parametrize("sizes,k", [((30, 20, 25), 4), ((40, 12, 50, 7), 3), ((15, 60), 6)])
def test_the_bipartite_route_gives_the_leading_eigenpairs(sizes, k):
    S, sides = _chain_adjacency(sizes, np.random.default_rng(0))
    V = top_eigenvectors(S, k, sides)
    w, V0 = _general(S, k)
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-12)  # orthonormal
    np.testing.assert_allclose(S @ V, V * w, atol=1e-12)  # eigenvectors of the k largest eigenvalues, ascending
    np.testing.assert_allclose(np.linalg.svd(V0.T @ V, compute_uv=False), 1, atol=1e-12)  # the same subspace


def test_repeated_leading_eigenvalues_of_separate_pieces_are_all_found():
    S, sides = _chain_adjacency((24, 24, 24), np.random.default_rng(1), blocks=4)  # four pieces: eigenvalue 1 four times
    V = top_eigenvectors(S, 4, sides)
    np.testing.assert_allclose(S @ V, V, atol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(_general(S, 4)[1].T @ V, compute_uv=False), 1, atol=1e-12)


def test_the_general_path_is_taken_where_the_bipartite_one_does_not_apply():
    rng = np.random.default_rng(2)
    S, sides = _chain_adjacency((20, 10, 20), rng)
    general = top_eigenvectors(S, 4)
    T = S.copy()
    T[0, 1] = T[1, 0] = 0.5  # an edge inside a side: not bipartite for these sides
    np.testing.assert_array_equal(top_eigenvectors(T, 4, sides), top_eigenvectors(T, 4))
    np.testing.assert_array_equal(top_eigenvectors(S, 11, sides), top_eigenvectors(S, 11))  # k above the smaller side
    # a third singular value of 1e-5: its square is below what the Gram matrix resolves next to the first
    U, _ = np.linalg.qr(rng.standard_normal((12, 3)))
    W, _ = np.linalg.qr(rng.standard_normal((8, 3)))
    B = U @ np.diag([1.0, 0.5, 1e-5]) @ W.T
    Z = np.block([[np.zeros((12, 12)), B], [B.T, np.zeros((8, 8))]])
    z_sides = np.arange(20) < 12
    assert eigen._bipartite_top(Z, 2, z_sides) is not None and eigen._bipartite_top(Z, 3, z_sides) is None
    np.testing.assert_array_equal(top_eigenvectors(Z, 3, z_sides), top_eigenvectors(Z, 3))
    assert not np.array_equal(top_eigenvectors(S, 4, sides), general)  # (the Gram route did run on the bipartite S)


def test_node_sides_colours_chains_and_refuses_odd_cycles():
    ids = {"a": (np.array([0, 1]), np.array([2, 3])), "b": (np.array([2, 3]), np.array([4])),
           "c": (np.array([4]), np.array([5, 6]))}
    assert node_sides(ids, 7).tolist() == [True, True, False, False, True, False, False]
    # the same layers in another order, and a separate piece, still get a valid colouring
    other = {"c": ids["c"], "x": (np.array([8]), np.array([7])), "a": ids["a"], "b": ids["b"]}
    sides = node_sides(other, 9)
    assert all((sides[s] != sides[d][0]).all() and (sides[s] == sides[s][0]).all() for s, d in other.values())
    assert node_sides({**ids, "skip": (np.array([2]), np.array([5]))}, 7) is None  # 2-4-5 and 2-5: odd cycle
    assert node_sides({"self": (np.array([0, 1]), np.array([1, 2]))}, 3) is None  # node 1 read and written


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(30, 24), nn.ReLU(), nn.Linear(24, 20), nn.ReLU(), nn.Linear(20, 6))


def test_network_clusterings_are_those_of_the_general_decomposition(monkeypatch):
    graph = LayeredGraph.from_module(_mlp(0))
    sides = node_sides(node_ids(graph, graph.layer_names), 80)
    assert sides is not None and sides[:30].all() and not sides[30:54].any()
    calls = []
    real = eigen._bipartite_top
    monkeypatch.setattr(eigen, "_bipartite_top", lambda *a: calls.append(1) or real(*a))
    fast = (spectral_network_clustering(graph, graph.layer_names, 4, random_state=0).meta["node_labels"],
            cluster_network(graph, 4, random_state=0))
    assert len(calls) == 2  # both took the bipartite route
    monkeypatch.setattr(eigen, "_bipartite_top", lambda *a: None)
    slow = (spectral_network_clustering(graph, graph.layer_names, 4, random_state=0).meta["node_labels"],
            cluster_network(graph, 4, random_state=0))
    assert fast[0] == slow[0]
    for name in graph.layer_names:
        np.testing.assert_array_equal(fast[1].row_labels[name], slow[1].row_labels[name])
        np.testing.assert_array_equal(fast[1].col_labels[name], slow[1].col_labels[name])


def test_the_bipartite_route_is_exact_for_float32_and_for_any_scale_of_the_weights():
    """The Gram matrix squares the entries: float32 would keep half its digits, and raw weights of 1e-160 or 1e160
    would fall below float64's normal range or overflow; it is formed in float64 from the block scaled to 1."""
    rng = np.random.default_rng(3)
    U0, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    W0, _ = np.linalg.qr(rng.standard_normal((60, 40)))
    B = U0 @ np.diag(np.r_[1.0, 0.8, 0.6, 3e-3, np.linspace(9e-4, 1e-5, 36)]) @ W0.T
    S = np.block([[np.zeros((40, 40)), B], [B.T, np.zeros((60, 60))]])
    sides = np.arange(100) < 40
    exact = _general(S, 4)[1]
    assert eigen._bipartite_top(S.astype(np.float32), 4, sides) is not None  # sigma_4^2 = 9e-6 sigma_1^2: Gram route
    V = top_eigenvectors(S.astype(np.float32), 4, sides)
    assert V.dtype == np.float32
    np.testing.assert_allclose(V.T.astype(np.float64) @ V, np.eye(4), atol=1e-6)
    np.testing.assert_allclose(np.linalg.svd(exact.T @ V, compute_uv=False), 1, atol=1e-6)
    for scale in (1e-160, 1e160):
        np.testing.assert_allclose(np.abs(top_eigenvectors(S * scale, 4, sides)), np.abs(top_eigenvectors(S, 4, sides)),
                                   atol=1e-12)


@pytest.mark.parametrize("path", ["dag", "filan"])
def test_arpack_and_kmeans_run_on_one_blas_thread_beside_torch(monkeypatch, path):
    """Beside torch's products, scipy's BLAS threads contended with torch's: a random ViT-B/16's graph took
    37 s to decompose instead of 16 s. The large-graph route (ARPACK) must run with BLAS on one thread."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import graphinterp.clustering.dag_cluster as dag_mod
    import graphinterp.clustering.network_spectral as net_mod
    from graphinterp.graph.model_trace import trace_graph

    def blas_threads():
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    if not blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can see")
    mod = dag_mod if path == "dag" else net_mod
    seen = {}
    real_eigsh = mod.eigsh

    def spy(*a, **kw):
        seen["eigsh"] = blas_threads()
        return real_eigsh(*a, **kw)

    graph = trace_graph(Residual(12, 16, 4))
    names = graph.layer_names
    run = ((lambda: cluster_network(graph, 3, random_state=0)) if path == "dag" else
           (lambda: spectral_network_clustering(graph, names, 3, random_state=0)))
    dense = run()
    monkeypatch.setattr(mod, "DENSE_MAX", 0)  # every graph through ARPACK
    monkeypatch.setattr(mod, "eigsh", spy)
    with threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() == {2}
        sparse = run()
        assert blas_threads() == {2}  # restored afterwards
    assert seen["eigsh"] == {1}
    for name in names:  # ARPACK and the dense decomposition agree
        np.testing.assert_array_equal(_canon(dense.labels(name)), _canon(sparse.labels(name)))


def _canon(labels):
    """A layer's (rows, cols) labels renumbered by first appearance (clusterings equal up to renaming)."""
    rows, cols = labels
    order = {}
    for x in np.concatenate([rows, cols]):
        order.setdefault(int(x), len(order))
    return np.array([order[int(x)] for x in np.concatenate([rows, cols])])
