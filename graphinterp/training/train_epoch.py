"""One epoch of training: the optimiser step on ``CE + lam * L_E``, the pass over the data, test accuracy.

:func:`train_step` is one step (the regulariser is any zero-argument callable, an
:class:`~graphinterp.training.loss.EnmeshmentLoss`); ``_epoch`` is one pass over the shuffled data,
each rank taking its share of every global batch under ``torch.distributed`` (the loss scaled so that
the all-reduced gradient is that of the global batch's mean loss), under a tqdm bar made and closed
with Ctrl-C held (``_progress_bar``); :func:`evaluate` is the accuracy on a test set. The pipeline
that runs the epochs is :func:`graphinterp.training.train.train`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from graphinterp.common.inference import predictions
from graphinterp.data.datasets import LabeledTensors
from graphinterp.training.interrupts import held_interrupts
from graphinterp.training.train_config import TrainConfig

__all__ = ["train_step", "evaluate"]


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               loss_fn: Optional[Callable[[], torch.Tensor]] = None, lam: float = 0.0, ce_scale: Optional[float] = None,
               after_backward=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One optimiser step on ``CE (+ lam * L_E)``; returns the detached ``(CE, L_E or None)``.

    ``loss_fn`` is any zero-argument callable returning the regulariser (an :class:`EnmeshmentLoss`);
    ``ce_scale`` replaces the batch mean by ``sum * ce_scale`` (used to split a global batch over
    ranks); ``after_backward`` is called between ``backward()`` and ``step()`` (gradient similarity).
    """
    out = net(x)
    ce = F.cross_entropy(out, y) if ce_scale is None else F.cross_entropy(out, y, reduction="sum") * ce_scale
    le = loss_fn() if (loss_fn is not None and lam > 0) else None
    loss = ce if le is None else torch.add(ce, le, alpha=lam)  # one fused op: ce + lam * le
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if after_backward is not None:
        after_backward()
    optimizer.step()
    return ce.detach(), (None if le is None else le.detach())


@torch.no_grad()
def evaluate(model: nn.Module, data: LabeledTensors, *, batch_size: int = 1024) -> float:
    """Accuracy of ``model`` on ``data`` (evaluated in eval mode on the model's device)."""
    return int((predictions(model, data.x, batch_size) == data.y).sum()) / max(len(data), 1)


def _epoch(net, opt, x, y, gen, config: TrainConfig, rank: int, world: int, bar, loss_fn, gradsim):
    """One pass over the data; returns the sample-weighted mean CE and mean L_E (None if not trained)."""
    ce_sum = torch.zeros((), dtype=torch.float64, device=x.device)  # this rank's share of the CE sum
    le_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    perm = torch.randperm(len(y), generator=gen).to(x.device)
    for b, i in enumerate(range(0, len(y), config.batch_size)):
        idx = perm[i:i + config.batch_size]
        n_global = len(idx)
        if world > 1:  # this rank's part of the global batch; the loss is scaled so DDP's mean is the batch mean
            idx = idx.tensor_split(world)[rank]
        ce, le = train_step(net, opt, x[idx], y[idx], loss_fn=loss_fn, lam=config.lam,
                            ce_scale=world / n_global if world > 1 else None,
                            after_backward=gradsim.update if gradsim is not None else None)
        ce_sum.add_(ce, alpha=n_global / world)
        if le is not None:
            le_sum.add_(le, alpha=n_global)
        bar.update(1)
        if not bar.disable and b % 50 == 0:
            bar.set_postfix(ce=f"{float(ce):.3f}")
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(ce_sum)  # L_E is the same on every rank
    return float(ce_sum) / len(y), (float(le_sum) / len(y) if loss_fn is not None else None)


@contextlib.contextmanager
def _progress_bar(**kwargs) -> Iterator[Any]:
    """A tqdm bar (``kwargs``) for the block, made and closed with Ctrl-C held.

    A bar interrupted while it draws or clears itself would stay on screen, with the
    ``error: interrupted`` line appended to it.
    """
    from tqdm.auto import tqdm

    bar = None
    try:
        with held_interrupts():
            bar = tqdm(**kwargs)
        yield bar
    finally:
        if bar is not None:
            with held_interrupts():
                bar.close()
