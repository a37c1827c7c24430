"""Small digits checkpoints for the ablate/circuits CLI tests (not a test module)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

_CACHE: dict = {}


def digits_checkpoint(path, *, clustering: bool, seed: int = 0, k: int = 2):
    """Train a 64-16-16-10 MLP on digits for a moment and save it (with a network-wide clustering of fc2).

    Trained once per process and settings, single-threaded (tiny ops only lose from threads), and
    seeded with a local generator so the global RNG is not touched.
    """
    key = (clustering, seed, k)
    if key not in _CACHE:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _CACHE[key] = _train(clustering, seed, k)
        finally:
            torch.set_num_threads(threads)
    Path(path).write_bytes(_CACHE[key])
    return path


def _train(clustering: bool, seed: int, k: int) -> bytes:
    from graphinterp.sources.checkpoint import save_checkpoint
    from graphinterp.clustering.cluster import cluster_network
    from graphinterp.data.datasets import load_dataset
    from graphinterp.graph.layered import LayeredGraph
    from graphinterp.sources.models import build_model

    gen = torch.Generator().manual_seed(seed)
    spec = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16, 16], "num_classes": 10}}
    model = build_model(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=gen) / p.shape[-1] ** 0.5)
    data = load_dataset("digits", split="train")
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(data.x), data.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    labels = None
    if clustering:
        labels = cluster_network(LayeredGraph.from_module(model), k, layers=["fc2"], random_state=0).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "m.pt"
        save_checkpoint(target, model, arch=spec, clustering=labels)
        return target.read_bytes()


def run_cli(args):
    """Invoke the ``graphinterp`` click group in-process."""
    from click.testing import CliRunner

    from graphinterp.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def fast_and_plain_evaluators(model, x, input_shape, batch_size):
    """The model's edge layers and two TaskEvaluators on the task of the first example's predicted
    label: incremental (``fast``) and plain full passes (``plain``), for comparing the two."""
    from graphinterp.graph.layered import LayeredGraph
    from graphinterp.interpret.circuit_search import TaskEvaluator
    from graphinterp.interpret.edges import edge_layers
    from graphinterp.interpret.interventions import module_of
    from graphinterp.interpret.label_tasks import label_task

    y = model(x).argmax(1).detach()
    graph = LayeredGraph.from_module(model, input_shape=input_shape)
    layers = edge_layers(model, graph)
    mods = [module_of(model, graph, l.name)[0] for l in layers]
    task = label_task(x, y, int(y[0]), random_state=0)
    fast = TaskEvaluator(model, layers, task, modules=mods, batch_size=batch_size)
    plain = TaskEvaluator(model, layers, task, modules=mods, batch_size=batch_size, incremental=False)
    return layers, fast, plain, task
