"""The per-level tensors behind :mod:`graphinterp.interpret.association`: a level's activation as units x
positions, and the upstream (input) and downstream (logit) Jacobians of its units, paired position by position.

Upstream Jacobians come from batched backward passes with one-hot cotangents, a chunk of whole
positions (all units of each) per pass, on at most :data:`MAX_POSITIONS` positions per level (drawn
once with a fixed seed); :func:`upstream_cost` bounds a pass's memory through the batch size.
Downstream Jacobians come from one backward pass per output class for every level at once, through
zero probes added where the levels are read.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from graphinterp.common.errors import DataError
from graphinterp.interpret.interventions import interventions

__all__ = ["MAX_POSITIONS", "units_of", "upstream_cost", "upstream_gram", "downstream_grads", "check_finite"]

#: Positions of a channel whose input Jacobians are computed (a seeded subset above this).
MAX_POSITIONS = 32


def units_of(a: torch.Tensor, channel: bool, per: int) -> torch.Tensor:
    """A level's activation as ``(B, n_units, positions)``: channels with their spatial positions, or a Linear
    level's ``per`` features per unit (a channel's block after a Flatten; 1 otherwise).

    Examples
    --------
    >>> units_of(torch.zeros(2, 3, 4, 5), True, 1).shape, units_of(torch.zeros(2, 12), False, 4).shape
    (torch.Size([2, 3, 20]), torch.Size([2, 3, 4]))
    """
    if channel:
        return a.reshape(a.shape[0], a.shape[1], -1)
    return a.reshape(a.shape[0], -1, per)


def upstream_cost(model, graph, x1, names, chunk) -> int:
    """Elements per example of one upstream backward pass: its rows (whole positions' units) times the larger of
    a level's activation (the gradients flowing back through it) and the input (the Jacobian), at the widest level."""
    shapes: Dict[str, tuple] = {}
    with interventions(model, graph) as iv, torch.no_grad():
        for name in names:
            _, _, channel, per = iv.site(name)
            iv.record(name, lambda a, name=name, channel=channel, per=per: shapes.__setitem__(
                name, tuple(units_of(a, channel, per).shape[1:])))
        model(x1.to(next(model.parameters()).device))
    cost = 1
    for n, positions in shapes.values():
        rows = max(chunk, n) // n * n
        cost = max(cost, rows * max(n * positions, x1[0].numel()))  # the backward's gradients are full size
    return cost


def _positions(P: int) -> torch.Tensor:
    """The positions whose input Jacobians are computed: all, or :data:`MAX_POSITIONS` drawn once (fixed seed)."""
    if P <= MAX_POSITIONS:
        return torch.arange(P)
    return torch.randperm(P, generator=torch.Generator().manual_seed(0))[:MAX_POSITIONS].sort().values


def upstream_gram(units: torch.Tensor, x: torch.Tensor, chunk: int, name: str) -> torch.Tensor:
    """``sum_b sum_p <d a_{b,i,p} / d x, d a_{b,j,p} / d x>`` over (at most :data:`MAX_POSITIONS`) positions, / positions.

    One batched backward pass per chunk of rows, a chunk holding whole positions (all units of each),
    position-major. (Selecting the positions before the backward passes made the one-hot cotangents
    smaller but the passes 1.7x slower, through the selection's own backward; the memory is bounded
    by the batch size either way, :func:`upstream_cost`.)
    """
    B, n, _ = units.shape
    pos = _positions(units.shape[2])
    per_chunk = max(chunk, n) // n  # positions per backward pass
    total = torch.zeros(n, n, dtype=torch.float64, device=units.device)
    for s in range(0, len(pos), per_chunk):
        ps = pos[s:s + per_chunk].to(units.device)
        onehot = torch.zeros(len(ps) * n, *units.shape, dtype=units.dtype, device=units.device)
        onehot[torch.arange(len(ps) * n), :, torch.arange(n).repeat(len(ps)), ps.repeat_interleave(n)] = 1.0
        J, = torch.autograd.grad(units, x, grad_outputs=onehot, retain_graph=True, is_grads_batched=True)
        J = J.reshape(len(ps), n, B, -1)  # (positions, units, B, d)
        check_finite(J, name, "upstream Jacobians")
        J = J.double()  # float64 sums: a half-precision model's products overflow in float16
        total += torch.einsum("pibd,pjbd->ij", J, J)
    return total / len(pos)


def downstream_grads(out: torch.Tensor, probes: List[torch.Tensor]) -> List[List[torch.Tensor]]:
    """Per output class, ``d out_c / d probe`` of every level: one backward pass per class for all levels."""
    logits = out.reshape(out.shape[0], -1)
    return [list(torch.autograd.grad(logits[:, c].sum(), probes, retain_graph=True)) for c in range(logits.shape[1])]


def check_finite(t: torch.Tensor, level: str, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"level {level!r}: the {what} are not finite (NaN or inf) on these inputs; check the data "
                        "and the model's weights")
