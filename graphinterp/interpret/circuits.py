r"""Per-label circuits by iterative edge pruning, and their Effective Circuit Size (Section 3.2).

Task
    For label :math:`c`: up to ``max_examples`` examples of :math:`c` (positives) and
    ``negative_ratio`` times as many examples of the other labels drawn at random (negatives).
    The circuit must make the one-vs-rest decision "the model says :math:`c`" (argmax). Its
    **accuracy** is the balanced accuracy of that decision (mean of the accuracy on positives and on
    negatives) and its **loss** the balanced binary cross-entropy of
    :math:`p_c = \mathrm{softmax}(z)_c` (``-log p_c`` on positives, ``-log(1 - p_c)`` on negatives).
    Negatives keep a circuit from answering :math:`c` to everything; they need not be sorted into
    their own classes, so the circuit is the label's, not the whole model's.
Tolerance
    A set of edges is acceptable while ``accuracy >= min_accuracy * full_accuracy`` and
    ``loss <= full_loss + max_loss_increase`` (full = the unpruned model on the same task).
Schedule
    Edges are scored (``magnitude`` by default; any callable, see :mod:`graphinterp.interpret.scores`).
    A round sorts the kept edges weakest first and walks them, trying to prune the next ``step``
    edges: a success prunes them and doubles ``step``; a failure restores them and halves
    ``step``; a failure at the round's smallest step keeps that block and moves on. A round ends at
    the end of the order or after ``patience`` kept blocks in a row. The next round re-scores the
    kept edges and halves the smallest step, from ``resolution`` of the live edges in the first
    round down to one edge; rounds stop when one at one-edge resolution prunes nothing, after
    ``max_rounds``, or when ``max_evals`` evaluations are spent (:class:`Schedule`). Each
    evaluation is one batched forward pass over the task (:class:`~graphinterp.interpret.circuit_search.TaskEvaluator`).
Final pass
    Then (``Schedule.final_pass``, on by default) every kept edge is tried alone, weakest first,
    layer by layer from the last, until a whole pass removes nothing: the circuit is then a local
    minimum, no single kept edge can be removed without leaving the tolerance
    (``Circuit.converged``; False when ``max_evals`` ran out first). Between two full passes,
    focused passes re-try only the kept edges that came closest to being removable
    (``Schedule.focus``, 10% of them by default) while they remove something: the edges that
    earlier removals freed are found at a fraction of a full pass's cost. It is still an upper
    bound on the smallest circuit within the tolerance; biases are never pruned.
Authors' criterion (``mode="authors"``)
    The criterion of the paper's own code, for comparisons with its numbers: the task is the
    label's own examples only (no negatives), the loss their cross-entropy on the label; every
    non-zero weight of every Linear layer is visited once, last layer first and in row-major
    order within a layer, and stays removed unless removing it raises the loss above the full
    model's loss. Convolution kernels are never removed and the ECS counts Linear weights only.
    ``score``, ``tolerance``, ``schedule`` and ``negative_ratio`` do not apply.
ECS
    Kept non-zero weights over the model's non-zero weights (overall and per layer; also in edge
    units, a conv kernel counting as one edge), see :func:`graphinterp.interpret.ecs.circuit_size`.

References
----------
Performance-based iterative weight pruning and "fraction of non-zero weights" follow the paper's
Appendix A; pruning edges against a performance threshold follows ACDC (Conmy et al., 2023);
halving the step when a pruning step breaks the threshold follows Neural Sculpting (Patil et al., 2023).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from torch import nn

from graphinterp.interpret.circuit_compare import CircuitComparison, cluster_share
from graphinterp.interpret.circuit_extract import MODES, extract_circuit
from graphinterp.interpret.circuit_result import Circuit
from graphinterp.interpret.circuit_settings import Schedule, Tolerance
from graphinterp.common.errors import DataError
from graphinterp.interpret.evaluation import as_tensors
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.label_tasks import LabelTask, heldout_task, label_task, output_labels

__all__ = ["MODES", "Tolerance", "Schedule", "Circuit", "extract_circuit", "extract_circuits", "CircuitComparison",
           "compare_circuits", "cluster_share"]


def extract_circuits(model: nn.Module, data: Any, labels: Union[str, Iterable[int]] = "all", *,
                     graph: Optional[LayeredGraph] = None, max_examples: int = 500, negative_ratio: float = 1.0,
                     random_state: int = 0, heldout: bool = True, progress: bool = True, n_jobs: int = 1,
                     scheduler: Any = None, **kwargs: Any) -> Dict[int, Circuit]:
    """Extract one circuit per label.

    Parameters
    ----------
    model : nn.Module
    data : LabeledTensors, (x, y) or TensorDataset
        Evaluation data (e.g. the test split).
    labels : "all" or iterable of int
        Output indices; "all" = every output of the model.
    graph : LayeredGraph, optional
        Traced from ``model`` when omitted.
    max_examples, negative_ratio, random_state
        The task of each label (:func:`graphinterp.interpret.label_tasks.label_task`).
    heldout : bool, default True
        Check each circuit on the label's examples its task leaves out (up to ``max_examples``, with
        negatives at the same ratio, none in ``"authors"`` mode:
        :func:`~graphinterp.interpret.label_tasks.heldout_task`), in :attr:`Circuit.heldout`; None for a
        label with no example (or no negative) left out. The search is the same either way.
    progress : bool
        tqdm bar over labels (serial runs only).
    n_jobs : int, default 1
        Labels in parallel on this many local processes (joblib); -1: one per CPU. Each label's
        search is deterministic on its own, so the circuits are identical to a serial run's.
    scheduler : str or distributed.Client, optional
        Run the labels on this Dask cluster instead (:func:`graphinterp.common.parallel.run_tasks`).
    **kwargs
        ``score``, ``tolerance``, ``schedule``, ``batch_size``, ``device``, ``num_threads``,
        ``mode`` of :func:`extract_circuit`.

    Returns
    -------
    dict of int to Circuit

    Raises
    ------
    DataError
        Empty data, a label outside the model's outputs or without examples, an unknown score.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.ReLU(), nn.Linear(8, 2, bias=False))
    >>> x = torch.randn(64, 4); y = model(x).argmax(1).detach()
    >>> circuits = extract_circuits(model, (x, y), progress=False, device="cpu")
    >>> sorted(circuits), 0 < circuits[0].ecs <= 1
    ([0, 1], True)
    """
    from tqdm.auto import tqdm

    wanted, tasks = _label_tasks(model, data, labels, kwargs, graph=graph, max_examples=max_examples,
                                 negative_ratio=negative_ratio, random_state=random_state, heldout=heldout)
    if n_jobs != 1 or scheduler is not None:
        from graphinterp.common.parallel import run_tasks

        return dict(zip(wanted, run_tasks(_extract_one, tasks, n_jobs=n_jobs, scheduler=scheduler)))
    out: Dict[int, Circuit] = {}
    bar = tqdm(tasks, desc="circuits", unit="label", disable=not progress)
    for c, t in zip(wanted, bar):
        out[c] = _extract_one(*t)
        bar.set_postfix(label=t[3], ecs=f"{out[c].ecs:.3f}")
    return out


def _label_tasks(model: nn.Module, data: Any, labels, kwargs: dict, *, graph: Optional[LayeredGraph] = None,
                 max_examples: int = 500, negative_ratio: float = 1.0, random_state: int = 0, heldout: bool = True
                 ) -> Tuple[List[int], List[tuple]]:
    """The labels wanted and the arguments of :func:`_extract_one` for each (checked before any search)."""
    x, y, names = as_tensors(data, model)
    graph = graph if graph is not None else LayeredGraph.from_module(model)
    wanted = output_labels(labels, graph.layers[-1].n_out)
    if kwargs.get("mode", "graphinterp") not in MODES:
        raise DataError(f"unknown circuit mode {kwargs['mode']!r}; use one of {list(MODES)}")
    tasks = []
    draw = dict(max_examples=max_examples, negative_ratio=negative_ratio, random_state=random_state)
    mode = kwargs.get("mode", "graphinterp")
    for c in wanted:
        task, held = label_task(x, y, c, **draw), (heldout_task(x, y, c, mode=mode, **draw) if heldout else None)
        tasks.append((model, task, graph, names[c] if names is not None and c < len(names) else str(c),
                      {**kwargs, "heldout": held}))
    return wanted, tasks


def _extract_one(model: nn.Module, task: LabelTask, graph: LayeredGraph, name: str, kwargs: dict) -> Circuit:
    """One label's circuit (module level, for worker processes)."""
    return extract_circuit(model, task, graph=graph, label_name=name, **kwargs)


def compare_circuits(model_a: nn.Module, model_b: nn.Module, data: Any, labels: Union[str, Iterable[int]] = "all",
                     *, names: Sequence[str] = ("a", "b"), **kwargs: Any) -> CircuitComparison:
    """Extract circuits of both models with the same settings (``kwargs`` of :func:`extract_circuits`).

    Both models' tasks are built (and checked: the same labels for both) before any search. With
    ``n_jobs`` or ``scheduler`` the searches of both models run in one pool (no worker idles while the
    other finishes the first model's last label); the circuits are the same as a serial run's.

    Model a is typically the unclustered baseline and b the modular model (the paper's Figure 3).

    Parameters
    ----------
    model_a, model_b : nn.Module
        The two models, with the same outputs.
    data : LabeledTensors, (x, y) or TensorDataset
        Evaluation data, the same for both models.
    labels : "all" or iterable of int, default "all"
        Output indices to compare; "all" = every output.
    names : sequence of str, default ("a", "b")
        Names of the two models in the result.
    **kwargs
        Settings of :func:`extract_circuits`, the same for both models: ``max_examples``, ``negative_ratio``,
        ``random_state``, ``heldout``, ``progress``, ``n_jobs``, ``scheduler``, and ``score``, ``tolerance``, ``schedule``,
        ``batch_size``, ``device``, ``num_threads``, ``mode`` of :func:`extract_circuit` (a ``graph`` is used
        for both models).

    Returns
    -------
    CircuitComparison
        The per-label ECS of both models, with the circuits.

    Raises
    ------
    DataError
        As in :func:`extract_circuits`, or the two models have different numbers of outputs.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(1)
    >>> a = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    >>> x = torch.randn(40, 3); y = a(x).argmax(1).detach()
    >>> comp = compare_circuits(a, a, (x, y), progress=False, device="cpu", names=("a", "same"))
    >>> comp.labels, comp.mean_relative_change
    ([0, 1], 0.0)
    """
    from tqdm.auto import tqdm

    n_jobs, scheduler = kwargs.pop("n_jobs", 1), kwargs.pop("scheduler", None)
    progress = kwargs.pop("progress", True)
    task_kw = {k: kwargs.pop(k) for k in ("graph", "max_examples", "negative_ratio", "random_state", "heldout")
               if k in kwargs}
    labels = labels if isinstance(labels, str) else list(labels)  # used twice: a generator would be spent
    wanted, tasks_a = _label_tasks(model_a, data, labels, kwargs, **task_kw)
    wanted_b, tasks_b = _label_tasks(model_b, data, labels, kwargs, **task_kw)
    if wanted_b != wanted:  # checked before any search
        raise DataError(f"the two models do not have the same outputs ({len(wanted)} and {len(wanted_b)} labels "
                        "compared); compare models of the same task, or pass the labels to compare")
    if n_jobs != 1 or scheduler is not None:
        from graphinterp.common.parallel import run_tasks

        found = run_tasks(_extract_one, tasks_a + tasks_b, n_jobs=n_jobs, scheduler=scheduler)  # one pool
    else:
        found = [_extract_one(*t) for t in tqdm(tasks_a + tasks_b, desc="circuits", unit="label", disable=not progress)]
    a, b = dict(zip(wanted, found[:len(wanted)])), dict(zip(wanted, found[len(wanted):]))
    return CircuitComparison.from_circuits(a, b, names=names)
