"""BSGC over many fits at once: several k from one SVD, and many matrices of one shape in one batch.

:func:`fit_k_range` serves the k sweeps of :mod:`graphinterp.reports.benchmarking` (k = 2..10 from one
rank-10 SVD); :func:`fit_batch` serves the shuffle null of :mod:`graphinterp.clustering.significance`
(the shuffled copies of a layer share their shape, so their SVDs, KMeans restarts and candidate
scoring run in the same batched tensor operations). Both return fitted :class:`~graphinterp.clustering.bsgc.BSGC`
estimators.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from graphinterp.clustering.bsgc import BSGC
from graphinterp.clustering.matrix_checks import ArrayLike, _as_matrix, _degrees
from graphinterp.clustering.spectral import _Spectrum, _threads_for
from graphinterp.common.errors import ClusteringError
from graphinterp.common.seeds import SeedDraws, fast_random_state

__all__ = ["fit_k_range", "fit_batch"]


def fit_k_range(
    A: ArrayLike, ks: Iterable[int], *, pairing: str = "joint", n_init: int = 10, n_iter: Optional[int] = None,
    random_state=None,
) -> Dict[int, BSGC]:
    """Fit :class:`BSGC` for every k in ``ks`` (e.g. ``range(2, 11)``) from one SVD of ``A``.

    The matrix is validated and normalised once and its SVD computed once, at rank ``max(ks)``; each
    k then only runs its KMeans restarts and candidate scoring on the first k singular vectors. The
    algorithm is the one of ``BSGC(k, ...).fit(A)``, and each k's KMeans draws the seed a lone fit
    draws, whatever the other ks and their order; labels need not be identical to a lone fit's only
    where its SVD has rank k (a randomized SVD's subspace, and so the vectors, differ slightly; a small
    matrix's exact SVD does not). Deterministic for an integer ``random_state``.

    Returns
    -------
    dict mapping each k to its fitted :class:`BSGC`.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.abs(np.random.default_rng(0).standard_normal((40, 30)))
    >>> fits = fit_k_range(A, range(2, 5), random_state=0)
    >>> sorted(fits), fits[3].row_labels_.shape
    ([2, 3, 4], (40,))
    """
    ks = list(ks)
    if not ks:
        raise ClusteringError("fit_k_range needs at least one k, e.g. ks=range(2, 11)")
    _check_settings(pairing=pairing, n_init=n_init, n_iter=n_iter, random_state=random_state)
    ints = [k for k in ks if isinstance(k, (int, np.integer))]
    A = _as_matrix(A)
    out = {}
    with _threads_for(A):
        A3, du, dv = _degrees(A[None])
        sp = _Spectrum.compute(A3, du, dv, max(max(ints) if ints else 2, 2), n_iter,
                               [fast_random_state(random_state)], ks=ks)
        rng = sp.rngs[0]
        after_svd = _snapshot(rng)
        for k in ks:
            _restore(rng, after_svd)  # each k draws its KMeans seed as a lone fit does, whatever the other ks
            est = BSGC(int(k), pairing=pairing, n_init=n_init, n_iter=n_iter, random_state=random_state)
            out[int(k)] = est._set_labels(*est._fit_spectrum(sp)[0], sp, 0)
    return out


def _snapshot(rng):
    """The draws made so far by a seeded ``rng`` (None for numpy's global one, which is never rewound)."""
    if isinstance(rng, SeedDraws):
        return list(rng.highs)
    if isinstance(rng, np.random.RandomState) and rng is not np.random.mtrand._rand:
        return rng.get_state()
    return None


def _restore(rng, state) -> None:
    if state is None:
        return
    if isinstance(rng, SeedDraws):
        rng.highs = list(state)
    else:
        rng.set_state(state)


def fit_batch(
    As: ArrayLike, k: int, random_states: Sequence[int], *, pairing: str = "joint", n_init: int = 10,
    n_iter: Optional[int] = None, n_components: Optional[int] = None,
) -> List[BSGC]:
    """Fit :class:`BSGC` on each of ``C`` matrices of one shape at once, e.g. the shuffled copies of a layer.

    ``As[c]`` is clustered with ``BSGC(k, ..., random_state=random_states[c])``, and the result is
    the same as that estimator's own ``fit(As[c])``: every copy draws its random numbers from its
    own seed, and copies whose isolated nodes differ are clustered in separate groups. What is
    shared is the work: the SVDs, the KMeans restarts and the candidate scoring of all copies run in
    the same batched tensor operations, which removes the per-call overhead that dominates small
    layers. Memory is that of ``As`` plus a few vectors per copy.

    Parameters
    ----------
    As : array of shape (C, m, n)
    k : int
    random_states : sequence of C ints
    pairing, n_init, n_iter, n_components
        As in :class:`BSGC`.

    Returns
    -------
    list of C fitted :class:`BSGC`

    Examples
    --------
    >>> A = np.abs(np.random.default_rng(0).standard_normal((3, 20, 12)))
    >>> fits = fit_batch(A, 2, [1, 2, 3])
    >>> all(np.array_equal(f.row_labels_, BSGC(2, random_state=s).fit(a).row_labels_)
    ...     for f, s, a in zip(fits, [1, 2, 3], A))
    True
    """
    _check_settings(n_clusters=k, pairing=pairing, n_init=n_init, n_iter=n_iter, n_components=n_components)
    As = torch.as_tensor(As).detach()
    if As.dim() != 3:
        raise ClusteringError(f"fit_batch needs a (copies, m, n) stack of matrices, got shape {tuple(As.shape)}")
    if len(random_states) != len(As):
        raise ClusteringError(f"fit_batch needs one random_state per matrix: {len(random_states)} for {len(As)}")
    As = torch.stack([_as_matrix(a) for a in As]) if not torch.is_floating_point(As) or As.dtype not in (
        torch.float32, torch.float64) else As
    with _threads_for(As):
        return _fit_groups(As, k, random_states, pairing, n_init, n_iter, n_components)


def _fit_groups(As, k, random_states, pairing, n_init, n_iter, n_components) -> List[BSGC]:
    As, du, dv = _degrees(As)
    groups: Dict[bytes, List[int]] = {}
    live = torch.cat([du > 0, dv > 0], 1).cpu().numpy()
    for c in range(len(As)):
        groups.setdefault(live[c].tobytes(), []).append(c)
    fits: List[Optional[BSGC]] = [None] * len(As)
    for idx in groups.values():
        ests = [BSGC(k, pairing=pairing, n_components=n_components, n_init=n_init, n_iter=n_iter, random_state=random_states[c])
                for c in idx]
        sel = torch.as_tensor(idx)
        sp = _Spectrum.compute(As[sel] if len(idx) < len(As) else As, du[sel], dv[sel], ests[0]._needed_rank(), n_iter,
                               [fast_random_state(random_states[c]) for c in idx], ks=[k])
        for j, (rows, cols) in enumerate(ests[0]._fit_spectrum(sp)):
            fits[idx[j]] = ests[j]._set_labels(rows, cols, sp, j)
    return fits


def _check_settings(**params) -> None:
    """Validate, once, the :class:`BSGC` settings that :func:`fit_k_range` or :func:`fit_batch` share between fits."""
    BSGC(**params)._validate_params()
