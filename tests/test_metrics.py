"""Clusterability E against closed forms; random-partition expectation; gradients."""
import numpy as np
import pytest
import torch
from torch import nn

from graphinterp.clustering.cluster import Clustering, cluster_layers
from graphinterp.graph.layered import LayeredGraph
from graphinterp.clustering.metrics import (
    clusterability, clusterability_report, normalized_score, random_partition_expectation, within_mask, within_share,
)


def test_two_block_closed_form():
    # rows {0,1} and columns {0} form cluster 0; rows {2} and columns {1,2} cluster 1
    W = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0], [0.0, 2.0, 4.0]], dtype=torch.float64)
    rows, cols = [0, 0, 1], [0, 1, 1]
    inside = 1 + 9 + 4 + 16
    total = 1 + 4 + 9 + 1 + 4 + 16
    assert float(clusterability(W ** 2, rows, cols)) == pytest.approx(inside / total)


def test_isolated_label_is_in_no_cluster():
    mask = within_mask([0, -1], [0, -1])
    assert mask.tolist() == [[True, False], [False, False]]


def test_random_expectation_matches_monte_carlo():
    rng = np.random.default_rng(0)
    W2 = torch.tensor(rng.standard_normal((30, 20)) ** 2)
    rows = rng.integers(0, 3, 30)
    cols = rng.integers(0, 3, 20)
    rows[0] = -1  # an isolated input: no weight, no cluster; a random partition relabels the others
    W2[0] = 0
    expected = random_partition_expectation(rows, cols, 3)
    live = rows >= 0

    def relabel(r):
        out = r.copy()
        out[live] = rng.permutation(r[live])
        return out

    samples = [float(clusterability(W2, relabel(rows), rng.permutation(cols))) for _ in range(4000)]
    assert np.mean(samples) == pytest.approx(expected, abs=0.005)
    counts_r, counts_c = np.bincount(rows[live], minlength=3), np.bincount(cols, minlength=3)
    assert expected == pytest.approx(float(counts_r @ counts_c) / (29 * 20))


def test_dead_inputs_change_neither_the_baseline_nor_the_score():
    """Counted in m, isolated inputs made a random partition drop weighted nodes from every cluster: 100 dead
    inputs of 200 halved E_random (0.279 -> 0.148) and doubled the score of a layer without structure."""
    from graphinterp.clustering.bsgc import BSGC

    rng = np.random.default_rng(0)
    W = np.abs(rng.standard_normal((100, 80)))
    dead = np.concatenate([W, np.zeros((100, 80))])
    a, b = BSGC(4, random_state=0).fit(W), BSGC(4, random_state=0).fit(dead)
    assert (b.row_labels_[100:] == -1).all() and np.array_equal(a.row_labels_, b.row_labels_[:100])
    E_a = random_partition_expectation(a.row_labels_, a.column_labels_, 4)
    assert random_partition_expectation(b.row_labels_, b.column_labels_, 4) == pytest.approx(E_a)


def test_normalized_score_bounds():
    assert normalized_score(0.25, 0.25) == 0.0
    assert normalized_score(1.0, 0.25) == 1.0
    assert normalized_score(0.5, 1.0) == 0.0


def test_within_share_gradcheck():
    torch.manual_seed(0)
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    ma = torch.rand(4, 3) > 0.5
    mb = torch.rand(2, 5) > 0.5
    func = lambda x, y: within_share([x ** 2, y ** 2], [ma, mb])  # noqa: E731
    assert torch.autograd.gradcheck(func, (a, b))
    # and against the dense formula
    dense = ((a ** 2 * ma).sum() + (b ** 2 * mb).sum()) / ((a ** 2).sum() + (b ** 2).sum())
    assert torch.allclose(func(a, b), dense)


def test_report_is_mass_weighted_and_matches_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10, bias=False), nn.ReLU(), nn.Linear(10, 8, bias=False))
    with torch.no_grad():
        model[2].weight.mul_(3.0)
    g = LayeredGraph.from_module(model)
    c = cluster_layers(g, 2, random_state=0)
    rep = clusterability_report(g, c)
    for s in rep.layers:
        rows, cols = c.labels(s.layer)
        assert s.E == pytest.approx(float(clusterability(g[s.layer].squared().double(), rows, cols)))
        assert sum(a + b for a, b in s.sizes) == sum(s.shape)
    masses = np.array([s.mass for s in rep.layers])
    assert rep.E == pytest.approx(float(np.dot(masses, [s.E for s in rep.layers]) / masses.sum()))
    assert rep.to_dict()["layers"][0]["shape"] == [12, 10]


def test_report_on_hand_built_clustering():
    W = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # torch layout (out=3, in=2)
    g = LayeredGraph([__import__("graphinterp.graph.layer", fromlist=["Layer"]).Layer("fc", "linear", W)])
    c = Clustering(2, {"fc": np.array([0, 1])}, {"fc": np.array([0, 1, 1])})
    rep = clusterability_report(g, c)
    assert rep.E == pytest.approx((4 + 1 + 1) / 7)
    assert rep.layers[0].E_random == pytest.approx((1 * 1 + 1 * 2) / 6)


# --- tests added by the mutation pass (benchmarks/mutation.py) ------------------------------------------

def test_all_zero_weights_give_zero_not_nan():
    z = torch.zeros(3, 2, dtype=torch.float64)
    assert within_share([z], [torch.ones(3, 2, dtype=torch.bool)]).item() == 0.0
    assert clusterability(z, [0, 1, 1], [0, 1]).item() == 0.0


def test_report_masses_isolated_counts_and_random_expectation_are_mass_weighted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10, bias=False), nn.ReLU(), nn.Linear(10, 8, bias=False))
    with torch.no_grad():
        model[2].weight.mul_(3.0)
        model[0].weight[:, 4] = 0.0  # input 4 isolated
        model[2].weight[5, :] = 0.0  # output 5 of the second layer isolated
    g = LayeredGraph.from_module(model)
    c = cluster_layers(g, 2, random_state=0)
    rep = clusterability_report(g, c)
    for s, p in zip(rep.layers, (model[0].weight, model[2].weight)):
        assert s.mass == pytest.approx(float((p.detach().double() ** 2).sum()), rel=1e-6)
        rows, cols = c.labels(s.layer)
        assert s.E_random == pytest.approx(random_partition_expectation(rows, cols, 2))
        assert s.score == pytest.approx(normalized_score(s.E, s.E_random))
    assert [s.n_isolated for s in rep.layers] == [1, 1]
    assert c.labels("0")[0][4] == -1 and c.labels("2")[1][5] == -1
    masses = np.array([s.mass for s in rep.layers])
    assert rep.E_random == pytest.approx(float(np.dot(masses, [s.E_random for s in rep.layers]) / masses.sum()))
    assert rep.score == pytest.approx(normalized_score(rep.E, rep.E_random))
    assert abs(rep.E_random - np.mean([s.E_random for s in rep.layers])) > 1e-6  # the weighting matters here


def test_the_baseline_leaves_out_the_nodes_without_weight_in_the_layer_whatever_their_label():
    """Decided from the labels alone, a user's -1 on weighted rows made E_random 0.50 instead of 0.25 (a perfect
    clustering of the rest scored as chance), and network-wide labels on a layer's dead outputs counted them."""
    W2 = np.zeros((20, 20))
    W2[:10, :15], W2[10:, 15:] = 1.0, 1.0  # two blocks: 10 x 15 and 10 x 5
    rows, cols = np.repeat([0, 1], 10), np.repeat([0, 1], [15, 5])
    assert random_partition_expectation(rows, cols, 2, W2) == pytest.approx(0.5 * 0.75 + 0.5 * 0.25)
    half = rows.copy()
    half[::2] = -1  # weighted rows in no cluster: they stay in m
    assert random_partition_expectation(half, cols, 2, W2) == pytest.approx(0.25 * 0.75 + 0.25 * 0.25)
    dead = np.concatenate([W2, np.zeros((5, 20))])  # five dead rows, labelled (as network-wide labels do)
    labelled = np.concatenate([rows, np.zeros(5, dtype=np.int64)])
    assert random_partition_expectation(labelled, cols, 2, dead) == pytest.approx(0.5)
    assert random_partition_expectation(labelled, cols, 2) == pytest.approx(0.6 * 0.75 + 0.4 * 0.25)  # labels alone


def test_a_report_over_a_layer_without_weight_or_with_weight_on_unlabelled_nodes_says_so():
    """A stored clustering over an all-zero layer was scored E = 0, E_random = 0 (0 / 0), and one whose labels
    call nodes with weight isolated (-1) scored their weight as outside every cluster without a word."""
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        net[2].weight.zero_()
        net[0].weight.copy_(torch.arange(1.0, 17.0).view(4, 4))
    g = LayeredGraph.from_module(net)
    names = g.layer_names
    c = Clustering(2, {names[0]: np.array([0, 1, -1, 0]), names[1]: np.array([0, 1, 0, 1])},
                   {names[0]: np.array([0, 1, 1, 0]), names[1]: np.array([0, 1, 1])})
    rep = clusterability_report(g, c)
    first, dead = rep.layers
    assert np.isnan(dead.E) and np.isnan(dead.score) and dead.mass == 0
    sq = g[names[0]].squared().double()
    assert first.unlabelled_share == pytest.approx(float(sq[2].sum() / sq.sum()))  # input node 2: labelled -1
    assert rep.E == first.E  # the layer without weight adds nothing to the model's E
    notes = rep.notes()
    assert any(n.startswith(f"{names[1]}: no weight (all zero): E undefined") for n in notes), notes
    assert any(n.startswith(f"{names[0]}: nodes labelled isolated (-1), in no cluster, carry") for n in notes), notes
    data = rep.to_dict()
    assert data["layers"][1]["E"] is None and data["notes"] == notes
    with torch.no_grad():  # input node 2 without weight: labelled -1 as BSGC labels it, and exactly no note
        net[0].weight[:, 2] = 0.0
    g = LayeredGraph.from_module(net)
    clean = clusterability_report(g, Clustering(2, {names[0]: np.array([0, 1, -1, 0])}, {names[0]: np.array([0, 1, 1, 0])}))
    assert clean.notes() == [] and clean.layers[0].unlabelled_share == 0.0 and clean.layers[0].n_isolated == 1
