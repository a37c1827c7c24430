"""One weight layer of a layered graph: a bipartite graph between its input and output nodes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .errors import InvalidWeightsError

__all__ = ["Layer", "VIEWS"]

VIEWS = ("grouped", "fine")


@dataclass(frozen=True, eq=False)
class Layer:
    """A ``nn.Linear`` or ``nn.Conv2d`` seen as a weighted bipartite graph.

    Nodes are neurons (Linear) or channels (Conv2d). Matrices returned by :meth:`squared`,
    :meth:`magnitude` and :meth:`signed` have shape ``(n_in, n_out)``: rows are input nodes,
    columns output nodes (the paper's U and V).

    Edge weights are defined so that the squared edge weight always equals the sum of squares
    of the parameters behind the edge:

    * Linear: :math:`w_{ij} = W_{ji}` (torch stores ``(out, in)``).
    * Conv2d: :math:`|w_{ij}| = \\lVert K_{j i} \\rVert_2`, the L2 norm of the kernel from in-channel
      ``i`` to out-channel ``j``; its sign is the sign of the kernel's sum.
    * Linear after a Flatten of ``C`` channels (``in_groups=C``): in the ``"grouped"`` view there is
      one input node per channel, :math:`|w_{cj}| = \\lVert W_{j, F_c} \\rVert_2` over the channel's
      features :math:`F_c` (channel-major flattening, as ``nn.Flatten`` does on NCHW); the
      ``"fine"`` view keeps one node per feature.

    Parameters
    ----------
    name : str
        Module path (``"fc2"``) or state_dict prefix (``"0"``).
    kind : {"linear", "conv2d"}
    weight : torch.Tensor
        The parameter in torch layout, detached.
    in_groups : int, optional
        Number of channels the input features were flattened from (Linear after Conv2d).
    groups : int
        Conv2d ``groups`` (1 for a dense convolution).

    Examples
    --------
    >>> import torch
    >>> layer = Layer("fc", "linear", torch.tensor([[3.0, 0.0], [0.0, -4.0]]))
    >>> layer.squared()
    tensor([[ 9.,  0.],
            [ 0., 16.]])
    """

    name: str
    kind: str
    weight: torch.Tensor
    in_groups: Optional[int] = None
    groups: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "conv2d"):
            raise InvalidWeightsError(f"layer {self.name!r}: kind must be 'linear' or 'conv2d', got {self.kind!r}")
        want = 2 if self.kind == "linear" else 4
        if self.weight.dim() != want:
            raise InvalidWeightsError(
                f"layer {self.name!r}: a {self.kind} weight must have {want} dimensions, "
                f"got shape {tuple(self.weight.shape)}"
            )
        if not torch.is_floating_point(self.weight):
            raise InvalidWeightsError(f"layer {self.name!r}: weights must be floating point, got {self.weight.dtype}")
        if not bool(torch.isfinite(self.weight).all()):
            bad = int((~torch.isfinite(self.weight)).sum())
            raise InvalidWeightsError(
                f"layer {self.name!r} has {bad} NaN/inf weight(s); the model is corrupt or diverged in training"
            )
        if self.in_groups is not None:
            if self.kind != "linear" or self.weight.shape[1] % self.in_groups:
                raise InvalidWeightsError(
                    f"layer {self.name!r}: in_groups={self.in_groups} does not divide its "
                    f"{self.weight.shape[1]} input features"
                )

    # ------------------------------------------------------------------ sizes
    @property
    def n_out(self) -> int:
        """Number of output nodes (neurons or channels)."""
        return int(self.weight.shape[0])

    @property
    def n_in_fine(self) -> int:
        """Number of input features (one per weight column / in-channel)."""
        return int(self.weight.shape[1]) * (self.groups if self.kind == "conv2d" else 1)

    def n_in(self, view: str = "grouped") -> int:
        """Number of input nodes in ``view``."""
        _check_view(view)
        if view == "grouped" and self.in_groups is not None:
            return self.in_groups
        return self.n_in_fine

    def shape(self, view: str = "grouped") -> tuple:
        """``(n_in, n_out)`` in ``view``."""
        return (self.n_in(view), self.n_out)

    @property
    def num_params(self) -> int:
        """Number of weights in the layer (the parameter's numel)."""
        return int(self.weight.numel())

    # --------------------------------------------------------------- matrices
    def squared(self, view: str = "grouped") -> torch.Tensor:
        """Squared edge weights, shape ``(n_in, n_out)``; sums to ``(weight ** 2).sum()``."""
        _check_view(view)
        w2 = self.weight.detach().square()
        if self.kind == "conv2d":
            return self._dense_conv(w2.sum(dim=(2, 3))).T
        if view == "grouped" and self.in_groups is not None:
            return w2.reshape(self.n_out, self.in_groups, -1).sum(-1).T
        return w2.T

    def magnitude(self, view: str = "grouped") -> torch.Tensor:
        """Unsigned edge weights :math:`|w_{ij}|` (the BSGC similarity), shape ``(n_in, n_out)``."""
        return self.squared(view).sqrt()

    def signed(self, view: str = "grouped") -> torch.Tensor:
        """Signed edge weights; grouped edges take the sign of the sum of their parameters."""
        _check_view(view)
        w = self.weight.detach()
        if self.kind == "linear" and (view == "fine" or self.in_groups is None):
            return w.T
        if self.kind == "conv2d":
            sign = self._dense_conv(w.sum(dim=(2, 3))).T.sign()
        else:
            sign = w.reshape(self.n_out, self.in_groups, -1).sum(-1).T.sign()
        return self.magnitude(view) * sign

    def expand_input_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Map labels of grouped input nodes to the layer's input features (identity otherwise)."""
        if self.kind == "linear" and self.in_groups is not None and labels.numel() == self.in_groups:
            return labels.repeat_interleave(self.weight.shape[1] // self.in_groups)
        return labels

    def _dense_conv(self, per_kernel: torch.Tensor) -> torch.Tensor:
        """Scatter an ``(out, in/groups)`` matrix of a grouped conv to dense ``(out, in)``."""
        if self.groups == 1:
            return per_kernel
        out_ch, in_per = per_kernel.shape
        per_group_out = out_ch // self.groups
        dense = per_kernel.new_zeros(out_ch, in_per * self.groups)
        group = torch.arange(out_ch, device=per_kernel.device) // per_group_out
        cols = group[:, None] * in_per + torch.arange(in_per, device=per_kernel.device)[None, :]
        return dense.scatter_(1, cols, per_kernel)


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
