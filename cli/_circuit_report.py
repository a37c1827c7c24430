"""The report lines of ``graphinterp circuits`` after its table: held-out checks, notes, stopped searches, changes."""
from __future__ import annotations

import math
from typing import List, Optional

import click

__all__ = ["span", "heldout_scope", "echo_heldout", "more_or_fewer", "percent", "echo_stopped", "stopped_note",
           "echo_notes", "kept_whole_note"]


def span(sizes) -> str:
    """``500`` or ``480-500``: the smallest and largest of some counts."""
    return f"{sizes[0]:,}" + (f"-{sizes[-1]:,}" if len(sizes) > 1 else "")


def heldout_scope(circuits) -> str:
    """How many held-out examples the circuits were checked on, and which labels had none left."""
    checked = [ci for ci in circuits.values() if ci.heldout is not None]
    missing = [ci.label_name for ci in circuits.values() if ci.heldout is None]
    parts = []
    if checked:
        parts.append(f"{span(sorted({ci.heldout.n_pos + ci.heldout.n_neg for ci in checked}))} examples of the same "
                     "split that the search never saw")
        others = [ci.label_name for ci in checked if ci.heldout.n_pos == 0]
        if others:
            which = _labels(others, every=len(others) == len(circuits))
            parts.append(f"for {which} only examples of other labels (every example of the label was searched on: "
                         "the check is that the circuit does not say the label for them; lower --max-examples to hold "
                         "some of the label out too)")
    if missing:
        which = _labels(missing, every=not checked)
        parts.append(f"none for {which} (no unused example of the label, or of the other labels, is left; lower "
                     "--max-examples or give more data to hold some out)")
    return "; ".join(parts)


def _labels(names, every: bool) -> str:
    """``every label``, or ``label 3`` / ``labels 3, 5`` (eight named at most, then how many more)."""
    if every:
        return "every label"
    return (f"label{'s' if len(names) > 1 else ''} " + ", ".join(names[:8])
            + (f" and {len(names) - 8} more" if len(names) > 8 else ""))


def echo_heldout(circuits, prefix: str = "") -> None:
    """Whether the circuits still meet their criterion on held-out examples, and the table's marks explained."""
    checked = [ci for ci in circuits.values() if ci.heldout is not None]
    if not checked:
        return
    within = sum(ci.heldout.within_tolerance for ci in checked)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    click.echo(f"{prefix}held out: {within} of {len(checked)} circuits meet their criterion on examples the search never "
               f"saw; mean accuracy circuit/full {mean([ci.accuracy for ci in checked]):.3f}/"
               f"{mean([ci.full_accuracy for ci in checked]):.3f} searched, "
               f"{mean([ci.heldout.accuracy for ci in checked]):.3f}/"
               f"{mean([ci.heldout.full_accuracy for ci in checked]):.3f} held out")
    marks = {m for ci in checked for m in (ci.heldout.mark("accuracy"), ci.heldout.mark("loss")) if m}
    if prefix or not marks:
        return
    from graphinterp import HELDOUT_MIN_GROUP as MIN_GROUP

    legend = {"(~)": "(~) missed by less than 3 standard errors (over the label's held-out task), so not told apart "
                     "from noise for this label alone (circuits pruned to the edge of their tolerance are expected to "
                     "lose a little on new examples)",
              "(!)": "(!) missed by more (a note follows)",
              "(?)": f"(?) missed, with too few held-out examples to tell (fewer than {MIN_GROUP} of the label or of the others)"}
    click.echo("; ".join(legend[m] for m in ("(~)", "(!)", "(?)") if m in marks))


def more_or_fewer(value: float) -> str:
    """A relative size as ``12.3% more`` / ``4.5% fewer``; ``n/a`` when undefined."""
    return "n/a" if math.isnan(value) else f"{100 * abs(value):.1f}% {'more' if value >= 0 else 'fewer'}"


def percent(value: float) -> str:
    """A relative change as ``+12.3%``; ``n/a`` when it is undefined (every circuit it averages is empty)."""
    return "n/a" if math.isnan(value) else f"{100 * value:+.1f}%"


def stopped_note(circuits, prefix: str = "") -> Optional[str]:
    """The searches that ran out of --max-evals (their ECS are upper bounds), or None when none did."""
    stopped = [ci.label_name for ci in circuits.values() if ci.converged is False]
    if not stopped:
        return None
    return (f"{prefix}{len(stopped)} of {len(circuits)} searches used the whole --max-evals before reaching a "
            f"local minimum (labels {', '.join(stopped)}): their ECS are upper bounds")


def echo_stopped(circuits, prefix: str) -> None:
    """Print :func:`stopped_note`, if any."""
    note = stopped_note(circuits, prefix)
    if note:
        click.echo(note)


def echo_notes(circuits, prefix: str = "") -> None:
    """One ``note:`` line per circuit with a caveat, saying which label and why (:attr:`graphinterp.Circuit.note`)."""
    for ci in circuits.values():
        if ci.note is not None:
            click.echo(f"note: {prefix}label {ci.label_name}: {ci.note}")


def kept_whole_note(path: str, runnable, circuits, notes: List[str]) -> None:
    """Append what of the graph's model the ECS leaves out and the search keeps whole, if anything: the weights of
    graph layers it does not size (convolutions with --mode authors) and the vector parameters (biases, gains).

    The weights outside the graph are named by the coverage note of :func:`runnable_for`.
    """
    _, net, graph = runnable
    sized = set(next(iter(circuits.values())).size.ecs_per_layer)
    layers = {layer.name for layer in graph.layers}
    unsized, vectors = [], 0
    for name, param in net.named_parameters():
        owner = name.rpartition(".")[0]
        if param.dim() < 2:
            vectors += param.numel()
        elif owner in layers and owner not in sized:
            unsized.append(f"{owner} ({int((param != 0).sum()):,} non-zero weights: --mode authors prunes Linear "
                           "layers only)")
    parts = unsized + ([f"{vectors:,} biases and other vector parameters (never pruned)"] if vectors else [])
    if parts:
        notes.append(f"{path}: the ECS leaves out, and every circuit keeps whole: " + "; ".join(parts))
