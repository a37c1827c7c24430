"""Bipartite spectral graph clustering (BSGC, Algorithm 1 of the paper) as a scikit-learn estimator.

Algorithm 1 normalises the similarity matrix, :math:`\\tilde A = D_U^{-1/2} A D_V^{-1/2}`, takes its
rank-k SVD :math:`\\tilde A \\approx U_k \\Sigma_k V_k^T`, and clusters the rows of :math:`U_k` and,
separately, the rows of :math:`V_k`. graphinterp pairs the row and column clusters instead (the
``pairing`` modes). The work is split in three modules:

* :mod:`graphinterp.clustering.spectral`: validation, normalisation, the randomized / Gram SVD of the
  normalised matrix (``_Spectrum``);
* :mod:`graphinterp.clustering.pairing`: KMeans restarts (:mod:`graphinterp.clustering.kmeans_batch`)
  as candidates, row and column clusters matched and repaired, the kept candidate; its docstring
  states the three ``pairing`` modes and the choice rule;
* this module: the estimator :class:`BSGC` (scikit-learn's ``BaseEstimator`` and ``BiclusterMixin``:
  ``get_params`` / ``set_params`` / ``clone``, ``get_indices``, ``get_submatrix``), :func:`fit_k_range`
  (several k from one SVD) and :func:`fit_batch` (many matrices of one shape in the same tensor
  operations, with the same result for each as its own :meth:`BSGC.fit`).

Results are deterministic for a given integer ``random_state`` (on the same machine and thread count).
"""
from __future__ import annotations

from numbers import Integral
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, BiclusterMixin, _fit_context
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions

from graphinterp.clustering.pairing import PAIRINGS, cluster_mass, fit_spectrum, match_clusters
from graphinterp.clustering.spectral import (ArrayLike, _as_matrix, _check_k, _degrees, _generators, _Spectrum,
                                             _threads_for, normalize_bipartite, randomized_svd)
from graphinterp.common.errors import ClusteringError
from graphinterp.common.seeds import check_random_state

__all__ = [
    "BSGC", "PAIRINGS", "randomized_svd", "normalize_bipartite", "match_clusters", "cluster_mass",
    "fit_k_range", "fit_batch",
]


class BSGC(BiclusterMixin, BaseEstimator):
    """Bipartite spectral graph clustering of one layer's similarity matrix.

    A scikit-learn estimator: ``__init__`` only stores the parameters, :meth:`fit` validates them
    (:class:`~graphinterp.common.errors.ClusteringError` on a bad one) and the matrix, and ``clone``,
    ``get_params``/``set_params``, ``get_indices(i)``, ``get_shape(i)`` and ``get_submatrix(i, A)``
    work as for scikit-learn's ``SpectralCoclustering``.

    Parameters
    ----------
    n_clusters : int, default 4
        Number of bipartite clusters k, at least 2 and at most the number of non-isolated nodes on
        the smaller side (checked in :meth:`fit`).
    pairing : {"joint", "matched", "independent"}, default "joint"
        How row and column clusters are paired (see :mod:`graphinterp.clustering.pairing`):
        ``"joint"`` one KMeans on the scaled joint embedding of rows and columns, then optimal
        matching; ``"matched"`` two KMeans, then optimal matching; ``"independent"`` Algorithm 1
        verbatim (two KMeans on the unscaled singular vectors, unpaired).
    n_components : int, optional
        Number of singular vectors in the embedding; default ``n_clusters`` (Algorithm 1). When set,
        only this embedding is used (not Dhillon's ``1 + ceil(log2 k)`` one as well).
    n_init : int, default 10
        KMeans restarts per KMeans problem, always k-means++ seeded. What a restart is, per pairing:

        * ``"independent"``: ``n_init`` restarts on the rows and ``n_init`` on the columns; on each
          side the lowest inertia is kept, as in scikit-learn's KMeans.
        * ``"joint"``: ``n_init`` restarts of the joint KMeans per embedding, so ``2 * n_init``
          candidates when Dhillon's embedding is used as well (``n_components=None`` and
          ``1 + ceil(log2 k) < k``, i.e. k >= 4), else ``n_init``.
        * ``"matched"``: as ``"joint"``, with restart ``t`` of the rows and restart ``t`` of the
          columns (two KMeans) forming candidate ``t``.

        In the paired modes the candidate kept is not the lowest inertia but the best by
        :func:`graphinterp.clustering.pairing._rank_key`: full (every cluster has rows and columns)
        first, then the highest within-cluster share of squared similarity (the paper's E).
    n_iter : int, optional
        Power iterations of the randomized SVD. Default: 7 for a matrix of fewer than 2**20 entries
        (scikit-learn's choice for these ranks; passes are cheap there and small noisy layers need
        the accuracy), 4 above (each pass reads the whole matrix, and big layers did as well as
        scikit-learn's 7 in our comparisons).
    random_state : int, RandomState or None
        Seed for the randomized SVD and KMeans; results are deterministic given an integer seed.

    Attributes
    ----------
    row_labels_ : ndarray of shape (n_rows,)
        Cluster of each input node; ``-1`` for an isolated node (all-zero row).
    column_labels_ : ndarray of shape (n_cols,)
        Cluster of each output node; ``-1`` for an isolated node.
    rows_ : ndarray of shape (n_clusters, n_rows), bool
        Indicator of each cluster's rows (scikit-learn's bicluster convention, used by
        ``get_indices``).
    columns_ : ndarray of shape (n_clusters, n_cols), bool
    singular_values_ : ndarray of shape (n_components,)
        Leading singular values of the normalised matrix (the first is 1).

    References
    ----------
    Dhillon, I. S. (2001). Co-clustering documents and words using bipartite spectral graph
    partitioning. KDD. Golechha, Cope & Schoots (2024), Algorithm 1.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.kron(np.eye(2), np.ones((3, 2))) + 0.01
    >>> model = BSGC(2, random_state=0).fit(A)
    >>> len(set(model.row_labels_[:3])), bool(model.row_labels_[0] == model.column_labels_[0])
    (1, True)
    >>> rows, cols = model.get_indices(model.row_labels_[0])
    >>> rows.tolist(), cols.tolist(), model.get_submatrix(model.row_labels_[0], A).shape
    ([0, 1, 2], [0, 1], (3, 2))
    >>> model
    BSGC(n_clusters=2, random_state=0)
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 2, None, closed="left")],
        "pairing": [StrOptions(set(PAIRINGS))],
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "n_iter": [Interval(Integral, 0, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_clusters: int = 4,
        *,
        pairing: str = "joint",
        n_components: Optional[int] = None,
        n_init: int = 10,
        n_iter: Optional[int] = None,
        random_state=None,
    ) -> None:
        self.n_clusters = n_clusters
        self.pairing = pairing
        self.n_components = n_components
        self.n_init = n_init
        self.n_iter = n_iter
        self.random_state = random_state

    def _validate_params(self) -> None:
        """scikit-learn's check of ``_parameter_constraints``, raising graphinterp's :class:`ClusteringError`."""
        try:
            super()._validate_params()
        except InvalidParameterError as e:
            raise ClusteringError(str(e).replace("\n", " ")) from e

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, A: ArrayLike, y=None) -> "BSGC":
        """Cluster the rows and columns of the non-negative similarity matrix ``A`` (m, n).

        Parameters
        ----------
        A : array-like or tensor of shape (m, n)
            Non-negative, finite; rows are a layer's input nodes, columns its output nodes.
        y : None
            Ignored (scikit-learn's convention).

        Returns
        -------
        self : BSGC
        """
        A = _as_matrix(A)
        with _threads_for(A):
            du, dv = _degrees(A[None])
            sp = _Spectrum.compute(A[None], du, dv, self._needed_rank(), self.n_iter,
                                   [check_random_state(self.random_state)], ks=[self.n_clusters])
            self._set_labels(*self._fit_spectrum(sp)[0], sp, 0)
        return self

    def _needed_rank(self) -> int:
        k = self.n_clusters
        return max(self.n_components or (k if isinstance(k, (int, np.integer)) else 2), 2)

    def _n_components(self, sp: _Spectrum) -> int:
        """Singular vectors used: ``n_components`` (default k), at most the live nodes on either side."""
        return min(self.n_components or self.n_clusters, sp.m_live, sp.n_live)

    def _fit_spectrum(self, sp: _Spectrum) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Labels ``(rows, cols)`` of every copy in ``sp``, each drawing its KMeans seed from its own rng."""
        k = self.n_clusters
        _check_k(k, sp)
        return fit_spectrum(sp, k, self._n_components(sp), max(1, int(self.n_init)), _generators(sp.rngs),
                            self.pairing, self.n_components)

    def _set_labels(self, rows: np.ndarray, cols: np.ndarray, sp: _Spectrum, c: int) -> "BSGC":
        k = self.n_clusters
        self.row_labels_, self.column_labels_ = rows, cols
        self.rows_ = rows[None, :] == np.arange(k)[:, None]
        self.columns_ = cols[None, :] == np.arange(k)[:, None]
        self.singular_values_ = sp.S[c, :self._n_components(sp)].double().cpu().numpy()
        return self

    def fit_predict(self, A: ArrayLike, y=None) -> Tuple[np.ndarray, np.ndarray]:
        """Fit and return ``(row_labels_, column_labels_)``."""
        self.fit(A)
        return self.row_labels_, self.column_labels_


def fit_k_range(
    A: ArrayLike, ks: Iterable[int], *, pairing: str = "joint", n_init: int = 10, n_iter: Optional[int] = None,
    random_state=None,
) -> Dict[int, BSGC]:
    """Fit :class:`BSGC` for every k in ``ks`` (e.g. ``range(2, 11)``) from one SVD of ``A``.

    The matrix is validated and normalised once and its SVD computed once, at rank ``max(ks)``; each
    k then only runs its KMeans restarts and candidate scoring on the first k singular vectors. The
    algorithm is the one of ``BSGC(k, ...).fit(A)``, but labels need not be identical to a lone
    fit's, whose SVD has rank k (the randomized SVD's subspace, and so the vectors, differ slightly).
    Deterministic for an integer ``random_state``.

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
        du, dv = _degrees(A[None])
        sp = _Spectrum.compute(A[None], du, dv, max(max(ints) if ints else 2, 2), n_iter,
                               [check_random_state(random_state)], ks=ks)
        for k in ks:
            est = BSGC(int(k), pairing=pairing, n_init=n_init, n_iter=n_iter, random_state=random_state)
            out[int(k)] = est._set_labels(*est._fit_spectrum(sp)[0], sp, 0)
    return out


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
    du, dv = _degrees(As)
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
                               [check_random_state(random_states[c]) for c in idx], ks=[k])
        for j, (rows, cols) in enumerate(ests[0]._fit_spectrum(sp)):
            fits[idx[j]] = ests[j]._set_labels(rows, cols, sp, j)
    return fits


def _check_settings(**params) -> None:
    """Validate, once, the :class:`BSGC` settings that :func:`fit_k_range` or :func:`fit_batch` share between fits."""
    BSGC(**params)._validate_params()
