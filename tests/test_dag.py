"""Graphs of real architectures: DAG structure, folding checked against the model's own forward, coverage."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphinterp.clustering.cluster import cluster_network
from graphinterp.common.errors import ClusteringError
from graphinterp.graph.dag import ModelGraph
from graphinterp.graph.layered import LayeredGraph
from graphinterp.graph.model_trace import trace_graph


def _capture(model, module, x, kwargs=None):
    """Input and output of ``module`` during ``model(x)``."""
    seen = {}

    def hook(mod, inputs, output):
        seen["in"], seen["out"] = inputs[0].detach().clone(), output.detach().clone()

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(*([x] if x is not None else []), **(kwargs or {}))
    finally:
        handle.remove()
    return seen["in"], seen["out"]


def _randomise_bn(model):
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=gen) * 6 - 3  # trained gammas take both signs
            m.running_var = torch.rand(m.num_features, generator=gen) * 5 + 0.01
            m.running_mean = torch.randn(m.num_features, generator=gen)


def test_resnet_block_folds_batchnorm_exactly_and_links_the_stream():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).eval()
    _randomise_bn(model)
    g = trace_graph(model)
    assert isinstance(g, ModelGraph) and g.coverage.share == 1.0 and len(g.coverage.folded) == 20
    x = torch.randn(2, 3, 32, 32)
    conv, bn = model.layer1[0].conv1, model.layer1[0].bn1
    inp, _ = _capture(model, conv, x)
    _, expected = _capture(model, bn, x)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias - bn.running_mean * scale).detach()
    folded = g["layer1.0.conv1"].weight
    got = F.conv2d(inp, folded, stride=conv.stride, padding=conv.padding) + shift[None, :, None, None]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    raw = trace_graph(model, fold=False)
    assert torch.equal(raw["layer1.0.conv1"].weight, conv.weight.detach()) and not raw.coverage.folded
    # stream nodes: block conv2 and the stem write the nodes that the next block reads
    assert list(g.dst_nodes("layer1.0.conv2")) == list(g.dst_nodes("conv1")) == list(g.src_nodes("layer1.1.conv1"))
    assert list(g.dst_nodes("layer2.0.downsample.0")) == list(g.dst_nodes("layer2.0.conv2"))


def test_layernorm_gain_folds_into_the_next_linear():
    block = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 5))
    with torch.no_grad():
        block[0].weight.copy_(torch.randn(8))  # any sign: the gain is read directly by the Linear
        block[0].bias.copy_(torch.randn(8))
    g = trace_graph(nn.Sequential(nn.Linear(4, 8), block))
    x = torch.randn(3, 8)
    plain = F.layer_norm(x, (8,))
    lin = block[1]
    expected = block(x)
    bias = lin.bias + lin.weight @ block[0].bias
    torch.testing.assert_close(F.linear(plain, g["1.1"].weight, bias), expected.detach(), rtol=1e-5, atol=1e-5)
    assert any("1.0 (input gain)" in f for f in g.coverage.folded)


def test_channels_last_flatten_groups_features_by_channel():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.fc = nn.Linear(3 * 4 * 4, 5)

        def forward(self, x):
            return self.fc(self.conv(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1))

    net = Net()
    g = trace_graph(net, input_shape=(2, 4, 4))
    fc = g["fc"]
    assert fc.n_in() == 3 and list(g.src_nodes("fc")) == list(g.dst_nodes("conv"))
    # channel c's features are every third one in a channels-last flatten
    expected = net.fc.weight.detach().reshape(5, 16, 3).square().sum(1).T
    torch.testing.assert_close(fc.squared(), expected)


def test_grouped_and_depthwise_convs_keep_their_structure():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=4), nn.Conv2d(8, 8, 3, groups=8))
    g = trace_graph(model)
    assert [l.structure for l in g] == ["dense", "grouped", "depthwise"]
    sd_graph = LayeredGraph.from_state_dict(model.state_dict())
    for a, b in zip(g, sd_graph):
        assert a.groups == b.groups
        torch.testing.assert_close(a.squared(), b.squared())
    assert int(g[1].support().sum()) == 4 * 2 * 2 and int(g[2].support().sum()) == 8


def test_multihead_attention_reads_values_and_stream():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0), 2)
    g = trace_graph(enc, input_shape=(5, 16))
    assert isinstance(g, ModelGraph) and g.coverage.share == 1.0
    qkv = g.dst_nodes("layers.0.self_attn.in_proj")
    assert list(g.src_nodes("layers.0.self_attn.out_proj")) == list(qkv[32:])  # v = last third of in_proj
    # post-norm blocks: both sublayers write the stream that the next block's attention reads
    assert list(g.dst_nodes("layers.0.linear2")) == list(g.src_nodes("layers.1.self_attn.in_proj"))


def test_plain_gpt_with_tied_head_counts_the_weight_once():
    class GPT(nn.Module):
        def __init__(self, vocab=20, d=16):
            super().__init__()
            self.wte = nn.Embedding(vocab, d)
            self.fc_in, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            self.head = nn.Linear(d, vocab, bias=False)
            self.head.weight = self.wte.weight

        def forward(self, ids):
            h = self.wte(ids)
            h = h + self.fc_out(F.gelu(self.fc_in(h)))
            return self.head(h)

    model = GPT()
    g = trace_graph(model)
    assert g.coverage.total == 20 * 16 + 2 * 16 * 64 and g.coverage.share == 1.0
    assert list(g.src_nodes("fc_in")) == list(g.dst_nodes("fc_out"))
    # the output projection is named after the module that applies it (was "wte", the embedding), and said tied
    assert g.layer_names[-1] == "head" and g["head"].param == "wte.weight"
    assert model.get_submodule("head").weight is dict(model.named_parameters())[g["head"].param]
    assert g.coverage.tied == {"head": "wte.weight"}
    assert any(line.startswith("tied: layer head applies wte.weight") for line in g.coverage.summary_lines())


D, H, K = 12, 24, 3
STREAM, HIDDEN = np.arange(D) % K, np.arange(H) % K


class _PlantedResidual(nn.Module):
    """A residual block with K planted modules: stream unit i and hidden unit j connect iff i = j mod K."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(D, H, bias=False), nn.Linear(H, D, bias=False), nn.Linear(D, H, bias=False)
        torch.manual_seed(0)
        with torch.no_grad():
            for lin, rows, cols in ((self.a, HIDDEN, STREAM), (self.b, STREAM, HIDDEN), (self.c, HIDDEN, STREAM)):
                mask = torch.as_tensor(rows[:, None] == cols[None, :])
                lin.weight.copy_((torch.rand(lin.weight.shape) + 0.5) * mask)

    def forward(self, x):
        return self.c(x + self.b(torch.relu(self.a(x))))


def test_dag_network_clustering_recovers_planted_modules_through_a_residual():
    stream, hidden, k = STREAM, HIDDEN, K
    g = trace_graph(_PlantedResidual())
    c = cluster_network(g, k, random_state=0)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(stream, c.row_labels["a"]) == 1.0
    assert adjusted_rand_score(hidden, c.col_labels["a"]) == 1.0
    assert np.array_equal(c.col_labels["b"], c.row_labels["a"])  # b writes the stream a reads


def test_unknown_ops_are_reported_not_silent():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.fft.fft(self.a(x)).real)

    g = trace_graph(Odd())
    assert any("fft" in note for note in g.coverage.notes)


def test_grouped_conv_null_is_calibrated_and_depthwise_is_left_out():
    from graphinterp.clustering.analysis import analyze
    from graphinterp.clustering.significance import shuffle_test

    p_values = []
    for seed in range(10):
        torch.manual_seed(seed)
        g = trace_graph(nn.Sequential(nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 3, groups=4)))
        test = shuffle_test(g[1], 4, n_shuffles=19, n_init=2, random_state=seed)
        p_values.append(test.score.p_value)
    assert sum(p > 0.05 for p in p_values) >= 9, p_values
    g = trace_graph(nn.Sequential(nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 3, groups=16), nn.Conv2d(16, 8, 1)))
    result = analyze(g, 4, random_state=0)
    assert "depthwise" in result.skipped["1"] and [s.layer for s in result.reports[4].layers] == ["2"]


def test_export_of_a_dag_carries_network_labels_read_back_with_networkx(tmp_path):
    import networkx as nx
    from click.testing import CliRunner
    from sklearn.metrics import adjusted_rand_score

    from graphinterp.cli.main import cli

    # a bare state_dict of a residual model has no architecture: export the pickled module
    path = tmp_path / "res.pt"
    torch.save(_PlantedResidual(), path)
    out = tmp_path / "res.graphml"
    with pytest.warns(UserWarning, match="weights_only=False"):
        res = CliRunner().invoke(cli, ["export", str(path), str(out), "--k", "3", "--trust-pickle"])
    assert res.exit_code == 0, res.output
    G = nx.read_graphml(out)
    assert G.graph["cluster_source"] == "network" and G.graph["E_network"] > 0.999
    stream = [G.nodes[f"stream@input:{i}"]["cluster"] for i in range(D)]
    hidden = [G.nodes[f"a:{j}"]["cluster"] for j in range(H)]
    assert adjusted_rand_score(STREAM, stream) == 1.0 and adjusted_rand_score(HIDDEN, hidden) == 1.0
    sq = np.array([d["abs_weight"] ** 2 for _, _, d in G.edges(data=True)])
    same = np.array([d["same_cluster"] for _, _, d in G.edges(data=True)])
    assert (sq * same).sum() / sq.sum() == pytest.approx(G.graph["E_network"], abs=1e-6)
    # the residual stream is one node set: 'b' writes the nodes that 'a' and 'c' read
    assert {v for _, v, d in G.edges(data=True) if d["layer"] == "b"} == {f"stream@input:{i}" for i in range(D)}
    assert "separate nothing" not in res.output  # planted modules, not bands


def test_export_says_when_the_network_wide_labels_are_depth_bands(tmp_path, monkeypatch):
    """A random-weight torchvision ResNet-18's network-wide labels put every layer's inputs in one cluster and
    its outputs in one (E 0.6806 against 0.6806 at random, score 0.000): GraphML coloured by depth, which
    export wrote without a word. Such labels are now named, with where each layer's own BSGC labels are; a layer
    whose nodes carry no label (-1) is not counted."""
    import json

    from click.testing import CliRunner

    import graphinterp.cli.export as export_cmd
    from graphinterp.cli.main import cli
    from graphinterp.clustering.labels import Clustering

    def banded(graph, k, layers=None, random_state=None):  # stream 0, a's hidden units 1, c's outputs 2
        rows = {"a": np.zeros(D, int), "b": np.ones(H, int), "c": np.zeros(D, int)}
        cols = {"a": np.ones(H, int), "b": np.zeros(D, int), "c": np.full(H, 2)}
        return Clustering(k=3, row_labels=rows, col_labels=cols, network_wide=True)

    monkeypatch.setattr(export_cmd, "cluster_network", banded)
    path = tmp_path / "res.pt"
    torch.save(_PlantedResidual(), path)
    for extra in ([], ["--network-wide"]):
        with pytest.warns(UserWarning, match="weights_only=False"):
            res = CliRunner().invoke(cli, ["export", str(path), str(tmp_path / "res.graphml"), "--k", "3",
                                           "--trust-pickle", "--json", *extra])
        assert res.exit_code == 0, res.output
        notes = [n for n in json.loads(res.stdout)["notes"] if "separate nothing" in n]
        assert len(notes) == 1 and "every input of 3 of 3 layers" in notes[0]
        assert ("without --network-wide" in notes[0]) == bool(extra)


def test_grouped_convs_are_left_out_of_clusterability_as_depthwise_ones_are():
    """A grouped conv is block-diagonal by construction: it scored E = 1.000, score 1.000 (resnext's conv2, regnet's
    f.b.0) and entered the model-wide E; analyze and benchmark now leave it out, saying why."""
    from graphinterp.clustering.analysis import analyze
    from graphinterp.reports.benchmarking import benchmark_graph

    torch.manual_seed(0)
    g = trace_graph(nn.Sequential(nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 3, groups=4), nn.Conv2d(16, 8, 1)))
    result = analyze(g, 2, random_state=0)
    assert result.skipped["1"].startswith("grouped convolution (4 groups): ")
    assert [s.layer for s in result.reports[2].layers] == ["0", "2"]
    layers, skipped = benchmark_graph(g, [2], n_shuffles=0, random_state=0)
    assert "grouped convolution (4 groups)" in skipped["1"] and [lb.layer for lb in layers] == ["0", "2"]
    with pytest.raises(ClusteringError, match="grouped convolution"):
        analyze(g, 2, layers=["1"], random_state=0)


def test_an_all_zero_layer_is_said_to_be_all_zero():
    """torchvision initialises ViT's head to zero: 'use 2 <= k <= 0' said nothing useful."""
    from graphinterp.clustering.analysis import analyze
    from graphinterp.clustering.bsgc import BSGC

    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    nn.init.zeros_(model[2].weight)
    result = analyze(trace_graph(model), 2, random_state=0)
    assert result.skipped["2"] == "all its weights are zero"
    with pytest.raises(ClusteringError, match="all its weights are zero"):
        BSGC(2).fit(torch.zeros(5, 8))


def test_coverage_names_a_pruned_layer_and_a_module_applied_twice():
    import torch.nn.utils.prune as prune

    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    prune.l1_unstructured(m[2], "weight", 0.5)
    cov = trace_graph(m, example=torch.randn(2, 4)).coverage
    assert cov.missing[0].name == "2.weight_orig" and "torch.nn.utils.prune.remove(module, 'weight')" in cov.missing[0].reason

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(torch.relu(self.a(x)))))

    g = trace_graph(Twice(), example=torch.randn(2, 4))
    assert g.layer_names == ["a", "a#2", "b"] and g.coverage.tied == {"a#2": "a.weight"}


class TiedPair(nn.Module):
    """a -> b -> c with b.weight = a.weight (one tensor applied by two modules)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_a_tied_weight_is_named_after_the_module_that_applies_it():
    """b.weight = a.weight: the second layer is b (was "a#2"), listed as tied, and interventions find module b;
    the trace's hooks are gone afterwards, also when the forward fails."""
    from graphinterp.interpret.interventions import module_of

    m = TiedPair()
    g = trace_graph(m, example=torch.randn(2, 4))
    assert g.layer_names == ["a", "b", "c"] and g.coverage.tied == {"b": "a.weight"}
    assert any(line.startswith("tied: layer b applies a.weight") for line in g.coverage.summary_lines())
    assert module_of(m, g, "b")[0] is m.b
    assert torch.equal(g["b"].weight, m.a.weight.detach())
    assert not any(mod._forward_pre_hooks or mod._forward_hooks for mod in m.modules())
    with pytest.raises(Exception):
        trace_graph(m, example=torch.randn(2, 5))  # wrong width: every candidate input fails
    assert not any(mod._forward_pre_hooks or mod._forward_hooks for mod in m.modules())


def test_one_module_under_two_names_keeps_its_first_name_and_is_not_tied():
    """self.b = self.a, a ModuleList([block] * 3): one module (one owner), named by its first name as before;
    a root parameter fc_weight beside a module fc is not a tie (it is applied once)."""
    class Same(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b, self.c = self.a, nn.Linear(4, 2)

        def forward(self, x):
            return self.c(torch.relu(self.a(x)))

    g = trace_graph(Same(), example=torch.randn(2, 4))
    assert g.layer_names == ["a", "c"] and g.coverage.tied == {}
    block = nn.Linear(4, 4)

    class Repeated(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers, self.c = nn.ModuleList([block] * 3), nn.Linear(4, 2)

        def forward(self, x):
            for layer in self.layers:
                x = torch.relu(layer(x))
            return self.c(x)

    g = trace_graph(Repeated(), example=torch.randn(2, 4))
    assert g.layer_names == ["layers.0", "layers.0#2", "layers.0#3", "c"]
    assert g.coverage.tied == {"layers.0#2": "layers.0.weight", "layers.0#3": "layers.0.weight"}

    class Collide(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc_weight, self.fc = nn.Parameter(torch.randn(4, 4)), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(torch.nn.functional.linear(x, self.fc_weight)))

    g = trace_graph(Collide(), example=torch.randn(2, 4))
    assert len(set(g.layer_names)) == 2 and g.coverage.tied == {}


def test_edges_of_tied_layers_are_refused_not_masked_into_one_tensor():
    """Masking a's edges and b's into their one shared tensor let the last mask win silently (all of a pruned,
    output unchanged): both interventions and circuit extraction refuse it in one line, and restore the weight."""
    from graphinterp.common.errors import UnsupportedModelError
    from graphinterp.interpret.edges import edge_layers
    from graphinterp.interpret.interventions import interventions

    m, x = TiedPair(), torch.randn(3, 4)
    g = trace_graph(m, example=x)
    before = m.a.weight.detach().clone()
    with pytest.raises(UnsupportedModelError, match="'a' and 'b' apply one weight tensor"):
        with interventions(m, g, edge_masks={"a": torch.zeros(4, 4, dtype=torch.bool), "b": torch.ones(4, 4, dtype=torch.bool)}):
            pass
    assert torch.equal(m.a.weight, before)
    with pytest.raises(UnsupportedModelError, match="tied weights"):
        edge_layers(m, g)
    with interventions(m, g, edge_masks={"b": torch.ones(4, 4, dtype=torch.bool)}):  # one layer's mask: allowed
        assert torch.allclose(m(x), m(x))


def test_every_node_has_its_own_name_and_the_export_keeps_them_all():
    """Two float inputs were both 'input', and two cuts by one kind of unsupported layer both
    'conv_transpose2d:unbound': the export (which keys nodes by name) merged them and dropped edges."""

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(8, 2)

        def forward(self, x, y):
            return self.c(torch.cat([F.relu(self.a(x)), F.relu(self.b(y))], -1))

    class TwoCuts(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.c = nn.Conv2d(3, 3, 1), nn.Conv2d(8, 2, 1)
            self.u1, self.u2 = nn.ConvTranspose2d(3, 4, 2, 2), nn.ConvTranspose2d(3, 4, 2, 2)

        def forward(self, x):
            x = self.stem(x)
            return self.c(torch.cat([self.u1(x), self.u2(x)], 1))

    for model, example in ((TwoInputs(), (torch.randn(2, 3), torch.randn(2, 3))), (TwoCuts(), torch.randn(1, 3, 4, 4))):
        g = trace_graph(model.eval(), example=example)
        assert len(set(g.node_names)) == g.n_nodes
        G = g.to_networkx()
        assert G.number_of_nodes() == g.n_nodes
        for layer in g.layers:
            assert sum(1 for *_, key in G.edges(keys=True) if key == layer.name) == layer.signed().numel()
    g = trace_graph(TwoInputs().eval(), example=(torch.randn(2, 3), torch.randn(2, 3)))
    assert not set(g.src_nodes("a")) & set(g.src_nodes("b"))
    assert [g.node_names[i] for i in g.src_nodes("b")] == ["input#2:0", "input#2:1", "input#2:2"]
    with pytest.raises(Exception, match="node names must be unique"):
        ModelGraph(g.layers, [g.src_nodes(l.name) for l in g.layers], [g.dst_nodes(l.name) for l in g.layers],
                   ["x"] * g.n_nodes)


def test_zero_sum_kernels_are_exported_as_edges_of_their_full_magnitude():
    """A grouped edge is signed by the sum of its kernel: a Sobel-like kernel (sum 0) got weight 0 and was dropped
    from GraphML, so the file's E could not be rebuilt from its edges."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 3, 1))
    with torch.no_grad():
        model[0].weight[:, 0] = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    g = LayeredGraph.from_module(model, input_shape=(2, 6, 6))
    signed = g["0"].signed()
    assert torch.equal(signed.abs(), g["0"].magnitude()) and bool((signed[0] > 0).all())
    G = g.to_networkx()
    edges = [d for *_, d in G.edges(data=True) if d["layer"] == "0"]
    assert len(edges) == 8 and sum(d["abs_weight"] ** 2 for d in edges) == pytest.approx(float(g["0"].squared().sum()))


def test_a_dag_exported_with_network_wide_labels_only_has_them_as_every_layers_in_and_out_labels():
    """export --network-wide wrote cluster_in/out -1 on every node and within=False on every edge of a DAG."""

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.a, self.b, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = self.stem(x)
            h = h + self.b(torch.relu(self.a(h)))
            return self.head(h)

    torch.manual_seed(0)
    g = trace_graph(Res().eval(), example=torch.randn(2, 6))
    network = cluster_network(g, 2, random_state=0)
    G = g.to_networkx(network=network)
    assert G.graph["cluster_source"] == "network"
    inner = [d for _, d in G.nodes(data=True) if d["cluster"] >= 0 and d["cluster_in"] >= 0]
    assert inner and all(d["cluster_in"] == d["cluster"] for d in inner)
    assert all(d["within"] == d["same_cluster"] for *_, d in G.edges(data=True))
    assert any(d["within"] for *_, d in G.edges(data=True))


def test_a_stored_banded_clustering_is_named_with_the_way_to_per_layer_labels(tmp_path):
    """A checkpoint storing network-wide labels that put each level of an MLP in one cluster: export --stored
    says so and points to exporting without --stored (it pointed to a --network-wide never given)."""
    import json

    from click.testing import CliRunner

    from graphinterp.cli.main import cli
    from graphinterp.clustering.labels import Clustering
    from graphinterp.sources.checkpoint import save_checkpoint
    from graphinterp.sources.models import build_model

    spec = {"name": "mlp", "kwargs": {"in_features": 12, "hidden": [10, 10], "num_classes": 4}}
    torch.manual_seed(0)
    model = build_model(spec)
    g = LayeredGraph.from_module(model)
    rows = {n: np.full(layer.weight.shape[1], i % 3) for i, (n, layer) in enumerate(zip(g.layer_names, g.layers))}
    cols = {n: np.full(layer.weight.shape[0], (i + 1) % 3) for i, (n, layer) in enumerate(zip(g.layer_names, g.layers))}
    path = tmp_path / "banded.pt"
    save_checkpoint(path, model, arch=spec, clustering=Clustering(3, rows, cols, network_wide=True).to_dict())
    res = CliRunner().invoke(cli, ["export", str(path), str(tmp_path / "b.graphml"), "--stored", "--json"])
    assert res.exit_code == 0, res.output
    notes = [n for n in json.loads(res.stdout)["notes"] if "separate nothing" in n]
    assert len(notes) == 1 and "without --stored" in notes[0] and "--network-wide" not in notes[0]


def test_only_labelled_layers_with_one_cluster_a_side_count_as_bands():
    from graphinterp.cli.export import _banded_layers
    from graphinterp.clustering.labels import Clustering

    c = Clustering(2, {"a": np.zeros(3, int), "b": np.full(3, -1), "c": np.array([0, 1, 0])},
                   {"a": np.ones(2, int), "b": np.full(2, -1), "c": np.zeros(2, int)})
    assert _banded_layers(c) == ["a"]


class _TwoBranches(nn.Module):
    """Two layers that read the same nodes and write the same stream (node pairs joined by both)."""

    def __init__(self):
        super().__init__()
        self.a, self.f, self.g, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x)
        return self.c(h + self.f(h) + self.g(h))


@pytest.mark.parametrize("build", ["encoder", "planted", "resnet", "two_branches"])
def test_the_dense_adjacency_is_the_identity_product_to_the_last_bit(build):
    """A DAG's normalised adjacency, written block by block, equals its products with D^-1/2 I exactly (the
    way it was formed before): the same eigenvectors, so the same labels, without 2 |W| n operations."""
    from graphinterp.clustering.dag_cluster import _products

    torch.manual_seed(3)
    if build == "encoder":
        g = trace_graph(nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0), 2),
                        input_shape=(5, 16))
    elif build == "planted":
        g = trace_graph(_PlantedResidual())
    elif build == "resnet":
        import torchvision

        model = torchvision.models.resnet18(num_classes=10).eval()
        _randomise_bn(model)
        g = trace_graph(model, input_shape=(3, 32, 32))
    else:
        g = trace_graph(_TwoBranches())
    names = g.layer_names
    sims = {n: g[n].magnitude() * (1 + torch.rand(g[n].magnitude().shape)) for n in names}  # no round numbers
    matvec, deg, dense = _products(g, names, sims)
    d_is = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
    n = g.n_nodes
    reference = (d_is[:, None] * matvec(d_is[:, None] * torch.eye(n, dtype=torch.float64))).numpy()
    assert np.array_equal(dense(d_is), reference) and np.abs(reference).sum() > 0


def test_a_per_layer_clustering_is_refused_as_network_wide_labels_on_both_kinds_of_graph():
    """network= takes network-wide labels: a per-layer clustering numbers each layer's clusters on its own, and a DAG
    read them off its layers' ends as if they were one labelling (a silent mix), where a chain refused them."""
    from _graph_helpers import Residual
    from graphinterp.clustering.cluster import cluster_layers

    torch.manual_seed(0)
    dag = trace_graph(Residual().eval(), example=torch.randn(2, 6))
    chain = LayeredGraph.from_module(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)))
    for g in (dag, chain):
        per_layer = cluster_layers(g, 2, random_state=0)
        with pytest.raises(ValueError, match="network-wide"):
            g.to_networkx(network=per_layer)
        # a chain's `cluster` holds a node's one per-layer label; a DAG's is -1 without network-wide labels
        assert g.to_networkx(per_layer).graph["cluster_source"] == ("none" if g is dag else "per-layer")
