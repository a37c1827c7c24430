"""Modular transformers end to end: baseline vs modular on modular addition and a character LM.

For each task it trains the baseline (lambda = 0) and the modular model (lambda = 20, k = 4) with
:func:`graphinterp.training.train_transformer.train_transformer`, then reports

* E per MLP block (modular: its training clustering; baseline: a BSGC clustering of its final
  weights) beside a shuffle null (each weight matrix of the block permuted, re-clustered);
* the task cost (test accuracy; validation loss for the LM);
* cluster ON/OFF accuracy per output class and the specialisation index of
  :mod:`graphinterp.interpret.transformer_eval` (baseline clustered with BSGC after training);
* the cost of the enmeshment loss: a training step with ``CE + lambda * L_E`` against a plain step,
  interleaved in the same run (ratio; the floor is 1.0);
* circuits for both models: modadd one per answer class (answers 0-19 unless ``--circuit-labels``
  says otherwise; ``all`` extracts the 113), chars one per frequent next character
  (:func:`graphinterp.interpret.transformer_circuits.extract_transformer_circuits`, MLP weights pruned), the
  ECS per label, a Figure 3 style figure and the ECS gap between the models, with its direction;

and writes ``report.md`` with figures into ``--out-dir``, printing ``uptime`` before and after.

Usage::

    python benchmarks/reproduce_transformers.py     # report/transformers/report.md, Tiny Shakespeare from
                                                    # ../shared/datasets (or --corpus FILE)
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from graphinterp import flush_denormals
from graphinterp.clustering.mlp_blocks import blocks_from_clustering, cluster_mlp_blocks
from graphinterp.training.baselines import block_clusterability
from graphinterp.training.loss import EnmeshmentLoss
from graphinterp.graph.model_trace import trace_graph
from graphinterp.interpret.circuits import CircuitComparison, Schedule
from graphinterp.training.train_transformer import TransformerConfig, task_data, train_transformer
from graphinterp.interpret.transformer_circuits import extract_transformer_circuits
from graphinterp.interpret.transformer_eval import onoff_matrix, specialisation


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def shuffle_null(model, example, k, n, seed=0):
    """E per block of BSGC on ``n`` copies of the model with every MLP weight matrix permuted."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    graph = trace_graph(model, example=example)
    blocks = blocks_from_clustering(cluster_mlp_blocks(graph, k, random_state=0))
    names = [n_ for b in blocks for n_ in b.layers]
    for i in range(n):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for name in names:
                w = m.get_submodule(name).weight
                w.copy_(w.reshape(-1)[torch.randperm(w.numel(), generator=rng)].view_as(w))
        g = trace_graph(m, example=example)
        c = cluster_mlp_blocks(g, k, random_state=i)
        out.append(block_clusterability(EnmeshmentLoss(m, c, graph=g).masks, blocks))
    return {b.name: np.array([o[b.name] for o in out]) for b in blocks}


def loss_cost(model, clustering, x, y, lam, n=30):
    """Seconds per step with and without L_E, interleaved; returns (plain, with_loss) medians.

    Runs with subnormal floats flushed, as training does (the modular model's between-cluster weights are tiny).
    """
    with flush_denormals():
        return _loss_cost(model, clustering, x, y, lam, n)


def _loss_cost(model, clustering, x, y, lam, n):
    model = copy.deepcopy(model)
    loss_fn = EnmeshmentLoss(model, clustering, graph=trace_graph(model, example=x[:2]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    times = {False: [], True: []}
    for i in range(2 * n + 4):
        use = bool(i % 2)
        t = time.perf_counter()
        out = model(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        if use:
            loss = torch.add(loss, loss_fn(), alpha=lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 4:
            times[use].append(time.perf_counter() - t)
    return float(np.median(times[False])), float(np.median(times[True]))


def circuits(res, data, out_dir: Path, labels, jobs: int, max_evals: int, task: str = "modadd", n_chars: int = 10,
             char_examples: int = 100):
    """ECS per label of both models (same settings), their comparison and its figure. modadd: a label is an
    answer class (the test pairs, all of them: about 79 per answer and as many others); chars: the character
    after a window of the validation text, for the ``n_chars`` most frequent ones among 5,000 seeded windows,
    each task made of ``char_examples`` windows followed by that character and as many followed by another."""
    from graphinterp.reports.viz import plot_ecs_comparison

    found = {}
    if task == "modadd":
        x, y, names = data["test"].x, data["test"].y, None
    else:
        part = data["corpus"].next_char_windows(res["modular"]["config"].n_ctx, "val", limit=5000, seed=0)
        x, y, names = part.x, part.y, [repr(ch)[1:-1] for ch in part.classes]
        labels = torch.bincount(y, minlength=len(names)).argsort(descending=True)[:n_chars].sort().values.tolist()
    for name in ("baseline", "modular"):
        t = time.perf_counter()
        extra = {} if task == "modadd" else {"max_examples": char_examples}
        found[name] = extract_transformer_circuits(res[name]["result"].model, x, y, labels, n_jobs=jobs, **extra,
                                                   schedule=Schedule(max_evals=max_evals), progress=False, device="cpu",
                                                   label_names=names)
        res[name]["circuits_s"] = time.perf_counter() - t
        print(f"{task} {name}: {len(found[name])} circuits in {res[name]['circuits_s']:.0f} s", flush=True)
    keys = sorted(found["modular"])
    a, b = found["baseline"], found["modular"]
    comp = CircuitComparison(keys, [a[c].label_name for c in keys], np.array([a[c].ecs for c in keys]),
                             np.array([b[c].ecs for c in keys]), ("baseline", "modular"), a, b)
    plot_ecs_comparison(comp.ecs_a, comp.ecs_b, labels=comp.label_names, names=comp.names,
                        out=out_dir / f"{task}-ecs.png")
    return comp


def circuit_lines(res, task: str = "modadd") -> list:
    comp = res["circuits"]
    a, b = comp.ecs_a, comp.ecs_b
    smaller = int((b < a).sum())
    direction = "smaller" if b.mean() < a.mean() else "larger"
    what = ("One circuit per answer class" if task == "modadd" else
            f"One circuit for each of the {len(a)} most frequent next characters (a label is the character after a "
            f"window of the validation text; its task: {res.get('char_examples')} of 5,000 seeded windows followed "
            "by it and as many followed by another character)")
    lines = [f"### Circuits ({task})", "",
             f"{what} by iterative edge pruning over the MLP weights (fc_in, fc_out; attention, "
             "embeddings and unembedding kept whole), one-vs-rest task, tolerance 0.95 x accuracy and "
             "+0.1 nats; ECS = kept MLP weights / non-zero MLP weights.", "",
             f"Mean ECS: baseline {100 * a.mean():.3f}%, modular {100 * b.mean():.3f}%: the modular model's circuits are "
             f"{direction} (ratio of means baseline / modular - 1 = {100 * comp.ratio_of_means:+.1f}%; mean per-label "
             f"relative change baseline -> modular {100 * comp.mean_relative_change:+.1f}%; the modular circuit is the "
             f"smaller one for {smaller} of {len(a)} labels; the paper's MLP: the unclustered model's circuits hold "
             "+61% parameters).", ""]
    for name in ("baseline", "modular"):
        cs = comp.circuits_a if name == "baseline" else comp.circuits_b
        stopped = sum(c.converged is False for c in cs.values())
        lines.append(f"{name}: {len(cs)} circuits in {res[name]['circuits_s']:.0f} s wall "
                     f"({np.mean([c.seconds for c in cs.values()]):.1f} s and "
                     f"{np.mean([c.n_evals for c in cs.values()]):.0f} evaluations per label); {stopped} hit the "
                     "evaluation budget before a local minimum (upper bounds)  ")
    lines += ["", f"![ECS per label, baseline -> modular]({task}-ecs.png)", "",
              "| label | ECS % baseline | ECS % modular | change |", "|---|---|---|---|"]
    lines += [f"| {n} | {100 * x:.3f} | {100 * y:.3f} | {'n/a' if np.isnan(r) else f'{100 * r:+.1f}%'} |"
              for n, x, y, r in zip(comp.label_names, a, b, comp.relative_change)]
    return lines + [""]


def run_task(task, out_dir: Path, corpus, n_shuffles, k, lam, circuit_args=None):
    res = {}
    for name, lam_ in (("baseline", 0.0), ("modular", lam)):
        cfg = TransformerConfig(task=task, k=k, lam=lam_, corpus=corpus, quiet=True)
        # resume=True: a finished checkpoint in --out-dir is reused (its history keeps the training times)
        r = train_transformer(cfg, checkpoint=out_dir / f"{task}-{name}.pt", resume=True)
        train_s = sum(row["time"] for row in r.history)
        res[name] = {"result": r, "train_s": train_s, "config": cfg}
        last = r.history[-1]
        print(f"{task} {name}: {train_s:.0f} s, test acc {last['test_acc']:.4f}, "
              f"test loss {last['test_loss']:.4f}, E {last.get('E_refit', last['E']):.4f}", flush=True)
    data = task_data(res["modular"]["config"])
    test = data["test"]
    x, y = (test.x, test.y) if hasattr(test, "x") else test
    for name, r in res.items():
        model, c = r["result"].model, r["result"].clustering
        g = trace_graph(model, example=x[:2])
        r["E_blocks"] = block_clusterability(EnmeshmentLoss(model, c, graph=g).masks, blocks_from_clustering(c))
        t = time.perf_counter()
        r["null"] = shuffle_null(model, x[:2], k, n_shuffles)
        r["null_s"] = time.perf_counter() - t
        t = time.perf_counter()
        r["onoff"] = onoff_matrix(model, c, x, y, data["classes"])
        r["onoff_s"] = time.perf_counter() - t
        r["spec"] = specialisation(r["onoff"])
        from graphinterp.reports.viz import plot_ablation

        live = np.isfinite(r["onoff"].full)  # classes with examples
        names = [repr(ch)[1:-1] for ch, ok in zip(data["classes"], live) if ok]
        plot_ablation(r["onoff"].on[:, live], r["onoff"].off[:, live], full=r["onoff"].full[live], class_names=names,
                      title=f"{task} {name}: accuracy per class, clusters ON / OFF", out=out_dir / f"{task}-{name}-onoff.png")
    if task == "modadd":
        xb, yb = data["train"].x, data["train"].y
    else:
        xb, yb = data["corpus"].batch(32, res["modular"]["config"].n_ctx, torch.Generator().manual_seed(0))
    res["cost"] = loss_cost(res["modular"]["result"].model, res["modular"]["result"].clustering, xb, yb, lam)
    if circuit_args is not None:
        labels, jobs, max_evals, n_chars, char_examples = circuit_args
        res["char_examples"] = char_examples
        if task == "modadd" or n_chars > 0:
            res["circuits"] = circuits(res, data, out_dir, labels, jobs, max_evals, task, n_chars, char_examples)
    return res


def report(all_res, out_dir: Path, load_before, load_after, total_s):
    lines = ["# Modular transformers: baseline vs modular", "",
             f"Load before: `{load_before}`  ", f"Load after: `{load_after}`  ",
             f"Time of this run: {total_s:.0f} s; training (from the checkpoints' histories, possibly an earlier run "
             f"at another load): {sum(r[n]['train_s'] for r in all_res.values() for n in ('baseline', 'modular')):.0f} s "
             "(target for everything: <= 15 min on 2 unloaded cores)", ""]
    summary = {}
    for task, res in all_res.items():
        b, m = res["baseline"], res["modular"]
        lb, lm = b["result"].history[-1], m["result"].history[-1]
        lines += [f"## {task}", "", "E per MLP block, k = 4; the null is BSGC on the same model with each of the block's "
                  "weight matrices permuted (n shuffles), z = (E - mean) / sd.", "",
                  "| block | baseline E (BSGC of final weights) | its null | z | modular E (training clusters) | "
                  "its null | z | target (modular) |", "|---|---|---|---|---|---|---|---|"]
        for blk, e_mod in m["E_blocks"].items():
            cells = []
            for r_, e in ((b, b["E_blocks"][blk]), (m, e_mod)):
                null = r_["null"][blk]
                cells += [f"{e:.4f}", f"{null.mean():.4f} ± {null.std():.4f}",
                          f"{(e - null.mean()) / max(null.std(), 1e-12):+.1f}"]
            lines.append(f"| {blk} | " + " | ".join(cells) + " | >= 0.99 |")
        plain, withl = res["cost"]
        if task == "modadd":
            cost_line = (f"| test accuracy | {lb['test_acc']:.4f} | {lm['test_acc']:.4f} | both >= 0.99, "
                         f"difference <= 0.01 (measured {abs(lb['test_acc'] - lm['test_acc']):.4f}) |")
        else:
            ratio = lm["test_loss"] / lb["test_loss"]
            cost_line = (f"| validation loss (nats/char) | {lb['test_loss']:.4f} | {lm['test_loss']:.4f} | "
                         f"modular <= 1.05 x baseline (measured {ratio:.3f} x) |")
        acc_line = [] if task == "modadd" else [f"| next-character accuracy | {lb['test_acc']:.4f} | {lm['test_acc']:.4f} | |"]
        lines += ["", "| | baseline | modular | target |", "|---|---|---|---|", cost_line, *acc_line,
                  f"| training time (s; steps) | {b['train_s']:.0f}; {lb['step']} | {m['train_s']:.0f}; {lm['step']} | |",
                  f"| shuffle null + ON/OFF time (s) | {b['null_s']:.0f} + {b['onoff_s']:.0f} | "
                  f"{m['null_s']:.0f} + {m['onoff_s']:.0f} | |",
                  f"| step with L_E / plain step | | {withl / plain:.3f} ({withl * 1e3:.1f} ms vs {plain * 1e3:.1f} ms) "
                  "| <= 1.2 (floor 1.0) |",
                  f"| ON/OFF specialisation: OFF-damage Gini | {b['spec']['off_gini']:.3f} | {m['spec']['off_gini']:.3f} | |",
                  f"| ON-accuracy Gini over classes | {b['spec']['on_gini']:.3f} | {m['spec']['on_gini']:.3f} | |",
                  f"| mean OFF damage / mean ON accuracy | {b['spec']['mean_off_damage']:.3f} / {b['spec']['mean_on_acc']:.3f} "
                  f"| {m['spec']['mean_off_damage']:.3f} / {m['spec']['mean_on_acc']:.3f} | |",
                  "", f"![{task} baseline ON/OFF]({task}-baseline-onoff.png)", f"![{task} modular ON/OFF]({task}-modular-onoff.png)",
                  ""]
        bg, mg = b["spec"]["off_gini"], m["spec"]["off_gini"]
        verdict = ("about as much as the baseline's (a difference under 0.02 is read as none)" if abs(mg - bg) <= 0.02
                   else "more than the baseline's" if mg > bg else "less than the baseline's")
        lines += [f"Specialisation: OFF-damage Gini {mg:.3f} for the modular model's clusters against {bg:.3f} for a BSGC "
                  f"clustering of the baseline (higher: switching a cluster off hurts fewer classes); the modular "
                  f"model's clusters specialise {verdict}.", ""]
        for name in ("baseline", "modular"):
            ov = res[name]["onoff"].overall()
            lines.append(f"{name} overall accuracy: full {ov['full']:.4f}; ON " + ", ".join(f"{v:.3f}" for v in ov["on"])
                         + "; OFF " + ", ".join(f"{v:.3f}" for v in ov["off"]) + "  ")
        lines.append("")
        if "circuits" in res:
            lines += circuit_lines(res, task)
        summary[task] = {"E_modular": m["E_blocks"], "E_baseline": b["E_blocks"],
                         "baseline": {k_: lb[k_] for k_ in ("test_acc", "test_loss")},
                         "modular": {k_: lm[k_] for k_ in ("test_acc", "test_loss")},
                         "step_ratio": withl / plain, "spec_baseline": b["spec"], "spec_modular": m["spec"],
                         "train_s": {"baseline": b["train_s"], "modular": m["train_s"]}}
        if "circuits" in res:
            summary[task]["circuits"] = {k_: v for k_, v in res["circuits"].to_dict().items() if not k_.startswith("n_")}
    (out_dir / "report.md").write_text("\n".join(lines))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print("\n".join(lines))


def _ranges(text: str) -> list:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="report/transformers")
    ap.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "tinyshakespeare"
                                            / "input.txt"), help="text file for the character LM")
    ap.add_argument("--tasks", default="modadd,chars")
    ap.add_argument("--shuffles", type=int, default=10,
                    help="permuted copies per model for the null of E (at least 2: z divides by their sd)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--lam", type=float, default=20.0)
    ap.add_argument("--circuit-labels", default="0-19",
                    help="modadd answers to extract circuits for, in both models: all, 0-19 (default: 40 searches, "
                         "so that the whole run fits in 15 minutes on 2 cores; all 113 answers take 226), none")
    ap.add_argument("--circuit-jobs", type=int, default=2, help="worker processes for the circuits")
    ap.add_argument("--circuit-max-evals", type=int, default=30000,
                    help="evaluation budget of each circuit search (a safety cap: a search that reaches it is an "
                         "upper bound, and the report counts them)")
    ap.add_argument("--char-circuits", type=int, default=10,
                    help="chars: circuits of this many most frequent next characters (0: none)")
    ap.add_argument("--char-examples", type=int, default=100,
                    help="chars: windows followed by the label in each circuit's task (and as many others)")
    args = ap.parse_args()
    if args.shuffles < 2:
        ap.error(f"--shuffles must be at least 2 (the null's sd of fewer copies is 0 or undefined), got {args.shuffles}")
    labels = None if args.circuit_labels == "none" else ("all" if args.circuit_labels == "all" else
                                                        _ranges(args.circuit_labels))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    before, t0 = uptime(), time.perf_counter()
    print(f"uptime before: {before}", flush=True)
    circuit_args = None if labels is None else (labels, args.circuit_jobs, args.circuit_max_evals, args.char_circuits,
                                                args.char_examples)
    res = {task: run_task(task, out, args.corpus, args.shuffles, args.k, args.lam, circuit_args)
           for task in args.tasks.split(",")}
    after = uptime()
    print(f"uptime after: {after}", flush=True)
    report(res, out, before, after, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
