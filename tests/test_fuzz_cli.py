"""Property-based fuzzing of command-line inputs (hypothesis).

For every generated input the command either succeeds, writing exactly the named output, or fails
with a non-zero exit code and exactly one ``error: ...`` line on stderr: never a traceback, never a
changed input file, never a stray file beside the output.
"""
from __future__ import annotations

import inspect
import math
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

import networkx as nx
import pytest
import torch
from click.testing import CliRunner

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from graphinterp.sources.checkpoint import save_checkpoint  # noqa: E402
from graphinterp.cli._common import MAX_RANGE_VALUES, SEED_MAX, parse_int_ranges, parse_k_values  # noqa: E402
from graphinterp.cli.main import cli  # noqa: E402
from graphinterp.sources.models import build_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SPEC = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [12, 12], "num_classes": 10}}


def _runner():
    kwargs = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}
    return CliRunner(**kwargs)


def invoke(*args):
    return _runner().invoke(cli, [str(a) for a in args])


def _model_bytes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 8, bias=False), torch.nn.ReLU(), torch.nn.Linear(8, 6, bias=False))
    path = Path(tempfile.mkdtemp()) / "m.pt"
    torch.save(model.state_dict(), path)
    data = path.read_bytes()
    shutil.rmtree(path.parent)
    return data


def _checkpoint_bytes():
    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp()) / "c.pt"
    save_checkpoint(path, build_model(SPEC), arch=SPEC)
    data = path.read_bytes()
    shutil.rmtree(path.parent)
    return data


MODEL = _model_bytes()
CHECKPOINT = _checkpoint_bytes()


@contextmanager
def sandbox(**files):
    """A fresh folder holding ``files`` (name -> bytes); yields (folder, snapshot function)."""
    folder = Path(tempfile.mkdtemp(prefix="gi-fuzz-"))
    try:
        for name, data in files.items():
            (folder / name).write_bytes(data)
        yield folder
    finally:
        for root, dirs, _ in os.walk(folder):
            for d in dirs:
                os.chmod(os.path.join(root, d), stat.S_IRWXU)
        shutil.rmtree(folder, ignore_errors=True)


def snapshot(folder: Path):
    out = {}
    for p in sorted(folder.rglob("*")):
        st_ = os.lstat(p)
        kind = "link" if stat.S_ISLNK(st_.st_mode) else "dir" if stat.S_ISDIR(st_.st_mode) else \
            "file" if stat.S_ISREG(st_.st_mode) else "other"
        out[p.relative_to(folder).as_posix()] = (kind, p.read_bytes() if kind == "file" else None)
    return out


def check(res, before, after, *, output=None, must_fail=False):
    """The contract: clean failure that changed nothing, or success that added only ``output``."""
    assert "Traceback" not in res.stdout + res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if res.exit_code != 0:
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, res.stderr
        assert after == before, "a failed command changed the folder"
        return False
    assert not must_fail, f"invalid input accepted: {res.stdout}"
    added = set(after) - set(before)
    assert {k: v for k, v in after.items() if k in before} == before, "an input or existing file changed"
    assert output is not None and added <= {output} | {p for p in added if output.startswith(p + "/")}
    assert output in after and after[output][0] == "file"
    return True


# ------------------------------------------------------------------ numbers
numbers = st.one_of(
    st.integers(-10, 12).map(str),
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "", " ", "0x10", "2.5", "1_0", "١", "--1"]),
    st.text(max_size=6),
)


@FUZZ
@given(k=numbers, min_weight=numbers, seed=numbers)
def test_export_numbers(k, min_weight, seed):
    with sandbox(**{"m.pt": MODEL}) as folder:
        before = snapshot(folder)
        res = invoke("export", folder / "m.pt", folder / "g.graphml", "--k", k, "--min-weight", min_weight,
                     "--seed", seed)
        after = snapshot(folder)
        invalid = False
        try:
            kv, sv, mw = int(k.strip(), 10), int(seed.strip(), 10), float(min_weight)
            invalid = kv < 2 or not 0 <= sv <= SEED_MAX or not math.isfinite(mw) or mw < 0
        except ValueError:
            pass
        if check(res, before, after, output="g.graphml", must_fail=invalid):
            nx.read_graphml(folder / "g.graphml")


# ------------------------------------------------------------------ ranges
range_text = st.one_of(
    st.lists(st.one_of(st.integers(-3, 20).map(str),
                       st.tuples(st.integers(-5, 2**40), st.integers(-5, 2**40)).map(lambda t: f"{t[0]}-{t[1]}"),
                       st.text(alphabet="0123456789-,. x", max_size=5)), max_size=4).map(",".join),
    st.text(max_size=12),
)


@FUZZ
@given(text=range_text)
def test_range_parsers_never_blow_up(text):
    import click

    for parse in (lambda t: parse_int_ranges(t, param_hint="--labels"), parse_k_values):
        try:
            values = parse(text)
        except click.BadParameter:
            continue
        assert 0 < len(values) <= MAX_RANGE_VALUES and all(isinstance(v, int) for v in values)


@settings(FUZZ, max_examples=25)
@given(text=range_text, level=st.sampled_from(["fc1", "fc2", "input", "fc9", ""]))
def test_ablate_neurons(text, level):
    with sandbox(**{"c.pt": CHECKPOINT}) as folder:
        before = snapshot(folder)
        res = invoke("ablate", folder / "c.pt", "--neurons", f"{level}:{text}", "--limit", "16", "--device", "cpu",
                     "--json")
        after = snapshot(folder)
        assert "Traceback" not in res.stdout + res.stderr
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        assert after == before
        if res.exit_code != 0:
            assert len([l for l in res.stderr.splitlines() if l.startswith("error:")]) == 1, res.stderr


# ------------------------------------------------------------------ paths
name_chars = st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",))
scenarios = st.sampled_from(["new", "nested", "same", "hardlink", "parent-file", "dir", "symlink", "fifo", "existing",
                             "dotdot-same", "name"])


@FUZZ
@given(scenario=scenarios, name=st.text(name_chars, min_size=1, max_size=40))
def test_export_output_paths(scenario, name):
    if name in (".", ".."):
        name = "x" + name
    with sandbox(**{"m.pt": MODEL}) as folder:
        sub = folder / "sub"
        sub.mkdir()
        out, rel, must_fail = sub / "g.graphml", "sub/g.graphml", False
        if scenario == "nested":
            out, rel, must_fail = sub / "a" / "b" / "g.graphml", "sub/a/b/g.graphml", True  # missing folders
        elif scenario == "same":
            out, must_fail = folder / "m.pt", True
        elif scenario == "dotdot-same":
            out, must_fail = sub / ".." / "m.pt", True
        elif scenario == "hardlink":
            os.link(folder / "m.pt", out)
            must_fail = True
        elif scenario == "parent-file":
            (sub / "f").write_text("x")
            out, must_fail = sub / "f" / "g.graphml", True
        elif scenario == "dir":
            out.mkdir()
            must_fail = True
        elif scenario == "symlink":
            (sub / "target").write_text("keep")
            out.symlink_to(sub / "target")
            must_fail = True
        elif scenario == "fifo":
            os.mkfifo(out)
            must_fail = True
        elif scenario == "existing":
            out.write_text("old")
        elif scenario == "name":
            out, rel = sub / name, f"sub/{name}"
        before = snapshot(folder)
        res = invoke("export", folder / "m.pt", out, "--k", "2")
        after = snapshot(folder)
        if scenario == "existing" and res.exit_code == 0:
            before.pop(rel)
        if check(res, before, after, output=rel, must_fail=must_fail):
            nx.read_graphml(out)


@settings(FUZZ, max_examples=12)
@given(suffix=st.one_of(st.sampled_from([".png", ".svg", ".PDF", ".jpg", "", ".png.txt", ".svgz"]),
                        st.text(name_chars, max_size=5).map(lambda s: "." + s)))
def test_plot_output_suffix(suffix):
    with sandbox(**{"c.pt": CHECKPOINT}) as folder:
        before = snapshot(folder)
        name = f"fig{suffix}"
        res = invoke("plot", "layer", folder / "c.pt", "--layer", "fc2", "--k", "2", "--out", folder / name)
        after = snapshot(folder)
        check(res, before, after, output=name, must_fail=Path(name).suffix.lower() not in (".png", ".svg", ".pdf"))


# ------------------------------------------------------------------ garbage files
def _tensor(shape, kind, fill):
    if kind == "int":
        return torch.randint(-3, 3, shape)
    if kind == "bool":
        return torch.zeros(shape, dtype=torch.bool)
    t = torch.randn(shape)
    if fill == "nan" and t.numel():
        t.view(-1)[0] = float("nan")
    return t.half() if kind == "half" else t


state_dicts = st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=8).map(lambda s: s + ".weight"),
    st.builds(_tensor, st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple),
              st.sampled_from(["float", "int", "bool", "half"]), st.sampled_from(["ok", "nan"])),
    max_size=4,
)
garbage = st.one_of(
    st.binary(max_size=300),
    st.integers(1, len(MODEL) - 1).map(lambda n: MODEL[:n]),
    st.integers(1, len(CHECKPOINT) - 1).map(lambda n: CHECKPOINT[:n]),
    st.tuples(st.integers(0, len(MODEL) - 1), st.integers(0, 255)).map(
        lambda t: MODEL[:t[0]] + bytes([t[1]]) + MODEL[t[0] + 1:]),
    st.just(b'{"k": 4, "layers": []}'),
)


@FUZZ
@given(data=garbage)
def test_garbage_model_files(data):
    with sandbox(**{"m.pt": data}) as folder:
        before = snapshot(folder)
        res = invoke("export", folder / "m.pt", folder / "g.graphml", "--k", "2")
        check(res, before, snapshot(folder), output="g.graphml")
        before = snapshot(folder)
        res = invoke("plot", "layer", folder / "m.pt", "--layer", "0", "--k", "2", "--out", folder / "f.png")
        check(res, before, snapshot(folder), output="f.png")


@settings(FUZZ, max_examples=25)
@given(sd=state_dicts, command=st.sampled_from(["export", "ablate"]))
def test_random_state_dicts(sd, command):
    folder = Path(tempfile.mkdtemp(prefix="gi-fuzz-"))
    try:
        torch.save(sd, folder / "m.pt")
        if command == "ablate":  # a checkpoint whose weights do not fit its architecture
            ckpt = torch.load(folder / "m.pt", weights_only=True)
            torch.save({"format": "graphinterp-checkpoint", "version": 1, "arch": SPEC, "state_dict": ckpt,
                        "clustering": None, "history": [], "train_state": None, "meta": {}}, folder / "m.pt")
        before = snapshot(folder)
        if command == "export":
            res = invoke("export", folder / "m.pt", folder / "g.graphml", "--k", "2")
            if check(res, before, snapshot(folder), output="g.graphml"):
                nx.read_graphml(folder / "g.graphml")
        else:
            res = invoke("ablate", folder / "m.pt", "--k", "2", "--limit", "16", "--device", "cpu")
            check(res, before, snapshot(folder), output=None, must_fail=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
