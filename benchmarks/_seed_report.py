"""Aggregate reproduce_paper.py's per-seed results: the markdown rows over seeds and the per-seed figure."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from graphinterp.common.seeds import SeedSummary, summarize

MODES = ("graphinterp", "authors")
MODE_NAMES = {"graphinterp": "graphinterp's criterion", "authors": "the authors' criterion"}


def _get(runs: Sequence[dict], fn) -> SeedSummary:
    return summarize([fn(r) for r in runs])


def with_mode(runs: Sequence[dict], mode: str) -> List[dict]:
    """The runs that hold circuits of ``mode`` (a merged report may have a criterion in some seeds only)."""
    return [r for r in runs if f"ecs_{mode}" in r]


def comparison_rows(runs: Sequence[dict], k: int, modes: Sequence[str]) -> List[Tuple[str, str, SeedSummary, dict, int]]:
    """``(quantity, paper, summary, format kwargs, expected sign or 0)`` for one dataset's seeds."""
    cifar = runs[0]["dataset"] == "cifar10"
    on = lambda r, n: float(np.mean(r[f"ablation_{n}"]["on"]))  # noqa: E731
    rows = [
        ("test accuracy, unclustered", "0.6265 (the paper's code)" if cifar else "not given",
         _get(runs, lambda r: r["acc_unclustered"]), {}, 0),
        ("test accuracy, modular", "about 0.60-0.63 (the paper's code)" if cifar else "similar",
         _get(runs, lambda r: r["acc_modular"]), {}, 0),
        ("accuracy modular - unclustered (target >= -0.01)", "about 0",
         _get(runs, lambda r: r["acc_modular"] - r["acc_unclustered"]), {"fmt": "{:+.4f}"}, 0),
        ("E of fc2 at k = 2, unclustered (BSGC, joint pairing)", "about 0.6", _get(runs, lambda r: r["E_k2_unclustered"]), {}, 0),
        ("E of fc2 at k = 2, unclustered (independent KMeans, as the authors' code)", "about 0.6",
         _get(runs, lambda r: r["E_k2_unclustered_alg1"]), {}, 0),
        (f"E of fc2 at k = {k}, unclustered (BSGC)", "-", _get(runs, lambda r: r["E_k4_unclustered"]), {}, 0),
        (f"E after modular training (training clustering, k = {k})", "0.99", _get(runs, lambda r: r["E_train_modular"]),
         {"fmt": "{:.4f}"}, 0),
        (f"E of fc2 at k = {k}, modular, BSGC refit", "0.99", _get(runs, lambda r: r["E_k4_modular"]), {"fmt": "{:.4f}"}, 0),
        (f"E gap at k = {k}, modular - unclustered", "-", _get(runs, lambda r: r["E_k4_modular"] - r["E_k4_unclustered"]),
         {}, 1),
        ("fc2 vs shuffles, unclustered: z(E)", "-", _get(runs, lambda r: r["sig_unclustered"]["z_E"]), {"fmt": "{:+.1f}"}, 0),
        ("fc2 vs shuffles, modular: z(E)", "-", _get(runs, lambda r: r["sig_modular"]["z_E"]), {"fmt": "{:+.1f}"}, 1),
        ("accuracy with one cluster ON (mean over clusters), unclustered", "-", _get(runs, lambda r: on(r, "unclustered")),
         {}, 0),
        ("accuracy with one cluster ON (mean over clusters), modular", "-", _get(runs, lambda r: on(r, "modular")), {}, 0),
        ("one-cluster-ON accuracy, modular - unclustered", "-",
         _get(runs, lambda r: on(r, "modular") - on(r, "unclustered")), {"fmt": "{:+.3f}"}, 1),
    ]
    all_runs = runs
    for mode in modes:
        key, what, runs = f"ecs_{mode}", MODE_NAMES[mode], with_mode(all_runs, mode)
        if not runs:
            continue
        if len(runs) < len(all_runs):
            what += f"; seed{'s' if len(runs) > 1 else ''} {', '.join(str(r['seed']) for r in runs)} only"
        paper = "+61.25% (CIFAR-10)" if mode == "authors" else "+61.25% (CIFAR-10, authors' criterion)"
        rows += [
            (f"average ECS, unclustered ({what})", "-", _get(runs, lambda r: float(np.mean(r[key]["ecs_a"]))),
             {"fmt": "{:.4f}"}, 0),
            (f"average ECS, modular ({what})", "-", _get(runs, lambda r: float(np.mean(r[key]["ecs_b"]))),
             {"fmt": "{:.4f}"}, 0),
            (f"ECS gap: unclustered circuits hold more weights, mean per label ({what})", paper,
             _get(runs, lambda r: r[key]["a_over_b"]), {"pct": True}, 1),
            (f"ECS gap, ratio of the average ECS - 1 ({what})", "-", _get(runs, lambda r: r[key]["ratio_of_means"]),
             {"pct": True}, 1),
        ]
    return rows


def label_rows(runs: Sequence[dict], mode: str) -> List[str]:
    """Per-label ECS over seeds: unclustered, modular, relative change, seeds with a smaller modular circuit."""
    key = f"ecs_{mode}"
    runs = with_mode(runs, mode)
    names = runs[0][key]["label_names"] if runs else []
    out = ["| label | ECS unclustered | ECS modular | change unclustered -> modular | seeds where modular is smaller |",
           "|---|---|---|---|---|"]
    for i, name in enumerate(names):
        a = summarize([r[key]["ecs_a"][i] for r in runs])
        b = summarize([r[key]["ecs_b"][i] for r in runs])
        ch = summarize([(r[key]["ecs_b"][i] - r[key]["ecs_a"][i]) / r[key]["ecs_a"][i] for r in runs])
        out.append(f"| {name} | {a.format('{:.4f}')} | {b.format('{:.4f}')} | {ch.format(pct=True)} | "
                   f"{ch.n_negative} of {ch.n} |")
    return out


def seed_figure(results: Dict[str, List[dict]], out: Path, modes: Sequence[str]) -> None:
    """Per-seed points (and mean with its 95% interval) of the main comparisons, one panel per dataset."""
    from matplotlib.figure import Figure

    from graphinterp.reports import viz

    panels = list(results)
    fig = Figure(figsize=(11, 3.8 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, tag in zip(axes, panels):
        runs = results[tag]
        items = [("accuracy\nmod - uncl (pp)", [100 * (r["acc_modular"] - r["acc_unclustered"]) for r in runs]),
                 ("E gap k=4\n(x100)", [100 * (r["E_k4_modular"] - r["E_k4_unclustered"]) for r in runs]),
                 ("z(E) modular", [r["sig_modular"]["z_E"] for r in runs]),
                 ("one-ON acc\nmod - uncl (pp)", [100 * (np.mean(r["ablation_modular"]["on"])
                                                        - np.mean(r["ablation_unclustered"]["on"])) for r in runs])]
        items += [(f"ECS gap (%)\n{m}", [100 * r[f"ecs_{m}"]["a_over_b"] for r in with_mode(runs, m)]) for m in modes
                  if with_mode(runs, m)]
        for x, (_, vals) in enumerate(items):
            s = summarize(vals)
            jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [0.0]
            ax.scatter(x + np.asarray(jitter), vals, s=22, color="tab:blue", zorder=3)
            if s.n >= 2:
                ax.errorbar(x + 0.3, s.mean, yerr=[[s.mean - s.low], [s.high - s.mean]], fmt="o", color="black",
                            capsize=4, zorder=4)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(items)), [name for name, _ in items], fontsize=8)
        ax.set_title(f"{tag.upper()}: per-seed values (blue) and mean with 95% interval (black), "
                     f"{len(runs)} seeds", fontsize=10)
    for suffix in ("png", "svg"):
        viz.save_figure(fig, out / f"seeds.{suffix}")
