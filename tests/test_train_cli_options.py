"""``graphinterp train`` refuses, before any training, every option that the chosen --dataset's kind of training
would ignore (one table in cli/train.py, both directions), never an option left at its default; and a transformer
run resumed from a checkpoint with more steps than asked for is refused as the MLP one is."""
from __future__ import annotations


import pytest

from _cli_helpers import invoke, one_error, usage_error

MODADD = "(a generated transformer task, trained full-batch in steps)"
CHARS = "(a transformer task trained in steps)"
EPOCHS = "(trained in epochs by --model mlp or cnn)"
DIGITS = "(built in, read from no folder; trained in epochs by --model mlp or cnn)"


@pytest.mark.parametrize("args, line", [
    # MLP/CNN options given to a transformer task
    (["--dataset", "modadd", "--epochs", "3"], f"--epochs does not apply to --dataset modadd {MODADD}; use --steps"),
    (["--dataset", "chars", "--epochs", "3"], f"--epochs does not apply to --dataset chars {CHARS}; use --steps"),
    (["--dataset", "modadd", "--warmup-epochs", "2"],
     f"--warmup-epochs does not apply to --dataset modadd {MODADD}; use --warmup-steps"),
    (["--dataset", "modadd", "--max-train", "5"],
     f"--max-train does not apply to --dataset modadd {MODADD}; modadd trains on a fixed 30% of the pairs; "
     "leave --max-train out"),
    (["--dataset", "chars", "--max-train", "5"],
     f"--max-train does not apply to --dataset chars {CHARS}; train on a shorter --corpus FILE instead"),
    (["--dataset", "modadd", "--download"], f"--download does not apply to --dataset modadd {MODADD}; leave --download out"),
    (["--dataset", "chars", "--download"],
     f"--download does not apply to --dataset chars {CHARS}; pass the text with --corpus FILE instead"),
    (["--dataset", "modadd", "--data-dir", "."], f"--data-dir does not apply to --dataset modadd {MODADD}; leave --data-dir out"),
    (["--dataset", "modadd", "--layers", "fc1"],
     f"--layers does not apply to --dataset modadd {MODADD}; every MLP block is clustered; leave --layers out"),
    (["--dataset", "modadd", "--batch-size", "8"],
     f"--batch-size does not apply to --dataset modadd {MODADD}; leave --batch-size out"),
    # given explicitly at its default value, it is still an option the run would ignore
    (["--dataset", "modadd", "--epochs", "10"], f"--epochs does not apply to --dataset modadd {MODADD}; use --steps"),
    # transformer options given to an MLP/CNN dataset: the same table, the same words
    (["--dataset", "digits", "--steps", "5"], f"--steps does not apply to --dataset digits {DIGITS}; use --epochs"),
    (["--dataset", "digits", "--warmup-steps", "5"],
     f"--warmup-steps does not apply to --dataset digits {DIGITS}; use --warmup-epochs"),
    (["--dataset", "mnist", "--model", "cnn", "--weight-decay", "0.1"],
     f"--weight-decay does not apply to --dataset mnist {EPOCHS}; mlp and cnn train with Adam, without weight "
     "decay; leave --weight-decay out"),
])
def test_an_option_the_run_would_ignore_is_refused(tmp_path, args, line):
    out = tmp_path / "m.pt"
    fast = ["--warmup-steps", "0", "--steps", "1"] if "modadd" in args else []  # should the option not be refused
    res = invoke("train", *args, *fast, "--out", out, "--device", "cpu")
    assert usage_error(res) == line
    assert not out.exists()


@pytest.mark.parametrize("dataset", [None, "digits", "modadd"])
def test_a_corpus_without_dataset_chars_says_to_add_it_not_to_use_epochs(tmp_path, dataset):
    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be " * 50)
    args = ["--dataset", dataset] if dataset else []
    # --steps too: the corpus, which shows what the user meant, is named, not --steps
    res = invoke("train", *args, "--corpus", corpus, "--steps", "1", "--out", tmp_path / "m.pt")
    described = {"modadd": MODADD, "mnist": EPOCHS}.get(dataset, DIGITS)
    assert usage_error(res) == (f"--corpus does not apply to --dataset {dataset or 'digits'} {described}; "
                                "--corpus FILE is the text of --dataset chars; use that dataset or leave --corpus out")


def test_data_dir_with_a_corpus_is_refused(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be " * 50)
    res = invoke("train", "--dataset", "chars", "--corpus", corpus, "--data-dir", tmp_path, "--out", tmp_path / "m.pt")
    assert usage_error(res) == ("--data-dir does not apply with --corpus FILE (it only locates the default corpus, "
                                "<data-dir>/tinyshakespeare/input.txt); leave one of them out")


@pytest.mark.parametrize("args, line", [
    # defaults of the options of the other kind (--epochs 10, --warmup-epochs 1, no --download) are not refused:
    # each run gets as far as its own settings check
    (["--dataset", "modadd", "--steps", "0", "--warmup-steps", "0"], "--warmup-steps + --steps must be at least 1, got 0 + 0; "
     "train for at least one step"),
    (["--dataset", "digits", "--epochs", "0", "--warmup-epochs", "0"], "--warmup-epochs + --epochs must be at least 1, got 0 + 0; "
     "train for at least one epoch"),
    # --data-dir still locates chars' default corpus
    (["--dataset", "chars", "--data-dir", "DIR"],
     "corpus file DIR/tinyshakespeare/input.txt not found; pass a UTF-8 text file with --corpus FILE (or put Tiny "
     "Shakespeare at <data-dir>/tinyshakespeare/input.txt)"),
])
def test_options_left_at_their_defaults_are_not_refused(tmp_path, args, line):
    args = [str(tmp_path) if a == "DIR" else a for a in args]
    res = invoke("train", *args, "--out", tmp_path / "m.pt", "--device", "cpu")
    # a setting out of range is a usage error (exit 2); a missing file is not (exit 1)
    said = usage_error(res) if "DIR" not in line else one_error(res, 1)[len("error: "):]
    assert said == line.replace("DIR", str(tmp_path))


def test_resuming_a_transformer_past_the_steps_asked_for_is_refused(tmp_path):
    from graphinterp.training.train_transformer import TransformerConfig, train_transformer

    out = tmp_path / "modadd.pt"  # the settings of `train --dataset modadd --warmup-steps 1 --steps 1`
    train_transformer(TransformerConfig(task="modadd", warmup_steps=1, steps=1, device="cpu", quiet=True), checkpoint=out)
    before = out.read_bytes()
    # it was: exit 0 and the 2-step model reported as the 1-step run
    res = invoke("train", "--dataset", "modadd", "--warmup-steps", "1", "--steps", "0", "--out", out, "--resume",
                 "--device", "cpu")
    assert one_error(res, 1) == (f"error: {out} already has 2 steps, more than the 1 requested (--warmup-steps 1 + "
                                 "--steps 0); ask for at least 2 in all (e.g. --steps 1) or train into another --out")
    assert out.read_bytes() == before


def test_resuming_a_character_lm_on_a_text_with_other_characters_is_refused(tmp_path):
    from graphinterp.training.train_transformer import TransformerConfig, train_transformer

    first, other, out = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "lm.pt"
    first.write_text("abcd efgh " * 100)
    other.write_text("ijkl mnop " * 100)  # as many characters: the same model, each id another character
    train_transformer(TransformerConfig(task="chars", corpus=str(first), warmup_steps=1, steps=1, device="cpu",
                                        quiet=True), checkpoint=out)
    before = out.read_bytes()
    # it was: exit 0, the model trained on in the other text's ids
    res = invoke("train", "--dataset", "chars", "--corpus", other, "--warmup-steps", "1", "--steps", "2", "--out", out,
                 "--resume", "--device", "cpu")
    line = one_error(res, 1)
    assert line.startswith(f"error: cannot resume {out}: corpus {other} has 9 distinct characters, as many as {out} "
                           "was trained on, but not the same ones; ")  # it said "9 ... but trained on 9"
    assert "characters the model never saw: 'ijklmnop'" in line and line.endswith("pass its training text with --corpus")
    assert out.read_bytes() == before


def test_resuming_a_character_lm_on_another_text_with_the_same_characters_is_refused(tmp_path):
    """The vocabulary check passed, so the run went on on another text (its history mixing two validation sets)."""
    from graphinterp.training.train_transformer import TransformerConfig, train_transformer

    first, other, moved, out = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "moved.txt", tmp_path / "lm.pt"
    first.write_text("abcd efgh " * 100)
    other.write_text("hgfe dcba " * 100)  # the same characters, another text
    moved.write_text(first.read_text())
    train_transformer(TransformerConfig(task="chars", corpus=str(first), warmup_steps=1, steps=1, device="cpu",
                                        quiet=True), checkpoint=out)
    before = out.read_bytes()
    res = invoke("train", "--dataset", "chars", "--corpus", other, "--warmup-steps", "1", "--steps", "2", "--out", out,
                 "--resume", "--device", "cpu")
    assert one_error(res, 1) == (f"error: cannot resume {out}: it was trained on another text than {other} (same "
                                 "characters, other content); pass its training text with --corpus")
    assert out.read_bytes() == before
    # the same text under another name resumes
    res = invoke("train", "--dataset", "chars", "--corpus", moved, "--warmup-steps", "1", "--steps", "2", "--out", out,
                 "--resume", "--device", "cpu", "-q")
    assert res.exit_code == 0, res.stderr


def test_out_onto_a_file_of_the_data_folder_is_refused(tmp_path):
    """--out inside --data-dir overwrote MNIST's label file (the next run found the dataset damaged)."""
    data = tmp_path / "data" / "MNIST" / "raw"
    data.mkdir(parents=True)
    target = data / "t10k-labels-idx1-ubyte"
    target.write_bytes(b"labels")
    res = invoke("train", "--dataset", "mnist", "--data-dir", tmp_path / "data", "--out", target, "--device", "cpu")
    assert "is a file inside" in usage_error(res) and target.read_bytes() == b"labels"


@pytest.mark.parametrize("layers, line", [
    ("", "Invalid value for --layers: no layer named; give comma-separated layer names"),
    (",", "Invalid value for --layers: no layer named; give comma-separated layer names"),
])
def test_an_empty_layer_list_is_refused_not_read_as_the_default(tmp_path, layers, line):
    res = invoke("train", "--dataset", "digits", "--layers", layers, "--out", tmp_path / "m.pt", "--device", "cpu")
    assert usage_error(res) == line


def test_a_layer_named_twice_is_refused(tmp_path):
    """fc2,fc2 clustered fc2 twice, the second overwriting the first: another E than --layers fc2."""
    res = invoke("train", "--dataset", "digits", "--layers", "fc2,fc2", "--out", tmp_path / "m.pt", "--device", "cpu")
    assert usage_error(res) == "--layers names fc2 more than once; give each layer once"


def test_a_new_run_onto_an_existing_checkpoint_says_it_replaces_it(tmp_path):
    out = tmp_path / "m.pt"
    args = ("train", "--dataset", "digits", "--warmup-epochs", "0", "--epochs", "1", "--out", out, "--device", "cpu",
            "-q")
    assert invoke(*args).exit_code == 0
    res = invoke(*args)
    assert res.exit_code == 0 and f"note: {out} exists: this new run replaces it" in res.stderr


def test_a_character_lm_is_evaluated_on_every_held_out_window_by_default(tmp_path):
    """The test loss and accuracy were those of the first 256 windows (7% of Tiny Shakespeare's), unsaid."""
    from graphinterp.training.train_transformer import TransformerConfig, task_data

    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 1000)
    cfg = TransformerConfig(task="chars", corpus=str(corpus), n_ctx=8).validate()
    x, _ = task_data(cfg)["test"]
    val = task_data(cfg)["corpus"].val
    assert len(x) == (len(val) - 1) // 8 > 256


def test_out_onto_a_file_of_the_default_data_folder_is_refused(tmp_path, monkeypatch):
    """Without --data-dir the default folder ($GRAPHINTERP_DATA_DIR) was not checked."""
    data = tmp_path / "data" / "MNIST" / "raw"
    data.mkdir(parents=True)
    target = data / "t10k-labels-idx1-ubyte"
    target.write_bytes(b"labels")
    monkeypatch.setenv("GRAPHINTERP_DATA_DIR", str(tmp_path / "data"))
    res = invoke("train", "--dataset", "mnist", "--out", target, "--device", "cpu")
    assert "is a file inside" in usage_error(res) and target.read_bytes() == b"labels"


@pytest.mark.parametrize("name", ["model.graphml", "model.json", "model.png"])
def test_out_with_a_suffix_of_another_format_is_refused_before_training(tmp_path, name):
    """`train --out model.graphml` wrote a checkpoint named like a graph export."""
    res = invoke("train", "--dataset", "digits", "--epochs", "1", "--out", tmp_path / name, "-q")
    assert res.exit_code == 2 and "use one of .pt, .pth" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / name).exists()
