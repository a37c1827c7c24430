"""Transformer training (seeded, resumable, checkpoint analysable), ablation hooks, CLI bad inputs."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from graphinterp.interpret.block_ablation import ablate_clusters, ablate_features, ablate_heads
from graphinterp.sources.checkpoint import load_checkpoint
from graphinterp.clustering.cluster import Clustering
from graphinterp.clustering.mlp_blocks import cluster_mlp_blocks
from graphinterp.graph.model_trace import trace_graph
from graphinterp.training.train_transformer import TransformerConfig, train_transformer
from graphinterp.sources.transformer import transformer
from graphinterp.interpret.transformer_eval import onoff_matrix, specialisation

TINY = dict(task="modadd", p=11, train_frac=0.5, d_model=16, n_heads=2, d_mlp=32, k=2, eval_every=3, quiet=True)


def test_modular_training_raises_E_and_resume_is_exact(tmp_path):
    cfg = TransformerConfig(warmup_steps=3, steps=9, lam=20.0, **TINY)
    full = train_transformer(cfg, checkpoint=tmp_path / "a.pt")
    rows = full.history
    assert [r["phase"] for r in rows] == ["warmup", "modular", "modular", "modular"]
    assert rows[-1]["E"] > rows[0]["E"] + 0.2 and rows[-1]["E"] > 0.9
    part = train_transformer(TransformerConfig(warmup_steps=3, steps=3, lam=20.0, **TINY), checkpoint=tmp_path / "b.pt")
    assert len(part.history) == 2
    resumed = train_transformer(cfg, checkpoint=tmp_path / "b.pt", resume=True)
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n
    assert [r["step"] for r in resumed.history] == [3, 6, 9, 12]


def test_chars_training_and_baseline_refit(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be, that is the question. " * 40)
    cfg = TransformerConfig(task="chars", corpus=str(corpus), n_ctx=8, batch_size=4, d_model=16, n_heads=2, d_mlp=32,
                            n_layers=2, k=2, lam=0.0, warmup_steps=2, steps=2, eval_every=2, eval_windows=8, quiet=True)
    r = train_transformer(cfg, checkpoint=tmp_path / "lm.pt")
    assert len(r.clustering.layer_names) == 4 and "E_refit" in r.history[-1]
    ck = load_checkpoint(tmp_path / "lm.pt")
    assert ck["arch"]["name"] == "transformer" and Clustering.from_dict(ck["clustering"]).meta["fitted"]


def test_resume_with_other_settings_is_refused(tmp_path):
    from graphinterp.common.errors import TrainingError

    train_transformer(TransformerConfig(warmup_steps=3, steps=0, **TINY), checkpoint=tmp_path / "a.pt")
    with pytest.raises(TrainingError, match="other settings"):
        train_transformer(TransformerConfig(warmup_steps=3, steps=3, **{**TINY, "k": 3}),
                          checkpoint=tmp_path / "a.pt", resume=True)


def test_a_modadd_run_records_the_character_lm_settings_as_unused(tmp_path):
    """A modadd checkpoint recorded n_ctx 32 and batch size 32, which it never used (full-batch, 3 tokens)."""
    path = tmp_path / "a.pt"
    train_transformer(TransformerConfig(warmup_steps=3, steps=0, **TINY), checkpoint=path)
    saved = load_checkpoint(path)["train_state"]["config"]
    assert saved["task"] == "modadd" and saved["n_ctx"] is None and saved["batch_size"] is None
    raw = torch.load(path, weights_only=True)  # as older checkpoints recorded them: resumable still
    raw["train_state"]["config"].update(n_ctx=32, batch_size=32)
    torch.save(raw, path)
    resumed = train_transformer(TransformerConfig(warmup_steps=3, steps=3, **TINY), checkpoint=path, resume=True)
    assert [r["step"] for r in resumed.history] == [3, 6]


def _hand_forward(model, ids, hidden_off=(), heads_off=()):
    """The 1-layer transformer computed by hand, with hidden units / heads zeroed."""
    h = model.embed(ids) + model.pos(torch.arange(ids.shape[1]))
    a = model.blocks[0].attn
    q = (h[:, -1:] @ a.q.weight.T).view(len(ids), 1, a.n_heads, a.d_head).transpose(1, 2)
    k = (h @ a.k.weight.T).view(len(ids), -1, a.n_heads, a.d_head).transpose(1, 2)
    v = (h @ a.v.weight.T).view(len(ids), -1, a.n_heads, a.d_head).transpose(1, 2)
    z = torch.softmax(q @ k.transpose(-1, -2) / a.d_head ** 0.5, -1) @ v  # (B, H, 1, d_head)
    z = z.clone()
    for head in heads_off:
        z[:, head] = 0
    z = z.transpose(1, 2).reshape(len(ids), 1, -1)
    h = h[:, -1:] + z @ a.out.weight.T
    m = model.blocks[0].mlp
    act = F.relu(h @ m.fc_in.weight.T + m.fc_in.bias)
    act[..., list(hidden_off)] = 0
    h = h + act @ m.fc_out.weight.T + m.fc_out.bias
    return (h @ model.unembed.weight.T)[:, -1]


def test_ablation_hooks_match_a_hand_computed_forward():
    torch.manual_seed(0)
    model = transformer(vocab=12, n_out=11, d_model=16, n_heads=4, d_mlp=32).eval()
    ids = torch.randint(0, 12, (5, 3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), _hand_forward(model, ids))
        c = cluster_mlp_blocks(trace_graph(model), 3, random_state=0)
        lab = c.row_labels["blocks.0.mlp.fc_out"]
        for state in ("off", "on"):
            off = np.flatnonzero(lab == 1) if state == "off" else np.flatnonzero(lab != 1)
            with ablate_clusters(model, c, 1, state):
                got = model(ids)
            torch.testing.assert_close(got, _hand_forward(model, ids, hidden_off=off))
        with ablate_heads(model, {"blocks.0.attn.out": [0, 2]}, d_head=4):
            got = model(ids)
        torch.testing.assert_close(got, _hand_forward(model, ids, heads_off=[0, 2]))
        assert not torch.allclose(got, model(ids))  # hooks gone after the block


def test_hooks_are_removed_after_an_exception():
    model = transformer(vocab=12, n_out=11, d_model=16, n_heads=4, d_mlp=32)
    with pytest.raises(RuntimeError):
        with ablate_features(model, inputs={"blocks.0.mlp.fc_out": [0]}, outputs={"blocks.0.attn.out": [1]}):
            raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_onoff_matrix_and_specialisation():
    torch.manual_seed(0)
    model = transformer(vocab=12, n_out=11, d_model=16, n_heads=4, d_mlp=32)
    c = cluster_mlp_blocks(trace_graph(model), 2, random_state=0)
    x = torch.randint(0, 12, (50, 3))
    y = model(x).argmax(-1).detach()  # the model is right on its own predictions: full accuracy 1
    r = onoff_matrix(model, c, x, y, [str(i) for i in range(11)])
    assert r.on.shape == r.off.shape == (2, 11) and r.overall()["full"] == 1.0
    s = specialisation(r)
    assert 0 <= s["mean_on_acc"] <= 1 and set(s) == {"off_gini", "on_gini", "mean_off_damage", "mean_on_acc"}


def _cli(args):
    from graphinterp.cli.main import cli

    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "chars", "--corpus", "MISSING"], "not found"),
    (["--dataset", "chars", "--corpus", "EMPTY"], "is empty"),
    (["--dataset", "modadd", "--k", "600", "--steps", "1", "--warmup-steps", "1"], "larger than the MLP blocks allow"),
    (["--dataset", "modadd", "--model", "mlp"], "does not train on"),
    (["--dataset", "digits", "--model", "transformer"], "does not train on"),
])
def test_cli_bad_inputs_give_one_error_line(tmp_path, args, message):
    (tmp_path / "EMPTY").write_text("")
    args = [str(tmp_path / a) if a in ("MISSING", "EMPTY") else a for a in args]
    result = _cli(["train", *args, "--out", str(tmp_path / "m.pt")])
    assert result.exit_code != 0
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not (tmp_path / "m.pt").exists()


def test_gradient_similarity_clusters_the_blocks(tmp_path):
    cfg = TransformerConfig(warmup_steps=3, steps=0, similarity="gradient", **TINY)
    r = train_transformer(cfg, checkpoint=tmp_path / "g.pt")
    assert r.clustering.similarity == "gradient" and r.clustering.meta["method"] == "bsgc-mlp-blocks"


@pytest.mark.parametrize("field", ["seed", "p", "batch_size", "data_seed"])  # steps None: the task default
def test_a_transformer_setting_left_none_is_refused(field):
    """Only eval_windows (and settings with a task default) may be None; any other integer setting None is refused by
    name, not a TypeError later."""
    from graphinterp.common.errors import TrainingError
    from graphinterp.training.transformer_config import TransformerConfig

    with pytest.raises(TrainingError, match=f"{field if field == 'data_seed' else field.replace('_', '-')} must be an integer"):
        TransformerConfig(task="modadd", **{field: None}).validate()
    TransformerConfig(task="modadd", eval_windows=None).validate()
