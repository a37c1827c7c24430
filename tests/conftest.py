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
