"""`graphinterp benchmark` on the shared pretrained models vs a plain loop of scikit-learn co-clustering.

Both in the same run, on the same layers: the command (models loaded, graphs built, every layer
clustered at k = 4 and tested against 10 shuffled copies, JSON/CSV written, no figures) against a
Python loop that fits scikit-learn's ``SpectralCoclustering(4)`` on every layer and on 10 shuffled
copies of it (the graphs are built before its clock starts, so it is not charged for loading).
The floor beside them is the loop's own minimum: one normalisation and one rank-4 SVD per matrix, run
with BSGC's thread policy (one torch thread for layers below 2**20 entries; with torch's default two
threads the floor itself was 30-100x slower on a busy machine).
The load average is printed before and after.

    python benchmarks/bench_benchmark.py                 # the four models of ../shared/pretrained
    python benchmarks/bench_benchmark.py --repeats 3 --jobs 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from click.testing import CliRunner
from sklearn.cluster import SpectralCoclustering
from threadpoolctl import threadpool_limits

from graphinterp.reports.benchmarking import ModelSource, load_source
from graphinterp.clustering.bsgc import normalize_bipartite, randomized_svd
from graphinterp.cli.main import cli
from graphinterp.clustering.significance import shuffle_weights
from graphinterp.clustering.spectral import _threads_for

MODELS = ("mnist-mlp-784-512-512-10.pt", "mnist-mlp-bn-300-301-302-303.pt", "cifar-cnn.pth", "resnet20-12fca82f.th")
DEFAULT_DIR = Path(os.environ.get("GRAPHINTERP_PRETRAINED", Path(__file__).resolve().parents[2] / "shared" / "pretrained"))


def layer_matrices(paths):
    """``(name, |edge weights|)`` of every layer the benchmark clusters (k = 4 fits it)."""
    out = []
    for p in paths:
        graph, _, _ = load_source(ModelSource(path=str(p)))
        for name in graph.layer_names:
            layer = graph[name]
            if layer.structure == "depthwise":
                continue
            A = layer.magnitude()  # float32, as graphinterp clusters it (scikit-learn casts to float64)
            if min(int((A.sum(1) > 0).sum()), int((A.sum(0) > 0).sum())) >= 4:
                out.append((f"{p.stem}:{name}", A))
    return out


def sklearn_loop(mats, k: int, shuffles: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with threadpool_limits(1, user_api="openmp"), warnings.catch_warnings():  # see bench_bsgc.py
        warnings.simplefilter("ignore")
        for _, A in mats:
            for M in [A, *shuffle_weights(A, shuffles, generator=gen)]:
                SpectralCoclustering(k, random_state=seed).fit(M.numpy())


def floor_loop(mats, k: int, shuffles: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _, A in mats:
        buf = torch.empty_like(A)  # one normalised matrix per layer, reused by its shuffles (see bench_bsgc.py)
        for M in [A, *shuffle_weights(A, shuffles, generator=gen)]:
            with _threads_for(M):  # BSGC's thread policy (one torch thread below 2**20 entries), not torch's default
                randomized_svd(normalize_bipartite(M, out=buf)[0], k, generator=gen)


def graphinterp_cli(paths, k: int, shuffles: int, jobs: int, out: str) -> None:
    result = CliRunner().invoke(cli, ["benchmark", *map(str, paths), "--k", str(k), "--shuffles", str(shuffles),
                                      "--no-figures", "-q", "--jobs", str(jobs), "--out", out])
    if result.exit_code != 0:
        raise SystemExit(f"graphinterp benchmark failed: {result.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_DIR,
                        help="folder holding the four models (default: $GRAPHINTERP_PRETRAINED, else "
                             "../shared/pretrained beside the checkout)")
    parser.add_argument("--k", type=int, default=4, help="number of clusters (default 4)")
    parser.add_argument("--shuffles", type=int, default=10, help="shuffled copies per layer (default 10)")
    parser.add_argument("--jobs", type=int, default=1, help="--jobs of `graphinterp benchmark` (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffles and of scikit-learn (default 0)")
    args = parser.parse_args()
    paths = [args.models_dir / m for m in MODELS]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        parser.error(f"{', '.join(missing)} not found in {args.models_dir}; pass --models-dir FOLDER (or set "
                     "GRAPHINTERP_PRETRAINED)")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average before {tuple(round(x, 2) for x in os.getloadavg())}")
    t0 = time.perf_counter()
    mats = layer_matrices(paths)
    load_s = time.perf_counter() - t0
    print(f"{len(mats)} layers, {len(mats) * (args.shuffles + 1)} matrices; building the graphs took {load_s:.2f} s "
          f"(charged to graphinterp only)")
    times = {"graphinterp benchmark": [], "sklearn loop": [], "floor (normalise + rank-k SVD)": []}
    with tempfile.TemporaryDirectory() as out:
        graphinterp_cli(paths, args.k, args.shuffles, args.jobs, out)  # warm-up: imports, first-touch allocations
        for _ in range(args.repeats):  # interleaved rounds
            for name, fn in [("graphinterp benchmark", lambda: graphinterp_cli(paths, args.k, args.shuffles, args.jobs, out)),
                             ("sklearn loop", lambda: sklearn_loop(mats, args.k, args.shuffles, args.seed)),
                             ("floor (normalise + rank-k SVD)", lambda: floor_loop(mats, args.k, args.shuffles, args.seed))]:
                time.sleep(0.3)
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
                print(f"  {name}: {times[name][-1]:.2f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    print("| run | median s | / sklearn loop |")
    print("|---|---|---|")
    for name, t in med.items():
        print(f"| {name} | {t:.2f} | {t / med['sklearn loop']:.2f}x |")
    print(f"load average after {tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
