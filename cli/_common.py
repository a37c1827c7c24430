"""Options, argument checks and output helpers shared by the command modules.

Every command checks its arguments here, before any work: a bad value is a
:class:`click.BadParameter` (a usage error), which ``graphinterp`` prints as one ``error: ...`` line
and exit code 2. The checks:

========================================  ==========================================================
``SEED`` / :func:`check_seed`             integer seed in ``0 .. 2**32 - 1``
``DEVICE`` / :func:`check_device`         ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (available), ``mps``
``POSITIVE_INT`` (:class:`click.IntRange`)  integer >= 1 (batch sizes, ``--limit``, budgets)
:class:`FiniteFloat`                      a finite float in a range (NaN and infinities refused)
:func:`parse_int_ranges`                  ``"0,3,5-7"`` with a cap on the number of values
:func:`parse_k_values`                    ``"4"``, ``"2..10"``, ``"2,4,8"`` with a cap on the count
:func:`check_layers`                      layer names that exist in a graph
:func:`check_output_path`                 an output file that can be written, is not an input, and
                                          has an allowed suffix
:func:`check_output_dir`                  an output folder that can be created or written
:func:`check_title`                       a figure title that matplotlib can render
:func:`plain_text`                        text from a file (layer names, paths) made safe for figures
========================================  ==========================================================
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence

import click

from graphinterp import write_json as _write_json

__all__ = [
    "json_option", "seed_option", "device_option", "quiet_option", "trust_pickle_option", "layers_option",
    "parse_layers", "emit_json", "write_json", "format_table",
    "SEED_MAX", "SEED", "DEVICE", "POSITIVE_INT", "FiniteFloat", "FIGURE_SUFFIXES", "MAX_RANGE_VALUES",
    "check_seed", "check_device", "check_layers", "check_output_path", "check_output_dir", "check_title",
    "parse_int_ranges", "parse_k_values", "plain_text",
]

SEED_MAX = 2**32 - 1
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
#: Most values a range argument (``--labels``, ``--neurons``, ``--k``) may expand to.
MAX_RANGE_VALUES = 100_000


# ------------------------------------------------------------------ parameter types
class _SeedType(click.ParamType):
    name = "integer"

    def convert(self, value, param, ctx):
        try:
            return check_seed(value)
        except click.BadParameter as err:
            self.fail(err.message, param, ctx)


class _DeviceType(click.ParamType):
    name = "device"

    def convert(self, value, param, ctx):
        try:
            return check_device(value)
        except click.BadParameter as err:
            self.fail(err.message, param, ctx)


class FiniteFloat(click.ParamType):
    """A float that is finite and lies in ``[low, high]`` (bounds open with ``low_open``/``high_open``).

    Examples
    --------
    >>> FiniteFloat(0, 1, low_open=True).convert("0.5", None, None)
    0.5
    >>> FiniteFloat(0).convert("nan", None, None)
    Traceback (most recent call last):
    ...
    click.exceptions.BadParameter: 'nan' is not a finite number
    """

    name = "float"

    def __init__(self, low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
                 high_open: bool = False) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            x = float(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        too_low = self.low is not None and (x <= self.low if self.low_open else x < self.low)
        too_high = self.high is not None and (x >= self.high if self.high_open else x > self.high)
        if too_low or too_high:
            self.fail(f"{value!r} is not in {self._describe()}", param, ctx)
        return x

    def _describe(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}{')' if self.high_open or self.high is None else ']'}"

    def __repr__(self) -> str:
        return f"FiniteFloat{self._describe()}"


#: An integer seed in 0 .. 2**32 - 1 (what NumPy, scikit-learn and torch all accept).
SEED = _SeedType()
#: A torch device name that exists here: auto, cpu, cuda, cuda:N, mps.
DEVICE = _DeviceType()
#: An integer >= 1.
POSITIVE_INT = click.IntRange(min=1)


# ------------------------------------------------------------------ options
def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")(f)


def seed_option(f: Callable) -> Callable:
    return click.option("--seed", type=SEED, default=0, show_default=True,
                        help=f"Random seed (clustering, sampling), 0..{SEED_MAX}.")(f)


def device_option(f: Callable) -> Callable:
    return click.option("--device", type=DEVICE, default="auto", show_default=True,
                        help="Torch device: auto (CUDA when available), cpu, cuda, cuda:1, ...")(f)


def quiet_option(f: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(f)


def trust_pickle_option(f: Callable) -> Callable:
    return click.option(
        "--trust-pickle", is_flag=True,
        help="Allow loading a fully pickled nn.Module. DANGER: unpickling can run arbitrary code; "
             "use only for files you trust. Without it files load with torch.load(weights_only=True).",
    )(f)


def layers_option(f: Callable) -> Callable:
    return click.option("--layers", default=None, metavar="NAMES",
                        help="Comma-separated layer names (as printed by `analyze`); default: all.")(f)


def parse_layers(text: Optional[str]) -> Optional[List[str]]:
    """``"fc1,fc2"`` -> ``["fc1", "fc2"]``; None or empty -> None."""
    if not text:
        return None
    return [p.strip() for p in text.split(",") if p.strip()]


# ------------------------------------------------------------------ checks
def check_seed(value: Any) -> int:
    """Return ``value`` as an integer seed in ``0 .. 2**32 - 1``; :class:`click.BadParameter` otherwise.

    Examples
    --------
    >>> check_seed("7")
    7
    """
    try:
        if isinstance(value, bool):
            raise ValueError
        seed = int(value) if not isinstance(value, str) else int(value.strip(), 10)
        if isinstance(value, float) and seed != value:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise click.BadParameter(f"{value!r} is not an integer seed", param_hint="--seed") from None
    if not 0 <= seed <= SEED_MAX:
        raise click.BadParameter(f"{seed} is out of range: a seed lies in 0..{SEED_MAX}", param_hint="--seed")
    return seed


def check_device(name: Any) -> str:
    """Return the device name unchanged if torch can compute on it here; :class:`click.BadParameter` otherwise.

    Accepted: ``auto``, ``cpu``, ``cuda`` / ``cuda:N`` when that GPU exists, ``mps`` when available.
    Refused: unknown names and devices that hold no data (``meta``).

    Examples
    --------
    >>> check_device("cpu"), check_device("auto")
    ('cpu', 'auto')
    """
    from graphinterp import resolve_device
    from graphinterp import GraphinterpError

    text = str(name)
    try:
        resolve_device(text)
    except GraphinterpError as err:
        raise click.BadParameter(str(err), param_hint="--device") from None
    return text


def check_layers(graph, names: Optional[Iterable[str]], *, param_hint: str = "--layers") -> Optional[List[str]]:
    """Return ``names`` as a list if every name is a layer of ``graph`` (None stays None).

    Raises :class:`click.BadParameter` naming the unknown layer and listing the graph's layers,
    instead of the ``KeyError`` that ``graph[name]`` raises.
    """
    if names is None:
        return None
    names = list(names)
    known = list(graph.layer_names)
    for name in names:
        if name not in known:
            raise click.BadParameter(f"no layer named {name!r}; the layers are {', '.join(known)}",
                                     param_hint=param_hint)
    if len(set(names)) != len(names):
        raise click.BadParameter(f"a layer is named twice in {','.join(names)}", param_hint=param_hint)
    if not names:
        raise click.BadParameter("no layer named; give comma-separated layer names", param_hint=param_hint)
    return names


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


def parse_int_ranges(text: str, *, param_hint: str, example: str = "0,3,5-7", min_value: int = 0,
                     max_values: int = MAX_RANGE_VALUES) -> List[int]:
    """Parse ``"1,3,5-7"`` into ``[1, 3, 5, 6, 7]``, refusing huge or empty ranges before expanding them.

    Raises :class:`click.BadParameter` for garbage, a value below ``min_value``, a reversed range
    (``7-5``), nothing at all, or more than ``max_values`` values in total.

    Examples
    --------
    >>> parse_int_ranges("1,3-4", param_hint="--labels")
    [1, 3, 4]
    """
    def fail(why: str):
        raise click.BadParameter(f"{text!r}: {why}; use indices such as {example}", param_hint=param_hint)

    parts: List[range] = []
    total = 0
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        lo, dash, hi = part.partition("-")
        try:
            a = int(lo.strip(), 10)
            b = int(hi.strip(), 10) if dash else a
        except ValueError:
            fail(f"{part!r} is not an index or a range A-B")
        if a < min_value:
            fail(f"{a} is below {min_value}")
        if b < a:
            fail(f"{part!r} is an empty range")
        total += b - a + 1
        if total > max_values:
            fail(f"more than {max_values:,} values")
        parts.append(range(a, b + 1))
    if not parts:
        fail("no index given")
    return [i for r in parts for i in r]


def parse_k_values(text: str, *, param_hint: str = "--k", max_values: int = 1000) -> List[int]:
    """Parse ``"4"``, ``"2..10"`` or ``"2,4,8"`` into k values (each >= 2), at most ``max_values`` of them.

    Like :func:`graphinterp.clustering.cluster.parse_k_range`, but a huge range (``2..1000000000000``) is
    refused before it is expanded, and errors are :class:`click.BadParameter`.

    Examples
    --------
    >>> parse_k_values("2..5"), parse_k_values("3,6")
    ([2, 3, 4, 5], [3, 6])
    """
    def fail(why: str):
        raise click.BadParameter(f"{text!r}: {why}; use 4, 2..10 or 2,4,8", param_hint=param_hint)

    text = str(text)
    try:
        if ".." in text:
            lo_s, hi_s = text.split("..")
            lo, hi = int(lo_s.strip(), 10), int(hi_s.strip(), 10)
            if hi < lo:
                fail("the range is empty")
            if hi - lo + 1 > max_values:
                fail(f"more than {max_values} values of k")
            ks = list(range(lo, hi + 1))
        else:
            ks = [int(p.strip(), 10) for p in text.split(",") if p.strip()]
    except ValueError:
        fail("not a number of clusters")
    if not ks:
        fail("no k given")
    if len(ks) > max_values:
        fail(f"more than {max_values} values of k")
    if min(ks) < 2:
        fail("k must be at least 2")
    return ks


# ------------------------------------------------------------------ output
def emit_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout."""
    click.echo(json.dumps(obj, indent=2, default=_jsonable))


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON atomically."""
    _write_json(path, obj)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned plain-text table; floats printed with 3 decimals."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
