"""A graph of a model as a networkx graph, with cluster labels on its nodes and edges.

:func:`to_networkx` builds a ``networkx.DiGraph`` from a :class:`~graphinterp.graph.layered.LayeredGraph`
(one edge per weight) and a ``networkx.MultiDiGraph`` from a :class:`~graphinterp.graph.dag.ModelGraph`
(shared nodes, one edge per layer and pair of nodes); ``graph.to_networkx(...)`` calls it. GraphML
export (:func:`graphinterp.reports.io.write_graph`) writes what it returns. The graph classes import this
module, not the other way round: a model graph is told apart by its shared nodes (``src_nodes``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, List, Tuple

import numpy as np
import torch

from graphinterp.common.errors import UnsupportedModelError
from graphinterp.graph.layer import Layer

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx

__all__ = ["to_networkx"]


def to_networkx(graph: Any, clustering=None, *, view: str = "grouped", min_abs_weight: float = 0.0,
                network=None, progress: bool = False) -> "nx.DiGraph":
    """Return ``graph`` as a networkx graph with node and edge attributes.

    A :class:`~graphinterp.graph.layered.LayeredGraph` gives a ``networkx.DiGraph``: nodes are
    ``"<level>:<index>"`` (``"input:3"``, ``"fc1:10"``) for a chained graph and ``"<layer>/in:<i>"``,
    ``"<layer>/out:<j>"`` otherwise; each layer joins its own pair of levels (or its own nodes when
    layer by layer), so there is one edge per weight with ``|weight| > min_abs_weight`` (in the
    ``"grouped"`` view of a conv layer, one edge per pair of channels).

    A :class:`~graphinterp.graph.dag.ModelGraph` gives a ``networkx.MultiDiGraph`` over its global
    nodes, because two layers can connect the same pair of nodes (a SwiGLU MLP's gate and up
    projections both read the residual stream and write the same hidden nodes): each keeps its own
    edge, keyed by the layer's name (``G.edges[u, v, "mlp.up_proj"]`` in memory; a file read back
    numbers the keys). Input features that share a node (e.g. the query heads that one value head
    serves under grouped-query attention) are one edge: the grouped view's norm. Extra graph
    attributes: ``dag``, ``multigraph`` (true: :func:`~graphinterp.reports.io.read_graphml` reads the
    file back as a ``MultiDiGraph``) and ``multi_edge_pairs`` (pairs of nodes with several edges).

    Node attributes: ``layer`` (the level name; on a model graph the space, i.e. the layer or
    embedding that created the node, also as ``space``), ``index``, ``cluster_in`` (the node's label
    as an input of the layers that read it, in ``clustering``), ``cluster_out`` (its label as an output
    of the layer that writes it) and ``cluster``, one label per node that means the same on every level:

    * the network-wide label, from ``network`` or from ``clustering`` when it is network-wide
      (:func:`graphinterp.clustering.cluster.cluster_network`,
      :func:`~graphinterp.clustering.dag_cluster.cluster_dag`); then an edge joins two nodes of one
      cluster exactly when both ends have the same ``cluster``, and the squared weight of such edges
      over all edges of the layers it clusters (not of the others) is the clustering's E;
    * otherwise (layered graphs) the node's only label: a per-layer clustering numbers each layer's
      clusters on its own, so a hidden node between two clustered layers, which has two unrelated
      labels, gets ``cluster = -1`` (its labels stay in ``cluster_in`` / ``cluster_out``);
    * ``-1`` for a node that no clustered layer touches or that is isolated, and for every node of a model graph
      without network-wide labels (its ``cluster_source`` is then ``"none"``).

    On a model graph ``cluster_in`` / ``cluster_out`` are -1 where several clustered layers give a
    node different labels (a residual stream with per-layer labels). Edge attributes: ``weight``
    (signed), ``abs_weight``, ``sign`` (-1, 0, 1), ``layer``, ``within`` (both ends in the same cluster
    of that layer's clustering in ``clustering``) and ``same_cluster`` (both ends have the same
    ``cluster`` >= 0). Graph attributes: ``chained``, ``view``, ``cluster_source`` (``"network"``,
    ``"per-layer"`` or ``"none"``), ``min_abs_weight`` and ``edges_below_min_abs_weight`` (the non-zero
    weights it dropped: a file's edges are then not the whole graph, and scores computed from them are not
    the model's).

    Parameters
    ----------
    graph : LayeredGraph or ModelGraph
    clustering : Clustering, optional
        Labels for ``cluster_in``, ``cluster_out`` and ``within`` (see :mod:`graphinterp.clustering.cluster`);
        by default ``network``'s.
    view : {"grouped", "fine"}
        ``"fine"`` is only allowed for a single layer or layer-by-layer graphs; a model graph has only
        the grouped view (one node per channel).
    min_abs_weight : float, default 0.0
        Drop edges with ``|weight| <= min_abs_weight`` (zero-weight edges are always dropped).
    network : Clustering, optional
        A network-wide clustering (``network_wide=True``) whose labels become ``cluster``; by default
        ``clustering`` when it is network-wide. On a model graph, ``meta["node_labels"]`` when it has one
        per node, else read off the ends of its layers.
    progress : bool, default False
        A tqdm bar over the layers on stderr.

    Returns
    -------
    networkx.DiGraph or networkx.MultiDiGraph

    Raises
    ------
    UnsupportedModelError
        The ``"fine"`` view of a chained graph with a Flatten between layers.
    ValueError
        ``min_abs_weight`` is negative or not a finite number; ``network`` is not network-wide; a view
        other than ``"grouped"`` of a model graph.

    Examples
    --------
    >>> from torch import nn
    >>> from graphinterp.clustering.cluster import cluster_network
    >>> from graphinterp.graph.layered import LayeredGraph
    >>> g = LayeredGraph.from_module(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 4)))
    >>> G = to_networkx(g, cluster_network(g, 2, random_state=0))
    >>> G.graph["cluster_source"], G.nodes["0:1"]["cluster"] == G.nodes["0:1"]["cluster_in"]
    ('network', True)
    """
    if not (isinstance(min_abs_weight, (int, float)) and not isinstance(min_abs_weight, bool)
            and np.isfinite(min_abs_weight) and min_abs_weight >= 0):
        raise ValueError(f"min_abs_weight must be a finite number >= 0, got {min_abs_weight!r}")
    if network is None and clustering is not None and getattr(clustering, "network_wide", False):
        network = clustering
    if network is not None and not getattr(network, "network_wide", False):
        raise ValueError("network= must be a network-wide clustering (graphinterp.clustering.cluster.cluster_network)")
    if clustering is None:  # network-wide labels only: they are also every layer's in and out labels
        clustering = network
    source = "network" if network is not None else ("per-layer" if clustering is not None else "none")
    if hasattr(graph, "src_nodes"):  # a ModelGraph: global nodes shared by its layers; `cluster` is network-wide or -1
        return _model_graph(graph, clustering, view, min_abs_weight, network, progress,
                            "network" if network is not None else "none")
    return _layered(graph, clustering, view, min_abs_weight, network, progress, source)


def _bar(layers: Iterable, total: int, progress: bool) -> Iterable:
    if not progress:
        return layers
    from tqdm.auto import tqdm

    return tqdm(layers, total=total, desc="building graph", unit="layer", leave=False, dynamic_ncols=True)


def _edge(val: float, layer: str, within: bool, same: bool) -> dict:
    return {"weight": val, "abs_weight": abs(val), "sign": int(np.sign(val)), "layer": layer, "within": within,
            "same_cluster": same}


def _layered(graph: Any, clustering, view: str, min_abs_weight: float, network, progress: bool,
             source: str) -> "nx.DiGraph":
    import networkx as nx

    if view == "fine" and graph.chained and any(l.in_groups for l in graph.layers[1:]):
        raise UnsupportedModelError("the 'fine' view breaks the chain at a Flatten; use the 'grouped' view "
                                    "(or --layerwise)")
    G = nx.DiGraph(chained=graph.chained, view=view, cluster_source=source)
    dropped = 0
    node_cluster: dict = {}  # node -> list of candidate labels (network: one; per-layer: one per side)
    edges = []
    for t, layer in _bar(enumerate(graph.layers), len(graph.layers), progress):
        rows, cols = _labels_for(clustering, layer, view)
        src = _node_ids(graph, t, "in", layer.n_in(view))
        dst = _node_ids(graph, t, "out", layer.n_out)
        if network is not None:
            net_rows, net_cols = _labels_for(network, layer, view)
            covered = layer.name in network.layer_names
        else:
            net_rows, net_cols, covered = rows, cols, clustering is not None and layer.name in clustering.layer_names
        for ids, level, name, labels, net, attr in (
            (src, t, _level_name(graph, t, "in"), rows, net_rows, "cluster_in"),
            (dst, t + 1, _level_name(graph, t, "out"), cols, net_cols, "cluster_out"),
        ):
            for i, node in enumerate(ids):
                G.add_node(node)
                data = G.nodes[node]
                data.update(layer=name, level=level, index=i)
                data.setdefault("cluster_in", -1)
                data.setdefault("cluster_out", -1)
                data[attr] = int(labels[i])
                if covered:
                    node_cluster.setdefault(node, []).append(int(net[i]))
        w = layer.signed(view).detach().cpu().double().numpy()  # numpy has no bfloat16
        ii, jj = np.nonzero(np.abs(w) > min_abs_weight)
        dropped += int(np.count_nonzero(w)) - len(ii)
        within = (rows[ii] == cols[jj]) & (rows[ii] >= 0)
        edges.append((layer.name, src, dst, ii.tolist(), jj.tolist(), w[ii, jj].tolist(), within.tolist()))
    for node, data in G.nodes(data=True):
        labels = node_cluster.get(node, [])
        # network: every candidate is the same label; per layer: only a node with one label has a meaning
        data["cluster"] = labels[0] if labels and (network is not None or len(labels) == 1) else -1
    cluster = G.nodes.data("cluster")
    for name, src, dst, ii, jj, vals, within in edges:
        G.add_edges_from((src[i], dst[j], _edge(float(v), name, bool(b), bool(cluster[src[i]] == cluster[dst[j]]
                                                                                and cluster[src[i]] >= 0)))
                         for i, j, v, b in zip(ii, jj, vals, within))
    G.graph.update(min_abs_weight=float(min_abs_weight), edges_below_min_abs_weight=dropped)
    return G


def _level_name(graph: Any, t: int, side: str) -> str:
    if graph.chained:
        return "input" if (side == "in" and t == 0) else graph.layers[t - 1 if side == "in" else t].name
    return f"{graph.layers[t].name}/{side}"


def _node_ids(graph: Any, t: int, side: str, n: int) -> List[str]:
    if graph.chained:
        prefix = _level_name(graph, t, side)
        return [f"{prefix}:{i}" for i in range(n)]
    return [f"{graph.layers[t].name}/{side}:{i}" for i in range(n)]


def _labels_for(clustering, layer: Layer, view: str) -> Tuple[np.ndarray, np.ndarray]:
    n_in, n_out = layer.n_in(view), layer.n_out
    if clustering is None or layer.name not in clustering.layer_names:
        return np.full(n_in, -1), np.full(n_out, -1)
    rows, cols = clustering.labels(layer.name)
    if view == "fine" and len(rows) != n_in:
        rows = layer.expand_input_labels(torch.as_tensor(rows)).numpy()
    return np.asarray(rows), np.asarray(cols)


def _model_graph(graph: Any, clustering, view: str, min_abs_weight: float, network, progress: bool,
                 source: str) -> "nx.MultiDiGraph":
    import networkx as nx

    if view != "grouped":
        raise ValueError("a model graph is exported in the 'grouped' view (one node per channel)")
    labels = _node_labels(graph, network)
    (c_in, clash_in), (c_out, clash_out) = _side_labels(graph, clustering, "in"), _side_labels(graph, clustering, "out")
    # dag: the layers form a DAG over shared node sets; the node graph itself has cycles where a residual stream is
    # read and written by each block (acyclic, set below)
    G = nx.MultiDiGraph(chained=False, view=view, dag=True, multigraph=True, cluster_source=source,
                        nodes_with_clashing_layer_labels=int((clash_in | clash_out).sum()))
    for i, name in enumerate(graph.node_names):
        space, _, idx = name.rpartition(":")
        G.add_node(name, layer=space, level=space, space=space, index=int(idx), cluster=int(labels[i]),
                   cluster_in=int(c_in[i]), cluster_out=int(c_out[i]))
    names = np.asarray(graph.node_names, dtype=object)
    dropped = 0
    for layer in _bar(graph.layers, len(graph.layers), progress):
        w = layer.signed().detach().cpu().double().numpy()  # numpy has no bfloat16
        ii, jj = np.nonzero(np.abs(w) > min_abs_weight)
        dropped += int(np.count_nonzero(w)) - len(ii)
        if clustering is not None and layer.name in clustering.layer_names:
            rows, cols = (np.asarray(a) for a in clustering.labels(layer.name))
            within = (rows[ii] >= 0) & (rows[ii] == cols[jj])
        else:
            within = np.zeros(len(ii), dtype=bool)
        u, v = graph.src_nodes(layer.name)[ii], graph.dst_nodes(layer.name)[jj]
        same = (labels[u] >= 0) & (labels[u] == labels[v])
        G.add_edges_from((a, b, layer.name, _edge(val, layer.name, wi, sa))
                         for a, b, val, wi, sa in zip(names[u].tolist(), names[v].tolist(), w[ii, jj].tolist(),
                                                      within.tolist(), same.tolist()))
    G.graph["multi_edge_pairs"] = sum(1 for nbrs in G.adj.values() for keys in nbrs.values() if len(keys) > 1)
    G.graph.update(min_abs_weight=float(min_abs_weight), edges_below_min_abs_weight=dropped,
                   acyclic=bool(nx.is_directed_acyclic_graph(G)))
    return G


def _node_labels(graph: Any, clustering) -> np.ndarray:
    labels = np.full(graph.n_nodes, -1, dtype=np.int64)
    node_labels = getattr(clustering, "meta", {}).get("node_labels") if clustering is not None else None
    if node_labels is not None and len(node_labels) == graph.n_nodes:
        labels[:] = np.asarray(node_labels)
    elif clustering is not None:  # network-wide labels given per layer: read them off the layers' ends
        for name in clustering.layer_names:
            rows, cols = (np.asarray(a) for a in clustering.labels(name))
            for nodes, lab in ((graph.src_nodes(name), rows), (graph.dst_nodes(name), cols)):
                nodes = np.asarray(nodes)
                if len(nodes) == len(lab):
                    labels[nodes] = np.where(lab >= 0, lab, labels[nodes])
    return labels


def _side_labels(graph: Any, clustering, side: str) -> Tuple[np.ndarray, np.ndarray]:
    """Per node: its label as an input (``side="in"``) or output of the clustered layers, -1 if none or if they
    disagree; and the mask of the nodes where they disagree (a residual stream or a branch read by several layers)."""
    labels = np.full(graph.n_nodes, -1, dtype=np.int64)
    if clustering is None:
        return labels, np.zeros(graph.n_nodes, dtype=bool)
    seen = np.zeros(graph.n_nodes, dtype=bool)
    clash = np.zeros(graph.n_nodes, dtype=bool)
    for name in clustering.layer_names:
        rows, cols = (np.asarray(a) for a in clustering.labels(name))
        nodes, lab = (np.asarray(graph.src_nodes(name)), rows) if side == "in" else (np.asarray(graph.dst_nodes(name)), cols)
        if len(nodes) != len(lab):
            continue
        keep = lab >= 0
        nodes, lab = nodes[keep], lab[keep]
        clash[nodes] |= seen[nodes] & (labels[nodes] != lab)
        labels[nodes], seen[nodes] = lab, True
    labels[clash] = -1
    return labels, clash
