"""Click parameter types, option decorators and argument checks shared by the command modules.

Every check runs before any work (the one exception: :func:`setting_usage_errors`, which wraps the work
that finds a --k the model's layers cannot take) and raises :class:`click.BadParameter` (a usage error: one
``error: ...`` line, exit code 2). The parsers wrap the library's (``graphinterp.parse_int_ranges``,
``graphinterp.parse_k_values``), adding the option's name and an example to the reason.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator, List, Optional

import click

from graphinterp import KTooLargeError, MAX_RANGE_VALUES, UnknownLayerError
from graphinterp import comma_parts
from graphinterp import parse_int_ranges as _parse_int_ranges
from graphinterp import parse_k_values as _parse_k_values

__all__ = [
    "json_option", "seed_option", "device_option", "quiet_option", "trust_pickle_option", "layers_option",
    "parse_layers", "SEED_MAX", "SEED", "DEVICE", "POSITIVE_INT", "FiniteFloat", "MAX_RANGE_VALUES",
    "check_seed", "check_device", "check_layers", "parse_int_ranges", "parse_k_values", "given_options",
]

SEED_MAX = 2**32 - 1


# ------------------------------------------------------------------ parameter types
class _CheckedType(click.ParamType):
    """A parameter type whose conversion is a ``check`` function raising :class:`click.BadParameter`."""

    def __init__(self, name: str, check: Callable[[Any], Any]) -> None:
        self.name, self._check = name, check

    def convert(self, value, param, ctx):
        try:
            return self._check(value)
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
SEED = _CheckedType("integer", lambda value: check_seed(value))
#: A torch device name that exists here: auto, cpu, cuda, cuda:N, mps.
DEVICE = _CheckedType("device", lambda value: check_device(value))
#: An integer >= 1.
POSITIVE_INT = click.IntRange(min=1)


class NamedPath(click.Path):
    """``click.Path`` that refuses an empty name, the type of every path parameter of the CLI: ``--plot ""`` was taken
    as no --plot (no figure, exit 0), an empty MODEL as the current folder, and ``benchmark --out ""`` failed only
    after the whole benchmark.

    Examples
    --------
    >>> NamedPath(dir_okay=False).convert("", None, None)
    Traceback (most recent call last):
    ...
    click.exceptions.BadParameter: the name is empty; give a path
    """

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            optional = isinstance(param, click.Option) and not param.required
            self.fail("the name is empty; " + ("give a path or leave the option out" if optional else
                                               "give the model's path or name" if getattr(param, "name", "") == "model"
                                               else "give a path"), param, ctx)
        return super().convert(value, param, ctx)


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
    return click.option("--quiet", "-q", is_flag=True,
                        help="No progress bars or progress lines. Results, coverage lines, notes, warnings and "
                             "errors are still printed.")(f)


def trust_pickle_option(f: Callable) -> Callable:
    return click.option(
        "--trust-pickle", is_flag=True,
        help="Allow loading files that run code when loaded: a fully pickled nn.Module or a TorchScript archive. "
             "DANGER: their code can do anything (write files, ...); use only for files you trust. Without it "
             "files load with torch.load(weights_only=True).",
    )(f)


def layers_option(f: Callable) -> Callable:
    return click.option("--layers", default=None, metavar="NAMES",
                        help="Comma-separated layer names (as printed by `analyze`); default: all.")(f)


def parse_layers(text: Optional[str]) -> Optional[List[str]]:
    """``"fc1,fc2"`` -> ``["fc1", "fc2"]``; None (option not given) -> None; no name at all (``--layers ""``,
    which silently meant the default layers, or ``","``) is a usage error."""
    if text is None:
        return None
    try:
        names = comma_parts(text)
    except ValueError as err:
        raise click.BadParameter(f"{text!r}: {err}; give comma-separated layer names", param_hint="--layers") from None
    if not names:
        raise click.BadParameter("no layer named; give comma-separated layer names", param_hint="--layers")
    return names


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
        if isinstance(value, str) and not value.strip().isascii():  # int() reads other scripts' digits
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


def parse_int_ranges(text: str, *, param_hint: str, example: str = "0,3,5-7", min_value: int = 0,
                     max_values: int = MAX_RANGE_VALUES) -> List[int]:
    """Parse ``"1,3,5-7"`` into ``[1, 3, 5, 6, 7]`` (:func:`graphinterp.parse_int_ranges`), as a usage error.

    Raises :class:`click.BadParameter` for garbage, a value below ``min_value``, a reversed range
    (``7-5``), nothing at all, or more than ``max_values`` values in total.

    Examples
    --------
    >>> parse_int_ranges("1,3-4", param_hint="--labels")
    [1, 3, 4]
    """
    try:
        return _parse_int_ranges(text, min_value=min_value, max_values=max_values)
    except ValueError as err:
        raise click.BadParameter(f"{text!r}: {err}; use indices such as {example}", param_hint=param_hint) from None


def parse_k_values(text: str, *, param_hint: str = "--k", max_values: int = 1000) -> List[int]:
    """Parse ``"4"``, ``"2..10"`` or ``"2,4,8"`` into k values (:func:`graphinterp.parse_k_values`), as a usage error.

    A huge range (``2..1000000000000``) is refused before it is expanded.

    Examples
    --------
    >>> parse_k_values("2..5"), parse_k_values("3,6")
    ([2, 3, 4, 5], [3, 6])
    """
    try:
        return _parse_k_values(text, max_values=max_values)
    except ValueError as err:
        raise click.BadParameter(f"{text!r}: {err}; use 4, 2..10 or 2,4,8", param_hint=param_hint) from None


def given_options(ctx: click.Context, names: Iterable[str]) -> List[str]:
    """Which of the parameters ``names`` the user gave (command line or environment), not left at their defaults."""
    from click.core import ParameterSource

    return [n for n in names if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)]


def refuse_given(ctx: Optional[click.Context], names: Iterable[str], context: str, instead: str = "") -> None:
    """Refuse the options ``names`` that the user gave where they do not apply (defaults are never refused).

    Raises
    ------
    click.UsageError
        ``--a and --b do not apply {context}; leave them out[, or {instead}]``, naming every such option given.
    """
    given = given_options(ctx, names) if ctx is not None else []
    if given:
        flags = " and ".join("--" + name.replace("_", "-") for name in given)
        verb, them = ("do", "them") if len(given) > 1 else ("does", "it")
        raise click.UsageError(f"{flags} {verb} not apply {context}; leave {them} out" + (f", or {instead}" if instead
                                                                                          else ""))


@contextlib.contextmanager
def setting_usage_errors() -> Iterator[None]:
    """A k that the model's layers cannot take (:class:`graphinterp.KTooLargeError`) or a layer name it does not have
    (:class:`graphinterp.UnknownLayerError`), found once the graph is built, raised in the block becomes a bad
    ``--k`` or ``--layers``: exit code 2, as for any bad argument; a model that no k fits (all-zero or
    block-diagonal layers) stays a :class:`graphinterp.ClusteringError` (exit code 1)."""
    try:
        yield
    except KTooLargeError as err:
        raise click.BadParameter(str(err), param_hint="--k") from None
    except UnknownLayerError as err:
        raise click.BadParameter(str(err), param_hint="--layers") from None
