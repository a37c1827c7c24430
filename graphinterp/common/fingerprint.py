"""Short content hashes of training data: what a resumed run checks it trains on the same examples.

A checkpoint records the fingerprint of the data it was trained on, and resuming refuses other data
(a file's path or name may change; its content must not). One rule for every kind of data: the
SHA-256 of a text prefix and the raw bytes of the tensors, in order, cut to 16 hex digits.
"""
from __future__ import annotations

import hashlib

import torch

__all__ = ["fingerprint"]


def fingerprint(*tensors: torch.Tensor, text: str = "") -> str:
    """A 16-hex-digit SHA-256 of ``text`` (UTF-8) followed by the bytes of each tensor (on the CPU, contiguous).

    Equal exactly when the text and every tensor's bytes are (up to SHA-256 collisions); the caller puts
    in ``text`` whatever the bytes alone do not say (shapes, dtypes, a vocabulary).

    Examples
    --------
    >>> x = torch.arange(6.0)
    >>> fingerprint(x) == fingerprint(x.clone()), fingerprint(x) == fingerprint(x + 1)
    (True, False)
    >>> len(fingerprint(x, text="(6,)"))
    16
    """
    h = hashlib.sha256(text.encode("utf-8"))
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy())  # the array's buffer: no copy of the data
    return h.hexdigest()[:16]
