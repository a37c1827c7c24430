"""Gradient-based similarity: dense reference, cosine properties, grouped edges, planted blocks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from graphinterp.clustering.cluster import cluster_layers
from graphinterp.common.errors import TrainingError
from graphinterp.training.gradsim import GradientSimilarity, gradient_similarity
from graphinterp.graph.layered import LayeredGraph
from graphinterp.sources.models import mlp


pytestmark = pytest.mark.usefixtures("one_thread")


def _feed(model, sim, steps, seed=0, scales=None, shape=(16,)):
    """Run ``steps`` random backward passes; return the stored gradients of every parameter."""
    gen = torch.Generator().manual_seed(seed)
    stored = {name: [] for name, _ in model.named_parameters()}
    for t in range(steps):
        model.zero_grad()
        x = torch.randn(6, *shape, generator=gen, dtype=torch.float64)
        loss = model(x).sin().sum() * (scales[t] if scales else 1.0)
        loss.backward()
        sim.update()
        for name, p in model.named_parameters():
            stored[name].append(p.grad.clone())
    return stored


def test_matches_dense_reference_and_is_a_bounded_cosine():
    torch.manual_seed(0)
    model = mlp(16, [8, 8, 8], 3).double()
    graph = LayeredGraph.from_module(model)
    sim = GradientSimilarity(model, graph=graph)
    assert sim.layers == ["fc2", "fc3"]
    stored = _feed(model, sim, 7)
    S = sim.similarity()
    for name in sim.layers:
        ref = gradient_similarity(stored[f"{name}.weight"], graph[name])
        torch.testing.assert_close(S[name], ref, rtol=1e-12, atol=1e-14)
        # explicit formula for a Linear edge: |mean_t g_t[j, i] / ||g_t|| |, in (n_in, n_out) layout
        units = torch.stack([g / g.norm() for g in stored[f"{name}.weight"]])
        torch.testing.assert_close(S[name], units.mean(0).abs().T, rtol=1e-12, atol=1e-14)
        assert S[name].shape == graph[name].shape()
        assert bool((S[name] >= 0).all()) and bool((S[name] <= 1).all())
        assert float(S[name].square().sum()) <= 1 + 1e-12
    assert sim.steps == {"fc2": 7, "fc3": 7}


def test_invariant_to_per_step_gradient_scale():
    torch.manual_seed(0)
    a = mlp(16, [8, 8], 3).double()
    b = mlp(16, [8, 8], 3).double()
    b.load_state_dict(a.state_dict())
    sa, sb = GradientSimilarity(a), GradientSimilarity(b)
    _feed(a, sa, 5)
    _feed(b, sb, 5, scales=[0.01, 3.0, 100.0, 0.5, 7.0])
    torch.testing.assert_close(sa.similarity()["fc2"], sb.similarity()["fc2"])


def test_sign_flipping_gradients_cancel_and_zero_steps_are_skipped():
    model = mlp(4, [3, 3], 2)
    sim = GradientSimilarity(model)
    g = torch.randn(3, 3)
    for grad in (g, -g, g, -g, torch.zeros(3, 3)):
        model.fc2.weight.grad = grad.clone()
        sim.update()
    assert sim.steps["fc2"] == 4
    assert float(sim.similarity()["fc2"].abs().max()) < 1e-7
    model.fc2.weight.grad = g.clone()
    sim.update()
    torch.testing.assert_close(sim.similarity()["fc2"], (g / g.norm()).abs().T / 5)


def test_grouped_edges_use_block_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1, bias=False),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 5, bias=False)).double()
    graph = LayeredGraph.from_module(model, input_shape=(2, 4, 4))
    sim = GradientSimilarity(model, ["2", "5"], graph=graph)
    stored = _feed(model, sim, 4, shape=(2, 4, 4))
    S = sim.similarity()
    conv = torch.stack([g / g.norm() for g in stored["2.weight"]]).mean(0)  # (out, in, 3, 3)
    torch.testing.assert_close(S["2"], conv.square().sum((2, 3)).sqrt().T)
    lin = torch.stack([g / g.norm() for g in stored["5.weight"]]).mean(0).reshape(5, 4, 16)
    torch.testing.assert_close(S["5"], lin.square().sum(-1).sqrt().T)
    assert S["5"].shape == (4, 5)


def test_planted_blocks_are_recovered_by_bsgc():
    """Gradients that only ever touch block-diagonal edges give a similarity BSGC splits exactly."""
    model = mlp(4, [12, 9], 2)
    sim = GradientSimilarity(model)
    rows = np.repeat(np.arange(3), 4)  # 12 inputs of fc2 in 3 blocks
    cols = np.repeat(np.arange(3), 3)  # 9 outputs
    block = torch.as_tensor(rows[None, :] == cols[:, None], dtype=torch.float32)  # (out, in)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        noise = torch.randn(9, 12, generator=gen)
        model.fc2.weight.grad = noise * block + 0.01 * torch.randn(9, 12, generator=gen)
        sim.update()
    graph = LayeredGraph.from_module(model)
    c = cluster_layers(graph, 3, layers=["fc2"], similarity=sim.similarity(), random_state=0)
    r, k = c.labels("fc2")
    assert len(set(zip(rows, r))) == 3 and len(set(zip(cols, k))) == 3  # same partitions up to relabelling
    assert all(r[i] == k[j] for i in range(12) for j in range(9) if rows[i] == cols[j])


def test_state_round_trip_and_errors():
    model = mlp(4, [3, 3], 2)
    sim = GradientSimilarity(model)
    with pytest.raises(TrainingError, match="no gradient was accumulated"):
        sim.similarity()
    with pytest.raises(TrainingError, match="after loss.backward"):
        sim.update()
    model.fc2.weight.grad = torch.randn(3, 3)
    sim.update()
    other = GradientSimilarity(model)
    other.load_state_dict(sim.state_dict())
    torch.testing.assert_close(other.similarity()["fc2"], sim.similarity()["fc2"])
    assert other.steps == sim.steps
    with pytest.raises(TrainingError, match="layers"):
        GradientSimilarity(mlp(4, [3, 3, 3], 2)).load_state_dict(sim.state_dict())
    with pytest.raises(TrainingError, match="unknown layer"):
        GradientSimilarity(model, ["fc9"])
