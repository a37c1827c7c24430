"""BSGC's clustering quality against scikit-learn's SpectralCoclustering, fit by fit, on real and random layers.

For every layer, k and seed, both cluster the same matrix and each partition gets the normalised score
:math:`(E - E_{rand}) / (1 - E_{rand})` (E against a random partition with the same cluster sizes, what
BSGC ranks its candidates by and graphinterp's reports lead with). Printed per group: the fits, how many
score below scikit-learn's by more than ``--margin`` (issue 12's bound, 0.002), the worst and the mean
difference. Two groups:

* ``pretrained``: the layers of the four shared pretrained models (the 32 layers ``graphinterp benchmark``
  clusters at k = 4; Linear as |W|, Conv2d as its channel x channel norms), k = 2..6;
* ``random``: Gaussian, heavy-tailed and planted layers of six shapes (64 x 512 to 784 x 64), k = 2, 3, 4, 6.

``--json FILE`` writes every fit (scores, E, labels' digest), so that two versions of BSGC can be compared
fit by fit (``--compare OLD.json`` prints how many labellings are identical and how the scores moved).
Timing is not measured here (see bench_bsgc.py).

    python benchmarks/bench_quality.py                       # both groups, seeds 0-2
    python benchmarks/bench_quality.py --seeds 0 --json /tmp/new.json --compare /tmp/old.json
    python benchmarks/bench_quality.py --lloyd-tol 0.1 --compare /tmp/default.json   # the Lloyd tolerance study
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import SpectralCoclustering
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_benchmark import DEFAULT_DIR, MODELS, layer_matrices  # noqa: E402
from bench_bsgc import KINDS, make_layer  # noqa: E402

from graphinterp.clustering import pairing  # noqa: E402
from graphinterp.clustering.bsgc import BSGC  # noqa: E402
from graphinterp.clustering.metrics import clusterability, normalized_score, random_partition_expectation  # noqa: E402

RANDOM_SHAPES = ((64, 512), (128, 128), (256, 64), (300, 300), (512, 256), (784, 64))
RANDOM_KS = (2, 3, 4, 6)


def score(A: torch.Tensor, rows: np.ndarray, cols: np.ndarray, k: int) -> tuple:
    """E and the normalised score of one partition of ``A`` (non-negative, float32)."""
    sq = A.double().square()
    E = float(clusterability(sq, rows, cols))
    return E, float(normalized_score(E, random_partition_expectation(rows, cols, k, squared=sq)))


def one_fit(name: str, A: torch.Tensor, k: int, seed: int, n_init: int = 10) -> dict:
    ours = BSGC(k, n_init=n_init, random_state=seed).fit(A)
    with threadpool_limits(1, user_api="openmp"), warnings.catch_warnings():  # see bench_bsgc.py
        warnings.simplefilter("ignore")
        sk = SpectralCoclustering(k, random_state=seed).fit(A.double().numpy())
    (e_o, s_o), (e_s, s_s) = score(A, ours.row_labels_, ours.column_labels_, k), score(A, sk.row_labels_,
                                                                                        sk.column_labels_, k)
    digest = hashlib.sha1(np.concatenate([ours.row_labels_, ours.column_labels_]).astype(np.int64).tobytes())
    return dict(name=name, k=k, seed=seed, E=e_o, score=s_o, E_sklearn=e_s, score_sklearn=s_s,
                labels=digest.hexdigest()[:16])


def groups(pretrained_dir: Path, which) -> dict:
    """``{group: [(name, matrix, ks)]}``: the layers to fit."""
    out = {}
    if "pretrained" in which:
        paths = [pretrained_dir / m for m in MODELS]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise SystemExit(f"error: pretrained models not found: {', '.join(missing)} (set --pretrained-dir)")
        out["pretrained"] = [(name, A, range(2, 7)) for name, A in layer_matrices(paths)]
    if "random" in which:
        out["random"] = []
        for m, n in RANDOM_SHAPES:
            for kind in KINDS:
                W = make_layer(kind, m, n, 4, np.random.default_rng([m, n, KINDS.index(kind)]))
                out["random"].append((f"{kind}{m}x{n}", torch.from_numpy(W).abs(), RANDOM_KS))
    return out


def summary(fits: list, margin: float) -> str:
    d = np.array([f["score"] - f["score_sklearn"] for f in fits])
    below = d < -margin
    return (f"{len(fits)} fits, {int(below.sum())} below scikit-learn's score by > {margin} "
            f"(worst {d.min():+.4f}), mean {d.mean():+.4f}, ours higher in {int((d > margin).sum())}")


def compare(new: list, old_path: Path) -> str:
    old = {(f["name"], f["k"], f["seed"]): f for f in json.loads(old_path.read_text())}
    pairs = [(f, old[(f["name"], f["k"], f["seed"])]) for f in new if (f["name"], f["k"], f["seed"]) in old]
    if not pairs:
        return f"against {old_path}: no fit in common (other layers, k or seeds)"
    same = sum(f["labels"] == o["labels"] for f, o in pairs)
    d = np.array([f["score"] - o["score"] for f, o in pairs])
    return (f"against {old_path}: {len(pairs)} fits in common, {same} with identical labels; score new - old: "
            f"mean {d.mean():+.5f}, worst {d.min():+.4f}, best {d.max():+.4f}, lower by > 0.002 in {int((d < -0.002).sum())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="random_state of both (default 0 1 2)")
    parser.add_argument("--groups", nargs="*", default=["pretrained", "random"], choices=["pretrained", "random"])
    parser.add_argument("--pretrained-dir", type=Path, default=DEFAULT_DIR,
                        help="folder holding the four models (default: $GRAPHINTERP_PRETRAINED, else ../shared/pretrained)")
    parser.add_argument("--margin", type=float, default=0.002, help="score difference counted as below (default 0.002)")
    parser.add_argument("--n-init", type=int, default=10,
                        help="BSGC's n_init (default 10, its default; scikit-learn keeps its own 10)")
    parser.add_argument("--lloyd-tol", type=float, default=None,
                        help="the paired modes' Lloyd tolerance (default: BSGC's, graphinterp.clustering.pairing."
                             "_TOL_PAIRED); a study of the setting, not an option of BSGC")
    parser.add_argument("--json", type=Path, help="write every fit to this file")
    parser.add_argument("--compare", type=Path, help="a --json file of another version: compare fit by fit")
    args = parser.parse_args()
    if args.compare is not None and not args.compare.is_file():
        parser.error(f"--compare {args.compare}: no such file")
    if args.compare is not None and args.json is not None and args.json.resolve() == args.compare.resolve():
        parser.error("--json and --compare name one file: this run would overwrite the one it compares with")
    if not args.seeds:
        parser.error("--seeds needs at least one seed")
    if args.lloyd_tol is not None:
        if not args.lloyd_tol > 0:
            parser.error(f"--lloyd-tol must be > 0, got {args.lloyd_tol}")
        pairing._TOL_PAIRED = args.lloyd_tol
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, seeds {args.seeds}, n_init {args.n_init}, "
          f"Lloyd tolerance {pairing._TOL_PAIRED:g}, "
          f"load average {tuple(round(x, 2) for x in os.getloadavg())}")
    fits = []
    for group, layers in groups(args.pretrained_dir, args.groups).items():
        mine = [dict(one_fit(name, A, k, seed, args.n_init), group=group) for name, A, ks in layers for k in ks
                for seed in args.seeds]
        print(f"{group}: {len(layers)} layers, {summary(mine, args.margin)}", flush=True)
        fits += mine
    if args.json is not None:
        args.json.write_text(json.dumps(fits, indent=1))
    if args.compare is not None:
        print(compare(fits, args.compare))


if __name__ == "__main__":
    main()
