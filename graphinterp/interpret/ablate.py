"""Zero- and mean-ablation of neurons and clusters with forward hooks (the paper's Section 3.1).

Where a level is ablated
------------------------
The node levels of a chained :class:`~graphinterp.graph.layered.LayeredGraph` are ``"input"`` and one level
per weight layer (``"fc1"`` = the outputs of ``fc1``). A level's *activation* is what the next
weight layer receives: the hook is a forward **pre**-hook on that consumer (``fc2`` for level
``"fc1"``), and a forward hook on the last layer for the output level. So ablating level ``fc1``
replaces the neurons' post-activation values (after bias, ReLU, BatchNorm, pooling, dropout, ...),
whatever lies between the two layers; for a bias-free ReLU network this equals zeroing the
pre-activations at ``fc1`` (``relu(0) = 0``), but unlike a hook on the producer it stays exact
with biases or BatchNorm (``BN(0) != 0``). Channels of a Conv2d level are ablated at every spatial
position; a Linear after a Flatten of ``C`` channels sees each channel as its block of features.

Clusters ON / OFF
-----------------
With a :class:`~graphinterp.clustering.cluster.Clustering`, the ablated levels are the *hidden* node levels of
the clustered layers: the outputs of each clustered layer and its inputs, leaving out the model
input and the logits. Switching cluster ``c`` **ON** zero-ablates every neuron of those levels not
in ``c`` (isolated neurons, label ``-1``, included); **OFF** zero-ablates the neurons of ``c`` only.
Each layer's own labels are used (row labels for its inputs, column labels for its outputs). A level
shared by two clustered layers must get the same labels from both, as a network-wide clustering gives;
two layers clustered independently (a per-layer clustering) number their clusters independently, so
"cluster c" means nothing there and is refused (:class:`ClusteringError`), rather than ablating
wherever either layer's labels say so (overlapping OFF sets, a near-empty ON).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from graphinterp.common.files import resolve_device
from graphinterp.clustering.labels import Clustering, require_clustering
from graphinterp.common.errors import ClusteringError
from graphinterp.interpret.evaluation import as_tensors, class_accuracy, on_device, per_class, predictions
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.hooks import AblationHandle, NeuronSpec, ablate, level_means, run_with_ablation

__all__ = [
    "AblationHandle", "AblationResult", "NeuronSpec", "ablate", "run_with_ablation", "cluster_neurons", "hidden_level_labels",
    "level_means", "class_accuracy", "ablation_matrix", "as_tensors",
]


def cluster_neurons(graph: LayeredGraph, clustering: Clustering, cluster: int, state: str) -> Dict[str, torch.Tensor]:
    """The neurons to ablate to switch ``cluster`` ON (``state="on"``) or OFF (``"off"``).

    See the module docstring: hidden levels of the clustered layers, each layer's own labels.

    Returns
    -------
    dict of str to BoolTensor
        Per level name, the nodes to ablate (a spec for :func:`ablate`).

    Raises
    ------
    ClusteringError
        Unknown state, cluster out of range, labels that do not fit the graph, or no hidden level.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> g = LayeredGraph.from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> c = Clustering(2, {"2": np.array([0, 0, 1, 1])}, {"2": np.array([0, 1])})
    >>> {level: m.tolist() for level, m in cluster_neurons(g, c, 0, "on").items()}  # logits never ablated
    {'0': [False, False, True, True]}
    """
    if state not in ("on", "off"):
        raise ClusteringError(f"state must be 'on' or 'off', got {state!r}")
    if not 0 <= int(cluster) < clustering.k:
        raise ClusteringError(f"cluster {cluster} is out of range; the clustering has clusters 0..{clustering.k - 1}")
    out: Dict[str, torch.Tensor] = {}
    for key, labels in hidden_level_labels(graph, clustering).items():
        lab = torch.as_tensor(labels)
        out[key] = (lab != cluster) if state == "on" else (lab == cluster)
    if not out:
        raise ClusteringError(
            f"the clustered layers {clustering.layer_names} touch no hidden level (only the input and the "
            "output); cluster a hidden layer such as fc2"
        )
    return out


def hidden_level_labels(graph: LayeredGraph, clustering: Clustering) -> Dict[str, np.ndarray]:
    """The cluster of each neuron of every hidden level the clustered layers touch, by level name.

    Each layer's own labels: row labels for its inputs, column labels for its outputs; the model's
    input and output levels are left out. A level two clustered layers share must get the same
    labels from both (a network-wide clustering), else :class:`ClusteringError` (see the module docstring).

    Examples
    --------
    >>> from torch import nn
    >>> g = LayeredGraph.from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> hidden_level_labels(g, Clustering(2, {"2": np.array([0, 0, 1, 1])}, {"2": np.array([0, 1])}))
    {'0': array([0, 0, 1, 1])}
    """
    clustering.validate(graph)
    names, L = graph.level_names(), len(graph)
    seen: Dict[int, tuple] = {}  # level -> (layer, labels) that set it
    for layer_name in clustering.layer_names:
        t = graph.index(layer_name)
        rows, cols = clustering.labels(layer_name)
        for level, labels in ((t, rows), (t + 1, cols)):
            if level in (0, L):
                continue
            if level in seen and not np.array_equal(seen[level][1], labels):
                raise ClusteringError(
                    f"layers {seen[level][0]!r} and {layer_name!r} label the level they share ({names[level]!r}) "
                    "differently: they were clustered independently, so their cluster numbers are unrelated there; "
                    "use one layer's clustering at a time, or a network-wide clustering (cluster_network, what "
                    "`graphinterp train` stores)")
            seen[level] = (layer_name, np.asarray(labels))
    return {names[level]: labels for level, (_, labels) in sorted(seen.items())}


@dataclass
class AblationResult:
    """Class-wise accuracy with each cluster ON and OFF (the paper's Figure 2).

    Attributes
    ----------
    on, off : ndarray of shape (k, C)
        Accuracy on each class with only cluster ``i`` active / with cluster ``i`` ablated.
    full : ndarray of shape (C,)
        Accuracy of the intact model.
    classes : list of str
        Names of the C classes present in the data (classes without examples are left out).
    class_ids : list of int
    counts : ndarray of shape (C,)
        Number of examples of each class.
    mode : str
    levels : list of str
        The ablated levels.
    """

    on: np.ndarray
    off: np.ndarray
    full: np.ndarray
    classes: List[str]
    class_ids: List[int]
    counts: np.ndarray
    mode: str = "zero"
    levels: List[str] = field(default_factory=list)

    def overall(self) -> Dict[str, Any]:
        """Accuracy over all examples (count-weighted): ``full``, ``on`` (k,), ``off`` (k,)."""
        w = self.counts / self.counts.sum()
        return {"full": float(self.full @ w), "on": (self.on @ w).tolist(), "off": (self.off @ w).tolist()}

    def to_dict(self) -> Dict[str, Any]:
        """Plain lists/floats for JSON."""
        return {"mode": self.mode, "levels": list(self.levels), "classes": list(self.classes),
                "class_ids": list(self.class_ids), "counts": self.counts.tolist(), "full": self.full.tolist(),
                "on": self.on.tolist(), "off": self.off.tolist(), "overall": self.overall()}


def ablation_matrix(model: nn.Module, graph: Optional[LayeredGraph], clustering: Clustering, data: Any, *,
                    mode: str = "zero", reference: Any = None, batch_size: int = 1024, device=None,
                    progress: bool = False) -> AblationResult:
    """Class-wise accuracy of the intact model and with each cluster ON and OFF.

    Parameters
    ----------
    model, graph : as in :func:`ablate`
    clustering : Clustering
    data : LabeledTensors, (x, y) or TensorDataset
        Evaluation data (the means of mean mode come from ``reference``, default ``data``).
    mode : {"zero", "mean"}
        What an ablated neuron outputs: 0, or its mean activation over ``reference``.
    reference : LabeledTensors, (x, y) or TensorDataset, optional
        The inputs whose mean activations ``mode="mean"`` uses (e.g. the training split); default ``data``.
    batch_size : int
    device : str or torch.device, optional
        Default CUDA when available; the model runs there and is moved back afterwards.
    progress : bool
        Show a tqdm bar over the 2k ablations.

    Returns
    -------
    AblationResult

    Raises
    ------
    DataError
        Empty data. ``ClusteringError`` if the clustering does not fit the model.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.eye(4))
    ...     _ = model[2].weight.copy_(torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]]))
    >>> x = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]]); y = torch.tensor([0, 1])
    >>> c = Clustering(2, {"0": np.array([0, 0, 1, 1])}, {"0": np.array([0, 0, 1, 1])})
    >>> res = ablation_matrix(model, None, c, (x, y), device="cpu")
    >>> res.full.tolist(), res.off.tolist()  # OFF 1 leaves two zero logits: argmax picks class 0
    ([1.0, 1.0], [[1.0, 1.0], [1.0, 0.0]])
    """
    from tqdm.auto import tqdm

    clustering = require_clustering(clustering, "ablation_matrix")
    x, y, names = as_tensors(data, model)
    device = resolve_device(device)
    with on_device(model, device):
        graph = graph if graph is not None else LayeredGraph.from_module(model)
        specs = {(c, s): cluster_neurons(graph, clustering, c, s) for c in range(clustering.k) for s in ("on", "off")}
        means = None
        if mode == "mean":
            means = level_means(model, graph, reference if reference is not None else x,
                                levels=sorted({n for spec in specs.values() for n in spec}), batch_size=batch_size)
        n_out = graph.layers[-1].n_out
        full = per_class(predictions(model, x, batch_size, device), y, n_out)
        rows = {}
        for key in tqdm(specs, desc="ablations", disable=not progress, leave=False):
            with ablate(model, graph, specs[key], mode=mode, means=means):
                rows[key] = per_class(predictions(model, x, batch_size, device), y, n_out)
    counts = torch.bincount(y, minlength=len(full)).numpy()
    present = np.flatnonzero(counts > 0)
    names = names if names is not None and len(names) >= len(full) else [str(i) for i in range(len(full))]
    k = clustering.k
    return AblationResult(
        on=np.stack([rows[(c, "on")][present] for c in range(k)]),
        off=np.stack([rows[(c, "off")][present] for c in range(k)]),
        full=full[present], classes=[names[i] for i in present], class_ids=present.tolist(),
        counts=counts[present], mode=mode, levels=sorted({n for spec in specs.values() for n in spec}),
    )
