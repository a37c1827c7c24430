"""Errors that give the right advice: an all-zero model is not told to use a smaller k; --stored refuses the
options that choose a new clustering."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from _cli_helpers import invoke, one_error, usage_error
from _interp_helpers import digits_checkpoint


@pytest.fixture()
def zero_model(tmp_path):
    net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        for i in (0, 2):
            net[i].weight.zero_()
    path = tmp_path / "zero.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.parametrize("command", [["analyze", "--k", "2"], ["export", "OUT", "-q"],
                                     ["benchmark", "--k", "2", "--shuffles", "0", "--no-figures", "-q", "--out", "B"]])
def test_an_all_zero_model_is_told_why_not_to_use_a_smaller_k(zero_model, tmp_path, command):
    args = [a.replace("OUT", str(tmp_path / "o.graphml")).replace("B", str(tmp_path / "b")) if a in ("OUT", "B") else a
            for a in command]
    res = invoke(args[0], zero_model, *args[1:], "--device", "cpu")
    line = one_error(res, 1)  # the model's fault, not the arguments': no k would do
    assert "no layer can be clustered" in line and "0: all its weights are zero" in line, line
    assert "smaller" not in line, line


@pytest.mark.parametrize("command", [["analyze", "--k", "4"], ["export", "OUT", "--k", "4", "-q"]])
def test_a_layer_too_small_for_k_is_a_bad_k(tmp_path, command):
    """A --k larger than every layer allows is a bad argument: exit code 2 naming --k, as any bad value."""
    path = tmp_path / "small.pt"
    torch.save(nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 3)).state_dict(), path)
    args = [str(tmp_path / "o.graphml") if a == "OUT" else a for a in command]
    line = usage_error(invoke(args[0], path, *args[1:], "--device", "cpu"))
    assert line.startswith("Invalid value for --k: no layer can be clustered at k=4"), line
    assert "fewer than k=4" in line and line.endswith("use a smaller k"), line
    assert not (tmp_path / "o.graphml").exists()


@pytest.mark.parametrize("flag", ["--network-wide", "--per-layer"])
def test_export_stored_refuses_a_choice_of_labels(tmp_path, flag):
    model = digits_checkpoint(tmp_path / "m.pt", clustering=True)
    line = one_error(invoke("export", model, tmp_path / "o.graphml", "--stored", flag))
    assert line.startswith(f"error: {flag} does not apply with --stored"), line
    assert not (tmp_path / "o.graphml").exists()


class _DecoderOnImages(nn.Module):
    """Rows of an 8x8 image as tokens through a TransformerDecoderLayer (MultiheadAttention's fused in_proj)."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Linear(8, 16), nn.Linear(16, 10)
        self.dec = nn.TransformerDecoderLayer(16, 2, 32, batch_first=True)

    def forward(self, x):
        h = self.emb(x.view(x.shape[0], 8, 8))
        return self.head(self.dec(h, h[:, :4]).mean(1))


@pytest.fixture()
def attention_model(tmp_path):
    path = tmp_path / "dec.pt"
    torch.manual_seed(0)
    torch.save(_DecoderOnImages(), path)
    return path


@pytest.mark.parametrize("options", [["--neurons", "emb:0"], ["--k", "2"], ["--k", "2", "--layers", "emb"]])
def test_ablate_refuses_an_attention_model_saying_why(attention_model, options):
    line = one_error(invoke("ablate", attention_model, "--trust-pickle", "--limit", "50", "--device", "cpu", *options))
    assert "is not a chain of layers (a DAG" in line and "ablate works on chains" in line, line
    assert "level_names" not in line and "layer by layer" not in line


def test_circuits_names_the_module_it_cannot_mask(attention_model):
    line = one_error(invoke("circuits", attention_model, "--trust-pickle", "--labels", "0", "--max-evals", "20",
                            "--max-examples", "10", "--limit", "50", "--device", "cpu"))
    assert "'dec.self_attn.in_proj' is a weight of a MultiheadAttention, not a Linear/Conv2d module" in line, line
    assert "from_module" not in line


def test_a_recurrent_model_is_told_it_is_not_supported(tmp_path):
    path = tmp_path / "lstm.pt"
    torch.save(nn.LSTM(8, 6), path)
    line = one_error(invoke("analyze", path, "--trust-pickle", "--k", "2", "--device", "cpu"))
    assert "recurrent layers (LSTM) are not supported" in line and "example=" not in line, line


def test_a_forward_with_two_inputs_is_not_told_to_give_a_shape(tmp_path):
    path = tmp_path / "decoder.pt"
    torch.save(nn.TransformerDecoderLayer(16, 2, 32, batch_first=True), path)
    line = one_error(invoke("analyze", path, "--trust-pickle", "--k", "2", "--device", "cpu", "--input-shape", "5,16"))
    assert "'memory'" in line and "more than one input" in line and "--input-shape where" not in line, line


def test_export_says_when_min_weight_dropped_every_edge(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)).state_dict(), path)
    res = invoke("export", path, tmp_path / "o.graphml", "--k", "2", "--min-weight", "1e9", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "note: --min-weight 1e+09 dropped every edge" in res.stdout and ", 0 edges" in res.stdout
    res = invoke("export", path, tmp_path / "p.graphml", "--k", "2", "--min-weight", "1e-9", "--device", "cpu")
    assert "dropped every edge" not in res.stdout


@pytest.mark.parametrize("min_weight", [0.0, 0.2])
def test_an_exported_file_records_the_edges_min_weight_dropped(tmp_path, min_weight):
    """Its E is over all the graph's weights; the file now says which edges it left out, so a reader rebuilding a
    score from its edges knows they are not the whole graph."""
    from graphinterp.reports.io import read_graphml

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    path = tmp_path / "m.pt"
    torch.save(net.state_dict(), path)
    out = tmp_path / "o.graphml"
    res = invoke("export", path, out, "--k", "2", "--min-weight", str(min_weight), "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    G = read_graphml(out)
    weights = torch.cat([net[0].weight.flatten(), net[2].weight.flatten()]).abs()
    assert G.graph["min_abs_weight"] == min_weight
    assert G.graph["edges_below_min_abs_weight"] == int(((weights > 0) & (weights <= min_weight)).sum())
    assert G.number_of_edges() + G.graph["edges_below_min_abs_weight"] == int((weights > 0).sum())
    said = "are over all the model's weights, so E recomputed from the file's edges differs" in res.stdout
    assert said == (G.graph["edges_below_min_abs_weight"] > 0)  # and the output says so when edges were left out


def test_analyze_reports_the_k_that_fit_and_leaves_out_those_that_fit_no_layer(tmp_path):
    """--k 2..5 on a model whose layers have at most 4 nodes a side: k=2..4 are reported and k=5 is left out with
    the reason (it threw every k away, where benchmark reported those that fit); no k at all is still an error."""
    import json

    path = tmp_path / "small.pt"
    torch.save(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4)).state_dict(), path)
    res = invoke("analyze", path, "--k", "2..5", "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    assert "left out k=5: no layer can be clustered at k=5" in res.output
    assert [line.split()[0] for line in res.output.splitlines() if line[:1].isdigit()] == ["2", "3", "4"]
    payload = json.loads(invoke("analyze", path, "--k", "2..5", "--device", "cpu", "--json").output)
    assert payload["ks"] == [2, 3, 4] and list(payload["unfit_ks"]) == ["5"]
    line = usage_error(invoke("analyze", path, "--k", "5..6", "--device", "cpu"))
    assert "no layer can be clustered at k=5" in line and line.endswith("(nor at k=6); use a smaller k"), line
