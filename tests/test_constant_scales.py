"""Scales that are not ``param * x``: FrozenBatchNorm2d (computed from buffers), ``x / param``, a single learned
value on a layer's output (ReZero). Each is folded where one value per node reproduces the model, or listed in
``unfolded``: the graph never silently holds the raw weights of a scaled layer. Tiny models; no downloads.
"""
import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from graphinterp.common.errors import ClusteringError
from graphinterp.graph.model_trace import trace_graph
from graphinterp.training.folded_scales import live_scale


def _conv_net(norm_layer):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), norm_layer(6), nn.ReLU(), nn.Conv2d(6, 4, 3), norm_layer(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def _with_random_statistics(model):
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            for name in ("weight", "running_var"):
                getattr(m, name).data.copy_(torch.rand(getattr(m, name).shape, generator=gen) * 1.5 + 0.3)
            for name in ("bias", "running_mean"):
                getattr(m, name).data.copy_(torch.randn(getattr(m, name).shape, generator=gen))
    return model


def test_frozen_batchnorm_folds_as_batchnorm_does():
    bn = _with_random_statistics(_conv_net(nn.BatchNorm2d))
    frozen = _conv_net(FrozenBatchNorm2d)
    frozen.load_state_dict({k: v for k, v in bn.state_dict().items() if "num_batches" not in k})
    x = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(frozen(x), bn(x))
    a, b = trace_graph(bn, input_shape=(3, 10, 10)), trace_graph(frozen, input_shape=(3, 10, 10))
    assert [l.name for l in a.layers] == [l.name for l in b.layers]
    for la, lb in zip(a.layers, b.layers):
        torch.testing.assert_close(lb.weight, la.weight, rtol=1e-6, atol=1e-6)
    assert "0: 1 (constant scale)" in b.coverage.folded and b.coverage.complete and not b.coverage.unfolded
    assert not torch.allclose(b["0"].weight, frozen[0].weight.detach())  # the scale is really in the graph
    with pytest.raises(ClusteringError, match="cannot be recomputed"):  # training cannot follow a buffer's fold
        live_scale(frozen, b["0"], frozen[0].weight)


def test_frozen_batchnorm_left_unfolded_when_asked_is_reported():
    g = trace_graph(_with_random_statistics(_conv_net(FrozenBatchNorm2d)), input_shape=(3, 10, 10), fold=False)
    assert {"1", "4"} <= set(g.coverage.unfolded) and "fold=False" in g.coverage.unfolded["1"]


class _Divided(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.temperature = nn.Parameter(torch.rand(6) + 0.5)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x) / self.temperature))


def test_division_by_a_parameter_is_folded():
    model = _Divided().eval()
    g = trace_graph(model, input_shape=(4,))
    torch.testing.assert_close(g["fc1"].weight, (model.fc1.weight / model.temperature[:, None]).detach())
    assert "fc1: temperature (scale by 1 / parameter)" in g.coverage.folded


class _ReZero(nn.Module):
    """``h + alpha * fc2(relu(fc1(h)))`` with a single learned alpha (Bachlechner et al. 2020)."""

    def __init__(self, d=6):
        super().__init__()
        self.stem, self.fc1, self.fc2, self.head = nn.Linear(4, d), nn.Linear(d, 8), nn.Linear(8, d), nn.Linear(d, 3)
        self.alpha = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        h = self.stem(x)
        return self.head(h + self.alpha * self.fc2(torch.relu(self.fc1(h))))


def test_a_single_learned_scale_on_a_layer_output_is_folded():
    model = _ReZero().eval()
    g = trace_graph(model, input_shape=(4,))
    torch.testing.assert_close(g["fc2"].weight, 0.3 * model.fc2.weight.detach())
    torch.testing.assert_close(g["fc1"].weight, model.fc1.weight.detach())
    assert "fc2: alpha (scale)" in g.coverage.folded


class _ScaledAfterActivation(nn.Module):
    """A single learned value scaling a tensor no layer produced directly, and a buffer varying per position."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.alpha = nn.Parameter(torch.tensor(2.0))
        self.register_buffer("positional", torch.rand(5, 1) + 0.5)

    def forward(self, x):  # x: (batch, 5 positions, 4)
        h = torch.relu(self.fc1(x)) * self.alpha
        return self.fc2(h * self.positional)


def test_scales_that_cannot_be_folded_are_listed():
    g = trace_graph(_ScaledAfterActivation().eval(), input_shape=(5, 4))
    un = g.coverage.unfolded
    assert "a single parameter value (2.0)" in un["alpha"]
    assert "from buffers" in un["positional"] and "not one value per node" in un["positional"]
    assert any(line.startswith("not folded:") for line in g.coverage.summary_lines())


class _ScaledByConstants(nn.Module):
    """``fc2(relu(fc1(x)) * s)`` with ``s`` a product of two parameters, a plain tensor attribute (not a buffer:
    not in the state_dict) or a plain scalar tensor attribute; each was dropped without a word (coverage complete)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)
        self.g = nn.Parameter(torch.tensor([1.0, -5.0, 0.01, 100.0, 1.0, 1.0]))
        self.h = nn.Parameter(torch.full((6,), 2.0))
        self.plain = torch.tensor([1.0, -5.0, 0.01, 100.0, 1.0, 1.0])
        self.scalar = torch.tensor(3.0)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        s = {"two parameters": lambda: self.g * self.h, "attribute": lambda: self.plain,
             "scalar attribute": lambda: self.scalar}[self.how]()
        return self.fc2(h * s)


@pytest.mark.parametrize("how", ["two parameters", "attribute"])
def test_a_scale_by_several_parameters_or_a_tensor_attribute_is_folded_exactly(how):
    torch.manual_seed(0)
    model = _ScaledByConstants(how).eval()
    g = trace_graph(model, example=torch.randn(3, 4))
    scale = (model.g * model.h if how == "two parameters" else model.plain).detach()
    torch.testing.assert_close(g["fc2"].weight, model.fc2.weight.detach() * scale[None, :])
    assert g.coverage.folded and not g.coverage.unfolded


def test_a_scalar_tensor_attribute_after_an_activation_is_listed():
    g = trace_graph(_ScaledByConstants("scalar attribute").eval(), example=torch.randn(3, 4))
    assert "a single constant value (3.0)" in g.coverage.unfolded["scalar"]


class _InPlaceLayerScale(nn.Module):
    """``y.mul_(gamma)`` (layer_scale written in place), optionally with ``y`` read before it is scaled."""

    def __init__(self, read_before: bool, d=6, through_view: bool = False):
        super().__init__()
        self.read_before, self.through_view = read_before, through_view
        self.stem, self.fc1, self.fc2, self.head = nn.Linear(4, d), nn.Linear(d, 8), nn.Linear(8, d), nn.Linear(d, 3)
        self.gamma = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        h = self.stem(x)
        y = self.fc2(torch.relu(self.fc1(h)))
        raw = torch.relu(y) if self.read_before else 0
        (y.view(-1, y.shape[-1]) if self.through_view else y).mul_(self.gamma)
        return self.head(h + y + raw)


def test_a_layer_scale_applied_in_place_is_folded_unless_the_raw_output_was_read():
    torch.manual_seed(0)
    model = _InPlaceLayerScale(read_before=False).eval()
    g = trace_graph(model, input_shape=(4,))
    torch.testing.assert_close(g["fc2"].weight, (model.fc2.weight * model.gamma[:, None]).detach())
    assert g.coverage.folded == ["fc2: gamma (scale)"] and not g.coverage.unfolded
    model = _InPlaceLayerScale(read_before=True).eval()
    g = trace_graph(model, input_shape=(4,))
    torch.testing.assert_close(g["fc2"].weight, model.fc2.weight.detach(), rtol=0, atol=0)
    assert "gamma" in g.coverage.unfolded and not g.coverage.folded


@pytest.mark.parametrize("read_before", [False, True])
def test_a_layer_scale_applied_in_place_through_a_view_is_folded_unless_the_raw_output_was_read(read_before):
    """``y.view(...).mul_(gamma)`` after ``relu(y)`` read the raw ``y``: the fold scaled that path too."""
    torch.manual_seed(0)
    model = _InPlaceLayerScale(read_before=read_before, through_view=True).eval()
    g = trace_graph(model, input_shape=(4,))
    if read_before:
        torch.testing.assert_close(g["fc2"].weight, model.fc2.weight.detach(), rtol=0, atol=0)
        assert "gamma" in g.coverage.unfolded and not g.coverage.folded
    else:
        torch.testing.assert_close(g["fc2"].weight, (model.fc2.weight * model.gamma[:, None]).detach())
        assert g.coverage.folded == ["fc2: gamma (scale)"]
