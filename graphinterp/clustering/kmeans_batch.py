"""KMeans for many small problems at once: ``C`` point sets (copies of a layer) x ``R`` restarts each.

BSGC clusters a few thousand points in at most ``k`` dimensions, ten or twenty times over, and the
shuffle null does so for every shuffled copy of a layer. Each of those problems is tiny, so the cost
is call overhead and memory passes, not arithmetic: here every restart of every copy runs in the same
array operations. Each copy draws its random numbers from its own ``torch.Generator``, in the same
order whether it runs alone or in a batch, and the arithmetic of one restart does not depend on the
others, so a copy's result is the same in a batch of one as in a batch of many.

The algorithm is scikit-learn's: greedy k-means++ (``2 + log k`` local trials per centre), then
Lloyd iterations until the centres move less than ``tol`` times the mean variance of the points. A
restart that has converged is frozen (its centres no longer change) while the others go on.

It runs on the CPU in numpy, on one BLAS thread, with a few torch operations where torch is faster
(the in-place row minimum and comparison, 2x numpy's speed; the draw's cumulative sum, 5x): on the 20
restarts of a 1024 x 1024 Gaussian layer's 2048 points (k = 4) 1.8 ms where the same algorithm in
torch took 3.1 ms. MKL (torch) multiplies a (R k, d + 1) by a (d + 1, N) matrix 2.5x slower than
OpenBLAS (numpy) for d + 1 <= 4, and numpy's calls cost a fraction of torch's. Every distance is one product of the augmented centres
:math:`[-2c, \\|c\\|^2]` with the augmented points :math:`[z; 1]`, whose values do not depend on how
many centres share the product (OpenBLAS rounds a row alike whatever the number of rows: a property of its
kernels, not a guarantee of BLAS, which the batch tests of tests/test_bsgc.py check on each platform they run
on); every restart's cluster sums are a product of their own, so that a restart's rounding is the same alone
and in a batch.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from graphinterp.common.errors import ClusteringError
from graphinterp.common.threads import single_threaded_blas

__all__ = ["batched_kmeans", "one_thread"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block; the previous count is always restored.

    Examples
    --------
    >>> n = torch.get_num_threads()
    >>> with one_thread():
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == n
    True
    """
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def batched_kmeans(
    Z: torch.Tensor, k: int, mask: torch.Tensor, generators: Sequence[torch.Generator], *,
    max_iter: int = 300, tol: float = 1e-4, inertia: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """KMeans on ``C`` point sets ``Z`` (C, N, d), ``R = len(mask)`` restarts each, on the CPU.

    Parameters
    ----------
    Z : tensor of shape (C, N, d)
        float32 or float64, finite (else a ``ClusteringError``); computed in that precision.
    k : int
    mask : tensor of shape (R, d) of 0/1
        The coordinates restart ``r`` sees (restarts on embeddings of different dimension share
        one computation).
    generators : sequence of C torch.Generator
        Copy ``c``'s random draws come from ``generators[c]`` only.
    max_iter, tol
        Lloyd iterations at most, and the stopping threshold on the squared centre shift relative to
        the mean per-coordinate variance of the copy's points (scikit-learn's criterion).
    inertia : bool, default True
        Compute the inertias; the paired modes of BSGC rank restarts by score and pass False, which
        skips a float64 pass over the distances (the labels are the same either way).

    Returns
    -------
    labels : (C, R, N) int64
    inertia : (C, R) float64, or None when ``inertia=False``

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> Z = torch.tensor([[[0.0], [0.1], [5.0], [5.1]]])
    >>> labels, inertia = batched_kmeans(Z, 2, torch.ones(3, 1), [g])
    >>> labels.shape, bool((labels[0, :, 0] != labels[0, :, 2]).all()), round(float(inertia.min()), 3)
    (torch.Size([1, 3, 4]), True, 0.01)
    """
    Zn = np.ascontiguousarray(Z.detach().cpu().numpy())
    C, N, d = Zn.shape
    if not np.isfinite(Zn).all():  # inf made every distance NaN: labels 0 and NaN inertias, without a word
        raise ClusteringError(f"KMeans points contain NaN or inf ({int((~np.isfinite(Zn)).sum())} coordinates of "
                              f"{Zn.size}); cluster finite points")
    mask = mask.detach().cpu().numpy().astype(Zn.dtype)
    with one_thread(), single_threaded_blas():
        Z1t = np.empty((C, d + 1, N), Zn.dtype)  # the points as columns, with a row of ones
        Z1t[:, :d] = Zn.transpose(0, 2, 1)
        Z1t[:, d] = 1
        tol_abs = tol * Z1t[:, :d].var(-1).mean(-1) if N > 1 else np.zeros(C, Zn.dtype)  # rows: 5x faster than Zn's
        znorm = _masked_norms(Z1t, mask)
        centres = _lloyd(Z1t, _kmeans_pp(Zn, Z1t, znorm, k, mask, generators), mask, max_iter, tol_abs)
        values, labels = _assign(Z1t, centres)
        if not inertia:
            return labels, None
        znorm = _masked_norms(Z1t.astype(np.float64), mask.astype(np.float64))
        total = np.maximum(values.astype(np.float64) + znorm, 0).sum(-1)
    return labels, torch.from_numpy(total)


def _masked_norms(Z1t: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Squared norms (C, R, N) of the points ``Z1t`` (C, d + 1, N) in each restart's coordinates ``mask`` (R, d).

    One product per copy (numpy broadcasts ``mask`` over the copies), so a copy's norms are the same alone
    and in a batch; folding the copies into the rows of one product rounded differently for different
    batch sizes once d was large (9 at k = 10).
    """
    return np.matmul(mask, np.square(Z1t[:, :-1]))


def _augmented(P: np.ndarray) -> np.ndarray:
    """``[-2 p, |p|^2]`` (..., d + 1) of points ``P`` (..., d): its product with ``[z; 1]`` is
    :math:`\\|p - z\\|^2 - \\|z\\|^2`."""
    out = np.empty(P.shape[:-1] + (P.shape[-1] + 1,), P.dtype)
    np.multiply(P, -2, out=out[..., :-1])
    np.square(P).sum(-1, out=out[..., -1])
    return out


def _cross(P: np.ndarray, Z1t: np.ndarray, out: np.ndarray) -> np.ndarray:
    """:math:`\\|p - z\\|^2 - \\|z\\|^2` (C, R, t, N) of ``t`` points ``P`` (C, R, t, d) per restart, already masked,
    and every point ``z``, written into ``out`` (C, R, t, N)."""
    C, R, t, d = P.shape
    np.matmul(_augmented(P).reshape(C, R * t, d + 1), Z1t, out=out.reshape(C, R * t, -1))
    return out


def _draw(weights: np.ndarray, n: int, g: torch.Generator) -> np.ndarray:
    """``n`` indices (R, n) per row of ``weights`` (R, N), drawn with probability proportional to the weight
    (a row of zeros: uniformly), by inverting the row's cumulative sum at uniform draws from ``g``."""
    w = torch.from_numpy(weights)
    cum = w.cumsum(-1, dtype=torch.float64)  # torch's: numpy's cumsum along rows is 5x slower
    total = cum[:, -1:]
    if not (total.numpy() > 0).all():  # every point sits on a centre
        cum = torch.where(total > 0, cum, torch.arange(1, w.shape[1] + 1, dtype=torch.float64))
        total = cum[:, -1:]
    target = torch.rand(w.shape[0], n, generator=g, dtype=torch.float64).mul_(total)
    return torch.searchsorted(cum, target, right=True).clamp_max_(w.shape[1] - 1).numpy()


def _kmeans_pp(Z: np.ndarray, Z1t: np.ndarray, znorm: np.ndarray, k: int, mask: np.ndarray, generators) -> np.ndarray:
    """Greedy k-means++ centres (C, R, k, d) in each restart's coordinates.

    The distances are kept less the points' squared norms ``znorm`` (C, R, N), which every trial shares:
    the best trial (lowest sum of distances to the nearest centre) is the same, and the norms are added
    back once per centre, for the draw's weights, instead of to every trial's distances.
    """
    (C, N, d), R = Z.shape, len(mask)
    n_trials = 2 + int(math.log(k))
    ci, ri = np.arange(C)[:, None], np.arange(R)[None, :]
    centres = np.zeros((C, R, k, d), Z.dtype)
    first = np.stack([torch.randint(N, (R,), generator=g).numpy() for g in generators])  # (C, R)
    centres[:, :, 0] = Z[ci, first] * mask
    buf = np.empty((C, R, n_trials, N), Z.dtype)  # the trials' distances, one buffer for every centre
    near = _cross(centres[:, :, :1], Z1t, buf[:, :, :1])[:, :, 0].copy()  # (C, R, N): to the nearest centre, less znorm
    weights = np.empty_like(near)
    # the element-wise passes and sums over (C, R, T, N) in torch, on numpy's memory: 2-3x faster than numpy's
    dist, w, norms = torch.from_numpy(buf), torch.from_numpy(weights), torch.from_numpy(znorm)
    for i in range(1, k):
        torch.add(torch.from_numpy(near), norms, out=w).clamp_min_(0)  # squared distances to the nearest centre
        cand = np.stack([_draw(weights[c], n_trials, g) for c, g in enumerate(generators)])  # (C, R, T)
        cc = Z[ci[:, :, None], cand] * mask[:, None, :]  # (C, R, T, d)
        _cross(cc, Z1t, buf)
        torch.minimum(dist, torch.from_numpy(near)[:, :, None, :], out=dist)  # (C, R, T, N)
        best = dist.sum(-1).argmin(-1).numpy()  # (C, R)
        near = buf[ci, ri, best]
        centres[:, :, i] = cc[ci, ri, best]
    return centres


def _assign(Z1t: np.ndarray, centres: np.ndarray) -> Tuple[np.ndarray, torch.Tensor]:
    """Nearest centre of every point in every restart: ``(values, labels)`` (C, R, N); ties go to the lower label.

    ``Z1t`` (C, d + 1, N) are the points with a row of ones. ``values`` is the squared distance less the
    point's squared norm. The labels are ``k - max_c([d_c == min] * (k - c))``, in place in torch (on the
    20 restarts of a 1024 x 1024 Gaussian layer 0.1 ms, where numpy's ``argmin`` over the centres took
    0.8 ms and torch's 4.8 ms). A point at NaN distance from every centre (no centre attains the
    minimum, so the maximum is 0) gets label 0, as ``(k - top) * min(top, 1)``.
    """
    C, R, k, d = centres.shape
    dist = torch.from_numpy(np.matmul(_augmented(centres).reshape(C, R * k, d + 1), Z1t)).view(C, R, k, -1)
    values = dist.amin(2, keepdim=True)
    weights = torch.arange(k, 0, -1, dtype=dist.dtype)[:, None]  # k - c
    top = dist.eq_(values).mul_(weights).amax(2)  # in place
    return values.squeeze(2).numpy(), (k - top).mul_(top.clamp_max(1)).long()  # top = 0 (NaN): k * 0


def _lloyd(Z1t: np.ndarray, centres: np.ndarray, mask: np.ndarray, max_iter: int, tol_abs: np.ndarray) -> np.ndarray:
    """Lloyd iterations of every restart; a restart is frozen once its centres move less than ``tol_abs``.

    Only the restarts still moving are computed: restarts converge after very different numbers of
    iterations (on a heavy-tailed layer most in 2, one in 11), so each iteration works on the
    active ``(copy, restart)`` pairs alone, with their copy's points gathered (no gather for one copy,
    or while every pair moves). The distances come from one product for all pairs of a copy (their
    values do not depend on the number of pairs); the nearest centres are marked 1 in place (ties:
    all of them), and each pair's cluster sums and counts are its own product of the points (with
    their row of ones) by its marks, whose rounding does depend on how many pairs share a product.
    """
    (C, R, k, d), N = centres.shape, Z1t.shape[2]
    out = centres.reshape(C * R, k, d).copy()  # final centres, written back when a pair stops moving
    masks = np.broadcast_to(mask[None, :, None, :], (C, R, 1, d)).reshape(C * R, 1, d)
    tols = np.repeat(tol_abs, R)
    buf = np.empty(C * R * k * N, Z1t.dtype)  # the distances, then the marks, of the moving pairs
    active, cur = np.arange(C * R), out  # the moving pairs and their centres (P, k, d)
    for _ in range(max_iter):
        P = len(active)
        dist = buf[: P * k * N].reshape(P, k, N)
        W = _augmented(cur)
        if C == 1:  # every pair shares the points: one product, no gather
            np.matmul(W.reshape(P * k, d + 1), Z1t[0], out=dist.reshape(P * k, N))
            pts = Z1t[0]
        elif P == C * R:  # all still moving: one product per copy, no gather
            np.matmul(W.reshape(C, R * k, d + 1), Z1t, out=dist.reshape(C, R * k, N))
            pts = Z1t[:, None]  # (C, 1, d + 1, N), broadcast over the copy's restarts below
        else:
            pts = Z1t[active // R]  # (P, d + 1, N)
            np.matmul(W, pts, out=dist)
        marks = torch.from_numpy(dist)
        marks.eq_(marks.amin(1, keepdim=True))  # in place: 1 where a centre is nearest
        # (P, d + 1, k): coordinate sums and counts, one product per pair (the marks laid out as pts is)
        marked = dist.reshape(C, R, k, N).transpose(0, 1, 3, 2) if pts.ndim == 4 else dist.transpose(0, 2, 1)
        sums = np.matmul(pts, marked).reshape(P, d + 1, k)
        counts = sums[:, d:].transpose(0, 2, 1)  # (P, k, 1)
        new = np.where(counts > 0, sums[:, :d].transpose(0, 2, 1) / np.maximum(counts, 1), cur)
        new *= masks
        moving = np.square(new - cur).sum((1, 2)) > tols
        if moving.all():  # nothing to write back or drop (the common case in the first iterations)
            cur = new
            continue
        out[active] = new  # the pairs' final (or latest) centres
        keep = np.flatnonzero(moving)
        active, cur, masks, tols = active[keep], new[keep], masks[keep], tols[keep]
        if len(active) == 0:
            break
    if cur is not out:  # pairs still moving after max_iter (none ran with max_iter=0)
        out[active] = cur
    return out.reshape(C, R, k, d)
