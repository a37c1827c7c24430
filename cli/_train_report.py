"""What ``graphinterp train`` prints when a run ends: the history, the final E per clustered layer (mlp, cnn)
or MLP block (transformer) and the final line, or the ``--json`` object.

Every E is shown beside its random-partition baseline ``E_random`` (a random partition with the same
cluster sizes) and the normalised score ``(E - E_random) / (1 - E_random)``
(:mod:`graphinterp.training.baselines`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import click

from graphinterp.cli._common import emit_json, format_table

__all__ = ["report_training", "report_transformer"]


def _legend(training: str, steps: str) -> str:
    """What each history column is measured over: the ``training`` columns are means over ``steps``, the others are
    taken at the row's end (an L_E with no part in the loss, during the warm-up, too)."""
    return (f"{training}: means over {steps} (L_E where it is not in the loss, in the warm-up: at the row's "
            "end); E, E_rand, score and the test columns: at the row's end")


def _final(last: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """The run's final E, E_random and score: of the refit clustering for a baseline (lam = 0), else the last row's."""
    if "E_refit" in last:
        return {"E": last["E_refit"], "E_random": last.get("E_random_refit"), "score": last.get("score_refit")}
    return {"E": last["E"], "E_random": last.get("E_random"), "score": last.get("score")}


def _E_text(scores: Dict[str, Optional[float]]) -> str:
    """``E = 0.9124 (E_random 0.2500, score 0.8832)``."""
    if scores["E"] is None:
        return "E = -"
    if scores["E_random"] is None:  # not reached by this version's trainers, which record every E's baseline
        return f"E = {scores['E']:.4f}"
    return f"E = {scores['E']:.4f} (E_random {scores['E_random']:.4f}, score {scores['score']:.4f})"


def _per_part(E: Dict[str, float], E_random: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """``E``, ``E_random`` and ``score`` per layer (block), from the two dicts by name."""
    from graphinterp import with_baseline

    return {name: with_baseline(value, E_random[name]) for name, value in E.items()}


def report_training(config, result, out: str, lam: float, k: int, as_json: bool) -> None:
    """Print the end of an mlp or cnn run (``result``: :class:`graphinterp.TrainResult`)."""
    from graphinterp import EnmeshmentLoss, format_history
    from graphinterp import layer_random

    last = result.history[-1]
    per_layer: Dict[str, Dict[str, float]] = {}
    if result.clustering is not None:
        loss = EnmeshmentLoss(result.model, result.clustering)
        per_layer = _per_part(loss.per_layer(), layer_random(loss.masks))
    final = _final(last)
    if as_json:
        emit_json({"config": config.to_dict(), "checkpoint": out, "notes": result.notes, "history": result.history,
                   "final": {"test_acc": last["test_acc"], **final,
                             **_columns(per_layer, "layer"),
                             "clustering": result.clustering.to_dict() if result.clustering else None}})
        return
    click.echo(format_history(result.history))
    click.echo(_legend("loss, CE and L_E", "the epoch's steps"))
    click.echo("")
    if per_layer:
        what = "clustering fitted to the final weights" if lam == 0 else "training clustering"
        click.echo(format_table([[name, k, s["E"], s["E_random"], s["score"]] for name, s in per_layer.items()],
                                ["layer", "k", f"E ({what})", "E_random", "score"]))
    click.echo(f"final test accuracy {last['test_acc']:.4f}; {_E_text(final)}; checkpoint: {out}")


def report_transformer(config, result, out: str, lam: float, k: int, as_json: bool) -> None:
    """Print the end of a transformer run (``result``: :class:`graphinterp.TrainResult`)."""
    from graphinterp import blocks_from_clustering

    last = result.history[-1]
    refit = "E_blocks_refit" in last
    E_blocks = (last.get("E_blocks_refit") if refit else last.get("E_blocks")) or {}
    E_random = (last.get("E_blocks_random_refit") if refit else last.get("E_blocks_random")) or {}
    per_block = _per_part(E_blocks, E_random)
    final = _final(last)
    if as_json:
        emit_json({"config": config.to_dict(), "checkpoint": out, "notes": result.notes, "history": result.history,
                   "final": {"test_acc": last["test_acc"], "test_loss": last["test_loss"], **final,
                             **_columns(per_block, "block"),
                             "clustering": result.clustering.to_dict() if result.clustering else None}})
        return
    rows = [[r["step"], r["phase"], r["ce"], *("-" if r.get(key) is None else r[key]
                                               for key in ("l_e", "E", "E_random", "score")),
             r["test_loss"], r["test_acc"], r["time"]] for r in result.history]
    click.echo(format_table(rows, ["step", "phase", "CE", "L_E", "E", "E_rand", "score", "test loss", "test acc",
                                   "time (s)"]))
    click.echo(_legend("CE and L_E", "the steps since the previous row"))
    click.echo("")
    if per_block and result.clustering is not None:
        what = "clustering fitted to the final weights" if lam == 0 else "training clustering"
        blocks = {b.name: b for b in blocks_from_clustering(result.clustering)}
        click.echo(format_table([[name, f"{blocks[name].d_model}->{blocks[name].d_hidden}->{blocks[name].d_model}",
                                  k, s["E"], s["E_random"], s["score"]] for name, s in per_block.items()],
                                ["MLP block", "stream->hidden->stream", "k", f"E ({what})", "E_random", "score"]))
    click.echo(f"final test accuracy {last['test_acc']:.4f}; test loss {last['test_loss']:.4f}; {_E_text(final)}; "
               f"checkpoint: {out}")


def _columns(per_part: Dict[str, Dict[str, float]], part: str) -> Dict[str, Dict[str, float]]:
    """The JSON's ``E_per_<part>``, ``E_random_per_<part>`` and ``score_per_<part>``: name -> value."""
    return {f"{key}_per_{part}": {name: s[key] for name, s in per_part.items()} for key in ("E", "E_random", "score")}
