"""Cluster labels -> parameter masks: hand-built examples and the E identity on every layer kind."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from graphinterp.clustering.cluster import Clustering
from graphinterp.clustering.labels import stored_clustering
from graphinterp.common.errors import ClusteringError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.training.masks import default_cluster_layers, parameter_masks, trace_graph, unwrap_model
from graphinterp.clustering.metrics import clusterability
from graphinterp.sources.models import cnn, mlp


pytestmark = pytest.mark.usefixtures("one_thread")


def _clustering(k, **layers):
    return Clustering(k, {n: np.asarray(r, dtype=np.int64) for n, (r, _) in layers.items()},
                      {n: np.asarray(c, dtype=np.int64) for n, (_, c) in layers.items()})


def test_default_layers_are_the_papers_choice():
    assert default_cluster_layers(LayeredGraph.from_module(mlp())) == ["fc2"]
    # the paper's CNN clusters fc2 only (Figure 7): fc1 reads the conv channels
    assert default_cluster_layers(LayeredGraph.from_module(cnn())) == ["fc2"]
    assert default_cluster_layers(LayeredGraph.from_module(mlp(10, [8, 8, 8], 3))) == ["fc2", "fc3"]
    with pytest.raises(ClusteringError, match="no Linear layer between two hidden Linear levels"):
        default_cluster_layers(LayeredGraph.from_module(mlp(10, [8], 3)))
    layerwise = LayeredGraph.from_module(mlp(), layerwise=True)
    with pytest.raises(ClusteringError, match="chained"):
        default_cluster_layers(layerwise)


def test_linear_mask_hand_built():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False))
    c = _clustering(3, **{"2": ([0, 1, 1, -1], [1, 0, 2])})
    (pm,) = parameter_masks(model, None, c).values()
    # torch layout (out, in): M[j, i] = [rows[i] == cols[j]], never for the isolated input 3
    expected = torch.tensor([[0, 1, 1, 0],
                             [1, 0, 0, 0],
                             [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(pm.mask, expected)
    assert pm.param is model[2].weight and pm.layer == "2"


def test_conv_mask_covers_whole_kernels():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.ReLU(), nn.Conv2d(3, 2, 3, bias=False))
    c = _clustering(2, **{"0": ([0, 1], [1, 1, 0]), "2": ([1, 1, 0], [0, 1])})
    masks = parameter_masks(model, None, c)
    m0 = masks["0"].mask
    assert m0.shape == model[0].weight.shape
    per_kernel = torch.tensor([[0, 1], [0, 1], [1, 0]], dtype=torch.float32)  # (out, in)
    assert torch.equal(m0, per_kernel[:, :, None, None].expand(3, 2, 3, 3))
    m2 = masks["2"].mask
    assert torch.equal(m2[:, :, 1, 1], torch.tensor([[0, 0, 1], [1, 1, 0]], dtype=torch.float32))
    assert bool((m2 == m2[:, :, :1, :1]).all())  # constant over each kernel


def test_grouped_conv_mask_matches_dense_reference():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 6, 3, groups=2, bias=False))
    rows, cols = [0, 1, 1, 0], [1, 0, 0, 1, 1, 0]
    mask = parameter_masks(model, None, _clustering(2, **{"2": (rows, cols)}))["2"].mask
    assert mask.shape == (6, 2, 3, 3)
    for j in range(6):  # out-channel j of group j // 3 sees in-channels 2 * (j // 3) + l
        for l in range(2):
            assert bool((mask[j, l] == float(rows[2 * (j // 3) + l] == cols[j])).all())


def test_flatten_expands_channel_labels_over_features():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3, bias=False))
    graph = LayeredGraph.from_module(model, input_shape=(1, 4, 4))
    assert graph["3"].in_groups == 2
    rows, cols = [0, 1], [1, 0, 1]
    mask = parameter_masks(model, graph, _clustering(2, **{"3": (rows, cols)}))["3"].mask
    assert mask.shape == (3, 32)
    for j in range(3):
        for ch in range(2):
            assert bool((mask[j, 16 * ch:16 * (ch + 1)] == float(rows[ch] == cols[j])).all())


@pytest.mark.parametrize("which", ["linear", "conv", "grouped_conv", "flatten"])
def test_masked_share_equals_graph_clusterability(which):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if which == "flatten":
        model = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 16, 6))
        shape, name = (1, 4, 4), "3"
    else:
        groups = 2 if which == "grouped_conv" else 1
        first = nn.Linear(7, 6) if which == "linear" else nn.Conv2d(3, 6, 3)
        second = nn.Linear(6, 4) if which == "linear" else nn.Conv2d(6, 4, 3, groups=groups)
        model, shape, name = nn.Sequential(first, nn.ReLU(), second), None, "2"
    model = model.double()
    graph = LayeredGraph.from_module(model, input_shape=shape)
    n_in, n_out = graph[name].shape()
    rows, cols = rng.integers(-1, 3, n_in), rng.integers(0, 3, n_out)
    pm = parameter_masks(model, graph, _clustering(3, **{name: (rows, cols)}))[name]
    w2 = pm.param.detach().square()
    share = float((w2 * pm.mask).sum() / w2.sum())
    assert share == pytest.approx(float(clusterability(graph[name].squared(), rows, cols)), rel=1e-9)


def test_masks_follow_dtype_and_device_of_parameters():
    model = mlp(10, [6, 6], 3).double()
    pm = parameter_masks(model, None, _clustering(2, fc2=([0, 1] * 3, [1, 0] * 3)))["fc2"]
    assert pm.mask.dtype == torch.float64 and pm.mask.device == pm.param.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_on_cuda():  # pragma: no cover - no GPU in CI
    model = mlp(10, [6, 6], 3).cuda()
    pm = parameter_masks(model, None, _clustering(2, fc2=([0, 1] * 3, [1, 0] * 3)))["fc2"]
    assert pm.mask.is_cuda


def test_mismatched_clustering_raises():
    model = mlp(10, [6, 6], 3)
    with pytest.raises(ClusteringError, match="another model"):
        parameter_masks(model, None, _clustering(2, fc2=([0, 1] * 4, [1, 0] * 3)))
    with pytest.raises(ClusteringError, match="does not have"):
        parameter_masks(model, None, _clustering(2, fc7=([0, 1], [1, 0])))
    with pytest.raises(ClusteringError, match="must lie in"):
        parameter_masks(model, None, _clustering(2, fc2=([0, 5] * 3, [1, 0] * 3)))
    other = LayeredGraph.from_module(mlp(10, [6, 6, 6], 3))  # same names, fc3 has another shape
    with pytest.raises(ClusteringError, match="another model"):
        parameter_masks(model, other, _clustering(2, fc3=([0, 1] * 3, [1, 0] * 3)))
    with pytest.raises(ClusteringError, match="needs a Clustering, got list"):
        parameter_masks(model, None, [1, 2])


def test_a_dict_is_refused_and_a_wrapped_model_is_unwrapped():
    model = mlp(10, [6, 6], 3)
    c = _clustering(2, fc2=([0, 1] * 3, [1, 0] * 3))
    with pytest.raises(ClusteringError, match="parameter_masks needs a Clustering, got dict; read a stored record"):
        parameter_masks(model, None, c.to_dict())
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    a = parameter_masks(wrapped, None, c)["fc2"]
    b = parameter_masks(model, None, stored_clustering(c.to_dict()))["fc2"]
    assert a.param is b.param and torch.equal(a.mask, b.mask)


def test_trace_graph_keeps_rng_stream():
    model = mlp(10, [6, 6], 3)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    trace_graph(model)
    assert torch.equal(torch.rand(3), expected)


class _NoisyMLP(nn.Module):
    """An MLP whose forward draws from the global RNG (noise injection), as a training model may."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(10, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = x + 0.01 * torch.randn_like(x)
        return self.fc3(torch.relu(self.fc2(x)))


def test_trace_graph_keeps_rng_stream_of_a_forward_that_draws():
    model = _NoisyMLP()
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    LayeredGraph.from_module(model)  # the plain trace does consume the stream: the check below can fail
    assert not torch.equal(torch.rand(3), expected)
    torch.manual_seed(1)
    graph = trace_graph(model)
    assert torch.equal(torch.rand(3), expected)
    assert graph.layer_names == ["fc1", "fc2", "fc3"]


class _ChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


def test_channels_last_flatten_masks_follow_the_channel_of_each_feature():
    """After a channels-last Flatten feature f belongs to channel f % C: the mask must follow the trace."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), _ChannelsLast(), nn.Flatten(),
                          nn.Linear(5 * 16, 6)).double()
    graph = LayeredGraph.from_module(model, input_shape=(1, 4, 4))
    assert graph["4"].in_index.tolist() == (np.arange(80) % 5).tolist()
    rows, cols = np.array([0, 1, 2, 0, 1]), np.array([0, 1, 2, 2, 1, 0])
    mask = parameter_masks(model, graph, _clustering(3, **{"4": (rows, cols)}))["4"].mask
    feature_channel = np.arange(80) % 5
    expected = rows[feature_channel][None, :] == cols[:, None]
    assert torch.equal(mask.bool(), torch.as_tensor(expected))
    w2 = model[4].weight.detach().square()
    share = float((w2 * mask).sum() / w2.sum())
    assert share == pytest.approx(float(clusterability(graph["4"].squared(), rows, cols)), rel=1e-9)
