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
