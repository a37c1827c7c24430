"""Clusterability (enmeshment) E and its baselines.

For one layer with squared edge weights :math:`w_{ij}^2` and cluster labels :math:`u_i` (inputs)
and :math:`v_j` (outputs), Section 2 of the paper defines

.. math:: E = \\frac{\\sum_{ij} w_{ij}^2 \\, [u_i = v_j]}{\\sum_{ij} w_{ij}^2}.

Over several layers E is mass-weighted: the within-cluster squared weight of all layers over
their total squared weight. E alone rewards one giant cluster, so every report also gives the
expected E of a random partition with the same cluster sizes (rows and columns relabelled by
independent uniform permutations),

.. math:: E_{rand} = \\sum_c \\frac{r_c}{m} \\frac{s_c}{n},

(:math:`r_c`, :math:`s_c`: rows and columns in cluster ``c``; ``m``, ``n``: the rows and columns with
weight in the layer, not the isolated ones, which BSGC labels -1 and leaves out, so a random partition
relabels the others) and the normalised score :math:`(E - E_{rand}) / (1 - E_{rand})`, which is 0
for a random partition and 1 when no weight crosses clusters.

The core, :func:`within_share`, is written once in torch and is differentiable; the training loss
(:mod:`graphinterp.training.loss`) reuses it on parameter-shaped masks.
"""
from __future__ import annotations

import functools
import operator
from dataclasses import asdict, dataclass
from typing import List, Mapping, Optional, Sequence

import numpy as np
import torch

from graphinterp.clustering.cluster import Clustering
from graphinterp.clustering.labels import check_labels
from graphinterp.clustering.mass import chance_share, normalized_score
from graphinterp.common.errors import ClusteringError
from graphinterp.common.text import json_safe
from graphinterp.graph.layered import LayeredGraph

__all__ = [
    "within_share",
    "within_mask",
    "clusterability",
    "random_partition_expectation",
    "normalized_score",
    "LayerScore",
    "ClusterabilityReport",
    "clusterability_report",
    "dominant_note",
]

#: a layer holding more than this share of the squared weight makes any E pooled over layers mostly its own
DOMINANT_SHARE = 0.9


def dominant_note(masses: Mapping[str, float], what: str) -> Optional[str]:
    """A note when one of several layers holds more than ``DOMINANT_SHARE`` of the squared weight pooled into ``what``.

    Pooled E (the mass-weighted model E, the whole-network E) weighs each layer by its squared weight; after
    Filan et al.'s unit-norm rescaling, for one, a chain's last layer holds nearly all of it.

    Examples
    --------
    >>> dominant_note({"fc1": 1.0, "fc2": 19.0}, "the mass-weighted E")
    "layer fc2 holds 95% of the squared weight, so the mass-weighted E is mostly that layer's E"
    >>> dominant_note({"fc1": 1.0, "fc2": 2.0}, "the mass-weighted E") is None
    True
    """
    total = float(sum(masses.values()))
    if len(masses) < 2 or not total > 0:
        return None
    name = max(masses, key=masses.get)
    share = masses[name] / total
    if share <= DOMINANT_SHARE:
        return None
    return f"layer {name} holds {share:.0%} of the squared weight, so {what} is mostly that layer's E"


def within_share(squares: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Share of the total of ``squares`` that falls on ``masks`` (mass-weighted over the pairs).

    :math:`\\sum_l \\sum (S_l \\odot M_l) / \\sum_l \\sum S_l`, with ``S_l`` non-negative tensors
    (squared weights) and ``M_l`` masks of the same shape (bool or float). Differentiable in ``S``.
    Returns 0 when all squares are zero.

    Parameters
    ----------
    squares : sequence of torch.Tensor
        Non-negative tensors (squared weights), at least one.
    masks : sequence of torch.Tensor
        One mask per tensor of ``squares``, of its shape (or broadcastable to it); bool or float.

    Returns
    -------
    torch.Tensor
        A scalar in ``[0, 1]`` for 0/1 masks.

    Examples
    --------
    >>> S = torch.tensor([[4.0, 1.0], [0.0, 5.0]])
    >>> within_share([S], [torch.eye(2, dtype=torch.bool)])
    tensor(0.9000)
    """
    total = functools.reduce(operator.add, [s.sum() for s in squares])
    inside = functools.reduce(operator.add, [(s * m).sum() for s, m in zip(squares, masks)])
    return inside / (total + torch.finfo(total.dtype).tiny)  # tiny: 0 (not NaN) when all weights are 0


def within_mask(row_labels, col_labels, *, device: Optional[torch.device] = None) -> torch.Tensor:
    """Boolean ``(n_in, n_out)`` mask of within-cluster edges (label ``-1`` is in no cluster)."""
    r = torch.as_tensor(np.asarray(row_labels), device=device)
    c = torch.as_tensor(np.asarray(col_labels), device=device)
    return (r[:, None] == c[None, :]) & (r[:, None] >= 0)


def clusterability(squared: torch.Tensor, row_labels, col_labels) -> torch.Tensor:
    """E of one layer from its ``(n_in, n_out)`` squared edge weights and labels (differentiable).

    Parameters
    ----------
    squared : torch.Tensor of shape (n_in, n_out)
        Squared edge weights (:meth:`graphinterp.graph.layer.Layer.squared`).
    row_labels, col_labels : array-like of int
        Labels of the input and output nodes; ``-1`` is in no cluster.

    Returns
    -------
    torch.Tensor
        A scalar: the within-cluster share of ``squared`` (0 when it is all zero).

    Examples
    --------
    >>> W = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
    >>> round(float(clusterability(W ** 2, [0, 1], [0, 1])), 6)
    0.9
    """
    return within_share([squared], [within_mask(row_labels, col_labels, device=squared.device)])


def random_partition_expectation(row_labels, col_labels, k: int, squared=None) -> float:
    """Expected E of a random partition with the same cluster sizes (see the module docstring).

    Parameters
    ----------
    row_labels, col_labels : array-like of int
        Labels in ``-1..k-1`` of the input and output nodes.
    k : int
        Number of clusters.
    squared : array-like of shape (n_in, n_out), optional
        The layer's squared edge weights. Nodes without weight in this layer are left out of ``m`` and
        ``n`` (and of the clusters), whatever their label: counting them, a random partition would drop
        weighted nodes from every cluster, and a layer with dead inputs would score above chance with no
        structure at all. A node with weight but label -1 (a user's clustering) counts in ``m`` or ``n``,
        in no cluster. Without ``squared``, label -1 is taken to mark the nodes without weight (as BSGC
        labels them).

    Returns
    -------
    float
        :math:`\\sum_c (r_c / m) (s_c / n)`.

    Examples
    --------
    >>> random_partition_expectation([0, 0, 1, 1], [0, 1], 2)
    0.5
    >>> random_partition_expectation([0, 0, 1, 1, -1, -1], [0, 1], 2)  # two dead inputs change nothing
    0.5
    """
    rows, cols = check_labels(row_labels, None, "row", k), check_labels(col_labels, None, "column", k)
    if squared is None:
        live_r, live_c = rows >= 0, cols >= 0
    else:
        sq = torch.as_tensor(squared).detach()
        if tuple(sq.shape) != (len(rows), len(cols)):
            raise ClusteringError(f"squared has shape {tuple(sq.shape)} for {len(rows)} row and {len(cols)} column labels")
        live_r, live_c = (sq.sum(1) > 0).cpu().numpy(), (sq.sum(0) > 0).cpu().numpy()
    r = np.bincount(rows[live_r & (rows >= 0)], minlength=k)
    s = np.bincount(cols[live_c & (cols >= 0)], minlength=k)
    return float(chance_share(r, s, int(live_r.sum()), int(live_c.sum())))


@dataclass
class LayerScore:
    """Clusterability of one layer.

    ``sizes`` holds one ``[rows, columns]`` pair per cluster (``Clustering.sizes``'s layout); the JSON of
    :meth:`ClusterabilityReport.to_dict` also gives them as ``row_sizes`` and ``col_sizes`` (one list of k
    each), the keys ``benchmark``'s JSON and CSV use.
    """

    layer: str
    shape: tuple
    sizes: List[List[int]]
    E: float
    E_random: float
    score: float
    mass: float
    n_isolated: int
    unlabelled_share: float = 0.0  # share of the squared weight on edges touching a node labelled -1 (isolated)


@dataclass
class ClusterabilityReport:
    """Per-layer scores and the mass-weighted model-wide E, E_random and normalised score.

    A layer without weight (all zero) has E, E_random and score NaN (0 / 0; ``null`` in the JSON) and adds
    nothing to the model-wide figures, which are NaN when no layer has weight; :meth:`notes` says so, and
    names layers whose nodes labelled isolated (-1) carry weight (counted outside every cluster).
    """

    k: int
    layers: List[LayerScore]
    E: float
    E_random: float
    score: float

    def notes(self) -> List[str]:
        """What the figures do not say: layers without weight, and weight on nodes labelled isolated."""
        out = [f"{s.layer}: no weight (all zero): E undefined, left out of the model-wide E" for s in self.layers
               if s.mass <= 0]
        out += [f"{s.layer}: nodes labelled isolated (-1), in no cluster, carry {s.unlabelled_share:.1%} of its "
                "squared weight, which counts as outside every cluster" for s in self.layers if s.unlabelled_share > 0]
        return out

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN as ``None``), with :meth:`notes`."""
        out = asdict(self)
        for layer in out["layers"]:
            layer["shape"] = list(layer["shape"])
            layer["row_sizes"], layer["col_sizes"] = ([int(p[i]) for p in layer["sizes"]] for i in (0, 1))
        out["notes"] = self.notes()
        return json_safe(out)


def clusterability_report(graph: LayeredGraph, clustering: Clustering) -> ClusterabilityReport:
    """Score every clustered layer of ``graph`` (E, random-partition E, normalised score, sizes).

    Parameters
    ----------
    graph : LayeredGraph or ModelGraph
        The graph whose weights are scored (folded where the graph folded them).
    clustering : Clustering
        Labels of some of the graph's layers (validated against the graph).

    Returns
    -------
    ClusterabilityReport
        Per layer and model-wide (squared-weight-weighted) E, E_random and score.

    Raises
    ------
    ClusteringError
        If the clustering does not fit the graph, or covers a depthwise or grouped convolution (block-diagonal
        by construction, so E = 1 whatever was learned; see
        :func:`graphinterp.clustering.validation.clusterable_layers`).

    Examples
    --------
    >>> from torch import nn
    >>> from graphinterp.clustering.cluster import cluster_layers
    >>> g = LayeredGraph.from_module(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)))
    >>> rep = clusterability_report(g, cluster_layers(g, 2, random_state=0))
    >>> 0 <= rep.E_random <= rep.E <= 1
    True
    """
    clustering.validate(graph)
    for name in clustering.layer_names:  # E = 1 by construction would inflate the model's E
        reason = graph[name].block_diagonal_reason
        if reason is not None:
            raise ClusteringError(f"the clustering covers layer {name!r}, a {reason.split(':')[0]}: E would be 1 by "
                                  "construction, whatever the model learned; cluster without it (by default "
                                  "cluster_layers, cluster_network and analyze leave such layers out)")
    scores = []
    inside_total, mass_total, random_total = 0.0, 0.0, 0.0
    for name in clustering.layer_names:
        sq = graph[name].squared().double()
        rows, cols = clustering.labels(name)
        mass = float(sq.sum())
        nan = float("nan")
        E = float(clusterability(sq, rows, cols)) if mass > 0 else nan  # 0 / 0: no weight, no E
        E_rand = random_partition_expectation(rows, cols, clustering.k, sq) if mass > 0 else nan
        r_out, c_out = torch.as_tensor(rows < 0), torch.as_tensor(cols < 0)  # labelled isolated: in no cluster
        on_unlabelled = float(sq[r_out].sum() + sq[~r_out][:, c_out].sum())  # exactly 0 where they have no weight
        scores.append(LayerScore(
            layer=name, shape=tuple(sq.shape), sizes=clustering.sizes(name).tolist(), E=E, E_random=E_rand,
            score=normalized_score(E, E_rand) if mass > 0 else nan, mass=mass,
            n_isolated=int((rows < 0).sum() + (cols < 0).sum()),
            unlabelled_share=on_unlabelled / mass if mass > 0 else 0.0,
        ))
        if mass > 0:
            inside_total += E * mass
            random_total += E_rand * mass
            mass_total += mass
    E = inside_total / mass_total if mass_total else float("nan")
    E_rand = random_total / mass_total if mass_total else float("nan")
    return ClusterabilityReport(clustering.k, scores, E, E_rand,
                                normalized_score(E, E_rand) if mass_total else float("nan"))
