"""BLAS on one thread while clustering: a process-wide limit held while any thread is inside a block."""
import os
import threading

import numpy  # noqa: F401  (loads the BLAS library that the limit is about)
import pytest
from threadpoolctl import threadpool_info

from graphinterp.common.threads import single_threaded_blas


def _blas_threads():
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


@pytest.fixture
def two_blas_threads():
    """The BLAS thread count as it is (a limit set here, in the main thread, is not what OpenBLAS reports to
    other threads), skipped where it is already one and a limit could not be seen."""
    before = _blas_threads()
    if not before or max(before) < 2:
        pytest.skip("BLAS runs on one thread here (or threadpoolctl sees no BLAS library)")
    yield before


def test_overlapping_threads_take_the_limit_once_and_the_last_to_leave_lifts_it(monkeypatch):
    """Threads of one process (a Dask worker's) overlap: the first to leave must not lift the limit the other
    still needs, and the limit must not outlive them. Each restoring what it had seen left it on or off at
    random; here the limiter is a recorder, as OpenBLAS reports its thread count per calling thread."""
    import graphinterp.common.threads as threads

    events = []

    class Limiter:
        def restore_original_limits(self):
            events.append("restore")

    class Controller:
        def limit(self, limits, user_api):
            events.append(("limit", limits, user_api))
            return Limiter()

    monkeypatch.setattr(threads, "_CONTROLLER", Controller())
    a_in, b_in, a_out = (threading.Event() for _ in range(3))
    seen = {}

    def first():
        with single_threaded_blas():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second():
        a_in.wait(5)
        with single_threaded_blas():
            b_in.set()
            a_out.wait(5)
            seen["after a left"] = list(events)

    workers = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(10)
    assert seen["after a left"] == [("limit", 1, "blas")]  # still held for the second thread
    assert events == [("limit", 1, "blas"), "restore"] and threads._HOLDERS == 0


def test_nested_blocks_keep_the_limit_until_the_outer_one_ends(two_blas_threads):
    with single_threaded_blas():
        with single_threaded_blas():
            assert _blas_threads() == {1}
        assert _blas_threads() == {1}
    assert _blas_threads() == two_blas_threads


def test_the_limit_is_lifted_when_the_block_raises(two_blas_threads):
    with pytest.raises(KeyError):
        with single_threaded_blas():
            raise KeyError("x")
    assert _blas_threads() == two_blas_threads


def test_scipys_blas_is_limited_even_when_the_first_block_runs_before_scipy_is_imported():
    """The controller is built once: a BLAS library loaded after it (scipy's own OpenBLAS, imported by a caller of
    the KMeans after its first block) kept its threads inside every later block."""
    import subprocess
    import sys

    code = ("from graphinterp.common.threads import single_threaded_blas\n"
            "with single_threaded_blas():\n    pass\n"
            "import scipy.linalg\nfrom threadpoolctl import threadpool_info\n"
            "with single_threaded_blas():\n"
            "    print(sorted({p['filepath'] for p in threadpool_info() if p['user_api'] == 'blas' and p['num_threads'] != 1}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
