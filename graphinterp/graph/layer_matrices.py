"""The edge-weight matrices of a layer, :class:`LayerMatrices`, mixed into :class:`~graphinterp.graph.layer.Layer`.

Every matrix has shape ``(n_in, n_out)`` in a *view* (:data:`VIEWS`): ``"grouped"``, one input node per
channel (``in_index``), or ``"fine"``, one per input feature. :meth:`LayerMatrices.squared` sums each
edge's squared parameters (a convolution kernel, the features of a flattened channel), so the squared
edge weights sum to the layer's sum of squared parameters; :meth:`~LayerMatrices.magnitude`,
:meth:`~LayerMatrices.signed` and :meth:`~LayerMatrices.support` follow from it, and a grouped
convolution's kernels are scattered to their input channels (:func:`grouped_input_channels`).
:class:`~graphinterp.graph.layer.Layer`, a frozen dataclass, holds the state these methods use
(``weight``, ``in_index``, ``groups``, ``is_conv``, ``n_in``, ``n_out``, ``with_weight``).
"""
from __future__ import annotations

import math

import torch

__all__ = ["LayerMatrices", "VIEWS", "grouped_input_channels"]

VIEWS = ("grouped", "fine")


class LayerMatrices:
    """The edge-weight matrices of :class:`~graphinterp.graph.layer.Layer` (see the module docstring)."""

    # --------------------------------------------------------------- matrices
    def support(self, view: str = "grouped") -> torch.Tensor:
        """Boolean ``(n_in, n_out)``: edges that exist structurally (False across conv groups).

        Parameters
        ----------
        view : {"grouped", "fine"}, default "grouped"
            ``"grouped"``: one input node per channel (``in_index``); ``"fine"``: one per input feature.

        Returns
        -------
        torch.Tensor of bool, shape (n_in, n_out)
        """
        ones = self.with_weight(torch.ones_like(self.weight))
        return ones.squared(view) > 0

    def squared(self, view: str = "grouped") -> torch.Tensor:
        """Squared edge weights, shape ``(n_in, n_out)``; sums to ``(weight ** 2).sum()``.

        Parameters
        ----------
        view : {"grouped", "fine"}, default "grouped"
            ``"grouped"``: one input node per channel (``in_index``); ``"fine"``: one per input feature.

        Returns
        -------
        torch.Tensor, shape (n_in, n_out)
            On the weight's device, in its dtype or wider where the squares need it (:func:`_squares`).
        """
        _check_view(view)
        w2 = _squares(self.weight.detach())
        if self.is_conv:
            return self._dense_conv(w2.flatten(2).sum(-1)).T
        if view == "grouped" and self.in_index is not None:
            return self._group_inputs(w2).T
        return w2.T

    def _group_inputs(self, per_feature: torch.Tensor) -> torch.Tensor:
        """Sum ``(out, in_features)`` columns into ``(out, n_in)`` grouped input nodes."""
        idx = self.in_index.to(per_feature.device)
        out = per_feature.new_zeros(self.n_out, self.n_in("grouped"))
        return out.index_add_(1, idx, per_feature)

    def magnitude(self, view: str = "grouped") -> torch.Tensor:
        """Unsigned edge weights :math:`|w_{ij}|` (the BSGC similarity), shape ``(n_in, n_out)``.

        Parameters
        ----------
        view : {"grouped", "fine"}, default "grouped"
            ``"grouped"``: one input node per channel (``in_index``); ``"fine"``: one per input feature.

        Returns
        -------
        torch.Tensor, shape (n_in, n_out)
            The square root of :meth:`squared`.
        """
        return self.squared(view).sqrt()

    def signed(self, view: str = "grouped") -> torch.Tensor:
        """Signed edge weights; grouped edges take the sign of the sum of their parameters, positive when that sum is
        0 (a zero-sum kernel such as a Sobel filter is still an edge of its full magnitude, not a missing one).

        Parameters
        ----------
        view : {"grouped", "fine"}, default "grouped"
            ``"grouped"``: one input node per channel (``in_index``); ``"fine"``: one per input feature.

        Returns
        -------
        torch.Tensor, shape (n_in, n_out)
            :meth:`magnitude` with a sign (the weight itself, transposed, for a Linear without grouped inputs).
        """
        _check_view(view)
        w = self.weight.detach()
        if not self.is_conv and (view == "fine" or self.in_index is None):
            return w.T
        total = self._dense_conv(w.flatten(2).sum(-1)).T if self.is_conv else self._group_inputs(w).T
        return self.magnitude(view) * torch.where(total < 0, -1.0, 1.0).to(w.dtype)

    def expand_input_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Map labels of grouped input nodes to the layer's input features (identity otherwise).

        Parameters
        ----------
        labels : torch.Tensor of shape (n_in("grouped"),)
            One label per grouped input node.

        Returns
        -------
        torch.Tensor
            One label per input feature for a Linear with ``in_index``; ``labels`` itself otherwise (also
            when its length is not the number of grouped input nodes).
        """
        if not self.is_conv and self.in_index is not None and labels.numel() == self.n_in("grouped"):
            return labels[self.in_index.to(labels.device)]
        return labels

    def _dense_conv(self, per_kernel: torch.Tensor) -> torch.Tensor:
        """Scatter an ``(out, in/groups)`` matrix of a grouped conv to dense ``(out, in)``."""
        if self.groups == 1:
            return per_kernel
        out_ch, in_per = per_kernel.shape
        dense = per_kernel.new_zeros(out_ch, in_per * self.groups)
        return dense.scatter_(1, grouped_input_channels(out_ch, in_per, self.groups, per_kernel.device), per_kernel)


def grouped_input_channels(out_ch: int, in_per: int, groups: int, device=None) -> torch.Tensor:
    """The input channel (out of ``in_per * groups``) of each ``(out, in/groups)`` entry of a grouped
    convolution's weight: output channel ``o`` reads the ``in_per`` channels of its group ``o // (out_ch / groups)``.

    Examples
    --------
    >>> grouped_input_channels(4, 2, 2).tolist()
    [[0, 1], [0, 1], [2, 3], [2, 3]]
    """
    group = torch.arange(out_ch, device=device) // (out_ch // groups)
    return group[:, None] * in_per + torch.arange(in_per, device=device)[None, :]


def _squares(w: torch.Tensor) -> torch.Tensor:
    """``w ** 2`` in a precision that holds every square: float16 and bfloat16 weights squared in float32 (in float16
    a weight below 2.4e-4 squared to 0, one above 256 to inf, and the squares of typical weights, ~0.01, were
    subnormal: a layer of small weights was "all zero", E off in the third digit), and float32 weights in float64
    when a square leaves float32's normal range (a weight above 1.8e19 made an "inf" similarity matrix, one below
    1.1e-19 a zero or rounded square).

    Examples
    --------
    >>> _squares(torch.tensor([1e-4, 300.0], dtype=torch.float16)).tolist()[1], _squares(torch.ones(1)).dtype
    (90000.0, torch.float32)
    >>> _squares(torch.tensor([1e20, 1.0])).dtype
    torch.float64
    """
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    w2 = w.square()
    if w2.dtype == torch.float32 and w2.numel():
        lo, hi = (float(v) for v in torch.aminmax(w2))  # one pass; the exact test below only when a square is tiny
        tiny = torch.finfo(torch.float32).tiny
        if not math.isfinite(hi) or (lo < tiny and bool(((w2 < tiny) & (w != 0)).any())):
            w2 = w.double().square()  # inf (NaN weights are refused downstream) or a nonzero weight's square lost
    return w2


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
