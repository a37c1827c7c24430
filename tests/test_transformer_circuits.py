"""Circuits of modular-addition transformers: masking restores weights, circuits stay within tolerance, CLI."""
import json

import pytest
import torch
from click.testing import CliRunner

from graphinterp.interpret.circuits import Schedule, Tolerance
from graphinterp.common.errors import DataError, UnsupportedModelError
from graphinterp.interpret.label_tasks import label_task
from graphinterp.data.tasks import modular_addition
from graphinterp.training.train_transformer import TransformerConfig, train_transformer
from graphinterp.sources.transformer import transformer
from graphinterp.interpret.transformer_circuits import (
    AnswerTail, extract_transformer_circuits, masked_mlp, mlp_edges, stream_input,
)

TINY = dict(task="modadd", p=11, train_frac=0.6, d_model=16, n_heads=2, d_mlp=32, k=2, quiet=True,
            warmup_steps=40, steps=40, eval_every=80)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("tc")
    a, b = d / "modadd.pt", d / "modadd-base.pt"
    train_transformer(TransformerConfig(lam=20.0, **TINY), checkpoint=a)
    base = train_transformer(TransformerConfig(lam=0.0, **TINY), checkpoint=b)
    return a, b, base.model


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_masked_mlp_restores_weights_exactly_even_on_error():
    model = transformer(vocab=8, n_out=7, d_model=8, n_heads=2, d_mlp=16, n_layers=2, layernorm=True)
    before = _state(model)
    masks = {f"blocks.{i}.mlp.{p}": torch.rand_like(getattr(model.blocks[i].mlp, p).weight) > 0.5
             for i in range(2) for p in ("fc_in", "fc_out")}
    with masked_mlp(model, masks):
        for name, m in masks.items():
            w = model.get_submodule(name).weight
            assert torch.equal(w, before[f"{name}.weight"] * m)
    with pytest.raises(RuntimeError):
        with masked_mlp(model, masks):
            raise RuntimeError("boom")
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("n_layers, layernorm", [(1, False), (2, True)])
def test_answer_tail_reproduces_the_model(n_layers, layernorm):
    torch.manual_seed(0)
    model = transformer(vocab=12, n_out=11, d_model=16, n_heads=2, d_mlp=32, n_layers=n_layers, layernorm=layernorm)
    _, test = modular_addition(11, 0.5)
    h = stream_input(model, test.x)
    assert h.dim() == (2 if n_layers == 1 else 3)
    torch.testing.assert_close(AnswerTail(model)(h), model(test.x), rtol=1e-5, atol=1e-5)
    layers, modules = mlp_edges(model)
    assert [l.name for l in layers] == [f"blocks.{i}.mlp.{p}" for i in range(n_layers) for p in ("fc_in", "fc_out")]
    assert all(m is model.get_submodule(l.name) for l, m in zip(layers, modules))


@pytest.mark.parametrize("cumulative", [True, False])
@pytest.mark.parametrize("part", ["fc_in", "fc_out"])
def test_batched_single_edge_states_match_forward_passes(part, cumulative):
    from graphinterp.interpret.circuit_batch import LinearStates, TaskMetrics, forward_metrics

    torch.manual_seed(1)
    model = transformer(vocab=12, n_out=11, d_model=16, n_heads=2, d_mlp=32).eval()
    _, test = modular_addition(11, 0.5)
    tail, mlp = AnswerTail(model), model.blocks[0].mlp
    task = label_task(stream_input(model, test.x), test.y, 2)
    metrics, module = TaskMetrics(task, "cpu"), getattr(mlp, part)
    states = LinearStates(tail, module, metrics)
    assert states.rest is not None and (states.M is mlp.fc_out) == (part == "fc_in")  # the fast path is taken
    o, i = torch.tensor([3, 3, 3, 5]), torch.tensor([0, 4, 7, 1])
    acc, loss = states.evaluate(o, i, cumulative=cumulative)
    w = module.weight.detach().clone()
    for t in range(len(o)):
        with torch.no_grad():
            if not cumulative:  # state t: edge t removed alone
                module.weight.copy_(w)
            module.weight[o[t], i[t]] = 0.0
        a_ref, l_ref = forward_metrics(tail, metrics, 4096)
        assert float(acc[t]) == pytest.approx(a_ref, abs=1e-9) and float(loss[t]) == pytest.approx(l_ref, abs=1e-5)
    with torch.no_grad():
        module.weight.copy_(w)


def _by_hand(model, ids, task):
    """Balanced one-vs-rest accuracy and loss of the label's task from a plain forward of the model."""
    with torch.no_grad():
        logp = model(ids).double().log_softmax(-1)[:, task.label]
    says = model(ids).argmax(-1) == task.label
    pos = task.positive
    hit = (says == pos).double()
    loss = torch.where(pos, -logp, -torch.log1p(-logp.exp()))
    w = task.weights()
    return float(w @ hit), float(w @ loss)


def test_circuit_keeps_the_label_within_tolerance_by_an_independent_forward(ckpts):
    model = ckpts[2].eval()
    _, test = modular_addition(11, 0.6)
    before = _state(model)
    tol = Tolerance(0.9, 0.2)
    circuits = extract_transformer_circuits(model, test.x, test.y, [0, 3], tolerance=tol, schedule=Schedule(max_evals=400),
                                            progress=False, device="cpu")
    assert all(torch.equal(v, _state(model)[k]) for k, v in before.items())  # the search restored every weight
    for c, ci in circuits.items():
        task = label_task(test.x, test.y, c)  # the same examples, as token ids
        full_acc, full_loss = _by_hand(model, task.x, task)
        assert full_acc == pytest.approx(ci.full_accuracy, abs=1e-6) and full_loss == pytest.approx(ci.full_loss, abs=1e-4)
        with masked_mlp(model, ci.masks):
            acc, loss = _by_hand(model, task.x, task)
        assert acc == pytest.approx(ci.accuracy, abs=1e-6) and loss == pytest.approx(ci.loss, abs=1e-4)
        assert tol.accepts(acc, loss, full_acc, full_loss)
        kept = sum(int(m.sum()) for m in ci.masks.values())
        total = sum(m.numel() for m in ci.masks.values())
        assert 0 < ci.ecs < 0.9 and ci.size.kept_params == kept and ci.size.total_params == total
        assert set(ci.masks) == {"blocks.0.mlp.fc_in", "blocks.0.mlp.fc_out"}


def test_library_refuses_bad_input():
    lm = transformer(vocab=5, n_out=5, n_ctx=4, d_model=8, n_heads=2, d_mlp=8, readout="all")
    x, y = torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    with pytest.raises(DataError, match="one answer per sequence"):  # a language model's per-position targets
        extract_transformer_circuits(lm, x, torch.zeros(4, 3, dtype=torch.long), [0], progress=False)
    with pytest.raises(UnsupportedModelError, match="not a graphinterp transformer"):
        extract_transformer_circuits(torch.nn.Linear(2, 2), x, y, [0], progress=False)
    model = transformer(vocab=6, n_out=5, d_model=8, n_heads=2, d_mlp=8)
    with pytest.raises(DataError, match="0..4"):
        extract_transformer_circuits(model, x, y, [7], progress=False)


def _cli(args):
    from graphinterp.cli.main import cli

    return CliRunner().invoke(cli, args)


def test_cli_compare_plot_and_json(ckpts, tmp_path):
    a, b, _ = ckpts
    png = tmp_path / "ecs.png"
    r = _cli(["circuits", str(a), "--labels", "0-2", "--compare", str(b), "--plot", str(png), "--max-evals", "300",
              "--quiet"])
    assert r.exit_code == 0, r.output
    assert "MLP blocks" in r.output and "mean relative change modadd-base -> modadd" in r.output
    assert png.stat().st_size > 0
    r = _cli(["circuits", str(a), "--labels", "1", "--max-evals", "200", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["dataset"] == "modadd11-test" and out["circuits"][0]["label"] == 1
    assert not any("overlap" in n for n in out["notes"])  # modadd's pairs are independent examples
    assert 0 <= out["circuits"][0]["ecs"] <= 1 and out["circuits"][0]["converged"] is not None


def _char_lm(tmp_path, *, batch_size: int, warmup_steps: int, steps: int):
    """A tiny character LM trained on a repeated sentence: ``(corpus path, checkpoint path)``."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be, that is the question. " * 40)
    lm = tmp_path / "lm.pt"
    train_transformer(TransformerConfig(task="chars", corpus=str(corpus), n_ctx=8, batch_size=batch_size, d_model=16,
                                        n_heads=2, d_mlp=32, n_layers=1, k=2, warmup_steps=warmup_steps, steps=steps,
                                        eval_every=max(2, steps), eval_windows=4, quiet=True), checkpoint=lm)
    return corpus, lm


def test_cli_bad_inputs_give_one_error_line(ckpts, tmp_path):
    a, _, _ = ckpts
    plain = tmp_path / "plain.pt"
    torch.save({"0.weight": torch.ones(3, 2)}, plain)
    corpus, lm = _char_lm(tmp_path, batch_size=4, warmup_steps=1, steps=1)
    cases = [
        (["circuits", str(a), "--labels", "0,200"], "0..10"),
        (["circuits", str(a), "--labels", "x"], "--labels"),
        (["circuits", str(plain), "--compare", str(a)], "needs two models of one kind"),
        (["circuits", str(a), "--compare", str(plain)], "needs two models of one kind"),
        (["circuits", str(a), "--compare", str(lm), "--labels", "0"], "compare models of one task"),
        (["circuits", str(lm), "--labels", "0,99"], "0..14"),
        (["circuits", str(a), "--corpus", str(corpus), "--labels", "0"], "trained on modadd"),
        (["circuits", str(plain), "--corpus", str(corpus)], "--corpus applies"),
        (["circuits", str(a), "--graphml-dir", str(tmp_path / "g")], "--graphml-dir"),
    ]
    for args, message in cases:
        r = _cli(args)
        lines = [l for l in r.output.splitlines() if l.strip()]
        assert r.exit_code != 0 and len(lines) == 1, (args, r.output)
        assert lines[0].startswith("error:") and message in lines[0], (args, r.output)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_answer_tail_of_a_language_model_is_its_last_position(n_layers):
    """A per-position model (character LM): the circuits' tail gives the logits of the last position."""
    torch.manual_seed(0)
    model = transformer(vocab=9, n_out=9, n_ctx=6, d_model=16, n_heads=2, d_mlp=24, n_layers=n_layers,
                        readout="all").eval()
    ids = torch.randint(0, 9, (20, 6))
    with torch.no_grad():
        want = model(ids)[:, -1]
        got = AnswerTail(model)(stream_input(model, ids))
    assert torch.allclose(got, want, atol=1e-5)


def test_next_char_windows_label_every_window_with_the_next_character():
    from graphinterp.data.tasks import CharCorpus

    ids = torch.arange(50) % 7
    corpus = CharCorpus([str(i) for i in range(7)], ids[:30], ids[30:])
    full = corpus.next_char_windows(5, "train")
    assert full.x.shape == (25, 5) and torch.equal(full.x[3], ids[3:8]) and int(full.y[3]) == int(ids[8])
    part = corpus.next_char_windows(5, "val", limit=6, seed=1)
    again = corpus.next_char_windows(5, "val", limit=6, seed=1)
    assert part.x.shape == (6, 5) and torch.equal(part.x, again.x) and torch.equal(part.y, again.y)
    starts = [int(v) for v in part.x[:, 0]]
    for row, label in zip(part.x, part.y):  # every window is a piece of the split and its label follows it
        s = [j for j in range(15) if torch.equal(ids[30 + j:35 + j], row)]
        assert s and int(ids[35 + s[0]]) == int(label)
    assert len(set(starts)) >= 2
    with pytest.raises(DataError, match="too few"):
        corpus.next_char_windows(25, "val")


def test_cli_circuits_of_a_character_lm(tmp_path):
    corpus, lm = _char_lm(tmp_path, batch_size=8, warmup_steps=2, steps=30)
    moved = tmp_path / "moved.txt"
    corpus.rename(moved)  # the corpus it was trained on is gone: --corpus names it
    r = _cli(["circuits", str(lm), "--labels", "all", "--max-evals", "300", "--limit", "400", "--json"])
    assert r.exit_code != 0 and r.output.startswith("error:") and "corpus" in r.output, r.output
    r = _cli(["circuits", str(lm), "--corpus", str(moved), "--labels", "all", "--max-evals", "300", "--limit", "400",
              "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    present = sorted(set("to be or not to be, that is the question. "))
    assert [c["label_name"] for c in out["circuits"]] == [repr(ch) if ch == " " else ch for ch in present]
    assert out["dataset"].startswith("val next-character windows")
    assert all(0 <= c["ecs"] <= 1 and c["accuracy"] >= 0.95 * c["full_accuracy"] - 1e-9 for c in out["circuits"])
    assert any("overlap" in n and "held-out" in n for n in out["notes"]), out["notes"]  # it claimed a clean check


def test_a_character_lm_refuses_a_corpus_with_another_vocabulary(tmp_path):
    from graphinterp.sources.checkpoint import load_checkpoint

    corpus, lm = _char_lm(tmp_path, batch_size=4, warmup_steps=2, steps=0)
    text = corpus.read_text()
    assert load_checkpoint(lm)["meta"]["vocabulary"] == "".join(sorted(set(text)))
    same_size = tmp_path / "upper.txt"  # as many distinct characters, other ones: every id would mean another letter
    same_size.write_text(text.replace("q", "Q"))
    fewer = tmp_path / "fewer.txt"
    fewer.write_text(text.replace("q", "t"))
    for cmd in (["circuits", str(lm), "--labels", "0", "--max-evals", "50"], ["ablate", str(lm)]):
        r = _cli([*cmd, "--corpus", str(same_size)])
        assert r.exit_code != 0 and r.output.startswith("error: corpus") and "outside the model's vocabulary of " \
            f"{len(set(text))}: 'Q'" in r.output, r.output
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    # a text written with some of the model's characters keeps its ids: a held-out text of the same language
    r = _cli(["ablate", str(lm), "--corpus", str(fewer), "--limit", "50", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["classes"] == sorted(set(text)) and out["counts"][sorted(set(text)).index("q")] == 0
    # a corpus whose text differs but whose characters are the model's is accepted (it is the user's choice of text)
    shuffled = tmp_path / "same_chars.txt"
    shuffled.write_text(text[::-1])
    assert _cli(["ablate", str(lm), "--corpus", str(shuffled), "--limit", "50"]).exit_code == 0
    # models compared must share the vocabulary (ids mean characters): a model of another text is refused
    other_lm = tmp_path / "other.pt"
    ck = torch.load(lm, weights_only=True)
    ck["meta"]["vocabulary"] = "".join(sorted(set(text.replace("q", "Q"))))
    torch.save(ck, other_lm)
    r = _cli(["circuits", str(lm), "--compare", str(other_lm), "--labels", "0", "--max-evals", "5"])
    assert r.exit_code != 0 and "trained on texts with other characters" in r.output, r.output
    # a checkpoint without the recorded vocabulary (older files) is still checked by the vocabulary size
    ck = torch.load(lm, weights_only=True)
    del ck["meta"]["vocabulary"]
    torch.save(ck, tmp_path / "old.pt")
    r = _cli(["ablate", str(tmp_path / "old.pt"), "--corpus", str(fewer)])
    assert r.exit_code != 0 and "distinct characters" in r.output, r.output
    assert _cli(["ablate", str(tmp_path / "old.pt"), "--corpus", str(same_size), "--limit", "50"]).exit_code == 0


def test_transformer_circuits_are_checked_on_held_out_answers_by_an_independent_forward(ckpts):
    from graphinterp.interpret.label_tasks import heldout_task

    model = ckpts[2].eval()
    _, test = modular_addition(11, 0.6)
    circuits = extract_transformer_circuits(model, test.x, test.y, [0, 3], max_examples=2, tolerance=Tolerance(0.9, 0.2),
                                            schedule=Schedule(max_evals=200), progress=False, device="cpu")
    for c, ci in circuits.items():
        held = heldout_task(test.x, test.y, c, max_examples=2)  # the same examples, as token ids
        assert ci.heldout is not None and (ci.heldout.n_pos, ci.heldout.n_neg) == (held.n_pos, held.n_neg)
        full_acc, full_loss = _by_hand(model, held.x, held)
        with masked_mlp(model, ci.masks):
            acc, loss = _by_hand(model, held.x, held)
        h = ci.heldout
        assert (h.accuracy, h.full_accuracy) == (pytest.approx(acc, abs=1e-6), pytest.approx(full_acc, abs=1e-6))
        assert (h.loss, h.full_loss) == (pytest.approx(loss, abs=1e-4), pytest.approx(full_loss, abs=1e-4))
    # every answer-0 pair searched: the held-out check is on unused pairs of other answers alone
    alone = extract_transformer_circuits(model, test.x, test.y, [0], progress=False, device="cpu",
                                         schedule=Schedule(max_evals=20))[0].heldout
    assert alone is not None and alone.n_pos == 0 and alone.n_neg > 0
