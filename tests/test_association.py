"""Functional modules: association matrices against independent recomputations, modularity against networkx,
planted modules recovered, the shuffle null, and the `associate` command."""
from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

from _cli_helpers import invoke, one_error
from _interp_helpers import digits_checkpoint
from graphinterp.clustering.labels import Clustering
from graphinterp.clustering.modularity import association_graph, cluster_units, modularity, modularity_test
from graphinterp.common.errors import ClusteringError, DataError
from graphinterp.interpret.association import association_matrices, association_moments
from graphinterp.interpret.functional_modules import functional_modules

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(seed=0):
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return net, torch.randn(120, 5, generator=gen, dtype=torch.float64)


def _offdiag_abs(M):
    M = M.abs().clone()
    M.fill_diagonal_(0)
    return M


def test_modularity_equals_networkx():
    rng = np.random.RandomState(0)
    A = rng.rand(12, 12)
    A = (A + A.T) / 2
    np.fill_diagonal(A, 0)
    labels = rng.randint(0, 3, 12)
    G = nx.from_numpy_array(A)
    parts = [set(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    assert modularity(A, labels) == pytest.approx(nx.algorithms.community.modularity(G, parts, weight="weight"), abs=1e-12)


def _planted(rng, n_modules=3, size=7, noise=0.8, n=3000, scales=None):
    truth = np.repeat(np.arange(n_modules), size)
    H = rng.randn(n, n_modules)[:, truth] + noise * rng.randn(n, truth.size)
    if scales is not None:
        H = H * scales
    return np.cov(H.T), truth


def test_planted_modules_are_recovered_exactly_and_dead_units_left_out():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.RandomState(1)
    C, truth = _planted(rng)
    C = np.pad(C, ((0, 2), (0, 2)))  # two dead units: no variance
    for null in ("rotation", "shuffle"):
        res = modularity_test(C, 3, normalize=True, null=null, n_null=19, random_state=0)
        assert (res.labels[-2:] == -1).all() and res.n_left_out == 2
        assert adjusted_rand_score(truth, res.labels[:-2]) == 1.0
        assert res.modularity.p_value == pytest.approx(1 / 20) and res.modularity.z > 5
    with pytest.raises(ClusteringError, match="k=21 is out of range for 21 units with any association"):
        cluster_units(association_graph(C, normalize=True), 21)


def test_rotation_null_calls_module_free_structure_insignificant():
    rng = np.random.RandomState(0)
    W = rng.randn(40, 3)  # a rank-3 factor model: strong shared variation, no modules of units
    C = np.cov((rng.randn(5000, 3) @ W.T + 0.5 * rng.randn(5000, 40)).T)
    rot = modularity_test(C, 3, normalize=True, null="rotation", n_null=30, random_state=0)
    shuf = modularity_test(C, 3, normalize=True, null="shuffle", n_null=30, random_state=0)
    assert abs(rot.modularity.z) < 3 and rot.modularity.p_value > 0.05
    assert shuf.modularity.z > 5  # the shuffle null destroys the low-rank structure, so it calls it modular
    readout = rng.randn(10, 40)  # a downstream Gram W^T W: no modules either
    res = modularity_test(readout.T @ readout, 3, null="rotation", n_null=30, random_state=0)
    assert abs(res.modularity.z) < 3
    scales = np.exp(rng.randn(21))  # planted modules whose units differ widely in scale (covariance, not corr)
    C, _ = _planted(rng, scales=scales)
    assert modularity_test(C, 3, null="rotation", n_null=19, random_state=0).modularity.p_value == pytest.approx(0.05)


def test_bad_association_matrices_are_refused():
    for bad, match in ((np.ones((2, 3)), "square"), (np.triu(np.ones((3, 3))), "symmetric"),
                       (np.full((3, 3), np.nan), "NaN")):
        with pytest.raises(ClusteringError, match=match):
            modularity_test(bad, 2, n_null=0)
    with pytest.raises(ClusteringError, match="non-negative"):
        cluster_units(-np.ones((4, 4)), 2)
    with pytest.raises(ClusteringError, match="only 0 of 4 units have any association"):
        modularity_test(np.zeros((4, 4)), 2)
    with pytest.raises(ClusteringError, match="unknown null"):
        modularity_test(np.eye(4), 2, null="permute")
    res = modularity_test(_planted(np.random.RandomState(0))[0], 3, normalize=True, n_null=0)
    assert np.isnan(res.modularity.p_value) and res.to_dict()["modularity"]["p_value"] is None


def test_mlp_associations_match_independent_recomputations():
    net, x = _mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    A = association_matrices(net, x, kinds=["correlation", "covariance", "upstream", "downstream"], batch_size=50)
    with torch.no_grad():  # hidden levels as the next layer reads them
        h1 = torch.tanh(net[0](x))
        h2 = torch.relu(net[2](h1))
    M = association_moments(net, x, kinds=["covariance"], batch_size=50)["covariance"]
    for name, h in (("0", h1), ("2", h2)):
        cov = torch.from_numpy(np.cov(h.numpy().T, bias=True))
        assert torch.allclose(M[name], cov, atol=1e-10)  # signed, with its diagonal
        assert torch.allclose(A["covariance"][name], _offdiag_abs(cov), atol=1e-10)
        corr = torch.from_numpy(np.nan_to_num(np.corrcoef(h.numpy().T)))
        assert torch.allclose(A["correlation"][name], _offdiag_abs(corr), atol=1e-10)
    # upstream: per-example Jacobians of the level with respect to the input
    f1 = lambda v: torch.tanh(net[0](v))  # noqa: E731
    J = torch.stack([torch.autograd.functional.jacobian(f1, xi) for xi in x])  # (N, 7, 5)
    assert torch.allclose(A["upstream"]["0"], _offdiag_abs(torch.einsum("nid,njd->ij", J, J) / len(x)), atol=1e-10)
    chunked = association_matrices(net, x, kinds=["upstream"], chunk=3)["upstream"]  # 7 units: chunks of 3, 3, 1
    assert all(torch.allclose(chunked[k], A["upstream"][k], atol=1e-12) for k in ("0", "2"))
    # downstream: per-example Jacobians of the logits with respect to the level
    g2 = lambda v: net[4](v)  # noqa: E731 (the last layer is linear: J = W for every example)
    W = net[4].weight.detach()
    assert torch.allclose(A["downstream"]["2"], _offdiag_abs(W.T @ W), atol=1e-10)
    g1 = lambda v: net[4](torch.relu(net[2](v)))  # noqa: E731
    Jd = torch.stack([torch.autograd.functional.jacobian(g1, hi) for hi in h1])  # (N, 3, 7)
    assert torch.allclose(A["downstream"]["0"], _offdiag_abs(torch.einsum("nci,ncj->ij", Jd, Jd) / len(x)), atol=1e-10)
    assert g2 is not None and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in net.parameters())
    assert not net[0]._forward_pre_hooks and not net[2]._forward_pre_hooks and not net[4]._forward_pre_hooks


def test_channels_pair_their_positions_position_by_position():
    gen = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten(), nn.Linear(3 * 2 * 2, 2)).double()
    x = torch.randn(30, 2, 6, 6, generator=gen, dtype=torch.float64)
    M = association_moments(net, x, kinds=["covariance", "downstream", "upstream"], levels=["0", "2"], batch_size=7)
    with torch.no_grad():
        h = torch.relu(net[0](x)).reshape(30, 4, 16).numpy()  # 16 positions
    cov = np.mean([np.cov(h[:, :, p].T, bias=True) for p in range(16)], axis=0)  # per position, then averaged
    assert torch.allclose(M["covariance"]["0"], torch.from_numpy(cov), atol=1e-10)
    # level "2" is read by the Linear after the Flatten: 3 channels of 4 features (positions) each
    W = net[4].weight.detach().reshape(2, 3, 4)
    assert torch.allclose(M["downstream"]["2"], torch.einsum("cip,cjp->ij", W, W) / 4, atol=1e-10)
    f = lambda v: torch.relu(net[0](v)).reshape(4, 16)  # noqa: E731 (each channel at each position)
    J = torch.stack([torch.autograd.functional.jacobian(f, xi[None]).reshape(4, 16, -1) for xi in x])  # (N, 4, 16, d)
    assert torch.allclose(M["upstream"]["0"], torch.einsum("nipd,njpd->ij", J, J) / (30 * 16), atol=1e-9)


def test_gradients_work_under_no_grad_and_inference_mode_is_refused():
    net, x = _mlp()
    A = association_matrices(net, x, kinds=["upstream", "downstream"])
    with torch.no_grad():
        B = association_matrices(net, x, kinds=["upstream", "downstream"])
    assert all(torch.equal(A[k][n], B[k][n]) for k in A for n in A[k])
    with torch.inference_mode(), pytest.raises(DataError, match="outside torch.inference_mode"):
        association_matrices(net, x, kinds=["downstream"])
    for p in net.parameters():
        p.requires_grad_(False)  # frozen weights: the same matrices
    C = association_matrices(net, x, kinds=["upstream", "downstream"])
    assert all(torch.allclose(A[k][n], C[k][n]) for k in A for n in A[k])


def test_constant_units_are_left_out_and_nonfinite_inputs_named():
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        net[0].weight[1] = 0
        net[0].bias[1] = 0.1  # unit 1: constant 0.1 (its variance is rounding, about 1e-17)
    x = torch.randn(333, 3)
    for kind in ("covariance", "correlation"):
        A = association_matrices(net, x, kinds=[kind], batch_size=7)[kind]["0"]
        assert float(A[1].abs().max()) == 0.0 and float(A.sum()) > 0
    bad = x.clone()
    bad[5, 0] = float("inf")
    with pytest.raises(DataError, match="level '0': the activations are not finite"):
        association_matrices(net, bad)


def test_association_errors_are_clear():
    net, x = _mlp()
    with pytest.raises(DataError, match="unknown association kind"):
        association_matrices(net, x, kinds=["hessian"])
    with pytest.raises(DataError, match="not in the graph"):
        association_matrices(net, x, levels=["nope"])
    with pytest.raises(DataError, match="at least 2 examples"):
        association_matrices(net, x[:1])


def test_each_level_and_kind_draws_its_own_seed():
    net, x = _mlp()
    one = functional_modules(net, x, 2, kinds=["upstream"], n_null=5)
    two = functional_modules(net, x, 2, kinds=["correlation", "upstream"], n_null=5)
    alone = functional_modules(net, x, 2, kinds=["upstream"], levels=["2"], n_null=5)
    for level in one.levels:
        a, b = one.levels[level].clusters["upstream"], two.levels[level].clusters["upstream"]
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.modularity.null, b.modularity.null)
    assert np.array_equal(alone.levels["2"].clusters["upstream"].modularity.null,
                          one.levels["2"].clusters["upstream"].modularity.null)


def test_only_hidden_levels_and_integer_k():
    net, x = _mlp()
    with pytest.raises(ClusteringError, match="are the model's input or output"):
        functional_modules(net, x, 2, levels=["4"], n_null=0)
    with pytest.raises(ClusteringError, match="k must be an integer"):
        functional_modules(net, x, 2.0, n_null=0)


def test_half_precision_upstream_is_summed_wide():
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 12)
    x = torch.randn(512, 20, generator=gen)
    ref = association_moments(net.double(), x.double(), kinds=["upstream"])["upstream"]["0"]
    half = association_moments(net.half(), x, kinds=["upstream"])["upstream"]["0"]  # float32 data, cast
    assert bool(torch.isfinite(half).all()) and float(ref.max()) * len(x) > 65504  # one batch's sum overflows float16
    assert torch.allclose(half, ref, rtol=2e-2, atol=1e-2 * float(ref.abs().max()))


def test_reinitialised_copy_is_a_fresh_model_and_leaves_the_rng():
    from graphinterp.interpret.functional_modules import reinitialised

    net, _ = _mlp()
    state = torch.get_rng_state()
    a, b = reinitialised(net, 3), reinitialised(net, 3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # seeded
    assert not torch.equal(a[0].weight, net[0].weight) and a[0].weight.dtype == net[0].weight.dtype


def test_block_modular_network_upstream_modules_are_its_weight_modules():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(9, 12, bias=False), nn.ReLU(), nn.Linear(12, 12, bias=False), nn.ReLU(),
                        nn.Linear(12, 2, bias=False))
    blocks_x, blocks_in, blocks_out = np.repeat([0, 1, 2], 3), np.repeat([0, 1, 2], 4), np.repeat([0, 1, 2], 4)
    with torch.no_grad():  # three independent, excitatory blocks from the input on
        net[0].weight.mul_(torch.from_numpy((blocks_in[:, None] == blocks_x[None, :]).astype(np.float32))).abs_()
        net[2].weight.mul_(torch.from_numpy((blocks_out[:, None] == blocks_in[None, :]).astype(np.float32))).abs_()
    x = torch.rand(400, 9)
    clustering = Clustering(3, {"2": blocks_in}, {"2": blocks_out})
    res = functional_modules(net, x, 3, kinds=["upstream"], levels=["2"], clustering=clustering, n_null=9)
    lv = res.levels["2"]
    assert lv.agreement["upstream~weights"] == pytest.approx(1.0)
    assert lv.clusters["upstream"].modularity.p_value == pytest.approx(0.1)
    assert lv.weight_modularity["upstream"] == pytest.approx(lv.clusters["upstream"].modularity.observed)
    assert json.loads(json.dumps(res.to_dict()))["levels"][0]["level"] == "2"


def test_weight_labels_of_a_level_are_its_layers_own_and_must_agree():
    net, x = _mlp()  # levels "0" (7 units) and "2" (6 units)
    rows2, cols2 = np.array([0, 1, 0, 1, 0, 1, 0]), np.array([1, 1, 0, 0, 1, 0])
    res = functional_modules(net, x, 2, kinds=["correlation"], n_null=0, clustering=Clustering(2, {"2": rows2}, {"2": cols2}))
    assert np.array_equal(res.levels["0"].weight_labels, rows2) and np.array_equal(res.levels["2"].weight_labels, cols2)
    per_layer = Clustering(2, {"0": np.array([0, 1, 0, 1, 0]), "2": rows2}, {"0": 1 - rows2, "2": cols2})
    with pytest.raises(ClusteringError, match="label the level they share"):
        functional_modules(net, x, 2, kinds=["correlation"], n_null=0, clustering=per_layer)
    with pytest.raises(ClusteringError, match="k=6 is out of range for level"):
        functional_modules(net, x, 6, kinds=["correlation"], n_null=0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return digits_checkpoint(tmp_path_factory.mktemp("assoc") / "m.pt", clustering=True)


def test_cli_associate_json_and_table(ckpt):
    res = invoke("associate", ckpt, "--kinds", "correlation,downstream", "--null-copies", 3, "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["kinds"] == ["correlation", "downstream"] and [lv["level"] for lv in out["levels"]] == ["fc1", "fc2"]
    assert out["weight_clusters"].startswith("stored in the checkpoint (k=2")
    lv = out["levels"][0]
    assert set(lv["agreement"]) == {"correlation~downstream", "correlation~weights", "downstream~weights"}
    assert len(lv["clusters"]["correlation"]["modularity"]["null"]) == 3 and out["null"] == "rotation"
    assert any("3 null copies: z is rough" in n for n in out["notes"])
    # two levels x two kinds, each with its own p: uncorrected, and said so (3 copies: the smallest p is 0.25)
    assert ("the 4 p-values (Q of each level and kind) are each uncorrected for the others: a Bonferroni threshold of "
            "0.05/4 = 0.0125 needs at least 79 null copies (this run: 3)") in out["notes"]
    res = invoke("associate", ckpt, "--kinds", "upstream", "--null-copies", 0, "--k", 3, "--layers", "fc1", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert not any("uncorrected" in n for n in out["notes"])  # no test, no p-values
    assert out["weight_clusters"] == "network-wide BSGC now (k=3, layers fc1)"
    assert out["levels"][0]["clusters"]["upstream"]["modularity"]["p_value"] is None  # no test, no p
    res = invoke("associate", ckpt, "--kinds", "upstream", "--null", "shuffle", "--null-copies", 10, "-q")
    assert res.exit_code == 0, res.stderr
    assert "copies of the matrix with its entries shuffled" in res.stdout and "AMI with weights" in res.stdout
    res = invoke("associate", ckpt, "--kinds", "correlation", "--null-copies", 5, "--reinit", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    ref = out["reinitialised"]["levels"][0]["clusters"]["correlation"]
    assert ref["modularity"]["observed"] != out["levels"][0]["clusters"]["correlation"]["modularity"]["observed"]
    res = invoke("associate", ckpt, "--kinds", "correlation", "--null-copies", 5, "--reinit", "-q")
    assert "Q reinit" in res.stdout and "reinit: the same architecture re-initialised" in res.stdout


def test_cli_associate_measures_a_seeded_subset_of_every_class_not_the_first_n(ckpt, monkeypatch):
    """Measured on the first --max-examples examples, a CIFAR-10 image folder (read class by class) gave the default
    2,000 of its 10,000 test images all from airplane and automobile. Found by counting the labels of the first 2,000
    of the real JPEG test set; here the digits test set sorted by class stands in for it."""
    import graphinterp
    from graphinterp.data.datasets import LabeledTensors, load_dataset

    test = load_dataset("digits", split="test")
    order = torch.argsort(test.y, stable=True)
    by_class = LabeledTensors(test.x[order], test.y[order], test.classes, "digits")
    monkeypatch.setattr(graphinterp, "load_dataset", lambda *args, **kwargs: by_class)
    measured, real = [], graphinterp.functional_modules

    def recording(net, data, k, **kwargs):
        measured.append(data.y[:kwargs["max_examples"]])
        return real(net, data, k, **kwargs)

    monkeypatch.setattr(graphinterp, "functional_modules", recording)
    res = invoke("associate", ckpt, "--kinds", "correlation", "--null-copies", 0, "--max-examples", 100, "--json")
    assert res.exit_code == 0, res.stderr
    assert len(measured[0]) == 100 and sorted(set(measured[0].tolist())) == list(range(10))
    assert "associations measured on a seeded random subset of 100 of 360 examples (--max-examples)" in \
        json.loads(res.stdout)["notes"]


def test_cli_associate_refuses_bad_input(ckpt):
    assert "unknown kind(s) hessian" in one_error(invoke("associate", ckpt, "--kinds", "upstream,hessian"), 2)
    assert "no layer named 'fc9'" in one_error(invoke("associate", ckpt, "--layers", "fc9"), 2)


def test_association_figure_orders_units_by_cluster(tmp_path):
    from graphinterp.reports.viz_assoc import plot_association

    A = np.kron(np.eye(2), np.ones((3, 3)))
    perm = np.array([0, 3, 1, 4, 2, 5])  # interleaved: the blocks only show once ordered
    labels = np.array([0, 1, 0, 1, 0, 1])
    fig = plot_association({"fc1": {"upstream": A[np.ix_(perm, perm)], "downstream": A[np.ix_(perm, perm)]}},
                           {"fc1": labels}, out=tmp_path / "a.png")
    shown = fig.axes[0].images[0].get_array()
    assert np.array_equal(np.asarray(shown), A) and (tmp_path / "a.png").stat().st_size > 0
    with pytest.raises(ValueError, match="has shape"):
        plot_association({"fc1": {"upstream": A}}, {"fc1": labels[:4]})
    with pytest.raises(ValueError, match="same association kinds"):
        plot_association({"a": {"upstream": A}, "b": {"downstream": A}}, {"a": labels, "b": labels})


def test_cli_associate_plot(ckpt, tmp_path):
    res = invoke("associate", ckpt, "--kinds", "correlation", "--null-copies", 0, "--plot", tmp_path / "a.svg", "-q")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.rstrip().endswith(f"wrote {tmp_path / 'a.svg'}") and (tmp_path / "a.svg").stat().st_size > 0
    assert ".png" in one_error(invoke("associate", ckpt, "--plot", tmp_path / "a.txt"), 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_model_in_another_precision_is_evaluated_in_float32_with_a_note(tmp_path, dtype):
    path = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10)).to(dtype), path)
    name = str(dtype).replace("torch.", "")
    res = invoke("circuits", path, "--trust-pickle", "--labels", "0", "--max-evals", 5, "-q")
    assert res.exit_code == 0, res.stderr  # was a RuntimeError traceback (mat1 and mat2 dtypes)
    assert f"note: {path} holds {name} weights; it is evaluated in float32" in res.stdout
    res = invoke("associate", path, "--trust-pickle", "--null-copies", 0, "--k", 2, "-q")
    assert res.exit_code == 0, res.stderr
    assert "note: no weight clusters to compare with: the model has no Linear layer between two hidden" in res.stdout
    assert "weight clusters: none" in res.stdout
    res = invoke("associate", path, "--trust-pickle", "--layers", "1", "--k", 2, "--null-copies", 0, "-q")
    assert res.exit_code == 0 and "weight clusters: network-wide BSGC now (k=2, layers 1)" in res.stdout


def test_cli_associate_says_when_k_differs_from_the_stored_clustering_and_p_is_at_its_floor(ckpt):
    res = invoke("associate", ckpt, "--kinds", "correlation", "--k", 3, "--null-copies", 4, "-q")
    assert res.exit_code == 0, res.stderr
    assert "the stored weight clusters have k=2 and the association clusters k=3" in res.stdout
    assert "z = (Q - mean) / sd, p = (r + 1) / (n + 1) with r of the n copies at or above Q" in res.stdout
    from graphinterp.cli.associate import _p
    from graphinterp.clustering.shuffle_results import NullComparison

    assert _p(NullComparison.from_samples(0.9, np.array([0.1, 0.2, 0.3, 0.4]))) == "<=0.200"  # at the floor 1/5
    assert _p(NullComparison.from_samples(0.25, np.array([0.1, 0.2, 0.3, 0.4]))) == "0.600"
    assert _p(NullComparison.from_samples(0.25, np.array([]))) == "-"


def test_a_level_or_kind_named_twice_is_refused_and_a_string_of_kinds_is_read_as_a_list():
    """A level hooked twice summed its statistics twice: upstream/downstream doubled, covariances with negative
    variances, and then a misleading 'no unit has any association'."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(40, 4)
    with pytest.raises(DataError, match="level '0' is named twice"):
        association_moments(net, x, kinds=["covariance"], levels=["0", "0"])
    with pytest.raises(DataError, match="association kind 'upstream' is named twice"):
        functional_modules(net, x, 2, kinds=["upstream", "upstream"], n_null=0)
    both = association_moments(net, x, kinds="covariance, upstream", levels=["0"])
    assert sorted(both) == ["covariance", "upstream"]


def test_modularity_refuses_a_signed_graph():
    signed = np.kron(np.eye(2), np.full((3, 3), 0.8)) - 0.3
    with pytest.raises(ClusteringError, match="non-negative"):
        modularity(signed, np.repeat([0, 1], 3))
    assert -0.5 <= modularity(np.abs(signed), np.repeat([0, 1], 3)) <= 0.5


def test_modularity_leaves_unlabelled_units_out():
    """Two pairs joined inside (Q 0.5) and a fifth unit, label -1, joined to all four: still 0.5 (counting it as a
    cluster of its own changed Q)."""
    from graphinterp.clustering.modularity import modularity

    A = np.kron(np.eye(2), np.ones((2, 2))) - np.eye(4)
    A = np.pad(A, ((0, 1), (0, 1)))
    A[4, :4] = A[:4, 4] = 1.0
    assert modularity(A, np.array([0, 0, 1, 1, -1])) == pytest.approx(0.5)


def test_the_shuffle_null_is_a_symmetric_permutation_of_the_weights():
    from graphinterp.clustering.modularity import _shuffled

    rng = np.random.RandomState(0)
    A = rng.rand(6, 6)
    A = A + A.T
    np.fill_diagonal(A, 0)
    S = _shuffled(A, rng)
    upper = np.triu_indices(6, 1)
    assert np.allclose(S, S.T) and np.allclose(np.sort(S[upper]), np.sort(A[upper]))
