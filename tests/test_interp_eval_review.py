"""Interpretability evaluation review: a damaged --compare model is refused before any circuit search, and a
transformer checkpoint whose weights do not fit its architecture is one error line in ablate and circuits."""
from __future__ import annotations

import pytest
import torch

import graphinterp
from _cli_helpers import invoke, one_error
from _interp_helpers import digits_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _no_search(*args, **kwargs):
    raise AssertionError("a circuit search ran before the inputs were checked")


def test_a_compare_model_with_a_clustering_of_another_model_is_refused_before_any_search(tmp_path, monkeypatch):
    """Its stored clustering was checked only after MODEL's searches (minutes to hours on MNIST)."""
    a, b = digits_checkpoint(tmp_path / "a.pt", clustering=True), digits_checkpoint(tmp_path / "b.pt", clustering=True)
    ckpt = torch.load(b, weights_only=True)
    ckpt["clustering"]["layers"][0]["name"] = "fc7"
    torch.save(ckpt, b)
    monkeypatch.setattr(graphinterp, "extract_circuits", _no_search, raising=False)
    line = one_error(invoke("circuits", a, "--compare", b, "--labels", "0", "-q"), 1)
    assert "the clustering names layer 'fc7', which the model does not have" in line
