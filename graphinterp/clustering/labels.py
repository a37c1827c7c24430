"""``Clustering``: the one object that holds cluster labels, built and validated once.

Every clustering function returns one, checkpoints store one as a plain dict (``to_dict``), and the
stored dict becomes a ``Clustering`` again in one place, :func:`stored_clustering` (through
:meth:`Clustering.from_dict`). The consumers (masks, loss, ablation, circuits, export, figures) accept
only this type: :func:`require_clustering` refuses anything else, a dict included.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from graphinterp.common.errors import ClusteringError
from graphinterp.graph.layered import LayeredGraph

__all__ = ["Clustering", "require_clustering", "stored_clustering"]


@dataclass
class Clustering:
    """Cluster labels of the input (row) and output (column) nodes of some layers of a graph.

    Labels are in ``0..k-1``; ``-1`` marks an isolated node (no non-zero edge), in no cluster.
    Input labels are in the ``"grouped"`` view (one per channel for a Linear after a Flatten).

    Validated once, when built (:class:`ClusteringError`, one line): ``k`` is an integer >= 2 (not a
    bool, float or string); ``row_labels`` and ``col_labels`` name the same layers in the same order;
    every label array is one-dimensional, of an integer dtype (floats and booleans refused) with values
    in ``-1..k-1``; and each of the ``k`` clusters holds at least one node in some layer, so
    ``k = 1000`` over labels ``0..3`` is refused (``k`` sizes every per-cluster table: the ablation
    matrices, E per cluster). A clustering of no layers is allowed here and refused by consumers.
    Labels are stored as int64 arrays. :meth:`validate` checks it against a graph.

    Parameters
    ----------
    k : int
        Number of clusters, an integer >= 2, each used by some node.
    row_labels, col_labels : dict of str to ndarray
        Per layer name, labels of the layer's input and output nodes.
    network_wide : bool, default False
        True when each hidden neuron has one label: ``col_labels[l] == row_labels[l + 1]`` for
        consecutive clustered layers.
    similarity : str, default "weight"
        ``"weight"`` or ``"gradient"`` (what BSGC clustered).
    meta : dict, optional
        Free-form provenance (seed, pairing, ...); copied.

    Raises
    ------
    ClusteringError
        Any of the checks above fails.
    """

    k: int
    row_labels: Dict[str, np.ndarray]
    col_labels: Dict[str, np.ndarray]
    network_wide: bool = False
    similarity: str = "weight"
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = self.k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise ClusteringError(f"k must be an integer >= 2, got {k!r}")
        self.k = int(k)
        if not isinstance(self.row_labels, Mapping) or not isinstance(self.col_labels, Mapping):
            raise ClusteringError("row_labels and col_labels must be dicts of layer name to label array")
        if list(self.row_labels) != list(self.col_labels):
            raise ClusteringError(f"row_labels and col_labels must name the same layers in the same order, got "
                                  f"{list(self.row_labels)} and {list(self.col_labels)}")
        self.row_labels = {n: check_labels(v, n, "row", self.k) for n, v in self.row_labels.items()}
        self.col_labels = {n: check_labels(v, n, "column", self.k) for n, v in self.col_labels.items()}
        if self.row_labels:
            used = np.unique(np.concatenate([*self.row_labels.values(), *self.col_labels.values()]))
            used = used[used >= 0]
            if used.size != self.k:
                raise ClusteringError(f"k={self.k} but the labels use {used.size} cluster(s); every cluster "
                                      f"0..{self.k - 1} needs at least one node")
        if not isinstance(self.similarity, str) or not isinstance(self.meta, Mapping):
            raise ClusteringError("similarity must be a string and meta a dict")
        self.network_wide = bool(self.network_wide)
        self.meta = dict(self.meta)

    @property
    def layer_names(self) -> List[str]:
        """Names of the clustered layers, in order."""
        return list(self.row_labels)

    def labels(self, layer: str) -> Tuple[np.ndarray, np.ndarray]:
        """``(row_labels, col_labels)`` of ``layer``.

        Parameters
        ----------
        layer : str
            A clustered layer's name.

        Returns
        -------
        row_labels, col_labels : ndarray of int64
            Labels of the layer's input (grouped view) and output nodes; ``-1`` for isolated nodes.

        Raises
        ------
        ClusteringError
            ``layer`` is not clustered.
        """
        if layer not in self.row_labels:
            raise ClusteringError(f"layer {layer!r} is not clustered; clustered layers: {self.layer_names}")
        return self.row_labels[layer], self.col_labels[layer]

    def sizes(self, layer: str) -> np.ndarray:
        """``(k, 2)`` array: number of input and output nodes in each cluster of ``layer``.

        Parameters
        ----------
        layer : str
            A clustered layer's name (:class:`ClusteringError` otherwise).

        Returns
        -------
        ndarray of shape (k, 2)
            Column 0 counts input nodes, column 1 output nodes; isolated nodes (``-1``) are not counted.
        """
        rows, cols = self.labels(layer)
        return np.stack([np.bincount(rows[rows >= 0], minlength=self.k),
                         np.bincount(cols[cols >= 0], minlength=self.k)], axis=1)

    def validate(self, graph: LayeredGraph) -> "Clustering":
        """Raise :class:`ClusteringError` unless every clustered layer exists in ``graph`` with matching sizes.

        The labels themselves were checked when the clustering was built; this checks the fit to a model
        and, for a network-wide clustering of a chained graph, that the output labels of each layer are
        the input labels of the next clustered layer (one label per neuron).

        Parameters
        ----------
        graph : LayeredGraph
            The graph of the model the clustering is applied to.

        Returns
        -------
        Clustering
            ``self``, for chaining.
        """
        for name in self.layer_names:
            if name not in graph.layer_names:
                raise ClusteringError(
                    f"the clustering names layer {name!r}, which the model does not have (layers: {graph.layer_names})"
                )
            layer = graph[name]
            rows, cols = self.labels(name)
            if (len(rows), len(cols)) != layer.shape("grouped"):
                raise ClusteringError(
                    f"the clustering of layer {name!r} has {len(rows)}x{len(cols)} labels but the layer is "
                    f"{layer.n_in()}x{layer.n_out}: it was made for another model"
                )
        if self.network_wide and getattr(graph, "chained", False) and not hasattr(graph, "src_nodes"):
            at = sorted((graph.index(n), n) for n in self.layer_names)
            for (i, a), (j, b) in zip(at, at[1:]):
                if j == i + 1 and not np.array_equal(self.col_labels[a], self.row_labels[b]):
                    raise ClusteringError(f"network-wide labels disagree between the outputs of layer {a!r} and the "
                                          f"inputs of layer {b!r}; re-run the clustering")
        return self

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (lists, ints, strs) that survives ``torch.load(weights_only=True)`` and JSON."""
        return {
            "k": int(self.k),
            "layers": [{"name": n, "rows": self.row_labels[n].tolist(), "cols": self.col_labels[n].tolist()}
                       for n in self.layer_names],
            "network_wide": bool(self.network_wide),
            "similarity": self.similarity,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Clustering":
        """Inverse of :meth:`to_dict`, checking the record (it is read from files).

        Raises :class:`ClusteringError` ("malformed clustering record (...); re-run the clustering")
        unless the record has ``k`` and a non-empty list of layers, each with a unique string name and
        flat label lists, and the result passes the constructor's checks: ``k`` an integer >= 2 (a
        string ``"4"`` is refused), integer labels (floats, booleans and strings refused) in
        ``-1..k-1``, every cluster used somewhere (a stored ``k = 1000`` over labels ``0..3`` is
        refused). Use :func:`stored_clustering` to read a checkpoint's record.

        Parameters
        ----------
        data : mapping
            A record as written by :meth:`to_dict`: ``k``, ``layers`` (each with ``name``, ``rows`` and
            ``cols``) and optionally ``network_wide``, ``similarity`` and ``meta``.

        Returns
        -------
        Clustering

        Examples
        --------
        >>> c = Clustering.from_dict({"k": 2, "layers": [{"name": "fc", "rows": [0, 1], "cols": [1, 0, -1]}]})
        >>> c.k, c.col_labels["fc"].tolist()
        (2, [1, 0, -1])
        """
        def bad(why: str):
            raise ClusteringError(f"malformed clustering record ({why}); re-run the clustering")

        def labels(value, name: str, side: str) -> np.ndarray:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                bad(f"{side} labels of layer {name!r} are not a list")
            try:
                arr = np.asarray(value.tolist() if hasattr(value, "tolist") else list(value))
            except (TypeError, ValueError):
                bad(f"{side} labels of layer {name!r} are not a list of integers")
            return arr if arr.size else np.zeros(0, dtype=np.int64)

        if not isinstance(data, Mapping):
            bad(f"a {type(data).__name__}, not a dict")
        if "k" not in data or "layers" not in data:
            bad(f"missing {'k' if 'k' not in data else 'layers'}")
        layers = data["layers"]
        if not isinstance(layers, (list, tuple)) or not layers:
            bad("layers must be a non-empty list")
        rows, cols = {}, {}
        for entry in layers:
            if not isinstance(entry, Mapping) or not {"name", "rows", "cols"} <= set(entry):
                bad("every layer needs name, rows and cols")
            name = entry["name"]
            if not isinstance(name, str) or name in rows:
                bad(f"layer name {name!r} is not a unique string")
            rows[name] = labels(entry["rows"], name, "row")
            cols[name] = labels(entry["cols"], name, "column")
        try:
            return cls(k=data["k"], row_labels=rows, col_labels=cols, network_wide=data.get("network_wide", False),
                       similarity=data.get("similarity", "weight"), meta=data.get("meta", {}))
        except ClusteringError as err:
            bad(str(err))


def check_labels(value, name: Optional[str], side: str, k: int) -> np.ndarray:
    """One layer's labels as a 1-D int64 array in ``-1..k-1`` (:class:`ClusteringError` otherwise: the one
    check of labels, used by :class:`Clustering`, the shuffle test and the random-partition baseline).

    Examples
    --------
    >>> check_labels([0, 1, -1], "fc1", "row", 2).tolist()
    [0, 1, -1]
    """
    arr = np.asarray(value)
    where = f" of layer {name!r}" if name is not None else ""
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ClusteringError(f"{side} labels{where} must be a flat array of integers, got {arr.dtype} "
                              f"values of shape {arr.shape}")
    if arr.min() < -1 or arr.max() >= k:
        raise ClusteringError(f"{side} labels{where} must lie in -1..{k - 1} for k={k}, got {arr.min()}..{arr.max()}"
                              + (": labels from a clustering at another k?" if arr.max() >= k else ""))
    return arr.astype(np.int64, copy=False)


def require_clustering(clustering, what: str = "this function") -> Clustering:
    """Return ``clustering`` if it is a :class:`Clustering`, else raise :class:`ClusteringError` (one line).

    Consumers take only the object; a stored dict is read once, by :func:`stored_clustering`.
    """
    if not isinstance(clustering, Clustering):
        hint = ("; read a stored record with stored_clustering(record) or Clustering.from_dict(record)"
                if isinstance(clustering, Mapping) else "")
        raise ClusteringError(f"{what} needs a Clustering, got {type(clustering).__name__}{hint}")
    return clustering


def stored_clustering(record: Optional[Mapping[str, Any]], graph: Optional[LayeredGraph] = None) -> Optional[Clustering]:
    """The clustering a checkpoint stores (its ``"clustering"`` dict), as a :class:`Clustering`; None if none.

    The one place where a stored record becomes a ``Clustering``: every command reading a checkpoint
    calls it. With ``graph``, the clustering is also validated against that model's graph.

    Parameters
    ----------
    record : mapping or None
        The stored dict (:meth:`Clustering.to_dict`); None or an empty dict means no clustering.
    graph : LayeredGraph, optional
        The model's graph to validate the clustering against (:meth:`Clustering.validate`).

    Returns
    -------
    Clustering or None

    Raises
    ------
    ClusteringError
        "malformed clustering record (...)" for float labels, a string k, labels outside ``-1..k-1``,
        ... (see :meth:`Clustering.from_dict`); a clustering made for another model.
    """
    if record is None or (isinstance(record, Mapping) and not record):
        return None
    clustering = Clustering.from_dict(record)
    return clustering.validate(graph) if graph is not None else clustering
