"""The text report of ``graphinterp circuits``: coverage and notes, the table of circuits, the comparison.

:func:`echo_circuits` prints what the command found when it does not write ``--json``: one row per
label (ECS overall and per layer, the criterion on the searched and on held-out examples, the main
cluster), then with ``--compare`` the change per label from model a to model b, and the files written.
The lines after the table come from :mod:`graphinterp.cli._circuit_report`.
"""
from __future__ import annotations

import math

import click

from graphinterp.cli._common import format_table
from graphinterp.cli._circuit_report import (
    echo_heldout, echo_notes, echo_stopped, heldout_scope, more_or_fewer, percent, span,
)

__all__ = ["echo_circuits"]


def echo_circuits(model, data, circuits, shares, comparison, written, plot_path, notes, coverage=()) -> None:
    for line in coverage:
        click.echo(line)
    for text in notes:
        click.echo(f"note: {text}")
    layers = list(next(iter(circuits.values())).size.ecs_per_layer)
    first = next(iter(circuits.values()))
    scope = getattr(data, "scope", "")
    examples = f"{len(data):,} {data.name}" + ("" if "windows" in data.name else " examples")
    click.echo(f"{model}: circuits on {examples}; {first.size.total_params:,} non-zero weights"
               f"{scope}, {first.size.total_edges:,} edges; ECS = kept weights / non-zero weights")
    sizes = sorted({ci.n_pos + ci.n_neg for ci in circuits.values()})
    which = ("the label's and as many others, --max-examples" if any(ci.n_neg for ci in circuits.values())
             else "the label's own, as --mode authors uses")
    click.echo(f"each label's circuit is searched and its criterion checked on the same {span(sizes)} examples "
               f"({which}), then checked on held-out ones: {heldout_scope(circuits)}")
    rows = []
    for c, ci in circuits.items():
        h = ci.heldout
        row = [ci.label_name, 100 * ci.ecs, ci.size.kept_params, *[100 * ci.size.ecs_per_layer[l] for l in layers],
               f"{ci.accuracy:.3f}/{ci.full_accuracy:.3f}", f"{ci.loss:.3f}/{ci.full_loss:.3f}",
               "n/a" if h is None else f"{h.accuracy:.3f}/{h.full_accuracy:.3f} {h.mark('accuracy')}".rstrip(),
               "n/a" if h is None else f"{h.loss:.3f}/{h.full_loss:.3f} {h.mark('loss')}".rstrip()]
        if shares:
            s = shares[c]
            row.append("-" if s["dominant"] is None else f"{s['dominant']} ({100 * s['mass'][s['dominant']]:.0f}%)")
        rows.append(row)
    headers = ["label", "ECS %", "weights", *[f"{l} %" for l in layers], "acc circuit/full", "loss circuit/full",
               "held-out acc circuit/full", "held-out loss circuit/full"]
    click.echo(format_table(rows, headers + (["main cluster (mass)"] if shares else [])))
    click.echo(f"{', '.join(f'{l} %' for l in layers)}: the share of that layer's non-zero weights the circuit keeps"
               + ("; accuracy in --mode authors is on the label's own examples only (the share answered with the "
                  "label), so a circuit that always answers the label scores 1.000, above a full model that does not"
                  if not any(ci.n_neg for ci in circuits.values()) else ""))
    echo_heldout(circuits)
    if shares:
        click.echo("main cluster: the cluster holding most of the circuit's kept squared weight within the "
                   "clustered layers (the share in brackets), as cluster_share computes it; -: none (the circuit keeps "
                   "no weight inside a cluster)")
    echo_notes(circuits)
    echo_stopped(circuits, "")
    if comparison is not None:
        a, b = comparison.names
        rel = comparison.relative_change
        rows = [[n, 100 * ea, 100 * eb, f"n/a (empty in {a})" if math.isnan(r)
                 else f"{percent(r)} (empty in {b}: left out of the means)" if eb == 0 else percent(r)]
                for n, ea, eb, r in zip(comparison.label_names, comparison.ecs_a, comparison.ecs_b, rel)]
        click.echo("")
        click.echo(format_table(rows, ["label", f"ECS % {a}", f"ECS % {b}", f"change {a} -> {b}"]))
        echo_notes(comparison.circuits_a, f"{a}, ")
        echo_stopped(comparison.circuits_a, f"{a}: ")
        echo_heldout(comparison.circuits_a, f"{a}: ")
        both = [*comparison.circuits_a.values(), *comparison.circuits_b.values()]
        left_out = any(c.empty for c in both)
        bounds = ("; some ECS are upper bounds (searches stopped at --max-evals): raise it before reading the change"
                  if any(c.converged is False for c in both) else "")
        click.echo(f"mean relative change {a} -> {b}: {percent(comparison.mean_relative_change)}; "
                   f"{a}'s circuits hold on average {more_or_fewer(comparison.a_over_b)} parameters than {b}'s"
                   + ("; labels with an empty circuit are left out of these means" if left_out else "") + bounds)
    for path in written[:3]:
        click.echo(f"wrote {path}")
    if len(written) > 3:
        click.echo(f"... and {len(written) - 3} more GraphML files")
    if plot_path:
        click.echo(f"wrote {plot_path}")
