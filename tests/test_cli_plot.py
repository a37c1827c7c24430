"""Tests of `graphinterp plot layer` (Figure 7): stored vs BSGC clustering, formats, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from graphinterp.sources.checkpoint import save_checkpoint
from graphinterp.cli.main import cli
from graphinterp.clustering.cluster import Clustering
from graphinterp.sources.models import mlp

SPEC = {"name": "mlp", "kwargs": {"in_features": 12, "hidden": [8, 6], "num_classes": 3, "bias": False}}


@pytest.fixture
def modular(tmp_path):
    """A checkpoint whose fc2 is block-diagonal under a stored k=2 clustering."""
    torch.manual_seed(0)
    model = mlp(**SPEC["kwargs"])
    rows, cols = np.arange(8) % 2, np.arange(6) % 2
    with torch.no_grad():
        model.fc2.weight.mul_(torch.as_tensor(cols[:, None] == rows[None, :], dtype=torch.float32))
    clustering = Clustering(2, {"fc2": rows}, {"fc2": cols})
    path = tmp_path / "modular.pt"
    save_checkpoint(path, model, arch=SPEC, clustering=clustering.to_dict())
    return path


def _invoke(args):
    return CliRunner().invoke(cli, ["plot", *args])


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.std() > 5  # not blank
        return image.size


def test_plot_layer_uses_the_stored_clustering(modular, tmp_path):
    out = tmp_path / "fc2.png"
    result = _invoke(["layer", str(modular), "--layer", "fc2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "stored clustering, k=2" in result.output and "8x6" in result.output
    assert _png_size(out) == (1200, 1200)  # the graph view is 8 x 8 inches at 150 dpi


def test_plot_layer_reclusters_with_bsgc_when_k_differs(modular, tmp_path):
    out = tmp_path / "fc2_matrix.png"
    result = _invoke(["layer", str(modular), "--layer", "fc2", "--k", "3", "--kind", "matrix", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "BSGC of this layer alone, k=3" in result.output
    assert _png_size(out) == (1050, 975)


def test_plot_layer_of_a_bare_state_dict_as_svg(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "plain.pth"
    torch.save(mlp(**SPEC["kwargs"]).state_dict(), path)
    out = tmp_path / "fc1.svg"
    result = _invoke(["layer", str(path), "--layer", "fc1", "--kind", "both", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "BSGC of this layer alone, k=4" in result.output
    assert b"<svg" in out.read_bytes()[:2000]


@pytest.mark.parametrize("args, message, code", [
    (["--layer", "fc9"], "no layer named 'fc9'; the layers are fc1, fc2, fc3", 2),  # a usage error, as for --layers
    (["--layer", "fc3", "--k", "5"], "Invalid value for --k: k=5 is out of range", 2),  # a bad --k, as in analyze
])
def test_plot_layer_bad_inputs(modular, tmp_path, args, message, code):
    out = tmp_path / "x.png"
    result = _invoke(["layer", str(modular), "--out", str(out), *args])
    assert result.exit_code == code
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert not out.exists()


def test_plot_layer_missing_file_and_help(tmp_path):
    result = _invoke(["layer", str(tmp_path / "none.pt"), "--layer", "fc2", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "not found" in result.stderr
    assert "Figure 7" in _invoke(["layer", "--help"]).output
    assert "layer" in _invoke(["--help"]).output


def test_plot_layer_of_an_unclusterable_layer_names_no_missing_option(tmp_path):
    """plot layer has no --layers: the advice to leave a layer out with it (a 1-input conv1 of a grey-scale CNN)
    was wrong there; analyze, which has it, still gives it."""
    torch.manual_seed(2)
    path = tmp_path / "one_input.pth"
    torch.save(mlp(in_features=1, hidden=[8, 6], num_classes=3, bias=False).state_dict(), path)
    out = tmp_path / "fc1.png"
    result = _invoke(["layer", str(path), "--layer", "fc1", "--out", str(out)])
    assert result.exit_code != 0 and result.stderr.startswith("error: ")
    assert "cannot be clustered" in result.stderr and "--layers" not in result.stderr
    assert not out.exists()
    analyzed = CliRunner().invoke(cli, ["analyze", str(path), "--layers", "fc1"])
    assert analyzed.exit_code != 0 and "leave layer 'fc1' out (--layers)" in analyzed.stderr


def test_a_convolution_is_drawn_as_channel_edges_and_says_so(tmp_path, monkeypatch):
    """A conv layer's figure and line said "64 x 64 weights" for 64 x 64 x 3 x 3 weights drawn as one edge per
    channel pair (the kernel's norm); a Linear reading flattened channels likewise (outputs review)."""
    import graphinterp

    titles = []
    real = graphinterp.plot_clustered_layer
    monkeypatch.setattr(graphinterp, "plot_clustered_layer", lambda *a, **kw: titles.append(kw["title"]) or real(*a, **kw))
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Conv2d(6, 5, 3)).eval()
    path = tmp_path / "cnn.pt"
    torch.save(model, path)
    result = _invoke(["layer", str(path), "--layer", "2", "--k", "2", "--trust-pickle", "--input-shape", "3,8,8",
                      "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert "(2: 6x5 channel edges (kernel norms), BSGC of this layer alone, k=2)" in result.output
    assert titles[-1].endswith(": 6 \u00d7 5 channel edges (kernel norms), k=2")
