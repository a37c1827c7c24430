"""The training adapter: graph-level cluster labels mapped back onto parameter-shaped masks.

A :class:`~graphinterp.clustering.cluster.Clustering` labels the *nodes* of a layered graph (neurons,
channels). Training needs the same information on the *parameters*: for every clustered layer a
0/1 tensor of the weight's shape that is 1 exactly on the parameters of within-cluster edges.

==================================  ==========================================================
layer                               mask (torch layout)
==================================  ==========================================================
``nn.Linear``                       ``(out, in)``: ``M[j, i] = [u_i = v_j]``
``nn.Conv2d``                       ``(out, in/groups, kh, kw)``: the whole kernel ``K_ji`` is
                                    in or out, ``M[j, i, :, :] = [u_i = v_j]``
``nn.Linear`` after a Flatten of C  ``(out, C * h * w)``: channel labels ``u_c`` (grouped view)
channels (``Layer.in_groups``)      are expanded over each channel's features with
                                    :meth:`graphinterp.graph.layer.Layer.expand_input_labels`
==================================  ==========================================================

``u`` are the input-node labels, ``v`` the output-node labels; label ``-1`` (isolated node) is in no
cluster, so its edges are never "within". Because squared edge weights of the layered graph are
sums of squared parameters (see :mod:`graphinterp.graph.layer`), ``sum(W**2 * M) / sum(W**2)`` equals the
graph-level clusterability E of :func:`graphinterp.clustering.metrics.clusterability` exactly, with ``W`` the
weight as the graph holds it: where the graph folded normalisation scales into a layer, its
:class:`ParameterMask` carries them live (``ParameterMask.effective()``, see
:mod:`graphinterp.training.folded_scales`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from graphinterp.clustering.cluster import Clustering
from graphinterp.clustering.labels import require_clustering
from graphinterp.common.errors import ClusteringError
from graphinterp.graph.layer_matrices import grouped_input_channels
from graphinterp.graph.layered import Layer, LayeredGraph
from graphinterp.clustering.metrics import random_partition_expectation, within_mask
from graphinterp.training.folded_scales import live_scale

__all__ = ["ParameterMask", "bound_rows", "default_cluster_layers", "parameter_masks", "layer_parameter",
           "trace_graph", "unwrap_model"]


@dataclass(frozen=True, eq=False)
class ParameterMask:
    """The within-cluster mask of one clustered layer's weight.

    Attributes
    ----------
    layer : str
        Graph layer name (module path, e.g. ``"fc2"``).
    param : torch.nn.Parameter
        The live weight of that layer (not a copy: the optimizer's updates are seen).
    mask : torch.Tensor
        Same shape, dtype and device as ``param``; 1 on within-cluster parameters, 0 elsewhere.
    scale : callable or None
        For a layer into which the graph folded normalisation scales (a BatchNorm after it, a LayerNorm
        gain before it), a function returning those scales now, broadcastable to ``param``
        (:func:`graphinterp.training.folded_scales.live_scale`); None when nothing was folded.
    """

    layer: str
    param: torch.nn.Parameter
    mask: torch.Tensor
    scale: Optional[Callable[[], torch.Tensor]] = None
    rows: Optional[Tuple[int, int]] = None
    E_random: Optional[float] = None  # the random-partition E of the clustering's labels (isolated nodes left out)

    def weight(self) -> torch.Tensor:
        """The live weight of the layer: ``param``, or its rows ``rows`` (a view, in the autograd graph)."""
        return bound_rows(self.param, self.rows)

    def effective(self) -> torch.Tensor:
        """The weight as the graph scores it: :meth:`weight`, times the folded scales when there are any."""
        w = self.weight()
        return w if self.scale is None else w * self.scale()


def bound_rows(tensor: torch.Tensor, rows: Optional[Tuple[int, int]]) -> torch.Tensor:
    """``tensor``, or the rows ``[start, stop)`` of it that a layer holds (``Layer.rows``; a view)."""
    return tensor if rows is None else tensor[rows[0]:rows[1]]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return ``model.module`` for ``DataParallel``/``DistributedDataParallel`` wrappers, else ``model``."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def default_cluster_layers(graph: LayeredGraph) -> List[str]:
    """The layers clustered by default: the paper's choice, "Linear layers between two hidden Linear levels".

    A layer is selected when it is an ``nn.Linear`` whose inputs are the outputs of another
    ``nn.Linear`` and whose outputs are not the logits. For the paper's MLP 784-64-64-10 this is
    ``['fc2']``, and for the paper's CNN ``['fc2']`` as well (Figure 7 clusters ``fc2`` only; ``fc1``
    reads the 16 conv channels in the grouped view and holds about 98% of the CNN's parameters, so
    clustering it would also partition the conv channels). Any other set of layers can be named
    explicitly. Clustering the selected layers together with
    :func:`graphinterp.clustering.cluster.cluster_network` gives every neuron they touch one label.

    Parameters
    ----------
    graph : LayeredGraph
        A chained graph (layer ``l``'s outputs are layer ``l + 1``'s inputs).

    Returns
    -------
    list of str

    Raises
    ------
    ClusteringError
        If the graph is not chained or no layer qualifies (e.g. an MLP with one hidden layer);
        then name the layers explicitly.

    Examples
    --------
    >>> from graphinterp.sources.models import mlp, cnn
    >>> default_cluster_layers(LayeredGraph.from_module(mlp()))
    ['fc2']
    >>> default_cluster_layers(LayeredGraph.from_module(cnn()))
    ['fc2']
    """
    if not graph.chained:
        raise ClusteringError("default cluster layers need a chained graph; name the layers to cluster explicitly")
    last = len(graph) - 1
    names = [
        layer.name for t, layer in enumerate(graph)
        if layer.kind == "linear" and 0 < t < last and graph[t - 1].kind == "linear"
    ]
    if not names:
        raise ClusteringError(
            f"the model has no Linear layer between two hidden Linear levels (layers: {graph.layer_names}); "
            "name the layers to cluster explicitly"
        )
    return names


def trace_graph(model: nn.Module, input_shape: Optional[Sequence[int]] = None) -> LayeredGraph:
    """:meth:`LayeredGraph.from_module` without touching the global RNG streams.

    Tracing runs one forward pass on a random input; drawing it inside ``torch.random.fork_rng``
    keeps a training run's random numbers (and so its resumability) independent of whether and
    when a graph was traced.
    """
    model = unwrap_model(model)
    param = next(model.parameters(), None)
    devices = [param.device] if param is not None and param.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return LayeredGraph.from_module(model, input_shape=input_shape)


def layer_parameter(model: nn.Module, layer: Layer) -> nn.Parameter:
    """The live weight parameter behind graph layer ``layer`` (its ``param_name``, checked by shape).

    A layer stored ``(in, out)`` (``layer.transposed``, HuggingFace GPT-2 ``Conv1D``) binds to a
    parameter of the transposed shape; :func:`parameter_masks` transposes its mask to match. A layer
    holding rows of a parameter (``layer.rows``, a cross-attention's fused ``in_proj``) binds to the
    whole parameter; :func:`bound_rows` takes its rows.

    Raises
    ------
    ClusteringError
        If ``model`` has no such parameter or it has another shape.
    """
    model = unwrap_model(model)
    weight = None
    try:
        weight = model.get_parameter(layer.param_name)
    except AttributeError:
        try:
            module = model.get_submodule(layer.name)
        except AttributeError:
            module = model if type(model).__name__ == layer.name else None  # a bare nn.Linear is named after its type
        weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ClusteringError(f"the clustering names layer {layer.name!r}, which this model does not have; "
                              "cluster this model, or load the model the clustering was made for")
    if not isinstance(weight, nn.Parameter):
        raise ClusteringError(f"the weight of layer {layer.name!r} is computed in the forward pass (a "
                              "torch.nn.utils.parametrize parametrization such as weight_norm, or a pruning mask), "
                              "not a parameter the loss could train; remove the parametrization (or "
                              "torch.nn.utils.prune.remove) first")
    expected = tuple(layer.weight.shape)
    if getattr(layer, "transposed", False):
        expected = expected[::-1]
    rows = getattr(layer, "rows", None)
    if rows is not None and tuple(weight.shape[1:]) == expected[1:] and rows[1] <= weight.shape[0]:
        expected = tuple(weight.shape)  # the layer holds rows of it (a fused in_proj): those rows must exist
    if tuple(weight.shape) != expected:
        raise ClusteringError(
            f"layer {layer.name!r} has weight shape {tuple(weight.shape)} but the graph says "
            f"{expected}: the graph was built from another model"
        )
    return weight


def _torch_layout_mask(layer: Layer, rows: np.ndarray, cols: np.ndarray, device: torch.device) -> torch.Tensor:
    """Boolean within-cluster mask in the weight's torch layout."""
    if layer.kind == "linear":
        rows_t = layer.expand_input_labels(torch.as_tensor(rows))  # channel labels -> feature labels
        return within_mask(rows_t.numpy(), cols, device=device).T
    per_channel = within_mask(rows, cols, device=device).T  # (out, in) over all in-channels
    if layer.groups > 1:  # keep the in-channels each out-channel actually sees
        out_ch, in_per = layer.weight.shape[:2]
        per_channel = per_channel.gather(1, grouped_input_channels(out_ch, in_per, layer.groups, device))
    return per_channel[:, :, None, None].expand(layer.weight.shape)


def parameter_masks(
    model: nn.Module,
    graph: Optional[LayeredGraph],
    clustering: Clustering,
) -> Dict[str, ParameterMask]:
    """Map a clustering onto within-cluster masks over the clustered layers' weights.

    Masks are built once, on the parameters' device and in their dtype, so that the clusterability
    of the model is one masked sum of squares: ``sum(W**2 * M) / sum(W**2)``.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained (a ``DistributedDataParallel`` wrapper is unwrapped).
    graph : LayeredGraph or None
        Its layered graph; traced from ``model`` when None.
    clustering : Clustering
        Cluster labels (only this type; read a stored dict with
        :func:`graphinterp.clustering.labels.stored_clustering`).

    Returns
    -------
    dict of str to ParameterMask
        One entry per clustered layer, in the clustering's order.

    Raises
    ------
    ClusteringError
        If ``clustering`` is not a :class:`Clustering` (a dict included), names a layer the model lacks
        or its label counts do not fit the layer.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    >>> c = Clustering(2, {"2": np.array([0, 1])}, {"2": np.array([1, 1])})
    >>> parameter_masks(model, None, c)["2"].mask
    tensor([[0., 1.],
            [0., 1.]])
    """
    clustering = require_clustering(clustering, "parameter_masks")
    model = unwrap_model(model)
    if graph is None:
        graph = trace_graph(model)
    clustering.validate(graph)
    out: Dict[str, ParameterMask] = {}
    for name in clustering.layer_names:
        layer = graph[name]
        param = layer_parameter(model, layer)
        rows, cols = clustering.labels(name)
        mask = _torch_layout_mask(layer, rows, cols, param.device)
        if getattr(layer, "transposed", False):  # stored (in, out): GPT-2 Conv1D
            mask = mask.T
        part = getattr(layer, "rows", None)
        out[name] = ParameterMask(name, param, mask.to(dtype=param.dtype).contiguous(), live_scale(model, layer, param),
                                  part, random_partition_expectation(rows, cols, clustering.k, layer.squared()))
    return out
