"""Functional modules: clusters of each hidden level's units from association matrices, against a shuffle
null and against the weight clusters (Lange, Rolnick & Kording, 2022, beside Golechha et al.'s BSGC).

For each hidden level and each association kind (:mod:`graphinterp.interpret.association`) the units
are clustered and scored by modularity against a shuffle null (:mod:`graphinterp.clustering.modularity`);
the clusterings of one level are then compared with each other and with the level's weight clusters
(BSGC, e.g. what `graphinterp train` stores) by adjusted mutual information: 1 for the same partition,
about 0 for unrelated ones. Do the units that the weights group also respond alike (upstream) and act
alike on the outputs (downstream)?
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from graphinterp.clustering.labels import Clustering
from graphinterp.clustering.modularity import UnitClusters, modularity, modularity_test
from graphinterp.common.seeds import check_random_state
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.association import association_matrices
from graphinterp.interpret.evaluation import as_tensors

__all__ = ["LevelModules", "FunctionalModules", "functional_modules", "weight_level_labels"]


@dataclass
class LevelModules:
    """One level's clusterings, per association kind, and how they agree.

    Attributes
    ----------
    level : str
    n_units : int
    clusters : dict of str to UnitClusters
        Per kind.
    weight_labels : ndarray or None
        The level's weight clusters (None without a weight clustering of the level).
    weight_modularity : dict of str to float
        Per kind, the modularity of the weight clusters on that kind's association graph.
    agreement : dict of str to float
        Adjusted mutual information of each pair of clusterings, keyed ``"a~b"`` (kinds and ``"weights"``).
    matrices : dict of str to ndarray
        Per kind, the association matrix (not in :meth:`to_dict`).
    """

    level: str
    n_units: int
    clusters: Dict[str, UnitClusters]
    weight_labels: Optional[np.ndarray] = None
    weight_modularity: Dict[str, float] = field(default_factory=dict)
    agreement: Dict[str, float] = field(default_factory=dict)
    matrices: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict."""
        return {"level": self.level, "n_units": self.n_units,
                "clusters": {k: v.to_dict() for k, v in self.clusters.items()},
                "weight_labels": None if self.weight_labels is None else self.weight_labels.tolist(),
                "weight_modularity": dict(self.weight_modularity), "agreement": dict(self.agreement)}


@dataclass
class FunctionalModules:
    """The result of :func:`functional_modules`: per level, its :class:`LevelModules`."""

    k: int
    kinds: List[str]
    n_examples: int
    n_shuffles: int
    levels: Dict[str, LevelModules]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict."""
        return {"k": self.k, "kinds": list(self.kinds), "n_examples": self.n_examples, "n_shuffles": self.n_shuffles,
                "levels": [lv.to_dict() for lv in self.levels.values()]}


def functional_modules(model: nn.Module, data: Any, k: int, *, graph: Optional[LayeredGraph] = None,
                       kinds: Sequence[str] = ("correlation", "upstream", "downstream"),
                       levels: Optional[Sequence[str]] = None, clustering: Optional[Clustering] = None,
                       n_shuffles: int = 20, max_examples: Optional[int] = 2000, batch_size: int = 256,
                       device=None, random_state=0) -> FunctionalModules:
    """Cluster each hidden level's units by each association kind and compare the clusterings.

    Parameters
    ----------
    model : nn.Module
    data : LabeledTensors, (x, y), TensorDataset or tensor
        Inputs the associations are measured on (the first ``max_examples``).
    k : int
        Clusters per level.
    graph : LayeredGraph, optional
        A chained graph of ``model`` (traced when omitted).
    kinds : sequence of str
        :data:`graphinterp.interpret.association.KINDS`.
    levels : sequence of str, optional
        Default: every hidden level.
    clustering : Clustering, optional
        Weight clusters to compare with (e.g. a checkpoint's stored clustering, or :func:`cluster_network`).
    n_shuffles : int, default 20
        Shuffled copies of each association matrix for the modularity null.
    max_examples, batch_size, device
        As in :func:`~graphinterp.interpret.association.association_matrices`.
    random_state : int or RandomState, default 0

    Returns
    -------
    FunctionalModules

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> res = functional_modules(net, torch.randn(200, 6), 2, n_shuffles=5)
    >>> list(res.levels), sorted(res.levels["0"].clusters), res.levels["0"].n_units
    (['0'], ['correlation', 'downstream', 'upstream'], 8)
    """
    x = data if isinstance(data, torch.Tensor) else as_tensors(data)[0]
    graph = graph if graph is not None else LayeredGraph.from_module(model, input_shape=tuple(x.shape[1:]))
    mats = association_matrices(model, x, graph=graph, kinds=kinds, levels=levels, max_examples=max_examples,
                                batch_size=batch_size, device=device)
    first = next(iter(mats.values()))
    names = list(first)
    weights = weight_level_labels(graph, clustering) if clustering is not None else {}
    rng = check_random_state(random_state)
    out: Dict[str, LevelModules] = {}
    for name in names:
        clusters = {kind: modularity_test(mats[kind][name].numpy(), k, n_shuffles=n_shuffles, random_state=rng)
                    for kind in kinds}
        lv = LevelModules(name, int(first[name].shape[0]), clusters, weights.get(name),
                          matrices={kind: mats[kind][name].numpy() for kind in kinds})
        labelled = {kind: c.labels for kind, c in clusters.items()}
        if lv.weight_labels is not None:
            labelled["weights"] = lv.weight_labels
            lv.weight_modularity = {kind: modularity(mats[kind][name].numpy(), lv.weight_labels) for kind in kinds}
        keys = list(labelled)
        lv.agreement = {f"{a}~{b}": _ami(labelled[a], labelled[b]) for i, a in enumerate(keys) for b in keys[i + 1:]}
        out[name] = lv
    return FunctionalModules(int(k), list(kinds), min(len(x), max_examples or len(x)), int(n_shuffles), out)


def weight_level_labels(graph: LayeredGraph, clustering: Clustering) -> Dict[str, np.ndarray]:
    """The weight cluster of each unit of every hidden level a clustering labels: a layer's column labels for
    its outputs, else the next layer's row labels."""
    names, L, out = graph.level_names(), len(graph), {}
    clustering.validate(graph)
    for layer in clustering.layer_names:
        t = graph.index(layer)
        rows, cols = clustering.labels(layer)
        if 0 < t + 1 < L:
            out[names[t + 1]] = np.asarray(cols)  # a layer's own outputs first
        if 0 < t < L:
            out.setdefault(names[t], np.asarray(rows))
    return out


def _ami(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted mutual information of two labellings over the units both label (-1 left out)."""
    from sklearn.metrics import adjusted_mutual_info_score

    keep = (np.asarray(a) >= 0) & (np.asarray(b) >= 0)
    if keep.sum() < 2:
        return float("nan")
    return float(adjusted_mutual_info_score(np.asarray(a)[keep], np.asarray(b)[keep]))
