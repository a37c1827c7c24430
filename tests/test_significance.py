"""Tests of graphinterp.clustering.significance: permutations, the null summary, planted vs random layers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from graphinterp.common.errors import ClusteringError
from graphinterp.graph.layer import Layer
from graphinterp.clustering.metrics import clusterability, normalized_score, random_partition_expectation
from graphinterp.clustering.significance import NullComparison, shuffle_test, shuffle_weights

FAST = {"n_init": 3}  # fewer KMeans restarts than the default, to keep the suite fast


def _planted(seed: int, n_in: int = 40, n_out: int = 32, k: int = 4, noise: float = 0.01, zeros: bool = False):
    """Block-diagonal layer (rows/columns in shuffled order) plus small noise; returns (W, rows, cols)."""
    rng = np.random.default_rng(seed)
    rows, cols = rng.permutation(np.arange(n_in) % k), rng.permutation(np.arange(n_out) % k)
    block = (rows[:, None] == cols[None, :]) * rng.normal(0, 1, (n_in, n_out))
    W = block if zeros else block + noise * rng.normal(0, 1, (n_in, n_out))
    return W, rows, cols


# --- permutations --------------------------------------------------------------------------------------------

def test_shuffle_weights_permutes_every_copy():
    W = torch.randn(7, 5, dtype=torch.float64)
    S = shuffle_weights(W, 6, generator=torch.Generator().manual_seed(0))
    assert S.shape == (6, 7, 5)
    for copy in S:  # each copy holds exactly the same multiset of values
        assert torch.equal(copy.flatten().sort().values, W.flatten().sort().values)
    assert not torch.equal(S[0], S[1]) and not torch.equal(S[0], W)
    again = shuffle_weights(W, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(S, again)


def test_shuffle_weights_of_a_parameter_is_differentiable():
    """A tensor that requires grad (e.g. a layer's weight) gives differentiable copies: each entry
    appears once per copy, so the gradient of their sum is the number of copies."""
    W = torch.nn.Parameter(torch.randn(5, 4))
    S = shuffle_weights(W, 3, generator=torch.Generator().manual_seed(0))
    assert S.requires_grad
    assert torch.equal(S.detach(), shuffle_weights(W.detach(), 3, generator=torch.Generator().manual_seed(0)))
    S.sum().backward()
    assert torch.equal(W.grad, torch.full_like(W, 3.0))


@pytest.mark.parametrize("kw", [{}, {"nonzero_only": True}, {"support": "half"}])
def test_shuffle_weights_copy_i_is_the_ith_randperm_of_the_generator(kw):
    """The documented permutation: copy i is W's entries (those that move) taken in the order of the
    i-th ``torch.randperm`` (int64) drawn from the generator, so a seed gives the same null as before."""
    W = torch.randn(9, 7, dtype=torch.float64)
    W[W.abs() < 0.4] = 0
    support = torch.arange(63).reshape(9, 7) % 2 == 0
    if kw.get("support"):
        kw = {"support": support}
    S = shuffle_weights(W, 4, generator=torch.Generator().manual_seed(3), **kw)
    keep = torch.ones(63, dtype=torch.bool)
    if "support" in kw:
        keep &= support.flatten()
    if kw.get("nonzero_only"):
        keep &= W.flatten() != 0
    where = torch.nonzero(keep)[:, 0]
    g = torch.Generator().manual_seed(3)
    for copy in S:
        expected = W.flatten().clone()
        expected[where] = W.flatten()[where][torch.randperm(len(where), generator=g)]
        assert torch.equal(copy.flatten(), expected)


def test_shuffle_weights_nonzero_only_keeps_the_sparsity_pattern():
    W, _, _ = _planted(0, 12, 10, zeros=True)
    W = torch.as_tensor(W)
    S = shuffle_weights(W, 5, nonzero_only=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal((S != 0), (W != 0).expand_as(S))
    assert torch.equal(S[0][W != 0].sort().values, W[W != 0].sort().values)
    assert not torch.equal(S[0], W)
    everywhere = shuffle_weights(W, 5, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(everywhere != 0, (W != 0).expand_as(everywhere))  # zeros move too by default


# --- the null summary ----------------------------------------------------------------------------------------

def test_null_comparison_matches_the_formulas():
    null = np.array([0.2, 0.5, 0.4, 0.5, 0.1])
    c = NullComparison.from_samples(0.45, null)
    assert c.mean == pytest.approx(null.mean())
    assert c.std == pytest.approx(np.std(null, ddof=1))
    assert c.z == pytest.approx((0.45 - null.mean()) / np.std(null, ddof=1))
    assert c.p_value == pytest.approx((2 + 1) / (5 + 1))  # two null values >= 0.45
    assert NullComparison.from_samples(0.5, null).p_value == pytest.approx(3 / 6)  # ties count as >=
    assert NullComparison.from_samples(0.9, null).p_value == pytest.approx(1 / 6)  # the minimum
    flat = NullComparison.from_samples(0.9, np.full(4, 0.3))
    assert flat.z == math.inf and flat.p_value == pytest.approx(1 / 5)
    assert math.isnan(NullComparison.from_samples(0.3, np.full(4, 0.3)).z)
    assert NullComparison.from_samples(0.3, np.full(4, 0.3)).to_dict()["z"] is None


# --- planted structure vs no structure -----------------------------------------------------------------------

def test_planted_modular_layer_is_significant():
    W, rows, cols = _planted(0)
    n = 19
    t = shuffle_test(W, 4, n_shuffles=n, random_state=0, **FAST)
    assert t.E.observed > 0.99  # BSGC recovers the blocks
    assert t.E.p_value == t.score.p_value == t.min_p_value == pytest.approx(1 / (n + 1))
    assert t.E.z > 5 and t.score.z > 5  # the sparse shuffles still reach E ~ 0.75 with k = 4
    assert t.score.observed > 0.98 and t.score.null.max() < t.score.observed - 0.1
    assert t.E.null.shape == t.score.null.shape == (n,)
    assert t.sizes.sum(axis=1).tolist() == [40, 32]


def test_gaussian_random_layer_is_not_significant():
    p_E, p_score = [], []
    for seed in range(4):
        W = np.random.default_rng(100 + seed).normal(size=(32, 32))
        t = shuffle_test(W, 4, n_shuffles=19, random_state=seed, **FAST)
        p_E.append(t.E.p_value)
        p_score.append(t.score.p_value)
        assert abs(t.score.z) < 4
    # under the null the p-value is uniform on {1/20, ..., 1}: mean 0.525
    assert np.mean(p_E) > 0.2 and np.mean(p_score) > 0.2
    assert max(p_E) > 0.05 and max(p_score) > 0.05


def test_nonzero_only_null_keeps_structure_that_lives_in_the_sparsity_pattern():
    W, _, _ = _planted(1, 24, 24, zeros=True)
    default = shuffle_test(W, 4, n_shuffles=9, random_state=0, **FAST)
    kept = shuffle_test(W, 4, n_shuffles=9, nonzero_only=True, random_state=0, **FAST)
    assert default.E.p_value == pytest.approx(0.1)
    assert kept.nonzero_only and kept.E.p_value > 0.5  # every shuffle is still block-diagonal
    assert kept.E.mean > 0.99


def test_given_labels_define_the_observed_measures():
    W, rows, cols = _planted(2, 20, 16, noise=0.3)
    rows_bad = np.roll(rows, 3)
    t = shuffle_test(W, 4, n_shuffles=3, labels=(rows_bad, cols), random_state=0, **FAST)
    sq = torch.as_tensor(W).square()
    E = float(clusterability(sq, rows_bad, cols))
    E_rand = random_partition_expectation(rows_bad, cols, 4)
    assert t.E.observed == pytest.approx(E)
    assert t.E_random == pytest.approx(E_rand)
    assert t.score.observed == pytest.approx(normalized_score(E, E_rand))


def test_conv_layer_is_tested_on_kernel_norms():
    torch.manual_seed(0)
    weight = torch.randn(8, 6, 3, 3)
    layer = Layer("conv", "conv2d", weight)
    rows = np.arange(6) % 2
    cols = np.arange(8) % 2
    t = shuffle_test(layer, 2, n_shuffles=4, labels=(rows, cols), random_state=0, **FAST)
    assert t.layer == "conv"
    assert t.E.observed == pytest.approx(float(clusterability(layer.squared().double(), rows, cols)))


def test_reproducible_with_a_seed_and_json_ready():
    W = np.random.default_rng(5).normal(size=(16, 12))
    a = shuffle_test(W, 3, n_shuffles=5, random_state=7, **FAST)
    b = shuffle_test(W, 3, n_shuffles=5, random_state=7, **FAST)
    np.testing.assert_array_equal(a.E.null, b.E.null)
    np.testing.assert_array_equal(a.score.null, b.score.null)
    text = json.dumps(a.to_dict(), allow_nan=False)
    assert json.loads(text)["n_shuffles"] == 5
    d = json.loads(text)
    assert [d["row_sizes"], d["col_sizes"]] == d["sizes"] and sum(d["row_sizes"]) == 16 and sum(d["col_sizes"]) == 12
    assert "null" not in a.to_dict(include_null=False)["E"]


def test_bad_inputs_raise_clear_errors():
    W = np.random.default_rng(0).normal(size=(10, 8))
    with pytest.raises(ClusteringError, match="n_shuffles"):
        shuffle_test(W, 2, n_shuffles=0)
    with pytest.raises(ClusteringError, match="k=9 is out of range"):
        shuffle_test(W, 9, n_shuffles=2)
    with pytest.raises(ClusteringError, match="2-D"):
        shuffle_test(np.zeros((2, 3, 4)), 2)
    with pytest.raises(ClusteringError, match="do not fit"):
        shuffle_test(W, 2, n_shuffles=2, labels=(np.zeros(3, dtype=np.int64), np.zeros(8, dtype=np.int64)))


# --- the null in batches -------------------------------------------------------------------------------------

@pytest.mark.parametrize("pairing", ["joint", "independent"])
def test_batched_null_equals_one_shuffle_at_a_time(pairing):
    """Shuffled copies clustered together by fit_batch give the labels, E and scores of one-by-one BSGC fits."""
    W, _, _ = _planted(3, 60, 40, noise=0.3)
    W[5] = 0.0  # a dead input: each shuffle moves the zeros, so copies fall into different live-node groups
    for nonzero_only in (False, True):
        serial = shuffle_test(W, 4, n_shuffles=7, nonzero_only=nonzero_only, pairing=pairing, random_state=3,
                              batch_size=1, **FAST)
        batched = shuffle_test(W, 4, n_shuffles=7, nonzero_only=nonzero_only, pairing=pairing, random_state=3, **FAST)
        odd = shuffle_test(W, 4, n_shuffles=7, nonzero_only=nonzero_only, pairing=pairing, random_state=3,
                           batch_size=3, **FAST)
        for t in (batched, odd):
            np.testing.assert_array_equal(serial.E.null, t.E.null)
            np.testing.assert_array_equal(serial.score.null, t.score.null)
        assert len(set(serial.E.null.round(12))) > 1  # the copies differ, so the comparison means something


def test_batched_null_of_a_grouped_conv_shuffles_within_the_support():
    torch.manual_seed(1)
    layer = Layer("conv", "conv2d", torch.randn(8, 2, 3, 3), groups=4)  # 8 inputs, 8 outputs, 4 groups
    support = layer.support()
    serial = shuffle_test(layer, 2, n_shuffles=5, random_state=0, batch_size=1, **FAST)
    batched = shuffle_test(layer, 2, n_shuffles=5, random_state=0, **FAST)
    np.testing.assert_array_equal(serial.E.null, batched.E.null)
    S = shuffle_weights(layer.magnitude(), 4, support=support, generator=torch.Generator().manual_seed(0))
    assert bool((S[:, ~support] == 0).all())  # nothing leaves the structural support
    with pytest.raises(ClusteringError, match="batch_size"):
        shuffle_test(layer, 2, n_shuffles=2, batch_size=0)


def test_within_share_by_product_equals_clusterability():
    from graphinterp.clustering.significance import _within_share

    rng = np.random.default_rng(0)
    sq = torch.as_tensor(rng.random((30, 20)) ** 2)
    rows, cols = rng.integers(-1, 4, 30), rng.integers(-1, 4, 20)  # -1: isolated, in no cluster
    assert _within_share(sq, rows, cols, 4) == pytest.approx(float(clusterability(sq, rows, cols)), rel=1e-12)


def test_a_layer_with_dead_inputs_and_no_structure_is_not_significant():
    """Dead inputs counted in E_random, and weight scattered onto them by the null, made a structureless layer
    'significant' at the smallest p in 10 of 10 seeds (score z +7 to +8)."""
    rng = np.random.default_rng(0)
    p_values = []
    for seed in range(4):
        W = np.concatenate([rng.standard_normal((60, 40)), np.zeros((60, 40))])
        t = shuffle_test(W, 3, n_shuffles=9, random_state=seed, **FAST)
        p_values.append(t.score.p_value)
    assert sum(p > t.min_p_value for p in p_values) >= 2, p_values


def test_a_null_without_spread_gives_an_infinite_z_even_for_a_small_difference():
    """Every shuffle scored 0.5 and the layer 0.505: z is +inf (the observed value lies outside a null of zero
    spread), not NaN; a difference up to 1e-12 only is rounding (z undefined, NaN)."""
    from graphinterp.clustering.shuffle_results import NullComparison

    assert NullComparison.from_samples(0.505, np.array([0.5, 0.5, 0.5])).z == math.inf
    assert NullComparison.from_samples(0.495, np.array([0.5, 0.5, 0.5])).z == -math.inf
    assert math.isnan(NullComparison.from_samples(0.5 + 1e-13, np.array([0.5, 0.5, 0.5])).z)


def test_null_values_tied_with_the_observed_one_count_against_it():
    """p = (1 + #{null >= observed}) / (1 + n): two ties of three shuffles give 0.75."""
    from graphinterp.clustering.shuffle_results import NullComparison

    assert NullComparison.from_samples(0.5, np.array([0.5, 0.5, 0.1])).p_value == 0.75
