"""One entry point from any model source to its graph, used by every command and by the Python API.

A source is an ``nn.Module``; a state_dict; a file (graphinterp checkpoint, bare or wrapped
state_dict, TorchScript, ``.safetensors``, a pickled module with ``trust_pickle``); a HuggingFace
model folder (``config.json`` + weights, through the optional ``transformers`` extra); or a
torchvision architecture name, with a local ``weights`` file or random weights.

:func:`open_model` resolves the source; :func:`model_graph` builds the graph: traced from the module
when there is one (chained, or a :class:`~graphinterp.graph.dag.ModelGraph` for residual and attention
models), else read from the state_dict. The graph's ``coverage`` says what it covers.

The resolved source, :class:`~graphinterp.graph.opened.OpenedModel`, is defined in
:mod:`graphinterp.graph.opened`; the readers of torchvision names, ``.safetensors`` files and
HuggingFace folders are in :mod:`graphinterp.graph.source_readers`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from graphinterp.common.errors import ModelFileError, UnsupportedModelError
from graphinterp.graph.state_graph import CHAIN_GUESS_NOTE, CONV_LAYOUT_NOTE, NORMS_NOTE
from graphinterp.graph.layered import LayeredGraph
from graphinterp.graph.opened import OpenedModel, _cpu_state, _with_known_architecture, opened_from_loaded
from graphinterp.graph.source_readers import (  # noqa: F401 - _fit_weights re-exported, its home before the split
    SAFETENSORS_ORDER_NOTE, _fit_weights, _hf_folder, _read_safetensors, _torchvision, natural_key,
)

__all__ = ["OpenedModel", "open_model", "opened_from_loaded", "model_graph", "load_graph", "graph_structure"]

Source = Union[str, "os.PathLike[str]", nn.Module, Mapping[str, torch.Tensor]]


def open_model(source: Source, *, weights: Optional[str] = None, trust_pickle: bool = False,
               random_state: Optional[int] = 0) -> OpenedModel:
    """Resolve ``source`` (see the module docstring) into an :class:`OpenedModel`.

    Parameters
    ----------
    source : str, os.PathLike, torch.nn.Module or mapping of str to torch.Tensor
        A module, a state_dict, a model file, a HuggingFace model folder or a torchvision architecture name.
    weights : str, optional
        A local weights file for a torchvision architecture name (not for a model file, which holds its own).
    trust_pickle : bool, default False
        Allow unpickling a file that holds a pickled module (can run arbitrary code).
    random_state : int or None, default 0
        Seed of the random initialisation of a torchvision architecture without ``weights`` (None: 0).

    Returns
    -------
    OpenedModel

    Raises
    ------
    ModelFileError
        A missing, unreadable or unsafe file; an HF folder without ``config.json``; a safetensors file
        with missing tensors; ``weights`` given with a model file or missing.
    UnsupportedModelError
        An unknown torchvision name.
    InvalidWeightsError
        ``weights`` that do not fit the torchvision architecture.

    Examples
    --------
    >>> from torch import nn
    >>> opened = open_model(nn.Sequential(nn.Linear(3, 2)))
    >>> opened.kind, list(opened.state_dict)
    ('module', ['0.weight', '0.bias'])
    """
    if isinstance(source, nn.Module):
        return OpenedModel(type(source).__name__, "module", source, _cpu_state(source))  # its train/eval mode untouched
    if isinstance(source, Mapping):
        return _with_known_architecture(OpenedModel("state_dict", "state_dict", None, dict(source)))
    path = Path(source).expanduser()
    if weights is not None and path.exists():
        raise ModelFileError(f"weights {weights} were given for the model file {source}, which holds its own: a weights "
                             "file goes with a torchvision architecture name (e.g. resnet18 --weights FILE)")
    if weights is not None or (not path.exists() and _looks_like_arch(str(source))):
        return _torchvision(str(source), weights, trust_pickle, random_state)
    if path.is_dir():
        return _hf_folder(path)
    if path.suffix == ".safetensors" and path.is_file():
        config = path.parent / "config.json"
        if config.is_file():
            return _hf_folder(path.parent, weights_file=path)
        state = _read_safetensors(path)
        order = sorted(state, key=natural_key)
        note = [] if order == list(state) else [SAFETENSORS_ORDER_NOTE]
        return OpenedModel(path.stem, "safetensors", None, {k: state[k] for k in order}, notes=note, path=str(path))
    from graphinterp.sources.loading import load_model_file

    return opened_from_loaded(load_model_file(path, trust_pickle=trust_pickle))


def _looks_like_arch(name: str) -> bool:
    return os.sep not in name and "." not in name


def model_graph(opened: OpenedModel, *, layerwise: bool = False, fold: bool = True,
                input_shape: Optional[Sequence[int]] = None) -> LayeredGraph:
    """The graph of an opened model: traced from its module, else read from its state_dict.

    ``input_shape`` is the example input a module is traced with; for a state_dict (no module) it
    has no use, and ``opened.notes`` says so rather than dropping it silently.

    Parameters
    ----------
    opened : OpenedModel
        From :func:`open_model`.
    layerwise : bool, default False
        Keep every weight layer as its own bipartite graph (unlinked).
    fold : bool, default True
        Fold normalisation scales into the weights (traced modules); when False, a state_dict's note that
        its normalisation could not be folded is dropped.
    input_shape : sequence of int, optional
        Input shape without the batch dimension, to guide the guess of the example input of a module.

    Returns
    -------
    LayeredGraph
        A :class:`LayeredGraph` or :class:`~graphinterp.graph.dag.ModelGraph`, with ``coverage``.
    """
    if opened.module is not None:
        return LayeredGraph.from_module(opened.module, layerwise=layerwise, fold=fold, input_shape=input_shape)
    try:
        graph = LayeredGraph.from_state_dict(opened.state_dict, layerwise=layerwise)
    except UnsupportedModelError as err:  # name the file: "no layer weight tensor in the state_dict" says not which
        if opened.path and not str(err).startswith(opened.path):
            raise UnsupportedModelError(f"{opened.path}: {err}") from err
        raise
    unused = (f"input shape {tuple(input_shape)} not used: a file without an architecture is read from its tensors, "
              "nothing is traced") if input_shape is not None else None
    if unused and unused not in opened.notes:
        opened.notes.append(unused)
    if graph.chained and len(graph.layers) > 1:
        guesses = [CHAIN_GUESS_NOTE] + ([CONV_LAYOUT_NOTE] if any(l.kind != "linear" for l in graph.layers) else [])
        opened.notes.extend(note for note in guesses if note not in opened.notes)
    if graph.coverage is not None and not fold:  # nothing was asked to be folded: no note that it could not be
        graph.coverage.notes = {k: v for k, v in graph.coverage.notes.items() if not k.startswith(NORMS_NOTE)}
    return graph


def load_graph(source: Source, *, weights: Optional[str] = None, trust_pickle: bool = False,
               layerwise: bool = False, fold: bool = True, input_shape: Optional[Sequence[int]] = None,
               random_state: Optional[int] = 0, unit_norm: bool = False) -> Tuple[OpenedModel, LayeredGraph]:
    """:func:`open_model` then :func:`model_graph`; returns ``(opened, graph)``.

    With ``unit_norm`` the graph's weights are rescaled as Filan et al. rescale them
    (:func:`graphinterp.graph.rescale.unit_norm_rescaled`, a chain only: UnsupportedModelError otherwise)
    and ``opened.notes`` says so.

    Examples
    --------
    >>> opened, graph = load_graph("resnet18")
    >>> type(graph).__name__, graph.coverage.share
    ('ModelGraph', 1.0)
    """
    opened = open_model(source, weights=weights, trust_pickle=trust_pickle, random_state=random_state)
    graph = model_graph(opened, layerwise=layerwise, fold=fold, input_shape=input_shape)
    if graph.coverage is not None:
        graph.coverage.notes.update({n: 1 for n in opened.notes if n.startswith("TorchScript")})
    if unit_norm:
        from graphinterp.graph.rescale import rescaled_with_note

        graph, note = rescaled_with_note(graph, opened.module, fold=fold)
        opened.notes.append(note)
    return opened, graph


def graph_structure(graph: LayeredGraph) -> str:
    """``"chained"``, ``"dag"`` (a :class:`~graphinterp.graph.dag.ModelGraph`) or ``"layerwise"``.

    Parameters
    ----------
    graph : LayeredGraph
        Any graph built by graphinterp.

    Returns
    -------
    str
        ``"chained"`` when ``graph.chained``; ``"dag"`` for a graph with shared nodes; else ``"layerwise"``.
    """
    if graph.chained:
        return "chained"
    return "dag" if hasattr(graph, "src_nodes") else "layerwise"
