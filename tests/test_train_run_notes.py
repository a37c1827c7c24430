"""How a training run starts: the model's mode, a resume with nothing to resume, and when the replacement of an
existing checkpoint is announced (graphinterp.training.run_notes)."""
from __future__ import annotations

import torch
from torch import nn

from _cli_helpers import invoke, one_error
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
