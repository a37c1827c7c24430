"""Ablation hooks against dense hand-written references, hook removal, cluster ON/OFF, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from graphinterp.interpret.ablate import (ablate, ablation_matrix, class_accuracy, cluster_neurons, level_means,
                                run_with_ablation)
from graphinterp.clustering.cluster import Clustering
from graphinterp.common.errors import ClusteringError, DataError, UnsupportedModelError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.data.datasets import load_dataset
from graphinterp.sources.checkpoint import load_checkpoint
from graphinterp.sources.models import build_model

from _interp_helpers import digits_checkpoint, run_cli

W1 = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [1.0, 1.0, 0.0], [-1.0, 2.0, 1.0]])  # (4, 3)
W2 = torch.tensor([[1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 1.0, -1.0], [2.0, 0.0, 1.0, 1.0], [1.0, -1.0, 1.0, 2.0]])
W3 = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.0, 3.0, 1.0, 1.0]])  # (2, 4)
X = torch.tensor([[1.0, 2.0, 3.0], [2.0, -1.0, 1.0], [0.0, 1.0, 1.0], [3.0, 1.0, -2.0]])


def hand_mlp() -> nn.Sequential:
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(3, 4, bias=False))
    model.add_module("relu1", nn.ReLU())
    model.add_module("fc2", nn.Linear(4, 4, bias=False))
    model.add_module("relu2", nn.ReLU())
    model.add_module("fc3", nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model.fc1.weight.copy_(W1)
        model.fc2.weight.copy_(W2)
        model.fc3.weight.copy_(W3)
    return model


def dense(x, keep1=None, keep2=None, fill1=None, fill2=None):
    """The hand MLP written out, with level fc1 / fc2 neurons replaced where ``keep`` is False."""
    h1 = torch.relu(x @ W1.T)
    if keep1 is not None:
        h1 = torch.where(keep1, h1, torch.zeros(()) if fill1 is None else fill1)
    h2 = torch.relu(h1 @ W2.T)
    if keep2 is not None:
        h2 = torch.where(keep2, h2, torch.zeros(()) if fill2 is None else fill2)
    return h2 @ W3.T


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# one label per neuron: fc1 neurons (fc2's inputs) and fc2 neurons (fc2's outputs); -1 = isolated
CLUSTERING = Clustering(2, {"fc2": np.array([0, 0, 1, 1])}, {"fc2": np.array([0, 1, 1, -1])})


@pytest.mark.parametrize("cluster, state, keep1, keep2", [
    (0, "on", [1, 1, 0, 0], [1, 0, 0, 0]),
    (1, "on", [0, 0, 1, 1], [0, 1, 1, 0]),
    (0, "off", [0, 0, 1, 1], [0, 1, 1, 1]),
    (1, "off", [1, 1, 0, 0], [1, 0, 0, 1]),
])
def test_cluster_on_off_gives_exact_logits(cluster, state, keep1, keep2):
    model = hand_mlp()
    spec = cluster_neurons(LayeredGraph.from_module(model), CLUSTERING, cluster, state)
    assert sorted(spec) == ["fc1", "fc2"]
    out = run_with_ablation(model, None, spec, X)
    expected = dense(X, torch.tensor(keep1, dtype=torch.bool), torch.tensor(keep2, dtype=torch.bool))
    assert torch.equal(out, expected)
    assert not torch.equal(out, dense(X))  # the ablation changed something
    assert torch.equal(model(X), dense(X)) and no_hooks(model)


def test_per_layer_labels_that_disagree_on_a_shared_level_are_refused():
    model = hand_mlp()
    graph = LayeredGraph.from_module(model)
    per_layer = Clustering(2, {"fc2": np.array([0, 0, 1, 1]), "fc3": np.array([0, 1, 0, 1])},
                           {"fc2": np.array([0, 1, 1, 0]), "fc3": np.array([0, 1])})
    with pytest.raises(ClusteringError, match="clustered independently"):  # level fc2: fc2's cols, fc3's rows
        cluster_neurons(graph, per_layer, 0, "on")
    agreeing = Clustering(2, {"fc2": np.array([0, 0, 1, 1]), "fc3": np.array([0, 1, 1, 0])},
                          {"fc2": np.array([0, 1, 1, 0]), "fc3": np.array([0, 1])})
    spec = cluster_neurons(graph, agreeing, 0, "on")
    assert spec["fc2"].tolist() == [False, True, True, False] and "fc3" not in spec  # logits never ablated


def test_neuron_list_and_input_level_match_dense_reference():
    model = hand_mlp()
    out = run_with_ablation(model, None, {"fc1": [0, 2], "input": [1]}, X)
    x = X.clone()
    x[:, 1] = 0
    assert torch.equal(out, dense(x, torch.tensor([False, True, False, True])))
    assert torch.equal(run_with_ablation(model, None, {"fc3": [1]}, X)[:, 1], torch.zeros(4))


def test_mean_ablation_uses_reference_means():
    model = hand_mlp()
    ref = torch.randn(32, 3)
    h1 = torch.relu(ref @ W1.T)
    means = level_means(model, None, ref, levels=["fc1"])
    assert torch.allclose(means["fc1"], h1.mean(0))
    keep = torch.tensor([True, False, True, False])
    out = run_with_ablation(model, None, {"fc1": [1, 3]}, X, mode="mean", reference=ref)
    assert torch.allclose(out, dense(X, keep, fill1=h1.mean(0)), atol=1e-6)
    with pytest.raises(DataError, match="reference"):
        with ablate(model, None, {"fc1": [1]}, mode="mean"):
            pass


def test_bias_and_batchnorm_ablate_the_post_activation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    model[1].running_mean.uniform_(-1, 1)
    model[1].bias.data.uniform_(0.5, 1.0)  # BN(0) != 0: a hook on the producer would not ablate
    x = torch.randn(5, 3)
    with torch.no_grad():
        post = model[2](model[1](model[0](x)))
        post[:, [0, 2]] = 0
        expected = model[3](post)
        assert torch.allclose(run_with_ablation(model, None, {"0": [0, 2]}, x), expected)


def test_conv_channels_are_ablated_everywhere_also_after_flatten():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 2, bias=False))
    x = torch.randn(4, 2, 4, 4)
    graph = LayeredGraph.from_module(model, input_shape=(2, 4, 4))
    assert graph[1].in_groups == 3
    with torch.no_grad():
        a = torch.relu(model[0](x))
        a[:, 1] = 0
        expected = model[3](a.flatten(1))
        assert torch.allclose(run_with_ablation(model, graph, {"0": [1]}, x), expected)
        x0 = x.clone()
        x0[:, 0] = 0
        assert torch.allclose(run_with_ablation(model, graph, {"input": [0]}, x), model(x0))
        means = level_means(model, None, x)  # graph traced with the reference's shape
        assert means["0"].shape == (48,) and means["3"].shape == (2,)  # read where fc reads it (flattened)


def test_hooks_are_removed_after_an_exception():
    model = hand_mlp()
    with pytest.raises(RuntimeError, match="boom"):
        with ablate(model, None, {"fc1": [0]}) as handle:
            assert handle.active and not no_hooks(model)
            raise RuntimeError("boom")
    assert not handle.active and no_hooks(model)
    assert torch.equal(model(X), dense(X))
    # an error raised inside the hook itself (input of the wrong shape) also leaves no hook behind
    with pytest.raises(RuntimeError):
        with ablate(model, None, {"fc1": [0]}):
            model(torch.ones(2, 5))
    assert no_hooks(model)


def test_bad_specs_raise_clear_errors():
    model = hand_mlp()
    with pytest.raises(ClusteringError, match="unknown level 'fc9'"):
        run_with_ablation(model, None, {"fc9": [0]}, X)
    with pytest.raises(ClusteringError, match="0..3"):
        run_with_ablation(model, None, {"fc1": [4]}, X)
    with pytest.raises(ClusteringError, match="mode"):
        run_with_ablation(model, None, {"fc1": [0]}, X, mode="noise")
    with pytest.raises(ClusteringError, match="out of range"):
        cluster_neurons(LayeredGraph.from_module(model), CLUSTERING, 2, "on")
    wrong = Clustering(2, {"fc2": np.array([0, 1])}, {"fc2": np.array([0, 1])})
    with pytest.raises(ClusteringError, match="another model"):
        cluster_neurons(LayeredGraph.from_module(model), wrong, 0, "on")
    with pytest.raises(UnsupportedModelError, match="from_module"):
        run_with_ablation(model, LayeredGraph.from_module(nn.Sequential(nn.Linear(3, 2))), {"input": [0]}, X)
    assert no_hooks(model)


def test_class_accuracy_and_empty_data():
    model = hand_mlp()
    y = torch.tensor([0, 1, 1, 0])
    pred = dense(X).argmax(1)
    acc = class_accuracy(model, (X, y), device="cpu", num_classes=3)
    for c in range(2):
        assert acc[c] == pytest.approx(float((pred[y == c] == c).float().mean()))
    assert np.isnan(acc[2])
    with pytest.raises(DataError, match="empty"):
        class_accuracy(model, (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), device="cpu")


def planted_two_cluster_model() -> nn.Sequential:
    """Inputs 0/1 feed hidden neurons 0-1 (cluster 0) -> logit 0; inputs 2/3 -> neurons 2-3 -> logit 1."""
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(4, 4, bias=False))
    model.add_module("relu1", nn.ReLU())
    model.add_module("fc2", nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model.fc1.weight.copy_(torch.eye(4))
        model.fc2.weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]))
    return model


def test_ablation_matrix_on_planted_clusters():
    model = planted_two_cluster_model()
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (40,), generator=gen)
    x = torch.rand(40, 4, generator=gen) * 0.1
    x[y == 0, :2] += 1.0
    x[y == 1, 2:] += 1.0
    clustering = Clustering(2, {"fc1": np.array([0, 0, 1, 1])}, {"fc1": np.array([0, 0, 1, 1])})
    res = ablation_matrix(model, None, clustering, (x, y), device="cpu")
    assert res.full.tolist() == [1.0, 1.0] and res.levels == ["fc1"]
    # ON c: only class c's logit is non-zero -> class c right, the other class wrong (argmax ties go to 0)
    assert res.on.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert res.off.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    # against an independent evaluation under the same hooks
    for c in range(2):
        with ablate(model, None, cluster_neurons(LayeredGraph.from_module(model), clustering, c, "on")):
            assert np.allclose(class_accuracy(model, (x, y), device="cpu"), res.on[c])
    d = res.to_dict()
    assert json.loads(json.dumps(d))["on"] == res.on.tolist() and d["overall"]["full"] == 1.0
    mean = ablation_matrix(model, None, clustering, (x, y), mode="mean", device="cpu")
    assert mean.mode == "mean" and mean.on.shape == (2, 2)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return digits_checkpoint(d / "modular.pt", clustering=True), digits_checkpoint(d / "plain.pt", clustering=False)


def test_cli_ablate_table_json_and_plot(checkpoints, tmp_path):
    modular, _ = checkpoints
    res = run_cli(["ablate", str(modular), "--dataset", "digits", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "ON 0" in res.output and "OFF 1" in res.output and "full" in res.output
    res = run_cli(["ablate", str(modular), "--dataset", "digits", "--device", "cpu", "--json", "--plot",
                str(tmp_path / "abl.png")])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert np.asarray(payload["on"]).shape == (2, 10) and len(payload["full"]) == 10
    assert (tmp_path / "abl.png").stat().st_size > 0


def test_cli_ablate_neurons_and_mean_mode(checkpoints):
    modular, _ = checkpoints
    res = run_cli(["ablate", str(modular), "--dataset", "digits", "--device", "cpu", "--neurons", "fc1:0,1,2",
                "--neurons", "fc2:3", "--mode", "mean", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert payload["neurons"] == {"fc1": [0, 1, 2], "fc2": [3]} and len(payload["ablated"]) == 10
    assert payload["split"] == "test" and payload["n_examples"] == 360  # the same keys as the cluster table's
    assert payload["class_ids"] == list(range(10)) and sum(payload["counts"]) == 360
    assert 0 <= payload["overall"]["ablated"] <= 1 and 0 <= payload["overall"]["full"] <= 1
    # a neuron named twice (overlapping ranges, repeats) is ablated and counted once
    again = run_cli(["ablate", str(modular), "--dataset", "digits", "--device", "cpu", "--neurons", "fc1:0-1",
                     "--neurons", "fc1:1,2,2", "--neurons", "fc2:3,3", "--mode", "mean", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["neurons"] == payload["neurons"]
    assert json.loads(again.output)["ablated"] == payload["ablated"]
    text = run_cli(["ablate", str(modular), "--dataset", "digits", "--device", "cpu", "--neurons", "fc1:0-3",
                    "--neurons", "fc1:2-5", "-q"])
    assert "fc1: 6 neuron(s)" in text.output, text.output
    res = run_cli(["ablate", str(modular), "--dataset", "digits", "--neurons", "fc7:1"])
    assert res.exit_code == 1 and "unknown level 'fc7'" in res.output


def test_cli_ablate_without_clustering_needs_k(checkpoints):
    _, plain = checkpoints
    res = run_cli(["ablate", str(plain), "--dataset", "digits", "--device", "cpu"])
    assert res.exit_code == 1 and "--k" in res.output and "no clustering" in res.output
    res = run_cli(["ablate", str(plain), "--dataset", "digits", "--device", "cpu", "--k", "2", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert np.asarray(payload["off"]).shape == (2, 10)
    # the clusters switched off are in the output (network-wide, said in a note), and are the ones ablated
    assert any("network-wide BSGC" in n and "plot layer" in n for n in payload["notes"])
    clustering = Clustering.from_dict(payload["labels"])
    assert clustering.k == 2 and clustering.layer_names == payload["clustered_layers"]
    ckpt = load_checkpoint(plain)
    model = build_model(ckpt["arch"])
    model.load_state_dict(ckpt["state_dict"])
    data = load_dataset("digits", split="test")
    result = ablation_matrix(model, LayeredGraph.from_module(model), clustering, data, device="cpu")
    np.testing.assert_allclose(result.off, payload["off"])


def test_ablation_matrix_rejects_empty_data():
    model = planted_two_cluster_model()
    clustering = Clustering(2, {"fc1": np.array([0, 0, 1, 1])}, {"fc1": np.array([0, 0, 1, 1])})
    with pytest.raises(DataError, match="empty"):
        ablation_matrix(model, None, clustering, (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), device="cpu")


def test_cli_ablate_refuses_weights_without_architecture(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(hand_mlp().state_dict(), path)
    res = run_cli(["ablate", path, "--dataset", "digits", "--device", "cpu"])
    assert res.exit_code == 1 and "without an architecture" in res.output


# --- tests added by the mutation pass (benchmarks/mutation.py) ------------------------------------------

def test_level_means_and_ablate_leave_no_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(20, 6)
    graph = LayeredGraph.from_module(model)
    means = level_means(model, graph, x)
    assert means["0"].shape == (5,)
    torch.testing.assert_close(means["0"], torch.relu(model[0](x)).mean(0).detach())
    with ablate(model, graph, {"0": [1], "2": [0]}, mode="mean", reference=x):
        pass
    for m in model:
        assert not m._forward_hooks and not m._forward_pre_hooks, m


# ----------------------------------------------------------------------------- the one primitive
def _tiny():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_interventions_undo_everything_when_the_body_raises():
    from graphinterp.interpret.interventions import interventions

    model = _tiny()
    graph = LayeredGraph.from_module(model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seen = []
    with pytest.raises(RuntimeError, match="stop"):
        with interventions(model, graph, edge_masks={"2": torch.zeros(2, 4, dtype=torch.bool)},
                           neurons={"0": [1, 2]}) as iv:
            iv.record("input", seen.append)
            iv.override(model[0], lambda: None)
            assert not no_hooks(model) and "forward" in model[0].__dict__
            assert float(model[2].weight.detach().abs().sum()) == 0.0
            model(torch.ones(1, 3))
            raise RuntimeError("stop")
    assert len(seen) == 1 and not iv.active
    assert no_hooks(model) and "forward" not in model[0].__dict__
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_ablate_level_means_and_evaluation_match_a_hand_computed_forward():
    from graphinterp.interpret.circuit_eval import TaskEvaluator
    from graphinterp.interpret.edges import edge_layers
    from graphinterp.interpret.label_tasks import LabelTask, task_terms

    model = _tiny()
    graph = LayeredGraph.from_module(model)
    x = torch.randn(16, 3)
    w1, b1, w2, b2 = (p.detach().clone() for p in (model[0].weight, model[0].bias, model[2].weight, model[2].bias))
    h = torch.relu(x @ w1.T + b1)
    with torch.no_grad():
        # zero ablation of hidden neurons 0 and 3 (read by layer "2")
        keep = torch.tensor([0.0, 1.0, 1.0, 0.0])
        assert torch.allclose(run_with_ablation(model, graph, {"0": [0, 3]}, x), (h * keep) @ w2.T + b2, atol=1e-6)
        # mean ablation of input 1 with the means of the data itself
        means = level_means(model, graph, x)
        assert torch.allclose(means["input"], x.mean(0), atol=1e-6) and torch.allclose(means["0"], h.mean(0), atol=1e-6)
        assert torch.allclose(means["2"], (h @ w2.T + b2).mean(0), atol=1e-6)
        xm = x.clone()
        xm[:, 1] = x[:, 1].mean()
        with ablate(model, graph, {"input": [1]}, mode="mean", reference=x):
            assert torch.allclose(model(x), torch.relu(xm @ w1.T + b1) @ w2.T + b2, atol=1e-5)
    # a circuit: edges pruned in both layers, evaluated incrementally and by a full forward pass
    y = (h @ w2.T + b2).argmax(1)
    task = LabelTask(0, x, y == 0)
    layers = edge_layers(model, graph)
    masks = {"0": torch.rand(4, 3) > 0.3, "2": torch.rand(2, 4) > 0.3}
    logits = torch.relu(x @ (w1 * masks["0"]).T + b1) @ (w2 * masks["2"]).T + b2
    hit, loss = task_terms(logits, 0, task.positive)
    want = (float(task.weights() @ hit.double()), float(task.weights() @ loss.double()))
    for incremental in (True, False):
        ev = TaskEvaluator(model, layers, task, modules=[model[0], model[2]], incremental=incremental)
        assert ev(masks) == pytest.approx(want, abs=1e-6)
    assert torch.equal(model[0].weight, w1) and no_hooks(model) and "forward" not in model[0].__dict__


def _two_cluster_toy():
    """Identity first layer; class 0 reads units 0-1 (cluster 0), class 1 units 2-3 (cluster 1), class 2 nothing."""
    from graphinterp.clustering.labels import Clustering

    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
        model[2].weight.copy_(torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]))
    return model, Clustering(2, {"0": np.array([0, 0, 1, 1])}, {"0": np.array([0, 0, 1, 1])})


def test_overall_accuracy_is_weighted_by_class_counts_and_absent_classes_are_left_out():
    """Three examples of class 0, one of class 1, none of class 2: with cluster 1 OFF class 1's example is
    wrong (logits 0, 0, 0 -> class 0) and the overall accuracy is 3/4, not the 1/2 a mean over classes gives."""
    from graphinterp.interpret.ablate import ablation_matrix

    model, c = _two_cluster_toy()
    x = torch.tensor([[1.0, 1, 0, 0]] * 3 + [[0, 0, 1, 1.0]])
    res = ablation_matrix(model, None, c, (x, torch.tensor([0, 0, 0, 1])), device="cpu")
    assert res.class_ids == [0, 1]
    assert res.overall()["off"][1] == pytest.approx(0.75)


def test_mean_ablation_uses_the_reference_means_not_the_evaluated_data():
    """Reference means: 0 on cluster 0's units, 5 on cluster 1's. OFF cluster 1 sets units 2-3 to 5, so every
    example is predicted class 1; the evaluated data's own means (0.5) would leave class 0 right."""
    from graphinterp.interpret.ablate import ablation_matrix

    model, c = _two_cluster_toy()
    x = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1.0]])
    ref = torch.tensor([[0.0, 0, 5, 5]] * 4)
    res = ablation_matrix(model, None, c, (x, torch.tensor([0, 1])), mode="mean", reference=ref, device="cpu")
    assert res.off.tolist() == [[1.0, 1.0], [0.0, 1.0]]


def test_a_missing_dataset_is_fetched_into_the_data_dir_the_user_gave(tmp_path):
    """ablate has no --download: the hint named `graphinterp train --dataset mnist --download` without --data-dir,
    which fetches into the default folder, where this --data-dir would still not find it (and trains a model)."""
    from _cli_helpers import invoke, one_error

    path = digits_checkpoint(tmp_path / "m.pt", clustering=True)
    where = tmp_path / "no data"
    msg = one_error(invoke("ablate", path, "--dataset", "mnist", "--data-dir", where))
    assert f"graphinterp train --dataset mnist --data-dir '{where}' --download` (which also trains a model)" in msg, msg
