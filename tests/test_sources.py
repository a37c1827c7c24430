"""One entry point from any source to a graph: HF models, safetensors, torchvision names, state_dicts."""
import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from graphinterp.cli.main import cli
from graphinterp.common.errors import GraphinterpError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.graph.model_trace import trace_graph
from graphinterp.graph.load import graph_structure, load_graph, open_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def _tiny(kind):
    T = transformers
    torch.manual_seed(0)
    if kind == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=16,
                                              bos_token_id=0, eos_token_id=0))
    if kind == "neox":
        return T.GPTNeoXForCausalLM(T.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=64, vocab_size=50, max_position_embeddings=16))
    if kind == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=48, vocab_size=50, max_position_embeddings=16))
    return T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, vocab_size=50, max_position_embeddings=16))


MLPS = {"gpt2": ("transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"),
        "neox": ("gpt_neox.layers.0.mlp.dense_h_to_4h", "gpt_neox.layers.0.mlp.dense_4h_to_h"),
        "llama": ("model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"),
        "bert": ("encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense")}


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama", "bert"])
def test_hf_models_trace_to_a_connected_dag_with_listed_embeddings(kind, tmp_path):
    model = _tiny(kind).eval()
    g = trace_graph(model)
    assert {m.module_type for m in g.coverage.missing} <= {"Embedding"}
    missing = sum(m.numel for m in g.coverage.missing)
    assert g.coverage.covered + missing == g.coverage.total
    fc_in, fc_out = MLPS[kind]
    assert g[fc_in].shape() == (32, {"gpt2": 128, "llama": 48}.get(kind, 64))
    assert list(g.src_nodes(fc_out)) == list(g.dst_nodes(fc_in))  # hidden units: out of one, into the other
    assert list(g.dst_nodes(fc_out)) == list(g.src_nodes(MLPS[kind][0].replace(".0.", ".1.")))  # the stream
    if kind == "llama":  # gated MLP: gate and up units are the same hidden nodes
        assert list(g.dst_nodes("model.layers.0.mlp.gate_proj")) == list(g.dst_nodes(fc_in))
    # the same weights from a HuggingFace folder give the same graph
    model.save_pretrained(tmp_path / "hf")
    opened, again = load_graph(tmp_path / "hf")
    assert opened.kind == "hf" and again.layer_names == g.layer_names
    for a, b in zip(g, again):
        torch.testing.assert_close(a.squared(), b.squared(), rtol=1e-6, atol=1e-6)


def test_gpt2_conv1d_orientation_matches_the_forward(tmp_path):
    model = _tiny("gpt2").eval()
    g = trace_graph(model, fold=False)
    c_fc = model.transformer.h[0].mlp.c_fc
    layer = g["transformer.h.0.mlp.c_fc"]
    assert layer.transposed and layer.weight.shape == (128, 32)
    seen = {}
    handle = c_fc.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), y=o.detach()))
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]))
    handle.remove()
    torch.testing.assert_close(F.linear(seen["x"], layer.weight, c_fc.bias), seen["y"])
    # a bare .safetensors file (no config): read by names, GPT-2 Conv1D transposed
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("lm_head")}
    save_file(state, str(tmp_path / "w.safetensors"))
    opened, sd_graph = load_graph(tmp_path / "w.safetensors")
    assert opened.kind == "safetensors" and not sd_graph.chained
    torch.testing.assert_close(sd_graph["transformer.h.0.mlp.c_fc"].squared(), layer.squared())
    kinds = {m.module_type for m in sd_graph.coverage.missing}
    assert kinds == {"Embedding"}


def test_state_dict_path_reports_what_it_does_not_cover():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 8, 3)
            self.lstm = nn.LSTM(8, 16)
            self.fc = nn.Linear(16, 3)

    sd = Mixed().state_dict()
    g = LayeredGraph.from_state_dict(sd)
    assert [l.kind for l in g] == ["conv1d", "linear"]
    assert {m.module_type for m in g.coverage.missing} == {"RNN/LSTM/GRU"}
    assert g.coverage.total == 4 * 8 * 3 + 4 * 16 * (8 + 16) + 16 * 3


def test_bad_sources_give_one_clear_error(tmp_path):
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(GraphinterpError, match="without config.json"):
        open_model(tmp_path / "nocfg")
    with pytest.raises(GraphinterpError, match="unknown torchvision model 'resnet_nope'"):
        open_model("resnet_nope")
    model = _tiny("gpt2")
    model.save_pretrained(tmp_path / "hf")
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    state.pop("transformer.h.1.mlp.c_fc.weight")
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(GraphinterpError, match="lack 1 tensor.*c_fc"):
        open_model(tmp_path / "hf")


def test_cli_analyze_accepts_hf_folders_and_torchvision_names(tmp_path):
    _tiny("llama").save_pretrained(tmp_path / "llama")
    runner = CliRunner()
    res = runner.invoke(cli, ["analyze", str(tmp_path / "llama"), "--k", "2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["structure"] == "dag" and data["coverage"]["missing"][0]["module_type"] == "Embedding"
    res = runner.invoke(cli, ["analyze", "squeezenet1_1", "--k", "4"])
    assert res.exit_code == 0 and "coverage: 1,231,552 of 1,231,552 weights" in res.output
    res = runner.invoke(cli, ["analyze", "nosuchnet", "--k", "4"])
    assert res.exit_code != 0 and "Traceback" not in res.output and "unknown torchvision model" in res.output


def test_cifar_resnet_state_dict_is_rebuilt_and_traced_as_a_dag(tmp_path):
    from graphinterp.sources.cifar_resnet import cifar_resnet, recognise

    model = cifar_resnet(20).eval()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.randn(m.num_features, generator=gen)
            m.running_var = torch.rand(m.num_features, generator=gen) + 0.1
    path = tmp_path / "resnet20.th"
    torch.save({"best_prec1": 91.7, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    opened, graph = load_graph(str(path))
    assert graph_structure(graph) == "dag" and graph.coverage.share == 1.0
    assert len(graph.coverage.folded) == 19 and not graph.coverage.unfolded
    assert any("CIFAR ResNet-20" in n for n in opened.notes)
    # the rebuilt module computes what the original computes
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(opened.module(x), model(x), rtol=0, atol=0)
    # option-A shortcut: the 16 stream channels reach the middle of the 32 channels of stage 2
    stream = list(graph.dst_nodes("layer1.2.conv2"))
    stage2 = list(graph.dst_nodes("layer2.0.conv2"))
    assert stage2[8:24] == stream and not set(stage2[:8] + stage2[24:]) & set(stream)
    # folded weights: conv rows scaled by gamma / sqrt(var + eps), any sign
    bn = model.layer1[0].bn1
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    torch.testing.assert_close(graph["layer1.0.conv1"].weight,
                               model.layer1[0].conv1.weight.detach() * scale[:, None, None, None])
    # anything else is not mistaken for one
    assert recognise({"conv1.weight": torch.zeros(16, 3, 3, 3)}) is None
    broken = dict(model.state_dict())
    broken["linear.weight"] = torch.zeros(10, 32)
    assert recognise(broken) is None


def test_an_encoder_decoder_is_traced_with_decoder_inputs_and_its_cross_attention_reads_the_encoder():
    T = transformers
    torch.manual_seed(0)
    model = T.T5ForConditionalGeneration(T.T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                                    num_decoder_layers=1, num_heads=2)).eval()
    g = trace_graph(model)  # guessed input: input_ids and, for an encoder-decoder, decoder_input_ids
    assert {m.module_type for m in g.coverage.missing} <= {"Embedding"}
    cross = "decoder.block.0.layer.1.EncDecAttention"
    # k and v read the encoder's output stream (what its last layer writes), q the decoder's stream
    enc_out = set(g.dst_nodes("encoder.block.0.layer.1.DenseReluDense.wo"))
    assert set(g.src_nodes(f"{cross}.k")) == set(g.src_nodes(f"{cross}.v")) == enc_out
    assert set(g.src_nodes(f"{cross}.q")) == set(g.dst_nodes("decoder.block.0.layer.0.SelfAttention.o"))
    assert set(g.src_nodes(f"{cross}.q")) != enc_out


def test_a_safetensors_file_is_read_in_the_order_of_its_numbered_layers(tmp_path):
    """safetensors returns keys sorted as text (0, 1, 10, 11, 2, ...): a 12-layer Sequential was chained in that
    order, layer 2 reading layer 11's outputs, with another E than the same weights saved as .pt; now the
    numbers are read as numbers, the graph and every layer's clustering match the .pt file's, and a note says so."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(12)])
    save_file(model.state_dict(), str(tmp_path / "seq.safetensors"))
    torch.save(model.state_dict(), tmp_path / "seq.pt")
    opened, graph = load_graph(tmp_path / "seq.safetensors")
    _, reference = load_graph(tmp_path / "seq.pt")
    assert graph.layer_names == reference.layer_names == [str(i) for i in range(12)]
    assert any("keeps no layer order" in n for n in opened.notes)
    for a, b in zip(graph.layers, reference.layers):
        assert torch.equal(a.magnitude(), b.magnitude())
    assert graph.chained and reference.chained
