"""Filan et al.'s unit-norm rescaling: the rescaled weights compute the same function through ReLUs."""
import copy

import pytest
import torch
from torch import nn

from _graph_helpers import Residual

from graphinterp import LayeredGraph
from graphinterp.common.errors import UnsupportedModelError
from graphinterp.graph.rescale import unit_norm_rescaled


def _with_weights(model: nn.Module, graph: LayeredGraph) -> nn.Module:
    """A copy of ``model`` holding the graph's weights (bias-free models: the graph has every parameter)."""
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for layer in graph.layers:
            params[layer.param_name].copy_(layer.weight.view_as(params[layer.param_name]))
    return out


def _hidden_norms(graph):
    return [layer.weight.flatten(1).norm(dim=1) for layer in graph.layers[:-1]]


def test_a_relu_mlp_computes_the_same_function_with_unit_incoming_norms():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 5, bias=False), nn.ReLU(),
                        nn.Linear(5, 3, bias=False))
    with torch.no_grad():
        net[0].weight.mul_(torch.logspace(-2, 2, 8)[:, None])  # units of very different scales
    g = LayeredGraph.from_module(net)
    r = unit_norm_rescaled(g)
    for norms in _hidden_norms(r):
        torch.testing.assert_close(norms, torch.ones_like(norms))
    x = torch.randn(50, 6)
    torch.testing.assert_close(_with_weights(net, r)(x), net(x), rtol=1e-5, atol=1e-5)
    # the path products (here the product of the matrices) are those of the original weights
    prod = lambda gr: gr["4"].weight.double() @ gr["2"].weight.double() @ gr["0"].weight.double()  # noqa: E731
    torch.testing.assert_close(prod(r), prod(g), rtol=1e-5, atol=1e-6)  # the weights are stored in float32
    assert not torch.equal(r["4"].weight, g["4"].weight) and r["4"].weight.dtype == g["4"].weight.dtype


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, bias=False)
        self.c2 = nn.Conv2d(4, 6, 3, groups=2, bias=False)
        self.fc1 = nn.Linear(6 * 2 * 2, 5, bias=False)
        self.fc2 = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def test_a_cnn_with_a_grouped_convolution_and_a_flatten_keeps_its_function():
    torch.manual_seed(1)
    net = _ConvNet()
    g = LayeredGraph.from_module(net, input_shape=(2, 6, 6))
    assert g.chained and g["fc1"].grouped_inputs and g["c2"].groups == 2
    r = unit_norm_rescaled(g)
    for norms in _hidden_norms(r):
        torch.testing.assert_close(norms, torch.ones_like(norms))
    x = torch.randn(20, 2, 6, 6)
    torch.testing.assert_close(_with_weights(net, r)(x), net(x), rtol=1e-5, atol=1e-5)


def test_a_dead_unit_keeps_its_outgoing_weights():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[0].weight[1] = 0.0
    g = LayeredGraph.from_module(net)
    r = unit_norm_rescaled(g)
    assert torch.equal(r["0"].weight[1], torch.zeros(4)) and torch.equal(r["2"].weight[:, 1], g["2"].weight[:, 1])


def test_graphs_that_are_not_chains_are_refused():
    with pytest.raises(UnsupportedModelError, match="residual streams"):
        unit_norm_rescaled(LayeredGraph.from_module(Residual(4, 6, 2)))
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(UnsupportedModelError, match="one by one"):
        unit_norm_rescaled(LayeredGraph.from_module(mlp, layerwise=True))


def test_analyze_unit_norm_clusters_the_rescaled_weights_and_refuses_a_dag(tmp_path):
    import json

    from click.testing import CliRunner

    from graphinterp import RESCALED_NOTE, load_graph
    from graphinterp.cli.main import cli

    torch.manual_seed(3)
    path = tmp_path / "mlp.pt"
    torch.save(nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 5)).state_dict(), path)
    run = lambda *a: CliRunner().invoke(cli, ["analyze", str(path), "--k", "2", "--json", *a])  # noqa: E731
    plain, scaled = json.loads(run().output), json.loads(run("--unit-norm").output)
    assert RESCALED_NOTE in scaled["notes"] and RESCALED_NOTE not in plain["notes"]
    _, graph = load_graph(str(path), unit_norm=True)
    masses = [layer["mass"] for layer in scaled["results"][0]["layers"]]
    assert masses == pytest.approx([float(graph[n].squared().sum()) for n in graph.layer_names])
    assert masses != [layer["mass"] for layer in plain["results"][0]["layers"]]
    resnet = tmp_path / "res.th"
    from graphinterp.sources.cifar_resnet import cifar_resnet

    torch.save(cifar_resnet(depth=8).state_dict(), resnet)
    res = CliRunner().invoke(cli, ["analyze", str(resnet), "--k", "2", "--unit-norm"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: unit-norm rescaling needs a chain")


def test_the_note_says_when_the_rescaled_weights_are_another_networks():
    from graphinterp import load_graph

    relu = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opened, _ = load_graph(relu, unit_norm=True)
    assert "(the same function: the model's activation and normalisation modules let a unit's scale through" in opened.notes[-1]
    tanh = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    opened, _ = load_graph(tanh, unit_norm=True)
    assert "this model applies Tanh" in opened.notes[-1] and "its function changes" in opened.notes[-1]
    bn = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).eval()
    assert "let a unit's scale through" in load_graph(bn, unit_norm=True)[0].notes[-1]  # folded: an affine map per unit
    assert "applies BatchNorm1d" in load_graph(bn, unit_norm=True, fold=False)[0].notes[-1]


def test_unit_norm_with_layerwise_is_a_usage_error():
    from click.testing import CliRunner

    from graphinterp.cli.main import cli

    for command in ("analyze", "benchmark"):
        res = CliRunner().invoke(cli, [command, "resnet18", "--unit-norm", "--layerwise"])
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and "--layerwise the layers are not linked" in lines[0]


def test_exports_and_figures_of_rescaled_weights_say_so(tmp_path):
    import networkx as nx
    from click.testing import CliRunner

    from graphinterp.cli.main import cli

    torch.manual_seed(6)
    path = tmp_path / "mlp.pt"
    torch.save(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)).state_dict(), path)
    for flag, expected in (("--unit-norm", "unit-norm (Filan et al.)"), (None, "none")):
        out = tmp_path / f"g{bool(flag)}.graphml"
        res = CliRunner().invoke(cli, ["export", str(path), str(out), "--k", "2", "-q", *([flag] if flag else [])])
        assert res.exit_code == 0, res.output
        assert nx.read_graphml(out).graph["weight_rescaling"] == expected
    res = CliRunner().invoke(cli, ["plot", "layer", str(path), "--layer", "2", "--out", str(tmp_path / "f.png"),
                                   "--unit-norm"])
    assert res.exit_code == 0 and "weights unit-norm rescaled)" in res.output.splitlines()[-1]


def test_pooled_e_says_when_one_layer_holds_nearly_all_the_squared_weight(two_layer_scale=10.0):
    from graphinterp import analyze

    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(8, 6, bias=False), nn.ReLU(), nn.Linear(6, 4, bias=False))
    g = LayeredGraph.from_module(net)
    assert analyze(g, [2], random_state=0).mass_weighted()["note"] is None
    with torch.no_grad():
        net[2].weight.mul_(two_layer_scale)
    note = analyze(LayeredGraph.from_module(net), [2], random_state=0).mass_weighted()["note"]
    assert note is not None and note.startswith("layer 2 holds") and "the mass-weighted E is mostly that layer's E" in note


def test_an_export_says_whether_its_weights_are_folded_and_which_folds(tmp_path):
    """A GraphML file did not say whether its weights had normalisation folded in or were --no-fold's raw
    parameters (it said whether they were unit-norm rescaled): graph attributes weights_folded and folds."""
    import networkx as nx

    from _cli_helpers import invoke

    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
    path = tmp_path / "bn.pt"
    torch.save(model, path)
    for flag, folded in ((None, True), ("--no-fold", False)):
        out = tmp_path / f"g{folded}.graphml"
        res = invoke("export", path, out, "--k", "2", "-q", "--trust-pickle", *([flag] if flag else []))
        assert res.exit_code == 0, res.stderr
        G = nx.read_graphml(out)
        assert G.graph["weights_folded"] is folded and G.graph["folding"] == ("on" if folded else "off (--no-fold)")
        assert (G.graph["folds"] != "none") is folded and ("1" in G.graph["folds"]) is folded, G.graph["folds"]
    # a model with nothing to fold: folding on, but its weights are the raw parameters, and the file says so
    plain = tmp_path / "plain.pt"
    torch.save(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)), plain)
    res = invoke("export", plain, tmp_path / "plain.graphml", "--k", "2", "-q", "--trust-pickle")
    assert res.exit_code == 0, res.stderr
    G = nx.read_graphml(tmp_path / "plain.graphml")
    assert G.graph["weights_folded"] is False and G.graph["folding"] == "on" and G.graph["folds"] == "none"
