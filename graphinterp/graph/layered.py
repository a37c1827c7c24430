"""The layered weighted graph of a network: neurons/channels as nodes, weights as edges."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from graphinterp.common.errors import UnsupportedModelError
from graphinterp.graph.layer import Layer
from graphinterp.graph.networkx_view import to_networkx

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx

__all__ = ["LayeredGraph", "Layer", "layered_graph"]


class LayeredGraph:
    """A stack of weight layers seen as one layered graph.

    When ``chained`` is true, layer ``l``'s output nodes are layer ``l + 1``'s input nodes (in the
    ``"grouped"`` view), so the graph has ``len(layers) + 1`` levels of nodes: level 0 is the model
    input, level ``l + 1`` the outputs of layer ``l``. When false (layer-by-layer analysis of, e.g.,
    a residual network) every layer is its own bipartite graph.

    Weights stay as tensors, one per layer; :meth:`to_networkx` builds a ``networkx.DiGraph`` only
    when asked.

    Parameters
    ----------
    layers : sequence of Layer
        The weight layers in forward order; at least one, with unique names.
    chained : bool, default True
        Whether each layer reads the previous one's outputs (checked: output and grouped input counts
        must match).

    Raises
    ------
    UnsupportedModelError
        No layer, duplicate names, or (when ``chained``) layers whose sizes do not chain.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    >>> g = LayeredGraph.from_module(model)
    >>> [layer.name for layer in g], g.level_sizes()
    (['0', '2'], [4, 3, 2])
    >>> G = g.to_networkx()
    >>> G.number_of_nodes(), G.number_of_edges()
    (9, 18)
    """

    def __init__(self, layers: Sequence[Layer], *, chained: bool = True) -> None:
        layers = tuple(layers)
        if not layers:
            raise UnsupportedModelError("a layered graph needs at least one Linear or Conv2d layer")
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise UnsupportedModelError(f"layer names must be unique, got {names}")
        if chained:
            for a, b in zip(layers, layers[1:]):
                if a.n_out != b.n_in("grouped"):
                    raise UnsupportedModelError(
                        f"layer {b.name!r} has {b.n_in()} input nodes but {a.name!r} has {a.n_out} outputs"
                    )
        self.layers = layers
        self.chained = bool(chained)
        self.coverage = None  # a graphinterp.graph.coverage.Coverage when the builder measured it

    # ------------------------------------------------------------ builders
    @classmethod
    def from_module(
        cls, module: nn.Module, *, input_shape: Optional[Sequence[int]] = None, layerwise: bool = False,
        fold: bool = True, example=None,
    ) -> "LayeredGraph":
        """Build from an ``nn.Module`` by tracing one forward pass (see :mod:`graphinterp.graph.model_trace`).

        A chain of layers gives a chained ``LayeredGraph``; residual streams, concatenations,
        branches and attention give a :class:`~graphinterp.graph.dag.ModelGraph`. ``fold`` folds
        normalisation scales into the weights. ``layerwise=True`` keeps every weight layer as its
        own bipartite graph (the traced layers, unlinked).

        Parameters
        ----------
        module : torch.nn.Module
            The model to trace.
        input_shape : sequence of int, optional
            Input shape without the batch dimension, to guide the guess of an example input.
        layerwise : bool, default False
            Return an unchained graph of the traced layers (the coverage is kept).
        fold : bool, default True
            Fold normalisation scales (BatchNorm, LayerNorm / RMSNorm gains) into the weights.
        example : tensor or tuple or dict, optional
            One example input batch (keyword arguments as a dict); guessed when omitted.

        Returns
        -------
        LayeredGraph or ModelGraph
            With ``coverage`` set.
        """
        from graphinterp.graph.model_trace import trace_graph

        graph = trace_graph(module, example=example, input_shape=input_shape, fold=fold)
        if layerwise:
            coverage = getattr(graph, "coverage", None)
            graph = LayeredGraph(graph.layers, chained=False)
            graph.coverage = coverage
        return graph

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], *, layerwise: bool = False) -> "LayeredGraph":
        """Build from a bare state_dict; layer order and chaining come from key order and shapes.

        Names that look like residual blocks, or shapes that do not chain, give a layer-by-layer
        graph; ``graph.coverage`` says why, and lists tensors that are not layers (embeddings,
        recurrent weights) with the reason (see :mod:`graphinterp.graph.state_graph`).

        Parameters
        ----------
        state_dict : mapping of str to torch.Tensor
            Parameter name to tensor, in the model's order.
        layerwise : bool, default False
            Build a layer-by-layer graph even when the layers would chain.

        Returns
        -------
        LayeredGraph
            With ``coverage`` set.
        """
        from graphinterp.graph.state_graph import graph_layers_from_state_dict

        layers, chained, coverage = graph_layers_from_state_dict(state_dict, layerwise=layerwise)
        graph = cls(layers, chained=chained)
        graph.coverage = coverage
        return graph

    # ------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, key: Union[int, str]) -> Layer:
        if isinstance(key, str):
            return self.layers[self.index(key)]
        return self.layers[key]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{l.name}:{l.n_in()}x{l.n_out}" for l in self.layers)
        return f"LayeredGraph([{shapes}], chained={self.chained})"

    @property
    def layer_names(self) -> List[str]:
        """Layer names in forward order."""
        return [layer.name for layer in self.layers]

    def index(self, name: str) -> int:
        """Position of the layer called ``name``.

        Parameters
        ----------
        name : str
            A layer name.

        Returns
        -------
        int
            Its index in ``layers``.

        Raises
        ------
        KeyError
            No layer is called ``name`` (the message lists the layer names).
        """
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise KeyError(f"no layer named {name!r}; layers are {self.layer_names}")

    def level_sizes(self, view: str = "grouped") -> List[int]:
        """Number of nodes at each level (chained graphs only).

        Parameters
        ----------
        view : {"grouped", "fine"}, default "grouped"
            The view of the input level (see :meth:`Layer.n_in`); later levels are output nodes.

        Returns
        -------
        list of int
            ``len(layers) + 1`` sizes, the input level first.

        Raises
        ------
        UnsupportedModelError
            The graph is not chained.
        """
        self._need_chain("level_sizes")
        return [self.layers[0].n_in(view)] + [layer.n_out for layer in self.layers]

    def level_names(self) -> List[str]:
        """Name of each node level: ``"input"`` then the layer that produces it."""
        self._need_chain("level_names")
        return ["input"] + self.layer_names

    def select(self, names: Optional[Sequence[str]]) -> "LayeredGraph":
        """Sub-graph of the named layers (all when ``names`` is None); chained if they are consecutive.

        Parameters
        ----------
        names : sequence of str or None
            Layers to keep; they are kept in forward order, whatever the order given.

        Returns
        -------
        LayeredGraph
            ``self`` when ``names`` is None; else a new graph (without ``coverage``).

        Raises
        ------
        KeyError
            A name that is not a layer of the graph.
        """
        if names is None:
            return self
        idx = sorted({self.index(n) for n in names})
        consecutive = self.chained and idx == list(range(idx[0], idx[-1] + 1))
        return LayeredGraph([self.layers[i] for i in idx], chained=consecutive)

    def num_params(self, *, unique: bool = False) -> int:
        """Total number of weights over all layers (edges); with ``unique``, a weight tensor applied by several
        layers (tied weights, a module called twice) counts once, as coverage counts it.

        Parameters
        ----------
        unique : bool, default False

        Returns
        -------
        int
        """
        if not unique:
            return sum(layer.num_params for layer in self.layers)
        per_tensor: dict = {}  # parameter -> {rows: weights}; the row slices of one (a fused in_proj) are its parts
        for layer in self.layers:
            per_tensor.setdefault(layer.param_name, {}).setdefault(layer.rows, layer.num_params)
        # a parameter applied whole (as well) counts whole, else its distinct slices
        return sum(parts[None] if None in parts else sum(parts.values()) for parts in per_tensor.values())

    def _need_chain(self, what: str) -> None:
        if not self.chained:
            kind = ("a DAG (a residual stream, attention or branches join its layers)" if hasattr(self, "src_nodes")
                    else "layer by layer (its layers are not linked)")
            raise UnsupportedModelError(f"{what} needs a chained graph (each layer reading the previous one's outputs); "
                                        f"this one is {kind}")

    # ------------------------------------------------------------ networkx
    def to_networkx(self, clustering=None, *, view: str = "grouped", min_abs_weight: float = 0.0,
                    network=None, progress: bool = False) -> "nx.DiGraph":
        """The graph as a ``networkx.DiGraph`` with cluster labels on nodes and edges.

        :func:`graphinterp.graph.networkx_view.to_networkx` of this graph (the parameters, node, edge and
        graph attributes are documented there).

        Examples
        --------
        >>> from torch import nn
        >>> g = LayeredGraph.from_module(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)))
        >>> G = g.to_networkx()
        >>> G.number_of_nodes(), G.number_of_edges(), G.nodes["input:2"]["level"], G.edges["input:2", "0:1"]["layer"]
        (7, 10, 0, '0')
        """
        return to_networkx(self, clustering, view=view, min_abs_weight=min_abs_weight, network=network,
                           progress=progress)


def layered_graph(model: Union[nn.Module, Mapping[str, torch.Tensor]], **kwargs) -> LayeredGraph:
    """Build a :class:`LayeredGraph` from an ``nn.Module`` or a state_dict (networkx-style helper).

    Parameters
    ----------
    model : torch.nn.Module or mapping of str to torch.Tensor
        A module (traced, :meth:`LayeredGraph.from_module`) or a state_dict
        (:meth:`LayeredGraph.from_state_dict`).
    **kwargs
        Keyword arguments of the builder used.

    Returns
    -------
    LayeredGraph

    Raises
    ------
    TypeError
        ``model`` is neither a module nor a mapping.
    """
    if isinstance(model, nn.Module):
        return LayeredGraph.from_module(model, **kwargs)
    if isinstance(model, Mapping):
        return LayeredGraph.from_state_dict(model, **kwargs)
    raise TypeError(f"expected an nn.Module or a state_dict, got {type(model).__name__}")
