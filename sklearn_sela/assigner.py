"""Scikit-learn clusterer and transformer over the Sinkhorn-Knopp solver.

:class:`SinkhornAssigner` turns SeLa's equipartitioned label assignment
(Asano et al., ICLR 2020, sec. 3.1) into a scikit-learn estimator:

* ``metric="precomputed"``: ``X`` is an ``(n_samples, n_clusters)`` matrix of
  log-probabilities (or scores) and ``fit`` runs one Sinkhorn-Knopp solve;
* ``metric="euclidean"`` or ``"cosine"``: ``fit`` learns cluster centres by
  balanced k-means, alternating a Sinkhorn assignment step and a centroid
  update.

In every mode the fitted cluster scaling ``log_beta_`` is what carries the
balancing prior over to new samples: ``predict`` takes the argmax and
``transform`` the softmax of ``lam * scores + log_beta_``. With
``cluster_proportions="auto"`` the cluster sizes are estimated alongside the
centres.

This module is over 700 lines: half of it is the estimator's documentation,
and its helpers (seeding, scores, the centroid update) stay beside the
class, as in scikit-learn's ``_kmeans.py``.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

from numbers import Integral, Real
import warnings

import numpy as np
from scipy import sparse
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.cluster import kmeans_plusplus
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.preprocessing import normalize
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .sinkhorn import check_proportions, sinkhorn_knopp, soft_assignments

__all__ = ["SinkhornAssigner", "cluster_centers"]

_SUM_BLOCK_ENTRIES = 1 << 22  # float64 rows summed per sparse product


def cluster_centers(Xs, labels, centers, metric):
    """Centre of each cluster of the rows of ``Xs``.

    Parameters
    ----------
    Xs : ndarray of shape (n_samples, n_features)
        Samples; unit rows for ``metric="cosine"``.
    labels : ndarray of int of shape (n_samples,)
        Cluster of each sample.
    centers : ndarray of shape (n_clusters, n_features)
        What a cluster without samples (or with a zero sum) keeps.
    metric : {"euclidean", "cosine"}
        ``"euclidean"``: the mean of the cluster's rows; ``"cosine"``: the
        unit vector along their sum. One pass over the rows, in float64.

    Returns
    -------
    centers : ndarray of shape (n_clusters, n_features)
        In the dtype of ``Xs``.
    """
    k = centers.shape[0]
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros((k, Xs.shape[1]), dtype=np.float64)
    # The sums as products of a sparse (k, rows) indicator with blocks of
    # rows (``np.add.at`` is unbuffered, one element at a time); float64
    # temporaries bounded by the block.
    block = max(1, _SUM_BLOCK_ENTRIES // max(1, Xs.shape[1]))
    for lo in range(0, Xs.shape[0], block):
        hi = min(Xs.shape[0], lo + block)
        indicator = sparse.csr_matrix(
            (np.ones(hi - lo), (labels[lo:hi], np.arange(hi - lo))), shape=(k, hi - lo)
        )
        sums += indicator @ np.asarray(Xs[lo:hi], dtype=np.float64)
    new = centers.astype(np.float64, copy=True)
    if metric == "cosine":
        norms = np.linalg.norm(sums, axis=1)
        ok = (counts > 0) & (norms > 0)
        new[ok] = sums[ok] / norms[ok, None]
    else:
        ok = counts > 0
        new[ok] = sums[ok] / counts[ok, None]
    return new.astype(Xs.dtype, copy=False)


class SinkhornAssigner(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator
):
    """Balanced clustering by Sinkhorn-Knopp label assignment (SeLa).

    Assigns samples to ``n_clusters`` clusters under a constraint on the
    cluster sizes (an equipartition by default, or ``cluster_proportions``),
    by solving the entropy-regularised optimal transport problem of SeLa
    (Asano et al., ICLR 2020, eq. 6-8) with :func:`~sklearn_sela.sinkhorn_knopp`.

    With ``metric="precomputed"``, ``X`` is an ``(n_samples, n_clusters)``
    matrix of per-sample cluster log-probabilities (or scores, e.g. logits of
    a classification head) and ``fit`` solves the transport problem once.
    With ``metric="euclidean"`` or ``"cosine"``, ``X`` holds feature vectors
    and ``fit`` runs balanced k-means: starting from k-means++ centres, it
    alternates a balanced assignment (a Sinkhorn solve on scores derived from
    the sample-to-centre distances, warm-started from the previous iteration's
    cluster scaling) and a centroid update, until the centres move less than
    ``tol`` or ``max_iter`` iterations have run.

    In all modes ``fit`` stores the cluster scaling ``log_beta_`` of the
    final solve. New samples are assigned with the balancing prior it
    encodes, without solving a new transport problem: ``predict`` returns
    ``argmax_k (lam * scores[:, k] + log_beta_[k])`` and ``transform`` the
    row-wise softmax of the same quantity (the rows of the transport plan
    ``Q`` normalised to sum to one).

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters. With ``metric="precomputed"`` it must equal the
        number of columns of ``X``.

    metric : {"euclidean", "cosine", "precomputed"}, default="euclidean"
        How the ``(n_samples, n_clusters)`` score matrix given to the solver
        is obtained.

        - ``"euclidean"``: ``scores = -||x - c||**2 / temperature_``, with
          ``temperature_`` the mean squared distance of the training samples
          to their mean (the total variance). The scores, and hence ``lam``,
          do not depend on the scale or location of the data: ``lam`` is
          measured in units of the data's total variance.
        - ``"cosine"``: ``scores = cos(x, c)``, in ``[-1, 1]`` and
          scale-free; samples and centres are L2-normalised (spherical
          k-means). Samples with zero norm score 0 against every centre.
        - ``"precomputed"``: ``X`` itself is the score matrix, e.g. the
          log-probabilities ``log p(y | x_i)`` of SeLa (``-inf`` allowed,
          meaning probability zero).

        ``"euclidean"`` is the default because it makes the estimator a
        drop-in balanced :class:`~sklearn.cluster.KMeans`: the same objective
        (``inertia_``), the same behaviour after ``StandardScaler``/``PCA``,
        and it uses the norm of the features, which ``"cosine"`` discards
        (``"cosine"`` is the better choice for embeddings compared by angle,
        such as L2-normalised network features).

    lam : float, default=25.0
        Inverse entropic regularisation ``lambda`` of the transport problem
        (the paper uses 25). The solver works on ``lam * scores``: larger
        values give harder, closer to exact transport assignments (and need
        more Sinkhorn iterations); smaller values give softer ``transform``
        output.

    cluster_proportions : array-like of shape (n_clusters,), "auto" or None, \
            default=None
        Target fraction of samples in each cluster (strictly positive,
        summing to one); None for equal sizes. Seeded centres are ordered so
        that the one with the most nearest samples takes the largest
        fraction (an explicit ``init`` keeps its order). ``"auto"`` learns
        the fractions with the centres: each solve penalises a change of
        sizes instead of forbidding it (``marginal_penalty=1 / lam`` of
        :func:`~sklearn_sela.sinkhorn_knopp`), an EM update of mixture
        weights, run from the seeds and from the equal-size solution; the
        lower inertia is kept. About three times the fit time of equal
        sizes; a cluster the data do not support can end empty.

    assign : {"balanced", "argmax"}, default="balanced"
        How hard labels are read from the transport plan during ``fit``.
        ``"balanced"`` gives an exact partition with cluster sizes from
        :func:`~sklearn_sela.balanced_sizes` (``floor(N / K)`` or
        ``ceil(N / K)`` samples each under equipartition); ``"argmax"`` takes
        each sample's largest entry of ``Q``, which is balanced only up to
        the solver's tolerance. ``predict`` always uses the argmax rule.

    init : {"k-means++", "random"} or array-like of shape \
            (n_clusters, n_features), default="k-means++"
        Initial centres (feature modes only): k-means++ seeding
        (:func:`~sklearn.cluster.kmeans_plusplus`), ``n_clusters`` distinct
        random samples, or the given centres (then only one initialisation is
        run). Ignored with ``metric="precomputed"``.

    n_init : int, default=1
        Number of initialisations (feature modes only); the run with the
        lowest ``inertia_`` is kept.

    max_iter : int, default=100
        Maximum number of assignment/update iterations per initialisation
        (feature modes), or of solves with ``cluster_proportions="auto"``
        (``"precomputed"``).

    tol : float, default=1e-4
        Relative tolerance on the centre shift (feature modes only): stop
        when the sum of squared centre movements is at most ``tol`` times the
        mean per-feature variance of the (normalised, for ``"cosine"``)
        training data, as in :class:`~sklearn.cluster.KMeans`. Iterations
        also stop as soon as the labels no longer change.

    sinkhorn_tol : float, default=1e-3
        Tolerance of each Sinkhorn-Knopp solve: L1 error of the cluster
        marginal, in units of total mass.

    sinkhorn_max_iter : int, default=1000
        Maximum number of scaling iterations of each Sinkhorn-Knopp solve. A
        :class:`~sklearn.exceptions.ConvergenceWarning` is raised when the
        final solve of ``fit`` does not reach ``sinkhorn_tol``.

    random_state : int, RandomState instance or None, default=None
        Seeds the centre initialisation. Pass an int for reproducible
        results.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster label of each training sample (int64), read from the final
        transport plan with the ``assign`` rule.

    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Cluster centres (feature modes only; unit vectors for
        ``"cosine"``). Each is the mean of its training samples' features
        (normalised for ``"cosine"``) in the last update; the labels of the
        final assignment are computed from these centres. Not set with
        ``metric="precomputed"``.

    log_beta_ : ndarray of shape (n_clusters,)
        Logarithm of the cluster scaling of the final Sinkhorn solve, defined
        up to an additive constant. ``predict`` and ``transform`` add it to
        ``lam * scores`` of new samples.

    cluster_proportions_ : ndarray of shape (n_clusters,)
        Cluster sizes of the final transport plan, as fractions of the
        training samples: ``cluster_proportions`` (uniform for None) up to
        ``sinkhorn_tol``, or the estimate of ``"auto"``.

    inertia_ : float
        Value of the objective on the training data for ``labels_``: the sum
        of squared distances of samples to their cluster centre
        (``"euclidean"``, as in :class:`~sklearn.cluster.KMeans`), the sum of
        cosine distances ``1 - cos(x, c)`` (``"cosine"``), or the negated sum
        of each sample's score for its label, ``-sum_i X[i, labels_[i]]``
        (``"precomputed"``, SeLa's cross-entropy ``E(p, q)`` times
        ``n_samples`` for log-probabilities).

    temperature_ : float
        Divisor of the squared distances in the ``"euclidean"`` scores: the
        mean squared distance of the training samples to their mean (1.0 if
        that is zero). 1.0 for the other metrics.

    n_iter_ : int
        Number of assignment/update iterations of the kept initialisation
        (feature modes), or of Sinkhorn scaling iterations of the solve
        (``"precomputed"``; of all its solves with ``"auto"``).

    n_features_in_ : int
        Number of features seen during ``fit``.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during ``fit``. Defined only when ``X`` has
        feature names that are all strings.

    See Also
    --------
    sklearn_sela.sinkhorn_knopp : The solver this estimator wraps.
    sklearn_sela.soft_assignments : Soft assignments from scores and a
        cluster scaling.
    sklearn.cluster.KMeans : Unconstrained k-means.

    Notes
    -----
    The centroid update uses the hard labels of the assignment step (each
    centre becomes the mean of its cluster's samples), not the soft plan
    ``Q``: this is SeLa's scheme, which trains on hard pseudo-labels, and it
    keeps ``inertia_`` the exact objective of the returned partition, as in
    :class:`~sklearn.cluster.KMeans`. A soft update would pull every centre
    towards the data mean by an amount that depends on ``lam``. A cluster
    that receives no sample (possible with ``assign="argmax"`` or with tiny
    ``cluster_proportions``) keeps its previous centre.

    Because ``predict`` applies the argmax rule with the learned scaling,
    ``predict(X_train)`` agrees with ``labels_`` except for the few samples
    that the exact balancing of ``assign="balanced"`` moved to their second
    choice.

    ``transform`` returns soft assignments (rows summing to one), not
    distances to the centres as :meth:`sklearn.cluster.KMeans.transform`
    does.

    References
    ----------
    Y. M. Asano, C. Rupprecht, A. Vedaldi. "Self-labelling via simultaneous
    clustering and representation learning". ICLR 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_sela.assigner import SinkhornAssigner
    >>> X = np.array([[0.0], [0.1], [0.2], [0.3], [5.0], [5.1]])
    >>> sa = SinkhornAssigner(n_clusters=2, random_state=0).fit(X)
    >>> np.bincount(sa.labels_)
    array([3, 3])
    >>> bool(sa.predict([[0.05]])[0] == sa.labels_[0])
    True
    >>> sa.transform([[0.05]]).sum(axis=1).round(6)
    array([1.])

    With precomputed log-probabilities, the two least confident samples move
    to the second cluster:

    >>> logp = np.log([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    >>> SinkhornAssigner(n_clusters=2, metric="precomputed").fit_predict(logp)
    array([0, 0, 1, 1])
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "metric": [StrOptions({"euclidean", "cosine", "precomputed"})],
        "lam": [Interval(Real, 0, None, closed="neither")],
        "cluster_proportions": ["array-like", None, StrOptions({"auto"})],
        "assign": [StrOptions({"balanced", "argmax"})],
        "init": [StrOptions({"k-means++", "random"}), "array-like"],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "sinkhorn_tol": [Interval(Real, 0, None, closed="left")],
        "sinkhorn_max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_clusters=8,
        *,
        metric="euclidean",
        lam=25.0,
        cluster_proportions=None,
        assign="balanced",
        init="k-means++",
        n_init=1,
        max_iter=100,
        tol=1e-4,
        sinkhorn_tol=1e-3,
        sinkhorn_max_iter=1000,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.metric = metric
        self.lam = lam
        self.cluster_proportions = cluster_proportions
        self.assign = assign
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.sinkhorn_tol = sinkhorn_tol
        self.sinkhorn_max_iter = sinkhorn_max_iter
        self.random_state = random_state

    # ------------------------------------------------------------------
    # Input handling
    # ------------------------------------------------------------------
    def _validate_X(self, X, reset):
        precomputed = self.metric == "precomputed"
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype=[np.float64, np.float32],
            # Precomputed log-probabilities may hold -inf (probability zero).
            ensure_all_finite=not precomputed,
        )
        if precomputed:
            if np.isnan(X).any():
                raise ValueError(
                    f"Input X contains NaN. {self.__class__.__name__} with "
                    "metric='precomputed' needs finite scores or "
                    "log-probabilities."
                )
            if np.isposinf(X).any():
                raise ValueError(
                    f"Input X contains +inf. {self.__class__.__name__} with "
                    "metric='precomputed' needs finite scores or "
                    "log-probabilities (-inf is allowed and means "
                    "probability zero)."
                )
            if not X.flags.writeable or not X.flags.c_contiguous:
                # torch.from_numpy warns on read-only (e.g. memmapped) input.
                X = np.array(X, order="C", copy=True)
        return X

    def _check_params_vs_input(self, X):
        n_samples, n_features = X.shape
        if self.metric == "precomputed" and n_features != self.n_clusters:
            raise ValueError(
                f"With metric='precomputed', X must be an (n_samples, "
                f"n_clusters) score matrix with one column per cluster: got "
                f"{n_features} columns but n_clusters={self.n_clusters}."
            )
        if n_samples < self.n_clusters:
            raise ValueError(
                f"n_samples={n_samples} should be >= n_clusters="
                f"{self.n_clusters}: a balanced assignment needs at least one "
                f"sample per cluster."
            )
        self._auto = isinstance(self.cluster_proportions, str)
        self._proportions = self._check_proportions()
        if self.metric != "precomputed" and not isinstance(self.init, str):
            init = check_array(self.init, dtype=X.dtype, copy=True)
            if init.shape != (self.n_clusters, n_features):
                raise ValueError(
                    f"init must have shape (n_clusters, n_features) = "
                    f"({self.n_clusters}, {n_features}), got {init.shape}."
                )
            self._init_centers = init
            if self.n_init != 1:
                warnings.warn(
                    "Explicit initial centres passed: performing only one init "
                    f"in {self.__class__.__name__} instead of "
                    f"n_init={self.n_init}.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._n_init = 1
        else:
            self._init_centers = None
            self._n_init = self.n_init

    def _check_proportions(self):
        if self.cluster_proportions is None or self._auto:
            return None
        return check_proportions(self.cluster_proportions, self.n_clusters)

    # ------------------------------------------------------------------
    # Scores, solver and objective
    # ------------------------------------------------------------------
    def _features(self, X):
        """Features in the space where centres live."""
        if self.metric == "cosine":
            return normalize(X)
        return X

    def _scores(self, Xs, centers, temperature, x_sq_norms=None):
        if self.metric == "precomputed":
            return Xs
        if self.metric == "cosine":
            return Xs @ centers.T
        d2 = euclidean_distances(
            Xs, centers, X_norm_squared=x_sq_norms, squared=True
        )
        d2 /= temperature
        return np.negative(d2, out=d2)

    def _solve(self, scores, learn, warm_start=None, quiet=False, prior=None):
        """One Sinkhorn solve; ``prior`` is the current estimate of ``"auto"``,
        whose sizes are penalised rather than imposed when ``learn``."""
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore", ConvergenceWarning)
            return sinkhorn_knopp(
                scores,
                lam=float(self.lam),
                cluster_proportions=self._proportions if prior is None else prior,
                marginal_penalty=1.0 / float(self.lam) if learn else None,
                tol=float(self.sinkhorn_tol),
                max_iter=int(self.sinkhorn_max_iter),
                warm_start=warm_start,
                assign=self.assign,
            )

    def _costs(self, Xs, labels, centers):
        """Per-sample objective (float64) for the given labels."""
        if self.metric == "precomputed":
            return -Xs[np.arange(Xs.shape[0]), labels].astype(np.float64)
        Xd = Xs.astype(np.float64)
        Cd = centers[labels].astype(np.float64)
        if self.metric == "cosine":
            return 1.0 - np.einsum("ij,ij->i", Xd, Cd)
        diff = Xd - Cd
        return np.einsum("ij,ij->i", diff, diff)

    def _next_prior(self, res, prior, learn):
        """When ``learn``: the plan's sizes as the next estimate, and whether
        the estimate has settled (always settled otherwise)."""
        if not learn:
            return None, True
        found = np.asarray(res.proportions, dtype=np.float64)
        settled = prior is not None and np.abs(found - prior).sum() <= self.sinkhorn_tol
        return found, settled

    def _update_centers(self, Xs, labels, centers):
        return cluster_centers(Xs, labels, centers, self.metric)

    # ------------------------------------------------------------------
    # Fitting
    # ------------------------------------------------------------------
    def _init_centroids(self, Xs, x_sq_norms, random_state):
        if self._init_centers is not None:
            centers = self._init_centers
            if self.metric == "cosine":
                centers = normalize(centers)
            return centers.copy()
        if self.init == "random":
            idx = random_state.choice(Xs.shape[0], self.n_clusters, replace=False)
            return Xs[idx].copy()
        centers, _ = kmeans_plusplus(
            Xs,
            self.n_clusters,
            x_squared_norms=x_sq_norms,
            random_state=random_state,
        )
        return centers

    def _match_proportions(self, Xs, centers, temperature):
        """Give the largest proportions to the centres with the most samples.

        Seeded centres come in arbitrary order, while ``cluster_proportions``
        refers to cluster indices: the centre whose (unconstrained) nearest-
        centre cell is largest takes the largest proportion, and so on, so
        that balanced k-means does not start by forcing a small group of
        samples to fill a large cluster.
        """
        scores = self._scores(Xs, centers, temperature)
        counts = np.bincount(np.argmax(scores, axis=1), minlength=centers.shape[0])
        by_count = np.argsort(-counts, kind="stable")
        by_proportion = np.argsort(-self._proportions, kind="stable")
        matched = np.empty_like(centers)
        matched[by_proportion] = centers[by_count]
        return matched

    def _iterate(self, Xs, centers, temperature, tol, x_sq_norms, learn):
        """Assignment and centroid steps from ``centers`` until the labels
        repeat or the centres settle; with ``learn``, the sizes too (the
        ``"auto"`` estimate, from uniform). Returns the last scaling, the
        sizes (None without ``learn``), the centres and the iterations."""
        log_beta = None
        prior = None
        labels_old = None
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            scores = self._scores(Xs, centers, temperature, x_sq_norms)
            res = self._solve(scores, learn, warm_start=log_beta, quiet=True, prior=prior)
            labels, log_beta = res.labels, res.log_beta
            prior, settled = self._next_prior(res, prior, learn)
            if settled and labels_old is not None and np.array_equal(labels, labels_old):
                # Strict convergence: the centres would not move.
                break
            new_centers = self._update_centers(Xs, labels, centers)
            shift = float(
                ((new_centers.astype(np.float64) - centers) ** 2).sum()
            )
            centers = new_centers
            labels_old = labels
            if settled and shift <= tol:
                break
        return log_beta, prior, centers, n_iter

    def _run_once(self, Xs, centers, temperature, tol, x_sq_norms):
        """Balanced k-means from the given centres. With ``"auto"``, the
        sizes are learned with the centres: from given centres directly,
        from seeded ones both directly and after equal sizes, keeping the
        lower inertia."""
        # Whether each start runs equal sizes first (all there is without
        # "auto").
        if not self._auto:
            starts = [True]
        else:
            starts = [False] if self._init_centers is not None else [False, True]
        best = None
        for balanced_first in starts:
            c, log_beta, prior, n_iter = centers, None, None, 0
            if balanced_first:
                log_beta, prior, c, n_iter = self._iterate(
                    Xs, c, temperature, tol, x_sq_norms, learn=False)
            if self._auto:
                log_beta, prior, c, more = self._iterate(
                    Xs, c, temperature, tol, x_sq_norms, learn=True)
                n_iter += more
            # Final assignment with the final centres, so that labels_,
            # log_beta_ and cluster_centers_ agree (warm start: a handful of
            # iterations).
            scores = self._scores(Xs, c, temperature, x_sq_norms)
            res = self._solve(scores, self._auto, warm_start=log_beta, prior=prior)
            inertia = float(self._costs(Xs, res.labels, c).sum())
            if best is None or inertia < best[2]:
                best = (res, c, inertia, n_iter)
        return best

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the balanced assignment (and the centres, in feature modes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training samples, or with ``metric="precomputed"`` the score
            matrix of shape (n_samples, n_clusters).

        y : Ignored
            Not used, present here for API consistency by convention.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        X = self._validate_X(X, reset=True)
        self._check_params_vs_input(X)

        if self.metric == "precomputed":
            # One solve; with "auto", solves until the sizes settle, and a
            # last one at the settled estimate.
            res, prior, n_iter = None, None, 0
            for _ in range(self.max_iter if self._auto else 1):
                res = self._solve(X, self._auto, warm_start=res, quiet=self._auto, prior=prior)
                n_iter += res.n_iter
                prior, settled = self._next_prior(res, prior, self._auto)
                if settled:
                    break
            if self._auto:
                res = self._solve(X, True, warm_start=res, prior=prior)
                n_iter += res.n_iter
            self._set_fitted(res)
            self.inertia_ = float(self._costs(X, res.labels, None).sum())
            self.temperature_ = 1.0
            self.n_iter_ = int(n_iter)
            return self

        Xs = self._features(X)
        variances = np.var(Xs, axis=0, dtype=np.float64)
        tol = float(np.mean(variances) * self.tol)
        if self.metric == "euclidean":
            total = float(variances.sum())
            temperature = total if total > 0 and np.isfinite(total) else 1.0
        else:
            temperature = 1.0
        x_sq_norms = np.einsum("ij,ij->i", Xs, Xs)

        random_state = check_random_state(self.random_state)
        best = None
        for _ in range(self._n_init):
            centers = self._init_centroids(Xs, x_sq_norms, random_state)
            if self._proportions is not None and self._init_centers is None:
                centers = self._match_proportions(Xs, centers, temperature)
            run = self._run_once(Xs, centers, temperature, tol, x_sq_norms)
            if best is None or run[2] < best[2]:
                best = run
        res, centers, inertia, n_iter = best

        self._set_fitted(res)
        self.cluster_centers_ = centers
        self.inertia_ = inertia
        self.temperature_ = temperature
        self.n_iter_ = n_iter
        return self

    def _set_fitted(self, res):
        self.labels_ = res.labels
        self.log_beta_ = np.asarray(res.log_beta, dtype=np.float64)
        self.cluster_proportions_ = np.asarray(res.proportions, dtype=np.float64)

    # ------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------
    def _new_scores(self, X):
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        Xs = self._features(X)
        centers = getattr(self, "cluster_centers_", None)
        if centers is not None:
            centers = centers.astype(X.dtype, copy=False)
        return Xs, self._scores(Xs, centers, self.temperature_), centers

    def _argmax(self, scores):
        z = self.lam * scores.astype(np.float64) + self.log_beta_
        return np.argmax(z, axis=1).astype(np.int64)

    def predict(self, X):
        """Assign each sample to a cluster with the learned balancing prior.

        Returns ``argmax_k (lam * scores[:, k] + log_beta_[k])``: the argmax
        of the soft assignments given by :meth:`transform`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            New samples, or with ``metric="precomputed"`` their score matrix
            of shape (n_samples, n_clusters).

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Cluster label of each sample (int64).
        """
        _, scores, _ = self._new_scores(X)
        return self._argmax(scores)

    def transform(self, X):
        """Soft balanced assignments of samples to clusters.

        Row-wise softmax of ``lam * scores + log_beta_``, i.e. the rows of
        the transport plan ``Q`` normalised to sum to one
        (:func:`~sklearn_sela.soft_assignments`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            New samples, or with ``metric="precomputed"`` their score matrix
            of shape (n_samples, n_clusters).

        Returns
        -------
        Q : ndarray of shape (n_samples, n_clusters)
            Non-negative, each row sums to one; same float dtype as ``X``
            (float64 for non-float input).
        """
        _, scores, _ = self._new_scores(X)
        q = soft_assignments(
            np.ascontiguousarray(scores), self.log_beta_, lam=float(self.lam)
        )
        return q.astype(scores.dtype, copy=False)

    def score(self, X, y=None):
        """Opposite of the value of X on the objective.

        Samples are labelled by :meth:`predict`; the value is ``-sum`` of the
        per-sample costs defining ``inertia_`` (squared distance, cosine
        distance, or negated score), like :meth:`sklearn.cluster.KMeans.score`.
        Higher is better, so it can serve as a scorer in model selection
        for a fixed ``n_clusters``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            New samples, or with ``metric="precomputed"`` their score matrix.

        y : Ignored
            Not used, present here for API consistency by convention.

        Returns
        -------
        score : float
            Opposite of the objective on ``X``.
        """
        Xs, scores, centers = self._new_scores(X)
        labels = self._argmax(scores)
        return -float(self._costs(Xs, labels, centers).sum())

    @property
    def _n_features_out(self):
        """Number of transformed output features (one per cluster)."""
        return self.log_beta_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
