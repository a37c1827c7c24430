"""The rules on training settings that every training config shares (:class:`~graphinterp.training.train_config.TrainConfig`
and :class:`~graphinterp.training.transformer_config.TransformerConfig`): bounds, the flag each setting is named by in
messages, the checks on lambda, seeds, integers and intervals, and the messages that refuse a resume."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional

from graphinterp.common.errors import TrainingError
from graphinterp.training.loss import REDUCTIONS

__all__ = ["SIMILARITIES", "LAMBDA_MAX", "SEED_MAX", "LR_MAX", "SETTING_FLAGS", "setting_name", "format_setting",
           "absolute_path", "settings_mismatch", "too_many_done", "check_common_settings", "check_ranges",
           "check_clustering_options"]

SIMILARITIES = ("weight", "gradient")
#: Largest enmeshment-loss weight accepted. L_E <= 1 and cross-entropy is of order 1, so far smaller
#: values already make the loss all L_E; past ~1e19 Adam's squared gradients overflow float32 and
#: training silently stops moving.
LAMBDA_MAX = 1e6
#: Seeds lie in 0 .. 2**32 - 1 (what NumPy, scikit-learn and torch all accept).
SEED_MAX = 2**32 - 1
#: Largest learning rate accepted (Adam's steps are about lr in size; far beyond this, weights blow up).
LR_MAX = 10.0


#: The ``graphinterp train`` option that sets each training setting (TrainConfig or TransformerConfig
#: field): the one place messages look the flag names up. Fields without one are named as they are.
SETTING_FLAGS = {
    "dataset": "--dataset", "task": "--dataset", "model": "--model", "k": "--k", "lam": "--lambda",
    "warmup_epochs": "--warmup-epochs", "epochs": "--epochs", "warmup_steps": "--warmup-steps", "steps": "--steps",
    "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay", "similarity": "--similarity",
    "reduction": "--reduction", "clusters": "--clusters", "layers": "--layers", "seed": "--seed", "device": "--device",
    "data_dir": "--data-dir", "download": "--download", "max_train": "--max-train", "corpus": "--corpus",
}


def setting_name(name: str) -> str:
    """How messages name a training setting: its flag, plus the field when that is not simply the flag's name.

    Examples
    --------
    >>> setting_name("warmup_epochs"), setting_name("lam"), setting_name("n_ctx")
    ('--warmup-epochs', '--lambda (lam)', 'n_ctx')
    """
    flag = SETTING_FLAGS.get(name)
    if flag is None:
        return name
    return flag if flag == "--" + name.replace("_", "-") else f"{flag} ({name})"


def format_setting(value: Any) -> str:
    """A setting's value as the command line writes it (``unset`` for None, a list comma-separated).

    Examples
    --------
    >>> format_setting(20.0), format_setting(None), format_setting(["fc1", "fc2"])
    ('20.0', 'unset', 'fc1,fc2')
    """
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def absolute_path(path) -> Optional[str]:
    """``path`` made absolute (``~`` expanded; None stays None), so a checkpoint that records it can be
    evaluated from any folder."""
    return None if path is None else os.path.abspath(os.path.expanduser(os.fspath(path)))


def settings_mismatch(path, saved: Dict[str, Any], now: Dict[str, Any], fixed) -> Optional[str]:
    """Why ``path`` (trained with ``saved``) cannot be resumed with ``now``: the ``fixed`` settings that differ,
    by flag and value; None when they all agree."""
    diff = [k for k in fixed if saved.get(k) != now.get(k)]
    if not diff:
        return None
    was = "; ".join(f"{setting_name(k)} was {format_setting(saved.get(k))}, now {format_setting(now.get(k))}"
                    for k in diff)
    return f"cannot resume {path}: it was trained with other settings ({was}); use the same settings or train into another --out"


def too_many_done(path, done: int, unit: str, warmup: str, more: str, config) -> str:
    """The refusal to resume ``path``, which holds ``done`` epochs (steps), more than ``config`` asks for in all
    (its fields ``warmup`` + ``more``), saying how many to ask for instead."""
    w, m = getattr(config, warmup), getattr(config, more)
    return (f"{path} already has {done} {unit}s, more than the {w + m} requested ({setting_name(warmup)} {w} + "
            f"{setting_name(more)} {m}); ask for at least {done} in all (e.g. {setting_name(more)} {done - w}) "
            "or train into another --out")


def check_common_settings(config, integers, optional=()) -> None:
    """The rules every training config shares on lambda, the seed and its integer settings, messages naming each
    setting by its flag (:func:`setting_name`).

    ``integers`` lists ``(field, lowest value)``; a field named in ``optional`` may also be None (unset).

    Raises
    ------
    TrainingError
        lambda not a finite number in 0..``LAMBDA_MAX``, an integer setting not an integer or below its lowest
        value, or a seed above ``SEED_MAX``.
    """
    lam = config.lam
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or not 0 <= lam <= LAMBDA_MAX:
        raise TrainingError(f"{setting_name('lam')} must be a finite number in 0..{LAMBDA_MAX:g} "
                            f"(0 trains the unclustered baseline), got {lam!r}")
    for name, low in integers:
        v = getattr(config, name)
        if not (v is None and name in optional) and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise TrainingError(f"{setting_name(name)} must be an integer >= {low}, got {v!r}")
    if config.seed > SEED_MAX:
        raise TrainingError(f"{setting_name('seed')} must lie in 0..{SEED_MAX}, got {config.seed!r}")


def check_ranges(config, ranges) -> None:
    """The one rule for a training config's real-valued settings: each a finite number in its interval.

    ``ranges`` lists ``(field, low, high, closed)``, ``closed`` one of ``"both"``, ``"left"``, ``"right"``,
    ``"neither"`` (which ends belong to the interval); the message names the setting by its flag
    (:func:`setting_name`) and writes the interval as it is meant.

    Raises
    ------
    TrainingError
        A value that is not a finite number (booleans included) or lies outside its interval.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> check_ranges(SimpleNamespace(beta1=0.9), [("beta1", 0.0, 1.0, "left")])
    >>> check_ranges(SimpleNamespace(beta1=1.0), [("beta1", 0.0, 1.0, "left")])
    Traceback (most recent call last):
    ...
    graphinterp.common.errors.TrainingError: beta1 must be a number in [0, 1), got 1.0
    """
    for name, low, high, closed in ranges:
        v = getattr(config, name)
        left, right = closed in ("both", "left"), closed in ("both", "right")
        number = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if not (number and (low <= v if left else low < v) and (v <= high if right else v < high)):
            raise TrainingError(f"{setting_name(name)} must be a number in {'[' if left else '('}{low:g}, {high:g}"
                                f"{']' if right else ')'}, got {v!r}")


def check_clustering_options(similarity: str, reduction: str, warmup_name: str, warmup: int) -> None:
    """The rules on what BSGC clusters and how L_E combines layers, shared by every training config.

    Raises
    ------
    TrainingError
        An unknown similarity or reduction, or gradient similarity without a warm-up to accumulate
        gradients in.
    """
    if similarity not in SIMILARITIES:
        raise TrainingError(f"{setting_name('similarity')} must be one of {SIMILARITIES}, got {similarity!r}")
    if similarity == "gradient" and warmup < 1:
        raise TrainingError(f"gradient-based clustering needs {setting_name(warmup_name)} >= 1 to accumulate gradients")
    if reduction not in REDUCTIONS:
        raise TrainingError(f"{setting_name('reduction')} must be one of {REDUCTIONS}, got {reduction!r}")
