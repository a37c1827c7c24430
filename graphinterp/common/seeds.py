"""Results over several seeds: mean, standard deviation, 95% interval and how often the sign holds.

A comparison measured on one pair of trained models (one seed) can move a lot from one training
run to the next; :func:`summarize` states it over seeds instead. The 95% interval is Student's t
interval of the mean, ``mean +- t_{0.975, n-1} * std / sqrt(n)`` (``std`` with ``ddof = 1``); it
assumes the per-seed values are independent draws and is only indicative for a handful of seeds.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

__all__ = ["SeedSummary", "summarize", "parse_seeds", "summary_table", "deterministic", "check_random_state", "layer_seed",
           "fast_random_state", "SeedDraws"]


def check_random_state(seed) -> np.random.RandomState:
    """A ``numpy.random.RandomState`` from ``None`` (numpy's global one), an int or a RandomState.

    The same contract as scikit-learn's ``check_random_state``, without importing scikit-learn
    (whose import costs about a second that a command such as ``analyze`` would pay for nothing).

    Examples
    --------
    >>> check_random_state(0).randint(1000) == np.random.RandomState(0).randint(1000)
    True
    >>> rng = np.random.RandomState(1)
    >>> check_random_state(rng) is rng
    True
    """
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.RandomState(int(seed))
    if isinstance(seed, np.random.RandomState):
        return seed
    raise ValueError(f"{seed!r} cannot be used to seed a numpy.random.RandomState: give None, an int or a RandomState")


def layer_seed(seed: int, index: int) -> int:
    """The BSGC seed of the layer at ``index`` of a graph for an integer ``seed``: the first draw of
    ``RandomState([seed, index])``. ``analyze``, ``export`` and ``benchmark`` seed a layer this way, so its
    labels depend neither on the other layers clustered nor on the command.

    Examples
    --------
    >>> layer_seed(0, 3) == layer_seed(0, 3) != layer_seed(0, 4)
    True
    """
    return int(np.random.RandomState([int(seed), int(index)]).randint(2**31 - 1))


def fast_random_state(seed) -> Union["SeedDraws", np.random.RandomState]:
    """:func:`check_random_state`'s random state, as a :class:`SeedDraws` (no RandomState built) for an int seed.

    For code that only draws ``randint`` from it, many times over (BSGC: one seed per shuffled copy).

    Examples
    --------
    >>> fast_random_state(3).randint(1000) == np.random.RandomState(3).randint(1000)
    True
    """
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return SeedDraws(int(seed))
    return check_random_state(seed)


class SeedDraws:
    """The successive ``randint`` draws of ``np.random.RandomState(seed)``, without building that RandomState.

    Building a RandomState costs about 90 us (its generator is first seeded from the OS's entropy,
    then reseeded), which was 4% of ``graphinterp benchmark``: every shuffled copy of every layer
    has its own seed. Here one RandomState per thread is reseeded (1.5 us) and replays the draws
    already made. Only ``randint(high)`` is provided, the one draw BSGC makes; the values are those
    of ``np.random.RandomState(seed).randint(high)`` called the same number of times.

    Examples
    --------
    >>> d, rs = SeedDraws(7), np.random.RandomState(7)
    >>> [d.randint(100) for _ in range(3)] == [rs.randint(100) for _ in range(3)]
    True
    """

    _local = threading.local()

    def __init__(self, seed: int) -> None:
        if not 0 <= seed < 2**32:  # numpy's own rule and message, raised here rather than at the first draw
            raise ValueError("Seed must be between 0 and 2**32 - 1")
        self.seed, self.highs = seed, []

    def randint(self, high: int) -> int:
        rs = getattr(self._local, "rs", None)
        if rs is None:
            rs = self._local.rs = np.random.RandomState(0)
        rs.seed(self.seed)
        for h in self.highs:
            rs.randint(h)
        self.highs.append(high)
        return rs.randint(high)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic torch kernels for a block; the previous settings are restored afterwards.

    ``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN deterministic without
    autotuning, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset (needed by cuBLAS on CUDA).
    On the CPU, training with graphinterp is already bit-identical for the same seed, command and
    thread count (tests/test_determinism.py); a different thread count changes float reduction
    order and so the trained weights. On CUDA this turns off the non-deterministic kernels.

    Examples
    --------
    >>> import torch
    >>> with deterministic():
    ...     torch.are_deterministic_algorithms_enabled()
    True
    """
    import torch

    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if env is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        if env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@dataclass(frozen=True)
class SeedSummary:
    """One quantity over seeds.

    Attributes
    ----------
    values : tuple of float
        Per-seed values (NaN ones are left out of the statistics).
    mean, std : float
        Mean and sample standard deviation (``ddof = 1``; NaN with fewer than 2 values).
    low, high : float
        95% t interval of the mean (NaN with fewer than 2 values).
    n_positive, n_negative : int
        Seeds with a value above / below zero (the sign of a difference).
    """

    values: tuple
    mean: float
    std: float
    low: float
    high: float
    n_positive: int
    n_negative: int

    @property
    def n(self) -> int:
        return int(np.isfinite(np.asarray(self.values, dtype=float)).sum())

    def sign_holds(self, sign: int = 1) -> int:
        """Seeds in which the value has ``sign`` (+1 or -1)."""
        return self.n_positive if sign > 0 else self.n_negative

    def format(self, fmt: str = "{:.3f}", pct: bool = False) -> str:
        """``mean +- std [low, high]`` (percent with a sign when ``pct``)."""
        f = (lambda v: f"{100 * v:+.1f}%") if pct else (lambda v: fmt.format(v))
        if self.n < 2:
            return f(self.mean) if self.n else "-"
        spread = f"{100 * self.std:.1f}%" if pct else fmt.format(self.std).lstrip("+")
        return f"{f(self.mean)} ± {spread} [{f(self.low)}, {f(self.high)}]"

    def to_dict(self) -> dict:
        return {"values": list(self.values), "mean": self.mean, "std": self.std, "ci95": [self.low, self.high],
                "n": self.n, "n_positive": self.n_positive, "n_negative": self.n_negative}


def _t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def summarize(values: Iterable[float]) -> SeedSummary:
    """Mean, std, 95% t interval and sign counts of per-seed values.

    Parameters
    ----------
    values : iterable of float
        One value per seed; non-finite ones are kept in ``values`` but left out of the statistics.

    Returns
    -------
    SeedSummary
        Mean, sample std, 95% t interval (NaN with fewer than 2 finite values) and sign counts.

    Examples
    --------
    >>> s = summarize([0.2, 0.4, 0.3])
    >>> round(s.mean, 3), round(s.std, 3), s.n_positive, [round(v, 3) for v in (s.low, s.high)]
    (0.3, 0.1, 3, [0.052, 0.548])
    >>> s.format("{:.2f}")
    '0.30 ± 0.10 [0.05, 0.55]'
    """
    vals = tuple(float(v) for v in values)
    x = np.asarray([v for v in vals if math.isfinite(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n >= 2:
        std = float(x.std(ddof=1))
        half = _t975(n - 1) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        std = low = high = float("nan")
    return SeedSummary(vals, mean, std, low, high, int((x > 0).sum()), int((x < 0).sum()))


def parse_seeds(text: Union[str, int, Sequence[int]], first: int = 0) -> List[int]:
    """``"5"`` -> five seeds from ``first``; ``"0,3,7"`` or ``"2-4"`` -> those seeds.

    Examples
    --------
    >>> parse_seeds("3"), parse_seeds("3", first=10), parse_seeds("1,4-5")
    ([0, 1, 2], [10, 11, 12], [1, 4, 5])
    """
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str):
        return [int(s) for s in text]
    text = text.strip()
    if not text.isascii():  # str.isdigit and int() accept other scripts' digits
        raise ValueError(f"--seeds: {text!r} is neither a count nor a list such as 0,3,5-7")
    if text.isdigit():
        n = int(text)
        if n < 1:
            raise ValueError("--seeds needs at least one seed")
        return list(range(first, first + n))
    out: List[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"--seeds: {text!r} is neither a count nor a list such as 0,3,5-7")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"--seeds: {text!r} lists no seed or a seed twice")
    return out


def summary_table(rows: Dict[str, SeedSummary], *, formats: Optional[Dict[str, dict]] = None,
                  signs: Optional[Dict[str, int]] = None) -> List[str]:
    """Markdown rows ``| quantity | mean ± std [95% interval] | sign holds |`` for :func:`summarize` results.

    ``formats[name]`` holds keyword arguments of :meth:`SeedSummary.format`; ``signs[name]`` the
    expected sign (rows without one show ``-``).
    """
    formats, signs = formats or {}, signs or {}
    out = ["| quantity | mean ± std [95% interval] | seeds where the sign holds |", "|---|---|---|"]
    for name, s in rows.items():
        sign = signs.get(name)
        held = f"{s.sign_holds(sign)} of {s.n}" if sign else "-"
        out.append(f"| {name} | {s.format(**formats.get(name, {}))} | {held} |")
    return out
