"""Tests of graphinterp.reports.benchmarking and `graphinterp benchmark`: outputs, fallbacks and bad inputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from graphinterp.reports.benchmark_report import format_report
from graphinterp.reports.benchmarking import ModelSource, benchmark_graph, load_source, run_benchmark
from graphinterp.sources.checkpoint import save_checkpoint
from graphinterp.cli.main import cli
from graphinterp.common.errors import ClusteringError, InvalidWeightsError, ModelFileError, UnsupportedModelError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.sources.models import mlp
from graphinterp.clustering.metrics import clusterability

SPEC = {"name": "mlp", "kwargs": {"in_features": 20, "hidden": [16, 12], "num_classes": 4, "bias": False}}
FAST = ["--n-init", "2", "--quiet"]


def _checkpoint(path: Path, seed: int, planted: bool) -> Path:
    torch.manual_seed(seed)
    model = mlp(**SPEC["kwargs"])
    if planted:  # fc2 block-diagonal: 4 blocks of 4 inputs x 3 outputs
        with torch.no_grad():
            mask = torch.kron(torch.eye(4), torch.ones(3, 4))
            model.fc2.weight.mul_(mask).add_(0.01 * torch.randn_like(mask))
    save_checkpoint(path, model, arch=SPEC)
    return path


@pytest.fixture
def two_checkpoints(tmp_path):
    return _checkpoint(tmp_path / "random.pt", 0, False), _checkpoint(tmp_path / "modular.pt", 1, True)


def _run(args):
    result = CliRunner().invoke(cli, args)
    return result


def test_benchmark_two_checkpoints_writes_json_csv_and_figures(two_checkpoints, tmp_path):
    out = tmp_path / "report"
    args = ["benchmark", *map(str, two_checkpoints), "--k", "2..4", "--significance-k", "4", "--shuffles", "4",
            "--out", str(out), *FAST]
    result = _run(args)
    assert result.exit_code == 0, result.output
    assert "random" in result.output and "modular" in result.output and "fc2" in result.output
    report = json.loads((out / "benchmark.json").read_text())
    assert [m["name"] for m in report["models"]] == ["random", "modular"]
    assert report["ks"] == [2, 3, 4] and report["n_shuffles"] == 4
    with open(out / "clusterability.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3 * 3  # models x layers x k (every layer has >= 4 nodes on both sides)
    assert {r["k"] for r in rows} == {"2", "3", "4"}
    for r in rows:  # E_random is the closed form sum_c (r_c / m)(s_c / n); score is its normalisation of E
        rs, cs = np.array(r["row_sizes"].split(), float), np.array(r["col_sizes"].split(), float)
        assert len(rs) == len(cs) == int(r["k"]) and rs.sum() <= int(r["n_in"]) and cs.sum() <= int(r["n_out"])
        E, E_rand = float(r["E"]), float(r["E_random"])
        assert E_rand == pytest.approx(float(rs @ cs) / (int(r["n_in"]) * int(r["n_out"])), rel=1e-9)
        assert float(r["score"]) == pytest.approx((E - E_rand) / (1 - E_rand), rel=1e-9, abs=1e-12)
    planted_rows = [r for r in rows if r["model"] == "modular" and r["layer"] == "fc2" and r["k"] == "4"]
    assert len(planted_rows) == 1 and float(planted_rows[0]["score"]) > 0.9  # a planted block structure
    with open(out / "significance.csv", newline="") as fh:
        sig = {(r["model"], r["layer"]): r for r in csv.DictReader(fh)}
    assert len(sig) == 6
    planted = sig[("modular", "fc2")]
    assert float(planted["E"]) > 0.95 and float(planted["E_p"]) == pytest.approx(1 / 5)
    assert float(planted["score_p"]) == pytest.approx(1 / 5) and float(planted["score_z"]) > 1
    for name in ("clusterability_vs_k.png", "random_layers.png", "modular_significance.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    assert b"<svg" in (out / "clusterability_vs_k.svg").read_bytes()[:2000]


def test_benchmark_json_output_matches_the_file(two_checkpoints, tmp_path):
    out = tmp_path / "r"
    result = _run(["benchmark", str(two_checkpoints[0]), "--k", "2,3", "--shuffles", "2", "--significance-k", "2",
                   "--out", str(out), "--json", "--no-figures", *FAST])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["models"][0]["name"] == "random"
    assert printed["models"] == json.loads((out / "benchmark.json").read_text())["models"]
    coverage = printed["models"][0]["coverage"]  # structured, as analyze --json gives it (was only a note's text)
    assert coverage["covered_weights"] == coverage["total_weights"] > 0 and coverage["share"] == 1.0
    assert not list(out.glob("*.png"))


@pytest.mark.parametrize("layerwise", [False, True])
def test_load_source_and_graph_with_fallback_are_one_path(two_checkpoints, layerwise):
    """A model file's graph, structure and notes are the same whichever entry point built them."""
    from graphinterp.reports.benchmarking import graph_with_fallback
    from graphinterp.sources.loading import load_model_file

    a = load_source(ModelSource(path=str(two_checkpoints[1])), layerwise=layerwise)
    b = graph_with_fallback(load_model_file(two_checkpoints[1]), layerwise=layerwise)
    assert a[1:] == b[1:] and a[1] == ("layerwise" if layerwise else "chained")
    assert a[0].layer_names == b[0].layer_names


def test_every_k_follows_check_k(two_checkpoints):
    for ks, kwargs, match in (([1, 2], {}, "at least 2"), ([2.5], {}, "integer"), ([2], {"significance_k": 1}, "at least 2"),
                              ([], {}, "at least one k")):
        with pytest.raises(ClusteringError, match=match):
            run_benchmark([ModelSource(path=str(two_checkpoints[1]))], ks, n_shuffles=0, **kwargs)
        with pytest.raises(ClusteringError, match=match):
            benchmark_graph(LayeredGraph.from_module(mlp(4, [3], 2)), ks, **{"significance_k": None, **kwargs})


def test_scores_agree_with_the_metrics(two_checkpoints):
    graph, structure, notes = load_source(ModelSource(path=str(two_checkpoints[1])))
    assert structure == "chained" and notes == ["coverage: 560 of 560 weights in the graph (100.0%)"]
    layers, skipped = benchmark_graph(graph, [3], significance_k=3, n_shuffles=2, n_init=2, random_state=0)
    assert skipped == {}
    for lb in layers:
        s = lb.scores[3]
        # the significance test reuses the clustering of the table, so both report the same E
        assert lb.significance.E.observed == pytest.approx(s["E"])
        assert lb.significance.E_random == pytest.approx(s["E_random"])
        assert sum(s["sizes"][0]) == lb.shape[0] and sum(s["sizes"][1]) == lb.shape[1]


def test_residual_state_dict_falls_back_to_layers_and_reports_why(tmp_path):
    torch.manual_seed(0)
    state = {"conv1.weight": torch.randn(8, 3, 3, 3), "layer1.0.conv1.weight": torch.randn(8, 8, 3, 3),
             "layer1.0.conv2.weight": torch.randn(8, 8, 3, 3), "fc.weight": torch.randn(4, 8)}
    path = tmp_path / "res.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 90.0}, path)
    report = run_benchmark([ModelSource(path=str(path))], [2, 4], significance_k=4, n_shuffles=2, n_init=2)
    model = report.models[0]
    assert model.structure == "layerwise" and any("residual" in n for n in model.notes)
    first = model.layers[0]
    assert first.layer == "conv1" and sorted(first.scores) == [2] and 4 in first.skipped_k
    assert first.significance is None
    text = format_report(report)
    assert "layer conv1 has too few nodes for k=4" in text and "analysed one by one" in text


def test_tiny_and_zero_layers_are_skipped_with_a_reason():
    from torch import nn

    model = nn.Sequential(nn.Linear(2, 6, bias=False), nn.ReLU(), nn.Linear(6, 5, bias=False), nn.ReLU(),
                          nn.Linear(5, 3, bias=False))
    with torch.no_grad():
        model[2].weight.zero_()
    layers, skipped = benchmark_graph(LayeredGraph.from_module(model), [3], significance_k=None)
    assert [lb.layer for lb in layers] == ["4"]
    assert "fewer than k=3" in skipped["0"] and skipped["2"] == "all its weights are zero"
    empty = LayeredGraph.from_module(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 0)))
    assert benchmark_graph(empty, [2], significance_k=None)[1]["2"] == "it has no weights (an empty 6x0 layer)"


def test_random_arch_is_a_dag_with_coverage():
    graph, structure, notes = load_source(ModelSource(arch="resnet18"))
    assert structure == "dag" and notes[1] == "coverage: 11,678,912 of 11,678,912 weights in the graph (100.0%)"
    assert "random initialisation" in notes[0] and any(n.startswith("folded: 20") for n in notes)
    assert graph["layer4.1.conv2"].shape() == (512, 512)
    # the residual stream: conv2 of each block writes the nodes its block reads
    assert list(graph.dst_nodes("layer1.0.conv2")) == list(graph.src_nodes("layer1.0.conv1"))
    again, structure, _ = load_source(ModelSource(arch="resnet18"), layerwise=True)
    assert structure == "layerwise"
    assert torch.equal(graph["conv1"].weight, again["conv1"].weight)  # seeded


def test_torchvision_weights_load_and_bad_inputs_fail(tmp_path):
    from graphinterp.sources.models import torchvision_model

    weights = tmp_path / "squeeze.pth"
    torch.save(torchvision_model("squeezenet1_1", num_classes=10).state_dict(), weights)
    graph, structure, _ = load_source(ModelSource(arch="squeezenet1_1", weights=str(weights)))
    assert graph["classifier.1"].n_out == 10  # number of classes read from the weights
    # a file saved without BatchNorm's step counters (older torch) fits: they are not weights (was refused)
    old = tmp_path / "old.pth"
    state = torchvision_model("resnet18", num_classes=10).state_dict()
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, old)
    graph, _, _ = load_source(ModelSource(arch="resnet18", weights=str(old)))
    assert torch.equal(graph["fc"].weight, state["fc.weight"]) and graph.coverage.share == 1.0
    with pytest.raises(InvalidWeightsError, match="does not fit torchvision 'resnet18'"):
        load_source(ModelSource(arch="resnet18", weights=str(weights)))
    with pytest.raises(UnsupportedModelError, match="unknown torchvision model"):
        load_source(ModelSource(arch="resnet_nope"))
    with pytest.raises(ModelFileError, match="not found"):
        load_source(ModelSource(arch="resnet18", weights=str(tmp_path / "missing.pth")))
    with pytest.raises(ModelFileError, match="not found"):
        load_source(ModelSource(path=str(tmp_path / "missing.pt")))


@pytest.mark.parametrize("args, message", [
    (["--random-arch", "resnet_nope"], "unknown torchvision model 'resnet_nope'"),
    (["MISSING"], "not found"),
    (["--arch", "resnet18", "--weights", "WEIGHTS"], "does not fit torchvision 'resnet18'"),
    (["GOOD", "--k", "1..3"], "k must be at least 2"),
    (["GOOD", "--k", "2..1000000000000"], "more than 1000 values of k"),
    (["GOOD", "--k", "500"], "no layer can be clustered at k=500"),
    (["GOOD", "--significance-k", "1"], "--significance-k"),
    (["GOOD", "--out", "FILE"], "is a file"),
    (["GOOD", "--out", "FILE/sub"], "--out"),
    (["GOOD", "--jobs", "0"], "--jobs"),
])
def test_cli_bad_inputs_give_one_line_errors(args, message, tmp_path, two_checkpoints):
    weights = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.randn(3, 4)}, weights)
    (tmp_path / "file").write_text("x")
    args = [{"MISSING": str(tmp_path / "nope.pt"), "WEIGHTS": str(weights), "GOOD": str(two_checkpoints[0]),
             "FILE": str(tmp_path / "file"), "FILE/sub": str(tmp_path / "file" / "sub")}.get(a, a) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "o")]
    result = _run(["benchmark", *args, *out, *FAST])
    assert result.exit_code in (1, 2)  # 2: a usage error, found before any work
    assert message in result.stderr and result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "o" / "benchmark.json").exists()


def test_one_bad_model_among_many_is_reported_and_the_others_finish(tmp_path, two_checkpoints):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a model")
    out = tmp_path / "o"
    result = _run(["benchmark", str(two_checkpoints[0]), str(corrupt), str(two_checkpoints[1]),
                   "--k", "2", "--shuffles", "2", "--no-figures", "--out", str(out), *FAST])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "corrupt" in result.stderr
    data = json.loads((out / "benchmark.json").read_text())
    assert [m["name"] for m in data["models"]] == ["random", "modular"]
    assert list(data["failed"]) == ["corrupt"]


def test_models_may_be_torchvision_names(tmp_path):
    result = _run(["benchmark", "resnet18", "--k", "2", "--shuffles", "0", "--no-figures", "--json",
                   "--out", str(tmp_path / "o"), *FAST])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["models"][0]["structure"] == "dag" and len(data["models"][0]["layers"]) > 10


def _without_times(obj):
    if isinstance(obj, dict):
        return {k: _without_times(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


def test_jobs_give_the_same_report_as_one_process(tmp_path, two_checkpoints):
    args = ["benchmark", *map(str, two_checkpoints), "--k", "2..3", "--shuffles", "3", "--no-figures", "--json", *FAST]
    one = _run([*args, "--jobs", "1", "--out", str(tmp_path / "a")])
    two = _run([*args, "--jobs", "2", "--out", str(tmp_path / "b")])
    assert one.exit_code == 0 and two.exit_code == 0, two.output
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert _without_times(a) == _without_times(b)
    assert a["models"][1]["layers"][0]["significance"]["E"]["null"]  # the comparison covers the shuffle nulls


def test_dask_scheduler_gives_the_same_report(two_checkpoints):
    distributed = pytest.importorskip("distributed")
    sources = [ModelSource(path=str(p)) for p in two_checkpoints]
    kw = dict(significance_k=2, n_shuffles=3, n_init=2, random_state=4)
    serial = run_benchmark(sources, [2, 3], **kw)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        on_dask = run_benchmark(sources, [2, 3], scheduler=client, **kw)
    assert _without_times(serial.to_dict()) == _without_times(on_dask.to_dict())


def test_unreachable_scheduler_is_one_line_error(tmp_path, two_checkpoints):
    pytest.importorskip("distributed")
    result = _run(["benchmark", str(two_checkpoints[0]), "--k", "2", "--shuffles", "0", "--no-figures",
                   "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o"), *FAST])
    assert result.exit_code == 1 and result.stderr.startswith("error: ") and "Dask scheduler" in result.stderr


def test_a_cluster_without_workers_is_one_error_that_a_cli_user_can_act_on(monkeypatch):
    """joblib waited 10 s and raised a TimeoutError telling the user to call parallel_config(...) in Python."""
    distributed = pytest.importorskip("distributed")
    import graphinterp.common.parallel as parallel

    monkeypatch.setattr(parallel, "_WORKERS_S", 1.0)
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        with pytest.raises(parallel.ParallelError, match="has no workers .*dask worker") as info:
            parallel.run_tasks(pow, [(2, 3), (3, 2)], scheduler=cluster.scheduler_address)
    assert "parallel_config" not in str(info.value)


def test_an_address_that_is_not_a_dask_scheduler_is_one_error_within_the_deadline():
    """A port that accepts and never answers (a dashboard, a web server) hung the command for good; one that sends
    other bytes made Dask allocate an exabyte 'frame', reported as out of memory."""
    import socket
    import threading
    import time

    distributed = pytest.importorskip("distributed")
    from graphinterp.common.parallel import ParallelError, _connect

    def serve(greeting):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(4)

        def accept():
            held = []
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                if greeting:
                    conn.sendall(greeting)
                held.append(conn)

        threading.Thread(target=accept, daemon=True).start()
        return server, f"tcp://127.0.0.1:{server.getsockname()[1]}"

    silent, address = serve(b"")
    t0 = time.perf_counter()
    with pytest.raises(ParallelError, match="no Dask handshake within 2 s"):
        _connect(distributed.Client, address, seconds=2.0)
    assert time.perf_counter() - t0 < 5
    silent.close()
    chatty, address = serve(b"SSH-2.0-OpenSSH_9.6\r\n" * 4)
    with pytest.raises(ParallelError, match="cannot reach the Dask scheduler"):
        _connect(distributed.Client, address, seconds=20.0)
    chatty.close()


def test_circuits_takes_a_scheduler_and_passes_it_on(monkeypatch, tmp_path):
    """circuits had --jobs but no --scheduler (and ignored the environment variable)."""
    import graphinterp
    from graphinterp import SCHEDULER_ENV

    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise graphinterp.DataError("stop here")

    monkeypatch.setattr(graphinterp, "extract_circuits", record)
    ckpt = tmp_path / "m.pt"
    assert _run(["train", "--epochs", "0", "--out", str(ckpt), "-q", "--device", "cpu"]).exit_code == 0
    _run(["circuits", str(ckpt), "--labels", "0", "--scheduler", "tcp://10.0.0.5:8786"])
    assert seen["scheduler"] == "tcp://10.0.0.5:8786"
    monkeypatch.setenv(SCHEDULER_ENV, "tcp://10.0.0.6:8786")
    seen.clear()
    _run(["circuits", str(ckpt), "--labels", "0"])
    assert seen["scheduler"] == "tcp://10.0.0.6:8786"


def test_cli_usage_errors(tmp_path):
    assert _run(["benchmark", "--out", str(tmp_path)]).exit_code == 2
    result = _run(["benchmark", "--arch", "resnet18", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "pairs" in result.output
    help_text = _run(["benchmark", "--help"]).output
    assert "--significance-k" in help_text and "--random-arch" in help_text


def test_model_wide_curve_is_mass_weighted(two_checkpoints):
    report = run_benchmark([ModelSource(path=str(two_checkpoints[1]))], [2, 3], significance_k=None, n_init=2)
    model = report.models[0]
    E, R = model.curve([2, 3])
    mass = np.array([lb.mass for lb in model.layers])
    for k in (2, 3):
        assert E[k] == pytest.approx((mass * [lb.scores[k]["E"] for lb in model.layers]).sum() / mass.sum())
        assert R[k] == pytest.approx((mass * [lb.scores[k]["E_random"] for lb in model.layers]).sum() / mass.sum())


def test_layer_scores_match_a_dense_reference():
    W = np.random.default_rng(0).normal(size=(6, 9))  # torch layout (out=6, in=9)
    graph = LayeredGraph.from_state_dict({"fc.weight": torch.as_tensor(W)})
    (lb,), _ = benchmark_graph(graph, [2, 3], significance_k=None, n_init=2)
    assert lb.mass == pytest.approx((W ** 2).sum()) and lb.shape == (9, 6)
    for k in (2, 3):
        rows, cols = lb.labels[k]  # rows: the 9 inputs, cols: the 6 outputs
        inside = sum(W[j, i] ** 2 for i in range(9) for j in range(6) if rows[i] == cols[j])
        E_rand = sum((rows == c).mean() * (cols == c).mean() for c in range(k))
        s = lb.scores[k]
        assert s["E"] == pytest.approx(inside / (W ** 2).sum())
        assert s["E_random"] == pytest.approx(E_rand)
        assert s["score"] == pytest.approx((s["E"] - E_rand) / (1 - E_rand))
        assert s["sizes"] == [np.bincount(rows, minlength=k).tolist(), np.bincount(cols, minlength=k).tolist()]
        assert [s["row_sizes"], s["col_sizes"]] == s["sizes"]


def test_layers_are_clustered_in_their_own_precision(monkeypatch):
    """A float32 layer is clustered in float32 (as ``analyze`` / ``cluster_layers`` cluster it), the
    observed layer and its shuffled copies alike; a float64 one in float64. E is reported in float64."""
    import graphinterp.clustering.significance as significance
    import graphinterp.reports.benchmark_layers as benchmark_layers
    from graphinterp.clustering.bsgc_batch import fit_batch, fit_k_range

    seen = []
    monkeypatch.setattr(benchmark_layers, "fit_k_range",
                        lambda A, *a, **kw: seen.append(("k", A.dtype)) or fit_k_range(A, *a, **kw))
    monkeypatch.setattr(significance, "fit_batch",
                        lambda As, *a, **kw: seen.append(("null", As.dtype)) or fit_batch(As, *a, **kw))
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        seen.clear()
        graph = LayeredGraph.from_module(torch.nn.Sequential(torch.nn.Linear(110, 100, bias=False)).to(dtype))
        layer = graph[graph.layer_names[0]]
        (lb,), _ = benchmark_graph(graph, [3], significance_k=3, n_shuffles=3, n_init=2, random_state=0)
        assert seen == [("k", dtype), ("null", dtype)]
        rng = np.random.RandomState([0, 0])  # the layer's seed: [random_state, its index]
        fit = fit_k_range(layer.magnitude(), [3], n_init=2, random_state=int(rng.randint(2**31 - 1)))[3]
        np.testing.assert_array_equal(lb.labels[3][0], fit.row_labels_)
        np.testing.assert_array_equal(lb.labels[3][1], fit.column_labels_)
        sq = layer.magnitude().double().square()
        assert lb.scores[3]["E"] == float(clusterability(sq, *lb.labels[3]))
        assert lb.significance.E.observed == pytest.approx(lb.scores[3]["E"], rel=1e-12, abs=0)  # float64 there too


def test_many_layers_are_split_over_several_figures(tmp_path):
    from graphinterp.reports.benchmark_report import write_report

    gen = torch.Generator().manual_seed(0)
    state = {f"block{i}.fc.weight": torch.randn(6, 6, generator=gen) for i in range(12)}
    path = tmp_path / "deep.pt"
    torch.save(state, path)
    report = run_benchmark([ModelSource(path=str(path))], [2], significance_k=2, n_shuffles=2, n_init=1)
    written = write_report(report, tmp_path / "out", formats=("png",))
    assert {"deep_layers_1.png", "deep_layers_2.png", "deep_significance.png"} <= set(written)
    assert "deep_layers.png" not in written


def test_the_significance_figure_shows_the_score_the_table_leads_with(two_checkpoints, tmp_path, monkeypatch):
    """It drew raw E, whose z (+116 on the MNIST MLP's fc1) contradicted the table's score z (-77, p = 1)."""
    import graphinterp.reports.viz as viz
    from graphinterp.reports.benchmark_report import write_report

    report = run_benchmark([ModelSource(str(p)) for p in two_checkpoints], [4], significance_k=4, n_shuffles=3,
                           n_init=2, random_state=0)
    drawn = []
    real = viz.plot_significance
    monkeypatch.setattr(viz, "plot_significance", lambda obs, null, **kw: drawn.append((obs, kw)) or real(obs, null, **kw))
    write_report(report, tmp_path / "rep")
    assert len(drawn) == 2 and all("score" in kw["xlabel"] and "score" in kw["title"] for _, kw in drawn)
    for m, (obs, _) in zip(report.models, drawn):
        assert obs == {lb.layer: lb.significance.score.observed for lb in m.layers if lb.significance is not None}


def test_run_pretrained_reinitialises_normalisation_layers_too(tmp_path):
    """benchmarks/run_pretrained.py's re-initialised copies: BatchNorm reset to gain 1, shift 0, mean 0, variance
    1 (kept trained statistics folded trained per-channel scales into the 'untrained' convolutions), weights and
    biases in PyTorch's default range."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_pretrained", Path(__file__).parents[1] / "benchmarks" / "run_pretrained.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    with torch.no_grad():
        net[1].weight.fill_(3.0), net[1].bias.fill_(2.0), net[1].running_mean.fill_(5.0), net[1].running_var.fill_(9.0)
        net[0].weight.fill_(7.0), net[3].bias.fill_(7.0)
    path = tmp_path / "m.pt"
    torch.save(net.state_dict(), path)
    fresh = torch.load(script.reinitialised(path, tmp_path, seed=0), weights_only=True)
    assert set(fresh) == set(net.state_dict())
    assert torch.equal(fresh["1.weight"], torch.ones(8)) and torch.equal(fresh["1.bias"], torch.zeros(8))
    assert torch.equal(fresh["1.running_mean"], torch.zeros(8)) and torch.equal(fresh["1.running_var"], torch.ones(8))
    assert int(fresh["1.num_batches_tracked"]) == 0
    assert fresh["0.weight"].abs().max() <= 1 / 27 ** 0.5 and fresh["0.bias"].abs().max() <= 1 / 27 ** 0.5
    assert fresh["3.weight"].abs().max() <= 1 / 8 ** 0.5 and fresh["3.bias"].abs().max() <= 1 / 8 ** 0.5
    assert float(fresh["0.weight"].std()) > 0


def test_layers_with_folded_normalisation_get_a_note_that_the_shuffle_test_is_conservative(tmp_path, two_checkpoints):
    """Folded BatchNorm gives a layer per-channel scales, which the shuffles do not keep: the report says so for the
    tested layers that have one, and not for a model without normalisation, nor for an untrained BatchNorm (it scales
    every channel alike, and a shuffle keeps a uniform scale)."""
    from graphinterp.sources.cifar_resnet import cifar_resnet

    torch.manual_seed(0)
    net = cifar_resnet(depth=8)
    untrained = tmp_path / "untrained.th"
    torch.save(net.state_dict(), untrained)
    fresh = run_benchmark([ModelSource(path=str(untrained))], [4], significance_k=4, n_shuffles=2, n_init=1)
    assert not any("conservative" in n for n in fresh.models[0].notes)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # statistics as training leaves them: a variance per channel
                m.running_var.uniform_(0.2, 5.0)
    path = tmp_path / "resnet8.th"
    torch.save(net.state_dict(), path)
    report = run_benchmark([ModelSource(path=str(path)), ModelSource(path=str(two_checkpoints[1]))], [4],
                           significance_k=4, n_shuffles=2, n_init=1)
    resnet, mlp = report.models
    tested = [lb for lb in resnet.layers if lb.significance is not None]
    convs = [lb for lb in tested if lb.kind == "conv2d"]  # each followed by a BatchNorm; the Linear head is not
    note = [n for n in resnet.notes if "conservative" in n]
    assert 0 < len(convs) < len(tested) and len(note) == 1
    assert note[0].startswith(f"{len(convs)} of {len(tested)} shuffle-tested layers")
    assert not any("conservative" in n for n in mlp.notes)
    assert "conservative" in format_report(report)
    quiet = run_benchmark([ModelSource(path=str(path))], [4], significance_k=4, n_shuffles=0)
    assert not any("conservative" in n for n in quiet.models[0].notes)  # no shuffle test, no note


def test_a_layer_that_fits_only_the_significance_k_is_still_tested():
    """With --significance-k below every --k, a layer only that k fits was dropped, though --help says the
    significance k need not be among --k."""
    torch.manual_seed(0)
    g = LayeredGraph.from_module(torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6)))
    res, skipped = benchmark_graph(g, [4], significance_k=2, n_shuffles=3, n_init=2)
    first = next(r for r in res if r.layer == "0")
    assert skipped == {} and first.scores == {} and 4 in first.skipped_k
    assert first.significance is not None and first.significance.k == 2
    res, skipped = benchmark_graph(g, [4], significance_k=2, n_shuffles=0)  # no test: the layer is left out
    assert [r.layer for r in res] == ["2"] and "0" in skipped


def test_unit_norm_benchmarks_the_rescaled_chain_and_says_which_models_were_rescaled(tmp_path, two_checkpoints):
    """--unit-norm (Filan et al.): a chain is clustered on its rescaled weights (each layer's E is BSGC's on them),
    a model with residual streams as it is, each with a note; the settings record it."""
    from graphinterp import unit_norm_rescaled
    from graphinterp.sources.cifar_resnet import cifar_resnet

    torch.manual_seed(0)
    resnet = tmp_path / "resnet8.th"
    torch.save(cifar_resnet(depth=8).state_dict(), resnet)
    sources = [ModelSource(path=str(two_checkpoints[0])), ModelSource(path=str(resnet))]
    plain = run_benchmark(sources, [3], significance_k=None, n_init=2)
    scaled = run_benchmark(sources, [3], significance_k=None, n_init=2, unit_norm=True)
    assert scaled.settings["unit_norm"] and not plain.settings["unit_norm"]
    mlp_notes, resnet_notes = scaled.models[0].notes, scaled.models[1].notes
    assert any(n.startswith("weights rescaled as Filan et al.") for n in mlp_notes)
    assert any(n.startswith("weights not rescaled") and "residual streams" in n for n in resnet_notes)
    assert not any("rescaled" in n for m in plain.models for n in m.notes)
    graph = unit_norm_rescaled(load_source(sources[0], random_state=0)[0])
    expected, _ = benchmark_graph(graph, [3], significance_k=None, n_init=2, random_state=0)
    assert [lb.scores[3]["E"] for lb in scaled.models[0].layers] == [lb.scores[3]["E"] for lb in expected]
    assert [lb.scores[3]["E"] for lb in scaled.models[0].layers] != [lb.scores[3]["E"] for lb in plain.models[0].layers]
    assert [lb.scores[3]["E"] for lb in scaled.models[1].layers] == [lb.scores[3]["E"] for lb in plain.models[1].layers]


def test_the_unit_norm_flag_reaches_the_report(two_checkpoints, tmp_path):
    res = _run(["benchmark", str(two_checkpoints[0]), "--k", "3", "--shuffles", "0", "--unit-norm", "--json",
                "--out", str(tmp_path / "report"), *FAST])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["settings"]["unit_norm"] is True
    assert any(n.startswith("weights rescaled as Filan et al.") for n in out["models"][0]["notes"])


def test_drop_pieces_needs_the_network_test_and_reaches_it(two_checkpoints, tmp_path):
    res = _run(["benchmark", str(two_checkpoints[0]), "--k", "3", "--drop-pieces", *FAST])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and "--drop-pieces applies to the whole-network test: add --network" in lines[-1]
    res = _run(["benchmark", str(two_checkpoints[0]), "--k", "3", "--significance-k", "3", "--shuffles", "2",
                "--network", "--drop-pieces", "--json", "--out", str(tmp_path / "r"), *FAST])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["settings"]["drop_pieces"] is True


def test_a_model_whose_last_layer_holds_nearly_all_the_squared_weight_gets_a_note(tmp_path):
    torch.manual_seed(9)
    net = torch.nn.Sequential(torch.nn.Linear(12, 10, bias=False), torch.nn.ReLU(), torch.nn.Linear(10, 6, bias=False))
    path = tmp_path / "m.pt"
    torch.save(net.state_dict(), path)
    assert not any("of the squared weight" in n for n in run_benchmark([ModelSource(path=str(path))], [2],
                                                                        significance_k=None, n_init=2).models[0].notes)
    with torch.no_grad():
        net[2].weight.mul_(20.0)
    torch.save(net.state_dict(), path)
    notes = run_benchmark([ModelSource(path=str(path))], [2], significance_k=None, n_init=2).models[0].notes
    assert any(n.startswith("layer 2 holds") and "the mass-weighted E is mostly that layer's E" in n for n in notes)


def test_models_of_one_file_name_are_told_apart_in_the_text_too(tmp_path):
    """Two files named model.pt become model and model-2 (figures, CSV); the text says which file each is."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    paths = [_checkpoint(a / "model.pt", 0, False), _checkpoint(b / "model.pt", 1, True)]
    res = _run(["benchmark", *map(str, paths), "--k", "2", "--shuffles", "0", "--no-figures", "-q",
                "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if "told apart" in l)
    first, second = line.split("; ")
    assert first.startswith("model is ") and str(paths[0]) in first, line
    assert second.startswith("model-2 is ") and str(paths[1]) in second, line
    # a file named model-2.pt beside them: the names stay unique (two rows were both "model-2") and the line
    # names only the two of one file name; mlp.pt and mlp-2.pt are two names, no line
    c = tmp_path / "c"
    c.mkdir()
    third = _checkpoint(c / "model-2.pt", 2, False)
    res = _run(["benchmark", *map(str, paths), str(third), "--k", "2", "--shuffles", "0", "--no-figures", "-q",
                "--json", "--out", str(tmp_path / "r3")])
    assert [m["name"] for m in json.loads(res.stdout)["models"]] == ["model", "model-3", "model-2"]
    res = _run(["benchmark", *map(str, paths), str(third), "--k", "2", "--shuffles", "0", "--no-figures", "-q",
                "--out", str(tmp_path / "r4")])
    line = next(l for l in res.output.splitlines() if "told apart" in l)
    assert line.startswith("model is ") and "model-3 is " in line and str(third) not in line, line
    res = _run(["benchmark", str(paths[0]), str(third), "--k", "2",
                "--shuffles", "0", "--no-figures", "-q", "--out", str(tmp_path / "r2")])
    assert res.exit_code == 0 and "told apart" not in res.output, res.output


def test_table_says_its_p_values_are_not_corrected_for_the_layers_tested(tmp_path):
    path = tmp_path / "m.pt"
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6)).state_dict(), path)
    report = run_benchmark([ModelSource(path=str(path))], [2], significance_k=2, n_shuffles=3, n_init=2)
    text = format_report(report)
    assert "the 4 p-values (E and score of 2 layer(s)) are each uncorrected for the others" in text
    assert "0.05/4 = 0.0125 needs at least 79 shuffles (this run: 3)" in text
    report = run_benchmark([ModelSource(path=str(path))], [2], significance_k=2, n_shuffles=20, n_init=2)
    assert "with no structure at all about 0.2 of them would be <= 0.05 by chance" in format_report(report)  # 4 x 1/21


def test_the_shuffle_test_does_not_depend_on_the_k_benchmarked_beside_it(tmp_path):
    """The copies are lone fits (an SVD of rank k). The layer was taken from the k sweep's one SVD of rank max(k),
    or, with the tested k not benchmarked, clustered with one more draw of the seed that shifted the copies' seeds:
    on a layer above 96 nodes a side the observed E, the null and p changed with --k. Now the test is the same for
    every --k, the k columns stay one sweep (the same with or without the test), and where they differ from the
    test's observed values at its k a note says so."""
    path = tmp_path / "wide.pt"
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Linear(160, 130), torch.nn.ReLU(), torch.nn.Linear(130, 10)).state_dict(),
               path)
    tests, sweeps = [], {}
    for ks in ([4], [2, 3], [2, 3, 4], list(range(2, 11))):
        report = run_benchmark([ModelSource(path=str(path))], ks, significance_k=4, n_shuffles=2, n_init=2,
                               random_state=0)
        layer = report.models[0].layers[0]
        tests.append(layer.significance)
        sweeps[tuple(ks)] = layer.scores
        if ks == [4]:
            assert layer.scores[4]["E"] == layer.significance.E.observed  # the sweep is the lone fit at its top k
        if len(ks) == 9:
            assert "the shuffle test clusters each layer alone at k=4" in format_report(report)
    for t in tests[1:]:
        assert (t.E.observed, t.score.observed) == (tests[0].E.observed, tests[0].score.observed)
        assert np.array_equal(t.E.null, tests[0].E.null) and t.E.p_value == tests[0].E.p_value
    untested = run_benchmark([ModelSource(path=str(path))], list(range(2, 11)), significance_k=4, n_shuffles=0,
                             n_init=2, random_state=0).models[0].layers[0].scores
    assert untested == sweeps[tuple(range(2, 11))]  # the k columns do not depend on --shuffles


def test_a_null_that_reproduces_the_layer_is_said_to_tell_nothing(tmp_path):
    """--nonzero-only on an identity layer: every shuffle permutes equal weights over the same pattern, so each
    copy is the layer and the table read 1.000+-0.000, p 1.000 as if there were no structure; the same for the
    whole-network test. The note says the test cannot tell, in the text and the JSON (``no_spread`` explains z null)."""
    path = tmp_path / "eye.pt"
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    with torch.no_grad():
        for lin in (net[0], net[2]):
            lin.weight.copy_(torch.eye(8))
            lin.bias.zero_()
    torch.save(net.state_dict(), path)
    report = run_benchmark([ModelSource(path=str(path))], [4], significance_k=4, n_shuffles=3, n_init=2,
                           nonzero_only=True, network=True, random_state=0)
    text = format_report(report)
    assert text.count("tests cannot tell structure from its absence") == 3, text  # two layers, the network
    assert "the shuffles keep the pattern of zeros (--nonzero-only)" in text
    data = report.to_dict()
    sig = data["models"][0]["layers"][0]["significance"]
    assert sig["E"]["no_spread"] is True and sig["E"]["z"] is None and sig["notes"]
    assert any("cannot tell" in n for n in data["models"][0]["network"]["notes"])
    assert data["notes"] and "the 6 p-values (E and score of 2 layer(s), n-cut and E of 1 network(s))" in data["notes"][0]


def test_an_infinite_z_keeps_its_meaning_in_the_json(tmp_path):
    """All weights equal: the shuffles never vary, and the observed clustering differs from theirs or not; the
    JSON's z is null either way (strict JSON has no infinity), and ``no_spread`` says it is not undefined."""
    from graphinterp.clustering.shuffle_results import NullComparison

    below = NullComparison.from_samples(0.483, np.full(9, 0.55)).to_dict()
    assert below["z"] is None and below["no_spread"] is True and below["observed"] < below["null_mean"]
    spread = NullComparison.from_samples(0.483, np.array([0.5, 0.6])).to_dict()
    assert spread["no_spread"] is False and spread["z"] is not None


def test_a_model_that_fails_to_load_is_named_once(tmp_path):
    """"bad.pt: FAILED, not benchmarked: <dir>/bad.pt: <dir>/bad.pt: ...": the loader's message already names the
    file, and the report named it again."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    missing = tmp_path / "missing.pt"  # "model file not found: <path>; check the path": the path inside the message
    report = run_benchmark([ModelSource(path=str(bad)), ModelSource(path=str(missing))], [2], significance_k=None,
                           n_shuffles=0)
    for path, why in zip((bad, missing), report.failed.values()):
        assert why.count(str(path)) == 1, why
