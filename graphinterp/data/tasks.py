"""Sequence tasks for transformers: modular addition and a character-level corpus (both offline).

* :func:`modular_addition`: every pair ``(a, b)`` of ``0..p-1`` as the tokens ``a b =`` (``=`` is token
  ``p``), label ``(a + b) mod p``; a seeded ``train_frac`` of the ``p**2`` pairs for training, the rest
  for testing (Nanda et al. 2023: p = 113, 30%).
* :func:`load_corpus`: a text file read as characters; the vocabulary is its sorted distinct characters;
  the first ``1 - val_frac`` of the text trains, the rest validates. :meth:`CharCorpus.batch` draws
  seeded random windows; :meth:`CharCorpus.windows` cuts a split into fixed, non-overlapping windows
  (the evaluation set). The project ships no corpus: Tiny Shakespeare (public domain) is looked for
  at ``<data_dir>/tinyshakespeare/input.txt``.

Examples
--------
>>> train, test = modular_addition(p=5, train_frac=0.4, seed=0)
>>> train.x.shape, test.x.shape, train.x[0, 2].item()
(torch.Size([10, 3]), torch.Size([15, 3]), 5)
>>> bool(((train.x[:, 0] + train.x[:, 1]) % 5 == train.y).all())
True
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from graphinterp.common.errors import DataError
from graphinterp.common.fingerprint import fingerprint
from graphinterp.data.datasets import subset_indices

__all__ = ["SequenceData", "CharCorpus", "modular_addition", "load_corpus", "default_corpus_path", "TASKS"]

#: Task names of the transformer trainer.
TASKS = ("modadd", "chars")


@dataclass
class SequenceData:
    """Token sequences ``x`` (N, T) int64 with one label per sequence ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor
    classes: List[str]
    name: str

    def __len__(self) -> int:
        return len(self.y)


def modular_addition(p: int = 113, train_frac: float = 0.3, seed: int = 0) -> Tuple[SequenceData, SequenceData]:
    """Train and test splits of ``a + b mod p`` (see the module docstring).

    Raises
    ------
    DataError
        If ``p < 2`` or ``train_frac`` leaves a split empty.
    """
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise DataError(f"modular addition needs an integer modulus p >= 2, got {p!r}")
    n = p * p
    n_train = int(round(float(train_frac) * n))
    if not 0 < n_train < n:
        raise DataError(f"train_frac={train_frac!r} leaves an empty split of the {n} pairs")
    a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)
    x = torch.stack([a, b, torch.full_like(a, p)], 1)
    y = (a + b) % p
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    classes = [str(i) for i in range(p)]
    tr, te = perm[:n_train].sort().values, perm[n_train:].sort().values
    return (SequenceData(x[tr], y[tr], classes, f"modadd{p}-train"),
            SequenceData(x[te], y[te], classes, f"modadd{p}-test"))


@dataclass
class CharCorpus:
    """A character corpus as token ids, split by position into train and validation."""

    chars: List[str]
    train: torch.Tensor
    val: torch.Tensor
    path: str = ""

    @property
    def vocab(self) -> int:
        return len(self.chars)

    @property
    def fingerprint(self) -> str:
        """A short SHA-256 of the characters and both splits: equal exactly when the token streams are
        (what a resumed run must train on; a file's path or name may change)."""
        return fingerprint(self.train.to(torch.int64), self.val.to(torch.int64), text="".join(self.chars))

    def _ids(self, split: str) -> torch.Tensor:
        """The token ids of ``split``, ``"train"`` or ``"val"`` (any other name is an error, not a guess)."""
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        raise DataError(f"a character corpus has the splits 'train' and 'val', not {split!r}")

    def batch(self, batch_size: int, n_ctx: int, generator: torch.Generator,
              split: str = "train") -> Tuple[torch.Tensor, torch.Tensor]:
        """Random windows ``(x, y)`` of shape ``(batch_size, n_ctx)``; ``y`` is ``x`` shifted by one. Every start
        from 0 to ``len - n_ctx - 1`` is drawn (until 2026-12-08 the last one never was, so the split's last
        character was never a target)."""
        ids = self._ids(split)
        start = torch.randint(0, len(ids) - n_ctx, (batch_size,), generator=generator)
        idx = start[:, None] + torch.arange(n_ctx + 1)[None, :]
        w = ids[idx]
        return w[:, :-1], w[:, 1:]

    def windows(self, n_ctx: int, split: str = "val", limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Consecutive non-overlapping windows of a split (the evaluation set), at most ``limit``."""
        ids = self._ids(split)
        n = (len(ids) - 1) // n_ctx
        if limit is not None:
            n = min(n, int(limit))
        x = ids[: n * n_ctx].view(n, n_ctx)
        y = ids[1: n * n_ctx + 1].view(n, n_ctx)
        return x, y

    def next_char_windows(self, n_ctx: int, split: str = "val", limit: Optional[int] = None,
                          seed: int = 0) -> SequenceData:
        """Every window of ``n_ctx`` characters of a split, labelled with the character that follows it.

        The windows start at every position (they overlap), so each character of the split after
        the first ``n_ctx`` is the label of one window: the task of a language model's prediction at
        the last position, one label per sequence (as the circuits of
        :mod:`graphinterp.interpret.transformer_circuits` need). ``limit`` keeps a seeded random
        subset of that many windows, in text order.

        Examples
        --------
        >>> c = CharCorpus(["a", "b", "c"], torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([2, 1, 0, 2, 1]))
        >>> d = c.next_char_windows(3)
        >>> d.x.tolist(), d.y.tolist(), d.classes
        ([[2, 1, 0], [1, 0, 2]], [2, 1], ['a', 'b', 'c'])
        """
        ids = self._ids(split)
        n = len(ids) - n_ctx
        if n < 1:
            raise DataError(f"the {split} split has {len(ids)} characters: too few for windows of {n_ctx}")
        start = torch.arange(n)
        if limit is not None and limit < n:
            start = subset_indices(n, limit, seed)
        x = ids[start[:, None] + torch.arange(n_ctx)[None, :]]
        return SequenceData(x, ids[start + n_ctx], list(self.chars), f"{split} next-character windows")

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def default_corpus_path(data_dir: Optional[str] = None) -> Path:
    """``<data_dir>/tinyshakespeare/input.txt`` (``data_dir`` defaults to
    :func:`graphinterp.data.datasets.default_data_dir`).

    Parameters
    ----------
    data_dir : str, optional
        Data folder (``~`` is expanded); default (None or empty) :func:`graphinterp.data.datasets.default_data_dir`.

    Returns
    -------
    pathlib.Path
        The path of the corpus file (not checked to exist).
    """
    from graphinterp.data.datasets import default_data_dir

    return Path(data_dir).expanduser() / "tinyshakespeare" / "input.txt" if data_dir else \
        default_data_dir() / "tinyshakespeare" / "input.txt"


def load_corpus(path=None, *, data_dir: Optional[str] = None, val_frac: float = 0.1, n_ctx: int = 64,
                max_chars: Optional[int] = None, vocabulary: Optional[str] = None) -> CharCorpus:
    """Read a UTF-8 text file as a :class:`CharCorpus` (see the module docstring).

    Parameters
    ----------
    path : path, optional
        The text file; default :func:`default_corpus_path`.
    data_dir : str, optional
        Data folder of the default path, when ``path`` is None (:func:`default_corpus_path`).
    val_frac : float
        Share of the text (its end) held out for validation.
    n_ctx : int
        Window length the corpus must fit (each split needs more than ``n_ctx + 1`` characters).
    max_chars : int, optional
        Use only the first ``max_chars`` characters.
    vocabulary : str, optional
        The characters in token-id order (a trained model's): the text is encoded with them, so another
        text of the same language (a held-out part, a subset of the characters) keeps the model's ids.
        Default: the text's own sorted characters.

    Returns
    -------
    CharCorpus
        The encoded text, split into training and validation parts.

    Raises
    ------
    DataError
        If the file is missing, not a file, unreadable, not UTF-8, empty or too short, or (with
        ``vocabulary``) holds characters outside it.
    """
    path = Path(path).expanduser() if path is not None else default_corpus_path(data_dir)
    if not path.exists():
        raise DataError(f"corpus file {path} not found; pass a UTF-8 text file with --corpus FILE "
                        "(or put Tiny Shakespeare at <data-dir>/tinyshakespeare/input.txt)")
    if not path.is_file():
        raise DataError(f"corpus {path} is not a file")
    try:
        with open(path, encoding="utf-8", newline="") as f:  # as written: \r\n stays two characters
            text = f.read()
    except UnicodeDecodeError as err:
        raise DataError(f"corpus {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"cannot read corpus {path}: {err.strerror or err}") from None
    if max_chars is not None:
        text = text[: int(max_chars)]
    if not text:
        raise DataError(f"corpus {path} is empty")
    if not 0 < val_frac < 1:
        raise DataError(f"val_frac must lie in (0, 1), got {val_frac!r}")
    chars = sorted(set(text)) if vocabulary is None else list(vocabulary)
    lookup = {c: i for i, c in enumerate(chars)}
    unknown = sorted(set(text) - set(lookup))
    if unknown:
        raise DataError(f"corpus {path} has {len(unknown)} character(s) outside the model's vocabulary of "
                        f"{len(chars)}: {''.join(unknown)!r}; pass a text written with the characters it was "
                        "trained on")
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.int64)
    cut = int(len(ids) * (1 - val_frac))
    if min(cut, len(ids) - cut) <= n_ctx + 1:
        raise DataError(f"corpus {path} has {len(ids)} characters: too short for windows of {n_ctx} "
                        f"with {val_frac:.0%} held out (each split needs more than {n_ctx + 1})")
    return CharCorpus(chars, ids[:cut], ids[cut:], str(path))
