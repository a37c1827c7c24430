"""The modular-training pipeline on the embedded digits data: E rises, checkpoints resume exactly, bad input fails."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from graphinterp.sources.checkpoint import load_checkpoint
from graphinterp.clustering.cluster import Clustering
from graphinterp.data.datasets import LabeledTensors, load_dataset
from graphinterp.common.errors import ClusteringError, DataError, TrainingError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.training.loss import EnmeshmentLoss
from graphinterp.clustering.metrics import clusterability_report
from graphinterp.sources.models import build_model, mlp
import graphinterp.training.train as train_mod
from graphinterp.common.denormal import denormals_flushed
from graphinterp.training.train import TrainConfig, train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def _cfg(**kw):
    base = dict(dataset="digits", k=4, warmup_epochs=1, epochs=3, quiet=True, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_modular_training_raises_E_far_above_the_baseline(digits, tmp_path):
    tr, te = digits
    modular = train(_cfg(lam=20.0, epochs=2, lr=1e-2), train_data=tr, test_data=te, checkpoint=tmp_path / "mod.pt")
    baseline = train(_cfg(lam=0.0, epochs=2, lr=1e-2), train_data=tr, test_data=te)
    E_mod = modular.history[-1]["E"]
    E_base = baseline.history[-1]["E_refit"]  # the baseline's own best clustering, fitted at the end
    assert E_mod > 0.95 and E_mod > E_base + 0.4
    assert modular.history[-1]["test_acc"] > 0.5 and baseline.history[-1]["test_acc"] > 0.5
    # the clustering is network-wide on the default layer and E matches the graph-level report
    graph = LayeredGraph.from_module(modular.model)
    assert modular.clustering.layer_names == ["fc2"] and modular.clustering.network_wide
    assert clusterability_report(graph, modular.clustering).E == pytest.approx(E_mod, rel=1e-6)
    # history: warm-up row then modular rows; E rises; L_E is 1 - E for one layer
    phases = [r["phase"] for r in modular.history]
    assert phases == ["warmup"] + ["modular"] * 2
    assert [r["phase"] for r in baseline.history] == ["warmup"] + ["train"] * 2  # lambda 0: not "modular"
    Es = [r["E"] for r in modular.history]
    assert Es[-1] > Es[0] + 0.3
    assert modular.history[-1]["loss"] == pytest.approx(modular.history[-1]["ce"] + 20 * modular.history[-1]["l_e"])
    assert "test acc" in modular.table() and len(modular.table().splitlines()) == 4
    # training flushes subnormals (between-cluster weights decay geometrically) and restores the mode
    w = modular.model.fc2.weight.detach()
    assert not bool(((w != 0) & (w.abs() < torch.finfo(w.dtype).tiny)).any())
    assert not denormals_flushed()


def test_checkpoint_holds_everything_to_rebuild_the_model(digits, tmp_path):
    tr, te = digits
    path = tmp_path / "m.pt"
    result = train(_cfg(epochs=1, k=2), train_data=tr, test_data=te, checkpoint=path)
    ckpt = load_checkpoint(path)
    assert ckpt["arch"] == result.arch and ckpt["history"] == result.history
    model = build_model(ckpt["arch"])
    model.load_state_dict(ckpt["state_dict"])
    torch.testing.assert_close(model(te.x[:20]), result.model(te.x[:20]))
    clustering = Clustering.from_dict(ckpt["clustering"])
    assert EnmeshmentLoss(model, clustering).clusterability() == pytest.approx(result.history[-1]["E"], rel=1e-6)
    state = ckpt["train_state"]
    assert state["epoch"] == 2 and state["config"]["k"] == 2 and "optimizer" in state
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary file


@pytest.mark.parametrize("similarity", ["weight", "gradient"])
def test_interrupted_run_resumes_identically(digits, tmp_path, monkeypatch, similarity):
    tr, te = digits
    tr = tr.subset(400, seed=0)
    cfg = _cfg(k=2, warmup_epochs=2, epochs=2, similarity=similarity)
    full = train(cfg, train_data=tr, test_data=te)

    path = tmp_path / "run.pt"
    real_evaluate, calls = train_mod.evaluate, []

    def interrupt_in_epoch_2(*args, **kwargs):  # dies in the middle of the warm-up
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, train_data=tr, test_data=te, checkpoint=path)
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    assert load_checkpoint(path)["train_state"]["epoch"] == 1
    resumed = train(cfg, train_data=tr, test_data=te, checkpoint=path, resume=True)

    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert resumed.clustering.to_dict() == full.clustering.to_dict()
    drop = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert drop(resumed.history) == drop(full.history)
    # resuming a finished run changes nothing; more epochs continue it
    again = train(cfg, train_data=tr, test_data=te, checkpoint=path, resume=True)
    assert len(again.history) == 4
    longer = train(_cfg(k=2, warmup_epochs=2, epochs=3, similarity=similarity), train_data=tr, test_data=te,
                   checkpoint=path, resume=True)
    assert [r["epoch"] for r in longer.history] == [1, 2, 3, 4, 5]


def test_resume_refuses_other_settings(digits, tmp_path):
    tr, te = digits
    tr = tr.subset(200, seed=0)
    path = tmp_path / "r.pt"
    train(_cfg(k=2, epochs=1), train_data=tr, test_data=te, checkpoint=path)
    with pytest.raises(TrainingError, match="other settings.*lam"):
        train(_cfg(k=2, epochs=1, lam=5.0), train_data=tr, test_data=te, checkpoint=path, resume=True)
    with pytest.raises(TrainingError, match="more than"):
        train(_cfg(k=2, epochs=0), train_data=tr, test_data=te, checkpoint=path, resume=True)
    torch.save({"format": "graphinterp-checkpoint", "version": 1, "arch": None, "state_dict": {}, "clustering": None,
                "history": [], "train_state": None, "meta": {}}, tmp_path / "plain.pt")
    with pytest.raises(TrainingError, match="no training state"):
        train(_cfg(k=2, epochs=1), train_data=tr, test_data=te, checkpoint=tmp_path / "plain.pt", resume=True)
    with pytest.raises(TrainingError, match="do not fit"):
        train(_cfg(k=2, epochs=1), model=mlp(64, [32, 32, 32], 10), train_data=tr, test_data=te,
              checkpoint=path, resume=True)


def test_resume_refuses_other_training_data(digits, tmp_path):
    """The checkpoint records the training set's fingerprint; resuming on other examples (another subset, one
    pixel changed) is refused, on the same examples (a copy) it goes on; a checkpoint without one resumes."""
    tr, te = digits
    tr = tr.subset(200, seed=0)
    path = tmp_path / "d.pt"
    train(_cfg(k=2, epochs=1), train_data=tr, test_data=te, checkpoint=path)
    assert load_checkpoint(path)["meta"]["data_sha256"] == tr.fingerprint
    changed = LabeledTensors(tr.x.clone(), tr.y.clone(), tr.classes, tr.name)
    changed.x[17, 0, 3, 4] += 0.5
    for other in (digits[0].subset(150, seed=0), changed):
        with pytest.raises(TrainingError, match="trained on other examples.*same examples or into another --out"):
            train(_cfg(k=2, epochs=2), train_data=other, test_data=te, checkpoint=path, resume=True)
    copy = LabeledTensors(tr.x.clone(), tr.y.clone(), list(tr.classes), tr.name)
    assert len(train(_cfg(k=2, epochs=2), train_data=copy, test_data=te, checkpoint=path, resume=True).history) == 3
    ckpt = torch.load(path, weights_only=False)
    del ckpt["meta"]["data_sha256"]  # written before checkpoints held one
    torch.save(ckpt, path)
    assert len(train(_cfg(k=2, epochs=3), train_data=changed, test_data=te, checkpoint=path, resume=True).history) == 4


def test_a_resumed_baseline_records_the_refit_only_at_its_own_end(digits, tmp_path):
    """The first run's final row kept its E_refit after --resume went on past it: the history said E was refitted
    at an epoch that was not the end of training (an uninterrupted run has none there)."""
    tr, te = digits
    tr = tr.subset(200, seed=0)
    full = train(_cfg(k=2, epochs=3, lam=0.0), train_data=tr, test_data=te)
    path = tmp_path / "base.pt"
    train(_cfg(k=2, epochs=1, lam=0.0), train_data=tr, test_data=te, checkpoint=path)
    assert "E_refit" in load_checkpoint(path)["history"][-1]
    resumed = train(_cfg(k=2, epochs=3, lam=0.0), train_data=tr, test_data=te, checkpoint=path, resume=True)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert drop(resumed.history) == drop(full.history)
    assert [("E_refit" in r) for r in resumed.history] == [False, False, False, True]


def test_a_transformer_checkpoint_is_not_resumed_as_an_mlp_and_says_why(digits, tmp_path):
    from graphinterp.training.train_transformer import TransformerConfig, train_transformer

    tr, te = digits
    path = tmp_path / "modadd.pt"
    train_transformer(TransformerConfig(warmup_steps=1, steps=0, d_model=16, n_heads=2, d_mlp=32, k=2, quiet=True),
                      checkpoint=path)
    with pytest.raises(TrainingError, match=r"is a transformer checkpoint \(trained in steps on modadd\), not a "
                                            r"digits one; resume it with --dataset modadd"):
        train(_cfg(k=2, epochs=1), train_data=tr, test_data=te, checkpoint=path, resume=True)
    mlp_path = tmp_path / "mlp.pt"
    train(_cfg(k=2, epochs=0), train_data=tr.subset(100, seed=0), test_data=te, checkpoint=mlp_path)
    with pytest.raises(TrainingError, match="is a checkpoint of an MLP or CNN trained in epochs on digits, not a "
                                            "modadd transformer; resume it with --dataset digits"):
        train_transformer(TransformerConfig(warmup_steps=1, steps=0, d_model=16, n_heads=2, d_mlp=32, k=2, quiet=True),
                          checkpoint=mlp_path, resume=True)


def test_train_data_without_test_data_says_where_accuracy_is_measured(digits):
    tr, _ = digits
    result = train(_cfg(k=2, epochs=0, max_test=50), train_data=tr.subset(100, seed=0))
    assert any("train_data was given without test_data: test accuracy is measured on the digits test split" in n
               for n in result.notes)
    assert not any("without test_data" in n for n in train(_cfg(k=2, epochs=0, max_test=50)).notes)


def test_cnn_clusters_fc2_by_default_and_several_layers_on_request(digits):
    tr, te = digits
    result = train(_cfg(model="cnn", k=2, epochs=1, max_train=256, max_test=100), train_data=tr, test_data=te)
    assert result.clustering.layer_names == ["fc2"]
    result = train(_cfg(model="cnn", k=2, epochs=1, max_train=256, max_test=100, layers=["fc1", "fc2"]),
                   train_data=tr, test_data=te)
    c = result.clustering
    assert c.layer_names == ["fc1", "fc2"]
    np.testing.assert_array_equal(c.col_labels["fc1"], c.row_labels["fc2"])
    assert len(c.row_labels["fc1"]) == 16  # the conv channels, grouped view


def test_custom_model_and_tensor_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 10, generator=gen)
    y = (x[:, 0] > 0).long()
    result = train(_cfg(k=2, epochs=1, lam=1.0), model=mlp(10, [6, 6], 2), train_data=(x, y), test_data=(x, y))
    assert result.arch is None and result.clustering.layer_names == ["fc2"]
    assert result.history[-1]["test_acc"] > 0.5


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lam=-1.0), TrainingError, r"--lambda \(lam\) must be"),
    (dict(lam=float("nan")), TrainingError, r"--lambda \(lam\) must be"),
    (dict(k=1), ClusteringError, "k must be"),
    (dict(k=33), ClusteringError, "out of range"),
    (dict(dataset="imagenet"), DataError, "unknown dataset"),
    (dict(model="resnet"), TrainingError, "unknown model"),
    (dict(layers=["fc9"]), ClusteringError, "no layer named .fc9."),
    (dict(similarity="gradient", warmup_epochs=0), TrainingError, "needs --warmup-epochs >= 1"),
    (dict(similarity="activation"), TrainingError, "similarity"),
    (dict(epochs=0, warmup_epochs=0), TrainingError, "at least 1"),
    (dict(batch_size=0), TrainingError, "--batch-size must be an integer >= 1"),
    (dict(batch_size=None), TrainingError, "--batch-size must be an integer >= 1, got None"),  # None only for max_*
    (dict(seed=None), TrainingError, "--seed must be an integer >= 0, got None"),
    (dict(lr=0.0), TrainingError, "lr"),
])
def test_bad_settings(digits, kwargs, error, match):
    tr, te = digits
    with pytest.raises(error, match=match):
        train(_cfg(**kwargs), train_data=tr, test_data=te)


def test_missing_dataset_says_where(tmp_path):
    with pytest.raises(DataError, match="not found"):
        train(_cfg(dataset="mnist", data_dir=str(tmp_path)))


def test_real_mnist_subset_trains(datasets_dir):
    # MNIST's test split is small to read; train on part of it, evaluate on what the config loads
    part = load_dataset("mnist", split="test", data_dir=datasets_dir).subset(500, seed=1)
    result = train(_cfg(dataset="mnist", data_dir=str(datasets_dir), k=4, epochs=1, max_test=300), train_data=part)
    assert result.clustering.layer_names == ["fc2"] and result.history[-1]["E"] > result.history[0]["E"]


def test_cli_train(tmp_path):
    from click.testing import CliRunner

    from graphinterp.cli.main import cli

    out = tmp_path / "cli.pt"
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--epochs", "1", "--k", "2", "--max-train", "300", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "test acc" in res.output and "final test accuracy" in res.output and out.is_file()
    res = runner.invoke(cli, ["train", "--epochs", "2", "--k", "2", "--max-train", "300", "--json", "--out", str(out),
                              "--resume"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [r["epoch"] for r in data["history"]] == [1, 2, 3] and 0 <= data["final"]["E"] <= 1
    res = runner.invoke(cli, ["train", "--lambda", "-1", "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "error: --lambda (lam) must be" in res.output  # a bad flag: a usage error
    res = runner.invoke(cli, ["train", "--help"])
    assert res.exit_code == 0 and "--lambda" in res.output and "--resume" in res.output


def test_the_data_folder_read_through_the_environment_is_recorded(tmp_path, monkeypatch):
    """Trained with $GRAPHINTERP_DATA_DIR set, the checkpoint recorded data_dir None: ablate and circuits, run
    without the variable, then looked in the cache folder and failed ("the folder it was trained on" is the rule)."""
    monkeypatch.setenv("GRAPHINTERP_DATA_DIR", str(tmp_path / "data"))
    assert TrainConfig(dataset="mnist").validate().data_dir == str(tmp_path / "data")
    assert TrainConfig(dataset="digits").validate().data_dir is None  # built in: no folder
    assert TrainConfig(dataset="mnist", data_dir=str(tmp_path / "mine")).validate().data_dir == str(tmp_path / "mine")


def test_gradient_runs_tag_each_clustering_by_what_it_was_fitted_on_and_name_units_without_gradient(
        digits, tmp_path, monkeypatch):
    """A baseline's refit (on the final weights) was stored as a "gradient" clustering; units with weight but no
    gradient in the warm-up were put in no cluster without a word."""
    from graphinterp.training.gradsim import GradientSimilarity

    tr, te = digits
    tr = tr.subset(200, seed=0)
    real = GradientSimilarity.similarity

    def without_unit_5(self):  # as if input 5 of fc2 were dead all through the warm-up
        sims = real(self)
        sims["fc2"][5] = 0
        return sims

    monkeypatch.setattr(GradientSimilarity, "similarity", without_unit_5)
    path = tmp_path / "base.pt"
    base = train(_cfg(k=2, epochs=1, lam=0.0, similarity="gradient"), train_data=tr, test_data=te, checkpoint=path)
    stored = load_checkpoint(path)
    assert stored["clustering"]["similarity"] == "weight" and stored["clustering"]["meta"]["fitted"] == "final weights"
    assert stored["train_state"]["train_clustering"]["similarity"] == "gradient"
    note = next(n for n in base.notes if n.startswith("gradient clustering"))
    assert re.search(r"fc2 inputs 5 \(\d+\.\d% of its squared weight\)", note), note
    modular = train(_cfg(k=2, epochs=1, lam=20.0, similarity="gradient"), train_data=tr, test_data=te)
    assert modular.clustering.similarity == "gradient" and any(n.startswith("gradient clustering") for n in modular.notes)
