"""Transformer cases found in review: token models with short position tables, configs naming no head,
fused gate/up projections, and an impossible k refused before training. Tiny random models; no downloads."""
import json

import pytest
import torch
from torch import nn

from graphinterp.clustering.mlp_blocks import find_mlp_blocks
from graphinterp.common.errors import TrainingError, UnsupportedModelError
from graphinterp.graph.model_trace import trace_graph
from graphinterp.training.transformer_config import TransformerConfig

from _cli_helpers import invoke


def test_a_token_model_with_a_short_position_table_is_traced_and_input_shape_gives_token_ids():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=7, n_positions=3, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    assert "lm_head" in trace_graph(model).layer_names  # 8 guessed tokens would not fit 3 positions
    assert "lm_head" in trace_graph(model, input_shape=(2,)).layer_names  # ids of length 2, not floats


def test_a_config_naming_no_architecture_says_the_head_is_left_out(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config.pop("architectures")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    out = invoke("analyze", tmp_path / "m", "--k", "2").stdout
    assert "config.json names no architecture: loaded the base model GPT2Model" in out


class _FusedGateUp(nn.Module):
    """Phi-3's MLP: one projection holds gate and up; ``up * act(gate)``; in a residual block."""

    def __init__(self, d=8, h=16):
        super().__init__()
        self.stem, self.gate_up, self.down, self.head = nn.Linear(4, d), nn.Linear(d, 2 * h), nn.Linear(h, d), \
            nn.Linear(d, 3)

    def forward(self, x):
        x = self.stem(x)
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.head(x + self.down(up * torch.nn.functional.silu(gate)))


def test_a_fused_gate_up_projection_is_noted_as_cutting_the_gate_path():
    g = trace_graph(_FusedGateUp().eval())
    assert any("fused gate/up projection" in n and "cut" in n for n in g.coverage.notes)
    with pytest.raises(UnsupportedModelError, match="gate and up projections are fused"):
        find_mlp_blocks(g)


def test_an_impossible_k_for_the_transformer_is_refused_before_training():
    with pytest.raises(TrainingError, match="k=300 is larger than the MLP blocks allow"):
        TransformerConfig(task="chars", k=300).validate()
    assert TransformerConfig(task="chars", k=4).validate().k == 4


def test_input_shape_still_gives_floats_to_a_module_that_reads_floats_beside_an_embedding():
    class _FloatWithPositions(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos, self.fc1, self.fc2 = nn.Embedding(16, 12), nn.Linear(8, 12), nn.Linear(12, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x) + self.pos(torch.arange(x.shape[1]))))
    assert trace_graph(_FloatWithPositions().eval(), input_shape=(4, 8)).layer_names == ["fc1", "fc2"]


def test_an_hf_model_whose_main_input_is_not_token_ids_gets_floats():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32)
    model = transformers.ViTModel(cfg).eval()
    model.config.vocab_size = 100  # as BEiT's config has: still pixels
    assert "embeddings.patch_embeddings.projection" in trace_graph(model, input_shape=(3, 8, 8)).layer_names


@pytest.mark.parametrize("bad, message", [
    (dict(beta1=1.0), "beta1 must be a number in [0, 1), got 1.0"),  # AdamW refuses it later, with a traceback
    (dict(beta2=-0.1), "beta2 must be a number in [0, 1), got -0.1"),
    (dict(weight_decay=-1.0), "--weight-decay must be a number in [0, 1000], got -1.0"),
    (dict(train_frac=1.0), "train_frac must be a number in (0, 1), got 1.0"),  # no test split
    (dict(lr=0.0), "--lr must be a number in (0, 10], got 0.0"),
    (dict(lr=float("nan")), "--lr must be a number in (0, 10], got nan"),
])
def test_transformer_settings_are_checked_against_the_interval_the_message_states(bad, message):
    with pytest.raises(TrainingError) as err:
        TransformerConfig(task="modadd", **bad).validate()
    assert str(err.value) == message
    for ok in (dict(weight_decay=0.0), dict(beta1=0.0), dict(lr=10.0), dict(train_frac=0.99)):  # the ends inside
        TransformerConfig(task="modadd", **ok).validate()


def test_no_history_row_averages_steps_of_both_phases():
    """The row after the warm-up averaged the warm-up's CE with the modular steps' (its l_e only the latter), so its
    loss was not the mean of the loss optimised. A row now also ends at the end of the warm-up."""
    from graphinterp.training.train_transformer import train_transformer

    def run(eval_every):
        cfg = TransformerConfig(task="modadd", p=11, train_frac=0.5, d_model=16, n_heads=2, d_mlp=32, k=2,
                                warmup_steps=3, steps=4, eval_every=eval_every, quiet=True, device="cpu")
        return train_transformer(cfg).history

    every, coarse = run(1), run(5)
    assert [(r["step"], r["phase"]) for r in coarse] == [(3, "warmup"), (5, "modular"), (7, "modular")]
    by_step = {r["step"]: r for r in every}
    for row, steps in zip(coarse, ([1, 2, 3], [4, 5], [6, 7])):  # each row: the mean over its own steps
        assert row["ce"] == pytest.approx(sum(by_step[s]["ce"] for s in steps) / len(steps), rel=1e-5)
        if row["phase"] == "modular":
            mean_le = sum(by_step[s]["l_e"] for s in steps) / len(steps)
            assert row["l_e"] == pytest.approx(mean_le, rel=1e-5)
            assert row["loss"] == pytest.approx(row["ce"] + row["lam"] * row["l_e"])
