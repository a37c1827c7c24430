"""``graphinterp ablate``'s text: the ON/OFF table (a column per class, or each row summarised when there are many
classes), the coverage and note lines, and the caveat for a model near chance."""
from __future__ import annotations

from typing import List

import click
import numpy as np

from graphinterp.cli._common import format_table, plain_text
from graphinterp.cli._eval_data import coverage_lines

__all__ = ["WIDE", "onoff_table", "echo_coverage", "echo_notes", "note_chance"]

WIDE = 20  # classes up to which the ON/OFF table has a column per class


def onoff_table(rows: list, names: List[str]) -> str:
    """The ON/OFF table: ``rows`` are ``[label, overall, *per-class accuracies]``, the first the full model's; a
    column per class up to ``WIDE`` classes, else each row's spread over the classes and the four classes that
    stand out: the full model's least accurate, each ON cluster's most accurate, each OFF's largest drops."""
    if len(names) <= WIDE:
        return format_table([[r[0], *map(float, r[1:])] for r in rows], ["", "all", *names])
    full = np.asarray(rows[0][2:], dtype=float)
    out = []
    for label, overall, *acc in rows:
        acc = np.asarray(acc, dtype=float)
        off = label.startswith("OFF")
        key = full - acc if off else (acc if label.startswith("ON") else -acc)  # larger stands out more
        top = np.argsort(-key, kind="stable")[:4]
        tied = int((key == key[top[-1]]).sum() - (key[top] == key[top[-1]]).sum())  # as far out, not shown
        text = ", ".join(f"{plain_text(names[i])} {acc[i] - full[i]:+.2f}" if off else f"{plain_text(names[i])} {acc[i]:.2f}"
                         for i in top)
        out.append([label, float(overall), float(acc.min()), float(np.median(acc)), float(acc.max()),
                    text + (f" (+{tied} tied)" if tied else "")])
    return (format_table(out, ["", "all", "min", "median", "max",
                               "classes (full: least accurate; ON: most accurate; OFF: largest drop from full)"])
            + f"\n{len(names)} classes: one column each in --json, and in the heatmaps of --plot")


def echo_coverage(coverage, details: bool = False) -> None:
    """The coverage line (what a chained model's graph leaves out is in its notes; ``details``: the lines here)."""
    for line in coverage_lines(coverage, details=details):
        click.echo(line)


def echo_notes(notes: List[str]) -> None:
    for text in notes:
        click.echo(f"note: {text}")


def note_chance(accuracy: float, y, notes: List[str], about: str = "its clusters' ON/OFF accuracies") -> None:
    """Append the caveat for a model not clearly better than always predicting the most common class."""
    from graphinterp import chance_note

    note = chance_note(float(accuracy), y.reshape(-1).cpu().numpy(), about)
    if note is not None:
        notes.append(note)
