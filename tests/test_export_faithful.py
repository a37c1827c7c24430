"""GraphML export keeps every weight (parallel edges of layers that share nodes), says how far along it is,
warns before a very large file, and names its label sources unambiguously."""
from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

from graphinterp.clustering.cluster import cluster_layers, cluster_network
from graphinterp.graph.layered import LayeredGraph
from graphinterp.reports.io import export_graphml, read_graphml, write_graphml

from tests._cli_helpers import invoke

D, H = 8, 16


class SwiGLU(nn.Module):
    """A Llama MLP on a residual stream: gate and up both read the stream and write the same hidden nodes."""

    def __init__(self, d: int = D, h: int = H) -> None:
        super().__init__()
        self.gate = nn.Linear(d, h, bias=False)
        self.up = nn.Linear(d, h, bias=False)
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x):
        return x + self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = SwiGLU(), SwiGLU()

    def forward(self, x):
        return self.b(self.a(x))


@pytest.fixture
def swiglu_graph():
    torch.manual_seed(0)
    return LayeredGraph.from_module(TwoBlocks(), input_shape=(D,))


def _nonzero(graph) -> int:
    return sum(int((layer.signed() != 0).sum()) for layer in graph)


def _weights_per_layer(G, graph):
    """Each layer's (n_in, n_out) weight matrix rebuilt from the edges of ``G`` (nodes by name)."""
    pos_in = {layer.name: {graph.node_names[s]: i for i, s in enumerate(graph.src_nodes(layer.name))} for layer in graph}
    pos_out = {layer.name: {graph.node_names[s]: j for j, s in enumerate(graph.dst_nodes(layer.name))} for layer in graph}
    out = {layer.name: np.zeros((layer.n_in(), layer.n_out)) for layer in graph}
    seen = {layer.name: 0 for layer in graph}
    for u, v, d in G.edges(data=True):
        name = d["layer"]
        assert out[name][pos_in[name][u], pos_out[name][v]] == 0, "two edges for one weight"
        out[name][pos_in[name][u], pos_out[name][v]] = d["weight"]
        seen[name] += 1
    return out, seen


def test_swiglu_export_writes_one_edge_per_weight_and_reads_back_exactly(swiglu_graph, tmp_path):
    graph = swiglu_graph
    assert type(graph).__name__ == "ModelGraph"
    n = _nonzero(graph)
    assert n == 2 * 3 * D * H
    path = tmp_path / "swiglu.graphml"
    G = export_graphml(graph, path)
    assert G.number_of_edges() == n
    assert G.graph["multi_edge_pairs"] == 2 * D * H  # (stream, hidden) pairs written by both gate and up
    H_ = read_graphml(path)
    assert H_.is_multigraph() and H_.number_of_edges() == n
    weights, seen = _weights_per_layer(H_, graph)
    for layer in graph:
        assert seen[layer.name] == int((layer.signed() != 0).sum())
        np.testing.assert_array_equal(weights[layer.name], layer.signed().double().numpy())  # exact, not approx
    # in memory, each parallel edge is keyed by its layer
    u, v = graph.node_names[graph.src_nodes("a.gate")[0]], graph.node_names[graph.dst_nodes("a.gate")[0]]
    assert set(G[u][v]) == {"a.gate", "a.up"}
    assert G.edges[u, v, "a.up"]["weight"] == pytest.approx(float(graph["a.up"].signed()[0, 0]))
    assert G.edges[u, v, "a.gate"]["weight"] == pytest.approx(float(graph["a.gate"].signed()[0, 0]))


def test_swiglu_edges_keep_their_own_layer_and_labels(swiglu_graph, tmp_path):
    graph = swiglu_graph
    network = cluster_network(graph, 2, random_state=0)
    per_layer = cluster_layers(graph, 2, random_state=0)
    G = export_graphml(graph, tmp_path / "c.graphml", per_layer, network=network)
    assert {d["layer"] for *_, d in G.edges(data=True)} == set(graph.layer_names)  # never "gate,up"
    H_ = read_graphml(tmp_path / "c.graphml")
    for u, v, d in H_.edges(data=True):
        assert d["same_cluster"] == (H_.nodes[u]["cluster"] >= 0 and H_.nodes[u]["cluster"] == H_.nodes[v]["cluster"])


def test_chained_model_export_still_one_edge_per_weight(tmp_path):
    torch.manual_seed(1)
    graph = LayeredGraph.from_module(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)))
    G = export_graphml(graph, tmp_path / "m.graphml")
    H_ = read_graphml(tmp_path / "m.graphml")
    assert not H_.is_multigraph() and H_.number_of_edges() == G.number_of_edges() == _nonzero(graph)
    for t, layer in enumerate(graph):
        lo, hi = graph.level_names()[t], graph.level_names()[t + 1]
        w = np.array([[H_.edges[f"{lo}:{i}", f"{hi}:{j}"]["weight"] for j in range(layer.n_out)]
                      for i in range(layer.n_in())])
        np.testing.assert_array_equal(w, layer.signed().double().numpy())


def test_llama_swiglu_keeps_gate_and_up(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    model = transformers.LlamaForCausalLM(cfg).eval()
    graph = LayeredGraph.from_module(model, example=torch.randint(0, 50, (1, 4)))
    path = tmp_path / "llama.graphml"
    G = export_graphml(graph, path)
    H_ = read_graphml(path)
    assert G.number_of_edges() == H_.number_of_edges() == _nonzero(graph)
    ups = [name for name in graph.layer_names if name.endswith("up_proj")]
    assert ups and all(sum(1 for *_, d in H_.edges(data=True) if d["layer"] == name) == 16 * 32 for name in ups)
    assert all("," not in d["layer"] for *_, d in H_.edges(data=True))


def test_graph_attributes_name_each_label_source(swiglu_graph, tmp_path):
    graph = swiglu_graph
    network = cluster_network(graph, 2, random_state=0)
    per_layer = cluster_layers(graph, 2, random_state=0)
    export_graphml(graph, tmp_path / "x.graphml", per_layer, network=network)
    H_ = read_graphml(tmp_path / "x.graphml")
    assert H_.graph["cluster_source"] == "network"
    assert H_.graph["cluster_in_out_source"] == "per-layer" and H_.graph["cluster_in_out_network_wide"] is False
    assert "network_wide" not in H_.graph  # the old name read as if it were about `cluster`
    export_graphml(graph, tmp_path / "y.graphml", network)
    H_ = read_graphml(tmp_path / "y.graphml")
    assert H_.graph["cluster_source"] == H_.graph["cluster_in_out_source"] == "network"
    assert H_.graph["cluster_in_out_network_wide"] is True
    export_graphml(graph, tmp_path / "z.graphml")
    assert read_graphml(tmp_path / "z.graphml").graph["cluster_in_out_source"] == "none"


def test_size_estimate_is_close(swiglu_graph, tmp_path):
    from graphinterp.reports.io import graphml_size_estimate

    G = export_graphml(swiglu_graph, tmp_path / "s.graphml", cluster_network(swiglu_graph, 2, random_state=0))
    actual = (tmp_path / "s.graphml").stat().st_size
    assert abs(graphml_size_estimate(G, sample=50) - actual) < 0.1 * actual


def test_write_graphml_progress_bar_and_multigraph_ids_are_unique(tmp_path, capsys):
    G = nx.MultiDiGraph()
    G.add_edge("a", "b", key="l1", weight=1.0, layer="l1")
    G.add_edge("a", "b", key="l2", weight=2.0, layer="l2")
    G.add_edge("b", "c", key="l1", weight=3.0, layer="l1")
    write_graphml(G, tmp_path / "m.graphml", progress=True)
    assert "writing GraphML" in capsys.readouterr().err
    text = (tmp_path / "m.graphml").read_text()
    edge_ids = [line.split(' id="')[1].split('"')[0] for line in text.splitlines() if "<edge " in line]
    assert len(edge_ids) == len(set(edge_ids)) == 3
    H_ = read_graphml(tmp_path / "m.graphml")
    assert sorted(d["weight"] for *_, d in H_.edges(data=True)) == [1.0, 2.0, 3.0]


# ------------------------------------------------------------------ the command line
@pytest.fixture
def swiglu_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "swiglu.pt"
    torch.save(TwoBlocks(), path)
    return path


def _export(*args):
    with pytest.warns(UserWarning, match="weights_only=False"):
        return invoke("export", *args, "--trust-pickle")


def test_cli_export_keeps_every_weight_and_says_where_labels_come_from(swiglu_file, tmp_path):
    out = tmp_path / "g.graphml"
    res = _export(swiglu_file, out, "--k", "2")
    assert res.exit_code == 0, res.output
    G = read_graphml(out)
    assert G.number_of_edges() == 2 * 3 * D * H
    assert f"{2 * 3 * D * H} edges ({2 * D * H} pairs of nodes joined by several layers" in res.stdout
    assert "cluster labels network-wide, cluster_in / cluster_out per-layer" in res.stdout
    assert G.graph["cluster_source"] == "network" and G.graph["cluster_in_out_source"] == "per-layer"
    # the residual stream is read and written by both blocks: the node graph has cycles, said, not dag-as-acyclic;
    # a stream node's per-layer labels differ between the layers reading it: -1, counted, and the output says so
    assert G.graph["dag"] and G.graph["acyclic"] is False and not nx.is_directed_acyclic_graph(G)
    clashing = G.graph["nodes_with_clashing_layer_labels"]
    assert clashing > 0 and f"note: {clashing} node(s) are read or written by several clustered layers" in res.stdout
    assert all(d["level"] == d["space"] for _, d in G.nodes(data=True))
    stream = [n for n, d in G.nodes(data=True) if G.in_degree(n) and G.out_degree(n) and d["cluster_in"] == -1]
    assert len(stream) > 0
    per_layer = _export(swiglu_file, tmp_path / "p.graphml", "--k", "2", "--per-layer", "--json")  # said there too
    summary = json.loads(per_layer.stdout)
    assert summary["nodes_with_clashing_layer_labels"] == read_graphml(tmp_path / "p.graphml").graph[
        "nodes_with_clashing_layer_labels"] > 0 and summary["acyclic"] is False
    assert any("node labels do not reproduce the per-layer E" in n for n in summary["notes"])


def test_cli_export_progress_bars_on_stderr_hidden_by_quiet_and_json(swiglu_file, tmp_path):
    res = _export(swiglu_file, tmp_path / "a.graphml", "--k", "2")
    assert res.exit_code == 0 and "writing GraphML" in res.stderr and "building graph" in res.stderr
    res = _export(swiglu_file, tmp_path / "b.graphml", "--k", "2", "--quiet")
    assert res.exit_code == 0 and "writing GraphML" not in res.stderr and "building graph" not in res.stderr
    res = _export(swiglu_file, tmp_path / "c.graphml", "--k", "2", "--json")
    assert res.exit_code == 0 and "GraphML" not in res.stderr
    summary = json.loads(res.stdout)
    assert summary["edges"] == 2 * 3 * D * H and summary["multi_edge_pairs"] == 2 * D * H
    assert summary["cluster"] == "network" and summary["cluster_in_out"] == "per-layer"


def test_cli_export_notes_a_large_file_before_writing(swiglu_file, tmp_path, monkeypatch):
    import graphinterp.cli.export as export_cli

    monkeypatch.setattr(export_cli, "LARGE_EDGES", 100)
    res = _export(swiglu_file, tmp_path / "a.graphml", "--k", "2", "--quiet")
    assert res.exit_code == 0, res.output
    note = [line for line in res.stderr.splitlines() if line.startswith("note: writing")]
    assert len(note) == 1 and "MB of GraphML" in note[0] and "--min-weight" in note[0], res.stderr
    res = _export(swiglu_file, tmp_path / "b.graphml", "--k", "2", "--quiet", "--min-weight", "10")  # few edges
    assert res.exit_code == 0 and "note: writing" not in res.stderr
    res = _export(swiglu_file, tmp_path / "c.graphml", "--k", "2", "--json")
    assert res.exit_code == 0 and "note: writing" in res.stderr
    assert any(n.startswith("writing") and "--min-weight" in n for n in json.loads(res.stdout)["notes"])


def test_special_doubles_are_written_as_xml_schema_spells_them(tmp_path):
    """Java GraphML readers (Gephi) parse NaN / INF / -INF, not Python's nan / inf."""
    import math

    import networkx as nx

    G = nx.DiGraph()
    G.add_edge(1, 2, weight=float("nan"))
    G.add_edge(2, 3, weight=float("inf"))
    G.add_edge(3, 4, weight=-float("inf"))
    write_graphml(G, tmp_path / "s.graphml")
    text = (tmp_path / "s.graphml").read_text()
    assert ">NaN<" in text and ">INF<" in text and ">-INF<" in text and ">nan<" not in text
    back = [d["weight"] for _, _, d in read_graphml(tmp_path / "s.graphml").edges(data=True)]
    assert math.isnan(back[0]) and back[1:] == [float("inf"), -float("inf")]


def test_cli_export_per_layer_dag_says_its_cluster_is_none(swiglu_file, tmp_path):
    """A DAG's node attribute cluster holds network-wide labels or -1: with --per-layer every node's is -1, which the
    file and the output called 'per-layer' labels (found on a tiny GPT-2: 580 nodes, all -1, cluster_source per-layer)."""
    out = tmp_path / "p.graphml"
    res = _export(swiglu_file, out, "--k", "2", "--per-layer")
    assert res.exit_code == 0, res.output
    G = read_graphml(out)
    assert all(d["cluster"] == -1 for _, d in G.nodes(data=True))
    assert G.graph["cluster_source"] == "none" and G.graph["cluster_in_out_source"] == "per-layer"
    assert "cluster labels none, cluster_in / cluster_out per-layer" in res.stdout
    assert f"E = {G.graph['E']:.4f} (per-layer labels) against" in res.stdout  # E is still of the per-layer labels
