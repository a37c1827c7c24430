"""A found circuit: its edge masks, its size (ECS), the search's record, and its graph."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.circuit_graph import circuit_networkx
from graphinterp.interpret.ecs import CircuitSize
from graphinterp.interpret.chance import clearly_above

__all__ = ["Circuit", "HeldOut"]


@dataclass
class HeldOut:
    """A circuit checked on examples its search never saw (:func:`~graphinterp.interpret.label_tasks.heldout_task`).

    Parameters
    ----------
    accuracy, loss : float
        The circuit on the held-out task, measured as on the search task.
    full_accuracy, full_loss : float
        The full model on the held-out task.
    n_pos, n_neg : int
        Held-out examples of the label and of the other labels.
    within_tolerance : bool
        Whether the circuit meets the search's own criterion on these examples (the tolerance
        against the full model's held-out figures; in ``"authors"`` mode, loss not above the full model's).
    clearly_outside : bool
        Whether it misses that criterion by more than sampling noise
        (:mod:`graphinterp.interpret.circuit_heldout`).
    missed : tuple of str
        The parts of the criterion missed: ``"accuracy"``, ``"loss"``.
    clearly_missed : tuple of str
        Those missed by more than sampling noise.
    too_few : bool
        Fewer than :data:`~graphinterp.interpret.circuit_heldout.HELDOUT_MIN_GROUP` held-out examples of the
        label or of the others: no miss is called clear.
    limits : dict of str to float
        What each part needed: the least accuracy, the most loss.
    """

    accuracy: float
    loss: float
    full_accuracy: float
    full_loss: float
    n_pos: int
    n_neg: int
    within_tolerance: bool
    clearly_outside: bool = False
    missed: Tuple[str, ...] = ()
    clearly_missed: Tuple[str, ...] = ()
    too_few: bool = False
    limits: Dict[str, float] = field(default_factory=dict)

    def mark(self, part: str) -> str:
        """The table mark of one part of the criterion: '' met, '(!)' missed clearly, '(?)' too few examples to
        tell, '(~)' missed within sampling noise."""
        if part not in self.missed:
            return ""
        return "(!)" if part in self.clearly_missed else "(?)" if self.too_few else "(~)"

    def to_dict(self) -> Dict[str, Any]:
        """The fields as plain values (for JSON)."""
        out = {k: getattr(self, k) for k in ("accuracy", "loss", "full_accuracy", "full_loss", "n_pos", "n_neg",
                                             "within_tolerance", "clearly_outside", "too_few")}
        out.update(missed=list(self.missed), clearly_missed=list(self.clearly_missed), limits=dict(self.limits))
        return out


@dataclass
class Circuit:
    """The circuit of one label: kept edges (masks), its ECS and its performance on the task.

    Parameters
    ----------
    label : int
        The output label the circuit computes.
    label_name : str
        Its name.
    masks : dict of str to BoolTensor of shape (out, in)
        Kept edges per layer (a conv edge is a kernel).
    size : CircuitSize
        Kept and total weights and edges, overall and per layer (the ECS).
    accuracy, loss : float
        The circuit on its task; ``full_accuracy``, ``full_loss``: the full model on it.
    full_accuracy, full_loss : float
        The full model's accuracy and loss on the task.
    n_pos, n_neg : int
        Examples of the label and of the other labels in the task.
    n_evals : int
        Candidates evaluated by the search, as :attr:`Schedule.max_evals` counts them (at most that
        many; the evaluations of the full model and of the final circuit are not counted).
    seconds : float, default 0.0
        Wall-clock time of the search.
    score : str, default "magnitude"
        Name of the edge score used (a callable's ``__name__``; ``"layer order"`` in ``"authors"`` mode).
    history : list of (int, bool)
        Kept edges after each evaluation of the rounds (and after each final pass), and whether
        that step was accepted (whether the pass removed anything).
    mode : {"graphinterp", "authors"}
        The criterion (see :func:`graphinterp.interpret.circuits.extract_circuit`).
    converged : bool or None
        Whether the search ended at a local minimum (a final pass removed nothing) before its
        budget; always True in ``"authors"`` mode (one pass by definition), None when the final
        pass was switched off.
    heldout : HeldOut or None
        The circuit and the full model on held-out examples of the label (None when none were left
        out of the search, or none were asked for).
    task_check : (float, int, int) or None
        In ``"authors"`` mode, which searches on the label's examples alone: the full model's balanced
        accuracy at telling the label from the others on the task's examples, and their numbers of
        positives and negatives; a circuit of a model not clearly above chance there gets a note.
    """

    label: int
    label_name: str
    masks: Dict[str, torch.Tensor]
    size: CircuitSize
    accuracy: float
    loss: float
    full_accuracy: float
    full_loss: float
    n_pos: int
    n_neg: int
    n_evals: int = 0
    seconds: float = 0.0
    score: str = "magnitude"
    history: List[Tuple[int, bool]] = field(default_factory=list, repr=False)
    mode: str = "graphinterp"
    converged: Optional[bool] = None
    heldout: Optional[HeldOut] = None
    task_check: Optional[Tuple[float, int, int]] = None

    @property
    def ecs(self) -> float:
        """Fraction of the model's non-zero weights kept."""
        return self.size.ecs

    @property
    def ecs_per_layer(self) -> Dict[str, float]:
        return dict(self.size.ecs_per_layer)

    @property
    def empty(self) -> bool:
        """Whether the circuit keeps no weight at all (``kept_params == 0``, an ECS of 0)."""
        return self.size.kept_params == 0

    @property
    def chance_accuracy(self) -> float:
        """The task's accuracy at chance: 0.5 for a balanced one-vs-rest task, 0 on the label's examples alone."""
        return 0.5 if self.n_neg else 0.0

    def _balanced_task(self) -> Optional[Tuple[float, int, int]]:
        """``(full model's balanced accuracy, n_pos, n_neg)`` on the label-against-the-rest task: the search's
        own, or in ``"authors"`` mode (which searches on the label's examples alone) :attr:`task_check`."""
        if self.n_neg and self.n_pos:
            return self.full_accuracy, self.n_pos, self.n_neg
        return self.task_check

    def _at_chance(self) -> bool:
        """Whether the full model is not clearly better than chance on the label's balanced task."""
        task = self._balanced_task()
        if task is None or not task[1] or not task[2]:
            return False
        accuracy, n_pos, n_neg = task
        n = 4.0 / (1.0 / n_pos + 1.0 / n_neg)  # the balanced accuracy's binomial size at chance
        return not clearly_above(accuracy, 0.5, n)

    def _authors_chance(self) -> str:
        """In ``"authors"`` mode, what :attr:`task_check` found when the model is at chance (one clause)."""
        accuracy, n_pos, n_neg = self.task_check
        return (f"the full model is not clearly better than chance at telling the label from the others (balanced "
                f"accuracy {accuracy:.3f} on {n_pos:,} + {n_neg:,} examples, chance 0.5), though the authors' "
                "criterion, on the label's examples alone, cannot see it")

    def _chance_note(self) -> Optional[str]:
        """The caveat for a circuit of a model not clearly above chance on the label's balanced task."""
        if not self._at_chance():
            return None
        if not self.n_neg:  # authors' mode: judged on the label's examples, checked on the label against the rest
            return (self._authors_chance() + f": its circuit of {self.size.kept_params:,} weights describes noise, "
                    "not how the model computes the label")
        return (f"the full model is not clearly better than chance on the label's task (accuracy "
                f"{self.full_accuracy:.3f}, chance {self.chance_accuracy:.1f}): its circuit of "
                f"{self.size.kept_params:,} weights describes noise, not how the model computes the label")

    def _heldout_note(self) -> Optional[str]:
        """The caveat for a circuit that misses its criterion on held-out examples by more than sampling noise."""
        h = self.heldout
        if h is None or not h.clearly_outside:
            return None
        parts = [f"accuracy {h.accuracy:.3f} < {h.limits['accuracy']:.3f} (the full model: {h.full_accuracy:.3f})"
                 if p == "accuracy" else f"loss {h.loss:.3f} > {h.limits['loss']:.3f} (the full model: {h.full_loss:.3f})"
                 for p in h.clearly_missed]
        which = (" (all of other labels: every example of the label was searched on, so this checks that the circuit "
                 "does not say the label for other labels' examples)" if h.n_pos == 0 else "")
        return (f"on {h.n_pos + h.n_neg:,} held-out examples{which} the circuit misses the search's criterion by more "
                f"than sampling noise ({', '.join(parts)}): it fits the examples it was pruned on, not only the label")

    @property
    def note(self) -> Optional[str]:
        """Why the circuit is empty, in one sentence; for a circuit that keeps weights, a caveat when the full
        model is not clearly better than chance on the label's task (:func:`~graphinterp.interpret.chance.
        clearly_above`); for any circuit, one when it misses its criterion on held-out examples by more than
        sampling noise (:attr:`heldout`); else None.

        An empty circuit is no finding about the label: either the full model is no better than
        chance on the label's task (e.g. it never predicts the label), so removing every weight
        loses nothing, or the tolerance is met with every weight removed (what is not pruned, such
        as biases or a transformer's attention, decides the label, or the tolerance is loose).

        Examples
        --------
        >>> from graphinterp.interpret.ecs import CircuitSize
        >>> size = CircuitSize(0.0, 0.0, {}, {}, 0, 10, 0, 10)
        >>> Circuit(3, "3", {}, size, 0.5, 0.7, 0.5, 0.69, 20, 20).note.split(":")[0]
        'empty circuit (0 of 10 weights kept)'
        >>> Circuit(3, "3", {}, CircuitSize(0.5, 0.5, {}, {}, 5, 10, 5, 10), 1.0, 0.1, 1.0, 0.1, 20, 20).note is None
        True
        """
        if not self.empty:
            return "; ".join(filter(None, [self._chance_note(), self._heldout_note()])) or None
        return "; ".join(filter(None, [self._empty_note(), self._heldout_note()]))

    def _empty_note(self) -> str:
        """Why the circuit keeps no weight (see :attr:`note`)."""
        head = f"empty circuit (0 of {self.size.total_params:,} weights kept): "
        if self.size.total_params == 0:
            return head + "the pruned layers hold no non-zero weight"
        tail = "; its ECS of 0 says nothing about how the model computes the label"
        if self.full_accuracy <= self.chance_accuracy + 1e-6:  # accuracies are summed in float32
            return (head + f"the full model is no better than chance on the label's task (accuracy "
                    f"{self.full_accuracy:.3f}, chance {self.chance_accuracy:.1f}; e.g. it never predicts the label, "
                    "or always does), so removing every weight loses nothing" + tail)
        if self._at_chance() and not self.n_neg:  # authors' mode, checked on the label against the rest
            return head + self._authors_chance() + tail
        if self._at_chance():
            return (head + f"the full model is not clearly better than chance on the label's task (accuracy "
                    f"{self.full_accuracy:.3f}, chance {self.chance_accuracy:.1f}), and the tolerance accepts the "
                    f"circuit with every weight removed (accuracy {self.accuracy:.3f}, loss {self.loss:.3f} vs "
                    f"{self.full_loss:.3f})" + tail)
        if self.mode == "authors":
            return (head + f"with every weight removed the loss on the label's examples does not rise above the full "
                    f"model's ({self.loss:.3f} vs {self.full_loss:.3f})" + tail)
        return (head + f"the tolerance is met with every weight removed (accuracy {self.accuracy:.3f} vs the full "
                f"model's {self.full_accuracy:.3f}, loss {self.loss:.3f} vs {self.full_loss:.3f}): what is not pruned "
                "decides the label, or the tolerance is too loose" + tail)

    def to_dict(self, *, include_masks: bool = False) -> Dict[str, Any]:
        """Plain values for JSON (masks as nested lists only when asked); ``empty`` and ``note`` say whether the
        circuit keeps no weight and why (:attr:`note`).

        Parameters
        ----------
        include_masks : bool, default False
            Add ``masks``: per layer, the kept-edge mask as nested lists of 0 and 1.

        Returns
        -------
        dict
            The fields (``history`` and ``masks`` aside, ``heldout`` as a dict or None), ``ecs``, ``size``,
            ``empty`` and ``note``.
        """
        out = {k: getattr(self, k) for k in ("label", "label_name", "accuracy", "loss", "full_accuracy",
                                             "full_loss", "n_pos", "n_neg", "n_evals", "seconds", "score", "mode",
                                             "converged")}
        if self.task_check is not None:  # authors' mode: the full model on the label against the rest
            out["task_check"] = dict(zip(("full_balanced_accuracy", "n_pos", "n_neg"), self.task_check))
        out.update(ecs=self.ecs, size=self.size.to_dict(), empty=self.empty, note=self.note,
                   heldout=None if self.heldout is None else self.heldout.to_dict())
        if include_masks:
            out["masks"] = {k: v.int().tolist() for k, v in self.masks.items()}
        return out

    def to_networkx(self, graph: LayeredGraph, clustering=None):
        """The circuit as a subgraph of ``graph``'s networkx graph: kept edges and the nodes they touch
        (:func:`~graphinterp.interpret.circuit_graph.circuit_networkx`, where the attributes are described).

        Parameters
        ----------
        graph : LayeredGraph
            The graph of the circuit's model; :attr:`masks` must cover every one of its layers.
        clustering : Clustering, optional
            Cluster labels for the node and edge attributes.

        Returns
        -------
        networkx.DiGraph
        """
        return circuit_networkx(self, graph, clustering)
