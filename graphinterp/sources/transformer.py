"""A small decoder-only transformer built from ``nn.Linear`` layers (modular addition, character LMs).

Every weight is an ``nn.Linear`` (or an embedding), so :func:`graphinterp.graph.model_trace.trace_graph`
turns the model into a :class:`~graphinterp.graph.dag.ModelGraph` and :mod:`graphinterp.hf_modular` finds
its MLP blocks (``blocks.<i>.mlp.fc_in`` -> ``blocks.<i>.mlp.fc_out``) like those of a HuggingFace model.

Block ``i`` (pre-norm when ``layernorm=True``; Nanda et al.'s modular-addition model has none)::

    h = h + attn(ln1(h))                 # attn.q, attn.k, attn.v: d_model -> n_heads * d_head; attn.out back
    h = h + mlp.fc_out(act(mlp.fc_in(ln2(h))))

With ``readout="last"`` the model returns the logits of the last position only, ``(batch, n_out)``
(a classifier of the sequence, as for ``"a b ="``), and the last block's MLP runs on the last position
only: in a causal model nothing else reaches those logits, so this is exact and 1/T of the cost.
``readout="all"`` returns ``(batch, T, n_out)`` (a language model). A sequence longer than ``n_ctx``
is read through a window of its last ``n_ctx`` tokens (as a sliding-window LM generates).

Examples
--------
>>> import torch
>>> model = transformer(vocab=10, n_out=7, n_ctx=3, d_model=16, n_heads=2, d_mlp=32, readout="last")
>>> model(torch.tensor([[1, 2, 9]])).shape
torch.Size([1, 7])
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from graphinterp.common.errors import UnsupportedModelError

__all__ = ["Transformer", "transformer"]

_ACTS = {"relu": F.relu, "gelu": F.gelu}


class Attention(nn.Module):
    """Causal multi-head self-attention with separate ``q``, ``k``, ``v`` and ``out`` Linear layers (no bias)."""

    def __init__(self, d_model: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.q = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.k = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.v = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.out = nn.Linear(n_heads * d_head, d_model, bias=False)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        B, T, _ = x.shape
        split = lambda t: t.view(t.shape[0], t.shape[1], self.n_heads, self.d_head).transpose(1, 2)  # noqa: E731
        q = split(self.q(x[:, -1:] if last_only else x))
        k, v = split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        if not last_only:
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, q.shape[2], self.n_heads * self.d_head)
        return self.out(z)


class MLP(nn.Module):
    """``fc_out(act(fc_in(x)))``."""

    def __init__(self, d_model: int, d_mlp: int, act: str) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_mlp)
        self.fc_out = nn.Linear(d_mlp, d_model)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(_ACTS[self.act](self.fc_in(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_head: int, d_mlp: int, act: str, layernorm: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model) if layernorm else nn.Identity()
        self.attn = Attention(d_model, n_heads, d_head)
        self.ln2 = nn.LayerNorm(d_model) if layernorm else nn.Identity()
        self.mlp = MLP(d_model, d_mlp, act)

    def forward(self, h: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        a = self.attn(self.ln1(h), last_only)
        h = (h[:, -1:] if last_only else h) + a
        return h + self.mlp(self.ln2(h))


class Transformer(nn.Module):
    """Decoder-only transformer; see the module docstring and :func:`transformer` for the parameters.

    The constructor does not check its arguments; :func:`transformer` does, and fills in ``d_head``.

    Parameters
    ----------
    vocab, n_out, n_ctx : int
        Input tokens, output classes, longest sequence (positions embedded).
    d_model, n_heads, d_head, d_mlp, n_layers : int
        Residual width, attention heads per block and their width, MLP hidden width, number of blocks.
    act : {"relu", "gelu"}
        The MLP's activation.
    layernorm : bool
        Pre-norm LayerNorms in each block and before the unembedding (else identities).
    readout : {"last", "all"}
        Logits of the last position ``(B, n_out)`` or of every position ``(B, T, n_out)``.
    """

    def __init__(self, vocab: int, n_out: int, n_ctx: int, d_model: int, n_heads: int, d_head: int, d_mlp: int,
                 n_layers: int, act: str, layernorm: bool, readout: str) -> None:
        super().__init__()
        self.n_ctx, self.readout = n_ctx, readout
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_head, d_mlp, act, layernorm) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model) if layernorm else nn.Identity()
        self.unembed = nn.Linear(d_model, n_out, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of token sequences.

        Parameters
        ----------
        ids : torch.Tensor of int64, shape (B, T)
            Token ids in ``0..vocab-1``; only the last ``n_ctx`` positions are read.

        Returns
        -------
        torch.Tensor
            ``(B, n_out)`` with ``readout="last"``, else ``(B, min(T, n_ctx), n_out)``.

        Raises
        ------
        ValueError
            ``ids`` is not two-dimensional.
        """
        if ids.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, T), got {tuple(ids.shape)}")
        ids = ids[:, -self.n_ctx:]  # a longer sequence is read through a window of the last n_ctx tokens
        h = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            h = block(h, last_only=self.readout == "last" and i == last)
        logits = self.unembed(self.ln_f(h))
        return logits[:, -1] if self.readout == "last" else logits


def transformer(vocab: int = 114, n_out: int = 113, n_ctx: int = 3, d_model: int = 128, n_heads: int = 4,
                d_head: Optional[int] = None, d_mlp: int = 512, n_layers: int = 1, act: str = "relu",
                layernorm: bool = False, readout: str = "last", init_std: Optional[float] = None) -> Transformer:
    """Build a :class:`Transformer` (defaults: Nanda et al.'s modular-addition model, p = 113).

    Parameters
    ----------
    vocab, n_out, n_ctx : int
        Input tokens, output classes, longest sequence.
    d_model, n_heads, d_mlp, n_layers : int
    d_head : int, optional
        Default ``d_model // n_heads``.
    act : {"relu", "gelu"}
    layernorm : bool
        Pre-norm LayerNorms (off for modular addition, as in Nanda et al.).
    readout : {"last", "all"}
        Logits of the last position ``(B, n_out)`` or of every position ``(B, T, n_out)``.
    init_std : float, optional
        Draw every weight matrix and embedding from N(0, init_std^2) (biases zero) instead of
        PyTorch's defaults; e.g. ``1 / sqrt(d_model)``.

    Returns
    -------
    Transformer

    Raises
    ------
    UnsupportedModelError
        On an invalid size, activation or readout.
    """
    sizes = dict(vocab=vocab, n_out=n_out, n_ctx=n_ctx, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp,
                 n_layers=n_layers)
    d_head = d_model // n_heads if d_head is None and isinstance(n_heads, int) and n_heads > 0 else d_head
    sizes["d_head"] = d_head
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UnsupportedModelError(f"transformer: {name} must be a positive integer, got {value!r}")
    if act not in _ACTS:
        raise UnsupportedModelError(f"transformer: act must be one of {sorted(_ACTS)}, got {act!r}")
    if readout not in ("last", "all"):
        raise UnsupportedModelError(f"transformer: readout must be 'last' or 'all', got {readout!r}")
    model = Transformer(vocab, n_out, n_ctx, d_model, n_heads, d_head, d_mlp, n_layers, act, bool(layernorm), readout)
    if init_std is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, float(init_std))
                elif name.endswith("bias"):
                    p.zero_()
    return model
