"""Running a model for its outputs: eval mode and a device for a block (restored afterwards), batched predictions.

The one place for "put the model in eval mode, run it, put it back": training's evaluation, the
tracer, ablation, circuits and the transformer tasks all use :func:`eval_mode`; the evaluations that
take a ``device`` (class accuracy, ablation, circuits) run the model there inside :func:`on_device`,
which moves it back afterwards; every class-prediction loop is :func:`predictions`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

__all__ = ["eval_mode", "in_model_dtype", "on_device", "predictions"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; every submodule's own mode is restored in ``finally``
    (a BatchNorm frozen with ``.eval()`` inside a model that trains stays frozen).

    Examples
    --------
    >>> m = nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)).train()
    >>> _ = m[1].eval()
    >>> with eval_mode(m):
    ...     m.training, m[0].training
    (False, False)
    >>> m.training, m[0].training, m[1].training
    (True, True, False)
    """
    modes = [(module, module.training) for module in model.modules()]  # parents before children
    model.eval()
    try:
        yield model
    finally:
        model.train(modes[0][1])  # through train(), so a module that overrides it undoes what eval() did
        for module, training in modes[1:]:
            if module.training != training:
                module.train(training)


def in_model_dtype(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Floating-point inputs ``x`` in the dtype of the model's floating-point parameters (``x`` itself when equal).

    Data is read as float32; a model kept in float16, bfloat16 or float64 would otherwise fail in its
    first product with torch's "mat1 and mat2 must have the same dtype". Integer inputs (token ids)
    and models without floating-point parameters are left as they are.

    Examples
    --------
    >>> in_model_dtype(nn.Linear(2, 1).double(), torch.ones(1, 2)).dtype
    torch.float64
    >>> in_model_dtype(nn.Embedding(3, 2), torch.tensor([1, 2])).dtype
    torch.int64
    """
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is None or not x.is_floating_point() or x.dtype == dtype:
        return x
    return x.to(dtype)


@contextlib.contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` moved to ``device`` inside the block; every parameter and buffer goes back to its own
    device in ``finally``.

    An evaluation asked to run on CUDA (``device="auto"`` on a GPU machine included) must not leave
    the caller's CPU model on the GPU. Nothing is copied when the model is already there.

    Examples
    --------
    >>> m = nn.Linear(2, 2)
    >>> with on_device(m, torch.device("cpu")) as same:
    ...     same is m, m.weight.device.type
    (True, 'cpu')
    >>> m.weight.device.type
    'cpu'
    """
    before = [t.device for t in _tensors(model)]
    if all(d == device for d in before):
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        if len(set(before)) == 1:
            model.to(before[0])
        else:  # a model spread over several devices: each tensor back where it was
            with torch.no_grad():
                for t, d in zip(_tensors(model), before):  # listed again: moving replaced the buffers
                    if t.device != d:
                        t.data = t.data.to(d)


def _tensors(model: nn.Module) -> list:
    return list(model.parameters()) + list(model.buffers())


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
