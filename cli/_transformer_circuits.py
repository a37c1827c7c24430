"""Transformer checkpoints in ``graphinterp ablate`` and ``graphinterp circuits``: which options apply, the task
data, the class names, and the circuit extraction.

Modular addition: the split's pairs, a label is an answer. Character LM: windows of the split's text
(every position, a seeded subset of ``--limit`` windows, default :data:`CHAR_WINDOWS`), a label is the
character after the window; ``--labels all`` takes the characters that occur as such.

Both commands check their options through :func:`check_task_options` (the one place that says which
options apply to which kind of model) and rebuild a transformer's task through :func:`task_config`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import click

from graphinterp.cli._eval_data import limit_note, limit_rows
from graphinterp.cli._options import refuse_given

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from graphinterp import TransformerConfig

__all__ = ["TransformerData", "transformer_data", "transformer_net", "open_transformer", "extract_transformer",
           "task_config", "check_task_options",
           "class_name", "CHAR_WINDOWS", "DATASET_OPTIONS"]

#: Windows of a character LM's split that its circuits are extracted on, unless --limit says otherwise.
CHAR_WINDOWS = 20000

#: Options (parameter names) that choose the evaluation data of a model that is not a transformer checkpoint.
DATASET_OPTIONS = ("dataset", "data_dir", "inputs")


@dataclass
class TransformerData:
    """The examples the circuits are extracted on (what the report prints).

    ``vocabulary`` is a character LM's characters, in token-id order (None for modular addition).
    """

    x: Any
    y: Any
    classes: list
    name: str
    scope: str = " in the MLP blocks (attention, embeddings and unembedding kept whole)"
    present: Optional[list] = None  # labels with at least one example (a character LM's "all")
    vocabulary: Optional[str] = None

    def __len__(self) -> int:
        return len(self.y)


def class_name(c: str) -> str:
    r"""How a class (an answer, or a character of a character LM) is shown in tables and as a label name.

    Printable characters as themselves; spaces, newlines and other invisible characters as their
    Python ``repr`` so that they can be seen. Used by ``ablate`` and ``circuits`` alike.

    Examples
    --------
    >>> class_name("e"), class_name("10"), class_name(" "), class_name("\n")
    ('e', '10', "' '", "'\\n'")
    """
    return c if c.isprintable() and not c.isspace() else repr(c)


def check_task_options(path: str, ckpt: Optional[Dict[str, Any]], corpus: Optional[str],
                       ctx: Optional[click.Context] = None) -> None:
    """Refuse the options that do not apply to the kind of model in ``path`` (before any long work).

    ``--corpus`` applies to character LMs only; ``--dataset`` and ``--data-dir`` to models that are not
    transformer checkpoints (those are evaluated on their own task). ``ckpt`` is the loaded transformer
    checkpoint, or None for any other model.

    Raises
    ------
    click.UsageError
        Naming the option and what kind of model it applies to.
    """
    if ckpt is None:
        if corpus is not None:
            raise _corpus_error(path, "is not a transformer checkpoint")
        return
    refuse_given(ctx, DATASET_OPTIONS, f"to {path}: a transformer checkpoint is evaluated on "
                 "its own task (--corpus chooses a character LM's text)")
    task_config(path, ckpt, corpus)


def task_config(path: str, ckpt: Dict[str, Any], corpus: Optional[str] = None) -> "TransformerConfig":
    """The :class:`~graphinterp.TransformerConfig` a transformer checkpoint was trained with, ``corpus`` replacing
    its text (refused unless the model is a character LM).

    Raises
    ------
    DataError
        The checkpoint holds no training settings.
    click.UsageError
        ``corpus`` given for a model that was not trained on chars.
    """
    from graphinterp import validate_checkpoint
    from graphinterp import DataError
    from graphinterp import TransformerConfig

    ckpt = validate_checkpoint(ckpt, path=path)
    saved = (ckpt.get("train_state") or {}).get("config")
    if not saved:
        raise DataError(f"{path} holds no transformer training settings; cannot rebuild its task data")
    config = TransformerConfig.from_dict({**saved, **({"corpus": corpus} if corpus else {})})
    if corpus and config.task != "chars":
        raise _corpus_error(path, f"was trained on {config.task}")
    return config


def _corpus_error(path: str, what: str) -> click.UsageError:
    """The refusal of ``--corpus`` for a model that is not a character LM (``what`` it is instead)."""
    return click.UsageError(f"--corpus applies to transformers trained on chars only; {path} {what}")


def transformer_data(path: str, ckpt: Dict[str, Any], other: Optional[str], other_ckpt: Optional[Dict[str, Any]],
                     split: str, limit: Optional[int], seed: int, corpus: Optional[str] = None,
                     notes: Optional[List[str]] = None) -> TransformerData:
    """The split of the first model's task (both models must share the task: the modulus, or the vocabulary).

    A ``limit`` above the split's examples is noted in ``notes``.
    """
    from graphinterp import DataError
    from graphinterp import checkpoint_task_data

    config = task_config(path, ckpt, corpus)
    if other_ckpt is not None:
        cfg_b = task_config(other, other_ckpt, corpus)
        if cfg_b.task != config.task:
            raise DataError(f"{path} was trained on {config.task} but {other} on {cfg_b.task}; compare models of one task")
        if config.task == "modadd" and cfg_b.p != config.p:
            raise DataError(f"{path} adds mod {config.p} but {other} adds mod {cfg_b.p}; compare models of one task")
    data = checkpoint_task_data(ckpt, config, path, [(other_ckpt, other)] if other_ckpt is not None else [])
    notes = [] if notes is None else notes
    if config.task == "chars":
        return _char_data(config, data, split, limit, seed, notes)
    part = data["test" if split == "test" else "train"]
    x, y = limit_rows(part.x, part.y, limit, seed, f"{part.name} pairs", notes)
    return TransformerData(x, y, list(data["classes"]), part.name)


def transformer_net(path: str):
    """The runnable transformer of the checkpoint ``path``, read as `analyze` reads it: weights that do not fit
    its architecture (a damaged file) are one ``error:`` line (a ``ModelFileError``), not a traceback."""
    from graphinterp import load_model_file

    return load_model_file(path).module


def open_transformer(path: str, ckpt: Dict[str, Any], example: torch.Tensor):
    """``(net, graph, stored clustering or None)`` of a transformer checkpoint: the model, its graph traced on
    ``example`` (a few sequences of the task) and the clustering it stores, checked against that graph, all
    before any search (a clustering naming a layer the model does not have is one ``error:`` line)."""
    from graphinterp import stored_clustering, trace_graph

    net = transformer_net(path)
    graph = trace_graph(net, example=example)
    return net, graph, stored_clustering(ckpt.get("clustering"), graph)


def extract_transformer(opened, data: TransformerData, labels, kwargs: Dict[str, Any]):
    """``(graph, clustering or None, circuits, coverage)`` of one transformer checkpoint opened by
    :func:`open_transformer` (the coverage of its traced graph: what the report leads with). With a clustering,
    ``circuits`` reports each circuit's share of every cluster of the MLP blocks, as for any model."""
    from graphinterp import extract_transformer_circuits

    net, graph, clustering = opened
    if labels == "all" and data.present is not None:
        labels = data.present
    circuits = extract_transformer_circuits(net, data.x, data.y, labels, label_names=data.classes, **kwargs)
    return graph, clustering, circuits, graph.coverage


def _char_data(config, data, split, limit, seed, notes: List[str]) -> TransformerData:
    """Next-character windows of a character LM's split (``test`` reads the validation text)."""
    corpus = data["corpus"]  # its vocabulary was checked against both models by checkpoint_task_data
    text = "val" if split == "test" else "train"
    part = corpus.next_char_windows(config.n_ctx, text, limit=CHAR_WINDOWS if limit is None else limit, seed=seed)
    note = limit_note(limit, len(part), f"next-character windows of the {text} text")
    if note is not None:
        notes.append(note)
    notes.append(f"the windows ({config.n_ctx} characters, one per position of the {text} text) overlap: a circuit's "
                 "held-out windows share text with those it was searched on, so the held-out check is weaker than on "
                 "independent examples")
    present = sorted(set(part.y.tolist()))
    names = [class_name(c) for c in corpus.chars]
    return TransformerData(part.x, part.y, names, f"{part.name} of {corpus.path}", present=present,
                           vocabulary="".join(corpus.chars))
