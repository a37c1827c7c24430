"""Bipartite spectral graph clustering (BSGC, Algorithm 1 of the paper) as a scikit-learn estimator.

Algorithm 1 normalises the similarity matrix, :math:`\\tilde A = D_U^{-1/2} A D_V^{-1/2}`, takes its
rank-k SVD :math:`\\tilde A \\approx U_k \\Sigma_k V_k^T`, and clusters the rows of :math:`U_k` and,
separately, the rows of :math:`V_k`. graphinterp pairs the row and column clusters instead (the
``pairing`` modes). The work is split in six modules:

* :mod:`graphinterp.clustering.matrix_checks`: the similarity matrix read and checked, its degrees;
* :mod:`graphinterp.clustering.spectral`: normalisation, the randomized / Gram SVD of the normalised
  matrix (``_Spectrum``);
* :mod:`graphinterp.clustering.pairing`: KMeans restarts (:mod:`graphinterp.clustering.kmeans_batch`)
  as candidates, row and column clusters matched and repaired, the kept candidate; its docstring
  states the three ``pairing`` modes and the choice rule;
* :mod:`graphinterp.clustering.mass`: the squared mass between row and column clusters;
* this module: the estimator :class:`BSGC` (scikit-learn's ``BaseEstimator`` and ``BiclusterMixin``:
  ``get_params`` / ``set_params`` / ``clone``, ``get_indices``, ``get_submatrix``);
* :mod:`graphinterp.clustering.bsgc_batch`: :func:`fit_k_range` (several k from one SVD) and
  :func:`fit_batch` (many matrices of one shape in the same tensor operations, with the same result
  for each as its own :meth:`BSGC.fit`).

Results are deterministic for a given integer ``random_state`` (on the same machine and thread count).
"""
from __future__ import annotations

from numbers import Integral
from typing import List, Optional, Tuple

import numpy as np
from sklearn.base import BaseEstimator, BiclusterMixin, _fit_context
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions

from graphinterp.clustering.mass import cluster_mass, match_clusters
from graphinterp.clustering.pairing import PAIRINGS, fit_spectrum
from graphinterp.clustering.matrix_checks import ArrayLike, _as_matrix, _degrees
from graphinterp.clustering.spectral import (_check_k, _generators, _Spectrum, _threads_for, normalize_bipartite,
                                             randomized_svd)
from graphinterp.common.errors import ClusteringError
from graphinterp.common.seeds import fast_random_state

__all__ = ["BSGC", "PAIRINGS", "randomized_svd", "normalize_bipartite", "match_clusters", "cluster_mass"]


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
          side the lowest inertia is kept, as in scikit-learn's KMeans, numbered as the first restart
          that found that partition (the unpaired E depends on the numbering, and restarts with the
          same partition can differ in inertia by rounding alone).
        * ``"joint"``: ``n_init`` restarts of the joint KMeans per embedding, so ``2 * n_init``
          candidates when Dhillon's embedding is used as well (``n_components=None`` and
          ``1 + ceil(log2 k) < k``, i.e. k >= 4), else ``n_init``.
        * ``"matched"``: as ``"joint"``, with restart ``t`` of the rows and restart ``t`` of the
          columns (two KMeans) forming candidate ``t``.

        In the paired modes the candidate kept is not the lowest inertia but the best by
        :func:`graphinterp.clustering.pairing._rank_key`: full (every cluster has rows and columns)
        first, then the highest normalised score :math:`(E - E_{rand}) / (1 - E_{rand})` (the paper's
        E against a random partition with the same cluster sizes; E alone rewards one giant cluster).
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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True  # a similarity matrix: |W|, never W
        return tags

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
        self.n_features_in_ = int(A.shape[1])
        with _threads_for(A):
            A3, du, dv = _degrees(A[None])
            sp = _Spectrum.compute(A3, du, dv, self._needed_rank(), self.n_iter,
                                   [fast_random_state(self.random_state)], ks=[self.n_clusters])
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
        self.n_features_in_ = int(sp.A.shape[2])  # also for the estimators fit_batch and fit_k_range return
        self.row_labels_, self.column_labels_ = rows, cols
        self.rows_ = rows[None, :] == np.arange(k)[:, None]
        self.columns_ = cols[None, :] == np.arange(k)[:, None]
        self.singular_values_ = sp.S[c, :self._n_components(sp)].double().cpu().numpy()
        return self

    def fit_predict(self, A: ArrayLike, y=None) -> Tuple[np.ndarray, np.ndarray]:
        """Fit and return ``(row_labels_, column_labels_)``.

        Parameters
        ----------
        A : array-like or tensor of shape (m, n)
            Non-negative, finite similarity matrix, as in :meth:`fit`.
        y : None
            Ignored (scikit-learn's convention).

        Returns
        -------
        row_labels_ : ndarray of shape (m,)
            Cluster of each row; ``-1`` for an isolated row.
        column_labels_ : ndarray of shape (n,)
            Cluster of each column; ``-1`` for an isolated column.
        """
        self.fit(A)
        return self.row_labels_, self.column_labels_

