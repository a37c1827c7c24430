r"""Clusters of units in a symmetric association graph, their Newman modularity, and a null model.

An association graph (:mod:`graphinterp.interpret.association`) is built from a second-moment matrix
``M`` of a level's units (a covariance, or a Gram matrix of Jacobians) by :func:`association_graph`:
``|M|`` (or ``|corr|``) with a zero diagonal and units without variance left isolated. Its units are
split into ``k`` clusters by spectral clustering (scikit-learn's ``SpectralClustering`` on the
precomputed affinity) and the split is scored by Newman's modularity

.. math:: Q = \sum_c \Bigl[\frac{W_{cc}}{W} - \Bigl(\frac{d_c}{W}\Bigr)^2\Bigr],

:math:`W` the sum of all entries, :math:`W_{cc}` the sum inside cluster ``c`` and :math:`d_c` the sum
of its units' degrees (0 for no structure, at most :math:`1 - 1/k`).

Spectral clustering finds *some* partition with :math:`Q > 0` on any matrix, so Q needs a null.
:func:`modularity_test` offers two:

``"rotation"`` (default)
    ``M`` in a random orthonormal basis, :math:`R M R^T` with :math:`R` Haar-distributed (then
    normalised to a correlation when the graph is one): the same eigenvalues, so the same amount and
    rank of shared variation, but no preferred units. It asks whether the associations are organised
    in modules of *units* beyond what the matrix's spectrum gives: a low-rank factor structure or a
    readout :math:`W^T W` with no unit-aligned modules is not significant, planted modules are. It
    tests alignment with the units, which an elementwise nonlinearity gives by itself: the levels of
    *untrained* ReLU MLPs on digits came out at p <= 0.05 in 6 of 10 seeds (tanh: about calibrated).
    Compare with the same architecture re-initialised (``graphinterp associate --reinit``) before
    reading a small p as learned modules; and read p, not z: from 20 copies z is heavy-tailed
    (P(z > 3) was 2.8% under an exact null, where p <= 0.05 held 8% of the time).
``"shuffle"``
    The off-diagonal entries of the graph permuted symmetrically (same values, no arrangement). It
    also destroys the units' degrees and any low-rank structure, so it calls many module-free matrices
    significant (a rank-3 factor model: z of about 30) and some modular ones not (modules whose
    units differ widely in scale); kept for comparison with weight-shuffle nulls.

Each null copy is clustered the same way; the observed Q gets a z-score and an empirical p-value
(:class:`~graphinterp.clustering.shuffle_results.NullComparison`).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from graphinterp.clustering.shuffle_results import NullComparison
from graphinterp.common.errors import ClusteringError
from graphinterp.common.seeds import check_random_state

__all__ = ["NULLS", "UnitClusters", "association_graph", "modularity", "cluster_units", "modularity_test"]

#: The null models of :func:`modularity_test`.
NULLS = ("rotation", "shuffle")
_DEAD = 1e-12  # a unit whose variance (diagonal) is below this share of the largest is left isolated


def association_graph(M: np.ndarray, *, normalize: bool = False) -> np.ndarray:
    """The association graph of a second-moment matrix ``M``: ``|M|`` (``|corr|`` with ``normalize``), zero diagonal.

    A unit whose diagonal entry (its variance, or its Jacobian's squared norm) is at most ``1e-12`` of
    the largest gets no association at all (a dead or constant unit, whose covariances are rounding).

    Examples
    --------
    >>> association_graph(np.array([[4.0, -2.0], [-2.0, 9.0]]), normalize=True).round(3).tolist()
    [[0.0, 0.333], [0.333, 0.0]]
    """
    return _graph_of(_square(M), normalize)


def _graph_of(M: np.ndarray, normalize: bool) -> np.ndarray:
    """:func:`association_graph` of a matrix already checked."""
    d = np.clip(np.diag(M), 0, None)
    live = d > _DEAD * max(float(d.max(initial=0)), 1e-300)
    A = np.abs(M / np.sqrt(np.outer(np.where(live, d, 1), np.where(live, d, 1)))) if normalize else np.abs(M)
    A = A * np.outer(live, live)
    np.fill_diagonal(A, 0.0)
    return (A + A.T) / 2


def modularity(A: np.ndarray, labels: np.ndarray) -> float:
    """Newman's modularity of ``labels`` (one per unit; -1 leaves a unit out) on the symmetric graph ``A``.

    Examples
    --------
    >>> A = np.kron(np.eye(2), np.ones((2, 2))) - np.eye(4)  # two pairs, linked inside only
    >>> modularity(A, np.array([0, 0, 1, 1])), modularity(A, np.array([0, 1, 0, 1]))
    (0.5, -0.5)
    """
    A, labels = np.asarray(A, dtype=float), np.asarray(labels)
    if (A < 0).any():  # Newman's Q is defined on non-negative weights (a signed matrix gave Q = 9.5)
        raise ClusteringError("modularity needs a non-negative graph; pass |A| (association_graph)")
    keep = labels >= 0
    A, labels = A[np.ix_(keep, keep)], labels[keep]
    total = A.sum()
    if total <= 0:
        return 0.0
    onehot = (labels[:, None] == np.unique(labels)[None, :]).astype(float)
    inside = np.einsum("ic,ij,jc->c", onehot, A, onehot)
    degree = onehot.T @ A.sum(1)
    return float((inside / total - (degree / total) ** 2).sum())


def cluster_units(A: np.ndarray, k: int, *, random_state=None) -> np.ndarray:
    """Spectral clustering of the units of the symmetric non-negative graph ``A`` into ``k`` clusters.

    Returns one label per unit, -1 for a unit with no association at all. Raises
    :class:`~graphinterp.common.errors.ClusteringError` unless ``2 <= k < `` the units that have any.

    Examples
    --------
    >>> A = np.kron(np.eye(2), np.ones((3, 3))) + 0.01
    >>> np.fill_diagonal(A, 0)
    >>> labels = cluster_units(A, 2, random_state=0)
    >>> len(set(labels[:3])), len(set(labels[3:])), bool(labels[0] != labels[3])
    (1, 1, True)
    """
    return _spectral(_graph(A), k, check_random_state(random_state))


def _spectral(A: np.ndarray, k, rng: np.random.RandomState) -> np.ndarray:
    """:func:`cluster_units` of a graph already checked (symmetric, non-negative, zero diagonal)."""
    from sklearn.cluster import SpectralClustering

    live = A.sum(1) > 0
    n_live = int(live.sum())
    if n_live < 3:
        raise ClusteringError(f"only {n_live} of {len(A)} units have any association: too few to cluster (units that "
                              "never vary, e.g. dead ReLUs, have none)")
    if not isinstance(k, (int, np.integer)) or k < 2 or k >= n_live:
        raise ClusteringError(f"k={k} is out of range for {n_live} units with any association (of {len(A)}): use "
                              f"2 <= k <= {n_live - 1}")
    seed = int(rng.randint(2**31 - 1))
    with _one_thread(), warnings.catch_warnings():  # a graph in pieces is clustered all the same (pieces first)
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        labels = SpectralClustering(k, affinity="precomputed", random_state=seed).fit_predict(A[np.ix_(live, live)])
    out = np.full(len(A), -1, dtype=np.int64)
    out[live] = labels
    return out


@dataclass(frozen=True)
class UnitClusters:
    """Clusters of a level's units and their modularity against a null model.

    Attributes
    ----------
    labels : ndarray of shape (n,)
        Cluster of each unit; -1 for a unit with no association.
    k : int
    modularity : NullComparison
        Observed Q against the Q of the null copies (an empty null, p-value NaN, without a test).
    null : str
        The null model (:data:`NULLS`).
    graph : ndarray of shape (n, n)
        The association graph clustered (not in :meth:`to_dict`).
    """

    labels: np.ndarray
    k: int
    modularity: NullComparison
    null: str = "rotation"
    graph: np.ndarray = field(default=None, repr=False)

    @property
    def n_units(self) -> int:
        """Units of the level."""
        return int(self.labels.size)

    @property
    def n_left_out(self) -> int:
        """Units without any association (label -1)."""
        return int((self.labels < 0).sum())

    def to_dict(self) -> dict:
        """JSON-ready dict (``n_null``: the null copies actually scored)."""
        return {"k": self.k, "n_units": self.n_units, "n_left_out": self.n_left_out, "labels": self.labels.tolist(),
                "null": self.null, "n_null": int(self.modularity.null.size), "modularity": self.modularity.to_dict()}


def modularity_test(M: np.ndarray, k: int, *, normalize: bool = False, null: str = "rotation", n_null: int = 20,
                    random_state=None) -> UnitClusters:
    """Cluster the units of the association graph of ``M`` and compare its modularity with ``n_null`` null copies.

    Parameters
    ----------
    M : ndarray of shape (n, n)
        Symmetric second-moment matrix (covariance, Gram matrix), signed, with its diagonal.
    k : int
    normalize : bool, default False
        The graph is the correlation (:func:`association_graph`).
    null : {"rotation", "shuffle"}, default "rotation"
        See the module docstring.
    n_null : int, default 20
        Null copies; 0: no test.
    random_state : int, RandomState or None

    Returns
    -------
    UnitClusters

    Examples
    --------
    >>> rng = np.random.RandomState(0)
    >>> units = np.repeat([0, 1, 2], 8)  # three planted modules of correlated units
    >>> H = rng.randn(2000, 3)[:, units] + 0.8 * rng.randn(2000, 24)
    >>> res = modularity_test(np.cov(H.T), 3, normalize=True, n_null=10, random_state=0)
    >>> round(res.modularity.observed, 2), res.modularity.p_value, res.modularity.z > 3
    (0.62, 0.09090909090909091, True)
    """
    if null not in NULLS:
        raise ClusteringError(f"unknown null {null!r}; use one of {list(NULLS)}")
    if not isinstance(n_null, (int, np.integer)) or n_null < 0:
        raise ClusteringError(f"n_null must be a non-negative integer, got {n_null!r}")
    rng = check_random_state(random_state)
    M = _square(M)
    A = _graph_of(M, normalize)
    labels = _spectral(A, k, rng)
    observed = modularity(A, labels)
    live = np.flatnonzero(labels >= 0)
    values = []
    for _ in range(n_null):
        copy = _rotated(M[np.ix_(live, live)], rng, normalize) if null == "rotation" else _shuffled(A[np.ix_(live, live)], rng)
        try:
            values.append(modularity(copy, _spectral(copy, k, rng)))
        except ClusteringError:  # a copy with fewer than k + 1 associated units has no value (counted in n_null)
            continue
    return UnitClusters(labels, int(k), NullComparison.from_samples(observed, np.asarray(values)), null, A)


def _rotated(M: np.ndarray, rng: np.random.RandomState, normalize: bool) -> np.ndarray:
    """The graph of ``R M R^T`` for a Haar-random orthogonal ``R``."""
    Q, R = np.linalg.qr(rng.standard_normal(M.shape))
    Q = Q * np.sign(np.diag(R))  # Haar: fix the signs of the QR factor
    return _graph_of(Q @ M @ Q.T, normalize)  # symmetrised there


def _shuffled(A: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """``A``'s off-diagonal entries permuted symmetrically."""
    upper = np.triu_indices(len(A), 1)
    values = A[upper]
    S = np.zeros_like(A)
    S[upper] = values[rng.permutation(values.size)]
    return S + S.T


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """BLAS and OpenMP on one thread for scikit-learn's small eigenproblems and KMeans (many threads only
    contend on these sizes: 21 clusterings of 64 units took 0.9 s on 2 idle cores, 0.14 s on one)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _square(M) -> np.ndarray:
    M = np.asarray(M, dtype=float)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ClusteringError(f"an association matrix must be square, got shape {M.shape}")
    if not np.isfinite(M).all():
        raise ClusteringError("the association matrix contains NaN or inf")
    if not np.allclose(M, M.T, rtol=1e-6, atol=1e-12 * max(1.0, float(np.abs(M).max(initial=0)))):
        raise ClusteringError("the association matrix must be symmetric")
    return M


def _graph(A) -> np.ndarray:
    A = _square(A)
    if (A < 0).any():
        raise ClusteringError("the association graph must be non-negative; pass |A| (association_graph)")
    A = A.copy()
    np.fill_diagonal(A, 0.0)
    return A
