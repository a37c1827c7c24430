"""Reproduce the paper's results: Figures 1-7 and a report.md with the paper's numbers beside ours.

For MNIST (always) and CIFAR-10 (with ``--cnn``; the JPEG copy in ``../shared/datasets``):

1. train the unclustered baseline (lambda = 0) and the modular model (lambda = 20, k = 4, one
   warm-up epoch then ten with the enmeshment loss; batch 64, Adam, lr 1e-3: Table 1), both
   saved as graphinterp checkpoints;
2. clusterability (Figure 1/4): E of fc2 against k with BSGC, baseline vs modular, with the
   random-partition line; the baseline also with Algorithm 1 verbatim (independent KMeans); every
   layer of both models benchmarked with a shuffle test at k = 4 (``benchmark/``);
3. ablation (Figure 2/5): class-wise accuracy with each cluster ON and OFF, both models;
4. circuits (Figure 3/6): per-label ECS of both models, with the mean relative change;
5. Figure 7: the clustered fc2 of the modular model (and, for contrast, the baseline's).

Figures are written as PNG and SVG into ``--out`` with ``report.md``; the wall time of each part is
printed. The MNIST part is meant to take well under 15 minutes on 2 CPU cores.

    python benchmarks/reproduce_paper.py --data-dir ../shared/datasets --out report/
    python benchmarks/reproduce_paper.py --cnn --out report/          # also CIFAR-10 (slow on a CPU)
    python benchmarks/reproduce_paper.py --cnn --no-mnist --resume --circuit-examples 100 --max-evals 600 --out report/
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _shared_data when run as a script

from graphinterp._files import atomic_write  # noqa: E402
from graphinterp.ablate import ablation_matrix  # noqa: E402
from graphinterp.benchmark_report import write_report  # noqa: E402
from graphinterp.benchmarking import ModelSource, benchmark_graph, run_benchmark  # noqa: E402
from graphinterp.circuits import Schedule, compare_circuits  # noqa: E402
from graphinterp.data import load_dataset  # noqa: E402
from graphinterp.graph import LayeredGraph  # noqa: E402
from graphinterp.train import TrainConfig, train  # noqa: E402
from graphinterp import viz  # noqa: E402

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


def run_dataset(args, dataset: str, model: str, data_dir: Optional[str], out: Path, tag: str) -> dict:
    """All parts for one dataset; returns the numbers for report.md."""
    res: dict = {"dataset": dataset, "model": model}
    with part(f"{tag}: load data"):
        train_set = load_dataset(dataset, split="train", data_dir=data_dir)
        test_set = load_dataset(dataset, split="test", data_dir=data_dir)
        print(f"   {len(train_set)} train / {len(test_set)} test images of shape {tuple(train_set.x.shape[1:])}")
    results = {}
    for name, lam in (("unclustered", 0.0), ("modular", args.lam)):
        with part(f"{tag}: train {name} (lambda={lam:g})"):
            cfg = TrainConfig(dataset=dataset, model=model, k=args.k, lam=lam, warmup_epochs=args.warmup_epochs,
                              epochs=args.epochs, seed=args.seed, device=args.device, quiet=args.quiet,
                              max_train=args.max_train)
            results[name] = train(cfg, train_data=train_set, test_data=test_set, checkpoint=out / f"{tag}_{name}.pt",
                                  resume=args.resume)
            h = results[name].history[-1]
            print(results[name].table())
            res[f"acc_{name}"] = h["test_acc"]
            res[f"E_train_{name}"] = h.get("E_refit", h.get("E"))
    graphs = {n: LayeredGraph.from_module(r.model.cpu()) for n, r in results.items()}
    layer = "fc2"
    with part(f"{tag}: clusterability (Figure {'1' if tag == 'cifar10' else '4'})"):
        ks = list(range(2, 11))
        curves, bases = {}, {}
        for name, graph in graphs.items():
            (lb,), _ = benchmark_graph(graph, ks, layers=[layer], significance_k=args.k, n_shuffles=args.shuffles,
                                       random_state=args.seed, device="cpu")
            curves[f"{name} (BSGC)"] = {k: s["E"] for k, s in lb.scores.items()}
            bases[f"{name} (BSGC)"] = {k: s["E_random"] for k, s in lb.scores.items()}
            res[f"E_k2_{name}"], res[f"E_k4_{name}"] = lb.scores[2]["E"], lb.scores[args.k]["E"]
            res[f"score_k4_{name}"] = lb.scores[args.k]["score"]
            t = lb.significance
            res[f"sig_{name}"] = {"z_E": t.E.z, "p_E": t.E.p_value, "z_score": t.score.z, "p_score": t.score.p_value,
                                  "null_E": t.E.mean, "n": t.n_shuffles}
        (lb,), _ = benchmark_graph(graphs["unclustered"], ks, layers=[layer], significance_k=None,
                                   pairing="independent", random_state=args.seed, device="cpu")
        curves["unclustered (Algorithm 1: independent KMeans)"] = {k: s["E"] for k, s in lb.scores.items()}
        bases["unclustered (Algorithm 1: independent KMeans)"] = {k: s["E_random"] for k, s in lb.scores.items()}
        res["E_k2_unclustered_alg1"] = lb.scores[2]["E"]
        figure(viz.plot_clusterability_vs_k, out, f"fig{'1' if tag == 'cifar10' else '4'}_clusterability_{tag}",
               curves=curves, baselines=bases,
               title=f"{dataset.upper()} {model.upper()}, layer {layer}: clusterability against k")
        res["E_curves"] = curves
        report = run_benchmark([ModelSource(path=str(out / f"{tag}_{n}.pt")) for n in results], ks,
                               significance_k=args.k, n_shuffles=args.shuffles, random_state=args.seed,
                               progress=not args.quiet)
        write_report(report, out / f"benchmark_{tag}")
    with part(f"{tag}: ablation (Figure {'2' if tag == 'cifar10' else '5'})"):
        for name, r in results.items():
            ab = ablation_matrix(r.model, graphs[name], r.clustering, test_set, device=args.device)
            figure(viz.plot_ablation, out, f"fig{'2' if tag == 'cifar10' else '5'}_ablation_{tag}_{name}",
                   on=ab.on, off=ab.off, full=ab.full, class_names=ab.classes,
                   title=f"{dataset.upper()} {name}: class-wise accuracy, clusters ON / OFF ({', '.join(ab.levels)})")
            res[f"ablation_{name}"] = ab.overall()
    with part(f"{tag}: circuits and ECS (Figure {'3' if tag == 'cifar10' else '6'})"):
        cmp = compare_circuits(results["unclustered"].model, results["modular"].model, test_set,
                               names=("unclustered", "modular"), device=args.device, progress=not args.quiet,
                               **circuit_settings(args))
        figure(viz.plot_ecs_comparison, out, f"fig{'3' if tag == 'cifar10' else '6'}_ecs_{tag}", ecs_a=cmp.ecs_a,
               ecs_b=cmp.ecs_b, labels=cmp.label_names, names=("unclustered", "modular"),
               title=f"{dataset.upper()}: effective circuit size per label")
        res["ecs"] = cmp.to_dict()
        print("   label  ECS unclustered  ECS modular  change")
        for i, lab in enumerate(cmp.label_names):
            print(f"   {lab:<6} {cmp.ecs_a[i]:.4f}           {cmp.ecs_b[i]:.4f}       {cmp.relative_change[i]:+.1%}")
        print(f"   unclustered circuits hold {cmp.a_over_b:+.1%} more weights on average "
              f"(modular vs unclustered: {cmp.mean_relative_change:+.1%})")
    with part(f"{tag}: Figure 7"):
        for name, r in results.items():
            rows, cols = r.clustering.labels(layer) if layer in r.clustering.layer_names else (None, None)
            g = graphs[name]
            figure(viz.plot_clustered_layer, out, f"fig7_{layer}_{tag}_{name}",
                   weight=g[layer].signed().double().numpy(), row_labels=rows, col_labels=cols,
                   in_name=g.layer_names[g.index(layer) - 1], out_name=layer, kind="both",
                   title=f"{dataset.upper()} {name}: layer {layer} ordered by its {r.clustering.k} clusters")
    return res


def circuit_settings(args) -> dict:
    """Settings passed to compare_circuits; None keeps graphinterp.circuits' own defaults."""
    out = {}
    if args.circuit_examples is not None:
        out["max_examples"] = args.circuit_examples
    if args.max_evals is not None:
        out["schedule"] = Schedule(max_evals=args.max_evals)
    return out


def fmt(x, pct=False):
    if x is None:
        return "-"
    return f"{x:+.1%}" if pct else f"{x:.3f}"


def write_markdown(out: Path, results: Dict[str, dict], args) -> str:
    lines = ["# Reproduction of \"Training Neural Networks for Modularity Aids Interpretability\"", "",
             f"Settings (Table 1): batch 64, Adam, lr 1e-3, lambda {args.lam:g}, k {args.k}, "
             f"{args.warmup_epochs} warm-up + {args.epochs} epochs, seed {args.seed}"
             + (f", {args.max_train} training images" if args.max_train else "") + ". "
             f"Shuffle test: {args.shuffles} shuffles of fc2 at k = {args.k}. Circuits: graphinterp.circuits "
             f"defaults{'' if not circuit_settings(args) else ' except ' + str(circuit_settings(args))}.", "",
             "| quantity | paper | ours |", "|---|---|---|"]
    for tag, r in results.items():
        cifar = tag == "cifar10"
        su, sm, ecs, k = r["sig_unclustered"], r["sig_modular"], r["ecs"], args.k
        budget = args.max_evals if args.max_evals is not None else Schedule().max_evals
        rows = [
            ("test accuracy, unclustered", "0.6265 (the paper's code, 10 epochs)" if cifar else "not given",
             fmt(r["acc_unclustered"])),
            ("test accuracy, modular", "about 0.60-0.63 (the paper's code)" if cifar else "similar to unclustered",
             fmt(r["acc_modular"])),
            ("E of fc2 at k = 2, unclustered (BSGC, joint pairing)", "about 0.6", fmt(r["E_k2_unclustered"])),
            ("E of fc2 at k = 2, unclustered (Algorithm 1 verbatim)", "about 0.6", fmt(r["E_k2_unclustered_alg1"])),
            (f"E of fc2 at k = {k}, unclustered (BSGC)", "-",
             f"{fmt(r['E_k4_unclustered'])} (normalised {fmt(r['score_k4_unclustered'])})"),
            (f"E after modular training (training clustering, k = {k})", "0.99", fmt(r["E_train_modular"])),
            (f"E of fc2 at k = {k}, modular, BSGC refit", "0.99",
             f"{fmt(r['E_k4_modular'])} (normalised {fmt(r['score_k4_modular'])})"),
            (f"fc2 vs {su['n']} shuffles, unclustered: z(E), p(E); z(score), p(score)", "-",
             f"{su['z_E']:+.1f}, {su['p_E']:.3f}; {su['z_score']:+.1f}, {su['p_score']:.3f}"),
            (f"fc2 vs {sm['n']} shuffles, modular: z(E), p(E); z(score), p(score)", "-",
             f"{sm['z_E']:+.1f}, {sm['p_E']:.3f}; {sm['z_score']:+.1f}, {sm['p_score']:.3f}"),
            ("accuracy with one cluster ON (mean over clusters), unclustered / modular", "-",
             f"{np.mean(r['ablation_unclustered']['on']):.3f} / {np.mean(r['ablation_modular']['on']):.3f}"),
            ("average ECS, unclustered / modular (ratio of the averages - 1)", "-",
             f"{np.mean(ecs['ecs_a']):.4f} / {np.mean(ecs['ecs_b']):.4f} ({fmt(ecs['ratio_of_means'], True)})"),
            ("circuit searches that used the whole evaluation budget, unclustered / modular", "-",
             f"{sum(n >= budget for n in ecs['n_evals_a'])} / {sum(n >= budget for n in ecs['n_evals_b'])} "
             f"of {len(ecs['n_evals_a'])} (budget {budget})"),
            ("unclustered circuits hold more weights than modular (mean per label)", "+61.25% (CIFAR-10)",
             fmt(ecs["a_over_b"], True)),
        ]
        lines += [f"| {tag.upper()}: {q} | {paper} | {ours} |" for q, paper, ours in rows]
    lines += ["", "## Time", "", f"{torch.get_num_threads()} torch threads. CPU time is the process's own (all "
              "threads); wall time also counts waiting for other jobs on a shared machine.", "",
              "| part | wall (s) | CPU (s) |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {CPU_TIMES[k]:.1f} |" if k in CPU_TIMES else f"| {k} | {v:.1f} | - |"
              for k, v in TIMES.items()]
    lines += ["", "## Figures", ""] + [f"- `{p.name}`" for p in sorted(out.glob("fig*.png"))]
    text = "\n".join(lines) + "\n"
    with atomic_write(out / "report.md", "w") as fh:
        fh.write(text)
    with atomic_write(out / "results.json", "w") as fh:
        json.dump({"results": results, "times": TIMES, "cpu_times": CPU_TIMES}, fh, indent=2, default=float)
    return text


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
                             "(default: graphinterp.circuits' default)")
    parser.add_argument("--max-evals", type=int, default=None,
                        help="evaluation budget of each circuit (default: graphinterp.circuits.Schedule's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="reuse (or continue) the checkpoints already in --out instead of training again")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    start, cpu = time.perf_counter(), time.process_time()
    results = {}
    if not args.no_mnist:
        results["mnist"] = run_dataset(args, "mnist", "mlp", args.data_dir, args.out, "mnist")
        TIMES["MNIST total"] = time.perf_counter() - start
        CPU_TIMES["MNIST total"] = time.process_time() - cpu
    if args.cnn:
        from _shared_data import cifar10_jpeg_dir

        t0, c0 = time.perf_counter(), time.process_time()
        folder = cifar10_jpeg_dir()
        cifar_dir = str(folder) if folder is not None else args.data_dir
        results["cifar10"] = run_dataset(args, "cifar10", "cnn", cifar_dir, args.out, "cifar10")
        TIMES["CIFAR-10 total"] = time.perf_counter() - t0
        CPU_TIMES["CIFAR-10 total"] = time.process_time() - c0
    TIMES["total"], CPU_TIMES["total"] = time.perf_counter() - start, time.process_time() - cpu
    print("\n" + write_markdown(args.out, results, args))


if __name__ == "__main__":
    main()
