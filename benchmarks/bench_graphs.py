"""Graphs of real architectures: time, peak memory, coverage, folding and clusterability per model.

For each model (torchvision architectures with random weights, built locally, and the shared
third-party CIFAR ResNet-20/56), every measurement runs in its own child process so that its peak
memory (``ru_maxrss``) is its own:

* ``graph``: build the model, then trace its graph (seconds for each; coverage; folded scales);
* ``analyze``: ``graphinterp analyze MODEL --k 4 --json`` end to end (wall time from process start,
  imports included, and peak memory), the command a user runs;
* ``benchmark`` (``--shuffles N``, default 20; 0 skips): ``graphinterp benchmark MODEL --k 4
  --shuffles N``: E and normalised score at k = 4 (mass-weighted over layers), the number of layers
  significantly more clusterable than their shuffles (score p < 0.05; "n/a" below 20 shuffles, where
  the smallest p a layer can reach, 1 / (N + 1), is above 0.05), wall time, peak memory.

Targets from the issue "Real architectures as faithful graphs" are printed beside the figures:
``analyze vit_b_16 --k 4`` <= 15 s, graphing resnet50 <= 5 s, ``analyze vgg11`` peak <= 2 GB. The
floor for graphing is building the model itself (its random initialisation), shown beside it.

    python benchmarks/bench_graphs.py                     # all models, 20 shuffles
    python benchmarks/bench_graphs.py --models resnet18,vgg11 --shuffles 0
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = Path(os.environ.get("GRAPHINTERP_PRETRAINED", ROOT.parent / "shared" / "pretrained"))
MODELS = ("resnet18", "resnet50", "vit_b_16", "vgg11", "resnet20 (shared)", "resnet56 (shared)")
SHARED_FILES = {"resnet20 (shared)": "resnet20-12fca82f.th", "resnet56 (shared)": "resnet56-4bfd9763.th"}
ALIASES = {"resnet20": "resnet20 (shared)", "resnet56": "resnet56 (shared)"}


def _source(name: str, pretrained: Path) -> str:
    """What ``graphinterp`` is given for a model: a torchvision name, or the shared file's path."""
    return str(pretrained / SHARED_FILES[name]) if name in SHARED_FILES else name
TARGETS = {("vit_b_16", "analyze_s"): 15.0, ("resnet50", "graph_s"): 5.0, ("vgg11", "analyze_peak_gb"): 2.0}


def _peak_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux


def child_graph(source: str) -> dict:
    """Build the model and trace its graph; seconds for each, coverage and folding."""
    from graphinterp.graph.load import model_graph, open_model

    t0 = time.perf_counter()
    opened = open_model(source)
    t1 = time.perf_counter()
    graph = model_graph(opened)
    t2 = time.perf_counter()
    cov = graph.coverage
    return {"build_s": t1 - t0, "graph_s": t2 - t1, "layers": len(graph), "coverage": cov.share,
            "covered": cov.covered, "total": cov.total, "folded": len(cov.folded), "unfolded": len(cov.unfolded),
            "missing": [f"{m.name} ({m.module_type}, {m.numel:,})" for m in cov.missing],
            "graph_peak_gb": _peak_gb()}


def child_cli(args) -> dict:
    """Run the graphinterp CLI in this process; wall time from process start and peak memory."""
    from graphinterp.cli.main import cli

    with tempfile.TemporaryDirectory() as out:  # the command's report files are not kept
        argv = [a.replace("{out}", out) for a in args]
        try:
            cli.main(argv, standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
    return {"peak_gb": _peak_gb()}


def _run_child(mode: str, payload) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", mode, json.dumps(payload)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} {payload} failed:\n{proc.stderr[-2000:]}")
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    result["wall_s"] = wall
    if mode != "graph":
        result["stdout"] = "\n".join(lines[:-1])
    return result


def _benchmark_summary(text: str) -> dict:
    report = json.loads(text)
    layers = report["models"][0]["layers"]
    mass = sum(layer["mass"] for layer in layers if "4" in layer["scores"])
    E = sum(layer["mass"] * layer["scores"]["4"]["E"] for layer in layers if "4" in layer["scores"]) / mass
    score = sum(layer["mass"] * layer["scores"]["4"]["score"] for layer in layers if "4" in layer["scores"]) / mass
    tested = [layer["significance"] for layer in layers if layer.get("significance")]
    if tested and min(s["min_p_value"] for s in tested) >= 0.05:  # no layer could reach p < 0.05
        return {"E": E, "score": score, "significant": f"n/a ({len(tested)} tested)"}
    significant = sum(1 for s in tested if s["score"]["p_value"] < 0.05)
    return {"E": E, "score": score, "significant": f"{significant}/{len(tested)}"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated names from: " + ", ".join(MODELS) + " (resnet20 and resnet56 also work)")
    parser.add_argument("--shuffles", type=int, default=20,
                        help="shuffles per layer for `benchmark` (default 20; 0: skip; below 20 no layer can reach "
                             "p < 0.05, and the significant-layers column says n/a)")
    parser.add_argument("--pretrained-dir", type=Path, default=PRETRAINED,
                        help="folder of the shared CIFAR ResNets (default: $GRAPHINTERP_PRETRAINED, else "
                             "../shared/pretrained beside the checkout); absent files are skipped with a note")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, payload = args.child[0], json.loads(args.child[1])
        result = child_graph(payload) if mode == "graph" else child_cli(payload)
        print(json.dumps(result))
        return
    if args.shuffles < 0 or args.shuffles == 1:  # `graphinterp benchmark` refuses them, after the model was measured
        parser.error(f"--shuffles {args.shuffles}: give 2 or more (a null of 1 shuffle has no spread), or 0 to skip")
    names = [ALIASES.get(n.strip(), n.strip()) for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    absent = [n for n in names if n in SHARED_FILES and not (args.pretrained_dir / SHARED_FILES[n]).is_file()]
    for n in absent:
        print(f"note: skipping {n}: {args.pretrained_dir / SHARED_FILES[n]} not found (pass --pretrained-dir)")
    names = [n for n in names if n not in absent]
    if not names:
        parser.error("no model left to measure")
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name in names:
        source = _source(name, args.pretrained_dir)
        g = _run_child("graph", source)
        a = _run_child("analyze", ["analyze", source, "--k", "4", "--json"])
        row = {"model": name, **{k: g[k] for k in ("build_s", "graph_s", "coverage", "folded", "unfolded", "missing")},
               "analyze_s": a["wall_s"], "analyze_peak_gb": a["peak_gb"]}
        if args.shuffles:
            b = _run_child("benchmark", ["benchmark", source, "--k", "4", "--shuffles", str(args.shuffles),
                                         "--no-figures", "-q", "--json", "--out", "{out}"])
            row.update(_benchmark_summary(b["stdout"]), benchmark_s=b["wall_s"], benchmark_peak_gb=b["peak_gb"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    head = ("| model | coverage | folded | build s (floor) | graph s | analyze k=4 s | analyze peak GB | E k=4 | "
            "score | significant layers | benchmark s | benchmark peak GB |")
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(f"| {r['model']} | {r['coverage']:.1%} | {r['folded']} | {r['build_s']:.2f} | {r['graph_s']:.2f} | "
              f"{r['analyze_s']:.1f} | {r['analyze_peak_gb']:.2f} | {r.get('E', float('nan')):.3f} | "
              f"{r.get('score', float('nan')):.3f} | {r.get('significant', '-')} | {r.get('benchmark_s', float('nan')):.1f} | "
              f"{r.get('benchmark_peak_gb', float('nan')):.2f} |")
    for r in rows:
        if r["missing"] or r["unfolded"]:
            print(f"{r['model']}: not covered {r['missing'] or 'nothing'}; {r['unfolded']} normalisation(s) not folded")
    print()
    for (model, key), target in TARGETS.items():
        hit = [r for r in rows if r["model"] == model]
        if hit:
            value = hit[0][key]
            print(f"target {model} {key} <= {target}: measured {value:.2f} -> {'met' if value <= target else 'MISSED'}")


if __name__ == "__main__":
    main()
