"""The evaluation data of ``graphinterp ablate`` and ``graphinterp circuits``: which dataset, how many examples.

One place decides what a model is evaluated on, and says so where it is not what was asked:

* ``--dataset`` not given: a graphinterp checkpoint is evaluated on the dataset it was trained on
  (read from its training settings, with the folder it was read from unless ``--data-dir`` is
  given); any other model on the built-in ``digits``, and a model that does not take digits'
  inputs is refused with a hint to pass ``--dataset`` (:func:`inputs_error`).
* ``--limit N`` keeps a seeded random subset of N examples; at or above the split's size every
  example is used, with a note when it is above.

Notes are returned as text (``note: ...`` in the report, ``notes`` in ``--json``); nothing here prints.
"""
from __future__ import annotations

import shlex
import warnings
from typing import Any, Dict, List, Optional, Tuple

import click

from graphinterp import DATASETS
from graphinterp.cli._options import POSITIVE_INT, NamedPath

__all__ = ["require_chain", "open_for_eval", "runnable_for", "note_missing", "data_options", "read_checkpoint", "transformer_checkpoint", "resolve_dataset", "load_eval_data",
           "inputs_note", "coverage_note", "coverage_line", "coverage_lines", "coverage_json", "limit_rows", "limit_note", "check_outputs",
           "inputs_error"]


def data_options(f):
    """--dataset, --split, --data-dir, --limit, --inputs."""
    f = click.option("--inputs", type=click.Choice(["standardised", "unit"]), default="standardised",
                     show_default=True,
                     help="Preprocessing of the images: standardised per channel with the dataset's mean and std, "
                          "as `graphinterp train` trains; unit: pixels in [0, 1], for models trained without "
                          "normalisation (e.g. ToTensor() only).")(f)
    f = click.option("--limit", type=POSITIVE_INT, default=None, metavar="N",
                     help="Evaluate on a seeded random subset of N examples (all of them when N is at least "
                          "the split's size; a note says so when it is above).")(f)
    f = click.option("--data-dir", type=NamedPath(file_okay=False), default=None,
                     help="Folder holding the dataset (default: the folder a graphinterp checkpoint was trained "
                          "from, else $GRAPHINTERP_DATA_DIR or ~/.cache/graphinterp/datasets).")(f)
    f = click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
                     help="Which split to evaluate on.")(f)
    return click.option("--dataset", type=click.Choice(DATASETS), default=None,
                        help="Evaluation data (default: the dataset a graphinterp checkpoint was trained on, "
                             "else 'digits', which is built in and works offline).")(f)


def read_checkpoint(path: str) -> Optional[Dict[str, Any]]:
    """The checkpoint in ``path`` when it is a graphinterp checkpoint (read with ``weights_only``), else None."""
    from pathlib import Path

    import torch

    from graphinterp import is_checkpoint

    if not Path(path).is_file():
        return None
    try:
        with warnings.catch_warnings():  # e.g. "looks like a TorchScript archive": the generic loader handles those
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a plain checkpoint: the generic loader reports what it is
        return None
    return obj if is_checkpoint(obj) else None


def transformer_checkpoint(ckpt: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """``ckpt`` when it holds a graphinterp transformer, else None."""
    arch = ckpt.get("arch") if ckpt is not None else None
    return ckpt if isinstance(arch, dict) and arch.get("name") == "transformer" else None


def _trained_on(ckpt: Optional[Dict[str, Any]]) -> Tuple[Optional[str], Optional[str]]:
    """(dataset, data folder) in a checkpoint's training settings, each None when not recorded."""
    config = ((ckpt or {}).get("train_state") or {}).get("config") or {}
    dataset = config.get("dataset")
    data_dir = config.get("data_dir")
    return (dataset if dataset in DATASETS else None), (data_dir if isinstance(data_dir, str) else None)


def resolve_dataset(path: str, ckpt: Optional[Dict[str, Any]], dataset: Optional[str], data_dir: Optional[str],
                    notes: List[str]) -> Tuple[str, Optional[str], bool]:
    """``(dataset, data_dir, defaulted)``: what ``path`` is evaluated on (module docstring).

    ``defaulted`` is True when neither the user nor the checkpoint chose the data (built-in digits).
    A note is appended where the choice is not the one the user can see on the command line.

    Raises
    ------
    click.UsageError
        ``data_dir`` given for the built-in digits, which reads no folder.
    """
    chosen = _resolve(path, ckpt, dataset, data_dir, notes)
    if chosen[0] == "digits" and data_dir is not None:
        raise click.UsageError("--data-dir does not apply to digits (built in, read from no folder); leave it out, or "
                               "pass the dataset it holds with --dataset")
    return chosen


def _resolve(path, ckpt, dataset, data_dir, notes) -> Tuple[str, Optional[str], bool]:
    trained, trained_dir = _trained_on(ckpt)
    if dataset is not None and dataset != trained:
        if trained is not None:
            notes.append(f"{path} was trained on {trained}; evaluating on {dataset} as asked")
        if data_dir is None and trained_dir is not None and dataset != "digits":
            notes.append(f"reading {dataset} from {trained_dir}, the data folder {path} was trained from "
                         "(--data-dir chooses another)")
            data_dir = trained_dir
        return dataset, data_dir, False
    if trained is None:
        return "digits", data_dir, True
    if dataset is not None:  # the dataset it was trained on, named: still read from where it was trained
        if data_dir is None and trained_dir is not None and trained != "digits":
            notes.append(f"reading {trained} from {trained_dir}, where {path} was trained on it (--data-dir "
                         "chooses another folder)")
            data_dir = trained_dir
        return trained, data_dir, False
    if data_dir is None and trained_dir is not None and trained != "digits":
        data_dir = trained_dir
        notes.append(f"evaluating on {trained}, the dataset {path} was trained on, from {trained_dir} "
                     "(--dataset and --data-dir choose others)")
    else:
        notes.append(f"evaluating on {trained}, the dataset {path} was trained on (--dataset chooses another)")
    return trained, data_dir, False


def inputs_note(path: str, ckpt: Optional[Dict[str, Any]], dataset: str, inputs: str, notes: List[str]) -> None:
    """Append a note when the inputs' preprocessing may not be the model's: a model not trained by graphinterp
    given standardised inputs (one trained on ``[0, 1]`` pixels would see inputs it never saw), or a graphinterp
    model given ``[0, 1]`` pixels."""
    from graphinterp import NORMALIZATION

    if _trained_on(ckpt)[0] is not None:
        if inputs == "unit":
            notes.append(f"{path} was trained by graphinterp on standardised inputs; --inputs unit gives it pixels "
                         "in [0, 1], which it never saw")
        return
    if inputs != "standardised":
        return
    mean, std = (", ".join(f"{v:g}" for v in vs) for vs in NORMALIZATION[dataset])
    notes.append(f"{path} records no training by `graphinterp train`: its inputs are standardised as that trains on "
                 f"{dataset} ((x - {mean}) / {std} per channel); for a model trained on pixels in [0, 1] pass "
                 "--inputs unit")


def coverage_note(path: str, graph, notes: List[str]) -> None:
    """Append what of ``path``'s model its graph does not cover, if anything (modules left out, operations
    approximated): ablation and circuits act on the graph's layers only."""
    coverage = getattr(graph, "coverage", None)
    if coverage is None or coverage.complete:
        return
    lines = [line for line in coverage.summary_lines() if not line.startswith("folded:")]
    outside = coverage.total - coverage.covered
    notes.append(f"{path}: " + "; ".join(lines) + "; only the layers in the graph are ablated or pruned: a neuron is "
                 "silenced where the graph's layers read it, not for a module outside the graph that reads it too"
                 + (f", and a circuit's ECS counts the graph's weights only (the {outside:,} outside it are kept "
                    "whole)" if outside else ""))


def coverage_line(coverage, who: str = "") -> Optional[str]:
    """The report's first line: ``coverage: N of M weights in the graph (x%)`` (``who``: whose, when two models
    are reported); None without a coverage. What is left out is in :func:`coverage_note`'s note.

    Examples
    --------
    >>> from graphinterp.graph.coverage import Coverage
    >>> coverage_line(Coverage(100, 90, []), "b.pt")
    'coverage (b.pt): 90 of 100 weights in the graph (90.0%)'
    """
    if coverage is None:
        return None
    line = coverage.summary_lines()[0]
    return line.replace("coverage:", f"coverage ({who}):", 1) if who else line


def coverage_lines(coverage, who: str = "", details: bool = False) -> List[str]:
    """:func:`coverage_line`, and with ``details`` what is not covered, tied, not folded or approximated (the
    lines ``analyze`` prints; for a transformer, whose graph :func:`coverage_note` does not describe)."""
    line = coverage_line(coverage, who)
    if line is None:
        return []
    more = [text for text in coverage.summary_lines()[1:] if not text.startswith("folded:")] if details else []
    return [line, *more]


def coverage_json(coverage) -> Optional[dict]:
    """The coverage as ``analyze --json`` gives it (None without one)."""
    return None if coverage is None else coverage.to_dict()


def note_missing(names: List[str], where: str, notes: List[str]) -> None:
    """Append which classes have no example in ``where`` (left out of the table and the figure), if any."""
    if names:
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        notes.append(f"{len(names)} class(es) without an example in {where}, left out of the table: {shown}")


def limit_note(limit: Optional[int], n: int, what: str) -> Optional[str]:
    """The note for a ``--limit`` above the ``n`` examples of ``what`` (None when it is not above)."""
    if limit is None or limit <= n:
        return None
    return f"--limit {limit} is above the {n:,} {what}; all {n:,} are used"


def limit_rows(x, y, limit: Optional[int], seed: int, what: str, notes: List[str]):
    """``(x, y)`` cut to a seeded random subset of ``limit`` rows, kept in order (all rows when it is not below)."""
    from graphinterp import subset_indices

    note = limit_note(limit, len(x), what)
    if note is not None:
        notes.append(note)
    if limit is None or limit >= len(x):
        return x, y
    idx = subset_indices(len(x), limit, seed)
    return x[idx], y[idx]


def load_eval_data(dataset: str, split: str, data_dir: Optional[str], limit: Optional[int], seed: int,
                   notes: Optional[List[str]] = None, inputs: str = "standardised"):
    """The evaluation split (a seeded subset of ``limit`` examples when given; see :func:`limit_note`), its
    images standardised per channel or (``inputs="unit"``) in ``[0, 1]``."""
    if inputs not in ("standardised", "unit"):  # a wrong value would silently mean unit pixels
        raise ValueError(f"inputs must be 'standardised' or 'unit', got {inputs!r}")
    from graphinterp import load_dataset

    from graphinterp import DataError

    try:
        data = load_dataset(dataset, split=split, data_dir=data_dir, normalize=inputs == "standardised")
    except DataError as err:  # this command has no --download: say how to fetch it instead
        where = f" --data-dir {shlex.quote(str(data_dir))}" if data_dir is not None else ""
        text = str(err).replace("pass --download to fetch it,",
                                f"fetch it once with `graphinterp train --dataset {dataset}{where} --download` (which "
                                "also trains a model),")
        if text == str(err):
            raise
        raise DataError(text) from None
    note = limit_note(limit, len(data), f"examples of {data.name} {split}")
    for text in (data.note, note):  # a split short of the complete dataset's examples; a limit above its size
        if text is not None and notes is not None:
            notes.append(text)
    return data.subset(limit, seed=seed) if limit is not None else data


def check_outputs(graph, data, path: str, compared_with: Optional[str] = None) -> None:
    """Raise DataError unless the model has one output per class of ``data``; ``compared_with``: the MODEL
    whose data a ``--compare`` model is run on (the data is MODEL's, so --dataset is not the fix)."""
    from graphinterp import DataError

    n_out = graph.layers[-1].n_out
    if n_out != len(data.classes):
        fix = (f"--compare needs a model of the same task as {compared_with}" if compared_with else
               "pass the dataset the model was trained on with --dataset")
        raise DataError(f"{path}{' (--compare)' if compared_with else ''} has {n_out} outputs but {data.name} has "
                        f"{len(data.classes)} classes; {fix}")


def inputs_error(path: str, data, defaulted: bool, detail: str = "", compared_with: Optional[str] = None) -> Exception:
    """The error for a model that cannot run on the inputs of ``data`` (its loader's message names
    ``--input-shape``, which these commands take from the dataset); ``detail``: the model's own error;
    ``compared_with``: as in :func:`check_outputs`."""
    from graphinterp import DataError

    shape = "x".join(str(s) for s in data.x.shape[1:])
    why = f" (running it failed with {detail})" if detail else ""
    if compared_with:
        return DataError(f"{path} (--compare) does not take the {shape} inputs of {data.name}, which {compared_with} "
                         f"is evaluated on{why}; --compare needs a model trained on the same data as {compared_with}")
    default = ", the default evaluation data" if defaulted else ""
    return DataError(f"{path} does not take the {shape} inputs of {data.name}{default}{why}; pass the dataset it "
                     "was trained on with --dataset (and --data-dir)")


def require_chain(graph, model: str, command: str) -> None:
    """Refuse a model whose graph is not a chain of layers: ``command`` (ablate, associate) hooks levels of a chain."""
    if not graph.chained:
        from graphinterp import UnsupportedModelError, graph_structure

        kind = ("a DAG: a residual, attention or branching model" if graph_structure(graph) == "dag"
                else "its layers are read one by one")
        raise UnsupportedModelError(f"{model}'s graph is not a chain of layers ({kind}): {command} works on chains of "
                                    "Linear/Conv2d layers (a transformer trained by `graphinterp train` is ablated by "
                                    "its MLP blocks)")


def open_for_eval(model: str, stored, dataset, split: str, data_dir, limit, seed: int, inputs: str,
                  trust_pickle: bool, notes: List[str]):
    """The evaluation data of MODEL and the model itself, as ablate and associate read them: ``(data, loaded, net,
    graph)``, with the dataset, inputs and coverage notes added to ``notes`` (:func:`runnable_for`)."""
    dataset, data_dir, defaulted = resolve_dataset(model, stored, dataset, data_dir, notes)
    data = load_eval_data(dataset, split, data_dir, limit, seed, notes, inputs)
    inputs_note(model, stored, dataset, inputs, notes)
    return (data, *runnable_for(model, data, defaulted, trust_pickle, notes))


def runnable_for(model: str, data, defaulted: bool, trust_pickle: bool, notes: List[str],
                 compared_with: Optional[str] = None):
    """MODEL as a runnable module for ``data``: ``(loaded, net, graph)``; a model that cannot read the data's inputs
    or has another number of outputs is a clear error (for a ``--compare`` model, ``compared_with`` names the
    model whose data it is); coverage and precision notes go to ``notes``."""
    from graphinterp import InputMismatchError, load_runnable

    try:
        loaded, net, graph = load_runnable(model, trust_pickle=trust_pickle, input_shape=tuple(data.x.shape[1:]))
    except InputMismatchError as err:
        raise inputs_error(model, data, defaulted, err.detail, compared_with) from err
    check_outputs(graph, data, model, compared_with)
    coverage_note(model, graph, notes)
    if loaded.meta.get("cast_note"):
        notes.append(loaded.meta["cast_note"])
    return loaded, net, graph
