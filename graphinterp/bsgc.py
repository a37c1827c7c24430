"""Bipartite spectral graph clustering (BSGC, Algorithm 1 of the paper) as an estimator.

Algorithm 1 normalises the similarity matrix, :math:`\\tilde A = D_U^{-1/2} A D_V^{-1/2}`, takes its
rank-k SVD :math:`\\tilde A \\approx U_k \\Sigma_k V_k^T`, and clusters the rows of :math:`U_k` and,
separately, the rows of :math:`V_k` with two *independent* KMeans runs. Row cluster ``c`` and column
cluster ``c`` then have nothing to do with each other, and on a layer that was not trained against that
very clustering the within-cluster share of weight is no better than a random partition's.
graphinterp therefore pairs the two sides. The three ``pairing`` modes do exactly this:

``"joint"`` (default)
    Dhillon's co-clustering: one KMeans on the rows of the joint embedding
    :math:`Z = [D_U^{-1/2} U;\\, D_V^{-1/2} V]`, so that a row and a column land in the same cluster
    when they are close in the spectral embedding. The restarts use two embeddings, singular vectors
    2..k (Algorithm 1's k vectors without the trivial first one, which is constant after scaling) and
    Dhillon's vectors 2..1+ceil(log2 k); then, in every restart, the column clusters are re-paired to
    the row clusters by the optimal (Hungarian) matching of the ``k x k`` mass matrix, which can only
    raise E. The kept restart follows the rule below.
``"matched"``
    Two independent KMeans on :math:`D_U^{-1/2} U` (rows) and :math:`D_V^{-1/2} V` (columns), same
    embeddings as ``"joint"``; restart ``t`` of the rows is paired with restart ``t`` of the columns by
    the optimal matching; the kept restart follows the rule below.
``"independent"``
    Algorithm 1 verbatim: KMeans (k-means++, ``n_init`` restarts, lowest inertia kept) on the rows of
    :math:`U_k` and, separately, on the rows of :math:`V_k` (the first k singular vectors of
    :math:`\\tilde A`, unscaled); no pairing and no E-based choice.

Choice among restarts (``"joint"`` and ``"matched"``): candidates in which every one of the k clusters
has at least one row and one column are preferred; among those (or among all, if there is none), the
highest E (share of squared similarity inside the paired clusters) wins; ties go to the earlier
restart. Every candidate's E comes from its ``k x k`` mass matrix :math:`R^T (A \\circ A) C`, all
candidates together in one matrix product with ``A`` squared block by block (no copy of ``A``).

Implementation: the SVD is a randomized range finder on the normalised operator applied implicitly
(``A`` is never scaled, copied or cast), with the exactly known top singular pair
(:math:`\\sigma_1 = 1`, :math:`u_1 \\propto \\sqrt{d_U}`, :math:`v_1 \\propto \\sqrt{d_V}`) deflated; all
KMeans restarts run as one batched computation in torch (k-means++ initialisation from a seeded
``torch.Generator``, then Lloyd iterations until no label changes). Results are deterministic for a
given integer ``random_state`` (on the same machine and thread count).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Tuple, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.utils import check_random_state

from .errors import ClusteringError, InvalidWeightsError

__all__ = [
    "BSGC", "PAIRINGS", "randomized_svd", "normalize_bipartite", "match_clusters", "cluster_mass",
    "fit_k_range",
]

PAIRINGS = ("joint", "matched", "independent")
ArrayLike = Union[np.ndarray, torch.Tensor]

_OVERSAMPLE = 10
_SMALL_ELEMENTS = 1 << 20  # default power iterations: _N_ITER_SMALL below this many entries, else _N_ITER_LARGE
_N_ITER_SMALL, _N_ITER_LARGE = 7, 4
_EXACT_MAX_SIDE = 96  # normalised SVD computed exactly when the smaller side has at most this many nodes
_EXACT_MAX_ELEMENTS = 1 << 21  # ... and the matrix is at most this big (the exact path copies it)
_MAX_ITER = 300  # Lloyd iterations per restart (scikit-learn's default)
_TOL = 1e-4  # ... and relative centre shift (scikit-learn's defaults), for "independent"
_TOL_PAIRED = 1e-2  # looser for the paired modes: their restarts are candidates ranked by E, not inertia
_MAX_ITER_PAIRED = 300
_SAMPLE = 4096  # KMeans on more points starts on a random sample of this many ...
_FULL_ITER = 10  # ... then runs at most this many Lloyd iterations on all points
_CHUNK_ELEMENTS = 1 << 21  # block size (elements) for squaring A when scoring candidates


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
    du_is, dv_is = _inv_sqrt(A.sum(1)), _inv_sqrt(A.sum(0))
    return du_is[:, None] * A * dv_is[None, :], du_is, dv_is


def _inv_sqrt(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d > 0, d.clamp_min(torch.finfo(d.dtype).tiny).rsqrt(), torch.zeros_like(d))


def randomized_svd(
    A: torch.Tensor, rank: int, *, oversample: int = 10, n_iter: int = 4, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``rank`` truncated SVD by a randomized range finder with power iterations (Halko et al. 2011).

    Uses a seeded ``generator`` so results are deterministic; falls back to an exact SVD when the
    matrix is small. ``A`` is only read (never copied or cast).

    Returns
    -------
    U : (m, rank), S : (rank,), V : (n, rank)
    """
    m, n = A.shape
    q = min(rank + oversample, m, n)
    if q >= min(m, n) or m * n <= 250_000:
        U, S, V = _gram_svd(A)
        return U[:, :rank].to(A.dtype), S[:rank].to(A.dtype), V[:, :rank].to(A.dtype)
    U, S, V = _range_svd(lambda X: A @ X, lambda Y: (Y.T @ A).T, A, q, n_iter, generator)
    return U[:, :rank], S[:rank], V[:, :rank]


def _range_svd(matmul, rmatmul, A: torch.Tensor, q: int, n_iter: int, generator: Optional[torch.Generator]):
    """Randomized SVD of the operator ``X -> matmul(X)`` (adjoint ``rmatmul``) of ``A``'s shape, ``q`` vectors."""
    omega = torch.randn(A.shape[1], q, generator=generator, dtype=A.dtype).to(A.device)
    Q = torch.linalg.qr(matmul(omega))[0]
    for _ in range(n_iter):
        Q = torch.linalg.qr(rmatmul(Q))[0]
        Q = torch.linalg.qr(matmul(Q))[0]
    Ub, S, V = _gram_svd(rmatmul(Q).T)  # the small (q, n) matrix Q^T op
    return (Q.double() @ Ub).to(A.dtype), S.to(A.dtype), V.to(A.dtype)


def _gram_svd(B: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of a small or flat matrix through the eigendecomposition of its smaller Gram matrix (float64).

    Accurate for the leading singular vectors, which are all BSGC uses; much faster than a LAPACK SVD
    of a ``(q, n)`` matrix with large ``n``, and a single-threaded ``min(m, n)``-sized problem. Singular
    vectors whose singular value is below ``1e-12`` of the largest are returned as zeros.
    """
    B = B.double()
    flip = B.shape[0] > B.shape[1]
    if flip:
        B = B.T
    evals, W = torch.linalg.eigh(B @ B.T)
    evals, W = evals.flip(0), W.flip(1)
    S = evals.clamp_min(0).sqrt()
    keep = S > 1e-12 * S[:1].clamp_min(torch.finfo(torch.float64).tiny)
    Vt = (W.T @ B) / torch.where(keep, S, torch.ones_like(S))[:, None]
    Vt = Vt * keep[:, None]
    U, V = W, Vt.T
    return (V, S, U) if flip else (U, S, V)


def cluster_mass(squared: torch.Tensor, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` matrix of the squared similarity between row cluster ``a`` and column cluster ``b``.

    One ``(m, n) @ (n, k)`` product; label ``-1`` (isolated) counts in no cluster.
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
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
    cols = np.asarray(cols, dtype=np.int64)
    new_label = _matching(cluster_mass(squared, rows, cols, k))
    return np.where(cols >= 0, new_label[np.maximum(cols, 0)], -1)


class BSGC:
    """Bipartite spectral graph clustering of one layer's similarity matrix.

    Parameters
    ----------
    n_clusters : int, default 4
        Number of bipartite clusters k.
    pairing : {"joint", "matched", "independent"}, default "joint"
        How row and column clusters are paired (see the module docstring): ``"joint"`` one KMeans on
        the scaled joint embedding of rows and columns, then optimal matching; ``"matched"`` two
        KMeans, then optimal matching; ``"independent"`` Algorithm 1 verbatim (two KMeans on the
        unscaled singular vectors, unpaired).
    n_components : int, optional
        Number of singular vectors in the embedding; default ``n_clusters`` (Algorithm 1). When set,
        only this embedding is used (not Dhillon's ``1 + ceil(log2 k)`` one as well).
    n_init : int, default 10
        KMeans restarts per embedding. With ``"joint"`` and ``"matched"`` all restarts of both
        embeddings are candidates: those in which every cluster has both rows and columns are
        preferred, then the highest within-cluster share of squared similarity (the paper's E) wins,
        rather than the lowest KMeans inertia. With ``"independent"`` the lowest inertia wins, as in
        KMeans.
    n_iter : int, optional
        Power iterations of the randomized SVD. Default: 7 for a matrix of fewer than 2**20 entries
        (scikit-learn's choice for these ranks; passes are cheap there and small noisy layers need
        the accuracy), 4 above (each pass reads the whole matrix, and big layers did as well as
        scikit-learn's 7 in our comparisons).
    random_state : int, RandomState or None
        Seed for the randomized SVD and KMeans; results are deterministic given an integer seed.

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
        Leading singular values of the normalised matrix (the first is 1).

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
        n_iter: Optional[int] = None,
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
        spectrum = _Spectrum.compute(A, self._needed_rank(), self.n_iter, check_random_state(self.random_state),
                                     pairing=self.pairing, ks=[self.n_clusters])
        return self._fit_spectrum(spectrum)

    def _needed_rank(self) -> int:
        k = self.n_clusters
        return max(self.n_components or (k if isinstance(k, (int, np.integer)) else 2), 2)

    def _fit_spectrum(self, sp: "_Spectrum") -> "BSGC":
        k = self.n_clusters
        _check_k(k, sp)
        ncomp = min(self.n_components or k, sp.m_live, sp.n_live)
        gen = torch.Generator().manual_seed(int(sp.rng.randint(2**31 - 1)))
        n_init = max(1, int(self.n_init))
        if self.pairing == "independent":
            U, V = sp.U[sp.live_r, :ncomp].float().cpu(), sp.V[sp.live_c, :ncomp].float().cpu()
            r_sub = _best_inertia(*_kmeans(U, k, n_init, gen))
            c_sub = _best_inertia(*_kmeans(V, k, n_init, gen))
        else:
            r_sub, c_sub = self._best_paired(sp, k, ncomp, n_init, gen)
        self.row_labels_ = _scatter(r_sub, sp.live_r)
        self.column_labels_ = _scatter(c_sub, sp.live_c)
        self.rows_ = self.row_labels_[None, :] == np.arange(k)[:, None]
        self.columns_ = self.column_labels_[None, :] == np.arange(k)[:, None]
        self.singular_values_ = sp.S[:ncomp].double().cpu().numpy()
        return self

    def _best_paired(self, sp: "_Spectrum", k: int, ncomp: int, n_init: int, gen: torch.Generator):
        """All KMeans restarts at once; the candidate preferred by the module's rule, paired by matching."""
        # Scaled embedding without the trivial first vector (constant after scaling); keep it only if alone.
        first = 1 if ncomp > 1 else 0
        Zu = (sp.du_is[sp.live_r, None] * sp.U[sp.live_r, first:ncomp]).float().cpu()
        Zv = (sp.dv_is[sp.live_c, None] * sp.V[sp.live_c, first:ncomp]).float().cpu()
        dims = [ncomp - first]
        n_log = 1 + int(np.ceil(np.log2(k)))
        if self.n_components is None and n_log < ncomp:  # Dhillon's embedding: vectors 2..1+ceil(log2 k)
            dims.append(n_log - 1)
        mask = torch.zeros(len(dims) * n_init, Zu.shape[1])
        for e, d in enumerate(dims):
            mask[e * n_init:(e + 1) * n_init, :d] = 1.0
        if self.pairing == "joint":
            labels, _ = _kmeans(torch.cat([Zu, Zv]), k, n_init, gen, mask, tol=_TOL_PAIRED, max_iter=_MAX_ITER_PAIRED)
            rows, cols = labels[:, : len(Zu)], labels[:, len(Zu):]
        else:
            rows, _ = _kmeans(Zu, k, n_init, gen, mask, tol=_TOL_PAIRED, max_iter=_MAX_ITER_PAIRED)
            cols, _ = _kmeans(Zv, k, n_init, gen, mask, tol=_TOL_PAIRED, max_iter=_MAX_ITER_PAIRED)
        rows, cols = rows.numpy(), cols.numpy()
        return _choose(sp, rows, cols, k)

    def fit_predict(self, A: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
        """Fit and return ``(row_labels_, column_labels_)``."""
        self.fit(A)
        return self.row_labels_, self.column_labels_

    def __repr__(self) -> str:
        return f"BSGC(n_clusters={self.n_clusters}, pairing={self.pairing!r}, random_state={self.random_state!r})"


def fit_k_range(
    A: ArrayLike, ks: Iterable[int], *, pairing: str = "joint", n_init: int = 10, n_iter: Optional[int] = None,
    random_state=None,
) -> Dict[int, BSGC]:
    """Fit :class:`BSGC` for every k in ``ks`` (e.g. ``range(2, 11)``) from one SVD of ``A``.

    The matrix is validated and normalised once and its SVD computed once, at rank ``max(ks)``; each
    k then only runs its KMeans restarts and candidate scoring on the first k singular vectors. The
    algorithm is the one of ``BSGC(k, ...).fit(A)``, but labels need not be identical to a lone
    fit's, whose SVD has rank k (the randomized SVD's subspace, and so the vectors, differ slightly).
    Deterministic for an integer ``random_state``.

    Returns
    -------
    dict mapping each k to its fitted :class:`BSGC`.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.abs(np.random.default_rng(0).standard_normal((40, 30)))
    >>> fits = fit_k_range(A, range(2, 5), random_state=0)
    >>> sorted(fits), fits[3].row_labels_.shape
    ([2, 3, 4], (40,))
    """
    ks = list(ks)
    if not ks:
        raise ClusteringError("fit_k_range needs at least one k, e.g. ks=range(2, 11)")
    rng = check_random_state(random_state)
    rank = max(max(k for k in ks if isinstance(k, (int, np.integer))) if any(isinstance(k, (int, np.integer)) for k in ks)
               else 2, 2)
    sp = _Spectrum.compute(A, rank, n_iter, rng, pairing=pairing, ks=ks)
    return {int(k): BSGC(int(k), pairing=pairing, n_init=n_init, n_iter=n_iter, random_state=random_state)._fit_spectrum(sp)
            for k in ks}


class _Spectrum:
    """A validated similarity matrix, its degrees, and the leading SVD of the normalised matrix."""

    def __init__(self, A, du_is, dv_is, live_r, live_c, U, S, V, rng):
        self.A, self.du_is, self.dv_is, self.live_r, self.live_c = A, du_is, dv_is, live_r, live_c
        self.m_live, self.n_live = int(live_r.sum()), int(live_c.sum())
        self.U, self.S, self.V, self.rng = U, S, V, rng

    @classmethod
    def compute(cls, A: ArrayLike, rank: int, n_iter: Optional[int], rng, *, pairing: str, ks) -> "_Spectrum":
        if pairing not in PAIRINGS:
            raise ClusteringError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        A = _as_matrix(A)
        du, dv = _degrees(A)
        live_r, live_c = du > 0, dv > 0
        sp = cls(A, _inv_sqrt(du), _inv_sqrt(dv), live_r.cpu().numpy(), live_c.cpu().numpy(), None, None, None, rng)
        for k in ks:
            _check_k(k, sp)
        gen = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
        rank = min(rank, sp.m_live, sp.n_live)
        if n_iter is None:
            n_iter = _N_ITER_SMALL if A.numel() < _SMALL_ELEMENTS else _N_ITER_LARGE
        sp.U, sp.S, sp.V = _normalized_svd(A, du, dv, sp.du_is, sp.dv_is, rank, n_iter, gen)
        return sp


def _check_k(k, sp: _Spectrum) -> None:
    if not isinstance(k, (int, np.integer)) or k < 2 or k > min(sp.m_live, sp.n_live):
        m, n = sp.A.shape
        raise ClusteringError(
            f"k={k} is out of range for a {m}x{n} layer with {sp.m_live} non-isolated "
            f"inputs and {sp.n_live} non-isolated outputs: use 2 <= k <= {min(sp.m_live, sp.n_live)}"
        )


def _normalized_svd(A, du, dv, du_is, dv_is, rank: int, n_iter: int, gen: torch.Generator):
    """Leading ``rank`` singular triplets of :math:`D_U^{-1/2} A D_V^{-1/2}`, without forming it.

    The top pair is known exactly (:math:`\\sigma_1 = 1`, :math:`u_1 = \\sqrt{d_U / T}`,
    :math:`v_1 = \\sqrt{d_V / T}`, ``T`` the total weight) and deflated; the rest comes from an exact
    SVD of the small deflated matrix, or a randomized one of the deflated operator applied implicitly.
    """
    total = du.double().sum()
    u1 = (du.double() / total).sqrt().to(A.dtype)
    v1 = (dv.double() / total).sqrt().to(A.dtype)
    m, n = A.shape
    q = min(rank - 1 + _OVERSAMPLE, m, n)
    if m * n <= _EXACT_MAX_ELEMENTS and (min(m, n) <= _EXACT_MAX_SIDE or q >= min(m, n)):
        An = du_is.double()[:, None] * A.double() * dv_is.double()[None, :] - u1.double()[:, None] * v1.double()[None, :]
        U, S, V = _gram_svd(An)
        U, S, V = U.to(A.dtype), S.to(A.dtype), V.to(A.dtype)
    else:
        def matmul(X):
            return du_is[:, None] * (A @ (dv_is[:, None] * X)) - u1[:, None] * (v1 @ X)[None, :]

        def rmatmul(Y):
            return dv_is[:, None] * ((du_is[:, None] * Y).T @ A).T - v1[:, None] * (u1 @ Y)[None, :]

        U, S, V = _range_svd(matmul, rmatmul, A, q, n_iter, gen)
    one = torch.ones(1, dtype=A.dtype, device=A.device)
    return (torch.cat([u1[:, None], U[:, : rank - 1]], 1), torch.cat([one, S[: rank - 1]]),
            torch.cat([v1[:, None], V[:, : rank - 1]], 1))


def _as_matrix(A: ArrayLike) -> torch.Tensor:
    """``A`` as a float32/float64 torch tensor, without a copy when it already is one (or a numpy array)."""
    A = torch.as_tensor(A).detach()
    if A.dim() != 2:
        raise ClusteringError(f"the similarity matrix must be 2-D, got shape {tuple(A.shape)}")
    if not torch.is_floating_point(A):
        A = A.double()
    elif A.dtype not in (torch.float32, torch.float64):
        A = A.float()
    return A


def _degrees(A: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column sums of ``A``, checking that it is finite and non-negative (two cheap passes).

    Finite sums of non-negative entries imply finite entries, so the element-wise test only runs
    when a sum is not finite.
    """
    du, dv = A.sum(1), A.sum(0)
    if not (bool(torch.isfinite(du).all()) and bool(torch.isfinite(dv).all())):
        if not bool(torch.isfinite(A).all()):
            raise InvalidWeightsError("the similarity matrix contains NaN or inf; check the model's weights")
        du, dv = A.double().sum(1), A.double().sum(0)  # finite entries whose float32 sum overflowed
    if A.numel() and float(A.amin()) < 0:
        raise ClusteringError("the similarity matrix must be non-negative: pass |W|, not W")
    return du, dv


def _kmeans(
    Z: torch.Tensor, k: int, n_init: int, gen: torch.Generator, mask: Optional[torch.Tensor] = None,
    max_iter: int = _MAX_ITER, tol: float = _TOL,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batched KMeans: ``B`` restarts (k-means++ then Lloyd) on the points ``Z`` (N, d) at once.

    ``mask`` (B, d) of 0/1 selects the coordinates each restart sees (restarts on different
    embeddings share one computation); default ``n_init`` restarts on all coordinates. A restart stops
    when its centres move less than ``tol`` times the mean
    variance (scikit-learn's criterion; when no label changes the centres do not move); finished
    restarts leave the batch. With more than
    ``_SAMPLE`` points, initialisation and the first Lloyd iterations use a random sample of that
    many points, then at most ``_FULL_ITER`` iterations run on all points from those centres.

    Returns
    -------
    labels : (B, N) int64, inertia : (B,) float64
    """
    N, d = Z.shape
    if mask is None:
        mask = torch.ones(n_init, d, dtype=Z.dtype)
    mask = mask.to(Z.dtype)
    tol_abs = tol * float(Z.var(0, unbiased=False).mean()) if N > 1 else 0.0
    if N > _SAMPLE:
        sample = Z[torch.randperm(N, generator=gen)[:_SAMPLE].sort().values]
        C = _lloyd(sample, _kmeans_pp(sample, k, mask, gen), mask, max_iter, tol_abs)
        C = _lloyd(Z, C, mask, _FULL_ITER, tol_abs)
    else:
        C = _lloyd(Z, _kmeans_pp(Z, k, mask, gen), mask, max_iter, tol_abs)
    values, labels = _assign(Z.T.contiguous(), C)
    znorm = (Z.double() ** 2) @ mask.double().T  # (N, B): squared norm in each restart's coordinates
    inertia = (values.double() + znorm.T).clamp_min(0).sum(1)
    return labels, inertia


def _kmeans_pp(Z: torch.Tensor, k: int, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ centres (B, k, d), 2 + log k local trials per centre as in scikit-learn."""
    (N, d), B = Z.shape, len(mask)
    znorm = ((Z * Z) @ mask.T).T  # (B, N): squared norms in each restart's coordinates
    # squared distances of t points P (B, t, d) to all points, as one batched product [P, |P|^2, 1] @ R
    R = torch.cat([(-2 * Z.T).expand(B, d, N), torch.ones(B, 1, N, dtype=Z.dtype), znorm[:, None, :]], 1)

    def sqdist(P: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(B, P.shape[1], 1, dtype=Z.dtype)
        return torch.bmm(torch.cat([P, (P * P).sum(-1, keepdim=True), ones], 2), R)

    n_trials = 2 + int(math.log(k))
    rows = torch.arange(B)
    C = torch.zeros(B, k, d, dtype=Z.dtype)
    C[:, 0] = Z[torch.randint(N, (B,), generator=gen)] * mask
    closest = sqdist(C[:, :1])[:, 0].clamp_min_(0)  # (B, N)
    for i in range(1, k):
        weights = closest
        if not bool((closest.sum(1) > 0).all()):  # all points on the centres chosen so far: sample uniformly
            weights = torch.where(closest.sum(1, keepdim=True) > 0, closest, torch.ones_like(closest))
        cand = torch.multinomial(weights, n_trials, replacement=True, generator=gen)  # (B, T)
        cc = Z[cand] * mask[:, None, :]  # (B, T, d)
        dist = torch.minimum(sqdist(cc), closest[:, None, :])  # (B, T, N): the new closest distances per trial
        best = dist.sum(-1).argmin(1)
        closest, C[:, i] = dist[rows, best].clamp_min_(0), cc[rows, best]
    return C


def _distances(Zt: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """:math:`\\|c\\|^2 - 2 z \\cdot c` (the squared distance less the point's own norm), shape (B, k, N)."""
    B, k, d = C.shape
    return torch.addmm((C * C).sum(-1).reshape(B * k, 1), C.reshape(B * k, d), Zt, alpha=-2).view(B, k, -1)


def _assign(Zt: torch.Tensor, C: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every point in every restart: ``(values, labels)``, both (B, N); ties go to the lower label."""
    dist = _distances(Zt, C)
    values, labels = dist[:, 0].clone(), torch.zeros(dist.shape[0], dist.shape[2], dtype=torch.int64)
    for c in range(1, dist.shape[1]):  # a loop over the few centres beats torch's strided min/argmin by 20x
        closer = dist[:, c] < values
        torch.where(closer, dist[:, c], values, out=values)
        labels.masked_fill_(closer, c)
    return values, labels


def _lloyd(Z: torch.Tensor, C: torch.Tensor, mask: torch.Tensor, max_iter: int, tol_abs: float) -> torch.Tensor:
    """Lloyd iterations of all restarts; a restart leaves the batch once its centres move less than ``tol_abs``.

    The assignment is kept as a one-hot ``(B, k, N)`` matrix (``distance == column minimum``), which
    is all the centre update needs. The large temporaries are allocated once and reused: fresh
    allocations of this size cost a page fault per page on every iteration. Returns the centres.
    """
    (N, d), (B, k) = Z.shape, C.shape[:2]
    Zt = Z.T.contiguous()
    C = C.clone()
    dist_buf, hot_buf = torch.empty(B * k, N, dtype=Z.dtype), torch.empty(B, k, N, dtype=Z.dtype)
    min_buf = torch.empty(B, 1, N, dtype=Z.dtype)
    active = torch.arange(B)
    for _ in range(max_iter):
        b = len(active)
        Ca, ma = (C, mask[:, None, :]) if b == B else (C[active], mask[active, None, :])
        dist = torch.addmm((Ca * Ca).sum(-1).reshape(b * k, 1), Ca.reshape(b * k, d), Zt, alpha=-2,
                           out=dist_buf[: b * k]).view(b, k, N)
        one_hot = torch.eq(dist, torch.amin(dist, 1, keepdim=True, out=min_buf[:b]), out=hot_buf[:b])
        counts = one_hot.sum(-1, keepdim=True)
        sums = (Zt @ one_hot.view(b * k, N).T).T.reshape(b, k, d)
        new_C = torch.where(counts > 0, sums / counts.clamp_min(1), Ca) * ma  # an empty cluster's centre stays
        moving = ((new_C - Ca) ** 2).sum((1, 2)) > tol_abs
        if b == B:
            C = new_C
        else:
            C[active] = new_C
        if not bool(moving.any()):
            break
        if not bool(moving.all()):
            active = active[moving]
    return C


def _best_inertia(labels: torch.Tensor, inertia: torch.Tensor) -> np.ndarray:
    return labels[int(inertia.argmin())].numpy().astype(np.int64)


def _choose(sp: "_Spectrum", rows: np.ndarray, cols: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pair, repair and pick one of ``T`` candidate clusterings (``rows`` (T, m_live), ``cols`` (T, n_live)).

    Each candidate's column clusters are matched to its row clusters (Hungarian, on the mass matrix).
    A cluster left without rows then gets the row whose move loses the least within-cluster mass
    (taken from a cluster with at least two rows), and likewise for columns, so that every cluster
    of every candidate has both rows and columns when ``k <= min(m_live, n_live)``. The kept
    candidate is the first one that is full (all k clusters with rows and columns), then has the
    highest E.
    """
    T = len(rows)
    full_r, full_c = _scatter_batch(rows, sp.live_r, 0), _scatter_batch(cols, sp.live_c, 0)
    P = _squared_products(sp.A, full_c, k, "cols")  # (T, m, k): mass of each row in each column cluster
    index = torch.from_numpy(full_r)[:, :, None].expand(P.shape)
    masses = torch.zeros(T, k, k, dtype=torch.float64).scatter_add_(1, index, P).numpy()
    total = float(P[0].sum())
    P = P.numpy()
    scale = 1.0 / total if total > 0 else 0.0
    cands, need_cols = [], []
    for t in range(T):
        new_label = _matching(masses[t])
        E = masses[t][new_label, np.arange(k)].sum() * scale
        r, c = rows[t], new_label[cols[t]]
        if np.bincount(r, minlength=k).min() == 0:  # repair the rows, given the matched columns
            Pt = np.empty((sp.m_live, k))
            Pt[:, new_label] = P[t][sp.live_r]
            r = r.copy()
            E += _repair(r, Pt, k) * scale
        cands.append([r, c, E])
        if np.bincount(c, minlength=k).min() == 0:
            need_cols.append(t)
    if need_cols:  # columns' mass in each (repaired) row cluster, for the candidates that need it
        Q = _squared_products(sp.A, _scatter_batch(np.stack([cands[t][0] for t in need_cols]), sp.live_r, 0), k, "rows")
        Q = Q.numpy()[:, sp.live_c]
        for q, t in enumerate(need_cols):
            cands[t][1] = cands[t][1].copy()
            cands[t][2] += _repair(cands[t][1], Q[q], k) * scale
    best_key, best = None, None
    for r, c, E in cands:
        key = (bool(np.bincount(r, minlength=k).all() and np.bincount(c, minlength=k).all()), E)
        if best_key is None or key > best_key:
            best_key, best = key, (r, c)
    return best


def _repair(labels: np.ndarray, gain_table: np.ndarray, k: int) -> float:
    """Give every empty cluster one node, the move that loses the least mass; returns the change in mass.

    ``gain_table[i, c]`` is the within-cluster mass node ``i`` has when in cluster ``c`` (given the
    other side's clusters); nodes are only taken from clusters that keep at least one. In place.
    """
    counts = np.bincount(labels, minlength=k)
    delta = 0.0
    if counts.min() > 0 or len(labels) < k:
        return delta
    own = gain_table[np.arange(len(labels)), labels]
    for c in np.flatnonzero(counts == 0):
        gain = gain_table[:, c] - own
        gain[counts[labels] < 2] = -np.inf
        i = int(np.argmax(gain))
        counts[labels[i]] -= 1
        counts[c] += 1
        labels[i], own[i] = c, gain_table[i, c]
        delta += gain[i]
    return float(delta)


def _squared_products(A: torch.Tensor, labels: np.ndarray, k: int, side: str) -> torch.Tensor:
    """``(A o A) @ onehot(labels_t)`` for ``T`` labellings of the columns (``side="cols"``, result (T, m, k)),
    or ``(A o A)^T @ onehot(labels_t)`` for labellings of the rows (``side="rows"``, result (T, n, k)).

    All labellings in one matrix product with the ``(n, T k)`` indicator; ``A`` is squared block by
    block into a small buffer, never whole. Float64 on the CPU.
    """
    if not A.is_contiguous() and A.T.is_contiguous():  # a transposed view: work on the row-major side
        return _squared_products(A.T, labels, k, "rows" if side == "cols" else "cols")
    T, (m, n) = len(labels), A.shape
    offsets = torch.arange(T)[:, None] * k
    indicator = torch.zeros(labels.shape[1], T * k, dtype=A.dtype, device=A.device)
    indicator.scatter_(1, (torch.from_numpy(labels) + offsets).T.to(A.device), 1.0)
    step = max(1, min(m, _CHUNK_ELEMENTS // max(n, 1)))
    buf = torch.empty(step, n, dtype=A.dtype, device=A.device)
    if side == "cols":
        out = torch.empty(m, T * k, dtype=A.dtype, device=A.device)
    else:
        out_t = torch.zeros(T * k, n, dtype=A.dtype, device=A.device)
    for i0 in range(0, m, step):
        i1 = min(m, i0 + step)
        block = torch.mul(A[i0:i1], A[i0:i1], out=buf[: i1 - i0])
        if side == "cols":
            torch.mm(block, indicator, out=out[i0:i1])
        else:
            out_t.addmm_(indicator[i0:i1].T, block)
    if side == "rows":
        out = out_t.T
    return out.reshape(out.shape[0], T, k).permute(1, 0, 2).double().cpu()


def _scatter(sub_labels: np.ndarray, live: np.ndarray) -> np.ndarray:
    out = np.full(live.size, -1, dtype=np.int64)
    out[live] = sub_labels
    return out


def _scatter_batch(sub_labels: np.ndarray, live: np.ndarray, fill: int) -> np.ndarray:
    if live.all():
        return sub_labels
    out = np.full((len(sub_labels), live.size), fill, dtype=np.int64)
    out[:, live] = sub_labels
    return out
