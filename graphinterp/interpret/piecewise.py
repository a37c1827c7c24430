"""Logits of ``Linear(relu(y + g m))`` for many scalar shifts ``g`` at once, by the pieces of a piecewise-linear map.

Used by :mod:`graphinterp.interpret.circuit_batch` when a pruned Linear layer is followed by an
activation, a Linear layer ``M`` and ``ReLU -> Linear``: removing edges into output unit ``o`` of the
pruned layer shifts ``M``'s output by ``g * M.weight[:, o]``, and for one example the logits are a
piecewise-linear function of ``g`` with a breakpoint wherever a unit of ``y + g m`` changes sign.
The pieces depend on ``y`` and ``m`` only, so they are built once per output unit
(:class:`PiecewiseLogits`) and every batch of states then costs one binary search and one
multiply-add per example, state and class.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["PiecewiseLogits", "piecewise_logits"]


class PiecewiseLogits:
    """``lin(relu(y_n + g * m))`` as a function of each example's shift ``g``, with its pieces precomputed.

    Parameters
    ----------
    lin : nn.Linear
        The last layer (``C`` outputs).
    m : torch.Tensor
        Direction of the shift, shape ``(width,)``.
    y : torch.Tensor
        Pre-activation of every example, shape ``(N, width)``.

    Notes
    -----
    Slopes and intercepts of every piece are cumulative sums over each example's sorted
    breakpoints (``O(N width C)`` once); a call picks each state's piece by binary search
    (``O(N T C)`` instead of ``O(N T width C)``). The logits come out with the classes first,
    the layout in which :func:`graphinterp.interpret.label_tasks.class_first_terms` is fast.
    """

    def __init__(self, lin: nn.Linear, m: torch.Tensor, y: torch.Tensor) -> None:
        moving = m != 0
        contrib = lin.weight.T  # (width, C)
        active0 = (~moving & (y > 0)) | (moving & (m < 0))  # the active units as g -> -inf
        a0 = (y * active0) @ contrib + (0 if lin.bias is None else lin.bias)  # (N, C)
        b0 = (m * active0) @ contrib  # (C,)
        mm = m[moving]
        beta = -y[:, moving] / mm  # (N, k) breakpoints
        self.beta, order = torch.sort(beta, dim=1)
        sign = torch.sign(mm)[order]  # +1: the unit turns on at its breakpoint, -1: off
        cw = contrib[moving][order]  # (N, k, C)
        step_b = (sign * mm[order])[..., None] * cw
        step_a = (sign[..., None] * torch.gather(y[:, moving], 1, order)[..., None]) * cw
        zero = torch.zeros_like(a0)[:, None]
        a = torch.cat([zero, torch.cumsum(step_a, 1)], 1) + a0[:, None]  # (N, k + 1, C)
        b = torch.cat([zero, torch.cumsum(step_b, 1)], 1) + b0[:, None]
        self.a, self.b = a.permute(2, 0, 1).contiguous(), b.permute(2, 0, 1).contiguous()  # (C, N, k + 1)

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """Logits for shifts ``g`` of shape ``(T, N)``, classes first: shape ``(C, N, T)``."""
        gt = g.T.contiguous()  # (N, T)
        n_cls, n_ex, n_pieces = self.a.shape
        seg = torch.searchsorted(self.beta, gt)  # (N, T): each state's piece
        flat = (torch.arange(n_ex, device=g.device)[:, None] * n_pieces + seg).view(-1)
        a = self.a.view(n_cls, -1).index_select(1, flat).view(n_cls, *gt.shape)
        return a.addcmul_(self.b.view(n_cls, -1).index_select(1, flat).view(n_cls, *gt.shape), gt)


def piecewise_logits(lin: nn.Linear, m: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Logits ``lin(relu(y_n + g_tn * m))`` for all states t and examples n, shape ``(N, T, C)``.

    ``m`` (width,) is the direction of the shift, ``y`` (N, width) the pre-activation of every
    example and ``g`` (T, N) the shift of each state and example (see :class:`PiecewiseLogits`).

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> lin, m, y, g = nn.Linear(5, 3), torch.randn(5), torch.randn(4, 5), torch.randn(6, 4)
    >>> direct = lin(torch.relu(y[None] + g[..., None] * m)).transpose(0, 1)
    >>> torch.allclose(piecewise_logits(lin, m, y, g), direct, atol=1e-5)
    True
    """
    return PiecewiseLogits(lin, m, y)(g).permute(1, 2, 0)
