"""Command-line cases found in review: inputs never replaced, bare state_dicts read in full, the same seed
giving the same labels in every command, one degenerate shuffle not ending a benchmark.

Tiny models written to ``tmp_path``; the built-in digits only; no downloads.
"""
import json

import numpy as np
import pytest
import torch
from torch import nn

from _cli_helpers import invoke, one_error, usage_error
from graphinterp.cli._eval_data import _resolve
from graphinterp.clustering.cluster import _fill_empty
from graphinterp.graph.state_graph import graph_layers_from_state_dict


def test_train_never_replaces_a_file_that_is_not_a_graphinterp_checkpoint(tmp_path):
    keep = tmp_path / "model.pth"
    torch.save({"fc.weight": torch.randn(3, 4)}, keep)
    before = keep.read_bytes()
    message = usage_error(invoke("train", "--epochs", "1", "--quiet", "--out", keep))
    assert "not a graphinterp checkpoint" in message
    assert keep.read_bytes() == before


def test_export_writes_bfloat16_state_dicts(tmp_path):
    path = tmp_path / "bf16.pt"
    torch.save({"fc1.weight": torch.randn(16, 8).bfloat16(), "fc2.weight": torch.randn(8, 16).bfloat16()}, path)
    for extra in ([], ["--layerwise"]):
        res = invoke("export", path, tmp_path / "o.graphml", "--k", "2", "--quiet", *extra)
        assert res.exit_code == 0, res.stderr


def test_a_state_dict_keeps_layers_that_are_equal_by_value_and_counts_one_output_heads():
    eye = torch.eye(8)
    layers, chained, cov = graph_layers_from_state_dict(
        {"fc1.weight": torch.randn(8, 4), "fc2.weight": eye, "fc3.weight": eye.clone(), "fc4.weight": torch.randn(1, 8)})
    assert [l.name for l in layers] == ["fc1", "fc2", "fc3", "fc4"] and chained
    assert cov.total == 32 + 64 + 64 + 8 == cov.covered and not cov.tied


def test_a_state_dict_chained_by_its_shapes_says_the_chain_is_a_guess(tmp_path):
    from graphinterp import load_graph
    path = tmp_path / "mlp.pt"
    torch.save(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict(), path)
    opened, graph = load_graph(str(path))
    assert graph.chained and any("linked in key order" in n for n in opened.notes)
    assert "linked in key order" in invoke("analyze", path, "--k", "2").stdout


def test_a_state_dict_names_embeddings_by_the_last_part_of_the_name_and_ties_their_copies():
    wte = torch.randn(50, 8)
    layers, _, cov = graph_layers_from_state_dict(
        {"wte.weight": wte, "patch_embed.proj.weight": torch.randn(8, 3, 2, 2), "unembed.weight": torch.randn(8, 8),
         "lm_head.weight": wte.clone()})
    assert {l.name for l in layers} == {"patch_embed.proj", "unembed"}
    assert [m.name for m in cov.missing] == ["wte.weight"]
    assert cov.tied == {"lm_head": "wte.weight"}


def test_export_says_when_a_checkpoint_stores_the_clustering_it_was_trained_with(tmp_path):
    ckpt = tmp_path / "digits.pt"
    assert invoke("train", "--epochs", "1", "--warmup-epochs", "0", "--quiet", "--out", ckpt).exit_code == 0
    res = invoke("export", ckpt, tmp_path / "d.graphml", "--k", "4", "--quiet")
    assert res.exit_code == 0 and "--stored exports those labels" in res.stdout


def test_a_level_with_an_empty_cluster_gets_one_node_and_keeps_the_rest_of_its_labels():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    Z = np.concatenate([rng.normal(0, 0.1, (6, 2)), rng.normal(0, 0.1, (4, 2)) + [5.0, 0.0], [[1.0, 4.0]]])
    labels = np.array([0] * 6 + [1] * 4 + [0])  # the last point is nearest centre 2's, but labelled 0
    out = _fill_empty(labels, Z, centers)
    assert out[-1] == 2 and np.array_equal(out[:-1], labels[:-1])


def test_analyze_and_benchmark_give_a_layer_the_same_labels_at_one_k(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    m = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    torch.save(m.state_dict(), path)
    a = json.loads(invoke("analyze", path, "--k", "4", "--json").stdout)
    res = invoke("benchmark", path, "--k", "4", "--shuffles", "0", "--out", tmp_path / "b", "--no-figures", "--json")
    b = json.loads(res.stdout)
    E_a = {r["layer"]: (r["E"], np.array(r["sizes"]).T.tolist()) for r in a["results"][0]["layers"]}
    E_b = {l["layer"]: (l["scores"]["4"]["E"], l["scores"]["4"]["sizes"]) for l in b["models"][0]["layers"]}
    assert len(E_a) == 3 and E_a.keys() == E_b.keys()
    for name, (E, sizes) in E_a.items():  # the same clusters (E summed in another precision)
        assert E == pytest.approx(E_b[name][0], abs=1e-6) and sizes == E_b[name][1]
    # the keys that mean the same in both: one list of k per side
    sides = [{r["layer"]: [r["row_sizes"], r["col_sizes"]] for r in a["results"][0]["layers"]},
             {l["layer"]: [l["scores"]["4"]["row_sizes"], l["scores"]["4"]["col_sizes"]] for l in b["models"][0]["layers"]}]
    assert sides[0] == sides[1] == {name: sizes for name, (_, sizes) in E_a.items()}


def test_a_layer_whose_shuffled_copies_cannot_be_clustered_is_reported_untested(tmp_path):
    path = tmp_path / "diag.pt"
    torch.save({"a.weight": torch.eye(2), "b.weight": torch.randn(2, 2)}, path)
    res = invoke("benchmark", path, "--k", "2", "--significance-k", "2", "--shuffles", "3", "--seed", "0",
                 "--out", tmp_path / "r", "--no-figures", "--quiet")
    assert res.exit_code == 0, res.stderr
    assert "layer a not shuffle-tested at k=2: a shuffled copy of layer 'a'" in res.stdout


def test_benchmark_refuses_an_out_folder_where_the_report_would_overwrite_an_input(tmp_path):
    folder = tmp_path / "rq"
    folder.mkdir()
    model = folder / "benchmark.json"
    torch.save({"fc1.weight": torch.randn(8, 4), "fc2.weight": torch.randn(3, 8)}, model)
    before = model.read_bytes()
    assert "is an input" in usage_error(invoke("benchmark", model, "--k", "2", "--shuffles", "0", "--out", folder))
    assert model.read_bytes() == before


def test_another_dataset_is_read_from_the_folder_the_checkpoint_was_trained_from():
    ckpt = {"train_state": {"config": {"dataset": "mnist", "data_dir": "/data/sets"}}}
    notes = []
    assert _resolve("m.pt", ckpt, "fashion-mnist", None, notes) == ("fashion-mnist", "/data/sets", False)
    assert any("/data/sets" in n for n in notes)
    assert _resolve("m.pt", ckpt, "fashion-mnist", "/other", [])[1] == "/other"


def test_out_of_range_neurons_are_named(tmp_path):
    ckpt = tmp_path / "digits.pt"
    assert invoke("train", "--epochs", "1", "--warmup-epochs", "0", "--quiet", "--out", ckpt).exit_code == 0
    line = one_error(invoke("ablate", ckpt, "--neurons", "fc1:30-33"))
    assert "out of range: [32, 33]" in line


def test_analyze_json_lists_a_layer_scored_at_no_k_as_left_out(tmp_path):
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    nn.init.zeros_(m[4].weight)
    torch.save(m.state_dict(), tmp_path / "zero.pt")
    out = json.loads(invoke("analyze", tmp_path / "zero.pt", "--k", "2", "--json").stdout)
    assert out["mass_weighted"]["layers"] == ["0", "2"] and "4" in out["mass_weighted"]["left_out"]


def test_a_tied_copy_is_found_whichever_of_the_two_comes_first():
    wte = torch.randn(50, 8)
    for order in (["wte.weight", "h.weight", "lm_head.weight"], ["lm_head.weight", "h.weight", "wte.weight"]):
        tensors = {"wte.weight": wte, "h.weight": torch.randn(8, 8), "lm_head.weight": wte.clone()}
        layers, _, cov = graph_layers_from_state_dict({k: tensors[k] for k in order})
        assert [l.name for l in layers] == ["h"] and cov.total == 400 + 64 and cov.covered == 64
        assert cov.tied == {"lm_head": "wte.weight"} and [m.name for m in cov.missing] == ["wte.weight"]


def test_analyze_counts_a_module_applied_twice_once_as_coverage_does(tmp_path):
    shared = nn.Linear(8, 8)
    torch.save(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(8, 3)),
               tmp_path / "twice.pt")
    out = invoke("analyze", tmp_path / "twice.pt", "--k", "2", "--trust-pickle").stdout
    assert "4 layers, 152 weights (216 edges" in out and "coverage: 152 of 152" in out


def test_circuits_of_all_labels_leave_out_classes_without_examples(tmp_path):
    ckpt = tmp_path / "digits.pt"
    assert invoke("train", "--epochs", "1", "--warmup-epochs", "0", "--quiet", "--out", ckpt).exit_code == 0
    res = invoke("circuits", ckpt, "--labels", "all", "--limit", "8", "--max-evals", "5", "-q", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    note = next(n for n in out["notes"] if "without an example" in n)
    absent = [int(c) for c in note.rpartition(": ")[2].split(", ")]
    assert absent and not set(absent) & {c["label"] for c in out["circuits"]}
    # a budget too small for every search: the table's upper-bound warning is in --json's notes too
    stopped = [c["label_name"] for c in out["circuits"] if c["converged"] is False]
    assert stopped and any("their ECS are upper bounds" in n and f"{len(stopped)} of {len(out['circuits'])}" in n
                           for n in out["notes"])
