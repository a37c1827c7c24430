"""The authors' circuit criterion against a brute-force implementation; local minima of graphinterp's search;
the exact batched single-edge pass; ``--mode`` and ``--jobs`` of ``graphinterp circuits``."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphinterp.interpret.circuits import Schedule, Tolerance, compare_circuits, extract_circuit, extract_circuits
from graphinterp.common.errors import DataError
from graphinterp.interpret.edges import edge_layers
from graphinterp.interpret.label_tasks import label_task

from _interp_helpers import digits_checkpoint, run_cli


def brute_force_authors(model: nn.Module, x: torch.Tensor, label: int, rtol: float = 1e-6):
    """The authors' loop, literally: one forward pass per weight, last Linear layer first, row-major."""
    model = copy.deepcopy(model).eval()
    target = torch.full((len(x),), label)

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x), target))

    full = loss()
    limit = full + rtol * abs(full)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for _, mod in reversed(linears):
            w = mod.weight
            for o in range(w.shape[0]):
                for i in range(w.shape[1]):
                    if w[o, i] == 0:
                        continue
                    saved = w[o, i].clone()
                    w[o, i] = 0.0
                    if loss() > limit:
                        w[o, i] = saved
    return {n: (m.weight != 0) for n, m in linears}, full


class Wrapped(nn.Module):
    """Not a plain Sequential: every state runs through the whole model (forward-hook path)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x)


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 7, bias=False), nn.Tanh(),
                        nn.Linear(7, 4))
    cnn = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(12, 6, bias=False), nn.ReLU(), nn.Linear(6, 4, bias=False))
    relu3 = nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 4))
    with torch.no_grad():
        relu3[3].weight[:, 2] = 0.0  # a unit of fc1 with no effect on fc2, and units of fc2 it does not reach
        relu3[3].weight[1:3, 4] = 0.0
    linear_chain = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Linear(5, 4))  # no activation between
    return {"mlp": (mlp, (3, 4)), "relu3": (relu3, (3, 4)), "cnn": (cnn, (2, 4, 4)), "chain": (linear_chain, (3, 4)),
            "wrapped": (Wrapped(copy.deepcopy(mlp)), (3, 4))}


@pytest.mark.parametrize("name", ["mlp", "relu3", "cnn", "chain", "wrapped"])
def test_authors_mode_equals_brute_force(name):
    model, shape = _models()[name]
    model = model.double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(120, *shape, generator=gen, dtype=torch.float64)
    y = model(x).argmax(1).detach()
    y[::7] = (y[::7] + 1) % 4  # some of the label's images are misclassified: the loss is not tiny
    label = int(torch.mode(y).values)
    want, full = brute_force_authors(model, x[y == label], label)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = label_task(x, y, label, max_examples=10_000, negative_ratio=1.0)
    c = extract_circuit(model, task, mode="authors", device="cpu")
    assert c.mode == "authors" and c.converged and c.n_neg == 0 and c.n_pos == int((y == label).sum())
    assert c.full_loss == pytest.approx(full, rel=1e-12)
    for layer, mask in want.items():
        key = layer.replace("body.", "")
        got = c.masks[layer if layer in c.masks else key]
        assert torch.equal(got, mask), f"{name} {layer}: {int((got != mask).sum())} decisions differ"
    assert 0 < c.ecs < 1 and c.loss <= c.full_loss * (1 + 1e-6)
    # conv kernels are never removed, and the ECS counts Linear weights only
    if name == "cnn":
        assert bool(c.masks["0"].all()) and "0" not in c.size.ecs_per_layer
        n_linear = sum(int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, nn.Linear))
        assert c.size.total_params == n_linear
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model unchanged


def test_authors_mode_float32_matches_brute_force_on_digits_like_mlp():
    """The float32 fast path (activation then Linear) with many weights and large batches of states."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 24, bias=False), nn.ReLU(), nn.Linear(24, 16, bias=False),
                          nn.ReLU(), nn.Linear(16, 10, bias=False))
    x = torch.randn(200, 1, 6, 6)
    y = model(x).argmax(1).detach()
    label = int(torch.mode(y).values)
    want, _ = brute_force_authors(model.double(), x.double()[y == label], label)
    model = model.float()
    c = extract_circuit(model, label_task(x, y, label, max_examples=10_000), mode="authors", device="cpu")
    differ = sum(int((c.masks[k] != m).sum()) for k, m in want.items())
    total = sum(m.numel() for m in want.values())
    assert differ <= 0.002 * total, f"{differ} of {total} decisions differ from the float64 brute force"


@pytest.mark.parametrize("deep,piecewise", [(False, False), (True, False), (True, True)])
def test_sequential_pass_in_batches_equals_one_by_one(deep, piecewise, monkeypatch):
    """The batched pass with graphinterp's tolerance equals the same walk done with one forward pass per edge.

    Kept and removed edges alternate in runs, so batches of both kinds (cumulative removals and
    single removals) are taken; ``deep`` has ReLU -> Linear after the next Linear layer: with
    ``piecewise`` every unit takes the piecewise-linear path (:class:`PiecewiseLogits`, one unit per
    block), without it blocks span units and update the next layer by rank-one terms; the shallow
    model updates the next layer's output, the logits."""
    from graphinterp.interpret import circuit_batch
    from graphinterp.interpret.circuit_batch import TaskMetrics, _one_by_one, forward_metrics, sequential_pass

    monkeypatch.setattr(circuit_batch, "PIECEWISE_MIN_EDGES", 1 if piecewise else 10_000)
    torch.manual_seed(2)
    tail = [nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)] if deep else [nn.Linear(8, 3)]
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 8), nn.ReLU(), *tail).double()
    x = torch.randn(90, 1, 1, 10, dtype=torch.float64)
    y = model(x).argmax(1).detach()
    task = label_task(x, y, int(torch.mode(y).values))
    tol = Tolerance(0.9, 0.3)
    results = []
    for runner in (sequential_pass, _one_by_one):
        m = copy.deepcopy(model)
        metrics = TaskMetrics(task, "cpu")
        full_acc, full_loss = forward_metrics(m, metrics, 64)
        layer = edge_layers(m)[0]
        mask = torch.ones(8, 10, dtype=torch.bool)
        order = torch.randperm(80, generator=torch.Generator().manual_seed(0))
        if piecewise:  # unit by unit, as the authors' criterion walks (a unit's pieces serve several blocks)
            order = order[torch.argsort(order // 10, stable=True)]
        if runner is sequential_pass:
            removed, evals, done = runner(m, layer, m[1], mask, order, metrics,
                                          lambda a, l: tol.accepts_all(a, l, full_acc, full_loss))
        else:
            removed, evals, done = runner(m, layer, m[1], mask, order, metrics,
                                          lambda a, l: tol.accepts_all(a, l, full_acc, full_loss), 64, None)
        results.append((mask, removed))
        assert done and torch.equal(m[1].weight == 0, ~mask) and evals == 80  # one evaluation per edge walked
    assert torch.equal(results[0][0], results[1][0]) and 10 < results[0][1] < 70


def _removable_edges(model, circuit, task, tol):
    """Kept edges whose single removal keeps the circuit within tolerance (brute force)."""
    from graphinterp.graph.layered import LayeredGraph
    from graphinterp.interpret.interventions import interventions

    graph = LayeredGraph.from_module(model)

    def metrics(masks):
        with interventions(model, graph, edge_masks=masks), torch.no_grad():
            return task.metrics(model(task.x))

    found = 0
    for name, mask in circuit.masks.items():
        for o, i in torch.nonzero(mask).tolist():
            masks = {k: v.clone() for k, v in circuit.masks.items()}
            masks[name][o, i] = False
            if tol.accepts(*metrics(masks), circuit.full_accuracy, circuit.full_loss):
                found += 1
    return found


def test_graphinterp_circuits_are_local_minima():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12, bias=False), nn.ReLU(), nn.Linear(12, 4, bias=False))
    x = torch.randn(160, 1, 4, 4)
    y = model(x).argmax(1).detach()
    tol = Tolerance()
    for label in range(4):
        task = label_task(x, y, label)
        c = extract_circuit(model, task, device="cpu")
        assert c.converged is True
        assert _removable_edges(model, c, task, tol) == 0
    # without the final pass the same search leaves removable edges on some label (what the pass is for)
    left = 0
    for label in range(4):
        task = label_task(x, y, label)
        c = extract_circuit(model, task, device="cpu", schedule=Schedule(final_pass=False))
        assert c.converged is None
        left += _removable_edges(model, c, task, tol)
    assert left > 0


def test_focused_passes_still_end_in_a_local_minimum(monkeypatch):
    """Focused passes (only the kept edges nearest to removable) run between full passes, and the search
    still ends with a full pass that removes nothing: no single kept edge is removable."""
    from graphinterp.interpret import circuit_search

    focused = []
    real = circuit_search._nearest
    monkeypatch.setattr(circuit_search, "_nearest", lambda *a: focused.append(a[1]) or real(*a))
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12, bias=False), nn.ReLU(), nn.Linear(12, 4, bias=False))
    x = torch.randn(160, 1, 4, 4)
    y = model(x).argmax(1).detach()
    for label in range(4):  # coarse rounds leave the passes work to do
        task = label_task(x, y, label)
        c = extract_circuit(model, task, device="cpu", schedule=Schedule(max_rounds=1, patience=4, focus=0.3))
        assert c.converged is True
        assert _removable_edges(model, c, task, Tolerance()) == 0
    assert focused and set(focused) == {0.3}


def test_budget_stops_the_final_pass():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12, bias=False), nn.ReLU(), nn.Linear(12, 4, bias=False))
    x = torch.randn(160, 1, 4, 4)
    y = model(x).argmax(1).detach()
    c = extract_circuit(model, label_task(x, y, 0), device="cpu", schedule=Schedule(max_evals=30))
    assert c.converged is False and c.n_evals <= 30 + 2


def test_unknown_mode():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(DataError, match="mode"):
        extract_circuits(model, (torch.randn(4, 2), torch.tensor([0, 1, 0, 1])), mode="acdc", progress=False)


def test_jobs_give_the_same_circuits_as_serial():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12, bias=False), nn.ReLU(), nn.Linear(12, 4, bias=False))
    x = torch.randn(160, 1, 4, 4)
    y = model(x).argmax(1).detach()
    serial = extract_circuits(model, (x, y), progress=False, device="cpu")
    parallel = extract_circuits(model, (x, y), progress=False, device="cpu", n_jobs=2)
    assert list(serial) == list(parallel)
    for c in serial:
        assert all(torch.equal(serial[c].masks[k], parallel[c].masks[k]) for k in serial[c].masks)
        assert serial[c].n_evals == parallel[c].n_evals


def test_compare_with_jobs_runs_both_models_in_one_pool_and_matches_serial():
    """compare_circuits on 2 processes: the same circuits as a serial run, each model's on its own side."""
    torch.manual_seed(6)
    a = nn.Sequential(nn.Linear(8, 12, bias=False), nn.ReLU(), nn.Linear(12, 3, bias=False))
    b = nn.Sequential(nn.Linear(8, 12, bias=False), nn.ReLU(), nn.Linear(12, 3, bias=False))
    x = torch.randn(120, 8)
    y = a(x).argmax(1).detach()
    kw = dict(progress=False, device="cpu", max_examples=30, random_state=2)
    serial = compare_circuits(a, b, (x, y), **kw)
    parallel = compare_circuits(a, b, (x, y), n_jobs=2, **kw)
    assert list(serial.ecs_a) != list(serial.ecs_b)  # two different models: a swap of the sides would show
    assert list(parallel.ecs_a) == list(serial.ecs_a) and list(parallel.ecs_b) == list(serial.ecs_b)
    for side in ("circuits_a", "circuits_b"):
        for c, circ in getattr(serial, side).items():
            other = getattr(parallel, side)[c]
            assert circ.n_evals == other.n_evals and circ.n_pos == other.n_pos
            assert all(torch.equal(circ.masks[k], other.masks[k]) for k in circ.masks)


def test_compare_checks_both_models_before_any_search(monkeypatch):
    """Models with different outputs are refused before any search; labels given as a generator serve both."""
    from graphinterp.interpret import circuits

    torch.manual_seed(7)
    a = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    b = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.randn(80, 6), torch.arange(80) % 4  # every label of both models has examples
    searched = []
    real = circuits._extract_one
    monkeypatch.setattr(circuits, "_extract_one", lambda *t: searched.append(t[1].label) or real(*t))
    with pytest.raises(DataError, match="same outputs"):
        compare_circuits(a, b, (x, y), progress=False, device="cpu")
    assert searched == []
    comp = compare_circuits(a, b, (x, y), (c for c in [0, 2]), progress=False, device="cpu", max_examples=20)
    assert comp.labels == [0, 2] and sorted(comp.circuits_b) == [0, 2] and searched == [0, 2, 0, 2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return digits_checkpoint(tmp_path_factory.mktemp("ckpt") / "modular.pt", clustering=True)


def test_cli_mode_and_jobs(checkpoint):
    args = ["circuits", checkpoint, "--dataset", "digits", "--labels", "0,1", "--device", "cpu", "--json"]
    one = json.loads(run_cli(args + ["--mode", "authors"]).output)
    two = json.loads(run_cli(args + ["--mode", "authors", "--jobs", "2"]).output)
    assert [c["mode"] for c in one["circuits"]] == ["authors", "authors"]
    assert [c["ecs"] for c in one["circuits"]] == [c["ecs"] for c in two["circuits"]]
    assert all(c["n_neg"] == 0 and c["converged"] for c in one["circuits"])
    default = json.loads(run_cli(args).output)
    assert all(c["mode"] == "graphinterp" and c["converged"] for c in default["circuits"])
    bad = run_cli(args + ["--mode", "acdc"])
    assert bad.exit_code != 0 and bad.output.startswith("error:") and "Traceback" not in bad.output
    bad = run_cli(args + ["--jobs", "0"])
    assert bad.exit_code != 0 and "--jobs" in bad.output


def test_authors_mode_notes_a_model_that_cannot_tell_the_label_from_the_others():
    """The authors' criterion judges a circuit on the label's examples alone: a model that answers the label for
    every input passed (accuracy 1.0 there) and its circuit came without the caveat the other mode gives."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[2].bias.copy_(torch.tensor([0.0, 50.0, 0.0]))  # always answers 1
    x = torch.randn(90, 6)
    y = torch.arange(90) % 3
    task = label_task(x, y, 1, max_examples=10_000, negative_ratio=1.0)
    c = extract_circuit(model, task, mode="authors", device="cpu")
    assert c.full_accuracy == 1.0 and c.task_check == (0.5, 30, 30)
    assert c.note is not None and "not clearly better than chance at telling the label from the others" in c.note
    assert c.to_dict()["task_check"]["full_balanced_accuracy"] == 0.5
    good = nn.Sequential(nn.Linear(6, 3))
    with torch.no_grad():
        good[0].weight.zero_()
        good[0].weight[1, 0] = 20.0  # answers 1 exactly when x0 > 0
    y = (x[:, 0] > 0).long()
    c = extract_circuit(good, label_task(x, y, 1, max_examples=10_000, negative_ratio=1.0), mode="authors", device="cpu")
    assert c.task_check[0] > 0.9 and (c.note is None or "chance" not in c.note)
