"""Tracer faithfulness cases found in review: each graph is checked against the model's own weights or forward.

Norm gains that differ within one node (a norm over a conv's flattened output), two folds on one output, a
fold whose tensor is also read through a copy, channel shuffles, slice assignment, gains computed from a
parameter (Gemma's ``1 + w``), weight layers the graph cannot hold (parametrizations, transposed convs,
recurrent layers), einsum attention, positions holding two ids of one merged node, and what coverage counts.
Tiny models with random weights; no downloads.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphinterp.common.errors import ClusteringError
from graphinterp.common.inference import eval_mode
from graphinterp.graph.model_trace import trace_graph
from graphinterp.training.folded_scales import live_scale


def _randomise(norm: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen) * 2.8 + 0.2)
        if getattr(norm, "running_var", None) is not None:
            norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=gen) * 3 + 0.1)


def _reads(g, layer):
    return [g.node_names[i] for i in g.src_nodes(layer)]


def test_a_batchnorm1d_over_a_flattened_conv_is_not_folded_into_the_conv_rows():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.BatchNorm1d(4 * 6 * 6), nn.ReLU(),
                      nn.Linear(4 * 6 * 6, 5)).eval()
    _randomise(m[2])
    g = trace_graph(m, input_shape=(3, 8, 8))
    torch.testing.assert_close(g["0"].weight, m[0].weight.detach(), rtol=0, atol=0)  # one scale per channel: none
    assert "differs between the features of one node" in g.coverage.unfolded["2"]


def test_a_batchnorm1d_with_one_scale_per_channel_is_still_folded():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.BatchNorm1d(4 * 6 * 6), nn.ReLU(),
                      nn.Linear(4 * 6 * 6, 5)).eval()
    with torch.no_grad():
        m[2].weight.copy_(torch.arange(1.0, 5.0).repeat_interleave(36))
    g = trace_graph(m, input_shape=(3, 8, 8))
    scale = (m[2].weight / torch.sqrt(m[2].running_var + m[2].eps)).detach().view(4, 36)[:, 0]
    torch.testing.assert_close(g["0"].weight, m[0].weight.detach() * scale[:, None, None, None])


def test_a_layernorm_over_flattened_conv_features_is_folded_per_feature_into_its_reader():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LayerNorm(4 * 6 * 6), nn.Linear(4 * 6 * 6, 5)).eval()
    _randomise(m[2])
    g = trace_graph(m, input_shape=(3, 8, 8))
    W = g["3"].weight
    x = torch.randn(2, 3, 8, 8)
    h = F.layer_norm(m[1](m[0](x)), (144,))  # normalised, without the gain
    with torch.no_grad():
        expected = m(x) - m[3].bias - m[2].bias @ m[3].weight.T
    torch.testing.assert_close(h @ W.T, expected, rtol=1e-5, atol=1e-5)  # the graph's weight reproduces the forward
    # and the loss follows the same per-feature gain while training
    scale = live_scale(m, g["3"], m[3].weight)
    torch.testing.assert_close((m[3].weight * scale()).detach(), W)


class _TwoNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn_a, self.bn_b = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.head_a, self.head_b = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head_a(torch.relu(self.bn_a(y))) + self.head_b(torch.relu(self.bn_b(y)))


def test_two_batchnorms_on_one_output_are_neither_folded():
    m = _TwoNorms().eval()
    _randomise(m.bn_a, 1)
    _randomise(m.bn_b, 2)
    g = trace_graph(m, input_shape=(3, 8, 8))
    torch.testing.assert_close(g["conv"].weight, m.conv.weight.detach(), rtol=0, atol=0)
    assert "bn_b" in g.coverage.unfolded["bn_a"] and "bn_a" in g.coverage.unfolded["bn_b"]


class _Shortcut(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv, self.bn, self.head = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        short = {"clone": lambda t: t.clone(), "slice": lambda t: t[:], "view": lambda t: t.view(t.shape),
                 "contiguous": lambda t: t.contiguous()}[self.how](y)
        return self.head(torch.relu(self.bn(y)) + short)


@pytest.mark.parametrize("how", ["clone", "slice", "view", "contiguous"])
def test_a_batchnorm_is_not_folded_when_a_copy_or_view_of_its_input_is_read_too(how):
    m = _Shortcut(how).eval()
    _randomise(m.bn)
    g = trace_graph(m, input_shape=(4, 8, 8))
    assert not g.coverage.folded and "bn" in g.coverage.unfolded
    torch.testing.assert_close(g["conv"].weight, m.conv.weight.detach(), rtol=0, atol=0)


class _Shuffle(nn.Module):
    """torchvision's channel_shuffle: view, transpose, contiguous, view."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        return self.b(y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w))


def test_a_channel_shuffle_keeps_the_channels_in_their_shuffled_order():
    g = trace_graph(_Shuffle().eval(), input_shape=(3, 4, 4))
    assert not g.coverage.notes
    assert _reads(g, "b") == ["a:0", "a:2", "a:1", "a:3"]


class _SliceAssign(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(8, 3)

    def forward(self, x):
        out = x.new_zeros(x.shape[0], 8)
        out[:, :4] = torch.relu(self.a(x))
        out[:, 4:] = torch.relu(self.b(x))
        return self.c(out)


def test_slice_assignment_into_a_buffer_links_the_layers_like_a_concatenation():
    g = trace_graph(_SliceAssign().eval(), input_shape=(6,))
    assert _reads(g, "c") == [f"a:{i}" for i in range(4)] + [f"b:{i}" for i in range(4)]


class _OffsetNorm(nn.Module):
    """Gemma's RMSNorm: ``x_hat * (1 + w)``."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (x * (1.0 + self.weight.float())).type_as(x)


def test_a_gain_computed_from_a_parameter_is_folded_and_training_refuses_to_follow_it():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), _OffsetNorm(8), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        m[1].weight.copy_(torch.randn(8))
    g = trace_graph(m)
    torch.testing.assert_close(g["2"].weight, m[2].weight.detach() * (1 + m[1].weight.detach())[None, :])
    with pytest.raises(ClusteringError, match="cannot be recomputed"):
        live_scale(m, g["2"], m[2].weight)


class _ViewedScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gamma, self.head = nn.Conv2d(3, 4, 1), nn.Parameter(torch.rand(4) + 0.5), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x) * self.gamma.view(1, -1, 1, 1)))


def test_a_layer_scale_applied_through_a_view_of_the_parameter_is_folded_and_followed():
    m = _ViewedScale().eval()
    g = trace_graph(m, input_shape=(3, 4, 4))
    torch.testing.assert_close(g["conv"].weight, m.conv.weight.detach() * m.gamma.detach()[:, None, None, None])
    torch.testing.assert_close((m.conv.weight * live_scale(m, g["conv"], m.conv.weight)()).detach(), g["conv"].weight)


def test_an_unfolded_norm_is_reported_even_when_its_name_is_part_of_a_folded_one():
    layers = [nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU()] + [nn.Linear(8, 8), nn.ReLU()] * 3
    layers += [nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)]  # "10" is folded; "1" is not
    m = nn.Sequential(*layers).eval()
    _randomise(m[1])
    _randomise(m[10])
    cov = trace_graph(m).coverage
    assert any(f.endswith("10 (BatchNorm scale)") for f in cov.folded) and "1" in cov.unfolded


@pytest.mark.parametrize("wrap", ["weight_norm", "conv_transpose", "lstm"])
def test_a_weight_layer_the_graph_cannot_hold_cuts_the_graph_and_says_so(wrap):
    from torch.nn.utils.parametrizations import weight_norm
    if wrap == "weight_norm":
        m, shape = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), weight_norm(nn.Linear(8, 8)), nn.ReLU(),
                                 nn.Linear(8, 3)), None
        last, hint = "4", "remove_parametrizations"
    elif wrap == "conv_transpose":
        m, shape = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.ConvTranspose2d(4, 4, 1), nn.ReLU(),
                                 nn.Conv2d(4, 2, 1)), (3, 4, 4)
        last, hint = "4", "transposed"
    else:
        class _Rnn(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.rnn, self.out = nn.Linear(8, 8), nn.LSTM(8, 8, batch_first=True), nn.Linear(8, 3)

            def forward(self, x):
                return self.out(self.rnn(self.a(x))[0])
        m, shape, last, hint = _Rnn(), None, "out", "recurrent"
    g = trace_graph(m.eval(), example=torch.randn(1, 5, 8)) if wrap == "lstm" else trace_graph(m.eval(), input_shape=shape)
    cov = g.coverage
    assert not cov.complete and cov.share < 1
    assert any(hint in mm.reason for mm in cov.missing)
    assert any("the graph is cut there" in n for n in cov.notes)
    assert not any(name.startswith(("0:", "a:")) for name in _reads(g, last))  # not linked across the cut


class _ClassToken(nn.Module):
    """A class token beside patches, plus a position table: two raw ids of one merged node per feature."""

    def __init__(self):
        super().__init__()
        self.patch, self.cls, self.pos = nn.Linear(6, 8), nn.Parameter(torch.randn(1, 1, 8)), nn.Embedding(5, 8)
        self.ln, self.fc = nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.cat([self.cls.expand(x.shape[0], 1, 8), self.patch(x)], 1) + self.pos(torch.arange(5))
        return self.fc(self.ln(h))


def test_a_class_token_beside_patches_does_not_stop_the_norm_fold():
    m = _ClassToken().eval()
    _randomise(m.ln)
    g = trace_graph(m, example=torch.randn(1, 4, 6))
    assert not g.coverage.notes and not g.coverage.unfolded
    torch.testing.assert_close(g["fc"].weight, m.fc.weight.detach() * m.ln.weight.detach()[None, :])


class _EinsumAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.o = nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 4).unbind(2)
        a = torch.einsum("bihd,bjhd->bhij", q, k).softmax(-1)
        return self.o(torch.einsum("bhij,...jhd->...ihd", a, v).reshape(x.shape[0], x.shape[1], 8))


def test_einsum_attention_keeps_the_value_nodes():
    g = trace_graph(_EinsumAttention().eval(), example=torch.randn(1, 5, 8))
    assert not g.coverage.notes
    assert _reads(g, "o") == [f"qkv:{i}" for i in range(16, 24)]


def test_an_einsum_the_tracer_cannot_follow_says_the_graph_starts_afresh():
    class _Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.w = nn.Linear(4, 6), nn.Linear(6, 2), nn.Parameter(torch.randn(6, 6))

        def forward(self, x):
            return self.b(torch.einsum("bi,ij->bj", self.a(x), self.w))
    cov = trace_graph(_Mix().eval()).coverage
    assert any(n.startswith("einsum: node identities not followed") for n in cov.notes)
    assert any("start from fresh input nodes: b" in n for n in cov.notes)


def test_weights_with_a_dimension_of_one_are_counted():
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).eval()
    cov = trace_graph(m).coverage
    assert cov.total == 8 * 16 + 16 and cov.covered == cov.total


def test_eval_mode_restores_each_submodules_own_mode():
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout()).train()
    m[1].eval()  # a frozen BatchNorm inside a model that trains
    with eval_mode(m):
        assert not any(mod.training for mod in m.modules())
    assert [mod.training for mod in m.modules()] == [True, True, False, True]
    trace_graph(m)
    assert [mod.training for mod in m.modules()] == [True, True, False, True]


def test_a_per_feature_gain_read_through_a_reshape_is_left_unfolded_and_says_why():
    class _Reshaped(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.ln, self.fc = nn.Conv2d(3, 4, 3), nn.LayerNorm(4 * 6 * 6), nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            h = self.ln(self.conv(x).flatten(1))
            return self.fc(h.view(h.shape[0], 4, 36).reshape(h.shape[0], -1))
    m = _Reshaped().eval()
    _randomise(m.ln)
    g = trace_graph(m, input_shape=(3, 8, 8))
    torch.testing.assert_close(g["fc"].weight, m.fc.weight.detach(), rtol=0, atol=0)
    assert "several gains" in g.coverage.unfolded["ln"]


def test_an_example_image_without_its_batch_dimension_is_traced_like_a_batch():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    one, batch = trace_graph(m, example=torch.randn(3, 8, 8)), trace_graph(m, example=torch.randn(2, 3, 8, 8))
    assert one.layer_names == batch.layer_names == ["0", "2"] and one.chained and not one.coverage.notes


def test_a_conv_reading_one_tensor_twice_is_refused_with_what_to_do():
    from graphinterp.common.errors import UnsupportedModelError

    class _CRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(torch.cat([torch.relu(y), torch.relu(-y)], 1))
    with pytest.raises(UnsupportedModelError, match="--layerwise"):
        trace_graph(_CRelu().eval(), input_shape=(3, 4, 4))


@pytest.mark.parametrize("mode", ["mul_", "setitem", "iadd"])
def test_a_copy_of_a_weight_changed_in_place_is_not_taken_for_the_parameter(mode):
    class _Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = nn.Linear(4, 3), nn.Linear(3, 2)
            self.register_buffer("mask", torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]))

        def forward(self, x):
            w = self.fc.weight.clone()
            if mode == "mul_":
                w.mul_(self.mask)
            elif mode == "setitem":
                w[self.mask == 0] = 0.0
            else:
                w += 10 * self.mask
            return self.head(F.linear(x, w, self.fc.bias))
    g = trace_graph(_Masked().eval())
    assert g.layer_names == ["head"] and any("not a parameter" in n for n in g.coverage.notes)


def test_a_reshaped_parameter_used_as_a_weight_is_cut_not_crashed():
    class _Reshaped(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(5, 4, 1), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.relu(F.linear(x, self.conv.weight.view(4, 5))))
    g = trace_graph(_Reshaped().eval(), example=torch.randn(2, 5))
    assert g.layer_names == ["head"] and any("computed from parameter conv.weight (a slice, a reshape or arithmetic "
                                             "on it: (4, 5) from (4, 5, 1, 1))" in n for n in g.coverage.notes)


def test_eval_mode_restores_through_train_so_overrides_run():
    class _Fusing(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.fused = nn.Linear(2, 2), False

        def train(self, mode=True):
            self.fused = not mode
            return super().train(mode)
    m = nn.Sequential(_Fusing(), nn.Dropout()).train()
    with eval_mode(m):
        assert m[0].fused
    assert m.training and not m[0].fused


class _Affine(nn.Module):
    """A per-feature scale and shift written four ways: ``x * a + b``, timm ResMLP's ``addcmul(b, a, x)``,
    ``einsum("bd,d->bd", x, a) + b`` and ``lerp(0, x, a) + b``."""

    def __init__(self, d, how):
        super().__init__()
        self.how, self.alpha, self.beta = how, nn.Parameter(torch.rand(d) * 2 + 0.5), nn.Parameter(torch.randn(d))

    def forward(self, x):
        if self.how == "addcmul":
            return torch.addcmul(self.beta, self.alpha, x)
        if self.how == "einsum":
            return torch.einsum("bd,d->bd", x, self.alpha) + self.beta
        return torch.lerp(torch.zeros_like(x), x, self.alpha) + self.beta


@pytest.mark.parametrize("how", ["addcmul", "einsum", "lerp"])
def test_a_scale_inside_a_fused_op_is_folded_or_listed_never_silent(how):
    """These scales were neither folded nor listed: the graph's fc2 was the raw weight, with nothing said."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), _Affine(8, how), nn.Linear(8, 3)).eval()
    cov = (g := trace_graph(m, input_shape=(4,))).coverage
    if how == "addcmul":  # the additive operand carries no nodes: x * alpha, folded into the reader
        assert cov.folded == ["3: 2.alpha (input gain)"] and not cov.unfolded
        torch.testing.assert_close(g["3"].weight, m[3].weight.detach() * m[2].alpha.detach())
        torch.testing.assert_close((m[3].weight * live_scale(m, g["3"], m[3].weight)()).detach(), g["3"].weight)
    else:
        assert f"torch.{how}" in cov.unfolded["2.alpha"] and torch.equal(g["3"].weight, m[3].weight)


def test_a_residual_addcmul_is_listed_and_attention_einsums_list_nothing():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.gamma, self.head = nn.Linear(8, 8), nn.Parameter(torch.rand(8)), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(torch.addcmul(x, self.gamma, self.fc(x)))

    assert "torch.addcmul" in trace_graph(Res().eval(), input_shape=(8,)).coverage.unfolded["gamma"]
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1).eval()
    assert not any("einsum" in why for why in trace_graph(enc, input_shape=(5, 16)).coverage.unfolded.values())


class _ComputedGainNorm(nn.Module):
    """``F.layer_norm`` with a gain computed from the parameter (Megatron's ``apply_layernorm_1p``) or from the input."""

    def __init__(self, d, how):
        super().__init__()
        self.how, self.weight, self.cond = how, nn.Parameter(torch.rand(d) * 2 - 0.5), nn.Linear(d, d)

    def forward(self, x):
        w = 1 + self.weight if self.how == "1p" else torch.sigmoid(self.cond(x.detach().mean(0)))
        return F.layer_norm(x, x.shape[-1:], w)


def test_a_norm_gain_computed_from_its_parameter_is_folded_and_one_from_the_input_is_noted():
    """A computed gain was skipped without a word: the reader's graph weight was raw."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), _ComputedGainNorm(8, "1p"), nn.Linear(8, 3)).eval()
    g = trace_graph(m, input_shape=(4,))
    torch.testing.assert_close(g["2"].weight, m[2].weight.detach() * (1 + m[1].weight.detach())[None, :])
    with pytest.raises(ClusteringError, match="cannot be recomputed"):
        live_scale(m, g["2"], m[2].weight)
    m = nn.Sequential(nn.Linear(4, 8), _ComputedGainNorm(8, "input"), nn.Linear(8, 3)).eval()
    notes = trace_graph(m, input_shape=(4,)).coverage.notes
    assert any("adaptive normalisation" in n for n in notes), notes


def test_a_gathered_permutation_is_followed_and_a_bilinear_layer_cuts_the_graph():
    """Both were assumed element-wise: b read a's nodes in the wrong order, and c read a's nodes through a
    Bilinear layer as if it were not there."""

    class Gather(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)
            self.register_buffer("perm", torch.tensor([3, 1, 0, 5, 4, 2]))

        def forward(self, x):
            y = self.a(x)
            return self.b(torch.gather(y, -1, self.perm.expand_as(y)))

    g = trace_graph(Gather().eval(), input_shape=(3,))
    assert [g.node_names[i] for i in g.src_nodes("b")] == [f"a:{i}" for i in (3, 1, 0, 5, 4, 2)]

    class Bil(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bil, self.c = nn.Linear(3, 4), nn.Bilinear(4, 4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.c(self.bil(h, h))

    g = trace_graph(Bil().eval(), input_shape=(3,))
    assert [g.node_names[i] for i in g.src_nodes("c")] == [f"bilinear:unbound:{i}" for i in range(4)]
    assert any("bilinear" in note for note in g.coverage.notes)
    assert [(m.name, m.numel) for m in g.coverage.missing] == [("bil.weight", 64)]


@pytest.mark.parametrize("shape, expected", [((1, 4, 5, 3), (8, 3)), ((2, 1, 4, 6), (8, 24))])
def test_an_example_input_for_a_linear_first_model_is_tagged_as_its_shape_would_be(shape, expected):
    """A channels-last example (1, 4, 5, 3) for a per-pixel MLP was tagged along dim 1: 'mixes positions',
    then 'no weight layer was called'. An image batch for a flattening MLP gets one node per pixel."""
    flatten = shape[-1] != expected[1]
    m = nn.Sequential(*([nn.Flatten()] if flatten else []), nn.Linear(expected[1], 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    g = trace_graph(m, example=torch.randn(*shape))
    assert g.layers[0].shape() == expected[::-1] and len(g.layers) == 2


def test_a_one_output_layer_broadcast_onto_a_wider_one_is_noted_not_merged():
    """A dueling head, v(h) + a - mean(a), merged v's one node with all of a's: refused as 'a state-space scan'."""

    class Dueling(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.v, self.a, self.head = nn.Linear(4, 16), nn.Linear(16, 1), nn.Linear(16, 3), nn.Linear(3, 2)

        def forward(self, x):
            h = torch.relu(self.body(x))
            a = self.a(h)
            return self.head(self.v(h) + a - a.mean(-1, keepdim=True))

    g = trace_graph(Dueling().eval(), input_shape=(4,))
    assert [g.node_names[i] for i in g.src_nodes("head")] == ["a:0", "a:1", "a:2"]
    assert any("one node broadcast onto several" in note for note in g.coverage.notes)


def test_a_raw_weight_on_the_flattened_input_gets_one_node_per_input_element():
    """F.linear(x.flatten(1), self.w) with input shape (1, 8, 8): the input was tagged along its last dimension,
    so w was an 8 x 32 layer of 'grouped' features (4 x 32 for (4, 4, 4)), at 100% coverage and without a note."""

    class RawParam(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.fc = nn.Parameter(torch.randn(32, 64)), nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(F.relu(F.linear(x.flatten(1), self.w)))

    for shape in ((1, 8, 8), (4, 4, 4), (64,)):
        assert trace_graph(RawParam().eval(), input_shape=shape)["w"].shape() == (64, 32)
    assert trace_graph(RawParam().eval(), example=torch.randn(2, 4, 4, 4))["w"].shape() == (64, 32)


def test_a_sequence_read_along_its_last_dimension_is_not_taken_for_a_flattened_input():
    """A learned (T, H) position table registered before a Linear(1, H) made a (B, T, 1) input 'flattened':
    one node per time step, a note, and a layer cut from the input."""

    class Series(nn.Module):
        def __init__(self, T=6, H=8):
            super().__init__()
            self.pos, self.inp, self.out = nn.Parameter(torch.randn(T, H)), nn.Linear(1, H), nn.Linear(H, 2)

        def forward(self, x):
            return self.out(torch.relu(self.inp(x) + self.pos))

    for g in (trace_graph(Series().eval(), example=torch.randn(2, 6, 1)), trace_graph(Series().eval(), input_shape=(6, 1))):
        assert g["inp"].shape() == (1, 8) and not g.coverage.notes

    class Lens(nn.Module):  # TransformerLens style: x @ W_in over (B, 4, D), with 4 * D inputs nowhere flattened
        def __init__(self, D=8):
            super().__init__()
            self.W_in, self.W_out = nn.Parameter(torch.randn(D, 4 * D)), nn.Parameter(torch.randn(4 * D, D))

        def forward(self, x):
            return x + torch.relu(x @ self.W_in) @ self.W_out

    g = trace_graph(Lens().eval(), input_shape=(4, 8))
    assert not any("different positions" in note for note in g.coverage.notes)


class _BiasedAttention(nn.Module):
    """Attention whose scores get a bias from a small MLP over a position table (Swin V2's cpb_mlp)."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj, self.cpb = nn.Linear(16, 48), nn.Linear(16, 16), nn.Linear(4, 2)
        self.register_buffer("table", torch.randn(25, 4))

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 2, 8).permute(2, 0, 3, 1, 4)
        attn = q @ k.transpose(-2, -1) + self.cpb(self.table).view(N, N, 2).permute(2, 0, 1).unsqueeze(0)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))


def test_attention_with_a_score_bias_from_a_layer_keeps_the_value_path():
    """The scores then carried the bias layer's nodes, and `attn @ v` kept neither operand's: every Swin V2
    block's proj started from fresh nodes (the graph cut between qkv and proj)."""
    g = trace_graph(_BiasedAttention().eval(), example=torch.randn(1, 5, 16))
    assert np.array_equal(g.src_nodes("proj"), g.dst_nodes("qkv")[32:])
    assert "proj" not in str(g.coverage.notes)


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fa, self.fb, self.out = nn.Linear(8, 4), nn.Linear(8, 5), nn.Linear(20, 3)

    def forward(self, x):
        return self.out((self.fa(x).unsqueeze(-1) @ self.fb(x).unsqueeze(-2)).flatten(1))


class _TokenMix(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.mix, self.out = nn.Linear(8, 8), nn.Linear(6, 6), nn.Linear(8, 3)

    def forward(self, x):  # (B, 6 tokens, 8): channels-first h times a token-mixing matrix made by a layer
        h = self.a(x).transpose(1, 2)
        return self.out((h @ self.mix(torch.eye(6))).transpose(1, 2))


def test_the_attention_rule_does_not_wire_other_products_of_two_node_carrying_operands():
    """The first version of the Swin V2 rule gave any such product the right operand's nodes: an outer product
    read only fb's 5 nodes for its 20 inputs, and a token-mixing layer dropped out of the graph."""
    g = trace_graph(_Outer().eval(), input_shape=(8,))
    assert not set(g.src_nodes("out")) & set(g.dst_nodes("fb")) and any("out" in n for n in g.coverage.notes)
    g = trace_graph(_TokenMix().eval(), input_shape=(6, 8))
    assert "out" in g.layer_names and g.coverage.complete is not None and not g.coverage.missing


def test_a_broadcast_of_two_merged_nodes_is_still_one_node():
    """Two raw ids already merged into one node, added onto a wider layer's outputs: the raw-id test alone merged
    them (a refusal: 'two of its outputs were traced to the same node')."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fa, self.fb, self.fc, self.out = nn.Linear(8, 1), nn.Linear(8, 1), nn.Linear(8, 2), nn.Linear(2, 3)

        def forward(self, x):
            a, b = self.fa(x), self.fb(x)
            gate = a + b  # the two one-output layers' nodes merge
            return self.out(torch.cat([a, b], 1) + self.fc(x)) * gate

    g = trace_graph(M().eval(), input_shape=(8,))
    assert [g.node_names[i] for i in g.src_nodes("out")] == ["fc:0", "fc:1"]
