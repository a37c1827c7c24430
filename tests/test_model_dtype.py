"""A model kept in float16, bfloat16 or float64 given float32 data through the Python API.

The CLI runs such a model in float32 with a note (tests/test_association.py); the API takes the
model as the caller keeps it and brings the data to the model's precision (``in_model_dtype``), where
it used to fail in the first product with torch's "mat1 and mat2 must have the same dtype".
"""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from graphinterp import ablation_matrix, class_accuracy, cluster_network, extract_circuits, layered_graph
from graphinterp.interpret.evaluation import as_inputs, as_tensors
from graphinterp.interpret.hooks import level_means

DTYPES = [torch.float16, torch.bfloat16, torch.float64]


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(90, 6)
    y = x[:, :3].argmax(1)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):  # trained, so that circuits have edges to keep
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.requires_grad_(False), x, y


def test_as_tensors_and_as_inputs_follow_the_model_dtype_only_when_given_one():
    x, y = torch.ones(3, 2), torch.tensor([0, 1, 0])
    half = nn.Linear(2, 2).half()
    assert as_tensors((x, y))[0].dtype == torch.float32
    assert as_tensors((x, y), half)[0].dtype == torch.float16 and as_tensors((x, y), half)[1].dtype == torch.int64
    assert as_inputs(x, half).dtype == torch.float16 and as_inputs(x, nn.Linear(2, 2)) is x
    ids = torch.tensor([[1, 2]])
    assert as_inputs(ids, nn.Embedding(3, 2).half()) is ids  # token ids stay integers


@pytest.mark.parametrize("dtype", DTYPES)
def test_class_accuracy_and_ablation_of_a_model_in_another_precision(net_and_data, dtype):
    net, x, y = net_and_data
    other = copy.deepcopy(net).to(dtype)
    ref = class_accuracy(net, (x, y))
    acc = class_accuracy(other, (x, y))
    assert np.allclose(acc, ref, atol=0.1)  # was a RuntimeError (mat1 and mat2 dtypes)
    if dtype == torch.float64:
        assert np.array_equal(acc, ref)
    clustering = cluster_network(layered_graph(net), 2, random_state=0)
    for mode in ("zero", "mean"):
        a = ablation_matrix(net, None, clustering, (x, y), mode=mode, reference=x)
        b = ablation_matrix(other, None, clustering, (x, y), mode=mode, reference=x)
        assert b.off.shape == a.off.shape and np.allclose(b.full, a.full, atol=0.05)
        if dtype != torch.bfloat16:  # 8 significant bits flip the near-ties an ablation leaves between logits
            assert np.allclose(b.off, a.off, atol=0.15, equal_nan=True) and np.allclose(b.on, a.on, atol=0.15, equal_nan=True)
    assert next(other.parameters()).dtype == dtype  # the caller's model is left in its precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_level_means_and_circuits_of_a_model_in_another_precision(net_and_data, dtype):
    net, x, y = net_and_data
    other = copy.deepcopy(net).to(dtype)
    ref, got = level_means(net, None, x), level_means(other, None, x)
    assert set(got) == set(ref) and all(torch.allclose(got[n].float(), ref[n], atol=1e-2) for n in ref)
    kw = dict(labels=[0, 1], max_examples=20, progress=False, heldout=False)
    circuits, ref = extract_circuits(other, (x, y), **kw), extract_circuits(net, (x, y), **kw)
    assert sorted(circuits) == [0, 1] and all(0 < c.ecs < 1 and c.accuracy >= 0.95 for c in circuits.values())
    if dtype == torch.float64:  # the same search, in more precision
        assert all(np.array_equal(circuits[lab].masks[n], ref[lab].masks[n]) for lab in ref for n in ref[lab].masks)


@pytest.mark.parametrize("dtype, scale", [(torch.float16, 1e-3), (torch.float16, 2000.0), (torch.float32, 1e20),
                                          (torch.float32, 1e-23)])
def test_squared_weights_keep_their_range_whatever_the_precision(net_and_data, dtype, scale):
    """Layer.squared squared in the weight's own precision: a float16 layer of weights near 1e-4 squared to 0 ("all
    its weights are zero", the layer skipped), one with weights in the hundreds to inf (a NaN/inf error), and float32
    weights scaled by 1e20 or 1e-23 the same (found by the clustering review). The layer's E is now the float32 one."""
    from graphinterp import analyze

    net, _, _ = net_and_data
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        scaled[2].weight.mul_(scale)
    ref = analyze(layered_graph(net), [2]).reports[2]
    got = analyze(layered_graph(scaled.to(dtype)), [2])
    assert not got.skipped
    E = {s.layer: s.E for s in got.reports[2].layers}
    assert E["2"] == pytest.approx({s.layer: s.E for s in ref.layers}["2"], abs=2e-3)
