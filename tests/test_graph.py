"""The layered graph: tracing, state_dict inference, edge weights, networkx conversion."""
import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

from graphinterp.common.errors import InvalidWeightsError, UnsupportedModelError
from graphinterp.graph.layered import LayeredGraph, layered_graph
from graphinterp.graph.layer import Layer


def paper_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 16 * 16, 64, bias=False), nn.ReLU(), nn.Linear(64, 64, bias=False), nn.ReLU(),
        nn.Linear(64, 10, bias=False),
    )


def test_mlp_chain_levels_and_names():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Dropout(), nn.Linear(5, 3))
    g = LayeredGraph.from_module(model, input_shape=(3, 4))
    assert g.layer_names == ["1", "4"]
    assert g.level_sizes() == [12, 5, 3]
    assert g.chained


def test_cnn_flatten_grouping_preserves_mass():
    torch.manual_seed(0)
    g = LayeredGraph.from_module(paper_cnn())
    conv, fc1 = g[0], g[1]
    assert fc1.in_groups == 16 and fc1.shape() == (16, 64) and fc1.shape("fine") == (4096, 64)
    # squared edge weight of a conv edge = the kernel's sum of squares
    assert torch.allclose(conv.squared()[2, 5], conv.weight[5, 2].square().sum())
    # a grouped Linear edge = the norm over the channel's 256 features (channel-major flatten)
    w = fc1.weight
    assert torch.allclose(fc1.squared()[3, 7], w[7, 3 * 256:(4 * 256)].square().sum())
    for layer in g:
        for view in ("grouped", "fine"):
            assert torch.allclose(layer.squared(view).sum(), layer.weight.square().sum())
    assert torch.allclose(fc1.magnitude().square(), fc1.squared(), rtol=1e-5)


def test_signed_edges_take_sign_of_kernel_sum():
    w = torch.zeros(2, 2, 1, 2)
    w[0, 0] = torch.tensor([[-3.0, 1.0]])
    w[1, 1] = torch.tensor([[2.0, 2.0]])
    layer = Layer("c", "conv2d", w)
    signed = layer.signed()
    assert signed[0, 0] == pytest.approx(-np.sqrt(10))
    assert signed[1, 1] == pytest.approx(np.sqrt(8))
    assert signed[0, 1] == 0


def test_functional_relu_and_batchnorm_are_pass_through():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 5)
            self.bn = nn.BatchNorm1d(5)
            self.b = nn.Linear(5, 2)

        def forward(self, x):
            return self.b(torch.relu(self.bn(self.a(x))))

    net = Net().train()
    g = LayeredGraph.from_module(net)
    assert g.layer_names == ["a", "b"]
    assert net.training, "tracing must restore the training mode"


@pytest.mark.parametrize("forward", ["residual", "concat"])
def test_residual_and_concat_become_a_dag_on_shared_nodes(forward):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.c = nn.Linear(8 if forward == "concat" else 4, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            y = self.b(h)
            return self.c(torch.cat([y, h], 1) if forward == "concat" else y + h)

    g = LayeredGraph.from_module(Net())
    assert not g.chained and g.layer_names == ["a", "b", "c"]
    if forward == "residual":  # b writes into a's nodes; c reads that one stream
        assert list(g.dst_nodes("b")) == list(g.dst_nodes("a")) == list(g.src_nodes("c"))
    else:  # c reads b's outputs then a's outputs, in the order of the concatenation
        assert list(g.src_nodes("c")) == list(g.dst_nodes("b")) + list(g.dst_nodes("a"))
    g = LayeredGraph.from_module(Net(), layerwise=True)
    assert not g.chained and g.layer_names == ["a", "b", "c"]


def test_conv1d_is_a_layer_and_unsupported_modules_are_listed():
    g = LayeredGraph.from_module(nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(3, 2)), input_shape=(2, 3))
    assert [l.kind for l in g] == ["conv1d", "linear"] and g.chained and g.coverage.share == 1.0
    with pytest.raises(UnsupportedModelError, match="no Linear, Conv"):
        LayeredGraph.from_module(nn.Sequential(nn.ReLU()))

    class WithLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(5, 6, batch_first=True)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    g = LayeredGraph.from_module(WithLSTM(), input_shape=(4, 5))
    assert g.layer_names == ["head"]
    assert {m.module_type for m in g.coverage.missing} == {"LSTM"}
    assert g.coverage.covered == 18 and g.coverage.total == 18 + 4 * 6 * (5 + 6)


def test_nan_weights_raise():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(InvalidWeightsError, match="NaN"):
        LayeredGraph.from_module(model)
    big = torch.full((2, 3), 3e38)  # finite weights whose float32 sum overflows are still accepted
    assert Layer("big", "linear", big).n_in() == 3
    big[1, 2] = float("inf")
    with pytest.raises(InvalidWeightsError, match="1 NaN/inf"):
        Layer("big", "linear", big)


def test_state_dict_matches_module_and_strips_prefix():
    torch.manual_seed(1)
    model = paper_cnn()
    g_mod = LayeredGraph.from_module(model)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    g_sd = layered_graph(sd)
    assert g_sd.layer_names == g_mod.layer_names
    for a, b in zip(g_sd, g_mod):
        assert a.in_groups == b.in_groups
        assert torch.equal(a.squared(), b.squared())


def test_state_dict_errors_and_layer_by_layer_fallback():
    with pytest.raises(UnsupportedModelError, match="no layer weight"):
        LayeredGraph.from_state_dict({"bn.weight": torch.ones(3)})
    bad = {"a.weight": torch.ones(4, 3), "b.weight": torch.ones(2, 5)}
    g = LayeredGraph.from_state_dict(bad)
    assert not g.chained and any("does not chain" in n for n in g.coverage.notes)
    res = {"conv1.weight": torch.ones(4, 3, 3, 3), "layer1.0.conv1.weight": torch.ones(4, 4, 3, 3)}
    g = LayeredGraph.from_state_dict(res)
    assert not g.chained and any("residual" in n for n in g.coverage.notes)


def test_state_dict_guesses_about_convolutions_are_said():
    """A state_dict cannot tell a ConvTranspose2d weight (in, out, ...) from a Conv2d weight (out, in, ...):
    the inferred groups and the orientation of a linked graph's convolutions are stated as guesses."""
    from graphinterp.graph.load import OpenedModel, model_graph
    from graphinterp.graph.state_graph import CONV_LAYOUT_NOTE

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 4, 2, 2), nn.ReLU(), nn.Conv2d(4, 3, 1))
    g = LayeredGraph.from_state_dict(model.state_dict())
    assert g["2"].groups == 2  # (8, 4, 2, 2) read as 8 -> 8 in 2 groups: a guess, and said to be one
    assert any(n.startswith("layer '2': groups=2 is a guess") for n in g.coverage.notes)
    square = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 8, 2, 2), nn.ReLU(), nn.Conv2d(8, 3, 1))
    opened = OpenedModel("sd", "state_dict", None, square.state_dict())
    g = model_graph(opened)
    assert g.chained and g["2"].groups == 1 and CONV_LAYOUT_NOTE in opened.notes
    mlp = OpenedModel("sd", "state_dict", None, nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).state_dict())
    model_graph(mlp)
    assert CONV_LAYOUT_NOTE not in mlp.notes and not any("groups=" in n for n in g.coverage.notes)


def test_third_party_state_dicts(pretrained_dir):
    sd = torch.load(pretrained_dir / "cifar-cnn.pth", map_location="cpu", weights_only=True)
    g = LayeredGraph.from_state_dict(sd)
    assert g.level_sizes() == [3, 16, 16, 16, 16, 16, 10]
    sd = torch.load(pretrained_dir / "mnist-mlp-bn-300-301-302-303.pt", map_location="cpu", weights_only=True)
    assert LayeredGraph.from_state_dict(sd).level_sizes() == [784, 300, 301, 302, 303, 10]


def test_grouped_conv_is_block_sparse():
    conv = nn.Conv2d(4, 6, 3, groups=2, bias=False)
    layer = LayeredGraph.from_module(nn.Sequential(conv, nn.ReLU()), input_shape=(4, 8, 8), layerwise=True)[0]
    sq = layer.squared()
    assert sq.shape == (4, 6)
    assert torch.all(sq[:2, 3:] == 0) and torch.all(sq[2:, :3] == 0)
    assert torch.allclose(sq.sum(), conv.weight.square().sum())


def test_to_networkx_attributes_and_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight[1, 2] = 0.0
    g = LayeredGraph.from_module(model)
    G = g.to_networkx()
    assert isinstance(G, nx.DiGraph)
    assert G.number_of_nodes() == 7 and G.number_of_edges() == 3 * 2 - 1 + 4
    w = float(model[0].weight.detach()[0, 1])
    edge = G.edges["input:1", "0:0"]
    assert edge["weight"] == pytest.approx(w) and edge["abs_weight"] == pytest.approx(abs(w))
    assert edge["sign"] == int(np.sign(w)) and edge["layer"] == "0"
    assert G.nodes["0:1"]["level"] == 1 and G.nodes["0:1"]["layer"] == "0"


def _three_linears():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))


def test_edges_of_an_unclustered_layer_are_never_within_a_cluster():
    from graphinterp.clustering.labels import Clustering

    g = LayeredGraph.from_module(_three_linears())
    G = g.to_networkx(Clustering(2, {"2": np.array([0, 0, 1, 1])}, {"2": np.array([0, 1, 0, 1])}))
    assert any(d["within"] for *_, d in G.edges(data=True) if d["layer"] == "2")
    assert not any(d["within"] for *_, d in G.edges(data=True) if d["layer"] == "0")


def test_edges_between_unlabelled_nodes_are_not_in_the_same_cluster():
    """Network-wide labels of layer '4' only: the nodes of layer '0' are -1 on both ends, not one cluster."""
    from graphinterp.clustering.cluster import cluster_network

    g = LayeredGraph.from_module(_three_linears())
    G = g.to_networkx(cluster_network(g, 2, layers=["4"], random_state=0))
    assert not any(d["same_cluster"] for *_, d in G.edges(data=True) if d["layer"] == "0")


def test_a_selection_of_non_consecutive_layers_is_not_a_chain():
    g = LayeredGraph.from_module(_three_linears())
    assert g.select(["0", "2"]).chained and g.select(["0", "4"]).chained is False
