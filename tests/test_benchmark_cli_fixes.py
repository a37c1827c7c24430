"""`graphinterp benchmark`: a significance k too large for the layers, a null of one shuffle, table columns that
follow the k asked for, and ``NAME --weights FILE`` for a single torchvision model."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from graphinterp.reports.benchmark_report import format_report
from graphinterp.reports.benchmarking import ModelSource, run_benchmark
from tests._cli_helpers import invoke, one_error

FAST = ["--n-init", "2", "--quiet", "--no-figures"]


@pytest.fixture
def small(tmp_path):
    """A 12 -> 10 -> 3 MLP: layer '0' is 12x10, layer '2' is 10x3."""
    torch.manual_seed(0)
    path = tmp_path / "small.pt"
    torch.save(nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3)).state_dict(), path)
    return path


def _table(stdout: str):
    """The table's header and rows, split on runs of two or more spaces."""
    import re

    lines = stdout.splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines[:1] + lines[2:] if line and line[0] != " "]


# 1. --significance-k above every layer: refused before any work; above some layers: said which, in text and JSON

def test_significance_k_above_every_layer_is_refused(small, tmp_path):
    out = tmp_path / "o"
    res = invoke("benchmark", small, "--k", "2", "--significance-k", "40", "--shuffles", "2", "--out", out, *FAST)
    line = one_error(res, 2)
    assert line.startswith("error: Invalid value for --significance-k: no layer can be tested at k=40: every layer "
                           "has fewer than 40 nodes with weights on one side (the largest, small 0, has 12x10); "
                           "use a k of at most 10"), line
    assert not (out / "benchmark.json").exists()
    broken = tmp_path / "broken.pt"
    broken.write_text("not a model")
    res = invoke("benchmark", small, broken, "--k", "2", "--significance-k", "40", "--shuffles", "2", "--out", out,
                 *FAST)
    assert "; besides, broken failed: " in one_error(res, 2)  # the models that failed to load are not hidden by it


def test_significance_k_above_some_layers_names_them(small, tmp_path):
    args = ["benchmark", small, "--k", "2", "--significance-k", "4", "--shuffles", "2", "--out", tmp_path / "o", *FAST]
    res = invoke(*args, "--json")
    assert res.exit_code == 0, res.stderr
    layers = json.loads(res.stdout)["models"][0]["layers"]
    assert layers[0]["significance"]["k"] == 4 and layers[0]["significance_skipped"] is None
    assert layers[1]["significance"] is None
    assert layers[1]["significance_skipped"] == "fewer than k=4 nodes with weights (10x3)"
    text = invoke(*args).stdout
    assert "small: layer 2 not shuffle-tested at k=4: fewer than k=4 nodes with weights (10x3)" in text.splitlines()


# 2. --shuffles 1: refused (no sd, no z, p >= 0.5); a one-shuffle report from the library prints no NaN

def test_one_shuffle_is_refused(small, tmp_path):
    out = tmp_path / "o"
    line = one_error(invoke("benchmark", small, "--k", "2", "--shuffles", "1", "--out", out, *FAST), 2)
    assert line.startswith("error: Invalid value for --shuffles: a null of 1 shuffle has no spread, so no z-score, "
                           "and its p-value is at least 0.5; give 2 or more"), line
    assert not (out / "benchmark.json").exists()


def test_one_shuffle_report_shows_the_value_without_sd_and_valid_json(small):
    report = run_benchmark([ModelSource(path=str(small))], [2], significance_k=2, n_shuffles=1, n_init=2)
    text = format_report(report)
    assert "nan" not in text and "±" not in text
    header, row = _table(text)[:2]
    assert row[header.index("null E")].endswith(" (n=1, no sd)") and row[header.index("z(E)")] == "-"
    assert "n=1 has no sd, so no z" in text
    E = json.loads(json.dumps(report.to_dict(), allow_nan=False))["models"][0]["layers"][0]["significance"]["E"]
    assert E["null_std"] is None and E["z"] is None and len(E["null"]) == 1


# 3. the table's E columns follow --k (and the significance k when a test is run)

def test_columns_follow_k_without_a_test(small, tmp_path):
    res = invoke("benchmark", small, "--k", "2..3", "--shuffles", "0", "--out", tmp_path / "o", *FAST)
    assert res.exit_code == 0, res.stderr
    assert _table(res.stdout)[0] == ["model", "layer", "in x out", "E k=2", "E_rand k=2", "E k=3", "E_rand k=3",
                                     "score k=3"]
    assert "no shuffle test (0 shuffles)" in res.stdout
    assert "small: chained, mass-weighted E k=2: " in res.stdout and ", k=3: " in res.stdout


def test_significance_k_outside_k_is_filled_from_the_test(small, tmp_path):
    res = invoke("benchmark", small, "--k", "2..3", "--significance-k", "4", "--shuffles", "2", "--out",
                 tmp_path / "o", *FAST)
    assert res.exit_code == 0, res.stderr
    header, first = _table(res.stdout)[:2]
    assert header[:10] == ["model", "layer", "in x out", "E k=2", "E_rand k=2", "E k=3", "E_rand k=3", "E k=4",
                           "E_rand k=4", "score k=4"]
    assert all(v != "-" for v in first[3:10]), first
    assert ("k=4 (the significance k) is not among the k benchmarked (2,3): its E, E_rand and score are from the "
            "shuffle test's own clustering, and it is not in clusterability.csv") in res.stdout


def test_one_k_gives_one_e_column(small, tmp_path):
    res = invoke("benchmark", small, "--k", "3", "--significance-k", "3", "--shuffles", "2", "--out",
                 tmp_path / "o", *FAST)
    assert res.exit_code == 0, res.stderr
    assert _table(res.stdout)[0][:6] == ["model", "layer", "in x out", "E k=3", "E_rand k=3", "score k=3"]
    assert res.stdout.count("k=3: ") == 1  # the mass-weighted line names k=3 once


def test_mass_weighted_line_says_which_layers_it_covers(small, tmp_path):
    res = invoke("benchmark", small, "--k", "2..4", "--shuffles", "0", "--out", tmp_path / "o", *FAST)
    assert res.exit_code == 0, res.stderr
    assert "(over the 1 of 2 layers scored at every k; left out: 2)" in res.stdout


# 4. NAME --weights FILE for a single model, as analyze takes it; other uses say how to pair

def test_single_torchvision_name_takes_weights(tmp_path):
    from graphinterp.sources.models import torchvision_model

    weights = tmp_path / "w.pth"
    torch.save(torchvision_model("squeezenet1_1", num_classes=10).state_dict(), weights)
    res = invoke("benchmark", "squeezenet1_1", "--weights", weights, "--k", "2", "--shuffles", "0", "--json",
                 "--n-init", "1", "--quiet", "--no-figures", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.stderr
    model = json.loads(res.stdout)["models"][0]
    assert model["name"] == "squeezenet1_1:w" and model["source"] == f"torchvision squeezenet1_1 + {weights}"
    assert [lb["shape"] for lb in model["layers"] if lb["layer"] == "classifier.1"] == [[512, 10]]


def test_weights_without_arch_otherwise_say_how_to_pair(small, tmp_path):
    w = tmp_path / "w.pth"
    line = one_error(invoke("benchmark", small, "--weights", w, "--out", tmp_path / "o", *FAST), 2)
    assert line.startswith(f"error: --weights {w} was given for the model file {small}, which holds its own "
                           f"weights"), line
    assert "--arch NAME --weights FILE" in line
    line = one_error(invoke("benchmark", "resnet18", "squeezenet1_1", "--weights", w, "--out", tmp_path / "o",
                            *FAST), 2)
    assert line.startswith("error: --weights without --arch goes with a single MODEL"), line
    assert "got 2 MODEL(s) and 1 --weights" in line and "--arch NAME --weights FILE" in line


def test_an_earlier_reports_files_left_in_out_are_named(small, tmp_path):
    """A second benchmark into the same --out left the first one's figures beside the new files, unsaid."""
    out = tmp_path / "rep"
    other = tmp_path / "other.pt"
    torch.save(nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)).state_dict(), other)
    args = ["--k", "2", "--shuffles", "0", "--n-init", "2", "--quiet", "--out", out]
    assert invoke("benchmark", small, other, *args).exit_code == 0
    before = set(p.name for p in out.iterdir())
    res = invoke("benchmark", small, *args)
    assert res.exit_code == 0
    stale = sorted(before - {"benchmark.json", "clusterability.csv", "significance.csv", "clusterability_vs_k.png",
                             "clusterability_vs_k.svg", "small_layers.png"})
    assert stale and all(name.startswith("other") for name in stale)
    assert f"note: {len(stale)} file(s) in {out} are from an earlier report" in res.stderr
    assert all(name in res.stderr for name in stale[:4])
    # said after the table and the line naming the folder, not above them where it scrolls away
    assert res.output.index("benchmarked 1 model(s)") < res.output.index("from an earlier report"), res.output
