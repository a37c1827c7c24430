"""train() under DistributedDataParallel (gloo, 2 CPU processes) matches a single-process run."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from graphinterp.data.datasets import load_dataset
from graphinterp.common.distributed import launch_from_env, process_group
from graphinterp.training.train import TrainConfig, train

pytestmark = [
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"),
    pytest.mark.usefixtures("one_thread"),
]


def _config() -> TrainConfig:
    return TrainConfig(dataset="digits", k=2, lam=20.0, warmup_epochs=1, epochs=1, batch_size=50, quiet=True, device="cpu")


def _data():
    # batches of 50, 50, 5: the last global batch splits unevenly (3 + 2) over the ranks
    return load_dataset("digits", split="train").subset(105, seed=0), load_dataset("digits", split="test").subset(60, seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    # what torchrun sets; graphinterp.common.distributed initialises the group from it (as `graphinterp train` does)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with process_group(launch_from_env(), torch.device("cpu")) as launch:
        assert dist.get_rank() == launch.rank == rank and dist.get_backend() == "gloo"
        tr, te = _data()
        result = train(_config(), train_data=tr, test_data=te)
        torch.save({"state": result.model.state_dict(), "history": result.history,
                    "clustering": result.clustering.to_dict()}, os.path.join(out, f"rank{rank}.pt"))
    assert not dist.is_initialized()  # destroyed on leaving the block


def test_two_ranks_end_identical_and_match_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    tr, te = _data()
    single = train(_config(), train_data=tr, test_data=te)
    for key, value in single.model.state_dict().items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-4, atol=1e-5)
    assert ranks[0]["clustering"] == ranks[1]["clustering"] == single.clustering.to_dict()
    for row0, row1, row in zip(ranks[0]["history"], ranks[1]["history"], single.history):
        assert row0["loss"] == row1["loss"]
        for key in ("loss", "ce", "l_e", "E", "test_acc"):
            assert row0[key] == pytest.approx(row[key], rel=1e-5), key
