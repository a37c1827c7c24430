"""circuits, third walkthrough: the compared model's unconverged searches are said too, options the authors'
criterion ignores are refused, and a label list cannot silently drop a space."""
from __future__ import annotations

import re

import pytest

from _cli_helpers import invoke, one_error
from _interp_helpers import digits_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    return digits_checkpoint(d / "a.pt", clustering=True), digits_checkpoint(d / "b.pt", clustering=True, seed=1)


def test_compare_says_when_the_compared_models_searches_hit_the_budget(pair):
    a, b = pair
    res = invoke("circuits", a, "--compare", b, "--labels", "0,1", "--max-evals", 3, "-q")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "2 of 2 searches used the whole --max-evals before reaching a local minimum (labels 0, 1): their ECS " \
           "are upper bounds" in lines
    assert "b: 2 of 2 searches used the whole --max-evals before reaching a local minimum (labels 0, 1): their " \
           "ECS are upper bounds" in lines  # was said for MODEL only
    assert lines[-1].endswith("; some ECS are upper bounds (searches stopped at --max-evals): raise it before "
                              "reading the change")
    assert re.search(r"b's circuits hold on average \d+\.\d% (more|fewer) parameters than a's", lines[-1])


def test_the_authors_criterion_refuses_the_options_it_ignores(pair):
    a, _ = pair
    line = one_error(invoke("circuits", a, "--mode", "authors", "--labels", "0", "--score", "attribution",
                            "--max-evals", 50), 2)
    assert line.startswith("error: --score and --max-evals do not apply with --mode authors (the paper's criterion")
    res = invoke("circuits", a, "--mode", "authors", "--labels", "0", "-q")  # defaults are not "given"
    assert res.exit_code == 0, res.stderr


@pytest.mark.parametrize("labels", ["e, ,t", "0,1, "])
def test_an_item_of_only_spaces_in_labels_is_refused(pair, labels):
    a, _ = pair
    line = one_error(invoke("circuits", a, "--labels", labels), 2)
    assert "has an item of only spaces; write a space label as ' ' (quoted) or with chars:TEXT" in line


def test_compare_with_the_model_itself_is_refused(pair):
    """`--compare MODEL` ran both searches and reported +0.0% for every label."""
    modular = pair[0]
    line = one_error(invoke("circuits", modular, "--compare", modular, "--dataset", "digits", "--labels", "1"), 2)
    assert "is MODEL itself" in line
