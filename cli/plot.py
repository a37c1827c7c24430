"""``graphinterp plot``: figures of a model (``plot layer``: the clustered layer, Figure 7)."""
from __future__ import annotations

from typing import Optional

import click

from graphinterp import BSGC, check_k, ClusteringError, layer_seed, stored_clustering
from graphinterp.cli._common import (FIGURE_SUFFIXES, NamedPath, check_layers, check_output_path, check_title, setting_usage_errors,
                                     plain_text, seed_option)
from graphinterp.cli._source_options import (
    SourceOptions, coverage_lines, model_argument, model_source_options, note_lines,
)

__all__ = ["command"]


@click.group("plot")
def command() -> None:
    """Draw figures of a model.

    \b
    Subcommands:
      layer   one layer as a bipartite graph ordered by cluster, and/or its reordered matrix (Figure 7)
    """


@command.command("layer")
@model_argument
@click.option("--layer", "layer_name", required=True, metavar="NAME",
              help="Layer to draw, by name as printed by `graphinterp analyze` (e.g. fc2).")
@click.option("--out", "out_path", required=True, type=NamedPath(dir_okay=False),
              help="Output file; the format follows the suffix (.png, .svg or .pdf).")
@click.option("--k", type=click.IntRange(min=2), default=None,
              help="Number of clusters. Default: the checkpoint's stored clustering when it covers the layer, "
                   "else BSGC with k=4. A k different from the stored clustering's reclusters with BSGC.")
@click.option("--kind", type=click.Choice(["graph", "matrix", "both"]), default="graph", show_default=True,
              help="graph: nodes ordered by cluster, edges red (negative) / blue (positive) with alpha by |w|; "
                   "matrix: the weight matrix with rows and columns sorted by cluster; both: side by side.")
@click.option("--max-edges", type=click.IntRange(min=1), default=20000, show_default=True,
              help="Draw only this many largest-|w| edges (graph view).")
@click.option("--title", default=None, help="Figure title (default: layer names, shape and k).")
@seed_option
@model_source_options
def layer_command(model: str, layer_name: str, out_path: str, k: Optional[int], kind: str, max_edges: int,
                  title: Optional[str], seed: int, source: SourceOptions) -> None:
    """Draw one LAYER of MODEL with its neurons grouped by cluster (the paper's Figure 7).

    MODEL is given as to `analyze`: a graphinterp checkpoint, a bare state_dict, a TorchScript
    file, a .safetensors file, a HuggingFace model folder, a torchvision architecture name (random
    weights, or --weights FILE), or (with --trust-pickle) a pickled nn.Module; the layer's weights
    are those `analyze` clusters (normalisation folded unless --no-fold). Input nodes are on the
    left, output nodes on the right, clusters in the same order on both sides over shaded bands;
    edges are red for negative and blue for positive weights, more opaque the larger |w|. Conv2d
    layers are drawn per channel (edge = kernel norm, signed by the kernel's sum).

    \b
    Examples:
      graphinterp plot layer modular.pt --layer fc2 --out fc2.png
      graphinterp plot layer baseline.pt --layer fc2 --k 4 --kind matrix --out fc2_matrix.svg
      graphinterp plot layer resnet18 --weights resnet18.pth --layer layer1.0.conv1 --out conv.png
    """
    from graphinterp import plot_clustered_layer

    check_output_path(out_path, inputs=(model, *source.inputs), suffixes=FIGURE_SUFFIXES, param_hint="--out")
    check_title(title)
    loaded, graph = source.load(model, random_state=seed)
    check_layers(graph, [layer_name], param_hint="--layer")
    layer = graph[layer_name]
    labels, origin = None, ""
    clustering = stored_clustering(loaded.clustering, graph)
    if clustering is not None:
        if layer_name in clustering.layer_names and (k is None or k == clustering.k):
            labels, origin = clustering.labels(layer_name), f"stored clustering, k={clustering.k}"
    if labels is None:
        k = 4 if k is None else k
        with setting_usage_errors():  # a --k above the layer's nodes is a bad argument, as in analyze and export
            check_k(k, graph, [layer_name], leave_out=None)
        try:
            # seeded per layer as analyze, export and benchmark seed it: the same labels at the same --k and --seed
            est = BSGC(k, random_state=layer_seed(seed, graph.index(layer_name))).fit(layer.magnitude())
        except ClusteringError as err:
            raise ClusteringError(f"layer {layer_name!r}: {err}") from None
        labels, origin = (est.row_labels_, est.column_labels_), f"BSGC of this layer alone, k={k}"
    index = graph.index(layer_name)
    in_name = (graph.layer_names[index - 1] if index else "input") if graph.chained else f"{layer_name} in"
    weight = layer.signed().cpu().double().numpy()
    # a convolution's (or a flattened feature map's) edge is a channel pair's kernel norm, not one weight
    grouped = layer.is_conv or layer.in_index is not None
    if layer.is_conv:
        edges = "channel edges (kernel norms)"
    else:
        edges = "edges (norms of each channel's features)" if grouped else "weights"
    if source.unit_norm:  # the figure and the line below say the weights drawn are rescaled
        origin += ", weights unit-norm rescaled"
    if title is None and (source.unit_norm or grouped):
        title = (f"{plain_text(in_name)} \u2192 {plain_text(layer_name)}: {weight.shape[0]} \u00d7 {weight.shape[1]} "
                 f"{edges}{' rescaled to unit incoming norm (Filan et al.)' if source.unit_norm else ''}, "
                 f"{origin.split(', ')[1]}")  # "k=4"
    plot_clustered_layer(weight, labels[0], labels[1], in_name=plain_text(in_name), out_name=plain_text(layer_name),
                         kind=kind, max_edges=max_edges, title=title, out=out_path)
    for line in coverage_lines(graph) + note_lines(loaded):
        click.echo(line)
    if layer.block_diagonal_reason is not None:  # drawn as asked, but its clusters say nothing learned
        click.echo(f"note: {layer_name}: {layer.block_diagonal_reason}")
    click.echo(f"wrote {out_path} ({layer_name}: {weight.shape[0]}x{weight.shape[1]}"
               f"{' ' + edges if grouped else ''}, {origin})")
