"""Functional modules: clusters of each hidden level's units from association matrices, against a null model
and against the weight clusters (after Lange, Rolnick & Kording, 2022, beside Golechha et al.'s BSGC).

For each hidden level and each association kind (:mod:`graphinterp.interpret.association`) the units
are split into ``k`` clusters by spectral clustering and scored by Newman's modularity against a null
model (:mod:`graphinterp.clustering.modularity`; by default the same matrix in random orthonormal
bases); the clusterings of one level are then compared with each other and with the level's weight
clusters (BSGC, e.g. what `graphinterp train` stores) by adjusted mutual information: 1 for the same
partition, about 0 for unrelated ones. Do the units that the weights group also respond alike
(upstream) and act alike on the outputs (downstream)?

Differences from Lange et al.: the number of clusters is fixed (``k``, to compare with the weight
clusters) and the clustering is spectral (normalised cut) rather than a search for the highest Q;
Q scores it either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from graphinterp.clustering.labels import Clustering
from graphinterp.clustering.modularity import UnitClusters, modularity, modularity_test
from graphinterp.common.errors import ClusteringError, KTooLargeError
from graphinterp.common.seeds import check_random_state
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.ablate import hidden_level_labels
from graphinterp.interpret.association import ASSOCIATION_KINDS, association_moments, distinct_names, hidden_levels
from graphinterp.interpret.evaluation import as_inputs

__all__ = ["LevelModules", "FunctionalModules", "functional_modules", "reinitialised"]


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
        Per kind, the association graph (not in :meth:`to_dict`).
    """

    level: str
    n_units: int
    clusters: Dict[str, UnitClusters]
    weight_labels: Optional[np.ndarray] = None
    weight_modularity: Dict[str, float] = field(default_factory=dict)
    agreement: Dict[str, float] = field(default_factory=dict)
    matrices: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (NaN agreements, for too few units, as None)."""
        return {"level": self.level, "n_units": self.n_units,
                "clusters": {k: v.to_dict() for k, v in self.clusters.items()},
                "weight_labels": None if self.weight_labels is None else self.weight_labels.tolist(),
                "weight_modularity": dict(self.weight_modularity),
                "agreement": {k: None if np.isnan(v) else v for k, v in self.agreement.items()}}


@dataclass
class FunctionalModules:
    """The result of :func:`functional_modules`.

    Attributes
    ----------
    k : int
    kinds : list of str
    n_examples : int
        Examples the associations were measured on.
    null : str
        The null model.
    n_null : int
        Null copies asked for per level and kind (``UnitClusters.modularity.null`` holds those scored).
    levels : dict of str to LevelModules
    """

    k: int
    kinds: List[str]
    n_examples: int
    null: str
    n_null: int
    levels: Dict[str, LevelModules]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict."""
        return {"k": self.k, "kinds": list(self.kinds), "n_examples": self.n_examples, "null": self.null,
                "n_null": self.n_null, "levels": [lv.to_dict() for lv in self.levels.values()]}


def functional_modules(model: nn.Module, data: Any, k: int, *, graph: Optional[LayeredGraph] = None,
                       kinds: Sequence[str] = ("correlation", "upstream", "downstream"),
                       levels: Optional[Sequence[str]] = None, clustering: Optional[Clustering] = None,
                       null: str = "rotation", n_null: int = 20, max_examples: Optional[int] = 2000,
                       batch_size: int = 256, device=None, random_state=0) -> FunctionalModules:
    """Cluster each hidden level's units by each association kind and compare the clusterings.

    Parameters
    ----------
    model : nn.Module
    data : LabeledTensors, (x, y), TensorDataset or tensor
        Inputs the associations are measured on (the first ``max_examples``).
    k : int
        Clusters per level; ``2 <= k <`` the level's units (checked before any work).
    graph : LayeredGraph, optional
        A chained graph of ``model`` (traced when omitted).
    kinds : sequence of str
        :data:`graphinterp.interpret.association.ASSOCIATION_KINDS`.
    levels : sequence of str, optional
        Default: every hidden level.
    clustering : Clustering, optional
        Weight clusters to compare with (e.g. a checkpoint's stored clustering, or :func:`cluster_network`);
        layers sharing a level must label it alike (a network-wide clustering).
    null : {"rotation", "shuffle"}, default "rotation"
        The modularity null (:func:`~graphinterp.clustering.modularity.modularity_test`).
    n_null : int, default 20
        Null copies per level and kind; 0: no test.
    max_examples, batch_size, device
        As in :func:`~graphinterp.interpret.association.association_moments`.
    random_state : int or RandomState, default 0
        Each (level, kind) draws from its own stream, so a result does not depend on the other kinds asked for.

    Returns
    -------
    FunctionalModules

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> res = functional_modules(net, torch.randn(200, 6), 2, n_null=5)
    >>> list(res.levels), sorted(res.levels["0"].clusters), res.levels["0"].n_units
    (['0'], ['correlation', 'downstream', 'upstream'], 8)
    """
    x = as_inputs(data)
    graph = graph if graph is not None else LayeredGraph.from_module(model, input_shape=tuple(x.shape[1:]))
    hidden, all_names = hidden_levels(graph), graph.level_names()
    names = distinct_names(levels, "level") if levels is not None else hidden
    kinds = distinct_names(kinds, "association kind")
    ends = [n for n in names if n in all_names and n not in hidden]
    if ends:
        raise ClusteringError(f"level(s) {ends} are the model's input or output (the downstream Jacobian of the logits "
                              f"is the identity, the upstream one of the input too); use hidden levels: {hidden}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise ClusteringError(f"k must be an integer, got {k!r}")
    sizes = dict(zip(all_names, graph.level_sizes()))
    small = [f"{n} ({sizes[n]} units)" for n in names if n in sizes and not 2 <= k < sizes[n]]
    if small:
        raise KTooLargeError(f"k={k} is out of range for level(s) {', '.join(small)}: use 2 <= k < the level's units")
    weights = hidden_level_labels(graph, clustering) if clustering is not None else {}
    moments = association_moments(model, x, graph=graph, kinds=kinds, levels=names, max_examples=max_examples,
                                  batch_size=batch_size, device=device)
    base = int(check_random_state(random_state).randint(2**31 - 1))
    out: Dict[str, LevelModules] = {}
    for name in names:
        clusters = {}
        for kind in kinds:  # each (level, kind) its own stream: results do not depend on what else is asked
            seq = np.random.SeedSequence([base, all_names.index(name), ASSOCIATION_KINDS.index(kind)])
            try:
                clusters[kind] = modularity_test(moments[kind][name].numpy(), k, normalize=kind == "correlation",
                                                 null=null, n_null=n_null,
                                                 random_state=np.random.RandomState(seq.generate_state(1)[0]))
            except ClusteringError as err:
                raise ClusteringError(f"level {name!r}, {kind}: {err}") from err
        graphs = {kind: c.graph for kind, c in clusters.items()}
        lv = LevelModules(name, int(sizes[name]), clusters, weights.get(name), matrices=graphs)
        labelled = {kind: c.labels for kind, c in clusters.items()}
        if lv.weight_labels is not None:
            labelled["weights"] = lv.weight_labels
            lv.weight_modularity = {kind: modularity(graphs[kind], lv.weight_labels) for kind in kinds}
        keys = list(labelled)
        lv.agreement = {f"{a}~{b}": _ami(labelled[a], labelled[b]) for i, a in enumerate(keys) for b in keys[i + 1:]}
        out[name] = lv
    return FunctionalModules(int(k), list(kinds), min(len(x), max_examples or len(x)), null, int(n_null), out)


def reinitialised(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every submodule that has ``reset_parameters`` re-initialised (PyTorch's default
    init, seeded; the global RNG is left as it was): the same architecture, untrained, as a reference for
    what the architecture alone gives (e.g. the unit alignment that ReLUs produce).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 2))
    >>> copy = reinitialised(net)
    >>> copy is not net, bool((copy[0].weight != net[0].weight).any()), type(copy[0]) is nn.Linear
    (True, True, True)
    """
    import copy

    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for module in fresh.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    return fresh


def _ami(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted mutual information of two labellings over the units both label (-1 left out)."""
    from sklearn.metrics import adjusted_mutual_info_score

    keep = (np.asarray(a) >= 0) & (np.asarray(b) >= 0)
    if keep.sum() < 2:
        return float("nan")
    return float(adjusted_mutual_info_score(np.asarray(a)[keep], np.asarray(b)[keep]))
