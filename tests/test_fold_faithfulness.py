"""A normalisation gain is folded into the layers that read it only where that reproduces the model.

``W @ (g * x)`` is ``(W * g) @ x`` for every layer that reads ``g * x``; but when the normalised tensor
is also read by anything else (it is the residual stream: ``h + f(h)``; an activation; ...), folding
``g`` into the layers only would make the graph describe another function. Such a gain is left unfolded
and the coverage says why. Tiny models with random weights; no downloads.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphinterp.graph.model_trace import trace_graph
from graphinterp.graph.layered import LayeredGraph


def _randomise(norm: nn.Module, gen: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen) * 2.8 + 0.2)  # far from ones
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen))
    return norm.weight.detach().clone()


class _PostNormResidual(nn.Module):
    """``h = ln(stem(x))`` is the residual stream: read by ``fc`` and by the sum ``h + fc2(relu(fc(h)))``."""

    def __init__(self, d=8):
        super().__init__()
        self.stem, self.ln = nn.Linear(4, d), nn.LayerNorm(d)
        self.fc, self.fc2, self.head = nn.Linear(d, 12), nn.Linear(12, d), nn.Linear(d, 3)

    def forward(self, x):
        h = self.ln(self.stem(x))
        return self.head(h + self.fc2(torch.relu(self.fc(h))))


class _PreNormBlock(nn.Module):
    """GPT-2-like pre-LN block: ``x + fc2(gelu(fc1(ln(x))))``: ``ln``'s output is read by ``fc1`` only."""

    def __init__(self, d=8):
        super().__init__()
        self.stem, self.ln = nn.Linear(4, d), nn.LayerNorm(d)
        self.fc1, self.fc2, self.head = nn.Linear(d, 16), nn.Linear(16, d), nn.Linear(d, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.fc2(F.gelu(self.fc1(self.ln(x))))
        return self.head(x)


def test_a_norm_whose_output_is_the_residual_stream_is_not_folded_and_is_reported():
    gen = torch.Generator().manual_seed(0)
    model = _PostNormResidual().eval()
    _randomise(model.ln, gen)
    g = trace_graph(model)
    cov = g.coverage
    assert not any("ln (input gain)" in f for f in cov.folded), cov.folded
    # raw weights: the graph does not pretend that fc alone carries the gain
    torch.testing.assert_close(g["fc"].weight, model.fc.weight.detach(), rtol=0, atol=0)
    assert "ln" in cov.unfolded and "residual" in cov.unfolded["ln"] and "fc" in cov.unfolded["ln"]
    assert any(line.startswith("not folded: ln: LayerNorm gain") for line in cov.summary_lines()), cov.summary_lines()
    assert cov.to_dict()["unfolded"]["ln"] == cov.unfolded["ln"]


def test_a_norm_also_read_by_an_activation_is_not_folded():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.ln, self.fc, self.head = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = self.ln(self.stem(x))
            return self.head(self.fc(h) * torch.sigmoid(h))

    model = Net().eval()
    _randomise(model.ln, torch.Generator().manual_seed(1))
    g = trace_graph(model)
    assert "ln" in g.coverage.unfolded and "sigmoid" in g.coverage.unfolded["ln"]
    torch.testing.assert_close(g["fc"].weight, model.fc.weight.detach(), rtol=0, atol=0)


def test_a_pre_ln_gain_is_folded_exactly_into_its_only_reader():
    gen = torch.Generator().manual_seed(2)
    model = _PreNormBlock().eval()
    gamma = _randomise(model.ln, gen)
    g = trace_graph(model)
    cov = g.coverage
    assert any(f == "fc1: ln (input gain)" for f in cov.folded) and not cov.unfolded, cov.summary_lines()
    torch.testing.assert_close(g["fc1"].weight, model.fc1.weight.detach() * gamma[None, :], rtol=0, atol=0)
    # and the folded weight reproduces the layer's output on the un-scaled normalised input
    x = torch.randn(5, 8, generator=gen)
    bias = model.fc1.bias + model.fc1.weight @ model.ln.bias
    torch.testing.assert_close(F.linear(F.layer_norm(x, (8,)), g["fc1"].weight, bias),
                               model.fc1(model.ln(x)).detach(), rtol=1e-5, atol=1e-5)
    for name in ("stem", "fc2", "head"):
        assert torch.equal(g[name].weight, getattr(model, name).weight.detach())


def test_a_gain_read_only_by_several_layers_is_folded_into_each():
    class QKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.ln = nn.Linear(4, 8), nn.LayerNorm(8)
            self.q, self.k, self.v, self.o = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            x = self.stem(x)
            h = self.ln(x).view(x.shape)  # a re-layout still carries the gain
            return x + self.o(self.q(h) * self.k(h) + self.v(h))

    model = QKV().eval()
    gamma = _randomise(model.ln, torch.Generator().manual_seed(3))
    g = trace_graph(model)
    assert not g.coverage.unfolded, g.coverage.unfolded
    for name in ("q", "k", "v"):
        torch.testing.assert_close(g[name].weight, getattr(model, name).weight.detach() * gamma[None, :],
                                   rtol=0, atol=0)


def test_convnext_stem_norm_is_not_folded_but_its_block_norms_are():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny().eval()
    gen = torch.Generator().manual_seed(4)
    stem_gamma = _randomise(model.features[0][1], gen)  # LayerNorm2d: its output is stage 1's residual stream
    block_gamma = _randomise(model.features[1][0].block[2], gen)  # LayerNorm read only by block.3 (Linear)
    down_gamma = _randomise(model.features[2][0], gen)  # the downsample's LayerNorm2d, read only by its conv
    g = trace_graph(model)
    cov = g.coverage
    raw = dict(model.named_parameters())
    # the stem's gain: no reader carries it (before the fix block 1.0's depthwise conv alone was scaled)
    for name in ("features.1.0.block.0", "features.1.1.block.0"):
        torch.testing.assert_close(g[name].weight, raw[name + ".weight"].detach(), rtol=0, atol=0)
    assert not any(f.startswith("features.0.1 ") for f in cov.folded), cov.folded
    assert "residual" in cov.unfolded.get("features.0.1", ""), cov.unfolded
    assert any(line.startswith("not folded: features.0.1: LayerNorm gain") for line in cov.summary_lines())
    assert len(stem_gamma) == 96
    # a norm read by one layer only is folded exactly: columns (input channels) times the gain
    torch.testing.assert_close(g["features.1.0.block.3"].weight,
                               raw["features.1.0.block.3.weight"].detach() * block_gamma[None, :], rtol=0, atol=0)
    torch.testing.assert_close(g["features.2.1"].weight,
                               raw["features.2.1.weight"].detach() * down_gamma[None, :, None, None], rtol=0, atol=0)
    assert list(cov.unfolded) == ["features.0.1"]


def test_no_fold_says_what_it_left_unfolded():
    """--no-fold used to print nothing: the raw weights looked like the model's function."""
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.LayerNorm(6), nn.Linear(6, 3)).eval()
    g = trace_graph(model, example=torch.randn(2, 4), fold=False)
    assert set(g.coverage.unfolded) == {"1", "3"}
    assert all(why.startswith("not folded as asked (fold=False, --no-fold)") for why in g.coverage.unfolded.values())
    assert not trace_graph(model, example=torch.randn(2, 4)).coverage.unfolded  # folded by default: nothing to say


class _PreAct(nn.Module):
    """The stem of a pre-activation ResNet: conv1's raw output is both bn1's input and the identity shortcut."""

    def __init__(self, other: str = "add"):
        super().__init__()
        self.other = other
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c, self.fc = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv1(x)
        if self.other == "add":
            out = self.c(F.relu(self.bn1(x))) + x
        else:  # only bn1 reads conv1's output: the fold is exact
            out = self.c(F.relu(self.bn1(x)))
        return self.fc(out.mean((2, 3)))


@pytest.mark.parametrize("other", ["add", "none"])
def test_a_batchnorm_is_folded_into_its_producer_only_when_it_is_the_producers_only_reader(other):
    torch.manual_seed(0)
    m = _PreAct(other).eval()
    with torch.no_grad():
        m.bn1.weight.uniform_(0.5, 2.0)
        m.bn1.running_var.uniform_(0.5, 2.0)
    g = trace_graph(m, example=torch.randn(1, 3, 8, 8))
    if other == "add":  # was: folded into conv1, so the shortcut carried the BatchNorm scale in the graph
        assert g["conv1"].folded == () and torch.equal(g["conv1"].weight, m.conv1.weight)
        assert g.coverage.unfolded["bn1"].startswith("BatchNorm scale: the raw output of conv1 is also read by add")
    else:
        scale = m.bn1.weight / torch.sqrt(m.bn1.running_var + m.bn1.eps)
        assert g["conv1"].folded == ("bn1 (BatchNorm scale)",) and "bn1" not in g.coverage.unfolded
        assert torch.allclose(g["conv1"].weight, m.conv1.weight * scale[:, None, None, None])


def test_no_fold_lists_gains_written_as_a_parameter_times_x():
    """HF's RMSNorm and ConvNeXt's layer_scale multiply by a parameter; --no-fold listed neither."""

    class RMS(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.fc = nn.Parameter(torch.rand(6) + 0.5), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)))

    g = trace_graph(RMS(), example=torch.randn(2, 6), fold=False)
    assert g.coverage.unfolded.get("weight", "").startswith("not folded as asked")


class _ReturnsNormalised(nn.Module):
    """A bare encoder: the normalised last hidden state is returned and also read by a pooler (BertModel)."""

    def __init__(self, as_dict: bool):
        super().__init__()
        self.as_dict = as_dict
        self.stem, self.ln, self.pooler = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.ln(self.stem(x))
        pooled = torch.tanh(self.pooler(h[:, 0]))
        return {"last_hidden_state": h, "pooler_output": pooled} if self.as_dict else (h, pooled)


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_norm_whose_output_the_model_returns_is_not_folded(as_dict):
    """The returned hidden state carries the gain, so the pooler alone may not: was folded into it."""
    model = _ReturnsNormalised(as_dict).eval()
    _randomise(model.ln, torch.Generator().manual_seed(5))
    g = trace_graph(model, example=torch.randn(2, 3, 4))
    torch.testing.assert_close(g["pooler"].weight, model.pooler.weight.detach(), rtol=0, atol=0)
    assert "the model's output" in g.coverage.unfolded["ln"] and "pooler" in g.coverage.unfolded["ln"]


def test_a_norm_read_by_a_layer_whose_output_is_returned_is_still_folded():
    """Returning the layer's output, not the normalised tensor, leaves the fold exact."""
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)).eval()
    gamma = _randomise(model[1], torch.Generator().manual_seed(6))
    g = trace_graph(model, example=torch.randn(2, 4))
    assert not g.coverage.unfolded
    torch.testing.assert_close(g["2"].weight, model[2].weight.detach() * gamma[None, :], rtol=0, atol=0)


def test_a_batchnorm_is_not_folded_into_a_layer_whose_raw_output_is_returned():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn, self.head = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)

        def forward(self, x):
            z = self.fc(x)
            return self.head(self.bn(z)), z

    model = Net().eval()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 2.0)
    g = trace_graph(model, example=torch.randn(3, 4))
    assert torch.equal(g["fc"].weight, model.fc.weight) and "the model's output" in g.coverage.unfolded["bn"]


def test_a_bare_hf_bert_model_does_not_fold_its_returned_last_norm_into_the_pooler():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ln = model.encoder.layer[0].output.LayerNorm
    _randomise(ln, torch.Generator().manual_seed(7))
    g = trace_graph(model, example={"input_ids": torch.randint(0, 50, (1, 6))})
    torch.testing.assert_close(g["pooler.dense"].weight, model.pooler.dense.weight.detach(), rtol=0, atol=0)
    assert "the model's output" in g.coverage.unfolded["encoder.layer.0.output.LayerNorm"]


def test_a_batchnorm_without_running_statistics_is_reported_unfolded():
    """It uses each batch's statistics, so nothing can be folded; coverage said nothing (looked complete)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.ReLU(), nn.Linear(4, 2))
    g = trace_graph(model, example=torch.randn(3, 4))
    assert "track_running_stats=False" in g.coverage.unfolded["1"]
    assert torch.equal(g["0"].weight, model[0].weight)


def test_a_batch_norm_called_in_training_mode_is_reported_unfolded():
    """F.batch_norm(..., training=True) normalises by the batch's statistics: its running variance was folded."""

    class BatchStats(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn, self.c2 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)
            self.bn.running_var.uniform_(0.1, 4.0)

        def forward(self, x):
            bn = self.bn
            h = F.batch_norm(self.c1(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, True, 0.0, bn.eps)
            return self.c2(F.relu(h))

    torch.manual_seed(0)
    model = BatchStats().eval()
    g = trace_graph(model, input_shape=(3, 8, 8))
    assert "training=True" in g.coverage.unfolded["bn"]
    assert torch.equal(g["c1"].weight, model.c1.weight)
    eval_bn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1)).train()
    eval_bn[1].running_var.uniform_(0.1, 4.0)  # a module in training mode is traced in eval mode: folded
    g = trace_graph(eval_bn, input_shape=(3, 8, 8))
    assert not g.coverage.unfolded and not torch.equal(g["0"].weight, eval_bn[0].weight)


def test_building_a_graph_leaves_the_model_in_its_mode():
    """load_graph(module) switched a model in training to eval mode and left it there (dropout off)."""
    from graphinterp import load_graph

    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    load_graph(model)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    load_graph(model)
    assert not model.training


def test_a_state_dict_graph_says_its_normalisation_is_not_folded_by_either_route():
    """load_graph(sd) said so, LayeredGraph.from_state_dict(sd) did not."""
    from graphinterp import LayeredGraph, load_graph

    sd = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).state_dict()
    for graph in (LayeredGraph.from_state_dict(sd), load_graph(sd)[1]):
        assert any(n.startswith("no architecture: the normalisation in this state_dict cannot be folded")
                   for n in graph.coverage.notes), graph.coverage.notes
    assert not any("cannot be folded" in n for n in load_graph(sd, fold=False)[1].coverage.notes)


class _CrossAttention(nn.Module):
    """A pre-LN decoder layer attending to an 'encoder': ``norm2`` scales the query only, yet ``in_proj`` is fused."""

    def __init__(self, d=8):
        super().__init__()
        self.enc, self.dec_in = nn.Linear(4, d), nn.Linear(4, d)
        self.layer = nn.TransformerDecoderLayer(d, 2, 16, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.layer(self.dec_in(x), self.enc(x)))


def test_a_fused_cross_attention_is_three_layers_each_reading_its_own_input():
    """Its k and v rows read the query's nodes (the encoder was not connected to it), and norm2's gain, which
    scales the query only, could not be folded into the fused weight."""
    torch.manual_seed(0)
    model = _CrossAttention().eval()
    _randomise(model.layer.norm2, torch.Generator().manual_seed(2))
    g = trace_graph(model, input_shape=(5, 4))
    cov, fused = g.coverage, "layer.multihead_attn.in_proj"
    W, gain = model.layer.multihead_attn.in_proj_weight.detach(), model.layer.norm2.weight.detach()
    assert [g[f"{fused}[{p}]"].rows for p in "qkv"] == [(0, 8), (8, 16), (16, 24)]
    # q reads the decoder stream through norm2, whose gain it takes; k and v read the encoder's output, raw
    torch.testing.assert_close(g[f"{fused}[q]"].weight, W[:8] * gain[None, :])
    torch.testing.assert_close(g[f"{fused}[k]"].weight, W[8:16], rtol=0, atol=0)
    torch.testing.assert_close(g[f"{fused}[v]"].weight, W[16:], rtol=0, atol=0)
    for part in "kv":
        assert np.array_equal(g.src_nodes(f"{fused}[{part}]"), g.dst_nodes("enc"))
    assert not set(g.src_nodes(f"{fused}[q]")) & set(g.dst_nodes("enc"))
    assert np.array_equal(g.src_nodes("layer.multihead_attn.out_proj"), g.dst_nodes(f"{fused}[v]"))
    assert f"{fused}[q]: layer.norm2 (input gain)" in cov.folded and "layer.norm2" not in cov.unfolded
    assert cov.complete and not cov.tied and g.num_params(unique=True) == cov.total
    assert not any("not connected" in n for n in cov.notes)


def test_training_binds_each_slice_of_a_fused_in_proj_to_its_own_rows():
    from graphinterp.clustering.cluster import cluster_layers
    from graphinterp.clustering.metrics import clusterability
    from graphinterp.training.gradsim import GradientSimilarity
    from graphinterp.training.loss import EnmeshmentLoss

    torch.manual_seed(0)
    model = _CrossAttention().eval()
    _randomise(model.layer.norm2, torch.Generator().manual_seed(2))
    g = trace_graph(model, input_shape=(5, 4))
    names = [f"layer.multihead_attn.in_proj[{p}]" for p in "qkv"]
    c = cluster_layers(g, 2, layers=names, random_state=0)
    loss = EnmeshmentLoss(model, c, graph=g)
    expected = {n: float(clusterability(g[n].squared(), *c.labels(n))) for n in names}
    assert loss.per_layer() == pytest.approx(expected, abs=1e-6)
    loss().backward()
    grad = model.layer.multihead_attn.in_proj_weight.grad
    assert all(bool(grad[i:i + 8].abs().sum() > 0) for i in (0, 8, 16))
    sim = GradientSimilarity(model, names, graph=g)
    model.zero_grad()
    model(torch.randn(2, 5, 4)).sum().backward()
    sim.update()
    assert all(tuple(v.shape) == (8, 8) for v in sim.similarity().values())


def test_a_layernorm_over_several_dimensions_is_listed_and_its_gain_is_not_counted_as_a_weight_matrix():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 6, 6]), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(),
                          nn.Linear(80, 3)).eval()
    cov = trace_graph(model, input_shape=(3, 8, 8)).coverage
    weights = sum(m.weight.numel() for m in (model[0], model[3], model[5]))
    assert cov.total == cov.covered == weights and cov.share == 1.0  # the (4, 6, 6) gain and bias are not matrices
    assert "several dimensions" in cov.unfolded["1"] and "(4, 6, 6)" in cov.unfolded["1"]


class _MixerBlock(nn.Module):
    """MLP-Mixer: a Linear over positions (``x.transpose(1, 2)``) and one over channels, each in a residual."""

    def __init__(self, positions=5, d=8):
        super().__init__()
        self.stem, self.tok, self.ch, self.head = nn.Linear(4, d), nn.Linear(positions, positions), nn.Linear(d, d), \
            nn.Linear(d, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.tok(x.transpose(1, 2)).transpose(1, 2)
        x = x + self.ch(x)
        return self.head(x.mean(1))


def test_token_mixing_keeps_the_channels_and_is_listed_as_not_an_edge():
    model = _MixerBlock().eval()
    g = trace_graph(model, input_shape=(5, 4))
    assert g.layer_names == ["stem", "ch", "head"]
    assert list(g.src_nodes("ch")) == list(g.dst_nodes("stem")) == list(g.src_nodes("head"))  # the channel stream
    (missing,) = g.coverage.missing
    assert missing.name == "tok.weight" and "mixes positions" in missing.reason
    assert g.coverage.covered == g.coverage.total - model.tok.weight.numel()


def test_one_attention_module_used_for_self_and_cross_attention_is_tied_and_counted_once():
    """Its slices were not listed as tied, and the unique weight count held the fused weight twice (536 of 344)."""

    class SelfAndCross(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec, self.att, self.head = nn.Linear(4, 8), nn.Linear(4, 8), nn.MultiheadAttention(8, 2), nn.Linear(8, 2)

        def forward(self, x):
            m, h = self.enc(x), self.dec(x)
            h = h + self.att(h, h, h)[0]
            return self.head(h + self.att(h, m, m)[0])

    model = SelfAndCross().eval()
    g = trace_graph(model, input_shape=(5, 4))
    weights = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)
    assert g.num_params(unique=True) == weights == g.coverage.total
    assert {"att.in_proj[q]", "att.in_proj[k]", "att.in_proj[v]"} <= set(g.coverage.tied)
    assert "att.in_proj" not in g.coverage.tied


def test_a_decoder_layer_applied_twice_ties_only_its_second_application():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec_in = nn.Linear(4, 8), nn.Linear(4, 8)
            self.layer = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

        def forward(self, x):
            m = self.enc(x)
            return self.layer(self.layer(self.dec_in(x), m), m)

    cov = trace_graph(Twice().eval(), input_shape=(5, 4)).coverage
    assert not any(name.startswith("layer.multihead_attn.in_proj[") and "#" not in name for name in cov.tied)
    assert "layer.multihead_attn.in_proj[k]#2" in cov.tied


def test_a_key_without_nodes_read_as_key_and_value_gets_one_set_of_input_nodes():
    class Memory(nn.Module):
        def __init__(self):
            super().__init__()
            self.dec, self.att, self.head = nn.Linear(4, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 2)
            self.register_buffer("memory", torch.randn(1, 3, 8))

        def forward(self, x):
            h = self.dec(x)
            mem = self.memory.expand(x.shape[0], -1, -1)
            return self.head(self.att(h, mem, mem)[0])

    g = trace_graph(Memory().eval(), input_shape=(5, 4))
    assert np.array_equal(g.src_nodes("att.in_proj[k]"), g.src_nodes("att.in_proj[v]"))


def test_a_slice_with_a_folded_gain_follows_the_model_to_another_dtype():
    from graphinterp.clustering.cluster import cluster_layers
    from graphinterp.training.loss import EnmeshmentLoss

    torch.manual_seed(0)
    model = _CrossAttention().eval()
    _randomise(model.layer.norm2, torch.Generator().manual_seed(2))
    g = trace_graph(model, input_shape=(5, 4))
    c = cluster_layers(g, 2, layers=["layer.multihead_attn.in_proj[q]"], random_state=0)
    loss = EnmeshmentLoss(model, c, graph=g)
    before = loss.per_layer()
    model.double()
    mask = loss.masks["layer.multihead_attn.in_proj[q]"]
    assert mask.effective().dtype == torch.float64 and mask.scale().dtype == torch.float64
    assert loss.per_layer() == pytest.approx(before, abs=1e-6)


class _LayerScale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.gamma = nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0])[:n])

    def forward(self, x):
        return x * self.gamma


def test_batchnorm_then_a_layer_scale_are_both_folded():
    """Linear -> BatchNorm -> x * gamma: the layer's weight is W scaled by bn_w / sqrt(var + eps) * gamma (folding
    only the last scale kept the BatchNorm out)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), _LayerScale(4), nn.ReLU(),
                        nn.Linear(4, 2, bias=False)).eval()
    with torch.no_grad():
        net[1].running_var.copy_(torch.tensor([0.25, 1.0, 4.0, 9.0]))
    g = LayeredGraph.from_module(net)
    scale = net[1].weight / torch.sqrt(net[1].running_var + net[1].eps) * net[2].gamma
    expect = (net[0].weight * scale[:, None]).detach()
    got = g[g.layer_names[0]].signed()
    torch.testing.assert_close(got if got.shape == expect.shape else got.T, expect, atol=1e-6, rtol=1e-6)


def test_group_norm_gain_is_folded_into_the_next_conv():
    """Conv -> GroupNorm(2, 4) with gains 1..4 -> 1x1 conv: the gains (per channel, dim 1) scale the next layer's
    input columns."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.GroupNorm(2, 4), nn.Conv2d(4, 3, 1, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    g = LayeredGraph.from_module(net, input_shape=(2, 5, 5))
    assert not g.coverage.unfolded
    expect = (net[2].weight[:, :, 0, 0] * net[1].weight[None, :]).detach()
    got = g[g.layer_names[-1]].signed()
    torch.testing.assert_close(got if got.shape == expect.shape else got.T, expect, atol=1e-6, rtol=1e-6)


def test_fold_spread_is_the_ratio_of_the_largest_to_the_smallest_folded_scale():
    """What the shuffle-null caveats read: the folded BatchNorm's scales gamma / sqrt(var + eps) on the rows, a
    LayerNorm gain on the next layer's inputs; 1 for an untrained normalisation, inf for a zero scale."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4), nn.LayerNorm(4),
                        nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
    graph = trace_graph(net, input_shape=(5,))
    assert [graph[n].fold_spread for n in ("0", "3", "5")] == [1.0, 1.0, 1.0]
    assert graph["0"].folded and not graph["0"].has_unit_scales and not graph["3"].has_unit_scales
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5, 1.0, 1.0, 1.0]))  # |gamma|: the sign is not a scale
        net[1].running_var.copy_(torch.tensor([1.0, 1.0, 1.0, 4.0, 1.0, 1.0]))
        net[4].weight.copy_(torch.tensor([1.0, 3.0, 1.5, 1.0]))
    graph = trace_graph(net, input_shape=(5,))
    eps = net[1].eps
    scales = (net[1].weight.abs() / (net[1].running_var + eps).sqrt()).detach()
    assert graph["0"].fold_spread == pytest.approx(float(scales.max() / scales.min()), rel=1e-6)
    assert graph["5"].fold_spread == pytest.approx(3.0, rel=1e-6) and graph["5"].has_unit_scales
    with torch.no_grad():
        net[6].running_var.copy_(torch.tensor([1.0, 0.25, 1.0]))  # its rows scaled too: the two spreads multiply
    assert trace_graph(net, input_shape=(5,))["5"].fold_spread == pytest.approx(6.0, rel=1e-4)
    assert not graph["3"].folded and not graph["3"].has_unit_scales
    with torch.no_grad():
        net[4].weight[0] = 0.0
    assert trace_graph(net, input_shape=(5,))["5"].fold_spread == float("inf")
