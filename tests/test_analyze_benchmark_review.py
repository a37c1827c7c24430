"""New-user review of `analyze` and `benchmark`: every k in the benchmark table with its E_rand (or the first,
last and significance k and where the rest are), one model-wide E rule over a k range for both commands
(the layers scored at every k, said), a summary row named after what it covers, one progress bar that
advances and is cleared, and an unfolded-normalisation note that says what it counts."""
from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from tests._cli_helpers import invoke

FAST = ["--n-init", "2", "--no-figures"]


def _strict(text: str) -> dict:
    """JSON that must hold no NaN or infinity."""
    def refuse(name):
        raise AssertionError(f"{name} in the JSON")
    return json.loads(text, parse_constant=refuse)


def _header(stdout: str) -> list:
    return re.split(r"\s{2,}", stdout.splitlines()[0].strip())


def _chain(path, sizes):
    """A bare state_dict of a ReLU chain of Linear layers ``sizes[0] -> ... -> sizes[-1]``, seeded."""
    torch.manual_seed(0)
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    torch.save(nn.Sequential(*layers[:-1]).state_dict(), path)
    return path


@pytest.fixture
def wide(tmp_path):
    """A 16-16-16-16 chain: every layer fits k up to 16."""
    return _chain(tmp_path / "wide.pt", [16, 16, 16, 16])


@pytest.fixture
def narrow_first(tmp_path):
    """A 3-12-12-6 chain: layer '0' (3x12) is scored at k=2,3 only, '2' and '4' at k=2..4."""
    return _chain(tmp_path / "narrow.pt", [3, 12, 12, 6])


# 1. the benchmark table: every k asked for (up to five), each E beside its E_rand

def test_benchmark_table_shows_every_k_with_its_baseline(wide, tmp_path):
    res = invoke("benchmark", wide, "--k", "2,3", "--shuffles", "2", "--out", tmp_path / "o", "-q", *FAST)
    assert res.exit_code == 0, res.stderr
    header = _header(res.stdout)
    assert header[:10] == ["model", "layer", "in x out", "E k=2", "E_rand k=2", "E k=3", "E_rand k=3", "E k=4",
                           "E_rand k=4", "score k=4"], header
    assert "wide: chained, mass-weighted E k=2: " in res.stdout and ", k=3: " in res.stdout
    res = invoke("benchmark", wide, "--k", "2..5", "--shuffles", "0", "--out", tmp_path / "p", "-q", *FAST)
    assert res.exit_code == 0, res.stderr
    assert _header(res.stdout)[3:] == [c for k in (2, 3, 4, 5) for c in (f"E k={k}", f"E_rand k={k}")] + ["score k=5"]
    line = next(x for x in res.stdout.splitlines() if "mass-weighted E" in x)
    assert all(f"k={k}: " in line for k in (2, 3, 4, 5)), line
    assert "not in this table" not in res.stdout


def test_benchmark_many_k_show_first_last_and_significance_k_and_say_where_the_rest_are(wide, tmp_path):
    res = invoke("benchmark", wide, "--k", "2..8", "--shuffles", "2", "--out", tmp_path / "o", "-q", *FAST)
    assert res.exit_code == 0, res.stderr
    assert [c for c in _header(res.stdout) if c.startswith(("E k=", "E_rand k=", "score k="))] == [
        "E k=2", "E_rand k=2", "E k=4", "E_rand k=4", "score k=4", "E k=8", "E_rand k=8"]
    assert ("E and E_rand at k=3,5,6,7 are not in this table (more than 5 k: only the first, last and significance k "
            "are shown): every layer at every k is in clusterability.csv and benchmark.json (--json)") in res.stdout
    assert "; k=3,5,6,7 in benchmark.json (models[].mass_weighted)" in res.stdout
    data = _strict((tmp_path / "o" / "benchmark.json").read_text())
    mw = data["models"][0]["mass_weighted"]
    assert sorted(map(int, mw["E"])) == list(range(2, 9)) and mw["layers"] == ["0", "2", "4"] and not mw["left_out"]
    csv_ks = {line.split(",")[5] for line in (tmp_path / "o" / "clusterability.csv").read_text().splitlines()[1:]}
    assert csv_ks == {str(k) for k in range(2, 9)}


# 2. one rule for the model-wide E over a k range: the layers scored at every k, in text, JSON and plot title

def test_analyze_uses_the_layers_scored_at_every_k_as_benchmark_does(narrow_first, tmp_path, monkeypatch):
    res = invoke("analyze", narrow_first, "--k", "2..4", "--json", "-q")
    assert res.exit_code == 0, res.stderr
    data = _strict(res.stdout)
    mw = data["mass_weighted"]
    assert mw["layers"] == ["2", "4"] and list(mw["left_out"]) == ["0"]
    assert mw["left_out"]["0"].startswith("scored at k=2,3 only (fewer than k=4")
    assert "mass-weighted over the 2 of 3 layers scored at every k" in mw["note"]
    for result in data["results"]:  # the curve's E is over the same two layers at every k
        k = str(result["k"])
        common = [s for s in result["layers"] if s["layer"] in mw["layers"]]
        expect = sum(s["E"] * s["mass"] for s in common) / sum(s["mass"] for s in common)
        assert mw["E"][k] == pytest.approx(expect)
    bench = invoke("benchmark", narrow_first, "--k", "2..4", "--shuffles", "0", "--json", "--out", tmp_path / "o",
                   "-q", *FAST)
    assert bench.exit_code == 0, bench.stderr
    assert _strict(bench.stdout)["models"][0]["mass_weighted"]["layers"] == mw["layers"]

    import graphinterp

    seen = {}
    monkeypatch.setattr(graphinterp, "plot_clusterability_vs_k", lambda curves, **kw: seen.update(curves=curves, **kw))
    text = invoke("analyze", narrow_first, "--k", "2..4", "-q", "--plot", tmp_path / "e.png")
    assert text.exit_code == 0, text.stderr
    table = next(i for i, line in enumerate(text.stdout.splitlines()) if line.startswith("k "))  # after the notes
    assert _header("\n".join(text.stdout.splitlines()[table:]))[:7] == ["k", "E", "E_random", "score", "E[0]", "E[2]",
                                                                       "E[4]"]
    rows = {r.split()[0]: r.split() for r in text.stdout.splitlines() if r[:1] in "234" and r[:2] != "2:"}
    assert rows["4"][4] == "-" and rows["2"][4] != "-"  # layer 0: its E where it fits, "-" where it does not
    assert float(rows["2"][1]) == pytest.approx(mw["E"]["2"], abs=6e-4)
    assert f"note: {mw['note']}" in text.stdout
    assert "skipped 0: fewer than k=4 non-isolated nodes (3x12); scored at k=2,3 (column E[0])" in text.stdout
    assert seen["curves"]["narrow.pt"] == {k: mw["E"][str(k)] for k in (2, 3, 4)}
    assert seen["title"] == "Clusterability of narrow.pt (2 of 3 layers (2, 4) scored at every k)"


# 3. the summary row says what it covers

def test_analyze_summary_row_names_the_chosen_or_scored_layers(narrow_first):
    res = invoke("analyze", narrow_first, "--k", "4", "--layers", "2")
    assert res.exit_code == 0, res.stderr
    assert "chosen layers (mass-weighted)" in res.stdout and "model (mass-weighted)" not in res.stdout
    res = invoke("analyze", narrow_first, "--k", "4")
    assert "2 of 3 layers (mass-weighted)" in res.stdout and "model (mass-weighted)" not in res.stdout
    res = invoke("analyze", narrow_first, "--k", "2..3", "--layers", "2,4", "-q")
    assert "E, E_random and score: mass-weighted over the chosen layers (2, 4), not the whole model" in res.stdout
    assert "model (mass-weighted)" in invoke("analyze", narrow_first, "--k", "3").stdout


# 4. one progress bar over the layers, cleared; none under --quiet or --json

def test_benchmark_has_one_progress_bar_that_advances(wide, tmp_path):
    res = invoke("benchmark", wide, "--k", "2", "--shuffles", "3", "--out", tmp_path / "o", *FAST)
    assert res.exit_code == 0, res.stderr
    err = res.stderr
    assert "shuffles" not in err and "\x1b[A" not in err, err
    assert err.count("| 0/3 [00:00<?, ?layer/s]") == 1 and "| 1/3 [" in err and "wide 2]" in err, err
    assert invoke("benchmark", wide, "--k", "2", "--shuffles", "3", "--out", tmp_path / "p", "-q", *FAST).stderr == ""
    js = invoke("benchmark", wide, "--k", "2", "--shuffles", "3", "--out", tmp_path / "q", "--json", *FAST)
    assert js.exit_code == 0 and js.stderr == "", js.stderr
    _strict(js.stdout)


# 5. the unfolded-normalisation note counts layers and tensors

def test_unfolded_normalisation_note_says_what_it_counts(tmp_path):
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 5), nn.BatchNorm1d(5),
                          nn.ReLU(), nn.Linear(5, 3))
    torch.save(model.state_dict(), tmp_path / "bn.pt")
    res = invoke("analyze", tmp_path / "bn.pt", "--k", "2")
    assert res.exit_code == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("approximated:"))
    assert line == ("approximated: no architecture: the normalisation in this state_dict cannot be folded: "
                    "2 BatchNorm layers (6 tensors: weight, running_mean, running_var), e.g. 1; folded, their scales "
                    "would multiply units' weights by 1 to 1"), line  # fresh BatchNorms: no warning
    with torch.no_grad():  # one scale per layer (0.1, 10): folding moves the model-wide E, not a layer's clusters
        model[1].running_var.fill_(100.0)
        model[4].weight.fill_(10.0)
    torch.save(model.state_dict(), tmp_path / "bn2.pt")
    res = invoke("analyze", tmp_path / "bn2.pt", "--k", "2")
    line = next(x for x in res.stdout.splitlines() if x.startswith("approximated:"))
    assert line.endswith("by 0.1 to 10; one scale per layer: the model-wide E can move, not the clusters"), line
    with torch.no_grad():  # units of one layer scaled 0.1 and 1: its clusters can change, and the line warns of it
        model[1].running_var[1:].fill_(1.0)
    torch.save(model.state_dict(), tmp_path / "bn3.pt")
    res = invoke("analyze", tmp_path / "bn3.pt", "--k", "2")
    line = next(x for x in res.stdout.splitlines() if x.startswith("approximated:"))
    assert line.endswith("by 0.1 to 10, so E and the clusters can differ much from the model's (give the architecture "
                         "to fold them)"), line
