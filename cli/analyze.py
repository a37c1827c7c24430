"""``graphinterp analyze``: clusterability per layer for one k or a range of k."""
from __future__ import annotations

import click

from graphinterp import analyze, clusterability_report, graph_structure, resolve_device, stored_clustering
from graphinterp.cli._common import (
    NamedPath,
    setting_usage_errors,
    FIGURE_SUFFIXES, check_layers, check_output_path, device_option, emit_json, format_table, json_option, layers_option,
    parse_k_values, parse_layers, quiet_option, seed_option,
)
from graphinterp.cli._source_options import (
    coverage_lines, layerwise_option, model_argument, model_source_options, note_lines,
)

__all__ = ["command"]


@click.command("analyze")
@model_argument
@click.option("--k", "k_text", default="4", show_default=True, metavar="K|A..B|A,B",
              help="Number of clusters: one value (4), a range (2..10) or a list (2,4,8).")
@layers_option
@seed_option
@click.option("--similarity", type=click.Choice(["weight"]), default="weight", show_default=True,
              help="What BSGC clusters: |W|. Gradient-based similarity needs training data: "
                   "use `graphinterp train --similarity gradient`.")
@click.option("--pairing", type=click.Choice(["joint", "matched", "independent"]), default="joint",
              show_default=True,
              help="How row and column clusters are paired: joint embedding (Dhillon), independent KMeans "
                   "+ optimal matching, or Algorithm 1 verbatim (independent, unpaired).")
@layerwise_option
@model_source_options
@click.option("--plot", "plot_path", type=NamedPath(dir_okay=False), default=None,
              help="Save a figure of E against k (PNG/SVG/PDF by suffix).")
@device_option
@quiet_option
@json_option
def command(model, k_text, layers, seed, similarity, pairing, layerwise, source, plot_path, device, quiet, as_json):
    """Cluster each layer of MODEL with BSGC and report its clusterability.

    MODEL is a graphinterp checkpoint, a bare state_dict (e.g. a third-party .pth), a TorchScript
    file, a .safetensors file, a HuggingFace model folder (config.json + weights; needs
    `pip install graphinterp[hf]`), a torchvision architecture name (random weights, or --weights
    FILE), or (with --trust-pickle) a pickled nn.Module. The report starts with the graph's
    coverage: the share of the model's weights it holds, modules not covered, what was folded. For
    every layer: its shape, the cluster sizes (inputs/outputs per cluster), clusterability E (share
    of squared weight inside
    clusters), the E expected of a random partition with the same sizes, and the normalised
    score (E - E_rand) / (1 - E_rand). Over a range of k the model-wide E is mass-weighted over the
    layers scored at every k (as in `benchmark`; a note names any layer left out), and each layer's own E
    is shown at every k it fits; with --layers it covers only the chosen layers, and says so. In
    --json the table's model-wide values are under mass_weighted; each results[i].E is over the
    layers scored at that k.

    --quiet hides only the progress bar over the layers being clustered (stderr); the report, its
    coverage lines, notes, skipped layers and errors are always printed.

    \b
    Examples:
      graphinterp analyze model.pt --k 4
      graphinterp analyze model.pt --k 2..10 --plot e_vs_k.png
      graphinterp analyze resnet18 --k 4
      graphinterp analyze vit_b_16 --weights vit.pth --json
      graphinterp analyze ./my-gpt2-folder --k 4
    """
    ks = parse_k_values(k_text, param_hint="--k")
    if plot_path:
        check_output_path(plot_path, inputs=(model, *source.inputs), suffixes=FIGURE_SUFFIXES, param_hint="--plot")
    loaded, graph = source.load(model, layerwise=layerwise, random_state=seed)
    names = check_layers(graph, parse_layers(layers))
    device = resolve_device(device)
    with setting_usage_errors():  # found before any clustering
        result = analyze(graph, ks, layers=names, pairing=pairing, random_state=seed,
                         progress=not (as_json or quiet), device=device)
    mw = result.mass_weighted()  # the model-wide E: over the layers scored at every k (as benchmark's)
    stored = None
    clustering = stored_clustering(loaded.clustering, graph)
    if clustering is not None:
        stored = clusterability_report(graph, clustering)
    if plot_path:
        from graphinterp import plot_clusterability_vs_k

        name = loaded.path.rsplit("/", 1)[-1] if loaded.path else "model"
        over = f" ({_over(result, names, len(graph))})" if _over(result, names, len(graph)) else ""
        plot_clusterability_vs_k({name: mw["E"]}, baselines={name: mw["E_random"]},
                                 title=f"Clusterability of {name}{over}", out=plot_path)
    if as_json:
        payload = {"model": str(model), "kind": loaded.kind, "layers": graph.layer_names, "chosen_layers": names,
                   "chained": graph.chained, "structure": graph_structure(graph),
                   "coverage": graph.coverage.to_dict() if graph.coverage is not None else None,
                   "notes": list(loaded.notes),
                   "device": str(device), **result.to_dict()}
        if stored is not None:
            payload["stored_clustering"] = stored.to_dict()
        emit_json(payload)
        return
    structure = {"chained": "", "dag": " (a DAG: residual streams and branches on shared nodes)",
                 "layerwise": " (layer by layer)"}[graph_structure(graph)]
    edges, weights = graph.num_params(), graph.num_params(unique=True)
    shared = (f" ({edges:,} edges: a tensor applied by several layers is counted once here, and once per application, "
              f"a layer of the graph each, in the mass-weighted E)" if edges != weights else "")
    click.echo(f"{model}: {loaded.kind}, {len(graph)} layers, {weights:,} weights{shared}{structure}")
    for line in coverage_lines(graph) + note_lines(loaded):
        click.echo(line)
    over = _over(result, names, len(graph))
    label = f"{over.split(' (')[0] if over else 'model'} (mass-weighted)"
    if len(result.ks) == 1 and len(ks) == 1:
        rep = result.reports[ks[0]]
        rows = [(s.layer, f"{s.shape[0]}x{s.shape[1]}", " ".join(f"{a}/{b}" for a, b in s.sizes),
                 s.E, s.E_random, s.score) for s in rep.layers]
        rows.append((label, "", "", rep.E, rep.E_random, rep.score))
        click.echo(format_table(rows, ["layer", "in x out", "cluster sizes in/out", "E", "E_random", "score"]))
    else:
        scored = result.scored_layers()  # every layer scored at some k gets its column ("-" where it does not fit)
        rows = []
        for k in result.ks:
            per = {s.layer: s.E for s in result.reports[k].layers}
            rows.append([k, mw["E"][k], mw["E_random"][k], mw["score"][k]] + [per.get(n, "-") for n in scored])
        click.echo(format_table(rows, ["k", "E", "E_random", "score"] + [f"E[{n}]" for n in scored]))
        if names is not None:
            click.echo(f"E, E_random and score: mass-weighted over the {over}, not the whole model")
    if mw["note"]:
        click.echo(f"note: {mw['note']}")
    below = [(s.layer, k) for k in result.ks for s in result.reports[k].layers if s.score < 0]
    if below:
        where = ", ".join(f"{n}" + (f" (k={k})" if len(result.ks) > 1 else "") for n, k in below[:5])
        click.echo(f"note: E below E_random (score < 0) for {where}{', ...' if len(below) > 5 else ''}: the "
                   "clustering found there is no better than a random partition of the same sizes; try another k "
                   "or --pairing")
    for k, reason in result.unfit_ks.items():
        click.echo(f"left out k={k}: {reason}")
    for name, reason in result.skipped.items():
        at = [k for k in result.ks if any(s.layer == name for s in result.reports[k].layers)]
        scored_at = f"; scored at k={','.join(map(str, at))} (column E[{name}])" if at else ""
        click.echo(f"skipped {name}: {reason}{scored_at}")
    if stored is not None:
        click.echo(f"stored clustering (k={stored.k}, from the checkpoint): E={stored.E:.4f} over "
                   f"{', '.join(s.layer for s in stored.layers)} (E_random={stored.E_random:.3f})")
        for note in stored.notes():
            click.echo(f"note: stored clustering: {note}")
    if plot_path:
        click.echo(f"wrote {plot_path}")


def _over(result, chosen, n_graph: int) -> str:
    """What the model-wide E covers when it is not the whole model: ``""``, ``"chosen layers (fc2)"`` or
    ``"5 of 6 layers (...)"`` (the layers scored at every k)."""
    common = result.common_layers()
    if chosen is not None:
        return f"chosen layers ({', '.join(common)})"
    if len(common) < n_graph:
        return f"{len(common)} of {n_graph} layers ({', '.join(common)}) scored at every k"
    return ""
