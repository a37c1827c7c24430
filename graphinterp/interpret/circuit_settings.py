"""What a circuit search is asked for: the :class:`Tolerance` a circuit must stay within, the :class:`Schedule`.

:class:`Tolerance` is graphinterp's criterion (a share of the full model's accuracy, an absolute rise
of its loss); :data:`AUTHORS_RTOL` is the relative slack of the paper's authors' criterion;
:class:`Schedule` sets the step sizes and budget of the pruning rounds and the final passes that
:mod:`graphinterp.interpret.circuit_search` runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Tolerance", "Schedule", "AUTHORS_RTOL"]

#: The authors' criterion keeps a removal while the loss is at most the full model's times ``1 + AUTHORS_RTOL``.
AUTHORS_RTOL = 1e-6


@dataclass(frozen=True)
class Tolerance:
    """How much worse than the full model a circuit may be on its label's task.

    Accepted while ``accuracy >= min_accuracy * full_accuracy`` and
    ``loss <= full_loss + max_loss_increase``.

    Parameters
    ----------
    min_accuracy : float, default 0.95
        Least share of the full model's accuracy a circuit must keep.
    max_loss_increase : float, default 0.1
        Most the circuit's loss may exceed the full model's (absolute, in the loss's units).
    """

    min_accuracy: float = 0.95
    max_loss_increase: float = 0.1

    def accepts(self, acc: float, loss: float, full_acc: float, full_loss: float) -> bool:
        """Whether a circuit with accuracy ``acc`` and loss ``loss`` is within tolerance.

        Parameters
        ----------
        acc, loss : float
            The candidate circuit's accuracy and loss on the label's task.
        full_acc, full_loss : float
            The full model's accuracy and loss on the same task.

        Returns
        -------
        bool
        """
        return acc >= self.min_accuracy * full_acc - 1e-12 and loss <= full_loss + self.max_loss_increase

    def accepts_all(self, acc: torch.Tensor, loss: torch.Tensor, full_acc: float, full_loss: float) -> torch.Tensor:
        """:meth:`accepts` elementwise over tensors of states.

        Parameters
        ----------
        acc, loss : torch.Tensor
            Accuracies and losses of several candidate states (same shape).
        full_acc, full_loss : float
            The full model's accuracy and loss on the task.

        Returns
        -------
        torch.Tensor of bool
            One entry per state.
        """
        return (acc >= self.min_accuracy * full_acc - 1e-12) & (loss <= full_loss + self.max_loss_increase)


@dataclass(frozen=True)
class Schedule:
    """Step sizes and budget of the pruning rounds (see :mod:`graphinterp.interpret.circuits`).

    Parameters
    ----------
    initial_step : float, default 0.05
        First step of a round, as a fraction of the round's candidate edges.
    resolution : float, default 1e-3
        Smallest step of the first round as a fraction of the live edges; it halves every round
        down to one edge.
    patience : int, default 64
        A round ends after this many blocks in a row were kept at the smallest step.
    max_rounds, max_evals : int, default 20 and 10000
        Safety caps per label. ``max_evals`` counts the candidates decided on, as a one-at-a-time
        search evaluates them: one per block of a round, one per edge walked by a final pass
        (states that a batch evaluates past the end of a run and discards are not counted).
    final_pass : bool
        After the rounds, walk every kept edge (weakest first, layer by layer from the last) and
        remove it if the task stays within tolerance, until a whole pass removes nothing: the
        circuit is then a local minimum (no single kept edge can be removed). Evaluated in exact
        batches (:func:`graphinterp.interpret.circuit_batch.sequential_pass`). Default True.
    focus : float, default 0.1
        Between full final passes, re-try only this share of the kept edges, those that came
        closest to being removable in the pass before, while that removes something (0: full
        passes only). The search still ends only with a full pass that removes nothing.
    """

    initial_step: float = 0.05
    resolution: float = 1e-3
    patience: int = 64
    max_rounds: int = 20
    max_evals: int = 10000
    final_pass: bool = True
    focus: float = 0.1
