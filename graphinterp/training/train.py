"""Training for modularity (Section 3): warm-up, cluster, then train with ``CE + lambda * L_E``.

1. Train for ``warmup_epochs`` with cross-entropy only.
2. Cluster the chosen layers (default :func:`graphinterp.training.masks.default_cluster_layers`) with
   :func:`graphinterp.clustering.cluster.cluster_network`, one label per neuron, on ``|W|`` (weight-based) or
   on :mod:`graphinterp.training.gradsim` similarities accumulated during warm-up (gradient-based).
3. Train ``epochs`` more epochs with ``CE + lam * L_E`` (:class:`graphinterp.training.loss.EnmeshmentLoss`).
   ``lam = 0`` is the unclustered baseline; its final history row also records ``E_refit``, the E
   of a clustering fitted to the final weights (with ``E_random_refit`` and ``score_refit``).

Every epoch appends a history row (``epoch, phase, loss, ce, l_e, E, E_random, score, E_layers, test_acc,
time``; ``phase`` is ``warmup``, ``modular``, or ``train`` after warm-up when ``lam = 0``; ``E`` is
mass-weighted over the clustered layers, beside its random-partition baseline ``E_random`` and the
normalised score (:mod:`graphinterp.training.baselines`), and ``E_layers`` per layer) and, when a
checkpoint path is given, writes an atomic checkpoint holding the architecture, the clustering, the
history and the training state (optimiser, epoch, RNG streams), so ``resume=True`` continues an
interrupted run and ends with exactly the weights an uninterrupted run would have.

On the CPU, training runs with subnormal floats flushed to zero in every intra-op thread
(:func:`graphinterp.common.denormal.flush_denormals`, restored afterwards): the enmeshment loss drives
between-cluster weights and their Adam moments towards zero geometrically, and arithmetic on
subnormal numbers is about ten times slower on x86 CPUs, which otherwise makes late modular epochs
markedly slower than early ones.

Under ``torch.distributed`` (one process per rank, process group initialised by the caller),
:func:`train` wraps the model in ``DistributedDataParallel``, gives each rank its share of every
global batch of ``batch_size``, scales the loss so that the all-reduced gradient is the gradient of
the global batch's mean loss, clusters on rank 0 and broadcasts the labels, and writes checkpoints
and progress bars on rank 0 only: results match a single-process run.

The step and the epoch are in :mod:`graphinterp.training.train_epoch`; the checkpoint in
:mod:`graphinterp.training.train_state`; the layers checked and the clustering at the end of the warm-up in
:mod:`graphinterp.training.train_clustering`; the notes on how a run starts in :mod:`graphinterp.training.run_notes`.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from graphinterp.common.distributed import rank_and_world
from graphinterp.common.files import resolve_device
from graphinterp.data.datasets import LabeledTensors, load_dataset
from graphinterp.common.errors import ClusteringError, TrainingError
from graphinterp.training.baselines import loss_scores
from graphinterp.training.gradsim import GradientSimilarity
from graphinterp.training.loss import EnmeshmentLoss
from graphinterp.training.masks import default_cluster_layers, trace_graph
from graphinterp.sources.models import build_model, default_spec
from graphinterp.training.settings import SIMILARITIES
from graphinterp.training.train_config import TrainConfig, TrainResult, format_history
from graphinterp.training.interrupts import CheckpointProgress, TrainingInterrupted, training_run
from graphinterp.training.train_epoch import _epoch, _progress_bar, evaluate, train_step
from graphinterp.training.run_notes import enter_train_mode, replace_note, resume_notes
from graphinterp.training.train_state import load_train_state, save_train_state
from graphinterp.training.train_clustering import _check_layers, _cluster, _current

__all__ = ["SIMILARITIES", "TrainConfig", "TrainResult", "TrainingInterrupted", "train", "train_step", "evaluate",
           "format_history"]


def _as_data(data, name: str) -> LabeledTensors:
    if isinstance(data, LabeledTensors):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(t) for t in data)
        return LabeledTensors(x.float() if x.dim() == 4 else x.float().view(len(x), 1, 1, -1), y.long(), [], name)
    raise TrainingError(f"{name} must be a LabeledTensors or an (x, y) pair of tensors, got {type(data).__name__}")


def _load_data(config: TrainConfig, train_data, test_data,
               note: Callable[[str], None]) -> Tuple[LabeledTensors, LabeledTensors]:
    """The train and test sets, cut to ``max_train``/``max_test``; ``note`` hears of a limit above a set's size."""
    out = []
    if train_data is not None and test_data is None:  # right for a subset of that dataset, not for another task
        note(f"train_data was given without test_data: test accuracy is measured on the {config.dataset} test split "
             "(TrainConfig.dataset); pass test_data for held-out examples of the task train_data comes from")
    for data, split, limit in ((train_data, "train", config.max_train), (test_data, "test", config.max_test)):
        if data is None:
            data = load_dataset(config.dataset, split=split, data_dir=config.data_dir, download=config.download)
        data = _as_data(data, f"{split}_data")
        if getattr(data, "note", None):  # e.g. a split with fewer examples than the complete dataset
            note(data.note)
        if limit and limit > len(data):  # subset() keeps everything: say so rather than train on fewer silently
            what = "training" if split == "train" else "test"
            note(f"{data.name or config.dataset} has only {len(data)} {what} examples, fewer than the {limit} asked "
                 f"for; all {len(data)} are used")
        out.append(data.subset(limit, seed=config.seed) if limit else data)
    return out[0], out[1]


def train(config: TrainConfig, *, model: Optional[nn.Module] = None, train_data=None, test_data=None,
          checkpoint=None, resume: bool = False, on_note: Optional[Callable[[str], None]] = None) -> TrainResult:
    """Run the modular-training pipeline of Section 3 (see the module docstring).

    Parameters
    ----------
    config : TrainConfig
    model : torch.nn.Module, optional
        Train this model instead of building ``config.arch`` / the default for ``config.dataset``
        (its architecture is then recorded as ``None``).
    train_data, test_data : LabeledTensors or (x, y), optional
        Instead of loading ``config.dataset``.
    checkpoint : path, optional
        Written atomically after every epoch. Checked to be writable before training starts, and
        locked (``.<name>.lock`` beside it) for the whole run, so a second run writing the same
        checkpoint fails at once instead of silently overwriting this one.
    resume : bool
        Continue from ``checkpoint`` if it exists (same settings required; ``epochs`` may grow).
    on_note : callable, optional
        Called (on rank 0) with each note about the run as it arises, e.g. a ``max_train`` larger
        than the training set, which is then used whole. The notes are also in ``TrainResult.notes``.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError, ClusteringError, DataError
        Invalid settings, a clustering that does not fit the model, missing data, a checkpoint
        that cannot be resumed.
    OutputPathError
        The checkpoint cannot be written (a folder, link or device; a read-only folder), or
        another run holds its lock.
    TrainingInterrupted
        A :class:`KeyboardInterrupt` (Ctrl-C) during training, saying what ``checkpoint`` holds:
        the state after the last finished epoch, which ``resume=True`` continues, or nothing yet.

    Examples
    --------
    >>> cfg = TrainConfig(dataset="digits", k=2, warmup_epochs=1, epochs=1, max_train=256, quiet=True)
    >>> result = train(cfg)
    >>> [row["phase"] for row in result.history], result.clustering.layer_names
    (['warmup', 'modular'], ['fc2'])
    """
    config = config.validate()
    writes = checkpoint is not None and rank_and_world()[0] == 0
    progress = CheckpointProgress(checkpoint if writes else None, unit="epoch", total=config.total_epochs,
                                  resume=resume)
    notes: List[str] = []

    def note(text: str) -> None:
        notes.append(text)
        if on_note is not None and rank_and_world()[0] == 0:
            on_note(text)

    with training_run(progress):  # locks the checkpoint, flushes subnormals (module docstring), reports Ctrl-C
        result = _run(config, model, train_data, test_data, checkpoint, resume, progress, note)
    result.notes = notes
    return result


def _run(config: TrainConfig, model, train_data, test_data, checkpoint, resume, progress: CheckpointProgress,
         note: Callable[[str], None]) -> TrainResult:
    rank, world = rank_and_world()
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    train_set, test_set = _load_data(config, train_data, test_data, note)
    torch.manual_seed(config.seed)
    arch = None
    if model is None:
        arch = config.arch if config.arch is not None else default_spec(config.dataset, config.model)
        model = build_model(arch)
    model.to(device)
    mode_note = enter_train_mode(model)
    if mode_note:
        note(mode_note)
    graph = trace_graph(model, input_shape=tuple(train_set.x.shape[1:]))
    if int(train_set.y.max()) >= graph.layers[-1].n_out:
        raise TrainingError(f"labels go up to {int(train_set.y.max())} "
                            f"but the model has {graph.layers[-1].n_out} outputs")
    layers = _check_layers(graph, config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    gradsim = GradientSimilarity(model, layers, graph=graph) if config.similarity == "gradient" else None
    state: Dict[str, Any] = {"epoch": 0, "history": [], "clustering": None, "gradsim": None}
    path = Path(checkpoint) if checkpoint is not None else None
    data_sha = train_set.fingerprint if path is not None else None  # recorded, and checked on resuming
    for text in resume_notes(path, resume):
        note(text)
    if resume and path is not None and path.exists():
        state = load_train_state(path, config, arch, model, opt, gen, data_sha, default_cluster_layers(graph))
        progress.resumed_from = state["epoch"]
        if state["epoch"] >= config.total_epochs:
            note(f"{path} has already trained all {state['epoch']} epochs asked for: nothing to train, its stored "
                 "results are reported (raise --epochs to train further)")
        if state["clustering"] is not None:
            try:
                state["clustering"].validate(graph)
            except ClusteringError as err:
                raise TrainingError(f"cannot resume {path}: {err}") from None
        if gradsim is not None and state["gradsim"] is not None:
            try:
                gradsim.load_state_dict(state["gradsim"])
            except TrainingError:
                raise
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
                raise TrainingError(f"cannot resume {path}: its gradient similarities are damaged ({err})") from None
    history, clustering = state["history"], state["clustering"]
    if clustering is None and config.warmup_epochs == 0:
        clustering = _cluster(_current(graph, model, train_set), layers, config, None, rank, world)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    x, y = train_set.x.to(device), train_set.y.to(device)
    show = not config.quiet and rank == 0
    loss_fn = EnmeshmentLoss(model, clustering, graph=graph, reduction=config.reduction) if clustering else None
    replacing = replace_note(path, resume)  # every check that can stop the run has passed (run_notes)
    if replacing:
        note(replacing)
    for epoch in range(state["epoch"] + 1, config.total_epochs + 1):
        start, modular = time.perf_counter(), epoch > config.warmup_epochs
        phase = ("modular" if config.lam > 0 else "train") if modular else "warmup"  # "train": the baseline
        with _progress_bar(total=math.ceil(len(y) / config.batch_size), desc=f"epoch {epoch}/{config.total_epochs} "
                           f"[{phase}]", disable=not show, leave=False, unit="batch") as bar:
            ce_mean, le_mean = _epoch(net, opt, x, y, gen, config, rank, world, bar,
                                      loss_fn if modular and config.lam > 0 else None,
                                      gradsim if not modular else None)
        if epoch == config.warmup_epochs:
            clustering = _cluster(_current(graph, model, train_set), layers, config, gradsim, rank, world, note)
            loss_fn = EnmeshmentLoss(model, clustering, graph=graph, reduction=config.reduction)
        l_e = le_mean if le_mean is not None else (float(loss_fn().detach()) if loss_fn else None)
        history.append({
            "epoch": epoch, "phase": phase, "lam": float(config.lam) if modular else 0.0,
            "loss": ce_mean + (config.lam * le_mean if le_mean is not None else 0.0), "ce": ce_mean, "l_e": l_e,
            **loss_scores(loss_fn), "E_layers": loss_fn.per_layer() if loss_fn else None,
            "test_acc": evaluate(model, test_set),
            "time": time.perf_counter() - start,
        })
        if path is not None and rank == 0:
            with progress.saving(epoch):
                save_train_state(path, model, arch=arch, config=config, history=history, clustering=clustering,
                                 train_clustering=clustering, opt=opt, gen=gen, epoch=epoch, gradsim=gradsim,
                                 data_sha256=data_sha)
    final = clustering
    if config.lam == 0 and history:  # the baseline: E of a clustering fitted to the final weights
        final = _cluster(_current(graph, model, train_set), layers, config, None, rank, world)
        final.meta["fitted"] = "final weights"
        refit = loss_scores(EnmeshmentLoss(model, final, graph=graph))
        history[-1].update(E_refit=refit["E"], E_random_refit=refit["E_random"], score_refit=refit["score"])
        if path is not None and rank == 0:
            with progress.saving(config.total_epochs):
                save_train_state(path, model, arch=arch, config=config, history=history, clustering=final,
                                 train_clustering=clustering, opt=opt, gen=gen, epoch=config.total_epochs,
                                 gradsim=gradsim, data_sha256=data_sha)
    return TrainResult(model, arch, final, history)
