"""Options, argument checks and output helpers shared by the command modules (one import for them all).

They live in :mod:`graphinterp.cli._options` (parameter types, option decorators, argument checks),
:mod:`graphinterp.cli._paths` (output paths) and :mod:`graphinterp.cli._output` (JSON, tables, figure
text); this module re-exports them.

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
:func:`setting_usage_errors`              a --k the model's layers cannot take, or a --layers name it lacks,
                                          found once the graph is built (--k: after the warm-up for train
                                          --similarity gradient)
:func:`check_layers`                      layer names that exist in a graph
:func:`check_output_path`                 an output file that can be written, is not an input, and
                                          has an allowed suffix
:func:`check_output_dir`                  an output folder that can be created or written
:func:`check_title`                       a figure title that matplotlib can render
:func:`plain_text`                        text from a file (layer names, paths) made safe for figures
========================================  ==========================================================
"""
from __future__ import annotations

from graphinterp.cli._options import (
    DEVICE, MAX_RANGE_VALUES, POSITIVE_INT, SEED, NamedPath, SEED_MAX, FiniteFloat, check_device, check_layers, check_seed,
    device_option, given_options, json_option, setting_usage_errors, layers_option, parse_int_ranges, parse_k_values,
    parse_layers,
    quiet_option, seed_option, trust_pickle_option,
)
from graphinterp.cli._output import check_title, emit_json, format_table, plain_text, write_json
from graphinterp.cli._paths import FIGURE_SUFFIXES, check_output_dir, check_output_path

__all__ = [
    "json_option", "seed_option", "device_option", "quiet_option", "trust_pickle_option", "layers_option",
    "parse_layers", "emit_json", "write_json", "format_table", "setting_usage_errors",
    "SEED_MAX", "SEED", "DEVICE", "POSITIVE_INT", "NamedPath", "FiniteFloat", "FIGURE_SUFFIXES", "MAX_RANGE_VALUES", "given_options",
    "check_seed", "check_device", "check_layers", "check_output_path", "check_output_dir", "check_title",
    "parse_int_ranges", "parse_k_values", "plain_text",
]
