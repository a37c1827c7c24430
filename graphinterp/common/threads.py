"""Thread pools while clustering: numpy's / scipy's BLAS on one thread beside torch's OpenMP threads.

torch's OpenMP threads keep spinning for a while after each parallel region; when scipy's OpenBLAS (or
scikit-learn's KMeans, through it) starts threads of its own in between, the two pools contend for the
cores. Measured on a 2-core machine: a 784 x 300 LAPACK SVD beside torch 20x slower (about 10 s instead
of 0.4 s), and ARPACK's eigenvectors of a random ViT-B/16's graph (66,283 nodes, products with its
adjacency in torch) 37 s instead of 16 s, with the same result. torch keeps its own threads.
"""
from __future__ import annotations

from typing import Any

__all__ = ["single_threaded_blas"]

_CONTROLLER = None


def single_threaded_blas() -> Any:
    """Context manager limiting BLAS (numpy's/scipy's OpenBLAS) to one thread inside the block.

    The limit applies when the context is *made* (threadpoolctl's rule) and is lifted on leaving it,
    so make it in the ``with`` statement. The controller is built once, so this costs microseconds.

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> with single_threaded_blas():
    ...     all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    True
    """
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")
