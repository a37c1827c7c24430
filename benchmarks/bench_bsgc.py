"""BSGC vs scikit-learn's SpectralCoclustering: time and clusterability E on the same matrices.

Prints, per layer shape and matrix kind, graphinterp's time and E, scikit-learn's time and E
(measured in the same run), the ratios, and the floor: one normalisation pass plus a rank-k
randomized SVD, the cheapest thing that computes the embedding.

    python benchmarks/bench_bsgc.py                 # 256, 1024, 4096 square and 4096 x 16384
    python benchmarks/bench_bsgc.py --sizes 256 1024 --repeats 1

scikit-learn's KMeans runs with one OpenMP thread here, as graphinterp's does: with torch
loaded, two OpenMP runtimes spin against each other on 2 cores and KMeans becomes ~100x slower,
which would flatter graphinterp unfairly.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.cluster import SpectralCoclustering
from threadpoolctl import threadpool_limits

from graphinterp.bsgc import BSGC, normalize_bipartite, randomized_svd
from graphinterp.metrics import clusterability


def planted(m: int, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.integers(0, k, m)
    cols = rng.integers(0, k, n)
    W = 0.3 * rng.standard_normal((m, n))
    W += (rows[:, None] == cols[None, :]) * rng.standard_normal((m, n))
    return W.astype(np.float32)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", type=int, default=[256, 1024, 4096])
    parser.add_argument("--wide", action=argparse.BooleanOptionalAction, default=True,
                        help="also run a 4096 x 16384 layer")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    shapes = [(s, s) for s in args.sizes] + ([(4096, 16384)] if args.wide else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, k={args.k}")
    header = (f"{'shape':>12} {'kind':>8} {'ours s':>8} {'sklearn s':>9} {'speedup':>8} {'floor s':>8} "
              f"{'ours/floor':>10} {'E ours':>7} {'E sk':>7} {'dE':>7}")
    print(header)
    for m, n in shapes:
        for kind in ("gaussian", "planted"):
            W = rng.standard_normal((m, n)).astype(np.float32) if kind == "gaussian" else planted(m, n, args.k, rng)
            A = np.abs(W)
            W2 = torch.from_numpy(W).double().square()
            reps = 1 if m * n > 20_000_000 else args.repeats
            t_ours, est = timed(lambda: BSGC(args.k, random_state=args.seed).fit(A), reps)

            def sk_fit():
                with threadpool_limits(1, user_api="openmp"):
                    return SpectralCoclustering(args.k, random_state=args.seed).fit(A)

            t_sk, sk = timed(sk_fit, reps)

            def floor():
                An, _, _ = normalize_bipartite(torch.from_numpy(A))
                return randomized_svd(An, args.k, generator=torch.Generator().manual_seed(0))

            t_floor, _ = timed(floor, reps)
            e_ours = float(clusterability(W2, est.row_labels_, est.column_labels_))
            e_sk = float(clusterability(W2, sk.row_labels_, sk.column_labels_))
            print(f"{f'{m}x{n}':>12} {kind:>8} {t_ours:8.3f} {t_sk:9.3f} {t_sk / t_ours:7.2f}x {t_floor:8.3f} "
                  f"{t_ours / t_floor:9.1f}x {e_ours:7.4f} {e_sk:7.4f} {e_ours - e_sk:+7.4f}", flush=True)


if __name__ == "__main__":
    main()
