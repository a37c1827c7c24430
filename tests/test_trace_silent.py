"""Five ways a traced graph silently differed from the model (a review of 2026-12-07), each now folded exactly or
noted: an InstanceNorm with running statistics, branches stacked then summed, a product of two activations that
keeps their nodes (linear attention), a scan along the nodes (cumsum), and numbers written in the code that scale a
layer's output (``x + 0.1 * f(x)``, ``x - f(x)``). Each case beside its usual neighbour, which must stay quiet."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphinterp.graph.model_trace import trace_graph
from graphinterp.training.folded_scales import live_scale


def _readers(g, layer):
    """Layers that read any output node of ``layer`` (nodes compared by their merged identity)."""
    out = set(g.dst_nodes(layer).tolist())
    return {n for n in g.layer_names if n != layer and set(g.src_nodes(n).tolist()) & out}


@pytest.mark.parametrize("affine", [True, False])
def test_an_instance_norm_with_running_statistics_folds_its_whole_scale(affine):
    """In eval mode it applies gain / sqrt(running_var + eps), a fixed per-channel scale as a BatchNorm's: the graph
    reproduces the model's linear map (it folded the gain alone before, or nothing without affine, silently)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.InstanceNorm2d(4, affine=affine, track_running_stats=True),
                      nn.Conv2d(4, 2, 1, bias=False)).eval()
    with torch.no_grad():
        m[1].running_var.copy_(torch.tensor([0.01, 0.25, 4.0, 100.0]))
        if affine:
            m[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    g = trace_graph(m)
    assert g["0"].folded == ("1 (InstanceNorm scale)",) and not g.coverage.unfolded
    x = torch.randn(2, 3, 5, 5)
    graph = F.conv2d(F.conv2d(x, g["0"].weight), g["2"].weight)
    torch.testing.assert_close(graph, m(x) - m(torch.zeros_like(x)), atol=1e-4, rtol=1e-4)
    scale = live_scale(m, g["0"], m[0].weight)  # training recomputes the same scale from the module
    torch.testing.assert_close(m[0].weight * scale(), g["0"].weight)


def test_an_instance_norm_without_running_statistics_folds_its_gain_only():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.InstanceNorm2d(4, affine=True), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    g = trace_graph(m)
    torch.testing.assert_close(g["2"].weight, m[2].weight.detach() * m[1].weight.detach()[None, :, None, None])


class _Stacked(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how, self.i, self.f1, self.f2, self.o = how, nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        x = self.i(x)
        both = torch.stack([self.f1(x), self.f2(x)])
        return self.o(x + (both.sum(0) if self.how == "sum" else both.mean(0) if self.how == "mean" else both.amax(0)))


@pytest.mark.parametrize("how", ["sum", "mean", "amax"])
def test_branches_stacked_then_reduced_merge_as_in_a_sum(how):
    """stack([f1(x), f2(x)]).sum(0) is f1(x) + f2(x): the head reads both branches' nodes (before, nothing read them,
    with coverage 100% and no note); a mean's 1/2 on each branch is noted."""
    torch.manual_seed(0)
    g = trace_graph(_Stacked(how), example=torch.randn(2, 3))
    assert "o" in _readers(g, "f1") and "o" in _readers(g, "f2")
    assert any(n.startswith("mean over stacked branches") for n in g.coverage.notes) == (how == "mean")


def test_a_norm_statistic_over_the_features_adds_no_node_and_no_note():
    """A hand-written RMSNorm reduces over the feature dimension (a statistic, not stacked branches): quiet."""

    class RMS(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g, self.b = nn.Linear(3, 6), nn.Parameter(torch.rand(6) + 0.5), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.g
            return self.b(h)

    torch.manual_seed(0)
    m = RMS()
    g = trace_graph(m, example=torch.randn(2, 4, 3))
    assert not g.coverage.notes and g.layer_names == ["a", "b"] and g.chained


def test_linear_attention_notes_the_product_it_cannot_follow_and_softmax_attention_stays_quiet():
    class Attn(nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.linear = linear
            self.i, self.q, self.k, self.v, self.o = (nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8),
                                                      nn.Linear(8, 2))

        def forward(self, x):
            x = self.i(x)
            q, k, v = self.q(x), self.k(x), self.v(x)
            if self.linear:
                return self.o(x + (F.elu(q) + 1) @ ((F.elu(k) + 1).transpose(-2, -1) @ v))
            return self.o(x + torch.softmax(q @ k.transpose(-2, -1), -1) @ v)

    torch.manual_seed(0)
    lin = trace_graph(Attn(True), example=torch.randn(2, 5, 3))
    assert any("product of two activations" in n for n in lin.coverage.notes)
    soft = trace_graph(Attn(False), example=torch.randn(2, 5, 3))
    assert not soft.coverage.notes and "o" in _readers(soft, "v")


@pytest.mark.parametrize("dim, noted", [(-1, True), (1, False)])
def test_a_scan_along_the_nodes_is_noted_and_along_positions_is_not(dim, noted):
    class Scan(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.o = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.o(torch.cumsum(self.a(x), dim=dim))

    g = trace_graph(Scan(), example=torch.randn(2, 3, 4))
    assert any(n.startswith("cumsum along a dimension of different nodes") for n in g.coverage.notes) == noted


class _Numbers(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.a, self.f, self.o = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        x = self.a(x)
        y = {"mul": lambda: x + 0.1 * self.f(x), "div": lambda: x + self.f(x) / 10,
             "alpha": lambda: torch.add(x, self.f(x), alpha=0.1), "sub": lambda: x - self.f(x),
             "neg": lambda: x + -self.f(x), "relu": lambda: x + 0.1 * torch.relu(self.f(x)),
             "gelu": lambda: x + self._gelu(self.f(x))}[self.mode]()
        return self.o(y)

    @staticmethod
    def _gelu(h):  # GPT-2's NewGELU, written out
        return 0.5 * h * (1.0 + torch.tanh(0.7978845608 * (h + 0.044715 * torch.pow(h, 3.0))))


@pytest.mark.parametrize("mode, factor", [("mul", 0.1), ("div", 0.1), ("alpha", 0.1), ("sub", -1.0), ("neg", -1.0)])
def test_a_number_in_the_code_on_a_layer_output_is_folded_and_training_follows_it(mode, factor):
    """The graph holds factor * W for f (it held W, silently), lists the fold, and training recomputes it."""
    torch.manual_seed(0)
    m = _Numbers(mode)
    g = trace_graph(m, example=torch.randn(2, 4))
    torch.testing.assert_close(g["f"].weight, factor * m.f.weight.detach())
    assert g["f"].folded == (f"{factor:g} (number in the code)",) and not g.coverage.notes
    torch.testing.assert_close(m.f.weight * live_scale(m, g["f"], m.f.weight)(), g["f"].weight)


def test_a_number_after_an_activation_is_noted_and_an_activation_s_own_numbers_stay_quiet():
    """0.1 * relu(f(x)) added to the stream cannot be folded into f's rows: noted. A hand-written GELU-like gate
    (0.5 * f(x) * (1 + tanh f(x))) reads f's output twice: the number is the activation's own arithmetic, and the
    fold is dropped without a note."""
    torch.manual_seed(0)
    m = _Numbers("relu")
    g = trace_graph(m, example=torch.randn(2, 4))
    assert any("scaled by 0.1 (a number in the code)" in n for n in g.coverage.notes)
    torch.testing.assert_close(g["f"].weight, m.f.weight.detach())  # raw, as the note says
    assert not g["f"].folded
    quiet = trace_graph(_Numbers("gelu"), example=torch.randn(2, 4))
    assert not quiet.coverage.notes and not quiet.coverage.unfolded and not quiet["f"].folded


# ---------------------------------------------------------------- a second review of the same change


def test_attention_scores_summed_over_a_head_s_features_keep_the_value_path():
    """Scores as (q k).sum(-1) reduce over one layer's features (a statistic, not stacked branches): merging them cut
    the value path and added notes; v is read by o again, quietly."""

    class A(nn.Module):
        def __init__(self):
            super().__init__()
            self.i, self.q, self.k, self.v, self.o = (nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8),
                                                      nn.Linear(8, 2))

        def forward(self, x):
            x = self.i(x)
            B, T, _ = x.shape
            q, k, v = (lin(x).view(B, T, 2, 4) for lin in (self.q, self.k, self.v))
            p = (q.unsqueeze(2) * k.unsqueeze(1)).sum(-1).softmax(2)
            return self.o(x + torch.einsum("btsh,bshd->bthd", p, v).reshape(B, T, 8))

    torch.manual_seed(0)
    g = trace_graph(A().eval(), example=torch.randn(1, 5, 3))
    assert "o" in _readers(g, "v") and not g.coverage.notes


def test_a_norm_over_head_dimensions_and_a_hand_written_group_norm_stay_quiet():
    class QKNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x).view(*x.shape[:-1], 2, 4)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)  # per head
            g = h.reshape(*x.shape[:-1], 2, 4)
            g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, keepdim=True) + 1e-5)  # GroupNorm by hand
            return self.b(g.reshape(*x.shape[:-1], 8))

    torch.manual_seed(0)
    g = trace_graph(QKNorm(), example=torch.randn(2, 5, 3))
    assert not g.coverage.notes and g.layer_names == ["a", "b"]


def test_a_number_s_tag_never_hides_a_module_of_that_name_from_the_unfolded_list():
    """`x + 2 * f(x)` folds "2 (number in the code)"; the batch-statistics BatchNorm named "2" stays listed."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Linear(4, 4)

        def forward(self, x):
            return x + 2 * self.f(x)

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False), Block(),
                      nn.Linear(4, 2)).eval()
    g = trace_graph(m, example=torch.randn(5, 3))
    assert "2" in g.coverage.unfolded and g["3.f"].folded == ("2 (number in the code)",)


class _Undone(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.i, self.f, self.g, self.o = (nn.Linear(3, 4, bias=False), nn.Linear(4, 4, bias=False),
                                          nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False))

    def forward(self, x):
        x = self.i(x)
        if self.how == "f(x) - x":  # -1 on i's raw output, which f also reads
            return self.o(self.f(x) - x)
        y = self.f(x)
        if self.how == "x - y + g(y)":
            return self.o(x - y + self.g(y))
        return self.o(0.5 * y + 0.25 * y)  # a chain: o(0.75 f(i(x)))


@pytest.mark.parametrize("how", ["f(x) - x", "x - y + g(y)", "0.5*y + 0.25*y"])
def test_a_number_fold_undone_where_it_scales_a_sum_is_noted(how):
    """The layer's raw output is also read unscaled, so the fold is undone; the number still scales a path into a sum,
    so the graph differs from the model there: noted (it was silent; the chain's map was 0.75 of the model's)."""
    torch.manual_seed(0)
    m = _Undone(how).eval()
    g = trace_graph(m, example=torch.randn(2, 3))
    assert any("(a number in the code) enters a sum" in n for n in g.coverage.notes), g.coverage.notes
    assert all(torch.equal(g[n].weight, getattr(m, n).weight.detach()) for n in g.layer_names)  # raw, as noted


def test_a_folded_number_is_recomputed_by_training_to_the_last_bit():
    """x + f(x) / 3: the tag keeps every digit of 1/3 (it kept 6), so training's weight is the graph's exactly."""

    class Third(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.f, self.o = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            x = self.a(x)
            return self.o(x + self.f(x) / 3)

    torch.manual_seed(0)
    m = Third()
    g = trace_graph(m, example=torch.randn(2, 4))
    assert g["f"].folded == (f"{1 / 3!r} (number in the code)",)
    assert torch.equal(m.f.weight * live_scale(m, g["f"], m.f.weight)(), g["f"].weight)


def test_a_lerp_by_a_number_between_two_node_sets_is_noted():
    """torch.lerp(x, f(x), 0.1) is 0.9 x + 0.1 f(x): neither number is folded, so it is noted (it was silent)."""

    class Lerp(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.f, self.o = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            x = self.a(x)
            return self.o(torch.lerp(x, self.f(x), 0.1))

    g = trace_graph(Lerp(), example=torch.randn(2, 4))
    assert any(n.startswith("torch.lerp with weight 0.1") for n in g.coverage.notes)


class _Averaged(nn.Module):
    """Two branches averaged, or a residual sum scaled, by a number written in the code after the sum."""

    def __init__(self, how):
        super().__init__()
        self.i, self.a, self.b, self.o = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.how = how

    def forward(self, x):
        h = torch.relu(self.i(x))
        if self.how == "mean":
            y = (self.a(h) + self.b(h)) / 2
        elif self.how == "times":
            y = 0.5 * (self.a(h) + self.b(h))
        elif self.how == "residual":
            y = (h + self.a(h)) * 0.5
        elif self.how == "view":  # the sum reshaped (as a transformer's heads are), then scaled
            y = (self.a(h) + self.b(h)).reshape(-1, 2, 2).transpose(1, 2).flatten(1) / 2
        elif self.how == "view-gelu":  # a view of the sum, read by more than the number: quiet
            y = (h + self.a(h)).view(-1, 4)
            y = 0.5 * y * (1 + torch.tanh(0.7978845608 * (y + 0.044715 * y ** 3)))
        elif self.how == "gelu":  # a hand-written GELU on the residual sum: the model's own arithmetic, quiet
            y = h + self.a(h)
            y = 0.5 * y * (1 + torch.tanh(0.7978845608 * (y + 0.044715 * y ** 3)))
        else:  # the same sum unscaled: quiet
            y = self.a(h) + self.b(h)
        return self.o(torch.relu(y))


@pytest.mark.parametrize("how", ["mean", "times", "residual", "view", "gelu", "view-gelu", "plain"])
def test_a_number_scaling_a_sum_of_branches_is_noted(how):
    """`(a(h) + b(h)) / 2` is the function `torch.stack([a(h), b(h)]).mean(0)` computes, which is noted; the number
    after the plain sum was dropped silently (a complete coverage for a graph that holds a and b at twice the model's
    scale), and so was one after a view of the sum. No single layer holds it: noted, never folded."""
    g = trace_graph(_Averaged(how).eval())
    noted = any("a sum of branches scaled by a number in the code" in n for n in g.coverage.notes)
    assert noted == (how in ("mean", "times", "residual", "view")), g.coverage.notes
    assert all(not layer.folded for layer in g.layers)


def test_a_weight_used_where_the_graph_cannot_follow_is_not_called_unused():
    """`W @ h.T` (the weight on the left) was reported as "not used as a Linear/Conv weight", and `F.linear(h, W[:4])`
    as "a weight that is not a parameter (a parametrization ..., a pruning mask, or a buffer)": both say now what
    happened (a slice of W; an operation the graph does not follow)."""

    class Left(nn.Module):
        def __init__(self):
            super().__init__()
            self.i, self.W, self.o = nn.Linear(4, 8), nn.Parameter(torch.randn(6, 8)), nn.Linear(6, 2)

        def forward(self, x):
            return self.o((self.W @ torch.relu(self.i(x)).T).T)

    class Sliced(Left):
        def forward(self, x):
            return F.linear(torch.relu(self.i(x)), self.W[:4])

    left = trace_graph(Left().eval(), example=torch.randn(2, 4)).coverage
    assert [m.reason for m in left.missing if m.name == "W"] == [
        "not read as a layer's weight in the traced forward pass (by a Linear, a convolution, F.linear or x @ W.T): "
        "unused, or used in an operation the graph does not follow (e.g. W @ x, the weight on the left)"]
    sliced = trace_graph(Sliced().eval(), example=torch.randn(2, 4)).coverage
    assert any("computed from parameter W (a slice, a reshape or arithmetic on it: (4, 8) from (6, 8))" in n
               for n in sliced.notes), sliced.notes


def test_a_linear_reshaped_into_a_feature_map_says_how_many_nodes_get_no_edge():
    """Linear(5, 18) -> view(2, 3, 3) -> Conv2d: the conv's two channels are bound to two of the Linear's 18
    outputs; the other 16 have no reader, which the note now counts."""

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.conv = nn.Linear(5, 18), nn.Conv2d(2, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.relu(self.fc(x)).view(-1, 2, 3, 3))

    notes = trace_graph(Decoder().eval(), example=torch.randn(2, 5)).coverage.notes
    assert any("the first position's 2 node(s) are used, and 16 of the 18 nodes its input holds get no edge" in n
               for n in notes), notes


def test_a_norm_applied_several_times_names_the_layers_of_every_application():
    """One LayerNorm and one Linear applied at three depths (ALBERT's shared layer): the reason the gain is not
    folded named only the last application's reader (ff#3), each application overwriting the one before."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.i, self.norm, self.ff, self.o = nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.i(x)
            for _ in range(3):
                n = self.norm(h)
                h = n + self.ff(n)  # the norm's output is the residual stream: the gain cannot be folded
            return self.o(h)

    reason = trace_graph(Shared().eval(), example=torch.randn(2, 3)).coverage.unfolded["norm"]
    assert "as well as by the layers ff, ff#2, ff#3;" in reason, reason
    assert "a residual sum (add)" in reason
