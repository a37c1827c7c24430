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
KMeans restarts run as one batched computation in torch (:mod:`graphinterp.clustering.kmeans_batch`: k-means++
from a seeded ``torch.Generator``, then Lloyd iterations). Identical candidate clusterings are scored
once. :func:`fit_batch` clusters many matrices of one shape (the shuffled copies of a layer) in the
same tensor operations, with the same result for each as its own :meth:`BSGC.fit`. Results are
deterministic for a given integer ``random_state`` (on the same machine and thread count).
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from graphinterp.common.errors import ClusteringError, InvalidWeightsError
from graphinterp.clustering.kmeans_batch import batched_kmeans, one_thread
from graphinterp.common.seeds import check_random_state

__all__ = [
    "BSGC", "PAIRINGS", "randomized_svd", "normalize_bipartite", "match_clusters", "cluster_mass",
    "fit_k_range", "fit_batch",
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

    Examples
    --------
    >>> U, S, V = randomized_svd(torch.eye(3, dtype=torch.float64), 2)
    >>> S.tolist(), U.shape
    ([1.0, 1.0], torch.Size([3, 2]))
    """
    m, n = A.shape
    q = min(rank + oversample, m, n)
    if q >= min(m, n) or m * n <= 250_000:
        U, S, V = _gram_svd(A[None])
    else:
        A3 = A[None]
        U, S, V = _range_svd(lambda X: torch.matmul(A3, X), lambda Y: torch.matmul(Y.transpose(1, 2), A3).transpose(1, 2),
                             A3, q, n_iter, [generator or torch.Generator().manual_seed(0)])
    return U[0, :, :rank].to(A.dtype), S[0, :rank].to(A.dtype), V[0, :, :rank].to(A.dtype)


def _range_svd(matmul, rmatmul, A: torch.Tensor, q: int, n_iter: int, generators: Sequence[torch.Generator]):
    """Randomized SVD of the batched operator ``X -> matmul(X)`` (adjoint ``rmatmul``) of ``A``'s shape (C, m, n).

    ``q`` vectors; copy ``c``'s random start comes from ``generators[c]``.
    """
    omega = torch.stack([torch.randn(A.shape[2], q, generator=g, dtype=A.dtype) for g in generators]).to(A.device)

    def orth(X: torch.Tensor) -> torch.Tensor:  # thin QR of (C, m, q): small, one thread on the CPU
        if X.is_cuda:
            return torch.linalg.qr(X)[0]
        with one_thread():
            return torch.linalg.qr(X)[0]

    Q = orth(matmul(omega))
    for _ in range(n_iter):
        Q = orth(rmatmul(Q))
        Q = orth(matmul(Q))
    B = rmatmul(Q).transpose(1, 2)  # the small (q, n) matrices Q^T op
    if B.is_cuda:
        Ub, S, V = _gram_svd(B)
    else:
        with one_thread():
            Ub, S, V = _gram_svd(B)
    return torch.matmul(Q.double(), Ub).to(A.dtype), S.to(A.dtype), V.to(A.dtype)


def _gram_svd(B: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of small or flat matrices ``B`` (C, a, b) through the eigendecomposition of the smaller Gram matrix.

    In float64. Accurate for the leading singular vectors, which are all BSGC uses; much faster than
    a LAPACK SVD of a ``(q, n)`` matrix with large ``n``. Singular vectors whose singular value is
    below ``1e-12`` of the largest are returned as zeros.
    """
    B = B.double()
    flip = B.shape[1] > B.shape[2]
    if flip:
        B = B.transpose(1, 2)
    evals, W = torch.linalg.eigh(torch.matmul(B, B.transpose(1, 2)))
    evals, W = evals.flip(-1), W.flip(-1)
    S = evals.clamp_min(0).sqrt()
    keep = S > 1e-12 * S[:, :1].clamp_min(torch.finfo(torch.float64).tiny)
    Vt = torch.matmul(W.transpose(1, 2), B) / torch.where(keep, S, torch.ones_like(S))[:, :, None]
    Vt = Vt * keep[:, :, None]
    U, V = W, Vt.transpose(1, 2)
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
        _check_pairing(self.pairing)
        A = _as_matrix(A)
        with _threads_for(A):
            du, dv = _degrees(A[None])
            sp = _Spectrum.compute(A[None], du, dv, self._needed_rank(), self.n_iter,
                                   [check_random_state(self.random_state)], ks=[self.n_clusters])
            self._set_labels(*self._fit_spectrum(sp)[0], sp, 0)
        return self

    def _needed_rank(self) -> int:
        k = self.n_clusters
        return max(self.n_components or (k if isinstance(k, (int, np.integer)) else 2), 2)

    def _fit_spectrum(self, sp: "_Spectrum") -> List[Tuple[np.ndarray, np.ndarray]]:
        """Labels ``(rows, cols)`` of every copy in ``sp``, each drawing its KMeans seed from its own rng."""
        k = self.n_clusters
        _check_k(k, sp)
        ncomp = min(self.n_components or k, sp.m_live, sp.n_live)
        gens = [torch.Generator().manual_seed(int(rng.randint(2**31 - 1))) for rng in sp.rngs]
        n_init = max(1, int(self.n_init))
        if self.pairing == "independent":  # Algorithm 1: KMeans on the rows of U_k and V_k themselves
            U, V = sp.U[:, sp.live_r, :ncomp].float().cpu(), sp.V[:, sp.live_c, :ncomp].float().cpu()
            ones = torch.ones(n_init, ncomp)
            r_lab, r_in = batched_kmeans(U, k, ones, gens, max_iter=_MAX_ITER, tol=_TOL)
            c_lab, c_in = batched_kmeans(V, k, ones, gens, max_iter=_MAX_ITER, tol=_TOL)
            return [(_scatter(_best_inertia(r_lab[c], r_in[c]), sp.live_r), _scatter(_best_inertia(c_lab[c], c_in[c]), sp.live_c))
                    for c in range(sp.n_copies)]
        rows, cols = self._paired_candidates(sp, k, ncomp, n_init, gens)
        out = []
        for c in range(sp.n_copies):
            r, col = _choose(sp, c, rows[c], cols[c], k)
            out.append((_scatter(r, sp.live_r), _scatter(col, sp.live_c)))
        return out

    def _set_labels(self, rows: np.ndarray, cols: np.ndarray, sp: "_Spectrum", c: int) -> "BSGC":
        k = self.n_clusters
        self.row_labels_, self.column_labels_ = rows, cols
        self.rows_ = rows[None, :] == np.arange(k)[:, None]
        self.columns_ = cols[None, :] == np.arange(k)[:, None]
        ncomp = min(self.n_components or k, sp.m_live, sp.n_live)
        self.singular_values_ = sp.S[c, :ncomp].double().cpu().numpy()
        return self

    def _paired_candidates(self, sp: "_Spectrum", k: int, ncomp: int, n_init: int, gens):
        """All KMeans restarts of all copies at once: candidate labels (C, T, m_live) and (C, T, n_live)."""
        # Scaled embedding without the trivial first vector (constant after scaling); keep it only if alone.
        first = 1 if ncomp > 1 else 0
        Zu = (sp.du_is[:, sp.live_r, None] * sp.U[:, sp.live_r, first:ncomp]).float().cpu()
        Zv = (sp.dv_is[:, sp.live_c, None] * sp.V[:, sp.live_c, first:ncomp]).float().cpu()
        dims = [ncomp - first]
        n_log = 1 + int(np.ceil(np.log2(k)))
        if self.n_components is None and n_log < ncomp:  # Dhillon's embedding: vectors 2..1+ceil(log2 k)
            dims.append(n_log - 1)
        mask = torch.zeros(len(dims) * n_init, Zu.shape[2])
        for e, d in enumerate(dims):
            mask[e * n_init:(e + 1) * n_init, :d] = 1.0
        kw = dict(max_iter=_MAX_ITER_PAIRED, tol=_TOL_PAIRED)
        if self.pairing == "joint":
            labels, _ = batched_kmeans(torch.cat([Zu, Zv], 1), k, mask, gens, **kw)
            rows, cols = labels[:, :, : Zu.shape[1]], labels[:, :, Zu.shape[1]:]
        else:
            rows, _ = batched_kmeans(Zu, k, mask, gens, **kw)
            cols, _ = batched_kmeans(Zv, k, mask, gens, **kw)
        return rows.numpy(), cols.numpy()

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
    _check_pairing(pairing)
    ints = [k for k in ks if isinstance(k, (int, np.integer))]
    A = _as_matrix(A)
    out = {}
    with _threads_for(A):
        du, dv = _degrees(A[None])
        sp = _Spectrum.compute(A[None], du, dv, max(max(ints) if ints else 2, 2), n_iter,
                               [check_random_state(random_state)], ks=ks)
        for k in ks:
            est = BSGC(int(k), pairing=pairing, n_init=n_init, n_iter=n_iter, random_state=random_state)
            out[int(k)] = est._set_labels(*est._fit_spectrum(sp)[0], sp, 0)
    return out


def fit_batch(
    As: ArrayLike, k: int, random_states: Sequence[int], *, pairing: str = "joint", n_init: int = 10,
    n_iter: Optional[int] = None, n_components: Optional[int] = None,
) -> List[BSGC]:
    """Fit :class:`BSGC` on each of ``C`` matrices of one shape at once, e.g. the shuffled copies of a layer.

    ``As[c]`` is clustered with ``BSGC(k, ..., random_state=random_states[c])``, and the result is
    the same as that estimator's own ``fit(As[c])``: every copy draws its random numbers from its
    own seed, and copies whose isolated nodes differ are clustered in separate groups. What is
    shared is the work: the SVDs, the KMeans restarts and the candidate scoring of all copies run in
    the same batched tensor operations, which removes the per-call overhead that dominates small
    layers. Memory is that of ``As`` plus a few vectors per copy.

    Parameters
    ----------
    As : array of shape (C, m, n)
    k : int
    random_states : sequence of C ints
    pairing, n_init, n_iter, n_components
        As in :class:`BSGC`.

    Returns
    -------
    list of C fitted :class:`BSGC`

    Examples
    --------
    >>> A = np.abs(np.random.default_rng(0).standard_normal((3, 20, 12)))
    >>> fits = fit_batch(A, 2, [1, 2, 3])
    >>> all(np.array_equal(f.row_labels_, BSGC(2, random_state=s).fit(a).row_labels_)
    ...     for f, s, a in zip(fits, [1, 2, 3], A))
    True
    """
    _check_pairing(pairing)
    As = torch.as_tensor(As).detach()
    if As.dim() != 3:
        raise ClusteringError(f"fit_batch needs a (copies, m, n) stack of matrices, got shape {tuple(As.shape)}")
    if len(random_states) != len(As):
        raise ClusteringError(f"fit_batch needs one random_state per matrix: {len(random_states)} for {len(As)}")
    As = torch.stack([_as_matrix(a) for a in As]) if not torch.is_floating_point(As) or As.dtype not in (
        torch.float32, torch.float64) else As
    with _threads_for(As):
        return _fit_groups(As, k, random_states, pairing, n_init, n_iter, n_components)


def _fit_groups(As, k, random_states, pairing, n_init, n_iter, n_components) -> List[BSGC]:
    du, dv = _degrees(As)
    groups: Dict[bytes, List[int]] = {}
    live = torch.cat([du > 0, dv > 0], 1).cpu().numpy()
    for c in range(len(As)):
        groups.setdefault(live[c].tobytes(), []).append(c)
    fits: List[Optional[BSGC]] = [None] * len(As)
    for idx in groups.values():
        ests = [BSGC(k, pairing=pairing, n_components=n_components, n_init=n_init, n_iter=n_iter, random_state=random_states[c])
                for c in idx]
        sel = torch.as_tensor(idx)
        sp = _Spectrum.compute(As[sel] if len(idx) < len(As) else As, du[sel], dv[sel], ests[0]._needed_rank(), n_iter,
                               [check_random_state(random_states[c]) for c in idx], ks=[k])
        for j, (rows, cols) in enumerate(ests[0]._fit_spectrum(sp)):
            fits[idx[j]] = ests[j]._set_labels(rows, cols, sp, j)
    return fits


def _threads_for(A: torch.Tensor):
    """One torch thread for a small CPU problem (below ``_SMALL_ELEMENTS`` entries in all), else no change.

    Every operation on a small layer is a few microseconds of work; with several threads each one
    also waits for the others, which on busy cores (other processes, or joblib workers) made BSGC
    on a 256 x 256 layer 10-50x slower.
    """
    if A.is_cuda or A.numel() >= _SMALL_ELEMENTS:
        return contextlib.nullcontext()
    return one_thread()


def _check_pairing(pairing) -> None:
    if pairing not in PAIRINGS:
        raise ClusteringError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")


class _Spectrum:
    """``C`` validated similarity matrices of one shape and one set of isolated nodes, their degrees,
    and the leading SVD of each normalised matrix; ``rngs[c]`` is copy ``c``'s random state."""

    def __init__(self, A, du_is, dv_is, live_r, live_c, rngs):
        self.A, self.du_is, self.dv_is, self.live_r, self.live_c = A, du_is, dv_is, live_r, live_c
        self.m_live, self.n_live = int(live_r.sum()), int(live_c.sum())
        self.n_copies, self.rngs = len(A), rngs
        self.U = self.S = self.V = None

    @classmethod
    def compute(cls, A: torch.Tensor, du, dv, rank: int, n_iter: Optional[int], rngs, *, ks) -> "_Spectrum":
        sp = cls(A, _inv_sqrt(du), _inv_sqrt(dv), (du[0] > 0).cpu().numpy(), (dv[0] > 0).cpu().numpy(), rngs)
        for k in ks:
            _check_k(k, sp)
        gens = [torch.Generator().manual_seed(int(rng.randint(2**31 - 1))) for rng in rngs]
        rank = min(rank, sp.m_live, sp.n_live)
        if n_iter is None:
            n_iter = _N_ITER_SMALL if A[0].numel() < _SMALL_ELEMENTS else _N_ITER_LARGE
        sp.U, sp.S, sp.V = _normalized_svd(A, du, dv, sp.du_is, sp.dv_is, rank, n_iter, gens)
        return sp


def _check_k(k, sp: _Spectrum) -> None:
    if not isinstance(k, (int, np.integer)) or k < 2 or k > min(sp.m_live, sp.n_live):
        m, n = sp.A.shape[1:]
        raise ClusteringError(
            f"k={k} is out of range for a {m}x{n} layer with {sp.m_live} non-isolated "
            f"inputs and {sp.n_live} non-isolated outputs: use 2 <= k <= {min(sp.m_live, sp.n_live)}"
        )


def _normalized_svd(A, du, dv, du_is, dv_is, rank: int, n_iter: int, gens):
    """Leading ``rank`` singular triplets of :math:`D_U^{-1/2} A D_V^{-1/2}` for each copy, without forming it.

    ``A`` is (C, m, n) and the degree vectors (C, m) / (C, n). The top pair is known exactly
    (:math:`\\sigma_1 = 1`, :math:`u_1 = \\sqrt{d_U / T}`, :math:`v_1 = \\sqrt{d_V / T}`, ``T`` the
    total weight) and deflated; the rest comes from an exact SVD of the small deflated matrix, or a
    randomized one of the deflated operator applied implicitly. Returns U (C, m, rank), S (C, rank),
    V (C, n, rank).
    """
    total = du.double().sum(-1, keepdim=True)
    u1 = (du.double() / total).sqrt().to(A.dtype)
    v1 = (dv.double() / total).sqrt().to(A.dtype)
    C, m, n = A.shape
    q = min(rank - 1 + _OVERSAMPLE, m, n)
    if m * n <= _EXACT_MAX_ELEMENTS and (min(m, n) <= _EXACT_MAX_SIDE or q >= min(m, n)):
        with one_thread():  # small problems: threads only add synchronisation (50x slower on busy cores)
            An = (du_is.double()[:, :, None] * A.double() * dv_is.double()[:, None, :]
                  - u1.double()[:, :, None] * v1.double()[:, None, :])
            U, S, V = _gram_svd(An)
        U, S, V = U.to(A.dtype), S.to(A.dtype), V.to(A.dtype)
    else:
        def matmul(X):
            return du_is[:, :, None] * torch.matmul(A, dv_is[:, :, None] * X) - u1[:, :, None] * torch.matmul(v1[:, None, :], X)

        def rmatmul(Y):
            AtY = torch.matmul((du_is[:, :, None] * Y).transpose(1, 2), A).transpose(1, 2)
            return dv_is[:, :, None] * AtY - v1[:, :, None] * torch.matmul(u1[:, None, :], Y)

        U, S, V = _range_svd(matmul, rmatmul, A, q, n_iter, gens)
    one = torch.ones(C, 1, dtype=A.dtype, device=A.device)
    return (torch.cat([u1[:, :, None], U[:, :, : rank - 1]], 2), torch.cat([one, S[:, : rank - 1]], 1),
            torch.cat([v1[:, :, None], V[:, :, : rank - 1]], 2))


def _degrees(A: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column sums (C, m) and (C, n) of the matrices ``A`` (C, m, n), checking that they are finite
    and non-negative (two cheap passes).

    Finite sums of non-negative entries imply finite entries, so the element-wise test only runs
    when a sum is not finite.
    """
    du, dv = A.sum(2), A.sum(1)
    if not (bool(torch.isfinite(du).all()) and bool(torch.isfinite(dv).all())):
        if not bool(torch.isfinite(A).all()):
            raise InvalidWeightsError("the similarity matrix contains NaN or inf; check the model's weights")
        du, dv = A.double().sum(2), A.double().sum(1)  # finite entries whose float32 sum overflowed
    if A.numel() and float(A.amin()) < 0:
        raise ClusteringError("the similarity matrix must be non-negative: pass |W|, not W")
    return du, dv


def _best_inertia(labels: torch.Tensor, inertia: torch.Tensor) -> np.ndarray:
    return labels[int(inertia.argmin())].numpy().astype(np.int64)


def _canonical(labels: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Labellings (T, N) renumbered in order of first appearance, and the maps ``f`` (T, k) with
    ``canonical[t] = f[t][labels[t]]`` (labels that do not occur come last)."""
    T, N = labels.shape
    present = labels[:, None, :] == np.arange(k)[None, :, None]  # (T, k, N)
    first = np.where(present.any(-1), present.argmax(-1), N)
    order = np.argsort(first, axis=1, kind="stable")
    f = np.empty((T, k), dtype=np.int64)
    np.put_along_axis(f, order, np.arange(k)[None, :].repeat(T, 0), axis=1)
    return np.take_along_axis(f, labels, axis=1), f


def _column_products(A: torch.Tensor, labels: np.ndarray, k: int) -> np.ndarray:
    """``(A o A) @ onehot(labels_t)`` (T, m, k) for ``T`` column labellings, each distinct partition computed once."""
    canon, maps = _canonical(labels, k)
    first, inverse = _unique_rows(canon)
    P = _squared_products(A, canon[first], k, "cols").numpy()  # (U, m, k)
    return np.stack([P[u][:, f] for u, f in zip(inverse, maps)])


def _unique_rows(a: np.ndarray) -> Tuple[List[int], List[int]]:
    """Indices of the first occurrence of each distinct row of ``a`` (in order), and each row's
    position among them (``np.unique(axis=0)`` without its slow structured-array sort)."""
    a = np.ascontiguousarray(a)
    seen: dict = {}
    first, inverse = [], []
    for t in range(len(a)):
        key = a[t].tobytes()
        if key not in seen:
            seen[key] = len(first)
            first.append(t)
        inverse.append(seen[key])
    return first, inverse


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


def _choose(sp: "_Spectrum", copy: int, rows: np.ndarray, cols: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pair, repair and pick one of copy ``copy``'s ``T`` candidate clusterings (``rows`` (T, m_live), ``cols`` (T, n_live)).

    Each candidate's column clusters are matched to its row clusters (Hungarian, on the mass matrix).
    A cluster left without rows then gets the row whose move loses the least within-cluster mass
    (taken from a cluster with at least two rows), and likewise for columns, so that every cluster
    of every candidate has both rows and columns when ``k <= min(m_live, n_live)``. The kept
    candidate is the first one that is full (all k clusters with rows and columns), then has the
    highest E. Candidates that are the same partition as an earlier one (up to renumbering) are
    dropped first: they would score the same and lose the tie.
    """
    key = np.concatenate([_canonical(rows, k)[0], _canonical(cols, k)[0]], 1)
    first = _unique_rows(key)[0]
    rows, cols = rows[first], cols[first]
    T = len(rows)
    full_r, full_c = _scatter_batch(rows, sp.live_r, 0), _scatter_batch(cols, sp.live_c, 0)
    P = _column_products(sp.A[copy], full_c, k)  # (T, m, k): mass of each row in each column cluster
    index = torch.from_numpy(full_r)[:, :, None].expand(P.shape)
    masses = torch.zeros(T, k, k, dtype=torch.float64).scatter_add_(1, index, torch.from_numpy(P)).numpy()
    total = float(P[0].sum())
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
        Q = _squared_products(sp.A[copy], _scatter_batch(np.stack([cands[t][0] for t in need_cols]), sp.live_r, 0), k, "rows")
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
