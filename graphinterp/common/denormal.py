"""Flush subnormal floats to zero in every CPU thread torch computes on, for the length of a block.

Modular training drives between-cluster weights, their gradients and their Adam moments towards zero
geometrically; once they are subnormal (below about 1e-38 in float32), x86 CPUs compute on them
about ten times slower. ``torch.set_flush_denormal(True)`` avoids that, but it sets the flag of the
*calling* thread only: the OpenMP threads torch already started for intra-op parallelism keep
computing with subnormals (measured: with 2 threads, half of a large elementwise product was still
subnormal, and late modular epochs of the paper's CNN took twice as long as early ones).
:func:`flush_denormals` therefore also sets the flag in each OpenMP worker, by running a one-line
callback on the runtime's team (``GOMP_parallel``, exported by libgomp, LLVM's libomp and Intel's
libiomp5), in every OpenMP runtime loaded in the process: wheels vendor their own copies (torch's
``torch/lib/libgomp.so.1``, scikit-learn's ``scikit_learn.libs/libgomp-*.so``), and the one torch
computes with must not be missed. Where no such runtime is found (no ``/proc``, another threading
backend) only the calling thread is set, as ``torch.set_flush_denormal`` does.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
from typing import Iterator, List, Optional, Tuple

import torch

__all__ = ["flush_denormals", "denormals_flushed"]

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def denormals_flushed() -> bool:
    """Whether the calling thread flushes subnormal floats to zero (torch has no getter)."""
    return float(torch.tensor([1e-39], dtype=torch.float32) * 1.0) == 0.0


def _openmp_runtimes() -> Tuple[str, ...]:
    """Paths of the OpenMP runtimes mapped into this process (empty without ``/proc``)."""
    try:
        with open("/proc/self/maps") as fh:
            return tuple(sorted({line.split()[-1] for line in fh
                                 if any(name in line for name in ("libgomp", "libiomp", "libomp"))}))
    except OSError:
        return ()


@functools.lru_cache(maxsize=None)
def _parallel_of(path: str):
    """``GOMP_parallel`` of the runtime at ``path``, or None."""
    try:
        fn = ctypes.CDLL(path).GOMP_parallel
    except (OSError, AttributeError):
        return None
    fn.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    fn.restype = None
    return fn


def _openmp_parallel() -> List:
    """``GOMP_parallel`` of every OpenMP runtime loaded now (libraries load lazily, so looked up each time)."""
    return [fn for fn in map(_parallel_of, _openmp_runtimes()) if fn is not None]


def _set_everywhere(flag: bool) -> None:
    torch.set_flush_denormal(flag)
    threads = torch.get_num_threads()
    if threads > 1:
        callback = _CALLBACK(lambda _data: torch.set_flush_denormal(flag))
        for parallel in _openmp_parallel():
            parallel(callback, None, threads, 0)  # every thread of the team (this one included) sets its flag


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[Optional[bool]]:
    """Within the block, flush subnormal floats to zero in this thread and torch's OpenMP threads.

    The calling thread's previous setting is restored everywhere afterwards (also on an exception).

    Parameters
    ----------
    enabled : bool, default True
        When False the block runs unchanged: no flag is set or restored.

    Yields
    ------
    bool or None
        Whether the calling thread already flushed subnormals before the block; None when not ``enabled``.

    Examples
    --------
    >>> with flush_denormals():
    ...     print(float(torch.tensor([1e-39]) * 1.0))
    0.0
    """
    if not enabled:
        yield None
        return
    was = denormals_flushed()
    _set_everywhere(True)
    try:
        yield was
    finally:
        _set_everywhere(was)
