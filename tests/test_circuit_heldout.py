"""Circuits checked on held-out examples: the held-out task is disjoint from the search's, its figures match a
forward written by hand, the search does not change, and the CLI and JSON report them."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from _cli_helpers import invoke
from _interp_helpers import digits_checkpoint
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.circuit_heldout import HELDOUT_MIN_GROUP as MIN_GROUP, _clearly_below_zero, check_heldout
from graphinterp.interpret.circuits import Schedule, Tolerance, extract_circuit, extract_circuits
from graphinterp.interpret.edges import edge_layers
from graphinterp.interpret.label_tasks import heldout_task, label_task

pytestmark = pytest.mark.usefixtures("one_thread")


def _old_label_task_indices(y, label, max_examples, ratio, seed):
    """The examples label_task drew before held-out tasks existed (its draws must not change)."""
    gen = torch.Generator().manual_seed(seed + 7919 * label)
    pos, neg = torch.nonzero(y == label).flatten(), torch.nonzero(y != label).flatten()
    pos = pos[torch.randperm(pos.numel(), generator=gen)[:max_examples]]
    neg = neg[torch.randperm(neg.numel(), generator=gen)[:min(neg.numel(), int(round(ratio * pos.numel())))]]
    return torch.cat([pos, neg])


@pytest.mark.parametrize("max_examples,ratio,seed", [(7, 1.0, 0), (30, 0.5, 3), (100, 2.0, 1)])
def test_heldout_task_is_disjoint_and_label_task_draws_as_before(max_examples, ratio, seed):
    y = torch.randint(0, 3, (150,), generator=torch.Generator().manual_seed(5))
    x = torch.arange(150.0)[:, None]  # each example's index as its input
    for label in range(3):
        task = label_task(x, y, label, max_examples=max_examples, negative_ratio=ratio, random_state=seed)
        assert task.x.flatten().long().tolist() == _old_label_task_indices(y, label, max_examples, ratio, seed).tolist()
        held = heldout_task(x, y, label, max_examples=max_examples, negative_ratio=ratio, random_state=seed)
        n_label = int((y == label).sum())
        seen = set(task.x.flatten().tolist())
        if n_label <= max_examples:  # every example of the label searched on: unused others alone, if any
            unused = 150 - n_label - task.n_neg
            if unused == 0:
                assert held is None
            else:
                fresh = held.x.flatten().long()
                assert held.n_pos == 0 and held.n_neg == min(unused, task.n_neg) and not seen & set(fresh.tolist())
                assert bool((y[fresh] != label).all())
            continue
        fresh = held.x.flatten().long()
        assert not seen & set(fresh.tolist()) and len(set(fresh.tolist())) == len(fresh)
        assert held.n_pos == min(max_examples, n_label - task.n_pos)
        assert bool((y[fresh[held.positive]] == label).all()) and bool((y[fresh[~held.positive]] != label).all())
        assert held.n_neg == min(150 - n_label - task.n_neg, round(ratio * held.n_pos))


def test_no_heldout_task_without_negatives_left():
    x, y = torch.zeros(12, 1), torch.tensor([0] * 10 + [1] * 2)
    assert heldout_task(x, y, 0, max_examples=4) is None  # both other examples are the search's negatives
    held = heldout_task(x, y, 0, max_examples=4, negative_ratio=0.0)  # a task without negatives needs none
    assert held.n_pos == 4 and held.n_neg == 0
    held = heldout_task(x, y, 0, max_examples=4, mode="authors")  # the authors' criterion: positives only
    assert held.n_pos == 4 and held.n_neg == 0


def _model_and_data():
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(1200, 6, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _by_hand(model, masks, task):
    """Balanced accuracy and loss of ``model`` with ``masks`` applied to a copy of its weights."""
    net = copy.deepcopy(model)
    with torch.no_grad():
        for name, m in masks.items():
            net.get_submodule(name).weight.mul_(m.to(torch.float32))
        logp = torch.log_softmax(net(task.x).double(), 1)[:, task.label]
    pos = task.positive
    hit = ((net(task.x).argmax(1) == task.label) == pos).double()
    loss = torch.where(pos, -logp, -torch.log1p(-logp.exp()))
    w = torch.where(pos, torch.tensor(0.5 / task.n_pos, dtype=torch.float64), torch.tensor(0.5 / task.n_neg, dtype=torch.float64))
    return float(w @ hit), float(w @ loss)


def test_heldout_figures_match_a_forward_by_hand_and_the_search_is_unchanged():
    model, x, y = _model_and_data()
    with_h = extract_circuits(model, (x, y), [0, 2], max_examples=150, progress=False, device="cpu")
    without = extract_circuits(model, (x, y), [0, 2], max_examples=150, heldout=False, progress=False, device="cpu")
    for c in (0, 2):
        a, b = with_h[c], without[c]
        assert b.heldout is None and a.heldout is not None
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)  # the search never sees them
        assert (a.accuracy, a.loss, a.n_evals) == (b.accuracy, b.loss, b.n_evals)
        held = heldout_task(x, y, c, max_examples=150)
        h = a.heldout
        assert (h.n_pos, h.n_neg) == (held.n_pos, held.n_neg) == (150, 150)
        acc, loss = _by_hand(model, a.masks, held)
        full_acc, full_loss = _by_hand(model, {k: torch.ones_like(v) for k, v in a.masks.items()}, held)
        assert h.accuracy == pytest.approx(acc, abs=1e-9) and h.loss == pytest.approx(loss, abs=1e-5)
        assert h.full_accuracy == pytest.approx(full_acc, abs=1e-9) and h.full_loss == pytest.approx(full_loss, abs=1e-5)
        assert h.within_tolerance == Tolerance().accepts(acc, loss, full_acc, full_loss)
        assert a.to_dict()["heldout"] == h.to_dict()


def test_the_search_task_as_heldout_reproduces_the_circuits_own_figures():
    model, x, y = _model_and_data()
    task = label_task(x, y, 2, max_examples=100)
    c = extract_circuit(model, task, device="cpu", heldout=task)
    h = c.heldout
    assert h.accuracy == pytest.approx(c.accuracy, abs=1e-9) and h.loss == pytest.approx(c.loss, abs=1e-5)
    assert h.full_accuracy == pytest.approx(c.full_accuracy, abs=1e-9)
    assert h.within_tolerance and not h.clearly_outside  # the search accepted it on these very examples


def test_an_empty_circuit_is_clearly_outside_and_noted():
    model, x, y = _model_and_data()
    layers = edge_layers(model, LayeredGraph.from_module(model))
    held = heldout_task(x, y, 0, max_examples=150)
    none = {l.name: torch.zeros_like(l.live) for l in layers}
    h = check_heldout(model, layers, [model[0], model[2]], none, held, mode="graphinterp", tolerance=Tolerance())
    assert not h.within_tolerance and h.clearly_outside
    whole = {l.name: l.live.clone() for l in layers}
    h = check_heldout(model, layers, [model[0], model[2]], whole, held, mode="graphinterp", tolerance=Tolerance())
    assert h.within_tolerance and not h.clearly_outside and h.accuracy == h.full_accuracy


def test_a_miss_within_sampling_noise_is_not_clearly_outside():
    w = torch.full((100,), 0.01, dtype=torch.float64)
    pos = torch.arange(100) < 50
    noisy = torch.where(torch.arange(100) % 2 == 0, 1.0, -1.02).double()  # mean -0.01, spread 1: se 0.1
    assert float(w @ noisy) < 0 and not _clearly_below_zero(noisy, w, pos)
    steady = torch.full((100,), -0.01, dtype=torch.float64)  # the same mean with no spread
    assert _clearly_below_zero(steady, w, pos)
    assert not _clearly_below_zero(torch.zeros(100, dtype=torch.float64), w, pos)  # met exactly
    inf = torch.zeros(100, dtype=torch.float64)
    inf[3] = -float("inf")  # an infinite loss on one example: clearly missed, not "noise"
    assert _clearly_below_zero(inf, w, pos)


def test_too_few_heldout_examples_are_never_called_clear():
    model, x, y = _model_and_data()
    layers = edge_layers(model, LayeredGraph.from_module(model))
    none = {l.name: torch.zeros_like(l.live) for l in layers}
    for n, too_few in ((MIN_GROUP - 1, True), (MIN_GROUP, False)):
        idx = torch.cat([torch.nonzero(y == 0).flatten()[:n], torch.nonzero(y != 0).flatten()[:n]])
        held = label_task(x[idx], y[idx], 0, max_examples=n)
        h = check_heldout(model, layers, [model[0], model[2]], none, held, mode="graphinterp", tolerance=Tolerance())
        assert h.too_few == too_few and not h.within_tolerance and h.missed
        assert h.clearly_outside == (not too_few) and h.mark(h.missed[0]) == ("(?)" if too_few else "(!)")


def test_authors_mode_checks_positives_only_even_when_no_negative_is_left():
    model, x, y = _model_and_data()
    c = extract_circuits(model, (x, y), [2], max_examples=150, mode="authors", progress=False, device="cpu")[2]
    assert c.heldout.n_neg == 0 and c.heldout.n_pos == 150
    assert c.heldout.within_tolerance == (c.heldout.loss <= c.heldout.full_loss * (1 + 1e-6))
    assert c.heldout.missed == (() if c.heldout.within_tolerance else ("loss",))
    few = torch.cat([torch.nonzero(y == 0).flatten()[:100], torch.nonzero(y != 0).flatten()[:20]])
    xs, ys = x[few], y[few]  # 100 of label 0, 20 others: the search's 40 + 40 use up the negatives
    found = extract_circuits(model, (xs, ys), [0], max_examples=40, progress=False, device="cpu",
                             schedule=Schedule(max_evals=50))
    assert found[0].heldout is None  # a one-vs-rest check needs negatives
    authors = extract_circuits(model, (xs, ys), [0], max_examples=40, mode="authors", progress=False, device="cpu")
    assert authors[0].heldout.n_pos == 40 and authors[0].heldout.n_neg == 0  # the authors' task has none


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return digits_checkpoint(tmp_path_factory.mktemp("ho") / "m.pt", clustering=True)


def test_cli_reports_heldout_figures_and_says_when_none_are_left(ckpt):
    res = invoke("circuits", ckpt, "--labels", "0,1", "--split", "train", "--max-examples", 40, "--max-evals", 300,
                 "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    for ci in out["circuits"]:
        h = ci["heldout"]
        assert h["n_pos"] == 40 and h["n_neg"] == 40
        assert set(h) == {"accuracy", "loss", "full_accuracy", "full_loss", "n_pos", "n_neg", "within_tolerance",
                          "clearly_outside", "too_few", "missed", "clearly_missed", "limits"}
        assert h["within_tolerance"] == (not h["missed"]) and set(h["clearly_missed"]) <= set(h["missed"])
    res = invoke("circuits", ckpt, "--labels", "0,1", "--split", "train", "--max-examples", 40, "--max-evals", 300, "-q")
    assert res.exit_code == 0, res.stderr
    assert "then checked on held-out ones: 80 examples of the same split that the search never saw" in res.stdout
    assert "held-out acc circuit/full" in res.stdout and "held-out loss circuit/full" in res.stdout
    assert "circuits meet their criterion on examples the search never saw; mean accuracy circuit/full" in res.stdout
    twin = Path(ckpt).with_name("m_copy.pt")  # another file: --compare MODEL itself is refused
    shutil.copyfile(ckpt, twin)
    res = invoke("circuits", ckpt, "--labels", "0,1", "--split", "train", "--max-examples", 40, "--max-evals", 300,
                 "--compare", twin, "-q")
    assert res.exit_code == 0, res.stderr
    assert sum("held out: " in line for line in res.stdout.splitlines()) == 2  # the compared model's too
    res = invoke("circuits", ckpt, "--labels", "0,1", "--max-evals", 300, "-q")  # the test split: ~36 per label
    assert res.exit_code == 0, res.stderr
    assert ("for every label only examples of other labels (every example of the label was searched on: the check "
            "is that the circuit does not say the label for them") in res.stdout
    out = json.loads(invoke("circuits", ckpt, "--labels", "0,1", "--max-evals", 300, "--json").stdout)
    assert all(ci["heldout"]["n_pos"] == 0 and ci["heldout"]["n_neg"] > 0 for ci in out["circuits"])
    # the authors' criterion uses the label's own examples only: nothing is left to hold out
    res = invoke("circuits", ckpt, "--labels", "0", "--mode", "authors", "-q")
    assert res.exit_code == 0, res.stderr
    assert ("then checked on held-out ones: none for every label (no unused example of the label, or of the other "
            "labels, is left; lower --max-examples or give more data to hold some out)") in res.stdout


def test_authors_mode_says_what_its_accuracy_is_and_drops_the_settings_it_ignores(ckpt):
    res = invoke("circuits", ckpt, "--labels", "0", "--mode", "authors", "--split", "train", "--max-examples", 20, "-q")
    assert res.exit_code == 0, res.stderr
    assert "accuracy in --mode authors is on the label's own examples only" in res.stdout
    assert "fc1 %, fc2 %, fc3 %: the share of that layer's non-zero weights the circuit keeps" in res.stdout
    out = json.loads(invoke("circuits", ckpt, "--labels", "0", "--mode", "authors", "--split", "train",
                            "--max-examples", 20, "--json").stdout)
    assert out["score"] is None and out["tolerance"] is None
