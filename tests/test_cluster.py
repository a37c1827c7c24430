"""Per-layer and network-wide clustering of a layered graph; the Clustering record."""
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

from graphinterp.clustering.analysis import analyze
from graphinterp.clustering.cluster import Clustering, cluster_layers, cluster_network, parse_k_range
from graphinterp.clustering.labels import stored_clustering
from graphinterp.clustering.validation import check_k, live_sizes
from graphinterp.common.errors import ClusteringError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.clustering.metrics import clusterability_report


def planted_mlp(sizes=(6, 10, 4, 12), noise=0.02, seed=0):
    """784-free toy MLP 40 -> 32 -> 32 -> 10 whose two hidden layers share planted modules."""
    g = torch.Generator().manual_seed(seed)
    hid = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))  # 32 hidden neurons
    inp = torch.repeat_interleave(torch.arange(4), torch.tensor([10, 10, 10, 10]))
    model = nn.Sequential(nn.Linear(40, 32, bias=False), nn.ReLU(), nn.Linear(32, 32, bias=False), nn.ReLU(),
                          nn.Linear(32, 10, bias=False))
    with torch.no_grad():
        for lin, a, b in ((model[0], inp, hid), (model[2], hid, hid)):
            w = noise * torch.randn(lin.weight.shape, generator=g)
            w += (b[:, None] == a[None, :]) * (1 + torch.rand(lin.weight.shape, generator=g))
            lin.weight.copy_(w)
    return model, inp.numpy(), hid.numpy()


def test_network_wide_labels_are_consistent_and_recover_modules():
    model, inp, hid = planted_mlp()
    g = LayeredGraph.from_module(model)
    c = cluster_network(g, 4, layers=["0", "2"], random_state=0)
    assert c.network_wide
    assert np.array_equal(c.col_labels["0"], c.row_labels["2"])
    assert adjusted_rand_score(hid, c.col_labels["0"]) == 1.0
    assert adjusted_rand_score(inp, c.row_labels["0"]) == 1.0
    assert adjusted_rand_score(hid, c.col_labels["2"]) == 1.0
    assert clusterability_report(g, c).E > 0.98


def test_network_wide_single_layer_matches_bsgc_quality():
    model, _, hid = planted_mlp(seed=1)
    g = LayeredGraph.from_module(model)
    net = cluster_network(g, 4, layers=["2"], random_state=0)
    per = cluster_layers(g, 4, layers=["2"], random_state=0)
    assert adjusted_rand_score(net.col_labels["2"], per.col_labels["2"]) == 1.0


def test_network_wide_keeps_every_cluster_on_every_level():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4096, 64, bias=False), nn.ReLU(), nn.Linear(64, 64, bias=False), nn.ReLU(),
                          nn.Linear(64, 10, bias=False))
    g = LayeredGraph.from_module(model)
    c = cluster_network(g, 4, layers=["4", "6"], random_state=0)
    for name in ("4", "6"):
        sizes = c.sizes(name)
        assert (sizes > 0).all(), sizes


def test_non_consecutive_layers_form_separate_runs():
    model, _, _ = planted_mlp()
    g = LayeredGraph.from_module(model)
    c = cluster_network(g, 2, layers=["0", "4"], random_state=0)
    assert c.layer_names == ["0", "4"]
    # each run is clustered on its own: the labels are those of the layer clustered alone
    alone0 = cluster_network(g, 2, layers=["0"], random_state=0)
    alone4 = cluster_network(g, 2, layers=["4"], random_state=0)
    assert np.array_equal(c.row_labels["0"], alone0.row_labels["0"])
    assert np.array_equal(c.col_labels["0"], alone0.col_labels["0"])
    assert adjusted_rand_score(c.row_labels["4"], alone4.row_labels["4"]) == 1.0
    assert adjusted_rand_score(c.col_labels["4"], alone4.col_labels["4"]) == 1.0
    assert (c.sizes("0") > 0).all() and (c.sizes("4") > 0).all()
    assert clusterability_report(g, c).layers[0].E > 0.99  # the planted layer stays almost block-diagonal
    model4, inp, hid = planted_mlp()
    c4 = cluster_network(LayeredGraph.from_module(model4), 4, layers=["0", "4"], random_state=0)
    assert adjusted_rand_score(inp, c4.row_labels["0"]) == 1.0 and adjusted_rand_score(hid, c4.col_labels["0"]) == 1.0
    assert c4.row_labels["4"].shape == (32,) and c4.col_labels["4"].shape == (10,)


def test_clustering_roundtrip_and_validation():
    model, _, _ = planted_mlp()
    g = LayeredGraph.from_module(model)
    c = cluster_layers(g, 3, random_state=0)
    d = c.to_dict()
    back = Clustering.from_dict(d)
    assert back.layer_names == c.layer_names and back.k == 3
    for n in c.layer_names:
        assert np.array_equal(back.row_labels[n], c.row_labels[n])
    back.validate(g)
    other = LayeredGraph.from_module(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(ClusteringError, match="does not have|another model"):
        c.validate(other)
    with pytest.raises(ClusteringError, match="malformed"):
        Clustering.from_dict({"k": 2})
    with pytest.raises(ClusteringError, match="not clustered"):
        c.labels("nope")


def test_k_errors_name_the_layer():
    model, _, _ = planted_mlp()
    g = LayeredGraph.from_module(model)
    with pytest.raises(ClusteringError, match="out of range for layer '4'.*10 non-isolated outputs.*k <= 10"):
        cluster_layers(g, 11, random_state=0)
    with pytest.raises(ClusteringError, match="out of range for layer '4'"):
        cluster_network(g, 11, random_state=0)


def _dead_mlp():
    """4 -> 6 -> 5 with input 3 of the first layer and output 4 of the second all zero."""
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 5, bias=False))
    with torch.no_grad():
        model[0].weight[:, 3] = 0
        model[2].weight[4] = 0
    return LayeredGraph.from_module(model)


def test_check_k_is_the_one_rule_non_isolated_nodes_per_side():
    g = _dead_mlp()
    assert live_sizes(g["0"]) == (3, 6) and live_sizes(g["2"]) == (6, 4)
    assert check_k(3, g) == 3 and check_k(np.int64(4), g, ["2"]) == 4
    with pytest.raises(ClusteringError, match="k=4 is out of range for layer '0': it has 3 non-isolated inputs"):
        check_k(4, g)  # 4 nodes, but one is isolated
    with pytest.raises(ClusteringError, match="layer '2'.*use 2 <= k <= 4"):
        check_k(5, g, ["2"])
    for bad in (1, 0, -3):
        with pytest.raises(ClusteringError, match="at least 2"):
            check_k(bad)
    for bad in ("4", 4.0, True, None):
        with pytest.raises(ClusteringError, match="must be an integer"):
            check_k(bad)
    # every clustering entry point applies it, with the same message
    for fn in (cluster_layers, cluster_network):
        with pytest.raises(ClusteringError) as err:
            fn(g, 4, random_state=0)
        assert str(err.value).startswith("k=4 is out of range for layer '0': it has 3 non-isolated inputs")
    with pytest.raises(ClusteringError, match="out of range for layer '0'"):
        analyze(g, 4, layers=["0"])
    assert analyze(g, 4).skipped["0"].startswith("fewer than k=4")
    with pytest.raises(ClusteringError, match="at least 2"):
        analyze(g, [1, 2])
    c = cluster_layers(g, 3, random_state=0)
    assert c.row_labels["0"][3] == -1 and c.col_labels["2"][4] == -1


def test_clustering_is_validated_when_built():
    rows, cols = {"a": np.array([0, 1, -1])}, {"a": np.array([1, 0])}
    assert Clustering(2, rows, cols).row_labels["a"].dtype == np.int64
    with pytest.raises(ClusteringError, match="k must be an integer >= 2"):
        Clustering(1, {"a": np.array([0, 0])}, {"a": np.array([0])})
    with pytest.raises(ClusteringError, match="k must be an integer >= 2"):
        Clustering("2", rows, cols)
    with pytest.raises(ClusteringError, match="must be a flat array of integers, got float64"):
        Clustering(2, {"a": np.array([0.0, 1.0])}, cols)
    with pytest.raises(ClusteringError, match="must lie in -1..1"):
        Clustering(2, {"a": np.array([0, 2])}, cols)
    with pytest.raises(ClusteringError, match="same layers"):
        Clustering(2, rows, {"b": np.array([1, 0])})
    with pytest.raises(ClusteringError, match="k=5 but the labels use 2 cluster"):
        Clustering(5, rows, cols)


@pytest.mark.parametrize("record, match", [
    ({"k": "4", "layers": [{"name": "a", "rows": [0, 1, 2, 3], "cols": [0, 1, 2, 3]}]}, "k must be an integer >= 2, got '4'"),
    ({"k": 2, "layers": [{"name": "a", "rows": [0.0, 1.0], "cols": [0, 1]}]}, "got float64"),
    ({"k": 1000, "layers": [{"name": "a", "rows": [0, 1, 2, 3], "cols": [0, 1, 2, 3]}]}, "k=1000 but the labels use 4"),
    ({"k": 2, "layers": [{"name": "a", "rows": [True, False], "cols": [0, 1]}]}, "got bool"),
    ({"k": 2, "layers": [{"name": "a", "rows": "01", "cols": [0, 1]}]}, "not a list"),
])
def test_stored_record_errors_are_one_line(record, match):
    with pytest.raises(ClusteringError, match=match) as err:
        stored_clustering(record)
    message = str(err.value)
    assert message.startswith("malformed clustering record (") and "\n" not in message
    assert stored_clustering(None) is None and stored_clustering({}) is None


def test_stored_clustering_validates_against_the_graph():
    g = _dead_mlp()
    c = cluster_layers(g, 2, random_state=0)
    assert stored_clustering(c.to_dict(), g).layer_names == ["0", "2"]
    other = LayeredGraph.from_module(nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 5)))
    with pytest.raises(ClusteringError, match="another model"):
        stored_clustering(c.to_dict(), other)


def test_parse_k_range():
    assert parse_k_range("2..4") == [2, 3, 4]
    assert parse_k_range("4") == [4]
    with pytest.raises(ClusteringError):
        parse_k_range("1..3")
    with pytest.raises(ClusteringError):
        parse_k_range("four")


def test_network_wide_labels_must_agree_between_consecutive_layers():
    model, _, _ = planted_mlp()
    g = LayeredGraph.from_module(model)
    c = cluster_network(g, 3, layers=["0", "2"], random_state=0)
    assert c.validate(g) is c
    record = c.to_dict()
    record["layers"][1]["rows"] = [(x + 1) % 3 for x in record["layers"][1]["rows"]]
    with pytest.raises(ClusteringError, match="disagree between the outputs of layer '0' and the inputs of layer '2'"):
        stored_clustering(record, g)
    record["network_wide"] = False  # per-layer labels of two layers are unrelated
    assert stored_clustering(record, g).layer_names == ["0", "2"]


def _with_depthwise():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                      nn.Conv2d(8, 6, 1))
    return LayeredGraph.from_module(m, input_shape=(3, 8, 8))


def test_the_python_path_leaves_block_diagonal_layers_out_as_analyze_does():
    """cluster_layers + clusterability_report scored a depthwise conv at E = 1 (model E 0.82 vs analyze's 0.73)."""
    from graphinterp import analyze, clusterability_report

    g = _with_depthwise()
    c = cluster_layers(g, 2, random_state=0)
    assert c.layer_names == ["0", "4"] and "depthwise" in c.meta["left_out"]["2"]
    assert clusterability_report(g, c).E == pytest.approx(analyze(g, 2, random_state=0).reports[2].E)
    net = cluster_network(g, 2, random_state=0)
    assert "2" not in net.layer_names and "2" in net.meta["left_out"]
    with pytest.raises(ClusteringError, match="layer '2': depthwise convolution"):
        cluster_layers(g, 2, layers=["0", "2"], random_state=0)
    # labels made by hand for the depthwise layer: refused, not scored at E = 1
    forced = Clustering(2, {"2": np.arange(8) % 2}, {"2": np.arange(8) % 2})
    with pytest.raises(ClusteringError, match="covers layer '2', a depthwise convolution: E would be 1"):
        clusterability_report(g, forced)


def test_export_notes_and_skips_block_diagonal_layers(tmp_path):
    """export stored E with the depthwise layer scored at 1 (its own layer choice checked sizes only)."""
    import networkx as nx
    from click.testing import CliRunner

    from graphinterp.cli.main import cli as main

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                        nn.Conv2d(8, 6, 1))
    path, out = tmp_path / "dw.pt", tmp_path / "dw.graphml"
    torch.save(net, path)
    res = CliRunner().invoke(main, ["export", str(path), str(out), "--trust-pickle", "--input-shape", "3,8,8",
                                    "--k", "2", "--per-layer", "-q"])
    assert res.exit_code == 0, res.output
    assert "not clustered: 2: depthwise convolution" in res.output
    expected = analyze(LayeredGraph.from_module(net, input_shape=(3, 8, 8)), 2, random_state=0).reports[2].E
    assert nx.read_graphml(out).graph["E"] == pytest.approx(expected, abs=1e-6)


def test_analyze_checks_every_k_first_and_reports_progress_per_layer(monkeypatch):
    """The progress bar counted k values only: `analyze vit_b_16 --k 4` sat silent for 53 s. Now one tick per
    layer clustered; every k is checked before any clustering starts: a k that fits no layer is left out (with
    the reason), and when no k fits it is refused before any clustering."""
    import graphinterp.clustering.analysis as analysis_module
    from graphinterp.clustering.analysis import analyze

    g = LayeredGraph.from_module(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 5)))
    ticks = []
    c = cluster_layers(g, 2, random_state=0, progress=lambda: ticks.append(1))
    assert len(ticks) == len(c.layer_names) == 3
    calls = []
    real = analysis_module.cluster_layers
    monkeypatch.setattr(analysis_module, "cluster_layers", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    with pytest.raises(ClusteringError, match="k=50 .*nor at k=60"):
        analyze(g, [50, 60], random_state=0)
    assert calls == []
    result = analyze(g, [2, 50], random_state=0)
    assert calls == [2] and result.ks == [2] and list(result.unfit_ks) == [50]
    analyze(g, [2, 5], random_state=0, progress=True)
    assert calls == [2, 2, 5]


def test_a_layer_skipped_over_a_range_of_k_is_said_to_miss_the_smallest_k():
    """`--k 2..5` said 'fewer than k=5 non-isolated nodes' of a 3-input layer that was also skipped at k=4."""
    g = LayeredGraph.from_module(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8)))
    result = analyze(g, [2, 3, 4, 5], random_state=0)
    assert result.skipped == {"0": "fewer than k=4 non-isolated nodes (3x8)"}


def test_a_state_dict_names_a_fused_in_proj_as_the_traced_module_does():
    from graphinterp.graph.model_trace import trace_graph
    from graphinterp.graph.state_graph import graph_layers_from_state_dict

    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1).eval()
    from_state = [layer.name for layer in graph_layers_from_state_dict(enc.state_dict(), layerwise=True)[0]]
    assert from_state == trace_graph(enc, input_shape=(5, 16)).layer_names  # was 'layers.0.self_attn.in_proj_'


def test_the_skip_reason_names_the_smallest_k_whatever_the_order_given():
    g = LayeredGraph.from_module(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8)))
    assert analyze(g, [6, 4, 2], random_state=0).skipped == {"0": "fewer than k=4 non-isolated nodes (3x8)"}
