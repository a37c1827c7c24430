"""BSGC vs scikit-learn's SpectralCoclustering: time, clusterability E and score on the same matrices.

Prints, per layer shape and matrix kind, graphinterp's time, E and score, scikit-learn's (measured in
the same run, in interleaved rounds of a few back-to-back calls each, medians), the ratios, and the
floor. The score is :math:`(E - E_{rand}) / (1 - E_{rand})`, E against a random partition with the same
cluster sizes, what graphinterp's reports lead with and what BSGC ranks its candidates by: E alone
rewards one giant cluster (on the heavy-tailed layers below, a partition of 1021, 1, 1 and 1 nodes a
side has E 0.99 and a score below 0). The floor is the cheapest thing that computes the embedding: the
faster, in the same run, of (``buffer``) one normalisation pass into a buffer allocated once per matrix
outside the timings plus a rank-k randomized SVD (``normalize_bipartite(out=)`` + ``randomized_svd``), and
(``implicit``) BSGC's own first stage alone, the degrees and the SVD of the normalised matrix applied
implicitly, which copies nothing; both run with BSGC's thread policy (one torch thread below 2**20
entries). Until 2026-12-07 19:00 the floor normalised into two new matrices per call: on these virtual
machines that cost ~2,000 page faults a call at 1024 x 1024 (7.4-8.5 ms against 4.9-6.7 ms into a buffer,
varying from run to run with the allocator's state) and flattered BSGC's ratio to it. The load average is printed before and
after. Each matrix is drawn from its own seed (``--seed``, its shape and its kind), so a row is the same
whichever ``--sizes`` and ``--kinds`` run beside it.

    python benchmarks/bench_bsgc.py                        # 64, 256, 1024, 4096 square and 4096 x 16384
    python benchmarks/bench_bsgc.py --sizes 64 256 --no-wide --repeats 3
    python benchmarks/bench_bsgc.py --sizes 1024 4096 --no-wide --device cuda   # graphinterp and floor on a GPU

Matrix kinds: ``gaussian`` |N(0, 1)|, ``heavy`` |Student-t, 3 degrees of freedom| (a few huge
weights, like trained layers), ``planted`` k modules of unequal sizes in Gaussian noise.
scikit-learn's KMeans runs with one OpenMP thread (with torch loaded, two OpenMP runtimes spin
against each other on 2 cores and KMeans becomes ~100x slower, which would flatter graphinterp);
graphinterp uses torch's default threads (one below 2**20 entries). The three get the same matrix, allocated by torch
(64-byte aligned, as a model's weights are). With ``--device cuda`` graphinterp and the floor run on
the GPU (the matrix is copied there once, outside the timings; each timing ends with a
synchronisation); scikit-learn stays on the CPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch
from sklearn.cluster import SpectralCoclustering
from threadpoolctl import threadpool_limits

from graphinterp.clustering.bsgc import BSGC, normalize_bipartite, randomized_svd
from graphinterp.clustering.metrics import clusterability, normalized_score, random_partition_expectation
from graphinterp.clustering.matrix_checks import _degrees
from graphinterp.clustering.spectral import _Spectrum, _threads_for
from graphinterp.common.seeds import fast_random_state

KINDS = ("gaussian", "heavy", "planted")


def make_layer(kind: str, m: int, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((m, n), dtype=np.float32)
    if kind == "heavy":
        return rng.standard_t(3, (m, n)).astype(np.float32)
    sizes = rng.dirichlet(np.full(k, 3.0))  # unequal modules
    rows = rng.choice(k, m, p=sizes)
    cols = rng.choice(k, n, p=sizes)
    W = 0.3 * rng.standard_normal((m, n), dtype=np.float32)
    W += (rows[:, None] == cols[None, :]) * rng.standard_normal((m, n), dtype=np.float32)
    return W


def fit_ours(A, k: int, seed: int):
    est = BSGC(k, random_state=seed).fit(A)  # labels come back as numpy: the GPU work has finished
    return est.row_labels_, est.column_labels_


def fit_sklearn(A: np.ndarray, k: int, seed: int):
    with threadpool_limits(1, user_api="openmp"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its KMeans may warn about convergence; not ours to report
        est = SpectralCoclustering(k, random_state=seed).fit(A)
    return est.row_labels_, est.column_labels_


def fit_floor(A: torch.Tensor, k: int, seed: int, buf: torch.Tensor):
    """Normalise ``A`` into ``buf`` (allocated once per matrix, outside the timings) and take its rank-k SVD."""
    with _threads_for(A):  # BSGC's thread policy: one torch thread below 2**20 entries (see spectral.py)
        An, _, _ = normalize_bipartite(A, out=buf)
        out = randomized_svd(An, k, generator=torch.Generator().manual_seed(seed))
    if A.is_cuda:
        torch.cuda.synchronize(A.device)
    return out


def fit_spectrum(A: torch.Tensor, k: int, seed: int):
    """BSGC's own first stage alone: the degrees (with the input checks) and the rank-k SVD of the normalised
    matrix applied implicitly (no normalised copy of ``A``)."""
    with _threads_for(A):
        A3, du, dv = _degrees(A[None])
        out = _Spectrum.compute(A3, du, dv, k, None, [fast_random_state(seed)], ks=[k]).U
    if A.is_cuda:
        torch.cuda.synchronize(A.device)
    return out


def interleaved(fns: dict, repeats: int, gap: float, block: int = 1) -> tuple:
    """Run every function in turn, ``repeats`` rounds; median time and last output of each.

    In a round each function gets a block: ``gap`` seconds of idle time, so that BLAS/OpenMP threads
    left spinning by the previous function (scikit-learn's OpenBLAS and OpenMP, torch's OpenMP) have
    gone to sleep and do not slow it down; then, with ``block > 1``, one untimed call and ``block``
    timed calls back to back. The untimed call absorbs the cost of waking from idle (on these virtual
    machines the first call after 0.3 s idle is 3-15 ms slower, whichever function it is), which
    with ``block=1`` lands on every timed call and dominates the spread at 1024 x 1024.
    """
    times = {name: [] for name in fns}
    out = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(gap)
            if block > 1:
                fn()
            for _ in range(block):
                t0 = time.perf_counter()
                out[name] = fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, out


def time_layer(W: np.ndarray, device: torch.device, k: int, seed: int, repeats: int, gap: float, block: int):
    """Median times and last outputs of the four methods on the layer ``W`` (``interleaved``); the matrices made
    here are freed when it returns."""
    # One 64-byte-aligned matrix for all of them, as torch allocates a model's weights (numpy's own
    # arrays are 16-byte aligned, and at 1024 x 1024 BLAS reads them up to 1.6x slower).
    A = torch.from_numpy(W).abs().numpy()
    At = torch.from_numpy(A).to(device)  # on the CPU: the same memory as A, no copy
    buf = torch.empty_like(At)  # the floor's normalised matrix (see the module docstring)
    fns = {
        "ours": lambda: fit_ours(At, k, seed),
        "sklearn": lambda: fit_sklearn(A, k, seed),
        "floor": lambda: fit_floor(At, k, seed, buf),
        "spectrum": lambda: fit_spectrum(At, k, seed),
    }
    fit_ours(At, k, seed)  # warm-up (first-touch allocations, lazy imports, CUDA kernels)
    return interleaved(fns, repeats, gap, block)


def _E_and_score(squared: torch.Tensor, rows, cols, k: int) -> tuple:
    """E and the normalised score of one clustering of a layer."""
    E = float(clusterability(squared, rows, cols))
    return E, normalized_score(E, random_partition_expectation(rows, cols, k, squared=squared))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", type=int, default=[64, 256, 1024, 4096],
                        help="square layer sizes (default 64 256 1024 4096); each matrix is drawn from its own seed "
                             "(--seed, its shape and kind), so a row is the same whichever sizes run beside it")
    parser.add_argument("--wide", action=argparse.BooleanOptionalAction, default=True,
                        help="also run a 4096 x 16384 layer")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS,
                        help="Gaussian, heavy-tailed (Student t, 3 degrees of freedom) and planted-module layers")
    parser.add_argument("--k", type=int, default=4, help="number of clusters (default 4)")
    parser.add_argument("--repeats", type=int, default=7, help="rounds for small layers (fewer for big ones)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the matrices and of every method (default 0)")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds of idle time before each function's block")
    parser.add_argument("--block", type=int, default=5,
                        help="timed calls back to back per function and round, after one untimed call (1: one call, "
                             "no untimed call; the first call after idle pays the wake-up); layers above 2**22 "
                             "entries always use 1")
    parser.add_argument("--device", default="cpu", help="torch device of graphinterp and the floor (cpu, cuda, cuda:1)")
    args = parser.parse_args()
    if args.block < 1 or args.repeats < 1:
        parser.error("--block and --repeats must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    shapes = [(s, s) for s in args.sizes] + ([(4096, 16384)] if args.wide else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, k={args.k}, "
          f"load average before {tuple(round(x, 2) for x in os.getloadavg())}")
    print("| shape | kind | ours s | sklearn s | sklearn / ours | floor s | ours / floor | score ours | score sklearn "
          "| d score | E ours | E sklearn | dE |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m, n in shapes:
        size = m * n
        repeats = args.repeats if size <= 1 << 20 else max(1, min(args.repeats, 5 if size <= 1 << 24 else 3))
        for kind in args.kinds:
            W = make_layer(kind, m, n, args.k, np.random.default_rng([args.seed, m, n, KINDS.index(kind)]))
            t, out = time_layer(W, device, args.k, args.seed, repeats, args.gap, args.block if size <= 1 << 22 else 1)
            W2 = torch.from_numpy(W).square()
            (e_ours, s_ours), (e_sk, s_sk) = (_E_and_score(W2, *out[name], args.k) for name in ("ours", "sklearn"))
            floor, via = min((t["floor"], "buffer"), (t["spectrum"], "implicit"))
            print(f"| {m}x{n} | {kind} | {t['ours']:.4f} | {t['sklearn']:.4f} | {t['sklearn'] / t['ours']:.2f}x | "
                  f"{floor:.4f} ({via}) | {t['ours'] / floor:.2f}x | {s_ours:.4f} | {s_sk:.4f} | {s_ours - s_sk:+.4f} | "
                  f"{e_ours:.4f} | {e_sk:.4f} | {e_ours - e_sk:+.4f} |", flush=True)
    print(f"load average after {tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
