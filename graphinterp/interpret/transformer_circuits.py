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
search then runs :class:`AnswerTail`, the rest of the transformer from that stream to the answer
logits (for the default one-layer model: ``unembed(h + fc_out(relu(fc_in(h))))`` on the last
position, an ``(N, d_model)`` input). Candidate weights are written into the model's own
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
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from graphinterp.interpret.circuits import Circuit, _labels, extract_circuit
from graphinterp.common.errors import DataError, UnsupportedModelError
from graphinterp.common.inference import eval_mode
from graphinterp.interpret.edges import EdgeLayer
from graphinterp.interpret.interventions import interventions
from graphinterp.interpret.label_tasks import LabelTask, label_task
from graphinterp.sources.transformer import _ACTS

__all__ = ["AnswerTail", "stream_input", "mlp_edges", "masked_mlp", "extract_transformer_circuits"]

_PARTS = ("fc_in", "fc_out")


def _check(model: nn.Module) -> None:
    if not (hasattr(model, "blocks") and hasattr(model, "unembed") and hasattr(model, "readout")):
        raise UnsupportedModelError(f"{type(model).__name__} is not a graphinterp transformer "
                                    "(graphinterp.sources.transformer.transformer); transformer circuits need one")
    if model.readout not in ("last", "all"):
        raise UnsupportedModelError(f"unknown transformer readout {model.readout!r}; expected 'last' or 'all'")


class AnswerTail(nn.Module):
    """The transformer from the residual stream before the first MLP block to the answer logits.

    Input: :func:`stream_input` of the token ids, ``(N, d_model)`` for a one-layer model (the last
    position only), ``(N, T, d_model)`` otherwise. Output: the logits ``(N, n_out)``, equal to
    ``model(ids)``. The modules are the model's own (shared, not copied), and parameter names match
    the model's (``blocks.0.mlp.fc_in.weight``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        _check(model)
        self.blocks, self.ln_f, self.unembed = model.blocks, model.ln_f, model.unembed

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        first = self.blocks[0]
        h = h + _sparse_mlp(first.mlp, first.ln2(h))
        last = len(self.blocks) - 1
        for i in range(1, len(self.blocks)):
            h = self.blocks[i](h, last_only=i == last)
        if h.dim() == 3:
            h = h[:, -1]
        return self.unembed(self.ln_f(h))

    def linear_suffix(self, module: nn.Module, x: torch.Tensor) -> Optional[List[nn.Module]]:
        """What follows ``module`` on the task input ``x``, as modules applied in turn to its ``(rows, out)``
        output, for the batched single-edge passes (:class:`graphinterp.interpret.circuit_batch.LinearStates`);
        one-layer models only (None otherwise). ``rows`` may be any multiple of ``len(x)``: states of
        the same examples one after the other."""
        if len(self.blocks) != 1 or x.dim() != 2:
            return None
        mlp = self.blocks[0].mlp
        readout = _Readout(x, self.ln_f, self.unembed)
        if module is mlp.fc_out:
            return [readout]
        if module is mlp.fc_in:
            return [nn.ReLU() if mlp.act == "relu" else nn.GELU(), mlp.fc_out, readout]
        return None


def _sparse_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` computed over the hidden units that ``fc_out`` still reads (the others add exactly 0).

    Pruned circuits keep few units, so this spares most of ``fc_out``; with hooks on ``fc_out`` (the
    batched passes capture its input) the module runs as usual.
    """
    out = mlp.fc_out
    if out._forward_pre_hooks or out._forward_hooks:
        return mlp(x)
    z = _ACTS[mlp.act](mlp.fc_in(x))
    alive = torch.nonzero(out.weight.detach().ne(0).any(0)).flatten()
    if alive.numel() > 0.5 * z.shape[-1]:
        return out(z)
    return F.linear(z.index_select(-1, alive), out.weight.index_select(1, alive), out.bias)


class _Readout(nn.Module):
    """``unembed(ln_f(y + h))`` for an MLP output ``y`` of the examples whose stream is ``h`` (tiled)."""

    def __init__(self, h: torch.Tensor, ln_f: nn.Module, unembed: nn.Module) -> None:
        super().__init__()
        self.h, self.ln_f, self.unembed = h, ln_f, unembed

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = self.h.to(y.dtype)
        return self.unembed(self.ln_f((y.view(-1, *h.shape) + h).view(y.shape)))


@torch.no_grad()
def stream_input(model: nn.Module, ids: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
    """The residual stream that :class:`AnswerTail` reads: embeddings plus the first attention layer."""
    _check(model)
    if ids.dim() != 2:
        raise DataError(f"expected token ids of shape (N, T), got {tuple(ids.shape)}")
    device = next(model.parameters()).device
    first, one = model.blocks[0], len(model.blocks) == 1
    out = []
    with eval_mode(model):
        for s in range(0, len(ids), batch_size):
            x = ids[s:s + batch_size, -model.n_ctx:].to(device)
            h = model.embed(x) + model.pos(torch.arange(x.shape[1], device=device))
            a = first.attn(first.ln1(h), one)
            out.append(h[:, -1] + a[:, 0] if one else h + a)
    return torch.cat(out)


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
                                 negative_ratio: float = 1.0, random_state: int = 0, progress: bool = True,
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

    _check(model)
    if len(x) != len(y) or y.dim() != 1:
        raise DataError(f"expected one answer per sequence: x has {len(x)} rows, y has shape {tuple(y.shape)}")
    wanted = _labels(labels, model.unembed.out_features)
    model.eval()
    feats = stream_input(model, x, batch_size=kwargs.get("batch_size", 4096)).cpu()
    tasks = {c: label_task(feats, y, c, max_examples=max_examples, negative_ratio=negative_ratio,
                           random_state=random_state) for c in wanted}
    names = {c: str(label_names[c]) if label_names is not None and c < len(label_names) else str(c) for c in wanted}
    tail = AnswerTail(model)
    if n_jobs != 1 or scheduler is not None:
        from graphinterp.common.parallel import run_tasks

        found = run_tasks(_one, [(tail, tasks[c], names[c], kwargs) for c in wanted], n_jobs=n_jobs, scheduler=scheduler)
        return dict(zip(wanted, found))
    out: Dict[int, Circuit] = {}
    bar = tqdm(wanted, desc="circuits", unit="label", disable=not progress)
    for c in bar:
        out[c] = _one(tail, tasks[c], names[c], kwargs)
        bar.set_postfix(label=names[c], ecs=f"{out[c].ecs:.3f}")
    return out


def _one(tail: AnswerTail, task: LabelTask, name: str, kwargs: dict) -> Circuit:
    """One label's circuit (module level, for worker processes)."""
    return extract_circuit(tail, task, label_name=name, edges=mlp_edges, **kwargs)
