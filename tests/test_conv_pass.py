"""Final passes over a CNN's convolution through the evaluator (channel_pass), and the inputs captured once per pass."""
import pytest
import torch
from torch import nn

from graphinterp.interpret import circuit_search
from graphinterp.interpret.circuit_batch import TaskMetrics, sequential_pass
from graphinterp.interpret.circuit_search import Schedule, Tolerance, masked_in_place, prune
from graphinterp.interpret.conv_pass import channel_pass, walks_channels
from graphinterp.interpret.edges import flat_masks
from graphinterp.interpret.linear_states import capture_inputs
from graphinterp.interpret.scores import magnitude_score

from _interp_helpers import fast_and_plain_evaluators


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(6 * 9, 10, bias=False), nn.ReLU(), nn.Linear(10, 3, bias=False)).eval()


def _setup(seed=0):
    model = _cnn(seed)
    x = torch.randn(60, 3, 6, 6)
    layers, fast, plain, task = fast_and_plain_evaluators(model, x, (3, 6, 6), batch_size=32)
    return model, layers, fast, task


def _accept_within(full_loss, slack):
    return lambda acc, loss: loss <= full_loss + slack


@pytest.mark.parametrize("slack", [0.003, 0.01, 0.02, 0.05])
def test_channel_pass_decides_as_a_forward_pass_per_kernel(slack):
    """After the Linear layers changed behind the evaluator's back, channel_pass removes the same kernels,
    counts the same evaluations and records the same kept losses as one forward pass per kernel; the conv
    weight is zeroed in place and the evaluator's own count is untouched."""
    results = []
    for through_evaluator in (True, False):
        model, layers, fast, task = _setup()
        assert walks_channels(fast, layers[0]) and not walks_channels(fast, layers[1])
        masks = flat_masks(layers, torch.ones(sum(l.live.numel() for l in layers), dtype=torch.bool))
        masks[layers[1].name].view(-1)[::7] = False  # the Linear layer moved on since the evaluator's state
        metrics = TaskMetrics(task, "cpu")
        conv = fast.modules[0]
        with masked_in_place(model, layers, fast.modules, masks):
            full_loss = metrics(model(task.x)[None])[1].item()
            order = torch.randperm(18, generator=torch.Generator().manual_seed(1))
            kept, calls = [], fast.n_evals
            if through_evaluator:
                out = channel_pass(fast, masks, layers[0], conv, order, _accept_within(full_loss, slack), kept=kept)
            else:
                out = sequential_pass(model, layers[0], conv, masks[layers[0].name], order, metrics,
                                      _accept_within(full_loss, slack), kept=kept)
            zeroed = (conv.weight.detach() == 0).all(-1).all(-1)
            assert fast.n_evals == calls
        results.append((out, masks[layers[0].name].clone(), zeroed, kept))
    (out_a, mask_a, zero_a, kept_a), (out_b, mask_b, zero_b, kept_b) = results
    assert out_a == out_b and 0 < out_a[0] < 18 and out_a[1] == 18 and out_a[2]
    assert torch.equal(mask_a, mask_b) and torch.equal(zero_a, ~mask_a)
    assert [i for i, _ in kept_a] == [i for i, _ in kept_b]
    assert [l for _, l in kept_a] == pytest.approx([l for _, l in kept_b], abs=1e-5)


def test_channel_pass_stops_at_its_budget():
    model, layers, fast, task = _setup()
    masks = flat_masks(layers, torch.ones(sum(l.live.numel() for l in layers), dtype=torch.bool))
    calls = fast.n_evals
    with masked_in_place(model, layers, fast.modules, masks):
        removed, n, finished = channel_pass(fast, masks, layers[0], fast.modules[0], torch.arange(18),
                                            lambda acc, loss: torch.ones_like(acc, dtype=torch.bool), max_evals=5)
        zeroed = (fast.modules[0].weight.detach() == 0).all(-1).all(-1)
    assert (removed, n, finished) == (5, 5, False) and int(masks[layers[0].name].sum()) == 13
    assert torch.equal(zeroed, ~masks[layers[0].name]) and fast.n_evals == calls
    assert channel_pass(fast, masks, layers[0], fast.modules[0], torch.arange(0), None) == (0, 0, True)


def _search(seed=0):
    """A whole search on a small CNN with one coarse round, so that the final passes (full and focused)
    have kernels left to remove."""
    model, layers, fast, task = _setup(seed)
    full_acc, full_loss = fast({l.name: torch.ones_like(l.live) for l in layers})
    tol, status, steps = Tolerance(max_loss_increase=0.1), {}, []
    masks = prune(fast, layers, magnitude_score, lambda a, l: tol.accepts(a, l, full_acc, full_loss),
                  Schedule(focus=0.5, initial_step=0.5, max_rounds=1, patience=1, resolution=0.3), steps,
                  status=status, ok_all=lambda a, l: tol.accepts_all(a, l, full_acc, full_loss))
    return masks, status, layers


def test_final_passes_through_the_evaluator_give_the_same_circuit(monkeypatch):
    """The same kept edges and evaluation count whether the final passes walk the convolution through the
    evaluator or by forward passes; the evaluator path removed kernels in full and in focused passes."""
    calls = []
    real = circuit_search.channel_pass

    def spy(ev, masks, layer, module, order, *args, **kwargs):
        out = real(ev, masks, layer, module, order, *args, **kwargs)
        calls.append((order.numel(), out[0]))
        return out

    monkeypatch.setattr(circuit_search, "channel_pass", spy)
    ma, sa, layers = _search()
    removed = [r for _, r in calls]
    assert sum(removed) >= 3 and sum(r > 0 for r in removed) >= 2  # kernels removed in more than one pass
    assert len({n for n, _ in calls}) > 2  # full passes and focused ones (fewer candidates)
    monkeypatch.setattr(circuit_search, "walks_channels", lambda ev, layer: False)
    mb, sb, _ = _search()
    assert sa == sb and sa["converged"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert 0 < int(ma[layers[0].name].sum()) < 18  # the convolution was pruned, not left whole or emptied


def test_inputs_captured_once_per_pass_give_the_same_circuit(monkeypatch):
    """The Linear layers' inputs captured once per final pass decide as each layer capturing its own."""
    captures = []
    real = circuit_search._linear_inputs
    monkeypatch.setattr(circuit_search, "_linear_inputs", lambda *a: captures.append(1) or real(*a))
    ma, sa, _ = _search()
    assert captures
    monkeypatch.setattr(circuit_search, "_linear_inputs", lambda *a: {})  # every layer captures its own
    mb, sb, _ = _search()
    assert sa == sb and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_channel_pass_restores_kept_kernels_inside_a_session():
    """Inside an open evaluator session (which leaves candidates' weights in place), a rejected kernel's
    weight is written back and a removed one stays zero."""
    model, layers, fast, task = _setup()
    masks = flat_masks(layers, torch.ones(sum(l.live.numel() for l in layers), dtype=torch.bool))
    conv = fast.modules[0]
    metrics = TaskMetrics(task, "cpu")
    with masked_in_place(model, layers, fast.modules, masks), fast.session():
        full_loss = metrics(model(task.x)[None])[1].item()
        removed, n, _ = channel_pass(fast, masks, layers[0], conv, torch.arange(18), _accept_within(full_loss, 0.01))
        weight = conv.weight.detach().clone()
    kept = masks[layers[0].name]
    assert 0 < removed < 18 and n == 18
    assert torch.equal(weight[kept], layers[0].weight[kept]) and not weight[~kept].any()


@pytest.mark.parametrize("before", ["conv", "linear", "both"])
@pytest.mark.parametrize("channel_prefix", [True, False])
def test_rebase_makes_the_evaluator_match_the_model_again(before, channel_prefix):
    """rebase after masks and weights changed outside the evaluator (the convolution's, the Linear
    layer's or both): its next evaluations, of kernels and of Linear edges, equal plain ones; without
    a channel prefix (a BatchNorm in between) too."""
    torch.manual_seed(1)
    norm = [] if channel_prefix else [nn.BatchNorm2d(6)]
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), *norm, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(6 * 9, 10, bias=False), nn.ReLU(), nn.Linear(10, 3, bias=False)).eval()
    x = torch.randn(40, 3, 6, 6)
    layers, fast, plain, _ = fast_and_plain_evaluators(model, x, (3, 6, 6), batch_size=16)
    assert (fast.conv_prefix is not None) == channel_prefix and fast.first is model[-3]
    masks = flat_masks(layers, torch.ones(sum(l.live.numel() for l in layers), dtype=torch.bool))
    if before in ("conv", "both"):
        masks[layers[0].name][0, 1] = masks[layers[0].name][4, 2] = False
    if before in ("linear", "both"):
        masks[layers[1].name].view(-1)[::5] = False
    with masked_in_place(model, layers, fast.modules, masks):
        fast.rebase(masks)
        masks[layers[1].name][3, 7] = False  # a Linear edge (flat index 18 + 3 * 54 + 7)
        assert fast(masks, changed=torch.tensor([18 + 3 * 54 + 7])) == pytest.approx(plain(masks), abs=1e-5)
        masks[layers[1].name][3, 7] = True
        if channel_prefix:
            masks[layers[0].name][2, 0] = False  # a kernel
            assert fast(masks, changed=torch.tensor([2 * 3 + 0])) == pytest.approx(plain(masks), abs=1e-5)


def test_captured_inputs_equal_the_per_layer_capture():
    """capture_inputs records each Linear layer's input in one pass; a pass given it decides as one without."""
    model, layers, fast, task = _setup()
    linear = [m for m in fast.modules if isinstance(m, nn.Linear)]
    inputs = capture_inputs(model, linear, task.x, 16)
    assert [tuple(a.shape) for a in inputs] == [(len(task.x), 54), (len(task.x), 10)]
    with torch.no_grad():
        torch.testing.assert_close(inputs[1], model[:6](task.x))
    metrics = TaskMetrics(task, "cpu")
    outs = []
    for given in (inputs[1], None):
        mask = torch.ones(3, 10, dtype=torch.bool)
        saved = linear[1].weight.detach().clone()
        full_loss = metrics(model(task.x)[None])[1].item()
        outs.append((sequential_pass(model, layers[2], linear[1], mask, torch.arange(30), metrics,
                                     _accept_within(full_loss, 0.05), layer_input=given), mask))
        with torch.no_grad():
            linear[1].weight.copy_(saved)
    assert outs[0][0] == outs[1][0] and torch.equal(outs[0][1], outs[1][1])
