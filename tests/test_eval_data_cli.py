"""What ``ablate`` and ``circuits`` evaluate on: the dataset a checkpoint was trained on unless --dataset says
otherwise, a clear error for a model that does not take the default data's inputs, a note for --limit above the
data, and every window of a character LM's text (not the 256 its training evaluated on)."""
from __future__ import annotations

import json

import pytest
import torch

import graphinterp
from graphinterp.data.datasets import load_dataset
from graphinterp.sources.checkpoint import save_checkpoint
from graphinterp.sources.models import build_model
from graphinterp.data.tasks import load_corpus
from graphinterp.training.train_transformer import TransformerConfig, train_transformer

from _cli_helpers import invoke, one_error

pytestmark = pytest.mark.usefixtures("one_thread")

FAST_CIRCUITS = ("--labels", "0", "--max-evals", "5", "-q", "--device", "cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits MLP written by ``graphinterp train`` (its checkpoint records the dataset it was trained on)."""
    path = tmp_path_factory.mktemp("eval") / "m.pt"
    res = invoke("train", "--epochs", "1", "--warmup-epochs", "1", "--out", path, "-q", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    return path


def _retarget(src, dst, dataset: str, data_dir: str):
    """A copy of the checkpoint ``src`` whose training settings say it was trained on ``dataset`` from ``data_dir``."""
    ckpt = torch.load(src, weights_only=True)
    ckpt["train_state"]["config"].update(dataset=dataset, data_dir=data_dir)
    torch.save(ckpt, dst)
    return dst


@pytest.fixture
def recorded_loads(monkeypatch):
    """Every (dataset, data_dir) the commands load; the built-in digits are returned for each (offline)."""
    calls = []

    def fake(name, split="test", data_dir=None, **kwargs):
        calls.append((name, data_dir))
        return load_dataset("digits", split=split)

    monkeypatch.setattr(graphinterp, "load_dataset", fake)
    return calls


def _dataset_notes(res):
    """The --json notes less the one on searches stopped at --max-evals (FAST_CIRCUITS stops some)."""
    return [n for n in json.loads(res.stdout)["notes"] if "their ECS are upper bounds" not in n]


@pytest.mark.parametrize("command", ["ablate", "circuits"])
def test_a_checkpoint_is_evaluated_on_the_dataset_it_was_trained_on(command, trained, tmp_path, recorded_loads):
    model = _retarget(trained, tmp_path / "fm.pt", "fashion-mnist", str(tmp_path / "where-it-trained"))
    extra = FAST_CIRCUITS if command == "circuits" else ()
    res = invoke(command, model, "--json", *extra)
    assert res.exit_code == 0, res.stderr
    assert recorded_loads == [("fashion-mnist", str(tmp_path / "where-it-trained"))]
    assert _dataset_notes(res) == [
        f"evaluating on fashion-mnist, the dataset {model} was trained on, from {tmp_path / 'where-it-trained'} "
        "(--dataset and --data-dir choose others)"]
    # --data-dir given: that folder; --dataset given: that dataset, with a note that it differs
    recorded_loads.clear()
    res = invoke(command, model, "--data-dir", tmp_path, "--json", *extra)
    assert res.exit_code == 0 and recorded_loads == [("fashion-mnist", str(tmp_path))]
    recorded_loads.clear()
    res = invoke(command, model, "--dataset", "mnist", "--json", *extra)  # read from where it trained, as --help says
    assert res.exit_code == 0 and recorded_loads == [("mnist", str(tmp_path / "where-it-trained"))]
    assert _dataset_notes(res) == [
        f"{model} was trained on fashion-mnist; evaluating on mnist as asked",
        f"reading mnist from {tmp_path / 'where-it-trained'}, the data folder {model} was trained from "
        "(--data-dir chooses another)"]


@pytest.mark.parametrize("command", ["ablate", "circuits"])
def test_a_model_that_does_not_take_the_default_digits_is_refused_with_the_option_to_use(command, tmp_path):
    spec = {"name": "mlp", "kwargs": {"in_features": 784, "hidden": [16]}}
    path = tmp_path / "mnist-mlp.pt"
    save_checkpoint(path, build_model(spec), arch=spec)  # it records no dataset
    extra = FAST_CIRCUITS if command == "circuits" else ()
    why = "(running it failed with RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x64 and 784x16))"
    line = one_error(invoke(command, path, *extra), 1)
    assert line == (f"error: {path} does not take the 1x8x8 inputs of digits, the default evaluation data {why}; "
                    "pass the dataset it was trained on with --dataset (and --data-dir)")  # was: a hint to --input-shape
    line = one_error(invoke(command, path, "--dataset", "digits", *extra), 1)
    assert line == (f"error: {path} does not take the 1x8x8 inputs of digits {why}; pass the dataset it was trained "
                    "on with --dataset (and --data-dir)")


def test_a_compare_model_for_other_data_is_refused_before_any_circuit_search(trained, tmp_path, monkeypatch):
    """`circuits digits.pt --compare mnist.pt` told the user to pass --dataset (which breaks MODEL instead), and
    only after MODEL's circuits had been searched."""
    spec = {"name": "mlp", "kwargs": {"in_features": 784, "hidden": [16]}}
    other = tmp_path / "mnist-mlp.pt"
    save_checkpoint(other, build_model(spec), arch=spec)
    monkeypatch.setattr(graphinterp, "extract_circuits", lambda *a, **k: pytest.fail("searched before checking"))
    line = one_error(invoke("circuits", trained, "--compare", other, *FAST_CIRCUITS), 1)
    assert line.startswith(f"error: {other} (--compare) does not take the 1x8x8 inputs of digits, which {trained} is "
                           "evaluated on (running it failed with")
    assert line.endswith(f"; --compare needs a model trained on the same data as {trained}")
    ten_to_three = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "num_classes": 3}}
    save_checkpoint(other, build_model(ten_to_three), arch=ten_to_three)
    line = one_error(invoke("circuits", trained, "--compare", other, *FAST_CIRCUITS), 1)
    assert line == (f"error: {other} (--compare) has 3 outputs but digits has 10 classes; --compare needs a model "
                    f"of the same task as {trained}")


@pytest.mark.parametrize("command", ["ablate", "circuits"])
def test_limit_above_the_evaluation_data_is_noted(command, trained):
    extra = FAST_CIRCUITS if command == "circuits" else ()
    n = len(load_dataset("digits", split="test"))
    res = invoke(command, trained, "--limit", n + 1, "--json", *extra)
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert f"--limit {n + 1} is above the {n:,} examples of digits test; all {n:,} are used" in out["notes"]
    res = invoke(command, trained, "--limit", n, *extra)  # at the size: every example, nothing to note
    assert res.exit_code == 0 and "--limit" not in res.stdout


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    corpus, lm = d / "c.txt", d / "lm.pt"
    corpus.write_text("to be or not to be, that is the question. " * 60)
    train_transformer(TransformerConfig(task="chars", corpus=str(corpus), n_ctx=8, batch_size=8, d_model=16, n_heads=2,
                                        d_mlp=32, n_layers=1, k=2, warmup_steps=2, steps=4, eval_every=4,
                                        eval_windows=4, quiet=True), checkpoint=lm)
    return lm, corpus


@pytest.mark.parametrize("command", ["ablate", "circuits", "associate"])
def test_every_evaluation_report_leads_with_the_graphs_coverage(command, trained):
    """README: every report starts with the graph's coverage; ablate, circuits and associate printed none (and their
    JSON had no coverage), even for a transformer whose graph leaves its embeddings out."""
    extra = {"circuits": FAST_CIRCUITS, "associate": ("--null-copies", "2", "-q")}.get(command, ("-q",))
    res = invoke(command, trained, *extra)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines()[0] == "coverage: 3,392 of 3,392 weights in the graph (100.0%)"
    out = json.loads(invoke(command, trained, "--json", *extra).stdout)
    assert out["coverage"]["covered_weights"] == out["coverage"]["total_weights"] == 3392


@pytest.mark.parametrize("command", ["ablate", "circuits"])
def test_a_transformers_report_says_what_its_graph_leaves_out(command, char_lm):
    lm, _ = char_lm
    extra = ("--labels", "0", "--max-evals", "5", "-q") if command == "circuits" else ("-q",)
    res = invoke(command, lm, *extra)
    assert res.exit_code == 0, res.stderr
    first, second = res.stdout.splitlines()[:2]
    assert first.startswith("coverage: ") and "(100.0%)" not in first and second.startswith("not covered: Embedding")
    out = json.loads(invoke(command, lm, "--json", *extra).stdout)
    assert out["coverage"]["covered_weights"] < out["coverage"]["total_weights"]


def test_ablate_evaluates_a_character_lm_on_every_window_of_its_text(char_lm):
    lm, corpus = char_lm
    val = load_corpus(str(corpus)).val
    windows = (len(val) - 1) // 8  # non-overlapping windows of n_ctx = 8, each predicting all 8 positions
    assert windows > 4  # more than the 4 its training evaluated on (it used to stop there, silently)
    out = json.loads(invoke("ablate", lm, "--json", "-q").stdout)
    assert (out["n_examples"], out["n_predictions"]) == (windows, 8 * windows)
    assert not [n for n in out["notes"] if "--limit" in n]
    out = json.loads(invoke("ablate", lm, "--json", "--limit", 3).stdout)
    assert (out["n_examples"], out["n_predictions"], sum(out["counts"])) == (3, 24, 24)  # counts per class, as an MLP's
    out = json.loads(invoke("ablate", lm, "--json", "--limit", windows + 5).stdout)
    assert out["n_examples"] == windows
    assert out["notes"][0] == (f"--limit {windows + 5} is above the {windows} windows of 8 characters in the val "
                               f"text; all {windows} are used")
    assert out["notes"][1:] == [n for n in out["notes"] if "not clearly better than chance" in n]  # 4 steps of training


def test_circuits_notes_a_limit_above_a_character_lms_windows(char_lm):
    lm, _ = char_lm
    out = json.loads(invoke("circuits", lm, "--labels", "e", "--max-evals", "5", "--limit", 10 ** 6, "--json").stdout)
    (note,) = [n for n in out["notes"] if n.startswith("--limit")]  # beside the note that the windows overlap
    assert note.startswith("--limit 1000000 is above the ") and note.endswith(" are used")
    assert "next-character windows of the val text" in note


def test_a_circuit_search_evaluates_at_most_max_evals_candidates(trained):
    """n_evals counts what --max-evals caps (it also counted the full model and the final circuit: 21 of 20)."""
    out = json.loads(invoke("circuits", trained, "--labels", "0", "--max-evals", 7, "--json", "-q").stdout)
    (circuit,) = out["circuits"]
    assert (circuit["n_evals"], circuit["converged"]) == (7, False)


def test_a_transformers_ecs_figure_says_its_fraction_is_of_the_mlp_blocks(char_lm, trained, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(graphinterp, "plot_ecs_per_label", lambda *a, **kw: seen.append(kw["weights"]))
    lm, _ = char_lm
    for model in (lm, trained):
        labels = "e" if model == lm else "0"
        res = invoke("circuits", model, "--labels", labels, "--max-evals", 5, "-q", "--plot", tmp_path / "f.png")
        assert res.exit_code == 0, res.stderr
    assert seen == ["the MLP blocks' non-zero weights", "the model's non-zero weights"]
    # the authors' search prunes Linear layers only: a CNN's figure said "the model's" (from the review)
    res = invoke("circuits", trained, "--labels", "0", "-q", "--mode", "authors", "--plot",
                 tmp_path / "g.png")
    assert res.exit_code == 0, res.stderr
    assert seen[-1] == "the Linear layers' non-zero weights"


def test_results_of_a_model_at_chance_carry_a_caveat(tmp_path, trained):
    spec = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16, 16]}}
    torch.manual_seed(0)
    untrained = tmp_path / "untrained.pt"
    save_checkpoint(untrained, build_model(spec), arch=spec)
    notes = [n for n in json.loads(invoke("ablate", untrained, "--k", 2, "--json", "-q").stdout)["notes"]
             if "chance" in n]
    assert len(notes) == 1 and notes[0].startswith("the model is not clearly better than chance here (accuracy ")
    assert "its clusters' ON/OFF accuracies describe noise" in notes[0]
    notes = [n for n in json.loads(invoke("ablate", untrained, "--neurons", "fc1:0-3", "--json").stdout)["notes"]
             if "chance" in n]
    assert len(notes) == 1 and "the accuracies with these neurons ablated describe noise" in notes[0]
    assert json.loads(invoke("ablate", trained, "--json", "-q").stdout)["notes"] == [
        f"evaluating on digits, the dataset {trained} was trained on (--dataset chooses another)"]


# ----------------------------------------------------------------------------- third walkthrough
def test_naming_the_dataset_a_checkpoint_was_trained_on_keeps_its_folder(trained, tmp_path, recorded_loads):
    model = _retarget(trained, tmp_path / "fm.pt", "fashion-mnist", str(tmp_path / "where"))
    out = json.loads(invoke("ablate", model, "--dataset", "fashion-mnist", "--json", "-q").stdout)
    assert recorded_loads == [("fashion-mnist", str(tmp_path / "where"))]  # was: the default folder
    assert out["notes"] == [f"reading fashion-mnist from {tmp_path / 'where'}, where {model} was trained on it "
                            "(--data-dir chooses another folder)"]


@pytest.mark.parametrize("command", ["ablate", "circuits"])
def test_a_data_folder_for_the_built_in_digits_is_refused(command, trained, tmp_path):
    line = one_error(invoke(command, trained, "--data-dir", tmp_path), 2)
    assert line.startswith("error: --data-dir does not apply to digits (built in, read from no folder)")


def test_inputs_are_standardised_unless_asked_and_a_foreign_model_gets_a_note(trained, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(graphinterp, "load_dataset", lambda name, split="test", data_dir=None, normalize=True:
                        seen.append(normalize) or load_dataset("digits", split=split, normalize=normalize))
    spec = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16, 16]}}
    foreign = tmp_path / "foreign.pt"
    save_checkpoint(foreign, build_model(spec), arch=spec)  # not written by graphinterp train: no training settings
    notes = json.loads(invoke("ablate", foreign, "--k", 2, "--json", "-q").stdout)["notes"]
    assert seen == [True] and any(n.startswith(f"{foreign} records no training by `graphinterp train`: its inputs "
                                               "are standardised as that trains on digits ((x - 0.3054) / 0.3761")
                                  and n.endswith("pass --inputs unit") for n in notes)
    notes = json.loads(invoke("ablate", foreign, "--k", 2, "--json", "-q", "--inputs", "unit").stdout)["notes"]
    assert seen == [True, False] and not any("graphinterp" in n for n in notes)
    notes = json.loads(invoke("ablate", trained, "--json", "-q", "--inputs", "unit").stdout)["notes"]
    assert f"{trained} was trained by graphinterp on standardised inputs; --inputs unit gives it pixels in [0, 1], " \
           "which it never saw" in notes


def test_classes_without_an_example_are_named(tmp_path):
    spec = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16, 16]}}
    model = tmp_path / "m.pt"
    save_checkpoint(model, build_model(spec), arch=spec)
    y = load_dataset("digits", split="test").subset(12, seed=0).y
    missing = sorted(set(range(10)) - set(y.tolist()))
    assert missing  # 12 examples cannot hold the 10 classes evenly; the seed leaves some out
    out = json.loads(invoke("ablate", model, "--k", 2, "--limit", 12, "--json", "-q").stdout)
    assert f"{len(missing)} class(es) without an example in the 12 examples, left out of the table: " \
           f"{', '.join(map(str, missing))}" in out["notes"]
    assert out["classes"] == [str(c) for c in range(10) if c not in missing]


def test_a_character_lms_classes_without_an_example_are_named_not_minus_one(char_lm):
    lm, _ = char_lm
    res = invoke("ablate", lm, "--limit", 2, "-q")
    assert res.exit_code == 0, res.stderr
    assert "-1.000" not in res.stdout.split()  # a class without examples was a column of -1.000
    assert any(line.startswith("note: ") and "without an example in the 2 windows, left out of the table" in line
               for line in res.stdout.splitlines())
    assert "does not apply" in one_error(invoke("ablate", lm, "--inputs", "unit"), 2)


def test_reading_a_checkpoint_of_another_format_does_not_warn(tmp_path):
    import warnings

    from torch import nn

    from graphinterp.cli._eval_data import read_checkpoint

    path = tmp_path / "ts.pt"
    torch.jit.script(nn.Sequential(nn.Linear(4, 2))).save(str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_checkpoint(str(path)) is None
    assert not caught  # torch's "looks like a TorchScript archive" came before the command's own error line


def test_warnings_are_one_line_while_a_command_runs():
    import warnings

    from graphinterp.cli._interrupts import command_frame

    with command_frame():
        text = warnings.formatwarning("loading x with weights_only=False", UserWarning, "/a/b.py", 3, "code")
        two = warnings.formatwarning("TypedStorage is deprecated.\nIt will be removed", UserWarning, "/a.py", 1)
    assert text == "warning: loading x with weights_only=False\n"
    assert two == "warning: TypedStorage is deprecated. It will be removed\n"  # torch's messages span lines
    assert "UserWarning" in warnings.formatwarning("m", UserWarning, "/a/b.py", 3, "code")  # restored after


def test_json_output_is_strict_even_with_nan(capsys):
    """--json of every command goes through emit_json: a NaN (a diverged loss, an undefined accuracy) is null."""
    import numpy as np

    from graphinterp.cli._output import emit_json

    emit_json({"loss": float("nan"), "acc": np.array([0.5, np.inf]), "ok": 1.0})
    assert json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {
        "loss": None, "acc": [0.5, None], "ok": 1.0}



class WithUnused(torch.nn.Module):
    """A digits MLP holding a layer its forward never uses: its graph covers part of the model."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
        self.unused = torch.nn.Linear(32, 32)

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("command", ["ablate", "circuits"])
def test_ablate_and_circuits_say_what_the_graph_does_not_cover(command, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "partial.pt"
    torch.save(WithUnused(), path)
    extra = FAST_CIRCUITS if command == "circuits" else ("--k", 2, "-q")
    out = json.loads(invoke(command, path, "--trust-pickle", "--json", *extra).stdout)
    (note,) = [n for n in out["notes"] if "not covered" in n]
    assert note.startswith(f"{path}: coverage: 1,440 of 2,464 weights in the graph (58.4%); not covered: Linear ")
    assert "only the layers in the graph are ablated or pruned" in note
    assert note.endswith("a circuit's ECS counts the graph's weights only (the 1,024 outside it are kept whole)")
    spec = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16, 16]}}
    save_checkpoint(tmp_path / "whole.pt", build_model(spec), arch=spec)  # complete: nothing to say
    out = json.loads(invoke("ablate", tmp_path / "whole.pt", "--k", 2, "--json", "-q").stdout)
    assert not [n for n in out["notes"] if "coverage" in n]


@pytest.mark.parametrize("command", ["ablate", "circuits"])
def test_inputs_chooses_the_preprocessing_of_the_evaluation_data(command, trained, monkeypatch):
    """--inputs standardised (the default) or unit reaches the data loader for both commands (circuits once
    ignored it and always searched raw pixels, so its accuracies described inputs the model never saw)."""
    seen = []

    def fake(name, split="test", data_dir=None, normalize=True, **kwargs):
        seen.append(normalize)
        return load_dataset("digits", split=split, normalize=normalize)

    monkeypatch.setattr(graphinterp, "load_dataset", fake)
    extra = FAST_CIRCUITS if command == "circuits" else ()
    assert invoke(command, trained, "--json", *extra).exit_code == 0
    res = invoke(command, trained, "--inputs", "unit", "--json", *extra)
    assert res.exit_code == 0 and seen == [True, False]
    assert any("--inputs unit gives it pixels" in n for n in json.loads(res.stdout)["notes"])
