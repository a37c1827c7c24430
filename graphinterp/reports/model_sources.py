"""What a clusterability benchmark reads: a model source (a file, a torchvision architecture with
local weights, or one with random weights) and its graph, with the chained-then-layerwise fallback
in one place."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from graphinterp.common.errors import UnsupportedModelError
from graphinterp.graph.layered import LayeredGraph

__all__ = ["ModelSource", "graph_with_fallback", "load_source"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model to benchmark comes from.

    Exactly one of: ``path`` (a model file read by :func:`graphinterp.sources.loading.load_model_file`);
    ``arch`` with ``weights`` (a torchvision architecture and a local weights file); ``arch`` alone
    (that architecture with random weights, seeded, as a reference).

    Parameters
    ----------
    path : str, optional
        A model file.
    arch : str, optional
        A torchvision architecture name.
    weights : str, optional
        A local weights file for ``arch``.
    name : str, optional
        Display name (:attr:`label`); default the file's stem or the architecture.

    Raises
    ------
    UnsupportedModelError
        Both or neither of ``path`` and ``arch`` given, or ``weights`` without ``arch``.

    Examples
    --------
    >>> ModelSource(arch="resnet18").label, ModelSource(path="runs/modular.pt").label
    ('resnet18 (random)', 'modular')
    """

    path: Optional[str] = None
    arch: Optional[str] = None
    weights: Optional[str] = None
    name: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.arch is None) or (self.weights is not None and self.arch is None):
            raise UnsupportedModelError("a model source is a file path, or a torchvision arch with optional weights")

    @property
    def kind(self) -> str:
        """``"file"``, ``"torchvision"`` or ``"random"``."""
        return "file" if self.path else ("torchvision" if self.weights else "random")

    @property
    def label(self) -> str:
        """Display name: ``name``, else the file's stem or the architecture."""
        if self.name:
            return self.name
        if self.path:
            return Path(self.path).stem
        return f"{self.arch}:{Path(self.weights).stem}" if self.weights else f"{self.arch} (random)"


def graph_with_fallback(loaded, *, layerwise: bool = False) -> Tuple[LayeredGraph, str, List[str]]:
    """Graph of a :class:`graphinterp.sources.loading.LoadedModel`: ``(graph, structure, notes)``.

    ``structure`` is ``"chained"``, ``"dag"`` or ``"layerwise"``; the notes give the coverage,
    what was folded, and why a state_dict was read layer by layer.

    Parameters
    ----------
    loaded : LoadedModel
        What :func:`graphinterp.sources.loading.load_model_file` read.
    layerwise : bool, default False
        Keep every weight layer as its own bipartite graph.

    Returns
    -------
    graph : LayeredGraph
    structure : str
    notes : list of str
    """
    from graphinterp.graph.opened import opened_from_loaded

    return _graph_of(opened_from_loaded(loaded), layerwise)


def load_source(source: ModelSource, *, trust_pickle: bool = False, layerwise: bool = False,
                random_state: Optional[int] = 0, unit_norm: bool = False) -> Tuple[LayeredGraph, str, List[str]]:
    """Open a source with :func:`graphinterp.graph.load.open_model` and build its graph: ``(graph, structure, notes)``.

    With ``unit_norm`` a chain's weights are rescaled as Filan et al. rescale them
    (:func:`graphinterp.graph.rescale.rescaled_with_note`); any other graph is kept as it is; a note says which.

    Raises
    ------
    ModelFileError, UnsupportedModelError, InvalidWeightsError
        Missing or unreadable file, unknown architecture, weights that do not fit it.
    """
    from graphinterp.graph.load import open_model

    spec = source.path if source.kind == "file" else source.arch
    opened = open_model(spec, weights=source.weights, trust_pickle=trust_pickle, random_state=random_state)
    graph, structure, notes = _graph_of(opened, layerwise)
    if unit_norm:
        from graphinterp.graph.rescale import rescaled_with_note

        try:
            graph, note = rescaled_with_note(graph, opened.module)
        except UnsupportedModelError as err:
            note = f"weights not rescaled to unit incoming norms: {err}; analysed as they are"
        notes.append(note)
    return graph, structure, notes


def _graph_of(opened, layerwise: bool) -> Tuple[LayeredGraph, str, List[str]]:
    """The chained-then-layerwise fallback, once: an opened model's graph (chained when the model is a
    chain, a DAG, or layer by layer), its structure and the notes saying why and what is covered."""
    from graphinterp.graph.load import graph_structure, model_graph

    graph = model_graph(opened, layerwise=layerwise)
    notes = list(opened.notes)
    if graph.coverage is not None:
        notes += graph.coverage.summary_lines()
    return graph, graph_structure(graph), notes
