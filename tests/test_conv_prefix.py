"""ChannelPrefix: the incremental layer's input recomputed channel by channel after a convolution."""
import pytest
import torch
from torch import nn

from graphinterp.interpret import conv_prefix
from graphinterp.interpret.conv_prefix import ChannelPrefix, _max_pool, _tiled_max_pool
from graphinterp.interpret.edges import flat_masks
from graphinterp.interpret.interventions import interventions

from _interp_helpers import fast_and_plain_evaluators


def _cnn(between):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), *between, nn.Flatten(), nn.Linear(4 * 9, 6), nn.ReLU(),
                         nn.Linear(6, 3)).eval()


BETWEENS = {
    "relu-tiled-max": [nn.ReLU(), nn.MaxPool2d(2)],
    "gelu-overlapping-max": [nn.GELU(), nn.MaxPool2d(3, stride=2, padding=1)],
    "avg-dropout": [nn.AvgPool2d(2), nn.Dropout(0.3), nn.Tanh()],
}


@pytest.mark.parametrize("tiled", [(2,), (3,), ((2, 3),)])
def test_strided_max_pool_equals_torch(tiled):
    """The strided-slices max-pool gives F.max_pool2d's values, including an input that does not tile."""
    pool = nn.MaxPool2d(*tiled)
    assert _tiled_max_pool(pool)
    y = torch.randn(5, 3, 7, 8)
    assert torch.equal(_max_pool(pool, y), pool(y))


def test_only_tiling_max_pools_take_the_strided_path():
    assert not _tiled_max_pool(nn.MaxPool2d(3, stride=2))
    assert not _tiled_max_pool(nn.MaxPool2d(2, padding=1))
    assert not _tiled_max_pool(nn.MaxPool2d(2, ceil_mode=True))
    assert not _tiled_max_pool(nn.AvgPool2d(2))


def _prefix(model, x):
    prefix = ChannelPrefix.build(model, model[0], model[-3])
    assert prefix is not None
    with interventions(model) as iv, torch.no_grad():
        prefix.hooks(iv)
        model(x)
    prefix.capture()
    return prefix


@pytest.mark.parametrize("patches", [True, False])
@pytest.mark.parametrize("name", sorted(BETWEENS))
def test_changed_inputs_match_the_masked_model(name, patches, monkeypatch):
    """For removed and restored kernels, the new input features of the Linear layer are those of a
    forward pass of the model with the conv weight masked; commit makes them the new state."""
    if not patches:
        monkeypatch.setattr(conv_prefix, "_MAX_PATCH_BYTES", 0)  # the F.conv2d path
    model = _cnn(BETWEENS[name])
    x = torch.randn(20, 3, 6, 6)
    prefix = _prefix(model, x)
    assert (prefix.cols is not None) == patches and prefix.per_channel == 9
    conv, fc = model[0], model[-3]
    weight = conv.weight.detach().clone()
    inputs = []
    with interventions(model) as iv:
        iv.record(fc, lambda a: inputs.append(a.detach()))
        gen = torch.Generator().manual_seed(1)
        old = torch.ones(4, 3, dtype=torch.bool)
        for step in range(6):
            new = old.clone()
            new.view(-1)[torch.randperm(12, generator=gen)[:3]] ^= True  # remove some, restore others
            feats, values, chans = prefix.changed_inputs(weight, old, new)
            with torch.no_grad():
                conv.weight.copy_(weight * new[:, :, None, None])
                model(x)
            want = inputs.pop()
            changed = sorted({int(o) for o in torch.nonzero((old != new).any(1)).flatten()})
            assert sorted(chans) == changed
            assert torch.equal(feats, torch.tensor([o * 9 + f for o in changed for f in range(9)]))
            torch.testing.assert_close(values, want[:, feats].T, atol=1e-5, rtol=1e-5)
            prefix.commit(chans)
            old = new
            with torch.no_grad():
                torch.testing.assert_close(prefix.y, conv(x), atol=1e-5, rtol=1e-5)
    feats, values, chans = prefix.changed_inputs(weight, old, old.clone())
    assert feats.numel() == 0 and values.shape == (0, 20) and chans == {}


def test_build_refuses_what_is_not_per_channel():
    """Only a plain Sequential with a groups=1 convolution, per-channel modules and a Flatten qualifies."""
    def built(model):
        return ChannelPrefix.build(model, model[0], model[-1])

    flat = nn.Flatten()
    assert built(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), flat, nn.Linear(16, 2))) is not None
    assert built(nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), flat, nn.Linear(16, 2))) is None
    assert built(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), flat, nn.Linear(16, 2))) is None
    assert built(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Linear(2, 2))) is None  # no Flatten
    assert built(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(0), nn.Linear(16, 2))) is None
    assert built(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"), flat,
                               nn.Linear(64, 2))) is None

    class Wrapped(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2

    assert built(Wrapped(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))) is None


def test_evaluator_uses_channels_and_captures_again(monkeypatch):
    """In the evaluator, candidates that change conv kernels go through the channel prefix (no full pass),
    match a plain evaluation over many accepted steps, and the state is re-captured every 64 commits."""
    model = _cnn(BETWEENS["gelu-overlapping-max"])
    x = torch.randn(40, 3, 6, 6)
    layers, fast, plain, _ = fast_and_plain_evaluators(model, x, (3, 6, 6), batch_size=16)
    assert fast.conv_prefix is not None and fast.offset == 12
    captures = []
    real = fast._capture_first_input
    monkeypatch.setattr(fast, "_capture_first_input", lambda prefix: (captures.append(1), real(prefix)))
    flat = torch.ones(sum(l.live.numel() for l in layers), dtype=torch.bool)
    masks = flat_masks(layers, flat)
    gen = torch.Generator().manual_seed(3)
    with fast.session():
        for step in range(150):
            on = torch.nonzero(flat[:12]).flatten()
            off = torch.nonzero(~flat[:12]).flatten()
            restore = off.numel() and (step % 4 == 0 or on.numel() <= 2)
            block = off[:1] if restore else on[torch.randint(on.numel(), (1,), generator=gen)]
            flat[block] ^= True
            got, want = fast(masks, changed=block), plain(masks)
            assert got == pytest.approx(want, abs=1e-5)
            if step % 5:
                fast.accept(masks)
            else:
                flat[block] ^= True
    assert len(captures) == 1  # 120 accepted conv changes: one re-capture after 64 channel commits
    assert fast.channel_commits == 120 - 64
