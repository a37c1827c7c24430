"""Writing results: GraphML export of layered graphs and circuits (written by :mod:`graphinterp.reports.graphml`),
JSON and CSV (all atomic)."""
from __future__ import annotations

import csv
import json
from typing import Any, Callable, Mapping, Optional, Sequence

import networkx as nx
import numpy as np

from graphinterp.common.files import atomic_write
from graphinterp.common.text import json_safe  # its home; re-exported here
from graphinterp.graph.layered import LayeredGraph
from graphinterp.reports.graphml import graphml_size_estimate, read_graphml, write_graphml, xml_safe

__all__ = ["write_graphml", "read_graphml", "export_graphml", "graphml_size_estimate", "align_labels", "xml_safe",
           "json_default", "json_safe", "json_text", "write_json", "write_csv"]


def export_graphml(graph: LayeredGraph, path, clustering=None, *, network=None, view: str = "grouped",
                   min_abs_weight: float = 0.0, progress: bool = False,
                   before_write: Optional[Callable[[nx.Graph, int], None]] = None) -> nx.DiGraph:
    """Write ``graph`` with cluster labels to GraphML; returns the networkx graph written.

    Node attribute ``cluster`` is one label per node with the same meaning on every level: the
    labels of ``network`` (a :func:`~graphinterp.clustering.cluster.cluster_network` clustering), or of
    ``clustering`` when it is network-wide (see :meth:`LayeredGraph.to_networkx`). ``cluster_in``
    and ``cluster_out`` hold ``clustering``'s labels, e.g. per-layer BSGC; when both are given,
    each layer's clusters are renumbered to agree as far as possible with ``network``'s (a
    renumbering changes nothing else: sizes and E stay the same).

    Graph attributes say where each label comes from, in the same words (``"network"``: one
    network-wide clustering; ``"per-layer"``: each layer clustered on its own, labels of two
    layers unrelated; ``"none"``: no labels, all -1):

    * ``cluster_source``: what node attribute ``cluster`` holds;
    * ``cluster_in_out_source``: what ``cluster_in`` / ``cluster_out`` (and the edges' ``within``) hold;
    * ``cluster_in_out_network_wide``: ``cluster_in_out_source == "network"`` (was called
      ``network_wide``, which read as if it were about ``cluster``; with ``cluster_source = "network"``
      and per-layer ``cluster_in`` / ``cluster_out`` it is false);

    and ``k``, ``similarity``, and ``E``, ``E_random`` and ``score`` of the labels the node attribute
    ``cluster`` follows (``network``'s when given, else ``clustering``'s): the share of squared weight inside
    clusters, its baseline (a random partition with the same cluster sizes) and the normalised score
    :math:`(E - E_{rand}) / (1 - E_{rand})`; ``E_layers`` names the layers they are over (the clustered ones:
    the file also holds the edges of the others, so E recomputed from all its edges is not E); with
    network-wide labels also as ``E_network``, ``E_network_random``, ``score_network`` and ``E_layers_network``.
    When both a per-layer ``clustering`` and ``network`` are given, the edges' ``within`` follows the per-layer
    labels, whose scores are ``E_per_layer``, ``E_per_layer_random``, ``score_per_layer`` and
    ``E_layers_per_layer`` (the E that ``analyze`` reports). These scores are over all the weights of those
    layers, also when ``min_abs_weight`` drops edges from the file (graph attributes ``min_abs_weight`` and
    ``edges_below_min_abs_weight`` say how many). A :class:`~graphinterp.graph.dag.ModelGraph` is written as a
    multigraph (graph attribute ``multigraph`` true): one edge per layer and pair of nodes, so that two layers
    writing onto the same nodes (a SwiGLU MLP's gate and up projections) both keep their weight; the
    file has one edge per layer and pair of nodes with ``|weight| > min_abs_weight`` (input features
    sharing a node, as in the grouped view, are one edge).

    Parameters
    ----------
    graph : LayeredGraph
    path : str or os.PathLike
    clustering, network : Clustering, optional
    view : {"grouped", "fine"}
    min_abs_weight : float
        Drop edges with ``|weight| <= min_abs_weight``.
    progress : bool
        tqdm bars on stderr: over the layers while building the graph, over the edges while writing.
    before_write : callable, optional
        Called as ``before_write(G, estimated_bytes)`` once the graph is built, before the file is written
        (the command line uses it to warn about very large files).

    Returns
    -------
    networkx.DiGraph
        The graph written (a ``MultiDiGraph`` for a :class:`~graphinterp.graph.dag.ModelGraph`), before the
        attributes were flattened for GraphML.
    """
    if clustering is not None and network is not None and not clustering.network_wide:
        clustering = align_labels(clustering, network)
    G = graph.to_networkx(clustering, view=view, min_abs_weight=min_abs_weight, network=network, progress=progress)
    first = clustering if clustering is not None else network
    side = ("none" if clustering is None and network is None
            else "network" if (clustering if clustering is not None else network).network_wide else "per-layer")
    G.graph.update(cluster_in_out_source=side, cluster_in_out_network_wide=side == "network")
    if first is not None:
        G.graph.update(k=int(first.k), similarity=first.similarity)
    if first is not None:
        from graphinterp.clustering.metrics import clusterability_report

        def scores(c):
            report = clusterability_report(graph, c)
            return {"E": float(report.E), "E_random": float(report.E_random), "score": float(report.score),
                    "E_layers": [s.layer for s in report.layers]}  # what E is over: not the file's other layers

        first_scores = scores(network if network is not None else clustering)  # the labels `cluster` follows
        G.graph.update(first_scores)
        if network is not None or clustering.network_wide:
            G.graph.update({f"{key}_network" if key != "E_random" else "E_network_random": value
                            for key, value in first_scores.items()})
        if network is not None and clustering is not None and not clustering.network_wide:
            G.graph.update({f"{key}_per_layer" if key != "E_random" else "E_per_layer_random": value
                            for key, value in scores(clustering).items()})  # the labels `within` follows
    if before_write is not None:
        before_write(G, graphml_size_estimate(G))
    write_graphml(G, path, progress=progress)
    return G


def align_labels(clustering, reference):
    """``clustering`` with each layer's cluster numbers permuted to best match ``reference``'s.

    For every layer in both, the permutation maximises the number of nodes (inputs and outputs)
    whose label is the same in both (an assignment problem). Cluster sizes and E are unchanged.
    Layers not in ``reference``, or a different ``k``, are left as they are.

    Examples
    --------
    >>> from graphinterp.clustering.cluster import Clustering
    >>> c = Clustering(2, {"a": np.array([1, 1, 0])}, {"a": np.array([0, 1])})
    >>> ref = Clustering(2, {"a": np.array([0, 0, 1])}, {"a": np.array([1, 0])}, network_wide=True)
    >>> align_labels(c, ref).row_labels["a"].tolist()
    [0, 0, 1]
    """
    from dataclasses import replace

    from scipy.optimize import linear_sum_assignment

    if clustering.k != reference.k:
        return clustering
    k = int(clustering.k)
    rows, cols = dict(clustering.row_labels), dict(clustering.col_labels)
    for name in clustering.layer_names:
        if name not in reference.layer_names:
            continue
        mine = np.concatenate([np.asarray(a) for a in clustering.labels(name)])
        ref = np.concatenate([np.asarray(a) for a in reference.labels(name)])
        if mine.shape != ref.shape:
            continue
        both = (mine >= 0) & (ref >= 0)
        overlap = np.zeros((k, k), dtype=np.int64)
        np.add.at(overlap, (mine[both], ref[both]), 1)
        r, c = linear_sum_assignment(-overlap)
        perm = np.arange(k)
        perm[r] = c
        relabel = lambda a: np.where(a >= 0, perm[np.clip(a, 0, k - 1)], a).astype(np.int64)  # noqa: E731
        rows[name], cols[name] = relabel(np.asarray(rows[name])), relabel(np.asarray(cols[name]))
    return replace(clustering, row_labels=rows, col_labels=cols, meta={**clustering.meta, "aligned_to": "network"})


def json_default(value: Any) -> Any:
    """The ``default=`` of :func:`json.dump` used by graphinterp: arrays and tensors as lists, results by ``to_dict()``.

    Parameters
    ----------
    value : object
        A value :mod:`json` cannot write itself.

    Returns
    -------
    object
        ``value.tolist()`` when it has one (arrays, tensors, numpy scalars), else ``value.to_dict()``.

    Raises
    ------
    TypeError
        ``value`` has neither method.

    Examples
    --------
    >>> import json
    >>> json.dumps({"sizes": np.array([2, 3])}, default=json_default)
    '{"sizes": [2, 3]}'
    """
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_text(obj: Any) -> str:
    """``obj`` as indented, strictly valid JSON: arrays and objects with ``to_dict`` converted
    (:func:`json_default`), every NaN and infinity written as ``null`` (:func:`json_safe`).

    Parameters
    ----------
    obj : object
        Anything :func:`json.dumps` writes with :func:`json_default`.

    Returns
    -------
    str
        JSON indented by 2 spaces, without a trailing newline.

    Examples
    --------
    >>> json_text({"loss": float("nan")})
    '{\\n  "loss": null\\n}'
    """
    plain = json.loads(json.dumps(obj, default=json_default))  # NaN survives this round trip; json_safe drops it
    return json.dumps(json_safe(plain), indent=2, allow_nan=False)


def write_json(path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (:func:`json_text`: strictly valid, NaN written as null).

    Parameters
    ----------
    path : str or os.PathLike
        The file to write (replaced only once the whole text is written; :func:`atomic_write`).
    obj : object
        Anything :func:`json_text` accepts.
    """
    with atomic_write(path, "w") as fh:
        fh.write(json_text(obj))


def write_csv(path, rows: Sequence[Mapping[str, Any]], fieldnames: Optional[Sequence[str]] = None) -> None:
    """Write dict rows as CSV atomically; columns default to the keys of the first row."""
    fieldnames = list(fieldnames or (rows[0].keys() if rows else []))
    with atomic_write(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
