"""Entry point of the ``graphinterp`` command: a click group whose commands load lazily.

Ctrl-C ends every command with exit code 130 and one line ``error: interrupted; ...`` saying what it
left behind (:mod:`graphinterp.cli._interrupts` makes sure it is never lost), SIGTERM with exit code 143
and ``error: terminated (SIGTERM); ...``; Python warnings are one line ``warning: ...``.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import List, Optional

import click

from graphinterp import GraphinterpError
from graphinterp.cli._interrupts import command_frame, settle_interrupts, terminated
from graphinterp.cli._paths import interrupted_message, note_replaced_outputs

__all__ = ["cli", "main"]

# command name -> (module under graphinterp.cli defining ``command``, one-line help)
COMMANDS = {
    "analyze": ("analyze", "Cluster each layer with BSGC and report clusterability E per layer."),
    "export": ("export", "Write the clustered layered graph to GraphML (Gephi, Cytoscape, networkx)."),
    "train": ("train", "Train a model for modularity: cross-entropy + lambda * enmeshment loss."),
    "ablate": ("ablate", "Class-wise accuracy with each cluster switched ON and OFF."),
    "circuits": ("circuits", "Extract per-label circuits by edge pruning; Effective Circuit Size."),
    "benchmark": ("benchmark", "Clusterability of many models against k, with a shuffle significance test."),
    "plot": ("plot", "Figures, e.g. a clustered layer drawn as a bipartite graph."),
    "associate": ("associate", "Functional modules: units clustered by association on data, vs the weight clusters."),
}


class _LazyGroup(click.Group):
    """Import each command's module only when it is used (keeps ``--help`` and startup fast)."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"graphinterp.cli.{COMMANDS[name][0]}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])

    def invoke(self, ctx: click.Context):
        try:
            rv = super().invoke(ctx)
            settle_interrupts()  # a Ctrl-C held during the command's last import is not lost
            note_replaced_outputs(ctx)
            return rv
        except GraphinterpError as err:
            _fail(str(err), 1)
        except MemoryError:
            _fail("out of memory; use a smaller input, fewer values or a smaller --batch-size", 1)
        except BrokenPipeError:  # the reader of the output has gone (`... | head`): stop as quietly as a shell tool
            _close_stdout()
            sys.exit(141)  # 128 + SIGPIPE, as a shell reports a pipeline's writer killed by it
        except OSError as err:  # a file that vanished or cannot be read/written outside our checks
            where = f": {err.filename}" if getattr(err, "filename", None) else ""
            _fail(f"{(err.strerror or str(err) or type(err).__name__)}{where}", 1)
        except KeyboardInterrupt:  # what the command left behind: its own note (train), else its outputs
            if terminated():  # SIGTERM: 128 + 15, as a shell reports a process it ended
                _fail(interrupted_message(ctx, "terminated (SIGTERM)"), 143)
            _fail(interrupted_message(ctx), 130)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Like click's, but a usage error is one ``error: ...`` line on stderr (exit code 2), and Ctrl-C
        and warnings are handled by :func:`~graphinterp.cli._interrupts.command_frame` while the command runs."""
        with command_frame():
            return self._main(args, prog_name, complete_var, standalone_mode, **extra)

    def _main(self, args, prog_name, complete_var, standalone_mode, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as err:  # pragma: no cover - returned, not raised, by click 8
            sys.exit(err.exit_code)
        except click.ClickException as err:
            if type(err).__name__ == "NoArgsIsHelpError" and err.ctx is not None:  # click >= 8.2: bare group
                click.echo(err.ctx.get_help())
                sys.exit(err.exit_code)
            hint = ""
            if isinstance(err, click.UsageError) and err.ctx is not None:
                hint = f" (see '{err.ctx.command_path} --help')"
            _fail(f"{err.format_message()}{hint}", err.exit_code)
        except click.Abort as err:
            if isinstance(err.__cause__, KeyboardInterrupt):  # Ctrl-C while click parsed the arguments
                _fail(interrupted_message(None), 130)
            _fail("aborted", 1)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


def _close_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (e.g. click's test runner): nothing to flush
        pass


def _fail(message: str, code: int):
    """Print ``error: <message>`` as one line on stderr and exit with ``code``."""
    text = " ".join(str(message).split()) or "failed"
    click.echo(f"error: {text}", err=True)
    sys.exit(code)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="graphinterp")
def cli() -> None:
    """graphinterp: neural networks as layered graphs.

    Cluster layers with bipartite spectral graph clustering (BSGC), measure clusterability,
    train modular models with the enmeshment loss, ablate clusters and extract per-label circuits.
    Run `graphinterp COMMAND --help` for each command.
    """


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="graphinterp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
