"""One label's circuit: :func:`extract_circuit`, the search run on one label's one-vs-rest task.

The method (task, tolerance, schedule, final passes, the authors' criterion, ECS) is described in
:mod:`graphinterp.interpret.circuits`, which extracts the circuits of many labels and compares two
models'; :data:`MODES` lists the criteria. The search itself is :mod:`graphinterp.interpret.circuit_search`.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from graphinterp.common.errors import DataError
from graphinterp.common.files import resolve_device
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.circuit_eval import TaskEvaluator
from graphinterp.interpret.circuit_heldout import check_heldout
from graphinterp.interpret.circuit_result import Circuit
from graphinterp.interpret.circuit_search import authors_prune, prune
from graphinterp.interpret.circuit_settings import Schedule, Tolerance
from graphinterp.interpret.ecs import circuit_size
from graphinterp.interpret.edges import EdgeLayer, edge_layers
from graphinterp.interpret.evaluation import eval_mode, on_device
from graphinterp.interpret.interventions import module_of
from graphinterp.interpret.label_tasks import LabelTask
from graphinterp.interpret.scores import SCORES, ScoreContext

__all__ = ["MODES", "extract_circuit"]

#: Circuit criteria (``mode=`` of :func:`extract_circuit`): graphinterp's search, the paper's authors' code.
MODES = ("graphinterp", "authors")

ScoreFn = Callable[[ScoreContext], Dict[str, torch.Tensor]]
EdgesFn = Callable[[nn.Module, torch.device], Tuple[List[EdgeLayer], List[nn.Module]]]


def extract_circuit(model: nn.Module, task: LabelTask, *, graph: Optional[LayeredGraph] = None,
                    score: Union[str, ScoreFn] = "magnitude", tolerance: Optional[Tolerance] = None,
                    schedule: Optional[Schedule] = None, label_name: Optional[str] = None,
                    batch_size: int = 4096, device=None, num_threads: Optional[int] = 1,
                    mode: str = "graphinterp", edges: Optional[EdgesFn] = None,
                    heldout: Optional[LabelTask] = None) -> Circuit:
    """The circuit of one :class:`LabelTask` (see :mod:`graphinterp.interpret.circuits`).

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode on ``device`` (moved there for the search, then back to its own
        device); its weights and mode are unchanged afterwards.
    task : LabelTask
        From :func:`graphinterp.interpret.label_tasks.label_task`.
    graph : LayeredGraph, optional
        Traced from ``model`` with the task's input shape when omitted.
    score : {"magnitude", "attribution", "learned"} or callable
        Edge scores (:data:`graphinterp.interpret.scores.SCORES`): which edges the search tries to
        prune first; the criterion is the same for all. ``"learned"`` trains mask logits on the task
        (:func:`graphinterp.interpret.scores.learned_score`). A callable takes a
        :class:`~graphinterp.interpret.scores.ScoreContext` and returns ``{layer: (out, in) tensor}``,
        higher meaning more important.
    tolerance : Tolerance, optional
    schedule : Schedule, optional
    label_name : str, optional
    batch_size : int
    device : str or torch.device, optional
    num_threads : int or None, default 1
        Torch CPU threads during the search (``torch.set_num_threads``, restored afterwards; None
        leaves the setting alone). The search runs thousands of small forward passes, which gain
        nothing from intra-op threads and lose a lot when the cores are shared: on a busy 2-core
        machine 2 threads were 9x slower than 1 for the paper's MNIST MLP.
    mode : {"graphinterp", "authors"}
        The criterion (:mod:`graphinterp.interpret.circuits`). In ``"authors"`` mode the task's negatives are ignored
        and only its positives are used.
    edges : callable, optional
        ``edges(model, device) -> (layers, modules)``: the :class:`~graphinterp.interpret.edges.EdgeLayer`
        list to prune and the ``nn.Linear`` modules holding them (models that are not a layered
        graph, e.g. :mod:`graphinterp.interpret.transformer_circuits`); ``graph`` is then not used.
    heldout : LabelTask, optional
        Examples the search does not see (:func:`~graphinterp.interpret.label_tasks.heldout_task`):
        the circuit and the full model are evaluated on them afterwards (:attr:`Circuit.heldout`,
        :func:`~graphinterp.interpret.circuit_heldout.check_heldout`); the search is the same with or without.

    Returns
    -------
    Circuit

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from graphinterp.interpret.label_tasks import label_task
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    >>> x = torch.randn(90, 4); y = model(x).argmax(1).detach()
    >>> c = extract_circuit(model, label_task(x, y, 0), device="cpu")
    >>> c.accuracy >= 0.95 * c.full_accuracy, sorted(c.masks), c.masks["0"].shape
    (True, ['0', '2'], torch.Size([8, 4]))
    """
    if mode not in MODES:
        raise DataError(f"unknown circuit mode {mode!r}; use one of {list(MODES)}")
    tolerance, schedule = tolerance or Tolerance(), schedule or Schedule()
    score_fn = SCORES.get(score) if isinstance(score, str) else score
    if score_fn is None:
        raise DataError(f"unknown score {score!r}; use one of {sorted(SCORES)} or a callable")
    whole = task  # the label against the rest: in "authors" mode only to check the model is above chance on it
    if mode == "authors" and task.n_neg:
        task = LabelTask(task.label, task.x[task.positive], task.positive[task.positive])
    device = resolve_device(device)
    start, threads = time.perf_counter(), torch.get_num_threads()
    if num_threads is not None and device.type == "cpu":
        torch.set_num_threads(int(num_threads))
    status: dict = {}
    history: list = []
    task_check = None
    try:
        with on_device(model, device), eval_mode(model):
            if edges is not None:
                layers, modules = edges(model, device)
            else:
                graph = graph if graph is not None else LayeredGraph.from_module(model, input_shape=tuple(task.x.shape[1:]))
                layers = edge_layers(model, graph, device=device)
                modules = [module_of(model, graph, l.name)[0] for l in layers]
            if mode == "authors":
                if whole.n_neg and whole.n_pos:
                    full = TaskEvaluator(model, layers, whole, modules=modules, batch_size=batch_size, device=device)
                    task_check = (full({l.name: torch.ones_like(l.live) for l in layers})[0], whole.n_pos, whole.n_neg)
                masks, info = authors_prune(model, layers, modules, task, batch_size=batch_size)
                full_acc, full_loss, acc, loss = (info[k] for k in ("full_accuracy", "full_loss", "accuracy", "loss"))
                status.update(converged=True, n_evals=info["n_evals"])
                sized = [l for l in layers if not l.is_conv]
            else:
                ev = TaskEvaluator(model, layers, task, modules=modules, batch_size=batch_size, device=device)
                full_acc, full_loss = ev({l.name: torch.ones_like(l.live) for l in layers})
                ev.n_evals = 0  # the reference is not a candidate: n_evals counts what Schedule.max_evals caps
                masks = prune(ev, layers, score_fn, lambda a, l: tolerance.accepts(a, l, full_acc, full_loss),
                              schedule, history, status=status,
                              ok_all=lambda a, l: tolerance.accepts_all(a, l, full_acc, full_loss))
                acc, loss = ev({k: v.to(device) for k, v in masks.items()})  # the result, not a candidate
                sized = layers
            checked = None if heldout is None else check_heldout(model, layers, modules, masks, heldout, mode=mode,
                                                                 tolerance=tolerance, batch_size=batch_size)
    finally:
        torch.set_num_threads(threads)
    name = "layer order" if mode == "authors" else (score if isinstance(score, str) else getattr(score, "__name__", "custom"))
    return Circuit(task.label, str(task.label if label_name is None else label_name), masks,
                   circuit_size(sized, masks), acc, loss, full_acc, full_loss, task.n_pos, task.n_neg,
                   status["n_evals"], time.perf_counter() - start, name, history, mode, status.get("converged"), checked,
                   task_check)
