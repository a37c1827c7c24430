"""Output paths checked before any work, and what a command left at its outputs when it was interrupted.

The rule for folders, like most Unix tools: an output file's folder must already exist (a typo such
as ``--plot reslts/fig.png`` is an error, not a new folder ``reslts``); an output folder
(``benchmark --out report/``) may be created, but only its last component, in a folder that exists
(``mkdir``, not ``mkdir -p``). Both are checked here and nothing is created before the work is done.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

import click

__all__ = ["FIGURE_SUFFIXES", "check_output_path", "check_output_dir", "record_left_behind", "interrupted_message",
           "note_replaced_outputs"]

#: Keys in ``click.Context.meta`` (shared by a command and the group): what an interrupted command
#: left behind, in its own words, and the outputs it checked with their state before any work.
LEFT_BEHIND = "graphinterp.left_behind"
_OUTPUTS = "graphinterp.outputs"
_LISTED = 3  # written files named in the interrupt message; the rest are counted

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
#: A trained model's checkpoint (torch.save): the usual PyTorch suffixes, or none
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".ckpt", ".bin", ".tar", "")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (symbolic links resolved) lies inside ``folder``."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return False
    return True


def check_output_path(path, *, inputs: Sequence = (), input_dirs: Sequence = (), suffixes: Optional[Sequence[str]] = None,
                      param_hint: Optional[str] = None, note_replaced: bool = True) -> str:
    """Check, before any work, that a file can be written at ``path``; return ``path`` as a string.

    Refused with :class:`click.BadParameter`, in this order:

    * a path that is, or resolves to, one of ``inputs`` (e.g. ``export m.pt m.pt``), or an existing file
      inside one of the folders ``input_dirs`` (``train --out`` onto a file of ``--data-dir``);
    * a suffix not in ``suffixes`` (case-insensitive; e.g. :data:`FIGURE_SUFFIXES`), when given;
    * an existing path that is not a regular file: a folder, a symbolic link, a device, a FIFO;
    * a folder that does not exist (``folder 'reslts' does not exist; create it first or fix the
      path``), a parent that is a file, or a folder in which no file can be created (read-only).

    Nothing is created. An existing file may be replaced; when the command ends, a note says it was
    (:func:`note_replaced_outputs`) unless ``note_replaced`` is False (a command that says so itself).

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
    for source in inputs:
        if source is not None and os.path.lexists(text) and _same_file(p, Path(os.fspath(source))):
            raise click.BadParameter(f"{text} is also an input; writing it would destroy {os.fspath(source)}: "
                                     "choose another output", param_hint=param_hint)
    for folder in input_dirs:
        if folder is not None and os.path.lexists(text) and _inside(p, Path(os.fspath(folder))):
            raise click.BadParameter(f"{text} is a file inside {os.fspath(folder)}, which is read as input; writing it "
                                     "could destroy the data: choose an output outside that folder",
                                     param_hint=param_hint)
    if suffixes is not None:
        allowed = [s.lower() for s in suffixes]
        if p.suffix.lower() not in allowed:
            shown = ", ".join(a or "no suffix" for a in allowed)
            raise click.BadParameter(f"{text!r} has suffix {p.suffix or '(none)'!r}: use one of {shown}",
                                     param_hint=param_hint)
    try:
        check_writable(p, parent_must_exist=True)
    except OutputPathError as err:
        raise click.BadParameter(str(err), param_hint=param_hint) from None
    _declare(p, folder=False, note=note_replaced)
    return text


def check_output_dir(path, *, param_hint: Optional[str] = None, note_stale: bool = True) -> str:
    """Check, before any work, that files can be written into the folder ``path``; return it as a string.

    An existing folder must be writable. A missing one is created later by the writer, but only
    as the last component of the path: its parent must exist and be writable (``mkdir``, not
    ``mkdir -p``). Refused with :class:`click.BadParameter`: an existing non-folder, a missing
    parent (``folder 'x' does not exist; create it first or fix the path``), a parent that is a
    file, a folder in which nothing can be created. Nothing is created here. When the command ends, a note
    names the files the folder held before that it did not rewrite (:func:`note_replaced_outputs`), unless
    ``note_stale`` is False (a command that says so itself).

    Examples
    --------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> os.path.basename(check_output_dir(os.path.join(d, "report")))
    'report'
    """
    from graphinterp import OutputPathError, check_writable

    text = os.fspath(path)
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise click.BadParameter(f"{text} exists and is not a folder", param_hint=param_hint)
    try:  # creating the folder is writing an entry into its parent, under the rule for files
        check_writable(p / ".graphinterp-probe" if p.is_dir() else p, parent_must_exist=True)
    except OutputPathError as err:
        raise click.BadParameter(str(err).replace(os.sep + ".graphinterp-probe", ""), param_hint=param_hint) from None
    _declare(p, folder=True, note=note_stale)
    return text


def record_left_behind(text: str) -> None:
    """Say what the running command leaves behind if it is interrupted now; ``graphinterp`` prints it on Ctrl-C.

    ``text`` follows ``interrupted; `` in the error line (e.g. where a resumable checkpoint is and
    how to resume). Without it, :func:`interrupted_message` names the outputs that were written.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[LEFT_BEHIND] = text


def interrupted_message(ctx: Optional[click.Context], event: str = "interrupted") -> str:
    """The ``error:`` line's text after Ctrl-C: what the command recorded, else the outputs it wrote.

    Every output is written to a temporary file and renamed (:func:`graphinterp.atomic_write`), so
    an interrupted command never leaves a half-written file; but a command with several outputs
    (``benchmark --out``, ``circuits --graphml-dir``) may have written only some. The outputs are the
    paths that :func:`check_output_path` and :func:`check_output_dir` checked, and one counts as
    written when it (or a file in the folder) changed since the check.

    Examples
    --------
    >>> interrupted_message(None)
    'interrupted; no output was written'
    """
    meta = ctx.meta if ctx is not None else {}
    if meta.get(LEFT_BEHIND):
        return f"{event}; {meta[LEFT_BEHIND]}"
    outputs = meta.get(_OUTPUTS, {})
    names = [os.fspath(path) for path in _changed(outputs)]
    if not names:
        existed = any(before for _, before in outputs.values())  # an existing file, or a folder with files
        return f"{event}; no output was written" + (" (existing files are unchanged)" if existed else "")
    return f"{event} after writing {_listed(names)} (each file complete; outputs not named were not written)"


def _state(path: Path):
    """What tells a rewritten file apart (atomic writes replace the inode); None when absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _files_in(folder: Path) -> dict:
    try:
        return {entry: _state(entry) for entry in sorted(folder.iterdir()) if entry.is_file()}
    except OSError:
        return {}


def _declare(path: Path, *, folder: bool, note: bool = True) -> None:
    """Remember the checked output ``path`` (and, for a folder, its files) as it is before any work."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta.setdefault(_OUTPUTS, {})[path] = (folder, _files_in(path) if folder else _state(path))
        if not note:
            ctx.meta.setdefault(_SILENT, set()).add(path)


_SILENT = "graphinterp.outputs_noted"  # declared outputs whose command says itself that it replaces them


def _listed(names: List[str]) -> str:
    return ", ".join(names[:_LISTED]) + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def note_replaced_outputs(ctx: Optional[click.Context]) -> List[str]:
    """After a command has finished: notes (on stderr) on the existing files its outputs replaced (in an output
    folder too), and on the files an output folder held before that the command did not rewrite; returns them.

    A report folder written twice (``benchmark --out report/``) would otherwise mix the figures of two
    runs without a word: the second run's files are named by its models, and the first run's others stay.

    Examples
    --------
    >>> note_replaced_outputs(None)
    []
    """
    meta = ctx.meta if ctx is not None else {}
    silent = meta.get(_SILENT, set())
    notes = []
    for path, (folder, before) in meta.get(_OUTPUTS, {}).items():
        if not folder:
            if before is not None and path not in silent and _state(path) not in (None, before):
                notes.append(f"replaced the existing {os.fspath(path)}")
            continue
        now = _files_in(path)
        if not any(state != before.get(f) for f, state in now.items()):
            continue  # nothing written there
        replaced = [f.name for f, state in now.items() if f in before and state != before[f]]
        if replaced:
            notes.append(f"replaced {len(replaced)} existing file(s) in {os.fspath(path)}: {_listed(replaced)}")
        if path in silent:  # the command names an earlier run's files itself
            continue
        stale = [f.name for f, state in now.items() if f in before and state == before[f]]
        if stale:
            notes.append(f"{os.fspath(path)} also holds {len(stale)} file(s) from before that this run did not write "
                         f"({_listed(stale)}): they are not part of this run's output")
    for text in notes:
        click.echo(f"note: {text}", err=True)
    return notes


def _changed(outputs: dict) -> List[Path]:
    """The declared output files, and files in declared output folders, written since they were declared."""
    changed = []
    for path, (folder, before) in outputs.items():
        if not folder:
            now = _state(path)
            if now is not None and now != before:
                changed.append(path)
            continue
        changed += [f for f, now in _files_in(path).items() if now is not None and now != before.get(f)]
    return changed
