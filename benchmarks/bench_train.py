"""Modular training on real data: baseline (lambda 0) vs modular (lambda 20), and the cost of L_E per step.

Reproduces the paper's pipeline (Section 3, Table 1: batch 64, Adam 1e-3, k 4, 1 + 10 epochs) on
MNIST from ``../shared/datasets`` (or Fashion-MNIST; ``--cnn`` trains the paper's CNN on the
CIFAR-10 JPEG copy) and prints, for the unclustered baseline and the modular model:

* test accuracy;
* E at k = 4 of each clustered layer: with the clustering the model was trained against, and
  re-analysed from the weights alone (per-layer BSGC, as ``graphinterp analyze`` does);
* the baseline's E at k = 2 (the paper reports about 0.6 for an unclustered model).

Targets: modular E >= 0.99 with test accuracy within 1 percentage point of the baseline.

It then times one training step (forward, CE, backward, Adam) with and without ``+ lambda * L_E``
in the same process, on the same batches, in interleaved blocks, and prints the ratio (target
<= 1.05) beside its floor: the same step with ``+ lambda * <W, W * M>``, a bare masked sum of
squares over the clustered weights in its cheapest form, in place of L_E, i.e. the least any
differentiable regulariser over those weights adds to a step (one extra loss branch, its backward
and the second gradient accumulated into each clustered weight). Both on pre-gathered batches and
with the batch gathered inside the step, as ``train()`` does.

    python benchmarks/bench_train.py                          # MNIST, 1 + 10 epochs
    python benchmarks/bench_train.py --dataset fashion-mnist
    python benchmarks/bench_train.py --cnn                    # CIFAR-10 JPEG copy, CNN
    python benchmarks/bench_train.py --epochs 1 --max-train 5000   # quick check
    python benchmarks/bench_train.py --seeds 5 --threads 1    # five baseline/modular pairs: mean, std, 95% interval

With ``--seeds`` the accuracy difference and E are reported over seeds (mean, standard deviation,
95% t interval, seeds in which the sign holds) and the step timing runs once, on the first seed's
modular model. Training runs under ``torch.use_deterministic_algorithms``: the same seed, command and
thread count give bit-identical models.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _shared_data when run as a script

from _shared_data import cifar10_jpeg_dir, shared_datasets_dir  # noqa: E402

from graphinterp import flush_denormals  # noqa: E402
from graphinterp.clustering.analysis import analyze  # noqa: E402
from graphinterp.data.datasets import load_dataset  # noqa: E402
from graphinterp.graph.layered import LayeredGraph  # noqa: E402
from graphinterp.training.loss import EnmeshmentLoss  # noqa: E402
from graphinterp.common.seeds import deterministic, parse_seeds, summarize  # noqa: E402
from graphinterp.training.train import TrainConfig, train, train_step  # noqa: E402


def time_steps(result, train_set, lam: float, steps: int, blocks: int, batch_size: int, seed: int,
               reduction: str = "mean"):
    """Median seconds per step: CE only, CE + lam * L_E, CE + lam * (bare masked sum of squares).

    Two views of a step: ``kernel`` times :func:`train_step` on pre-gathered batches (the cost of the
    loss alone shows most); ``loop`` also gathers each batch from the device-resident training set,
    as :func:`graphinterp.training.train.train` does, so its ratio is the one a user sees in epoch times.
    """
    model = copy.deepcopy(result.model)
    device = next(model.parameters()).device
    loss_fn = EnmeshmentLoss(model, result.clustering, reduction=reduction)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(train_set), (steps, batch_size), generator=gen)
    batches = [(train_set.x[i].to(device), train_set.y[i].to(device)) for i in idx]
    x_all, y_all, idx = train_set.x.to(device), train_set.y.to(device), idx.to(device)
    pairs = [(m.param, m.mask.reshape(-1)) for m in loss_fn.masks.values()]

    def bare() -> torch.Tensor:  # one masked sum of squares, in its cheapest form: <w, w * m>
        w = pairs[0][0].reshape(-1)
        total = torch.dot(w, w * pairs[0][1])
        for p, m in pairs[1:]:
            w = p.reshape(-1)
            total = total + torch.dot(w, w * m)
        return total

    fns = {"without": None, "with": loss_fn, "bare": bare}

    def run(kind: str, view: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if view == "kernel":
            for x, y in batches:
                train_step(model, opt, x, y, loss_fn=fns[kind], lam=lam)
        else:
            for i in idx:
                train_step(model, opt, x_all[i], y_all[i], loss_fn=fns[kind], lam=lam)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / len(batches)

    with flush_denormals():  # as train() does: the trained weights hold near-subnormal values
        keys = [(kind, view) for view in ("kernel", "loop") for kind in fns]
        for key in keys:  # warm up allocator and caches
            run(*key)
        times = {key: [] for key in keys}
        for _ in range(blocks):  # interleaved, so load changes hit all variants alike
            for key in keys:
                times[key].append(run(*key))
    return {key: statistics.median(v) for key, v in times.items()}


def train_pair(args, dataset, model_name, train_set, test_set, seed):
    """Train the baseline and the modular model with one seed; print and return their E and accuracy."""
    results = {}
    for name, lam in (("baseline", 0.0), ("modular", args.lam)):
        cfg = TrainConfig(dataset=dataset, model=model_name, k=args.k, lam=lam, warmup_epochs=args.warmup_epochs,
                          epochs=args.epochs, similarity=args.similarity, reduction=args.reduction, seed=seed,
                          device=args.device, max_train=args.max_train, quiet=args.quiet)
        t0 = time.perf_counter()
        with deterministic():
            results[name] = train(cfg, train_data=train_set, test_data=test_set)
        print(f"\nseed {seed}, {name} (lambda={lam:g}), {time.perf_counter() - t0:.0f} s\n{results[name].table()}")
    layers = results["modular"].clustering.layer_names
    print(f"\nseed {seed}: clustered layers: {layers}, k={args.k}")
    print(f"{'model':<9} {'test acc':>8} {'layer':>6} {'E train':>8} {'E analyze k=' + str(args.k):>15} "
          f"{'E analyze k=2':>14} {'E random k=' + str(args.k):>13}")
    summary = {}
    for name, res in results.items():
        graph = LayeredGraph.from_module(copy.deepcopy(res.model).cpu())
        ana = analyze(graph, [2, args.k], layers=layers, random_state=seed)
        per_train = EnmeshmentLoss(res.model, res.clustering).per_layer()
        by_k = {k: {s.layer: s for s in ana.reports[k].layers} for k in (2, args.k)}
        acc = res.history[-1]["test_acc"]
        for layer in layers:
            s4, s2 = by_k[args.k][layer], by_k[2][layer]
            print(f"{name:<9} {acc:>8.4f} {layer:>6} {per_train[layer]:>8.4f} {s4.E:>15.4f} {s2.E:>14.4f} "
                  f"{s4.E_random:>13.4f}")
        summary[name] = {"acc": acc, "E_train": res.history[-1].get("E_refit", res.history[-1]["E"]),
                         "E_train_layers": per_train}
    return results, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    parser.add_argument("--cnn", action="store_true", help="the paper's CNN on the CIFAR-10 JPEG copy instead")
    parser.add_argument("--epochs", type=int, default=10, help="epochs with the enmeshment loss")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--max-train", type=int, default=None, help="train on a random subset (quick runs)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--lam", type=float, default=20.0)
    parser.add_argument("--similarity", choices=["weight", "gradient"], default="weight")
    parser.add_argument("--reduction", choices=["mean", "mass"], default="mean",
                        help="L_E over several clustered layers: mass-weighted or the mean of per-layer values")
    parser.add_argument("--seed", type=int, default=0, help="first seed when --seeds is a count")
    parser.add_argument("--seeds", default="1", help="number of seeds (from --seed) or a list such as 0,3,5-7")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--timing-steps", type=int, default=100, help="steps per timing block")
    parser.add_argument("--timing-blocks", type=int, default=15, help="interleaved timing blocks")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset, model_name = ("cifar10", "cnn") if args.cnn else (args.dataset, "mlp")
    data_dir = cifar10_jpeg_dir() if args.cnn else shared_datasets_dir()
    if data_dir is None:
        print(f"skipped: the shared {dataset} files are not available beside the checkout")
        return
    t0 = time.perf_counter()
    train_set = load_dataset(dataset, split="train", data_dir=data_dir)
    test_set = load_dataset(dataset, split="test", data_dir=data_dir)
    print(f"{dataset}: {len(train_set)} train / {len(test_set)} test, loaded in {time.perf_counter() - t0:.1f} s; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    seeds = parse_seeds(args.seeds, first=args.seed)
    print(f"seeds {seeds}; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    per_seed = []
    for seed in seeds:
        results, summary = train_pair(args, dataset, model_name, train_set, test_set, seed)
        per_seed.append(summary)
        if seed == seeds[0]:
            first = results
    d_acc = summarize([s["modular"]["acc"] - s["baseline"]["acc"] for s in per_seed])
    E_min = summarize([min(s["modular"]["E_train_layers"].values()) for s in per_seed])
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(f"\nover {len(seeds)} seed(s) (mean ± std [95% interval]):")
    print(f"  test accuracy baseline {summarize([s['baseline']['acc'] for s in per_seed]).format('{:.4f}')}, "
          f"modular {summarize([s['modular']['acc'] for s in per_seed]).format('{:.4f}')}")
    print(f"  modular E (trained clustering, worst layer) = {E_min.format('{:.4f}')}  "
          f"[target mean >= 0.99: {verdict(E_min.mean >= 0.99)}]")
    print(f"  accuracy modular - baseline = {d_acc.format('{:+.4f}')}  [target mean >= -0.01: "
          f"{verdict(d_acc.mean >= -0.01)}; modular at least as accurate in {d_acc.n_positive + (d_acc.n - d_acc.n_positive - d_acc.n_negative)} "
          f"of {d_acc.n} seeds, within 1 pp in {sum(v >= -0.01 for v in d_acc.values)} of {d_acc.n}]")
    print(f"  load average now {', '.join(f'{v:.2f}' for v in os.getloadavg())}")

    times = time_steps(first["modular"], train_set, args.lam, args.timing_steps, args.timing_blocks, 64, seeds[0],
                       args.reduction)
    print(f"\ntime per training step (batch 64, median of {args.timing_blocks} interleaved blocks "
          f"of {args.timing_steps}):")
    for view, what in (("kernel", "train_step on pre-gathered batches"),
                       ("loop", "train_step + gathering the batch, as in train()")):
        t = {kind: times[(kind, view)] for kind in ("without", "with", "bare")}
        ratio, floor = t["with"] / t["without"], t["bare"] / t["without"]
        print(f"  {what}:")
        print(f"    CE only                                   {1e6 * t['without']:9.1f} us")
        print(f"    CE + lambda * L_E                         {1e6 * t['with']:9.1f} us")
        print(f"    CE + lambda * <W, W * M>  (the floor)     {1e6 * t['bare']:9.1f} us")
        print(f"    ratio {ratio:.3f}  [target <= 1.05: {'met' if ratio <= 1.05 else 'MISSED'}], floor {floor:.3f}")

if __name__ == "__main__":
    main()
