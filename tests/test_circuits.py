"""Circuit extraction on a planted network, ECS arithmetic, GraphML round trip, bad inputs, the CLI."""
from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

from graphinterp.interpret.circuit_compare import CircuitComparison, cluster_share
from graphinterp.interpret.circuits import Circuit, Schedule, Tolerance, compare_circuits, extract_circuits
from graphinterp.clustering.cluster import Clustering
from graphinterp.common.errors import DataError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.ecs import circuit_size
from graphinterp.interpret.edges import edge_layers
from graphinterp.interpret.interventions import interventions
from graphinterp.interpret.label_tasks import label_task

from _interp_helpers import digits_checkpoint, fast_and_plain_evaluators, run_cli

# label 0's circuit: x_j -> h_j for j = 0, 1, 2 (fc1) and h_0 -> z_0 (+), h_1 -> z_0, h_2 -> z_0 (-) (fc2)
PLANTED = {"fc1": {(0, 0), (1, 1), (2, 2)}, "fc2": {(0, 0), (0, 1), (0, 2)}}


def planted_model() -> nn.Sequential:
    """6 -> 6 -> 3 ReLU net. Only label 0 has a detector (h_0 -> z_0); the others win by inhibition.

    Distractors have the *largest* weights (10): x_3..x_5 -> h_3..h_5 -> inhibition of z_1, z_2. They
    matter for labels 1 and 2 but not for label 0, so magnitude alone would keep them; all other
    weights are +-0.01 noise.
    """
    gen = torch.Generator().manual_seed(0)
    w1 = 0.01 * torch.sign(torch.randn(6, 6, generator=gen))
    w2 = 0.01 * torch.sign(torch.randn(3, 6, generator=gen))
    for j in range(3):
        w1[j, j] = 5.0
        w1[j + 3, j + 3] = 10.0
    w2[0, :3] = torch.tensor([5.0, -5.0, -5.0])
    w2[1, 2] = w2[2, 1] = -5.0
    w2[1, 3] = w2[2, 4] = w2[1, 5] = -10.0
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(6, 6, bias=False))
    model.add_module("relu1", nn.ReLU())
    model.add_module("fc2", nn.Linear(6, 3, bias=False))
    with torch.no_grad():
        model.fc1.weight.copy_(w1)
        model.fc2.weight.copy_(w2)
    return model


def planted_data(n: int = 300):
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 3
    x = torch.rand(n, 6, generator=gen) * 0.1
    x[torch.arange(n), y] += 1.0
    return x, y


def kept_edges(circuit: Circuit):
    return {name: {tuple(map(int, e)) for e in torch.nonzero(m).tolist()} for name, m in circuit.masks.items()}


@pytest.mark.parametrize("score", ["magnitude", "attribution", "learned"])
def test_planted_circuit_is_found(score):
    model, (x, y) = planted_model(), planted_data()
    assert bool((model(x).argmax(1) == y).all())  # the planted net is a perfect classifier
    circuit = extract_circuits(model, (x, y), [0], score=score, progress=False, device="cpu")[0]
    found = kept_edges(circuit)
    for layer, edges in PLANTED.items():
        assert edges <= found[layer], f"{layer}: planted edges {edges - found[layer]} were pruned"
    extra = sum(len(found[l] - PLANTED[l]) for l in found)
    assert extra <= 2, f"circuit holds {extra} edges beyond the planted ones: {found}"
    assert circuit.accuracy >= 0.95 * circuit.full_accuracy and circuit.loss <= circuit.full_loss + 0.1
    # the distractors (largest weights) were pruned
    assert (3, 3) not in found["fc1"] and (1, 3) not in found["fc2"]
    # the model itself is untouched
    assert torch.equal(model.fc1.weight, planted_model().fc1.weight)


def test_tighter_tolerance_never_gives_a_smaller_circuit_on_the_planted_net():
    model, data = planted_model(), planted_data()
    loose = extract_circuits(model, data, [0], progress=False, device="cpu", tolerance=Tolerance(0.5, 10.0))[0]
    tight = extract_circuits(model, data, [0], progress=False, device="cpu", tolerance=Tolerance(1.0, 1e-6))[0]
    assert loose.size.kept_edges <= 6 <= tight.size.kept_edges


def test_ecs_arithmetic_linear_and_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 4, bias=False))
    with torch.no_grad():
        model[0].weight[0, 1, 0, :] = 0.0  # kernel (0, 1) keeps 6 of its 9 weights
        model[0].weight[2, 0] = 0.0  # kernel (2, 0) is dead: not an edge
        model[3].weight[1, :5] = 0.0
    graph = LayeredGraph.from_module(model, input_shape=(2, 4, 4))
    layers = edge_layers(model, graph)
    gen = torch.Generator().manual_seed(3)
    masks = {l.name: torch.rand(l.live.shape, generator=gen) > 0.5 for l in layers}
    size = circuit_size(layers, masks)
    # dense reference: loop over every edge
    kept = total = kept_e = total_e = 0
    per = {}
    for name, mod in (("0", model[0]), ("3", model[3])):
        w = mod.weight.detach()
        lk = lt = 0
        for o in range(w.shape[0]):
            for i in range(w.shape[1]):
                nnz = int((w[o, i] != 0).sum())
                lt += nnz
                total_e += nnz > 0
                if masks[name][o, i]:
                    lk += nnz
                    kept_e += nnz > 0
        per[name] = lk / lt
        kept, total = kept + lk, total + lt
    assert (size.kept_params, size.total_params) == (kept, total)
    assert size.total_params == int((model[0].weight != 0).sum() + (model[3].weight != 0).sum())
    assert size.ecs == pytest.approx(kept / total) and size.ecs_per_layer == pytest.approx(per)
    assert (size.kept_edges, size.total_edges) == (kept_e, total_e) and size.total_edges == 3 * 2 - 1 + 4 * 12 - 5
    # masks applied in place zero whole kernels and are undone even after an error
    before = model[0].weight.detach().clone()
    with pytest.raises(RuntimeError):
        with interventions(model, graph, edge_masks=masks):
            assert bool((model[0].weight[~masks["0"]] == 0).all())
            raise RuntimeError("stop")
    assert torch.equal(model[0].weight, before)


def test_conv_circuit_extraction_runs_and_counts_kernels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3, bias=False))
    x = torch.randn(60, 1, 8, 8)
    y = model(x).argmax(1).detach()
    c = extract_circuits(model, (x, y), [int(y[0])], progress=False, device="cpu", schedule=Schedule(max_evals=150))[int(y[0])]
    assert c.masks["0"].shape == (4, 1) and 0 < c.ecs <= 1
    assert c.size.kept_params == int(model[0].weight[c.masks["0"]].ne(0).sum() + model[4].weight[c.masks["4"]].ne(0).sum())


def test_circuit_graphml_round_trip_and_cluster_share(tmp_path):
    model, data = planted_model(), planted_data()
    graph = LayeredGraph.from_module(model)
    circuit = extract_circuits(model, data, [0], progress=False, device="cpu")[0]
    blocks = np.array([0, 0, 0, 1, 1, 1])
    clustering = Clustering(2, {"fc1": blocks, "fc2": blocks}, {"fc1": blocks, "fc2": np.array([0, 1, 1])},
                            network_wide=True)
    G = circuit.to_networkx(graph, clustering)
    assert G.number_of_edges() == circuit.size.kept_edges
    assert all(G.degree(n) > 0 for n in G)  # only nodes that still have edges
    assert G.graph["ecs"] == pytest.approx(circuit.ecs)
    path = tmp_path / "c.graphml"
    nx.write_graphml(G, path)
    H = nx.read_graphml(path)
    assert set(H.nodes) == set(G.nodes) and set(H.edges) == set(G.edges)
    for n in G:
        assert H.nodes[n]["cluster"] == G.nodes[n]["cluster"] and H.nodes[n]["layer"] == G.nodes[n]["layer"]
    for u, v, d in G.edges(data=True):
        assert H.edges[u, v]["weight"] == pytest.approx(d["weight"])
    assert H.graph["label"] == 0 and H.graph["ecs:fc1"] == pytest.approx(circuit.ecs_per_layer["fc1"])
    share = cluster_share(circuit, graph, clustering)
    assert share["dominant"] == 0 and share["mass"][0] > 0.99 and sum(share["edges"]) + share["between"]["edges"] \
        + share["unclustered"]["edges"] == pytest.approx(1.0)


def test_comparison_arithmetic_and_same_model():
    comp = CircuitComparison([0, 1], ["a", "b"], np.array([0.4, 0.5]), np.array([0.2, 0.25]), ("base", "mod"))
    assert comp.relative_change.tolist() == pytest.approx([-0.5, -0.5])
    assert comp.mean_relative_change == pytest.approx(-0.5) and comp.a_over_b == pytest.approx(1.0)
    assert json.loads(json.dumps(comp.to_dict()))["a_over_b"] == pytest.approx(1.0)
    skew = CircuitComparison([0, 1], ["a", "b"], np.array([0.3, 0.01]), np.array([0.1, 0.01]), ("base", "mod"))
    assert skew.a_over_b == pytest.approx(1.0) and skew.ratio_of_means == pytest.approx(0.31 / 0.11 - 1)
    # labels whose circuit is empty in either model are left out of all three means (they counted in some)
    empty = CircuitComparison([0, 1, 2], list("abc"), np.array([0.4, 0.3, 0.0]), np.array([0.2, 0.0, 0.1]),
                              ("base", "mod"))
    assert empty.compared.tolist() == [True, False, False]
    assert empty.mean_relative_change == pytest.approx(-0.5) and empty.a_over_b == pytest.approx(1.0)
    assert empty.ratio_of_means == pytest.approx(1.0) and empty.to_dict()["compared"] == [True, False, False]
    model, data = planted_model(), planted_data()
    same = compare_circuits(model, planted_model(), data, [0, 1], progress=False, device="cpu", names=("x", "y"))
    assert same.labels == [0, 1] and np.allclose(same.ecs_a, same.ecs_b) and same.mean_relative_change == 0.0


def test_bad_inputs():
    model, (x, y) = planted_model(), planted_data()
    with pytest.raises(DataError, match="not in the model's output"):
        extract_circuits(model, (x, y), [3], progress=False, device="cpu")
    with pytest.raises(DataError, match="empty"):
        extract_circuits(model, (x[:0], y[:0]), progress=False, device="cpu")
    with pytest.raises(DataError, match="no example"):
        extract_circuits(model, (x[y != 2], y[y != 2]), [2], progress=False, device="cpu")
    with pytest.raises(DataError, match="unknown score"):
        extract_circuits(model, (x, y), [0], score="random", progress=False, device="cpu")
    with pytest.raises(DataError, match="'all'"):
        extract_circuits(model, (x, y), "some", progress=False, device="cpu")
    for bad in (3.7, 1.0, True, torch.tensor(1.0)):  # int(3.7) ran label 3 without a word
        with pytest.raises(DataError, match="must be integers"):
            extract_circuits(model, (x, y), [bad], progress=False, device="cpu")
    from graphinterp.interpret.label_tasks import output_labels as _labels

    assert _labels(torch.arange(2), 3) == [0, 1] and _labels(np.array([2]), 3) == [2]  # integer tensors and arrays


def test_label_task_is_balanced_and_seeded():
    x, y = planted_data(90)
    task = label_task(x, y, 1, max_examples=20, negative_ratio=1.5, random_state=0)
    assert (task.n_pos, task.n_neg) == (20, 30)
    assert task.weights().sum().item() == pytest.approx(1.0)
    again = label_task(x, y, 1, max_examples=20, negative_ratio=1.5, random_state=0)
    assert torch.equal(task.x, again.x)


def test_budget_is_respected():
    model, data = planted_model(), planted_data()
    c = extract_circuits(model, data, [0], progress=False, device="cpu", schedule=Schedule(max_evals=5))[0]
    assert c.n_evals <= 5 + 2  # + the full-model and final evaluations


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return digits_checkpoint(d / "modular.pt", clustering=True), digits_checkpoint(d / "plain.pt", clustering=False,
                                                                                   seed=1)


def test_cli_circuits_json_graphml_and_plot(checkpoints, tmp_path):
    modular, _ = checkpoints
    res = run_cli(["circuits", modular, "--dataset", "digits", "--labels", "0,1", "--device", "cpu", "--json",
                   "--graphml-dir", tmp_path / "gml", "--plot", tmp_path / "ecs.png", "--max-evals", "100"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert [c["label"] for c in payload["circuits"]] == [0, 1]
    assert all(0 < c["ecs"] <= 1 for c in payload["circuits"]) and "cluster_share" in payload["circuits"][0]
    G = nx.read_graphml(tmp_path / "gml" / "modular_label0.graphml")
    assert G.number_of_edges() == payload["circuits"][0]["size"]["kept_edges"]
    assert {d["cluster"] for _, d in G.nodes(data=True)} <= {-1, 0, 1}
    assert G.graph["exact"] is True and G.graph["grouped_layers"] == ""  # one edge per kept weight
    assert G.graph["kept_weights"] == payload["circuits"][0]["size"]["kept_params"]
    assert not any("GraphML" in n for n in payload["notes"])
    assert payload["plot"] == str(tmp_path / "ecs.png")  # --json named the GraphML files but not the figure
    # the search's settings, to rerun it (they were not in the JSON)
    assert (payload["max_examples"], payload["max_evals"], payload["seed"], payload["limit"]) == (500, 100, 0, None)
    assert (tmp_path / "ecs.png").stat().st_size > 0


def test_a_cnn_circuits_graphml_says_it_groups_the_flattened_channels(tmp_path):
    """fc1 reads the flattened conv channels: the file has one edge per channel and output, fewer than the kept
    weights, and said nothing of it (the reviewer counted 426 edges for 687 kept weights)."""
    res = run_cli(["train", "--dataset", "digits", "--model", "cnn", "--warmup-epochs", "1", "--epochs", "1",
                   "--device", "cpu", "-q", "--out", tmp_path / "cnn.pt"])
    assert res.exit_code == 0, res.output
    res = run_cli(["circuits", tmp_path / "cnn.pt", "--dataset", "digits", "--labels", "0", "--device", "cpu",
                   "--json", "--graphml-dir", tmp_path / "gml", "--max-evals", "60"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    G = nx.read_graphml(tmp_path / "gml" / "cnn_label0.graphml")
    assert G.graph["exact"] is False and G.graph["grouped_layers"] == "fc1"
    size = payload["circuits"][0]["size"]  # ECS counts weights (a conv kernel's 9), the file one edge per channel
    assert G.graph["kept_weights"] == size["kept_params"] > size["kept_edges"] > G.number_of_edges()
    assert G.graph["ecs"] == pytest.approx(size["kept_params"] / size["total_params"])
    assert any("group fc1's inputs by channel" in n for n in payload["notes"]), payload["notes"]


def test_cli_circuits_compare_table(checkpoints, tmp_path):
    modular, plain = checkpoints
    res = run_cli(["circuits", modular, "--compare", plain, "--dataset", "digits", "--labels", "2", "--device", "cpu",
                   "--max-evals", "100", "--plot", tmp_path / "cmp.png"])
    assert res.exit_code == 0, res.output
    assert "mean relative change" in res.output and "plain" in res.output
    assert (tmp_path / "cmp.png").stat().st_size > 0


def test_cli_circuits_compare_json_orders_a_and_b(checkpoints):
    """a is the --compare model, b is MODEL: each side's ECS must be its own circuits' ECS."""
    modular, plain = checkpoints
    res = run_cli(["circuits", modular, "--compare", plain, "--dataset", "digits", "--labels", "1-2", "--device", "cpu",
                   "--max-evals", "60", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    cmp = payload["compare"]
    assert cmp["names"] == ["plain", "modular"] and cmp["model"].endswith("plain.pt")
    assert cmp["ecs_a"] == [c["ecs"] for c in cmp["circuits"]]
    assert cmp["ecs_b"] == [c["ecs"] for c in payload["circuits"]]
    assert cmp["ecs_a"] != cmp["ecs_b"]  # the two models differ, so a swap would show


def test_comparison_from_circuits_keeps_a_and_b():
    from graphinterp.interpret.ecs import CircuitSize

    def circuit(label, ecs):
        return Circuit(label, str(label), {}, CircuitSize(ecs, ecs, {}, {}, 0, 0, 0, 0), 1.0, 0.0, 1.0, 0.0, 1, 1)

    a, b = {1: circuit(1, 0.4), 0: circuit(0, 0.2)}, {0: circuit(0, 0.1), 1: circuit(1, 0.8)}
    comp = CircuitComparison.from_circuits(a, b, names=("base", "mod"))
    assert comp.labels == [0, 1] and comp.names == ("base", "mod")
    assert comp.ecs_a.tolist() == [0.2, 0.4] and comp.ecs_b.tolist() == [0.1, 0.8]
    assert comp.relative_change.tolist() == pytest.approx([-0.5, 1.0])
    assert comp.circuits_a is not b and comp.circuits_a[1].ecs == 0.4
    with pytest.raises(DataError, match="not in mod"):
        CircuitComparison.from_circuits(a, {0: b[0]}, names=("base", "mod"))


def test_cli_circuits_bad_label(checkpoints):
    modular, _ = checkpoints
    res = run_cli(["circuits", modular, "--dataset", "digits", "--labels", "12", "--device", "cpu"])
    assert res.exit_code == 1 and "not in the model's output" in res.output
    res = run_cli(["circuits", modular, "--dataset", "digits", "--labels", "x", "--device", "cpu"])
    assert res.exit_code != 0 and "--labels" in res.output


def test_incremental_first_layer_matches_plain_evaluation():
    from graphinterp.interpret.circuit_search import TaskEvaluator
    from graphinterp.interpret.interventions import module_of

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    x = torch.randn(80, 3, 4)
    y = model(x).argmax(1).detach()
    graph = LayeredGraph.from_module(model, input_shape=(3, 4))
    layers = edge_layers(model, graph)
    mods = [module_of(model, graph, l.name)[0] for l in layers]
    task = label_task(x, y, int(y[0]), random_state=0)
    fast = TaskEvaluator(model, layers, task, modules=mods, batch_size=32)
    plain = TaskEvaluator(model, layers, task, modules=mods, batch_size=32, incremental=False)
    assert fast.first is not None and plain.first is None
    flat = torch.ones(sum(l.live.numel() for l in layers), dtype=torch.bool)
    from graphinterp.interpret.edges import flat_masks

    masks = flat_masks(layers, flat)
    gen = torch.Generator().manual_seed(1)
    with fast.session():
        for step in range(40):
            block = torch.randperm(flat.numel(), generator=gen)[: int(torch.randint(1, 12, (1,), generator=gen))]
            block = block[flat[block]]
            flat[block] = False
            got, want = fast(masks, changed=block), plain(masks)
            assert got == pytest.approx(want, abs=1e-6)
            if step % 3:
                fast.accept(masks)  # keep the removal
            else:
                flat[block] = True  # reject it
        assert fast({k: v.clone() for k, v in masks.items()}) == pytest.approx(plain(masks), abs=1e-6)
    assert torch.equal(model[1].weight, layers[0].weight) and "forward" not in model[1].__dict__


def test_incremental_layer_after_convolutions_matches_plain_evaluation():
    """CNN: fc1 is evaluated incrementally from the captured conv features; changes to conv kernels
    go through the channel prefix (tests/test_conv_prefix.py) and, when accepted, update those features."""
    from graphinterp.interpret.circuit_search import TaskEvaluator
    from graphinterp.interpret.interventions import module_of
    from graphinterp.interpret.edges import flat_masks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    x = torch.randn(60, 2, 4, 4)
    layers, fast, plain, task = fast_and_plain_evaluators(model, x, (2, 4, 4), batch_size=25)
    assert fast.first is model[4] and fast.suffix is not None and fast.offset == 6
    flat = torch.ones(sum(l.live.numel() for l in layers), dtype=torch.bool)
    masks = flat_masks(layers, flat)
    gen = torch.Generator().manual_seed(2)
    conv_changes, conv_accepted = 0, 0
    with fast.session():
        for step in range(60):
            live = torch.nonzero(flat).flatten()
            block = live[torch.randperm(live.numel(), generator=gen)[:int(torch.randint(1, 4, (1,), generator=gen))]]
            conv_changes += int((block < fast.offset).any())
            flat[block] = False
            got, want = fast(masks, changed=block), plain(masks)
            assert got == pytest.approx(want, abs=1e-6)
            if step % 3:
                fast.accept(masks)
                conv_accepted += int((block < fast.offset).any())
            else:
                flat[block] = True
        assert fast({k: v.clone() for k, v in masks.items()}) == pytest.approx(plain(masks), abs=1e-6)
    assert conv_changes > conv_accepted >= 2  # the fallback, the re-capture and a rejection were exercised
    assert torch.equal(model[4].weight, layers[1].weight) and "forward" not in model[4].__dict__
    # not a plain Sequential: no incremental layer after the convolutions
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            return self.body(x)

    net = Net()
    g2 = LayeredGraph.from_module(net, input_shape=(2, 4, 4))
    l2 = edge_layers(net, g2)
    ev = TaskEvaluator(net, l2, task, modules=[module_of(net, g2, l.name)[0] for l in l2])
    assert ev.first is None


# --- tests added by the mutation pass (benchmarks/mutation.py) ------------------------------------------

@pytest.mark.parametrize("incremental", [False, True])
def test_evaluator_values_and_gradients_are_the_task_weighted_ones(incremental):
    """Accuracy, loss and attribution gradients weigh positives and negatives by LabelTask.weights()."""
    import copy

    from graphinterp.interpret.circuit_search import TaskEvaluator
    from graphinterp.interpret.interventions import module_of
    from graphinterp.interpret.edges import flat_masks
    from graphinterp.interpret.label_tasks import task_terms

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    x = torch.randn(120, 3, 4)
    y = model(x).argmax(1).detach()
    graph = LayeredGraph.from_module(model, input_shape=(3, 4))
    layers = edge_layers(model, graph)
    mods = [module_of(model, graph, l.name)[0] for l in layers]
    label = int(torch.bincount(y).argmin())
    task = label_task(x, y, label, negative_ratio=4.0, random_state=0)
    assert task.n_pos * 2 < task.n_neg  # unbalanced: the weighting matters
    ev = TaskEvaluator(model, layers, task, modules=mods, batch_size=32, incremental=incremental)
    flat = torch.rand(sum(l.live.numel() for l in layers), generator=torch.Generator().manual_seed(3)) < 0.6
    masks = flat_masks(layers, flat)
    acc, loss = ev(masks)

    ref = copy.deepcopy(model)
    params = {}
    for l, (name, mod) in zip(layers, [(l.name, ref.get_submodule(l.name)) for l in layers]):
        mod.weight = nn.Parameter(l.masked(masks[name]).detach().clone())
        params[name] = mod.weight
    hit, per_example = task_terms(ref(task.x), task.label, task.positive)
    w = task.weights()
    assert acc == pytest.approx(float(w @ hit.double()), abs=1e-9)
    assert loss == pytest.approx(float(w @ per_example.detach().double()), rel=1e-5)
    assert abs(acc - float(hit.double().mean())) > 1e-3  # an unweighted mean would differ
    (w @ per_example.double()).backward()
    grads = ev.gradients(masks)
    for name, p in params.items():
        torch.testing.assert_close(grads[name], p.grad.to(grads[name].dtype), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("positives_only", [True, False])
def test_batched_task_metrics_equal_the_tasks_own(positives_only):
    from graphinterp.interpret.circuit_batch import TaskMetrics
    from graphinterp.interpret.label_tasks import LabelTask

    gen = torch.Generator().manual_seed(0)
    n = 40
    positive = torch.ones(n, dtype=torch.bool) if positives_only else torch.arange(n) % 3 == 0
    task = LabelTask(label=2, x=torch.randn(n, 5, generator=gen), positive=positive)
    logits = 2 * torch.randn(4, n, 6, generator=gen)
    acc, loss = TaskMetrics(task, "cpu")(logits)
    for t in range(4):
        want = task.metrics(logits[t])
        assert float(acc[t]) == pytest.approx(want[0], abs=1e-12) and float(loss[t]) == pytest.approx(want[1], rel=1e-6)
    assert len(set(acc.tolist())) > 1  # the states differ: the comparison is not trivial
    acc_t, loss_t = TaskMetrics(task, "cpu")(logits.transpose(0, 1), examples_first=True)
    assert torch.allclose(acc_t, acc, rtol=0, atol=1e-12) and torch.allclose(loss_t, loss)


def _planted_search(schedule=None):
    """A fresh planted model, its evaluator and the arguments of ``iter_prune`` / ``prune`` for label 0."""
    from graphinterp.interpret.circuit_search import TaskEvaluator
    from graphinterp.interpret.scores import magnitude_score
    model, (x, y) = planted_model(), planted_data()
    layers = edge_layers(model, LayeredGraph.from_module(model, input_shape=(6,)))
    ev = TaskEvaluator(model, layers, label_task(x, y, 0, random_state=0), modules=[model.fc1, model.fc2])
    full_acc, full_loss = ev({l.name: torch.ones_like(l.live) for l in layers})
    tol = Tolerance()
    args = (ev, layers, magnitude_score, lambda a, l: tol.accepts(a, l, full_acc, full_loss),
            schedule or Schedule())
    return model, args, dict(ok_all=lambda a, l: tol.accepts_all(a, l, full_acc, full_loss))


def test_iter_prune_steps_are_consistent_and_end_at_prunes_result():
    from graphinterp.interpret.circuit_search import PruneStep, iter_prune, prune
    _, args, kw = _planted_search()
    history, status = [], {}
    gen, steps = iter_prune(*args, history, status=status, **kw), []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            masks = stop.value
            break
    assert steps and all(isinstance(s, PruneStep) for s in steps)
    phases = [s.phase for s in steps]
    assert {"round", "final"} <= set(phases) <= {"round", "final", "focus"}
    first_pass = phases.index("final")  # the rounds, then passes: full ones, focused ones between them
    assert set(phases[:first_pass]) == {"round"} and "round" not in phases[first_pass:]
    evals, kept, rounds = [s.n_evals for s in steps], [s.kept for s in steps], [s.round for s in steps]
    assert evals == sorted(evals) and rounds == sorted(rounds)
    # edges kept never grow: a rejected step reports the state it tried, so compare accepted states
    accepted = [s.kept for s in steps if s.accepted]
    assert accepted == sorted(accepted, reverse=True) and kept[-1] == min(kept)
    assert all(s.tried >= 1 for s in steps if s.phase == "round")
    assert [(s.kept, s.accepted) for s in steps] == history
    assert steps[-1].n_evals == status["n_evals"] and steps[-1].phase == "final" and not steps[-1].accepted
    assert steps[-1].kept == sum(int(m.sum()) for m in masks.values())
    # the plain loop gives bit-identical masks, history and counts on a fresh, identical search
    _, args2, kw2 = _planted_search()
    history2, status2 = [], {}
    masks2 = prune(*args2, history2, status=status2, **kw2)
    assert masks2.keys() == masks.keys() and all(torch.equal(masks[k], masks2[k]) for k in masks)
    assert history2 == history and status2 == status


@pytest.mark.parametrize("n_steps", [1, 5])
@pytest.mark.parametrize("final_phase", [False, True])
def test_stopping_iter_prune_early_restores_the_weights(n_steps, final_phase):
    from graphinterp.interpret.circuit_search import iter_prune
    model, args, kw = _planted_search()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = iter_prune(*args, **kw)
    step = next(gen)
    if final_phase:
        while step.phase != "final":
            step = next(gen)
    for _ in range(n_steps - 1):
        next(gen, None)
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    if final_phase and n_steps == 1:  # the final passes write the masked circuit into the weights in place
        assert changed
    gen.close()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model(planted_data()[0]).shape == (300, 3)


def test_iter_authors_prune_steps_end_at_authors_prunes_result():
    from graphinterp.interpret.circuit_search import authors_prune, iter_authors_prune
    model, (x, y) = planted_model(), planted_data()
    layers = edge_layers(model, LayeredGraph.from_module(model, input_shape=(6,)))
    task, modules = label_task(x, y, 0, random_state=0), [model.fc1, model.fc2]
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen, steps = iter_authors_prune(model, layers, modules, task), []
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        masks, info = stop.value
    assert [s.phase for s in steps] == ["authors"] * 2 and steps[-1].n_evals == info["n_evals"]
    assert [s.n_evals for s in steps] == sorted(s.n_evals for s in steps)
    assert steps[0].kept >= steps[-1].kept == sum(int(m.sum()) for m in masks.values())
    masks2, info2 = authors_prune(model, layers, modules, task)
    assert info2 == info and all(torch.equal(masks[k], masks2[k]) for k in masks)
    gen = iter_authors_prune(model, layers, modules, task)
    next(gen)
    gen.close()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_circuit_of_a_model_at_chance_carries_a_caveat():
    from graphinterp.interpret.circuit_result import Circuit
    from graphinterp.interpret.ecs import CircuitSize

    size = CircuitSize(0.5, 0.5, {}, {}, 5, 10, 5, 10)
    # balanced one-vs-rest task of 20 + 20 examples: chance 0.5, sd 0.079; 3 sd is 0.737
    assert Circuit(3, "3", {}, size, 0.7, 0.1, 0.7, 0.1, 20, 20).note.startswith(
        "the full model is not clearly better than chance on the label's task (accuracy 0.700, chance 0.5)")
    assert Circuit(3, "3", {}, size, 0.75, 0.1, 0.75, 0.1, 20, 20).note is None
    assert Circuit(3, "3", {}, size, 0.7, 0.1, 0.7, 0.1, 2000, 2000).note is None  # more examples: clearly above
    assert Circuit(3, "3", {}, size, 0.1, 0.1, 0.1, 0.1, 20, 0).note is None  # authors' task: positives only


def test_edge_masks_are_checked():
    """A mask of 2s doubled the weights, and one in the graph's (in, out) orientation pruned other edges."""
    from graphinterp.interpret.interventions import interventions

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2, bias=False))
    for mask, message in ((torch.full((2, 3), 2), "0/1 or True/False only"),
                          (torch.ones(3, 2, dtype=torch.bool), r"must be the weight's \(out, in\) = \(2, 3\)"),
                          (torch.ones(1, 3, dtype=torch.bool), "has shape")):
        with pytest.raises(DataError, match=message):
            with interventions(net, edge_masks={"0": mask}):
                pass
    with interventions(net, edge_masks={"0": torch.tensor([[1, 0, 1], [0, 1, 1]])}):
        assert torch.equal(net[0].weight == 0, torch.tensor([[False, True, False], [True, False, False]]))


def test_circuits_refuse_a_grouped_convolution():
    """A grouped conv's weight is (out, in / groups): an edge mask on it would not be the layer's edges."""
    from graphinterp.common.errors import DataError
    from graphinterp.interpret.edges import edge_layers

    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(DataError, match="grouped convolution"):
        edge_layers(m)


def test_a_label_searched_on_all_its_examples_is_checked_on_unused_examples_of_the_others():
    """digits has about 36 test images a label, all of them in a 500-example search: the held-out check was
    skipped, and a circuit that says the label for 45% of other digits went unchecked. The unused examples
    of the other labels now make the held-out task (as many as the search's negatives), weighted 1/n each;
    an empty circuit, which says label 0 for every input, clearly misses on them."""
    from graphinterp.interpret.circuit_heldout import check_heldout
    from graphinterp.interpret.circuit_search import Tolerance
    from graphinterp.interpret.edges import edge_layers
    from graphinterp.interpret.label_tasks import heldout_task, label_task

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False)).eval()
    x = torch.randn(300, 4)
    y = model(x).argmax(1)
    n0 = int((y == 0).sum())
    search, held = label_task(x, y, 0, max_examples=n0), heldout_task(x, y, 0, max_examples=n0)
    assert (held.n_pos, held.n_neg) == (0, min(search.n_neg, len(y) - n0 - search.n_neg)) and held.n_neg >= 10
    assert float(held.weights().sum()) == pytest.approx(1.0) and not set(map(tuple, held.x.tolist())) & set(
        map(tuple, search.x.tolist()))
    layers = edge_layers(model, LayeredGraph.from_module(model))
    empty = {layer.name: torch.zeros_like(layer.live) for layer in layers}
    h = check_heldout(model, layers, [model[0], model[2]], empty, held, mode="graphinterp", tolerance=Tolerance())
    assert h.n_pos == 0 and h.full_accuracy == 1.0 and h.accuracy == 0.0 and h.clearly_outside
