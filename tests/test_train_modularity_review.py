"""Training-for-modularity review: what train() refuses before the first epoch, and how every rank stops."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphinterp.training.train as train_module
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
