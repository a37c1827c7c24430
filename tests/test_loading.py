"""Tests for graphinterp.sources.checkpoint and graphinterp.sources.loading on real third-party files and bad inputs."""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from typing import Tuple
import torch
from torch import nn

from graphinterp.sources.checkpoint import is_checkpoint, load_checkpoint, save_checkpoint, validate_checkpoint
from graphinterp.common.errors import ModelFileError
from graphinterp.sources.loading import LoadedModel, load_model_file
from graphinterp.sources.models import build_model, default_spec, mlp

SHARED = Path(__file__).resolve().parents[2] / "shared"
PRETRAINED = SHARED / "pretrained"


def _pretrained(name: str) -> Path:
    path = PRETRAINED / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- real third-party files


def test_bare_state_dict_cifar_cnn():
    path = _pretrained("cifar-cnn.pth")
    loaded = load_model_file(path)
    assert isinstance(loaded, LoadedModel) and loaded.kind == "state_dict" and loaded.module is None
    assert loaded.arch is None and loaded.clustering is None and loaded.history == [] and loaded.meta == {}
    assert loaded.path == str(path)
    _assert_same(loaded.state_dict, torch.load(path, map_location="cpu", weights_only=True))
    assert loaded.state_dict["0.weight"].shape == (16, 3, 3, 3) and loaded.state_dict["16.weight"].shape == (10, 16)


def test_mlp_saved_from_cuda_is_usable_on_cpu():
    path = _pretrained("mnist-mlp-784-512-512-10.pt")
    loaded = load_model_file(path)
    assert loaded.kind == "state_dict"
    assert all(t.device.type == "cpu" for t in loaded.state_dict.values())
    model = mlp(784, (512, 512), 10, bias=True)
    model.load_state_dict(loaded.state_dict)  # strict: same names and shapes as graphinterp's MLP
    mnist = SHARED / "datasets" / "MNIST" / "raw"
    if mnist.is_dir():
        from graphinterp.data.datasets import load_dataset

        test = load_dataset("mnist", split="test", data_dir=SHARED / "datasets", normalize=False).subset(2000, seed=0)
        with torch.no_grad():
            accuracy = (model(test.x).argmax(1) == test.y).float().mean().item()
        assert accuracy > 0.95  # the published 98.4%: the weights arrived intact


def test_batchnorm_mlp_keeps_buffers():
    loaded = load_model_file(_pretrained("mnist-mlp-bn-300-301-302-303.pt"))
    sd = loaded.state_dict
    assert sd["L1.weight"].shape == (300, 784) and sd["L5.weight"].shape == (10, 303) and "L1.bias" not in sd
    assert sd["bn2.running_var"].shape == (301,) and sd["bn1.num_batches_tracked"].dtype == torch.int64


def test_resnet_container_with_module_prefix():
    path = _pretrained("resnet20-12fca82f.th")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    loaded = load_model_file(path)
    assert loaded.kind == "state_dict" and loaded.meta == {"best_prec1": raw["best_prec1"]}
    assert not any(k.startswith("module.") for k in loaded.state_dict)
    _assert_same(loaded.state_dict, {k[len("module."):]: v for k, v in raw["state_dict"].items()})
    assert loaded.state_dict["linear.weight"].shape == (10, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_map_location_cuda_keeps_state_dict_on_cpu(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, mlp(6, (4,)).cuda(), arch={"name": "mlp", "kwargs": {"in_features": 6, "hidden": [4]}})
    assert all(t.device.type == "cpu" for t in torch.load(path, weights_only=True)["state_dict"].values())
    loaded = load_model_file(path, map_location="cuda")
    assert next(loaded.module.parameters()).device.type == "cuda"
    assert all(t.device.type == "cpu" for t in loaded.state_dict.values())


# ---------------------------------------------------------------- graphinterp checkpoints


def _trained_state(model: nn.Module) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    return {"optimizer": opt.state_dict(), "epoch": 3, "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.RandomState(0).get_state(), "python_rng": random.Random(0).getstate()}


def test_checkpoint_round_trip(tmp_path):
    spec = default_spec("digits", "mlp")
    torch.manual_seed(0)
    model = build_model(spec)
    clustering = {"layers": {"fc2": {"k": 4, "row_labels": [0, 1, 2, 3] * 8, "method": "bsgc"}}}
    history = [{"epoch": 0, "loss": 2.3, "acc": np.float32(0.25)}, {"epoch": 1, "loss": 1.1, "acc": 0.6}]
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, model, arch=spec, clustering=clustering, history=history,
                    train_state=_trained_state(model), meta={"dataset": "digits", "lambda": 20.0})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)  # plain, safe format
    assert is_checkpoint(raw) and validate_checkpoint(raw) is raw
    assert raw["train_state"]["epoch"] == 3 and isinstance(raw["train_state"]["numpy_rng"][1], torch.Tensor)
    assert raw["history"][0]["acc"] == pytest.approx(0.25) and isinstance(raw["history"][0]["acc"], float)

    loaded = load_model_file(path)
    assert loaded.kind == "checkpoint" and loaded.arch == spec and loaded.clustering == clustering
    assert loaded.history[1] == history[1] and loaded.meta["dataset"] == "digits" and loaded.meta["lambda"] == 20.0
    assert loaded.meta["torch_version"] == torch.__version__
    _assert_same(loaded.state_dict, model.state_dict())
    assert loaded.module is not model and not loaded.module.training
    _assert_same(loaded.module.state_dict(), model.state_dict())
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(loaded.module(x), model(x))
    # resuming: the optimizer state loads into a fresh optimizer
    fresh = torch.optim.Adam(loaded.module.parameters(), lr=1e-3)
    fresh.load_state_dict(load_checkpoint(path)["train_state"]["optimizer"])
    assert fresh.state_dict()["state"][0]["step"] == 1


def test_checkpoint_from_state_dict_and_dataparallel(tmp_path):
    model = mlp(6, (4,))
    save_checkpoint(tmp_path / "a.pt", nn.DataParallel(model))
    save_checkpoint(tmp_path / "b.pt", model.state_dict(), history=None)
    for name in ("a.pt", "b.pt"):
        loaded = load_model_file(tmp_path / name)
        assert loaded.kind == "checkpoint" and loaded.module is None and loaded.arch is None
        _assert_same(loaded.state_dict, model.state_dict())


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, mlp(6, (4,)))
    before = path.read_bytes()
    with pytest.raises(ModelFileError, match="meta") as info:
        save_checkpoint(path, mlp(6, (4,)), meta={"callback": object()})
    assert "object" in _one_line(info)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["model.pt"]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"version": 2}, ["version 2", "upgrade"]),
        ({"format": "other"}, ["not a graphinterp checkpoint"]),
        ({"state_dict": {"fc1.weight": [1.0]}}, ["fc1.weight"]),
        ({"history": {}}, ["history"]),
        ({"arch": {"kwargs": {}}}, ["arch"]),
    ],
)
def test_validate_checkpoint_rejects(change, words):
    ckpt = {"format": "graphinterp-checkpoint", "version": 1, "arch": None, "state_dict": {}, "clustering": None,
            "history": [], "train_state": None, "meta": {}}
    validate_checkpoint(dict(ckpt))
    with pytest.raises(ModelFileError) as info:
        validate_checkpoint({**ckpt, **change})
    assert all(w in _one_line(info) for w in words)
    missing = dict(ckpt)
    del missing["clustering"]
    with pytest.raises(ModelFileError, match="clustering"):
        validate_checkpoint(missing)


def test_checkpoint_whose_weights_do_not_fit_its_arch(tmp_path):
    path = tmp_path / "bad.pt"
    save_checkpoint(path, mlp(6, (4,)), arch={"name": "mlp", "kwargs": {"in_features": 6, "hidden": [5]}})
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model_file(path)
    with pytest.raises(ModelFileError, match="not a graphinterp checkpoint"):
        torch.save(mlp(6, (4,)).state_dict(), tmp_path / "plain.pt")
        load_checkpoint(tmp_path / "plain.pt")


def test_a_file_that_is_not_a_checkpoint_gets_the_reason_not_a_path_hint(tmp_path):
    """train --resume onto a text file said 'cannot read checkpoint n.pt (101); check the path' (a KeyError's
    first line); onto a pickled module '(Weights only load failed); check the path'. The path was fine."""
    text, pickled, script = tmp_path / "n.pt", tmp_path / "module.pt", tmp_path / "script.pt"
    text.write_text("hello")
    torch.save(nn.Linear(2, 2), pickled)
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), script)
    advice = ": not a graphinterp checkpoint; pass one written by graphinterp train"
    for path, what in ((text, "is not a PyTorch model file"), (pickled, "holds pickled code"),
                       (script, "is a TorchScript archive")):  # no option makes a pickle a checkpoint
        with pytest.raises(ModelFileError) as err:
            load_checkpoint(path)
        assert str(err.value) == f"{path} {what}{advice}"
    with pytest.raises(ModelFileError, match="check the path"):
        load_checkpoint(tmp_path / "missing.pt")


# ---------------------------------------------------------------- TorchScript, pickles, containers


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript(tmp_path, how):
    model = mlp(6, (5,), 3, bias=True).eval()
    x = torch.randn(2, 6)
    compiled = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    path = tmp_path / "ts.pt"
    compiled.save(str(path))
    with pytest.raises(ModelFileError, match="TorchScript archive: loading it runs the code it holds.*--trust-pickle"):
        load_model_file(path)  # its scripted methods run in torch.jit.load: code, so opt-in as for a pickle
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # neither torch.load's TorchScript warning nor jit.load's deprecation ...
        loaded = load_model_file(path, trust_pickle=True)
    # ... but ours, as for a pickle: the README promises that --trust-pickle warns (it did not for TorchScript)
    assert [(w.category, str(w.message)) for w in caught] == [
        (UserWarning, f"loading {path}, a TorchScript archive: its code runs when the model does (and the trace runs "
                      "it); only do this for files you trust")]
    assert loaded.kind == "torchscript" and loaded.arch is None
    _assert_same(loaded.state_dict, model.state_dict())
    assert torch.equal(loaded.module(x), model(x))


def test_torchscript_code_does_not_run_without_trust(tmp_path):
    """A scripted __setstate__ runs inside torch.jit.load; it wrote over a file from `analyze` with no opt-in."""

    class Writes(torch.nn.Module):
        def __init__(self, target: str):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(2, 3))
            self.target = target

        def forward(self, x):
            return x @ self.weight.t()

        @torch.jit.export
        def __getstate__(self) -> Tuple[str, torch.Tensor, bool]:
            return (self.target, self.weight, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[str, torch.Tensor, bool]) -> None:
            self.target = state[0]
            written = torch.from_file(self.target, True, 4, dtype=torch.uint8).fill_(88).sum()
            self.weight = state[1] + 0.0 * written.float()  # uses the write: not optimised away
            self.training = state[2]

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"original")
    path = tmp_path / "evil.pt"
    torch.jit.script(torch.nn.Sequential(Writes(str(victim)), torch.nn.Linear(2, 2))).save(str(path))
    victim.write_bytes(b"original")  # scripting may have touched it: start clean
    with pytest.raises(ModelFileError, match="TorchScript"):
        load_model_file(path)
    assert victim.read_bytes() == b"original"
    load_model_file(path, trust_pickle=True)  # the payload is real: with the opt-in it runs
    assert victim.read_bytes() == b"XXXXinal"


def test_pickled_module_needs_trust(tmp_path):
    model = mlp(6, (5,), 3)
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(ModelFileError) as info:
        load_model_file(path)
    message = _one_line(info)
    assert "pickled code" in message and "--trust-pickle" in message and "Sequential" in message
    with pytest.warns(UserWarning, match="arbitrary code"):
        loaded = load_model_file(path, trust_pickle=True)
    assert loaded.kind == "module" and isinstance(loaded.module, nn.Sequential)
    _assert_same(loaded.state_dict, model.state_dict())
    # a container holding a pickled module: the module plus the other entries as meta
    torch.save({"model": model, "epoch": 4}, tmp_path / "boxed.pt")
    with pytest.warns(UserWarning):
        boxed = load_model_file(tmp_path / "boxed.pt", trust_pickle=True)
    assert boxed.kind == "module" and boxed.meta == {"epoch": 4}
    # trust never turns a broken file into a pickle load
    (tmp_path / "junk.pt").write_text("hello")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelFileError, match="not a PyTorch model file"):
            load_model_file(tmp_path / "junk.pt", trust_pickle=True)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "net"])
def test_third_party_containers(tmp_path, key):
    model = mlp(6, (4,))
    wrapped = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({key: wrapped, "epoch": 9, "optimizer": {"lr": 0.1}}, tmp_path / "c.pt")
    loaded = load_model_file(tmp_path / "c.pt")
    assert loaded.kind == "state_dict" and loaded.meta == {"epoch": 9, "optimizer": {"lr": 0.1}}
    _assert_same(loaded.state_dict, model.state_dict())


def _truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _bad_files(tmp: Path) -> dict:
    sd = mlp(6, (4,)).state_dict()
    torch.save(sd, tmp / "good.pt")
    torch.save(sd, tmp / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp / "empty.pt").touch()
    (tmp / "text.pt").write_text("these are not weights\n")
    (tmp / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp / "folder").mkdir()
    torch.save({"epoch": 3, "name": "model"}, tmp / "no_tensors.pt")
    torch.save({"fc1.weight": torch.ones(2, 2), "note": "hi"}, tmp / "mixed.pt")
    torch.save({"state_dict": {}}, tmp / "empty_container.pt")
    torch.save([torch.ones(2)], tmp / "list.pt")
    return {
        "missing.pt": "not found",
        "folder": "is a folder",
        "empty.pt": "empty (0 bytes)",
        "text.pt": "not a PyTorch model file",
        "random.pt": "not a PyTorch model file",
        _truncate(tmp / "good.pt", tmp / "trunc.pt").name: "truncated or corrupt",
        _truncate(tmp / "legacy.pt", tmp / "trunc_legacy.pt").name: "truncated or corrupt",
        "no_tensors.pt": "no tensors",
        "mixed.pt": "'note' is a str, not a tensor",
        "empty_container.pt": "no tensors",
        "list.pt": "holds a list",
    }


def test_bad_inputs(tmp_path):
    for name, words in _bad_files(tmp_path).items():
        with pytest.raises(ModelFileError) as info:
            load_model_file(tmp_path / name)
        message = _one_line(info)
        assert words in message and str(tmp_path / name) in message, (name, message)
    assert load_model_file(tmp_path / "legacy.pt").kind == "state_dict"
    assert isinstance(ModelFileError("x"), OSError)


def test_a_bare_state_dict_notes_unfolded_normalisation_only_when_it_has_some(tmp_path):
    from graphinterp.graph.load import load_graph

    plain = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    normed = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    for model, name in [(plain, "plain.pt"), (normed, "normed.pt")]:
        torch.save(model.state_dict(), tmp_path / name)
    _, graph = load_graph(str(tmp_path / "plain.pt"))
    assert not any("normalisation" in note for note in graph.coverage.notes)
    _, graph = load_graph(str(tmp_path / "normed.pt"))
    notes = [(note, n) for note, n in graph.coverage.notes.items() if "normalisation" in note]
    assert notes == [("no architecture: the normalisation in this state_dict cannot be folded: 1 BatchNorm layer "
                      "(3 tensors: weight, running_mean, running_var), e.g. 1; folded, their scales would multiply "
                      "units' weights by 1 to 1", 1)]
    _, graph = load_graph(str(tmp_path / "normed.pt"), fold=False)  # nothing was to be folded: no note
    assert not any("normalisation" in note for note in graph.coverage.notes)


def test_an_input_shape_for_a_bare_state_dict_is_noted_not_dropped(tmp_path):
    from graphinterp.graph.load import load_graph

    torch.save(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).state_dict(), tmp_path / "sd.pt")
    opened, graph = load_graph(str(tmp_path / "sd.pt"))
    assert not any("input shape" in note for note in opened.notes)
    opened, graph = load_graph(str(tmp_path / "sd.pt"), input_shape=(6,))
    assert [n for n in opened.notes if "input shape" in n] == [
        "input shape (6,) not used: a file without an architecture is read from its tensors, nothing is traced"]
    assert graph.coverage.complete  # a note, not a gap in the graph


def test_weights_with_a_model_file_is_refused_naming_both(tmp_path):
    from graphinterp.common.errors import ModelFileError
    from graphinterp.graph.load import open_model

    path = tmp_path / "sd.pt"
    torch.save(nn.Sequential(nn.Linear(6, 5)).state_dict(), path)
    with pytest.raises(ModelFileError, match="holds its own: a weights file goes with a torchvision architecture"):
        open_model(str(path), weights=str(path))


def test_coverage_lists_say_when_they_are_cut_short():
    """densenet121 has 62 unfolded normalisations; the text showed 6 and stopped without saying so."""
    from graphinterp.graph.coverage import Coverage

    cov = Coverage(10, 10, unfolded={f"n{i}.weight": "why" for i in range(9)}, notes={f"op{i}": 2 for i in range(8)})
    lines = cov.summary_lines(max_items=6)
    assert lines[7] == "not folded: ... and 3 more (n6.weight, n7.weight, n8.weight; all are in --json under " \
                       "coverage.unfolded)"
    assert lines[-1] == "approximated: ... and 2 more (all are in --json under coverage.notes)"
    assert len(Coverage(1, 1, unfolded={"a": "b"}).summary_lines()) == 2  # nothing cut: no such line


def test_a_huggingface_folder_loads_without_transformers_log_lines(tmp_path):
    """transformers lints a config (e.g. bos_token_id outside a small vocabulary) with raw '[transformers] ...'
    lines on stderr; reports are graphinterp's own lines only."""
    transformers = pytest.importorskip("transformers")
    import subprocess
    import sys

    cfg = transformers.GPT2Config(vocab_size=100, n_positions=16, n_embd=16, n_layer=1, n_head=2)  # bos 50256
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    # a fresh process: transformers says each lint once per process, and this one has said it already
    code = f"from graphinterp import open_model; open_model({str(tmp_path / 'gpt2')!r})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "[transformers]" not in run.stderr


def test_a_huggingface_folder_with_its_own_code_is_refused_without_asking(tmp_path):
    """transformers asked "run the custom code? [y/N]" on stdin, and `echo y | graphinterp analyze` ran it."""
    pytest.importorskip("transformers")
    import json
    import subprocess
    import sys

    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "RAN"
    (folder / "config.json").write_text(json.dumps({"model_type": "evilnet", "architectures": ["EvilModel"],
                                                    "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    (folder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                                  "from transformers import PretrainedConfig\n"
                                                  "class EvilConfig(PretrainedConfig):\n    model_type = 'evilnet'\n")
    torch.save({"w": torch.ones(2, 2)}, folder / "pytorch_model.bin")
    run = subprocess.run([sys.executable, "-m", "graphinterp.cli", "analyze", str(folder)], input="y\ny\n",
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and not marker.exists()
    assert run.stderr.startswith("error: ") and "never runs a model folder's code" in run.stderr


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.complex64, torch.float8_e4m3fn])
def test_weights_that_are_not_read_are_counted_as_not_covered(tmp_path, dtype):
    from graphinterp import load_graph

    torch.manual_seed(0)
    state = mlp(6, (5, 4), 3).state_dict()
    state["fc2.weight"] = state["fc2.weight"].to(dtype) if dtype != torch.bool else state["fc2.weight"] > 0
    path = tmp_path / "m.pt"
    torch.save(state, path)
    cov = load_graph(str(path))[1].coverage
    assert cov.total == 6 * 5 + 5 * 4 + 4 * 3 and cov.covered == cov.total - 20  # fc2 counted, not covered
    assert any(m.name == "fc2.weight" and "not read" in m.reason for m in cov.missing)
    torch.save({k: v.to(torch.int8) for k, v in state.items() if k.endswith("weight")}, path)
    with pytest.raises(Exception, match="no floating-point layer weight.*int8"):
        load_graph(str(path))


def test_damaged_containers_and_stored_architectures_are_one_line_errors(tmp_path):
    cases = {
        "sparse": {"fc.weight": torch.eye(3).to_sparse()},
        "meta": {"fc.weight": torch.empty(3, 3, device="meta")},
        "intkey": {1: torch.ones(2, 2)},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        with pytest.raises(ModelFileError, match={"sparse": "sparse_coo tensor", "meta": "meta tensor",
                                                   "intkey": "key 1 of type int"}[name]):
            load_model_file(tmp_path / f"{name}.pt")
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, mlp(6, (4,)), arch={"name": "mlp", "kwargs": {"in_features": 6, "hidden": ["x"]}})
    with pytest.raises(ModelFileError, match="stored architecture .* cannot be built"):
        load_model_file(path)


def test_a_pickle_calling_a_system_function_is_named_as_pickled_code(tmp_path):
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.ones(2, 2), "x": Payload()}, path)
    with pytest.raises(ModelFileError, match=r"holds pickled code \((posix|nt)\.system\)"):
        load_model_file(path)


def test_torchvision_weights_in_another_key_order_load_and_other_dtypes_are_refused(tmp_path):
    from graphinterp.common.errors import InvalidWeightsError
    from graphinterp.graph.load import _fit_weights
    from graphinterp.sources.models import torchvision_model

    torch.manual_seed(0)
    state = torchvision_model("resnet18").state_dict()
    path = tmp_path / "sorted.pth"
    torch.save(dict(sorted(state.items())), path)  # as safetensors stores them: fc.weight is not last
    model = _fit_weights("resnet18", str(path), False)
    assert torch.equal(model.fc.weight, state["fc.weight"])
    state["conv1.weight"] = state["conv1.weight"] > 0
    torch.save(state, path)
    with pytest.raises(InvalidWeightsError, match="not floating point.*conv1.weight \\(bool\\)"):
        _fit_weights("resnet18", str(path), False)


def test_unlinked_conv_layers_get_no_groups_guessed_from_the_layer_before(tmp_path):
    """A ResNet's 1x1 downsample (128, 64) after a 3x3 conv with 128 outputs was read as groups=2 and then skipped
    as a grouped convolution."""
    from graphinterp import load_graph
    from graphinterp.sources.models import torchvision_model

    path = tmp_path / "r18.pth"
    torch.save(torchvision_model("resnet18").state_dict(), path)
    graph = load_graph(str(path))[1]
    down = graph["layer2.0.downsample.0"]
    assert down.groups == 1 and down.shape() == (64, 128)
    assert not any("groups=" in n for n in graph.coverage.notes)


def test_a_key_prefix_is_stripped_only_when_every_key_has_it(tmp_path):
    """'module.' on one key of two: no key is touched (stripping by 'any' cut 7 characters off 'head.weight')."""
    from graphinterp.sources.loading import load_model_file

    torch.save({"module.fc.weight": torch.ones(2, 2), "head.weight": torch.ones(2, 2)}, tmp_path / "w.pt")
    assert sorted(load_model_file(tmp_path / "w.pt").state_dict) == ["head.weight", "module.fc.weight"]


def test_weights_that_do_not_fit_the_stored_architecture_name_the_mismatch(tmp_path):
    """A checkpoint whose hidden layer was saved 5 wide for an architecture that says 4: the error names the size
    mismatch, not only load_state_dict's "Error(s) in loading state_dict" first line."""
    from graphinterp.common.errors import ModelFileError

    path = tmp_path / "bad.pt"
    save_checkpoint(path, mlp(6, (5,)), arch={"name": "mlp", "kwargs": {"in_features": 6, "hidden": [4]}})
    with pytest.raises(ModelFileError, match="size mismatch"):
        load_model_file(path)


def test_expanded_view_declaring_more_than_the_file_holds_is_refused(tmp_path):
    """A 2 KB file can declare a 200000x200000 weight as a stride-0 view; it must be refused while loading, not
    crash later with a 160 GB allocation (a traceback) or exhaust memory."""
    path = tmp_path / "bomb.pt"
    torch.save({"fc1.weight": torch.randn(1).expand(200000, 200000), "fc2.weight": torch.randn(10, 4)}, path)
    assert path.stat().st_size < 10_000
    with pytest.raises(ModelFileError, match=r"'fc1.weight' declares a 200000x200000 tensor .* stores only 4 bytes"):
        load_model_file(path)
    small = tmp_path / "small.pt"  # a small expanded view is still read
    torch.save({"fc1.weight": torch.randn(4, 1).expand(4, 3)}, small)
    assert load_model_file(small).state_dict["fc1.weight"].shape == (4, 3)
    many = tmp_path / "many.pt"  # views each under the bound add up: 20 x 64 MiB declared in a few KB
    torch.save({f"l{i}.weight": torch.randn(1).expand(4096, 4096) for i in range(20)}, many)
    with pytest.raises(ModelFileError, match=r"'l4.weight' declares a 4096x4096 tensor .* bytes so far in such views"):
        load_model_file(many)


def test_non_regular_and_looping_model_paths_are_named_for_what_they_are(tmp_path):
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match="not a regular file") as info:
        load_model_file(fifo)  # was "is empty (0 bytes)"
    _one_line(info)
    loop = tmp_path / "loop.pt"
    os.symlink(tmp_path / "other.pt", loop)
    os.symlink(loop, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="symbolic links"):
        load_model_file(loop)  # was "model file not found"


def test_damaged_checkpoint_errors_name_the_file(tmp_path):
    """With two inputs (circuits --compare, train --resume) the message must say which file is damaged."""
    path = tmp_path / "damaged.pt"
    ckpt = save_checkpoint(tmp_path / "ok.pt", mlp(4, [3]), arch={"name": "mlp", "kwargs": {"in_features": 4,
                                                                                           "hidden": [3]}})
    del ckpt["history"]
    torch.save(ckpt, path)
    for load in (load_model_file, load_checkpoint):
        with pytest.raises(ModelFileError, match=r"damaged\.pt: graphinterp checkpoint lacks \['history'\]"):
            load(path)
    torch.save({"fc.weight": torch.ones(2, 2)}, path)
    with pytest.raises(ModelFileError, match=r"damaged\.pt: not a graphinterp checkpoint"):
        load_checkpoint(path)
