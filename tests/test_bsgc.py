"""BSGC against scikit-learn's SpectralCoclustering, Algorithm 1 written out, and planted ground truth."""
import functools
import warnings

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans, SpectralCoclustering
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from graphinterp.clustering.bsgc import BSGC, cluster_mass, match_clusters, normalize_bipartite, randomized_svd
from graphinterp.clustering.bsgc_batch import fit_batch, fit_k_range
from graphinterp.clustering.kmeans_batch import batched_kmeans
from graphinterp.common.errors import ClusteringError, InvalidWeightsError
from graphinterp.clustering.metrics import clusterability, normalized_score, random_partition_expectation
from graphinterp.clustering.spectral import _normalized_svd

SEEDS = range(3)


def E(W, rows, cols):
    return float(clusterability(torch.as_tensor(W, dtype=torch.float64) ** 2, rows, cols))


def score(W, rows, cols):
    """The normalised score (E against a random partition with the same cluster sizes) that reports lead with."""
    sq = torch.as_tensor(W, dtype=torch.float64) ** 2
    k = int(max(rows.max(), cols.max())) + 1
    return normalized_score(E(W, rows, cols), random_partition_expectation(rows, cols, k, squared=sq))


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


def sklearn_score(W, k):
    """Mean score of scikit-learn's SpectralCoclustering over SEEDS."""
    out = []
    for s in SEEDS:
        with warnings.catch_warnings(), threadpool_limits(1, user_api="openmp"):  # torch's and sklearn's OpenMP contend
            warnings.simplefilter("ignore")
            sk = SpectralCoclustering(n_clusters=k, random_state=s).fit(np.abs(W))
        out.append(score(W, sk.row_labels_, sk.column_labels_))
    return float(np.mean(out))


def ours_score(W, k, **kw):
    return float(np.mean([score(W, *BSGC(k, random_state=s, **kw).fit_predict(np.abs(W))) for s in SEEDS]))


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
def random_layers():
    """Unstructured layers of a few small shapes: Gaussian and two heavy-tailed laws."""
    rng = np.random.default_rng(0)
    layers = {}
    for shape in [(64, 64), (200, 120), (96, 256)]:
        layers[f"gaussian {shape}"] = rng.standard_normal(shape)
        layers[f"student-t(3) {shape}"] = rng.standard_t(3, shape)
        layers[f"laplace {shape}"] = rng.laplace(size=shape)
    return layers


@pytest.mark.parametrize("k", [2, 4])
def test_score_within_0002_of_sklearn_on_random_layers(k):
    for name, W in random_layers().items():
        ours, ref = ours_score(W, k), sklearn_score(W, k)
        assert ours >= ref - 0.002, f"{name}, k={k}: BSGC score={ours:.4f} < sklearn {ref:.4f}"


@pytest.mark.parametrize("sizes", [([30, 12, 20, 6], [10, 25, 8, 17]), ([100, 60, 30, 10, 50], [20, 80, 40, 60, 10])])
def test_score_within_0002_of_sklearn_on_planted_layers(sizes):
    W = planted(*sizes, noise=0.3, seed=2)[0]
    k = len(sizes[0])
    ours, ref = ours_score(W, k), sklearn_score(W, k)
    assert ours >= ref - 0.002, f"k={k}: BSGC score={ours:.4f} < sklearn {ref:.4f}"


@pytest.mark.parametrize("k", [2, 4, 6])
def test_score_at_least_sklearn_on_trained_and_over_clustered_layers(k):
    """A trained layer, and a planted layer with 4 modules clustered into up to 6 clusters."""
    for name, W in {"planted": planted([30, 12, 20, 6], [10, 25, 8, 17])[0],
                    "trained digits fc2": trained_digits_layer()}.items():
        ours, ref = ours_score(W, k), sklearn_score(W, k)
        assert ours >= ref - 0.002, f"{name}, k={k}: BSGC score={ours:.4f} < sklearn {ref:.4f}"


def test_score_at_least_sklearn_on_pretrained(pretrained_dir):
    sd = torch.load(pretrained_dir / "mnist-mlp-784-512-512-10.pt", map_location="cpu", weights_only=True)
    W = sd["fc2.weight"].T.double().numpy()[:256, :256]
    assert ours_score(W, 4) >= sklearn_score(W, 4) - 0.002


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_planted_modules_exactly(seed):
    W, rows, cols = planted([40, 10, 25, 5], [12, 30, 6, 20], seed=seed)
    est = BSGC(4, random_state=seed).fit(np.abs(W))
    assert adjusted_rand_score(rows, est.row_labels_) == 1.0
    assert adjusted_rand_score(cols, est.column_labels_) == 1.0
    # paired: each row cluster's columns are its own module's columns
    assert adjusted_rand_score(np.r_[rows, cols], np.r_[est.row_labels_, est.column_labels_]) == 1.0
    assert E(W, est.row_labels_, est.column_labels_) > 0.95


@pytest.mark.parametrize("pairing", ["joint", "matched"])
def test_recovers_planted_modules_of_a_randomized_svd_sized_layer(pairing):
    """Big enough for the randomized SVD of the implicitly normalised matrix (not the exact small path)."""
    W, rows, cols = planted([150, 60, 90, 20], [40, 200, 30, 130], noise=0.3, seed=4)
    est = BSGC(4, pairing=pairing, random_state=0).fit(np.abs(W).astype(np.float32))
    assert adjusted_rand_score(np.r_[rows, cols], np.r_[est.row_labels_, est.column_labels_]) == 1.0


def test_over_clustering_keeps_every_cluster_bipartite():
    """k = 6 on 4 modules: every cluster gets rows and columns, and E stays above scikit-learn's."""
    W = planted([30, 12, 20, 6], [10, 25, 8, 17])[0]
    for s in SEEDS:
        est = BSGC(6, random_state=s).fit(np.abs(W))
        assert est.rows_.any(1).all() and est.columns_.any(1).all()
        assert E(W, est.row_labels_, est.column_labels_) > 0.95  # scikit-learn: 0.925-0.933


def test_independent_pairing_scores_like_random_but_joint_does_not():
    W, _, _ = planted([20, 20, 20, 20], [20, 20, 20, 20], seed=3)
    joint = E(W, *BSGC(4, random_state=0).fit_predict(np.abs(W)))
    indep = [E(W, *BSGC(4, pairing="independent", random_state=s).fit_predict(np.abs(W))) for s in range(6)]
    assert joint > 0.95
    assert min(indep) < 0.9  # unpaired labels: some runs put modules under the wrong column label


def algorithm_1(A, k, seed=0):
    """The paper's Algorithm 1 written out: normalise, SVD, KMeans on U and (separately) on V."""
    du, dv = A.sum(1), A.sum(0)
    An = A / np.sqrt(du)[:, None] / np.sqrt(dv)[None, :]
    U, _, Vt = np.linalg.svd(An, full_matrices=False)
    rows = KMeans(k, n_init=10, random_state=seed).fit(U[:, :k])
    cols = KMeans(k, n_init=10, random_state=seed).fit(Vt[:k].T)
    return rows, cols, U[:, :k], Vt[:k].T


@pytest.mark.parametrize("noise", [0.05, 0.6])
def test_independent_is_algorithm_1_verbatim(noise):
    W, _, _ = planted([25, 15, 10], [12, 20, 18], noise=noise, seed=5)
    A = np.abs(W)
    ref_rows, ref_cols, U, V = algorithm_1(A, 3)
    est = BSGC(3, pairing="independent", random_state=0).fit(A)
    assert adjusted_rand_score(ref_rows.labels_, est.row_labels_) == 1.0
    assert adjusted_rand_score(ref_cols.labels_, est.column_labels_) == 1.0
    # KMeans on U and V themselves (not the D^-1/2-scaled vectors): same inertia as scikit-learn's
    for Z, labels, ref in [(U, est.row_labels_, ref_rows), (V, est.column_labels_, ref_cols)]:
        inertia = sum(((Z[labels == c] - Z[labels == c].mean(0)) ** 2).sum() for c in range(3))
        assert inertia == pytest.approx(ref.inertia_, rel=1e-5)


def test_batched_kmeans_matches_sklearn_inertia():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 3)) * 4
    Z = (centres[rng.integers(0, 5, 600)] + rng.standard_normal((600, 3))).astype(np.float32)
    labels, inertia = batched_kmeans(torch.from_numpy(Z)[None], 5, torch.ones(10, 3), [torch.Generator().manual_seed(0)])
    assert labels.shape == (1, 10, 600) and inertia.shape == (1, 10)
    labels, inertia = labels[0], inertia[0]
    ref = KMeans(5, n_init=10, random_state=0).fit(Z)
    assert float(inertia.min()) == pytest.approx(ref.inertia_, rel=1e-4)
    best = labels[int(inertia.argmin())].numpy()
    assert adjusted_rand_score(ref.labels_, best) == 1.0
    # the reported inertia is the labels' inertia
    direct = sum(((Z[best == c] - Z[best == c].mean(0)) ** 2).sum() for c in range(5))
    assert float(inertia.min()) == pytest.approx(direct, rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_implicit_normalised_svd_matches_exact(dtype):
    """Randomized SVD of D^-1/2 A D^-1/2 applied implicitly, its iterates kept orthogonal to the trivial
    pair (float32: with the vectors rounded up to 16, the width its products are padded to)."""
    W, _, _ = planted([150, 100, 80], [120, 90, 110], noise=0.5, seed=1)
    A = torch.from_numpy(np.abs(W)).to(dtype)
    du, dv = A.sum(1), A.sum(0)
    U, S, V = _normalized_svd(A[None], du[None], dv[None], du.rsqrt()[None], dv.rsqrt()[None], 4, 7,
                              [torch.Generator().manual_seed(0)])
    U, S, V = U[0].double().numpy(), S[0].double().numpy(), V[0].double().numpy()
    An = normalize_bipartite(A.double())[0].numpy()
    Ue, Se, Vte = np.linalg.svd(An)
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    # the trivial pair and the two planted directions are exact; the 4th lies in the noise bulk,
    # where a randomized range finder is accurate to its convergence tolerance only
    np.testing.assert_allclose(S[:3], Se[:3], rtol=tol)
    np.testing.assert_allclose(S[3], Se[3], rtol=1e-2)
    # same subspaces (signs are arbitrary), and the trivial pair appears once only
    np.testing.assert_allclose(np.abs(np.sum(U[:, :3] * Ue[:, :3], 0)), 1.0, atol=tol)
    np.testing.assert_allclose(np.abs(np.sum(V[:, :3] * Vte[:3].T, 0)), 1.0, atol=tol)
    np.testing.assert_allclose(U.T @ U, np.eye(4), atol=tol)
    np.testing.assert_allclose(V.T @ V, np.eye(4), atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_an_exactly_low_rank_layer_has_no_noise_vectors(dtype):
    """A rank-1 layer (randomized SVD path): singular values beyond the first are rounding noise, and so are
    their vectors; they are returned as zeros (as the exact path does), not as noise that KMeans then clusters.
    Its E is then never below scikit-learn's (with noise vectors it was, by up to 0.14, on 5 of 24 such fits)."""
    g = np.random.default_rng(1004)
    A = np.outer(g.random(500), g.random(400)).astype(dtype)
    fit = BSGC(3, random_state=0).fit(A)
    assert fit.singular_values_[0] == pytest.approx(1.0) and np.all(fit.singular_values_[1:] < 1e-4)
    from graphinterp.clustering.matrix_checks import _degrees
    from graphinterp.clustering.spectral import _Spectrum

    A3, du, dv = _degrees(torch.from_numpy(A)[None])
    sp = _Spectrum.compute(A3, du, dv, 3, None, [np.random.RandomState(0)], ks=[3])
    assert float(sp.U[0, :, 1:].abs().max()) == 0.0 and float(sp.V[0, :, 1:].abs().max()) == 0.0
    assert ours_score(A.astype(np.float64), 3) >= sklearn_score(A.astype(np.float64), 3) - 0.002


def test_deterministic_given_seed():
    A = np.abs(np.random.default_rng(5).standard_normal((300, 200))).astype(np.float32)
    for pairing in ("joint", "matched", "independent"):
        a = BSGC(3, pairing=pairing, random_state=7).fit(A)
        b = BSGC(3, pairing=pairing, random_state=7).fit(A)
        assert np.array_equal(a.row_labels_, b.row_labels_) and np.array_equal(a.column_labels_, b.column_labels_)
        assert np.array_equal(a.singular_values_, b.singular_values_)
    assert a.rows_.shape == (3, 300) and a.columns_.sum() == 200


def test_input_layouts_give_the_same_clustering():
    """numpy, torch, float32/float64 and a transposed (column-major) view are all read without copies."""
    W = np.abs(planted([40, 30, 20], [25, 35, 30], noise=0.4, seed=6)[0])
    ref = BSGC(3, random_state=0).fit(W)
    for A in (torch.from_numpy(W), torch.from_numpy(np.ascontiguousarray(W.T)).T, W.astype(np.float32)):
        est = BSGC(3, random_state=0).fit(A)
        assert adjusted_rand_score(np.r_[ref.row_labels_, ref.column_labels_],
                                   np.r_[est.row_labels_, est.column_labels_]) == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("q", [5, 13, 16, 17])
def test_thin_products_are_the_plain_matmul(C, q, dtype):
    from graphinterp.clustering.spectral import _times, _times_t

    g = torch.Generator().manual_seed(q)
    A = torch.rand(C, 300, 200, generator=g, dtype=dtype)
    X, Y = torch.randn(C, 200, q, generator=g, dtype=dtype), torch.randn(C, 300, q, generator=g, dtype=dtype)
    out = _times(A, X)  # zero columns added for the BLAS kernel, sliced off again
    assert out.shape == (C, 300, q)
    torch.testing.assert_close(out, torch.matmul(A, X), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_times_t(Y, A), torch.matmul(A.transpose(1, 2), Y), rtol=1e-5, atol=1e-5)


def test_fit_k_range_reuses_one_svd_and_clusters_each_k():
    W, rows, cols = planted([40, 10, 25, 5], [12, 30, 6, 20], seed=0)
    A = np.abs(W)
    fits = fit_k_range(A, range(2, 7), random_state=0)
    assert sorted(fits) == [2, 3, 4, 5, 6]
    assert all(f.row_labels_.max() == k - 1 and f.singular_values_.shape == (k,) for k, f in fits.items())
    assert adjusted_rand_score(np.r_[rows, cols], np.r_[fits[4].row_labels_, fits[4].column_labels_]) == 1.0
    again = fit_k_range(A, range(2, 7), random_state=0)
    assert all(np.array_equal(fits[k].column_labels_, again[k].column_labels_) for k in fits)
    with pytest.raises(ClusteringError, match="out of range"):
        fit_k_range(A, [2, 200])


def test_no_warnings_on_degenerate_embeddings():
    """Duplicated rows and columns (fewer distinct points than clusters on one side): nothing on stderr."""
    A = np.abs(np.random.default_rng(0).standard_normal((4, 30)))
    A = np.vstack([A] * 10)  # 40 rows, only 4 distinct
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pairing in ("joint", "matched", "independent"):
            est = BSGC(6, pairing=pairing, random_state=0).fit(A)
            assert (est.row_labels_ >= 0).all() and (est.column_labels_ >= 0).all()


def test_dead_neurons_get_minus_one_and_no_nan():
    W, _, _ = planted([10, 10], [8, 8], seed=1)
    W[3] = 0.0
    W[:, [0, 5]] = 0.0
    for pairing in ("joint", "matched", "independent"):
        est = BSGC(2, pairing=pairing, random_state=0).fit(np.abs(W))
        assert est.row_labels_[3] == -1 and (est.column_labels_[[0, 5]] == -1).all()
        assert (np.delete(est.row_labels_, 3) >= 0).all() and (np.delete(est.column_labels_, [0, 5]) >= 0).all()
        assert not est.rows_[:, 3].any() and not est.columns_[:, 0].any()
    An, du, dv = normalize_bipartite(torch.as_tensor(np.abs(W)))
    assert torch.isfinite(An).all() and du[3] == 0 and dv[0] == 0


def test_normalize_bipartite_into_a_buffer():
    """``out=`` gives the same matrix bit for bit, in the buffer, leaving A alone; a mismatched buffer is refused."""
    A = torch.from_numpy(np.abs(planted([30, 20], [25, 15], seed=2)[0])).float()
    A[4] = 0.0
    before = A.clone()
    An, du, dv = normalize_bipartite(A)
    buf = torch.full_like(A, float("nan"))
    Bn, du2, dv2 = normalize_bipartite(A, out=buf)
    assert Bn is buf and torch.equal(Bn, An) and torch.equal(du, du2) and torch.equal(dv, dv2)
    assert torch.equal(A, before)
    for bad in (torch.empty(A.shape[1], A.shape[0]), torch.empty(A.shape, dtype=torch.float64)):
        with pytest.raises(ValueError, match="out must have A's shape, dtype and device"):
            normalize_bipartite(A, out=bad)


def test_dead_neurons_in_a_randomized_svd_sized_layer():
    W, rows, cols = planted([150, 60, 90, 20], [40, 200, 30, 130], noise=0.3, seed=4)
    W[[0, 7]] = 0.0
    W[:, 11] = 0.0
    est = BSGC(4, random_state=0).fit(np.abs(W))
    assert (est.row_labels_[[0, 7]] == -1).all() and est.column_labels_[11] == -1
    live_r, live_c = np.ones(len(rows), bool), np.ones(len(cols), bool)
    live_r[[0, 7]], live_c[11] = False, False
    assert adjusted_rand_score(np.r_[rows[live_r], cols[live_c]],
                               np.r_[est.row_labels_[live_r], est.column_labels_[live_c]]) == 1.0


def test_k_out_of_range():
    A = np.abs(np.random.default_rng(0).standard_normal((16, 20)))
    with pytest.raises(ClusteringError, match="out of range"):
        BSGC(17).fit(A)


@pytest.mark.parametrize("params, message", [
    (dict(n_clusters=1), "'n_clusters' parameter of BSGC must be an int in the range \\[2, inf\\)"),
    (dict(n_clusters=0), "'n_clusters'.*Got 0"),
    (dict(n_clusters=2.5), "'n_clusters'.*Got 2.5"),
    (dict(n_clusters="4"), "'n_clusters'"),
    (dict(pairing="bogus"), "'pairing' parameter of BSGC must be a str among .*'joint'.*Got 'bogus'"),
    (dict(n_init=0), "'n_init'"),
    (dict(n_components=0), "'n_components'"),
    (dict(n_iter=-1), "'n_iter'"),
    (dict(random_state="seed"), "'random_state'"),
])
def test_invalid_parameters_raise_at_fit_not_at_construction(params, message):
    """scikit-learn's contract: __init__ stores anything; fit (and fit_predict) validate, with one clear line."""
    A = np.abs(np.random.default_rng(0).standard_normal((16, 20)))
    est = BSGC(**params)  # no error here
    assert all(est.get_params()[key] is value for key, value in params.items())
    for method in (est.fit, est.fit_predict):
        with pytest.raises(ClusteringError, match=message) as info:
            method(A)
        assert "\n" not in str(info.value)


def test_fit_k_range_and_fit_batch_validate_their_settings():
    A = np.abs(np.random.default_rng(0).standard_normal((16, 20)))
    with pytest.raises(ClusteringError, match="'pairing'"):
        fit_k_range(A, [2, 3], pairing="bogus")
    with pytest.raises(ClusteringError, match="'n_init'"):
        fit_batch(A[None], 2, [0], n_init=0)
    with pytest.raises(ClusteringError, match="'n_clusters'"):
        fit_batch(A[None], 1, [0])


def test_scikit_learn_estimator_surface():
    """get_params / set_params / clone round trip, repr, and the bicluster accessors."""
    from sklearn.base import clone

    params = dict(n_clusters=3, pairing="matched", n_components=4, n_init=5, n_iter=2, random_state=7)
    est = BSGC(**params)
    assert est.get_params() == params
    assert repr(BSGC(3, pairing="matched", random_state=7)) == "BSGC(n_clusters=3, pairing='matched', random_state=7)"
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    assert est.set_params(n_clusters=2, pairing="joint") is est and est.n_clusters == 2 and est.pairing == "joint"
    assert clone(est).get_params() == {**params, "n_clusters": 2, "pairing": "joint"}
    # a clone fits exactly like the original, and an unfitted clone carries no fitted state
    W, rows, cols = planted([10, 12, 8], [9, 6, 11], seed=0)
    A = np.abs(W)
    fitted = BSGC(3, random_state=0).fit(A)
    again = clone(fitted)
    assert not hasattr(again, "row_labels_")
    again.fit(A)
    assert np.array_equal(again.row_labels_, fitted.row_labels_)
    assert np.array_equal(again.column_labels_, fitted.column_labels_)


def test_get_indices_shape_and_submatrix():
    W, rows, cols = planted([10, 12, 8], [9, 6, 11], seed=0)
    A = np.abs(W)
    A[0] = 0.0  # an isolated row is in no bicluster
    est = BSGC(3, random_state=0).fit(A)
    assert est.rows_.shape == (3, 30) and est.columns_.shape == (3, 26)
    assert not est.rows_[:, 0].any()
    for i in range(3):
        r, c = est.get_indices(i)
        assert np.array_equal(r, np.flatnonzero(est.row_labels_ == i))
        assert np.array_equal(c, np.flatnonzero(est.column_labels_ == i))
        assert est.get_shape(i) == (len(r), len(c))
        assert np.array_equal(est.get_submatrix(i, A), A[np.ix_(r, c)])
    assert sum(len(est.get_indices(i)[0]) for i in range(3)) == 29
    row_ind, col_ind = est.biclusters_
    assert row_ind is est.rows_ and col_ind is est.columns_


def test_k_out_of_range_counts_only_live_nodes():
    A = np.abs(np.random.default_rng(0).standard_normal((16, 20)))
    A[:13] = 0.0  # 3 non-isolated inputs
    with pytest.raises(ClusteringError, match="3 non-isolated inputs"):
        BSGC(4).fit(A)
    assert BSGC(3, random_state=0).fit(A).row_labels_[:13].tolist() == [-1] * 13


def test_bad_matrices():
    with pytest.raises(ClusteringError, match="non-negative"):
        BSGC(2).fit(-np.ones((4, 4)))
    with pytest.raises(InvalidWeightsError, match="NaN"):
        BSGC(2).fit(np.full((4, 4), np.nan))
    inf = np.ones((4, 4))
    inf[1, 2] = np.inf
    with pytest.raises(InvalidWeightsError, match="NaN or inf"):
        BSGC(2).fit(inf)
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
    # any integer label type (scikit-learn's are int32); -1 counts nowhere
    assert cluster_mass(sq, rows.astype(np.int32), np.array([0, -1, 2], dtype=np.int32), 3).tolist() == \
        [[9.0, 0, 0], [0, 0, 4], [0, 0, 0]]


@pytest.mark.parametrize("shape, dtype", [((30, 20), np.float64), ((300, 200), np.float64),  # exact and randomized SVD
                                          ((200, 150), np.float32), ((257, 131), np.float32)])
def test_fit_batch_equals_each_fit(shape, dtype):
    """Batched clustering of copies of one shape: the same labels and E as one BSGC.fit per copy and seed.

    The singular values are compared bit for bit: a batched product rounds differently for one
    matrix and for several, and that once changed a KMeans restart and so a copy's labels."""
    rng = np.random.default_rng(1)
    As = np.abs(rng.standard_normal((4, *shape))).astype(dtype)
    As[2, 3] = 0.0  # a copy with a dead input is clustered in its own group
    seeds = [5, 6, 7, 8]
    for pairing in ("joint", "matched", "independent"):
        fits = fit_batch(As, 3, seeds, pairing=pairing, n_init=4)
        for A, s, f in zip(As, seeds, fits):
            ref = BSGC(3, pairing=pairing, n_init=4, random_state=s).fit(A)
            assert np.array_equal(ref.row_labels_, f.row_labels_) and np.array_equal(ref.column_labels_, f.column_labels_)
            assert np.array_equal(ref.singular_values_, f.singular_values_)
    assert fits[2].row_labels_[3] == -1
    with pytest.raises(ClusteringError, match="one random_state per matrix"):
        fit_batch(As, 3, [1])


@pytest.mark.parametrize("shape, dtype", [((300, 200), np.float64), ((200, 150), np.float32), ((257, 131), np.float32)])
def test_a_copys_spectrum_is_the_same_alone_and_in_a_batch(shape, dtype):
    """Every product of the randomized SVD is computed copy by copy, so a copy's singular vectors are
    bit-identical whether it is alone or one of several (a batched product rounds differently)."""
    from graphinterp.clustering.matrix_checks import _degrees
    from graphinterp.clustering.spectral import _Spectrum
    from graphinterp.common.seeds import check_random_state

    As = torch.from_numpy(np.abs(np.random.default_rng(2).standard_normal((3, *shape))).astype(dtype))
    As, du, dv = _degrees(As)
    batch = _Spectrum.compute(As, du, dv, 5, None, [check_random_state(s) for s in (1, 2, 3)], ks=[5])
    for c, s in enumerate((1, 2, 3)):
        alone = _Spectrum.compute(As[c:c + 1], du[c:c + 1], dv[c:c + 1], 5, None, [check_random_state(s)], ks=[5])
        for x, y in ((alone.U, batch.U), (alone.S, batch.S), (alone.V, batch.V)):
            assert torch.equal(x[0], y[c])


# --- tests added by the mutation pass (benchmarks/mutation.py) ------------------------------------------

def test_match_clusters_keeps_isolated_columns_isolated():
    sq = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    rows = np.array([0, 1, 1])
    cols = np.array([1, 0, 0, -1])  # column 3 is isolated (all zero)
    new = match_clusters(sq, rows, cols, 2)
    assert new.tolist() == [0, 1, 1, -1]
    assert E(sq.sqrt().numpy(), rows, new) == pytest.approx(1.0)


def _blobs(noise=1.0, n_blobs=8, per=30):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(n_blobs, 2, generator=g) * 10
    return centres.repeat_interleave(per, 0) + noise * torch.randn(n_blobs * per, 2, generator=g)


def test_kmeans_plus_plus_draws_by_weight_and_uniformly_where_all_weights_are_zero():
    """k-means++'s D^2 draw: never a point of weight 0, each point in proportion to its weight; a restart
    whose points all sit on its centres (every weight 0) draws uniformly, not the same point each time."""
    from graphinterp.clustering.kmeans_batch import _draw

    weights = np.array([[0.0, 1.0, 3.0, 0.0, 0.0], [0.0] * 5], dtype=np.float32)
    idx = _draw(weights, 4000, torch.Generator().manual_seed(0))
    assert idx.shape == (2, 4000) and set(np.unique(idx[0])) == {1, 2}
    assert np.mean(idx[0] == 2) == pytest.approx(0.75, abs=0.03)
    assert np.bincount(idx[1], minlength=5) == pytest.approx([800] * 5, abs=100)


def test_kmeans_plus_plus_seeding_is_scikit_learns_on_average():
    """Greedy k-means++ (2 + log k local trials, D^2 sampling): the mean inertia of the seeds alone
    (max_iter=0) over 400 restarts is scikit-learn's ``kmeans_plusplus``'s (874.3 on these blobs)."""
    from sklearn.cluster import kmeans_plusplus

    Z = _blobs()
    X = Z.double().numpy()
    ref = np.mean([((X[:, None] - kmeans_plusplus(X, 8, random_state=s)[0][None]) ** 2).sum(-1).min(1).sum()
                   for s in range(400)])
    _, inertia = batched_kmeans(Z[None], 8, torch.ones(400, 2), [torch.Generator().manual_seed(1)], max_iter=0)
    assert float(inertia.mean()) == pytest.approx(ref, rel=0.1)


@pytest.mark.parametrize("copies", [1, 3])
def test_lloyd_stops_after_max_iter_with_the_last_update(copies):
    """max_iter=1 on restarts that are all still moving: the labels are those of the seeds' clusters'
    means (one Lloyd update, the masked coordinate kept at 0), for every copy and restart."""
    Z = torch.stack([_blobs(noise=3.0, per=20) + c for c in range(copies)])  # (C, 160, 2)
    mask = torch.tensor([[1.0, 1.0]] * 3 + [[1.0, 0.0]] * 2)  # restarts on 2 coordinates and on the first only
    gens = lambda: [torch.Generator().manual_seed(10 + c) for c in range(copies)]  # noqa: E731
    seeds, _ = batched_kmeans(Z, 6, mask, gens(), max_iter=0, tol=0.0)
    labels, _ = batched_kmeans(Z, 6, mask, gens(), max_iter=1, tol=0.0)
    for c in range(copies):
        for r, m in enumerate(mask):
            Zm = Z[c].double() * m.double()
            means = torch.stack([Zm[seeds[c, r] == j].mean(0) for j in range(6)])
            expected = ((Zm[:, None] - means[None]) ** 2).sum(-1).argmin(1)
            assert torch.equal(labels[c, r], expected)
    assert not torch.equal(labels, seeds)  # the update moved some points


def test_kmeans_ties_go_to_the_lower_label():
    from graphinterp.clustering.kmeans_batch import _assign

    def labels(points, centres):  # one copy, one restart, d = 1 (the points with their row of ones)
        Z1t = np.array([[points, [1.0] * len(points)]], dtype=np.float32)
        return _assign(Z1t, np.array(centres, dtype=np.float32).reshape(1, 1, -1, 1))[1][0, 0].tolist()

    assert labels([0.0, 1.0, 2.0], [0.0, 2.0]) == [0, 0, 1]  # point 1 is as far from both centres
    assert labels([0.0, 1.0, 2.0], [2.0, 0.0]) == [1, 0, 0]
    assert labels([0.0, 1.0, 2.0], [5.0, 1.0, 1.0]) == [1, 1, 1]  # centres 1 and 2 coincide
    # a point at NaN distance from every centre still gets a label in 0..k-1
    assert labels([0.0, 1.0, float("nan")], [0.0, 1.0]) == [0, 1, 0]


def test_best_restart_is_the_lowest_inertia():
    from graphinterp.clustering.pairing import _best_inertia

    labels = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 0, 0]])
    assert _best_inertia(labels, torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64), 2).tolist() == [0, 1, 1]


def test_best_restart_keeps_the_numbering_of_the_first_restart_with_that_partition():
    from graphinterp.clustering.pairing import _best_inertia

    # restarts 0 and 2 found the same partition, numbered differently; restart 2's inertia is lower by
    # rounding alone: the partition is restart 2's, the numbering restart 0's
    labels = torch.tensor([[1, 1, 0, 2], [0, 1, 1, 2], [2, 2, 1, 0]])
    inertia = torch.tensor([1.0 + 1e-12, 0.5 + 1.0, 1.0], dtype=torch.float64)
    assert _best_inertia(labels, inertia, 3).tolist() == [1, 1, 0, 2]
    inertia = torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)  # a different partition wins outright
    assert _best_inertia(labels, inertia, 3).tolist() == [0, 1, 1, 2]


def _spectrum_of(A: torch.Tensor):
    from graphinterp.clustering.spectral import _Spectrum, _inv_sqrt

    du, dv = A.sum(1), A.sum(0)
    return _Spectrum(A[None], _inv_sqrt(du)[None], _inv_sqrt(dv)[None], (du > 0).numpy(), (dv > 0).numpy(), [None])


@pytest.mark.parametrize("side", ["rows", "columns"])
def test_a_repaired_candidate_is_ranked_by_its_repaired_E(side):
    """Candidate a leaves a cluster without rows (or columns): before its repair it has E 0.67, after it
    0.83; candidate b is full with E 0.75. The kept one must be a, repaired."""
    from graphinterp.clustering.mass import canonical
    from graphinterp.clustering.pairing import _choose

    A = torch.tensor(np.kron(np.eye(3), np.ones((2, 2))) + 0.01)
    a = (np.array([0, 0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 2, 2]))  # row cluster 2 is empty
    b = (np.array([2, 2, 1, 1, 1, 0]), np.array([0, 0, 2, 2, 1, 0]))
    if side == "columns":  # the same on the transposed layer: column cluster 2 is empty
        A, a, b = A.T.contiguous(), a[::-1], b[::-1]
    sq = A ** 2
    assert float(clusterability(sq, *_choose(_spectrum_of(A), 0, b[0][None], b[1][None], 3))) == pytest.approx(0.75, abs=1e-3)
    rows, cols = _choose(_spectrum_of(A), 0, np.stack([a[0], b[0]]), np.stack([a[1], b[1]]), 3)
    assert np.bincount(rows, minlength=3).min() > 0 and np.bincount(cols, minlength=3).min() > 0
    assert float(clusterability(sq, rows, cols)) == pytest.approx(0.833, abs=1e-3)
    repaired = canonical((rows if side == "rows" else cols)[None], 3)[0][0]
    assert repaired.tolist() == [0, 0, 1, 0, 2, 2]  # node 2 moved into the empty cluster


def test_the_kept_candidate_is_the_best_score_not_the_highest_E():
    """Two 3 x 3 blocks a little heavier (1.2) than the rest (1). A giant cluster (5 nodes a side and 1) has
    the higher E (0.732 against 0.590) only because it holds most of the weight whatever the structure:
    its score is 0.036, the blocks' 0.180. The blocks must be kept, whichever candidate comes first."""
    from graphinterp.clustering.pairing import _choose

    blocks = np.array([0, 0, 0, 1, 1, 1])
    A = torch.tensor(np.where(blocks[:, None] == blocks[None, :], 1.2, 1.0))
    giant = np.array([0, 0, 0, 0, 0, 1])
    assert E(A, giant, giant) > E(A, blocks, blocks) + 0.1 and score(A, giant, giant) < score(A, blocks, blocks) - 0.1
    for order in ([giant, blocks], [blocks, giant]):
        rows, cols = _choose(_spectrum_of(A), 0, np.stack(order), np.stack(order), 2)
        assert rows.tolist() == cols.tolist() and sorted(np.bincount(rows).tolist()) == [3, 3]


def _reference_choice(A: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int):
    """The candidate _choose must keep, written out independently: each candidate's column clusters matched to its
    row clusters (Hungarian on the k x k masses), E, the sizes in the matched labels, the score; the first best."""
    from scipy.optimize import linear_sum_assignment

    sq = A.astype(np.float64) ** 2
    best, kept = None, None
    for r, c in zip(rows, cols):
        mass = np.array([[sq[np.ix_(r == a, c == b)].sum() for b in range(k)] for a in range(k)])
        row_ind, col_ind = linear_sum_assignment(-mass)
        relabel = np.empty(k, dtype=int)
        relabel[col_ind] = row_ind
        c2 = relabel[c]
        E = sum(sq[np.ix_(r == a, c2 == a)].sum() for a in range(k)) / sq.sum()
        E_rand = sum((r == a).mean() * (c2 == a).mean() for a in range(k))
        score = (E - E_rand) / (1 - E_rand)
        if best is None or score > best + 1e-12:
            best, kept = score, (r, c2)
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_the_kept_candidate_is_the_first_best_score_of_a_written_out_reference(seed):
    """Random layers and candidates whose column numbering is not the rows' (the matching permutes it) and
    whose clusters have unequal sizes: _choose keeps exactly the candidate the reference keeps."""
    from graphinterp.clustering.pairing import _choose

    rng = np.random.default_rng(seed)
    m, n, k, T = 9, 7, 3, 8
    A = np.abs(rng.standard_t(3, (m, n))) * np.exp(rng.standard_normal(m))[:, None]
    rows = np.stack([rng.permutation(np.r_[np.arange(k), rng.integers(0, k, m - k)]) for _ in range(T)])
    cols = np.stack([rng.permutation(np.r_[np.arange(k), rng.integers(0, k, n - k)]) for _ in range(T)])
    got = _choose(_spectrum_of(torch.from_numpy(A)), 0, rows, cols, k)
    want = _reference_choice(A, rows, cols, k)
    assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()


def test_candidates_of_equal_score_go_to_the_earlier_one():
    """On a uniform layer every balanced 2-way split has the same E and score: the first candidate is kept,
    whichever of two distinct ones comes first."""
    from graphinterp.clustering.pairing import _choose

    A = torch.ones(4, 4, dtype=torch.float64)
    a, b = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    for first, second in ((a, b), (b, a)):
        rows, cols = _choose(_spectrum_of(A), 0, np.stack([first, second]), np.stack([first, second]), 2)
        assert rows.tolist() == first.tolist() and cols.tolist() == first.tolist()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["whole", "blocks", "transposed"])
def test_candidate_masses_are_the_dense_masses(dtype, layout, monkeypatch):
    """Every candidate's k x k mass R^T (A o A) C, from the packed products (k - 1 clusters and the totals)
    and the second product, equals the dense sum over its blocks, whether A o A is kept whole, squared in
    blocks of 7 rows or read through a transposed view; a cluster that no column of a labelling uses
    (label 3 of the first) has a zero column, not the rounding left by the subtraction."""
    from graphinterp.clustering import mass

    rng = np.random.default_rng(0)
    m, n, k = 22, 17, 4  # blocks of 7 rows: the last block holds one row
    A_np = np.abs(rng.standard_t(3, (m, n)))
    cols = np.stack([rng.integers(0, 3, n), rng.integers(0, k, n), rng.integers(0, k, n)])
    rows = np.stack([rng.integers(0, k, m) for _ in range(5)])
    which = np.array([0, 1, 2, 1, 0])
    A = torch.from_numpy(A_np).to(dtype)
    if layout == "blocks":
        monkeypatch.setattr(mass, "_CHUNK_ELEMENTS", 7 * n)
    if layout == "transposed":
        A = torch.from_numpy(np.ascontiguousarray(A_np.T)).to(dtype).T
    square = mass.layer_square(A) if layout == "whole" else None
    assert (square is None) == (layout != "whole")
    packed = mass.packed_products(A, cols, k, "cols", square)
    got = mass.candidate_masses(packed, rows, which, k)
    sq = A_np ** 2
    want = np.array([[[sq[np.ix_(r == a, cols[u] == b)].sum() for b in range(k)] for a in range(k)]
                     for r, u in zip(rows, which)])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * sq.sum())
    assert (got[which == 0][:, :, 3] == 0).all() and (got >= 0).all()
    # the row side (the repair's products): (A o A)^T onehot(rows), unpacked
    Q = mass.squared_products(A, rows[:2], k, "rows", square).numpy()
    np.testing.assert_allclose(Q, np.stack([sq.T @ np.eye(k)[r] for r in rows[:2]]), rtol=tol, atol=tol * sq.sum())


def test_repair_never_empties_the_cluster_it_takes_from():
    from graphinterp.clustering.pairing import _repair

    labels = np.array([0, 0, 1])  # cluster 2 is empty; node 2 (alone in cluster 1) would be the cheapest move
    gain = np.array([[5.0, 0.0, 1.0], [5.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    delta = _repair(labels, gain, 3)
    assert sorted(np.bincount(labels, minlength=3).tolist()) == [1, 1, 1]
    assert labels.tolist() == [0, 2, 1] and delta == pytest.approx(2.0 - 5.0)


def test_one_thread_restores_the_thread_count_even_on_error():
    from graphinterp.clustering.kmeans_batch import one_thread

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with pytest.raises(RuntimeError):
            with one_thread():
                assert torch.get_num_threads() == 1
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_kmeans_copy_result_is_the_same_alone_and_in_a_batch():
    """Converged restarts are frozen: an easy copy's result does not depend on a hard one beside it."""
    g = torch.Generator().manual_seed(3)
    hard = torch.randn(60, 3, generator=g)
    easy = torch.cat([torch.zeros(30, 3), torch.full((30, 3), 5.0)]) + 0.01 * torch.randn(60, 3, generator=g)
    mask = torch.ones(6, 3)
    alone = batched_kmeans(easy[None], 4, mask, [torch.Generator().manual_seed(7)])
    both = batched_kmeans(torch.stack([easy, hard]), 4, mask, [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)])
    assert torch.equal(alone[0][0], both[0][0]) and torch.equal(alone[1][0], both[1][0])
    # and the hard copy's best restart is as good as scikit-learn's best of 10 (Lloyd runs to convergence)
    best_sklearn = min(KMeans(4, n_init=10, random_state=s).fit(hard.double().numpy()).inertia_ for s in range(3))
    assert float(both[1][1].min()) <= 1.02 * best_sklearn


def test_kmeans_point_norms_are_the_same_alone_and_in_a_batch():
    """The norms k-means++ starts from: as a product over the folded copies they rounded differently for
    different batch sizes (5 of 200 such batches at d = 9), and a copy's restarts then numbered their
    clusters differently alone and in a batch (10 x 300000 layers, k = 9, pairing "independent")."""
    from graphinterp.clustering.kmeans_batch import _masked_norms

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        C, N = 2 + trial % 5, 9 + trial % 40
        Z, mask = torch.randn(C, N, 9, generator=g), (torch.rand(10, 9, generator=g) < 0.8).float()
        Z1t = torch.cat([Z, torch.ones(C, N, 1)], 2).transpose(1, 2).contiguous().numpy()
        both = _masked_norms(Z1t, mask.numpy())
        for c in range(C):
            assert np.array_equal(both[c], _masked_norms(Z1t[c:c + 1], mask.numpy())[0])
        torch.testing.assert_close(torch.from_numpy(both), torch.einsum("cnd,rd->crn", Z * Z, mask))


def test_seed_draws_are_the_random_states_draws_in_any_thread():
    """An int seed's draws (without building a RandomState per seed) are RandomState(seed)'s, interleaved
    with other seeds' draws and in several threads at once (one reseeded generator per thread)."""
    from concurrent.futures import ThreadPoolExecutor

    from graphinterp.common.seeds import fast_random_state, SeedDraws

    def draws(seed):
        d, other = fast_random_state(seed), SeedDraws(seed + 1)
        out = []
        for high in (2**31 - 1, 10, 2**31 - 1, 3) * 50:
            out.append(d.randint(high))
            other.randint(high)  # another seed drawn in between, on the same thread's generator
        return out

    def expected(seed):
        rs = np.random.RandomState(seed)
        return [rs.randint(high) for high in (2**31 - 1, 10, 2**31 - 1, 3) * 50]

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(draws, range(16)))
    assert got == [expected(s) for s in range(16)]
    rs = np.random.RandomState(3)
    assert fast_random_state(rs) is rs and isinstance(fast_random_state(np.int64(5)), SeedDraws)
    for bad in (-1, 2**32):  # numpy's error, at once
        with pytest.raises(ValueError, match="Seed must be between 0 and 2\\*\\*32 - 1"):
            fast_random_state(bad)
        with pytest.raises(ValueError, match="Seed must be between 0 and 2\\*\\*32 - 1"):
            np.random.RandomState(bad)


def test_fit_batch_runs_on_the_threads_of_one_copys_fit(monkeypatch):
    """Threads change rounding, so a batch of copies runs on the thread count of one copy's own fit:
    one thread for copies below 2**20 entries, however many copies (a 150 x 700 copy once got other
    labels in a batch of 10, which ran on two threads, than alone, on one)."""
    import graphinterp.clustering.bsgc_batch as bb

    seen = []
    real = bb._fit_groups
    monkeypatch.setattr(bb, "_fit_groups", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    small = torch.rand(12, 300, 300)  # 1.08M entries in all, 90,000 per copy
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit_batch(small, 3, list(range(12)), n_init=2)
        fit_batch(torch.rand(1, 1024, 1024), 3, [0], n_init=1)  # a copy of 2**20 entries keeps the threads
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]


@pytest.mark.parametrize("dtype, scales", [(np.float64, [1e-300, 1e-200, 1e150, 1e300, 1e-312, 1.7e308]),
                                           (np.float32, [1e-40, 1e-25, 1e19, 1e30, 1e37])])
def test_labels_do_not_depend_on_the_scale_of_the_matrix(dtype, scales):
    """The squared masses overflowed or vanished: a clean 3-block matrix times 1e-200 got random labels, and
    float32 entries of 1e19 gave a raw ValueError from scipy. At the ends of float64's range (row sums below
    2^-1022, or above its largest value though every entry is finite) the power of two itself overflowed or
    was computed from an infinite sum: a LinAlgError."""
    rng = np.random.default_rng(0)
    lab = np.repeat(np.arange(3), 10)
    A = ((lab[:, None] == lab[None, :]) + 0.01 * rng.random((30, 30))).astype(dtype)
    base = BSGC(3, random_state=0).fit(A)
    assert adjusted_rand_score(lab, base.row_labels_) == 1.0
    for s in scales:
        scaled = (A.astype(np.float64) * s).astype(dtype)
        est = BSGC(3, random_state=0).fit(scaled)
        assert np.array_equal(est.row_labels_, base.row_labels_) and np.array_equal(est.column_labels_, base.column_labels_)
    batch = fit_batch(np.stack([A, (A.astype(np.float64) * scales[0]).astype(dtype)]), 3, [0, 0])
    assert all(np.array_equal(f.row_labels_, base.row_labels_) for f in batch)


@pytest.mark.parametrize("pairing", ["joint", "matched"])
def test_one_huge_entry_does_not_overflow_the_float32_embedding(pairing):
    """A float64 entry of 1e100 beside entries near 1 left the other rows with degrees near 1e-100 once
    the matrix was rescaled, so their coordinates u_i / sqrt(d_i), about 1e49, became inf in the float32
    KMeans: a RuntimeWarning, NaN centres and arbitrary labels (row 1 split off instead of row 0), where
    1e10 .. 1e80 split off row 0 and column 0 with the entry."""
    A = np.random.default_rng(3).random((20, 12))
    base = BSGC(2, pairing=pairing, random_state=0).fit(np.where(np.arange(20)[:, None] + np.arange(12) == 0, 1e30, A))
    assert base.row_labels_.tolist() == [1] + [0] * 19 and base.column_labels_.tolist() == [1] + [0] * 11
    for big in [1e100, 1e200, 1e300]:
        B = A.copy()
        B[0, 0] = big
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            est = BSGC(2, pairing=pairing, random_state=0).fit(B)
        assert np.array_equal(est.row_labels_, base.row_labels_) and np.array_equal(est.column_labels_, base.column_labels_)
        batch = fit_batch(np.stack([B, A]), 2, [0, 0], pairing=pairing)
        assert np.array_equal(batch[0].row_labels_, est.row_labels_)
        assert np.array_equal(batch[1].row_labels_, BSGC(2, pairing=pairing, random_state=0).fit(A).row_labels_)


def test_inputs_that_are_not_real_dense_arrays_get_one_line_errors():
    import scipy.sparse

    for A, message in ((scipy.sparse.random(10, 10, density=0.5, format="csr", random_state=0), "scipy.sparse"),
                       (np.array([[1, "a"], [2, 3]], dtype=object), "ndarray of dtype object"),
                       (np.ones((4, 4)) * (1 + 1j), "complex"),
                       (torch.eye(4).to_sparse(), "sparse torch tensor")):
        with pytest.raises(ClusteringError, match=message):
            BSGC(2).fit(A)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_kmeans_refuses_points_that_are_not_finite(bad):
    """An inf coordinate made every distance NaN: all labels 0 and NaN inertias, without a word."""
    from graphinterp.common.errors import ClusteringError

    Z = torch.randn(1, 20, 3)
    Z[0, 5, 1] = bad
    with pytest.raises(ClusteringError, match=r"NaN or inf \(1 coordinates of 60\)"):
        batched_kmeans(Z, 3, torch.ones(4, 3), [torch.Generator().manual_seed(0)])
