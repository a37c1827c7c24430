"""Options that say where a model comes from and how its graph is built (analyze, benchmark, export)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import click

__all__ = ["parse_input_shape", "coverage_lines"]


def parse_input_shape(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    """``"3,64,64"`` -> ``(3, 64, 64)``; None -> None; a click error for anything else."""
    if not text:
        return None
    parts = text.replace("x", ",").split(",")  # 3,64,64 or 3x64x64; every part must be a size
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(s < 1 or s > 100_000 for s in shape) or len(shape) > 5:
        raise click.BadParameter(f"{text!r} is not a shape such as 3,64,64 (1 to 5 positive sizes)",
                                 param_hint="--input-shape")
    return shape


def coverage_lines(graph) -> List[str]:
    """The coverage summary of a graph (empty when it was not measured)."""
    coverage = getattr(graph, "coverage", None)
    return coverage.summary_lines() if coverage is not None else []
