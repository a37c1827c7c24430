"""Same seed, command and thread count: bit-identical models, clusterings and histories; results over seeds."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from graphinterp.common.seeds import deterministic, parse_seeds, summarize
from graphinterp.training.train import TrainConfig, train


def _run(seed: int):
    cfg = TrainConfig(dataset="digits", k=2, lam=20.0, warmup_epochs=1, epochs=2, max_train=400, seed=seed, quiet=True)
    with deterministic():
        return train(cfg)


def _history(result):
    return [{k: v for k, v in row.items() if k != "time"} for row in result.history]  # wall time is not a result


def test_two_identical_runs_give_identical_weights_and_history():
    threads = torch.get_num_threads()
    a, b = _run(3), _run(3)
    assert torch.get_num_threads() == threads
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _history(a) == _history(b)
    assert a.clustering.to_dict() == b.clustering.to_dict()
    c = _run(4)  # the comparison can fail: another seed gives other weights
    assert not torch.equal(c.model.state_dict()["fc1.weight"], sa["fc1.weight"]) and _history(c) != _history(a)


def test_deterministic_restores_the_settings():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_summarize_against_scipy():
    from scipy import stats

    vals = [0.29, 0.446, 0.491, 0.406, float("nan")]
    s = summarize(vals)
    x = np.array(vals[:4])
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert s.n == 4 and s.mean == pytest.approx(x.mean()) and s.std == pytest.approx(x.std(ddof=1))
    assert (s.low, s.high) == pytest.approx((low, high))
    assert (s.n_positive, s.n_negative) == (4, 0) and s.sign_holds(-1) == 0
    one = summarize([-0.5])
    assert math.isnan(one.std) and one.n_negative == 1 and one.format() == "-0.500"
    assert "[" in s.format(pct=True) and s.format(pct=True).startswith("+40.8%")


def test_parse_seeds():
    assert parse_seeds("5") == [0, 1, 2, 3, 4] and parse_seeds("2", first=7) == [7, 8]
    assert parse_seeds("0,3,5-7") == [0, 3, 5, 6, 7] and parse_seeds([4, 2]) == [4, 2]
    for bad in ("0", "a", "1,1", "3-x", "", "\u0663", "1-\u0663"):
        with pytest.raises(ValueError):
            parse_seeds(bad)
