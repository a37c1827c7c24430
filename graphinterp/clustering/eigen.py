"""The leading eigenvectors of a dense symmetric matrix: the embeddings of the network-wide clusterings.

Filan et al.'s test (:mod:`graphinterp.clustering.network_spectral`), the DAG clustering
(:mod:`graphinterp.clustering.dag_cluster`) and the chained clustering training uses
(:mod:`graphinterp.clustering.cluster`) all embed the nodes of a network with the ``k`` leading
eigenvectors of its normalised adjacency. A network whose layers each read one set of nodes and write
another (an MLP, a plain CNN: every chain) is a bipartite graph, :math:`S = [[0, B], [B^T, 0]]`, whose
eigenpairs are the singular triplets of :math:`B`, :math:`\\pm\\sigma_i` with eigenvectors
:math:`[u_i; \\pm v_i] / \\sqrt 2`; they come from the Gram matrix of the smaller side, a problem of half
the size or less (0.05 s for the 1,818 nodes of a 784-512-512-10 MLP, checks included, where the general
decomposition takes 0.46 s; the labels of the shared models' network clusterings are the same).
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import numpy as np

from graphinterp.common.threads import single_threaded_blas

__all__ = ["DENSE_MAX", "node_sides", "top_eigenvectors"]

#: the Gram route squares the singular values: below this share of sigma_1^2 for sigma_k^2 the general path is
#: taken (at the cutoff the vectors are still within about 1e-9 of the general path's; a normalised
#: adjacency's leading sigma_k^2 are far above it)
#: nodes up to which a network graph's normalised adjacency is formed and decomposed exactly (LAPACK);
#: above, ARPACK's products with it (dag_cluster, network_spectral)
DENSE_MAX = 2000
_GRAM_MIN_RATIO = 1e-6


def top_eigenvectors(S: np.ndarray, k: int, sides: Optional[np.ndarray] = None) -> np.ndarray:
    """The eigenvectors (n, k) of the ``k`` largest eigenvalues of the symmetric matrix ``S``, in ascending order.

    Only those k are computed (LAPACK's ``syevr`` through ``scipy.linalg.eigh(subset_by_index=...)``), on
    one BLAS thread: for the 1,818 nodes of a 784-512-512-10 MLP 0.46 s, where a full ``torch.linalg.eigh``
    took 15 s and numpy's 11 s on two busy cores. The vectors are those of a full decomposition up to sign
    (and, for repeated eigenvalues, a rotation inside their space); through the Gram route (``sides``) to
    rounding (about 1e-12 on the models' graphs, 1e-9 at worst, near its cutoff), computed in float64
    whatever the input's precision and returned in it.

    Parameters
    ----------
    S : array of shape (n, n)
        Symmetric.
    k : int
        At most n.
    sides : bool array of shape (n,), optional
        A two-colouring of the nodes, when ``S`` is the adjacency of a bipartite graph: then, if ``S`` is
        indeed zero inside each side (checked), the eigenvectors come from the Gram matrix of the smaller
        side (see the module docstring). Where the check fails, a side has fewer than k nodes, or the
        k-th singular value is too small for the Gram matrix to resolve it, the general path is taken.

    Examples
    --------
    >>> V = top_eigenvectors(np.diag([3.0, 1.0, 2.0]), 2)
    >>> np.abs(V).round(6).tolist()
    [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]
    >>> S = np.array([[0, 0, 2.0], [0, 0, 1.0], [2.0, 1.0, 0]])  # a star: node 2 against nodes 0 and 1
    >>> V = top_eigenvectors(S, 1, sides=np.array([True, True, False]))
    >>> np.abs(V[:, 0]).round(4).tolist()  # eigenvalue sqrt(5)
    [0.6325, 0.3162, 0.7071]
    """
    if sides is not None:
        vecs = _bipartite_top(S, k, np.asarray(sides, dtype=bool))
        if vecs is not None:
            return vecs
    from scipy.linalg import eigh

    n = S.shape[0]
    with single_threaded_blas():
        return eigh(S, subset_by_index=[n - k, n - 1])[1]


def _bipartite_top(S: np.ndarray, k: int, sides: np.ndarray) -> Optional[np.ndarray]:
    """``top_eigenvectors`` of a bipartite ``S`` from the Gram matrix of its smaller side; None where it does not apply."""
    from scipy.linalg import eigh

    p, q = np.flatnonzero(sides), np.flatnonzero(~sides)
    if min(len(p), len(q)) < k or S[np.ix_(p, p)].any() or S[np.ix_(q, q)].any():
        return None
    B = S[np.ix_(p, q)].astype(np.float64)  # squared below: float32 would keep half its digits
    top = float(np.abs(B).max())
    if not 0 < top < np.inf:
        return None
    B /= top  # entries at most 1: their squares neither overflow nor fall below the normal range
    if len(p) < len(q):  # the Gram matrix of the smaller side
        B, p, q = B.T, q, p
    with single_threaded_blas():
        G = B.T @ B
        w, V = eigh(G, subset_by_index=[len(q) - k, len(q) - 1])  # sigma^2, ascending
        if not w[0] > _GRAM_MIN_RATIO * w[-1]:
            return None
        U = (B @ V) / np.sqrt(w)
    out = np.empty((S.shape[0], k))
    out[p], out[q] = U, V
    return (out / np.sqrt(2)).astype(np.result_type(S.dtype, np.float32), copy=False)


def node_sides(ids: Mapping[str, Tuple[np.ndarray, np.ndarray]], n: int) -> Optional[np.ndarray]:
    """A two-colouring (bool, n) of the nodes in which every layer reads one side and writes the other, or None.

    Where it exists the graph is bipartite (every chain is, by the parity of its levels), and its
    eigenvectors come from a problem of half the size (:func:`top_eigenvectors`).
    None when a layer's inputs and outputs would need one colour (a residual stream read and written
    around a block: a cycle of odd length). Nodes of no layer are on the first side.

    Examples
    --------
    >>> ids = {"a": (np.array([0, 1]), np.array([2])), "b": (np.array([2]), np.array([3, 4]))}
    >>> node_sides(ids, 5).tolist()
    [True, True, False, True, True]
    >>> node_sides({**ids, "skip": (np.array([0]), np.array([3]))}, 5) is None
    True
    """
    side = np.full(n, -1, dtype=np.int8)
    pending = list(ids.values())
    while pending:
        rest = []
        for src, dst in pending:
            implied = np.concatenate([side[src], 1 - side[dst]])  # the inputs' colour each coloured node implies
            implied = implied[(implied == 0) | (implied == 1)]
            if implied.size == 0:
                rest.append((src, dst))  # no coloured node yet: wait for a neighbour
            elif (implied != implied[0]).any() or not _colour(side, src, dst, implied[0]):
                return None
        if rest and len(rest) == len(pending) and not _colour(side, *rest.pop(0), 0):
            return None  # nothing coloured in that pass: a new piece, started from its first layer
        pending = rest
    return side != 1


def _colour(side: np.ndarray, src: np.ndarray, dst: np.ndarray, colour: int) -> bool:
    """Colour a layer's inputs ``colour`` and its outputs the other; False if a node is both."""
    side[src], side[dst] = colour, 1 - colour
    return not (side[src] != colour).any()
