"""BSGC against scikit-learn's SpectralCoclustering and planted ground truth."""
import functools

import numpy as np
import pytest
import torch
from sklearn.cluster import SpectralCoclustering
from sklearn.metrics import adjusted_rand_score

from graphinterp.bsgc import BSGC, match_clusters, normalize_bipartite, randomized_svd
from graphinterp.errors import ClusteringError, InvalidWeightsError
from graphinterp.metrics import clusterability

SEEDS = range(3)


def E(W, rows, cols):
    return float(clusterability(torch.as_tensor(W, dtype=torch.float64) ** 2, rows, cols))


def planted(sizes_in, sizes_out, noise=0.05, seed=0):
    """Block-diagonal weights (unequal modules) plus noise, rows and columns shuffled."""
    rng = np.random.default_rng(seed)
    W = noise * rng.standard_normal((sum(sizes_in), sum(sizes_out)))
    rows = np.repeat(np.arange(len(sizes_in)), sizes_in)
    cols = np.repeat(np.arange(len(sizes_out)), sizes_out)
    block = rows[:, None] == cols[None, :]
    W[block] += rng.standard_normal(block.sum()) + np.sign(rng.standard_normal(block.sum()))
    pr, pc = rng.permutation(len(rows)), rng.permutation(len(cols))
    return W[pr][:, pc], rows[pr], cols[pc]


@functools.lru_cache(maxsize=None)
def trained_digits_layer():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 48, bias=False), torch.nn.ReLU(), torch.nn.Linear(48, 48, bias=False),
                              torch.nn.ReLU(), torch.nn.Linear(48, 10, bias=False))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return net[2].weight.detach().T.numpy().astype(np.float64)


@functools.lru_cache(maxsize=None)
def reference_layers():
    rng = np.random.default_rng(0)
    layers = {
        "gaussian 64x64": rng.standard_normal((64, 64)),
        "gaussian 300x120": rng.standard_normal((300, 120)),
        "planted": planted([30, 12, 20, 6], [10, 25, 8, 17])[0],
        "trained digits fc2": trained_digits_layer(),
    }
    return layers


@pytest.mark.parametrize("k", [2, 4, 6])
def test_clusterability_at_least_sklearn(k):
    for name, W in reference_layers().items():
        A = np.abs(W)
        ours = np.mean([E(W, *BSGC(k, random_state=s).fit_predict(A)) for s in SEEDS])
        ref = []
        for s in SEEDS:
            sk = SpectralCoclustering(n_clusters=k, random_state=s).fit(A)
            ref.append(E(W, sk.row_labels_, sk.column_labels_))
        assert ours >= np.mean(ref) - 0.01, f"{name}, k={k}: BSGC E={ours:.4f} < sklearn {np.mean(ref):.4f}"


def test_clusterability_at_least_sklearn_on_pretrained(pretrained_dir):
    sd = torch.load(pretrained_dir / "mnist-mlp-784-512-512-10.pt", map_location="cpu", weights_only=True)
    W = sd["fc2.weight"].T.double().numpy()[:256, :256]
    A = np.abs(W)
    ours = E(W, *BSGC(4, random_state=0).fit_predict(A))
    sk = SpectralCoclustering(4, random_state=0).fit(A)
    assert ours >= E(W, sk.row_labels_, sk.column_labels_) - 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_planted_modules_exactly(seed):
    W, rows, cols = planted([40, 10, 25, 5], [12, 30, 6, 20], seed=seed)
    est = BSGC(4, random_state=seed).fit(np.abs(W))
    assert adjusted_rand_score(rows, est.row_labels_) == 1.0
    assert adjusted_rand_score(cols, est.column_labels_) == 1.0
    # paired: each row cluster's columns are its own module's columns
    assert adjusted_rand_score(np.r_[rows, cols], np.r_[est.row_labels_, est.column_labels_]) == 1.0
    assert E(W, est.row_labels_, est.column_labels_) > 0.95


def test_independent_pairing_scores_like_random_but_joint_does_not():
    W, _, _ = planted([20, 20, 20, 20], [20, 20, 20, 20], seed=3)
    joint = E(W, *BSGC(4, random_state=0).fit_predict(np.abs(W)))
    indep = [E(W, *BSGC(4, pairing="independent", random_state=s).fit_predict(np.abs(W))) for s in range(6)]
    assert joint > 0.95
    assert min(indep) < 0.9  # unpaired labels: some runs put modules under the wrong column label


def test_deterministic_given_seed():
    A = np.abs(np.random.default_rng(5).standard_normal((80, 50)))
    a = BSGC(3, random_state=7).fit(A)
    b = BSGC(3, random_state=7).fit(A)
    assert np.array_equal(a.row_labels_, b.row_labels_) and np.array_equal(a.column_labels_, b.column_labels_)
    assert a.rows_.shape == (3, 80) and a.columns_.sum() == 50


def test_dead_neurons_get_minus_one_and_no_nan():
    W, _, _ = planted([10, 10], [8, 8], seed=1)
    W[3] = 0.0
    W[:, [0, 5]] = 0.0
    est = BSGC(2, random_state=0).fit(np.abs(W))
    assert est.row_labels_[3] == -1 and (est.column_labels_[[0, 5]] == -1).all()
    assert (np.delete(est.row_labels_, 3) >= 0).all()
    An, du, dv = normalize_bipartite(torch.as_tensor(np.abs(W)))
    assert torch.isfinite(An).all() and du[3] == 0 and dv[0] == 0


@pytest.mark.parametrize("k", [1, 0, 17, 2.5])
def test_k_out_of_range(k):
    A = np.abs(np.random.default_rng(0).standard_normal((16, 20)))
    with pytest.raises(ClusteringError, match="out of range"):
        BSGC(k).fit(A)


def test_bad_matrices():
    with pytest.raises(ClusteringError, match="non-negative"):
        BSGC(2).fit(-np.ones((4, 4)))
    with pytest.raises(InvalidWeightsError, match="NaN"):
        BSGC(2).fit(np.full((4, 4), np.nan))
    with pytest.raises(ClusteringError, match="2-D"):
        BSGC(2).fit(np.ones(4))
    with pytest.raises(ClusteringError, match="pairing"):
        BSGC(2, pairing="bogus").fit(np.ones((4, 4)))


def test_randomized_svd_matches_exact_on_low_rank_plus_noise():
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(700, 5, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(600, 5, generator=g, dtype=torch.float64))[0]
    A = U @ torch.diag(torch.tensor([50.0, 40, 30, 20, 10], dtype=torch.float64)) @ V.T
    A += 0.01 * torch.randn(700, 600, generator=g, dtype=torch.float64)
    _, S, _ = randomized_svd(A, 4, generator=torch.Generator().manual_seed(1))
    S_exact = torch.linalg.svdvals(A)[:4]
    assert torch.allclose(S, S_exact, rtol=1e-6)


def test_matching_maximises_within_mass():
    sq = torch.tensor([[9.0, 0, 0], [0, 0, 4], [0, 1, 0]])
    rows = np.array([0, 1, 2])
    cols = np.array([2, 0, 1])  # column labels deliberately permuted
    new = match_clusters(sq, rows, cols, 3)
    assert list(new) == [0, 2, 1]
