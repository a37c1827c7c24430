"""The circuits' transformer tail: reused stages, skipped units and batched states equal plain forward passes."""
import pytest
import torch

from graphinterp.interpret import answer_tail
from graphinterp.interpret.answer_tail import AnswerTail, stream_input
from graphinterp.interpret.circuit_batch import TaskMetrics, forward_metrics, sequential_pass
from graphinterp.interpret.label_tasks import label_task
from graphinterp.interpret.linear_states import LinearStates
from graphinterp.interpret.transformer_circuits import mlp_edges
from graphinterp.sources.transformer import transformer


def _lm(n_layers=2, seed=0, d_mlp=24):
    torch.manual_seed(seed)
    return transformer(vocab=9, n_out=9, n_ctx=6, d_model=16, n_heads=2, d_mlp=d_mlp, n_layers=n_layers,
                       layernorm=True, readout="all").eval()


def _plain_logits(model, ids):
    with torch.no_grad():
        return model(ids)[:, -1]


def test_reused_stages_follow_every_weight_change():
    model = _lm(3)
    ids = torch.randint(0, 9, (30, 6), generator=torch.Generator().manual_seed(1))
    h = stream_input(model, ids)
    tail = AnswerTail(model)
    with torch.no_grad():
        before = tail(h)
        torch.testing.assert_close(before, _plain_logits(model, ids), rtol=1e-5, atol=1e-5)
        for name in ("blocks.2.mlp.fc_out", "blocks.1.attn.v", "blocks.0.mlp.fc_in", "blocks.1.ln2", "blocks.2.mlp.fc_in"):
            w = model.get_submodule(name).weight
            w.mul_(torch.rand_like(w) > 0.3)  # in place, as the search writes weights
            again = tail(h)
            torch.testing.assert_close(again, _plain_logits(model, ids), rtol=1e-5, atol=1e-5)
            assert not torch.allclose(again, before, atol=1e-4)  # the change reached the logits
            before = again
        saved = model.blocks[1].mlp.fc_out.weight.clone()
        model.blocks[1].mlp.fc_out.weight.copy_(saved)  # rewritten with equal values: still reused
        assert tail._stages[(2, "attn")].valid(("stage", tail._stages[(1, "mlp")].token))
        h2 = h.clone()
        h2[0, 0, 0] += 1.0  # another input of the same shape
        torch.testing.assert_close(tail(h2), AnswerTail(model, cache=False)(h2), rtol=1e-5, atol=1e-5)


def test_a_stage_is_not_reused_when_its_input_changes_in_place_or_a_hook_is_set():
    model = _lm(2)
    ids = torch.randint(0, 9, (10, 6), generator=torch.Generator().manual_seed(2))
    h = stream_input(model, ids)
    tail = AnswerTail(model)
    with torch.no_grad():
        first = tail(h).clone()
        h[:, :, 0] += 0.5  # same tensor, new values: its version counter moved
        torch.testing.assert_close(tail(h), AnswerTail(model, cache=False)(h), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(first, tail(h))
        handle = model.blocks[1].mlp.fc_in.register_forward_hook(lambda _m, _a, out: out * 0)
        try:
            hooked = tail(h)
        finally:
            handle.remove()
        with torch.no_grad():
            h_last = tail._stream(h, upto=1)[:, -1]
            ref = model.unembed(model.ln_f(h_last + model.blocks[1].mlp.fc_out.bias))  # fc_in zeroed by the hook
        torch.testing.assert_close(hooked, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("density", [0.05, 0.3, 1.0])
def test_skipped_hidden_units_and_the_sparse_product_equal_the_dense_mlp(density):
    model = _lm(2, d_mlp=64)
    with torch.no_grad():
        for block in model.blocks:
            w = block.mlp.fc_out.weight
            w.mul_(torch.rand(w.shape, generator=torch.Generator().manual_seed(3)) < density)
    ids = torch.randint(0, 9, (25, 6), generator=torch.Generator().manual_seed(4))
    x = model.blocks[0].ln2(stream_input(model, ids))
    with torch.no_grad():
        torch.testing.assert_close(answer_tail._sparse_mlp(model.blocks[0].mlp, x), model.blocks[0].mlp(x),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(AnswerTail(model)(stream_input(model, ids)), _plain_logits(model, ids),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["blocks.0.mlp.fc_in", "blocks.0.mlp.fc_out", "blocks.1.mlp.fc_in",
                                  "blocks.1.mlp.fc_out"])
def test_batched_states_of_a_two_layer_language_model_match_forward_passes(name):
    """Every MLP layer of a 2-layer LM (positions flattened into rows, and the last block on its last
    position) through its linear suffix: each state equals a forward pass with those edges removed."""
    model = _lm(2, seed=5)
    ids = torch.randint(0, 9, (40, 6), generator=torch.Generator().manual_seed(6))
    y = _plain_logits(model, ids).argmax(-1)
    tail = AnswerTail(model)
    task = label_task(stream_input(model, ids), y, int(y[0]))
    metrics, module = TaskMetrics(task, "cpu"), model.get_submodule(name)
    states = LinearStates(tail, module, metrics)
    assert states.rest is not None  # the linear suffix is used, not a forward pass per state
    o, i = torch.tensor([3, 3, 3, 5]), torch.tensor([0, 4, 7, 1])
    w = module.weight.detach().clone()
    for cumulative in (True, False):
        acc, loss = states.evaluate(o, i, cumulative=cumulative)
        for t in range(len(o)):
            with torch.no_grad():
                if not cumulative:
                    module.weight.copy_(w)
                module.weight[o[t], i[t]] = 0.0
            a_ref, l_ref = forward_metrics(AnswerTail(model, cache=False), metrics, 4096)
            assert float(acc[t]) == pytest.approx(a_ref, abs=1e-9) and float(loss[t]) == pytest.approx(l_ref, abs=1e-5)
        with torch.no_grad():
            module.weight.copy_(w)


def test_a_pass_over_a_layer_with_positions_is_the_same_batched_or_one_by_one(monkeypatch):
    """A layer whose input has positions and no linear suffix goes through the model a batch of states
    at a time; the decisions equal the one-by-one walk's."""
    from graphinterp.interpret import circuit_batch

    model = _lm(2, seed=7)
    ids = torch.randint(0, 9, (30, 6), generator=torch.Generator().manual_seed(8))
    y = _plain_logits(model, ids).argmax(-1)
    tail = AnswerTail(model)
    monkeypatch.setattr(AnswerTail, "linear_suffix", lambda self, module, x: None)
    task = label_task(stream_input(model, ids), y, int(y[0]))
    metrics = TaskMetrics(task, "cpu")
    layers, modules = mlp_edges(model)
    layer, module = layers[0], modules[0]
    full_loss = forward_metrics(tail, metrics, 4096)[1]
    order = torch.randperm(layer.live.numel(), generator=torch.Generator().manual_seed(0))[:120]
    results = []
    w = module.weight.detach().clone()
    for runner in ("batched", "one"):
        with torch.no_grad():
            module.weight.copy_(w)
        mask = torch.ones_like(layer.live)
        accept = lambda a, l: l <= full_loss + 2e-3  # noqa: E731
        if runner == "batched":
            removed, evals, done = sequential_pass(tail, layer, module, mask, order, metrics, accept)
        else:
            removed, evals, done = circuit_batch._one_by_one(tail, layer, module, mask, order, metrics, accept, 4096, None)
        results.append(mask.clone())
        assert done and evals == 120 and torch.equal(module.weight == 0, ~mask | (w == 0))
    with torch.no_grad():
        module.weight.copy_(w)
    assert torch.equal(results[0], results[1]) and 5 < int((~results[0]).sum()) < 115
