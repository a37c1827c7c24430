"""Where one circuit search spends its evaluations: rounds and final passes, step by step.

Runs graphinterp's circuit search (:func:`graphinterp.interpret.circuit_search.iter_prune`) for one label
of a trained model and prints, per round and per pass, the steps, accepted steps, edges kept after it,
evaluations and elapsed time; then the ECS, the total and whether the search converged (a local
minimum) within ``--max-evals``. Evaluation counts are deterministic; times depend on the machine's load.

Usage::

    python benchmarks/profile_circuit.py report/cifar_fc2/seed0/cifar10_unclustered.pt --dataset cifar10 --label 0
    python benchmarks/profile_circuit.py mnist_unclustered.pt --dataset mnist --label 3 --focus 0
"""
from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import torch

from graphinterp import open_model
from graphinterp.data.datasets import load_dataset
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.circuit_search import Schedule, TaskEvaluator, Tolerance, iter_prune
from graphinterp.interpret.ecs import circuit_size
from graphinterp.interpret.edges import edge_layers
from graphinterp.interpret.evaluation import eval_mode
from graphinterp.interpret.interventions import module_of
from graphinterp.interpret.label_tasks import label_task
from graphinterp.interpret.scores import magnitude_score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None, help="default: ../shared/datasets (CIFAR-10: its extracted JPEGs)")
    ap.add_argument("--label", type=int, default=0)
    ap.add_argument("--max-examples", type=int, default=500)
    ap.add_argument("--max-evals", type=int, default=100_000)
    ap.add_argument("--focus", type=float, default=Schedule.focus, help="Schedule.focus (0: full passes only)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data_dir = args.data_dir
    if data_dir is None:
        from _shared_data import cifar10_jpeg_dir, shared_datasets_dir

        folder = cifar10_jpeg_dir() if args.dataset == "cifar10" else shared_datasets_dir()
        data_dir = str(folder) if folder is not None else None
    model = open_model(args.model).module
    test = load_dataset(args.dataset, split="test", data_dir=data_dir)
    task = label_task(test.x, test.y, args.label, max_examples=args.max_examples, random_state=args.seed)
    steps, start = [], time.perf_counter()
    with eval_mode(model), torch.no_grad():
        graph = LayeredGraph.from_module(model, input_shape=tuple(task.x.shape[1:]))
        layers = edge_layers(model, graph)
        modules = [module_of(model, graph, l.name)[0] for l in layers]
        ev = TaskEvaluator(model, layers, task, modules=modules)
        full_acc, full_loss = ev({l.name: torch.ones_like(l.live) for l in layers})
        tol, status = Tolerance(), {}
        gen = iter_prune(ev, layers, magnitude_score, lambda a, l: tol.accepts(a, l, full_acc, full_loss),
                         Schedule(max_evals=args.max_evals, focus=args.focus), status=status,
                         ok_all=lambda a, l: tol.accepts_all(a, l, full_acc, full_loss))
        while True:
            try:
                steps.append((next(gen), time.perf_counter() - start))
            except StopIteration as stop:
                masks = stop.value
                break
    phases: "OrderedDict[tuple, list]" = OrderedDict()
    for step, t in steps:
        row = phases.setdefault((step.phase, step.round), [0, 0, 0, 0, 0.0])
        row[0] += 1
        row[1] += step.accepted
        row[2], row[3], row[4] = step.kept, step.n_evals, t
    print(f"{args.model}, label {args.label}: {len(task.x)} examples, full accuracy {full_acc:.4f}, loss {full_loss:.4f}")
    print("phase  round  steps  accepted  kept after  evaluations  cumulative  time (s)")
    before = 0
    for (phase, rnd), (n, acc, kept, evals, t) in phases.items():
        print(f"{phase:<6} {rnd:<6} {n:<6} {acc:<9} {kept:<11} {evals - before:<12} {evals:<11} {t:.1f}")
        before = evals
    size = circuit_size(layers, masks)
    print(f"ECS {size.ecs:.5f}; {status['n_evals']} evaluations; converged {status['converged']} "
          f"(budget {args.max_evals}); {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
