"""Grouped-query attention (Llama-3, Mistral, Qwen2: fewer key/value heads than query heads): the output
projection reads the value projection's nodes, each value head serving consecutive query heads, as
``scaled_dot_product_attention(..., enable_gqa=True)`` and ``repeat_kv`` compute. The tracer used to give up
("not followed (RuntimeError)") and o_proj read a fresh, unconnected node space."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphinterp.graph.model_trace import trace_graph


class GQA(nn.Module):
    def __init__(self, d: int = 16, heads: int = 4, kv: int = 2, repeat: bool = False):
        super().__init__()
        self.h, self.kv, self.hd, self.repeat = heads, kv, d // heads, repeat
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, kv * self.hd, bias=False)
        self.v = nn.Linear(d, kv * self.hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        if self.repeat:  # as HF's repeat_kv before a plain attention call
            k = k.repeat_interleave(self.h // self.kv, dim=1)
            v = v.repeat_interleave(self.h // self.kv, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return x + self.o(a.transpose(1, 2).reshape(B, T, -1))


@pytest.mark.parametrize("repeat", [False, True])
def test_the_output_projection_reads_the_value_heads_it_is_served_by(repeat):
    torch.manual_seed(0)
    model = GQA(repeat=repeat)
    g = trace_graph(nn.Sequential(model), example=torch.randn(2, 5, 16))
    assert not g.coverage.notes, g.coverage.notes
    v_out = g.dst_nodes("0.v").tolist()  # one node per value feature (kv heads x head dim)
    o_in = g.src_nodes("0.o").tolist()
    feature_node = [o_in[i] for i in g["0.o"].in_index.tolist()] if g["0.o"].in_index is not None else o_in
    hd, rep = model.hd, model.h // model.kv
    expected = [v_out[(j // hd // rep) * hd + j % hd] for j in range(16)]  # query head j // hd reads kv head // rep
    assert feature_node == expected
