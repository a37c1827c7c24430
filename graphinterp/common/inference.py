"""Running a model for its outputs: eval mode for a block (restored afterwards) and batched predictions.

The one place for "put the model in eval mode, run it, put it back": training's evaluation, the
tracer, ablation, circuits and the transformer tasks all use :func:`eval_mode`, and every
class-prediction loop is :func:`predictions`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

__all__ = ["eval_mode", "predictions"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; its previous mode is restored in ``finally``.

    Examples
    --------
    >>> m = nn.Dropout().train()
    >>> with eval_mode(m):
    ...     m.training
    False
    >>> m.training
    True
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 1024,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """The argmax of ``model`` over its last dimension for every row of ``x``, in eval mode and batches, on the CPU.

    ``device`` defaults to that of the model's first parameter.

    Examples
    --------
    >>> m = nn.Linear(2, 3)
    >>> predictions(m, torch.zeros(5, 2)).shape
    torch.Size([5])
    """
    if device is None:
        device = next(model.parameters()).device
    preds = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            preds.append(model(x[start:start + batch_size].to(device)).argmax(-1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
