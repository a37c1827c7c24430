"""export and plot layer read a model the way analyze does, export names only formats it writes,
and analyze --quiet hides progress but never the report's coverage lines.

Every model is built here with random weights and a tiny size: a Linear chain, torchvision's
squeezenet1_1 (no download) and a two-layer Llama saved as a HuggingFace folder.
"""
from __future__ import annotations

import json

import click
import networkx as nx
import pytest
import torch
from torch import nn

from _cli_helpers import invoke, one_error
from graphinterp.cli.main import cli

SQUEEZE = "features.3.squeeze"  # squeezenet1_1's first 1x1 conv: 64 -> 16 channels, 1,024 edges


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A two-layer Llama with random weights saved as a HuggingFace folder (its embedding is not covered)."""
    T = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=48, vocab_size=50, max_position_embeddings=16))
    folder = tmp_path_factory.mktemp("hf") / "llama"
    model.save_pretrained(folder)
    return folder


def _squeezenet_weights(path, scale: float = 1.0):
    """squeezenet1_1 weights (seed 1) with the SQUEEZE conv multiplied by ``scale``."""
    from torchvision.models import squeezenet1_1

    torch.manual_seed(1)
    state = squeezenet1_1().state_dict()
    state[f"{SQUEEZE}.weight"] = state[f"{SQUEEZE}.weight"] * scale
    torch.save(state, path)
    return path


# ------------------------------------------------------------------ 1. export: only the formats it writes
def test_export_refuses_an_output_format_it_cannot_write_before_loading(mlp_file, tmp_path):
    out = tmp_path / "o.txt"
    msg = one_error(invoke("export", mlp_file, out, "--k", "4"), 2)
    assert "'" + str(out) + "'" in msg and ".graphml" in msg
    # checked before the model is read: a missing model is not what is reported
    msg = one_error(invoke("export", tmp_path / "missing.pt", out), 2)
    assert ".graphml" in msg and "not found" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.pt"]
    # an output that would overwrite the model is still named as such
    assert "also an input" in one_error(invoke("export", mlp_file, mlp_file), 2)


# ------------------------------------------------------------------ 2. export: analyze's model sources, --device
def test_export_reads_a_torchvision_name_with_its_weights_file(tmp_path):
    weights = _squeezenet_weights(tmp_path / "sq.pth", scale=1e6)
    out = tmp_path / "sq.graphml"
    # only the scaled conv has edges above 10: the weights file, not a random initialisation, was exported
    common = ("--k", "2", "--per-layer", "--layers", SQUEEZE, "--min-weight", "10", "--json")
    res = invoke("export", "squeezenet1_1", out, "--weights", weights, "--no-fold", *common)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["edges"] == 64 * 16 and summary["coverage"]["share"] == 1.0
    assert [n.split(" left ")[0] for n in summary["notes"]] == ["--min-weight 10"]  # says E covers the dropped edges
    assert nx.read_graphml(out).number_of_edges() == 64 * 16
    res = invoke("export", "squeezenet1_1", out, *common)  # random weights: said, and no edge that large
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["edges"] == 0 and summary["notes"][0] == "random initialisation (torchvision default, seed 0)"
    assert summary["notes"][1].startswith("--min-weight 10 dropped every edge")
    # weights that do not fit the architecture: one line, as in analyze
    misfit = tmp_path / "mlp.pth"
    torch.save(nn.Sequential(nn.Linear(4, 3)).state_dict(), misfit)
    assert "does not fit torchvision 'squeezenet1_1'" in one_error(
        invoke("export", "squeezenet1_1", out, "--weights", misfit), 1)


def test_export_reads_a_huggingface_folder_and_prints_its_coverage(llama_dir, tmp_path):
    out = tmp_path / "llama.graphml"
    res = invoke("export", llama_dir, out, "--k", "2", "--per-layer", "--layers", "model.layers.0.mlp.up_proj")
    assert res.exit_code == 0, res.output
    assert "not covered: Embedding" in res.stdout  # the part of the model that is not in the file
    assert res.stdout.splitlines()[-2].startswith(f"wrote {out}: ")
    assert res.stdout.splitlines()[-1].startswith("E = ")  # beside its random-partition baseline
    assert nx.read_graphml(out).graph["k"] == 2


def test_export_runs_its_clustering_on_the_device_given(mlp_file, tmp_path, monkeypatch):
    import graphinterp.cli.export as export_module

    seen = []
    real = export_module.cluster_layers

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(export_module, "cluster_layers", spy)
    out = tmp_path / "g.graphml"
    res = invoke("export", mlp_file, out, "--k", "3", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    assert seen == [torch.device("cpu")] and json.loads(res.stdout)["device"] == "cpu"
    assert "--device" in one_error(invoke("export", mlp_file, out, "--device", "nosuch"), 2)
    assert "--input-shape" in one_error(invoke("export", mlp_file, out, "--input-shape", "3,x"), 2)


def test_source_options_are_declared_once_for_analyze_export_and_plot_layer():
    ctx = click.Context(cli)
    commands = {"analyze": cli.get_command(ctx, "analyze"), "export": cli.get_command(ctx, "export"),
                "plot layer": cli.get_command(ctx, "plot").get_command(ctx, "layer")}
    shared = ("--weights", "--no-fold", "--input-shape", "--trust-pickle")
    helps = {}
    for name, cmd in commands.items():
        options = {opt: p for p in cmd.params for opt in getattr(p, "opts", [])}
        assert set(shared) <= set(options), name
        helps[name] = tuple(options[o].help for o in shared)
        model = next(p for p in cmd.params if p.name == "model")
        assert model.type.dir_okay, name  # an HF folder is a MODEL
    assert len(set(helps.values())) == 1
    assert "--device" in {o for p in commands["export"].params for o in getattr(p, "opts", [])}


# ------------------------------------------------------------------ 3. plot layer: the same sources
def test_plot_layer_reads_torchvision_names_and_huggingface_folders(llama_dir, tmp_path):
    out = tmp_path / "sq.png"
    res = invoke("plot", "layer", "squeezenet1_1", "--layer", SQUEEZE, "--out", out)
    assert res.exit_code == 0, res.output
    assert "note: random initialisation" in res.stdout and f"{SQUEEZE}: 64x16 channel edges (kernel norms), BSGC of this layer alone, k=4" in res.stdout
    assert out.stat().st_size > 1000
    weights = _squeezenet_weights(tmp_path / "sq.pth")
    res = invoke("plot", "layer", "squeezenet1_1", "--weights", weights, "--layer", SQUEEZE, "--out", out)
    assert res.exit_code == 0 and "random initialisation" not in res.stdout, res.output
    res = invoke("plot", "layer", llama_dir, "--layer", "model.layers.0.mlp.up_proj", "--k", "2", "--out", out)
    assert res.exit_code == 0, res.output
    assert "model.layers.0.mlp.up_proj: 32x48, BSGC of this layer alone, k=2" in res.stdout


def test_plot_layer_names_the_layers_of_the_model(tmp_path):
    msg = one_error(invoke("plot", "layer", "squeezenet1_1", "--layer", "fc2", "--out", tmp_path / "x.png"), 2)
    assert "--layer" in msg and "no layer named 'fc2'" in msg and SQUEEZE in msg
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------ 4. analyze --quiet
def test_analyze_quiet_hides_the_progress_bar_only(mlp_file):
    loud = invoke("analyze", mlp_file, "--k", "2..6")
    assert loud.exit_code == 0, loud.output
    assert "clustering:" in loud.stderr and "layer" in loud.stderr  # the progress bar over the layers clustered
    assert "clustering:" in invoke("analyze", mlp_file, "--k", "2").stderr  # one k too (a big model sat silent)
    quiet = invoke("analyze", mlp_file, "--k", "2..6", "--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and quiet.stdout == loud.stdout
    assert "coverage: 444 of 444 weights" in quiet.stdout and "skipped 4: fewer than k=6" in quiet.stdout
    assert invoke("analyze", mlp_file, "--k", "2..3", "-q").stderr == ""
    assert "--k" in one_error(invoke("analyze", mlp_file, "--k", "1", "--quiet"), 2)  # errors are never hidden


def test_analyze_quiet_keeps_the_coverage_of_a_partly_covered_model(llama_dir):
    res = invoke("analyze", llama_dir, "--k", "2..3", "--quiet")
    assert res.exit_code == 0, res.output
    assert "not covered: Embedding (1,600 weights" in res.stdout and res.stderr == ""


def test_export_stored_writes_the_stored_per_layer_labels_and_refuses_k(tmp_path):
    from graphinterp import Clustering, LayeredGraph, cluster_layers
    from graphinterp.sources.checkpoint import save_checkpoint
    from graphinterp.sources.models import build_model

    spec = {"name": "mlp", "kwargs": {"in_features": 12, "hidden": [10, 10], "num_classes": 4}}
    torch.manual_seed(0)
    model = build_model(spec)
    graph = LayeredGraph.from_module(model)
    stored = cluster_layers(graph, 2, random_state=3)
    assert not stored.network_wide
    path, out = tmp_path / "m.pt", tmp_path / "s.graphml"
    save_checkpoint(path, model, arch=spec, clustering=stored.to_dict())
    assert "--k does not apply with --stored" in one_error(invoke("export", path, out, "--stored", "--k", "3"), 2)
    res = invoke("export", path, out, "--stored")
    assert res.exit_code == 0, res.output
    assert "cluster labels per-layer" in res.stdout  # not a fresh network-wide clustering
    G = nx.read_graphml(out)
    for name in stored.layer_names:  # every edge's within is the stored clustering's, not a fresh one's
        rows, cols = stored.labels(name)
        for u, v, d in G.edges(data=True):
            if d["layer"] == name:
                i, j = G.nodes[u]["index"], G.nodes[v]["index"]
                assert bool(d["within"]) == (rows[i] == cols[j] and rows[i] >= 0)
    assert isinstance(Clustering.from_dict(stored.to_dict()), Clustering)


def test_export_notes_the_layers_it_leaves_unclustered(mlp_file, tmp_path):
    res = invoke("export", mlp_file, tmp_path / "g.graphml", "--k", "6")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()  # after the coverage lines, as every report starts with them
    assert lines[0].startswith("coverage: ")
    assert "note: not clustered: 4: fewer than k=6 non-isolated nodes (12x5)" in lines
    out = json.loads(invoke("export", mlp_file, tmp_path / "h.graphml", "--k", "6", "--json").stdout)
    assert "not clustered: 4: fewer than k=6 non-isolated nodes (12x5)" in out["notes"]
    # --stored exports the stored clustering: --k and --layers are refused, not ignored
    assert "--layers does not apply with --stored" in one_error(
        invoke("export", mlp_file, tmp_path / "i.graphml", "--stored", "--layers", "2"), 2)


def test_a_torchvision_names_random_weights_and_a_layers_labels_follow_seed_in_every_command(tmp_path, monkeypatch):
    """analyze, export and plot layer built a torchvision name's random weights with seed 0 whatever --seed,
    benchmark with --seed: at --seed 5 they reported different models; plot layer also seeded BSGC otherwise."""
    import graphinterp

    seed = ["--k", "2", "--seed", "5"]
    layer = "features.4.squeeze"  # a layer whose labels differ between seed 5 and its per-layer seed
    a = json.loads(invoke("analyze", "squeezenet1_1", "--layers", layer, "--json", *seed).stdout)
    assert "random initialisation (torchvision default, seed 5)" in a["notes"]
    b = json.loads(invoke("benchmark", "squeezenet1_1", "--shuffles", "0", "--no-figures", "--json",
                          "--out", tmp_path / "b", *seed).stdout)
    E_bench = next(l["scores"]["2"]["E"] for l in b["models"][0]["layers"] if l["layer"] == layer)
    assert a["results"][0]["layers"][0]["E"] == pytest.approx(E_bench, rel=1e-6)
    drawn = {}
    monkeypatch.setattr(graphinterp, "plot_clustered_layer",
                        lambda w, rows, cols, **kw: drawn.update(rows=list(rows), cols=list(cols)))
    res = invoke("plot", "layer", "squeezenet1_1", "--layer", layer, "--out", tmp_path / "p.png", *seed)
    assert res.exit_code == 0, res.output
    labels = next(entry for entry in a["results"][0]["clustering"]["layers"] if entry["name"] == layer)
    assert drawn["rows"] == labels["rows"] and drawn["cols"] == labels["cols"]


def test_a_rotary_embeddings_mix_is_noted_with_where_it_is(llama_dir):
    """The note gave what and how often (96x) but not where."""
    res = invoke("analyze", llama_dir, "--k", "2", "-q")
    assert res.exit_code == 0, res.stderr
    line = next(l for l in res.stdout.splitlines() if "elementwise mix of nodes of one space" in l)
    assert "in 4 node space(s): model.layers.0.self_attn.q_proj, model.layers.0.self_attn.k_proj" in line


def test_a_tensor_applied_by_several_layers_is_said_to_count_once_per_application_in_e(tmp_path):
    """ALBERT applies one block at every depth: the header counted its tensor once ("counted once"), while the
    mass-weighted E weighs each application as a layer of the graph; the header now says both."""
    T = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    torch.manual_seed(0)
    T.AlbertModel(T.AlbertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                                 embedding_size=8, vocab_size=30, max_position_embeddings=16)).save_pretrained(
        tmp_path / "albert")
    res = invoke("analyze", tmp_path / "albert", "--k", "2", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "counted once here, and once per application, a layer of the graph each, in the mass-weighted E" in res.output
    assert "ffn#2" in res.output
