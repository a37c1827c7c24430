"""`graphinterp analyze` and `graphinterp export` through click's CliRunner, bad inputs included."""
import json
import os

import networkx as nx
import torch
from click.testing import CliRunner
from torch import nn

from graphinterp.cli.main import cli


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def test_analyze_table_and_json(mlp_file):
    res = run("analyze", mlp_file, "--k", "3")
    assert res.exit_code == 0, res.output
    assert "E_random" in res.output and "model (mass-weighted)" in res.output
    res = run("analyze", mlp_file, "--k", "3", "--json")
    data = json.loads(res.output)
    assert data["ks"] == [3] and [l["layer"] for l in data["results"][0]["layers"]] == ["0", "2", "4"]
    assert 0 <= data["results"][0]["E"] <= 1


def test_analyze_device_option(mlp_file):
    default = json.loads(run("analyze", mlp_file, "--k", "3", "--json").output)
    data = json.loads(run("analyze", mlp_file, "--k", "3", "--json", "--device", "cpu").output)
    assert data["device"] == "cpu" and default["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    res = run("analyze", mlp_file, "--k", "3", "--device", "cuda:99")
    assert res.exit_code == 2 and "--device" in res.output and "Traceback" not in res.output


def test_analyze_k_range_and_plot(mlp_file, tmp_path):
    out = tmp_path / "curve.png"
    res = run("analyze", mlp_file, "--k", "2..4", "--json", "--plot", out)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    Es = [r["E"] for r in data["results"]]
    assert data["ks"] == [2, 3, 4] and Es[0] > Es[-1]
    assert out.stat().st_size > 1000


def test_analyze_layers_option(mlp_file):
    res = run("analyze", mlp_file, "--k", "2", "--layers", "2", "--json")
    assert [l["layer"] for l in json.loads(res.output)["results"][0]["layers"]] == ["2"]
    res = run("analyze", mlp_file, "--layers", "nope")
    assert res.exit_code != 0


def test_export_graphml_roundtrip(mlp_file, tmp_path):
    out = tmp_path / "g.graphml"
    res = run("export", mlp_file, out, "--k", "3", "--network-wide")
    assert res.exit_code == 0, res.output
    G = nx.read_graphml(out)
    assert G.number_of_nodes() == 20 + 12 + 12 + 5
    assert G.nodes["0:3"]["cluster_out"] == G.nodes["0:3"]["cluster_in"]


def test_third_party_cnn(pretrained_dir, tmp_path):
    res = run("analyze", pretrained_dir / "cifar-cnn.pth", "--k", "4", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert "0" in data["skipped"]  # 3 input channels < k
    res = run("analyze", pretrained_dir / "resnet20-12fca82f.th", "--k", "4")
    assert res.exit_code == 0 and "residual" in res.output and "coverage:" in res.output
    res = run("analyze", pretrained_dir / "resnet20-12fca82f.th", "--k", "4", "--layerwise", "--json")
    assert res.exit_code == 0 and len(json.loads(res.output)["results"][0]["layers"]) == 19


def _one_line_error(res):
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    lines = [l for l in res.output.strip().splitlines() if l.strip()]
    assert lines[-1].startswith("error:") or lines[-1].startswith("Error:"), res.output
    return lines[-1]


def test_bad_inputs(tmp_path, mlp_file):
    assert "not found" in _one_line_error(run("analyze", tmp_path / "missing.pt"))
    text = tmp_path / "notes.pt"
    text.write_text("hello, not a model")
    _one_line_error(run("analyze", text))
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(mlp_file.read_bytes()[:200])
    _one_line_error(run("analyze", truncated))
    assert "at least 2" in _one_line_error(run("analyze", mlp_file, "--k", "1"))
    assert "out of range" in _one_line_error(run("analyze", mlp_file, "--k", "9", "--layers", "4"))
    nan = tmp_path / "nan.pt"
    sd = torch.load(mlp_file, weights_only=True)
    sd["2.weight"][0, 0] = float("nan")
    torch.save(sd, nan)
    assert "NaN" in _one_line_error(run("analyze", nan))
    empty = tmp_path / "bn.pt"
    torch.save(nn.BatchNorm1d(4).state_dict(), empty)
    assert "Linear" in _one_line_error(run("analyze", empty))
    layout = tmp_path / "layout.pt"
    torch.save({"a.weight": torch.randn(6, 5), "b.weight": torch.randn(5, 7)}, layout)
    res = run("analyze", layout, "--k", "2")
    assert res.exit_code == 0 and "does not chain" in res.output


def test_export_errors_leave_no_partial_file(tmp_path, mlp_file):
    out = tmp_path / "sub" / "g.graphml"
    out.parent.mkdir()
    assert "k=50" in _one_line_error(run("export", mlp_file, out, "--k", "50", "--layers", "2"))
    assert os.listdir(out.parent) == []


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)), path)
    assert "trust-pickle" in _one_line_error(run("analyze", path, "--k", "2"))
    res = run("analyze", path, "--k", "2", "--trust-pickle")
    assert res.exit_code == 0, res.output


def test_torchscript_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    path = tmp_path / "scripted.pt"
    torch.jit.script(model).save(str(path))
    refused = run("analyze", path, "--k", "2")
    assert refused.exit_code == 1 and "TorchScript archive" in refused.output and "--trust-pickle" in refused.output
    res = run("analyze", path, "--k", "2", "--json", "--trust-pickle")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["kind"] == "torchscript" and data["layers"] == ["0", "2"]
