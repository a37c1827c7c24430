"""BSGC, the shuffle null, the enmeshment loss and circuit search on every device torch offers.

Each test runs on the CPU and, where torch finds a GPU, on CUDA (the ``[cuda]`` cases, which
``benchmarks/gpu_check.sh`` selects with ``-k cuda`` and requires not to skip). The checks are the
same on both: planted modules recovered exactly, E and the loss against float64 references computed
on the CPU, the shuffled copies identical on every device, and a circuit found on the device valid
when its masks are applied to the model on the CPU. The CUDA cases are what makes these more than
the CPU tests elsewhere: the code has CUDA branches (no thread pinning, batched QR and eigh, no
padding of thin factors) that only they cover.
"""
import numpy as np
import pytest
import torch
from torch import nn

from graphinterp.clustering.analysis import analyze
from graphinterp.clustering.bsgc import BSGC
from graphinterp.clustering.bsgc_batch import fit_batch
from graphinterp.clustering.cluster import cluster_network
from graphinterp.clustering.metrics import clusterability
from graphinterp.clustering.significance import shuffle_test, shuffle_weights
from graphinterp.graph.layered import LayeredGraph
from graphinterp.clustering.labels import Clustering
from graphinterp.common.inference import on_device
from graphinterp.interpret.ablate import ablation_matrix
from graphinterp.interpret.circuits import extract_circuit
from graphinterp.interpret.evaluation import class_accuracy
from graphinterp.interpret.label_tasks import label_task
from graphinterp.sources.models import mlp
from graphinterp.training.loss import EnmeshmentLoss

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def planted(m, n, k, seed=0, noise=0.05):
    """|W| of k planted modules of unequal sizes plus noise, rows and columns shuffled; and the modules."""
    rng = np.random.default_rng(seed)
    rows, cols = np.sort(rng.integers(0, k, m)), np.sort(rng.integers(0, k, n))
    W = noise * np.abs(rng.standard_normal((m, n))) + (rows[:, None] == cols[None, :]) * (1 + rng.random((m, n)))
    pr, pc = rng.permutation(m), rng.permutation(n)
    return W[pr][:, pc], rows[pr], cols[pc]


def mlp_and_its_labels(hidden, n=300):
    """A random two-layer ReLU MLP (6 inputs, 3 classes), ``n`` Gaussian inputs and the model's own argmax."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, 3, bias=False))
    x = torch.randn(n, 6)
    return model, x, model(x).argmax(1).detach()


def same_partition(a, b):
    """True when labelings ``a`` and ``b`` are the same partition (up to renumbering)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_bsgc_recovers_planted_modules_on_each_device(device, dtype):
    # 400 x 700 takes the randomized SVD (on CUDA: batched QR, eigh on the device), not the exact one
    W, rows, cols = planted(400, 700, 3)
    A = torch.as_tensor(W, dtype=dtype, device=device)
    fit = BSGC(3, random_state=0).fit(A)
    assert same_partition(fit.row_labels_, rows) and same_partition(fit.column_labels_, cols)
    assert same_partition(np.concatenate([fit.row_labels_, fit.column_labels_]), np.concatenate([rows, cols]))
    # the leading singular values against a float64 SVD of the normalised matrix on the CPU
    W64 = torch.as_tensor(W, dtype=torch.float64)
    An = W64 / W64.sum(1, keepdim=True).sqrt() / W64.sum(0, keepdim=True).sqrt()
    exact = torch.linalg.svdvals(An)[:3].numpy()
    assert np.allclose(fit.singular_values_, exact, atol=1e-4 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_fit_batch_equals_each_fit_on_each_device(device):
    rng = np.random.default_rng(1)
    As = torch.as_tensor(np.abs(rng.standard_t(3, (3, 300, 900))), dtype=torch.float32, device=device)
    seeds = [4, 5, 6]
    for got, a, s in zip(fit_batch(As, 4, seeds), As, seeds):
        alone = BSGC(4, random_state=s).fit(a)
        assert np.array_equal(got.row_labels_, alone.row_labels_)
        assert np.array_equal(got.column_labels_, alone.column_labels_)


@pytest.mark.parametrize("device", DEVICES)
def test_analyze_clusters_on_the_device_asked_for(device, monkeypatch):
    W, rows, cols = planted(60, 40, 3, seed=3)
    model = nn.Sequential(nn.Linear(60, 40, bias=False), nn.ReLU(), nn.Linear(40, 5, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(W.T, dtype=torch.float32))
    graph = LayeredGraph.from_module(model)
    seen = []
    fit = BSGC.fit
    monkeypatch.setattr(BSGC, "fit", lambda self, A, y=None: (seen.append(A.device.type), fit(self, A))[1])
    result = analyze(graph, 3, device=device)
    assert seen == [torch.device(device).type] * 2  # both layers clustered there
    got_rows, got_cols = result.clusterings[3].labels("0")
    assert same_partition(got_rows, rows) and same_partition(got_cols, cols)
    assert model[0].weight.device.type == "cpu" and graph["0"].weight.device.type == "cpu"  # inputs stay put
    assert result.reports[3].layers[0].E > 0.99


@pytest.mark.parametrize("device", DEVICES)
def test_shuffle_null_on_each_device(device):
    W, _, _ = planted(120, 90, 3, seed=2)
    A = torch.as_tensor(W, dtype=torch.float32)
    # the shuffled copies are the same on every device for the same generator seed
    here = shuffle_weights(A.to(device), 4, generator=torch.Generator().manual_seed(3))
    cpu = shuffle_weights(A, 4, generator=torch.Generator().manual_seed(3))
    assert here.device.type == torch.device(device).type and torch.equal(here.cpu(), cpu)
    t = shuffle_test(W, 3, n_shuffles=9, random_state=0, device=device)
    ref = shuffle_test(W, 3, n_shuffles=9, random_state=0, device="cpu")
    assert t.score.p_value == t.min_p_value == 0.1 and t.score.z > 5  # planted modules: far above the null
    assert t.E.observed == pytest.approx(ref.E.observed, abs=1e-6)
    # the shuffles are the same matrices; their clusterings may differ by float rounding on another device
    assert t.E.mean == pytest.approx(ref.E.mean, abs=0.01)


@pytest.mark.parametrize("device", DEVICES)
def test_enmeshment_loss_and_gradient_on_each_device(device):
    torch.manual_seed(0)
    model = mlp(12, [10, 8], 3).double()
    clustering = cluster_network(LayeredGraph.from_module(model), 2, random_state=0)
    model.to(device)
    loss = EnmeshmentLoss(model, clustering)
    value = loss()
    value.backward()
    assert value.device.type == torch.device(device).type
    # float64 reference on the CPU: 1 - mean of the layers' within-cluster shares of squared weight
    cpu = {n: p.detach().cpu().clone().requires_grad_(True) for n, p in model.named_parameters()}
    shares = [clusterability(cpu[f"{name}.weight"].T.square(), *clustering.labels(name)) for name in loss.layers]
    ref = 1 - torch.stack(shares).mean()
    ref.backward()
    assert value.item() == pytest.approx(ref.item(), abs=1e-12)
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad.cpu(), cpu[n].grad, atol=1e-12), n
    assert torch.autograd.gradcheck(lambda *_: loss(), tuple(p for p in model.parameters() if p.requires_grad))


@pytest.mark.parametrize("device", DEVICES)
def test_a_loss_with_folded_scales_follows_the_model_to_the_device(device):
    """Built on the CPU, then the model moves: the folded BatchNorm's channel indices must move with it."""
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4, bias=False))
    model = model.double().eval()
    graph = LayeredGraph.from_module(model)
    loss = EnmeshmentLoss(model, cluster_network(graph, 2, random_state=0), graph=graph)
    before = loss().item()
    model.to(device)
    value = loss()
    assert value.device.type == torch.device(device).type and value.item() == pytest.approx(before, rel=1e-12)


@pytest.mark.parametrize("score", ["magnitude", "learned"])
@pytest.mark.parametrize("device", DEVICES)
def test_circuit_found_on_each_device_holds_on_the_cpu(device, score):
    model, x, y = mlp_and_its_labels(16)
    task = label_task(x, y, 1)
    c = extract_circuit(model, task, device=device, score=score)
    assert all(p.device.type == "cpu" for p in model.parameters())  # moved back after the search
    assert c.accuracy >= 0.95 * c.full_accuracy
    masked = mlp_and_its_labels(16)[0]
    with torch.no_grad():
        for i in ("0", "2"):
            assert c.masks[i].shape == model[int(i)].weight.shape
            masked[int(i)].weight.copy_(model[int(i)].weight.cpu() * c.masks[i].cpu())
        acc, loss = task.metrics(masked(task.x))
        full_acc, _ = task.metrics(model.cpu()(task.x))
    assert acc == pytest.approx(c.accuracy, abs=1e-9) and full_acc == pytest.approx(c.full_accuracy, abs=1e-9)
    assert loss == pytest.approx(c.loss, rel=1e-4)
    assert sum(int(m.sum()) for m in c.masks.values()) < sum(m.numel() for m in c.masks.values())  # something was pruned


@pytest.mark.parametrize("device", DEVICES)
def test_evaluations_on_a_device_leave_the_model_where_it_was(device):
    model, x, y = mlp_and_its_labels(8, n=200)
    c = Clustering(2, {"0": np.array([0, 1] * 3)}, {"0": np.array([0, 1] * 4)})
    acc = class_accuracy(model, (x, y), device=device)
    res = ablation_matrix(model, None, c, (x, y), device=device)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert np.array_equal(acc, np.ones(3)) and np.array_equal(res.full, acc)  # y is the model's own argmax
    assert np.array_equal(res.off, ablation_matrix(model, None, c, (x, y), device="cpu").off)


def test_on_device_moves_the_model_there_and_back_even_on_error(monkeypatch):
    model = nn.Linear(2, 2)
    moves = []
    monkeypatch.setattr(model, "to", lambda d: moves.append(torch.device(d)) or model)  # a fake move: no GPU needed
    with pytest.raises(RuntimeError, match="inside"):
        with on_device(model, torch.device("cuda")):
            assert moves == [torch.device("cuda")]
            raise RuntimeError("inside")
    assert moves == [torch.device("cuda"), torch.device("cpu")]
    moves.clear()
    with on_device(model, torch.device("cpu")):
        pass
    assert moves == []  # already there: nothing moved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_device_puts_each_tensor_of_a_split_model_back_cuda():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).cuda())
    with on_device(model, torch.device("cuda")):
        assert all(p.is_cuda for p in model.parameters())
    assert [p.device.type for p in model.parameters()] == ["cpu", "cpu", "cuda", "cuda"]


@pytest.mark.parametrize("device", DEVICES)
def test_association_moments_on_the_device_equal_the_cpus(device):
    from graphinterp.interpret.association import association_moments

    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(),
                        nn.Linear(5, 2)).double()
    x = torch.randn(20, 2, 6, 6, generator=gen, dtype=torch.float64)
    kinds = ["covariance", "upstream", "downstream"]
    ref = association_moments(net, x, kinds=kinds, device="cpu")
    got = association_moments(net, x, kinds=kinds, device=device)
    for kind in kinds:
        for level, M in ref[kind].items():
            assert got[kind][level].device.type == "cpu" and torch.allclose(got[kind][level], M, atol=1e-9)
