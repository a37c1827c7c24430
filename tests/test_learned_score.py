"""The learned edge score (mask logits trained on the task): what it ranks, seeding, the model untouched."""
from __future__ import annotations

import json

import pytest
import torch

from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.circuit_eval import TaskEvaluator
from graphinterp.interpret.circuit_search import score_context
from graphinterp.interpret.circuits import extract_circuits
from graphinterp.interpret.edges import edge_layers
from graphinterp.interpret.label_tasks import label_task
from graphinterp.interpret.scores import SCORES, ScoreContext, learned_score, magnitude_score

from _interp_helpers import digits_checkpoint, run_cli
from test_circuits import PLANTED, kept_edges, planted_data, planted_model


def _dead_input_setup():
    """The planted net with input 5 always zero: its edges carry nothing, yet x_5 -> h_5 is the heaviest edge."""
    model, (x, y) = planted_model(), planted_data()
    x[:, 5] = 0.0
    with torch.no_grad():
        model.fc1.weight[5, 5] = 50.0
    layers = edge_layers(model, LayeredGraph.from_module(model, input_shape=(6,)))
    ev = TaskEvaluator(model, layers, label_task(x, y, 0, random_state=0), modules=[model.fc1, model.fc2])
    masks = {l.name: l.live.clone() for l in layers}
    return model, layers, ev, masks


def test_learned_scores_rank_a_dead_heavy_edge_below_the_planted_circuit():
    model, layers, ev, masks = _dead_input_setup()
    magnitude = magnitude_score(ScoreContext(layers, masks))
    assert float(magnitude["fc1"][5, 5]) == float(magnitude["fc1"].max())  # magnitude would keep it longest
    learned = learned_score(score_context(ev, layers, masks))
    used = min(float(learned[name][i, j]) for name, edges in PLANTED.items() for i, j in edges)
    assert float(learned["fc1"][5, 5]) < used  # no task gradient reaches it: the sparsity penalty pulls it down
    assert float(learned["fc1"][5, 5]) < 0 < used


def test_learned_scores_are_seeded_resume_between_rounds_and_leave_the_model_alone():
    model, layers, ev, masks = _dead_input_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = learned_score(score_context(ev, layers, masks))
    again = learned_score(score_context(_dead_input_setup()[2], layers, masks))  # a fresh search: same seed
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert "learned" in ev.score_state  # the next round resumes from these logits
    masks["fc1"][5, 5] = False  # pruned in between: its logit stays where it was
    second = learned_score(score_context(ev, layers, masks))
    assert float(second["fc1"][5, 5]) == float(first["fc1"][5, 5])
    assert not all(torch.equal(first[k], second[k]) for k in first)  # the others trained on
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_the_learned_score_needs_a_task_loss():
    model = planted_model()
    layers = edge_layers(model, LayeredGraph.from_module(model, input_shape=(6,)))
    with pytest.raises(ValueError, match="needs the task's loss"):
        learned_score(ScoreContext(layers, {l.name: l.live for l in layers}))


def test_a_learned_search_is_reproducible():
    model, (x, y) = planted_model(), planted_data()
    runs = [extract_circuits(model, (x, y), [0, 1], score="learned", progress=False, device="cpu") for _ in range(2)]
    for a, b in zip(runs[0].values(), runs[1].values()):
        assert kept_edges(a) == kept_edges(b) and a.n_evals == b.n_evals and a.ecs == b.ecs


def test_the_cli_offers_every_score():
    from graphinterp.cli.circuits import command

    choices = next(p for p in command.params if p.name == "score").type.choices
    assert set(choices) == set(SCORES)


def test_cli_circuits_with_the_learned_score(tmp_path):
    model = digits_checkpoint(tmp_path / "plain.pt", clustering=False)
    res = run_cli(["circuits", model, "--dataset", "digits", "--labels", "3", "--device", "cpu", "--json",
                   "--score", "learned", "--max-evals", "300"])
    assert res.exit_code == 0, res.output
    c = json.loads(res.output)["circuits"][0]
    assert 0 < c["ecs"] < 1 and c["accuracy"] >= 0.95 * c["full_accuracy"] - 1e-9


def test_learned_score_on_a_transformer_mlp():
    from graphinterp.data.tasks import modular_addition
    from graphinterp.interpret.transformer_circuits import extract_transformer_circuits
    from graphinterp.sources.transformer import transformer
    from graphinterp.interpret.circuits import Schedule

    torch.manual_seed(0)
    model = transformer(vocab=12, n_out=11, d_model=16, n_heads=2, d_mlp=32, n_layers=1, layernorm=False)
    train, _ = modular_addition(11, 0.9)
    with torch.no_grad():
        labels = model(train.x).argmax(1)  # its own predictions: a task it solves perfectly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    c = extract_transformer_circuits(model, train.x, labels, [int(labels[0])], score="learned",
                                     schedule=Schedule(max_evals=300), progress=False, device="cpu")[int(labels[0])]
    assert c.accuracy >= 0.95 * c.full_accuracy - 1e-9 and 0 < c.ecs < 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
