"""The results of a shuffle test (:mod:`graphinterp.clustering.significance`): one measure against its
null (mean, standard deviation, z, empirical p) and a layer's test of E and of the normalised score."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

__all__ = ["NullComparison", "ShuffleTest", "no_spread_note", "multiple_tests_line"]


def _finite(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def _flat(std: float, mean: float) -> bool:
    """A null's standard deviation is rounding only (the one threshold of z and :attr:`NullComparison.no_spread`)."""
    return not std > 1e-12 * max(1.0, abs(mean))


@dataclass(frozen=True)
class NullComparison:
    """One measure (E or the normalised score of a layer, a level's modularity) against its null samples.

    Attributes
    ----------
    observed : float
    null : ndarray of shape (n,)
        The measure on each shuffled copy.
    mean, std : float
        Null mean and standard deviation (``ddof=1``).
    z : float
        ``(observed - mean) / std``; ``+inf``/``-inf`` when the null has no spread and differs, NaN when equal
        (:attr:`no_spread`; in the JSON both are ``null``, beside ``"no_spread": true``).
    p_value : float
        ``(r + 1) / (n + 1)`` with ``r`` the number of null values ``>= observed`` (``<=`` when
        ``lower_is_better``); NaN for an empty null.
    lower_is_better : bool
        The measure is more structured when lower (a normalised cut); the z-score keeps its sign.
    """

    observed: float
    null: np.ndarray
    mean: float
    std: float
    z: float
    p_value: float
    lower_is_better: bool = False

    @classmethod
    def from_samples(cls, observed: float, null: np.ndarray, *, lower_is_better: bool = False) -> "NullComparison":
        """Summarise ``null`` against ``observed``.

        Examples
        --------
        >>> c = NullComparison.from_samples(0.9, np.array([0.5, 0.6, 0.7]))
        >>> round(c.z, 3), c.p_value
        (3.0, 0.25)
        >>> NullComparison.from_samples(0.4, np.array([0.5, 0.6, 0.7]), lower_is_better=True).p_value
        0.25
        """
        null = np.asarray(null, dtype=float)
        n = null.size
        mean = float(null.mean()) if n else math.nan
        std = float(null.std(ddof=1)) if n > 1 else math.nan
        diff = observed - mean
        if n > 1 and not _flat(std, mean):
            z = diff / std
        elif n > 1 and abs(diff) > 1e-12:
            z = math.copysign(math.inf, diff)
        else:
            z = math.nan
        r = int(np.count_nonzero(null <= observed + 1e-12 if lower_is_better else null >= observed - 1e-12))
        p = (r + 1) / (n + 1) if n else math.nan  # no null: no p
        return cls(float(observed), null, mean, std, float(z), p, bool(lower_is_better))

    @property
    def no_spread(self) -> bool:
        """Every null sample has the same value (up to rounding), so there is no z: the shuffles never vary."""
        return self.null.size > 1 and _flat(self.std, self.mean)

    @property
    def uninformative(self) -> bool:
        """Every null sample equals the observed value: the test cannot tell structure from its absence (p is 1)."""
        return self.no_spread and abs(self.observed - self.mean) <= 1e-12

    def to_dict(self) -> dict:
        """JSON-ready dict (non-finite numbers become ``None``; ``no_spread`` says why a z is ``None``, its sign
        then being that of ``observed - null_mean``)."""
        out = {"observed": self.observed, "null_mean": _finite(self.mean), "null_std": _finite(self.std),
               "z": _finite(self.z), "p_value": _finite(self.p_value), "no_spread": self.no_spread,
               "null": [float(v) for v in self.null]}
        return {**out, "lower_is_better": True} if self.lower_is_better else out


@dataclass(frozen=True)
class ShuffleTest:
    """Result of :func:`shuffle_test` for one layer.

    Attributes
    ----------
    layer : str
    k : int
    n_shuffles : int
    nonzero_only : bool
    E : NullComparison
        Raw clusterability E against the null.
    score : NullComparison
        Normalised score ``(E - E_rand) / (1 - E_rand)`` against the null (the fairer comparison).
    E_random : float
        Random-partition expectation of the observed clustering.
    sizes : ndarray of shape (2, k)
        Rows and columns in each cluster of the observed clustering (in the JSON also as ``row_sizes`` and
        ``col_sizes``).
    """

    layer: str
    k: int
    n_shuffles: int
    nonzero_only: bool
    E: NullComparison
    score: NullComparison
    E_random: float
    sizes: np.ndarray

    @property
    def min_p_value(self) -> float:
        """Smallest attainable p-value, ``1 / (n_shuffles + 1)``."""
        return 1.0 / (self.n_shuffles + 1)

    def notes(self) -> List[str]:
        """What the reader must know to read the test: a null that reproduces the layer (:func:`no_spread_note`)."""
        note = no_spread_note({"E": self.E, "score": self.score}, self.nonzero_only)
        return [note] if note else []

    def to_dict(self, *, include_null: bool = True) -> dict:
        """JSON-ready dict; ``include_null=False`` leaves out the per-shuffle values."""
        out = {"layer": self.layer, "k": self.k, "n_shuffles": self.n_shuffles, "nonzero_only": self.nonzero_only,
               "E_random": self.E_random, "sizes": self.sizes.tolist(), "row_sizes": self.sizes[0].tolist(),
               "col_sizes": self.sizes[1].tolist(), "min_p_value": self.min_p_value,
               "E": self.E.to_dict(), "score": self.score.to_dict(), "notes": self.notes()}
        if not include_null:
            out["E"].pop("null")
            out["score"].pop("null")
        return out


def no_spread_note(measures: dict, nonzero_only: bool) -> Optional[str]:
    """The caveat for a test whose shuffles all reproduce the observed value, so that its p of 1 says nothing.

    ``measures`` maps each measure's name to its :class:`NullComparison`; None when none is
    :attr:`~NullComparison.uninformative`.

    Examples
    --------
    >>> flat = NullComparison.from_samples(1.0, np.ones(9))
    >>> no_spread_note({"E": flat, "score": flat}, nonzero_only=True)[:62]
    'every shuffled copy has the observed E and score (the null has'
    >>> no_spread_note({"E": NullComparison.from_samples(0.9, np.array([0.5, 0.6]))}, False) is None
    True
    """
    same = [name for name, c in measures.items() if c.uninformative]
    if not same:
        return None
    why = ("; the shuffles keep the pattern of zeros (--nonzero-only), which may be what decides the clustering: "
           "leave --nonzero-only out to shuffle all weights" if nonzero_only else "")
    return (f"every shuffled copy has the observed {' and '.join(same)} (the null has no spread), so "
            f"{'that test' if len(same) == 1 else 'those tests'} cannot tell structure from its absence: p = 1 there "
            f"says nothing{why}")


def multiple_tests_line(n_tests: int, n_draws: int, what: str, alpha: float = 0.05, *, draws: str = "shuffles") -> str:
    """The line saying that a report's ``n_tests`` p-values (``what`` they are) are each uncorrected for the others.

    ``n_draws`` null samples per test give p-values on the grid ``j / (n_draws + 1)``, so with no structure at all
    each is at most ``alpha`` with probability ``floor(alpha (n_draws + 1)) / (n_draws + 1)`` (1/21 = 0.048 at 20
    shuffles, not 0.05); the line gives the expected count of such chance results and the ``draws`` a Bonferroni
    threshold ``alpha / n_tests`` needs.

    Examples
    --------
    >>> multiple_tests_line(40, 20, "E and score of 20 layers")  # doctest: +NORMALIZE_WHITESPACE
    'the 40 p-values (E and score of 20 layers) are each uncorrected for the others: with no structure at all about
    1.9 of them would be <= 0.05 by chance; a Bonferroni threshold of 0.05/40 = 0.00125 needs at least 799 shuffles
    (this run: 20)'
    """
    threshold = alpha / n_tests
    needed = math.ceil(1 / threshold - 1 - 1e-9)  # smallest n with 1/(n + 1) <= alpha / n_tests
    chance_each = math.floor(alpha * (n_draws + 1) + 1e-9) / (n_draws + 1)
    chance = (f"with no structure at all about {n_tests * chance_each:.1f} of them would be <= {alpha:g} by chance; "
              if chance_each > 0 else "")
    return (f"the {n_tests} p-values ({what}) are each uncorrected for the others: {chance}a Bonferroni threshold of "
            f"{alpha:g}/{n_tests} = {threshold:.3g} needs at least {needed} {draws} (this run: {n_draws})")
