"""How a command is given a model and how its graph is built: one declaration for analyze, export and plot layer.

A command takes its model as the ``MODEL`` argument (:func:`model_argument`) and the options that say
how to read it (:func:`model_source_options`: ``--weights``, ``--no-fold``, ``--input-shape``,
``--trust-pickle``). The options reach the command as one :class:`SourceOptions` whose
:meth:`SourceOptions.load` opens the model with :func:`graphinterp.load_graph`, so every command accepts
the same sources: graphinterp checkpoints, bare state_dicts, TorchScript, ``.safetensors``,
HuggingFace folders, torchvision names (random weights, or ``--weights FILE``) and, with
``--trust-pickle``, pickled modules. ``benchmark`` pairs ``--arch`` with ``--weights`` for several
models and declares its own.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import click

from graphinterp.cli._options import NamedPath, trust_pickle_option

__all__ = [
    "SourceOptions", "model_argument", "model_source_options", "layerwise_option", "parse_input_shape",
    "coverage_lines", "note_lines", "check_unit_norm",
]


@dataclass(frozen=True)
class SourceOptions:
    """The shared model-source options of a command, read from its command line.

    Attributes
    ----------
    weights : str or None
        Weights file for a MODEL given as a torchvision architecture name (``--weights``).
    fold : bool
        Fold normalisation (BatchNorm scale, LayerNorm/RMSNorm gains, layer_scale) into the weights
        (False with ``--no-fold``).
    input_shape : tuple of int or None
        Shape of one input without the batch dimension, for tracing (``--input-shape``).
    trust_pickle : bool
        Allow a fully pickled ``nn.Module`` (``--trust-pickle``).
    unit_norm : bool
        Rescale a chain's weights as Filan et al. do (``--unit-norm``).

    Examples
    --------
    >>> SourceOptions(weights="w.pth").inputs
    ('w.pth',)
    """

    weights: Optional[str] = None
    fold: bool = True
    input_shape: Optional[Tuple[int, ...]] = None
    trust_pickle: bool = False
    unit_norm: bool = False

    @property
    def inputs(self) -> Tuple[str, ...]:
        """Files read besides MODEL (an output must not overwrite them)."""
        return (self.weights,) if self.weights else ()

    def load(self, model: str, *, layerwise: bool = False, random_state: int = 0):
        """Open ``model`` and build its graph with :func:`graphinterp.load_graph`; ``(opened, graph)``.

        Parameters
        ----------
        model : str
            The MODEL argument: a file, a HuggingFace folder or a torchvision name.
        layerwise : bool
            Every weight layer as its own bipartite graph (``--layerwise``).
        random_state : int
            Seed of a torchvision architecture's random weights (the command's ``--seed``, as ``benchmark``
            uses it, so that the commands agree on one model).

        Raises
        ------
        GraphinterpError
            A missing, unreadable or unsafe file, an unknown architecture, weights that do not fit
            (printed by ``graphinterp`` as one ``error:`` line, exit code 1).
        """
        check_unit_norm(self.unit_norm, layerwise)
        from graphinterp import load_graph

        return load_graph(model, trust_pickle=self.trust_pickle, layerwise=layerwise, weights=self.weights,
                          fold=self.fold, input_shape=self.input_shape, random_state=random_state,
                          unit_norm=self.unit_norm)


def model_argument(f: Callable) -> Callable:
    """The ``MODEL`` argument: a file, a HuggingFace folder or a torchvision name (read by :meth:`SourceOptions.load`)."""
    return click.argument("model", type=NamedPath(), metavar="MODEL")(f)


def model_source_options(f: Callable) -> Callable:
    """Add ``--weights``, ``--no-fold``, ``--input-shape``, ``--trust-pickle`` and ``--unit-norm``; pass them as ``source``.

    The decorated command receives one keyword argument ``source`` (a :class:`SourceOptions`) instead
    of the five option values. ``--input-shape`` is parsed (a usage error when malformed) before
    the command runs.
    """

    @functools.wraps(f)
    def command(*args, weights: Optional[str], no_fold: bool, input_shape: Optional[str], trust_pickle: bool,
                unit_norm: bool, **kwargs):
        source = SourceOptions(weights=weights, fold=not no_fold, input_shape=parse_input_shape(input_shape),
                               trust_pickle=trust_pickle, unit_norm=unit_norm)
        return f(*args, source=source, **kwargs)

    options = [
        click.option("--weights", default=None, type=NamedPath(dir_okay=False), metavar="FILE",
                     help="Weights file for MODEL given as a torchvision architecture name (e.g. resnet18); "
                          "without it a torchvision name has random weights."),
        click.option("--no-fold", "no_fold", is_flag=True,
                     help="Do not fold normalisation (BatchNorm scale, LayerNorm/RMSNorm gains, layer_scale) "
                          "into weights."),
        click.option("--input-shape", default=None, metavar="C,H,W",
                     help="Shape of one input without the batch dimension, when it cannot be guessed (e.g. 3,64,64)."),
        trust_pickle_option,
        click.option("--unit-norm", "unit_norm", is_flag=True,
                     help="Rescale the weights as Filan et al. do: every hidden unit's incoming weights to unit norm, "
                          "the factor pushed into its outgoing weights (the same function through ReLU-like "
                          "activations: a note says when the model's modules break that). A chain only (an error "
                          "for a residual or attention model)."),
    ]
    for option in reversed(options):  # --help lists them in the order above
        command = option(command)
    return command


def layerwise_option(f: Callable) -> Callable:
    """The ``--layerwise`` flag: every weight layer as its own bipartite graph."""
    return click.option("--layerwise", is_flag=True,
                        help="Treat every weight layer as its own bipartite graph (unlinked). By default a module is "
                             "traced into its graph: a chain, or a DAG for residual / attention models.")(f)


def check_unit_norm(unit_norm: bool, layerwise: bool) -> None:
    """The one rule for ``--unit-norm`` with ``--layerwise``: a usage error (the rescaling links the layers)."""
    if unit_norm and layerwise:
        raise click.BadParameter("Filan et al.'s rescaling pushes each unit's scale into the next layer, and with "
                                 "--layerwise the layers are not linked: give one or the other", param_hint="--unit-norm")


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


def note_lines(opened) -> List[str]:
    """``note: ...`` lines for what opening the model found (random weights, a recognised architecture,
    ignored tensors); the TorchScript note is left out, it is among the coverage lines."""
    return [f"note: {note}" for note in opened.notes if not note.startswith("TorchScript")]
