"""Python-API cases found in review: model state left as found, losses that follow the model, labels checked.

Each test fails on the behaviour the review found: an instance forward deleted by the circuit search,
attribution gradients written into the model's ``.grad``, a loss scoring a replaced weight, a cached loss
ignoring its graph, labels of another k accepted, a k sweep whose labels depend on the other ks, a float16
loss biased by its epsilon, an accuracy above 1, scikit-learn tags.
"""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import graphinterp as gi
from graphinterp.clustering.bsgc_batch import fit_k_range
from graphinterp.clustering.metrics import random_partition_expectation
from graphinterp.common.errors import ClusteringError
from graphinterp.interpret.label_tasks import label_task
from graphinterp.sources.models import mlp


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_a_circuit_search_keeps_a_forward_installed_on_the_first_linear_and_scores_through_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    inner = model[0].forward

    def wrapped(x):
        return inner(x) * 2.0
    model[0].forward = wrapped
    x = torch.randn(90, 4)
    y = model(x).argmax(1)
    before = model(x).clone()
    task = label_task(x, y, 0)
    circuit = gi.extract_circuit(model, task, device="cpu")
    assert model[0].__dict__.get("forward") is wrapped
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert circuit.full_accuracy == pytest.approx(task.metrics(model(task.x))[0])  # scored through the wrapper


def test_attribution_scores_leave_the_models_gradients_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(60, 6)
    y = model(x).argmax(1)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    gi.extract_circuit(model, label_task(x, y, int(y[0])), device="cpu", score="attribution")
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=0, atol=0)


def _clustered_mlp():
    torch.manual_seed(0)
    m = mlp(16, [12, 10, 8], 3)
    return m, gi.cluster_network(gi.LayeredGraph.from_module(m), 3, layers=["fc2"], random_state=0)


def test_the_loss_refuses_to_score_a_weight_replaced_after_it_was_built_and_the_function_form_rebuilds():
    m, c = _clustered_mlp()
    loss = gi.EnmeshmentLoss(m, c)
    m.fc2.weight = nn.Parameter(torch.randn(10, 12))
    with pytest.raises(ClusteringError, match="replaced after this EnmeshmentLoss was built"):
        loss()
    value = gi.enmeshment_loss(m, c)
    value.backward()
    assert m.fc2.weight.grad is not None
    assert float(value) == pytest.approx(float(gi.EnmeshmentLoss(m, c)()))


def test_the_loss_refuses_a_parametrized_weight():
    from torch.nn.utils.parametrizations import weight_norm
    m, c = _clustered_mlp()
    graph = gi.LayeredGraph.from_module(m)
    weight_norm(m.fc2)
    with pytest.raises(ClusteringError, match="computed in the forward pass"):
        gi.EnmeshmentLoss(m, c, graph=graph)


def test_the_function_form_follows_the_graph_it_is_given():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(),
                      nn.Linear(8, 3)).eval()
    with torch.no_grad():
        m[3].running_var.uniform_(0.1, 10)
        m[3].weight.uniform_(0.2, 3)
    folded, raw = gi.LayeredGraph.from_module(m), gi.LayeredGraph.from_module(m, fold=False)
    c = gi.cluster_network(folded, 2, layers=["2"], random_state=0)
    a, b = float(gi.enmeshment_loss(m, c, folded)), float(gi.enmeshment_loss(m, c, raw))
    assert a == pytest.approx(float(gi.EnmeshmentLoss(m, c, graph=folded)()))
    assert b == pytest.approx(float(gi.EnmeshmentLoss(m, c, graph=raw)()))
    assert a != pytest.approx(b)


def test_a_float16_loss_is_summed_wide_enough():
    m, c = _clustered_mlp()
    with torch.no_grad():
        m.fc2.weight.mul_(1e-2)
    m.half()
    loss = gi.EnmeshmentLoss(m, c)
    r, cc = c.labels("fc2")
    M = torch.tensor(r[None, :] == cc[:, None]).float()
    W = m.fc2.weight.detach().float()
    expected = float(1 - (W ** 2 * M).sum() / (W ** 2).sum())
    assert float(loss()) == pytest.approx(expected, abs=1e-6)
    assert 1 - loss.per_layer()["fc2"] == pytest.approx(expected, abs=1e-6)


def test_labels_of_another_k_are_refused():
    rng = np.random.default_rng(0)
    W = np.kron(np.eye(4), np.ones((8, 8))) + 0.01 * rng.random((32, 32))
    b = gi.BSGC(4, random_state=0).fit(W)
    with pytest.raises(ClusteringError, match="another k"):
        gi.shuffle_test(W, 3, n_shuffles=2, labels=(b.row_labels_, b.column_labels_), random_state=0)
    with pytest.raises(ClusteringError, match="-1..2"):
        random_partition_expectation(b.row_labels_, b.column_labels_, 3)


def test_each_k_of_a_sweep_gets_the_labels_of_its_lone_fit_whatever_the_other_ks():
    A = np.abs(np.random.default_rng(1).standard_normal((60, 50)))  # exact SVD: a lone fit is comparable
    lone = gi.BSGC(4, random_state=0).fit(A)
    for ks in ([4], [2, 3, 4], [4, 3, 2]):
        fit = fit_k_range(A, ks, random_state=0)[4]
        np.testing.assert_array_equal(fit.row_labels_, lone.row_labels_)
        np.testing.assert_array_equal(fit.column_labels_, lone.column_labels_)


def test_the_accuracy_of_a_perfect_predictor_is_one():
    torch.manual_seed(0)
    x, y = torch.randn(97, 4), torch.randint(0, 3, (97,))
    task = label_task(x, y, 0)
    logits = torch.nn.functional.one_hot(torch.where(task.positive, 0, 1), 3).float() * 10
    assert task.weights().dtype == torch.float64
    assert task.metrics(logits)[0] == 1.0


def test_bsgc_declares_non_negative_input_to_scikit_learn():
    A = np.abs(np.random.default_rng(0).standard_normal((12, 9)))
    est = gi.BSGC(2, random_state=0)
    assert est.__sklearn_tags__().input_tags.positive_only
    assert est.fit(A).n_features_in_ == 9
    with pytest.raises(ClusteringError, match="Negative values"):
        gi.BSGC(2).fit(-A)
    obj = gi.BSGC(2, random_state=0).fit(A.astype(object))
    np.testing.assert_array_equal(obj.row_labels_, gi.BSGC(2, random_state=0).fit(A).row_labels_)


def test_the_loss_watches_each_layers_own_name_for_a_tied_weight():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 6, bias=False), nn.ReLU(), nn.Linear(6, 6, bias=False))
    m[2].weight = m[0].weight  # tied
    c = gi.cluster_layers(gi.LayeredGraph.from_module(m), 2, layers=["0"], random_state=0)
    loss = gi.EnmeshmentLoss(m, c)
    m[2].weight = nn.Parameter(torch.randn(6, 6))  # untying the other layer leaves layer 0's weight alone
    assert loss.is_live() and float(loss()) >= 0
    m[0].weight = nn.Parameter(torch.randn(6, 6))
    assert not loss.is_live()
    assert gi.enmeshment_loss(m, c).requires_grad  # the function form rebuilds for the new tensor
    from graphinterp.training import loss as loss_module
    assert loss_module._CACHE[m].loss._params[0] is m[0].weight


def test_ablation_refuses_layers_clustered_independently_that_share_a_level():
    from graphinterp.interpret.ablate import cluster_neurons
    m = mlp(16, [12, 10, 8], 3)
    g = gi.LayeredGraph.from_module(m)
    per_layer = gi.cluster_layers(g, 3, layers=["fc1", "fc2"], random_state=0)
    with pytest.raises(ClusteringError, match="clustered independently"):
        cluster_neurons(g, per_layer, 0, "off")
    one = gi.cluster_layers(g, 3, layers=["fc2"], random_state=0)
    assert set(cluster_neurons(g, one, 0, "off")) == {"fc1", "fc2"}
    network = gi.cluster_network(g, 3, layers=["fc1", "fc2"], random_state=0)
    assert set(cluster_neurons(g, network, 0, "off")) == {"fc1", "fc2"}


def test_network_wide_clustering_checks_given_similarities_as_bsgc_does():
    """cluster_network took negative or NaN similarities without a word: nodes with weight came back as isolated
    (-1), or scikit-learn's KMeans failed with its own message."""
    torch.manual_seed(0)
    g = gi.LayeredGraph.from_module(nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8)))
    good = {n: torch.rand(*g[n].shape()) for n in g.layer_names}
    for value, error, words in ((-1.0, ClusteringError, "Negative values"), (float("nan"), gi.InvalidWeightsError, "NaN"),
                                (float("inf"), gi.InvalidWeightsError, "inf")):
        bad = {n: m.clone() for n, m in good.items()}
        bad["2"][0, 0] = value
        for cluster in (gi.cluster_network, gi.cluster_layers):
            with pytest.raises(error, match=f"similarity for layer '2': .*{words}"):
                cluster(g, 2, similarity=bad, random_state=0)
    assert gi.cluster_network(g, 2, similarity=good, random_state=0).k == 2


def test_estimators_from_batched_fits_are_complete_and_a_non_integer_k_is_named():
    A = np.abs(np.random.default_rng(0).standard_normal((3, 20, 12)))
    assert all(est.n_features_in_ == 12 for est in gi.fit_batch(A, 2, [0, 1, 2]))
    assert all(est.n_features_in_ == 12 for est in fit_k_range(A[0], [2, 3], random_state=0).values())
    for ks in ([2, 3.0], [2, "3"]):
        with pytest.raises(ClusteringError, match="k must be an integer >= 2, got"):
            fit_k_range(A[0], ks, random_state=0)
