r"""Clusters of units in a symmetric association graph, their Newman modularity, and a shuffle null.

An association matrix (:mod:`graphinterp.interpret.association`) is a weighted undirected graph on
the units of one level. Its units are split into ``k`` clusters by spectral clustering
(scikit-learn's ``SpectralClustering`` on the precomputed affinity: normalised Laplacian embedding,
then KMeans), and the split is scored by Newman's modularity

.. math:: Q = \sum_c \Bigl[\frac{W_{cc}}{W} - \Bigl(\frac{d_c}{W}\Bigr)^2\Bigr],

:math:`W` the sum of all entries, :math:`W_{cc}` the sum inside cluster ``c`` and :math:`d_c` the sum
of its units' degrees: the share of association inside clusters less what random wiring with the same
degrees would put there (0 for no structure, at most :math:`1 - 1/k`).

Spectral clustering finds *some* partition with :math:`Q > 0` on any matrix, so Q alone is no
evidence of modules. :func:`modularity_test` compares it with a shuffle null in the manner of
:func:`graphinterp.clustering.significance.shuffle_test`: the off-diagonal entries are permuted
symmetrically among the units (same values, no arrangement), each copy is clustered the same way
and scored, and the observed Q gets a z-score and an empirical p-value.

Units whose association with every other is zero (dead or constant units) are left out and labelled -1.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from graphinterp.clustering.shuffle_results import NullComparison
from graphinterp.common.errors import ClusteringError
from graphinterp.common.seeds import check_random_state

__all__ = ["UnitClusters", "modularity", "cluster_units", "modularity_test"]


def modularity(A: np.ndarray, labels: np.ndarray) -> float:
    """Newman's modularity of ``labels`` (one per unit; -1 leaves a unit out) on the symmetric graph ``A``.

    Examples
    --------
    >>> A = np.kron(np.eye(2), np.ones((2, 2))) - np.eye(4)  # two pairs, linked inside only
    >>> modularity(A, np.array([0, 0, 1, 1])), modularity(A, np.array([0, 1, 0, 1]))
    (0.5, -0.5)
    """
    A, labels = np.asarray(A, dtype=float), np.asarray(labels)
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
    :class:`~graphinterp.common.errors.ClusteringError` when fewer than ``k`` units have any.

    Examples
    --------
    >>> A = np.kron(np.eye(2), np.ones((3, 3))) + 0.01
    >>> np.fill_diagonal(A, 0)
    >>> labels = cluster_units(A, 2, random_state=0)
    >>> len(set(labels[:3])), len(set(labels[3:])), bool(labels[0] != labels[3])
    (1, 1, True)
    """
    from sklearn.cluster import SpectralClustering

    A = _check(A)
    live = A.sum(1) > 0
    if not isinstance(k, (int, np.integer)) or k < 2 or k > int(live.sum()):
        raise ClusteringError(f"k={k} is out of range for a level with {int(live.sum())} units that have any "
                              f"association (of {len(A)}): use 2 <= k <= {int(live.sum())}")
    seed = int(check_random_state(random_state).randint(2**31 - 1))
    with warnings.catch_warnings():  # a graph in several pieces is clustered all the same (its pieces split first)
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        labels = SpectralClustering(k, affinity="precomputed", random_state=seed).fit_predict(A[np.ix_(live, live)])
    out = np.full(len(A), -1, dtype=np.int64)
    out[live] = labels
    return out


@dataclass(frozen=True)
class UnitClusters:
    """Clusters of a level's units and their modularity against a shuffle null.

    Attributes
    ----------
    labels : ndarray of shape (n,)
        Cluster of each unit; -1 for a unit with no association.
    k : int
    modularity : NullComparison
        Observed Q against the Q of the shuffled copies (empty null when ``n_shuffles=0``).
    """

    labels: np.ndarray
    k: int
    modularity: NullComparison

    @property
    def n_units(self) -> int:
        return int(self.labels.size)

    @property
    def n_left_out(self) -> int:
        return int((self.labels < 0).sum())

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"k": self.k, "n_units": self.n_units, "n_left_out": self.n_left_out,
                "labels": self.labels.tolist(), "modularity": self.modularity.to_dict()}


def modularity_test(A: np.ndarray, k: int, *, n_shuffles: int = 20, random_state=None) -> UnitClusters:
    """Cluster the units of ``A`` and compare the modularity with ``n_shuffles`` symmetric shuffles of ``A``.

    Parameters
    ----------
    A : ndarray of shape (n, n)
        Symmetric, non-negative association matrix (its diagonal is ignored).
    k : int
    n_shuffles : int, default 20
    random_state : int, RandomState or None

    Returns
    -------
    UnitClusters

    Examples
    --------
    >>> rng = np.random.RandomState(0)
    >>> A = np.kron(np.eye(3), np.ones((8, 8))) + 0.1 * rng.rand(24, 24)
    >>> A = (A + A.T) / 2
    >>> res = modularity_test(A, 3, n_shuffles=10, random_state=0)
    >>> round(res.modularity.observed, 2), res.modularity.p_value < 0.1, res.modularity.z > 3
    (0.57, True, True)
    """
    if not isinstance(n_shuffles, (int, np.integer)) or n_shuffles < 0:
        raise ClusteringError(f"n_shuffles must be a non-negative integer, got {n_shuffles!r}")
    rng = check_random_state(random_state)
    A = _check(A)
    labels = cluster_units(A, k, random_state=rng)
    observed = modularity(A, labels)
    live = np.flatnonzero(A.sum(1) > 0)
    upper = np.triu_indices(len(live), 1)
    values = A[np.ix_(live, live)][upper]
    null = []
    for _ in range(n_shuffles):
        S = np.zeros((len(live), len(live)))
        S[upper] = values[rng.permutation(values.size)]
        S = S + S.T
        try:
            null.append(modularity(S, cluster_units(S, k, random_state=rng)))
        except ClusteringError:  # a shuffle that leaves fewer than k units with any association: no value
            continue
    return UnitClusters(labels, int(k), NullComparison.from_samples(observed, np.asarray(null)))


def _check(A) -> np.ndarray:
    A = np.asarray(A, dtype=float)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ClusteringError(f"an association matrix must be square, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ClusteringError("the association matrix contains NaN or inf")
    if (A < 0).any():
        raise ClusteringError("the association matrix must be non-negative; pass |A|")
    if not np.allclose(A, A.T, rtol=1e-6, atol=1e-12 * max(1.0, float(np.abs(A).max(initial=0)))):
        raise ClusteringError("the association matrix must be symmetric")
    A = A.copy()
    np.fill_diagonal(A, 0.0)
    return A
