"""Thread pools while clustering: numpy's / scipy's BLAS on one thread beside torch's OpenMP threads.

torch's OpenMP threads keep spinning for a while after each parallel region; when scipy's OpenBLAS (or
scikit-learn's KMeans, through it) starts threads of its own in between, the two pools contend for the
cores. Measured on a 2-core machine: a 784 x 300 LAPACK SVD beside torch 20x slower (about 10 s instead
of 0.4 s), and ARPACK's eigenvectors of a random ViT-B/16's graph (66,283 nodes, products with its
adjacency in torch) 37 s instead of 16 s, with the same result. torch keeps its own threads.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Iterator

__all__ = ["single_threaded_blas"]

_CONTROLLER = None
_LOCK = threading.Lock()
_HOLDERS = 0  # blocks inside the limit, in any thread of this process
_LIMITER: Any = None
_WITH_SCIPY = False  # scipy's BLAS was loaded when the controller was built


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS (numpy's/scipy's OpenBLAS) to one thread inside the block.

    The limit is the process's (BLAS libraries have one thread count), so it is held while any thread
    of the process is inside such a block, nested or not, and lifted when the last one leaves: threads
    of one process (a Dask worker's) that each took and restored the limit on their own left it on
    or off at random. The controller is built once, so entering costs microseconds, and once more when
    scipy's own BLAS (a library of its own) has been loaded since, so that it is limited too.

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> with single_threaded_blas():
    ...     all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    True
    """
    global _CONTROLLER, _HOLDERS, _LIMITER, _WITH_SCIPY
    with _LOCK:
        if _HOLDERS == 0:
            if _CONTROLLER is None or (not _WITH_SCIPY and "scipy.linalg" in sys.modules):
                from threadpoolctl import ThreadpoolController

                # the BLAS libraries loaded now; rebuilt once scipy's own OpenBLAS has been loaded since (importing
                # scipy here instead made a torch.distributed worker abort at exit in 3 of 18 runs)
                _CONTROLLER = ThreadpoolController()
                _WITH_SCIPY = "scipy.linalg" in sys.modules
            _LIMITER = _CONTROLLER.limit(limits=1, user_api="blas")
        _HOLDERS += 1
    try:
        yield
    finally:
        with _LOCK:
            _HOLDERS -= 1
            if _HOLDERS == 0:
                _LIMITER.restore_original_limits()
                _LIMITER = None
