"""Interpretability evaluation review: a damaged --compare model is refused before any circuit search, and a
transformer checkpoint whose weights do not fit its architecture is one error line in ablate and circuits."""
from __future__ import annotations

import json

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


def test_weights_and_parameters_the_ecs_leaves_out_are_named(tmp_path):
    """--mode authors on a CNN sized Linear weights only (9,536 of the 9,680 the coverage line counts) and no
    report said that conv1 was kept whole; biases were kept and left out of the ECS without a word either."""
    from graphinterp import build_model, save_checkpoint

    arch = {"name": "cnn", "kwargs": {"in_channels": 1, "channels": 4, "image_size": 8, "hidden": [8], "bias": True}}
    torch.manual_seed(0)
    path = tmp_path / "cnn.pt"
    save_checkpoint(path, build_model(arch), arch=arch)
    res = invoke("circuits", path, "--mode", "authors", "--labels", "0", "--max-examples", 5, "--device", "cpu", "-q")
    assert res.exit_code == 0, res.stderr
    assert (f"note: {path}: the ECS leaves out, and every circuit keeps whole: conv1 (36 non-zero weights: --mode "
            "authors prunes Linear layers only); 22 biases and other vector parameters (never pruned)") in res.stdout
    res = invoke("circuits", path, "--labels", "0", "--max-examples", 5, "--max-evals", 20, "--device", "cpu", "-q",
                 "--json")
    assert res.exit_code == 0, res.stderr
    assert (f"{path}: the ECS leaves out, and every circuit keeps whole: 22 biases and other vector parameters (never "
            "pruned)") in json.loads(res.stdout)["notes"]


def test_a_transformer_clustering_that_does_not_fit_the_model_is_one_error_line_in_ablate(modadd, tmp_path):
    """ablate read a transformer's stored clustering without checking it against the model: a clustering naming a
    layer the model lacks was a traceback (KeyError) where analyze gives one line."""
    ckpt = torch.load(modadd, weights_only=True)
    ckpt["clustering"]["layers"][0]["name"] = "blocks.7.mlp.fc_in"
    bad = tmp_path / "bad_clustering.pt"
    torch.save(ckpt, bad)
    line = one_error(invoke("ablate", bad, "--device", "cpu", "-q"), 1)
    assert "the clustering names layer 'blocks.7.mlp.fc_in', which the model does not have" in line, line


def test_transformer_circuits_report_where_they_live_after_checking_the_stored_clustering(modadd, tmp_path,
                                                                                          monkeypatch):
    """circuits on a modular transformer said nothing of where its circuits live in the checkpoint's clusters (an
    MLP's report gives every circuit's share of each cluster) and never checked that clustering against the model:
    one naming a layer the model lacks ran without a word."""
    import numpy as np

    from graphinterp import extract_transformer_circuits, load_model_file, stored_clustering, trace_graph
    from graphinterp.data.tasks import modular_addition
    from graphinterp.interpret.circuit_compare import cluster_share

    # the share against a hand count over the parameters (torch's (out, in) layout; rows label the inputs)
    net = load_model_file(modadd).module
    ckpt = torch.load(modadd, weights_only=True)
    test = modular_addition(11, train_frac=0.6)[1]
    x, y = test.x, test.y
    circuits = extract_transformer_circuits(net, x, y, list(range(11)), progress=False, device="cpu")
    circuit = max(circuits.values(), key=lambda ci: ci.ecs)  # one that keeps MLP weights (some keep none)
    assert circuit.ecs > 0
    clustering = stored_clustering(ckpt["clustering"], trace_graph(net, example=x[:2]))
    inside, total = np.zeros(2), 0.0
    for layer in ckpt["clustering"]["layers"]:
        w = (net.get_submodule(layer["name"]).weight * circuit.masks[layer["name"]]).detach().double().numpy() ** 2
        rows, cols = np.array(layer["rows"]), np.array(layer["cols"])
        for c in range(2):
            inside[c] += w[np.ix_(cols == c, rows == c)].sum()
        total += w.sum()
    share = cluster_share(circuit, trace_graph(net, example=x[:2]), clustering)
    np.testing.assert_allclose(share["mass"], inside / total, rtol=1e-5)
    # the command reports it, text and JSON
    res = invoke("circuits", modadd, "--max-evals", 300, "--device", "cpu", "-q", "--json")
    assert res.exit_code == 0, res.stderr
    found = json.loads(res.stdout)["circuits"]
    assert any(c["ecs"] > 0 for c in found)
    for c in found:
        s = c["cluster_share"]
        parts = sum(s["mass"]) + s["between"]["mass"] + s["unclustered"]["mass"]
        assert parts == pytest.approx(1.0 if c["ecs"] > 0 else 0.0)  # a circuit that keeps no MLP weight: no share
        # an empty circuit has no main cluster (it said 0 in JSON, '-' in the text)
        assert s["dominant"] == (int(np.argmax(s["mass"])) if any(s["mass"]) else None)
        assert c["ecs"] > 0 or s["dominant"] is None
    res = invoke("circuits", modadd, "--labels", "0", "--max-evals", 200, "--device", "cpu", "-q")
    assert res.exit_code == 0 and "main cluster (mass)" in res.stdout, res.stdout
    # a clustering naming a layer the model lacks: one line, before any search
    ckpt["clustering"]["layers"][0]["name"] = "blocks.7.mlp.fc_in"
    bad = tmp_path / "bad_clustering.pt"
    torch.save(ckpt, bad)
    monkeypatch.setattr(graphinterp, "extract_transformer_circuits", _no_search, raising=False)
    line = one_error(invoke("circuits", bad, "--labels", "0", "--device", "cpu", "-q"), 1)
    assert "the clustering names layer 'blocks.7.mlp.fc_in', which the model does not have" in line, line
