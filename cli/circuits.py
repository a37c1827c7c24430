"""``graphinterp circuits``: one circuit per label by iterative edge pruning, its ECS, GraphML export, comparison."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

import click

from graphinterp import grouped_layers, SCHEDULER_ENV
from graphinterp.cli._common import (
    NamedPath,
    FIGURE_SUFFIXES, POSITIVE_INT, FiniteFloat, check_output_dir, check_output_path, device_option,
    emit_json, json_option, plain_text, quiet_option, seed_option, trust_pickle_option,
)
from graphinterp.cli._options import refuse_given
from graphinterp.cli._eval_data import (
    coverage_json, coverage_lines, data_options, inputs_note, load_eval_data, note_missing, read_checkpoint,
    resolve_dataset, runnable_for, transformer_checkpoint,
)
from graphinterp.cli._circuit_report import kept_whole_note, stopped_note
from graphinterp.cli._circuit_text import echo_circuits
from graphinterp.cli._labels import check_examples, parse_labels, resolve_labels
from graphinterp.cli._transformer_circuits import check_task_options

__all__ = ["command", "parse_labels", "resolve_labels"]


def _stem(path: str) -> str:
    return Path(path).stem or "model"


def _weights(data, mode: str) -> str:
    """What the ECS in a figure is a fraction of (a transformer's circuits prune its MLP blocks only, the authors'
    search Linear layers only)."""
    from graphinterp.cli._transformer_circuits import TransformerData

    if isinstance(data, TransformerData):
        return "the MLP blocks' non-zero weights"
    return "the Linear layers' non-zero weights" if mode == "authors" else "the model's non-zero weights"


def _bar_plot(circuits, title: str, weights: str, out: str) -> None:
    from graphinterp import plot_ecs_per_label

    cs = list(circuits.values())
    per_layer = {plain_text(layer): [c.size.ecs_per_layer[layer] for c in cs] for layer in cs[0].size.ecs_per_layer}
    plot_ecs_per_label([c.ecs for c in cs], per_layer=per_layer, labels=[plain_text(c.label_name) for c in cs],
                       title=title, weights=weights, out=out)


def _stored_clustering(runnable):
    """The clustering stored with a model loaded by :func:`runnable_for`, checked against its graph (or None)."""
    from graphinterp import stored_clustering

    loaded, _, graph = runnable
    return stored_clustering(loaded.clustering, graph)


def _extract(runnable, clustering, data, labels, kwargs):
    """``(graph, clustering, circuits, coverage)`` of a model loaded by :func:`runnable_for`."""
    from graphinterp import extract_circuits

    _, net, graph = runnable
    return graph, clustering, extract_circuits(net, data, labels, graph=graph, **kwargs), graph.coverage


def _write_graphml(directory: str, stem: str, graph, clustering, circuits) -> List[str]:
    from graphinterp import write_graphml

    written = []
    for c, circuit in circuits.items():
        path = Path(directory) / f"{stem}_label{c}.graphml"
        write_graphml(circuit.to_networkx(graph, clustering), path)
        written.append(str(path))
    return written


@click.command("circuits")
@click.argument("model", type=NamedPath(dir_okay=False))
@data_options
@click.option("--labels", "labels_text", default="all", show_default=True, metavar="all|0,3,5-7|e,t|chars:TEXT",
              help="Labels to extract a circuit for: all, or output indices and ranges (0,3,5-7). A character LM's "
                   "labels can also be its characters: e,t,a (one character per item; an integer is always an index), "
                   "or chars:TEXT, where every character of TEXT is one label, for digits, comma and space "
                   "(--labels 'chars:3, ' is '3', ',' and ' '), or a character written as the tables show it, "
                   "quoted (' ', '\\n') or as a backslash escape (\\t). Characters not in the model's vocabulary are "
                   "an error.")
@click.option("--compare", "other", type=NamedPath(dir_okay=False), default=None,
              help="Extract the same circuits from this second model (e.g. the unclustered baseline) and report the "
                   "ECS change per label (the paper's Figure 3). In --json, \"compare\" has model a = this one and b = "
                   "MODEL: ecs_a, ecs_b, relative_change (b - a) / a, a_over_b = mean (a - b) / b (0.6: a's circuits "
                   "hold 60% more), ratio_of_means = mean(a) / mean(b) - 1.")
@click.option("--mode", type=click.Choice(["graphinterp", "authors"]), default="graphinterp", show_default=True,
              help="Circuit criterion. graphinterp: prune ranked edges of every layer while the one-vs-rest task stays "
                   "within --min-accuracy/--max-loss-increase, then single-edge passes to a local minimum. authors: the "
                   "paper's code, weight by weight, Linear layers only, last layer first, on the label's own examples; a "
                   "weight stays removed unless the loss rises above the full model's (--score, the tolerances and "
                   "--max-evals do not apply).")
@click.option("--score", type=click.Choice(["magnitude", "attribution", "learned"]), default="magnitude", show_default=True,
              help="Edge ranking (re-scored each round): magnitude, |w| normalised per layer; attribution, |w * dL/dw| "
                   "on the label's task; learned, mask logits trained on the task with a sparsity penalty (Csordas et "
                   "al. 2021; slower per round, often smaller circuits in fewer evaluations).")
@click.option("--min-accuracy", type=FiniteFloat(0, 1, low_open=True), default=0.95, show_default=True,
              help="A circuit keeps at least this fraction of the full model's balanced one-vs-rest accuracy.")
@click.option("--max-loss-increase", type=FiniteFloat(0), default=0.1, show_default=True,
              help="... and its one-vs-rest cross-entropy rises by at most this much (nats).")
@click.option("--max-examples", type=POSITIVE_INT, default=500, show_default=True,
              help="Examples of the label in its task (as many examples of other labels are added); up to as many "
                   "again of the unused ones check the circuit afterwards (held out).")
@click.option("--max-evals", type=POSITIVE_INT, default=10000, show_default=True,
              help="Candidate circuits evaluated per label at most (a safety cap; the search usually stops by itself "
                   "before; the full model and the final circuit are evaluated besides).")
@click.option("--graphml-dir", type=NamedPath(file_okay=False), default=None,
              help="Write each circuit as <model>_label<c>.graphml (kept edges, cluster labels) into this folder. A "
                   "Linear after a Flatten of conv channels is written one edge per channel and output (graph "
                   "attribute exact=false; said in a note).")
@click.option("--plot", "plot_path", type=NamedPath(dir_okay=False), default=None,
              help="Save a figure: ECS per label (with --compare: both models, as in Figure 3).")
@click.option("--corpus", type=NamedPath(dir_okay=False), default=None,
              help="Transformer trained on chars: the text to evaluate on, any written with its characters (default: its training text).")
@click.option("--batch-size", type=POSITIVE_INT, default=4096, show_default=True, help="Evaluation batch size.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Torch CPU threads during the search. It runs thousands of small forward passes, which gain nothing "
                   "from threads and lose much when cores are shared.")
@click.option("--jobs", type=POSITIVE_INT, default=1, show_default=True, metavar="N",
              help="Labels in parallel on N worker processes (joblib); the circuits are identical to a serial run's. "
                   "Each worker is a new Python process that imports torch (a few seconds to start).")
@click.option("--scheduler", default=None, envvar=SCHEDULER_ENV, metavar="ADDRESS", show_envvar=True,
              help="Run the labels on this Dask cluster (e.g. tcp://10.0.0.5:8786) through joblib's Dask backend; "
                   "needs pip install 'graphinterp[dask]'. The circuits are the same as a local run's; an empty ADDRESS runs locally.")
@seed_option
@device_option
@quiet_option
@trust_pickle_option
@json_option
def command(model, dataset, split, data_dir, limit, inputs, labels_text, other, mode, score, min_accuracy, max_loss_increase,
            max_examples, max_evals, graphml_dir, plot_path, corpus, batch_size, threads, jobs, scheduler, seed, device,
            quiet, trust_pickle, as_json):
    """Extract each label's circuit from MODEL by iterative edge pruning and report its Effective Circuit Size.

    A label's circuit is the set of weights (a conv kernel counts as one edge) left after pruning
    the weakest edges for as long as the model still tells the label's examples from a sample of
    the others: balanced accuracy >= --min-accuracy x the full model's, cross-entropy at most
    --max-loss-increase above it; single-edge passes then prune to a local minimum. ECS = kept
    non-zero weights / the model's non-zero weights. --mode authors uses the criterion of the
    paper's own code instead (ECS over Linear weights).

    \b
    Examples:
      graphinterp circuits modular.pt --dataset mnist --labels all --graphml-dir circuits/
      graphinterp circuits modular.pt --compare baseline.pt --dataset mnist --plot ecs.png
      graphinterp circuits modadd.pt --labels all --compare modadd-base.pt --plot ecs.png --jobs 2
      graphinterp circuits lm.pt --corpus input.txt --labels all --limit 5000
      graphinterp circuits lm.pt --labels e,t,a --limit 5000

    A transformer checkpoint is evaluated on its own task (--dataset and --data-dir are refused). A
    modular-addition one (`graphinterp train --dataset modadd`; --split test: the held-out pairs): a
    label is an answer 0..p-1, and the edges pruned are the weights of every MLP block (fc_in, fc_out);
    attention, embeddings and the unembedding are kept whole, and the ECS is over the MLP weights.
    A character LM (`graphinterp train --dataset chars`) is evaluated on windows of its corpus's
    validation text (every position; a seeded subset of --limit windows, default 20,000): a label is
    the character that follows a window (the model's prediction at the last position), --labels all
    the characters that occur as such; the MLP weights are pruned as for modular addition. Its labels
    can be given as characters: --labels e,t,a, or --labels 'chars:3, ' for the characters 3, comma
    and space (an integer item is always an output index).

    A circuit with no weight at all (ECS 0) gets a note saying why: the full model is no better than chance
    on the label (e.g. it never predicts it), or the tolerance is met without any weight. A circuit of a
    model not clearly better than chance on the label (3 binomial standard deviations) gets a note too.

    Each circuit is then checked on the label's examples its task left out (up to --max-examples
    of them, with as many others; the label's own only with --mode authors): the held-out columns
    give the circuit's and the full model's accuracy and loss there, the part of the criterion
    missed marked (~) within 3 standard errors, (!) beyond (then a note says so) or (?) with too
    few examples to tell; --json has them under "heldout". A character LM's windows overlap, so its
    held-out windows share text with the searched ones.
    """
    from graphinterp import CircuitComparison, Schedule, Tolerance, cluster_share

    labels = parse_labels(labels_text)
    if mode == "authors":
        refuse_given(click.get_current_context(), ["score", "min_accuracy", "max_loss_increase", "max_evals"],
                     "with --mode authors (the paper's criterion: a weight stays removed unless the loss on the "
                     "label's examples rises)", "use --mode graphinterp")
    sources = (model, other)  # the files read (not --inputs, the preprocessing)
    if other and os.path.exists(other) and os.path.exists(model) and os.path.samefile(other, model):
        raise click.BadParameter(f"{other} is MODEL itself: every change would be +0.0%; compare with another model "
                                 "(e.g. the baseline trained with --lambda 0)", param_hint="--compare")
    if plot_path:
        check_output_path(plot_path, inputs=sources, suffixes=FIGURE_SUFFIXES, param_hint="--plot")
    if graphml_dir:
        check_output_dir(graphml_dir, param_hint="--graphml-dir")
        stems = {_stem(model)} | ({_stem(other)} if other else set())
        if other and len(stems) == 1:
            raise click.BadParameter(f"{model} and {other} have the same name, so their circuits would overwrite "
                                     "each other's GraphML files; rename one", param_hint="--graphml-dir")
        import re

        for source in filter(None, sources):
            if (os.path.realpath(os.path.dirname(os.path.abspath(source))) == os.path.realpath(graphml_dir)
                    and any(re.fullmatch(re.escape(st) + r"_label\d+\.graphml", os.path.basename(source)) for st in stems)):
                raise click.BadParameter(f"{source} could be overwritten by a circuit's GraphML file; "
                                         "choose another folder", param_hint="--graphml-dir")
    stored, stored_other = read_checkpoint(model), (read_checkpoint(other) if other else None)
    ckpts = (transformer_checkpoint(stored), transformer_checkpoint(stored_other) if other else None)
    if other and (ckpts[0] is None) != (ckpts[1] is None):
        t, n = (model, other) if ckpts[1] is None else (other, model)
        raise click.UsageError(f"{t} is a transformer checkpoint and {n} is not; --compare needs two models of one kind")
    if ckpts[0] is not None and graphml_dir:
        raise click.UsageError("--graphml-dir is not available for transformer circuits (their MLP blocks are not a "
                               "layered graph); use --json for the circuits")
    check_task_options(model, ckpts[0], corpus, click.get_current_context())
    if ckpts[0] is None:
        labels = resolve_labels(labels, None, model)
    notes: List[str] = []
    defaulted = False
    if ckpts[0] is None:
        dataset, data_dir, defaulted = resolve_dataset(model, stored, dataset, data_dir, notes)
        data = load_eval_data(dataset, split, data_dir, limit, seed, notes, inputs)
        inputs_note(model, stored, dataset, inputs, notes)
        if other:
            inputs_note(other, stored_other, dataset, inputs, notes)
    kwargs = dict(score=score, tolerance=Tolerance(min_accuracy, max_loss_increase), schedule=Schedule(max_evals=max_evals),
                  max_examples=max_examples, random_state=seed, batch_size=batch_size, device=device, num_threads=threads,
                  progress=not (quiet or as_json), mode=mode, n_jobs=jobs, scheduler=scheduler or None)
    if ckpts[0] is not None:
        from graphinterp.cli._transformer_circuits import extract_transformer, open_transformer, transformer_data

        data = transformer_data(model, ckpts[0], other, ckpts[1], split, limit, seed, corpus=corpus, notes=notes)
        labels = resolve_labels(labels, data.vocabulary, model)
        check_examples(labels, data.y, data.classes, data.name)
        opened = [open_transformer(path, ckpt, data.x[:2]) for path, ckpt in zip(sources, ckpts) if ckpt is not None]
        graph, clustering, circuits, coverage = extract_transformer(opened[0], data, labels, kwargs)
    else:
        check_examples(labels, data.y, data.classes, data.name)
        if labels == "all":  # the labels present, as ablate's table: a class without examples has no task
            present = sorted(set(int(v) for v in data.y.unique().tolist()))
            absent = [str(data.classes[c]) for c in range(len(data.classes)) if c not in present]
            note_missing(absent, f"the {len(data.y):,} examples", notes)
            labels = present if absent else labels
        runnable = runnable_for(model, data, defaulted, trust_pickle, notes)
        # the --compare model is loaded and checked against the data now, not after MODEL's circuits
        runnable_b = runnable_for(other, data, defaulted, trust_pickle, notes, compared_with=model) if other else None
        # both stored clusterings are checked before any search: a bad one in --compare failed after MODEL's
        clustering_a, stored_b = _stored_clustering(runnable), (_stored_clustering(runnable_b) if other else None)
        graph, clustering, circuits, coverage = _extract(runnable, clustering_a, data, labels, kwargs)
        kept_whole_note(model, runnable, circuits, notes)
    shares: Dict[int, dict] = {c: cluster_share(ci, graph, clustering) for c, ci in circuits.items()} \
        if clustering and graph is not None else {}
    comparison: Optional[CircuitComparison] = None
    coverage_b = None
    written: List[str] = []
    if graphml_dir:
        written += _write_graphml(graphml_dir, _stem(model), graph, clustering, circuits)
        grouped = grouped_layers(graph)
        if grouped:
            notes.append(f"the GraphML files group {', '.join(grouped)}'s inputs by channel (one edge per channel and "
                         "output, weighted by the signed norm of the kept weights): they show where the circuit runs "
                         "but cannot rebuild it, and its ECS counts weights, not the files' edges (graph attributes "
                         "exact=false, kept_weights)")
    if other:
        if ckpts[1] is not None:
            graph_b, clustering_b, circuits_b, coverage_b = extract_transformer(opened[1], data, labels, kwargs)
        else:
            graph_b, clustering_b, circuits_b, coverage_b = _extract(runnable_b, stored_b, data, labels, kwargs)
            kept_whole_note(other, runnable_b, circuits_b, notes)
        # a: the --compare model (e.g. the unclustered baseline), b: MODEL; changes are reported a -> b
        comparison = CircuitComparison.from_circuits(circuits_b, circuits, names=(_stem(other), _stem(model)))
        if graphml_dir:
            written += _write_graphml(graphml_dir, _stem(other), graph_b, clustering_b, circuits_b)
    if plot_path:
        if comparison is not None:
            from graphinterp import plot_ecs_comparison

            plot_ecs_comparison(comparison.ecs_a, comparison.ecs_b, labels=[plain_text(n) for n in comparison.label_names],
                                names=tuple(plain_text(n) for n in comparison.names), weights=_weights(data, mode),
                                out=plot_path)
        else:
            _bar_plot(circuits, f"Effective circuit size per label: {plain_text(_stem(model))}", _weights(data, mode),
                      plot_path)
    if as_json:
        authors = mode == "authors"  # score and tolerance do not apply to the authors' criterion
        payload = {"model": str(model), "dataset": data.name, "split": split, "mode": mode,
                   "score": None if authors else score,
                   "tolerance": None if authors else {"min_accuracy": min_accuracy, "max_loss_increase": max_loss_increase},
                   "max_examples": max_examples, "max_evals": None if authors else max_evals, "seed": seed,
                   "limit": limit, "circuits": [{**ci.to_dict(), **({"cluster_share": shares[c]} if c in shares else {})}
                                for c, ci in circuits.items()], "graphml": written, "plot": plot_path or None,
                   "coverage": coverage_json(coverage), "notes": list(notes)}
        payload["notes"] += [n for n in (stopped_note(circuits), comparison is not None and stopped_note(
            comparison.circuits_a, f"{other}: ")) if n]  # the table's upper-bound warning, for --json readers too
        if comparison is not None:
            payload["compare"] = {"model": str(other), **comparison.to_dict(), "coverage": coverage_json(coverage_b),
                                  "circuits": [ci.to_dict() for ci in comparison.circuits_a.values()]}
        emit_json(payload)
        return
    transformer = ckpts[0] is not None  # a chained model's left-out parts are in its notes (coverage_note)
    lines = coverage_lines(coverage, model if other else "", details=transformer)
    if other:
        lines += coverage_lines(coverage_b, other, details=transformer)
    echo_circuits(model, data, circuits, shares, comparison, written, plot_path, notes, lines)
