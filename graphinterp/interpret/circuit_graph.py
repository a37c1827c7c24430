"""A found circuit as a networkx graph (what ``graphinterp circuits --graphml`` writes)."""
from __future__ import annotations

from typing import List

from graphinterp.graph.layer import Layer
from graphinterp.graph.layered import LayeredGraph

__all__ = ["circuit_networkx", "grouped_layers"]


def circuit_networkx(circuit, graph: LayeredGraph, clustering=None):
    """``circuit`` (a :class:`~graphinterp.interpret.circuit_result.Circuit`) as a subgraph of ``graph``'s networkx
    graph: its kept edges and the nodes they touch.

    Attributes are those of :meth:`LayeredGraph.to_networkx` (cluster labels included when ``clustering`` is
    given), all GraphML types; graph attributes hold ``label``, ``label_name``, ``ecs``, ``ecs_edges``,
    ``accuracy``, ``loss`` and ``ecs:<layer>`` per layer. Nodes are in the graph's ``"grouped"`` view: after a
    Flatten of conv channels, a channel-to-neuron edge is present when any of its kept weights is non-zero,
    with the signed norm of those weights; such layers are listed in ``grouped_layers``, ``exact`` is then
    False (the file cannot rebuild the circuit: ``ecs`` counts the kept weights, ``kept_weights`` of them,
    not the file's edges).

    Parameters
    ----------
    circuit : Circuit
        A found circuit; its ``masks`` must cover every layer of ``graph``.
    graph : LayeredGraph
        The graph of the circuit's model.
    clustering : Clustering, optional
        Cluster labels for the node and edge attributes.

    Returns
    -------
    networkx.DiGraph
        The kept edges and the nodes they touch (isolated nodes removed).
    """
    layers = []
    for layer in graph.layers:
        m = circuit.masks[layer.name].to(layer.weight.device)
        w = layer.weight * (m[..., None, None] if layer.kind == "conv2d" else m).to(layer.weight.dtype)
        layers.append(Layer(layer.name, layer.kind, w, in_groups=layer.in_groups, groups=layer.groups))
    G = LayeredGraph(layers, chained=graph.chained).to_networkx(clustering)
    G.remove_nodes_from([n for n in list(G.nodes) if G.degree(n) == 0])
    for _, data in G.nodes(data=True):  # a level labelled only as a clustered layer's input keeps that label
        if data.get("cluster", -1) < 0 and data.get("cluster_in", -1) >= 0:
            data["cluster"] = data["cluster_in"]
    G.graph.update(label=int(circuit.label), label_name=str(circuit.label_name), ecs=float(circuit.ecs),
                   ecs_edges=float(circuit.size.ecs_edges), accuracy=float(circuit.accuracy), loss=float(circuit.loss))
    G.graph.update({f"ecs:{k}": float(v) for k, v in circuit.size.ecs_per_layer.items()})
    grouped = grouped_layers(graph)
    # the file holds one edge per channel where a Flatten's features were grouped: it cannot rebuild the circuit
    G.graph.update(kept_weights=int(circuit.size.kept_params), grouped_layers=",".join(grouped), exact=not grouped)
    return G


def grouped_layers(graph: LayeredGraph) -> List[str]:
    """The layers of ``graph`` whose inputs a GraphML circuit groups (a Linear after a Flatten of channels: one
    edge per channel and output, not per kept weight).

    Examples
    --------
    >>> import torch
    >>> g = LayeredGraph([Layer("fc", "linear", torch.ones(3, 8), in_groups=2)])
    >>> grouped_layers(g)
    ['fc']
    """
    return [layer.name for layer in graph.layers if layer.kind == "linear" and (layer.in_groups or 1) > 1
            and layer.in_groups != layer.weight.shape[1]]
