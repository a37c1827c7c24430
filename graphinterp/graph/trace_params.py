"""Tensors of a trace computed without the input: from one parameter, or from buffers and other constants.

A weight layer may read a parameter through a view, a cast or ``1 + weight`` (Gemma's RMSNorm), and a scale
may be computed from buffers alone (FrozenBatchNorm2d's ``weight * (running_var + eps).rsqrt()``). While a
:class:`~graphinterp.graph.trace.ChannelTracer` runs, :class:`ParamTensors` records such tensors:
``_derive`` keeps, for a tensor computed from one parameter alone, the parameter's name, the flat index of
each element in it and whether the values are the parameter's (:meth:`ParamTensors.param_of`); ``_constant``
names the module a tensor computed from buffers, plain tensor attributes (:func:`_tensor_attributes`) or
several parameters comes from (:meth:`ParamTensors.constant_owner`), so that its scale is folded or reported.
:class:`ParamTensors` is mixed into the tracer, whose ``__init__`` sets up the state these methods use
(``param_names``, ``_derived``, ``_const``, ``_keep``) and which provides ``shadow``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from graphinterp.graph.trace_ops import _IDENTITY, _LAYOUT, layer_name

__all__ = ["ParamTensors"]


class ParamTensors:
    """The parameter and constant methods of :class:`~graphinterp.graph.trace.ChannelTracer` (see the module
    docstring)."""

    def is_param_like(self, t: Any) -> bool:
        """Whether ``t`` is a parameter or computed from one alone (:meth:`param_of` without building its index)."""
        return isinstance(t, torch.Tensor) and (id(t) in self.param_names or id(t) in self._derived)

    def param_of(self, t: Any) -> Optional[Tuple[str, Optional[torch.Tensor], bool]]:
        """``(name, index, exact)`` when ``t`` is a parameter or computed from one alone (see ``_derived``)."""
        if not isinstance(t, torch.Tensor):
            return None
        if id(t) in self.param_names:
            index = torch.arange(t.numel()).view(t.shape) if t.numel() <= _DERIVED_MAX else None
            return self.param_names[id(t)], index, True
        return self._derived.get(id(t))

    def _derive(self, name: str, tensors: List[torch.Tensor], args, kwargs, out: torch.Tensor) -> None:
        """Record ``out`` as derived from a parameter when that parameter is its only tensor operand (``tensors``)."""
        if len(tensors) != 1 or self.shadow(tensors[0]) is not None:
            return
        src = self.param_of(tensors[0])
        if src is None:
            return
        pname, index, exact = src
        if name in _IDENTITY and out.shape == tensors[0].shape:
            pass  # the same elements (a cast, a copy): a weight layer reading it reads the parameter
        elif name in _LAYOUT and index is not None:
            try:
                fn = getattr(torch.Tensor, name, None) or getattr(torch, name)
                index = getattr(index, name) if name in ("T", "mT") else fn(index, *args[1:], **kwargs)
            except Exception:
                index = None
            if not isinstance(index, torch.Tensor) or index.shape != out.shape:
                index = None
        elif out.shape != tensors[0].shape:
            index = None
        same = name in _IDENTITY and out.shape == tensors[0].shape
        self._derived[id(out)] = (pname, index, exact and (same or (name in _LAYOUT and index is not None)))
        self._keep.append(out)

    def constant_owner(self, t: Any) -> Optional[str]:
        """The module whose buffers (or tensor attributes, or several parameters) ``t`` was computed from, not
        from the input; None otherwise (a parameter, or a tensor from one parameter alone: :meth:`param_of`)."""
        if not isinstance(t, torch.Tensor):
            return None
        return self._const.get(id(t))

    def _constant(self, tensors: List[torch.Tensor], out: torch.Tensor) -> None:
        """Record ``out`` as a constant when its tensor operands are buffers, parameters or constants: one of
        them a buffer or constant, or two parameters or more (one alone is :meth:`_derive`'s)."""
        owners = [self.constant_owner(t) for t in tensors]
        if not tensors or not all(o or self.is_param_like(t) for o, t in zip(owners, tensors)):
            return
        if any(owners):
            self._const[id(out)] = next(o for o in owners if o)
        elif len(tensors) >= 2:  # named after the first parameter (param_of would also build its element index)
            first = id(tensors[0])
            self._const[id(out)] = layer_name(self.param_names[first] if first in self.param_names
                                              else self._derived[first][0])
        else:
            return
        self._keep.append(out)


_DERIVED_MAX = 1 << 20  # largest parameter whose derived tensors are followed (an index per element is kept)


def _tensor_attributes(model: torch.nn.Module, known: Dict[int, str]) -> Dict[int, str]:
    """Tensors held as plain attributes of ``model``'s modules (neither parameters nor buffers): id -> module name.

    They are constants of the forward like buffers, but not in the state_dict; a scale by one is folded
    or reported as buffers are.
    """
    params = {id(p) for p in model.parameters()}
    out: Dict[int, str] = {}
    for mname, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not attr.startswith("_") and id(value) not in params \
                    and id(value) not in known:
                out[id(value)] = f"{mname}.{attr}" if mname else attr
    return out
