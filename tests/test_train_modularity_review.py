"""Training-for-modularity review: what train() refuses before the first epoch, and how every rank stops."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphinterp.training.train as train_module
import graphinterp.training.train_clustering as train_clustering
from graphinterp.common.errors import ClusteringError
from graphinterp.data.datasets import load_dataset
from graphinterp.training.train import TrainConfig, train


class _GroupedNet(nn.Module):
    """conv -> grouped conv (2 groups) -> conv -> global mean -> Linear, for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c3(torch.relu(self.c2(x))))
        return self.fc(x.mean((2, 3)))


def test_grouped_conv_layer_is_refused_before_the_warm_up(monkeypatch):
    # it was refused only by the clustering at the end of the warm-up, after a whole epoch of training
    def no_epoch(*args, **kwargs):
        raise AssertionError("trained an epoch before refusing the layer")

    monkeypatch.setattr(train_module, "_epoch", no_epoch)
    data = load_dataset("digits", split="train").subset(64, seed=0)
    config = TrainConfig(dataset="digits", k=2, warmup_epochs=1, epochs=1, layers=["c2", "c3"], quiet=True,
                         device="cpu")
    with pytest.raises(ClusteringError, match="layer 'c2': grouped convolution"):
        train(config, model=_GroupedNet(), train_data=data, test_data=data)


def _failing_clustering_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from graphinterp.common.distributed import launch_from_env, process_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)

    def fails(*args, **kwargs):  # what BSGC raises at the end of a warm-up, e.g. k above the live units
        raise ClusteringError("layer 'fc2': k=4 is too large")

    train_clustering.cluster_network = fails  # only rank 0 clusters
    data = load_dataset("digits", split="train").subset(40, seed=0)
    config = TrainConfig(dataset="digits", k=2, warmup_epochs=1, epochs=1, batch_size=20, quiet=True, device="cpu")
    try:
        with process_group(launch_from_env(), torch.device("cpu")):
            dist.barrier()
            train(config, train_data=data, test_data=data)
        what = "finished"
    except Exception as err:  # recorded, not raised: mp.spawn would stop the other rank
        what = f"{type(err).__name__}: {err}"
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(what)


def test_clustering_error_on_rank_0_stops_every_rank_with_it(tmp_path):
    # rank 1 waited in broadcast_object_list for labels that never came, and died with gloo's
    # "Connection closed by peer" RuntimeError (a traceback under torchrun) instead of the error
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_failing_clustering_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    results = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert results == ["ClusteringError: layer 'fc2': k=4 is too large"] * 2, results
