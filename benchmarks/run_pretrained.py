"""Clusterability of third-party pretrained models against shuffled and randomly initialised references.

Checks the paper's claim "pretrained models are highly unclusterable" on every model in
``../shared/pretrained`` (a CIFAR CNN, two MNIST MLPs, CIFAR ResNet-20/56) with
:func:`graphinterp.reports.benchmarking.run_benchmark`: per layer, E for each k, the random-partition
expectation, the normalised score, and a shuffle test (Filan et al. 2021) at one k. Two references,
measured in the same run:

* each pretrained model re-initialised with PyTorch's default init (same shapes, untrained:
  ``<name> (re-init)``), which says what training changed;
* torchvision architectures with random weights (``--random-arch``, default resnet18, whose
  512 x 512 convolutions show that large layers stay affordable).

Prints the table, a per-model summary (layers significantly more clusterable than their shuffles,
median z, mass-weighted normalised score at the test k against the re-initialised copy) and the wall
time, and writes the report (JSON, CSV, figures, ``summary.md``) into ``--out``.

    python benchmarks/run_pretrained.py --out report/pretrained
    python benchmarks/run_pretrained.py --k 2..6 --shuffles 10 --random-arch   # quicker, no torchvision model
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import List

import torch

from graphinterp import atomic_write
from graphinterp.reports.benchmark_report import BenchmarkReport, format_report, write_report
from graphinterp.reports.benchmarking import ModelSource, run_benchmark
from graphinterp.clustering.cluster import parse_k_range
from graphinterp.sources.loading import load_model_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT.parent / "shared" / "pretrained"
MODELS = ("cifar-cnn.pth", "mnist-mlp-784-512-512-10.pt", "mnist-mlp-bn-300-301-302-303.pt",
          "resnet20-12fca82f.th", "resnet56-4bfd9763.th")


def reinitialised(path: Path, folder: Path, seed: int) -> Path:
    """Save a copy of ``path``'s state_dict as PyTorch's default initialisation would make it.

    Linear/Conv2d weights ``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and their
    biases from the same range, as nn.Linear/nn.Conv2d do; normalisation layers (a 1-D ``weight``) reset to
    gain 1 and shift 0, with running mean 0 and variance 1. Keeping the trained BatchNorm statistics (as this
    script did until 2026-12-07) folded trained per-channel scales into the "untrained" ResNets' convolutions:
    their scores sat far below their shuffles (median z -5.6 on ResNet-56), which destroy those scales.
    """
    state = load_model_file(path).state_dict
    gen = torch.Generator().manual_seed(seed)
    fresh = {}
    for key, value in state.items():
        prefix = key.rsplit(".", 1)[0] if "." in key else ""
        weight = state.get(f"{prefix}.weight" if prefix else "weight")
        if key.endswith("weight") and value.dim() >= 2:  # Linear and Conv1d/2d/3d
            value = _uniform(value.shape, 1.0 / math.sqrt(value[0].numel()), gen)
        elif key.endswith("bias") and weight is not None and weight.dim() >= 2:
            value = _uniform(value.shape, 1.0 / math.sqrt(weight[0].numel()), gen)
        elif key.endswith(("weight", "running_var")) and value.dim() == 1:
            value = torch.ones_like(value)
        elif key.endswith(("bias", "running_mean")) and value.dim() == 1:
            value = torch.zeros_like(value)
        elif key.endswith("num_batches_tracked"):
            value = torch.zeros_like(value)
        fresh[key] = value
    out = folder / f"{path.stem} (re-init).pt"
    torch.save(fresh, out)
    return out


def _uniform(shape, bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound


def summarise(report: BenchmarkReport) -> List[str]:
    """One line per model: significant layers (both measures), median z, mass-weighted score."""
    k = report.significance_k
    lines = [f"| model | layers tested | E > shuffles (p = min) | score > shuffles (p = min) | median z(E) | "
             f"median z(score) | mass-weighted E at k={k} | E_random | normalised score |",
             "|---|---|---|---|---|---|---|---|---|"]
    p_min = 1 / (report.n_shuffles + 1)
    for m in report.models:
        tested = [lb.significance for lb in m.layers if lb.significance is not None]
        if not tested:
            continue
        sig_E = sum(t.E.p_value <= p_min + 1e-12 for t in tested)
        sig_S = sum(t.score.p_value <= p_min + 1e-12 for t in tested)
        zE = statistics.median(t.E.z for t in tested if math.isfinite(t.E.z))
        zS = statistics.median(t.score.z for t in tested if math.isfinite(t.score.z))
        scored = [lb for lb in m.layers if k in lb.scores]
        mass = sum(lb.mass for lb in scored)
        E = sum(lb.scores[k]["E"] * lb.mass for lb in scored) / mass
        R = sum(lb.scores[k]["E_random"] * lb.mass for lb in scored) / mass
        lines.append(f"| {m.name} | {len(tested)} | {sig_E} | {sig_S} | {zE:+.1f} | {zS:+.1f} | {E:.3f} | {R:.3f} | "
                     f"{(E - R) / (1 - R):.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--extra", nargs="*", default=[], help="more model files, e.g. from `graphinterp train`")
    parser.add_argument("--random-arch", nargs="*", default=["resnet18"], help="torchvision random references")
    parser.add_argument("--no-reinit", action="store_true", help="skip the re-initialised copies")
    parser.add_argument("--k", default="2..10")
    parser.add_argument("--significance-k", type=int, default=4)
    parser.add_argument("--shuffles", type=int, default=20, help="shuffled copies per layer (2 or more; 0: no test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("report/pretrained"))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes over the layers (same report)")
    args = parser.parse_args()
    if args.shuffles < 0 or args.shuffles == 1:  # as `graphinterp benchmark --shuffles` refuses them
        parser.error(f"--shuffles {args.shuffles}: give 2 or more (a null of 1 shuffle has no spread, so no z-score), "
                     "or 0 for no shuffle test")
    files = [args.pretrained_dir / name for name in MODELS if (args.pretrained_dir / name).is_file()]
    if not files and not args.extra:
        raise SystemExit(f"no pretrained models in {args.pretrained_dir}; pass --pretrained-dir")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, --jobs {args.jobs}; models: "
          f"{', '.join(f.name for f in files)}; load average before {tuple(round(x, 2) for x in os.getloadavg())}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sources = [ModelSource(path=str(f)) for f in files] + [ModelSource(path=p) for p in args.extra]
        if not args.no_reinit:
            sources += [ModelSource(path=str(reinitialised(f, Path(tmp), args.seed))) for f in files]
        sources += [ModelSource(arch=a) for a in args.random_arch]
        report = run_benchmark(sources, parse_k_range(args.k), significance_k=args.significance_k,
                               n_shuffles=args.shuffles, random_state=args.seed,
                               progress=not args.quiet and args.jobs == 1, n_jobs=args.jobs)
    written = write_report(report, args.out)
    wall = time.perf_counter() - start
    print(format_report(report))
    summary = summarise(report)
    print("\n".join(summary))
    timing = [f"- {m.name}: {len(m.layers)} layers, {m.seconds:.1f} s" for m in report.models]
    with atomic_write(args.out / "summary.md", "w") as fh:
        fh.write(f"# Clusterability of pretrained models\n\nk = {report.ks[0]}..{report.ks[-1]}, shuffle test at "
                 f"k = {report.significance_k} with {report.n_shuffles} shuffles per layer (smallest p = "
                 f"{1 / (report.n_shuffles + 1):.3f}), seed {args.seed}.\n\n" + "\n".join(summary)
                 + "\n\n## Time\n\n" + "\n".join(timing) + f"\n\nwall time {wall:.1f} s\n")
    print("\n".join(timing))
    print(f"wall time {wall:.1f} s; wrote {len(written) + 1} files to {args.out}; "
          f"load average after {tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
