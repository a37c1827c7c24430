"""Running ``graphinterp`` in-process and checking its failures: one helper for every CLI test module."""
from __future__ import annotations

import inspect
from typing import Optional

from click.testing import CliRunner, Result

from graphinterp.cli.main import cli


def invoke(*args) -> Result:
    """Run ``graphinterp ARGS`` in-process with stdout and stderr kept apart."""
    kwargs = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}
    return CliRunner(**kwargs).invoke(cli, [str(a) for a in args])


def one_error(res: Result, code: Optional[int] = None) -> str:
    """Assert a clean failure (non-zero exit, ``code`` if given, exactly one ``error:`` line on stderr, no
    traceback) and return that line."""
    assert res.exit_code != 0, res.output
    if code is not None:
        assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def usage_error(res: Result) -> str:
    """The one ``error:`` line of a usage error (exit code 2), less the ``(see '... --help')`` hint that
    graphinterp's entry point adds (in-process click names the program ``cli``)."""
    import re

    line = one_error(res, 2)
    match = re.fullmatch(r"error: (.*) \(see '[^']+ --help'\)", line)
    assert match, line
    return match.group(1)
