"""New-user review of ``ablate`` and ``circuits``: options refused where they do not apply, empty circuits
explained, a character LM's labels given as characters, raw text in terminal tables."""
from __future__ import annotations

import json
import statistics

import click
import pytest
import torch
from torch import nn

from graphinterp.interpret.circuits import Circuit, extract_circuits
from graphinterp.interpret.ecs import CircuitSize
from graphinterp.training.train_transformer import TransformerConfig, train_transformer

from _interp_helpers import digits_checkpoint, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "to be or not to be, that is the question. $3 "  # '$' (mathtext in figures), a digit, a comma, a space


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny modular-addition transformer, a tiny character LM (with its corpus) and a digits MLP."""
    d = tmp_path_factory.mktemp("review")
    modadd, lm, corpus = d / "modadd.pt", d / "lm.pt", d / "c.txt"
    train_transformer(TransformerConfig(task="modadd", p=11, train_frac=0.6, d_model=16, n_heads=2, d_mlp=32, k=2,
                                        lam=20.0, warmup_steps=40, steps=40, eval_every=80, quiet=True),
                      checkpoint=modadd)
    corpus.write_text(TEXT * 40)
    train_transformer(TransformerConfig(task="chars", corpus=str(corpus), n_ctx=8, batch_size=8, d_model=16, n_heads=2,
                                        d_mlp=32, n_layers=1, k=2, warmup_steps=2, steps=20, eval_every=20,
                                        eval_windows=4, quiet=True), checkpoint=lm)
    return {"modadd": modadd, "lm": lm, "corpus": corpus, "mlp": digits_checkpoint(d / "mlp.pt", clustering=True)}


def _one_error(res, code: int = 2) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == code and len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


# ----------------------------------------------------------------------------- 1: options of one kind of model
def test_options_of_another_model_kind_are_refused_by_ablate_and_circuits(models):
    modadd, lm, corpus, mlp = models["modadd"], models["lm"], models["corpus"], models["mlp"]
    for command in ("ablate", "circuits"):
        line = _one_error(run_cli([command, modadd, "--corpus", corpus]))
        assert "--corpus applies to transformers trained on chars only" in line and "trained on modadd" in line
        line = _one_error(run_cli([command, mlp, "--corpus", corpus]))
        assert "--corpus applies" in line and "not a transformer checkpoint" in line
        line = _one_error(run_cli([command, modadd, "--dataset", "mnist"]))
        assert "--dataset does not apply" in line and "own task" in line
        line = _one_error(run_cli([command, lm, "--data-dir", corpus.parent, "--dataset", "digits"]))
        assert "--dataset and --data-dir do not apply" in line


def test_the_corpus_of_a_character_lm_is_still_accepted_by_ablate(models):
    res = run_cli(["ablate", models["lm"], "--corpus", models["corpus"], "--limit", "20", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["task"] == "chars"


def test_ablate_summarises_each_row_when_there_are_too_many_classes_for_a_column_each(models, monkeypatch):
    """modadd has 113 answers: a column each made a 900-character line per row. Above ``WIDE`` classes each row
    gives its spread over the classes and the classes that stand out, as in the JSON: the full model's least
    accurate, an ON cluster's most accurate, an OFF cluster's largest drops from the full model."""
    import graphinterp.cli._ablate_text as ablate_text

    args = ["ablate", models["modadd"], "--device", "cpu"]
    data = json.loads(run_cli([*args, "--json"]).output)
    wide = run_cli(args)
    assert wide.exit_code == 0 and "classes: one column each" not in wide.output
    monkeypatch.setattr(ablate_text, "WIDE", 5)
    res = run_cli(args)
    assert res.exit_code == 0, res.output
    live = [i for i, n in enumerate(data["counts"]) if n > 0]
    names = [str(data["classes"][i]) for i in live]
    full = [data["full"][i] for i in live]
    assert f"{len(live)} classes: one column each in --json" in res.output
    lines = {line.split("  ")[0].strip(): line for line in res.output.splitlines()}
    rows = [("full", data["full"])] + [(f"{w} {c}", data[w.lower()][c]) for w in ("ON", "OFF") for c in range(data["k"])]
    for label, acc in rows:
        acc = [acc[i] for i in live]
        cells = lines[label].split()
        at = len(label.split()) + 1
        assert [float(x) for x in cells[at:at + 3]] == pytest.approx([min(acc), statistics.median(acc), max(acc)],
                                                                      abs=6e-4)
        first, value = names.index(cells[at + 3]), float(cells[at + 4].rstrip(","))
        if label.startswith("OFF"):
            drops = [f - a for f, a in zip(full, acc)]
            assert drops[first] == pytest.approx(max(drops)) and value == pytest.approx(-max(drops), abs=6e-3)
        else:
            pick = max(acc) if label.startswith("ON") else min(acc)
            assert acc[first] == pytest.approx(pick) and value == pytest.approx(pick, abs=6e-3)


# ----------------------------------------------------------------------------- 2: empty circuits say why
def _circuit(kept: int, full_acc: float, *, n_neg: int = 20, mode: str = "graphinterp") -> Circuit:
    size = CircuitSize(kept / 10, kept / 10, {}, {}, kept, 10, kept, 10)
    return Circuit(3, "c", {}, size, full_acc, 0.5, full_acc, 0.6, 20, n_neg, mode=mode)


def test_an_empty_circuit_has_a_note_saying_why():
    assert _circuit(4, 0.9).note is None and not _circuit(4, 0.9).empty
    chance = _circuit(0, 0.5)
    assert chance.empty and "no better than chance" in chance.note and "0 of 10 weights" in chance.note
    assert "no better than chance" in _circuit(0, 0.0, n_neg=0, mode="authors").note  # positives only: chance is 0
    assert "tolerance is met with every weight removed" in _circuit(0, 0.9).note
    # 0.6 on 20 + 20 examples is within 3 sd of chance (0.74): the reason is chance, not the tolerance
    note = _circuit(0, 0.6).note
    assert "not clearly better than chance" in note and "loses nothing" not in note and "(accuracy 0.600" in note
    assert "does not rise above the full model's" in _circuit(0, 0.9, n_neg=0, mode="authors").note
    d = chance.to_dict()
    assert d["empty"] is True and d["note"] == chance.note and json.loads(json.dumps(d))["note"] == chance.note


def test_a_label_the_model_never_predicts_gives_an_empty_circuit_explained_as_chance():
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.0, 0.0, -10.0]))  # label 2 never wins
    x = torch.rand(60, 2, generator=torch.Generator().manual_seed(0))
    y = torch.arange(60) % 3
    circuit = extract_circuits(model, (x, y), [2], progress=False, device="cpu")[2]
    assert circuit.empty and circuit.full_accuracy == pytest.approx(0.5)
    assert "no better than chance" in circuit.note and "never predicts the label" in circuit.note


def test_cli_reports_empty_circuits_in_text_and_json(models):
    loose = ["--min-accuracy", "0.01", "--max-loss-increase", "100", "--max-evals", "50"]  # nothing is needed
    res = run_cli(["circuits", models["modadd"], "--labels", "1,2", *loose, "--quiet"])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("note:")]
    assert [n.split(":")[1] for n in notes] == [" label 1", " label 2"], res.output
    assert all("empty circuit (0 of 1,024 weights kept)" in n for n in notes)
    assert all("tolerance is met" in n or "better than chance" in n for n in notes)
    res = run_cli(["circuits", models["modadd"], "--labels", "1", *loose, "--json"])
    assert res.exit_code == 0, res.output
    (c,) = json.loads(res.output)["circuits"]
    assert c["ecs"] == 0 and c["empty"] is True and c["note"] in notes[0]


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_comparison_of_empty_circuits_says_n_a_and_writes_valid_json(models, tmp_path):
    base = tmp_path / "base.pt"
    base.write_bytes(models["modadd"].read_bytes())
    loose = ["--labels", "1", "--min-accuracy", "0.01", "--max-loss-increase", "100", "--max-evals", "50"]
    res = run_cli(["circuits", models["modadd"], "--compare", base, *loose, "--quiet"])
    assert res.exit_code == 0, res.output
    assert "n/a (empty in base)" in res.output and "note: base, label 1: empty circuit" in res.output
    assert "mean relative change base -> modadd: n/a" in res.output and "Warning" not in res.output
    assert "labels with an empty circuit are left out" in res.output
    res = run_cli(["circuits", models["modadd"], "--compare", base, *loose, "--json"])
    assert res.exit_code == 0, res.output
    cmp = _strict_json(res.output)["compare"]
    assert cmp["mean_relative_change"] is None and cmp["a_over_b"] is None and cmp["circuits"][0]["empty"] is True


# ----------------------------------------------------------------------------- 3: a character LM's labels as characters
def _labels_of(res):
    assert res.exit_code == 0, res.output
    return [(c["label"], c["label_name"]) for c in json.loads(res.output)["circuits"]]


def test_character_lm_labels_given_as_characters(models):
    lm = models["lm"]
    vocab = "".join(sorted(set(TEXT)))
    fast = ["--limit", "120", "--max-examples", "10", "--max-evals", "20", "--json"]
    got = _labels_of(run_cli(["circuits", lm, "--labels", "e,t", *fast]))
    assert got == [(vocab.index("e"), "e"), (vocab.index("t"), "t")]
    got = _labels_of(run_cli(["circuits", lm, "--labels", "chars:3, ", *fast]))  # a digit, a comma and a space
    assert got == [(vocab.index("3"), "3"), (vocab.index(","), ","), (vocab.index(" "), "' '")]
    got = _labels_of(run_cli(["circuits", lm, "--labels", "3,e,4", *fast]))  # integers stay output indices
    assert got == [(3, vocab[3]), (vocab.index("e"), "e"), (4, vocab[4])] and vocab[3] != "3"
    # a label written as the tables show it (quoted), or as a backslash escape, is typed back
    got = _labels_of(run_cli(["circuits", lm, "--labels", "' ',',',\\x33", *fast]))
    assert got == [(vocab.index(" "), "' '"), (vocab.index(","), ","), (vocab.index("3"), "3")]
    assert "is not one character" in _one_error(run_cli(["circuits", lm, "--labels", "'ab'", *fast]))
    line = _one_error(run_cli(["circuits", lm, "--labels", "e,Z,x", *fast]))
    assert "'Z', 'x' not in the vocabulary of" in line and repr(vocab) in line
    line = _one_error(run_cli(["circuits", models["modadd"], "--labels", "e"]))
    assert "character language models only" in line


def test_labels_help_documents_characters():
    res = run_cli(["circuits", "--help"])
    assert res.exit_code == 0 and "chars:TEXT" in res.output and "e,t,a" in res.output
    assert "always an index" in " ".join(res.output.split())


# ----------------------------------------------------------------------------- 4: raw text in terminal tables
def test_ablate_table_shows_characters_as_they_are_and_figures_escape_them(models, tmp_path):
    res = run_cli(["ablate", models["lm"], "--limit", "20", "--device", "cpu", "--plot", tmp_path / "onoff.png"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if not line.startswith(("note: ", "coverage: ", "not covered: "))]
    header = lines[1].split()
    assert "$" in header and "' '" in " ".join(header) and not any("\\" in h for h in header), res.output
    assert (tmp_path / "onoff.png").stat().st_size > 0  # '$' escaped for matplotlib, else mathtext fails


# ----------------------------------------------------------------------------- attribution on a transformer
def test_attribution_score_on_a_transformer_after_units_are_pruned(models):
    """Once most hidden units are pruned the MLP runs sparse; the gradients must still reach every weight.

    300 evaluations: since BSGC keeps its best-scoring candidate (2026-12-07) the fixture's modular training
    clusters its MLP blocks differently, and 100 evaluations pruned that model to ECS 0.28 at best, too little
    to reach the sparse path; 300 reach 0.0-0.14."""
    res = run_cli(["circuits", models["modadd"], "--labels", "0-2", "--score", "attribution", "--max-evals", "300",
                   "--json"])
    assert res.exit_code == 0, res.output
    circuits = json.loads(res.output)["circuits"]
    assert all(c["score"] == "attribution" for c in circuits) and min(c["ecs"] for c in circuits) < 0.1


def test_ablate_runs_a_transformer_on_the_device_asked_for(models, monkeypatch):
    """--device reached the transformer evaluation (it used to run wherever the model was loaded)."""
    import contextlib

    from graphinterp.interpret import transformer_eval

    seen = []
    real = transformer_eval.on_device

    @contextlib.contextmanager
    def recording(model, device):
        seen.append(device)
        with real(model, device) as m:
            yield m

    monkeypatch.setattr(transformer_eval, "on_device", recording)
    res = run_cli(["ablate", models["modadd"], "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    assert [d.type for d in seen] == ["cpu"]


def test_a_label_without_examples_is_refused_by_its_name_before_any_search():
    from graphinterp.cli._labels import check_examples

    check_examples("all", torch.tensor([0, 0]), ["a", "b"], "val")  # "all" means the labels present
    with pytest.raises(click.BadParameter, match=r"no example of label\(s\) 'b' in the 2 examples of val"):
        check_examples([0, 1], torch.tensor([0, 0]), ["a", "b"], "val")
    check_examples([5], torch.tensor([0, 0]), ["a", "b"], "val")  # out of range: refused by the model's own check


def test_the_summary_counts_the_classes_tied_with_those_it_names():
    from graphinterp.cli._ablate_text import onoff_table

    names = [f"c{i}" for i in range(25)]
    full, on, off = [1.0] * 25, [0.0] * 25, [1.0] * 25
    full[3] = 0.2
    on[5] = on[6] = 0.9
    for i in range(7, 13):
        off[i] = 0.0  # six classes lost alike
    table = onoff_table([["full", 0.9, *full], ["ON 0", 0.1, *on], ["OFF 0", 0.7, *off]], names)
    lines = {line.split()[0] + (" " + line.split()[1] if line.startswith(("ON", "OFF")) else ""): line
             for line in table.splitlines()[2:-1]}
    assert lines["full"].endswith("c3 0.20, c0 1.00, c1 1.00, c2 1.00 (+21 tied)")
    assert lines["ON 0"].endswith("c5 0.90, c6 0.90, c0 0.00, c1 0.00 (+21 tied)")
    assert lines["OFF 0"].endswith("c7 -1.00, c8 -1.00, c9 -1.00, c10 -1.00 (+2 tied)")


def test_a_damaged_transformer_checkpoint_is_named(models, tmp_path):
    """ablate and circuits validated a transformer checkpoint without saying which file was damaged (circuits
    --compare reads two)."""
    ckpt = torch.load(models["modadd"], weights_only=True)
    del ckpt["history"]
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    for command in (["ablate", bad, "--device", "cpu"], ["circuits", bad, "--labels", "0", "--device", "cpu"]):
        res = run_cli(command)
        assert res.exit_code != 0 and f"{bad}: graphinterp checkpoint lacks ['history']" in res.output, res.output
