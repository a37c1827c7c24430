"""What the commands print and draw: JSON on stdout or in a file, plain-text tables, text safe for figures."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import click

from graphinterp import format_table as _format_table
from graphinterp import json_text
from graphinterp import write_json as _write_json

__all__ = ["emit_json", "write_json", "format_table", "check_title", "plain_text"]


def emit_json(obj: Any) -> None:
    """Print ``obj`` as indented, strictly valid JSON on stdout (:func:`graphinterp.json_text`: NaN as null)."""
    click.echo(json_text(obj))


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON atomically."""
    _write_json(path, obj)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned plain-text table (:func:`graphinterp.format_table`); floats printed with 3 decimals."""
    return _format_table(rows, headers, cell=_cell)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def check_title(text: Optional[str], *, param_hint: str = "--title") -> Optional[str]:
    """Return ``text`` if matplotlib can render it as a figure title.

    A title with an even number of unescaped ``$`` is mathtext and must parse; control
    characters other than newline and tab are refused (they make invalid SVG).

    Examples
    --------
    >>> check_title(r"E for $k = 4$")
    'E for $k = 4$'
    """
    if text is None:
        return None
    bad = sorted({c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0})
    if bad:
        raise click.BadParameter(f"the title contains control characters {''.join(bad)!r}", param_hint=param_hint)
    from matplotlib.cbook import is_math_text

    if is_math_text(text):
        from matplotlib.mathtext import MathTextParser

        try:
            MathTextParser("path").parse(text, dpi=72)
        except Exception as err:  # noqa: BLE001 - pyparsing raises several kinds
            detail = " ".join(str(err).split())[:120]
            raise click.BadParameter(f"{text!r} is not valid mathtext ({detail}); escape dollar signs as \\$",
                                     param_hint=param_hint) from None
    return text


def plain_text(text: Any) -> str:
    r"""Make text that comes from a file (layer names, paths, class names) safe to put into a figure.

    Control characters become ``\xNN`` escapes (they make SVG invalid) and dollar signs are
    escaped so matplotlib does not read them as mathtext.

    Examples
    --------
    >>> plain_text("fc\x01$a$")
    'fc\\x01\\$a\\$'
    """
    out = []
    for c in str(text):
        code = ord(c)
        if code < 32 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000 or code in (0xFFFE, 0xFFFF):
            out.append(f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}")
        elif c == "$":
            out.append(r"\$")
        else:
            out.append(c)
    return "".join(out)
