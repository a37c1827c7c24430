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
from graphinterp.clustering.modularity import cluster_units, modularity, modularity_test
from graphinterp.common.errors import ClusteringError, DataError
from graphinterp.interpret.association import association_matrices
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


def test_planted_modules_are_recovered_exactly_and_dead_units_left_out():
    rng = np.random.RandomState(1)
    truth = np.repeat([0, 1, 2], 7)
    A = np.where(truth[:, None] == truth[None, :], 1.0, 0.05) * (0.5 + rng.rand(21, 21))
    A = (A + A.T) / 2
    A = np.pad(A, ((0, 2), (0, 2)))  # two dead units
    labels = cluster_units(A, 3, random_state=0)
    assert (labels[-2:] == -1).all()
    from sklearn.metrics import adjusted_rand_score
    assert adjusted_rand_score(truth, labels[:-2]) == 1.0
    res = modularity_test(A, 3, n_shuffles=19, random_state=0)
    assert res.modularity.p_value == pytest.approx(1 / 20) and res.modularity.z > 5 and res.n_left_out == 2
    with pytest.raises(ClusteringError, match="k=22 is out of range"):
        cluster_units(A, 22)


def test_no_structure_is_not_significant():
    rng = np.random.RandomState(2)
    A = rng.rand(30, 30)
    A = (A + A.T) / 2
    res = modularity_test(A, 3, n_shuffles=30, random_state=0)
    assert res.modularity.observed > 0  # spectral clustering finds some Q on anything ...
    assert abs(res.modularity.z) < 3 and res.modularity.p_value > 0.05  # ... which the null explains


@pytest.mark.parametrize("bad,match", [(np.ones((2, 3)), "square"), (-np.ones((3, 3)), "non-negative"),
                                       (np.triu(np.ones((3, 3))), "symmetric"), (np.full((3, 3), np.nan), "NaN")])
def test_bad_association_matrices_are_refused(bad, match):
    with pytest.raises(ClusteringError, match=match):
        modularity_test(bad, 2, n_shuffles=0)


def test_mlp_associations_match_independent_recomputations():
    net, x = _mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    A = association_matrices(net, x, kinds=["correlation", "covariance", "upstream", "downstream"], batch_size=50)
    with torch.no_grad():  # hidden levels as the next layer reads them
        h1 = torch.tanh(net[0](x))
        h2 = torch.relu(net[2](h1))
    for name, h in (("0", h1), ("2", h2)):
        cov = torch.from_numpy(np.cov(h.numpy().T, bias=True))
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


def test_channels_are_units_with_positions_as_samples():
    gen = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten(), nn.Linear(3 * 2 * 2, 2)).double()
    x = torch.randn(30, 2, 6, 6, generator=gen, dtype=torch.float64)
    A = association_matrices(net, x, kinds=["correlation", "downstream", "upstream"], levels=["0", "2"])
    with torch.no_grad():
        h = torch.relu(net[0](x))  # (30, 4, 4, 4): every position a sample
    samples = h.permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    assert torch.allclose(A["correlation"]["0"], _offdiag_abs(torch.from_numpy(np.corrcoef(samples.T))), atol=1e-10)
    # level "2" is read by the Linear after the Flatten: 3 channels of 4 features each
    assert A["downstream"]["2"].shape == (3, 3)
    W = net[4].weight.detach().reshape(2, 3, 4).sum(2)  # a channel's shift moves the logits by its features' sum
    assert torch.allclose(A["downstream"]["2"], _offdiag_abs(W.T @ W), atol=1e-10)
    f = lambda v: torch.relu(net[0](v)).sum((2, 3))  # noqa: E731 (channel activation summed over positions)
    J = torch.stack([torch.autograd.functional.jacobian(f, xi[None])[0].reshape(4, -1) for xi in x])
    assert torch.allclose(A["upstream"]["0"], _offdiag_abs(torch.einsum("nid,njd->ij", J, J) / len(x)), atol=1e-9)


def test_association_errors_are_clear():
    net, x = _mlp()
    with pytest.raises(DataError, match="unknown association kind"):
        association_matrices(net, x, kinds=["hessian"])
    with pytest.raises(DataError, match="not in the graph"):
        association_matrices(net, x, levels=["nope"])
    with pytest.raises(DataError, match="at least 2 examples"):
        association_matrices(net, x[:1])


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
    res = functional_modules(net, x, 3, kinds=["upstream"], levels=["2"], clustering=clustering, n_shuffles=9)
    lv = res.levels["2"]
    assert lv.agreement["upstream~weights"] == pytest.approx(1.0)
    assert lv.clusters["upstream"].modularity.p_value == pytest.approx(0.1)
    assert lv.weight_modularity["upstream"] == pytest.approx(lv.clusters["upstream"].modularity.observed)
    assert json.loads(json.dumps(res.to_dict()))["levels"][0]["level"] == "2"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return digits_checkpoint(tmp_path_factory.mktemp("assoc") / "m.pt", clustering=True)


def test_cli_associate_json_and_table(ckpt):
    res = invoke("associate", ckpt, "--kinds", "correlation,downstream", "--shuffles", 3, "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["kinds"] == ["correlation", "downstream"] and [lv["level"] for lv in out["levels"]] == ["fc1", "fc2"]
    assert out["weight_clusters"].startswith("stored in the checkpoint (k=2")
    lv = out["levels"][0]
    assert set(lv["agreement"]) == {"correlation~downstream", "correlation~weights", "downstream~weights"}
    assert len(lv["clusters"]["correlation"]["modularity"]["null"]) == 3
    res = invoke("associate", ckpt, "--kinds", "upstream", "--shuffles", 0, "--k", 3, "--layers", "fc1", "-q")
    assert res.exit_code == 0, res.stderr
    assert "weight clusters: network-wide BSGC now (k=3, layers fc1)" in res.stdout
    assert "AMI with weights" in res.stdout


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
    res = invoke("associate", ckpt, "--kinds", "correlation", "--shuffles", 0, "--plot", tmp_path / "a.svg", "-q")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.rstrip().endswith(f"wrote {tmp_path / 'a.svg'}") and (tmp_path / "a.svg").stat().st_size > 0
    assert ".png" in one_error(invoke("associate", ckpt, "--plot", tmp_path / "a.txt"), 2)
