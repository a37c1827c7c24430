"""``graphinterp export``: the clustered layered graph as GraphML."""
from __future__ import annotations

import click

from graphinterp.analysis import load_graph
from graphinterp.cli._common import emit_json, json_option, layers_option, parse_layers, seed_option, trust_pickle_option
from graphinterp.cluster import Clustering, cluster_layers, cluster_network
from graphinterp.io import export_graphml

__all__ = ["command"]


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--k", type=int, default=4, show_default=True, help="Number of clusters.")
@layers_option
@seed_option
@click.option("--network-wide", is_flag=True,
              help="One label per neuron shared by consecutive layers, instead of per-layer BSGC.")
@click.option("--stored", "use_stored", is_flag=True,
              help="Use the clustering stored in a graphinterp checkpoint instead of clustering again.")
@click.option("--view", type=click.Choice(["grouped", "fine"]), default="grouped", show_default=True,
              help="grouped: one node per conv channel also after a Flatten; fine: one node per feature "
                   "(single layers or --layerwise only).")
@click.option("--min-weight", type=float, default=0.0, show_default=True,
              help="Drop edges with |weight| at or below this value (keeps large graphs small).")
@click.option("--layerwise", is_flag=True, help="Every Linear/Conv2d as its own bipartite graph.")
@trust_pickle_option
@json_option
def command(model, out, k, layers, seed, network_wide, use_stored, view, min_weight, layerwise, trust_pickle, as_json):
    """Export MODEL as a clustered layered graph to OUT (GraphML).

    Nodes are neurons or channels with attributes layer, level, index, cluster, cluster_in,
    cluster_out; edges carry weight (signed), abs_weight, sign, layer and within (both ends in
    the same cluster). Open it in Gephi or Cytoscape, or with networkx.read_graphml.

    \b
    Example:
      graphinterp export model.pt clustered.graphml --k 4
    """
    loaded, graph = load_graph(model, trust_pickle=trust_pickle, layerwise=layerwise)
    names = parse_layers(layers)
    if use_stored:
        if not loaded.clustering:
            raise click.UsageError(f"{model} holds no stored clustering; drop --stored to cluster with --k")
        clustering = Clustering.from_dict(loaded.clustering).validate(graph)
    elif network_wide:
        clustering = cluster_network(graph, k, layers=names, random_state=seed)
    else:
        clustering = cluster_layers(graph, k, layers=names or _clusterable(graph, k), random_state=seed)
    G = export_graphml(graph, out, clustering, view=view, min_abs_weight=min_weight)
    summary = {"out": str(out), "nodes": G.number_of_nodes(), "edges": G.number_of_edges(),
               "k": clustering.k, "clustered_layers": clustering.layer_names}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {out}: {summary['nodes']} nodes, {summary['edges']} edges, k={clustering.k}, "
                   f"clustered layers {', '.join(clustering.layer_names)}")


def _clusterable(graph, k: int):
    """Layers with at least k non-isolated nodes on both sides (others keep label -1)."""
    keep = []
    for layer in graph:
        sq = layer.squared()
        if min(int((sq.sum(1) > 0).sum()), int((sq.sum(0) > 0).sum())) >= k:
            keep.append(layer.name)
    return keep or None
