"""Output paths checked before any work: a file that can be written and is not an input, a folder that can be filled."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import click

__all__ = ["FIGURE_SUFFIXES", "check_output_path", "check_output_dir"]

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(path, *, inputs: Sequence = (), suffixes: Optional[Sequence[str]] = None,
                      param_hint: Optional[str] = None) -> str:
    """Check, before any work, that a file can be written at ``path``; return ``path`` as a string.

    Refused with :class:`click.BadParameter`:

    * a suffix not in ``suffixes`` (case-insensitive; e.g. :data:`FIGURE_SUFFIXES`), when given;
    * a path that is, or resolves to, one of ``inputs`` (e.g. ``export m.pt m.pt``);
    * an existing path that is not a regular file: a folder, a symbolic link, a device, a FIFO;
    * a parent that is a file, or a folder in which no file can be created (read-only).

    Nothing is created: missing parent folders are made later by the writer.

    Examples
    --------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> os.path.basename(check_output_path(os.path.join(d, "fig.png"), suffixes=FIGURE_SUFFIXES))
    'fig.png'
    """
    from graphinterp import OutputPathError, check_writable

    text = os.fspath(path)
    p = Path(text)
    if not text or text.endswith(("/", os.sep)):
        raise click.BadParameter(f"{text!r} is not a file name", param_hint=param_hint)
    if suffixes is not None:
        allowed = [s.lower() for s in suffixes]
        if p.suffix.lower() not in allowed:
            raise click.BadParameter(f"{text!r} has suffix {p.suffix or '(none)'!r}: use one of {', '.join(allowed)}",
                                     param_hint=param_hint)
    for source in inputs:
        if source is not None and os.path.lexists(text) and _same_file(p, Path(os.fspath(source))):
            raise click.BadParameter(f"{text} is also an input; writing it would destroy {os.fspath(source)}: "
                                     "choose another output", param_hint=param_hint)
    try:
        check_writable(p)
    except OutputPathError as err:
        raise click.BadParameter(str(err), param_hint=param_hint) from None
    return text


def check_output_dir(path, *, param_hint: Optional[str] = None) -> str:
    """Check, before any work, that files can be written into the folder ``path`` (created later if missing).

    Refused with :class:`click.BadParameter`: an existing non-folder, a parent that is a file, a
    folder (or nearest existing ancestor) in which nothing can be created.
    """
    from graphinterp import OutputPathError, check_writable

    text = os.fspath(path)
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise click.BadParameter(f"{text} exists and is not a folder", param_hint=param_hint)
    try:
        check_writable(p / ".graphinterp-probe")
    except OutputPathError as err:
        raise click.BadParameter(str(err).replace(os.sep + ".graphinterp-probe", ""), param_hint=param_hint) from None
    return text
