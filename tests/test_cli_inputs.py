"""Bad command-line input: one ``error: ...`` line on stderr and a non-zero exit, never a traceback or a wrong success."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import click
import networkx as nx
import numpy as np
import pytest
import torch

import graphinterp.training.train as train_mod
from _cli_helpers import invoke, one_error, usage_error
from graphinterp.common.files import OutputPathError, atomic_write, check_writable, output_lock, resolve_device
from graphinterp.sources.checkpoint import load_checkpoint, save_checkpoint
from graphinterp.cli._common import (
    FiniteFloat, check_device, check_output_dir, check_output_path, check_seed, check_title, parse_int_ranges,
    parse_k_values, plain_text,
)
from graphinterp.cli.main import cli
from graphinterp.clustering.cluster import Clustering
from graphinterp.common.errors import ClusteringError, GraphinterpError, TrainingError
from graphinterp.sources.models import build_model
from graphinterp.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [12, 12], "num_classes": 10}}


@pytest.fixture
def ckpt_file(tmp_path):
    """A runnable graphinterp checkpoint (random weights) for ablate, circuits and plot."""
    torch.manual_seed(0)
    path = tmp_path / "c.pt"
    save_checkpoint(path, build_model(SPEC), arch=SPEC)
    return path


def _listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# ------------------------------------------------------------------ tracebacks before
def test_usage_errors_are_one_line_with_exit_2(sd_file):
    assert "No such option" in one_error(invoke("export", sd_file, "x.graphml", "--nope"), 2)
    assert "Missing argument" in one_error(invoke("export"), 2)
    assert "No such command" in one_error(invoke("exprt"), 2)
    assert "--k" in one_error(invoke("export", sd_file, "x.graphml", "--k", "1"), 2)
    assert "Missing option" in one_error(invoke("plot", "layer", sd_file, "--out", "x.png"), 2)


def test_unknown_layer_names(sd_file, ckpt_file, tmp_path):
    out = tmp_path / "g.graphml"
    assert "no layer named 'nope'" in one_error(invoke("export", sd_file, out, "--layers", "0,nope"))
    assert not out.exists()
    assert "no layer named" in one_error(invoke("ablate", ckpt_file, "--k", "2", "--layers", "fc9", "--device", "cpu"))


@pytest.mark.parametrize("seed", ["-1", str(2**32), "1.5", "x"])
def test_seed_out_of_range(sd_file, tmp_path, seed):
    assert "--seed" in one_error(invoke("export", sd_file, tmp_path / "g.graphml", "--seed", seed), 2)
    assert "--seed" in one_error(invoke("train", "--seed", seed, "--out", tmp_path / "t.pt"), 2)
    assert not (tmp_path / "g.graphml").exists() and not (tmp_path / "t.pt").exists()


@pytest.mark.parametrize("device", ["foo", "meta", "cpu:x", "", "cuda:99"])
def test_bad_device(ckpt_file, tmp_path, device):
    if device == "cuda:99" and torch.cuda.device_count() > 99:  # pragma: no cover
        pytest.skip("machine with 100 GPUs")
    assert "--device" in one_error(invoke("ablate", ckpt_file, "--device", device), 2)
    assert "--device" in one_error(invoke("train", "--device", device, "--out", tmp_path / "t.pt"), 2)
    assert "--device" in one_error(invoke("circuits", ckpt_file, "--device", device), 2)
    with pytest.raises(GraphinterpError):
        resolve_device(device)


@pytest.mark.parametrize("shape", ["3,64,x", "3,,64", "3,64,", "x", "0,8", "3,1e3", "1,2,3,4,5,6"])
def test_bad_input_shape_is_refused_whole(sd_file, shape):
    # every part must be a size: a stray letter or empty part is not dropped (3,64,x is not (3, 64))
    assert "--input-shape" in one_error(invoke("analyze", sd_file, "--input-shape", shape), 2)


def test_input_shape_forms():
    from graphinterp.cli._source_options import parse_input_shape

    assert parse_input_shape("3,64,64") == parse_input_shape("3x64x64") == parse_input_shape(" 3, 64 ,64") == (3, 64, 64)
    assert parse_input_shape(None) is None and parse_input_shape("") is None


def test_figure_suffix_is_checked_before_any_work(ckpt_file, tmp_path, monkeypatch):
    import graphinterp.cli.ablate as ablate_cli

    monkeypatch.setattr(ablate_cli, "open_for_eval", lambda *a, **k: pytest.fail("loaded data before checking"))
    assert ".png" in one_error(invoke("ablate", ckpt_file, "--plot", tmp_path / "fig.txt", "--device", "cpu"), 2)
    assert ".png" in one_error(invoke("circuits", ckpt_file, "--plot", tmp_path / "fig.gif", "--device", "cpu"), 2)
    assert ".png" in one_error(invoke("plot", "layer", ckpt_file, "--layer", "fc2", "--out", tmp_path / "fig"), 2)
    assert _listing(tmp_path) == ["c.pt"]


def test_output_whose_parent_is_a_file(sd_file, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "not a folder" in one_error(invoke("export", sd_file, blocker / "g.graphml"))
    monkeypatch.setattr(train_mod, "_epoch", lambda *a, **k: pytest.fail("trained before checking the output"))
    assert "not a folder" in one_error(invoke("train", "--out", blocker / "sub" / "t.pt", "--device", "cpu"))
    with pytest.raises(OutputPathError, match="not a folder"):  # the library checks too, before training
        train(TrainConfig(epochs=1, quiet=True, device="cpu"), checkpoint=blocker / "t.pt")
    assert blocker.read_text() == "x"


def test_read_only_folder_is_refused_before_work(sd_file, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: simulate a read-only mount
        import graphinterp.common.files as files

        def refuse(*a, **k):
            raise PermissionError(13, "Read-only file system")

        monkeypatch.setattr(files, "_mkstemp", refuse)
    else:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        monkeypatch.setattr(train_mod, "_epoch", lambda *a, **k: pytest.fail("trained before checking the output"))
        assert "cannot write" in one_error(invoke("train", "--out", folder / "t.pt", "--device", "cpu"))
        assert "cannot write" in one_error(invoke("export", sd_file, folder / "g.graphml"))
        with pytest.raises(OutputPathError):
            check_writable(folder / "x.json")
    finally:
        folder.chmod(stat.S_IRWXU)
    assert os.listdir(folder) == []


@pytest.mark.parametrize("command", ["train", "ablate", "circuits"])
def test_zero_batch_size(ckpt_file, tmp_path, command):
    args = ["--out", tmp_path / "t.pt"] if command == "train" else [ckpt_file]
    assert "--batch-size" in one_error(invoke(command, *args, "--batch-size", "0", "--device", "cpu"), 2)


def test_circuit_budgets_must_be_positive(ckpt_file):
    assert "--max-examples" in one_error(invoke("circuits", ckpt_file, "--max-examples", "0", "--device", "cpu"), 2)
    assert "--max-evals" in one_error(invoke("circuits", ckpt_file, "--max-evals", "0", "--device", "cpu"), 2)


@pytest.mark.parametrize("option, value", [("--min-accuracy", "nan"), ("--min-accuracy", "2"), ("--min-accuracy", "0"),
                                           ("--max-loss-increase", "nan"), ("--max-loss-increase", "-1"),
                                           ("--max-loss-increase", "inf")])
def test_circuit_tolerances_must_be_meaningful(ckpt_file, option, value):
    assert option in one_error(invoke("circuits", ckpt_file, option, value, "--device", "cpu"), 2)


def test_huge_ranges_are_refused_before_they_are_expanded(ckpt_file):
    assert "more than" in one_error(invoke("ablate", ckpt_file, "--neurons", "fc1:0-1000000000", "--device", "cpu"), 2)
    assert "more than" in one_error(invoke("circuits", ckpt_file, "--labels", "0-1000000000", "--device", "cpu"), 2)
    assert "empty range" in one_error(invoke("circuits", ckpt_file, "--labels", "7-5", "--device", "cpu"), 2)
    with pytest.raises(click.BadParameter, match="more than"):
        parse_k_values("2..1000000000000")
    with pytest.raises(click.BadParameter, match="more than"):
        parse_int_ranges("0-5,0-99999999999", param_hint="--labels")
    assert parse_int_ranges("3,0-2", param_hint="--labels") == [3, 0, 1, 2]
    assert parse_k_values("2..4") == [2, 3, 4] and parse_k_values("5,3") == [5, 3]
    for text in ("2,,3", "2,3,", ",4"):  # a value left out between commas was skipped silently (outputs review)
        with pytest.raises(click.BadParameter, match="a value between commas is empty"):
            parse_k_values(text)
    with pytest.raises(click.BadParameter, match="k=2 is given more than once"):
        parse_k_values("2,3,2")


def test_an_empty_label_between_commas_is_refused(ckpt_file):
    """--labels 0,,3 ran labels 0 and 3 without a word, where --k, --layers, --neurons and --kinds refuse the empty
    value (a label left out?); a quoted comma is still a label."""
    from graphinterp.cli._labels import parse_labels

    for text in ("0,,3", "0,3,", ",0"):
        assert "a value between commas is empty" in one_error(invoke("circuits", ckpt_file, "--labels", text,
                                                                     "--device", "cpu"), 2)
    assert parse_labels("',',e, 3") == [",", "e", 3]


@pytest.mark.parametrize("text", ["\u0663", "1_0", "+3", "\u0663-5", "\uff13"])
def test_indices_and_k_are_ascii_decimals(text):
    """int() reads other scripts' digits (Arabic-Indic 3, fullwidth 3), 1_0 and +3; an index or a k is refused."""
    with pytest.raises(click.BadParameter):
        parse_int_ranges(text, param_hint="--labels")
    with pytest.raises(click.BadParameter):
        parse_k_values(text)
    from graphinterp.clustering.cluster import parse_k_range
    from graphinterp.common.errors import ClusteringError

    with pytest.raises(ClusteringError):
        parse_k_range(text)


def test_a_digit_of_another_script_is_a_character_label():
    from graphinterp.cli._labels import parse_labels

    assert parse_labels("\u0663,3") == ["\u0663", 3]  # Arabic-Indic 3 is a character of a vocabulary, 3 an index


def test_limit_zero_is_an_error_not_the_whole_dataset(ckpt_file):
    assert "--limit" in one_error(invoke("ablate", ckpt_file, "--limit", "0", "--device", "cpu"), 2)


def test_plot_title_must_be_valid_mathtext(ckpt_file, tmp_path):
    out = tmp_path / "fc2.png"
    assert "mathtext" in one_error(invoke("plot", "layer", ckpt_file, "--layer", "fc2", "--out", out, "--title", "$x^$"))
    assert not out.exists()
    res = invoke("plot", "layer", ckpt_file, "--layer", "fc2", "--out", out, "--title", r"costs \$5 and $k^2$")
    assert res.exit_code == 0, res.output
    assert check_title(r"$\alpha$ ok") == r"$\alpha$ ok"


def _trained_checkpoint(path):
    train(TrainConfig(k=2, warmup_epochs=1, epochs=0, max_train=64, max_test=32, quiet=True, device="cpu"),
          checkpoint=path)
    return load_checkpoint(path)


@pytest.mark.parametrize("damage", ["not a list", "row", "epoch", "nan", "length"])
def test_resume_with_malformed_history_fails_before_training(tmp_path, monkeypatch, damage):
    path = tmp_path / "run.pt"
    ckpt = _trained_checkpoint(path)
    history = ckpt["history"]
    if damage == "not a list":
        history = {"epoch": 1}
    elif damage == "row":
        history = ["oops"]
    elif damage == "epoch":
        history[0]["epoch"] = "one"
    elif damage == "nan":
        history[0]["test_acc"] = float("nan")
    else:
        history = history + history
    ckpt["history"] = history
    torch.save(ckpt, path)
    before = path.read_bytes()
    monkeypatch.setattr(train_mod, "_epoch", lambda *a, **k: pytest.fail("trained before validating the history"))
    msg = one_error(invoke("train", "--k", "2", "--warmup-epochs", "1", "--epochs", "1", "--max-train", "64",
                           "--device", "cpu", "--out", path, "--resume"))
    assert "history is malformed" in msg or "'history' has type dict" in msg
    assert path.read_bytes() == before


# ------------------------------------------------------------------ wrong successes before
def test_output_that_is_an_input_is_refused(sd_file, tmp_path):
    before = sd_file.read_bytes()
    assert "also an input" in one_error(invoke("export", sd_file, sd_file))
    link_dir = tmp_path / "again"
    link_dir.mkdir()
    os.link(sd_file, link_dir / "m.pt")  # the same file under another name
    assert "also an input" in one_error(invoke("export", sd_file, link_dir / "m.pt"))
    assert "also an input" in one_error(invoke("export", sd_file, tmp_path / "." / "m.pt"))
    assert sd_file.read_bytes() == before


def test_non_regular_outputs_are_never_replaced(sd_file, tmp_path):
    target = tmp_path / "real.graphml"
    target.write_text("keep")
    link = tmp_path / "link.graphml"
    link.symlink_to(target)
    fifo = tmp_path / "pipe.graphml"
    os.mkfifo(fifo)
    folder = tmp_path / "dir.graphml"
    folder.mkdir()
    for path, kind in ((link, "symbolic link"), (fifo, "FIFO"), (folder, "folder"), ("/dev/null", "device")):
        msg = one_error(invoke("export", sd_file, path))
        assert kind in msg or (kind == "folder" and "directory" in msg)
        with pytest.raises(OutputPathError, match=kind):
            with atomic_write(path, "w") as fh:
                fh.write("x")
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir()
    assert target.read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["dir.graphml", "link.graphml", "m.pt", "pipe.graphml", "real.graphml"]


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "x"])
def test_min_weight_must_be_finite_and_non_negative(sd_file, tmp_path, value):
    out = tmp_path / "g.graphml"
    assert "--min-weight" in one_error(invoke("export", sd_file, out, "--min-weight", value), 2)
    assert not out.exists()


def _checkpoint_with_clustering(path, clustering):
    torch.manual_seed(0)
    ckpt = save_checkpoint(path, build_model(SPEC), arch=SPEC)
    ckpt["clustering"] = clustering
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("record, why", [
    ({"k": 2, "layers": [{"name": "fc2", "rows": [0.0, 1.5] * 6, "cols": [0, 1] * 6}]}, "integers"),
    ({"k": 1000, "layers": [{"name": "fc2", "rows": [0, 1, 2, 3] * 3, "cols": [0, 1, 2, 3] * 3}]}, "k=1000"),
    ({"k": "4", "layers": [{"name": "fc2", "rows": [0, 1, 2, 3] * 3, "cols": [0, 1, 2, 3] * 3}]}, "k must be"),
    ({"k": True, "layers": [{"name": "fc2", "rows": [0] * 12, "cols": [0] * 12}]}, "k must be"),
    ({"k": 2, "layers": [{"name": "fc2", "rows": [0, 1] * 6, "cols": [0, 2] * 6}]}, "-1..1"),
    ({"k": 2, "layers": [{"name": 3, "rows": [0, 1] * 6, "cols": [0, 1] * 6}]}, "name"),
])
def test_malformed_stored_clustering_is_refused(tmp_path, record, why):
    path = _checkpoint_with_clustering(tmp_path / "bad.pt", record)
    with pytest.raises(ClusteringError, match=why):
        Clustering.from_dict(record)
    assert "malformed clustering" in one_error(invoke("export", path, tmp_path / "g.graphml", "--stored"))
    assert "malformed clustering" in one_error(invoke("ablate", path, "--device", "cpu", "--limit", "20"))
    assert not (tmp_path / "g.graphml").exists()


@pytest.mark.parametrize("record, why", [
    ({"k": 2, "layers": [{"name": "fc2", "rows": [0.0, 1.0] * 6, "cols": [0, 1] * 6}]}, "got float64"),
    ({"k": "2", "layers": [{"name": "fc2", "rows": [0, 1] * 6, "cols": [0, 1] * 6}]}, "k must be an integer >= 2, got '2'"),
])
def test_every_command_reads_a_stored_clustering_the_same_way(tmp_path, record, why):
    """analyze, export, ablate and plot read a stored clustering through one function: one identical line."""
    path = _checkpoint_with_clustering(tmp_path / "bad.pt", record)
    lines = {one_error(invoke("analyze", path)),
             one_error(invoke("export", path, tmp_path / "g.graphml", "--stored")),
             one_error(invoke("ablate", path, "--device", "cpu", "--limit", "20")),
             one_error(invoke("plot", "layer", path, "--layer", "fc2", "--out", tmp_path / "f.png"))}
    assert len(lines) == 1 and why in lines.pop()


def test_k_above_the_non_isolated_nodes_gives_one_message_in_analyze_export_and_train(tmp_path):
    """One rule for k: the non-isolated nodes on each side of each clustered layer; the message names the layer."""
    from graphinterp.sources.specs import default_spec

    spec = default_spec("digits", "mlp")
    torch.manual_seed(0)
    model = build_model(spec)
    n = model.fc2.weight.shape[0]
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, arch=spec)
    expected = (f"Invalid value for --k: k={n + 1} is out of range for layer 'fc2': it has {n} non-isolated inputs "
                f"and {n} non-isolated outputs; use 2 <= k <= {n}, or leave layer 'fc2' out (--layers)")
    # a bad --k, as any bad argument: exit code 2 (train exited 1)
    assert usage_error(invoke("analyze", path, "--k", n + 1, "--layers", "fc2")) == expected
    assert usage_error(invoke("export", path, tmp_path / "g.graphml", "--k", n + 1, "--layers", "fc2")) == expected
    assert usage_error(invoke("train", "--k", n + 1, "--max-train", "64", "--device", "cpu",
                              "--out", tmp_path / "t.pt")) == expected
    assert usage_error(invoke("ablate", path, "--k", n + 1, "--layers", "fc2", "--device", "cpu",
                              "--limit", "20")) == expected
    assert usage_error(invoke("associate", path, "--k", n + 1, "--layers", "fc2", "--device", "cpu",
                              "--max-examples", "50")) == expected
    # plot layer has --layer, not --layers: no advice to leave the layer out
    assert usage_error(invoke("plot", "layer", path, "--layer", "fc2", "--k", n + 1, "--out",
                              tmp_path / "p.png")) == expected.split(", or leave")[0]
    assert not (tmp_path / "g.graphml").exists() and not (tmp_path / "t.pt").exists()
    with torch.no_grad():  # an isolated input lowers the limit: k = n is now one too many
        model.fc2.weight[:, 0] = 0
    save_checkpoint(path, model, arch=spec)
    msg = one_error(invoke("export", path, tmp_path / "g.graphml", "--k", n, "--layers", "fc2"))
    assert f"it has {n - 1} non-isolated inputs and {n} non-isolated outputs" in msg


def test_control_characters_in_layer_names_give_parseable_files(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ctl.pt"
    torch.save({"a\x01$x^$.weight": torch.randn(6, 8), "b\x1f.weight": torch.randn(4, 6)}, path)
    res = invoke("export", path, tmp_path / "g.graphml", "--k", "2")
    assert res.exit_code == 0, res.output
    G = nx.read_graphml(tmp_path / "g.graphml")
    assert G.number_of_nodes() == 8 + 6 + 4 and {d["layer"] for _, _, d in G.edges(data=True)} == {"a\\x01$x^$", "b\\x1f"}
    for layer in ("a\x01$x^$", "b\x1f"):
        svg = tmp_path / f"{layer[0]}.svg"
        res = invoke("plot", "layer", path, "--layer", layer, "--k", "2", "--kind", "both", "--out", svg)
        assert res.exit_code == 0, res.output
        ET.parse(svg)  # valid XML
    assert plain_text("a\x01$") == "a\\x01\\$"


@pytest.mark.parametrize("lam", ["1e30", "nan", "inf", "-1"])
def test_lambda_is_bounded(tmp_path, lam):
    assert "--lambda (lam) must be" in one_error(invoke("train", "--lambda", lam, "--out", tmp_path / "t.pt"), 2)
    assert "--lambda (lam) must be" in one_error(invoke("train", "--dataset", "modadd", "--lambda", lam, "--out",
                                                        tmp_path / "t.pt"), 2)
    with pytest.raises(TrainingError, match=r"--lambda \(lam\) must be"):
        TrainConfig(lam=float(lam)).validate()
    assert os.listdir(tmp_path) == []


def test_second_training_of_the_same_output_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "t.pt"
    monkeypatch.setattr(train_mod, "_epoch", lambda *a, **k: pytest.fail("trained although the output is locked"))
    with output_lock(out):  # as a first run does while it trains
        assert "another process" in one_error(invoke("train", "--out", out, "--device", "cpu", "--epochs", "1"))
    assert not out.exists() and os.listdir(tmp_path) == []  # the lock file is gone once released


def test_lock_is_held_across_processes_and_released_when_the_holder_dies(tmp_path):
    out = tmp_path / "t.pt"
    code = textwrap.dedent(f"""
        import sys, time
        from graphinterp.common.files import output_lock
        with output_lock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputPathError, match="another process"):
            with output_lock(out):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with output_lock(out):  # the kernel released the dead holder's lock
        pass


def test_temp_file_of_a_killed_writer_is_named_and_cleaned_up(tmp_path):
    out = tmp_path / "model.pt"
    code = textwrap.dedent(f"""
        import time
        from graphinterp.common.files import atomic_write
        with atomic_write({str(out)!r}, "wb") as fh:
            fh.write(b"partial")
            fh.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].startswith(".model.pt.graphinterp-") and left[0].endswith(".tmp")
    with atomic_write(out, "wb") as fh:  # the next write of the same output removes the dead writer's file
        fh.write(b"done")
    assert os.listdir(tmp_path) == ["model.pt"] and out.read_bytes() == b"done"


def test_live_writers_temp_files_are_kept(tmp_path):
    out = tmp_path / "x.json"
    live = tmp_path / f".x.json.graphinterp-{os.getppid()}-abcd.tmp"  # our parent is alive
    live.write_text("busy")
    with atomic_write(out, "w") as fh:
        fh.write("{}")
    assert live.exists()


# ------------------------------------------------------------------ the validators themselves
def test_validators():
    assert check_seed("0") == 0 and check_seed(2**32 - 1) == 2**32 - 1
    for bad in (-1, 2**32, "1e3", True, 1.5, "\u0663", "\uff17"):
        with pytest.raises(click.BadParameter):
            check_seed(bad)
    assert check_device("cpu") == "cpu"
    for bad in ("meta", "foo", "cuda:x"):
        with pytest.raises(click.BadParameter):
            check_device(bad)
    unit = FiniteFloat(0, 1, low_open=True)
    assert unit.convert("1", None, None) == 1.0
    for bad in ("0", "1.01", "nan", "-inf", "abc"):
        with pytest.raises(click.BadParameter):
            unit.convert(bad, None, None)
    with pytest.raises(click.BadParameter, match="not a finite"):
        FiniteFloat().convert("inf", None, None)
    with pytest.raises(click.BadParameter, match="mathtext"):
        check_title(r"$\frac$")
    with pytest.raises(click.BadParameter, match="control"):
        check_title("a\x00b")


def test_check_output_path_and_dir(tmp_path):
    src = tmp_path / "in.pt"
    src.write_bytes(b"x")
    assert check_output_path(tmp_path / "o.svg", suffixes=(".svg",)).endswith("o.svg")
    with pytest.raises(click.BadParameter, match="folder .* does not exist; create it first or fix the path"):
        check_output_path(tmp_path / "new" / "deep" / "o.svg", suffixes=(".svg",))  # no mkdir -p for a typo
    assert not (tmp_path / "new").exists()  # nothing created
    with pytest.raises(click.BadParameter, match="also an input"):
        check_output_path(src, inputs=[src])
    with pytest.raises(click.BadParameter, match="suffix"):
        check_output_path(tmp_path / "o.jpg", suffixes=(".png",))
    with pytest.raises(click.BadParameter, match="not a file name"):
        check_output_path(str(tmp_path) + "/")
    with pytest.raises(click.BadParameter, match="not a folder"):
        check_output_dir(src)
    assert check_output_dir(tmp_path / "gml") == str(tmp_path / "gml") and not (tmp_path / "gml").exists()
    with pytest.raises(click.BadParameter, match="does not exist"):  # only the last component may be created
        check_output_dir(tmp_path / "new" / "gml")
    assert sorted(os.listdir(tmp_path)) == ["in.pt"]


def test_stored_clustering_record_roundtrip_still_works():
    c = Clustering(3, {"a": np.array([0, 1, 2, -1])}, {"a": np.array([2, 1, 0])}, network_wide=True)
    back = Clustering.from_dict(c.to_dict())
    assert back.k == 3 and back.network_wide and back.row_labels["a"].tolist() == [0, 1, 2, -1]


def test_every_k_option_has_one_click_type():
    """A single k is ``IntRange(min=2)`` in every command; analyze and benchmark read K|A..B|A,B as text."""
    ctx = click.Context(cli)

    def options(cmd, path):
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                yield from options(cmd.get_command(ctx, name), f"{path} {name}".strip())
        else:
            for p in cmd.params:
                if any(o in ("--k", "--significance-k") for o in getattr(p, "opts", [])):
                    yield path, p

    found = {}
    for path, p in options(cli, ""):
        if p.name == "k_text":
            assert path in ("analyze", "benchmark") and p.type == click.STRING
        else:
            assert isinstance(p.type, click.IntRange) and (p.type.min, p.type.max, p.type.min_open) == (2, None, False), path
        found[path] = p
    assert {"ablate", "analyze", "benchmark", "export", "plot layer", "train"} <= set(found)


def test_a_layer_named_twice_is_refused():
    import click

    from graphinterp.cli._options import check_layers
    from graphinterp.graph.layered import LayeredGraph

    g = LayeredGraph.from_module(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4)))
    with pytest.raises(click.BadParameter, match="twice"):
        check_layers(g, ["0", "0"])


def test_an_empty_name_is_refused_not_taken_for_no_figure_or_the_current_folder(tmp_path):
    """`--plot ""` was read as no --plot (no figure, exit 0) and an empty MODEL as the current folder ("." is a
    folder without config.json)."""
    from _cli_helpers import invoke, usage_error

    model = tmp_path / "m.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)).state_dict(), model)
    assert "'--plot': the name is empty; give a path or leave the option out" in usage_error(
        invoke("analyze", model, "--k", "2", "--plot", ""))
    for command in ("analyze", "ablate", "associate", "circuits", "export"):  # every command's MODEL
        assert "the name is empty; give the model's path or name" in usage_error(invoke(command, "", "out.graphml"))
    assert "'--out': the name is empty; give a path or leave the option out" in usage_error(
        invoke("benchmark", model, "--out", ""))  # it failed after the whole benchmark
    assert "'OUT': the name is empty; give a path" in usage_error(invoke("export", model, ""))


def test_another_machines_temp_files_are_kept_and_old_names_still_cleaned(tmp_path):
    """In a folder shared between machines the process ids in other machines' temporary files mean nothing here:
    one whose id is not running on this machine was removed while that machine was still writing it. Names from
    before the host tag (no host) are this machine's, and still cleaned when their process is gone."""
    from graphinterp.common import files

    out = tmp_path / "x.json"
    other = "0" * 8 if files._HOST != "0" * 8 else "f" * 8
    dead = 2 ** 22 + 12345  # above Linux's largest pid: never running
    theirs = tmp_path / f".x.json.graphinterp-{other}-{dead}-abcd.tmp"
    ours_old = tmp_path / f".x.json.graphinterp-{dead}-abcd.tmp"
    ours = tmp_path / f".x.json.graphinterp-{files._HOST}-{dead}-abcd.tmp"
    for p in (theirs, ours_old, ours):
        p.write_text("left")
    with atomic_write(out, "w") as fh:
        fh.write("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([theirs.name, "x.json"])


def test_a_file_without_layer_weights_is_named_in_the_error(tmp_path):
    """`error: no layer weight tensor in the state_dict; ...` did not say which file (benchmark and circuits --compare
    read several)."""
    from _cli_helpers import invoke, one_error

    path = tmp_path / "bias_only.pt"
    torch.save({"fc.bias": torch.zeros(3)}, path)
    assert one_error(invoke("analyze", path, "--k", "2")).startswith(f"error: {path}: no layer weight tensor")
