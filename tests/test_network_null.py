"""The network-level shuffle test (Filan et al.): n-cut and E of a network-wide clustering against shuffled networks."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from _graph_helpers import Residual

from graphinterp.clustering.cluster import cluster_network
from graphinterp.clustering.labels import Clustering
from graphinterp.clustering.network_null import network_measures, network_shuffle_test
from graphinterp.clustering.network_spectral import node_ids, spectral_network_clustering
from graphinterp.clustering.shuffle_results import NullComparison
from graphinterp.common.errors import ClusteringError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.graph.model_trace import trace_graph


def _dense_reference(graph, clustering):
    """n-cut and E from the full symmetric adjacency of the layers' nodes, built independently."""
    ids = node_ids(graph, clustering.layer_names)
    n = 1 + max(int(max(s.max(), d.max())) for s, d in ids.values())
    A = np.zeros((n, n))
    sq_in = sq_all = 0.0
    label = np.full(n, -1)
    for name in clustering.layer_names:
        M = graph[name].magnitude().double().numpy()
        src, dst = ids[name]
        for a, i in enumerate(src):
            for b, j in enumerate(dst):
                A[i, j] += M[a, b]
                A[j, i] += M[a, b]
        rows, cols = clustering.labels(name)
        label[src], label[dst] = np.maximum(label[src], rows), np.maximum(label[dst], cols)
        same = (rows[:, None] == cols[None, :]) & (rows[:, None] >= 0)
        sq_in += (M ** 2 * same).sum()
        sq_all += (M ** 2).sum()
    deg = A.sum(1)
    n_cut = 0.0
    for c in range(clustering.k):
        inside = label == c
        if deg[inside].sum() > 0:
            n_cut += A[inside][:, ~inside].sum() / deg[inside].sum()
    return n_cut, sq_in / sq_all


def _planted_chain(blocks=2, width=6, noise=0.01, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(blocks * width, blocks * width, bias=False), nn.ReLU(),
                        nn.Linear(blocks * width, blocks * width, bias=False))
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.weight.copy_(torch.block_diag(*[torch.rand(width, width) + 0.5 for _ in range(blocks)])
                           + noise * torch.rand(blocks * width, blocks * width))
    return LayeredGraph.from_module(net)


@pytest.mark.parametrize("kind", ["chain", "dag", "chain-with-gap"])
def test_measures_match_the_dense_adjacency(kind):
    torch.manual_seed(1)
    if kind == "dag":
        graph = trace_graph(Residual())
        clustering = cluster_network(graph, 3, random_state=0)
    else:
        net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 4))
        with torch.no_grad():
            net[0].weight[:, 2] = 0  # an isolated input
        graph = LayeredGraph.from_module(net)
        layers = ["0", "4"] if kind == "chain-with-gap" else None  # two runs that share no node
        clustering = cluster_network(graph, 3, layers=layers, random_state=0)
    n_cut, E = network_measures(graph, clustering)
    ref_cut, ref_E = _dense_reference(graph, clustering)
    assert n_cut == pytest.approx(ref_cut, abs=1e-12) and E == pytest.approx(ref_E, abs=1e-12)
    assert 0 < n_cut < clustering.k - 1


def test_measures_of_given_similarities_are_those_of_the_similarities():
    graph = _planted_chain()
    clustering = cluster_network(graph, 2, random_state=0)
    doubled = {n: 2 * graph[n].magnitude() for n in clustering.layer_names}  # n-cut and E do not see a common scale
    assert network_measures(graph, clustering, doubled) == pytest.approx(network_measures(graph, clustering))
    flat = {n: torch.ones_like(graph[n].magnitude()) for n in clustering.layer_names}
    assert network_measures(graph, clustering, flat) != pytest.approx(network_measures(graph, clustering))


def test_a_layerwise_clustering_is_refused():
    graph = _planted_chain()
    rows = {n: np.arange(graph[n].shape()[0]) % 2 for n in graph.layer_names}
    cols = {n: np.arange(graph[n].shape()[1]) % 2 for n in graph.layer_names}
    with pytest.raises(ClusteringError, match="network-wide"):
        network_measures(graph, Clustering(2, rows, cols))


def test_planted_modules_beat_every_shuffle_and_the_result_is_reproducible():
    graph = _planted_chain(blocks=3, width=5)
    t = network_shuffle_test(graph, 3, n_shuffles=9, random_state=3)
    assert t.n_cut.observed < 0.05 and t.n_cut.p_value == t.min_p_value == 0.1 and t.n_cut.z < -5
    assert t.E.observed > 0.99 and t.E.p_value == 0.1 and t.E.z > 5
    assert t.n_cut.lower_is_better and not t.E.lower_is_better
    assert sorted(t.sizes.tolist()) == [15, 15, 15]  # 3 levels of 5 nodes per module
    assert t.layers == ["0", "2"] and t.notes == []
    again = network_shuffle_test(graph, 3, n_shuffles=9, random_state=3)
    assert np.array_equal(t.n_cut.null, again.n_cut.null) and np.array_equal(t.E.null, again.E.null)
    other = network_shuffle_test(graph, 3, n_shuffles=9, random_state=4)
    assert not np.array_equal(t.n_cut.null, other.n_cut.null)
    d = t.to_dict(include_null=False)
    assert d["n_cut"]["lower_is_better"] is True and "null" not in d["n_cut"] and "lower_is_better" not in d["E"]


def test_a_structureless_network_is_not_significant():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 30))
    t = network_shuffle_test(LayeredGraph.from_module(net), 3, n_shuffles=19, random_state=0)
    assert t.n_cut.p_value > 0.05 and abs(t.n_cut.z) < 4
    assert t.n_cut.null.min() <= t.n_cut.observed + 0.1  # the observed n-cut lies among the shuffles'


def test_the_shuffles_permute_each_layer_and_keep_isolated_nodes_isolated(monkeypatch):
    import graphinterp.clustering.network_null as nn_mod

    graph = _planted_chain()
    with torch.no_grad():
        graph["0"].weight[:, 3] = 0  # input 3 of layer "0" has no edge
    seen = []
    real = nn_mod.network_measures

    def spy(g, clustering, similarity=None):
        if similarity is not None:
            seen.append({n: s.clone() for n, s in similarity.items()})
        return real(g, clustering, similarity)

    monkeypatch.setattr(nn_mod, "network_measures", spy)
    network_shuffle_test(graph, 2, n_shuffles=3, random_state=0)
    assert len(seen) == 3
    for sims in seen:
        for name, S in sims.items():
            M = graph[name].magnitude().double()
            assert torch.equal(S.flatten().sort().values, M.flatten().sort().values)  # a permutation of the layer
            assert not torch.equal(S, M)
        assert bool((sims["0"][3] == 0).all())  # rows are inputs: isolated input 3 stays isolated
    for i in range(3):  # each shuffled network is a permutation of its own
        for j in range(i):
            assert not torch.equal(seen[i]["0"], seen[j]["0"]) and not torch.equal(seen[i]["2"], seen[j]["2"])


def test_pieces_and_left_out_layers_are_noted():
    net = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False))
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.weight.copy_(torch.block_diag(torch.rand(4, 4) + 0.1, torch.rand(4, 4) + 0.1))  # two separate pieces
    t = network_shuffle_test(LayeredGraph.from_module(net), 2, n_shuffles=2, random_state=0)
    assert any("2 pieces (nodes: 12, 12)" in n for n in t.notes)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 6, 3))
    t = network_shuffle_test(LayeredGraph.from_module(conv), 2, n_shuffles=2, random_state=0)
    assert any("left out" in n and "2" in n for n in t.notes) and "2" not in t.layers


def test_every_layer_takes_part_whatever_its_width():
    """As Filan et al.'s graph: a 3-output layer is in a k = 4 clustering (no level needs every cluster)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3))
    t = network_shuffle_test(LayeredGraph.from_module(net), 4, n_shuffles=2, random_state=0)
    assert t.layers == ["0", "2", "4"] and int(t.sizes.sum()) == 33 and t.notes == []


def test_the_clustering_is_scikit_learns_spectral_clustering_of_the_network_graph():
    from sklearn.cluster import SpectralClustering
    from sklearn.metrics import adjusted_rand_score

    for seed, noise in ((0, 0.05), (1, 0.3)):
        graph = _planted_chain(blocks=3, width=6, noise=noise, seed=seed)
        ours = spectral_network_clustering(graph, graph.layer_names, 3, random_state=0)
        ids = node_ids(graph, graph.layer_names)
        n = 1 + max(int(d.max()) for _, d in ids.values())
        A = np.zeros((n, n))
        for name in graph.layer_names:
            src, dst = ids[name]
            A[np.ix_(src, dst)] += graph[name].magnitude().double().numpy()
        A = A + A.T
        theirs = SpectralClustering(3, affinity="precomputed", random_state=0).fit_predict(A)
        planted = np.repeat(np.arange(3), 6)
        assert adjusted_rand_score(ours.meta["node_labels"], theirs) == 1.0
        assert adjusted_rand_score(ours.meta["node_labels"], np.concatenate([planted] * 3)) == 1.0
    diffs = []  # structureless networks: the same embedding, so n-cuts as good as scikit-learn's (KMeans draws differ)
    for seed in range(6):
        torch.manual_seed(seed)
        graph = LayeredGraph.from_module(nn.Sequential(nn.Linear(20, 25), nn.ReLU(), nn.Linear(25, 15), nn.ReLU(),
                                                       nn.Linear(15, 5)))
        names = graph.layer_names
        ids = node_ids(graph, names)
        A = np.zeros((65, 65))
        for name in names:
            A[np.ix_(*ids[name])] += graph[name].magnitude().double().numpy()
        theirs = SpectralClustering(4, affinity="precomputed", random_state=0).fit_predict(A + A.T)
        as_clustering = Clustering(4, {n: theirs[ids[n][0]] for n in names}, {n: theirs[ids[n][1]] for n in names},
                                   network_wide=True)
        ours = spectral_network_clustering(graph, names, 4, random_state=0)
        diffs.append(network_measures(graph, ours)[0] - network_measures(graph, as_clustering)[0])
    assert abs(np.mean(diffs)) < 0.02 and np.max(np.abs(diffs)) < 0.06, diffs


def test_a_network_with_folded_normalisation_gets_the_unit_scale_caveat():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 6)).eval()
    with torch.no_grad():
        net[1].running_var.uniform_(0.1, 10)
    t = network_shuffle_test(trace_graph(net, input_shape=(8,)), 2, n_shuffles=2, random_state=0)
    assert any("normalisation folded" in n and "err either way" in n for n in t.notes)
    with torch.no_grad():
        net[1].running_var.fill_(1.0)  # an untrained BatchNorm: every unit scaled alike, which the shuffles keep
    same = network_shuffle_test(trace_graph(net, input_shape=(8,)), 2, n_shuffles=2, random_state=0)
    assert not any("err either way" in n for n in same.notes)
    plain = network_shuffle_test(LayeredGraph.from_module(nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 6))),
                                 2, n_shuffles=2, random_state=0)
    assert not any("err either way" in n for n in plain.notes)


def test_bad_arguments_are_errors():
    graph = _planted_chain()
    with pytest.raises(ClusteringError, match="n_shuffles"):
        network_shuffle_test(graph, 2, n_shuffles=0)
    with pytest.raises(ClusteringError, match="k=50 is out of range for a network with 36 connected nodes"):
        network_shuffle_test(graph, 50, n_shuffles=2)
    with pytest.raises(ClusteringError, match="out of range for a network with 20 connected nodes"):
        network_shuffle_test(trace_graph(Residual()), 40, n_shuffles=2)
    with pytest.raises(ClusteringError, match="k must be"):
        network_shuffle_test(graph, 1, n_shuffles=2)


def test_a_dag_takes_given_similarities_like_a_chain():
    graph = trace_graph(Residual())
    own = {n: graph[n].magnitude() for n in graph.layer_names}
    a = cluster_network(graph, 3, random_state=0)
    b = cluster_network(graph, 3, similarity=own, random_state=0)
    assert all(np.array_equal(a.labels(n)[0], b.labels(n)[0]) for n in graph.layer_names)
    flipped = {n: own[n].flip(0) for n in own}
    c = cluster_network(graph, 3, similarity=flipped, random_state=0)
    assert any(not np.array_equal(a.labels(n)[0], c.labels(n)[0]) for n in graph.layer_names)
    with pytest.raises(ClusteringError, match="has shape"):
        cluster_network(graph, 3, similarity={n: own[n].T for n in own}, random_state=0)
    with pytest.raises(ClusteringError, match="non-negative"):
        cluster_network(graph, 3, similarity={n: -own[n] for n in own}, random_state=0)


def test_lower_is_better_counts_the_shuffles_at_or_below():
    c = NullComparison.from_samples(0.5, np.array([0.4, 0.5, 0.6, 0.7]), lower_is_better=True)
    assert c.p_value == (2 + 1) / 5 and c.z < 0
    assert NullComparison.from_samples(0.5, np.array([0.4, 0.5, 0.6, 0.7])).p_value == (3 + 1) / 5


def test_benchmark_network_reports_the_library_test_in_json_csv_and_table(tmp_path):
    import csv
    import json

    from click.testing import CliRunner

    from graphinterp.cli.main import cli
    from graphinterp.reports.model_sources import ModelSource, load_source

    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict(),
               path)
    args = ["benchmark", str(path), "--k", "2", "--significance-k", "2", "--shuffles", "3", "--n-init", "2", "--network", "--no-figures",
            "--seed", "5", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    net = json.loads(result.stdout)["models"][0]["network"]
    graph = load_source(ModelSource(path=str(path)), random_state=5)[0]
    ref = network_shuffle_test(graph, 2, n_shuffles=3, n_init=2, random_state=5)
    assert net["n_cut"]["observed"] == pytest.approx(ref.n_cut.observed, abs=1e-12)
    assert net["n_cut"]["null"] == pytest.approx(ref.n_cut.null.tolist(), abs=1e-12)
    assert net["E"]["p_value"] == pytest.approx(ref.E.p_value) and net["layers"] == ["0", "2", "4"]
    with open(tmp_path / "r" / "network.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["n_cut"]) == pytest.approx(ref.n_cut.observed)
    table = CliRunner().invoke(cli, [*args, "--quiet"])
    assert table.exit_code == 0 and "whole network at k=2 (3 layers" in table.stdout
    assert "n-cut" in table.stdout and "lower is more clusterable" in table.stdout


def test_benchmark_network_says_why_a_model_has_no_network_test(tmp_path):
    import json

    from click.testing import CliRunner

    from graphinterp.cli.main import cli

    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Linear(12, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)).state_dict(),
               path)
    base = ["benchmark", str(path), "--shuffles", "2", "--n-init", "2", "--network", "--no-figures", "--json"]
    layerwise = CliRunner().invoke(cli, [*base, "--k", "2", "--significance-k", "2", "--layerwise", "--out",
                                         str(tmp_path / "a")])
    model = json.loads(layerwise.stdout)["models"][0]
    assert model["network"] is None and "layer by layer" in model["network_skipped"]
    no_null = CliRunner().invoke(cli, [*base, "--k", "2", "--shuffles", "0", "--out", str(tmp_path / "c")])
    assert no_null.exit_code == 2 and "--network" in no_null.output and "Traceback" not in no_null.output


def test_a_layer_holding_most_of_the_squared_weight_gets_a_note():
    """E over the network pools squared weights: when one layer holds nearly all of them (the last layer after
    Filan et al.'s unit-norm rescaling of a deep CNN), the network's E is that layer's, and a note says so."""
    graph = _planted_chain()
    balanced = network_shuffle_test(graph, 2, n_shuffles=2, random_state=0)
    assert not any("of the squared weight" in n for n in balanced.notes)
    heavy = LayeredGraph([graph.layers[0], replace(graph.layers[1], weight=graph.layers[1].weight * 4)])
    t = network_shuffle_test(heavy, 2, n_shuffles=2, random_state=0)
    share = float((heavy["2"].weight ** 2).sum() / sum((layer.weight ** 2).sum() for layer in heavy.layers))
    assert share > 0.9
    assert any(n.startswith(f"layer 2 holds {share:.0%} of the squared weight") for n in t.notes)


def _with_a_loose_piece():
    """A 6-8-5 MLP whose hidden units 6, 7 read no input but write outputs 3, 4, which nothing else writes:
    a piece that reaches the outputs but not the inputs."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 5, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.rand(8, 6) + 0.1)
        net[0].weight[6:] = 0.0
        net[2].weight.copy_(torch.rand(5, 8) + 0.1)
        net[2].weight[3:, :6] = 0.0
        net[2].weight[:3, 6:] = 0.0
    return LayeredGraph.from_module(net)


def test_drop_pieces_leaves_out_what_does_not_join_inputs_to_outputs_as_filan_et_al():
    from graphinterp.clustering.network_pieces import joined_part

    graph = _with_a_loose_piece()
    kept = network_shuffle_test(graph, 2, n_shuffles=3, random_state=0)
    assert any("2 pieces (nodes: 15, 4)" in n and "--drop-pieces" in n for n in kept.notes)
    t = network_shuffle_test(graph, 2, n_shuffles=3, random_state=0, drop_pieces=True)
    assert any(n.startswith("4 node(s) in pieces of the graph that do not join") for n in t.notes)
    assert not any("pieces (nodes" in n for n in t.notes) and sum(t.sizes) == 15
    ids = node_ids(graph, graph.layer_names)
    sims, dropped = joined_part(ids, {n: graph[n].magnitude().double() for n in graph.layer_names})
    assert dropped == 4 and float(sims["2"][6:].abs().sum()) == 0.0 and float(sims["0"][:, 6:].abs().sum()) == 0.0
    observed = spectral_network_clustering(graph, graph.layer_names, 2, similarity=sims, random_state=None)
    labels = np.asarray(observed.meta["node_labels"])
    assert (labels[[12, 13, 17, 18]] == -1).all() and (labels[:12] >= 0).all()  # hidden 6, 7 and outputs 3, 4 out


def test_pieces_notes_without_false_pieces_and_with_drop_pieces_reported_either_way():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(10, 20, bias=False), nn.ReLU(), nn.Linear(20, 5, bias=False))
    with torch.no_grad():
        net[0].weight[:, 0] = 0.0  # an unused input (a blank pixel): a node without edges, not a piece
    graph = LayeredGraph.from_module(net)
    t = network_shuffle_test(graph, 2, n_shuffles=2, random_state=0)
    assert not any("pieces" in n for n in t.notes)
    t = network_shuffle_test(graph, 2, n_shuffles=2, random_state=0, drop_pieces=True)
    assert any(n.startswith("drop_pieces left out no node") for n in t.notes)
    with torch.no_grad():
        net[2].weight.zero_()  # nothing reaches the outputs
        net[2].weight[0, 0] = 1.0
        net[0].weight[0] = 0.0  # ... and hidden unit 0 reads no input
    with pytest.raises(ClusteringError, match="no piece of the network's graph joins its inputs to its outputs"):
        network_shuffle_test(LayeredGraph.from_module(net), 2, n_shuffles=2, random_state=0, drop_pieces=True)


def test_a_split_along_whole_levels_is_noted_as_saying_nothing_about_the_weights():
    """A random ResNet-18 at k=4 splits by depth: every shuffled network scored exactly the observed n-cut and E
    (p 1, z undefined). A weak middle layer does the same to a small chain: the note says why."""
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.ReLU(),
                        nn.Linear(8, 8, bias=False))
    with torch.no_grad():
        for m in (net[0], net[4]):
            m.weight.copy_(torch.rand(8, 8) + 0.5)
        net[2].weight.copy_(1e-4 * (torch.rand(8, 8) + 0.5))
    t = network_shuffle_test(LayeredGraph.from_module(net), 2, n_shuffles=3, random_state=0)
    assert t.notes and t.notes[0].startswith("the clusters are unions of whole levels")
    assert t.n_cut.std == pytest.approx(0.0, abs=1e-9) and t.n_cut.p_value == 1.0
    planted = network_shuffle_test(_planted_chain(), 2, n_shuffles=3, random_state=0)
    assert not any("unions of whole levels" in n for n in planted.notes)


@pytest.mark.parametrize("drop_pieces", [False, True])
def test_shuffled_networks_on_processes_give_the_serial_result(drop_pieces):
    """Each shuffle has its own seeds, so spreading them over processes (in shares) changes nothing."""
    graph = trace_graph(Residual())
    kw = dict(n_shuffles=5, n_init=3, random_state=7, drop_pieces=drop_pieces)
    serial = network_shuffle_test(graph, 3, **kw)
    spread = network_shuffle_test(graph, 3, n_jobs=2, **kw)
    assert np.array_equal(serial.n_cut.null, spread.n_cut.null) and np.array_equal(serial.E.null, spread.E.null)
    assert serial.n_cut.observed == spread.n_cut.observed and serial.notes == spread.notes
    assert len(set(serial.n_cut.null.round(12))) > 1  # the shuffles differ from each other


def test_shuffled_networks_on_a_dask_cluster_give_the_serial_result():
    distributed = pytest.importorskip("distributed")
    graph = _planted_chain(blocks=2, width=5, noise=0.3)
    serial = network_shuffle_test(graph, 2, n_shuffles=4, n_init=2, random_state=1)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        on_dask = network_shuffle_test(graph, 2, n_shuffles=4, n_init=2, random_state=1, scheduler=client)
    assert np.array_equal(serial.n_cut.null, on_dask.n_cut.null) and np.array_equal(serial.E.null, on_dask.E.null)


def test_a_bad_job_count_is_refused_before_any_clustering(monkeypatch):
    import graphinterp.clustering.network_null as nn_mod
    from graphinterp.common.parallel import ParallelError

    def never(*a, **kw):
        raise AssertionError("clustered before checking n_jobs")

    monkeypatch.setattr(nn_mod, "spectral_network_clustering", never)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ParallelError, match="n_jobs must be a positive number"):
            network_shuffle_test(_planted_chain(), 2, n_shuffles=3, n_jobs=bad)


def test_benchmark_jobs_reach_the_network_test_and_leave_its_result_unchanged(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    import graphinterp.clustering.network_null as nn_mod
    from graphinterp.cli.main import cli

    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict(), path)
    calls = []
    real = nn_mod.run_tasks

    def spy(fn, tasks, **kw):
        calls.append((len(tasks), kw))
        return real(fn, tasks, **kw)

    monkeypatch.setattr(nn_mod, "run_tasks", spy)
    args = ["benchmark", str(path), "--k", "2", "--significance-k", "2", "--shuffles", "3", "--n-init", "2", "--network",
            "--no-figures", "--json", "--seed", "5"]
    one = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert one.exit_code == 0 and calls == [], one.output
    two = CliRunner().invoke(cli, [*args, "--jobs", "2", "--out", str(tmp_path / "b")])
    assert two.exit_code == 0, two.output
    assert calls == [(2, {"n_jobs": 2, "scheduler": None})]  # the 3 shuffles in two shares
    a, b = (json.loads(r.stdout)["models"][0]["network"] for r in (one, two))
    assert a == b and len(a["n_cut"]["null"]) == 3


def test_a_scheduler_is_reached_before_any_clustering(monkeypatch):
    """An unreachable cluster is an error before the observed network is clustered (a ViT's takes 20 s)."""
    import contextlib

    import graphinterp.clustering.network_null as nn_mod
    from graphinterp.common.parallel import ParallelError

    order = []

    @contextlib.contextmanager
    def unreachable(address):
        order.append(("connect", address))
        raise ParallelError(f"cannot reach the Dask scheduler {address!r}")
        yield

    monkeypatch.setattr(nn_mod, "dask_scheduler", unreachable)
    monkeypatch.setattr(nn_mod, "spectral_network_clustering", lambda *a, **kw: order.append("clustered"))
    with pytest.raises(ParallelError, match="cannot reach"):
        network_shuffle_test(_planted_chain(), 2, n_shuffles=3, scheduler="tcp://10.0.0.5:8786")
    assert order == [("connect", "tcp://10.0.0.5:8786")]


def test_job_counts_may_be_numpy_integers():
    from graphinterp.common.parallel import check_jobs, shares

    check_jobs(np.int64(2))
    assert shares(list(range(5)), np.int64(2)) == [[0, 1], [2, 3, 4]]
    assert shares(list(range(3)), np.int32(-1), per_item=True) == [[0], [1], [2]]
