"""Clusterability analysis of a model file or graph for one or several k (the ``analyze`` command)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from graphinterp.clustering.cluster import Clustering, cluster_layers
from graphinterp.clustering.validation import (check_k, clusterable_layers, nothing_clusterable,
                                                nothing_clusterable_error, require_clusterable)
from graphinterp.graph.layered import LayeredGraph
from graphinterp.clustering.metrics import ClusterabilityReport, clusterability_report, dominant_note, normalized_score

__all__ = ["Analysis", "analyze", "graph_from_loaded", "load_graph"]


def graph_from_loaded(loaded, *, layerwise: bool = False, input_shape: Optional[Sequence[int]] = None) -> LayeredGraph:
    """Build the graph of a :class:`graphinterp.sources.loading.LoadedModel` (see :mod:`graphinterp.graph.load`)."""
    from graphinterp.graph.load import model_graph
    from graphinterp.graph.opened import opened_from_loaded

    return model_graph(opened_from_loaded(loaded), layerwise=layerwise, input_shape=input_shape)


def load_graph(source, *, trust_pickle: bool = False, layerwise: bool = False, weights: Optional[str] = None,
               fold: bool = True, input_shape: Optional[Sequence[int]] = None, random_state: Optional[int] = 0,
               unit_norm: bool = False):
    """Open any model source and build its graph; returns ``(OpenedModel, graph)``.

    Parameters
    ----------
    source : str, os.PathLike, torch.nn.Module or mapping of str to torch.Tensor
        A model file, HuggingFace folder, torchvision name, module or state_dict
        (:func:`graphinterp.graph.load.open_model`).
    trust_pickle : bool, default False
        Allow unpickling a file that holds a pickled module (can run arbitrary code).
    layerwise : bool, default False
        Keep every weight layer as its own bipartite graph (unlinked).
    weights : str, optional
        A local weights file for a torchvision architecture name.
    fold : bool, default True
        Fold normalisation scales into the weights.
    input_shape : sequence of int, optional
        Input shape without the batch dimension, to guide the guess of the example input a module is traced with.
    random_state : int, default 0
        Seed of a torchvision architecture's random weights (without ``weights``).
    unit_norm : bool, default False
        Rescale a chain's weights as Filan et al. do (:func:`graphinterp.graph.rescale.unit_norm_rescaled`);
        ``UnsupportedModelError`` for any other graph.

    Returns
    -------
    opened : OpenedModel
        The resolved source (module, state_dict, stored clustering and history, notes).
    graph : LayeredGraph
        Its graph (a :class:`~graphinterp.graph.dag.ModelGraph` for residual and attention models).

    Examples
    --------
    >>> import tempfile, os, torch
    >>> from torch import nn
    >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
    >>> torch.save(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict(), path)
    >>> opened, graph = load_graph(path)
    >>> graph.layer_names
    ['0', '2']
    """
    from graphinterp.graph.load import load_graph as _load

    return _load(source, weights=weights, trust_pickle=trust_pickle, layerwise=layerwise, fold=fold,
                 input_shape=input_shape, random_state=random_state, unit_norm=unit_norm)


@dataclass
class Analysis:
    """Clusterability of a graph for each k.

    Attributes
    ----------
    reports : dict of int to ClusterabilityReport
    clusterings : dict of int to Clustering
    skipped : dict of str to str
        Layers left out (for every k) and why, e.g. fewer nodes than k.
    unfit_ks : dict of int to str
        Values of k asked for at which no layer can be clustered (all too small), and why; not in ``ks``.
    """

    reports: Dict[int, ClusterabilityReport]
    clusterings: Dict[int, Clustering]
    skipped: Dict[str, str] = field(default_factory=dict)
    unfit_ks: Dict[int, str] = field(default_factory=dict)

    @property
    def ks(self) -> List[int]:
        """The k values analysed."""
        return sorted(self.reports)

    def scored_layers(self) -> List[str]:
        """Every layer scored at one k at least, in the order of the first report that has it."""
        return list(dict.fromkeys(s.layer for k in self.ks for s in self.reports[k].layers))

    def common_layers(self) -> List[str]:
        """The layers scored at every k: those the model-wide E over the k range is mass-weighted over."""
        at = [{s.layer for s in self.reports[k].layers} for k in self.ks]
        return [n for n in self.scored_layers() if all(n in s for s in at)]

    def mass_weighted(self) -> dict:
        """Model-wide E, E_random and score per k over :meth:`common_layers` (one set of layers for every k,
        the rule ``benchmark`` uses), with the layers used and those left out and why: scored at some k only,
        or at none (an all-zero layer, too few nodes for every k: also in ``skipped``).

        For a single k, or when every layer is scored at every k, the values are the reports' own.
        """
        common, scored = self.common_layers(), self.scored_layers()
        left_out = {}
        for n in scored:
            if n not in common:
                at = [k for k in self.ks if any(s.layer == n for s in self.reports[k].layers)]
                why = self.skipped.get(n)
                left_out[n] = f"scored at k={','.join(map(str, at))} only" + (f" ({why})" if why else "")
        for n, why in self.skipped.items():  # scored at no k: left out of every mass-weighted figure too
            if n not in scored:
                left_out[n] = f"not scored ({why})"
        note = None
        if any(n in scored for n in left_out):
            note = (f"model-wide E, E_random and score are mass-weighted over the {len(common)} of {len(scored)} "
                    f"layers scored at every k ({', '.join(common)}), the same layers at every k; left out: "
                    + "; ".join(f"{n}, {why}" for n, why in left_out.items()))
        out = {"layers": common, "left_out": left_out, "note": note, "E": {}, "E_random": {}, "score": {}}
        masses = {s.layer: s.mass for s in self.reports[self.ks[0]].layers if s.layer in common}  # the same at every k
        dominant = dominant_note(masses, "the mass-weighted E")
        if dominant:
            out["note"] = f"{note}; {dominant}" if note else dominant
        for k in self.ks:
            chosen = [s for s in self.reports[k].layers if s.layer in common]
            mass = sum(s.mass for s in chosen)
            E = sum(s.E * s.mass for s in chosen) / mass if mass else 0.0
            R = sum(s.E_random * s.mass for s in chosen) / mass if mass else 0.0
            out["E"][k], out["E_random"][k], out["score"][k] = E, R, normalized_score(E, R)
        return out

    def to_dict(self) -> dict:
        """JSON-ready dict: one entry per k with the per-layer scores and the cluster labels (each entry's
        E is over the layers scored at that k), and ``mass_weighted``: E, E_random and score per k over the
        layers scored at every k (the model-wide curve; see :meth:`mass_weighted`)."""
        return {
            "ks": self.ks,
            "unfit_ks": {str(k): why for k, why in self.unfit_ks.items()},
            "skipped": dict(self.skipped),
            "mass_weighted": {key: ({str(k): v for k, v in val.items()} if key in ("E", "E_random", "score")
                                    else val) for key, val in self.mass_weighted().items()},
            "results": [
                {**self.reports[k].to_dict(), "clustering": self.clusterings[k].to_dict()} for k in self.ks
            ],
        }


def analyze(
    graph: LayeredGraph,
    ks: Union[int, Sequence[int]],
    *,
    layers: Optional[Sequence[str]] = None,
    pairing: str = "joint",
    random_state: Optional[int] = 0,
    progress: bool = False,
    device=None,
) -> Analysis:
    """Cluster each selected layer with BSGC for every k and score the clusterings.

    Layers too small for a k (fewer non-isolated inputs or outputs than k, e.g. a 3-channel input
    conv at k = 4) are left out of that k with the reason recorded in ``skipped`` when ``layers``
    is not given; naming such a layer explicitly raises :class:`ClusteringError` (the rule of
    :func:`graphinterp.clustering.validation.check_k`). A k at which no layer fits is left out with the
    reason in ``unfit_ks`` (as ``benchmark`` reports the k that fit); only when no k fits is it an error. ``device`` is where BSGC runs (as in
    :func:`graphinterp.clustering.cluster.cluster_layers`; default: the graph's device).

    Parameters
    ----------
    graph : LayeredGraph
        The graph to analyse.
    ks : int or sequence of int
        One k or several; each at least 2 (:func:`graphinterp.clustering.validation.check_k`).
    layers : sequence of str, optional
        Layers to cluster, never skipped; default every layer, less those too small for each k.
    pairing : {"joint", "matched", "independent"}, default "joint"
        How BSGC pairs row and column clusters (:class:`~graphinterp.clustering.bsgc.BSGC`).
    random_state : int or None, default 0
        Seed of the clustering; the same seed is used for every k.
    progress : bool, default False
        Show a tqdm bar over the layers clustered (at every k).
    device : str or torch.device, optional
        Where BSGC runs (``"auto"``: CUDA when available).

    Returns
    -------
    Analysis
        One report and one clustering per k, and the layers skipped with the reason.

    Raises
    ------
    ClusteringError
        A k below 2, a named layer too small for a k, or no layer large enough for any k.
    KeyError
        A name in ``layers`` that is not a layer of the graph.

    Examples
    --------
    >>> from torch import nn
    >>> g = LayeredGraph.from_module(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 6)))
    >>> result = analyze(g, [2, 4], random_state=0)
    >>> result.ks, [s.layer for s in result.reports[4].layers], result.skipped
    ([2, 4], ['2'], {'0': 'fewer than k=4 non-isolated nodes (3x8)'})
    >>> result = analyze(g, [4, 7], random_state=0)
    >>> result.ks, list(result.unfit_ks)
    ([4], [7])
    """
    ks = [check_k(k) for k in ([ks] if isinstance(ks, (int, np.integer)) else list(ks))]
    explicit = layers is not None
    names = list(layers) if explicit else graph.layer_names
    for name in names:
        graph[name]  # KeyError with the valid names
    reports, clusterings, skipped = {}, {}, {}
    plan, left, unfit = [], {}, {}  # every k's layers, checked before any clustering starts
    for k in ks:
        if explicit:
            require_clusterable(graph, k, names)  # named layers are never skipped
            chosen = names
        else:
            chosen, left[k] = clusterable_layers(graph, k, names)
        if not chosen:
            unfit[k] = left.pop(k, {})
            continue
        plan.append((k, chosen))
    if not plan:
        others = sorted(k for k in unfit if k != min(unfit))
        raise nothing_clusterable_error(min(unfit), unfit[min(unfit)],
                                        also=f" (nor at k={', '.join(map(str, others))})" if others else "")
    unfit = {k: nothing_clusterable(k, why) for k, why in unfit.items()}
    for k in sorted(left):  # the reason at the smallest k a layer does not fit: true of every larger k too
        for name, why in left[k].items():
            skipped.setdefault(name, why)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(chosen) for _, chosen in plan), desc="clustering", unit="layer", leave=False,
                   dynamic_ncols=True)
    try:
        for k, chosen in plan:
            if bar is not None:
                bar.set_postfix_str(f"k={k}", refresh=False)
            clustering = cluster_layers(graph, k, layers=chosen, pairing=pairing, random_state=random_state,
                                        device=device, progress=None if bar is None else bar.update)
            clusterings[k] = clustering
            reports[k] = clusterability_report(graph, clustering)
    finally:
        if bar is not None:
            bar.close()
    return Analysis(reports, clusterings, skipped, unfit)
