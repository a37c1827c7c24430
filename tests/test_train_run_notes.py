"""How a training run starts: the model's mode, a resume with nothing to resume, and when the replacement of an
existing checkpoint is announced (graphinterp.training.run_notes)."""
from __future__ import annotations

from torch import nn

from _cli_helpers import invoke, one_error, usage_error
from graphinterp.data.datasets import load_dataset
from graphinterp.training.train import TrainConfig, train
from graphinterp.training.train_transformer import TransformerConfig, train_transformer

_DIGITS = dict(dataset="digits", k=2, warmup_epochs=1, epochs=1, quiet=True, device="cpu")


def _mlp_with_dropout() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 10))


def test_a_model_given_in_eval_mode_is_trained_in_train_mode_and_said(monkeypatch):
    """train(model=m.eval()) ran every step in eval mode (dropout off, batch norms on running statistics): nothing
    called model.train(). Now the steps run in train mode, and a note says so."""
    import graphinterp.training.train_epoch as epoch_module

    model = _mlp_with_dropout().eval()
    modes, step = [], epoch_module.train_step

    def recording_step(net, *args, **kwargs):
        modes.append(model[3].training)
        return step(net, *args, **kwargs)

    monkeypatch.setattr(epoch_module, "train_step", recording_step)
    data = load_dataset("digits", split="train").subset(64, seed=0)
    result = train(TrainConfig(**_DIGITS, layers=["1"]), model=model, train_data=data, test_data=data)
    assert modes and all(modes), modes  # every training step's dropout ran in train mode
    assert model.training
    assert any(n.startswith("the model was given in eval mode") for n in result.notes), result.notes
    quiet = train(TrainConfig(**_DIGITS, layers=["1"]), model=_mlp_with_dropout(), train_data=data, test_data=data)
    assert not any("eval mode" in n for n in quiet.notes)


def test_a_transformer_given_in_eval_mode_is_trained_in_train_mode_and_said():
    from graphinterp.sources.models import build_model
    from graphinterp.training.train_transformer import task_data

    cfg = TransformerConfig(task="modadd", p=11, train_frac=0.5, d_model=16, n_heads=2, d_mlp=32, k=2,
                            warmup_steps=1, steps=1, eval_every=1, quiet=True, device="cpu").validate()
    data = task_data(cfg)
    model = build_model({"name": "transformer", "kwargs": {**data["kwargs"], **cfg.model_kwargs()}}).eval()
    result = train_transformer(cfg, model=model)
    assert model.training and any(n.startswith("the model was given in eval mode") for n in result.notes)


def test_resume_without_a_checkpoint_is_said():
    data = load_dataset("digits", split="train").subset(64, seed=0)
    result = train(TrainConfig(**_DIGITS), train_data=data, test_data=data, resume=True)
    assert any(n.startswith("resume=True without a checkpoint to resume from") for n in result.notes), result.notes


def test_the_replacement_of_a_checkpoint_is_said_only_when_the_run_goes_ahead(tmp_path):
    """The note that a new run replaces --out was printed before the checks that may stop the run (a k the model
    cannot take is found once its graph is built): an error then left the file as it was, under a note saying it
    would be replaced."""
    out = tmp_path / "m.pt"
    args = ("train", "--dataset", "digits", "--warmup-epochs", "0", "--epochs", "1", "--out", out, "--device", "cpu",
            "-q")
    assert invoke(*args).exit_code == 0
    before = out.read_bytes()
    stopped = invoke(*args, "--k", "33")  # fc2 has 32 units a side: refused once the graph is built
    assert "k=33 is out of range for layer 'fc2'" in one_error(stopped, 2)
    assert "replaces it" not in stopped.stderr, stopped.stderr
    assert out.read_bytes() == before
    res = invoke(*args)
    assert res.exit_code == 0 and f"note: {out} exists: this new run replaces it" in res.stderr


def test_naming_the_default_layers_resumes_a_run_that_left_them_unset(tmp_path):
    """--resume --layers fc2 after a run without --layers (fc2 is the default) was refused: "--layers was unset, now
    fc2". Other layers are still refused."""
    out = tmp_path / "m.pt"
    base = ("train", "--dataset", "digits", "--warmup-epochs", "1", "--out", out, "--device", "cpu", "-q")
    assert invoke(*base, "--epochs", "1").exit_code == 0
    res = invoke(*base, "--epochs", "2", "--resume", "--layers", "fc2")
    assert res.exit_code == 0, res.stderr
    line = one_error(invoke(*base, "--epochs", "3", "--resume", "--layers", "fc1"))
    assert "--layers was fc2, now fc1" in line, line


def test_an_unknown_layer_to_cluster_is_a_usage_error(tmp_path):
    """--layers fc9 was refused with exit code 1 (a ClusteringError), unlike every other bad argument (2)."""
    line = usage_error(invoke("train", "--dataset", "digits", "--layers", "fc9", "--out", tmp_path / "m.pt",
                              "--device", "cpu"))
    assert line == "Invalid value for --layers: no layer named 'fc9' to cluster; the layers are fc1, fc2, fc3"


def test_the_history_table_says_what_each_column_is_measured_over(tmp_path):
    """L_E 0.3764 beside E 0.6441 on a modular row read as a contradiction (L_E = 1 - E): L_E is the mean over the
    epoch's steps, E the end of the epoch's, and the warm-up's L_E (not in its loss) the end's. Said under the table."""
    res = invoke("train", "--dataset", "digits", "--epochs", "1", "--out", tmp_path / "m.pt", "--device", "cpu", "-q")
    assert res.exit_code == 0, res.stderr
    assert "loss, CE and L_E: means over the epoch's steps" in res.stdout
    assert "E, E_rand, score and the test columns: at the row's end" in res.stdout


def test_a_transformer_trains_against_the_authors_fixed_contiguous_clusters(tmp_path):
    """--clusters contiguous: the fixed ranges of the authors' GPT-2 experiment (hidden units 0..d_mlp/k-1 with stream
    dimensions 0..d_model/k-1, ...), no warm-up needed; stored in the checkpoint, so analyze and ablate use them."""
    import numpy as np

    from graphinterp.sources.checkpoint import load_checkpoint

    out = tmp_path / "m.pt"
    res = invoke("train", "--dataset", "modadd", "--clusters", "contiguous", "--warmup-steps", "0", "--steps", "2",
                 "--out", out, "--device", "cpu", "-q")
    assert res.exit_code == 0, res.stderr
    stored = load_checkpoint(out)["clustering"]
    assert stored["meta"]["method"] == "contiguous-mlp-blocks"
    layer = {entry["name"]: entry for entry in stored["layers"]}["blocks.0.mlp.fc_in"]
    assert np.array_equal(layer["cols"], np.arange(512) * 4 // 512) and np.array_equal(layer["rows"],
                                                                                       np.arange(128) * 4 // 128)
    assert usage_error(invoke("train", "--dataset", "digits", "--clusters", "contiguous", "--out", out)).startswith(
        "--clusters does not apply to --dataset digits")
    assert "gradient does not apply to fixed contiguous clusters" in usage_error(invoke(
        "train", "--dataset", "modadd", "--clusters", "contiguous", "--similarity", "gradient", "--out", out))


def test_a_transformer_checkpoint_from_before_clusters_existed_still_resumes(tmp_path):
    """Checkpoints written before --clusters record no such setting: read as BSGC, the only way then."""
    import torch as _torch

    out = tmp_path / "m.pt"
    args = ("train", "--dataset", "modadd", "--warmup-steps", "1", "--out", out, "--device", "cpu", "-q")
    assert invoke(*args, "--steps", "1").exit_code == 0
    ckpt = _torch.load(out, weights_only=False)
    del ckpt["train_state"]["config"]["clusters"]
    _torch.save(ckpt, out)
    res = invoke(*args, "--steps", "2", "--resume")
    assert res.exit_code == 0, res.stderr
    assert "cannot resume" not in res.stderr
