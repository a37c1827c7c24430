"""Run independent tasks serially, on local processes (joblib), or on a Dask cluster (joblib's Dask backend).

The tasks must not share a random stream: each one carries its own seed (derived from the run's seed
and the task's identity), so the results are the same however the tasks are distributed.

The Dask backend needs the optional extra ``pip install graphinterp[dask]``. The scheduler is an
address such as ``tcp://10.0.0.5:8786`` or an existing ``distributed.Client``; the command line also
reads it from the ``GRAPHINTERP_DASK_SCHEDULER`` environment variable (:data:`SCHEDULER_ENV`).
"""
from __future__ import annotations

import contextlib
from numbers import Integral
from typing import Any, Callable, Iterator, List, Sequence

from graphinterp.common.errors import GraphinterpError

__all__ = ["SCHEDULER_ENV", "ParallelError", "check_jobs", "is_client", "run_tasks", "shares", "dask_scheduler"]

SCHEDULER_ENV = "GRAPHINTERP_DASK_SCHEDULER"


class ParallelError(GraphinterpError):
    """The parallel backend cannot be used (Dask not installed, scheduler unreachable, bad job count)."""


def is_client(scheduler: Any) -> bool:
    """True for a ``distributed.Client`` (without importing Dask when it is not loaded)."""
    import sys

    distributed = sys.modules.get("distributed")
    return distributed is not None and isinstance(scheduler, distributed.Client)


@contextlib.contextmanager
def dask_scheduler(scheduler: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (an address or a Client), closed afterwards if made here."""
    try:
        from distributed import Client
    except ImportError:
        raise ParallelError("a Dask scheduler needs dask[distributed]: pip install 'graphinterp[dask]'") from None
    if isinstance(scheduler, Client):
        yield scheduler
        return
    client = _connect(Client, scheduler)
    try:
        yield client
    finally:
        client.close()


_WORKERS_S = 10.0  # seconds joblib waits for a Dask cluster's first worker
_CONNECT_S = 15.0  # the most a connection may take, whatever answers at the address


def _connect(Client, scheduler: Any, seconds: float = _CONNECT_S) -> Any:
    """``Client(scheduler)`` within ``seconds``, else :class:`ParallelError`.

    Dask's own timeout does not bound the handshake: an address where something answers that is not a
    Dask scheduler (its dashboard, a web server, a silent port) hung the command for good, and one that
    sends other bytes made Dask allocate a "frame" of exabytes (reported as out of memory). The Client is
    made on a helper thread that is given up after ``seconds``; any error becomes one ParallelError.
    """
    import threading

    box: dict = {}

    def make() -> None:
        try:
            box["client"] = Client(str(scheduler), timeout="10s")
        except BaseException as err:  # reported below, on the caller's thread
            box["error"] = err

    thread = threading.Thread(target=make, name="graphinterp-dask-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ParallelError(f"cannot reach the Dask scheduler {scheduler!r}: no Dask handshake within {seconds:.0f} s "
                            "(is it the scheduler's address, e.g. tcp://host:8786, and not its dashboard's?)")
    err = box.get("error")
    if isinstance(err, KeyboardInterrupt):
        raise err
    if err is not None:
        why = ("the address answered, but not as a Dask scheduler (its reply could not be read)"
               if isinstance(err, MemoryError) else str(err) or type(err).__name__)
        raise ParallelError(f"cannot reach the Dask scheduler {scheduler!r}: {why}") from None
    return box["client"]


def check_jobs(n_jobs: Any) -> None:
    """:class:`ParallelError` unless ``n_jobs`` is a positive number of processes or -1 (checked before long work).

    Examples
    --------
    >>> check_jobs(2)
    >>> check_jobs(0)
    Traceback (most recent call last):
    ...
    graphinterp.common.parallel.ParallelError: n_jobs must be a positive number of processes (or -1), got 0
    """
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, Integral) or n_jobs == 0 or n_jobs < -1:
        raise ParallelError(f"n_jobs must be a positive number of processes (or -1), got {n_jobs!r}")


def run_tasks(fn: Callable, tasks: Sequence[tuple], *, n_jobs: int = 1, scheduler: Any = None) -> List[Any]:
    """``[fn(*t) for t in tasks]``, in order, computed serially, on ``n_jobs`` processes, or on Dask.

    Parameters
    ----------
    fn : callable
        A module-level function (it is pickled for the workers).
    tasks : sequence of tuples
        Arguments of each call.
    n_jobs : int, default 1
        Local worker processes (joblib's loky backend); 1 runs in this process. With a scheduler,
        the number of tasks in flight at once (-1: as many as the cluster takes).
    scheduler : str or distributed.Client, optional
        Run on this Dask cluster through joblib's Dask backend.

    Examples
    --------
    >>> run_tasks(pow, [(2, 3), (3, 2)])
    [8, 9]
    """
    check_jobs(n_jobs)
    n_jobs, tasks = int(n_jobs), list(tasks)
    if scheduler is None and (n_jobs == 1 or len(tasks) <= 1):
        return [fn(*t) for t in tasks]
    from joblib import Parallel, delayed, parallel_backend

    if scheduler is None:
        return Parallel(n_jobs=min(n_jobs, len(tasks)) if n_jobs > 0 else n_jobs)(delayed(fn)(*t) for t in tasks)
    with dask_scheduler(scheduler) as client, parallel_backend("dask", client=client,
                                                              wait_for_workers_timeout=_WORKERS_S):
        try:
            return Parallel(n_jobs=n_jobs if n_jobs != 1 else -1)(delayed(fn)(*t) for t in tasks)
        except TimeoutError as e:
            if "no worker" not in str(e):
                raise
            # joblib's own message suggests a Python call (parallel_config), which a CLI user cannot make
            raise ParallelError(f"the Dask cluster at {scheduler!r} has no workers (none joined within {_WORKERS_S:.0f} "
                                "s): start some, e.g. `dask worker ADDRESS` on each machine, or run locally without "
                                "a scheduler") from None


def shares(items: Sequence[Any], n_jobs: int, *, per_item: bool = False) -> List[list]:
    """``items`` in contiguous shares, one per local process (-1: one per CPU), so that what every task
    needs besides its items (a whole model's graph) is sent once per process; ``per_item`` (a Dask
    cluster) gives one item a share unless ``n_jobs`` caps the tasks in flight.

    Examples
    --------
    >>> shares(list(range(5)), 2)
    [[0, 1], [2, 3, 4]]
    >>> [len(s) for s in shares(list(range(5)), 1, per_item=True)]
    [1, 1, 1, 1, 1]
    """
    check_jobs(n_jobs)
    n_jobs = int(n_jobs)
    if per_item and n_jobs in (1, -1):
        parts = len(items)
    elif n_jobs == -1:
        from joblib import cpu_count

        parts = cpu_count()  # joblib's count for -1 (it respects a container's CPU quota)
    else:
        parts = n_jobs
    parts = max(1, min(parts, len(items)))
    bounds = [i * len(items) // parts for i in range(parts + 1)]
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
