"""``graphinterp benchmark``: clusterability of a set of models, layer by layer, with a shuffle test."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Tuple

import click

from graphinterp import format_report, ModelSource, run_benchmark, SCHEDULER_ENV, SignificanceKError, write_report
from graphinterp.cli._source_options import check_unit_norm
from graphinterp.cli._common import (POSITIVE_INT, NamedPath, check_output_dir, device_option, emit_json, parse_k_values,
                                     quiet_option, seed_option, trust_pickle_option)

__all__ = ["command"]


@click.command("benchmark")
@click.argument("models", nargs=-1)
@click.option("--arch", "archs", multiple=True, metavar="NAME",
              help="A torchvision architecture (e.g. resnet18) whose weights are given by --weights; "
                   "repeat --arch/--weights for several models, paired in order.")
@click.option("--weights", "weights", multiple=True, type=NamedPath(dir_okay=False), metavar="FILE",
              help="Local weights file (a state_dict, read with weights_only=True) for the matching --arch; "
                   "with no --arch, for a single MODEL given as a torchvision name (as in analyze).")
@click.option("--random-arch", "random_archs", multiple=True, metavar="NAME",
              help="A torchvision architecture with random weights (seeded) as a reference; repeatable.")
@click.option("--k", "k_text", default="2..10", show_default=True, metavar="K|A..B|A,B",
              help="Numbers of clusters: one value, a range (2..10) or a list (2,4,8).")
@click.option("--significance-k", type=click.IntRange(min=2), default=4, show_default=True,
              help="k at which each layer is tested against its shuffled copies (layers with fewer nodes are "
                   "reported untested; refused when no layer has that many). Need not be in --k.")
@click.option("--shuffles", type=click.IntRange(min=0), default=20, show_default=True,
              help="Shuffled copies per layer (0: no significance test; 1 is refused: no spread, no z). "
                   "p-values go down to 1/(N+1).")
@click.option("--nonzero-only", is_flag=True,
              help="Shuffle only non-zero weights, keeping the sparsity pattern (for pruned models).")
@click.option("--out", "out_dir", type=NamedPath(file_okay=False), default="benchmark-report", show_default=True,
              help="Folder for benchmark.json, clusterability.csv, significance.csv and the figures.")
@click.option("--layerwise", is_flag=True,
              help="Analyse every Linear/Conv2d as its own bipartite graph, unlinked, even when the model is a "
                   "chain or a DAG (a traced residual or attention model is a DAG; only a bare state_dict whose "
                   "names or shapes do not chain is read layer by layer automatically).")
@click.option("--n-init", type=click.IntRange(min=1), default=10, show_default=True,
              help="KMeans restarts per BSGC run (lower is faster; the same value is used for the null).")
@click.option("--no-figures", is_flag=True, help="Write only the JSON and CSV files.")
@click.option("--jobs", "n_jobs", type=POSITIVE_INT, default=1, show_default=True,
              help="Worker processes over the layers of all models, and with --network over each model's shuffled "
                   "networks (joblib); the report does not depend on it. "
                   "Each worker is a new Python process that imports torch (two took 3 s to start on a 2-core "
                   "machine), so this pays off on runs longer than that.")
@click.option("--scheduler", default=None, envvar=SCHEDULER_ENV, metavar="ADDRESS", show_envvar=True,
              help="Run the layers (and --network's shuffled networks) on this Dask cluster (e.g. tcp://10.0.0.5:8786) through joblib's Dask backend; "
                   "needs pip install 'graphinterp[dask]'. The report is the same as a local run's; an empty ADDRESS runs locally.")
@seed_option
@device_option
@quiet_option
@trust_pickle_option
@click.option("--network", is_flag=True,
              help="Also test each model as one graph (Filan et al.): the n-cut and E of a network-wide clustering at "
                   "--significance-k against --shuffles networks with every layer's weights permuted (network.csv; "
                   "the shuffled networks on --jobs processes or --scheduler).")
@click.option("--drop-pieces", is_flag=True,
              help="With --network: leave out the pieces of each graph (and of each shuffled one) that do not join "
                   "its inputs to its outputs, as Filan et al. do (a pruned network falls into pieces, and a cluster "
                   "along a piece cuts nothing); a note says how many nodes that left out.")
@click.option("--unit-norm", is_flag=True,
              help="Rescale each model's weights first, as Filan et al. do: every hidden unit's incoming weights to "
                   "unit norm, the factor pushed into its outgoing weights (the same function through ReLU-like "
                   "activations: a note says when the model's modules break that). Chains only: a model with "
                   "residual streams is analysed as it is, and each model's notes say which was done. It does not "
                   "remove the unit-scale caveat of the shuffle null (the scales move into the next layer).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON instead of the table.")
def command(models: Tuple[str, ...], archs, weights, random_archs, k_text, significance_k, shuffles, nonzero_only,
            out_dir, layerwise, n_init, no_figures, n_jobs, scheduler, network, drop_pieces, unit_norm, seed, device,
            quiet, trust_pickle, as_json):
    """Benchmark the clusterability of MODELS, per layer, against shuffled-weight nulls.

    MODELS are model files (graphinterp checkpoints, bare or wrapped state_dicts, TorchScript,
    .safetensors), HuggingFace model folders, or torchvision names such as resnet18 (random weights).
    Add torchvision architectures with local weights (--arch resnet18 --weights resnet18.pth; for a
    single model also resnet18 --weights resnet18.pth, as in analyze), and random-weight references
    (--random-arch resnet18). A model that cannot be loaded is
    reported and left out; the others are benchmarked and the command then exits with status 1.

    Each model becomes a layered graph, as in `analyze`: a chain, a DAG for residual blocks and
    branches, a bare state_dict's layers in key order where their shapes chain (a guess, noted), or
    (--layerwise, or a state_dict whose shapes do not chain) each Linear/Conv2d on its own;
    the report says which and why. A layer gets the seed `analyze` gives it (from --seed and its
    position), so at a single --k the two report the same labels and E; the clusterings of a layer
    for several k share one SVD of the largest k's rank, which on a layer of more than 96 nodes a
    side can move its E at a smaller k slightly away from `analyze`'s. Every layer is
    clustered with BSGC for each k and reported with its clusterability E (share of squared weight
    inside clusters), the E of a random partition with the same cluster sizes, and the normalised
    score (E - E_rand) / (1 - E_rand). At --significance-k each layer is compared with --shuffles
    copies of itself with the weights permuted and reclustered the same way (Filan et al. 2021):
    z-score and one-sided empirical p-value (r + 1) / (N + 1), r the shuffles scoring at least as high,
    for raw E and for the normalised score (raw E
    depends on the cluster sizes BSGC finds, the score corrects for them). Layers with fewer nodes
    than k are left out for that k, and the report says so. The table gives E and E_rand at every k (up to
    five k; else the first, the last and the significance k, the rest in clusterability.csv and the JSON); a
    model's mass-weighted E over the k range is over its layers scored at every k, as in `analyze`.
    With --network each model is also tested as one graph, as Filan et al. test networks: its nodes
    clustered together (scikit-learn's spectral clustering of the |W| graph, one label per neuron or
    channel), the normalised cut (lower is more clusterable) and E compared with --shuffles networks
    whose layers' weights are permuted and reclustered; the pieces the graph falls into and folded
    normalisations (unit scales the shuffles scatter: read p with care) are noted.

    \b
    Outputs in --out: benchmark.json, clusterability.csv (model, layer, k), significance.csv
    (model, layer), network.csv (--network: model), clusterability_vs_k.png/.svg (Figure 1 style), <model>_layers.png and
    <model>_significance.png (split into _1, _2, ... files for models with many layers).

    \b
    Examples:
      graphinterp benchmark baseline.pt modular.pt --k 2..10 --out report/
      graphinterp benchmark --arch resnet18 --weights resnet18.pth --random-arch resnet18 --k 2..6
      graphinterp benchmark resnet20.th --shuffles 50 --significance-k 4 --json
      graphinterp benchmark mlp.pt --network --shuffles 20 --k 4
      graphinterp benchmark pruned.pt --network --drop-pieces --unit-norm --nonzero-only --shuffles 50 --k 12 --significance-k 12  # Filan et al.
    """
    models, archs = _single_model_weights(models, archs, weights)
    if len(archs) != len(weights):
        raise click.UsageError(f"--arch and --weights must come in pairs; got {len(archs)} --arch and "
                               f"{len(weights)} --weights (use --random-arch for random weights)")
    sources = ([ModelSource(path=p) for p in models] + [ModelSource(arch=a, weights=w) for a, w in zip(archs, weights)]
               + [ModelSource(arch=a) for a in random_archs])
    if not sources:
        raise click.UsageError("give at least one MODEL file, --arch NAME --weights FILE, or --random-arch NAME")
    if shuffles == 1:
        raise click.BadParameter("a null of 1 shuffle has no spread, so no z-score, and its p-value is at least 0.5; "
                                 "give 2 or more (p goes down to 1/(N+1)), or 0 for no shuffle test",
                                 param_hint="--shuffles")
    check_unit_norm(unit_norm, layerwise)
    if drop_pieces and not network:
        raise click.BadParameter("--drop-pieces applies to the whole-network test: add --network", param_hint="--drop-pieces")
    if network and shuffles == 0:
        raise click.BadParameter("the whole-network test needs shuffled networks: give --shuffles 2 or more, or "
                                 "leave out --network", param_hint="--shuffles")
    ks = parse_k_values(k_text, param_hint="--k")
    check_output_dir(out_dir, param_hint="--out", note_stale=False)  # its own note names an earlier report's files
    _refuse_overwriting_inputs(out_dir, list(models) + list(weights))
    try:
        report = run_benchmark(sources, ks, significance_k=significance_k, n_shuffles=shuffles,
                               nonzero_only=nonzero_only, layerwise=layerwise, trust_pickle=trust_pickle,
                               n_init=n_init, device=device, random_state=seed, progress=not (quiet or as_json) and n_jobs == 1,
                               n_jobs=n_jobs, scheduler=scheduler or None, network=network, unit_norm=unit_norm,
                               drop_pieces=drop_pieces)
    except SignificanceKError as err:  # found after loading the models, before any clustering
        raise click.BadParameter(str(err), param_hint="--significance-k") from None
    if not report.models:  # nothing could be loaded: nothing to write
        for why in report.failed.values():
            click.echo(f"error: {why}", err=True)
        raise click.exceptions.Exit(1)
    written = write_report(report, out_dir, figures=not no_figures)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(format_report(report))
        n_layers = sum(len(m.layers) for m in report.models)
        click.echo(f"benchmarked {len(report.models)} model(s), {n_layers} layer(s) (loading and clustering: "
                   f"{report.seconds:.1f} s; figures, files and start-up not counted); wrote {len(written)} files to "
                   f"{out_dir}")
    stale = _stale_report_files(out_dir, written)  # after the table, beside the line that names the folder
    if stale:
        click.echo(f"note: {len(stale)} file(s) in {out_dir} are from an earlier report, not this one: "
                   f"{', '.join(stale[:4])}{', ...' if len(stale) > 4 else ''}; remove them or use a fresh --out",
                   err=True)
    if report.failed:
        for why in report.failed.values():
            click.echo(f"error: {why}", err=True)
        raise click.exceptions.Exit(1)


#: The report's file names in --out (figures: <model>_layers.png, <model>_significance_2.png, ...).
_REPORT_NAME = re.compile(r"^(benchmark\.json|clusterability\.csv|significance\.csv|network\.csv|clusterability_vs_k\.(png|svg)"
                          r"|.*_(layers|significance)(_\d+)?\.png)$")


def _stale_report_files(out_dir: str, written) -> list:
    """Files in ``out_dir`` named as a report's files that this run did not write (an earlier report's figures)."""
    names = set(written)
    return sorted(f for f in os.listdir(out_dir) if _REPORT_NAME.match(f) and f not in names
                  and os.path.isfile(os.path.join(out_dir, f)))


def _refuse_overwriting_inputs(out_dir: str, inputs) -> None:
    """An input file in --out under a name the report writes would be overwritten: refused before any work."""
    folder = os.path.realpath(out_dir)
    for path in inputs:
        if os.path.isfile(path) and os.path.dirname(os.path.realpath(path)) == folder and \
                _REPORT_NAME.match(os.path.basename(os.path.realpath(path))):
            raise click.BadParameter(f"{path} is an input, and the report writes a file of that name in {out_dir}: "
                                     "choose another --out folder or rename the input", param_hint="--out")


def _single_model_weights(models: Tuple[str, ...], archs: Tuple[str, ...], weights: Tuple[str, ...]):
    """``(models, archs)`` with ``NAME --weights FILE`` (one MODEL, as in analyze) read as ``--arch NAME --weights FILE``.

    With no --arch, one --weights goes with a single MODEL naming a torchvision architecture; any other
    use of --weights without --arch is a usage error saying how to pair them.
    """
    if archs or not weights:
        return models, archs
    how = "pair each weights file with its architecture: --arch NAME --weights FILE (repeatable)"
    if len(models) != 1 or len(weights) != 1:
        raise click.UsageError(f"--weights without --arch goes with a single MODEL (a torchvision name, as in "
                               f"`benchmark resnet18 --weights FILE`); got {len(models)} MODEL(s) and "
                               f"{len(weights)} --weights: {how}")
    if Path(models[0]).expanduser().exists():
        raise click.UsageError(f"--weights {weights[0]} was given for the model file {models[0]}, which holds its "
                               f"own weights: --weights goes with a torchvision architecture name "
                               f"(`benchmark resnet18 --weights FILE`), or {how}")
    return (), (models[0],)
