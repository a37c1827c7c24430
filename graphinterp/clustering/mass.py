"""Squared similarity mass between row and column clusters: the sums that score and pair BSGC candidates.

For a layer's similarity matrix ``A`` (``m x n``) and a clustering of its rows and columns, the mass
matrix :math:`M = R^T (A \\circ A) C` (``k x k``, with ``R`` and ``C`` the one-hot cluster indicators)
holds the squared similarity between every row cluster and every column cluster; its diagonal over
its total is E. Here: the mass matrix of one clustering (:func:`cluster_mass`), the column relabelling
that maximises its diagonal (:func:`match_clusters`, Hungarian), and the products of many candidate
labellings at once (:func:`packed_products`, :func:`candidate_masses`), with ``A`` squared once (block
by block for big layers) and every distinct partition computed once.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from graphinterp.clustering.spectral import _padded_width

__all__ = ["cluster_mass", "match_clusters", "matching", "canonical", "unique_rows", "layer_square", "squared_products",
           "packed_products", "unpack_products", "candidate_masses", "scatter_batch", "chance_share", "normalized_score"]

_CHUNK_ELEMENTS = 1 << 21  # A o A is kept whole up to this many entries, else squared in blocks of this size


def cluster_mass(squared: torch.Tensor, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` matrix of the squared similarity between row cluster ``a`` and column cluster ``b``.

    One ``(m, n) @ (n, k)`` product; label ``-1`` (isolated) counts in no cluster.

    Examples
    --------
    >>> sq = torch.tensor([[4.0, 1.0], [0.0, 9.0]])
    >>> cluster_mass(sq, np.array([0, 1]), np.array([1, -1]), 2).tolist()
    [[0.0, 4.0], [0.0, 0.0]]
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    r = torch.as_tensor(np.where(rows >= 0, rows, k), device=squared.device)  # -1 -> spare bucket k
    c = torch.as_tensor(np.where(cols >= 0, cols, k), device=squared.device)
    one_hot = torch.nn.functional.one_hot
    mass = one_hot(r, k + 1).to(squared.dtype).T @ (squared @ one_hot(c, k + 1).to(squared.dtype))
    return mass[:k, :k].double().cpu().numpy()


def chance_share(row_sizes: np.ndarray, col_sizes: np.ndarray, m=None, n=None) -> np.ndarray:
    """E of a random partition with these cluster sizes, :math:`\\sum_c (r_c / m) (s_c / n)`, per clustering.

    ``row_sizes`` (..., k) and ``col_sizes`` (..., k) count the nodes with weight in each cluster; ``m``
    and ``n`` are the nodes with weight in the layer, by default the sizes' totals (more when some nodes
    with weight are in no cluster), taken as at least 1.

    Examples
    --------
    >>> chance_share(np.array([2, 2]), np.array([1, 1])).item()
    0.5
    >>> chance_share(np.array([[3, 1], [2, 2]]), np.array([[1, 1], [2, 0]])).tolist()
    [0.5, 0.5]
    >>> chance_share(np.array([2, 2]), np.array([1, 1]), m=8).item()  # four rows with weight in no cluster
    0.25
    """
    r = np.asarray(row_sizes, dtype=np.float64)
    c = np.asarray(col_sizes, dtype=np.float64)
    m = r.sum(-1) if m is None else np.asarray(m, dtype=np.float64)
    n = c.sum(-1) if n is None else np.asarray(n, dtype=np.float64)
    return (r * c).sum(-1) / (np.maximum(m, 1) * np.maximum(n, 1))


def normalized_score(E, E_random):
    """:math:`(E - E_{rand}) / (1 - E_{rand})`; 0 for chance, 1 for no weight between clusters.

    A float for floats, an array for arrays (element-wise); 0 where ``E_random`` is 1.

    Examples
    --------
    >>> normalized_score(0.75, 0.5)
    0.5
    >>> normalized_score(np.array([0.5, 1.0]), np.array([0.5, 1.0])).tolist()
    [0.0, 0.0]
    """
    E_arr, R_arr = np.asarray(E, dtype=np.float64), np.asarray(E_random, dtype=np.float64)
    out = np.where(R_arr < 1, (E_arr - R_arr) / np.where(R_arr < 1, 1.0 - R_arr, 1.0), 0.0)
    return float(out) if out.ndim == 0 else out


def matching(mass: np.ndarray) -> np.ndarray:
    """Column-cluster relabelling ``new[b]`` that maximises the within-cluster mass (Hungarian)."""
    row_ind, col_ind = linear_sum_assignment(-mass)
    new_label = np.empty(len(mass), dtype=np.int64)
    new_label[col_ind] = row_ind
    return new_label


def match_clusters(squared: torch.Tensor, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Relabel column clusters to maximise the within-cluster mass (Hungarian matching).

    ``squared`` is ``(m, n)``; ``rows``/``cols`` are labels in ``0..k-1`` (or -1 for isolated nodes).
    Returns the new column labels; row labels are unchanged.

    Examples
    --------
    >>> sq = torch.tensor([[0.0, 5.0], [5.0, 0.0]])
    >>> match_clusters(sq, np.array([0, 1]), np.array([0, 1]), 2).tolist()
    [1, 0]
    """
    cols = np.asarray(cols, dtype=np.int64)
    new_label = matching(cluster_mass(squared, rows, cols, k))
    return np.where(cols >= 0, new_label[np.maximum(cols, 0)], -1)


def canonical(labels: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Labellings (T, N) of labels in ``0..k-1`` renumbered in order of first appearance, and the maps
    ``f`` (T, k) with ``canonical[t] = f[t][labels[t]]`` (labels that do not occur come last).

    Examples
    --------
    >>> canon, f = canonical(np.array([[2, 2, 0], [0, 0, 1]]), 3)
    >>> canon.tolist(), f.tolist()
    ([[0, 0, 1], [0, 0, 1]], [[1, 2, 0], [0, 1, 2]])
    """
    T, N = labels.shape
    L = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    first = torch.full((T, k), N, dtype=torch.int64).scatter_reduce_(1, L, torch.arange(N).expand(T, N), "amin")
    order = first.argsort(dim=1, stable=True)
    f = torch.empty_like(order).scatter_(1, order, torch.arange(k).expand(T, k))
    return f.gather(1, L).numpy(), f.numpy()


def unique_rows(a: np.ndarray) -> Tuple[List[int], List[int]]:
    """Indices of the first occurrence of each distinct row of ``a`` (in order), and each row's
    position among them (``np.unique(axis=0)`` without its slow structured-array sort)."""
    a = _narrow(np.asarray(a))
    seen: dict = {}
    first, inverse = [], []
    for t in range(len(a)):
        key = a[t].tobytes()
        if key not in seen:
            seen[key] = len(first)
            first.append(t)
        inverse.append(seen[key])
    return first, inverse


def _narrow(a: np.ndarray) -> np.ndarray:
    """Integer ``a`` in the smallest signed type that holds its values (contiguous): equal rows stay
    equal and distinct rows distinct, and hashing 2048 labels as int8 is 4x faster than as int64."""
    if a.dtype.kind in "iu" and a.size:
        lo, hi = int(a.min()), int(a.max())
        for t, bits in ((np.int8, 7), (np.int16, 15), (np.int32, 31)):  # not np.iinfo: 10 us a call
            if -(1 << bits) <= lo and hi < 1 << bits:
                return a.astype(t)
    return np.ascontiguousarray(a)


def layer_square(A: torch.Tensor) -> Optional[torch.Tensor]:
    """``A o A`` in fresh (aligned) memory when ``A`` has at most ``_CHUNK_ELEMENTS`` entries, else None
    (:func:`packed_products` then squares it block by block): one square for all the products of a fit
    (the candidates' scores and any repair)."""
    if A.numel() > _CHUNK_ELEMENTS:
        return None
    return torch.mul(A, A, out=torch.empty(A.shape, dtype=A.dtype, device=A.device))


def squared_products(A: torch.Tensor, labels: np.ndarray, k: int, side: str, square=None) -> torch.Tensor:
    """``(A o A) @ onehot(labels_t)`` for ``T`` labellings of the columns (``side="cols"``, result (T, m, k)),
    or ``(A o A)^T @ onehot(labels_t)`` for labellings of the rows (``side="rows"``, result (T, n, k)).

    Float64; the products of :func:`packed_products`, unpacked.

    Examples
    --------
    >>> A = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
    >>> squared_products(A, np.array([[0, 1, 1]]), 2, "cols")[0].tolist()
    [[1.0, 4.0], [0.0, 10.0]]
    >>> squared_products(A, np.array([[1, 0]]), 2, "rows")[0].tolist()
    [[0.0, 1.0], [1.0, 4.0], [9.0, 0.0]]
    """
    packed = packed_products(A, labels, k, side, square)
    return torch.from_numpy(np.stack([unpack_products(packed, u, k) for u in range(len(labels))]))


class Packed(NamedTuple):
    """Products of ``A o A`` with ``U`` labellings, packed (:func:`packed_products`)."""

    values: np.ndarray  # (N, U (k - 1) + 1) float64: clusters 0..k-2 of each labelling in turn, then the totals
    has_last: np.ndarray  # (U,) bool: the labelling uses cluster k - 1 (else its products there are exactly 0)


def packed_products(A: torch.Tensor, labels: np.ndarray, k: int, side: str, square=None) -> Packed:
    """The products of :func:`squared_products`, packed: ``(N, T (k - 1) + 1)`` float64, clusters ``0..k-2`` of
    each labelling in turn, then the totals (row sums of ``A o A`` for ``side="cols"``, column sums for ``"rows"``).

    One matrix product with an indicator of the first ``k - 1`` clusters of every labelling and a column of
    ones: cluster ``k - 1`` is the total less the others (:func:`unpack_products`), so the product is a quarter
    narrower at k = 4 (its time grows with its width). ``square`` is ``A o A`` when the caller has it
    (:func:`layer_square`); otherwise ``A`` is squared block by block into a small buffer, never whole.

    Examples
    --------
    >>> A = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
    >>> packed = packed_products(A, np.array([[0, 1, 1], [1, 1, 0]]), 2, "cols")
    >>> packed.values.tolist(), packed.has_last.tolist()
    ([[1.0, 0.0, 5.0], [0.0, 9.0, 10.0]], [True, True])
    """
    if not A.is_contiguous() and A.T.is_contiguous():  # a transposed view: work on the row-major side
        return packed_products(A.T, labels, k, "rows" if side == "cols" else "cols",
                               None if square is None else square.T)
    T, N = labels.shape
    width = T * (k - 1) + 1
    # transposed (width, N), so that each comparison runs along the nodes; torch memory: aligned, so MKL rounds alike
    indicator = torch.zeros(_padded_width(A, width), N, dtype=A.dtype)
    ind, labels = indicator.numpy(), _narrow(labels)
    _one_hot_into(labels, k - 1, ind[: width - 1].reshape(T, k - 1, N))
    ind[width - 1] = 1.0
    indicator = indicator.to(A.device).T
    if square is not None:
        out = torch.mm(square, indicator) if side == "cols" else torch.mm(indicator.T, square).T
    else:
        out = _blockwise_products(A, indicator, side)
    return Packed(out.cpu().numpy()[:, :width].astype(np.float64), (labels == k - 1).any(1))


def candidate_masses(packed: Packed, rows: np.ndarray, which: np.ndarray, k: int) -> np.ndarray:
    """Mass matrices (T, k, k) of ``T`` candidates from packed column products.

    ``packed`` is :func:`packed_products` of ``U`` column labellings (``side="cols"``), ``rows`` (T, m) each
    candidate's row labels in ``0..k-1`` and ``which[t]`` the labelling its columns are. Each candidate's
    row sums are taken over its own ``k`` packed columns only (clusters ``0..k-2`` of its labelling and the
    totals), one ``bincount`` per column for all candidates (float64, rows in order); the last column
    cluster's mass is the total less the others, at least 0, and exactly 0 when the labelling does not use
    it. (Until 2026-12-07 one product of every candidate's row indicators with every packed column did
    ``U (k - 1) + 1`` columns of work per candidate where ``k`` are needed: 20 candidates of a 1024-row
    layer at k = 4, 0.31 ms then, 0.19 ms now.)

    Examples
    --------
    >>> A = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
    >>> packed = packed_products(A, np.array([[0, 1, 1]]), 2, "cols")
    >>> candidate_masses(packed, np.array([[0, 1], [0, 0]]), np.array([0, 0]), 2).tolist()
    [[[1.0, 4.0], [0.0, 10.0]], [[1.0, 14.0], [0.0, 0.0]]]
    """
    T, m = rows.shape
    total_col = packed.values.shape[1] - 1
    cols = np.empty((T, k), dtype=np.int64)  # candidate t's packed columns: its labelling's k - 1, then the totals
    cols[:, : k - 1] = which[:, None] * (k - 1) + np.arange(k - 1)
    cols[:, k - 1] = total_col
    dest = (np.asarray(rows, dtype=np.int64).T + k * np.arange(T)).ravel()  # (m T,): t k + rows[t, i], i-major
    G = np.stack([np.bincount(dest, np.take(packed.values, cols[:, b], axis=1).ravel(), T * k)
                  for b in range(k)], 1).reshape(T, k, k)  # G[t, a, b]: rows in cluster a, packed column cols[t, b]
    out = np.empty((T, k, k))
    out[:, :, : k - 1] = G[:, :, : k - 1]
    out[:, :, k - 1] = _last_cluster(G[:, :, k - 1], G[:, :, : k - 1].sum(2), packed.has_last[which][:, None])
    return out


def unpack_products(packed: Packed, u: int, k: int) -> np.ndarray:
    """Labelling ``u``'s products (N, k) from packed products (:func:`packed_products`)."""
    part = packed.values[:, u * (k - 1):(u + 1) * (k - 1)]
    last = _last_cluster(packed.values[:, -1], part.sum(1), packed.has_last[u])
    return np.concatenate([part, last[:, None]], 1)


def _one_hot_into(labels: np.ndarray, n: int, out: np.ndarray) -> None:
    """``out[t, c, i] = labels[t, i] == c`` for ``c < n``, written as numbers into ``out`` (T, n, N); each comparison
    runs along the nodes (contiguous), which is several times faster than one-hot rows of ``n`` entries."""
    np.equal(labels[:, None, :], np.arange(n, dtype=labels.dtype)[None, :, None], out=out, casting="unsafe")


def _last_cluster(total: np.ndarray, others: np.ndarray, used) -> np.ndarray:
    """Cluster ``k - 1``'s mass: the total less the other clusters', never below 0 (a difference of rounded
    sums), and exactly 0 where the labelling does not use the cluster: rounding noise there (+-1e-8 of a
    row's total in float32) steered the matching of an empty cluster."""
    return np.where(used, np.maximum(total - others, 0.0), 0.0)


def _blockwise_products(A: torch.Tensor, indicator: torch.Tensor, side: str) -> torch.Tensor:
    """``(A o A) @ indicator`` (``side="cols"``) or ``(A o A)^T @ indicator`` (``"rows"``), ``A`` squared a
    block of ``_CHUNK_ELEMENTS`` entries at a time into one buffer."""
    m, n = A.shape
    step = max(1, min(m, _CHUNK_ELEMENTS // max(n, 1)))
    buf = torch.empty(step, n, dtype=A.dtype, device=A.device)
    if side == "cols":
        out = torch.empty(m, indicator.shape[1], dtype=A.dtype, device=A.device)
    else:
        out_t = torch.zeros(indicator.shape[1], n, dtype=A.dtype, device=A.device)
    for i0 in range(0, m, step):
        i1 = min(m, i0 + step)
        block = torch.mul(A[i0:i1], A[i0:i1], out=buf[: i1 - i0])
        if side == "cols":
            torch.mm(block, indicator, out=out[i0:i1])
        else:
            out_t.addmm_(indicator[i0:i1].T, block)
    return out if side == "cols" else out_t.T


def scatter_batch(sub_labels: np.ndarray, live: np.ndarray, fill: int) -> np.ndarray:
    if live.all():
        return sub_labels
    out = np.full((len(sub_labels), live.size), fill, dtype=np.int64)
    out[:, live] = sub_labels
    return out
