r"""Association matrices between the units of a level, from data (Lange, Rolnick & Kording, 2022).

Weights say which units *could* work together; an association matrix says which ones *do*, on data.
For a hidden level with units (neurons, or channels) :math:`a_1 .. a_n` it is a symmetric,
non-negative ``(n, n)`` matrix with a zero diagonal; :mod:`graphinterp.clustering.modularity`
clusters its units and scores the clustering. Four kinds, two looking upstream and two downstream:

``"correlation"`` / ``"covariance"`` (upstream: what the units respond to)
    :math:`|\mathrm{corr}(a_i, a_j)|` or :math:`|\mathrm{cov}(a_i, a_j)|` over the examples (and, for
    channels, over positions: every position is a sample of the channel). A unit that never varies
    has correlation 0 with every other.
``"upstream"`` (forward Jacobian)
    :math:`|\mathbb E_x[\langle \nabla_x a_i, \nabla_x a_j \rangle]|`: units whose activations move
    with the same input directions.
``"downstream"`` (backward Jacobian)
    :math:`|\mathbb E_x[\sum_c \partial y_c / \partial a_i \; \partial y_c / \partial a_j]|`, ``y`` the
    model's output (logits): units whose changes move the outputs alike.

A channel's Jacobians are those of its activation summed over positions (upstream) and of a shift of
all its positions at once (downstream). Levels are hooked where the next layer reads them, as
ablation does (:mod:`graphinterp.interpret.interventions`), so a level is exactly what the graph's
next layer sees.

References
----------
Lange, R. D., Rolnick, D. and Kording, K. P. (2022). Clustering units in neural networks: upstream vs
downstream information. TMLR.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from graphinterp.common.errors import DataError
from graphinterp.common.files import resolve_device
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.evaluation import as_tensors, eval_mode, on_device
from graphinterp.interpret.interventions import interventions

__all__ = ["KINDS", "ASSOCIATION_KINDS", "association_matrices", "hidden_levels"]

#: The association kinds, upstream first.
KINDS = ("correlation", "covariance", "upstream", "downstream")
ASSOCIATION_KINDS = KINDS


def hidden_levels(graph: LayeredGraph) -> List[str]:
    """The levels between the model's input and its output (a chained graph's hidden layers' outputs)."""
    return list(graph.level_names()[1:-1])


def association_matrices(model: nn.Module, data: Any, *, graph: Optional[LayeredGraph] = None,
                         kinds: Sequence[str] = ("correlation",), levels: Optional[Sequence[str]] = None,
                         max_examples: Optional[int] = 2000, batch_size: int = 256, device=None,
                         chunk: int = 64) -> Dict[str, Dict[str, torch.Tensor]]:
    """The association matrices of ``levels`` (default: every hidden level) on ``data``.

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode on ``device``; unchanged afterwards.
    data : LabeledTensors, (x, y), TensorDataset or tensor
        Inputs (labels are not used); the first ``max_examples`` examples.
    graph : LayeredGraph, optional
        A chained graph of ``model`` (traced when omitted).
    kinds : sequence of {"correlation", "covariance", "upstream", "downstream"}
    levels : sequence of str, optional
        Level names (a layer's name for its outputs).
    max_examples : int or None, default 2000
    batch_size : int, default 256
    device : str or torch.device, optional
    chunk : int, default 64
        Units whose upstream Jacobians are computed in one batched backward pass.

    Returns
    -------
    dict
        ``{kind: {level: (n, n) float64 tensor}}``, symmetric, non-negative, zero diagonal, on the CPU.

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
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise DataError(f"unknown association kind(s) {unknown or 'none'}; use some of {list(KINDS)}")
    x = data if isinstance(data, torch.Tensor) else as_tensors(data)[0]
    x = x[:max_examples] if max_examples is not None else x
    if len(x) < 2:
        raise DataError(f"association matrices need at least 2 examples, got {len(x)}")
    graph = graph if graph is not None else LayeredGraph.from_module(model, input_shape=tuple(x.shape[1:]))
    if not graph.chained:
        raise DataError("association matrices need a chained graph (a chain of Linear/Conv2d layers, as ablation); "
                        "this model's graph is layer by layer or a DAG")
    names = list(levels) if levels is not None else hidden_levels(graph)
    bad = [n for n in names if n not in graph.level_names()]
    if bad or not names:
        raise DataError(f"level(s) {bad or 'none'} not in the graph; its levels are {graph.level_names()}")
    device = resolve_device(device)
    sums = {kind: {} for kind in kinds}
    with on_device(model, device), eval_mode(model):
        for start in range(0, len(x), batch_size):
            _batch(model, graph, x[start:start + batch_size].to(device), names, kinds, sums, chunk)
    return {kind: {name: _finish(kind, sums[kind][name], len(x)) for name in names} for kind in kinds}


def _batch(model, graph, xb, names, kinds, sums, chunk) -> None:
    """Add one batch's contributions to ``sums[kind][level]``.

    Each level's activation is recorded where it is read; for the downstream Jacobian a zero probe is
    added to it there (``a + 0``, a leaf that requires grad), so that ``d out / d probe = d out / d a``
    with every path through the later levels intact.
    """
    grads = bool({"upstream", "downstream"} & set(kinds))
    seen: Dict[str, tuple] = {}

    def reader(name, channel, per):
        def read(a):
            probe = torch.zeros_like(a, requires_grad=True) if "downstream" in kinds else None
            seen[name] = (a, probe, channel, per)
            return None if probe is None else a + probe
        return read

    with interventions(model, graph) as iv, torch.set_grad_enabled(grads):
        for name in names:
            _, _, channel, per = iv.site(name)
            iv.hook(name, reader(name, channel, per))
        if "upstream" in kinds:
            xb = xb.detach().requires_grad_(True)
        out = model(xb)
    for name in names:
        a, probe, channel, per = seen[name]
        units = _units(a, channel, per)  # (B, n, positions)
        for kind in kinds:
            if kind in ("correlation", "covariance"):
                s = units.detach().double().transpose(1, 2).reshape(-1, units.shape[1])
                _add(sums[kind], name, (s.sum(0), s.T @ s, len(s)))
            elif kind == "downstream":
                J = _downstream(out, probe, channel, per)  # (B, C, n)
                _add(sums[kind], name, torch.einsum("bci,bcj->ij", J, J))
            else:
                J = _upstream(units, xb, chunk)  # (B, n, d)
                _add(sums[kind], name, torch.einsum("bid,bjd->ij", J, J))


def _units(a: torch.Tensor, channel: bool, per: int) -> torch.Tensor:
    """A level's activation as ``(B, n_units, positions)``."""
    if channel:
        return a.reshape(a.shape[0], a.shape[1], -1)
    return a.reshape(a.shape[0], -1, per)


def _downstream(out: torch.Tensor, probe: torch.Tensor, channel: bool, per: int) -> torch.Tensor:
    """``d out_c / d a_i`` summed over a unit's positions: (B, C, n) float64."""
    logits = out.reshape(out.shape[0], -1)
    rows = []
    for c in range(logits.shape[1]):
        g, = torch.autograd.grad(logits[:, c].sum(), probe, retain_graph=True)
        rows.append(_units(g, channel, per).sum(2).double())
    return torch.stack(rows, 1)


def _upstream(a: torch.Tensor, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``d (sum of unit i's positions) / d x``: (B, n, d) float64, ``chunk`` units per batched backward pass."""
    unit = a.sum(2)  # (B, n)
    n, parts = unit.shape[1], []
    for s in range(0, n, chunk):
        idx = torch.arange(s, min(s + chunk, n), device=unit.device)
        onehot = torch.zeros(len(idx), *unit.shape, dtype=unit.dtype, device=unit.device)
        onehot[torch.arange(len(idx)), :, idx] = 1.0
        g, = torch.autograd.grad(unit, x, grad_outputs=onehot, retain_graph=True, is_grads_batched=True)
        parts.append(g.reshape(len(idx), x.shape[0], -1).transpose(0, 1).double())
    return torch.cat(parts, 1)


def _add(store: Dict[str, Any], name: str, value) -> None:
    if name not in store:
        store[name] = value
    elif isinstance(value, tuple):
        store[name] = tuple(a + b for a, b in zip(store[name], value))
    else:
        store[name] = store[name] + value


def _finish(kind: str, acc, n_examples: int) -> torch.Tensor:
    """The accumulated sums as a symmetric, non-negative matrix with a zero diagonal."""
    if kind in ("correlation", "covariance"):
        total, outer, n = acc
        mean = total / n
        A = outer / n - torch.outer(mean, mean)
        if kind == "correlation":
            sd = A.diagonal().clamp_min(0).sqrt()
            live = sd > 1e-12 * sd.max().clamp_min(1e-300)
            A = torch.where(live[:, None] & live[None, :], A / (sd[:, None] * sd[None, :]).clamp_min(1e-300),
                            torch.zeros_like(A))
    else:
        A = acc / n_examples
    A = ((A + A.T) / 2).abs().cpu()
    A.fill_diagonal_(0.0)
    return A
