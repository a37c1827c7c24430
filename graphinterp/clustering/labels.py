"""``Clustering``: the one object that holds cluster labels, built and validated once.

Every clustering function returns one, checkpoints store one (``to_dict`` / ``from_dict``), and the
consumers (masks, loss, ablation, circuits, export) accept only this type.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from graphinterp.common.errors import ClusteringError
from graphinterp.graph.layered import LayeredGraph

__all__ = ["Clustering"]


@dataclass
class Clustering:
    """Cluster labels of the input (row) and output (column) nodes of some layers of a graph.

    Labels are in ``0..k-1``; ``-1`` marks an isolated node (no non-zero edge), in no cluster.
    Input labels are in the ``"grouped"`` view (one per channel for a Linear after a Flatten).

    Attributes
    ----------
    k : int
    row_labels, col_labels : dict of str to ndarray
        Per layer name, labels of the layer's input and output nodes.
    network_wide : bool
        True when each hidden neuron has one label: ``col_labels[l] == row_labels[l + 1]`` for
        consecutive clustered layers.
    similarity : str
        ``"weight"`` or ``"gradient"`` (what BSGC clustered).
    meta : dict
        Free-form provenance (seed, pairing, ...).
    """

    k: int
    row_labels: Dict[str, np.ndarray]
    col_labels: Dict[str, np.ndarray]
    network_wide: bool = False
    similarity: str = "weight"
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def layer_names(self) -> List[str]:
        """Names of the clustered layers, in order."""
        return list(self.row_labels)

    def labels(self, layer: str) -> Tuple[np.ndarray, np.ndarray]:
        """``(row_labels, col_labels)`` of ``layer``."""
        if layer not in self.row_labels:
            raise ClusteringError(f"layer {layer!r} is not clustered; clustered layers: {self.layer_names}")
        return self.row_labels[layer], self.col_labels[layer]

    def sizes(self, layer: str) -> np.ndarray:
        """``(k, 2)`` array: number of input and output nodes in each cluster of ``layer``."""
        rows, cols = self.labels(layer)
        return np.stack([np.bincount(rows[rows >= 0], minlength=self.k),
                         np.bincount(cols[cols >= 0], minlength=self.k)], axis=1)

    def validate(self, graph: LayeredGraph) -> "Clustering":
        """Raise :class:`ClusteringError` unless every clustered layer exists in ``graph`` with matching sizes."""
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ClusteringError(f"k must be an integer >= 1, got {self.k!r}")
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
            for lab in (rows, cols):
                lab = np.asarray(lab)
                if lab.size and lab.dtype.kind not in "iu":
                    raise ClusteringError(f"labels of layer {name!r} must be integers, got {lab.dtype}")
                if lab.size and (lab.max() >= self.k or lab.min() < -1):
                    raise ClusteringError(f"labels of layer {name!r} must lie in -1..{self.k - 1}")
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

        Raises :class:`ClusteringError` ("malformed clustering record ...") unless ``k`` is an
        integer >= 1, every layer has a unique string name and one-dimensional integer label lists
        (floats, booleans and strings refused) with values in ``-1..k-1``, and each of the ``k``
        clusters holds at least one node somewhere (a stored ``k = 1000`` over labels ``0..3``
        is refused).

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
            if arr.size == 0:
                return np.zeros(0, dtype=np.int64)
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                bad(f"{side} labels of layer {name!r} must be a flat list of integers, got {arr.dtype} "
                    f"values of shape {arr.shape}")
            if arr.min() < -1 or arr.max() >= k:
                bad(f"{side} labels of layer {name!r} must lie in -1..{k - 1}")
            return arr.astype(np.int64)

        if not isinstance(data, Mapping):
            bad(f"a {type(data).__name__}, not a dict")
        if "k" not in data or "layers" not in data:
            bad(f"missing {'k' if 'k' not in data else 'layers'}")
        k = data["k"]
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            bad(f"k must be an integer >= 1, got {k!r}")
        k = int(k)
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
        used = np.unique(np.concatenate([a for a in (*rows.values(), *cols.values())] + [np.zeros(0, np.int64)]))
        used = used[used >= 0]
        if used.size != k:
            bad(f"k={k} but the labels use {used.size} cluster(s)")
        similarity, meta = data.get("similarity", "weight"), data.get("meta", {})
        if not isinstance(similarity, str) or not isinstance(meta, Mapping):
            bad("similarity must be a string and meta a dict")
        return cls(k=k, row_labels=rows, col_labels=cols, network_wide=bool(data.get("network_wide", False)),
                   similarity=similarity, meta=dict(meta))
