"""Comparing circuits: the ECS of two models label by label (the paper's Figure 3, built by
:func:`graphinterp.interpret.circuits.compare_circuits`), and where a circuit lives among clusters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from graphinterp.common.errors import DataError
from graphinterp.graph.layer import Layer
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.circuit_search import Circuit

__all__ = ["CircuitComparison", "cluster_share"]


@dataclass
class CircuitComparison:
    """Per-label ECS of two models extracted with the same settings (the paper's Figure 3).

    ``relative_change[i] = (ecs_b - ecs_a) / ecs_a``; ``a_over_b`` is the mean of
    ``(ecs_a - ecs_b) / ecs_b``, i.e. how many more parameters model a's circuits hold on average
    (the paper: an unclustered model a has on average 61.25% more than the clustered model b);
    ``ratio_of_means`` is ``mean(ecs_a) / mean(ecs_b) - 1``, the same question weighted by circuit
    size (less sensitive to labels whose circuits are tiny). The three means are over the same labels,
    :attr:`compared`: those whose circuit keeps weights in both models (an empty circuit, ECS 0, says
    nothing about how a model computes its label). Build one with :meth:`from_circuits`.

    Parameters
    ----------
    labels : list of int
        The labels compared, in order.
    label_names : list of str
        Their names.
    ecs_a, ecs_b : ndarray of shape (len(labels),)
        Effective circuit size of each label's circuit in model a and model b.
    names : tuple of (str, str)
        Names of model a and model b.
    circuits_a, circuits_b : dict of int to Circuit, optional
        The circuits themselves, by label (empty by default).
    """

    labels: List[int]
    label_names: List[str]
    ecs_a: np.ndarray
    ecs_b: np.ndarray
    names: Tuple[str, str]
    circuits_a: Dict[int, Circuit] = field(repr=False, default_factory=dict)
    circuits_b: Dict[int, Circuit] = field(repr=False, default_factory=dict)

    @property
    def relative_change(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.ecs_a > 0, (self.ecs_b - self.ecs_a) / self.ecs_a, np.nan)

    @property
    def compared(self) -> np.ndarray:
        """The labels (a boolean mask) whose circuit keeps weights in both models: what the means average over."""
        return (self.ecs_a > 0) & (self.ecs_b > 0)

    @property
    def mean_relative_change(self) -> float:
        return _nanmean(np.where(self.compared, self.relative_change, np.nan))

    @property
    def a_over_b(self) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            return _nanmean(np.where(self.compared, (self.ecs_a - self.ecs_b) / self.ecs_b, np.nan))

    @property
    def ratio_of_means(self) -> float:
        both = self.compared
        if not both.any():
            return float("nan")
        return float(np.mean(self.ecs_a[both])) / float(np.mean(self.ecs_b[both])) - 1

    @classmethod
    def from_circuits(cls, circuits_a: Mapping[int, Circuit], circuits_b: Mapping[int, Circuit], *,
                      names: Sequence[str] = ("a", "b")) -> "CircuitComparison":
        """The comparison of circuits already extracted: ``circuits_a`` of model ``names[0]``, ``circuits_b`` of ``names[1]``.

        Labels are those of ``circuits_a`` (sorted), each of which ``circuits_b`` must hold.

        Parameters
        ----------
        circuits_a, circuits_b : mapping of int to Circuit
            Circuits of model a and model b, by label.
        names : sequence of str, default ("a", "b")
            Names of the two models (the first two are used).

        Returns
        -------
        CircuitComparison

        Raises
        ------
        DataError
            A label of ``circuits_a`` has no circuit in ``circuits_b``.

        Examples
        --------
        >>> import torch
        >>> from graphinterp.interpret.ecs import CircuitSize
        >>> def circuit(ecs):
        ...     return Circuit(0, "zero", {}, CircuitSize(ecs, ecs, {}, {}, 0, 0, 0, 0), 1.0, 0.0, 1.0, 0.0, 1, 1)
        >>> comp = CircuitComparison.from_circuits({0: circuit(0.5)}, {0: circuit(0.25)}, names=("plain", "modular"))
        >>> comp.ecs_a.tolist(), comp.ecs_b.tolist(), comp.names, float(comp.relative_change[0])
        ([0.5], [0.25], ('plain', 'modular'), -0.5)
        """
        keys = sorted(circuits_a)
        missing = [c for c in keys if c not in circuits_b]
        if missing:
            raise DataError(f"label(s) {missing} have a circuit in {names[0]} but not in {names[1]}; extract the same labels")
        return cls(keys, [circuits_a[c].label_name for c in keys], np.array([circuits_a[c].ecs for c in keys]),
                   np.array([circuits_b[c].ecs for c in keys]), (str(names[0]), str(names[1])),
                   dict(circuits_a), dict(circuits_b))

    def to_dict(self) -> Dict[str, Any]:
        """Plain values for JSON: ``names`` (model a, model b), ``labels``, ``label_names``, ``ecs_a``/``ecs_b``
        per label, ``relative_change`` per label (``(ecs_b - ecs_a) / ecs_a``) and its mean
        (``mean_relative_change``), ``a_over_b`` (mean of ``(ecs_a - ecs_b) / ecs_b``: how many more parameters
        a's circuits hold, 0.6 meaning 60% more), ``ratio_of_means`` (``mean(ecs_a) / mean(ecs_b) - 1``), the means
        over ``compared`` (per label: whether its circuit keeps weights in both models), and the evaluations of each
        search; undefined values (no label compared) as None.

        Returns
        -------
        dict
        """
        return {"names": list(self.names), "labels": self.labels, "label_names": self.label_names,
                "ecs_a": self.ecs_a.tolist(), "ecs_b": self.ecs_b.tolist(),
                "relative_change": [None if np.isnan(v) else float(v) for v in self.relative_change],
                "mean_relative_change": _defined(self.mean_relative_change), "a_over_b": _defined(self.a_over_b),
                "ratio_of_means": _defined(self.ratio_of_means), "compared": self.compared.tolist(),
                "n_evals_a": [self.circuits_a[c].n_evals for c in self.labels if c in self.circuits_a],
                "n_evals_b": [self.circuits_b[c].n_evals for c in self.labels if c in self.circuits_b]}


def _defined(value: float):
    """``value``, or None for NaN (JSON has no NaN; the mean is undefined when every circuit it averages is empty)."""
    return None if np.isnan(value) else value


def _nanmean(values: np.ndarray) -> float:
    """Mean of the defined values (a label whose circuit is empty has no relative change); NaN, without a
    warning, when there is none.

    Examples
    --------
    >>> _nanmean(np.array([0.5, np.nan, 1.5])), str(_nanmean(np.array([np.nan])))
    (1.0, 'nan')
    """
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def cluster_share(circuit: Circuit, graph: LayeredGraph, clustering) -> Dict[str, Any]:
    """Where a circuit lives: shares of its kept edges and squared weight inside each cluster.

    Over the clustered layers (grouped view), a kept edge is *inside* cluster ``c`` when both ends
    have label ``c``, *between* when its ends have different labels, *unclustered* when an end is
    ``-1``. Returns ``{"edges": [k shares], "mass": [k shares], "between": {...}, "unclustered":
    {...}, "dominant": cluster with the largest mass share}``; shares are of the circuit's kept
    edges (count) and squared weight in the clustered layers.

    Parameters
    ----------
    circuit : Circuit
        A circuit whose ``masks`` cover every clustered layer.
    graph : LayeredGraph
        The graph of the circuit's model.
    clustering : Clustering
        Cluster labels of (some of) its layers; only these layers are counted.

    Returns
    -------
    dict
        ``edges`` and ``mass`` (lists of k shares), ``between`` and ``unclustered`` (dicts with ``edges``
        and ``mass``) and ``dominant`` (int; None when the circuit keeps no weight inside a cluster, e.g. an
        empty circuit, whose shares are all 0).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> from graphinterp.clustering.cluster import Clustering
    >>> from graphinterp.interpret.circuits import extract_circuits
    >>> model = nn.Sequential(nn.Linear(2, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.eye(2))
    >>> x = torch.eye(2).repeat(10, 1); y = torch.tensor([0, 1]).repeat(10)
    >>> c = extract_circuits(model, (x, y), [0], progress=False, device="cpu")[0]
    >>> labels = Clustering(2, {"0": np.array([0, 1])}, {"0": np.array([0, 1])})
    >>> share = cluster_share(c, LayeredGraph.from_module(model), labels)
    >>> share["edges"], share["between"]["edges"]
    ([0.5, 0.5], 0.0)
    """
    k = clustering.k
    counts, mass = np.zeros(k + 2), np.zeros(k + 2)  # clusters, between, unclustered
    for name in clustering.layer_names:
        layer = graph[name]
        m = circuit.masks[name].to(layer.weight.device)
        w = layer.weight * (m[..., None, None] if layer.kind == "conv2d" else m).to(layer.weight.dtype)
        sq = Layer(name, layer.kind, w, in_groups=layer.in_groups, groups=layer.groups).squared().cpu().numpy()
        rows, cols = (np.asarray(v) for v in clustering.labels(name))
        slot = np.where((rows[:, None] < 0) | (cols[None, :] < 0), k + 1,
                        np.where(rows[:, None] == cols[None, :], np.maximum(rows[:, None], 0), k))
        kept = sq > 0
        counts += np.bincount(slot[kept], minlength=k + 2)
        mass += np.bincount(slot[kept], weights=sq[kept], minlength=k + 2)
    c, s = counts / max(counts.sum(), 1), mass / max(mass.sum(), 1e-300)
    return {"edges": c[:k].tolist(), "mass": s[:k].tolist(), "between": {"edges": float(c[k]), "mass": float(s[k])},
            "unclustered": {"edges": float(c[k + 1]), "mass": float(s[k + 1])},
            "dominant": int(np.argmax(s[:k])) if s[:k].any() else None}  # None: no kept weight inside a cluster
