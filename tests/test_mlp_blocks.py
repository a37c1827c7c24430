"""MLP blocks of transformers: finding, BSGC per block, masks and the enmeshment loss, HF adapters."""
import numpy as np
import pytest
import torch
from torch import nn

from graphinterp.common.errors import ClusteringError, UnsupportedModelError
from graphinterp.training.loss import EnmeshmentLoss
from graphinterp.clustering.metrics import clusterability_report
from graphinterp.clustering.mlp_blocks import block_matrix, cluster_mlp_blocks, find_mlp_blocks
from graphinterp.training.baselines import block_clusterability
from graphinterp.graph.model_trace import trace_graph
from graphinterp.sources.transformer import transformer


def _tiny(n_layers=1, seed=0, dtype=torch.float32, d_model=16, d_mlp=32):
    torch.manual_seed(seed)
    return transformer(vocab=12, n_out=11, n_ctx=3, d_model=d_model, n_heads=2, d_mlp=d_mlp,
                       n_layers=n_layers).to(dtype)


def _hf(kind):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0))
    if kind == "neox":
        return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=40,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=0))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=40,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=0))


EXPECTED = {
    "gpt2": [(("transformer.h.0.mlp.c_fc",), "transformer.h.0.mlp.c_proj"),
             (("transformer.h.1.mlp.c_fc",), "transformer.h.1.mlp.c_proj")],
    "neox": [(("gpt_neox.layers.0.mlp.dense_h_to_4h",), "gpt_neox.layers.0.mlp.dense_4h_to_h"),
             (("gpt_neox.layers.1.mlp.dense_h_to_4h",), "gpt_neox.layers.1.mlp.dense_4h_to_h")],
    "llama": [(("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"), "model.layers.0.mlp.down_proj"),
              (("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"), "model.layers.1.mlp.down_proj")],
}


def test_finds_the_mlp_blocks_of_graphinterps_transformer_and_not_attention():
    g = trace_graph(_tiny(n_layers=2))
    blocks = find_mlp_blocks(g)
    assert [(b.inputs, b.output, b.d_model, b.d_hidden) for b in blocks] == [
        (("blocks.0.mlp.fc_in",), "blocks.0.mlp.fc_out", 16, 32),
        (("blocks.1.mlp.fc_in",), "blocks.1.mlp.fc_out", 16, 32)]


def test_no_mlp_blocks_is_one_clear_error():
    with pytest.raises(UnsupportedModelError, match="no MLP blocks found"):
        find_mlp_blocks(trace_graph(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))))

    class AttnOnly(nn.Module):  # a residual stream, but only attention-like v -> out projections
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.attn = nn.ModuleDict({"v": nn.Linear(8, 8), "out": nn.Linear(8, 8)})

        def forward(self, ids):
            h = self.embed(ids)
            return h + self.attn["out"](self.attn["v"](h))

    with pytest.raises(UnsupportedModelError, match="no MLP blocks found"):
        find_mlp_blocks(trace_graph(AttnOnly()))


def test_block_matrix_holds_the_blocks_squared_weight_and_E_matches_the_graph():
    model = _tiny()
    g = trace_graph(model)
    block = find_mlp_blocks(g)[0]
    B = block_matrix(g, block)
    mlp = model.blocks[0].mlp
    total = float(mlp.fc_in.weight.detach().double().square().sum() + mlp.fc_out.weight.detach().double().square().sum())
    assert B.shape == (16, 32) and abs(float(B.square().sum()) - total) < 1e-9
    torch.testing.assert_close(B.square(), mlp.fc_in.weight.detach().double().T.square()
                               + mlp.fc_out.weight.detach().double().square())
    c = cluster_mlp_blocks(g, 3, random_state=0)
    loss = EnmeshmentLoss(model, c, graph=g)
    E_block = block_clusterability(loss.masks, [block])[block.name]
    assert abs(E_block - clusterability_report(g, c).E) < 1e-6  # raw-parameter E == graph E (nothing folded)
    rows, cols = c.labels("blocks.0.mlp.fc_in")
    dense = (B.square() * torch.as_tensor(rows[:, None] == cols[None, :])).sum() / B.square().sum()
    assert abs(float(dense) - E_block) < 1e-6


def test_planted_modular_block_is_recovered_with_tied_stream_labels():
    from sklearn.metrics import adjusted_rand_score

    model = _tiny(d_model=12, d_mlp=24)
    stream, hidden = np.arange(12) % 3, np.arange(24) % 3
    with torch.no_grad():
        mlp = model.blocks[0].mlp
        mlp.fc_in.weight.mul_(torch.as_tensor(hidden[:, None] == stream[None, :]))
        mlp.fc_out.weight.mul_(torch.as_tensor(stream[:, None] == hidden[None, :]))
    c = cluster_mlp_blocks(trace_graph(model), 3, random_state=0)
    assert adjusted_rand_score(hidden, c.col_labels["blocks.0.mlp.fc_in"]) == 1.0
    assert adjusted_rand_score(stream, c.row_labels["blocks.0.mlp.fc_in"]) == 1.0
    assert np.array_equal(c.row_labels["blocks.0.mlp.fc_in"], c.col_labels["blocks.0.mlp.fc_out"])  # tied
    assert np.array_equal(c.col_labels["blocks.0.mlp.fc_in"], c.row_labels["blocks.0.mlp.fc_out"])


def test_k_larger_than_the_block_is_refused():
    g = trace_graph(_tiny())
    with pytest.raises(ClusteringError, match="d_mlp 32"):
        cluster_mlp_blocks(g, 17)


def test_loss_gradcheck_on_a_transformer():
    model = _tiny(dtype=torch.float64)
    g = trace_graph(model)
    c = cluster_mlp_blocks(g, 2, random_state=0)
    loss = EnmeshmentLoss(model, c, graph=g)
    params = [m.param for m in loss.masks.values()]
    masks = [m.mask for m in loss.masks.values()]

    def f(*ws):
        with torch.no_grad():
            for p, w in zip(params, ws):
                p.copy_(w)
        return loss()

    def reference(*ws):  # dense formula, per-layer mean of between-cluster shares
        return sum((w.square() * (1 - m)).sum() / w.square().sum() for w, m in zip(ws, masks)) / len(ws)

    ws = [p.detach().clone().requires_grad_(True) for p in params]
    torch.testing.assert_close(loss(), reference(*ws))
    value = loss()
    value.backward()
    ref = torch.autograd.grad(reference(*ws), ws)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.grad, r)
    assert torch.autograd.gradcheck(reference, tuple(w.detach().clone().requires_grad_(True) for w in ws))


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama"])
def test_hf_adapter_finds_blocks_and_fine_tuning_lowers_L_E_without_touching_other_weights(kind):
    model = _hf(kind)
    g = trace_graph(model)
    blocks = find_mlp_blocks(g)
    assert [(b.inputs, b.output) for b in blocks] == EXPECTED[kind]
    c = cluster_mlp_blocks(g, 4, random_state=0)
    loss = EnmeshmentLoss(model, c, graph=g)
    masked = {id(m.param) for m in loss.masks.values()}
    # the norm gains the graph folded into the clustered layers: the loss scores the folded weights, so they train too
    gains = {id(model.get_submodule(tag.rpartition(" (")[0]).weight) for n in loss.masks for tag in g[n].folded}
    assert gains and all(tag.endswith("(input gain)") for n in loss.masks for tag in g[n].folded)
    masked |= gains
    for name, m in loss.masks.items():  # GPT-2 Conv1D: the mask is in the stored (in, out) layout
        layer = g[name]
        rows, cols = c.labels(name)
        expect = torch.as_tensor(cols[:, None] == rows[None, :], dtype=m.mask.dtype)
        torch.testing.assert_close(m.mask, expect.T if layer.transposed else expect)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        out0 = model(input_ids=ids).logits
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = float(loss().detach())
    for _ in range(5):
        opt.zero_grad()
        (20 * loss()).backward()
        for p in model.parameters():
            assert id(p) in masked or p.grad is None
        opt.step()
    assert float(loss().detach()) < start - 0.05
    for n, p in model.named_parameters():  # only the masked weights moved
        assert torch.equal(p, before[n]) or id(p) in masked, n
    with torch.no_grad():  # the forward outside the masked weights is intact: restoring them restores the output
        for n, p in model.named_parameters():
            p.copy_(before[n])
        torch.testing.assert_close(model(input_ids=ids).logits, out0)


def test_gpt2_gradient_similarity_is_in_graph_layout():
    from graphinterp.training.gradsim import GradientSimilarity

    model = _hf("gpt2")
    g = trace_graph(model)
    names = [n for b in find_mlp_blocks(g) for n in b.layers]
    gs = GradientSimilarity(model, names, graph=g)
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    gs.update()
    sims = gs.similarity()
    for n in names:
        assert sims[n].shape == g[n].shape()
    c = cluster_mlp_blocks(g, 2, similarity=sims, random_state=0)
    assert c.similarity == "gradient"


def test_contiguous_clusters_are_the_authors_fixed_ranges_and_their_loss_is_exact():
    """The authors' GPT-2 experiment trains against fixed contiguous clusters (k = 4: hidden units 0-767 with stream
    dimensions 0-191, ...), not BSGC; method="contiguous" builds them. On a block whose weights stay inside those
    ranges the loss is 0; moving one weight outside gives 1 - E by hand."""
    model = _tiny(d_model=12, d_mlp=24)
    g = trace_graph(model)
    c = cluster_mlp_blocks(g, 4, method="contiguous")
    stream, hidden = np.repeat(np.arange(4), 3), np.repeat(np.arange(4), 6)
    assert np.array_equal(c.row_labels["blocks.0.mlp.fc_in"], stream)  # fc_in is (hidden, stream): reads the stream
    assert np.array_equal(c.col_labels["blocks.0.mlp.fc_in"], hidden)
    assert np.array_equal(c.row_labels["blocks.0.mlp.fc_out"], hidden)
    assert np.array_equal(c.col_labels["blocks.0.mlp.fc_out"], stream)
    assert c.meta["method"] == "contiguous-mlp-blocks" and c.similarity == "fixed"
    mlp = model.blocks[0].mlp
    with torch.no_grad():
        mlp.fc_in.weight.mul_(torch.as_tensor(hidden[:, None] == stream[None, :]))
        mlp.fc_out.weight.mul_(torch.as_tensor(stream[:, None] == hidden[None, :]))
    loss = EnmeshmentLoss(model, c, graph=g, reduction="mass")
    assert float(loss().detach()) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        mlp.fc_in.weight[0, 11] = 2.0  # hidden unit 0 (range 0) reads stream dimension 11 (range 3)
    total = sum(float(m.weight.square().sum()) for m in (mlp.fc_in, mlp.fc_out))
    assert float(loss().detach()) == pytest.approx(4.0 / total, rel=1e-5)
    with pytest.raises(ClusteringError, match="method must be one of bsgc, contiguous"):
        cluster_mlp_blocks(g, 4, method="blocks")
