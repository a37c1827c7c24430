"""A label's one-vs-rest terms against a direct float64 computation (softmax, argmax), in both layouts."""
import pytest
import torch

from graphinterp.interpret.label_tasks import LabelTask, TaskMetrics, class_first_terms, task_terms


def _reference(logits: torch.Tensor, label: int, positive: torch.Tensor):
    """Decision by argmax (the first of tied maxima) and -log p / -log(1 - p) from a float64 softmax."""
    x = logits.double()
    p = torch.softmax(x, -1)[:, label]
    others = torch.cat([x[:, :label], x[:, label + 1:]], 1)
    # -log(1 - p) = logsumexp(all) - logsumexp(others), stable even when p rounds to 1
    neg = torch.logsumexp(x, -1) - torch.logsumexp(others, -1)
    return (x.argmax(-1) == label) == positive, torch.where(positive, -torch.log(p), neg)


@pytest.mark.parametrize("n_cls", [2, 3, 10, 113])
def test_terms_equal_a_direct_softmax_for_every_label(n_cls):
    gen = torch.Generator().manual_seed(n_cls)
    logits = 4 * torch.randn(300, n_cls, generator=gen)
    logits[::7] = 0.0  # all classes tied: argmax says class 0
    logits[::11, -1] = logits[::11, 0]  # first and last tied
    logits[::13] *= 30  # gaps far beyond float32's exp range
    positive = torch.rand(300, generator=gen) < 0.5
    for label in {0, 1, n_cls // 2, n_cls - 1}:
        hit, loss = task_terms(logits, label, positive)
        want_hit, want_loss = _reference(logits, label, positive)
        assert torch.equal(hit, want_hit)
        assert torch.isfinite(loss).all()
        torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=1e-5)


def test_class_first_layout_gives_the_same_terms_for_stacks_of_states():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(5, 40, 7, generator=gen)  # (T, N, C)
    positive = torch.arange(40) % 3 == 0
    hit, loss = class_first_terms(logits.movedim(-1, 0).contiguous(), 4, positive)  # (T, N)
    for t in range(5):
        want_hit, want_loss = task_terms(logits[t], 4, positive)
        assert torch.equal(hit[t], want_hit) and torch.allclose(loss[t], want_loss)


def test_one_class_and_a_label_out_of_range():
    hit, loss = task_terms(torch.randn(4, 1), 0, torch.tensor([True, False, True, False]))
    assert hit.tolist() == [True, False, True, False]  # the only class is always the argmax
    assert loss[0] == 0 and torch.isinf(loss[1])
    with pytest.raises(IndexError, match="out of range"):
        task_terms(torch.randn(4, 3), 3, torch.ones(4, dtype=torch.bool))


def test_task_metrics_weigh_positives_and_negatives_equally():
    positive = torch.tensor([True] * 2 + [False] * 6)
    task = LabelTask(label=1, x=torch.zeros(8, 2), positive=positive)
    logits = torch.zeros(1, 8, 3)
    logits[0, :2, 1] = 5.0  # both positives right
    logits[0, 2:, 0] = 5.0  # every negative right
    logits[0, 7, 1] = 9.0  # ... but one
    acc, _ = TaskMetrics(task, "cpu")(logits)
    assert float(acc[0]) == pytest.approx(0.5 * 1.0 + 0.5 * 5 / 6)


def test_a_task_decided_right_on_every_example_has_accuracy_exactly_one():
    """The balanced accuracy is each group's count over its size, not a rounded sum of 1/n weights (which gave
    0.9999999999999998 or 1.0000000000000002 for some sizes, depending on the BLAS kernel); checked for every
    size up to 80 and the sizes where n times a weight of c/n rounds away from c, with one group and with both, through
    metrics() and TaskMetrics in both layouts."""
    # 49 and 98 examples of 1/n, and 49 + 49 of 0.5/49, are the sizes under 100 where n * (c/n) != c
    cases = [(n, n_pos) for n in range(1, 81) for n_pos in sorted({0, 1, n // 3, n})] + [(98, 49), (98, 0), (98, 98)]
    for n, n_pos in cases:
        positive = torch.arange(n) < n_pos
        task = LabelTask(0, torch.zeros(n, 1), positive)
        logits = torch.where(positive[:, None], torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
        assert task.metrics(logits)[0] == 1.0
        acc, _ = TaskMetrics(task, "cpu")(logits[None].expand(3, n, 2))
        assert acc.tolist() == [1.0] * 3
        acc, _ = TaskMetrics(task, "cpu")(logits[:, None].expand(n, 2, 2), examples_first=True)
        assert acc.tolist() == [1.0] * 2
        wrong = logits.flip(1)  # every decision wrong
        assert task.metrics(wrong)[0] == 0.0


def test_balanced_accuracy_weighs_the_two_groups_equally():
    positive = torch.tensor([True] * 2 + [False] * 6)
    task = LabelTask(0, torch.zeros(8, 1), positive)
    logits = torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 3 + [[1.0, 0.0]] * 3)  # positives right, half the negatives
    acc, loss = task.metrics(logits)
    assert acc == 0.5 * 1.0 + 0.5 * 0.5
    hit, terms = task_terms(logits, 0, positive)
    assert acc == pytest.approx(float(task.weights() @ hit.double()), abs=1e-15)
    assert loss == pytest.approx(float(task.weights() @ terms.double()))
