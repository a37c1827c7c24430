"""Reproduce the paper's results: Figures 1-7 and a report.md with the paper's numbers beside ours.

For MNIST (always) and CIFAR-10 (with ``--cnn``; the JPEG copy in ``../shared/datasets``):

1. train the unclustered baseline (lambda = 0) and the modular model (lambda = 20, k = 4, one
   warm-up epoch then ten with the enmeshment loss; batch 64, Adam, lr 1e-3: Table 1), both
   saved as graphinterp checkpoints;
2. clusterability (Figure 1/4): E of fc2 against k with BSGC, baseline vs modular, with the
   random-partition line; the baseline also with Algorithm 1 verbatim (independent KMeans); every
   layer of both models benchmarked with a shuffle test at k = 4 (``benchmark/``);
3. ablation (Figure 2/5): class-wise accuracy with each cluster ON and OFF, both models;
4. circuits (Figure 3/6): per-label ECS of both models with both criteria, graphinterp's
   (``mode="graphinterp"``) and the paper's authors' (``mode="authors"``: weight by weight, Linear
   layers only, last layer first, on the label's own images), with the mean relative change;
5. Figure 7: the clustered fc2 of the modular model (and, for contrast, the baseline's).

With ``--seeds N`` (or a list such as ``0,3,5-7``) all of this runs for N baseline/modular pairs
(``--out/seed<s>/``; figures 1-7 and the full benchmark for the first seed only) and report.md gives
every comparison as mean, standard deviation and 95% t interval over seeds, with the number of seeds
in which its sign holds, per-label ECS over seeds, and ``seeds.png``: the per-seed points.
Training runs under ``torch.use_deterministic_algorithms`` (same seed, command and thread count:
bit-identical models). The wall time of each part is printed.

    python benchmarks/reproduce_paper.py --data-dir ../shared/datasets --out report/
    python benchmarks/reproduce_paper.py --cnn --out report/          # also CIFAR-10 (slow on a CPU)
    python benchmarks/reproduce_paper.py --seeds 5 --jobs 2 --out report/   # MNIST over 5 seeds
    python benchmarks/reproduce_paper.py --cnn --no-mnist --seeds 3 --resume --out report/
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _shared_data when run as a script

from graphinterp import atomic_write  # noqa: E402
from graphinterp.interpret.ablate import ablation_matrix  # noqa: E402
from graphinterp.reports.benchmark_report import write_report  # noqa: E402
from graphinterp.reports.benchmarking import ModelSource, benchmark_graph, run_benchmark  # noqa: E402
from graphinterp.interpret.circuits import MODES, Schedule, compare_circuits  # noqa: E402
from graphinterp.data.datasets import load_dataset  # noqa: E402
from graphinterp.graph.layered import LayeredGraph  # noqa: E402
from graphinterp.common.seeds import deterministic, parse_seeds  # noqa: E402
from graphinterp.training.train import TrainConfig, train  # noqa: E402
from graphinterp.reports import viz  # noqa: E402

from _seed_report import MODE_NAMES, comparison_rows, label_rows, seed_figure, with_mode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"E_k2_unclustered": 0.6, "E_modular": 0.99, "ecs_more_unclustered": 0.6125}
TIMES: Dict[str, float] = {}
CPU_TIMES: Dict[str, float] = {}


@contextlib.contextmanager
def part(name: str):
    """Print and record the wall time of one part (and the process CPU time, which other jobs on a
    shared machine do not inflate)."""
    print(f"\n== {name}", flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    yield
    TIMES[name], CPU_TIMES[name] = time.perf_counter() - start, time.process_time() - cpu
    print(f"== {name}: {TIMES[name]:.1f} s wall, {CPU_TIMES[name]:.1f} s CPU", flush=True)


def figure(fig_fn, out: Path, stem: str, **kwargs) -> None:
    """Draw once, save as PNG and SVG."""
    fig = fig_fn(**kwargs)
    for suffix in ("png", "svg"):
        viz.save_figure(fig, out / f"{stem}.{suffix}")
    print(f"   wrote {stem}.png/.svg")


def run_dataset(args, dataset: str, model: str, data, out: Path, tag: str, seed: int, first: bool) -> dict:
    """All parts for one dataset and seed; returns the numbers for report.md. Figures, the E-vs-k
    curves over k = 2..10 and the benchmark of every layer only when ``first``."""
    res: dict = {"dataset": dataset, "model": model, "seed": seed}
    train_set, test_set = data
    tag_s = f"{tag} seed {seed}"
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, lam in (("unclustered", 0.0), ("modular", args.lam)):
        with part(f"{tag_s}: train {name} (lambda={lam:g})"), deterministic():
            cfg = TrainConfig(dataset=dataset, model=model, k=args.k, lam=lam, warmup_epochs=args.warmup_epochs,
                              epochs=args.epochs, seed=seed, device=args.device, quiet=args.quiet,
                              max_train=args.max_train)
            results[name] = train(cfg, train_data=train_set, test_data=test_set, checkpoint=out / f"{tag}_{name}.pt",
                                  resume=args.resume)
            h = results[name].history[-1]
            print(results[name].table())
            res[f"acc_{name}"] = h["test_acc"]
            res[f"E_train_{name}"] = h.get("E_refit", h.get("E"))
    graphs = {n: LayeredGraph.from_module(r.model.cpu()) for n, r in results.items()}
    layer = "fc2"
    res["layers"] = results["modular"].clustering.layer_names
    with part(f"{tag_s}: clusterability (Figure {'1' if tag == 'cifar10' else '4'})"):
        ks = list(range(2, 11)) if first else sorted({2, args.k})
        curves, bases = {}, {}
        for name, graph in graphs.items():
            (lb,), _ = benchmark_graph(graph, ks, layers=[layer], significance_k=args.k, n_shuffles=args.shuffles,
                                       random_state=seed, device="cpu")
            curves[f"{name} (BSGC)"] = {k: s["E"] for k, s in lb.scores.items()}
            bases[f"{name} (BSGC)"] = {k: s["E_random"] for k, s in lb.scores.items()}
            res[f"E_k2_{name}"], res[f"E_k4_{name}"] = lb.scores[2]["E"], lb.scores[args.k]["E"]
            res[f"score_k4_{name}"] = lb.scores[args.k]["score"]
            t = lb.significance
            res[f"sig_{name}"] = {"z_E": t.E.z, "p_E": t.E.p_value, "z_score": t.score.z, "p_score": t.score.p_value,
                                  "null_E": t.E.mean, "n": t.n_shuffles}
        (lb,), _ = benchmark_graph(graphs["unclustered"], ks, layers=[layer], significance_k=None,
                                   pairing="independent", random_state=seed, device="cpu")
        curves["unclustered (independent KMeans)"] = {k: s["E"] for k, s in lb.scores.items()}
        bases["unclustered (independent KMeans)"] = {k: s["E_random"] for k, s in lb.scores.items()}
        res["E_k2_unclustered_alg1"] = lb.scores[2]["E"]
        res["E_curves"] = curves
        if first:
            figure(viz.plot_clusterability_vs_k, out, f"fig{'1' if tag == 'cifar10' else '4'}_clusterability_{tag}",
                   curves=curves, baselines=bases,
                   title=f"{dataset.upper()} {model.upper()}, layer {layer}: clusterability against k")
            report = run_benchmark([ModelSource(path=str(out / f"{tag}_{n}.pt")) for n in results], ks,
                                   significance_k=args.k, n_shuffles=args.shuffles, random_state=seed,
                                   progress=not args.quiet)
            write_report(report, out / f"benchmark_{tag}")
    return _rest(args, res, results, graphs, test_set, out, tag, seed, first)


def _rest(args, res, results, graphs, test_set, out, tag, seed, first) -> dict:
    """Ablation, circuits (both criteria) and Figure 7 of one seed."""
    dataset, layer, tag_s = res["dataset"], "fc2", f"{tag} seed {seed}"
    with part(f"{tag_s}: ablation (Figure {'2' if tag == 'cifar10' else '5'})"):
        for name, r in results.items():
            ab = ablation_matrix(r.model, graphs[name], r.clustering, test_set, device=args.device)
            if first:
                figure(viz.plot_ablation, out, f"fig{'2' if tag == 'cifar10' else '5'}_ablation_{tag}_{name}",
                       on=ab.on, off=ab.off, full=ab.full, class_names=ab.classes,
                       title=f"{dataset.upper()} {name}: class-wise accuracy, clusters ON / OFF ({', '.join(ab.levels)})")
            res[f"ablation_{name}"] = ab.overall()
    for mode in args.modes:
        with part(f"{tag_s}: circuits, {MODE_NAMES[mode]} (Figure {'3' if tag == 'cifar10' else '6'})"):
            cmp = compare_circuits(results["unclustered"].model, results["modular"].model, test_set,
                                   names=("unclustered", "modular"), device=args.device, progress=not args.quiet,
                                   random_state=seed, mode=mode, n_jobs=args.jobs, **circuit_settings(args, mode, dataset))
            if first:
                figure(viz.plot_ecs_comparison, out, f"fig{'3' if tag == 'cifar10' else '6'}_ecs_{tag}_{mode}",
                       ecs_a=cmp.ecs_a, ecs_b=cmp.ecs_b, labels=cmp.label_names, names=("unclustered", "modular"),
                       title=f"{dataset.upper()}: effective circuit size per label ({MODE_NAMES[mode]})")
            d = cmp.to_dict()
            d["converged_a"] = [cmp.circuits_a[c].converged for c in cmp.labels]
            d["converged_b"] = [cmp.circuits_b[c].converged for c in cmp.labels]
            d["seconds"] = [cmp.circuits_a[c].seconds + cmp.circuits_b[c].seconds for c in cmp.labels]
            for side, cs in (("a", cmp.circuits_a), ("b", cmp.circuits_b)):
                d[f"heldout_{side}"] = [None if cs[c].heldout is None else cs[c].heldout.to_dict() for c in cmp.labels]
            res[f"ecs_{mode}"] = d
            print("   label  ECS unclustered  ECS modular  change")
            for i, lab in enumerate(cmp.label_names):
                print(f"   {lab:<6} {cmp.ecs_a[i]:.4f}           {cmp.ecs_b[i]:.4f}       {cmp.relative_change[i]:+.1%}")
            print(f"   unclustered circuits hold {cmp.a_over_b:+.1%} more weights on average "
                  f"(modular vs unclustered: {cmp.mean_relative_change:+.1%}); "
                  f"{sum(not c for c in d['converged_a'] + d['converged_b'])} of 20 searches stopped at the budget")
            print(f"   {heldout_summary([d])}")
    if not first:
        return res
    with part(f"{tag_s}: Figure 7"):
        for name, r in results.items():
            rows, cols = r.clustering.labels(layer) if layer in r.clustering.layer_names else (None, None)
            g = graphs[name]
            figure(viz.plot_clustered_layer, out, f"fig7_{layer}_{tag}_{name}",
                   weight=g[layer].signed().double().numpy(), row_labels=rows, col_labels=cols,
                   in_name=g.layer_names[g.index(layer) - 1], out_name=layer, kind="both",
                   title=f"{dataset.upper()} {name}: layer {layer} ordered by its {r.clustering.k} clusters")
    return res


#: Evaluation budget of one search with graphinterp's criterion when --max-evals is not given: a safety cap,
#: well above what the searches need (MNIST: at most about 25,000; CIFAR-10, whose CNN has five times the
#: edges: up to about 110,000), so that every search ends at its local minimum.
DEFAULT_MAX_EVALS = {"mnist": 30_000, "cifar10": 200_000}


def circuit_settings(args, mode: str = "graphinterp", dataset: Optional[str] = None) -> dict:
    """Settings passed to compare_circuits; None keeps graphinterp.interpret.circuits' own defaults."""
    out = {}
    if args.circuit_examples is not None:
        out["max_examples"] = args.circuit_examples
    budget = args.max_evals if args.max_evals is not None else DEFAULT_MAX_EVALS.get(dataset)
    if budget is not None and mode == "graphinterp":
        out["schedule"] = Schedule(max_evals=budget)
    return out


def heldout_summary(ecs_runs: List[dict]) -> str:
    """How many circuits (both models, every run) meet their criterion on test images their search never saw."""
    parts = []
    for side, name in (("a", "unclustered"), ("b", "modular")):
        held = [h for d in ecs_runs for h in d.get(f"heldout_{side}", [])]
        checked = [h for h in held if h is not None]
        if not checked:
            parts.append(f"{name} not checked" + (f" ({len(held)} labels had no test image left out)" if held else ""))
            continue
        parts.append(f"{name} {sum(h['within_tolerance'] for h in checked)} of {len(checked)} meet their criterion "
                     f"({sum(h['clearly_outside'] for h in checked)} miss it by more than sampling noise; held-out "
                     f"accuracy circuit/full {np.mean([h['accuracy'] for h in checked]):.3f}/"
                     f"{np.mean([h['full_accuracy'] for h in checked]):.3f})")
    return "circuits on held-out test images (the label's images the search left out): " + "; ".join(parts)


def fmt(x, pct=False):
    if x is None:
        return "-"
    return f"{x:+.1%}" if pct else f"{x:.3f}"


CRITERIA = {"graphinterp": "graphinterp's: one-vs-rest task within tolerance, all layers, local minimum",
            "authors": "the authors': weight by weight, Linear layers only, last layer first, on the label's own test "
                       "images, loss never above the full model's"}


def write_markdown(out: Path, results: Dict[str, list], args) -> str:
    seeds = args.seed_list
    lines = ["# Reproduction of \"Training Neural Networks for Modularity Aids Interpretability\"", "",
             f"Settings (Table 1): batch 64, Adam, lr 1e-3, lambda {args.lam:g}, k {args.k}, "
             f"{args.warmup_epochs} warm-up + {args.epochs} epochs"
             + (f", {args.max_train} training images" if args.max_train else "") + f"; seeds {seeds}. "
             f"Clustered layer: fc2 (the paper's Figure 7). Shuffle test: {args.shuffles} shuffles of fc2 at "
             f"k = {args.k}. Circuits: graphinterp.interpret.circuits defaults except "
             + "; ".join(f"{tag}: {circuit_settings(args, dataset=tag)}" for tag in results)
             + (", both criteria (" if len(args.modes) > 1 else ", one criterion (")
             + "; ".join(CRITERIA[m] for m in args.modes) + "). Each row: mean ± standard deviation [95% t interval] "
             "over seeds, and in how many seeds the sign holds where a sign is expected.", ""]
    for tag, runs in results.items():
        lines += [f"## {tag.upper()} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", "", "| quantity | paper | ours over seeds | sign holds |",
                  "|---|---|---|---|"]
        for name, paper, summ, fmt_kw, sign in comparison_rows(runs, args.k, args.modes):
            held = f"{summ.sign_holds(sign)} of {summ.n}" if sign else "-"
            lines.append(f"| {name} | {paper} | {summ.format(**fmt_kw)} | {held} |")
        for mode in args.modes:
            key, runs_m = f"ecs_{mode}", with_mode(runs, mode)
            if not runs_m:
                continue
            stopped = sum(not c for r in runs_m for c in r[key]["converged_a"] + r[key]["converged_b"])
            total = sum(len(r[key]["converged_a"]) * 2 for r in runs_m)
            seconds = sum(sum(r[key]["seconds"]) for r in runs_m)
            lines += ["", f"Per-label ECS, {MODE_NAMES[mode]}, {len(runs_m)} seed{'s' if len(runs_m) > 1 else ''} ({stopped} of {total} searches stopped at their "
                          f"evaluation budget; {seconds:.0f} s of search in all):", ""] + label_rows(runs, mode)
            lines += ["", heldout_summary([r[key] for r in runs_m]) + "."]
        lines.append("")
    lines += ["## Time", "", f"{torch.get_num_threads()} torch threads, circuits on {args.jobs} process(es). CPU "
              "time is the process's own (all threads; worker processes not included); wall time also counts waiting "
              f"for other jobs on a shared machine. Load average at the start: {args.load_start}, at the end: "
              f"{os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs.", "",
              "| part | wall (s) | CPU (s) |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {CPU_TIMES[k]:.1f} |" if k in CPU_TIMES else f"| {k} | {v:.1f} | - |"
              for k, v in TIMES.items()]
    lines += ["", "## Figures", "", "- `seeds.png`: per-seed values of the main comparisons"]
    lines += [f"- `{p.relative_to(out)}`" for p in sorted(out.glob("seed*/fig*.png"))]
    text = "\n".join(lines) + "\n"
    with atomic_write(out / "report.md", "w") as fh:
        fh.write(text)
    with atomic_write(out / "results.json", "w") as fh:
        json.dump({"results": results, "times": TIMES, "cpu_times": CPU_TIMES, "settings": _settings(args)}, fh,
                  indent=2, default=float)
    return text


def _settings(args) -> dict:
    """What must agree between runs whose results are merged (seeds, modes and jobs may differ)."""
    return {k: getattr(args, k) for k in ("k", "lam", "warmup_epochs", "epochs", "max_train", "shuffles",
                                         "circuit_examples", "max_evals")}


def merge_runs(args, folders) -> Dict[str, list]:
    """The per-seed results of several runs (their ``results.json``) as one, for one report over all their seeds.

    A seed found in more than one run is merged: each quantity (e.g. one circuit criterion's ECS)
    comes from the first run that has it, so criteria computed by separate runs on the same
    checkpoints (``--resume``) join into one row per seed. Runs whose settings differ from this
    command's are refused (their results would not be comparable).
    """
    results: Dict[str, list] = {}
    for folder in folders:
        path = Path(folder) / "results.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            sys.exit(f"error: --merge {folder}: cannot read {path} ({err})")
        theirs = data.get("settings")
        if theirs is not None and theirs != _settings(args):
            sys.exit(f"error: --merge {folder}: its settings {theirs} differ from this command's {_settings(args)}")
        for tag, runs in data["results"].items():
            have = {r["seed"]: r for r in results.setdefault(tag, [])}
            for r in runs:
                if r["seed"] in have:
                    have[r["seed"]].update({k: v for k, v in r.items() if k not in have[r["seed"]]})
                else:
                    results[tag].append(dict(r))
        for key, v in data.get("times", {}).items():
            TIMES[f"{key} ({Path(folder).name})"] = v
        for key, v in data.get("cpu_times", {}).items():
            CPU_TIMES[f"{key} ({Path(folder).name})"] = v
    for runs in results.values():
        runs.sort(key=lambda r: r["seed"])
    args.seed_list = sorted({r["seed"] for runs in results.values() for r in runs})
    args.modes = [m for m in MODES if any(f"ecs_{m}" in r for runs in results.values() for r in runs)]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--out", type=Path, default=Path("report"))
    parser.add_argument("--cnn", action="store_true", help="also the CNN on CIFAR-10 (JPEG copy)")
    parser.add_argument("--no-mnist", action="store_true", help="skip the MNIST part")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--lam", type=float, default=20.0)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-train", type=int, default=None, help="seeded subset of the training images")
    parser.add_argument("--shuffles", type=int, default=20)
    parser.add_argument("--circuit-examples", type=int, default=None,
                        help="examples of each label (and as many others) in its circuit's task "
                             "(default: graphinterp.interpret.circuits' default)")
    parser.add_argument("--max-evals", type=int, default=None,
                        help="evaluation budget of each circuit search with graphinterp's criterion, a safety cap "
                             "(default 30,000 on MNIST, 200,000 on CIFAR-10; Schedule's own default, 10,000, stops "
                             "about one MNIST search in five before its local minimum; the report counts those "
                             "that stop)")
    parser.add_argument("--seed", type=int, default=0, help="first seed when --seeds is a count")
    parser.add_argument("--seeds", default="1", help="number of seeds (from --seed) or a list such as 0,3,5-7")
    parser.add_argument("--modes", default="graphinterp,authors",
                        help="circuit criteria, comma-separated: graphinterp (default search), authors (the paper's code)")
    parser.add_argument("--jobs", type=int, default=1, help="circuit searches of the labels on this many processes")
    parser.add_argument("--resume", action="store_true",
                        help="reuse (or continue) the checkpoints already in --out instead of training again")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--merge", nargs="+", metavar="DIR",
                        help="do not train: write one report in --out over the seeds of these earlier runs' "
                             "results.json (same settings; e.g. seeds run on different days or machines)")
    args = parser.parse_args()
    try:
        args.seed_list = parse_seeds(args.seeds, first=args.seed)
    except ValueError as err:
        parser.error(str(err))
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error(f"--modes: choose from {list(MODES)}")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    args.load_start = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    if args.merge:
        results = merge_runs(args, args.merge)
        seed_figure(results, args.out, args.modes)
        print(write_markdown(args.out, results, args))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, seeds {args.seed_list}, "
          f"load average {args.load_start} on {os.cpu_count()} CPUs")
    start, cpu = time.perf_counter(), time.process_time()
    results: Dict[str, list] = {}
    todo = [] if args.no_mnist else [("mnist", "mlp", "MNIST", args.data_dir)]
    if args.cnn:
        from _shared_data import cifar10_jpeg_dir

        folder = cifar10_jpeg_dir()
        todo.append(("cifar10", "cnn", "CIFAR-10", str(folder) if folder is not None else args.data_dir))
    for dataset, model, title, data_dir in todo:
        t0, c0 = time.perf_counter(), time.process_time()
        with part(f"{dataset}: load data"):
            data = (load_dataset(dataset, split="train", data_dir=data_dir),
                    load_dataset(dataset, split="test", data_dir=data_dir))
        results[dataset] = []
        for i, seed in enumerate(args.seed_list):
            results[dataset].append(run_dataset(args, dataset, model, data, args.out / f"seed{seed}", dataset, seed,
                                                first=i == 0))
            write_markdown(args.out, results, args)  # partial report after every seed
        TIMES[f"{title} total"] = time.perf_counter() - t0
        CPU_TIMES[f"{title} total"] = time.process_time() - c0
    TIMES["total"], CPU_TIMES["total"] = time.perf_counter() - start, time.process_time() - cpu
    seed_figure(results, args.out, args.modes)
    print("\n" + write_markdown(args.out, results, args))


if __name__ == "__main__":
    main()
