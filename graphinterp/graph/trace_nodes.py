"""Node ids of a trace: spaces of fresh nodes, and the merges that make two ids one node (a union-find).

Every channel a :class:`~graphinterp.graph.trace.ChannelTracer` follows is a node id. A weight layer, the
model input or an embedding creates a *space* of fresh ids (:meth:`NodeSpaces.new_space`, named uniquely);
an element-wise operation that identifies two channels (a residual sum, a gate) merges their ids
(``_merge``), except two ids of one space, which are noted instead (a rotary embedding's halves:
:data:`SAME_SPACE_MIX`; a fused gate/up product). :meth:`NodeSpaces.canon` and :meth:`NodeSpaces.roots` read
the merged ids back. :class:`NodeSpaces` is mixed into the tracer, whose ``__init__`` sets up the state
these methods use (``_parent``, ``_space_of``, ``spaces``, ``_space_names``, ``notes``, ``mixed_spaces``).
"""
from __future__ import annotations

import torch

#: The note on an element-wise sum of nodes of one space (a rotary embedding's rotated halves), not merged.
SAME_SPACE_MIX = "elementwise mix of nodes of one space (ignored, e.g. rotary embeddings)"

__all__ = ["NodeSpaces", "SAME_SPACE_MIX"]


class NodeSpaces:
    """The node-id methods of :class:`~graphinterp.graph.trace.ChannelTracer` (see the module docstring)."""

    @property
    def n_nodes(self) -> int:
        return len(self._parent)

    def new_space(self, name: str, size: int) -> torch.Tensor:
        """Create ``size`` fresh nodes in a space called ``name``; return their ids.

        Space names are unique, as node names (``space:index``) must be: a name already taken (a second
        float input, a second use of one embedding, a second cut by an unsupported layer) gets ``#2``,
        ``#3``, ... as a layer applied twice does.
        """
        if name in self._space_names:
            base, n = name, 2
            while f"{base}#{n}" in self._space_names:
                n += 1
            name = f"{base}#{n}"
        self._space_names.add(name)
        start = len(self._parent)
        self._parent.extend(range(start, start + size))
        self._space_of.extend([len(self.spaces)] * size)
        self.spaces.append((name, start, size))
        return torch.arange(start, start + size)

    def _find(self, i: int) -> int:
        parent = self._parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def roots(self) -> torch.Tensor:
        """Canonical node id of every raw node id (after all merges)."""
        return torch.tensor([self._find(i) for i in range(self.n_nodes)], dtype=torch.long)

    def _merge(self, a: torch.Tensor, b: torch.Tensor, op: str = "add") -> None:
        """Identify nodes ``a[i]`` and ``b[i]`` (both >= 0) unless that would merge one space with itself.

        Within one space, a sum is a rotary embedding's mix of halves (harmless: noted and ignored); a product
        is a fused gate/up projection (Phi-3's ``gate_up_proj``), whose gate half then has no reader in the
        graph: noted as a cut."""
        n = max(self.n_nodes, 1)
        keys = torch.unique(a.reshape(-1) * n + b.reshape(-1))
        pairs = torch.stack([keys // n, keys % n], 1).tolist()
        groups = {}
        for x, y in pairs:
            rx, ry = self._find(x), self._find(y)
            if rx == ry:
                continue
            gx, gy = self._group(rx), self._group(ry)
            if gx == gy:
                self.notes[_SAME_SPACE_PRODUCT if op in _PRODUCTS else SAME_SPACE_MIX] += 1
                if op not in _PRODUCTS:
                    self.mixed_spaces.setdefault(self.spaces[gx][0], None)  # where, for the note (in order)
                continue
            groups[(rx, ry)] = True
        for rx, ry in groups:
            rx, ry = self._find(rx), self._find(ry)
            if rx != ry:
                self._parent[max(rx, ry)] = min(rx, ry)

    def canon(self, s: torch.Tensor) -> torch.Tensor:
        """The shadow ``s`` with every node id replaced by its current root (``-1`` kept)."""
        if s.numel() == 0:
            return s
        uniq, inv = torch.unique(s, return_inverse=True)
        roots = torch.tensor([self._find(u) if u >= 0 else -1 for u in uniq.tolist()], dtype=s.dtype)
        return roots[inv]

    def _group(self, root: int) -> int:
        return self._space_of[root]


_PRODUCTS = {"mul", "__mul__", "__rmul__", "mul_", "__imul__"}
_SAME_SPACE_PRODUCT = ("product of two parts of one layer's output (a fused gate/up projection such as Phi-3's "
                       "gate_up_proj): not split into gate and up units, so the gate half has no reader in the "
                       "graph (that path is cut)")
