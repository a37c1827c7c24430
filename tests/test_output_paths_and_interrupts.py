"""Output folders must exist, Ctrl-C says what was left behind (and is never lost), --max-train above the
data is a note.

Each test uses the embedded digits data or a tiny random model and runs in a few seconds.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click
import pytest
import torch

import graphinterp.cli.benchmark as benchmark_cli
import graphinterp.cli.export as export_cli
import graphinterp.training.train as train_mod
from _cli_helpers import invoke, one_error
from graphinterp.cli._common import check_output_dir, check_output_path
from graphinterp.common.denormal import _openmp_parallel, denormals_flushed
from graphinterp.common.files import OutputPathError, atomic_write, check_writable
from graphinterp.sources.checkpoint import load_checkpoint
from graphinterp.training.train import TrainConfig, TrainingInterrupted, train
from graphinterp.training.train_state import held_interrupts

pytestmark = pytest.mark.usefixtures("one_thread")

MISSING = "folder 'reslts' does not exist; create it first or fix the path"
FAST = ["--k", "2", "--warmup-epochs", "1", "--max-train", "200", "--device", "cpu", "--quiet"]


# ------------------------------------------------------------------ 1. an output file's folder must exist
def test_output_file_in_a_missing_folder_is_refused_before_any_work(sd_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_mod, "_epoch", lambda *a, **k: pytest.fail("trained before checking --out"))
    for args in (["analyze", "m.pt", "--k", "2", "--plot", "reslts/fig.png"],
                 ["export", "m.pt", "reslts/g.graphml", "--k", "2"],
                 ["train", "--out", "reslts/m.pt", *FAST]):
        assert MISSING in one_error(invoke(*args), 2), args
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # no folder 'reslts' was made
    # nested: the folder named is the output's own folder
    assert "folder 'a/b' does not exist" in one_error(invoke("export", "m.pt", "a/b/g.graphml", "--k", "2"), 2)
    # an existing folder still works
    (tmp_path / "results").mkdir()
    assert invoke("export", "m.pt", "results/g.graphml", "--k", "2").exit_code == 0
    assert (tmp_path / "results" / "g.graphml").is_file()


def test_the_rule_lives_in_check_writable(tmp_path):
    with pytest.raises(OutputPathError, match="does not exist; create it first"):
        check_writable(tmp_path / "new" / "x.json", parent_must_exist=True)
    assert check_writable(tmp_path / "new" / "x.json").name == "x.json"  # the Python writers create folders
    with pytest.raises(click.BadParameter, match="folder .*new.* does not exist"):
        check_output_path(tmp_path / "new" / "o.svg")
    assert not (tmp_path / "new").exists()


def test_output_folder_is_created_only_as_the_last_component(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output_dir("report") == "report" and not (tmp_path / "report").exists()
    with pytest.raises(click.BadParameter, match="folder 'reslts' does not exist; create it first or fix the path"):
        check_output_dir("reslts/report")
    monkeypatch.setattr(benchmark_cli, "run_benchmark", lambda *a, **k: pytest.fail("benchmarked before checking"))
    assert MISSING in one_error(invoke("benchmark", "x.pt", "--out", "reslts/report"), 2)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ 2. Ctrl-C says what was left behind
def _interrupt_at_evaluation(monkeypatch, n):
    """Make the ``n``-th end-of-epoch evaluation raise KeyboardInterrupt (epoch ``n`` is not saved)."""
    real, calls = train_mod.evaluate, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    return real


def test_interrupted_train_says_where_the_resumable_state_is(tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    real = _interrupt_at_evaluation(monkeypatch, 2)
    msg = one_error(invoke("train", "--epochs", "2", "--out", out, *FAST), 130)
    assert msg == (f"error: interrupted; {out} holds the training state after epoch 1 of 3; "
                   "continue with the same command plus --resume")
    assert load_checkpoint(out)["train_state"]["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no lock or temporary file left
    # the advice works: --resume finishes the run
    monkeypatch.setattr(train_mod, "evaluate", real)
    res = invoke("train", "--epochs", "2", "--out", out, "--resume", "--json", *FAST)
    assert res.exit_code == 0, res.stderr
    assert [r["epoch"] for r in json.loads(res.stdout)["history"]] == [1, 2, 3]


def test_interrupted_train_before_a_checkpoint_says_nothing_was_written(tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    _interrupt_at_evaluation(monkeypatch, 1)
    msg = one_error(invoke("train", "--epochs", "1", "--out", out, *FAST), 130)
    assert msg == f"error: interrupted; no checkpoint had been written to {out} yet; run again to start over"
    assert not out.exists()
    out.write_bytes(b"an older file")  # not a graphinterp checkpoint: a new run refuses to replace it
    assert "is not a graphinterp checkpoint" in one_error(invoke("train", "--epochs", "1", "--out", out, *FAST), 2)
    assert out.read_bytes() == b"an older file"
    out.unlink()
    assert invoke("train", "--epochs", "1", "--out", out, *FAST).exit_code == 0  # an older checkpoint
    older = out.read_bytes()
    _interrupt_at_evaluation(monkeypatch, 1)  # without --resume an existing --out is left as it was
    msg = one_error(invoke("train", "--epochs", "1", "--out", out, *FAST), 130)
    assert msg == f"error: interrupted; nothing was written; {out} is unchanged"
    assert out.read_bytes() == older


def test_training_interrupted_is_a_keyboard_interrupt_with_the_state(tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    _interrupt_at_evaluation(monkeypatch, 2)
    cfg = TrainConfig(k=2, warmup_epochs=1, epochs=1, max_train=200, quiet=True, device="cpu")
    with pytest.raises(KeyboardInterrupt) as info:
        train(cfg, checkpoint=out)
    err = info.value
    assert isinstance(err, TrainingInterrupted) and err.resumable
    assert (err.checkpoint, err.unit, err.saved, err.total) == (str(out), "epoch", 1, 2)
    assert str(err) == f"training interrupted; {out} holds the training state after epoch 1 of 2; " \
                       "train again with resume=True to continue"


def test_interrupted_command_names_the_outputs_it_wrote(sd_file, tmp_path, monkeypatch):
    out = tmp_path / "g.graphml"

    def write_then_stop(graph, path, *args, **kwargs):
        with atomic_write(path, "w") as handle:
            handle.write("<graphml/>")
        raise KeyboardInterrupt

    def stop_while_writing(graph, path, *args, **kwargs):
        with atomic_write(path, "w") as handle:
            handle.write("<graph")
            raise KeyboardInterrupt

    monkeypatch.setattr(export_cli, "export_graphml", stop_while_writing)
    assert one_error(invoke("export", sd_file, out, "--k", "2"), 130) == "error: interrupted; no output was written"
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]
    out.write_text("old")
    assert one_error(invoke("export", sd_file, out, "--k", "2"), 130) == \
        "error: interrupted; no output was written (existing files are unchanged)"
    assert out.read_text() == "old"
    monkeypatch.setattr(export_cli, "export_graphml", write_then_stop)
    msg = one_error(invoke("export", sd_file, out, "--k", "2"), 130)
    assert msg == f"error: interrupted after writing {out} (each file complete; outputs not named were not written)"


def test_interrupted_benchmark_names_the_report_files_it_wrote(tmp_path, monkeypatch):
    report = tmp_path / "report"
    report.mkdir()
    (report / "old.csv").write_text("from an earlier run")

    class Report:
        models = ["m"]

    def write_two_then_stop(rep, out, **kwargs):
        for name in ("benchmark.json", "clusterability.csv"):
            with atomic_write(Path(out) / name, "w") as handle:
                handle.write("x")
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark_cli, "run_benchmark", lambda *a, **k: Report())
    monkeypatch.setattr(benchmark_cli, "write_report", write_two_then_stop)
    msg = one_error(invoke("benchmark", "x.pt", "--out", report), 130)
    assert msg == (f"error: interrupted after writing {report / 'benchmark.json'}, {report / 'clusterability.csv'} "
                   "(each file complete; outputs not named were not written)")


def test_replaced_files_and_files_left_from_an_earlier_run_are_noted(sd_file, tmp_path, monkeypatch):
    """A second `benchmark --out report/` left the first run's figures beside its own without a word; export,
    `analyze --plot` and `plot` replaced an existing file silently (train already said so)."""
    monkeypatch.chdir(tmp_path)
    res = invoke("export", "m.pt", "g.graphml", "--k", "2")
    assert res.exit_code == 0 and "note: replaced" not in res.stderr
    res = invoke("export", "m.pt", "g.graphml", "--k", "2")
    assert res.exit_code == 0 and "note: replaced the existing g.graphml" in res.stderr

    # a folder: the files it held that the command did not rewrite (benchmark names its report's own)
    from graphinterp.cli._paths import note_replaced_outputs

    out = tmp_path / "circuits"
    out.mkdir()
    (out / "label_7.graphml").write_text("from an earlier run")
    with click.Context(click.Command("x")) as ctx:
        check_output_dir(out)
        assert note_replaced_outputs(ctx) == []  # nothing written yet: nothing to say
        with atomic_write(out / "label_0.graphml", "w") as handle:
            handle.write("new")
        assert note_replaced_outputs(ctx) == [f"{out} also holds 1 file(s) from before that this run did not write "
                                              "(label_7.graphml): they are not part of this run's output"]
    with click.Context(click.Command("x")) as ctx:
        check_output_dir(out, note_stale=False)
        with atomic_write(out / "label_0.graphml", "w") as handle:
            handle.write("newer")
        assert note_replaced_outputs(ctx) == [f"replaced 1 existing file(s) in {out}: label_0.graphml"]


# ------------------------------------------------------------------ 2b. a real Ctrl-C is never lost
# Each test sends a real SIGINT (``signal.raise_signal``) at a place where Python would lose the
# KeyboardInterrupt, and bounds what a lost one would cost, so a regression fails instead of hanging.
def _sigint() -> None:
    signal.raise_signal(signal.SIGINT)


def test_held_interrupts_delivers_the_interrupt_when_the_block_ends():
    done = []
    with pytest.raises(KeyboardInterrupt), held_interrupts():
        _sigint()
        done.append("block")
    assert done == ["block"]
    with pytest.raises(KeyboardInterrupt) as info, held_interrupts():  # also after an error, its context
        _sigint()
        raise ValueError("disk full")
    assert isinstance(info.value.__context__, ValueError)
    # a KeyboardInterrupt from the block is the only one
    with pytest.raises(KeyboardInterrupt) as info, held_interrupts():
        _sigint()
        raise KeyboardInterrupt("mine")
    assert str(info.value) == "mine"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_subnormal_flushing_starts_is_not_lost(tmp_path, monkeypatch):
    """flush_denormals sets each OpenMP thread's flag from a ctypes callback, and ctypes drops an exception
    raised there: the KeyboardInterrupt used to vanish and the run trained to its end. Held, it is raised
    once flush_denormals is entered and its exit registered."""
    if not _openmp_parallel():
        pytest.skip("no OpenMP runtime to run the callback on")
    real, fired = torch.set_flush_denormal, []

    def set_flush_denormal(flag):
        if sys._getframe(1).f_code.co_name == "<lambda>" and threading.current_thread() is threading.main_thread() \
                and not fired:
            fired.append(flag)
            _sigint()  # Ctrl-C inside the callback, in the main thread, which handles it
        return real(flag)

    monkeypatch.setattr(torch, "set_flush_denormal", set_flush_denormal)
    was, threads = denormals_flushed(), torch.get_num_threads()
    torch.set_num_threads(2)  # the callback runs only with more than one thread
    try:
        cfg = TrainConfig(k=2, warmup_epochs=1, epochs=2, max_train=200, quiet=True, device="cpu")
        with pytest.raises(TrainingInterrupted) as info:
            train(cfg, checkpoint=tmp_path / "m.pt")
    finally:
        torch.set_num_threads(threads)
    assert fired == [True]
    assert info.value.saved is None and not (tmp_path / "m.pt").exists()
    # and the flag was restored: a flush_denormals left entered made the interpreter hang at exit
    assert denormals_flushed() == was


def test_ctrl_c_just_after_the_checkpoint_is_renamed_reports_that_checkpoint(tmp_path, monkeypatch):
    """The checkpoint is in place before the run records it: an interrupt between the two used to report
    the epoch before the one the file holds."""
    out = tmp_path / "m.pt"
    real, renames = os.replace, []

    def replace(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        if Path(dst) == out:
            renames.append(dst)
            if len(renames) == 2:
                _sigint()

    monkeypatch.setattr(os, "replace", replace)
    msg = one_error(invoke("train", "--epochs", "2", "--out", out, *FAST), 130)
    epoch = load_checkpoint(out)["train_state"]["epoch"]
    assert epoch == 2
    assert msg == (f"error: interrupted; {out} holds the training state after epoch {epoch} of 3; "
                   "continue with the same command plus --resume")


@pytest.mark.parametrize("where", ["import", "__del__"])
def test_ctrl_c_where_python_would_lose_it_still_ends_train(where, tmp_path, monkeypatch):
    """A Ctrl-C while a module initialises (``import torch`` drops one raised while torch._C imports numpy)
    or inside ``__del__`` ("Exception ignored") is held until that ends, then ends the command."""
    name = f"graphinterp_test_drops_interrupt_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(
        "import signal\n"
        "try:  # Ctrl-C while this module initialises ...\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "except KeyboardInterrupt:  # ... which it drops, as the initialisation of torch._C does\n"
        "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class Dropper:
        def __del__(self):
            _sigint()

    real_epoch, calls = train_mod._epoch, []

    def epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            if where == "import":
                importlib.import_module(name)
            else:
                Dropper()  # collected at once
            deadline = time.monotonic() + 3  # the held interrupt arrives here; a lost one lets training go on
            while time.monotonic() < deadline:
                time.sleep(0.005)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_epoch", epoch)
    out = tmp_path / "m.pt"
    try:
        msg = one_error(invoke("train", "--epochs", "2", "--out", out, *FAST), 130)
    finally:
        sys.modules.pop(name, None)
    assert msg == (f"error: interrupted; {out} holds the training state after epoch 1 of 3; "
                   "continue with the same command plus --resume")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the command's handler is gone


# ------------------------------------------------------------------ 3. --max-train above the training set
def test_max_train_above_the_training_set_is_a_note(tmp_path):
    out = tmp_path / "m.pt"
    note = "digits has only 1437 training examples, fewer than the 5000 asked for; all 1437 are used"
    res = invoke("train", "--epochs", "0", "--k", "2", "--max-train", "5000", "--device", "cpu", "--json", "--out", out)
    assert res.exit_code == 0, res.stderr
    assert f"note: {note}" in res.stderr.splitlines()
    assert json.loads(res.stdout)["notes"] == [note]
    res = invoke("train", "--epochs", "0", "--k", "2", "--max-train", "1437", "--device", "cpu", "--json", "--out",
                 tmp_path / "other.pt")
    assert res.exit_code == 0 and "note:" not in res.stderr and json.loads(res.stdout)["notes"] == []


def test_max_train_note_in_python(monkeypatch):
    heard = []
    cfg = TrainConfig(k=2, warmup_epochs=1, epochs=0, max_train=5000, max_test=10, quiet=True, device="cpu")
    result = train(cfg, on_note=heard.append)
    assert heard == result.notes and len(heard) == 1 and "all 1437 are used" in heard[0]


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_train_below_one_is_refused_before_work(tmp_path, monkeypatch, value):
    monkeypatch.setattr(train_mod, "_load_data", lambda *a, **k: pytest.fail("loaded data before checking"))
    msg = one_error(invoke("train", "--max-train", value, "--out", tmp_path / "m.pt"), 2)
    assert "--max-train" in msg and f"{value} is not in the range x>=1" in msg
    assert os.listdir(tmp_path) == []


def test_a_closed_output_pipe_ends_the_command_quietly(tmp_path):
    """`graphinterp ... | head -1`: the reader goes away; no 'error: Broken pipe' line, the shell's SIGPIPE status."""
    import subprocess

    model = tmp_path / "m.pt"
    assert invoke("train", "--epochs", "1", "--out", model, *FAST).exit_code == 0
    proc = subprocess.Popen([sys.executable, "-m", "graphinterp.cli", "analyze", str(model), "--k", "2..6", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # nobody reads the report
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err.decode()) == (141, "")


def test_a_command_inside_another_or_in_a_thread_leaves_the_ctrl_c_guard_alone():
    """Only the outermost command of the main thread switches SIGINT handling on and off: a nested command, or one
    run in another thread (a test runner, a notebook), used to switch it off under the running command, or to leave
    a handler that swallowed every later Ctrl-C."""
    import warnings

    from graphinterp.cli._interrupts import command_frame

    with command_frame():
        handler, fmt = signal.getsignal(signal.SIGINT), warnings.formatwarning
        assert handler is not signal.default_int_handler
        assert invoke("--help").exit_code == 0  # a command inside this one
        done = []
        thread = threading.Thread(target=lambda: done.append(invoke("--help").exit_code))
        thread.start()
        thread.join()
        assert done == [0]
        assert (signal.getsignal(signal.SIGINT), warnings.formatwarning) == (handler, fmt)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # and Ctrl-C works afterwards
        _sigint()
        time.sleep(0.05)



def test_sigterm_ends_train_as_ctrl_c_does_with_its_own_status(tmp_path):
    """`kill`, `timeout` or a scheduler's time limit send SIGTERM: by default it killed the process at once,
    leaving the checkpoint's lock file (and any temporary output) behind with no word. It now runs the command's
    cleanup and says where the resumable state is, with exit status 143 (128 + SIGTERM)."""
    import subprocess

    out = tmp_path / "m.pt"
    proc = subprocess.Popen([sys.executable, "-m", "graphinterp.cli", "train", "--dataset", "digits", "--epochs", "500",
                             "--warmup-epochs", "1", "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # the first checkpoint: the run is under way
        assert out.exists() and proc.poll() is None, "train ended or wrote nothing in 120 s"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 143, err.decode()
    assert lines[-1].startswith(f"error: terminated (SIGTERM); {out} holds the training state after epoch "), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no lock, no temporary file
    assert load_checkpoint(out)["train_state"]["epoch"] >= 1
