"""The similarity matrix as BSGC reads it: one real, dense, finite, non-negative matrix, and its degrees.

:func:`_as_matrix` turns what a user passes (numpy, torch, a transposed view, integers, object arrays) into
a float32/float64 tensor without copying when it can, and refuses what BSGC cannot read (sparse, complex,
not 2-D, empty) in one line; :func:`_degrees` checks the values (finite, non-negative) while it computes the
row and column sums that the normalisation needs anyway.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import numpy as np
import torch

from graphinterp.common.errors import ClusteringError, InvalidWeightsError

__all__ = ["ArrayLike", "check_values"]

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_matrix(A: ArrayLike) -> torch.Tensor:
    """``A`` as a float32/float64 torch tensor, without a copy when it already is one (or a numpy array)."""
    if hasattr(A, "toarray") and hasattr(A, "nnz"):  # scipy.sparse: not densified behind the user's back
        raise ClusteringError("the similarity matrix is a scipy.sparse matrix; pass a dense array (A.toarray())")
    if isinstance(A, torch.Tensor) and A.layout != torch.strided:
        raise ClusteringError(f"the similarity matrix is a sparse torch tensor ({A.layout}); pass a dense one "
                              "(A.to_dense())")
    if isinstance(A, np.ndarray) and A.dtype == object:  # numbers held as Python objects (scikit-learn accepts them)
        try:
            A = A.astype(np.float64)
        except (TypeError, ValueError):
            pass
    try:
        A = torch.as_tensor(A).detach()
    except (TypeError, ValueError, RuntimeError):
        what = type(A).__name__ + (f" of dtype {A.dtype}" if hasattr(A, "dtype") else "")
        raise ClusteringError(f"the similarity matrix must be a real numeric array or tensor, got {what}") from None
    if A.is_complex():
        raise ClusteringError("Complex data not supported: the similarity matrix is complex; pass real magnitudes "
                              "(e.g. A.abs())")
    if A.dim() != 2:
        raise ClusteringError(f"the similarity matrix must be 2-D, got shape {tuple(A.shape)}")
    if 0 in A.shape:
        raise ClusteringError(f"the similarity matrix has {A.shape[0]} sample(s) and {A.shape[1]} feature(s) (shape="
                              f"{tuple(A.shape)}) while a minimum of 2 is required on each side")
    if not torch.is_floating_point(A):
        A = A.double()
    elif A.dtype not in (torch.float32, torch.float64):
        A = A.float()
    return A


def check_values(A: torch.Tensor, where: str = "") -> None:
    """Raise unless every entry of the similarity matrix ``A`` is finite and non-negative (the one rule for
    what BSGC and network-wide clustering read; ``where`` prefixes the message, e.g. a layer's name).

    Raises
    ------
    InvalidWeightsError
        NaN or inf.
    ClusteringError
        A negative entry.

    Examples
    --------
    >>> check_values(torch.tensor([[1.0, 0.0]]))
    >>> check_values(torch.tensor([[1.0, -2.0]]), "layer 'fc1': ")
    Traceback (most recent call last):
    ...
    graphinterp.common.errors.ClusteringError: layer 'fc1': Negative values in data: the similarity matrix must be non-negative; pass |W|, not W
    """
    if not bool(torch.isfinite(A).all()):
        raise InvalidWeightsError(f"{where}the similarity matrix contains NaN or inf; check the model's weights")
    if A.numel() and float(A.amin()) < 0:
        raise ClusteringError(f"{where}Negative values in data: the similarity matrix must be non-negative; pass "
                              "|W|, not W")


def _degrees(A: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, du, dv)``: the row and column sums (C, m) and (C, n) of the matrices ``A`` (C, m, n), checking
    that they are finite and non-negative (two cheap passes), and ``A`` itself or, rarely, a rescaled copy.

    Finite sums of non-negative entries imply finite entries, so the element-wise test only runs
    when a sum is not finite. A copy whose largest row sum lies outside 2^-40 .. 2^40 (float32)
    or 2^-300 .. 2^300 (float64) is multiplied by a power of two that brings it near 1, in a new
    tensor: the squared masses that score the candidates would otherwise overflow or vanish (a 3-block
    matrix times 1e-200 was clustered at random). BSGC does not depend on the scale, and a power of two
    rescales exactly, so the labels are those of the matrix itself; matrices in range are not copied.
    """
    du, dv = A.sum(2), A.sum(1)
    if not (bool(torch.isfinite(du).all()) and bool(torch.isfinite(dv).all())):
        check_values(A)  # NaN or inf
        du, dv = A.double().sum(2), A.double().sum(1)  # finite entries whose float32 sum overflowed
    if A.numel() and float(A.amin()) < 0:
        check_values(A)  # negative
    if A.numel():
        top = du.double().amax(1)
        bound = 2.0 ** (40 if A.dtype == torch.float32 else 300)
        if bool(((top > bound) | ((top > 0) & (top < 1 / bound))).any()):
            # the largest row sum's exponent; a float64 sum that overflowed (finite entries) is bounded by the
            # largest entry times the row length
            big = A.amax((1, 2)).double()
            over = math.ceil(math.log2(max(A.shape[2], 1))) + 1
            e = torch.where(torch.isfinite(top), torch.frexp(top)[1], torch.frexp(big)[1] + over)
            e = torch.where(top > 0, e, torch.zeros_like(e)).double()
            half = torch.floor(e / 2)  # 2^-e in two factors: alone it overflows (a row sum of 1e-310 needs 2^1029)
            scale1, scale2 = torch.exp2(-half), torch.exp2(half - e)
            A = (A.double() * scale1[:, None, None] * scale2[:, None, None]).to(A.dtype)
            du, dv = A.sum(2), A.sum(1)
    return A, du, dv
