"""The clustering a training run takes (:func:`graphinterp.training.train.train`): the layers to cluster, checked
before any training, and the network-wide clustering of those layers at the end of the warm-up (on the weights
or on the gradients accumulated during it), found on rank 0 and broadcast to every rank under
``torch.distributed``, or the error that stopped it.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

from torch import nn

from graphinterp.clustering.cluster import Clustering, cluster_network
from graphinterp.clustering.labels import stored_clustering
from graphinterp.clustering.validation import require_clusterable
from graphinterp.common.errors import GraphinterpError, UnknownLayerError
from graphinterp.graph.layered import Layer, LayeredGraph
from graphinterp.training.gradsim import orphans_note
from graphinterp.training.masks import default_cluster_layers, trace_graph
from graphinterp.training.train_config import TrainConfig

__all__: List[str] = []  # the training pipeline's own steps (train.py imports them)


def _cpu_graph(graph: LayeredGraph) -> LayeredGraph:
    """A frozen CPU snapshot (the traced graph's weights are live views of the parameters)."""
    return LayeredGraph([Layer(l.name, l.kind, l.weight.detach().cpu().clone(), l.in_groups, l.groups) for l in graph],
                        chained=graph.chained)


def _cluster(graph: LayeredGraph, layers: List[str], config: TrainConfig, gradsim, rank: int, world: int,
             note: Optional[Callable[[str], None]] = None) -> Clustering:
    """The network-wide clustering on the weights now, or (``gradsim``) on the accumulated gradients.

    Under ``torch.distributed`` rank 0 clusters and broadcasts the labels, or the error that stopped it (e.g. k
    above the units that got a gradient), which every rank then raises instead of waiting for labels."""
    payload: List[Any] = [None]
    if rank == 0:
        try:
            sims = gradsim.similarity() if gradsim is not None else None
            cpu = _cpu_graph(graph)
            clustering = cluster_network(cpu, config.k, layers=layers, similarity=sims, random_state=config.seed)
        except GraphinterpError as err:
            if world == 1:
                raise
            payload = [err]
        else:
            clustering.similarity = "gradient" if gradsim is not None else "weight"  # a baseline's refit: weights
            orphans = orphans_note(cpu, clustering) if gradsim is not None and note is not None else None
            if orphans:
                note(orphans)
            payload = [clustering.to_dict()]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(payload, src=0)
        if isinstance(payload[0], GraphinterpError):
            dist.barrier()  # every rank holds the error before rank 0 raises it and its group closes mid-receive
    if isinstance(payload[0], GraphinterpError):
        raise payload[0]
    return stored_clustering(payload[0])


def _current(graph: LayeredGraph, model: nn.Module, train_set) -> LayeredGraph:
    """``graph`` with the model's weights of now: its unfolded layers are views of the live parameters, but a
    layer with a folded normalisation holds the product of the weights when it was traced, so such a graph
    is traced again (clustering after warm-up, or the baseline's refit, would otherwise see the first weights)."""
    if not any(layer.folded for layer in graph):
        return graph
    return trace_graph(model, input_shape=tuple(train_set.x.shape[1:]))


def _check_layers(graph: LayeredGraph, config: TrainConfig) -> List[str]:
    layers = list(config.layers) if config.layers is not None else default_cluster_layers(graph)
    for name in layers:
        if name not in graph.layer_names:
            raise UnknownLayerError(f"no layer named {name!r} to cluster; the layers are {', '.join(graph.layer_names)}")
    require_clusterable(graph, config.k, layers)  # before any training, not when the warm-up ends
    return layers
