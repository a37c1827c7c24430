"""Bipartite spectral graph clustering (BSGC, Algorithm 1 of the paper) as an estimator.

Algorithm 1 clusters the left and right singular vectors of the normalised similarity
:math:`\\tilde A = D_U^{-1/2} A D_V^{-1/2}` with two *independent* KMeans runs. Row cluster ``c`` and
column cluster ``c`` then have nothing to do with each other, and on a layer that was not trained
against that very clustering the within-cluster share of weight is no better than a random
partition's. graphinterp therefore pairs the two sides, by default as Dhillon's co-clustering does:
one KMeans on the joint embedding :math:`Z = [D_U^{-1/2} U_k;\\, D_V^{-1/2} V_k]`, so that a row and a
column land in the same cluster when they are close in the spectral embedding; then, as a cheap
safeguard, the column clusters are re-paired to the row clusters by the optimal (Hungarian) matching
that maximises the within-cluster squared similarity, which can only raise E.
``pairing="independent"`` reproduces Algorithm 1 verbatim and ``pairing="matched"`` runs the two
independent KMeans and then the optimal matching.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state
from threadpoolctl import threadpool_limits

from .errors import ClusteringError, InvalidWeightsError

__all__ = ["BSGC", "PAIRINGS", "randomized_svd", "normalize_bipartite", "match_clusters", "cluster_mass"]

PAIRINGS = ("joint", "matched", "independent")
ArrayLike = Union[np.ndarray, torch.Tensor]


def normalize_bipartite(A: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return :math:`D_U^{-1/2} A D_V^{-1/2}` and the two inverse square-root degree vectors.

    Nodes of degree zero get an inverse square-root degree of 0 (not inf), so they embed at the
    origin instead of producing NaN.

    Examples
    --------
    >>> An, du, dv = normalize_bipartite(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    >>> du
    tensor([0.7071, 0.0000])
    """
    du, dv = A.sum(1), A.sum(0)
    du_is = torch.where(du > 0, du.clamp_min(1e-300).rsqrt(), torch.zeros_like(du))
    dv_is = torch.where(dv > 0, dv.clamp_min(1e-300).rsqrt(), torch.zeros_like(dv))
    return du_is[:, None] * A * dv_is[None, :], du_is, dv_is


def randomized_svd(
    A: torch.Tensor, rank: int, *, oversample: int = 10, n_iter: int = 4, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``rank`` truncated SVD by a randomized range finder with power iterations (Halko et al. 2011).

    Uses a seeded ``generator`` so results are deterministic; falls back to an exact SVD when the
    matrix is small.

    Returns
    -------
    U : (m, rank), S : (rank,), V : (n, rank)
    """
    m, n = A.shape
    q = min(rank + oversample, m, n)
    if q >= min(m, n) or m * n <= 250_000:
        U, S, Vh = _svd(A)
        return U[:, :rank], S[:rank], Vh[:rank].T
    omega = torch.randn(n, q, generator=generator, dtype=A.dtype, device="cpu").to(A.device)
    Q, _ = torch.linalg.qr(A @ omega)
    for _ in range(n_iter):
        Q, _ = torch.linalg.qr(A.T @ Q)
        Q, _ = torch.linalg.qr(A @ Q)
    Ub, S, Vh = _svd(Q.T @ A)
    return (Q @ Ub)[:, :rank], S[:rank], Vh[:rank].T


def _svd(A: torch.Tensor):
    """Thin SVD of a small or flat matrix; on CPU through numpy's LAPACK with one BLAS thread.

    The matrices reaching here are at most ~500 x 500 or (k + 10) x n: one thread is as fast, and it
    avoids BLAS threads busy-waiting against other work on few cores (torch's LAPACK and multi-threaded
    OpenBLAS were both seen 10-50x slower than this on a loaded 2-core machine).
    """
    if A.device.type != "cpu":
        return torch.linalg.svd(A, full_matrices=False)
    with threadpool_limits(1, user_api="blas"):
        U, S, Vh = np.linalg.svd(A.numpy(), full_matrices=False)
    return torch.from_numpy(U), torch.from_numpy(S), torch.from_numpy(Vh)


def cluster_mass(squared: torch.Tensor, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` matrix of the squared similarity between row cluster ``a`` and column cluster ``b``.

    One ``(m, n) @ (n, k)`` product; label ``-1`` (isolated) counts in no cluster.
    """
    r = torch.as_tensor(np.where(rows >= 0, rows, k), device=squared.device)  # -1 -> spare bucket k
    c = torch.as_tensor(np.where(cols >= 0, cols, k), device=squared.device)
    one_hot = torch.nn.functional.one_hot
    mass = one_hot(r, k + 1).to(squared.dtype).T @ (squared @ one_hot(c, k + 1).to(squared.dtype))
    return mass[:k, :k].double().cpu().numpy()


def _matching(mass: np.ndarray) -> np.ndarray:
    """Column-cluster relabelling ``new[b]`` that maximises the within-cluster mass (Hungarian)."""
    row_ind, col_ind = linear_sum_assignment(-mass)
    new_label = np.empty(len(mass), dtype=np.int64)
    new_label[col_ind] = row_ind
    return new_label


def match_clusters(squared: torch.Tensor, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Relabel column clusters to maximise the within-cluster mass (Hungarian matching).

    ``squared`` is ``(m, n)``; ``rows``/``cols`` are labels in ``0..k-1`` (or -1 for isolated nodes).
    Returns the new column labels; row labels are unchanged.
    """
    new_label = _matching(cluster_mass(squared, rows, cols, k))
    return np.where(cols >= 0, new_label[np.maximum(cols, 0)], -1)


class BSGC:
    """Bipartite spectral graph clustering of one layer's similarity matrix.

    Parameters
    ----------
    n_clusters : int, default 4
        Number of bipartite clusters k.
    pairing : {"joint", "matched", "independent"}, default "joint"
        How row and column clusters are paired (see the module docstring).
    n_components : int, optional
        Number of singular vectors in the embedding; default ``n_clusters`` (Algorithm 1).
    n_init : int, default 10
        KMeans restarts per embedding. Among all restarts (and, unless ``n_components`` is set, both
        the k-vector embedding of Algorithm 1 and Dhillon's ``1 + ceil(log2 k)``-vector embedding),
        the clustering with the highest within-cluster share of squared similarity (the paper's E)
        is kept, rather than the one with the lowest KMeans inertia; clusterings in which every
        cluster has both rows and columns are preferred.
    n_iter : int, default 4
        Power iterations of the randomized SVD.
    random_state : int, RandomState or None
        Seed for the randomized SVD and KMeans; results are deterministic given a seed.

    Attributes
    ----------
    row_labels_ : ndarray of shape (n_rows,)
        Cluster of each input node; ``-1`` for an isolated node (all-zero row).
    column_labels_ : ndarray of shape (n_cols,)
        Cluster of each output node; ``-1`` for an isolated node.
    rows_ : ndarray of shape (n_clusters, n_rows), bool
        Indicator of each cluster's rows (scikit-learn's bicluster convention).
    columns_ : ndarray of shape (n_clusters, n_cols), bool
    singular_values_ : ndarray of shape (n_components,)

    References
    ----------
    Dhillon, I. S. (2001). Co-clustering documents and words using bipartite spectral graph
    partitioning. KDD. Golechha, Cope & Schoots (2024), Algorithm 1.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.kron(np.eye(2), np.ones((3, 2))) + 0.01
    >>> model = BSGC(2, random_state=0).fit(A)
    >>> len(set(model.row_labels_[:3])), bool(model.row_labels_[0] == model.column_labels_[0])
    (1, True)
    """

    def __init__(
        self,
        n_clusters: int = 4,
        *,
        pairing: str = "joint",
        n_components: Optional[int] = None,
        n_init: int = 10,
        n_iter: int = 4,
        random_state=None,
    ) -> None:
        self.n_clusters = n_clusters
        self.pairing = pairing
        self.n_components = n_components
        self.n_init = n_init
        self.n_iter = n_iter
        self.random_state = random_state

    def fit(self, A: ArrayLike, y=None) -> "BSGC":
        """Cluster the rows and columns of the non-negative similarity matrix ``A`` (m, n)."""
        k = self.n_clusters
        if self.pairing not in PAIRINGS:
            raise ClusteringError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        A = _as_matrix(A)
        live_r, live_c = A.sum(1) > 0, A.sum(0) > 0
        m_live, n_live = int(live_r.sum()), int(live_c.sum())
        if not isinstance(k, (int, np.integer)) or k < 2 or k > min(m_live, n_live):
            raise ClusteringError(
                f"k={k} is out of range for a {A.shape[0]}x{A.shape[1]} layer with {m_live} non-isolated "
                f"inputs and {n_live} non-isolated outputs: use 2 <= k <= {min(m_live, n_live)}"
            )
        rng = check_random_state(self.random_state)
        gen = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
        sub = A[live_r][:, live_c]
        An, du_is, dv_is = normalize_bipartite(sub)
        ncomp = min(self.n_components or k, m_live, n_live)
        U, S, V = randomized_svd(An, ncomp, n_iter=self.n_iter, generator=gen)
        Zu = (du_is[:, None] * U).cpu().double().numpy()
        Zv = (dv_is[:, None] * V).cpu().double().numpy()
        squared = sub.square()
        embeddings = [(Zu, Zv)]
        n_log = 1 + int(np.ceil(np.log2(k)))
        if self.n_components is None and n_log < ncomp:  # Dhillon's embedding: vectors 2..1+ceil(log2 k)
            embeddings.append((Zu[:, 1:n_log], Zv[:, 1:n_log]))
        with threadpool_limits(1, user_api="openmp"):
            # KMeans on a k-dimensional embedding is tiny; one OpenMP thread avoids the spin-wait
            # clash between scikit-learn's and torch's OpenMP runtimes (100x slower calls otherwise).
            r_sub, c_sub = self._best_assignment(embeddings, squared, k, rng)
        self.row_labels_ = _scatter(r_sub, live_r)
        self.row_labels_ = _scatter(r_sub, live_r)
        self.column_labels_ = _scatter(c_sub, live_c)
        self.rows_ = self.row_labels_[None, :] == np.arange(k)[:, None]
        self.columns_ = self.column_labels_[None, :] == np.arange(k)[:, None]
        self.singular_values_ = S.cpu().numpy()
        return self

    def _best_assignment(self, embeddings, squared: torch.Tensor, k: int, rng) -> Tuple[np.ndarray, np.ndarray]:
        """KMeans restarts on each embedding; keep the paired clustering with the highest E."""
        Zu, Zv = embeddings[0]
        if self.pairing == "independent":  # Algorithm 1 verbatim: two KMeans, best inertia each
            seed = int(rng.randint(2**31 - 1))
            return _kmeans(Zu, k, seed, self.n_init), _kmeans(Zv, k, seed + 1, self.n_init)
        total = float(squared.sum())
        best = (-1.0, None, None)
        for Eu, Ev in embeddings:
            for _ in range(max(1, self.n_init)):
                r_sub, c_sub = self._assign(Eu, Ev, k, int(rng.randint(2**31 - 1)))
                mass = cluster_mass(squared, r_sub, c_sub, k)
                new_label = _matching(mass)
                c_sub = new_label[c_sub]
                full = np.unique(r_sub).size == k and np.unique(c_sub).size == k
                score = mass[new_label, np.arange(k)].sum() / total + (1.0 if full else 0.0)
                if score > best[0]:
                    best = (score, r_sub, c_sub)
        return best[1], best[2]

    def _assign(self, Zu: np.ndarray, Zv: np.ndarray, k: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
        if self.pairing == "joint":
            joint = _kmeans(np.vstack([Zu, Zv]), k, seed)
            return joint[: len(Zu)], joint[len(Zu):]
        return _kmeans(Zu, k, seed), _kmeans(Zv, k, seed + 1)

    def fit_predict(self, A: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
        """Fit and return ``(row_labels_, column_labels_)``."""
        self.fit(A)
        return self.row_labels_, self.column_labels_

    def __repr__(self) -> str:
        return f"BSGC(n_clusters={self.n_clusters}, pairing={self.pairing!r}, random_state={self.random_state!r})"


def _as_matrix(A: ArrayLike) -> torch.Tensor:
    A = torch.as_tensor(A).detach()
    if A.dim() != 2:
        raise ClusteringError(f"the similarity matrix must be 2-D, got shape {tuple(A.shape)}")
    if not torch.is_floating_point(A):
        A = A.double()
    if not bool(torch.isfinite(A).all()):
        raise InvalidWeightsError("the similarity matrix contains NaN or inf; check the model's weights")
    if bool((A < 0).any()):
        raise ClusteringError("the similarity matrix must be non-negative: pass |W|, not W")
    if A.dtype not in (torch.float32, torch.float64):
        A = A.float()
    return A


def _kmeans(Z: np.ndarray, k: int, seed: int, n_init: int = 1) -> np.ndarray:
    return KMeans(n_clusters=k, n_init=max(1, n_init), random_state=seed).fit_predict(Z).astype(np.int64)



def _scatter(sub_labels: np.ndarray, live: torch.Tensor) -> np.ndarray:
    out = np.full(live.numel(), -1, dtype=np.int64)
    out[live.cpu().numpy()] = sub_labels
    return out
