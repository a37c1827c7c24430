"""The transformer tasks and model: modular-addition data, character corpus, the model's forward."""
import pytest
import torch

from graphinterp.common.errors import DataError, UnsupportedModelError
from graphinterp.sources.models import build_model
from graphinterp.data.tasks import load_corpus, modular_addition
from graphinterp.sources.transformer import transformer


def test_modular_addition_splits_every_pair_once_with_the_right_answer():
    train, test = modular_addition(p=113, train_frac=0.3, seed=0)
    assert len(train) == round(0.3 * 113 ** 2) and len(train) + len(test) == 113 ** 2
    x = torch.cat([train.x, test.x])
    assert torch.equal(x[:, 2], torch.full((113 ** 2,), 113))  # the "=" token
    pairs = set(map(tuple, x[:, :2].tolist()))
    assert len(pairs) == 113 ** 2  # disjoint and complete
    for d in (train, test):
        assert torch.equal(d.y, (d.x[:, 0] + d.x[:, 1]) % 113)
    again, _ = modular_addition(p=113, train_frac=0.3, seed=0)
    other, _ = modular_addition(p=113, train_frac=0.3, seed=1)
    assert torch.equal(again.x, train.x) and not torch.equal(other.x, train.x)


@pytest.mark.parametrize("bad", [dict(p=1), dict(p=5, train_frac=0.0), dict(p=5, train_frac=1.0)])
def test_modular_addition_refuses_empty_splits(bad):
    with pytest.raises(DataError):
        modular_addition(**bad)


def test_last_position_readout_is_exact():
    """readout="last" runs the last block on the last position only; it must equal the full forward."""
    torch.manual_seed(0)
    full = transformer(vocab=20, n_out=9, n_ctx=5, d_model=16, n_heads=4, d_mlp=32, n_layers=2, readout="all",
                       layernorm=True)
    last = transformer(vocab=20, n_out=9, n_ctx=5, d_model=16, n_heads=4, d_mlp=32, n_layers=2, readout="last",
                       layernorm=True)
    last.load_state_dict(full.state_dict())
    ids = torch.randint(0, 20, (7, 5))
    torch.testing.assert_close(last(ids), full(ids)[:, -1])
    # causal: changing a later token leaves earlier positions unchanged
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 20
    torch.testing.assert_close(full(ids2)[:, :-1], full(ids)[:, :-1])
    # a longer sequence is read through a window of the last n_ctx tokens
    torch.testing.assert_close(last(torch.cat([ids, ids], 1)), last(ids))


def test_transformer_spec_round_trips_and_checks_arguments():
    model = build_model({"name": "transformer", "kwargs": {"vocab": 12, "n_out": 11, "d_model": 8, "n_heads": 2,
                                                           "d_mlp": 16, "init_std": 0.1}})
    assert model.blocks[0].mlp.fc_in.weight.shape == (16, 8)
    assert abs(float(model.embed.weight.detach().std()) - 0.1) < 0.05
    with pytest.raises(UnsupportedModelError):
        transformer(d_model=0)
    with pytest.raises(UnsupportedModelError):
        transformer(act="tanh")


def test_corpus_windows_batches_and_bad_files(tmp_path):
    text = "abcdefghij" * 30
    path = tmp_path / "c.txt"
    path.write_text(text)
    corpus = load_corpus(path, n_ctx=8, val_frac=0.2)
    assert corpus.chars == sorted(set(text)) and len(corpus.train) == 240 and len(corpus.val) == 60
    assert corpus.decode(corpus.train[:10]) == "abcdefghij"
    x, y = corpus.batch(4, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and torch.equal(y[:, :-1], x[:, 1:])
    xv, yv = corpus.windows(8, "val")
    assert xv.shape == (7, 8) and torch.equal(xv.reshape(-1)[1:], yv.reshape(-1)[:-1])
    with pytest.raises(DataError, match="not found"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(DataError, match="too short"):
        load_corpus(tmp_path / "short.txt", n_ctx=8)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc" * 50)
    with pytest.raises(DataError, match="UTF-8"):
        load_corpus(tmp_path / "bin.txt")
