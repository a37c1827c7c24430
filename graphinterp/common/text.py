"""Plain text in and out: integer ranges and k values read from the command line, tables printed on the terminal,
values made strictly valid JSON.

The parsers raise :class:`ValueError` with a short reason (``"7-5 is an empty range"``); each caller
turns it into its own error (:class:`click.BadParameter` in the CLI, a
:class:`~graphinterp.common.errors.GraphinterpError` in the library) with the hint it wants.
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, Sequence

__all__ = ["first_line", "MAX_RANGE_VALUES", "comma_parts", "parse_int_ranges", "parse_k_values", "format_cell", "format_table",
           "json_safe"]

#: Most values a range (``--labels``, ``--neurons``, ``--k``) may expand to.
MAX_RANGE_VALUES = 100_000


def _decimal(text: str) -> int:
    """A non-negative integer written in ASCII digits only.

    Python's ``int`` also reads other scripts' digits (``int("\u0663")`` is 3), ``1_0`` and ``+3``;
    on a command line those are more likely a character or a typo than an index.

    Examples
    --------
    >>> _decimal(" 12 ")
    12
    >>> _decimal("\u0663")
    Traceback (most recent call last):
    ...
    ValueError: not a decimal number
    """
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError("not a decimal number")
    return int(text)


def comma_parts(text: str) -> List[str]:
    """The comma-separated values of ``text``, stripped; none for blank text or commas alone. An empty value beside
    others (``"2,,3"``, ``"2,3,"``: one left out?) is refused rather than skipped.

    Examples
    --------
    >>> comma_parts(" fc1, fc2"), comma_parts("  ")
    (['fc1', 'fc2'], [])
    >>> comma_parts("2,,3")
    Traceback (most recent call last):
    ...
    ValueError: a value between commas is empty
    """
    parts = [p.strip() for p in str(text).split(",")]
    if any(parts) and not all(parts):  # "," alone is nothing given
        raise ValueError("a value between commas is empty")
    return [p for p in parts if p]


def parse_int_ranges(text: str, *, min_value: int = 0, max_values: int = MAX_RANGE_VALUES) -> List[int]:
    """Parse ``"1,3,5-7"`` into ``[1, 3, 5, 6, 7]``, refusing huge or empty ranges before expanding them.

    Parameters
    ----------
    text : str
        Comma-separated integers and inclusive ranges ``A-B``; spaces around them are ignored, an empty value
        between commas is refused (:func:`comma_parts`).
    min_value : int, default 0
        Smallest value allowed.
    max_values : int, default MAX_RANGE_VALUES
        Most values all parts may expand to together.

    Returns
    -------
    list of int
        The values in the order given (duplicates kept).

    Raises
    ------
    ValueError
        For garbage, a value below ``min_value``, a reversed range (``7-5``), an empty value between commas,
        nothing at all, or more than ``max_values`` values in total; the message is the reason only, without the
        text.

    Examples
    --------
    >>> parse_int_ranges("1,3-4")
    [1, 3, 4]
    >>> parse_int_ranges("5-3")
    Traceback (most recent call last):
    ...
    ValueError: '5-3' is an empty range
    """
    parts: List[range] = []
    total = 0
    for part in comma_parts(text):
        lo, dash, hi = part.partition("-")
        try:
            a = _decimal(lo)
            b = _decimal(hi) if dash else a
        except ValueError:
            raise ValueError(f"{part!r} is not an index or a range A-B") from None
        if a < min_value:
            raise ValueError(f"{a} is below {min_value}")
        if b < a:
            raise ValueError(f"{part!r} is an empty range")
        total += b - a + 1
        if total > max_values:
            raise ValueError(f"more than {max_values:,} values")
        parts.append(range(a, b + 1))
    if not parts:
        raise ValueError("no index given")
    return [i for r in parts for i in r]


def parse_k_values(text: str, *, max_values: int = 1000) -> List[int]:
    """Parse ``"4"``, ``"2..10"`` or ``"2,4,8"`` into k values (each >= 2), at most ``max_values`` of them.

    A huge range (``2..1000000000000``) is refused before it is expanded.

    Parameters
    ----------
    text : str
        One k, an inclusive range ``lo..hi``, or comma-separated values.
    max_values : int, default 1000
        Most k values allowed.

    Returns
    -------
    list of int
        The k values, in the order given.

    Raises
    ------
    ValueError
        With the reason only (not a number, an empty range or value between commas, too many values, k below 2, a
        k given twice).

    Examples
    --------
    >>> parse_k_values("2..5"), parse_k_values("3,6")
    ([2, 3, 4, 5], [3, 6])
    """
    text = str(text)
    parts = comma_parts(text) if ".." not in text else []
    try:
        if ".." in text:
            lo_s, hi_s = text.split("..")
            bounds = _decimal(lo_s), _decimal(hi_s)
        else:
            ks = [_decimal(p) for p in parts]
    except ValueError:
        raise ValueError("not a number of clusters") from None
    if ".." in text:
        lo, hi = bounds
        if hi < lo:
            raise ValueError("the range is empty")
        if hi - lo + 1 > max_values:
            raise ValueError(f"more than {max_values} values of k")
        ks = list(range(lo, hi + 1))
    if not ks:
        raise ValueError("no k given")
    if len(ks) > max_values:
        raise ValueError(f"more than {max_values} values of k")
    if min(ks) < 2:
        raise ValueError("k must be at least 2")
    twice = sorted({k for k in ks if ks.count(k) > 1})
    if twice:
        raise ValueError(f"k={twice[0]} is given more than once")
    return ks


def format_cell(value: Any, digits: int = 3) -> str:
    """One table cell: ``-`` for None or ``""``, floats with ``digits`` decimals (``3g`` from 1000 on), ``nan``, ``+inf``.

    Examples
    --------
    >>> [format_cell(v) for v in (None, 0.5, float("inf"), 12345.0, "fc1")]
    ['-', '0.500', '+inf', '1.23e+04', 'fc1']
    """
    if value is None or (isinstance(value, str) and value == ""):
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "+inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.3g}"
    return str(value)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *,
                 cell: Callable[[Any], str] = format_cell, rule: bool = True) -> str:
    """A left-aligned plain-text table: headers, a rule of dashes (unless ``rule=False``), one line per row.

    Each value is written with ``cell`` (default :func:`format_cell`); columns are two spaces apart and
    lines carry no trailing blanks.

    Parameters
    ----------
    rows : sequence of sequence
        The table's rows, one value per column.
    headers : sequence of str
        Column headers; their number sets the number of columns.
    cell : callable, default format_cell
        Turns one value into its text.
    rule : bool, default True
        Whether a line of dashes separates the headers from the rows.

    Returns
    -------
    str
        The table, lines joined by newlines (no trailing newline).

    Examples
    --------
    >>> print(format_table([["fc1", 0.25], ["fc2", None]], ["layer", "E"]))
    layer  E
    -----  -----
    fc1    0.250
    fc2    -
    """
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    head = [line(headers)] + ([line(["-" * w for w in widths])] if rule else [])
    return "\n".join(head + [line(r) for r in cells])


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line (first sentence) of an exception's message for an error line, cut at a word and marked
    with "..." when longer than ``limit`` characters; the exception's type when it has no message.

    Examples
    --------
    >>> first_line(ValueError("model type `x` is not known to Transformers. Upgrade it."))
    'model type `x` is not known to Transformers'
    >>> first_line(ValueError("word " * 50), limit=22)
    'word word word word...'
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0].split(". ")[0]
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:") + "..."


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN and infinity (not valid JSON) replaced by None, recursively through dicts and lists.

    Examples
    --------
    >>> json_safe({"z": float("nan"), "p": [0.5, float("inf")]})
    {'z': None, 'p': [0.5, None]}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
