"""Reports that show a clusterability give its baseline, and commands that draw a model say what of it the graph
covers: ``export`` prints E beside a random partition's E and the normalised score (text, --json, GraphML);
``plot layer`` prints the coverage lines, as ``analyze`` and ``export`` do."""
from __future__ import annotations

import json

import networkx as nx
import pytest

from graphinterp.clustering.cluster import cluster_network
from graphinterp.clustering.labels import stored_clustering
from graphinterp.clustering.metrics import clusterability_report
from graphinterp import load_runnable

from _cli_helpers import invoke
from _interp_helpers import digits_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model(tmp_path):
    return digits_checkpoint(tmp_path / "m.pt", clustering=True)


def test_export_gives_e_beside_its_random_baseline_and_score(model, tmp_path):
    out = tmp_path / "g.graphml"
    summary = json.loads(invoke("export", model, out, "--stored", "--json").stdout)
    loaded, _, graph = load_runnable(model)
    expected = clusterability_report(graph, stored_clustering(loaded.clustering, graph))
    assert expected.E_random > 0 and expected.score < expected.E  # the baseline changes the reading
    assert (summary["E"], summary["E_random"], summary["score"]) == pytest.approx(
        (expected.E, expected.E_random, expected.score))
    attrs = nx.read_graphml(out).graph
    assert (attrs["E_network"], attrs["E_network_random"], attrs["score_network"]) == pytest.approx(
        (expected.E, expected.E_random, expected.score))
    text = invoke("export", model, tmp_path / "h.graphml", "--stored").stdout
    assert (f"E = {expected.E:.4f} (network-wide labels) against {expected.E_random:.4f} for a random partition with "
            f"the same cluster sizes: normalised score {expected.score:.3f}") in text


def test_export_stores_the_baseline_of_per_layer_labels_too(model, tmp_path):
    out = tmp_path / "p.graphml"
    summary = json.loads(invoke("export", model, out, "--k", 2, "--per-layer", "--json").stdout)
    attrs = nx.read_graphml(out).graph
    assert summary["cluster"] == "per-layer" and "E_network" not in attrs
    assert (attrs["E"], attrs["E_random"], attrs["score"]) == pytest.approx(
        (summary["E"], summary["E_random"], summary["score"]))


def test_export_of_fresh_labels_scores_those_labels(model, tmp_path):
    summary = json.loads(invoke("export", model, tmp_path / "g.graphml", "--k", 3, "--json", "--seed", 1).stdout)
    _, _, graph = load_runnable(model)
    fresh = clusterability_report(graph, cluster_network(graph, 3, layers=summary["clustered_layers"], random_state=1))
    assert summary["k"] == 3 and (summary["E"], summary["E_random"]) == pytest.approx((fresh.E, fresh.E_random))


def test_plot_layer_prints_the_coverage_of_the_graph(model, tmp_path):
    res = invoke("plot", "layer", model, "--layer", "fc2", "--out", tmp_path / "l.png")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith("coverage: ") and "(100.0%)" in res.stdout.splitlines()[0]


def test_plot_layer_of_a_depthwise_conv_says_it_is_block_diagonal(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    path = tmp_path / "dw.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1)), path)
    res = invoke("plot", "layer", path, "--layer", "1", "--out", tmp_path / "l.png", "--trust-pickle",
                 "--input-shape", "3,8,8")
    assert res.exit_code == 0, res.stderr
    assert "note: 1: depthwise convolution: each output reads one input channel" in res.stdout
