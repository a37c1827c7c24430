"""Tied weights: which module applies a parameter that several modules share, while a trace runs.

A tensor registered under several names (``b.weight = a.weight``; GPT-2's ``lm_head.weight``, which is
``transformer.wte.weight``) is one parameter but may be applied by several modules. The tracer sees only
the tensor; :class:`TieOwners` tells it which of the tensor's owners is running, so that the layer is
named after the module that applies it (``b``, not a second use of ``a``), and interventions find that
module by the layer's name. One module registered under several names (``self.b = self.a``, a
``ModuleList([block] * 3)``) is one owner, named by its first name.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional

import torch

__all__ = ["TieOwners", "embedding_ties"]


class TieOwners:
    """While entered, the name under which the innermost running module holds each shared parameter.

    Forward hooks are registered on the modules that own a parameter with several names, and are
    always removed on exit (also when the forward raises).

    Parameters
    ----------
    model : torch.nn.Module
    aliases : dict
        Parameter id -> its names (``named_parameters(remove_duplicate=False)``).

    Examples
    --------
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> m[1].weight = m[0].weight
    >>> seen = []
    >>> with TieOwners(m, {id(m[0].weight): ["0.weight", "1.weight"]}) as ties:
    ...     _ = m[1].register_forward_pre_hook(lambda *a: seen.append(ties.applier(id(m[0].weight))))
    ...     _ = m(torch.zeros(1, 2))
    >>> seen
    ['1.weight']
    """

    def __init__(self, model: torch.nn.Module, aliases: Dict[int, List[str]]) -> None:
        self._model = model
        self._shared = {pid: names for pid, names in aliases.items() if len(names) > 1}
        self._running: Dict[int, List[str]] = {}
        self._handles: list = []

    def applier(self, pid: int) -> Optional[str]:
        """The name of shared parameter ``pid`` under the innermost running module that owns it, or None."""
        stack = self._running.get(pid)
        return stack[-1] if stack else None

    def __enter__(self) -> "TieOwners":
        try:
            for pid, names in self._shared.items():
                hooked = set()  # one module registered under several names (s.b = s.a, [block] * 3): its first name
                for name in names:
                    owner = name.rpartition(".")[0]
                    module = self._model.get_submodule(owner) if owner else self._model
                    if id(module) in hooked:
                        continue
                    hooked.add(id(module))
                    self._handles.append(module.register_forward_pre_hook(partial(self._push, pid, name)))
                    self._handles.append(module.register_forward_hook(partial(self._pop, pid), always_call=True))
        except (AttributeError, RuntimeError):  # a module that takes no hooks (TorchScript): names as before
            self.__exit__(None, None, None)
        return self

    def __exit__(self, *exc) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._running.clear()

    def _push(self, pid: int, name: str, _module, _args) -> None:
        self._running.setdefault(pid, []).append(name)

    def _pop(self, pid: int, _module, _args, _out) -> None:
        stack = self._running.get(pid)
        if stack:
            stack.pop()


def embedding_ties(model: torch.nn.Module, aliases: Dict[int, List[str]]) -> Dict[int, str]:
    """Parameter id -> the name of the non-embedding module owning a tied weight (``lm_head.weight`` for
    GPT-2's output projection, which is ``transformer.wte.weight``): weight layers that apply a tied
    tensor are named after that module, not after the embedding that owns the tensor's first name
    (also when the projection runs outside any owning module's forward)."""
    embeddings = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    out = {}
    for pid, names in aliases.items():
        applying = [n for n in names[1:] if n.rpartition(".")[0] not in embeddings]
        if applying and names[0].rpartition(".")[0] in embeddings:
            out[pid] = applying[0]
    return out
