"""Every option used in a command's --help examples and in README.md's command lines exists on that command."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from graphinterp.cli.main import COMMANDS, cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _options(name: str) -> set:
    command = cli.get_command(None, name)
    found = {"--help"}
    for param in command.params:
        found.update(o for o in getattr(param, "opts", []) + getattr(param, "secondary_opts", []) if o.startswith("--"))
    if hasattr(command, "commands"):  # a group (plot): its subcommands' options
        for sub in command.commands.values():
            for param in sub.params:
                found.update(o for o in getattr(param, "opts", []) if o.startswith("--"))
    return found


def _example_lines(text: str):
    for line in text.splitlines():
        m = re.match(r"\s*graphinterp (\w+)\b(.*)", line)
        if m and m.group(1) in COMMANDS:
            yield m.group(1), line.split("#")[0]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_examples_use_existing_options(name):
    command = cli.get_command(None, name)
    lines = list(_example_lines(command.help or ""))
    for sub in getattr(command, "commands", {}).values():
        lines += list(_example_lines(sub.help or ""))
    known = _options(name)
    for cmd, line in lines:
        unknown = [o for o in re.findall(r"(?<!\w)--[\w-]+", line) if o not in _options(cmd)]
        assert not unknown, f"{name} --help example uses {unknown}: {line.strip()}"
    assert known


def test_readme_command_lines_use_existing_options():
    for cmd, line in _example_lines(README.read_text()):
        unknown = [o for o in re.findall(r"(?<!\w)--[\w-]+", line) if o not in _options(cmd)]
        assert not unknown, f"README uses {unknown} with graphinterp {cmd}: {line.strip()}"
