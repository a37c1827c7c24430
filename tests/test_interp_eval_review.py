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


@pytest.fixture(scope="module")
def modadd(tmp_path_factory):
    from graphinterp import TransformerConfig, train_transformer

    path = tmp_path_factory.mktemp("modadd") / "modadd.pt"
    train_transformer(TransformerConfig(task="modadd", p=11, train_frac=0.6, d_model=16, n_heads=2, d_mlp=32, k=2,
                                        lam=20.0, warmup_steps=20, steps=20, eval_every=40, quiet=True),
                      checkpoint=path)
    return path


def test_transformer_weights_that_do_not_fit_the_architecture_are_one_error_line(modadd, tmp_path, monkeypatch):
    """ablate and circuits loaded a transformer's state_dict themselves: a traceback (RuntimeError: size mismatch),
    for a --compare model only after MODEL's searches; analyze named the file in one line."""
    ckpt = torch.load(modadd, weights_only=True)
    ckpt["state_dict"]["blocks.0.mlp.fc_in.weight"] = ckpt["state_dict"]["blocks.0.mlp.fc_in.weight"][:, :5]
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    monkeypatch.setattr(graphinterp, "extract_transformer_circuits", _no_search, raising=False)
    for command in (["ablate", bad], ["circuits", bad, "--labels", "0"], ["circuits", modadd, "--compare", bad,
                                                                          "--labels", "0"]):
        line = one_error(invoke(*command, "--device", "cpu", "-q"), 1)
        assert line.startswith(f"error: {bad}: weights do not fit architecture"), line
