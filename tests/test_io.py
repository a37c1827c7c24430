"""GraphML export round trip and atomic writes."""
import os

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

from graphinterp.common.files import atomic_write
from graphinterp.clustering.cluster import cluster_layers, cluster_network
from graphinterp.graph.layered import LayeredGraph
from graphinterp.reports.io import export_graphml, read_graphml, write_csv, write_graphml, write_json


@pytest.fixture
def graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 8 * 8, 8, bias=False), nn.ReLU(), nn.Linear(8, 5, bias=False))
    return LayeredGraph.from_module(model, input_shape=(2, 8, 8))


@pytest.mark.parametrize("network_wide", [False, True])
def test_graphml_roundtrip(graph, tmp_path, network_wide):
    c = (cluster_network(graph, 2, layers=["3", "5"], random_state=0) if network_wide
         else cluster_layers(graph, 2, layers=["3", "5"], random_state=0))
    path = tmp_path / "g.graphml"
    G = export_graphml(graph, path, c)
    H = read_graphml(path)
    assert set(H.nodes) == set(G.nodes) and set(H.edges) == set(G.edges)
    for u, v, d in G.edges(data=True):
        assert H.edges[u, v]["weight"] == pytest.approx(d["weight"])
        assert H.edges[u, v]["within"] == d["within"]
    for n, d in G.nodes(data=True):
        assert H.nodes[n]["cluster"] == d["cluster"]
    # labels in the file equal the clustering's labels
    rows, cols = c.labels("5")
    assert [H.nodes[f"5:{j}"]["cluster_out"] for j in range(5)] == cols.tolist()
    assert [H.nodes[f"3:{i}"]["cluster_in"] for i in range(8)] == rows.tolist()
    assert H.graph["k"] == 2 and H.graph["cluster_in_out_network_wide"] == network_wide
    assert H.graph["cluster_in_out_source"] == ("network" if network_wide else "per-layer")
    # the mass inside clusters in the file equals E from the metrics
    within = sum(d["weight"] ** 2 for _, _, d in H.edges(data=True) if d["layer"] == "5" and d["within"])
    total = sum(d["weight"] ** 2 for _, _, d in H.edges(data=True) if d["layer"] == "5")
    from graphinterp.clustering.metrics import clusterability

    assert within / total == pytest.approx(float(clusterability(graph["5"].squared().double(), rows, cols)), rel=1e-5)


def test_flattening_of_non_scalar_attributes(tmp_path):
    G = nx.DiGraph(meta={"a": 1})
    G.add_node("x", arr=np.arange(3), none=None, f=np.float32(1.5))
    write_graphml(G, tmp_path / "a.graphml")
    H = read_graphml(tmp_path / "a.graphml")
    assert H.nodes["x"]["arr"] == "[0, 1, 2]" and H.nodes["x"]["f"] == 1.5 and H.graph["meta"] == '{"a": 1}'


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as fh:
            fh.write("partial")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_json_and_csv(tmp_path):
    write_json(tmp_path / "a.json", {"x": np.arange(2)})
    assert (tmp_path / "a.json").read_text().replace(" ", "").replace("\n", "") == '{"x":[0,1]}'
    write_csv(tmp_path / "a.csv", [{"k": 2, "E": 0.5}])
    assert (tmp_path / "a.csv").read_text().splitlines() == ["k,E", "2,0.5"]


def test_graphml_attribute_mixing_ints_and_floats_reads_back_as_float(tmp_path):
    """Edge weights 1 (int) and 0.5: the key is declared double, so networkx (and Gephi) read numbers, not text."""
    from graphinterp.reports.graphml import read_graphml, write_graphml

    G = nx.DiGraph()
    G.add_edge("a", "b", weight=1)
    G.add_edge("b", "c", weight=0.5)
    write_graphml(G, tmp_path / "g.graphml")
    H = read_graphml(tmp_path / "g.graphml")
    assert H.edges["a", "b"]["weight"] == 1.0 and isinstance(H.edges["a", "b"]["weight"], float)


def test_graphml_of_a_multigraph_without_parallel_edges_reads_back_as_a_multigraph(tmp_path):
    from graphinterp.reports.graphml import read_graphml, write_graphml

    G = nx.MultiDiGraph(multigraph=True)
    G.add_edge("a", "b", key="l1", weight=1.0)
    write_graphml(G, tmp_path / "g.graphml")
    assert read_graphml(tmp_path / "g.graphml").is_multigraph()


def test_atomic_write_keeps_the_permissions_of_the_file_it_replaces(tmp_path):
    """Replacing a private (0600) output must not make it world-readable."""
    target = tmp_path / "private.json"
    target.write_text("old")
    os.chmod(target, 0o600)
    with atomic_write(target, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new"
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o600)
    fresh = tmp_path / "fresh.json"
    with atomic_write(fresh, "w") as fh:
        fh.write("x")
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(fresh).st_mode & 0o777 == 0o666 & ~mask
