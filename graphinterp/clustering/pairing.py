"""The pairing half of BSGC: KMeans restarts as candidates, row and column clusters matched, one kept.

Algorithm 1 clusters the rows of :math:`U_k` and, separately, the rows of :math:`V_k` with two
*independent* KMeans runs. Row cluster ``c`` and column cluster ``c`` then have nothing to do with each
other, and on a layer that was not trained against that very clustering the within-cluster share of
weight is no better than a random partition's. graphinterp therefore pairs the two sides; the three
``pairing`` modes of :class:`graphinterp.clustering.bsgc.BSGC` are:

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
    Algorithm 1 verbatim: KMeans (k-means++, ``n_init`` restarts, lowest inertia kept, numbered as the
    first restart that found that partition) on the rows of
    :math:`U_k` and, separately, on the rows of :math:`V_k` (the first k singular vectors of
    :math:`\\tilde A`, unscaled); no pairing and no E-based choice.

Choice among restarts (``"joint"`` and ``"matched"``, :func:`_rank_key`): every candidate is ranked by
the tuple ``(full, score)`` and the largest wins, ties (scores within 1e-12) going to the earlier
restart. ``full`` is True when every one of the k clusters has at least one row and one column, so a
full candidate beats any candidate with an empty side whatever their scores; among full candidates (or
among all, if none is full) the highest normalised score :math:`(E - E_{rand}) / (1 - E_{rand})` wins:
E is the share of squared similarity inside the paired clusters (the paper's clusterability) and
:math:`E_{rand}` the E of a random partition with the candidate's cluster sizes, the score that every
report leads with. Ranking by E alone, as graphinterp did until 2026-12-07, rewards one giant cluster:
on the 32 layers of the shared pretrained models (k = 2..6, 160 fits) the kept candidate then scored
below scikit-learn's in 54 fits (by up to 0.19); ranked by score, in 2 (by up to 0.019; 6 of 480 fits
with seeds 0-2, by up to 0.021). Every candidate's E comes from its ``k x k`` mass matrix
:math:`R^T (A \\circ A) C`: the column sums of all candidates in one matrix product of :math:`A \\circ A`
(squared once, or block by block above 2**21 entries) with the indicators of each candidate's first
``k - 1`` column clusters and a column of ones (the last cluster is the total less the others), then
the row sums of all candidates in a second, small product (:mod:`graphinterp.clustering.mass`).
Identical candidate clusterings are scored once.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch

from graphinterp.clustering.kmeans_batch import batched_kmeans
from graphinterp.clustering.mass import (candidate_masses, canonical, chance_share, layer_square, matching,
                                        normalized_score, packed_products, scatter_batch, squared_products,
                                        unique_rows, unpack_products)
from graphinterp.clustering.spectral import _Spectrum

__all__ = ["PAIRINGS", "fit_spectrum"]

PAIRINGS = ("joint", "matched", "independent")

_MAX_ITER = 300  # Lloyd iterations per restart (scikit-learn's default)
_TOL = 1e-4  # ... and relative centre shift (scikit-learn's defaults), for "independent"
_TOL_PAIRED = 3e-2  # looser for the paired modes: their restarts are candidates ranked by score, not inertia
# (on the shared models' layers as good as 1e-2: 6 of 480 fits below scikit-learn's score against 8; Gaussian
# layers need fewer iterations)
_MAX_ITER_PAIRED = 300
_Z_MAX = 2.0 ** 40  # embedding coordinates above this are rescaled before KMeans in float32 (_float32_embedding)
#: scores this close (relative) tie, by the layer's precision: candidates' masses are summed in it
_TIE = {torch.float64: 1e-12, torch.float32: 1e-6}


def _best_inertia(labels: torch.Tensor, inertia: torch.Tensor, k: int) -> np.ndarray:
    """The restarts' (R, N) labels with the lowest inertia, numbered as the first restart that found that partition.

    Restarts that converge to one partition number its clusters differently, and their inertias
    may differ by rounding alone; Algorithm 1's unpaired E depends on the numbering, so the
    numbering kept is that of the first such restart (ties in the partition go to the earlier restart).
    """
    labels = labels.numpy()
    canon = canonical(labels, k)[0]
    same = (canon == canon[int(inertia.argmin())]).all(1)
    return labels[int(np.flatnonzero(same)[0])].astype(np.int64)


def _choose(sp: _Spectrum, copy: int, rows: np.ndarray, cols: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pair, repair and pick one of copy ``copy``'s ``T`` candidate clusterings (``rows`` (T, m_live), ``cols`` (T, n_live)).

    Each candidate's column clusters are matched to its row clusters (Hungarian, on the mass matrix).
    A cluster left without rows then gets the row whose move loses the least within-cluster mass
    (taken from a cluster with at least two rows), and likewise for columns, so that every cluster
    of every candidate has both rows and columns when ``k <= min(m_live, n_live)``. The kept
    candidate is the first with the largest :func:`_rank_key`. Candidates that are the same
    partition as an earlier one (up to renumbering) are dropped first: they would score the same and
    lose the tie. Only the kept candidate's labels are built.
    """
    canon_r = canonical(rows, k)[0]
    canon_c, maps_c = canonical(cols, k)
    first = unique_rows(np.concatenate([canon_r, canon_c], 1))[0]
    rows, cols, canon_c, maps_c = rows[first], cols[first], canon_c[first], maps_c[first]
    T = len(rows)
    row_sizes, own_col_sizes = _sizes(rows, k), _sizes(cols, k)
    empty_r, empty_c = (row_sizes == 0).any(1), (own_col_sizes == 0).any(1)
    square = layer_square(sp.A[copy])  # A o A once, for the candidates and any repair (None for big layers)
    canon_full = scatter_batch(canon_c, sp.live_c, 0)
    first_c, which = unique_rows(canon_full)  # each distinct column labelling's products computed once
    packed = packed_products(sp.A[copy], canon_full[first_c], k, "cols", square)
    masses = candidate_masses(packed, scatter_batch(rows, sp.live_r, 0), np.asarray(which), k)  # canonical columns
    masses = np.take_along_axis(masses, maps_c[:, None, :], 2)  # columns in each candidate's own labels
    total = float(masses[0].sum())
    scale = 1.0 / total if total > 0 else 0.0
    new_labels = np.stack([matching(masses[t]) for t in range(T)])  # (T, k): column cluster b -> row cluster
    E = masses[np.arange(T)[:, None], new_labels, np.arange(k)].sum(1) * scale
    col_sizes = np.zeros((T, k), dtype=np.int64)
    np.put_along_axis(col_sizes, new_labels, own_col_sizes, 1)  # in the matched labels
    repaired = {}
    for t in np.flatnonzero(empty_r | empty_c):
        r, c = rows[t], new_labels[t][cols[t]]
        if empty_r[t]:  # repair the rows, given the matched columns
            Pt = np.empty((sp.m_live, k))
            Pt[:, new_labels[t]] = unpack_products(packed, which[t], k)[:, maps_c[t]][sp.live_r]
            r = r.copy()
            E[t] += _repair(r, Pt, k) * scale
        if empty_c[t]:  # and the columns, given the (repaired) rows
            Q = squared_products(sp.A[copy], scatter_batch(r[None], sp.live_r, 0), k, "rows", square)
            Q = Q.numpy()[0, sp.live_c]
            E[t] += _repair(c, Q, k) * scale
        repaired[t] = (r, c)
        row_sizes[t], col_sizes[t] = np.bincount(r, minlength=k), np.bincount(c, minlength=k)
    full, score = _rank_key(row_sizes, col_sizes, E)
    t = _first_best(full, score, _TIE.get(sp.A.dtype, 1e-6))
    return repaired[t] if t in repaired else (rows[t], new_labels[t][cols[t]])


def _first_best(full: np.ndarray, score: np.ndarray, rel_tol: float = 1e-12) -> int:
    """The first candidate with the largest ``(full, score)``; scores within rounding (``rel_tol``) of the best tie.

    Two restarts can reach one partition only after matching or repair, with scores that differ by
    rounding alone; the earlier one is kept, not whichever rounded higher. The rounding is that of the
    layer's precision (:data:`_TIE`): from float32 masses three candidates of one partition scored
    0.6455692151, ...132 and ...073.

    Examples
    --------
    >>> _first_best(np.array([True, True, True]), np.array([0.5, 0.7 + 1e-16, 0.7]))
    1
    >>> _first_best(np.array([True, True]), np.array([0.6455692132, 0.6455692151]), 1e-6)
    0
    >>> _first_best(np.array([False, True]), np.array([0.9, 0.1]))
    1
    """
    pool = full if full.any() else np.ones_like(full)
    best = score[pool].max()
    return int(np.flatnonzero(pool & (score >= best - rel_tol * max(1.0, abs(best))))[0])


def _sizes(labels: np.ndarray, k: int) -> np.ndarray:
    """Cluster sizes (T, k) of ``T`` labellings (T, N) in ``0..k-1``, in one bincount."""
    T = len(labels)
    return np.bincount((labels + k * np.arange(T)[:, None]).ravel(), minlength=T * k).reshape(T, k)


def _rank_key(row_sizes: np.ndarray, col_sizes: np.ndarray, E: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The rank of each candidate, ``(full, score)``: full ones first, then the highest score; ties to the earlier.

    ``full`` (every one of the k clusters has a row and a column) comes first, so any full candidate
    beats any candidate with an empty side, whatever their scores. Then the highest normalised score
    :math:`(E - E_{rand}) / (1 - E_{rand})` wins, with :math:`E_{rand}` the E of a random partition with
    the candidate's cluster sizes (:func:`~graphinterp.clustering.mass.chance_share`), not the highest
    E: E alone rewards one giant cluster (on a heavy-tailed 1024 x 1024 layer the highest-E candidate
    had clusters of 1021, 1, 1 and 1 nodes a side, E 0.994 and a score of -0.03, below chance).

    Parameters
    ----------
    row_sizes, col_sizes : arrays of shape (T, k)
        Every candidate's cluster sizes, columns in the labels matched to the rows.
    E : array of shape (T,)

    Returns
    -------
    full : bool array (T,)
    score : float array (T,)

    Examples
    --------
    >>> full, score = _rank_key(np.array([[1, 1], [2, 0]]), np.array([[1, 1], [1, 1]]), np.array([0.6, 0.9]))
    >>> full.tolist(), score.round(2).tolist()
    ([True, False], [0.2, 0.8])
    """
    full = (row_sizes > 0).all(1) & (col_sizes > 0).all(1)
    return full, normalized_score(E, chance_share(row_sizes, col_sizes))


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


def _scatter(sub_labels: np.ndarray, live: np.ndarray) -> np.ndarray:
    out = np.full(live.size, -1, dtype=np.int64)
    out[live] = sub_labels
    return out


def fit_spectrum(sp: _Spectrum, k: int, ncomp: int, n_init: int, gens: List[torch.Generator], pairing: str,
                 n_components: Optional[int]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Labels ``(rows, cols)`` of every copy of ``sp``: KMeans restarts, then the pairing and choice above.

    ``ncomp`` singular vectors are used (``n_components`` is the estimator's setting: when it is None,
    the paired modes also run Dhillon's smaller embedding); copy ``c``'s KMeans draws come from
    ``gens[c]``. Isolated nodes get label -1.
    """
    if pairing == "independent":  # Algorithm 1: KMeans on the rows of U_k and V_k themselves
        U, V = sp.U[:, sp.live_r, :ncomp].float().cpu(), sp.V[:, sp.live_c, :ncomp].float().cpu()
        ones = torch.ones(n_init, ncomp)
        r_lab, r_in = batched_kmeans(U, k, ones, gens, max_iter=_MAX_ITER, tol=_TOL)
        c_lab, c_in = batched_kmeans(V, k, ones, gens, max_iter=_MAX_ITER, tol=_TOL)
        return [(_scatter(_best_inertia(r_lab[c], r_in[c], k), sp.live_r), _scatter(_best_inertia(c_lab[c], c_in[c], k), sp.live_c))
                for c in range(sp.n_copies)]
    rows, cols = _paired_candidates(sp, k, ncomp, n_init, gens, pairing, n_components)
    out = []
    for c in range(sp.n_copies):
        r, col = _choose(sp, c, rows[c], cols[c], k)
        out.append((_scatter(r, sp.live_r), _scatter(col, sp.live_c)))
    return out


def _live(X: torch.Tensor, live: np.ndarray) -> torch.Tensor:
    """The rows (dim 1) of ``X`` (C, N, d) of the non-isolated nodes; ``X`` itself when none is isolated."""
    return X if live.all() else X[:, live]


def _float32_embedding(Zu: torch.Tensor, Zv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The scaled embeddings ``Zu`` (C, m, d) and ``Zv`` (C, n, d) as float32 on the CPU, for KMeans.

    A node of tiny degree next to one of huge degree (the layer's degrees spanning more than about
    1e77) has a coordinate :math:`u_i / \\sqrt{d_i}` beyond float32's range: it became inf, KMeans
    NaN and the labels arbitrary. A copy whose largest coordinate exceeds ``_Z_MAX`` is divided by a
    power of two that brings it near 1, both sides alike, which KMeans does not depend on (as
    :func:`graphinterp.clustering.matrix_checks._degrees` rescales the matrix); others are not changed.
    """
    top = torch.maximum(Zu.abs().amax((1, 2)), Zv.abs().amax((1, 2))).double()
    big = top > _Z_MAX
    if bool(big.any()):
        e = torch.where(big, torch.frexp(top)[1], torch.zeros_like(top, dtype=torch.int32)).double()
        Zu, Zv = (Z.double() * torch.exp2(-e)[:, None, None] for Z in (Zu, Zv))
    return Zu.float().cpu(), Zv.float().cpu()


def _paired_candidates(sp: _Spectrum, k: int, ncomp: int, n_init: int, gens, pairing: str, n_components: Optional[int]):
    """All KMeans restarts of all copies at once: candidate labels (C, T, m_live) and (C, T, n_live)."""
    # Scaled embedding without the trivial first vector (constant after scaling); keep it only if alone.
    first = 1 if ncomp > 1 else 0
    Zu, Zv = _float32_embedding(_live(sp.du_is[:, :, None] * sp.U[:, :, first:ncomp], sp.live_r),
                                _live(sp.dv_is[:, :, None] * sp.V[:, :, first:ncomp], sp.live_c))
    dims = [ncomp - first]
    n_log = 1 + int(np.ceil(np.log2(k)))
    if n_components is None and n_log < ncomp:  # Dhillon's embedding: vectors 2..1+ceil(log2 k)
        dims.append(n_log - 1)
    mask = torch.zeros(len(dims) * n_init, Zu.shape[2])
    for e, d in enumerate(dims):
        mask[e * n_init:(e + 1) * n_init, :d] = 1.0
    kw = dict(max_iter=_MAX_ITER_PAIRED, tol=_TOL_PAIRED, inertia=False)  # ranked by score, not inertia
    if pairing == "joint":
        labels, _ = batched_kmeans(torch.cat([Zu, Zv], 1), k, mask, gens, **kw)
        rows, cols = labels[:, :, : Zu.shape[1]], labels[:, :, Zu.shape[1]:]
    else:
        rows, _ = batched_kmeans(Zu, k, mask, gens, **kw)
        cols, _ = batched_kmeans(Zv, k, mask, gens, **kw)
    return rows.numpy(), cols.numpy()
