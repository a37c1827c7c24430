"""The mutation pass (benchmarks/mutation.py) must stay runnable: every mutant's old text occurs once in today's code.

A mutant whose code was rewritten no longer applies, and the pass then refuses to run at all; this
test catches it in the suite (in well under a second) instead of at the next mutation run.
"""
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _mutation_module():
    spec = importlib.util.spec_from_file_location("_mutation", REPO / "benchmarks" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_mutation"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_mutant_applies_exactly_once():
    module = _mutation_module()
    assert len(module.MUTANTS) > 50
    assert module.check_table(module.MUTANTS) == []


def test_a_stale_mutant_is_reported():
    import dataclasses

    module = _mutation_module()
    stale = dataclasses.replace(module.MUTANTS[0], old="text that is nowhere")
    assert module.check_table([stale]) == [f"#0 {stale.module}: old text found 0 times: 'text that is nowhere'"]
