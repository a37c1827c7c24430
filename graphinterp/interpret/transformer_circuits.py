"""Per-label circuits of the project's transformers (modular addition, character LMs), by iterative edge pruning.

A **label** is an answer class ``c`` of ``a + b mod p``: its task is the one-vs-rest task of
:mod:`graphinterp.interpret.circuits` built from the sequences ``a b =`` whose answer is ``c`` (positives)
and as many sequences with another answer (negatives); the tolerance (balanced accuracy at least
``min_accuracy`` times the full model's, one-vs-rest cross-entropy at most ``max_loss_increase``
above it), the schedule, the final single-edge passes to a local minimum and the budget
(``Circuit.converged`` is False when ``max_evals`` ran out first) are those of
:func:`graphinterp.interpret.circuits.extract_circuit`, which runs the search.

**What is pruned.** The edges are the weights of every MLP block: ``blocks.<i>.mlp.fc_in``
(stream -> hidden) and ``blocks.<i>.mlp.fc_out`` (hidden -> stream). Attention (q, k, v, out),
the token and position embeddings, LayerNorms and the unembedding are kept whole, and biases are
never pruned; the ECS is the share of the MLP blocks' non-zero weights that the circuit keeps.

**How it is evaluated.** Nothing before the first block's MLP is pruned, so the residual stream
there (after the embeddings and the first attention layer) is computed once for the data; the
search then runs :class:`~graphinterp.interpret.answer_tail.AnswerTail`, the rest of the transformer
from that stream to the answer logits (for the default one-layer model:
``unembed(h + fc_out(relu(fc_in(h))))`` on the last position, an ``(N, d_model)`` input), which
skips pruned hidden units and, in deeper models, re-runs only the stages a candidate changed. Candidate weights are written into the model's own
parameters inside a context that restores them in ``finally``
(:class:`graphinterp.interpret.circuit_eval.TaskEvaluator`, or :func:`masked_mlp` for a ``with`` block).

**Language models.** A model that predicts every position (``readout="all"``, a character LM
trained on ``chars``) is handled through its prediction at the last position: a label is the next
character ``c``, and its task is made of windows followed by ``c`` against windows followed by
another character (:meth:`graphinterp.data.tasks.CharCorpus.next_char_windows`). Attention is
causal, so the last position's logits are those of the model on the window, and the search is
the same as for modular addition.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Tuple, Union

import torch
from torch import nn

from graphinterp.interpret.answer_tail import AnswerTail, check_transformer, stream_input
from graphinterp.interpret.circuit_extract import extract_circuit
from graphinterp.interpret.circuit_result import Circuit
from graphinterp.common.errors import DataError
from graphinterp.interpret.edges import EdgeLayer
from graphinterp.interpret.interventions import interventions
from graphinterp.interpret.label_tasks import LabelTask, heldout_task, label_task, output_labels

__all__ = ["AnswerTail", "stream_input", "mlp_edges", "masked_mlp", "extract_transformer_circuits"]

_PARTS = ("fc_in", "fc_out")


def mlp_edges(model: nn.Module, device=None) -> Tuple[List[EdgeLayer], List[nn.Module]]:
    """The prunable layers (every MLP block's ``fc_in`` and ``fc_out``, in forward order) and their modules.

    ``model`` is a transformer or its :class:`AnswerTail` (same names). Usable as ``edges=`` of
    :func:`graphinterp.interpret.circuits.extract_circuit`.
    """
    layers, modules = [], []
    for i, block in enumerate(model.blocks):
        for part in _PARTS:
            mod = getattr(block.mlp, part)
            name = f"blocks.{i}.mlp.{part}"
            w = mod.weight.detach().to(device if device is not None else mod.weight.device).clone()
            nz = w != 0
            layers.append(EdgeLayer(name, f"{name}.weight", w, nz, nz.long()))
            modules.append(mod)
    return layers, modules


@contextlib.contextmanager
def masked_mlp(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Zero the pruned MLP weights of ``model`` (masks ``{"blocks.<i>.mlp.fc_in": (out, in) bool}``) for a
    ``with`` block; the original weights are restored in ``finally``, even on an exception.

    Examples
    --------
    >>> from graphinterp.sources.transformer import transformer
    >>> m = transformer(vocab=6, n_out=5, d_model=8, n_heads=2, d_mlp=4)
    >>> before = m.blocks[0].mlp.fc_in.weight.clone()
    >>> with masked_mlp(m, {"blocks.0.mlp.fc_in": torch.zeros(4, 8, dtype=torch.bool)}):
    ...     float(m.blocks[0].mlp.fc_in.weight.detach().abs().sum())
    0.0
    >>> torch.equal(m.blocks[0].mlp.fc_in.weight, before)
    True
    """
    with interventions(model) as iv:
        for name, mask in masks.items():
            iv.mask_edges(model.get_submodule(name), mask)
        yield model


def extract_transformer_circuits(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                 labels: Union[str, Iterable[int]] = "all", *, max_examples: int = 500,
                                 negative_ratio: float = 1.0, random_state: int = 0, heldout: bool = True,
                                 progress: bool = True,
                                 n_jobs: int = 1, scheduler: Any = None, label_names=None,
                                 **kwargs: Any) -> Dict[int, Circuit]:
    """One circuit per answer class of a modular-addition transformer, or per next character of a
    character LM (see the module docstring).

    Parameters
    ----------
    model : Transformer
        Its weights are unchanged afterwards.
    x, y : Tensor
        Token ids ``(N, T)`` and answers ``(N,)`` (e.g. the test split of
        :func:`graphinterp.data.tasks.modular_addition`, or
        :meth:`graphinterp.data.tasks.CharCorpus.next_char_windows`); the answer of a character
        LM's window is the character after it.
    labels : "all" or iterable of int
        Answer classes in ``0..n_out-1``.
    max_examples, negative_ratio, random_state
        The task of each label (:func:`graphinterp.interpret.label_tasks.label_task`).
    heldout : bool, default True
        Check each circuit on the label's examples its task leaves out, as
        :func:`graphinterp.interpret.circuits.extract_circuits` does.
    progress : bool
        tqdm bar over labels (serial runs).
    n_jobs, scheduler
        Labels in parallel (:func:`graphinterp.common.parallel.run_tasks`); results equal a serial run's.
    label_names : sequence of str, optional
    **kwargs
        ``score``, ``tolerance``, ``schedule``, ``batch_size``, ``device``, ``num_threads``, ``mode``
        of :func:`graphinterp.interpret.circuits.extract_circuit`.

    Returns
    -------
    dict of int to Circuit
        ECS over the MLP blocks' weights.

    Raises
    ------
    DataError
        Labels outside ``0..n_out-1`` or without examples, mismatched ``x`` / ``y``.
    UnsupportedModelError
        Not a graphinterp transformer.
    """
    from tqdm.auto import tqdm

    check_transformer(model)
    if len(x) != len(y) or y.dim() != 1:
        raise DataError(f"expected one answer per sequence: x has {len(x)} rows, y has shape {tuple(y.shape)}")
    wanted = output_labels(labels, model.unembed.out_features)
    model.eval()
    feats = stream_input(model, x, batch_size=kwargs.get("batch_size", 4096)).cpu()
    draw = dict(max_examples=max_examples, negative_ratio=negative_ratio, random_state=random_state)
    tasks = {c: label_task(feats, y, c, **draw) for c in wanted}
    held = {c: heldout_task(feats, y, c, mode=kwargs.get("mode", "graphinterp"), **draw) if heldout else None
            for c in wanted}
    names = {c: str(label_names[c]) if label_names is not None and c < len(label_names) else str(c) for c in wanted}
    tail = AnswerTail(model)
    if n_jobs != 1 or scheduler is not None:
        from graphinterp.common.parallel import run_tasks

        found = run_tasks(_one, [(tail, tasks[c], names[c], {**kwargs, "heldout": held[c]}) for c in wanted],
                          n_jobs=n_jobs, scheduler=scheduler)
        return dict(zip(wanted, found))
    out: Dict[int, Circuit] = {}
    bar = tqdm(wanted, desc="circuits", unit="label", disable=not progress)
    for c in bar:
        out[c] = _one(tail, tasks[c], names[c], {**kwargs, "heldout": held[c]})
        bar.set_postfix(label=names[c], ecs=f"{out[c].ecs:.3f}")
    return out


def _one(tail: AnswerTail, task: LabelTask, name: str, kwargs: dict) -> Circuit:
    """One label's circuit (module level, for worker processes)."""
    return extract_circuit(tail, task, label_name=name, edges=mlp_edges, **kwargs)
