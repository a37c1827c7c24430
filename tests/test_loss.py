"""EnmeshmentLoss against a dense reference: values, gradcheck, caching, no writes into .grad."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import graphinterp.training.loss as loss_mod
from graphinterp.clustering.cluster import Clustering, cluster_network
from graphinterp.common.errors import ClusteringError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.training.loss import EnmeshmentLoss, enmeshment_loss
from graphinterp.clustering.metrics import clusterability_report
from graphinterp.sources.models import mlp


pytestmark = pytest.mark.usefixtures("one_thread")


def _model_and_clustering(seed=0):
    """Conv -> Flatten -> Linear -> Linear (float64) with random labels on all three layers."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 9, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False),
    ).double()
    graph = LayeredGraph.from_module(model, input_shape=(2, 3, 3))
    rng = np.random.default_rng(seed)
    labels = [rng.integers(0, 2, n) for n in graph.level_sizes()]
    labels[0][0] = -1  # one isolated input node
    c = Clustering(2, {l.name: labels[t] for t, l in enumerate(graph)}, {l.name: labels[t + 1] for t, l in enumerate(graph)})
    return model, graph, c


def _dense_within_total(model, c):
    """Per layer (within, total) from the obvious formulas on graph-level edge weights (differentiable)."""
    out = []
    for name, W in (("0", model[0].weight), ("3", model[3].weight), ("5", model[5].weight)):
        if W.dim() == 4:
            sq = W.square().sum((2, 3)).T  # (in, out): squared kernel norms
        elif name == "3":
            sq = W.reshape(W.shape[0], 4, 9).square().sum(-1).T  # grouped: 4 channels of 9 features
        else:
            sq = W.square().T
        rows, cols = (torch.as_tensor(v) for v in c.labels(name))
        inside = (rows[:, None] == cols[None, :]) & (rows[:, None] >= 0)
        out.append(((sq * inside).sum(), sq.sum()))
    return out


def _reference(model, c, reduction):
    parts = _dense_within_total(model, c)
    if reduction == "mass":
        return 1 - sum(w for w, _ in parts) / sum(t for _, t in parts)
    return 1 - torch.stack([w / t for w, t in parts]).mean()


@pytest.mark.parametrize("reduction", ["mass", "mean"])
def test_value_and_gradient_match_dense_reference(reduction):
    model, graph, c = _model_and_clustering()
    loss = EnmeshmentLoss(model, c, graph=graph, reduction=reduction)
    params = [model[0].weight, model[3].weight, model[5].weight]
    value, ref = loss(), _reference(model, c, reduction)
    assert value.item() == pytest.approx(ref.item(), rel=1e-12)
    g = torch.autograd.grad(value, params)
    g_ref = torch.autograd.grad(ref, params)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mass", "mean"])
def test_gradcheck(reduction):
    model, graph, c = _model_and_clustering(seed=1)
    loss = EnmeshmentLoss(model, c, graph=graph, reduction=reduction)
    params = tuple(p for p in model.parameters())
    # gradcheck perturbs the parameters in place; the loss reads them live
    assert torch.autograd.gradcheck(lambda *ps: loss(), params, eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(lambda *ps: _reference(model, c, reduction), params, eps=1e-6, atol=1e-8)


def test_mass_value_is_the_reported_clusterability():
    model, graph, c = _model_and_clustering(seed=2)
    loss = EnmeshmentLoss(model, c, graph=graph, reduction="mass")
    report = clusterability_report(graph, c)
    assert loss.clusterability() == pytest.approx(report.E, rel=1e-12)
    assert loss().item() == pytest.approx(1 - report.E, rel=1e-12)
    per = loss.per_layer()
    assert [per[s.layer] for s in report.layers] == pytest.approx([s.E for s in report.layers], rel=1e-12)
    mean = EnmeshmentLoss(model, c, graph=graph, reduction="mean")
    assert mean().item() == pytest.approx(1 - np.mean([s.E for s in report.layers]), rel=1e-12)


def _bn_mlp(seed=3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4, bias=False)).double()
    with torch.no_grad():
        model[1].weight.uniform_(0.2, 3.0)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_with_a_folded_batchnorm_the_loss_scores_the_graphs_weights():
    """The loss and E were of the raw parameters while the graph, its clustering and the report use the
    folded ones (report 0.3692 vs loss 0.3470 on the shared MNIST BatchNorm MLP)."""
    model = _bn_mlp()
    folded, raw = LayeredGraph.from_module(model), LayeredGraph.from_module(model, fold=False)
    c = cluster_network(folded, 2, random_state=0)
    for reduction in ("mass", "mean"):
        loss = EnmeshmentLoss(model, c, graph=folded, reduction=reduction)
        report = clusterability_report(folded, c)
        assert loss.clusterability() == pytest.approx(report.E, rel=1e-10)
        assert loss.per_layer() == pytest.approx({s.layer: s.E for s in report.layers}, rel=1e-10)
    assert abs(clusterability_report(raw, c).E - clusterability_report(folded, c).E) > 1e-4  # folding matters here
    raw_loss = EnmeshmentLoss(model, c, graph=raw, reduction="mass")  # a fold=False graph: the raw weights
    assert raw_loss.clusterability() == pytest.approx(clusterability_report(raw, c).E, rel=1e-10)


def test_a_rescaling_that_the_batchnorm_absorbs_does_not_change_the_loss():
    """Rows of the layer shrunk and the BatchNorm's variance shrunk to match: same function, and so the same
    loss (the raw-parameter loss dropped, so training could game it)."""
    model = _bn_mlp()
    model[1].eps = 0.0  # so that the compensation below is exact
    graph = LayeredGraph.from_module(model)
    c = cluster_network(graph, 2, random_state=0)
    loss = EnmeshmentLoss(model, c, graph=graph, reduction="mass")
    x = torch.randn(5, 6, dtype=torch.float64)
    before_out, before = model(x), loss().item()
    with torch.no_grad():
        factor = torch.linspace(0.2, 3.0, 8, dtype=torch.float64)
        model[0].weight.mul_(factor[:, None])
        model[1].running_mean.mul_(factor)
        model[1].running_var.mul_(factor ** 2)
    torch.testing.assert_close(model(x), before_out, rtol=1e-9, atol=1e-12)
    assert loss().item() == pytest.approx(before, rel=1e-9)


def test_the_loss_gradient_reaches_the_batchnorm_gain():
    model = _bn_mlp()
    graph = LayeredGraph.from_module(model)
    loss = EnmeshmentLoss(model, cluster_network(graph, 2, layers=["0"], random_state=0), graph=graph)
    loss().backward()
    assert model[1].weight.grad is not None and float(model[1].weight.grad.abs().sum()) > 0


def test_never_writes_grad_and_accumulates_like_any_loss():
    model, graph, c = _model_and_clustering()
    loss = EnmeshmentLoss(model, c, graph=graph)
    value = loss()
    assert all(p.grad is None for p in model.parameters())
    value.backward()
    first = [p.grad.clone() for p in model.parameters()]
    (2 * loss()).backward()
    for p, g in zip(model.parameters(), first):
        torch.testing.assert_close(p.grad, 3 * g)


def test_zero_weights_give_one_and_finite_gradient():
    model, graph, c = _model_and_clustering()
    loss = EnmeshmentLoss(model, c, graph=graph)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    value = loss()
    value.backward()
    assert value.item() == 1.0
    assert all(bool(torch.isfinite(p.grad).all()) and not p.grad.any() for p in model.parameters())


def test_gradient_descent_on_the_loss_drives_E_to_one():
    torch.manual_seed(0)
    model = mlp(12, [8, 8], 3)
    graph = LayeredGraph.from_module(model)
    c = cluster_network(graph, 2, layers=["fc2"], random_state=0)
    loss = EnmeshmentLoss(model, c)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    start = loss.clusterability()
    for _ in range(200):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert start < 0.9 and loss.clusterability() > 0.999


def test_follows_model_to_another_dtype():
    model = mlp(12, [8, 8], 3)
    c = cluster_network(LayeredGraph.from_module(model), 2, layers=["fc2"], random_state=0)
    loss = EnmeshmentLoss(model, c)
    model.double()
    assert loss().dtype == torch.float64


@pytest.mark.parametrize("reduction", ["mean", "mass"])
def test_follows_model_to_a_lower_precision_dtype(reduction):
    """float32 masks against bfloat16 weights cannot be dotted: the masks must follow the model (the sums are
    float32, as a bfloat16 or float16 layer's squares lose precision or underflow)."""
    model = mlp(12, [8, 8, 8], 3)
    c = cluster_network(LayeredGraph.from_module(model), 2, layers=["fc2", "fc3"], random_state=0)
    loss = EnmeshmentLoss(model, c, reduction=reduction)
    before = loss().item()
    model.to(torch.bfloat16)
    value = loss()
    assert value.dtype == torch.float32 and value.item() == pytest.approx(before, rel=3e-2)
    value.backward()
    assert model.fc2.weight.grad.dtype == torch.bfloat16 and model.fc2.weight.grad.abs().sum() > 0
    assert loss.per_layer()["fc2"] == pytest.approx(EnmeshmentLoss(model.float(), c).per_layer()["fc2"], rel=3e-2)


def test_functional_form_caches_masks(monkeypatch):
    model = mlp(12, [8, 8], 3)
    c = cluster_network(LayeredGraph.from_module(model), 2, layers=["fc2"], random_state=0)
    calls = []
    real = loss_mod.parameter_masks
    monkeypatch.setattr(loss_mod, "parameter_masks", lambda *a, **k: calls.append(1) or real(*a, **k))
    values = [enmeshment_loss(model, c).item() for _ in range(5)]
    assert len(calls) == 1 and values == [values[0]] * 5
    assert len(calls) == 1
    assert enmeshment_loss(model, c).item() == pytest.approx(EnmeshmentLoss(model, c)().item())
    calls.clear()
    c2 = Clustering.from_dict(c.to_dict())  # another clustering object -> rebuilt
    enmeshment_loss(model, c2)
    assert len(calls) == 1
    model.fc2.weight = nn.Parameter(model.fc2.weight.detach().clone())  # replaced parameter -> rebuilt
    enmeshment_loss(model, c2).backward()
    assert len(calls) == 2 and model.fc2.weight.grad is not None
    enmeshment_loss(model, c2, reduction="mass")  # another reduction -> rebuilt
    assert len(calls) == 3


def test_bad_arguments():
    model = mlp(12, [8, 8], 3)
    c = cluster_network(LayeredGraph.from_module(model), 2, layers=["fc2"], random_state=0)
    with pytest.raises(ValueError, match="reduction"):
        EnmeshmentLoss(model, c, reduction="sum")
    with pytest.raises(ClusteringError, match="no layers"):
        EnmeshmentLoss(model, Clustering(2, {}, {}))
    for bad in (c.to_dict(), None):  # only a Clustering: a stored dict is read with stored_clustering
        with pytest.raises(ClusteringError, match="EnmeshmentLoss needs a Clustering"):
            EnmeshmentLoss(model, bad)
        with pytest.raises(ClusteringError, match="needs a Clustering"):
            enmeshment_loss(model, bad)
    other = mlp(12, [9, 8], 3)
    with pytest.raises(ClusteringError):
        enmeshment_loss(other, c)


def test_frozen_and_non_contiguous_weights():
    """A frozen clustered weight gets no gradient; a channels-last conv weight gets the dense reference's."""
    model, graph, c = _model_and_clustering(seed=3)
    model[0].weight.data = model[0].weight.data.contiguous(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()
    loss, ref = EnmeshmentLoss(model, c, graph=graph), _reference(model, c, "mean")
    assert loss().item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(torch.autograd.grad(loss(), model[0].weight)[0],
                               torch.autograd.grad(ref, model[0].weight)[0], rtol=1e-10, atol=1e-14)
    model[5].weight.requires_grad_(False)
    loss().backward()
    assert model[5].weight.grad is None and model[3].weight.grad is not None



def test_one_zero_layer_gives_one():
    model = mlp(12, [8, 8], 3)
    c = cluster_network(LayeredGraph.from_module(model), 2, layers=["fc2"], random_state=0)
    loss = EnmeshmentLoss(model, c)
    with torch.no_grad():
        model.fc2.weight.zero_()
    value = loss()
    value.backward()
    assert value.item() == 1.0 and not model.fc2.weight.grad.any()


class _Folds(nn.Module):
    """conv -> BatchNorm2d (rows of conv), pool -> BatchNorm2d -> flatten -> fc (a per-channel gain on fc's
    flattened columns), fc -> layer_scale (rows of fc)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.bn_in = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 2 * 2, 6, bias=False)
        self.layer_scale = nn.Parameter(torch.rand(6) + 0.5)
        self.head = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = self.bn_in(torch.nn.functional.max_pool2d(h, 2)).flatten(1)
        return self.head(torch.relu(self.layer_scale * self.fc(h)))


def test_the_loss_follows_every_kind_of_fold_live():
    torch.manual_seed(0)
    model = _Folds().double().eval()
    with torch.no_grad():
        for bn in (model.bn, model.bn_in):
            bn.weight.uniform_(0.3, 2.0)
            bn.running_var.uniform_(0.5, 2.0)
    example = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    graph = LayeredGraph.from_module(model, input_shape=(3, 4, 4))
    folds = {name: graph[name].folded for name in ("conv", "fc")}
    assert folds["conv"] == ("bn (BatchNorm scale)",) and set(folds["fc"]) == {"bn_in (input gain)", "layer_scale (scale)"}
    c = cluster_network(graph, 2, layers=["conv", "fc"], random_state=0)
    loss = EnmeshmentLoss(model, c, graph=graph, reduction="mass")
    assert loss.clusterability() == pytest.approx(clusterability_report(graph, c).E, rel=1e-10)
    with torch.no_grad():  # the model trains on: the loss follows its current scales, as a fresh graph does
        model.bn.weight.mul_(torch.linspace(0.5, 2.0, 4, dtype=torch.float64))
        model.bn_in.running_var.mul_(torch.linspace(2.0, 0.5, 4, dtype=torch.float64))
        model.layer_scale.mul_(torch.linspace(0.3, 3.0, 6, dtype=torch.float64))
    fresh = LayeredGraph.from_module(model, input_shape=(3, 4, 4))
    assert loss.clusterability() == pytest.approx(clusterability_report(fresh, c).E, rel=1e-10)
    assert model(example).shape == (2, 3)


def test_a_batchnorm_without_affine_weight_is_followed_live():
    """It was named "batchnorm", so the loss could not find it and training stopped after the warm-up."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.BatchNorm1d(8, affine=False), nn.ReLU(),
                          nn.Linear(8, 4, bias=False)).double().eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.3, 3.0)
    graph = LayeredGraph.from_module(model)
    assert graph["0"].folded == ("1 (BatchNorm scale)",)
    c = cluster_network(graph, 2, random_state=0)
    loss = EnmeshmentLoss(model, c, graph=graph, reduction="mass")
    assert loss.clusterability() == pytest.approx(clusterability_report(graph, c).E, rel=1e-10)


def test_train_clusters_a_folded_layer_on_its_trained_weights():
    """The graph was traced once, before warm-up: a layer with a folded norm kept its initial weights in it, so
    the clustering after warm-up (and the baseline's refit) saw the untrained layer."""
    from graphinterp.training import train as train_mod
    from graphinterp.training.train import train
    from graphinterp.training.train_config import TrainConfig

    seen = []
    original = train_mod._cluster

    def spy(graph, layers, config, gradsim, rank, world, *rest):
        seen.append(graph["3"].weight.detach().clone())
        return original(graph, layers, config, gradsim, rank, world, *rest)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32),
                          nn.ReLU(), nn.Linear(32, 10))
    start = LayeredGraph.from_module(model)["3"].weight.detach().clone()  # folded, before training
    import unittest.mock as mock
    with mock.patch.object(train_mod, "_cluster", spy):
        train(TrainConfig(dataset="digits", warmup_epochs=1, epochs=0, lam=0.0, quiet=True, layers=["3"]).validate(),
              model=model)
    bn = model[4]
    now = model[3].weight.detach() * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()[:, None]
    assert len(seen) == 2 and not torch.allclose(seen[0], start)  # warm-up clustering and the baseline's refit
    assert all(torch.allclose(w, now, rtol=1e-5, atol=1e-7) for w in seen)

