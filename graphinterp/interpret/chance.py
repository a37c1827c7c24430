"""Is a model's accuracy clearly above chance? The caveat printed beside results of a model that is not.

Ablation tables and circuits describe how a model computes its answers; for a model no better
than guessing (untrained, broken, or evaluated on data it was not trained on) they describe noise.
A result is flagged when its accuracy is within :data:`MARGIN_SD` standard deviations of what a
trivial predictor gets on the same examples: always the most common class for class-wise accuracy,
0.5 for a balanced one-vs-rest task (:func:`clearly_above`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

__all__ = ["MARGIN_SD", "clearly_above", "majority_rate", "chance_note"]

#: How many binomial standard deviations above the trivial predictor's accuracy count as "clearly above".
MARGIN_SD = 3.0


def clearly_above(accuracy: float, rate: float, n: float) -> bool:
    """Whether ``accuracy`` on ``n`` examples exceeds a trivial predictor's ``rate`` by :data:`MARGIN_SD` binomial sds.

    Parameters
    ----------
    accuracy : float
        The model's accuracy, in ``[0, 1]``.
    rate : float
        The trivial predictor's accuracy on the same examples (e.g. :func:`majority_rate`).
    n : float
        Number of examples (taken as at least 1).

    Returns
    -------
    bool
        True when ``accuracy > rate + MARGIN_SD * sqrt(rate * (1 - rate) / n)``.

    Examples
    --------
    >>> clearly_above(0.2, 0.1, 1000), clearly_above(0.11, 0.1, 1000), clearly_above(1.0, 1.0, 50)
    (True, False, False)
    """
    sd = math.sqrt(max(rate * (1.0 - rate), 0.0) / max(n, 1.0))
    return accuracy > rate + MARGIN_SD * sd + 1e-9


def majority_rate(labels: Sequence[int]) -> float:
    """Share of the most common label: the accuracy of always predicting it.

    Examples
    --------
    >>> majority_rate([0, 1, 1, 2])
    0.5
    """
    y = np.asarray(labels).reshape(-1)
    return float(np.bincount(y).max() / y.size) if y.size else 0.0


def chance_note(accuracy: float, labels: Sequence[int], about: str = "its clusters' ON/OFF accuracies"
                ) -> Optional[str]:
    """A caveat when ``accuracy`` on examples with these ``labels`` is not clearly above always predicting the
    most common one (None when it is); ``about`` names the results it puts in doubt.

    Parameters
    ----------
    accuracy : float
        The model's accuracy on the examples.
    labels : sequence of int
        The examples' true labels (non-negative integers).
    about : str, default "its clusters' ON/OFF accuracies"
        The results the caveat puts in doubt, as a plural noun phrase.

    Returns
    -------
    str or None
        One sentence with the accuracy and the majority rate; None when the accuracy is clearly above chance.

    Examples
    --------
    >>> chance_note(0.97, [0, 1] * 50) is None
    True
    >>> chance_note(0.52, [0, 1] * 50).split(":")[0]
    'the model is not clearly better than chance here (accuracy 0.520; always predicting the most common class'
    >>> chance_note(1.0, [0, 1, 1, 2, 3]).split(" (")[0]
    '5 example(s) are too few to tell this model from chance'
    >>> chance_note(1.0, [2] * 50).split(",")[0]
    'all 50 example(s) are of one class'
    """
    n = int(np.asarray(labels).size)
    rate = majority_rate(labels)
    if clearly_above(accuracy, rate, n):
        return None
    if rate >= 1.0:  # one class only: no accuracy can beat always predicting it, however many examples
        return (f"all {n} example(s) are of one class, so no accuracy can be told from always predicting it: {about} "
                "say nothing about the other classes; evaluate on examples of several classes")
    if not clearly_above(1.0, rate, n):  # no accuracy could pass: the examples are too few, not the model bad
        return (f"{n} example(s) are too few to tell this model from chance (even an accuracy of 1 would be within "
                f"{MARGIN_SD:g} standard deviations of always predicting the most common class, {rate:.3f}): {about} "
                "may describe noise; use more examples")
    return (f"the model is not clearly better than chance here (accuracy {accuracy:.3f}; always predicting the most "
            f"common class: {rate:.3f}): {about} describe noise, not how it computes; check that the model is "
            "trained and that the data is the one it was trained on")
