"""Options and output helpers shared by the command modules."""
from __future__ import annotations

import json
from typing import Any, Callable, List, Optional, Sequence

import click

from graphinterp.io import write_json as _write_json

__all__ = [
    "json_option", "seed_option", "device_option", "quiet_option", "trust_pickle_option", "layers_option",
    "parse_layers", "emit_json", "write_json", "format_table",
]


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")(f)


def seed_option(f: Callable) -> Callable:
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed (clustering, sampling).")(f)


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True,
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
