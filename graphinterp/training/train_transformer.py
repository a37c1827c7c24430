"""Modular training of transformers: warm-up, BSGC of every MLP block, then ``CE + lambda * L_E``.

The transformer counterpart of :func:`graphinterp.training.train.train`, counted in optimiser steps:

1. ``warmup_steps`` steps of cross-entropy (AdamW).
2. The model is traced into its graph, every MLP block is found and clustered with BSGC
   (:func:`graphinterp.clustering.mlp_blocks.cluster_mlp_blocks`: one label per hidden unit, the stream's
   labels shared by what the block reads and writes), on ``|W|`` or on gradient similarities
   accumulated during warm-up.
3. ``steps`` more steps of ``CE + lam * L_E`` (:class:`~graphinterp.training.loss.EnmeshmentLoss` over the
   blocks' weight matrices). ``lam = 0`` is the baseline; its last history row records ``E_refit``,
   E of a clustering fitted to the final weights, and that clustering is the one saved.

Tasks (:mod:`graphinterp.data.tasks`): ``modadd`` trains full-batch on the train split and reports test
accuracy; ``chars`` trains on random windows of the corpus and reports validation loss and accuracy
on every non-overlapping window of the held-out text (the first ``eval_windows`` of them when that cap is
set, with a note). Every ``eval_every`` steps, at the end of the warm-up and at the last step a history row
(its losses averaged over the steps since the previous row, all of one phase) is appended and the
checkpoint (weights, architecture, clustering, history, optimiser and RNG state) is written
atomically, so ``resume=True`` continues an interrupted run to the same weights.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from graphinterp.common.inference import eval_mode
from graphinterp.common.files import resolve_device
from graphinterp.clustering.labels import Clustering
from graphinterp.common.errors import DataError, TrainingError
from graphinterp.training.run_notes import enter_train_mode, replace_note, resume_notes
from graphinterp.training.baselines import block_clusterability, block_random, loss_scores
from graphinterp.training.gradsim import GradientSimilarity
from graphinterp.training.loss import EnmeshmentLoss
from graphinterp.clustering.mlp_blocks import blocks_from_clustering, cluster_mlp_blocks, find_mlp_blocks
from graphinterp.graph.model_trace import trace_graph
from graphinterp.sources.models import build_model
from graphinterp.data.tasks import load_corpus, modular_addition
from graphinterp.training.train_config import TrainResult
from graphinterp.training.interrupts import CheckpointProgress, training_run
from graphinterp.training.transformer_config import TransformerConfig
from graphinterp.training.transformer_state import check_vocabulary, resume_state, save_state

__all__ = ["TransformerConfig", "train_transformer", "task_data", "checkpoint_task_data", "evaluate_task"]


def task_data(config: TransformerConfig, vocabulary: Optional[str] = None) -> Dict[str, Any]:
    """The task's data and the model spec that fits it (a character LM's text encoded with ``vocabulary``
    when given, see :func:`graphinterp.data.tasks.load_corpus`).

    Parameters
    ----------
    config : TransformerConfig
        The run's settings (``task`` and its data settings).
    vocabulary : str, optional
        The characters in token-id order, for ``task="chars"`` (ignored for ``"modadd"``); default the
        corpus's own sorted characters.

    Returns
    -------
    dict
        ``"test"`` (the test split, or the validation windows of a corpus), ``"kwargs"`` (the
        :func:`graphinterp.sources.transformer.transformer` sizes that fit the task), ``"classes"``, and
        ``"train"`` (modadd) or ``"corpus"`` (chars).

    Raises
    ------
    DataError
        The corpus cannot be read or does not fit (:func:`graphinterp.data.tasks.load_corpus`).
    """
    if config.task == "modadd":
        train, test = modular_addition(config.p, config.train_frac, config.data_seed)
        kwargs = dict(vocab=config.p + 1, n_out=config.p, n_ctx=3, readout="last")
        return {"train": train, "test": test, "kwargs": kwargs, "classes": train.classes}
    corpus = load_corpus(config.corpus, data_dir=config.data_dir, n_ctx=config.n_ctx, max_chars=config.max_chars,
                         vocabulary=vocabulary)
    kwargs = dict(vocab=corpus.vocab, n_out=corpus.vocab, n_ctx=config.n_ctx, readout="all")
    return {"corpus": corpus, "test": corpus.windows(config.n_ctx, "val", limit=config.eval_windows),
            "kwargs": kwargs, "classes": corpus.chars}


def checkpoint_task_data(ckpt: Dict[str, Any], config: TransformerConfig, path: str,
                         others: Sequence[Tuple[Dict[str, Any], str]] = ()) -> Dict[str, Any]:
    """:func:`task_data` for evaluating the transformer checkpoint ``ckpt`` (from ``path``), checked against it
    and against the ``(checkpoint, path)`` pairs of ``others`` (models compared on the same data).

    A character LM only makes sense on text with the vocabulary it was trained on: token ids are
    positions in its training text's sorted characters. When the checkpoint records them (graphinterp
    writes ``meta["vocabulary"]``) the corpus is encoded with them, so any text written with those
    characters (a held-out part, one that lacks some) keeps the model's ids; the models compared must
    share it. Without the record the corpus must have exactly the model's vocabulary size, as another
    corpus with as many distinct characters would silently map every id to another character.

    Parameters
    ----------
    ckpt : dict
        The loaded checkpoint (its ``meta["vocabulary"]`` is read when present).
    config : TransformerConfig
        Its training settings, with the corpus to evaluate on.
    path : str
        The checkpoint's path, for messages.
    others : sequence of (dict, str), default ()
        ``(checkpoint, path)`` of other models evaluated on the same data.

    Returns
    -------
    dict
        As :func:`task_data`.

    Raises
    ------
    DataError
        If the corpus does not fit the model, saying which characters differ.
    """
    if config.task != "chars":
        return task_data(config)
    stored = [((ck.get("meta") or {}).get("vocabulary"), name) for ck, name in [(ckpt, path), *others]]
    vocabulary = stored[0][0] if isinstance(stored[0][0], str) else None
    for other, name in stored[1:]:
        if vocabulary is not None and isinstance(other, str) and other != vocabulary:
            raise DataError(f"{path} and {name} were trained on texts with other characters; compare models of "
                            "one vocabulary")
    data = task_data(config, vocabulary)
    for ck, name in [(ckpt, path), *others]:
        check_vocabulary(ck, data["corpus"], name)
    return data


@torch.no_grad()
def evaluate_task(model: nn.Module, data: Dict[str, Any], batch_size: int = 4096) -> Dict[str, float]:
    """``{"test_loss", "test_acc"}`` on the test split (modadd) or the validation windows (chars)."""
    device = next(model.parameters()).device
    with eval_mode(model):
        test = data["test"]
        x, y = (test.x, test.y) if hasattr(test, "x") else test
        loss, correct, n = 0.0, 0, 0
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size].to(device))
            t = y[i:i + batch_size].to(device)
            out, t = out.reshape(-1, out.shape[-1]), t.reshape(-1)
            loss += float(F.cross_entropy(out, t, reduction="sum"))
            correct += int((out.argmax(-1) == t).sum())
            n += t.numel()
    return {"test_loss": loss / n, "test_acc": correct / n}


def _batch(config: TransformerConfig, data, gen: torch.Generator, device) -> Tuple[torch.Tensor, torch.Tensor]:
    if config.task == "modadd":
        return data["train"].x.to(device), data["train"].y.to(device)
    x, y = data["corpus"].batch(config.batch_size, config.n_ctx, gen)
    return x.to(device), y.to(device)


def _cluster(model, x, config: TransformerConfig, gradsim, graph=None) -> Tuple[Clustering, Any]:
    graph = graph if graph is not None else trace_graph(model, example=x[:2])
    sims = gradsim.similarity() if gradsim is not None else None
    c = cluster_mlp_blocks(graph, config.k, similarity=sims, random_state=config.seed, method=config.clusters)
    return c, graph


def train_transformer(config: TransformerConfig, *, checkpoint=None, resume: bool = False,
                      model: Optional[nn.Module] = None, on_note: Optional[Callable[[str], None]] = None) -> TrainResult:
    """Run modular training of a transformer (see the module docstring).

    Parameters
    ----------
    config : TransformerConfig
    checkpoint : path, optional
        Written atomically every ``eval_every`` steps and locked while training.
    resume : bool
        Continue from ``checkpoint`` if it exists (same settings; ``steps`` may grow).
    model : nn.Module, optional
        Train this model instead of building one (then it is not saved with an architecture).
    on_note : callable, optional
        Called with each note about the run as it arises (e.g. ``resume=True`` with no checkpoint
        yet); the notes are also in ``TrainResult.notes``.

    Returns
    -------
    TrainResult
        ``history`` has one row per evaluation: ``step, phase, lam, loss, ce, l_e, E, E_random, score,
        E_blocks, E_blocks_random, test_loss, test_acc, time`` (``E_random``: the random-partition
        baseline of ``E``, see :mod:`graphinterp.training.baselines`).

    Raises
    ------
    TrainingInterrupted
        A :class:`KeyboardInterrupt` (Ctrl-C) during training, saying what ``checkpoint`` holds:
        the state at the last evaluation step, which ``resume=True`` continues, or nothing yet.

    Examples
    --------
    >>> cfg = TransformerConfig(task="modadd", p=11, train_frac=0.5, d_model=16, n_heads=2, d_mlp=32, k=2,
    ...                         warmup_steps=2, steps=2, eval_every=2, quiet=True)
    >>> r = train_transformer(cfg)
    >>> [row["phase"] for row in r.history], r.clustering.layer_names
    (['warmup', 'modular'], ['blocks.0.mlp.fc_in', 'blocks.0.mlp.fc_out'])
    """
    config = config.validate()
    progress = CheckpointProgress(checkpoint, unit="step", total=config.warmup_steps + config.steps, resume=resume)
    notes: List[str] = []

    def note(text: str) -> None:
        notes.append(text)
        if on_note is not None:
            on_note(text)

    for text in resume_notes(checkpoint, resume):
        note(text)
    if config.task == "chars" and config.eval_windows is not None:
        note(f"test loss and accuracy are over at most the first {config.eval_windows} windows of the held-out text "
             "(eval_windows); eval_windows=None evaluates them all")
    with training_run(progress):  # locks the checkpoint, flushes subnormals, reports Ctrl-C
        result = _run(config, checkpoint, resume, model, progress, note)
    result.notes = notes
    return result


def _run(config: TransformerConfig, checkpoint, resume: bool, model, progress: CheckpointProgress,
         note: Callable[[str], None]) -> TrainResult:
    device = resolve_device(config.device)
    data = task_data(config)
    torch.manual_seed(config.seed)
    arch = None
    if model is None:
        arch = {"name": "transformer", "kwargs": {**data["kwargs"], **config.model_kwargs()}}
        model = build_model(arch)
    model.to(device)
    mode_note = enter_train_mode(model)
    if mode_note:
        note(mode_note)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            betas=(config.beta1, config.beta2))
    gen = torch.Generator().manual_seed(config.seed)
    x0, _ = _batch(config, data, torch.Generator().manual_seed(0), device)
    graph = trace_graph(model, example=x0[:2])
    blocks = find_mlp_blocks(graph)  # UnsupportedModelError early, before any training
    for b in blocks:
        if config.k > min(b.d_model, b.d_hidden):
            raise TrainingError(f"k={config.k} is larger than MLP block {b.name!r} allows (d_model {b.d_model}, "
                                f"d_mlp {b.d_hidden})")
    gradsim = None
    if config.similarity == "gradient":
        gradsim = GradientSimilarity(model, [n for b in blocks for n in b.layers], graph=graph)
    step, history, clustering = 0, [], None
    if resume and checkpoint is not None:
        step, history, clustering = resume_state(checkpoint, config, arch, model, opt, gen, gradsim, data)
        progress.resumed_from = step if history else None
    loss_fn = EnmeshmentLoss(model, clustering, graph=graph, reduction=config.reduction) if clustering else None
    if clustering is None and config.warmup_steps == 0:
        clustering, graph = _cluster(model, x0, config, None)
        loss_fn = EnmeshmentLoss(model, clustering, graph=graph, reduction=config.reduction)
    replacing = replace_note(checkpoint, resume)  # every check that can stop the run has passed (run_notes)
    if replacing:
        note(replacing)
    total = config.warmup_steps + config.steps
    sums, start = {"ce": 0.0, "le": 0.0, "n": 0, "n_le": 0}, time.perf_counter()
    while step < total:
        step += 1
        modular = step > config.warmup_steps
        x, y = _batch(config, data, gen, device)
        out = model(x)
        ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        le = loss_fn() if (modular and config.lam > 0 and loss_fn is not None) else None
        loss = ce if le is None else torch.add(ce, le, alpha=config.lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if gradsim is not None and not modular:
            gradsim.update()
        opt.step()
        sums["ce"] += float(ce.detach())
        sums["n"] += 1
        if le is not None:
            sums["le"] += float(le.detach())
            sums["n_le"] += 1
        if step == config.warmup_steps:
            clustering, graph = _cluster(model, x0, config, gradsim)
            loss_fn = EnmeshmentLoss(model, clustering, graph=graph, reduction=config.reduction)
        # a row ends at the end of the warm-up too, so that no row averages steps of both phases
        if step % config.eval_every == 0 or step == total or step == config.warmup_steps:
            history.append(_row(config, model, data, loss_fn, clustering, step, modular, sums, start))
            sums, start = {"ce": 0.0, "le": 0.0, "n": 0, "n_le": 0}, time.perf_counter()
            if checkpoint is not None:
                with progress.saving(step):
                    save_state(checkpoint, model, arch, config, history, clustering, opt, gen, step, gradsim, data=data)
            if not config.quiet:
                r = history[-1]
                E = "-" if r["E"] is None else f"{r['E']:.4f} (E_random {r['E_random']:.4f}, score {r['score']:.4f})"
                print(f"step {step}/{total} [{r['phase']}] ce {r['ce']:.4f} E {E} "
                      f"test_loss {r['test_loss']:.4f} test_acc {r['test_acc']:.4f}", flush=True)
    final = clustering
    if config.lam == 0 and history:
        final, _ = _cluster(model, x0, config, None)
        final.meta["fitted"] = "final weights"
        refit = EnmeshmentLoss(model, final, reduction=config.reduction, graph=trace_graph(model, example=x0[:2]))
        scores = loss_scores(refit)
        history[-1].update(E_refit=scores["E"], E_random_refit=scores["E_random"], score_refit=scores["score"],
                           E_blocks_refit=block_clusterability(refit.masks, blocks_from_clustering(final)),
                           E_blocks_random_refit=block_random(refit.masks, blocks_from_clustering(final)))
        if checkpoint is not None:
            with progress.saving(step):
                save_state(checkpoint, model, arch, config, history, final, opt, gen, step, gradsim, trained=clustering,
                      data=data)
    return TrainResult(model, arch, final, history)


def _row(config, model, data, loss_fn, clustering, step, modular, sums, start) -> Dict[str, Any]:
    phase = ("modular" if config.lam > 0 else "train") if modular else "warmup"
    ce = sums["ce"] / max(sums["n"], 1)
    l_e = sums["le"] / sums["n_le"] if sums["n_le"] else (float(loss_fn().detach()) if loss_fn else None)
    blocks = blocks_from_clustering(clustering) if loss_fn else None
    return {"step": step, "phase": phase, "lam": float(config.lam) if modular else 0.0,
            "loss": ce + (config.lam * l_e if sums["n_le"] else 0.0), "ce": ce, "l_e": l_e, **loss_scores(loss_fn),
            "E_blocks": block_clusterability(loss_fn.masks, blocks) if loss_fn else None,
            "E_blocks_random": block_random(loss_fn.masks, blocks) if loss_fn else None,
            **evaluate_task(model, data), "time": time.perf_counter() - start}
