"""``graphinterp train`` after a new-user walkthrough: --out never an input, every E beside its baseline,
absolute data paths in checkpoints, options digits ignores refused, a note when --resume starts afresh, and
error lines that name the command's flags."""
from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch

from _cli_helpers import invoke, one_error, usage_error

DIGITS = ("--dataset", "digits", "--max-train", "128", "--device", "cpu")
TINY = ("--warmup-epochs", "1", "--epochs", "1")
CHARS = ("--dataset", "chars", "--warmup-steps", "1", "--steps", "1", "--device", "cpu")
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def _corpus(folder, name="small.txt"):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEXT, encoding="utf-8")
    return path


def _json(res):
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _saved_config(path):
    return torch.load(path, weights_only=False)["train_state"]["config"]


# ---------------------------------------------------------------- 1. --out is never an input


def test_out_that_is_the_corpus_is_refused_and_the_text_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _corpus(tmp_path)
    res = invoke("train", *CHARS, "--corpus", "small.txt", "--out", "small.txt", "-q")
    assert usage_error(res) == ("Invalid value for --out: small.txt is also an input; writing it would destroy "
                                "small.txt: choose another output")
    assert (tmp_path / "small.txt").read_text(encoding="utf-8") == TEXT


def test_out_that_is_the_default_corpus_under_data_dir_is_refused(tmp_path):
    corpus = _corpus(tmp_path / "tinyshakespeare", "input.txt")
    res = invoke("train", *CHARS, "--data-dir", tmp_path, "--out", corpus, "-q")
    assert "is also an input" in usage_error(res)
    assert corpus.read_text(encoding="utf-8") == TEXT


# ---------------------------------------------------------------- 2. E beside E_random and the score


def _check_scores(row, E="E", E_random="E_random", score="score"):
    from graphinterp.clustering.metrics import normalized_score

    assert 0 < row[E_random] < 1
    assert row[score] == pytest.approx(normalized_score(row[E], row[E_random]))


def test_json_gives_E_random_and_score_per_epoch_per_layer_and_final(tmp_path):
    from graphinterp.clustering.labels import stored_clustering
    from graphinterp.clustering.metrics import random_partition_expectation

    data = _json(invoke("train", *DIGITS, *TINY, "--out", tmp_path / "m.pt", "--json"))
    for row in data["history"]:
        _check_scores(row)
    final = data["final"]
    _check_scores(final)
    assert set(final["E_per_layer"]) == set(final["E_random_per_layer"]) == set(final["score_per_layer"]) == {"fc2"}
    clustering = stored_clustering(final["clustering"])
    # one clustered layer: its E_random is the random-partition expectation of its cluster sizes
    expected = random_partition_expectation(*clustering.labels("fc2"), clustering.k)
    assert final["E_random_per_layer"]["fc2"] == pytest.approx(expected)
    assert final["E_random"] == pytest.approx(expected)
    assert data["history"][-1]["E_random"] == pytest.approx(expected)


def test_text_output_shows_E_random_and_score(tmp_path):
    res = invoke("train", *DIGITS, *TINY, "--out", tmp_path / "m.pt")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["epoch", "phase", "loss", "CE", "L_E", "E", "E_rand", "score", "test", "acc",
                                "time", "(s)"]
    assert "E_random" in res.stdout.split("layer", 1)[1].splitlines()[0]
    assert re.fullmatch(r"final test accuracy \d\.\d{4}; E = \d\.\d{4} \(E_random \d\.\d{4}, score -?\d\.\d{4}\); "
                        r"checkpoint: .*m\.pt", lines[-1])


def test_the_baseline_run_reports_the_refit_clusterings_baseline(tmp_path):
    data = _json(invoke("train", *DIGITS, *TINY, "--lambda", "0", "--out", tmp_path / "m.pt", "--json"))
    last, final = data["history"][-1], data["final"]
    _check_scores(last, "E_refit", "E_random_refit", "score_refit")
    assert (final["E"], final["E_random"], final["score"]) == (last["E_refit"], last["E_random_refit"],
                                                               last["score_refit"])


def test_transformer_json_and_text_show_E_random_and_score(tmp_path):
    corpus = _corpus(tmp_path)
    data = _json(invoke("train", *CHARS, "--corpus", corpus, "--out", tmp_path / "c.pt", "--json"))
    _check_scores(data["history"][-1])
    final = data["final"]
    _check_scores(final)
    assert set(final["E_random_per_block"]) == set(final["E_per_block"]) == {"blocks.0.mlp", "blocks.1.mlp"}
    for name, E in final["E_per_block"].items():
        assert 0 < final["E_random_per_block"][name] < 1
    res = invoke("train", *CHARS, "--corpus", corpus, "--out", tmp_path / "c2.pt")
    assert res.exit_code == 0, res.stderr
    header = next(line for line in res.stdout.splitlines() if line.startswith("step  phase"))
    assert header.split()[:7] == ["step", "phase", "CE", "L_E", "E", "E_rand", "score"]
    # the progress line of each evaluation, too
    assert re.search(r"^step 2/2 \[modular\] ce \S+ E \d\.\d{4} \(E_random \d\.\d{4}, score -?\d\.\d{4}\) ", res.stdout,
                     re.M)
    assert re.search(r"; E = \d\.\d{4} \(E_random \d\.\d{4}, score -?\d\.\d{4}\); checkpoint:", res.stdout)


# ---------------------------------------------------------------- 3. absolute data paths in checkpoints


def _write_cifar_python(root, n=4):
    """A tiny CIFAR-10 in the python-batches layout (random pixels)."""
    from graphinterp.data.datasets import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"batch_label": fname, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, n)], "filenames": [f"{i}.png" for i in range(n)]}
        (folder / fname).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES), "num_vis": 3072}))


def test_a_relative_data_dir_is_stored_absolute_and_the_model_evaluates_from_elsewhere(tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _write_cifar_python(work / "cifar")
    monkeypatch.chdir(work)
    cifar = ("--dataset", "cifar10", "--data-dir", "cifar", "--warmup-epochs", "0", "--device", "cpu", "-q")
    res = invoke("train", *cifar, "--epochs", "1", "--out", "m.pt")
    assert res.exit_code == 0, res.stderr
    assert _saved_config(work / "m.pt")["data_dir"] == str(work / "cifar")
    # resuming with the same relative path from the same folder continues the run
    res = invoke("train", *cifar, "--epochs", "2", "--out", "m.pt", "--resume")
    assert res.exit_code == 0, res.stderr
    monkeypatch.chdir(elsewhere)
    res = invoke("ablate", work / "m.pt", "--device", "cpu")
    assert res.exit_code == 0, res.stderr


def test_an_old_checkpoint_with_a_relative_corpus_still_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _corpus(tmp_path)
    res = invoke("train", *CHARS, "--corpus", "small.txt", "--out", "c.pt", "-q")
    assert res.exit_code == 0, res.stderr
    ckpt = torch.load(tmp_path / "c.pt", weights_only=False)
    assert ckpt["train_state"]["config"]["corpus"] == str(tmp_path / "small.txt")
    ckpt["train_state"]["config"]["corpus"] = "small.txt"  # as written before paths were stored absolute
    torch.save(ckpt, tmp_path / "c.pt")
    res = invoke("train", *CHARS[:-2], "--steps", "2", "--device", "cpu", "--corpus", "small.txt", "--out", "c.pt",
                 "--resume", "--json")
    assert [row["step"] for row in _json(res)["history"]] == [1, 2, 3]  # 1: the end of the warm-up


# ---------------------------------------------------------------- 4. digits is built in


@pytest.mark.parametrize("args, flag", [(["--data-dir", "/nonexistent"], "--data-dir"), (["--download"], "--download")])
def test_data_dir_and_download_do_not_apply_to_digits(tmp_path, args, flag):
    res = invoke("train", *DIGITS, *TINY, *args, "--out", tmp_path / "m.pt", "-q")
    assert usage_error(res) == (f"{flag} does not apply to --dataset digits (built in, read from no folder; trained "
                                f"in epochs by --model mlp or cnn); leave {flag} out")
    assert not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------- 5. --resume without a checkpoint


@pytest.mark.parametrize("args", [DIGITS + TINY, CHARS])
def test_resume_without_a_checkpoint_says_it_starts_a_new_run(tmp_path, args):
    out = tmp_path / "new.pt"
    corpus = ("--corpus", _corpus(tmp_path)) if "chars" in args else ()
    res = invoke("train", *args, *corpus, "--out", out, "--resume", "--json")
    note = f"{out} does not exist yet: starting a new run"
    assert f"note: {note}" in res.stderr.splitlines()
    assert note in _json(res)["notes"]
    out2 = tmp_path / "new2.pt"  # no note without --resume
    res = invoke("train", *args, *corpus, "--out", out2, "--json")
    assert "does not exist yet" not in res.stderr and _json(res)["notes"] == []


# ---------------------------------------------------------------- 6. messages in the command's words


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "m.pt"
    res = invoke("train", *DIGITS, "--warmup-epochs", "1", "--epochs", "2", "--out", out, "-q")
    assert res.exit_code == 0, res.stderr
    return out


def test_resume_past_the_epochs_asked_for_says_what_to_ask_for(trained):
    res = invoke("train", *DIGITS, "--warmup-epochs", "1", "--epochs", "1", "--out", trained, "--resume")
    assert one_error(res, 1) == (f"error: {trained} already has 3 epochs, more than the 2 requested (--warmup-epochs "
                                 "1 + --epochs 1); ask for at least 3 in all (e.g. --epochs 2) or train into another "
                                 "--out")


def test_resume_of_a_finished_run_says_there_is_nothing_to_train(trained):
    """It printed the stored results with exit 0 and nothing said that no epoch was trained."""
    before = trained.read_bytes()
    res = invoke("train", *DIGITS, "--warmup-epochs", "1", "--epochs", "2", "--out", trained, "--resume", "--json")
    note = f"{trained} has already trained all 3 epochs asked for: nothing to train"
    assert res.exit_code == 0 and any(line.startswith(f"note: {note}") for line in res.stderr.splitlines())
    assert any(n.startswith(note) for n in _json(res)["notes"]) and len(_json(res)["history"]) == 3
    assert trained.read_bytes() == before  # nothing rewritten


def test_resume_with_other_settings_names_the_flags_and_values(trained):
    res = invoke("train", *DIGITS, "--warmup-epochs", "1", "--epochs", "3", "--lambda", "5", "--k", "3",
                 "--out", trained, "--resume")
    assert one_error(res, 1) == (f"error: cannot resume {trained}: it was trained with other settings (--k was 4, "
                                 "now 3; --lambda (lam) was 20.0, now 5.0); use the same settings or train into "
                                 "another --out")


def test_transformer_resume_with_other_settings_names_the_flags_and_values(tmp_path):
    corpus = _corpus(tmp_path)
    out = tmp_path / "c.pt"
    assert invoke("train", *CHARS, "--corpus", corpus, "--out", out, "-q").exit_code == 0
    res = invoke("train", *CHARS, "--corpus", corpus, "--out", out, "--resume", "--lambda", "3", "-q")
    assert one_error(res, 1) == (f"error: cannot resume {out}: it was trained with other settings (--lambda (lam) "
                                 "was 20.0, now 3.0); use the same settings or train into another --out")


def test_every_flag_named_in_messages_is_an_option_of_train():
    from graphinterp.cli.train import command
    from graphinterp.training.settings import SETTING_FLAGS

    opts = {opt for p in command.params for opt in p.opts}
    assert set(SETTING_FLAGS.values()) <= opts


def test_a_checkpoint_written_inside_the_data_folder_can_be_resumed_and_rerun(tmp_path):
    """train may write a new checkpoint inside --data-dir; resuming it (what the Ctrl-C message advises) or
    rerunning onto it was refused as 'a file inside the data folder'. A data file there still is (test above)."""
    _corpus(tmp_path / "tinyshakespeare", "input.txt")
    out = tmp_path / "tinyshakespeare" / "run.pt"
    first = invoke("train", *CHARS, "--data-dir", tmp_path, "--out", out, "-q")
    assert first.exit_code == 0, first.stderr
    res = invoke("train", "--dataset", "chars", "--warmup-steps", "1", "--steps", "2", "--device", "cpu",
                 "--data-dir", tmp_path, "--out", out, "--resume", "-q")
    assert res.exit_code == 0, res.stderr
    assert _saved_config(out)["steps"] == 2
    res = invoke("train", *CHARS, "--data-dir", tmp_path, "--out", out, "-q")
    assert res.exit_code == 0 and "this new run replaces it" in res.stderr, res.stderr
