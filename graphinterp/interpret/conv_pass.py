"""Single-edge passes over the convolution before the incremental layer, through the evaluator.

A final pass of :func:`graphinterp.interpret.circuit_search.iter_prune` walks every kept edge; a
convolution's kernels would each cost a full forward pass there
(:func:`graphinterp.interpret.circuit_batch.sequential_pass` has no batched form for them). When
the :class:`~graphinterp.interpret.circuit_eval.TaskEvaluator` evaluates that convolution channel by
channel (:class:`~graphinterp.interpret.conv_prefix.ChannelPrefix`, the paper's CNN), the walk goes
through it instead: about 5 ms per kernel instead of 90 ms on CIFAR-10, with the same decisions up to
float rounding.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from graphinterp.interpret.circuit_eval import TaskEvaluator
from graphinterp.interpret.edges import EdgeLayer

__all__ = ["walks_channels", "channel_pass"]

Accept = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def walks_channels(ev: TaskEvaluator, layer: EdgeLayer) -> bool:
    """Whether ``ev`` evaluates a kernel of ``layer`` without a full forward pass (its channel prefix)."""
    return ev.conv_prefix is not None and ev.first is not None and layer is ev.layers[0]  # the prefix implies j == 1


def channel_pass(ev: TaskEvaluator, masks: Dict[str, torch.Tensor], layer: EdgeLayer, module: nn.Module,
                 order: torch.Tensor, accept: Accept, *, max_evals: Optional[int] = None,
                 kept: Optional[list] = None) -> Tuple[int, int, bool]:
    """:func:`~graphinterp.interpret.circuit_batch.sequential_pass` for the convolution ``layer``
    (:func:`walks_channels`), one kernel at a time through ``ev``.

    The model's weights must hold ``masks`` in place (``ev.rebase`` then makes them the evaluator's
    state); ``masks[layer.name]`` and ``module.weight`` are updated in place as the walk removes
    kernels, and a kept kernel's weight is written back whether or not an evaluator session is open.
    Returns ``(removed, evaluations, finished)`` and fills ``kept`` as ``sequential_pass`` does; the
    evaluator's own count is left unchanged (the caller counts the walk's evaluations).
    """
    if order.numel() == 0:
        return 0, 0, True
    mask, n_cols = masks[layer.name], masks[layer.name].shape[1]
    removed = evals = 0
    calls = ev.n_evals
    ev.rebase(masks)
    try:
        for idx in order.tolist():
            if max_evals is not None and evals >= max_evals:
                return removed, evals, False
            o, i = divmod(idx, n_cols)
            mask[o, i] = False
            acc, loss = ev(masks, changed=torch.tensor([idx], device=mask.device))  # flat index: the first layer
            evals += 1
            removed_now = bool(accept(torch.tensor([acc], dtype=torch.float64), torch.tensor([loss], dtype=torch.float64))[0])
            with torch.no_grad():  # an open session leaves the candidate's weights in place: set them either way
                module.weight[o, i] = 0.0 if removed_now else layer.weight[o, i].to(module.weight.dtype)
            if removed_now:
                ev.accept(masks)  # after the weight: a re-capture runs the model as it now is
                removed += 1
            else:
                mask[o, i] = True
                if kept is not None:
                    kept.append((idx, loss))
    finally:
        ev.n_evals = calls
    return removed, evals, True
