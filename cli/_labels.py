"""``--labels`` of ``graphinterp circuits``: output indices, or a character LM's characters, turned into indices."""
from __future__ import annotations

import ast
import re
from typing import List, Optional, Union

import click

from graphinterp import MAX_RANGE_VALUES
from graphinterp import parse_int_ranges as _parse_int_ranges

__all__ = ["CHARS_PREFIX", "LABEL_FORMS", "parse_labels", "resolve_labels", "check_examples"]


#: Prefix of ``--labels`` that names a character LM's labels by their characters, each character one label.
CHARS_PREFIX = "chars:"

#: The label forms, as ``--help`` and the error messages state them.
LABEL_FORMS = ("all, indices such as 0,3,5-7, or (character LMs) characters such as e,t,a, '\\n' or ' ' (as "
               "tables show them) or chars:TEXT")

LabelSpec = Union[str, List[Union[int, str]]]


def parse_labels(text: str) -> LabelSpec:
    r"""The syntax of ``--labels``: ``"all"``, or a list of output indices (int) and characters (str).

    * ``all``;
    * comma-separated items: an integer or a range ``A-B`` is an output index (on every model, so
      ``3`` is always index 3); any other single character is that character (character LMs only);
      so is a character written as the tables show invisible ones, quoted (``'\n'``, ``' '``), or
      as a backslash escape (``\n``, ``\t``); spaces around items are ignored;
    * ``chars:TEXT``: every character of TEXT, literally, is one label (digits, comma and space
      included): ``chars:3, `` means the characters ``'3'``, ``','`` and ``' '``.

    Characters are turned into indices by :func:`resolve_labels` once the model's vocabulary is known.

    Raises
    ------
    click.BadParameter
        Garbage, an empty list, or too many indices.

    Examples
    --------
    >>> parse_labels("all"), parse_labels("1,4-5")
    ('all', [1, 4, 5])
    >>> parse_labels("e, 3,t"), parse_labels("chars:3, ")
    (['e', 3, 't'], ['3', ',', ' '])
    >>> parse_labels("'\\n',' ',\\t")
    ['\n', ' ', '\t']
    """
    if text.strip().lower() == "all":
        return "all"
    if text.startswith(CHARS_PREFIX):
        chars = list(dict.fromkeys(text[len(CHARS_PREFIX):]))
        if not chars:
            raise click.BadParameter(f"{text!r} names no character; use {LABEL_FORMS}", param_hint="--labels")
        return chars
    out: List[Union[int, str]] = []
    left = MAX_RANGE_VALUES
    for item in _items(text):
        if not item.strip():  # "e, ,t": a space meant as a label is written quoted
            raise click.BadParameter(f"{text!r} has an item of only spaces; write a space label as ' ' (quoted) or "
                                     "with chars:TEXT", param_hint="--labels")
        item = item.strip()
        char = _written_char(item)
        if char is not None:
            out.append(char)
            continue
        try:
            idx = _parse_int_ranges(item, max_values=left)
        except ValueError as err:
            raise click.BadParameter(f"{item!r}: {err}; use {LABEL_FORMS}", param_hint="--labels") from None
        left -= len(idx)
        out.extend(idx)
    if not out:
        raise click.BadParameter(f"{text!r} names no label; use {LABEL_FORMS}", param_hint="--labels")
    return out


#: One comma-separated item of ``--labels``: a quoted character (which may be a comma) or a run without commas.
_ITEM = re.compile(r"""\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^,]+)\s*""")


def _items(text: str) -> List[str]:
    """The comma-separated items of ``text`` (quoted commas kept); an empty one (``"0,,3"``, ``"0,3,"``: a label left
    out?) is refused, as :func:`graphinterp.comma_parts` refuses it in every other comma-separated option."""
    matches = list(_ITEM.finditer(text))
    ends, starts = [0] + [m.end() for m in matches], [m.start() for m in matches] + [len(text)]
    commas = [text[a:b].count(",") for a, b in zip(ends, starts)]  # before the first item, between items, after the last
    if matches and (commas[0] or commas[-1] or any(c > 1 for c in commas[1:-1])):
        raise click.BadParameter(f"{text!r}: a value between commas is empty; use {LABEL_FORMS}", param_hint="--labels")
    return [m.group(1) for m in matches]


def _written_char(item: str) -> Optional[str]:
    """The character ``item`` writes (itself, quoted as a table shows it, or a backslash escape), or None for an index."""
    if len(item) == 1 and not (item.isascii() and item.isdigit()):  # another script's digit is a character
        return item
    quoted = len(item) >= 3 and item[0] == item[-1] and item[0] in "'\""
    if quoted or item.startswith("\\"):
        try:
            char = ast.literal_eval(item if quoted else f"'{item}'")
        except (ValueError, SyntaxError):
            char = None
        if not isinstance(char, str) or len(char) != 1:
            raise click.BadParameter(f"{item!r} is not one character; use {LABEL_FORMS}", param_hint="--labels")
        return char
    return None


def resolve_labels(spec: LabelSpec, vocabulary: Optional[str], path: str) -> Union[str, List[int]]:
    """``"all"`` or the output indices of ``spec`` (from :func:`parse_labels`), characters looked up in ``vocabulary``.

    ``vocabulary`` is a character LM's characters in token-id order, None for any other model.
    Duplicates are dropped, the first occurrence keeps its place.

    Raises
    ------
    click.BadParameter
        Characters for a model that is not a character LM, or characters not in its vocabulary
        (named, with the vocabulary).

    Examples
    --------
    >>> resolve_labels(["t", 0, "e"], " et", "lm.pt")
    [2, 0, 1]
    """
    if spec == "all":
        return "all"
    chars = list(dict.fromkeys(c for c in spec if isinstance(c, str)))
    if chars and vocabulary is None:
        raise click.BadParameter(f"{', '.join(map(repr, chars))}: characters name the labels of character language "
                                 f"models only; {path} is not one, use output indices such as 0,3,5-7",
                                 param_hint="--labels")
    missing = [c for c in chars if c not in vocabulary]
    if missing:
        raise click.BadParameter(f"{', '.join(map(repr, missing))} not in the vocabulary of {path} "
                                 f"({len(vocabulary)} characters: {vocabulary!r})", param_hint="--labels")
    index = {c: i for i, c in enumerate(vocabulary or "")}
    return list(dict.fromkeys(index[c] if isinstance(c, str) else c for c in spec))


def check_examples(labels, y, classes, data_name: str) -> None:
    """Refuse, before any search, the asked-for labels that have no example in the evaluation data.

    ``labels`` is ``"all"`` (never refused: it means the labels present) or output indices; the
    labels are named by their class names (a character, not its token id).

    Raises
    ------
    click.BadParameter
        Naming every label without an example, and what to do.

    Examples
    --------
    >>> import torch
    >>> check_examples([0, 1], torch.tensor([0, 1, 1]), ["a", "b"], "val")
    """
    if labels == "all":
        return
    present = set(int(v) for v in y.unique().tolist()) if hasattr(y, "unique") else set(int(v) for v in y)
    missing = [c for c in labels if 0 <= c < len(classes) and c not in present]  # out of range: the model's check
    if missing:
        names = ", ".join(repr(classes[c]) for c in missing)
        raise click.BadParameter(f"no example of label(s) {names} in the {len(y):,} examples of {data_name}; leave "
                                 "them out, or evaluate on more data (--limit)", param_hint="--labels")
