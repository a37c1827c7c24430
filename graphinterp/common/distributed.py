"""Training on several processes launched by ``torchrun``: read the launch, own the process group.

``torchrun --nproc-per-node N`` starts N copies of a program with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment. :func:`launch_from_env`
reads them (a plain process is rank 0 of 1), :func:`check_device` refuses a device the ranks cannot
share, and :func:`process_group` initialises the group from the environment (gloo on the CPU,
NCCL on CUDA with ``LOCAL_RANK`` as the device index) and always destroys it, so the caller only
needs one ``with`` block around :func:`graphinterp.training.train.train`, which does the rest (DDP, batch
split, rank 0 clusters, writes and shows progress).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Tuple

import torch

from graphinterp.common.files import resolve_device
from graphinterp.common.errors import GraphinterpError

__all__ = ["Launch", "launch_from_env", "check_device", "backend_for", "process_group", "rank_and_world"]

#: Environment variables torchrun sets for every worker; all must be present to run distributed.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a launch: its global ``rank`` of ``world_size`` and its ``local_rank`` on the node.

    Parameters
    ----------
    rank : int, default 0
        Global rank of this process (``RANK``), ``0 <= rank < world_size``.
    world_size : int, default 1
        Number of processes in the launch (``WORLD_SIZE``); 1 for a plain process.
    local_rank : int, default 0
        Rank of this process on its node (``LOCAL_RANK``); the CUDA device index it trains on.

    Examples
    --------
    >>> Launch(0, 1, 0).distributed, Launch(1, 2, 1).is_main
    (False, False)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """True when several processes train together (``world_size > 1``)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that prints and writes files."""
        return self.rank == 0


def launch_from_env(environ: Optional[Mapping[str, str]] = None) -> Launch:
    """Read the launch set by ``torchrun`` from ``environ`` (default ``os.environ``).

    Without ``WORLD_SIZE`` (a plain process) or with ``WORLD_SIZE=1`` the result is ``Launch(0, 1, 0)``.

    Parameters
    ----------
    environ : mapping of str to str, optional
        The environment to read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
        from; default ``os.environ``.

    Returns
    -------
    Launch
        This process's rank, world size and local rank.

    Raises
    ------
    GraphinterpError
        ``WORLD_SIZE > 1`` but a variable of :data:`ENV_VARS` is missing, or a rank is not an
        integer in range.

    Examples
    --------
    >>> launch_from_env({})
    Launch(rank=0, world_size=1, local_rank=0)
    >>> env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    >>> launch_from_env(env)
    Launch(rank=1, world_size=2, local_rank=1)
    """
    env = os.environ if environ is None else environ
    world = _int_var(env, "WORLD_SIZE", 1)
    if world < 1:
        raise GraphinterpError(f"WORLD_SIZE={world} is not a number of processes; launch with torchrun")
    if world == 1:
        return Launch()
    missing = [name for name in ENV_VARS if not str(env.get(name, "")).strip()]
    if missing:
        raise GraphinterpError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set; launch with "
                               "torchrun --nproc-per-node N -m graphinterp.cli ...")
    rank, local = _int_var(env, "RANK", 0), _int_var(env, "LOCAL_RANK", 0)
    if not (0 <= rank < world and 0 <= local <= rank):
        raise GraphinterpError(f"RANK={rank}, LOCAL_RANK={local} do not fit WORLD_SIZE={world}; launch with torchrun")
    return Launch(rank, world, local)


def _int_var(env: Mapping[str, str], name: str, default: int) -> int:
    text = str(env.get(name, "")).strip()
    if not text:
        return default
    try:
        return int(text, 10)
    except ValueError:
        raise GraphinterpError(f"{name}={text!r} is not an integer; launch with torchrun") from None


def check_device(launch: Launch, device: Optional[str]) -> torch.device:
    """Return the device this rank computes on, or raise if the ranks of ``launch`` cannot share ``device``.

    In a distributed launch ``auto`` / ``cuda`` mean ``cuda:LOCAL_RANK`` (one GPU per process) and
    ``cpu`` the CPU; a device with an explicit index (every rank would use the same GPU) and other
    device types (``mps``) are refused. Outside a launch the device is returned as resolved.

    Parameters
    ----------
    launch : Launch
        From :func:`launch_from_env`.
    device : str or None
        The requested device (``"auto"``, ``"cpu"``, ``"cuda"``, ...); None means ``"auto"``
        (:func:`graphinterp.common.devices.resolve_device`).

    Returns
    -------
    torch.device
        The device of this rank: ``cuda:LOCAL_RANK`` for CUDA in a distributed launch.

    Raises
    ------
    GraphinterpError
        The device cannot be resolved, is neither the CPU nor CUDA in a distributed launch, names one
        GPU for all ranks, or ``LOCAL_RANK`` exceeds the number of GPUs.

    Examples
    --------
    >>> check_device(Launch(1, 2, 1), "cpu")
    device(type='cpu')
    """
    resolved = resolve_device(device)
    if not launch.distributed:
        return resolved
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise GraphinterpError(f"--device {device} cannot train on several processes; use cpu or cuda")
    if str(device).strip().lower() not in ("auto", "cuda"):
        raise GraphinterpError(f"--device {device} names one GPU for all {launch.world_size} processes; use "
                               "--device cuda (each process takes the GPU of its LOCAL_RANK)")
    if launch.local_rank >= torch.cuda.device_count():
        raise GraphinterpError(f"LOCAL_RANK={launch.local_rank} but this machine has {torch.cuda.device_count()} "
                               "GPU(s); start at most one process per GPU")
    return torch.device("cuda", launch.local_rank)


def backend_for(device: torch.device) -> str:
    """The ``torch.distributed`` backend for ``device``: ``"nccl"`` on CUDA, ``"gloo"`` otherwise.

    Examples
    --------
    >>> backend_for(torch.device("cpu"))
    'gloo'
    """
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(launch: Launch, device: torch.device) -> Iterator[Launch]:
    """Initialise the process group of ``launch`` from the environment for the ``with`` block; always destroy it.

    A launch that is not distributed, or a group the caller has already initialised, is left
    alone (nothing is created or destroyed). On CUDA the current device is set to
    ``cuda:LOCAL_RANK`` first, as NCCL requires.

    Parameters
    ----------
    launch : Launch
        From :func:`launch_from_env`.
    device : torch.device
        From :func:`check_device`; chooses the backend (:func:`backend_for`).

    Yields
    ------
    Launch
        ``launch`` itself, for ``with process_group(...) as launch:``.

    Raises
    ------
    GraphinterpError
        The backend is missing from this torch build, or the group cannot be started (the master
        cannot be reached in time).

    Examples
    --------
    >>> with process_group(Launch(), torch.device("cpu")) as launch:
    ...     launch.is_main
    True
    """
    import torch.distributed as dist

    if not launch.distributed or (dist.is_available() and dist.is_initialized()):
        yield launch
        return
    backend = backend_for(device)
    if not dist.is_available() or not (dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()):
        raise GraphinterpError(f"this torch build has no {backend} backend for torch.distributed; train on one process")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size)
    except (RuntimeError, ValueError) as err:  # DistNetworkError, DistStoreError (timeouts) are RuntimeErrors
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise GraphinterpError(f"cannot start the {backend} process group of rank {launch.rank} of "
                               f"{launch.world_size} ({first}); check MASTER_ADDR and MASTER_PORT") from None
    try:
        yield launch
        # Leave together: rank 0 alone writes the checkpoint after training, and when the other rank
        # tore its group down meanwhile gloo sometimes aborted rank 0 ("terminate called without an
        # active exception", SIGABRT; 2 of 6 runs of tests/test_torchrun.py when rank 0's extra work
        # took longer, 0 of 10 with this barrier). Skipped when the block raised: that rank just leaves.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def rank_and_world() -> Tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` unless a ``torch.distributed`` group is initialised.

    Examples
    --------
    >>> rank_and_world()
    (0, 1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
