"""flush_denormals: subnormals flushed in the calling thread and in torch's running OpenMP threads."""
import os
import subprocess
import sys

import pytest
import torch

from graphinterp.common.denormal import _openmp_parallel, denormals_flushed, flush_denormals


def _flushed_share() -> float:
    """Share of a large elementwise product of subnormals that comes out as zero (on torch's threads)."""
    x = torch.full((4_000_000,), 1e-39)  # below float32's smallest normal number (1.18e-38)
    return float(((x * 1.0001) == 0).double().mean())


def test_calling_thread_is_flushed_and_restored():
    assert not denormals_flushed()
    with flush_denormals() as was:
        assert was is False and denormals_flushed()
    assert not denormals_flushed() and _flushed_share() == 0.0
    with pytest.raises(RuntimeError):
        with flush_denormals():
            raise RuntimeError("boom")
    assert not denormals_flushed()
    with flush_denormals(enabled=False) as was:
        assert was is None and not denormals_flushed()


_WORKERS_SCRIPT = """
import torch
import sklearn.cluster  # loads scikit-learn's own OpenMP runtime beside torch's
from graphinterp.common.denormal import flush_denormals
torch.set_num_threads(2)
x = torch.full((4_000_000,), 1e-39)
share = lambda: float(((x * 1.0001) == 0).double().mean())
print(share())                # starts the worker thread while flushing is off
with flush_denormals():
    print(share())            # torch.set_flush_denormal alone leaves the worker's half subnormal
print(share())                # and the worker is restored
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _openmp_parallel(),
                    reason="needs an OpenMP runtime found through /proc/self/maps")
def test_openmp_worker_threads_are_flushed_too():
    """In a fresh process, as in training: the thread pool exists before flushing is switched on."""
    out = subprocess.run([sys.executable, "-c", _WORKERS_SCRIPT], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert [float(v) for v in out.stdout.split()] == [0.0, 1.0, 0.0]
