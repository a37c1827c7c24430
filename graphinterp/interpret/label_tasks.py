"""The one-vs-rest task of a label that a circuit must keep solving (see :mod:`graphinterp.interpret.circuits`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from graphinterp.common.errors import DataError

__all__ = ["LabelTask", "label_task", "heldout_task", "output_labels", "task_terms", "class_first_terms", "TaskMetrics",
           "split_hits"]


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
        """Per-example weights: positives and negatives each weigh 1/2 in total (all 1/n with one group only)."""
        n_pos, n_neg = self.n_pos, self.n_neg
        if n_neg == 0 or n_pos == 0:
            return torch.full((n_pos + n_neg,), 1.0 / (n_pos + n_neg), dtype=torch.float64)
        pos = torch.full(self.positive.shape, 0.5 / n_pos, dtype=torch.float64, device=self.positive.device)
        return torch.where(self.positive, pos, torch.full_like(pos, 0.5 / n_neg))  # float64 throughout: sums to 1

    def accuracy(self, hits_pos, hits_neg):
        """The balanced accuracy from the numbers of positives and negatives decided right (ints or float64 tensors).

        The mean of the two groups' accuracies (of all examples with one group only), each a count over
        its size, so that a task solved on every example has accuracy exactly 1: the weighted sum
        ``weights() @ hit`` rounds, to 0.9999999999999998 or 1.0000000000000002 for some sizes depending on
        the BLAS kernel, and a test of a held-out accuracy of 1 failed on one machine and not on another.

        Examples
        --------
        >>> task = LabelTask(0, torch.zeros(49, 1), torch.zeros(49, dtype=torch.bool))
        >>> task.accuracy(0, 49), task.accuracy(0, 48)
        (1.0, 0.9795918367346939)
        >>> LabelTask(0, torch.zeros(4, 1), torch.tensor([True, False, False, False])).accuracy(1, 1)
        0.6666666666666666
        """
        n_pos, n_neg = self.n_pos, self.n_neg
        if n_pos == 0 or n_neg == 0:
            return (hits_pos + hits_neg) / (n_pos + n_neg)
        return 0.5 * (hits_pos / n_pos) + 0.5 * (hits_neg / n_neg)

    def metrics(self, logits: torch.Tensor) -> Tuple[float, float]:
        """``(accuracy, loss)`` of the task's logits (see :mod:`graphinterp.interpret.circuits`)."""
        pos = self.positive.to(logits.device)
        hit, loss = task_terms(logits, self.label, pos)
        return float(self.accuracy(*split_hits(hit, pos))), float(self.weights().to(logits.device) @ loss.double())


def split_hits(hit: torch.Tensor, positive: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The numbers of right decisions ``hit`` (..., N) on the positives and on the negatives (float64, exact).

    Examples
    --------
    >>> split_hits(torch.tensor([True, False, True]), torch.tensor([True, True, False]))
    (tensor(1., dtype=torch.float64), tensor(1., dtype=torch.float64))
    """
    hit, pos = hit.double(), positive.double()
    hits_pos = hit @ pos
    return hits_pos, hit.sum(-1) - hits_pos


def task_terms(logits: torch.Tensor, label: int, positive: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per example: whether the one-vs-rest decision is right, and its binary cross-entropy.

    The decision is "the model says ``label``" (argmax, the first of tied maxima); the loss is
    ``-log p`` for a positive and ``-log(1 - p)`` for a negative, with ``p = softmax(logits)[label]``
    (computed in log space). ``logits`` has the classes last; see :func:`class_first_terms`.
    """
    return class_first_terms(logits.movedim(-1, 0).contiguous(), label, positive)


def class_first_terms(logits: torch.Tensor, label: int, positive: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`task_terms` for logits with the classes *first*, shape ``(C, *S)``; results have shape ``S``.

    ``positive`` broadcasts to ``S``. With the classes first every reduction over them is an
    elementwise operation between contiguous slices, which is many times faster on the CPU than a
    reduction over a short last dimension (the batched circuit evaluation spends most of its time here).

    Examples
    --------
    >>> logits = torch.tensor([[2.0, 0.0, 2.0], [0.0, 1.0, 2.0]])  # (N, C): ties go to the first class
    >>> hit, loss = class_first_terms(logits.T.contiguous(), 2, torch.tensor([True, True]))
    >>> hit.tolist(), [round(v, 4) for v in loss.tolist()]
    ([False, True], [0.7586, 0.4076])
    """
    n_cls = logits.shape[0]
    if not 0 <= label < n_cls:
        raise IndexError(f"label {label} is out of range for {n_cls} classes")
    z = logits[label]
    if n_cls == 1:  # no other class: p = 1
        return positive.expand_as(z).clone(), torch.where(positive, torch.zeros_like(z), torch.full_like(z, math.inf))
    parts = [p for p in (logits[:label], logits[label + 1:]) if p.shape[0]]
    maxima = [p.amax(0) for p in parts]
    max_others = maxima[0] if len(maxima) == 1 else torch.maximum(*maxima)
    says = z > maxima[0] if label > 0 else z >= maxima[0]  # argmax: the first of tied maxima
    if len(maxima) == 2:
        says &= z >= maxima[1]
    total = sum(torch.exp(p - max_others).sum(0) for p in parts)
    lse_others = max_others + torch.log(total)
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
    pos, neg, n_pos, n_neg = _draws(y, label, max_examples, negative_ratio, random_state)
    return _task(x, label, pos[:n_pos], neg[:n_neg])


def heldout_task(x: torch.Tensor, y: torch.Tensor, label: int, *, max_examples: int = 500,
                 negative_ratio: float = 1.0, random_state: int = 0, mode: str = "graphinterp") -> Optional[LabelTask]:
    """The examples :func:`label_task` (same arguments) leaves out, as a task of the same kind: up to
    ``max_examples`` of the label's other examples and ``negative_ratio`` times as many other
    unused examples, in the same seeded order. A circuit is searched on :func:`label_task`'s
    examples; this task checks it on examples the search never saw.

    With ``mode="authors"`` (the paper's criterion, which uses the label's own examples only) the
    held-out task has no negatives either. When every example of the label is in :func:`label_task`'s
    task (a small dataset: digits has about 36 test images per label) the held-out task is made of
    unused examples of the other labels alone, as many as the search task has: it checks the half of
    the criterion a circuit can fail there (saying the label for images of other labels), which a
    circuit pruned on every image of its label may well do. Returns None when no such example is
    left, when the search task has negatives and no other example is left to be one (a held-out task
    of positives alone would measure something else), or in ``"authors"`` mode with no unused example
    of the label.

    Examples
    --------
    >>> import torch
    >>> x, y = torch.arange(20.0)[:, None], torch.tensor([0, 1] * 10)
    >>> search, held = label_task(x, y, 1, max_examples=4), heldout_task(x, y, 1, max_examples=4)
    >>> held.n_pos, held.n_neg, bool(set(search.x.flatten().tolist()) & set(held.x.flatten().tolist()))
    (4, 4, False)
    >>> x, y = torch.arange(30.0)[:, None], torch.tensor([0, 1, 2] * 10)
    >>> held = heldout_task(x, y, 1, max_examples=10)  # all 10 examples of label 1 are searched on
    >>> held.n_pos, held.n_neg
    (0, 10)
    >>> heldout_task(x, y, 1, max_examples=10, mode="authors") is None
    True
    """
    pos, neg, n_pos, n_neg = _draws(y, label, max_examples, negative_ratio, random_state)
    pos, neg = pos[n_pos:n_pos + max_examples], neg[n_neg:]
    if mode == "authors":
        negative_ratio, neg = 0.0, neg[:0]
    if pos.numel() == 0:  # every example of the label is searched on: the unused others alone, if any
        if not (n_neg and negative_ratio and neg.numel()):
            return None
        return _task(x, label, pos, neg[:min(neg.numel(), n_neg)])
    if n_neg and negative_ratio and neg.numel() == 0:
        return None
    return _task(x, label, pos, neg[:min(neg.numel(), int(round(negative_ratio * pos.numel())))])


def _draws(y: torch.Tensor, label: int, max_examples: int, negative_ratio: float, random_state: int):
    """The label's examples and the others in their seeded order, and how many of each :func:`label_task` takes."""
    gen = torch.Generator().manual_seed(int(random_state) + 7919 * int(label))
    pos = torch.nonzero(y == label).flatten()
    neg = torch.nonzero(y != label).flatten()
    if pos.numel() == 0:
        raise DataError(f"label {label} has no example in the data; pass data that contains it or leave it out of --labels")
    pos = pos[torch.randperm(pos.numel(), generator=gen)]
    neg = neg[torch.randperm(neg.numel(), generator=gen)]
    n_pos = min(pos.numel(), int(max_examples))
    return pos, neg, n_pos, min(neg.numel(), int(round(negative_ratio * n_pos)))


def _task(x: torch.Tensor, label: int, pos: torch.Tensor, neg: torch.Tensor) -> LabelTask:
    idx = torch.cat([pos, neg])
    positive = torch.zeros(idx.numel(), dtype=torch.bool)
    positive[: pos.numel()] = True
    return LabelTask(int(label), x[idx], positive)


class TaskMetrics:
    """Balanced ``(accuracy, loss)`` of a :class:`LabelTask` for a stack of ``T`` states' logits."""

    def __init__(self, task: LabelTask, device) -> None:
        self.task, self.label, self.x = task, task.label, task.x.to(device)
        self.pos, self.w = task.positive.to(device), task.weights().to(device)

    def __call__(self, logits: torch.Tensor, examples_first: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """``logits`` of shape ``(T, N, C)`` (``(N, T, C)`` with ``examples_first``) -> accuracy and loss,
        float64 tensors of shape ``(T,)``."""
        return self.class_first(logits.movedim(-1, 0).contiguous(), examples_first)

    def class_first(self, logits: torch.Tensor, examples_first: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`__call__` for logits with the classes first: ``(C, T, N)`` (``(C, N, T)`` with ``examples_first``)."""
        if examples_first:
            hit, loss = class_first_terms(logits, self.label, self.pos[:, None])
            return self.task.accuracy(*split_hits(hit.T, self.pos)), self.w @ loss.double()
        hit, loss = class_first_terms(logits, self.label, self.pos)
        return self.task.accuracy(*split_hits(hit, self.pos)), loss.double() @ self.w


def output_labels(labels: Union[str, Iterable[int]], n_out: int) -> List[int]:
    """``labels`` as a list of output indices of a model with ``n_out`` outputs: ``"all"``, or integers in range
    (Python, numpy or 0-d torch integers; not bools or floats, which would silently round).

    Examples
    --------
    >>> output_labels("all", 3), output_labels([2, 0], 3)
    ([0, 1, 2], [2, 0])
    """
    if isinstance(labels, str):
        if labels != "all":
            raise DataError(f"labels must be 'all' or a list of integers, got {labels!r}")
        return list(range(n_out))
    try:
        items = list(labels)
    except TypeError:
        raise DataError(f"labels must be 'all' or a list of integers, got {labels!r}") from None
    def integer(c) -> bool:  # Python, numpy and 0-d torch integers (y.unique()); not bools or floats
        if isinstance(c, torch.Tensor):
            return c.dim() == 0 and not c.is_floating_point() and not c.is_complex() and c.dtype != torch.bool
        return isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_))

    wrong = [c for c in items if not integer(c)]
    if wrong:  # int(3.7) would silently run label 3
        raise DataError(f"labels must be integers (output indices), got {wrong[0]!r}")
    out = [int(c) for c in items]
    bad = [c for c in out if not 0 <= c < n_out]
    if bad or not out:
        raise DataError(f"label(s) {bad or 'none'} not in the model's output: it has {n_out} outputs, use labels in 0..{n_out - 1}")
    return out
