"""One weight layer of a layered graph: a bipartite graph between its input and output nodes.

Its edge-weight matrices (``squared``, ``magnitude``, ``signed``, ``support``) are computed by
:class:`~graphinterp.graph.layer_matrices.LayerMatrices`, mixed into :class:`Layer`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Tuple

import torch

from graphinterp.common.errors import InvalidWeightsError
from graphinterp.graph.layer_matrices import VIEWS, LayerMatrices, _check_view, grouped_input_channels

__all__ = ["Layer", "VIEWS", "KINDS", "grouped_input_channels"]

#: Why depthwise convolutions are left out of clusterability (one place for the rule and its words).
DEPTHWISE_REASON = ("depthwise convolution: each output reads one input channel, so the layer is block-diagonal "
                    "by construction (E = 1 for any matched clustering); left out of clusterability")
#: Why grouped convolutions are left out of clusterability (``{groups}``: their number).
GROUPED_REASON = ("grouped convolution ({groups} groups): each output reads only its group's input channels, so the "
                  "layer is block-diagonal by construction (E = 1 at any k up to {groups} for a clustering that follows "
                  "the groups); E would measure the grouping, not learned modularity; left out of clusterability")
#: Layer kinds and the number of dimensions of their torch weight.
KINDS = {"linear": 2, "conv1d": 3, "conv2d": 4, "conv3d": 5}


@dataclass(frozen=True, eq=False)
class Layer(LayerMatrices):
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
        Number of channels the input features were flattened from (Linear after Conv2d),
        channel-major. A shorthand for ``in_index = arange(in_groups).repeat_interleave(...)``.
    groups : int
        Convolution ``groups`` (1 for a dense convolution).
    in_index : torch.Tensor, optional
        For a Linear whose input features come from fewer nodes (a Flatten of channels in any
        order, a channels-last reshape): ``in_index[f]`` is the grouped input node of feature
        ``f``. Found by :mod:`graphinterp.graph.trace`.
    param : str, optional
        Name of the parameter in the model (``"h.0.mlp.c_fc.weight"``); defaults to
        ``name + ".weight"``. This is the graph-to-module binding.
    transposed : bool
        The parameter is stored ``(in, out)`` (HuggingFace GPT-2 ``Conv1D``); ``weight`` is its
        transpose, in torch ``(out, in)`` layout.
    folded : tuple of str
        What was folded into ``weight`` (e.g. ``"bn1 (BatchNorm2d scale)"``); ``weight`` is then the
        folded weight and differs from the raw parameter by a positive diagonal scaling.
    fold_maps : tuple
        For each fold, ``(tag, side, index)``: ``side`` ``"out"`` (rows) or ``"in"`` (input features), and
        for each row or input feature the index of its scale in the folded module's flattened
        per-channel vector (-1: not scaled; None: unknown). What training needs to recompute the
        folded weight from the live model (:mod:`graphinterp.training.folded_scales`).
    fold_spread : float, default 1.0
        The largest over the smallest magnitude of the per-unit scales the folds applied (rows' times input
        features'): 1.0 when every unit was scaled alike (an untrained BatchNorm), inf when one scale is 0.
        Scales of their own are what the shuffle null scatters (:attr:`has_unit_scales`).
    rows : tuple of int, optional
        ``(start, stop)``: the layer holds only these rows of the parameter (torch layout), e.g. the key
        rows of a fused ``in_proj_weight`` in cross-attention, which read other nodes than its query rows.

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
    in_index: Optional[torch.Tensor] = None
    param: Optional[str] = None
    transposed: bool = False
    folded: Tuple[str, ...] = ()
    fold_maps: Tuple[Any, ...] = ()
    fold_spread: float = 1.0
    rows: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidWeightsError(f"layer {self.name!r}: kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        want = KINDS[self.kind]
        if self.weight.dim() != want:
            raise InvalidWeightsError(
                f"layer {self.name!r}: a {self.kind} weight must have {want} dimensions, "
                f"got shape {tuple(self.weight.shape)}"
            )
        if not torch.is_floating_point(self.weight):
            raise InvalidWeightsError(f"layer {self.name!r}: weights must be floating point, got {self.weight.dtype}")
        # A sum is finite when every weight is (cheap, no temporary the size of the layer); only an
        # overflowing sum of finite weights needs the element-wise check.
        if not bool(torch.isfinite(self.weight.sum())) and not bool(torch.isfinite(self.weight).all()):
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
            object.__setattr__(self, "in_index", torch.arange(self.in_groups).repeat_interleave(
                self.weight.shape[1] // self.in_groups))
        if self.in_index is not None:
            idx = torch.as_tensor(self.in_index, dtype=torch.long).cpu()
            if self.kind != "linear" or idx.dim() != 1 or idx.numel() != self.weight.shape[1]:
                raise InvalidWeightsError(f"layer {self.name!r}: in_index must give one node per input feature")
            if idx.numel() and (int(idx.min()) < 0 or bool((torch.bincount(idx) == 0).any())):
                raise InvalidWeightsError(f"layer {self.name!r}: in_index must number the input nodes 0..n-1")
            object.__setattr__(self, "in_index", idx)
        if self.rows is not None and (self.transposed or len(self.rows) != 2
                                      or self.rows[1] - self.rows[0] != self.weight.shape[0] or self.rows[0] < 0):
            raise InvalidWeightsError(f"layer {self.name!r}: rows={self.rows} must be (start, start + "
                                      f"{self.weight.shape[0]}) of a parameter stored (out, in)")
        if self.is_conv and (self.groups < 1 or self.weight.shape[0] % self.groups):
            raise InvalidWeightsError(f"layer {self.name!r}: groups={self.groups} does not divide its outputs")

    # ------------------------------------------------------------------ sizes
    @property
    def n_out(self) -> int:
        """Number of output nodes (neurons or channels)."""
        return int(self.weight.shape[0])

    @property
    def is_conv(self) -> bool:
        """True for a convolution (any number of spatial dimensions)."""
        return self.kind != "linear"

    @property
    def n_in_fine(self) -> int:
        """Number of input features (one per weight column / in-channel)."""
        return int(self.weight.shape[1]) * (self.groups if self.is_conv else 1)

    @property
    def grouped_inputs(self) -> bool:
        """True when several input features share one input node (see ``in_index``)."""
        return self.in_index is not None and int(self.in_index.max()) + 1 < self.in_index.numel()

    @property
    def has_unit_scales(self) -> bool:
        """True when a fold gave the units scales of their own (``fold_spread`` above 1.001), which a
        shuffle of the weights scatters; False for no fold or one that scaled every unit alike."""
        return bool(self.folded) and self.fold_spread > 1.001

    @property
    def param_name(self) -> str:
        """Name of the model parameter behind this layer."""
        return self.param or (f"{self.name}.weight" if self.name else "weight")

    @property
    def structure(self) -> str:
        """``"dense"``, ``"grouped"`` (grouped convolution) or ``"depthwise"`` (one input per output)."""
        if not self.is_conv or self.groups == 1:
            return "dense"
        return "depthwise" if self.weight.shape[1] == 1 else "grouped"

    @property
    def block_diagonal_reason(self) -> Optional[str]:
        """Why the layer is left out of clusterability (a depthwise or grouped convolution), or None."""
        if self.structure == "depthwise":
            return DEPTHWISE_REASON
        if self.structure == "grouped":
            return GROUPED_REASON.format(groups=self.groups)
        return None

    def n_in(self, view: str = "grouped") -> int:
        """Number of input nodes in ``view``.

        Parameters
        ----------
        view : {"grouped", "fine"}, default "grouped"
            ``"grouped"``: one input node per channel (``in_index``); ``"fine"``: one per input feature.

        Returns
        -------
        int
        """
        _check_view(view)
        if view == "grouped" and self.in_index is not None:
            return int(self.in_index.max()) + 1 if self.in_index.numel() else 0
        return self.n_in_fine

    def shape(self, view: str = "grouped") -> tuple:
        """``(n_in, n_out)`` in ``view``.

        Parameters
        ----------
        view : {"grouped", "fine"}, default "grouped"
            ``"grouped"``: one input node per channel (``in_index``); ``"fine"``: one per input feature.

        Returns
        -------
        tuple of int
        """
        return (self.n_in(view), self.n_out)

    @property
    def num_params(self) -> int:
        """Number of weights in the layer (the parameter's numel)."""
        return int(self.weight.numel())

    def with_weight(self, weight: torch.Tensor) -> "Layer":
        """The same layer (name, kind, structure, binding) with another weight tensor.

        Parameters
        ----------
        weight : torch.Tensor
            The new weight, in torch layout and of the same number of dimensions (checked as in the constructor).

        Returns
        -------
        Layer
            A copy (:func:`dataclasses.replace`); this layer is unchanged.
        """
        return replace(self, weight=weight)
