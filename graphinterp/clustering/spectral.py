"""The spectral half of BSGC: normalisation and the leading SVD of the normalised matrix (the matrix itself
is read and checked by :mod:`graphinterp.clustering.matrix_checks`).

Algorithm 1 normalises the similarity matrix, :math:`\\tilde A = D_U^{-1/2} A D_V^{-1/2}`, and takes its
rank-k SVD :math:`\\tilde A \\approx U_k \\Sigma_k V_k^T`. Here the SVD is a randomized range finder
(Halko et al. 2011) on the normalised operator applied implicitly (``A`` is never scaled, copied or
cast), with the exactly known top singular pair (:math:`\\sigma_1 = 1`, :math:`u_1 \\propto \\sqrt{d_U}`,
:math:`v_1 \\propto \\sqrt{d_V}`) left out (deflated, or projected out of the randomized iterates); small
matrices get an exact SVD through the Gram matrix.
:class:`_Spectrum` holds ``C`` validated matrices of one shape with their degrees and SVDs, so that
:func:`graphinterp.clustering.bsgc_batch.fit_batch` and :func:`~graphinterp.clustering.bsgc_batch.fit_k_range`
share one computation between copies or between values of k.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from graphinterp.clustering.kmeans_batch import one_thread
from graphinterp.common.errors import ClusteringError

__all__ = ["normalize_bipartite", "randomized_svd"]

_OVERSAMPLE = 10
_SMALL_ELEMENTS = 1 << 20  # default power iterations: _N_ITER_SMALL below this many entries, else _N_ITER_LARGE
_N_ITER_SMALL, _N_ITER_LARGE = 7, 4
_EXACT_MAX_SIDE = 96  # normalised SVD computed exactly when the smaller side has at most this many nodes
_EXACT_MAX_ELEMENTS = 1 << 21  # ... and the matrix is at most this big (the exact path copies it)
_PANEL = 16  # thin factors are padded with zero columns to a multiple of this (see _times)


def normalize_bipartite(A: torch.Tensor, *, out: Optional[torch.Tensor] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return :math:`D_U^{-1/2} A D_V^{-1/2}` and the two inverse square-root degree vectors.

    Nodes of degree zero get an inverse square-root degree of 0 (not inf), so they embed at the
    origin instead of producing NaN. ``out``, a tensor of ``A``'s shape, dtype and device, receives
    the normalised matrix instead of a new one: normalising many matrices of one shape into one
    buffer spares a fresh allocation each time (on Linux a freshly mapped 4 MB matrix costs about
    a thousand page faults, as much time as the normalisation itself).

    Examples
    --------
    >>> An, du, dv = normalize_bipartite(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    >>> du
    tensor([0.7071, 0.0000])
    >>> buf = torch.empty(2, 2)
    >>> normalize_bipartite(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), out=buf)[0] is buf
    True
    """
    du_is, dv_is = _inv_sqrt(A.sum(1)), _inv_sqrt(A.sum(0))
    if out is None:
        return du_is[:, None] * A * dv_is[None, :], du_is, dv_is
    if out.shape != A.shape or out.dtype != A.dtype or out.device != A.device:
        raise ValueError(f"out must have A's shape, dtype and device ({tuple(A.shape)}, {A.dtype}, {A.device}), got "
                         f"({tuple(out.shape)}, {out.dtype}, {out.device})")
    torch.mul(A, du_is[:, None], out=out)
    return out.mul_(dv_is[None, :]), du_is, dv_is


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
        U, S, V = _range_svd(lambda X: _times(A3, X), lambda Y: _times_t(Y, A3), A3, q, n_iter,
                             [generator or torch.Generator().manual_seed(0)])
    return U[0, :, :rank].to(A.dtype), S[0, :rank].to(A.dtype), V[0, :, :rank].to(A.dtype)


def _each(P: torch.Tensor, Q: torch.Tensor, *, batched: bool = True) -> torch.Tensor:
    """``P[c] @ Q[c]`` for every copy ``c``, with the same values as for that copy alone.

    A batched product rounds differently for a batch of one and a batch of several, so every copy
    gets its own product: a batched product of one (``batched=True``, the small factors of the SVD)
    or ``mm`` (``batched=False``, the products with the layer, where ``mm`` is up to 1.4x faster).
    MKL's kernels for a transposed thin factor also round differently when its first element is not
    64-byte aligned, as a copy's slice of a batch often is; such a factor (the smaller operand) is
    copied to fresh, aligned memory first. The QRs and eigendecompositions of the SVD likewise run
    one 2-D matrix at a time. A copy's values are then bit-identical whether it is clustered alone
    (:meth:`BSGC.fit`) or with others (:func:`~graphinterp.clustering.bsgc_batch.fit_batch`); checked
    by tests/test_bsgc.py on float32 and float64 layers.
    """
    if len(P) == 1:
        return torch.matmul(P, Q) if batched else torch.mm(P[0], Q[0])[None]
    if batched:
        return torch.cat([torch.matmul(_aligned(p, q)[None], _aligned(q, p)[None]) for p, q in zip(P, Q)])
    return torch.stack([torch.mm(_aligned(p, q), _aligned(q, p)) for p, q in zip(P, Q)])


def _aligned(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``x``, or a copy of it in fresh (64-byte aligned) memory when it is misaligned and no bigger than ``other``."""
    if x.is_cuda or x.data_ptr() % 64 == 0 or x.numel() > other.numel():
        return x
    return x.clone()


def _times(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``A[c] @ X[c]`` for matrices ``A`` (C, m, n) and thin ``X`` (C, n, q), copy by copy (:func:`_each`).

    For a float32 ``A`` not on CUDA and ``q >= 12``, ``X`` gets zero columns up to a multiple of
    ``_PANEL``: MKL's kernels for a tall matrix times 13 or 14 columns are about half as fast as for
    16 (measured at 1024 and 4096), and from 12 columns on the padded product has exactly the same
    values (checked for q = 12..32 on six shapes, one and two threads; below 12 it rounds
    differently, so narrower ``X`` is not padded). Float64 is never padded: there 16 columns are no
    faster than 13, and other widths change the rounding.
    """
    q = X.shape[2]
    pad = _padded_width(A, q) - q
    if pad:
        X = torch.cat([X, X.new_zeros(X.shape[0], X.shape[1], pad)], 2)
    out = _each(A, X, batched=False)
    return out[:, :, :q] if pad else out


def _padded_width(A: torch.Tensor, q: int) -> int:
    """The width :func:`_times` pads ``q`` thin columns to for a product with ``A`` (``q`` itself when it does not pad)."""
    return q + (-q % _PANEL) if A.dtype == torch.float32 and not A.is_cuda and q >= 12 else q


def _times_t(Y: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``A[c]^T @ Y[c]`` (C, n, q) for ``A`` (C, m, n) and thin ``Y`` (C, m, q), as ``(Y^T A)^T`` (``A`` read row-major)."""
    return _each(Y.transpose(1, 2), A, batched=False).transpose(1, 2)


def _range_svd(matmul, rmatmul, A: torch.Tensor, q: int, n_iter: int, generators: Sequence[torch.Generator],
               known: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
    """Randomized SVD of the batched operator ``X -> matmul(X)`` (adjoint ``rmatmul``) of ``A``'s shape (C, m, n).

    ``q`` vectors; copy ``c``'s random start comes from ``generators[c]``. ``known``, unit vectors
    ``(u, v)`` of shapes (C, m) and (C, n), is a singular pair of the operator to leave out: every
    orthonormalisation is the QR of ``[u, Y]`` with its first column dropped, so the iterates stay
    orthogonal to ``u`` (and ``v``) and the result is the SVD of the operator less that pair,
    without deflating it in every product.
    """
    omega = torch.stack([torch.randn(A.shape[2], q, generator=g, dtype=A.dtype) for g in generators]).to(A.device)

    def orth(X: torch.Tensor, side: int) -> torch.Tensor:  # thin QR of (C, m, q): small, one thread on the CPU
        if known is not None:
            X = torch.cat([known[side][:, :, None], X], 2)
        if X.is_cuda:
            Q = torch.linalg.qr(X)[0]
        else:
            with one_thread():
                Q = torch.stack([torch.linalg.qr(x)[0] for x in X])  # copy by copy: see _each
        return Q if known is None else Q[:, :, 1:]

    Q = orth(matmul(omega), 0)
    for _ in range(n_iter):
        Q = orth(rmatmul(Q), 1)
        Q = orth(matmul(Q), 0)
    B = rmatmul(Q).transpose(1, 2)  # the small (q, n) matrices Q^T op
    if B.is_cuda:
        Ub, S, V = _gram_svd(B)
    else:
        with one_thread():
            Ub, S, V = _gram_svd(B)
    return _each(Q.double(), Ub).to(A.dtype), S.to(A.dtype), V.to(A.dtype)


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
    G = _each(B, B.transpose(1, 2))
    if G.is_cuda:
        evals, W = torch.linalg.eigh(G)
    else:  # copy by copy (one 2-D call each, alone or in a batch): see _each
        evals, W = (torch.stack(t) for t in zip(*(torch.linalg.eigh(g) for g in G)))
    evals, W = evals.flip(-1), W.flip(-1)
    S = evals.clamp_min(0).sqrt()
    keep = S > 1e-12 * S[:, :1].clamp_min(torch.finfo(torch.float64).tiny)
    Vt = _each(W.transpose(1, 2), B) / torch.where(keep, S, torch.ones_like(S))[:, :, None]
    Vt = Vt * keep[:, :, None]
    U, V = W, Vt.transpose(1, 2)
    return (V, S, U) if flip else (U, S, V)



def _threads_for(A: torch.Tensor):
    """One torch thread for a small CPU matrix (below ``_SMALL_ELEMENTS`` entries), else no change.

    Every operation on a small layer is a few microseconds of work; with several threads each one
    also waits for the others, which on busy cores (other processes, or joblib workers) made BSGC
    on a 256 x 256 layer 10-50x slower. For a stack (C, m, n) one matrix's size decides, so that a
    copy in a batch runs on the threads of its own fit (threads change rounding, so labels too).
    """
    if A.is_cuda or A.shape[-2:].numel() >= _SMALL_ELEMENTS:
        return contextlib.nullcontext()
    return one_thread()


def _generators(rngs: Sequence[np.random.RandomState]) -> List[torch.Generator]:
    """One seeded ``torch.Generator`` per copy, each seed drawn from that copy's ``RandomState``."""
    return [torch.Generator().manual_seed(int(rng.randint(2**31 - 1))) for rng in rngs]


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
        gens = _generators(rngs)
        rank = min(rank, sp.m_live, sp.n_live)
        if n_iter is None:
            n_iter = _N_ITER_SMALL if A[0].numel() < _SMALL_ELEMENTS else _N_ITER_LARGE
        sp.U, sp.S, sp.V = _normalized_svd(A, du, dv, sp.du_is, sp.dv_is, rank, n_iter, gens)
        return sp


def _check_k(k, sp: _Spectrum) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ClusteringError(f"k must be an integer >= 2, got {k!r}")
    if k < 2 or k > min(sp.m_live, sp.n_live):
        m, n = sp.A.shape[1:]
        if min(sp.m_live, sp.n_live) < 2:
            raise ClusteringError(
                f"a {m}x{n} layer with {sp.m_live} non-isolated inputs and {sp.n_live} non-isolated outputs cannot "
                "be clustered (at least 2 of each are needed" + ("; all its weights are zero, e.g. a classifier head "
                "initialised to zero)" if sp.m_live == sp.n_live == 0 else ")"))
        raise ClusteringError(
            f"k={k} is out of range for a {m}x{n} layer with {sp.m_live} non-isolated "
            f"inputs and {sp.n_live} non-isolated outputs: use 2 <= k <= {min(sp.m_live, sp.n_live)}"
        )


def _normalized_svd(A, du, dv, du_is, dv_is, rank: int, n_iter: int, gens):
    """Leading ``rank`` singular triplets of :math:`D_U^{-1/2} A D_V^{-1/2}` for each copy, without forming it.

    ``A`` is (C, m, n) and the degree vectors (C, m) / (C, n). The top pair is known exactly
    (:math:`\\sigma_1 = 1`, :math:`u_1 = \\sqrt{d_U / T}`, :math:`v_1 = \\sqrt{d_V / T}`, ``T`` the
    total weight) and left out: the rest comes from an exact SVD of the small deflated matrix, or a
    randomized one of the normalised operator applied implicitly, its iterates kept orthogonal to the
    top pair (:func:`_range_svd`'s ``known``). Returns U (C, m, rank), S (C, rank), V (C, n, rank).
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
            return du_is[:, :, None] * _times(A, dv_is[:, :, None] * X)

        def rmatmul(Y):
            return dv_is[:, :, None] * _times_t(du_is[:, :, None] * Y, A)

        # q up to the width _times pads a float32 product to anyway: the extra vectors cost no product
        # time and make the leading ones more accurate
        if _padded_width(A, q) != q:
            q = min(_padded_width(A, q), m - 1, n - 1)
        U, S, V = _range_svd(matmul, rmatmul, A, q, n_iter, gens, known=(u1, v1))
        # singular values at rounding level (sigma_1 = 1): their vectors are noise, zeros as in _gram_svd
        null = S < 100 * torch.finfo(A.dtype).eps
        if bool(null.any()):
            U, V = U * ~null[:, None, :], V * ~null[:, None, :]
    one = torch.ones(C, 1, dtype=A.dtype, device=A.device)
    return (torch.cat([u1[:, :, None], U[:, :, : rank - 1]], 2), torch.cat([one, S[:, : rank - 1]], 1),
            torch.cat([v1[:, :, None], V[:, :, : rank - 1]], 2))

