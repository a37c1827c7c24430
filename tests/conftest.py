"""Shared fixtures: paths to the read-only real data beside the checkout, small models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def pretrained_dir() -> Path:
    path = SHARED / "pretrained"
    if not path.is_dir():
        pytest.skip("../shared/pretrained is not available")
    return path


@pytest.fixture
def datasets_dir() -> Path:
    path = SHARED / "datasets"
    if not path.is_dir():
        pytest.skip("../shared/datasets is not available")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a test module, restored after it (use with ``pytest.mark.usefixtures``).

    Tiny models: one thread avoids OpenMP spin-waits when the CPU is shared.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sd_file(tmp_path) -> Path:
    """A bare state_dict of a 10-8-6 Linear chain (no biases)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 8, bias=False), torch.nn.ReLU(), torch.nn.Linear(8, 6, bias=False))
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def mlp_file(tmp_path) -> Path:
    """A bare state_dict of a 20-12-12-5 Linear chain (no biases)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 12, bias=False), nn.ReLU(), nn.Linear(12, 12, bias=False), nn.ReLU(),
                          nn.Linear(12, 5, bias=False))
    path = tmp_path / "mlp.pt"
    torch.save(model.state_dict(), path)
    return path
