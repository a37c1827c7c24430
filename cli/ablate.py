"""``graphinterp ablate``: class-wise accuracy with each cluster ON and OFF, or with chosen neurons ablated."""
from __future__ import annotations

from typing import Dict, List, Sequence

import click
import numpy as np

from graphinterp.cli._common import (
    NamedPath,
    setting_usage_errors,
    FIGURE_SUFFIXES, MAX_RANGE_VALUES, POSITIVE_INT, check_layers, check_output_path, device_option, emit_json,
    format_table, json_option, parse_int_ranges, parse_layers, plain_text, quiet_option, seed_option,
    trust_pickle_option,
)
from graphinterp.cli._eval_data import (
    coverage_json, data_options, limit_rows, note_missing, open_for_eval, require_chain,
    read_checkpoint, transformer_checkpoint,
)
from graphinterp.cli._ablate_text import echo_coverage, echo_notes, note_chance, onoff_table
from graphinterp.cli._transformer_circuits import check_task_options

__all__ = ["command", "parse_neurons"]


def parse_neurons(values: Sequence[str], *, max_values: int = MAX_RANGE_VALUES) -> Dict[str, List[int]]:
    """``["fc1:1,2,5-7", "fc2:0"]`` -> ``{"fc1": [1, 2, 5, 6, 7], "fc2": [0]}``.

    Indices are >= 0; at most ``max_values`` of them in all (a huge range is refused before it is
    expanded); :class:`click.BadParameter` otherwise. A neuron named twice (``fc1:0-3`` and ``fc1:2-5``)
    is one neuron: each level's indices are a set, sorted.

    Examples
    --------
    >>> parse_neurons(["fc1:1,3-4", "input:0"])
    {'fc1': [1, 3, 4], 'input': [0]}
    >>> parse_neurons(["fc1:0-3", "fc1:2-5", "fc2:1,1"])
    {'fc1': [0, 1, 2, 3, 4, 5], 'fc2': [1]}
    """
    out: Dict[str, List[int]] = {}
    left = max_values
    for text in values:
        level, sep, rest = text.partition(":")
        if not sep or not level.strip():
            raise click.BadParameter(f"{text!r}: use LEVEL:INDICES such as fc1:1,2,3 or fc1:0-7", param_hint="--neurons")
        idx = parse_int_ranges(rest, param_hint="--neurons", example="fc1:1,2,3 or fc1:0-7", max_values=left)
        left -= len(idx)
        out.setdefault(level.strip(), []).extend(idx)
    return {level: sorted(set(idx)) for level, idx in out.items()}


@click.command("ablate")
@click.argument("model", type=NamedPath(dir_okay=False))
@data_options
@click.option("--k", type=click.IntRange(min=2), default=None,
              help="Cluster now with k clusters (network-wide BSGC on --layers, default the hidden Linear layers) "
                   "instead of using the clustering stored in the checkpoint.")
@click.option("--layers", default=None, metavar="NAMES",
              help="With --k: comma-separated layers to cluster (default: every Linear layer between two hidden levels, "
                   "fc2 for the paper's MLP).")
@click.option("--mode", type=click.Choice(["zero", "mean"]), default="zero", show_default=True,
              help="Replace ablated activations with 0, or with their mean over the evaluation data.")
@click.option("--neurons", multiple=True, metavar="LEVEL:IDX",
              help="Ablate these neurons instead of clusters, e.g. fc1:1,2,3 or fc1:0-7 (repeatable). LEVEL is "
                   "'input' or a layer name, meaning that layer's outputs.")
@click.option("--batch-size", type=POSITIVE_INT, default=1024, show_default=True, help="Evaluation batch size.")
@click.option("--plot", "plot_path", type=NamedPath(dir_okay=False), default=None,
              help="Save the ON/OFF heatmaps (PNG/SVG/PDF by suffix).")
@click.option("--corpus", type=NamedPath(dir_okay=False), default=None,
              help="Transformer trained on chars: the text to evaluate on, any written with its characters (default: its training text).")
@seed_option
@device_option
@trust_pickle_option
@quiet_option
@json_option
def command(model, dataset, split, data_dir, limit, inputs, k, layers, mode, neurons, batch_size, plot_path, corpus, seed,
            device, trust_pickle, quiet, as_json):
    """Class-wise accuracy of MODEL with each cluster switched ON and OFF (the paper's Figure 2).

    ON keeps only one cluster: every other neuron of the clustered layers' hidden levels is
    ablated; OFF ablates that cluster's neurons. Activations are replaced where the next layer
    reads them (after bias, BatchNorm and ReLU), with 0 or, with --mode mean, their mean. The
    clustering stored in a modular checkpoint is used unless --k asks to cluster now; --k clusters
    the layers network-wide (one partition of all their units), so its clusters are not the
    per-layer ones of `analyze` and `plot layer`, and --json lists each unit's cluster (labels).

    MODEL must be a model graphinterp can run: a checkpoint holding its architecture (written by
    `graphinterp train`, or by graphinterp.save_checkpoint(path, model, arch=...)), or with
    --trust-pickle a pickled nn.Module. A bare state_dict or a TorchScript file is refused here
    (`analyze` and `plot layer` read those as graphs).

    \b
    Examples:
      graphinterp ablate modular.pt --dataset mnist --data-dir ~/data
      graphinterp ablate baseline.pt --dataset mnist --k 4 --plot ablation.png
      graphinterp ablate modular.pt --dataset mnist --neurons fc1:0-15 --mode mean
      graphinterp ablate modadd.pt --plot onoff.png

    A transformer checkpoint (`graphinterp train --model transformer`) is evaluated on its own task
    (modadd: the test pairs, per answer; chars: every non-overlapping window of the validation text, each
    predicting all its positions, per target character; --limit N keeps N windows), with the
    clusters of its MLP blocks ON / OFF (hidden units zeroed); --k K clusters every MLP block now.
    --dataset, --data-dir and --inputs do not apply to it, and --corpus applies to character LMs only (each is
    refused where it does not apply).

    The table has a column per class up to 20 classes; with more (modadd's 113 answers) each row gives its
    minimum, median and maximum over the classes and the four classes that stand out: the full model's least
    accurate, each ON cluster's most accurate, each OFF's largest drops from the full model (ties counted);
    every class's accuracy is in --json and in the heatmaps of --plot.
    """
    from graphinterp import ablate, ablation_matrix, class_accuracy
    from graphinterp import cluster_network, stored_clustering
    from graphinterp import ClusteringError

    if neurons and (plot_path or k):
        raise click.UsageError("--neurons ablates the given neurons; it cannot be combined with --k or --plot")
    if layers is not None and k is None:
        raise click.UsageError("--layers chooses the layers to cluster with --k; pass --k too")
    spec = parse_neurons(neurons) if neurons else None
    if plot_path:
        check_output_path(plot_path, inputs=(model,), suffixes=FIGURE_SUFFIXES, param_hint="--plot")
    stored = read_checkpoint(model)
    ckpt = transformer_checkpoint(stored)
    check_task_options(model, ckpt, corpus, click.get_current_context())
    if ckpt is not None:
        if neurons or mode != "zero" or layers is not None:
            raise click.UsageError("a transformer checkpoint is ablated by MLP-block clusters with zero ablation; "
                                   "--neurons, --mode mean and --layers do not apply")
        _ablate_transformer(model, ckpt, k, corpus, split, limit, seed, batch_size, device, plot_path, as_json)
        return
    notes: List[str] = []
    data, loaded, net, graph = open_for_eval(model, stored, dataset, split, data_dir, limit, seed, inputs, trust_pickle,
                                             notes)
    require_chain(graph, model, "ablate")
    names = check_layers(graph, parse_layers(layers))
    if spec is not None:
        full = class_accuracy(net, data, batch_size=batch_size, device=device)
        with ablate(net, graph, spec, mode=mode, reference=data, batch_size=batch_size):
            ablated = class_accuracy(net, data, batch_size=batch_size, device=device)
        _report_neurons(model, data, split, mode, spec, full, ablated, as_json, notes, graph.coverage)
        return
    if k is not None:
        from graphinterp import default_cluster_layers

        with setting_usage_errors():
            clustering = cluster_network(graph, k, layers=names or default_cluster_layers(graph),
                                         random_state=seed)
        source = f"clustered now (k={k}, network-wide BSGC)"
        notes.append(f"clusters from network-wide BSGC over {', '.join(clustering.layer_names)}: one partition of "
                     "all their units, not the per-layer clusters `analyze` and `plot layer` draw (another c0, c1, "
                     "...); --json lists each unit's cluster (labels)")
    elif loaded.clustering:
        clustering = stored_clustering(loaded.clustering, graph)
        source = "stored in the checkpoint"
    else:
        raise ClusteringError(f"{model} holds no clustering; pass --k K to cluster it now, or use a modular checkpoint "
                              "written by `graphinterp train`")
    result = ablation_matrix(net, graph, clustering, data, mode=mode, batch_size=batch_size, device=device,
                             progress=not (quiet or as_json))
    note_chance(result.overall()["full"], data.y, notes)
    note_missing([c for i, c in enumerate(data.classes) if i not in result.class_ids],
                  f"the {len(data):,} examples", notes)
    if plot_path:
        from graphinterp import plot_ablation

        plot_ablation(result.on, result.off, full=result.full, class_names=[plain_text(c) for c in result.classes],
                      title=f"{plain_text(model)}: class-wise accuracy, clusters ON / OFF ({mode} ablation)",
                      out=plot_path)
    if as_json:
        emit_json({"model": str(model), "dataset": data.name, "split": split, "n_examples": len(data),
                   "k": clustering.k, "clustered_layers": clustering.layer_names, "clustering": source,
                   "labels": clustering.to_dict(), "coverage": coverage_json(graph.coverage), "notes": notes,
                   **result.to_dict()})
        return
    echo_coverage(graph.coverage)
    echo_notes(notes)
    overall = result.overall()
    click.echo(f"{model}: k={clustering.k} clusters {source}; layers {', '.join(clustering.layer_names)}; "
               f"ablated levels {', '.join(result.levels)}; {mode} ablation; {len(data)} {data.name} {split} examples")
    rows = [["full", overall["full"], *result.full]]
    rows += [[f"ON {c}", overall["on"][c], *result.on[c]] for c in range(clustering.k)]
    rows += [[f"OFF {c}", overall["off"][c], *result.off[c]] for c in range(clustering.k)]
    click.echo(onoff_table(rows, [str(c) for c in result.classes]))
    if plot_path:
        click.echo(f"wrote {plot_path}")


def _report_neurons(model, data, split, mode, spec, full, ablated, as_json, notes, coverage=None) -> None:
    present = np.flatnonzero(np.isfinite(full))
    names = [data.classes[i] for i in present]
    note_missing([c for i, c in enumerate(data.classes) if i not in present],
                  f"the {len(data):,} examples", notes)
    counts = np.bincount(data.y.numpy(), minlength=len(full))[present]
    w = counts / counts.sum()
    note_chance(float(full[present] @ w), data.y, notes, "the accuracies with these neurons ablated")
    if as_json:
        emit_json({"model": str(model), "dataset": data.name, "split": split, "n_examples": len(data), "mode": mode,
                   "neurons": spec, "classes": names, "class_ids": present.tolist(), "counts": counts.tolist(),
                   "full": full[present].tolist(),
                   "ablated": ablated[present].tolist(),
                   "overall": {"full": float(full[present] @ w), "ablated": float(ablated[present] @ w)},
                   "coverage": coverage_json(coverage), "notes": notes})
        return
    echo_coverage(coverage)
    echo_notes(notes)
    click.echo(f"{model}: {mode}-ablating " + "; ".join(f"{k}: {len(v)} neuron(s)" for k, v in spec.items()))
    rows = [["full", float(full[present] @ w), *map(float, full[present])],
            ["ablated", float(ablated[present] @ w), *map(float, ablated[present])]]
    click.echo(format_table(rows, ["", "all", *names]))


def _ablate_transformer(path, ckpt, k, corpus, split, limit, seed, batch_size, device, plot_path, as_json) -> None:
    from graphinterp import validate_checkpoint
    from graphinterp import ClusteringError, stored_clustering
    from graphinterp import cluster_mlp_blocks
    from graphinterp import trace_graph
    from graphinterp import checkpoint_task_data
    from graphinterp import onoff_matrix, specialisation
    from graphinterp.cli._transformer_circuits import class_name, task_config, transformer_net

    config = task_config(path, ckpt, corpus)
    ckpt = validate_checkpoint(ckpt, path=path)
    net = transformer_net(path)
    data = checkpoint_task_data(ckpt, config, path)
    notes: List[str] = []
    if config.task == "modadd":
        part = data["train" if split == "train" else "test"]
        x, y = limit_rows(part.x, part.y, limit, seed, f"{split} pairs", notes)
        what = f"{len(x)} {split} pairs"
    else:  # every non-overlapping window of the split's text, each predicting all of its positions
        text = "train" if split == "train" else "val"
        x, y = data["corpus"].windows(config.n_ctx, text)
        x, y = limit_rows(x, y, limit, seed, f"windows of {config.n_ctx} characters in the {text} text", notes)
        what = f"{len(x)} windows of the {text} text ({y.numel():,} next-character predictions)"
    graph = trace_graph(net, example=x[:2])  # its coverage leads the report; --k clusters its MLP blocks
    if k is not None:
        clustering = cluster_mlp_blocks(graph, k, random_state=seed)
        source = f"clustered now (k={k}, BSGC per MLP block)"
    elif ckpt["clustering"]:
        clustering = stored_clustering(ckpt["clustering"], graph)  # checked against the model, as analyze does
        source = "stored in the checkpoint"
    else:
        raise ClusteringError(f"{path} holds no clustering; pass --k K to cluster its MLP blocks now")
    classes = data["classes"]
    result = onoff_matrix(net, clustering, x, y, classes, batch_size=batch_size, device=device)
    note_chance(result.overall()["full"], y, notes)
    names = [class_name(c) for c in classes]  # the terminal shows the text itself; only figure text is escaped
    live = np.isfinite(result.full)  # classes with examples
    note_missing([n for n, ok in zip(names, live) if not ok], f"the {len(x):,} windows" if config.task == "chars"
                  else f"the {len(x):,} pairs", notes)
    if plot_path:
        from graphinterp import plot_ablation

        plot_ablation(result.on[:, live], result.off[:, live], full=result.full[live],
                      class_names=[plain_text(n) for n, ok in zip(names, live) if ok],
                      title=f"{plain_text(path)}: accuracy per class, MLP clusters ON / OFF", out=plot_path)
    if as_json:
        emit_json({"model": str(path), "task": config.task, "split": split, "n_examples": len(x),
                   "n_predictions": int(y.numel()), "k": clustering.k, "clustered_layers": clustering.layer_names,
                   "clustering": source, "labels": clustering.to_dict(), "coverage": coverage_json(graph.coverage),
                   "notes": notes,
                   **result.to_dict()})
        return
    echo_coverage(graph.coverage, details=True)  # the clusters are the MLP blocks' units (named below)
    echo_notes(notes)
    overall, spec = result.overall(), specialisation(result)
    click.echo(f"{path}: transformer ({config.task}), k={clustering.k} clusters {source}; MLP layers "
               f"{', '.join(clustering.layer_names)}; {what}")
    rows = [["full", overall["full"], *result.full[live]]]
    rows += [[f"ON {c}", overall["on"][c], *result.on[c][live]] for c in range(clustering.k)]
    rows += [[f"OFF {c}", overall["off"][c], *result.off[c][live]] for c in range(clustering.k)]
    click.echo(onoff_table(rows, [n for n, ok in zip(names, live) if ok]))
    click.echo(f"specialisation: OFF-damage Gini {spec['off_gini']:.3f}, ON-accuracy Gini {spec['on_gini']:.3f} "
               "(0: every class alike; near 1: confined to few classes)")
    if plot_path:
        click.echo(f"wrote {plot_path}")
