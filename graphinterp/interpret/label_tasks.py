"""The one-vs-rest task of a label that a circuit must keep solving (see :mod:`graphinterp.interpret.circuits`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from graphinterp.common.errors import DataError

__all__ = ["LabelTask", "label_task", "task_terms"]


@dataclass
class LabelTask:
    """One-vs-rest task of a label: its examples (positives) and a sample of the others (negatives)."""

    label: int
    x: torch.Tensor
    positive: torch.Tensor

    @property
    def n_pos(self) -> int:
        return int(self.positive.sum())

    @property
    def n_neg(self) -> int:
        return int((~self.positive).sum())

    def weights(self) -> torch.Tensor:
        """Per-example weights: positives and negatives each weigh 1/2 in total (all 1/n without negatives)."""
        n_pos, n_neg = self.n_pos, self.n_neg
        if n_neg == 0:
            return torch.full((n_pos,), 1.0 / n_pos, dtype=torch.float64)
        return torch.where(self.positive, 0.5 / n_pos, 0.5 / n_neg).to(torch.float64)

    def metrics(self, logits: torch.Tensor) -> Tuple[float, float]:
        """``(accuracy, loss)`` of the task's logits (see :mod:`graphinterp.interpret.circuits`)."""
        hit, loss = task_terms(logits, self.label, self.positive.to(logits.device))
        w = self.weights().to(logits.device)
        return float(w @ hit.double()), float(w @ loss.double())


def task_terms(logits: torch.Tensor, label: int, positive: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per example: whether the one-vs-rest decision is right, and its binary cross-entropy.

    The decision is "the model says ``label``" (argmax); the loss is ``-log p`` for a positive and
    ``-log(1 - p)`` for a negative, with ``p = softmax(logits)[label]`` (computed in log space).
    """
    says = logits.argmax(-1) == label
    others = logits.clone()
    others[:, label] = -float("inf")
    z, lse_others = logits[:, label], torch.logsumexp(others, -1)
    lse = torch.logaddexp(z, lse_others)
    return says == positive, torch.where(positive, lse - z, lse - lse_others)


def label_task(x: torch.Tensor, y: torch.Tensor, label: int, *, max_examples: int = 500,
               negative_ratio: float = 1.0, random_state: int = 0) -> LabelTask:
    """Build the task of ``label``: up to ``max_examples`` of its examples and ``negative_ratio``
    times as many examples of other labels, drawn uniformly without replacement.

    Raises
    ------
    DataError
        If ``label`` has no example in ``y``.

    Examples
    --------
    >>> import torch
    >>> task = label_task(torch.zeros(10, 3), torch.tensor([0, 1] * 5), 1, max_examples=4)
    >>> task.n_pos, task.n_neg, float(task.weights().sum())
    (4, 4, 1.0)
    """
    gen = torch.Generator().manual_seed(int(random_state) + 7919 * int(label))
    pos = torch.nonzero(y == label).flatten()
    neg = torch.nonzero(y != label).flatten()
    if pos.numel() == 0:
        raise DataError(f"label {label} has no example in the data; pass data that contains it or leave it out of --labels")
    pos = pos[torch.randperm(pos.numel(), generator=gen)[:max_examples]]
    n_neg = min(neg.numel(), int(round(negative_ratio * pos.numel())))
    neg = neg[torch.randperm(neg.numel(), generator=gen)[:n_neg]]
    idx = torch.cat([pos, neg])
    positive = torch.zeros(idx.numel(), dtype=torch.bool)
    positive[: pos.numel()] = True
    return LabelTask(int(label), x[idx], positive)
