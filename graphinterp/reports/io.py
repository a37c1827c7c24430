"""Writing results: GraphML export of layered graphs and circuits, JSON and CSV (all atomic)."""
from __future__ import annotations

import csv
import io as _io
import json
import math
import re
from typing import Any, Mapping, Optional, Sequence

import networkx as nx
import numpy as np

from graphinterp.common.files import atomic_write
from graphinterp.graph.layered import LayeredGraph

__all__ = ["write_graphml", "read_graphml", "export_graphml", "align_labels", "xml_safe", "json_default", "json_safe", "json_text",
           "write_json", "write_csv"]


# characters XML 1.0 cannot hold, even as character references
_XML_BAD = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    r"""``text`` with every character that XML 1.0 cannot hold written as ``\xNN`` / ``\uNNNN``.

    Layer names come from model files and may hold control characters; GraphML (XML) cannot,
    so node ids, keys and string attributes are written through this function.

    Examples
    --------
    >>> xml_safe("fc\x01:3")
    'fc\\x01:3'
    """
    return _XML_BAD.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                        text)


def _scalar(value: Any) -> Any:
    """Flatten an attribute value to a GraphML type (int, float, str, bool)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return xml_safe(value)
    if value is None:
        return ""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return xml_safe(json.dumps(value))


def _node_id(node: Any) -> Any:
    return xml_safe(node) if isinstance(node, str) else node


def write_graphml(G: nx.Graph, path) -> None:
    """Write ``G`` to GraphML atomically, flattening attributes to GraphML's scalar types.

    Lists, dicts and arrays become JSON strings, ``None`` an empty string, numpy scalars Python
    scalars; characters that XML cannot hold (control characters, e.g. in layer names read from a
    model file) are written as ``\\xNN`` escapes in ids, keys and strings (:func:`xml_safe`), so
    the file always parses. An interrupted write leaves no partial file.

    Examples
    --------
    >>> import tempfile, os
    >>> G = nx.DiGraph(); G.add_edge("a", "b", weight=0.5, tags=[1, 2])
    >>> path = os.path.join(tempfile.mkdtemp(), "g.graphml")
    >>> write_graphml(G, path)
    >>> read_graphml(path).edges["a", "b"]["tags"]
    '[1, 2]'
    """
    H = G.__class__()
    H.graph.update({xml_safe(str(k)): _scalar(v) for k, v in G.graph.items()})
    H.add_nodes_from((_node_id(n), {xml_safe(str(k)): _scalar(v) for k, v in d.items()}) for n, d in G.nodes(data=True))
    if H.number_of_nodes() != G.number_of_nodes():
        from graphinterp.common.errors import UnsupportedModelError

        raise UnsupportedModelError("two node ids differ only in characters that XML cannot hold; rename the layers")
    H.add_edges_from((_node_id(u), _node_id(v), {xml_safe(str(k)): _scalar(x) for k, x in d.items()})
                     for u, v, d in G.edges(data=True))
    buffer = _io.BytesIO()
    nx.write_graphml(H, buffer)
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getvalue())


def read_graphml(path) -> nx.DiGraph:
    """Read a GraphML file written by :func:`write_graphml` (node ids as strings)."""
    return nx.read_graphml(path)


def export_graphml(graph: LayeredGraph, path, clustering=None, *, network=None, view: str = "grouped",
                   min_abs_weight: float = 0.0) -> nx.DiGraph:
    """Write ``graph`` with cluster labels to GraphML; returns the networkx graph written.

    Node attribute ``cluster`` is one label per node with the same meaning on every level: the
    labels of ``network`` (a :func:`~graphinterp.clustering.cluster.cluster_network` clustering), or of
    ``clustering`` when it is network-wide (see :meth:`LayeredGraph.to_networkx`). ``cluster_in``
    and ``cluster_out`` hold ``clustering``'s labels, e.g. per-layer BSGC; when both are given,
    each layer's clusters are renumbered to agree as far as possible with ``network``'s (a
    renumbering changes nothing else: sizes and E stay the same). Graph attributes: ``k``,
    ``network_wide`` (``cluster_in``/``cluster_out`` are network-wide too), ``similarity``,
    ``cluster_source``, and ``E``, ``E_random`` and ``score`` of the labels the edges' ``within`` follows
    (``network``'s when given, else ``clustering``'s): the share of squared weight inside clusters, its
    baseline (a random partition with the same cluster sizes) and the normalised score
    :math:`(E - E_{rand}) / (1 - E_{rand})`; with network-wide labels also as ``E_network``,
    ``E_network_random`` and ``score_network``.

    Parameters
    ----------
    graph : LayeredGraph
    path : str or os.PathLike
    clustering, network : Clustering, optional
    view : {"grouped", "fine"}
    min_abs_weight : float
        Drop edges with ``|weight| <= min_abs_weight``.
    """
    if clustering is not None and network is not None and not clustering.network_wide:
        clustering = align_labels(clustering, network)
    G = graph.to_networkx(clustering, view=view, min_abs_weight=min_abs_weight, network=network)
    first = clustering if clustering is not None else network
    if first is not None:
        G.graph.update(k=int(first.k), network_wide=bool(first.network_wide), similarity=first.similarity)
    if first is not None:
        from graphinterp.clustering.metrics import clusterability_report

        report = clusterability_report(graph, network if network is not None else clustering)
        scores = {"E": float(report.E), "E_random": float(report.E_random), "score": float(report.score)}
        G.graph.update(scores)
        if network is not None or clustering.network_wide:
            G.graph.update({f"{key}_network" if key != "E_random" else "E_network_random": value
                            for key, value in scores.items()})
    write_graphml(G, path)
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


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN and infinity (not valid JSON) replaced by None, recursively through dicts and lists.

    Examples
    --------
    >>> json_safe({"z": float("nan"), "p": [0.5, float("inf")]})
    {'z': None, 'p': [0.5, None]}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """``obj`` as indented, strictly valid JSON: arrays and objects with ``to_dict`` converted
    (:func:`json_default`), every NaN and infinity written as ``null`` (:func:`json_safe`).

    Examples
    --------
    >>> json_text({"loss": float("nan")})
    '{\\n  "loss": null\\n}'
    """
    plain = json.loads(json.dumps(obj, default=json_default))  # NaN survives this round trip; json_safe drops it
    return json.dumps(json_safe(plain), indent=2, allow_nan=False)


def write_json(path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (:func:`json_text`: strictly valid, NaN written as null)."""
    with atomic_write(path, "w") as fh:
        fh.write(json_text(obj))


def write_csv(path, rows: Sequence[Mapping[str, Any]], fieldnames: Optional[Sequence[str]] = None) -> None:
    """Write dict rows as CSV atomically; columns default to the keys of the first row."""
    fieldnames = list(fieldnames or (rows[0].keys() if rows else []))
    with atomic_write(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
