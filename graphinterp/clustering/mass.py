"""Squared similarity mass between row and column clusters: the sums that score and pair BSGC candidates.

For a layer's similarity matrix ``A`` (``m x n``) and a clustering of its rows and columns, the mass
matrix :math:`M = R^T (A \\circ A) C` (``k x k``, with ``R`` and ``C`` the one-hot cluster indicators)
holds the squared similarity between every row cluster and every column cluster; its diagonal over
its total is E. Here: the mass matrix of one clustering (:func:`cluster_mass`), the column relabelling
that maximises its diagonal (:func:`match_clusters`, Hungarian), and the products of many candidate
labellings at once, with ``A`` squared block by block and every distinct partition computed once.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["cluster_mass", "match_clusters", "matching", "canonical", "unique_rows", "squared_products", "scatter_batch",
           "chance_share", "normalized_score"]

_CHUNK_ELEMENTS = 1 << 21  # block size (elements) for squaring A when scoring candidates


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


def squared_products(A: torch.Tensor, labels: np.ndarray, k: int, side: str) -> torch.Tensor:
    """``(A o A) @ onehot(labels_t)`` for ``T`` labellings of the columns (``side="cols"``, result (T, m, k)),
    or ``(A o A)^T @ onehot(labels_t)`` for labellings of the rows (``side="rows"``, result (T, n, k)).

    All labellings in one matrix product with the ``(n, T k)`` indicator; ``A`` is squared block by
    block into a small buffer, never whole. Float64 on the CPU.
    """
    if not A.is_contiguous() and A.T.is_contiguous():  # a transposed view: work on the row-major side
        return squared_products(A.T, labels, k, "rows" if side == "cols" else "cols")
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


def scatter_batch(sub_labels: np.ndarray, live: np.ndarray, fill: int) -> np.ndarray:
    if live.all():
        return sub_labels
    out = np.full((len(sub_labels), live.size), fill, dtype=np.int64)
    out[:, live] = sub_labels
    return out
