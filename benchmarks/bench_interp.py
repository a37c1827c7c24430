"""Interpretability benchmark on real MNIST: cluster ablation (Figure 2/5) and circuit sizes (Figure 3/6).

Trains (or loads) the paper's 784-64-64-10 MLP twice with the training pipeline, unclustered
(lambda = 0) and modular (lambda = 20, k = 4), then on the MNIST test split

1. prints the class-wise accuracy with each cluster ON and OFF for both models (the baseline is
   ablated with the clustering fitted to its final weights) and how many labels a single cluster
   carries alone / loses when it is switched off;
2. extracts one circuit per label from both models with the same settings and prints the per-label
   ECS, the relative change and the paper's statistic (unclustered model's circuits have on
   average X% more parameters; the paper reports 61.25% on CIFAR-10 and a similar drop on MNIST);
3. times the extraction of all 10 circuits of each model on ``--threads`` CPU threads, next to a
   floor measured in the same run: the same number of plain forward passes over a task-sized batch;
4. (unless ``--no-associate``) functional modules (Lange et al. 2022): each hidden level's units
   clustered by activation correlation, upstream and downstream Jacobians on 2,000 test images,
   modularity against 20 copies in random orthonormal bases, and the agreement (AMI) with the weight clusters.

Examples
--------
    python benchmarks/bench_interp.py                                  # paper settings: 1 + 10 epochs
    python benchmarks/bench_interp.py --epochs 3 --max-train 20000     # shorter
    python benchmarks/bench_interp.py --baseline b.pt --modular m.pt   # reuse checkpoints
    python benchmarks/bench_interp.py --seeds 5 --modes graphinterp,authors   # 5 pairs, summary over seeds

With ``--seeds`` (a count from ``--seed`` or a list) one pair of models is trained per seed (in
``--out-dir/seed<s>/``) and the ECS gap, the per-label ECS and the one-cluster-ON accuracy are
summarised over seeds: mean, standard deviation, 95% t interval and the seeds in which the sign holds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphinterp.interpret.ablate import ablation_matrix  # noqa: E402
from graphinterp.interpret.circuits import Schedule, Tolerance, extract_circuits  # noqa: E402
from graphinterp.clustering.cluster import Clustering  # noqa: E402
from graphinterp.data.datasets import load_dataset  # noqa: E402
from graphinterp.interpret.evaluation import class_accuracy, load_runnable  # noqa: E402
from graphinterp.interpret.label_tasks import label_task  # noqa: E402
from graphinterp.common.seeds import deterministic, parse_seeds, summarize  # noqa: E402
from graphinterp.clustering.cluster import cluster_network  # noqa: E402
from graphinterp.clustering.labels import stored_clustering  # noqa: E402
from graphinterp.interpret.functional_modules import functional_modules, reinitialised  # noqa: E402
from graphinterp.training.masks import default_cluster_layers  # noqa: E402

from _shared_data import shared_datasets_dir  # noqa: E402


def get_model(path: Path, lam: float, args, seed: int) -> Path:
    if path.exists() and not args.retrain:
        print(f"loading {path}")
        return path
    from graphinterp.training.train import TrainConfig, train

    config = TrainConfig(dataset="mnist", model="mlp", k=args.k, lam=lam, warmup_epochs=args.warmup_epochs,
                         epochs=args.epochs, seed=seed, device=args.device, data_dir=str(args.data_dir),
                         max_train=args.max_train, quiet=True)
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    with deterministic():
        result = train(config, checkpoint=path)
    last = result.history[-1]
    print(f"trained {path.name} (lambda={lam}) in {time.perf_counter() - start:.0f} s: test acc {last['test_acc']:.4f}, "
          f"E {last.get('E')}, E_refit {last.get('E_refit')}")
    return path


def fmt_matrix(name: str, m: np.ndarray, full: np.ndarray) -> str:
    rows = [f"{'':>8} " + " ".join(f"{c:>5}" for c in range(m.shape[1])), f"{'full':>8} " + " ".join(f"{v:5.2f}" for v in full)]
    rows += [f"{name} {i:>3}".rjust(8) + " " + " ".join(f"{v:5.2f}" for v in row) for i, row in enumerate(m)]
    return "\n".join(rows)


def ablation_report(tag: str, path: Path, test, args) -> dict:
    loaded, net, graph = load_runnable(path, input_shape=tuple(test.x.shape[1:]))
    clustering = Clustering.from_dict(loaded.clustering)
    res = ablation_matrix(net, graph, clustering, test, device=args.device)
    carried = int((res.on.max(0) >= 0.5 * res.full).sum())
    killed = int((res.off.min(0) < 0.5 * res.full).sum())
    winners = res.on.argmax(0)
    print(f"\n== {tag}: cluster ablation (k={clustering.k}, layers {clustering.layer_names}, "
          f"{clustering.meta.get('fitted', 'training clustering')}), overall acc {res.overall()['full']:.4f}")
    print("ON (only cluster i active):")
    print(fmt_matrix("ON", res.on, res.full))
    print("OFF (cluster i ablated):")
    print(fmt_matrix("OFF", res.off, res.full))
    print(f"labels one cluster alone keeps at >= 50% of full accuracy: {carried}/10; labels lost (< 50% of full) "
          f"when one cluster is switched off: {killed}/10; best ON cluster per label: {winners.tolist()}")
    return {"on": res.on.tolist(), "off": res.off.tolist(), "full": res.full.tolist(), "carried": carried,
            "killed": killed, "best_on_cluster": winners.tolist()}


def floor_seconds(net, test, n_evals: int, max_examples: int, device) -> float:
    """Time of ``n_evals`` plain forward passes over a task-sized batch (examples of a label + as many others)."""
    task = label_task(test.x, test.y, 0, max_examples=max_examples)
    x = task.x.to(device)
    with torch.no_grad():
        for _ in range(5):
            net(x)
        reps = 200
        start = time.perf_counter()
        for _ in range(reps):
            net(x).argmax(-1)
    return (time.perf_counter() - start) / reps * n_evals


def functional_report(tag: str, path: Path, test, args) -> dict:
    """Functional modules of one model against its weight clusters (stored, or network-wide BSGC at --k)."""
    loaded, net, graph = load_runnable(path, input_shape=tuple(test.x.shape[1:]))
    clustering = stored_clustering(loaded.clustering, graph) if loaded.clustering else \
        cluster_network(graph, args.k, layers=default_cluster_layers(graph), random_state=0)
    start = time.perf_counter()
    res = functional_modules(net, test, args.k, graph=graph, clustering=clustering, n_null=20, device=args.device)
    ref = functional_modules(reinitialised(net, 0), test, args.k, graph=graph, n_null=20, device=args.device)
    print(f"{tag:>9}: functional modules in {time.perf_counter() - start:.1f} s with the re-initialised reference "
          f"(weight clusters of {', '.join(clustering.layer_names)})")
    for lv in res.levels.values():
        cells = []
        for kind, c in lv.clusters.items():
            m, r = c.modularity, ref.levels[lv.level].clusters[kind].modularity
            cells.append(f"{kind} Q {m.observed:.3f} (null {m.mean:.3f}, z {m.z:+.1f}, p {m.p_value:.3f}; reinit Q "
                         f"{r.observed:.3f}, z {r.z:+.1f}, p {r.p_value:.3f}), AMI with weights "
                         f"{lv.agreement.get(kind + '~weights', float('nan')):.2f}")
        print(f"{'':>11}{lv.level} ({lv.n_units} units): " + "; ".join(cells))
    return {**res.to_dict(), "reinitialised": ref.to_dict()}


def circuits_report(tag: str, path: Path, test, score: str, args, mode: str = "graphinterp") -> dict:
    _, net, graph = load_runnable(path, input_shape=tuple(test.x.shape[1:]))
    net.to(args.device)
    start = time.perf_counter()
    circuits = extract_circuits(net, test, "all", graph=graph, score=score, schedule=Schedule(max_evals=args.max_evals),
                                max_examples=args.max_examples, device=args.device, progress=False,
                                num_threads=args.search_threads, mode=mode)
    wall = time.perf_counter() - start
    n_evals = sum(c.n_evals for c in circuits.values())
    threads = torch.get_num_threads()
    torch.set_num_threads(args.search_threads)  # the floor runs with the search's threads
    try:
        floor = floor_seconds(net, test, n_evals, args.max_examples, args.device)
    finally:
        torch.set_num_threads(threads)
    print(f"{tag:>9} [{score if mode == 'graphinterp' else mode}]: 10 circuits in {wall:.1f} s ({n_evals} evaluations, {args.search_threads} thread(s)); "
          f"floor, the same number of plain forward passes of a task batch: {floor:.1f} s")
    held = [circuits[c].heldout for c in range(10)]
    if all(h is not None for h in held):
        print(f"{'':>9} held out ({min(h.n_pos + h.n_neg for h in held)}-{max(h.n_pos + h.n_neg for h in held)} unseen test "
              f"examples per label): {sum(h.within_tolerance for h in held)}/10 circuits meet their criterion, "
              f"{sum(h.clearly_outside for h in held)}/10 miss it by more than sampling noise; accuracy circuit/full "
              f"searched {np.mean([circuits[c].accuracy for c in range(10)]):.3f}/"
              f"{np.mean([circuits[c].full_accuracy for c in range(10)]):.3f}, held out "
              f"{np.mean([h.accuracy for h in held]):.3f}/{np.mean([h.full_accuracy for h in held]):.3f} (means)")
    return {"ecs": [circuits[c].ecs for c in range(10)], "ecs_per_layer": {c: circuits[c].size.ecs_per_layer
            for c in range(10)}, "accuracy": [circuits[c].accuracy for c in range(10)],
            "full_accuracy": [circuits[c].full_accuracy for c in range(10)], "seconds": wall, "n_evals": n_evals,
            "floor_seconds": floor, "converged": [circuits[c].converged for c in range(10)],
            "heldout": [None if circuits[c].heldout is None else circuits[c].heldout.to_dict() for c in range(10)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=shared_datasets_dir())
    parser.add_argument("--baseline", type=Path, default=None, help="baseline checkpoint (trained and written if missing)")
    parser.add_argument("--modular", type=Path, default=None, help="modular checkpoint (trained and written if missing)")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/graphinterp-bench-interp"))
    parser.add_argument("--retrain", action="store_true", help="train even if the checkpoints exist")
    parser.add_argument("--epochs", type=int, default=10, help="epochs after warm-up (paper: 10)")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="paper: 1")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--lam", type=float, default=20.0)
    parser.add_argument("--max-train", type=int, default=None, help="train on a subset (shorter runs)")
    parser.add_argument("--seed", type=int, default=0, help="first seed when --seeds is a count")
    parser.add_argument("--seeds", default="1", help="number of seeds (from --seed) or a list such as 0,3,5-7")
    parser.add_argument("--modes", default="graphinterp",
                        help="circuit criteria, comma-separated: graphinterp (with each --scores), authors")
    parser.add_argument("--scores", default="magnitude", help="comma-separated: magnitude,attribution,learned")
    parser.add_argument("--max-evals", type=int, default=Schedule().max_evals)
    parser.add_argument("--max-examples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for training and the floor (2 cores)")
    parser.add_argument("--search-threads", type=int, default=1,
                        help="torch CPU threads during the circuit search (extract_circuit's num_threads; 0 = --threads)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-associate", action="store_true", help="skip the functional modules (association) part")
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = parser.parse_args()
    if args.data_dir is None or not (Path(args.data_dir) / "MNIST").is_dir():
        sys.exit("MNIST not found: pass --data-dir pointing at the folder holding MNIST/raw")
    torch.set_num_threads(args.threads)
    args.search_threads = args.search_threads or args.threads
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) ({args.search_threads} in the search), "
          f"device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    seeds = parse_seeds(args.seeds, first=args.seed)
    if len(seeds) > 1 and (args.baseline or args.modular):
        sys.exit("--baseline/--modular name one pair of models; leave them out with several --seeds")
    test = load_dataset("mnist", split="test", data_dir=args.data_dir)
    report: dict = {"settings": {k: str(v) for k, v in vars(args).items()}, "seeds": {}}
    variants = [("graphinterp", s) for s in args.scores.split(",")] + \
        [("authors", "authors") for m in args.modes.split(",") if m == "authors"]
    if "graphinterp" not in args.modes.split(","):
        variants = [v for v in variants if v[0] != "graphinterp"]
    for seed in seeds:
        folder = args.out_dir if len(seeds) == 1 else args.out_dir / f"seed{seed}"
        print(f"\n######## seed {seed}")
        paths = {"baseline": get_model(args.baseline or folder / "baseline.pt", 0.0, args, seed),
                 "modular": get_model(args.modular or folder / "modular.pt", args.lam, args, seed)}
        rep: dict = {"models": {}}
        for tag, path in paths.items():
            _, net, _ = load_runnable(path, input_shape=tuple(test.x.shape[1:]))
            acc = class_accuracy(net, test, device=args.device)
            rep["models"][tag] = {"test_acc_per_class": acc.tolist(), "ablation": ablation_report(tag, path, test, args)}
        if not args.no_associate:
            print(f"\n== functional modules (k = {args.k}; association on 2,000 test images, 20 rotated copies as the null)")
            for tag, path in paths.items():
                rep["models"][tag]["functional"] = functional_report(tag, path, test, args)
        for mode, score in variants:
            print(f"\n== circuits, {'score ' + score if mode == 'graphinterp' else 'the authors criterion'}, "
                  f"{Schedule(max_evals=args.max_evals)}, {Tolerance()}, {args.max_examples} examples per label"
                  + (" + as many others" if mode == "graphinterp" else ""))
            res = {tag: circuits_report(tag, path, test, score if mode == "graphinterp" else "magnitude", args, mode)
                   for tag, path in paths.items()}
            a, b = np.array(res["baseline"]["ecs"]), np.array(res["modular"]["ecs"])
            print(f"{'label':>5} {'ECS baseline':>13} {'ECS modular':>12} {'change':>8}")
            for c in range(10):
                print(f"{c:>5} {100 * a[c]:12.2f}% {100 * b[c]:11.2f}% {100 * (b[c] - a[c]) / a[c]:+7.1f}%")
            print(f"mean ECS: baseline {100 * a.mean():.2f}%, modular {100 * b.mean():.2f}%; mean relative change "
                  f"baseline -> modular {100 * np.mean((b - a) / a):+.1f}%; the baseline's circuits hold on average "
                  f"{100 * np.mean((a - b) / b):+.1f}% parameters relative to the modular model's (paper: +61.25% on CIFAR-10)")
            rep[score] = res
        report["seeds"][seed] = rep
    summary = summarize_seeds(report["seeds"], [s for _, s in variants])
    report["summary"] = summary
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


def summarize_seeds(runs: dict, variants) -> dict:
    """Print and return the comparisons over seeds (mean ± std [95% interval], seeds where the sign holds)."""
    reps = list(runs.values())
    rows = {}
    for tag in ("baseline", "modular"):
        rows[f"one-cluster-ON accuracy (mean over clusters and labels), {tag}"] = summarize(
            [np.mean(r["models"][tag]["ablation"]["on"]) for r in reps])
        rows[f"labels one cluster alone keeps at >= 50%, {tag}"] = summarize(
            [r["models"][tag]["ablation"]["carried"] for r in reps])
    rows["one-cluster-ON accuracy, modular - baseline"] = summarize(
        [np.mean(r["models"]["modular"]["ablation"]["on"]) - np.mean(r["models"]["baseline"]["ablation"]["on"])
         for r in reps])
    for v in variants:
        gap = [np.mean((np.array(r[v]["baseline"]["ecs"]) - np.array(r[v]["modular"]["ecs"]))
                       / np.array(r[v]["modular"]["ecs"])) for r in reps]
        rows[f"ECS gap [{v}]: baseline circuits hold more weights (mean per label)"] = summarize(gap)
        for c in range(10):
            rows[f"ECS change baseline -> modular, label {c} [{v}]"] = summarize(
                [(r[v]["modular"]["ecs"][c] - r[v]["baseline"]["ecs"][c]) / r[v]["baseline"]["ecs"][c] for r in reps])
    print(f"\n== over {len(reps)} seed(s): mean ± std [95% interval]; seeds with a positive / negative value")
    for name, s in rows.items():
        pct = "ECS" in name
        print(f"{name}: {s.format(pct=pct) if pct else s.format()}  (+{s.n_positive} / -{s.n_negative} of {s.n})")
    return {name: s.to_dict() for name, s in rows.items()}


if __name__ == "__main__":
    main()
