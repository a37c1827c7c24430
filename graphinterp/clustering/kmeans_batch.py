"""KMeans for many small problems at once: ``C`` point sets (copies of a layer) x ``R`` restarts each.

BSGC clusters a few thousand points in at most ``k`` dimensions, ten or twenty times over, and the
shuffle null does so for every shuffled copy of a layer. Each of those problems is tiny, so the cost
is Python and dispatch overhead, not arithmetic: here every restart of every copy runs in the same
tensor operations. Each copy draws its random numbers from its own ``torch.Generator``, in the same
order whether it runs alone or in a batch, and the arithmetic of one restart does not depend on the
others, so a copy's result is the same in a batch of one as in a batch of many.

The algorithm is scikit-learn's: greedy k-means++ (``2 + log k`` local trials per centre), then
Lloyd iterations until the centres move less than ``tol`` times the mean variance of the points. A
restart that has converged is frozen (its centres no longer change) while the others go on. The
small operations run on one thread: on a machine with few, busy cores torch's OpenMP threads made
them 50x slower.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

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
    """KMeans on ``C`` point sets ``Z`` (C, N, d), ``R = len(mask)`` restarts each.

    Parameters
    ----------
    Z : tensor of shape (C, N, d)
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
    with one_thread():
        Z = Z.contiguous()
        mask = mask.to(Z.dtype)
        N = Z.shape[1]
        tol_abs = tol * Z.var(1, unbiased=False).mean(-1) if N > 1 else torch.zeros(len(Z), dtype=Z.dtype)
        Zt = Z.transpose(1, 2).contiguous()
        centres = _lloyd(Z, Zt, _kmeans_pp(Z, Zt, k, mask, generators), mask, max_iter, tol_abs)
        values, labels = _assign(Zt, centres)
        if not inertia:
            return labels, None
        znorm = _masked_norms(Zt.double(), mask.double())  # (C, R, N)
        total = (values.double() + znorm).clamp_min(0).sum(-1)
    return labels, total


def _masked_norms(Zt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared norms (C, R, N) of the points ``Zt`` (C, d, N) in each restart's coordinates ``mask`` (R, d).

    Summed element-wise over the d coordinates, in order, not as ``(Z * Z) @ mask.T``: that product folds
    the copies into its rows, and BLAS rounds a (C N, d) product differently for different C, so a copy's
    norms (and then its k-means++ centres) differed alone and in a batch once d was large (9 at k = 10).
    One coordinate at a time, so that no (C, R, N, d) temporary is made, each read as a contiguous row
    (from the points' (N, d) layout a strided read made this 3x slower).
    """
    sq = Zt.square()
    out = sq[:, None, 0, :] * mask[None, :, 0, None]
    for j in range(1, Zt.shape[1]):
        out.addcmul_(sq[:, None, j, :], mask[None, :, j, None])
    return out


def _sqdist(P: torch.Tensor, Zt: torch.Tensor, znorm: torch.Tensor) -> torch.Tensor:
    """Squared distances (C, R, t, N) of ``t`` points ``P`` (C, R, t, d) per restart, already masked, to all points."""
    C, R, t, d = P.shape
    # one product per copy over all its restarts' points (a broadcast matmul copied the points R times)
    cross = torch.bmm(P.reshape(C, R * t, d), Zt).view(C, R, t, -1)  # (C, R, t, N)
    # znorm - 2 cross + |p|^2 in two passes, not three: -2 * cross is exact (a power of two), so adding
    # it with alpha=-2 rounds once, exactly as the former cross.mul_(-2).add_(znorm) did
    dist = torch.add(znorm[:, :, None, :], cross, alpha=-2, out=cross)
    return dist.add_((P * P).sum(-1, keepdim=True))


def _kmeans_pp(Z: torch.Tensor, Zt: torch.Tensor, k: int, mask: torch.Tensor, generators) -> torch.Tensor:
    """Greedy k-means++ centres (C, R, k, d) in each restart's coordinates."""
    (C, N, d), R = Z.shape, len(mask)
    znorm = _masked_norms(Zt, mask)  # (C, R, N), contiguous: the broadcast adds in _sqdist read it 4-5x faster
    n_trials = 2 + int(math.log(k))
    ci, ri = torch.arange(C)[:, None], torch.arange(R)[None, :]
    centres = torch.zeros(C, R, k, d, dtype=Z.dtype)
    first = torch.stack([torch.randint(N, (R,), generator=g) for g in generators])  # (C, R)
    centres[:, :, 0] = Z[ci, first] * mask
    closest = _sqdist(centres[:, :, :1], Zt, znorm)[:, :, 0].clamp_min_(0)  # (C, R, N)
    for i in range(1, k):
        total = closest.sum(-1, keepdim=True)
        # a restart whose points all sit on its centres draws uniformly
        weights = closest if bool((total > 0).all()) else torch.where(total > 0, closest, torch.ones_like(closest))
        cand = torch.stack([torch.multinomial(weights[c], n_trials, replacement=True, generator=g)
                            for c, g in enumerate(generators)])  # (C, R, T)
        cc = Z[ci[:, :, None], cand] * mask[None, :, None, :]  # (C, R, T, d)
        dist = _sqdist(cc, Zt, znorm)
        torch.minimum(dist, closest[:, :, None, :], out=dist)  # (C, R, T, N)
        best = dist.sum(-1).argmin(-1)  # (C, R)
        closest = dist[ci, ri, best].clamp_min_(0)
        centres[:, :, i] = cc[ci, ri, best]
    return centres


def _distances(Zt: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """:math:`\\|c\\|^2 - 2 z \\cdot c` (squared distance less the point's norm), shape (C, R, k, N)."""
    C, R, k, d = centres.shape
    flat = centres.reshape(C, R * k, d)
    dist = torch.baddbmm((flat * flat).sum(-1, keepdim=True), flat, Zt, alpha=-2)
    return dist.view(C, R, k, -1)


def _assign(Zt: torch.Tensor, centres: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every point in every restart: ``(values, labels)`` (C, R, N); ties go to the lower label.

    The minimum over the centres, then the lowest centre that attains it, as
    ``k - max_c([d_c == min] * (k - c))``, in place: on the 20 restarts of a 1024 x 1024 Gaussian
    layer 0.22 ms, where a loop of masked writes over the centres took 0.6 ms, ``min(dim)`` 0.66 ms
    and ``argmin(dim)`` 4.8 ms. A point at NaN distance from every centre (no centre attains the
    minimum, so the maximum is 0) gets label 0, as ``(k - top) * min(top, 1)``: arithmetic, where a
    boolean mask (``masked_fill``) or an integer ``% k`` took 1.4x and 2x as long.
    """
    dist = _distances(Zt, centres)
    k = dist.shape[2]
    values = dist.amin(2, keepdim=True)
    weights = torch.arange(k, 0, -1, dtype=dist.dtype)[:, None]  # k - c
    top = dist.eq_(values).mul_(weights).amax(2)  # in place
    return values.squeeze(2), (k - top).mul_(top.clamp_max(1)).long()  # top = 0 (NaN): k * 0


def _lloyd(Z: torch.Tensor, Zt: torch.Tensor, centres: torch.Tensor, mask: torch.Tensor, max_iter: int,
           tol_abs: torch.Tensor) -> torch.Tensor:
    """Lloyd iterations of every restart; a restart is frozen once its centres move less than ``tol_abs``.

    Only the restarts still moving are computed: restarts converge after very different numbers of
    iterations (on a heavy-tailed layer most in 2, one in 11), so each iteration works on the
    active ``(copy, restart)`` pairs alone, with their copy's points gathered (no gather for one copy,
    or while every pair moves). A column of ones beside the points gives each centre's count in the
    same product as its sum. A restart's arithmetic does not depend on the others, so the result is
    the same as iterating all of them. On the CPU the bookkeeping on the tiny ``(pairs, k, d)``
    arrays (new centres, their shift, the active set) runs in numpy, writing into memory torch
    allocated (64-byte aligned, so that MKL rounds the next product alike); each torch call on them
    cost a few microseconds, as much as the arithmetic.
    """
    (C, d, N), (R, k) = Zt.shape, centres.shape[1:3]
    out = centres.reshape(C * R, k, d).clone()  # final centres, written back when a pair stops moving
    masks = mask[None].expand(C, R, d).reshape(C * R, 1, d)
    tols = tol_abs[:, None].expand(C, R).reshape(-1)
    Z1 = torch.cat([Z, torch.ones(C, N, 1, dtype=Z.dtype)], 2)  # a column of ones: the counts come with the sums
    # (C, d + 1, N), contiguous: the sums as Z1^T onehot^T are 6x faster than from the transposed view (2048
    # points, 20 restarts) and 3x faster than onehot Z1
    Z1t = Z1.transpose(1, 2).contiguous()
    cpu = not Z.is_cuda
    if cpu:
        masks, tols = masks.numpy(), tols.numpy()
    active, cur, P = torch.arange(C * R), out, C * R  # the moving pairs, their centres (P, k, d), masks and tolerances
    for _ in range(max_iter):
        norms = (cur * cur).sum(-1, keepdim=True)
        if C == 1:  # every pair shares the points: one matrix product, no gather
            dist = torch.addmm(norms.view(P * k, 1), cur.view(P * k, d), Zt[0], alpha=-2).view(P, k, N)
        elif P == C * R:  # all still moving: one product per copy, no gather
            dist = torch.baddbmm(norms.view(C, R * k, 1), cur.view(C, R * k, d), Zt, alpha=-2).view(P, k, N)
        else:
            copy = active // R
            dist = torch.baddbmm(norms, cur, Zt[copy], alpha=-2)
        one_hot = dist.eq_(dist.amin(1, keepdim=True))  # in place: 1 where a centre is nearest (ties: all of them)
        if C == 1:  # (P, k, d + 1): coordinate sums and counts
            sums = torch.mm(Z1t[0], one_hot.view(P * k, N).T).T.reshape(P, k, d + 1)
        elif P == C * R:
            sums = torch.bmm(Z1t, one_hot.view(C, R * k, N).transpose(1, 2)).transpose(1, 2).reshape(P, k, d + 1)
        else:
            sums = torch.bmm(Z1t[copy], one_hot.transpose(1, 2)).transpose(1, 2)
        if cpu:  # division, selection and the 0/1 mask round exactly as in torch (IEEE)
            s, c, new = sums.numpy(), cur.numpy(), torch.empty_like(cur)
            counts = s[..., d:]
            np.multiply(np.where(counts > 0, s[..., :d] / np.maximum(counts, 1), c), masks, out=new.numpy())
            moving = np.square(new.numpy() - c).sum((1, 2)) > tols
        else:
            counts = sums[..., d:]
            new = torch.where(counts > 0, sums[..., :d] / counts.clamp_min(1), cur).mul_(masks).contiguous()
            moving = (new - cur).square_().sum((1, 2)) > tols
        if bool(moving.all()):  # nothing to write back or drop (the common case in the first iterations)
            cur = new
            continue
        out[active] = new  # the pairs' final (or latest) centres
        if cpu:
            keep = np.flatnonzero(moving)
            active = torch.from_numpy(active.numpy()[keep])
            cur = torch.empty(len(keep), k, d, dtype=new.dtype)
            np.take(new.numpy(), keep, axis=0, out=cur.numpy())
            masks, tols = masks[keep], tols[keep]
        else:
            active, cur, masks, tols = active[moving], new[moving], masks[moving], tols[moving]
        P = len(active)
        if P == 0:
            break
    if cur is not out:  # pairs still moving after max_iter (none ran with max_iter=0)
        out[active] = cur
    return out.view(C, R, k, d)
