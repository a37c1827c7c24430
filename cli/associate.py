"""``graphinterp associate``: functional modules of each hidden level from association matrices (after Lange et
al.), against a null model, the weight clusters and, with --reinit, the same architecture re-initialised."""
from __future__ import annotations

import contextlib
import math
from typing import List, Optional

import click

from graphinterp.cli._common import (
    NamedPath,
    setting_usage_errors,
    FIGURE_SUFFIXES, POSITIVE_INT, check_layers, check_output_path, device_option, emit_json, format_table, json_option,
    parse_layers, plain_text, quiet_option, seed_option, trust_pickle_option,
)
from graphinterp.cli._eval_data import (
    coverage_json, coverage_line, data_options, open_for_eval, read_checkpoint, require_chain, transformer_checkpoint,
)

__all__ = ["command", "parse_kinds"]


def parse_kinds(text: str) -> List[str]:
    """``"correlation,upstream"`` -> ``["correlation", "upstream"]``, each kind once, known kinds only.

    Examples
    --------
    >>> parse_kinds("upstream, downstream,upstream")
    ['upstream', 'downstream']
    """
    from graphinterp import ASSOCIATION_KINDS, comma_parts

    try:
        kinds = list(dict.fromkeys(comma_parts(text)))
    except ValueError as err:
        raise click.BadParameter(f"{text!r}: {err}", param_hint="--kinds") from None
    bad = [k for k in kinds if k not in ASSOCIATION_KINDS]
    if bad or not kinds:
        raise click.BadParameter(f"unknown kind(s) {', '.join(bad) or '(none given)'}; use comma-separated kinds "
                                 f"from {', '.join(ASSOCIATION_KINDS)}", param_hint="--kinds")
    return kinds


@click.command("associate")
@click.argument("model", type=NamedPath(dir_okay=False))
@data_options
@click.option("--k", type=click.IntRange(min=2), default=4, show_default=True,
              help="Clusters per level, for the association clusters and (when clustering now) the weight clusters.")
@click.option("--kinds", "kinds_text", default="correlation,upstream,downstream", show_default=True,
              help="Association kinds, comma-separated: correlation or covariance of the units' activations and "
                   "upstream (forward Jacobian, what moves them) look upstream; downstream (backward Jacobian of the "
                   "logits, what they move) looks downstream.")
@click.option("--layers", default=None, metavar="NAMES",
              help="Compare with weight clusters computed now, network-wide BSGC on these layers, instead of the "
                   "checkpoint's stored clustering (without one, the default layers: the hidden Linear layers, fc2 "
                   "for the paper's MLP).")
@click.option("--null", "null_model", type=click.Choice(["rotation", "shuffle"]), default="rotation",
              show_default=True,
              help="The modularity null: rotation, the same matrix in random orthonormal bases (same spectrum, no "
                   "preferred units: are there modules of units?); shuffle, its entries permuted (also destroys "
                   "low-rank structure, so many module-free matrices look significant).")
@click.option("--null-copies", type=click.IntRange(min=0), default=20, show_default=True, metavar="N",
              help="Null copies of each association matrix (0: no test).")
@click.option("--reinit", is_flag=True,
              help="Also measure the same architecture re-initialised (PyTorch's default init, --seed): the rotation "
                   "null tests alignment with the units, which ReLUs give even untrained, so compare with this.")
@click.option("--max-examples", type=POSITIVE_INT, default=2000, show_default=True,
              help="Examples the associations are measured on: a seeded random subset of N of the evaluation "
                   "data (--seed), all of them when it has no more.")
@click.option("--batch-size", type=POSITIVE_INT, default=256, show_default=True, help="Evaluation batch size.")
@click.option("--plot", "plot_path", type=NamedPath(dir_okay=False), default=None,
              help="Save the association matrices as heatmaps (a row per level, a column per kind), units ordered by "
                   "the weight clusters (PNG/SVG/PDF by suffix).")
@seed_option
@device_option
@trust_pickle_option
@quiet_option
@json_option
def command(model, dataset, split, data_dir, limit, inputs, k, kinds_text, layers, null_model, null_copies, reinit,
            max_examples, batch_size, plot_path, seed, device, trust_pickle, quiet, as_json):
    """Cluster the units of every hidden level of MODEL by how they behave on data, and compare with its weights.

    For each hidden level (a layer's outputs, where the next layer reads them) and each association
    kind, an association matrix between the level's units is measured on the evaluation data, its
    absolute value is the graph (anticorrelated units are as associated as correlated ones), the
    units are split into --k clusters (spectral clustering), and the split is scored by Newman's
    modularity Q against --null-copies copies of the matrix under the --null model (z, p). The
    clusterings are then
    compared with the level's weight clusters (the checkpoint's stored clustering, else network-wide
    BSGC now) by adjusted mutual information (AMI: 1 the same partition, about 0 unrelated), and
    with each other: do units that the weights group respond alike (upstream) and act alike on the
    outputs (downstream)? (Lange, Rolnick & Kording 2022.) MODEL must be a model graphinterp can
    run, as for `ablate`: a checkpoint holding its architecture, or with --trust-pickle a pickled
    nn.Module.

    \b
    Examples:
      graphinterp associate modular.pt --dataset mnist
      graphinterp associate baseline.pt --dataset mnist --kinds upstream,downstream --null-copies 50 --json
      graphinterp associate modular.pt --dataset mnist --plot assoc.png
    """
    from graphinterp import (
        ClusteringError, cluster_network, default_cluster_layers, functional_modules,
        multiple_tests_line, reinitialised, stored_clustering,
    )

    kinds = parse_kinds(kinds_text)
    layer_names = parse_layers(layers)
    if plot_path:
        check_output_path(plot_path, inputs=(model,), suffixes=FIGURE_SUFFIXES, param_hint="--plot")
    stored = read_checkpoint(model)
    if transformer_checkpoint(stored) is not None:
        raise click.UsageError("associate works on chains of Linear/Conv2d layers; a transformer checkpoint's "
                               "MLP blocks are not one (use `graphinterp ablate` for its clusters)")
    notes: List[str] = []
    data, loaded, net, graph = open_for_eval(model, stored, dataset, split, data_dir, limit, seed, inputs, trust_pickle,
                                             notes)
    require_chain(graph, model, "associate")
    names = check_layers(graph, layer_names)
    if loaded.clustering and names is None:
        clustering = stored_clustering(loaded.clustering, graph)
        source = f"stored in the checkpoint (k={clustering.k}, layers {', '.join(clustering.layer_names)})"
        if clustering.k != k:
            notes.append(f"the stored weight clusters have k={clustering.k} and the association clusters k={k}: AMI "
                         f"between partitions into different numbers of clusters stays below 1 (--k {clustering.k} to "
                         "match, or --layers to cluster the weights now at --k)")
    else:
        try:
            with setting_usage_errors() if names is not None else contextlib.nullcontext():  # asked for: a bad --k
                clustering = cluster_network(graph, k, layers=names or default_cluster_layers(graph),
                                             random_state=seed)
            source = f"network-wide BSGC now (k={k}, layers {', '.join(clustering.layer_names)})"
        except ClusteringError as err:
            if names is not None:  # asked for: its failure is the answer
                raise ClusteringError(f"the weight clusters to compare with: {err}") from err
            clustering, source = None, "none"  # the associations do not need them
            notes.append(f"no weight clusters to compare with: {err} (--layers)")
    if len(data) > max_examples:  # not the first N: an image folder's examples come sorted by class
        notes.append(f"associations measured on a seeded random subset of {max_examples:,} of {len(data):,} examples "
                     "(--max-examples)")
        data = data.subset(max_examples, seed=seed)
    widest = max(graph.level_sizes()[1:-1], default=0)
    if min(len(data), max_examples) < 10 * widest:
        notes.append(f"{min(len(data), max_examples):,} examples for levels of up to {widest:,} units: fewer than 10 "
                     "per unit, so the matrices are noisy (rank-deficient below one per unit; a channel's positions "
                     "pair position by position, so they do not add examples); use more examples")
    if 0 < null_copies < 10:
        notes.append(f"{null_copies} null cop{'y' if null_copies == 1 else 'ies'}: z is rough and p is at least "
                     f"1/{null_copies + 1}; use 20 or more")
    if not quiet and not as_json:
        click.echo(f"measuring {', '.join(kinds)} on {min(len(data), max_examples):,} examples ...", err=True)
    settings = dict(graph=graph, kinds=kinds, null=null_model, n_null=null_copies, max_examples=max_examples,
                    batch_size=batch_size, device=device, random_state=seed)
    with setting_usage_errors():  # a --k above a level's units
        result = functional_modules(net, data, k, clustering=clustering, **settings)
    reference = functional_modules(reinitialised(net, seed), data, k, **settings) if reinit else None
    if plot_path:
        _plot(model, result, plot_path)
    tested = [c for r in (result, reference) if r is not None for lv in r.levels.values() for c in lv.clusters.values()
              if not math.isnan(c.modularity.p_value)]  # every p the table prints, the re-initialised model's too
    if len(tested) > 1:
        what = "Q of each level and kind" + (", for the model and its re-initialised copy" if reference else "")
        notes.append(multiple_tests_line(len(tested), null_copies, what, draws="null copies"))
    if as_json:
        emit_json({"model": str(model), "dataset": data.name, "split": split, "weight_clusters": source,
                   "coverage": coverage_json(graph.coverage), "notes": notes, **result.to_dict(),
                   **({"reinitialised": reference.to_dict()} if reference is not None else {})})
        return
    _print(model, data, split, result, source, notes, reference, coverage_line(graph.coverage))
    if plot_path:
        click.echo(f"wrote {plot_path}")


def _plot(model, result, path) -> None:
    """Heatmaps, each level ordered by its weight clusters where it has them, else by the first kind's clusters."""
    from graphinterp import plot_association

    levels = list(result.levels.values())
    order = {lv.level: lv.weight_labels if lv.weight_labels is not None else lv.clusters[result.kinds[0]].labels
             for lv in levels}
    by = {lv.level: "weight clusters" if lv.weight_labels is not None else f"its {result.kinds[0]} clusters"
          for lv in levels}
    plot_association({lv.level: lv.matrices for lv in levels}, order, ordered_by=by,
                     title=f"{plain_text(model)}: association between units", out=path)


def _print(model, data, split, result, source, notes, reference=None, coverage: Optional[str] = None) -> None:
    if coverage:
        click.echo(coverage)
    for text in notes:
        click.echo(f"note: {text}")
    click.echo(f"{model}: k={result.k} clusters per level from association matrices on {result.n_examples:,} "
               f"{data.name} {split} examples; weight clusters: {source}")
    rows, tested = [], bool(result.n_null)
    for lv in result.levels.values():
        for kind, c in lv.clusters.items():
            m = c.modularity
            ami = lv.agreement.get(f"{kind}~weights")
            clustered = lv.n_units - c.n_left_out  # as --json: n_units, n_left_out
            row = [lv.level, f"{clustered} of {lv.n_units}" if c.n_left_out else clustered, kind, f"{m.observed:.3f}",
                   f"{m.mean:.3f} ± {m.std:.3f}" if m.null.size > 1 else "-", _z(m), _p(m),
                   "-" if lv.weight_labels is None else f"{lv.weight_modularity[kind]:.3f}",
                   "-" if ami is None or math.isnan(ami) else f"{ami:.2f}"]
            if reference is not None:
                r = reference.levels[lv.level].clusters[kind].modularity
                row += [f"{r.observed:.3f}", _z(r), _p(r)]
            rows.append(row)
    headers = ["level", "units clustered", "kind", "Q", "null Q", "z", "p", "Q of weight clusters", "AMI with weights"]
    click.echo(format_table(rows, headers + (["Q reinit", "z reinit", "p reinit"] if reference is not None else [])))
    used = sorted({c.modularity.null.size for lv in result.levels.values() for c in lv.clusters.values()})
    null = (f"the same for {used[0]}" + (f"-{used[-1]}" if len(used) > 1 else "") + " copies of the matrix "
            + ("in random orthonormal bases" if result.null == "rotation" else "with its entries shuffled")
            + " (mean ± sd), z = (Q - mean) / sd, p = (r + 1) / (n + 1) with r of the n copies at or above Q (<= at "
            "its floor: raise --null-copies to resolve it)") if tested else "not tested (--null-copies 0)"
    click.echo(f"Q: Newman modularity of the kind's own clusters on its association graph; null Q: {null}; Q of weight "
               "clusters: the weight clusters scored on that graph; AMI: adjusted mutual information with the weight "
               "clusters (1 same partition, about 0 unrelated; '-': no weight clusters at that level); level: a "
               "layer's outputs, where the next layer reads them; units: those with any association of that kind (a "
               "unit that never varies has no correlation or upstream association, but may act downstream).")
    kinds = result.kinds
    if len(kinds) > 1:
        for lv in result.levels.values():
            pairs = [f"{a}~{b} {lv.agreement[f'{a}~{b}']:.2f}" for i, a in enumerate(kinds) for b in kinds[i + 1:]]
            click.echo(f"{lv.level}: AMI between kinds: {', '.join(pairs)}")
    if reference is not None:
        click.echo("reinit: the same architecture re-initialised (PyTorch's default init), measured the same way: what "
                   "the architecture gives untrained (ReLUs align associations with units by themselves)")


def _z(m) -> str:
    return "-" if math.isnan(m.z) else f"{m.z:+.1f}"


def _p(m) -> str:
    """The p-value; at its floor 1 / (n + 1) (no null copy reached the observed Q) written as ``<=``."""
    if math.isnan(m.p_value):
        return "-"
    floor = 1.0 / (m.null.size + 1)
    return f"<={floor:.3f}" if m.p_value <= floor + 1e-12 else f"{m.p_value:.3f}"
