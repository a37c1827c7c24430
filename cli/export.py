"""``graphinterp export``: the clustered layered graph as GraphML."""
from __future__ import annotations

import click

from graphinterp import (
    cluster_layers,
    cluster_network,
    clusterable_layers,
    ClusteringError,
    export_graphml,
    graph_structure,
    nothing_clusterable_error,
    require_clusterable,
    resolve_device,
    stored_clustering,
)
from graphinterp.cli._common import (
    setting_usage_errors,
    FiniteFloat, check_layers, check_output_path, device_option, emit_json, json_option, layers_option,
    parse_layers, quiet_option, seed_option,
)
from graphinterp.cli._options import NamedPath, refuse_given
from graphinterp.cli._source_options import (
    coverage_lines, layerwise_option, model_argument, model_source_options, note_lines,
)

__all__ = ["command", "EXPORT_SUFFIXES", "NETWORK_MAX_NODES", "LARGE_EDGES"]

#: What export writes, by the suffix of OUT: GraphML only.
EXPORT_SUFFIXES = (".graphml",)

#: Past this many edges export says, before writing, how large the file will be and how to make it smaller.
LARGE_EDGES = 1_000_000

#: Network-wide clustering eigendecomposes a dense matrix over all nodes of a run of layers;
#: past this many nodes the default export keeps per-layer labels only (and says so).
NETWORK_MAX_NODES = 12000


@click.command("export")
@model_argument
@click.argument("out", type=NamedPath(dir_okay=False))
@click.option("--k", type=click.IntRange(min=2), default=4, show_default=True, help="Number of clusters.")
@layers_option
@seed_option
@click.option("--network-wide", is_flag=True,
              help="Only network-wide labels: cluster_in and cluster_out equal cluster (no per-layer BSGC).")
@click.option("--per-layer", is_flag=True,
              help="Only per-layer BSGC labels (cheaper for very large models); cluster is then -1 on hidden "
                   "levels between two clustered layers, whose two labels are unrelated, and on every node of "
                   "a DAG (cluster_source none).")
@click.option("--stored", "use_stored", is_flag=True,
              help="Use the clustering stored in a graphinterp checkpoint instead of clustering again.")
@click.option("--view", type=click.Choice(["grouped", "fine"]), default="grouped", show_default=True,
              help="grouped: one node per conv channel also after a Flatten; fine: one node per input feature of "
                   "a Linear after a Flatten (refused where that breaks a chained graph: use --layerwise; the same "
                   "graph as grouped where no layer reads a flattened conv output).")
@click.option("--min-weight", type=FiniteFloat(0), default=0.0, show_default=True,
              help="Drop edges with |weight| at or below this value (keeps large graphs small).")
@layerwise_option
@model_source_options
@device_option
@quiet_option
@json_option
def command(model, out, k, layers, seed, network_wide, per_layer, use_stored, view, min_weight, layerwise, source,
            device, quiet, as_json):
    """Export MODEL as a clustered layered graph to OUT (GraphML: a name ending in .graphml).

    MODEL is given as to `analyze`: a graphinterp checkpoint, a bare state_dict, a TorchScript
    file, a .safetensors file, a HuggingFace model folder, a torchvision architecture name (random
    weights, or --weights FILE), or (with --trust-pickle) a pickled nn.Module. The output starts
    with the graph's coverage, as in `analyze`. --device is where the per-layer BSGC runs; the
    network-wide labels are computed on the CPU.

    Nodes are neurons or channels with attributes layer, level, index and three labels:
    cluster, one network-wide label per node that means the same on every level (color by it);
    cluster_in and cluster_out, the node's per-layer BSGC labels as an input of the next layer
    and as an output of its own layer (the clusterings `analyze` scores, renumbered to agree
    with cluster). Edges carry weight (signed), abs_weight, sign, layer, within (both ends in one
    cluster of that layer's clustering) and same_cluster (both ends with the same cluster).
    Open it in Gephi or Cytoscape, or with networkx.read_graphml. Every weight is one edge: where
    two layers connect the same pair of nodes (a SwiGLU MLP's gate and up projections, in a model
    with a residual stream) the file holds two parallel edges, one per layer (a multigraph: every DAG's
    file has graph attribute multigraph=true; networkx.read_graphml returns a MultiDiGraph only where
    two edges join one pair of nodes, graphinterp.read_graphml always). Graph attributes cluster_source and cluster_in_out_source say where
    cluster and cluster_in / cluster_out come from (network, per-layer or none). In a model with
    shared nodes (graph attribute dag=true: residual streams, branches, attention) a node read or
    written by several clustered layers has one cluster_in / cluster_out, -1 where those layers'
    labels differ (counted in nodes_with_clashing_layer_labels): score such a graph by the edges'
    within. Its node graph can have cycles (a stream read and written by every block:
    acyclic=false), and a node's level there is the name of its node set (a layer's outputs, a
    stream), not a depth.

    Progress bars (building, writing) go to stderr; --quiet or --json hides them. A graph of more
    than a million edges gets a note with the file's expected size before it is written
    (--min-weight drops small edges).

    \b
    Example:
      graphinterp export model.pt clustered.graphml --k 4

    With --stored the checkpoint's own clustering is exported as it is: a network-wide one as cluster,
    a per-layer one as cluster_in / cluster_out (and cluster where the layers agree), never a new one.
    """
    if network_wide and per_layer:
        raise click.UsageError("--network-wide and --per-layer exclude each other")
    if use_stored:
        refuse_given(click.get_current_context(), ["k", "layers", "network_wide", "per_layer"], "with --stored (the "
                     "stored clustering is exported as it is, with its own k, layers and kind)", "drop --stored")
    # an output that is an input is the graver mistake: said first, then the format
    check_output_path(out, inputs=(model, *source.inputs), param_hint="OUT")
    check_output_path(out, suffixes=EXPORT_SUFFIXES, param_hint="OUT")
    device = resolve_device(device)
    loaded, graph = source.load(model, layerwise=layerwise, random_state=seed)
    names = check_layers(graph, parse_layers(layers))
    if view == "fine" and graph.chained and any(layer.in_groups for layer in graph.layers[1:]):
        raise click.BadParameter("the fine view breaks the chain at a Flatten; use --view grouped or --layerwise",
                                 param_hint="--view")
    shared = graph.chained or graph_structure(graph) == "dag"  # one node set: network-wide labels exist
    if network_wide and not shared:
        raise click.UsageError("--network-wide needs a chained or DAG graph, not a layer-by-layer one; drop --layerwise")
    clustering = network = None
    note = ""
    notes = list(loaded.notes)  # what opening the model found, then what clustering it left out
    if use_stored:
        clustering = stored_clustering(loaded.clustering, graph)
        if clustering is None:
            raise click.UsageError(f"{model} holds no stored clustering; drop --stored to cluster with --k")
        if clustering.network_wide:
            network = clustering  # else cluster is the stored per-layer labels: no fresh network-wide clustering
    else:
        own = stored_clustering(loaded.clustering, graph) if loaded.clustering is not None else None
        if own is not None:  # the modules it was trained into: a fresh network-wide clustering need not keep them
            notes.append(f"{model} stores the clustering it was trained with (k={own.k} over "
                         f"{', '.join(own.layer_names)}); --stored exports those labels instead of clustering again")
        if names:
            with setting_usage_errors():
                require_clusterable(graph, k, names)  # the layers asked for must all be clusterable at k
            chosen = names
        else:
            chosen, left_out = clusterable_layers(graph, k)
            if not chosen:
                with setting_usage_errors():
                    raise nothing_clusterable_error(k, left_out)  # "Invalid value for --k: ...; use a smaller k", as analyze
            notes.extend(f"not clustered: {n}: {why}" for n, why in left_out.items())
        if not network_wide:
            clustering = cluster_layers(graph, k, layers=chosen, random_state=seed, device=device)
        if shared and not per_layer:
            if network_wide:
                network = cluster_network(graph, k, layers=chosen, random_state=seed)
            else:
                network, note = _network(graph, k, chosen or graph.layer_names, seed)
    G = export_graphml(graph, out, clustering, network=network, view=view, min_abs_weight=min_weight,
                       progress=not (quiet or as_json),
                       before_write=lambda G, size: _before_write(G, size, notes if as_json else None, source, graph))
    labelled = network if network is not None else clustering
    if min_weight > 0 and G.number_of_edges() == 0:
        largest = max((float(layer.weight.abs().max()) for layer in graph.layers if layer.weight.numel()), default=0.0)
        notes.append(f"--min-weight {min_weight:g} dropped every edge (the largest |weight| is {largest:.4g}): the file "
                     "holds the nodes only")
    dropped = int(G.graph.get("edges_below_min_abs_weight", 0))
    if dropped and G.number_of_edges():
        notes.append(f"--min-weight {min_weight:g} left {dropped:,} smaller edge(s) out of the file; E, E_random and the "
                     "score (here and in the file's attributes) are over all the model's weights, so E recomputed from "
                     "the file's edges differs")
    clashing = int(G.graph.get("nodes_with_clashing_layer_labels", 0))
    if clashing:
        notes.append(f"{clashing} node(s) are read or written by several clustered layers whose labels for them "
                     "differ (a residual stream, a branch): their cluster_in / cluster_out is -1, so node labels do not "
                     "reproduce the per-layer E; each edge's within does")
    E, E_random, score = (G.graph[key] for key in ("E", "E_random", "score"))  # of the labels `cluster` follows
    if network is not None and labelled is network:
        banded = _banded_layers(network)
        if 2 * len(banded) > len(network.layer_names):
            where = ("export without --stored (with --k) for each layer's own BSGC labels in cluster_in / cluster_out"
                     if use_stored else
                     "export without --network-wide for each layer's own BSGC labels in cluster_in / cluster_out"
                     if network_wide else
                     "cluster_in / cluster_out hold each layer's own BSGC labels (--per-layer exports those alone)")
            notes.append(f"the network-wide labels put every input of {len(banded)} of {len(network.layer_names)} "
                         "layers in one cluster and every output in one: inside those layers they separate nothing "
                         f"(normalised score {score:.3f}; a random-weight ResNet-18's follow its stages); {where}")
    summary = {"out": str(out), "nodes": G.number_of_nodes(), "edges": G.number_of_edges(), "k": labelled.k,
               "clustered_layers": labelled.layer_names, "cluster": G.graph["cluster_source"],
               "cluster_in_out": G.graph.get("cluster_in_out_source"),
               "multi_edge_pairs": int(G.graph.get("multi_edge_pairs", 0)), "acyclic": G.graph.get("acyclic"),
               "nodes_with_clashing_layer_labels": clashing,
               "E_network": G.graph.get("E_network"), "E": E, "E_random": E_random, "score": score,
               "E_per_layer": G.graph.get("E_per_layer"), "E_per_layer_random": G.graph.get("E_per_layer_random"),
               "device": str(device),
               "coverage": graph.coverage.to_dict() if graph.coverage is not None else None,
               "notes": notes + ([note] if note else [])}
    if as_json:
        emit_json(summary)
    else:
        for line in coverage_lines(graph) + note_lines(loaded) + [f"note: {n}" for n in notes[len(loaded.notes):]]:
            click.echo(line)
        if note:
            click.echo(f"warning: {note}")
        words = {"network": "network-wide", "per-layer": "per-layer", "none": "none"}
        source = words[summary["cluster"]]
        sides = words[G.graph.get("cluster_in_out_source", "none")]
        parallel = (f" ({G.graph['multi_edge_pairs']} pairs of nodes joined by several layers: one edge per layer, "
                    "a multigraph)" if G.graph.get("multi_edge_pairs") else "")
        click.echo(f"wrote {out}: {summary['nodes']} nodes, {summary['edges']} edges{parallel}, k={labelled.k}, "
                   f"clustered layers {', '.join(labelled.layer_names)}; cluster labels {source}, "
                   f"cluster_in / cluster_out {sides}")
        scored = words["network" if network is not None else "per-layer"]  # the labels E is of (labelled's)
        click.echo(f"E = {E:.4f} ({scored} labels) against {E_random:.4f} for a random partition with "
                   f"the same cluster sizes: normalised score {score:.3f} (0: chance, 1: no weight between "
                   "clusters; `graphinterp benchmark MODEL --shuffles N` adds a shuffle null)")
        if summary["E_per_layer"] is not None:
            click.echo(f"E = {summary['E_per_layer']:.4f} (per-layer labels: cluster_in / cluster_out and the edges' "
                       f"within, as `analyze` scores them) against {summary['E_per_layer_random']:.4f} for a random "
                       "partition")



def _banded_layers(clustering) -> list:
    """Layers with labelled inputs all in one cluster and labelled outputs all in one: labels that separate
    nothing inside the layer (a random-weight ResNet-18's network-wide labels are such bands, stage by stage)."""
    banded = []
    for name in clustering.layer_names:
        rows, cols = clustering.labels(name)
        rows, cols = rows[rows >= 0], cols[cols >= 0]
        if len(set(rows.tolist())) == 1 and len(set(cols.tolist())) == 1:  # labelled, one cluster a side
            banded.append(name)
    return banded


def _before_write(G, size, notes, source, graph) -> None:
    """Mark what the file's weights are (graph attributes: rescaled or not; normalisation folded or raw, and which
    folds), then the note on a large file."""
    G.graph["weight_rescaling"] = "unit-norm (Filan et al.)" if source.unit_norm else "none"
    folds = graph.coverage.folded if graph.coverage is not None else []
    # whether the weights differ from the parameters by a fold: not under --no-fold, nor with nothing to fold
    G.graph["weights_folded"] = bool(source.fold and folds)
    G.graph["folding"] = "on" if source.fold else "off (--no-fold)"
    G.graph["folds"] = "; ".join(folds) if folds else "none"
    _large_note(G, size, notes)


def _large_note(G, size: int, notes=None) -> None:
    """Before a large graph is written: its expected size and how to write a smaller one (on stderr at once;
    also appended to ``notes``, the JSON summary's, when given)."""
    edges = G.number_of_edges()
    if edges > LARGE_EDGES:
        line = (f"writing {edges:,} edges, about {size / 1e6:,.0f} MB of GraphML; --min-weight W drops edges "
                "with |weight| <= W")
        click.echo(f"note: {line}", err=True)
        if notes is not None:
            notes.append(line)


def _network(graph, k: int, names, seed: int):
    """Network-wide clustering of ``names`` unless it would be too large; ``(clustering or None, note)``."""
    if not graph.chained:  # a DAG: clustered matrix-free over its shared nodes, whatever their number
        try:
            return cluster_network(graph, k, layers=list(names), random_state=seed), ""
        except ClusteringError as err:
            return None, f"no network-wide labels ({err}); cluster is -1 on nodes, per-layer labels on edges (within)"
    idx = sorted(graph.index(n) for n in names)
    runs, size = [], 0
    for i in idx:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    for run in runs:
        size = max(size, graph.layers[run[0]].n_in() + sum(graph.layers[i].n_out for i in run))
    if size > NETWORK_MAX_NODES:
        return None, (f"{size} nodes are too many for network-wide labels (at most {NETWORK_MAX_NODES}); "
                      "cluster is per layer, -1 on hidden levels between clustered layers: pass --layers to "
                      "export fewer layers")
    try:
        return cluster_network(graph, k, layers=list(names), random_state=seed), ""
    except ClusteringError as err:
        return None, f"no network-wide labels ({err}); cluster is per layer, -1 on hidden levels between clustered layers"
