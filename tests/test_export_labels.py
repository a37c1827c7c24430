"""Exported GraphML carries one cluster label per node that means the same on every level.

A network with planted, unequal modules must come back from ``graphinterp export`` with node
attribute ``cluster`` equal to the modules (ARI 1) and a within-cluster share of squared weight,
computed from ``cluster`` alone, equal to the network clustering's E; the per-layer BSGC labels
stay in ``cluster_in`` / ``cluster_out``.
"""
from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import adjusted_rand_score
from torch import nn

from graphinterp.cli.main import cli
from graphinterp.clustering.cluster import cluster_layers, cluster_network
from graphinterp.graph.layered import LayeredGraph
from graphinterp.reports.io import align_labels, export_graphml
from graphinterp.clustering.metrics import clusterability_report

SIZES = (37, 61, 45, 29)
K = 3


def planted(sizes=SIZES, noise=0.02, seed=0):
    """Bias-free Linear + ReLU chain whose levels split into 3 unequal modules (20% / 35% / 45%)."""
    g = torch.Generator().manual_seed(seed)
    labels = []
    for n in sizes:
        lab = torch.zeros(n, dtype=torch.long)
        lab[int(0.2 * n):] = 1
        lab[int(0.55 * n):] = 2
        labels.append(lab)
    mods = []
    for a, b in zip(labels, labels[1:]):
        lin = nn.Linear(len(a), len(b), bias=False)
        w = noise * torch.randn(lin.weight.shape, generator=g)
        w += (b[:, None] == a[None, :]) * (1 + torch.rand(lin.weight.shape, generator=g))
        with torch.no_grad():
            lin.weight.copy_(w)
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods[:-1]), np.concatenate([l.numpy() for l in labels])


@pytest.fixture(scope="module")
def planted_file(tmp_path_factory):
    model, truth = planted()
    path = tmp_path_factory.mktemp("planted") / "planted.pt"
    torch.save(model.state_dict(), path)
    return path, truth, LayeredGraph.from_state_dict(model.state_dict())


def _nodes(graph):
    return [f"{name}:{i}" for name, n in zip(graph.level_names(), graph.level_sizes()) for i in range(n)]


def _within_share(G, attr="cluster"):
    inside = total = 0.0
    for u, v, d in G.edges(data=True):
        w2 = d["weight"] ** 2
        total += w2
        cu, cv = G.nodes[u][attr], G.nodes[v][attr]
        if cu == cv and cu >= 0:
            inside += w2
    return inside / total


def _export(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def test_default_export_labels_match_planted_modules(planted_file, tmp_path):
    path, truth, graph = planted_file
    out = tmp_path / "p.graphml"
    _export("export", path, out, "--k", K)
    G = nx.read_graphml(out)
    nodes = _nodes(graph)
    cluster = np.array([G.nodes[n]["cluster"] for n in nodes])
    assert adjusted_rand_score(truth, cluster) == 1.0
    network = cluster_network(graph, K, random_state=0)
    E = clusterability_report(graph, network).E
    assert _within_share(G) == pytest.approx(E, rel=1e-9)
    assert G.graph["cluster_source"] == "network" and G.graph["E_network"] == pytest.approx(E, rel=1e-9)
    # edges say the same as the node labels
    for u, v, d in G.edges(data=True):
        assert d["same_cluster"] == (G.nodes[u]["cluster"] == G.nodes[v]["cluster"] >= 0)
    # per-layer BSGC labels are kept, renumbered to agree with cluster: each layer's E is analyze's
    per_layer = cluster_layers(graph, K, random_state=0)
    for layer in graph:
        rows, cols = per_layer.labels(layer.name)
        t = graph.index(layer.name)
        ins = [f"{graph.level_names()[t]}:{i}" for i in range(layer.n_in())]
        outs = [f"{layer.name}:{j}" for j in range(layer.n_out)]
        got_rows = np.array([G.nodes[n]["cluster_in"] for n in ins])
        got_cols = np.array([G.nodes[n]["cluster_out"] for n in outs])
        both = np.concatenate([rows, cols])
        assert adjusted_rand_score(both, np.concatenate([got_rows, got_cols])) == 1.0
        # on this planted net the renumbered per-layer labels coincide with cluster
        assert np.array_equal(got_rows, [G.nodes[n]["cluster"] for n in ins])
        assert np.array_equal(got_cols, [G.nodes[n]["cluster"] for n in outs])
        within = [d["within"] for _, _, d in G.edges(data=True) if d["layer"] == layer.name]
        assert all(within) or np.mean(within) > 0.3


def test_network_wide_flag_and_per_layer_flag(planted_file, tmp_path):
    path, truth, graph = planted_file
    nodes = _nodes(graph)
    _export("export", path, tmp_path / "n.graphml", "--k", K, "--network-wide")
    G = nx.read_graphml(tmp_path / "n.graphml")
    assert adjusted_rand_score(truth, [G.nodes[n]["cluster"] for n in nodes]) == 1.0
    hidden = [n for n in nodes if not n.startswith(("input:", f"{graph.layer_names[-1]}:"))]
    assert all(G.nodes[n]["cluster_in"] == G.nodes[n]["cluster_out"] == G.nodes[n]["cluster"] for n in hidden)
    _export("export", path, tmp_path / "l.graphml", "--k", K, "--per-layer")
    H = nx.read_graphml(tmp_path / "l.graphml")
    assert H.graph["cluster_source"] == "per-layer"
    # hidden nodes have two unrelated per-layer labels, so no single one is claimed for them
    assert all(H.nodes[n]["cluster"] == -1 for n in hidden)
    assert all(H.nodes[n]["cluster"] >= 0 for n in nodes if n not in hidden)


def test_stored_network_clustering_is_exported_as_is(planted_file, tmp_path):
    from graphinterp.sources.checkpoint import save_checkpoint

    path, truth, graph = planted_file
    sd = torch.load(path, weights_only=True)
    network = cluster_network(graph, K, random_state=3)
    ckpt = tmp_path / "stored.pt"
    save_checkpoint(ckpt, sd, clustering=network.to_dict())
    _export("export", ckpt, tmp_path / "s.graphml", "--stored")
    G = nx.read_graphml(tmp_path / "s.graphml")
    got = np.array([G.nodes[n]["cluster"] for n in _nodes(graph)])
    want = np.concatenate([network.row_labels[graph.layer_names[0]]] + [network.col_labels[n] for n in graph.layer_names])
    assert np.array_equal(got, want)


def test_library_export_with_both_clusterings(planted_file, tmp_path):
    _, truth, graph = planted_file
    per_layer = cluster_layers(graph, K, random_state=1)
    network = cluster_network(graph, K, random_state=1)
    G = export_graphml(graph, tmp_path / "b.graphml", per_layer, network=network)
    assert adjusted_rand_score(truth, [G.nodes[n]["cluster"] for n in _nodes(graph)]) == 1.0
    # E is of `cluster` (network); the labels `within` follows have their own E (was missing: E did not match within)
    edges = list(G.edges(data=True))
    inside = sum(d["weight"] ** 2 for _, _, d in edges if d["within"]) / sum(d["weight"] ** 2 for _, _, d in edges)
    assert G.graph["E"] == pytest.approx(clusterability_report(graph, network).E, rel=1e-9)
    assert G.graph["E_per_layer"] == pytest.approx(inside, rel=1e-9)
    assert G.graph["E_per_layer"] == pytest.approx(clusterability_report(graph, per_layer).E, rel=1e-9)
    assert nx.read_graphml(tmp_path / "b.graphml").graph["E_per_layer"] == pytest.approx(G.graph["E_per_layer"])
    aligned = align_labels(per_layer, network)
    for name in graph.layer_names:  # renumbering keeps each layer's E
        assert clusterability_report(graph, aligned).layers[graph.index(name)].E == pytest.approx(
            clusterability_report(graph, per_layer).layers[graph.index(name)].E)
    # a per-layer clustering alone: cluster only where a node has one label
    H = graph.to_networkx(per_layer)
    assert H.graph["cluster_source"] == "per-layer"
    assert H.nodes["input:0"]["cluster"] == per_layer.row_labels[graph.layer_names[0]][0]
    assert H.nodes[f"{graph.layer_names[0]}:0"]["cluster"] == -1


def test_layerwise_export_keeps_each_layer_own_labels(planted_file, tmp_path):
    path, _, graph = planted_file
    _export("export", path, tmp_path / "w.graphml", "--k", K, "--layerwise")
    G = nx.read_graphml(tmp_path / "w.graphml")
    assert G.graph["cluster_source"] == "per-layer"
    for n, d in G.nodes(data=True):
        assert d["cluster"] == (d["cluster_in"] if "/in:" in n else d["cluster_out"])


def test_file_says_which_layers_its_E_is_over(planted_file, tmp_path):
    """A file's E covers the clustered layers only, but it holds every layer's edges: it names those layers, and E
    recomputed from their edges alone is E (was: no attribute; `--layers` or a stored clustering of one layer gave a
    file whose E (0.9988 on the digits checkpoint's fc2) no reading of its edges reproduced (0.1776 over all edges))."""
    path, _, graph = planted_file
    first, last = graph.layer_names[0], graph.layer_names[-1]
    _export("export", path, tmp_path / "f.graphml", "--k", K, "--layers", f"{first},{last}")
    G = nx.read_graphml(tmp_path / "f.graphml")
    for prefix in ("", "_network", "_per_layer"):
        assert json.loads(G.graph[f"E_layers{prefix}"]) == [first, last]
    for E, within in ((G.graph["E_network"], lambda u, v, d: d["same_cluster"]),
                      (G.graph["E_per_layer"], lambda u, v, d: d["within"])):
        edges = [(u, v, d) for u, v, d in G.edges(data=True) if d["layer"] in (first, last)]
        inside = sum(d["weight"] ** 2 for u, v, d in edges if within(u, v, d))
        assert inside / sum(d["weight"] ** 2 for *_, d in edges) == pytest.approx(E, rel=1e-9)
    assert {d["layer"] for *_, d in G.edges(data=True)} == set(graph.layer_names)  # every layer's edges are there
