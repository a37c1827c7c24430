"""Writing results: GraphML export of layered graphs and circuits, JSON and CSV (all atomic)."""
from __future__ import annotations

import csv
import io as _io
import json
from typing import Any, Mapping, Optional, Sequence

import networkx as nx
import numpy as np

from ._files import atomic_write
from .graph import LayeredGraph

__all__ = ["write_graphml", "read_graphml", "export_graphml", "write_json", "write_csv"]


def _scalar(value: Any) -> Any:
    """Flatten an attribute value to a GraphML type (int, float, str, bool)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return json.dumps(value)


def write_graphml(G: nx.Graph, path) -> None:
    """Write ``G`` to GraphML atomically, flattening attributes to GraphML's scalar types.

    Lists, dicts and arrays become JSON strings, ``None`` an empty string, numpy scalars Python
    scalars. An interrupted write leaves no partial file.

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
    H.graph.update({k: _scalar(v) for k, v in G.graph.items()})
    H.add_nodes_from((n, {k: _scalar(v) for k, v in d.items()}) for n, d in G.nodes(data=True))
    H.add_edges_from((u, v, {k: _scalar(x) for k, x in d.items()}) for u, v, d in G.edges(data=True))
    buffer = _io.BytesIO()
    nx.write_graphml(H, buffer)
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getvalue())


def read_graphml(path) -> nx.DiGraph:
    """Read a GraphML file written by :func:`write_graphml` (node ids as strings)."""
    return nx.read_graphml(path)


def export_graphml(graph: LayeredGraph, path, clustering=None, *, view: str = "grouped",
                   min_abs_weight: float = 0.0) -> nx.DiGraph:
    """Write ``graph`` (with cluster labels when given) to GraphML; returns the networkx graph."""
    G = graph.to_networkx(clustering, view=view, min_abs_weight=min_abs_weight)
    if clustering is not None:
        G.graph.update(k=int(clustering.k), network_wide=bool(clustering.network_wide),
                       similarity=clustering.similarity)
    write_graphml(G, path)
    return G


def write_json(path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (arrays and dataclasses with ``to_dict`` allowed)."""
    def default(value):
        if hasattr(value, "tolist"):
            return value.tolist()
        if hasattr(value, "to_dict"):
            return value.to_dict()
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=2, default=default)


def write_csv(path, rows: Sequence[Mapping[str, Any]], fieldnames: Optional[Sequence[str]] = None) -> None:
    """Write dict rows as CSV atomically; columns default to the keys of the first row."""
    fieldnames = list(fieldnames or (rows[0].keys() if rows else []))
    with atomic_write(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
