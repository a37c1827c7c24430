r"""Association matrices between the units of a level, from data (after Lange, Rolnick & Kording, 2022).

Weights say which units *could* work together; an association matrix says which ones *do*, on data.
For a hidden level with units (neurons, or channels) :math:`a_1 .. a_n` this module measures a
symmetric second-moment matrix ``M`` on data; its association graph (``|M|`` or ``|corr|``, zero
diagonal: :func:`graphinterp.clustering.modularity.association_graph`) is what
:mod:`graphinterp.clustering.modularity` clusters. Four kinds, two looking upstream, two downstream:

``"correlation"`` / ``"covariance"`` (upstream: what the units respond to)
    The covariance of the units' activations over the examples; the graph of ``"correlation"`` is
    its normalisation. A unit that never varies (dead, constant) gets no association.
``"upstream"`` (forward Jacobian)
    :math:`M_{ij} = \mathbb E_x[\langle \nabla_x a_i, \nabla_x a_j \rangle]`: units whose
    activations move with the same input directions.
``"downstream"`` (backward Jacobian)
    :math:`M_{ij} = \mathbb E_x[\sum_c \partial y_c / \partial a_i \; \partial y_c / \partial a_j]`, ``y``
    the model's output (logits): units whose changes move the outputs alike.

The Jacobians are those of the whole network: with respect to its input (upstream) and of its
logits (downstream), as in Lange et al.; the graph takes the absolute value of the expectation.
A channel's positions pair position by position, as in Lange et al.'s code: the covariance is taken
over the examples at each position and averaged over positions (differences between positions'
means do not count), and the Jacobians pair :math:`a_{i,p}` with :math:`a_{j,p}` at the same
position, averaged over positions (upstream on at most :data:`MAX_POSITIONS` positions, drawn once
per level with a fixed seed). A Linear layer after a Flatten sees a channel's features as its
positions. Lange et al.'s Hessian and normalised-Jacobian variants are not implemented.

Levels are hooked where the next layer reads them, as ablation does
(:mod:`graphinterp.interpret.interventions`), so a level is exactly what the graph's next layer sees.

References
----------
Lange, R. D., Rolnick, D. and Kording, K. P. (2022). Clustering units in neural networks: upstream vs
downstream information. TMLR.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from graphinterp.clustering.modularity import association_graph
from graphinterp.common.errors import DataError
from graphinterp.common.files import resolve_device
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.evaluation import as_inputs, eval_mode, on_device
from graphinterp.interpret.interventions import interventions
from graphinterp.interpret.jacobians import (
    MAX_POSITIONS, check_finite, downstream_grads, units_of, upstream_cost, upstream_gram,
)

__all__ = ["ASSOCIATION_KINDS", "MAX_POSITIONS", "association_matrices", "association_moments", "hidden_levels"]

#: The association kinds, upstream first.
ASSOCIATION_KINDS = ("correlation", "covariance", "upstream", "downstream")
_JACOBIAN_BUDGET = 1 << 24  # elements of one upstream backward pass's cotangents or Jacobians (64 MB in float32)


def hidden_levels(graph: LayeredGraph) -> List[str]:
    """The levels between the model's input and its output (a chained graph's hidden layers' outputs).

    Parameters
    ----------
    graph : LayeredGraph

    Returns
    -------
    list of str

    Examples
    --------
    >>> from torch import nn
    >>> hidden_levels(LayeredGraph.from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))))
    ['0']
    """
    return list(graph.level_names()[1:-1])


def association_matrices(model: nn.Module, data: Any, **kwargs: Any) -> Dict[str, Dict[str, torch.Tensor]]:
    """The association graphs of ``levels`` (default: every hidden level) on ``data``.

    Takes the arguments of :func:`association_moments` and returns, per kind and level, the graph of
    its second-moment matrix: ``|corr|`` for ``"correlation"``, else ``|M|``, zero diagonal, units
    without variance isolated (:func:`~graphinterp.clustering.modularity.association_graph`).

    Returns
    -------
    dict
        ``{kind: {level: (n, n) float64 tensor}}``, symmetric, non-negative, zero diagonal.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]))
    >>> x = torch.rand(50, 2, generator=torch.Generator().manual_seed(0)) + 0.1  # positive: every unit active
    >>> A = association_matrices(net, x, kinds=["correlation", "upstream"])
    >>> round(float(A["correlation"]["0"][0, 1]), 6), A["upstream"]["0"][0].tolist()  # unit 1 = 2 x unit 0
    (1.0, [0.0, 2.0, 0.0])
    """
    moments = association_moments(model, data, **kwargs)
    return {kind: {name: torch.from_numpy(association_graph(M.numpy(), normalize=kind == "correlation"))
                   for name, M in levels.items()} for kind, levels in moments.items()}


def distinct_names(values, what: str) -> List[str]:
    """``values`` as a list of names (a string is a comma-separated list); a name given twice is refused: a level
    hooked twice summed its statistics twice (covariances with negative variances).

    Examples
    --------
    >>> distinct_names("correlation, upstream", "association kind")
    ['correlation', 'upstream']
    >>> distinct_names(["fc1", "fc1"], "level")
    Traceback (most recent call last):
    ...
    graphinterp.common.errors.DataError: level 'fc1' is named twice; name each once
    """
    names = [v.strip() for v in values.split(",")] if isinstance(values, str) else list(values)
    twice = sorted({n for n in names if names.count(n) > 1}, key=names.index)
    if twice:
        raise DataError(f"{what} {', '.join(repr(n) for n in twice)} {'is' if len(twice) == 1 else 'are'} named twice; "
                        "name each once")
    return names


def association_moments(model: nn.Module, data: Any, *, graph: Optional[LayeredGraph] = None,
                        kinds: Sequence[str] = ("correlation",), levels: Optional[Sequence[str]] = None,
                        max_examples: Optional[int] = 2000, batch_size: int = 256, device=None,
                        chunk: int = 64) -> Dict[str, Dict[str, torch.Tensor]]:
    """The signed second-moment matrices behind the association graphs (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode on ``device``; unchanged afterwards.
    data : LabeledTensors, (x, y), TensorDataset or tensor
        Inputs (labels are not used); the first ``max_examples`` examples.
    graph : LayeredGraph, optional
        A chained graph of ``model`` (traced when omitted).
    kinds : sequence of {"correlation", "covariance", "upstream", "downstream"}
        ``"correlation"`` and ``"covariance"`` share one matrix, the covariance.
    levels : sequence of str, optional
        Level names (a layer's name for its outputs).
    max_examples : int or None, default 2000
    batch_size : int, default 256
        Examples per forward pass (fewer with ``"upstream"`` when one backward pass's cotangents or
        Jacobians would exceed 2^24 elements).
    device : str or torch.device, optional
    chunk : int, default 64
        Rows of upstream Jacobians (unit, position) computed in one batched backward pass.

    Returns
    -------
    dict
        ``{kind: {level: (n, n) float64 tensor}}``, symmetric, with the diagonal, on the CPU.

    Raises
    ------
    DataError
        An unknown kind or level, fewer than 2 examples, a graph that is not a chain, non-finite
        activations or Jacobians, or a caller inside ``torch.inference_mode`` with a Jacobian kind.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Identity(), nn.Linear(2, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    ...     _ = net[2].weight.copy_(torch.tensor([[3.0, -1.0]]))
    >>> M = association_moments(net, torch.randn(10, 2), kinds=["upstream", "downstream"])
    >>> M["upstream"]["0"].tolist(), M["downstream"]["0"].tolist()  # W1 W1^T and W2^T W2, whatever the inputs
    ([[1.0, 1.0], [1.0, 2.0]], [[9.0, -3.0], [-3.0, 1.0]])
    """
    kinds = distinct_names(kinds, "association kind")
    unknown = [k for k in kinds if k not in ASSOCIATION_KINDS]
    if unknown or not kinds:
        raise DataError(f"unknown association kind(s) {unknown or 'none'}; use some of {list(ASSOCIATION_KINDS)}")
    x = as_inputs(data, model)  # float32 data for a half / double model: in the model's dtype
    x = x[:max_examples] if max_examples is not None else x
    if len(x) < 2:
        raise DataError(f"association matrices need at least 2 examples, got {len(x)}")
    graph = graph if graph is not None else LayeredGraph.from_module(model, input_shape=tuple(x.shape[1:]))
    if not graph.chained:
        raise DataError("association matrices need a chained graph (a chain of Linear/Conv2d layers, as ablation); "
                        "this model's graph is layer by layer or a DAG")
    names = distinct_names(levels, "level") if levels is not None else hidden_levels(graph)
    bad = [n for n in names if n not in graph.level_names()]
    if bad or not names:
        raise DataError(f"level(s) {bad or 'none'} not in the graph; its levels are {graph.level_names()}")
    jacobians = bool({"upstream", "downstream"} & set(kinds))
    if jacobians and torch.is_inference_mode_enabled():
        raise DataError("upstream and downstream associations need gradients: call them outside torch.inference_mode()")
    if "upstream" in kinds:  # one backward pass (its one-hot cotangents and Jacobians) within the budget
        batch_size = max(1, min(batch_size, _JACOBIAN_BUDGET // upstream_cost(model, graph, x[:1], names, chunk)))
    stats = sorted({"cov" if k in ("correlation", "covariance") else k for k in kinds})
    sums: Dict[str, Dict[str, Any]] = {s: {} for s in stats}
    device = resolve_device(device)
    with on_device(model, device), eval_mode(model), torch.enable_grad() if jacobians else torch.no_grad():
        for start in range(0, len(x), batch_size):
            _batch(model, graph, x[start:start + batch_size].to(device), names, stats, sums, chunk)
    return {kind: {n: _finish(sums["cov" if kind in ("correlation", "covariance") else kind][n], len(x)) for n in names}
            for kind in kinds}


def _batch(model, graph, xb, names, stats, sums, chunk) -> None:
    """Add one batch's contributions to ``sums[stat][level]``.

    Each level's activation is recorded where it is read; for the downstream Jacobian a zero probe is
    added to it there (``a + 0``, a leaf that requires grad), so that ``d out / d probe = d out / d a``
    with every path through the later levels intact.
    """
    seen: Dict[str, tuple] = {}

    def reader(name, channel, per):
        def read(a):
            probe = torch.zeros_like(a, requires_grad=True) if "downstream" in stats else None
            seen[name] = (a, probe, channel, per)
            return None if probe is None else a + probe
        return read

    with interventions(model, graph) as iv:
        for name in names:
            _, _, channel, per = iv.site(name)
            iv.hook(name, reader(name, channel, per))
        if "upstream" in stats:
            xb = xb.detach().requires_grad_(True)
        out = model(xb)
    grads = downstream_grads(out, [seen[n][1] for n in names]) if "downstream" in stats else None
    for i, name in enumerate(names):
        a, _, channel, per = seen[name]
        units = units_of(a, channel, per)  # (B, n, positions)
        check_finite(units, name, "activations")
        if "cov" in stats:
            u = units.detach().double()
            _add(sums["cov"], name, (torch.einsum("bip,bjp->ij", u, u), u.sum(0), u.shape[0] * u.shape[2]))
        if "downstream" in stats:
            g = [units_of(gc[i], channel, per).double() for gc in grads]  # per class: (B, n, positions)
            for gc in g:
                check_finite(gc, name, "downstream Jacobians")
            _add(sums["downstream"], name, sum(torch.einsum("bip,bjp->ij", gc, gc) for gc in g) / units.shape[2])
        if "upstream" in stats:
            _add(sums["upstream"], name, upstream_gram(units, xb, chunk, name))


def _add(store: Dict[str, Any], name: str, value) -> None:
    if name not in store:
        store[name] = value
    elif isinstance(value, tuple):
        store[name] = tuple(a + b for a, b in zip(store[name], value))
    else:
        store[name] = store[name] + value


def _finish(acc, n_examples: int) -> torch.Tensor:
    """The accumulated sums as a symmetric second-moment matrix (covariance averaged over positions)."""
    if isinstance(acc, tuple):  # covariance at each position, averaged over positions
        outer, per_position, n_samples = acc
        positions = per_position.shape[1]
        mean = per_position / n_examples  # (n, positions)
        M = outer / n_samples - mean @ mean.T / positions
    else:
        M = acc / n_examples
    return ((M + M.T) / 2).cpu()
