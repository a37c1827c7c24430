"""Per-layer and network-wide clustering of a layered graph; the Clustering record."""
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

from graphinterp.clustering.cluster import Clustering, cluster_layers, cluster_network, parse_k_range
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
    with pytest.raises(ClusteringError, match="'4'.*out of range"):
        cluster_layers(g, 11, random_state=0)
    with pytest.raises(ClusteringError, match="out of range"):
        cluster_network(g, 50, random_state=0)


def test_parse_k_range():
    assert parse_k_range("2..4") == [2, 3, 4]
    assert parse_k_range("4") == [4]
    with pytest.raises(ClusteringError):
        parse_k_range("1..3")
    with pytest.raises(ClusteringError):
        parse_k_range("four")
