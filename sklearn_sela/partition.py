"""``BalancedGraphClustering``: equal-sized clusters that follow the
neighbourhood graph of a feature matrix.

A post-processing estimator for any embedding (``SelfLabelClusterer.transform``,
a pretrained network's features, ...), usable in a
:class:`~sklearn.pipeline.Pipeline`. It runs the balanced spherical k-means
of :class:`~sklearn_sela.SinkhornAssigner` on features averaged over their
neighbourhoods, refines each run in the spectral embedding of the
neighbour graph, and keeps the run that splits the fewest neighbourhoods.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, _fit_context
from sklearn.preprocessing import normalize
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .assigner import SinkhornAssigner, cluster_centers
from .neighbors import cosine_neighbors, neighbor_agreement, smooth_over_neighbors
from .spectral import neighbor_spectral_embedding

__all__ = ["BalancedGraphClustering"]


def _unit_means(x, labels, n_clusters):
    """Unit-length mean of the unit rows of ``x`` in each cluster (zero for
    a cluster without rows)."""
    return cluster_centers(normalize(x), labels, np.zeros((n_clusters, x.shape[1]), x.dtype),
                           "cosine")


class BalancedGraphClustering(ClusterMixin, BaseEstimator):
    """Balanced clustering of features along their neighbourhood graph.

    Partitions the rows of ``X`` into ``n_clusters`` equal-sized clusters
    whose members are neighbours of each other in cosine similarity:

    1. the rows, scaled to unit length, are averaged ``n_smoothing`` times
       over the symmetrised ``n_neighbors``-nearest-neighbour graph, so that
       what a neighbourhood shares stays and what sets a sample apart fades;
    2. ``n_init`` balanced spherical k-means runs
       (:class:`~sklearn_sela.SinkhornAssigner`, ``metric="cosine"``)
       partition the result;
    3. each run is refined in the spectral embedding of the same graph
       (``spectral``), where the clusters follow the graph's connected
       regions rather than the features' directions;
    4. the run kept is the one whose clusters split the fewest
       neighbourhoods: the largest fraction of each sample's
       ``n_agreement_neighbors`` nearest neighbours in its own cluster.

    New samples go to the nearest cluster centre (unit mean of the cluster's
    unsmoothed rows) under the balancing learned on the training rows.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.

    n_neighbors : int, default=10
        Neighbours of each sample (itself excluded) in the graph of the
        averaging and of the spectral embedding.

    n_smoothing : int, default=4
        Averaging steps over the graph before the k-means; 0 partitions the
        features themselves. Each step costs one sparse product,
        ``O(n_samples * n_neighbors * n_features)``.

    spectral : bool or "auto", default="auto"
        Whether each run is refined in the spectral embedding. The
        eigensolve grows with the square of ``n_clusters``, so ``"auto"``
        refines up to 50 clusters only.

    n_init : int, default=10
        Number of k-means runs, from seeds ``random_state``,
        ``random_state + 1``, ...; the neighbourhood agreement picks one.
        Each run costs ``O(n_samples * n_clusters * n_features)`` per
        iteration.

    n_agreement_neighbors : int, default=30
        Neighbours per sample (centred features, itself excluded) in the
        agreement that picks among the runs. One search, ``O(n_samples**2 *
        n_features)`` in blocks, serves the graph and the agreement.

    random_state : int, RandomState instance or None, default=None
        Seeds the k-means runs and the eigensolver.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample.

    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Unit mean of the unit training rows of each cluster.

    assigner_ : SinkhornAssigner
        The balanced assignment of new samples to ``cluster_centers_``.

    agreement_ : float
        Neighbourhood agreement of ``labels_``.

    n_features_in_ : int
        Number of features seen during fit.

    See Also
    --------
    SinkhornAssigner : The balanced k-means alone.
    SelfLabelClusterer : Learns features (``transform``) and clusters at once.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn_sela import BalancedGraphClustering
    >>> X, _ = load_digits(return_X_y=True)
    >>> BalancedGraphClustering(n_clusters=10, random_state=0).fit(X).labels_.shape
    (1797,)
    """

    _parameter_constraints = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "n_smoothing": [Interval(Integral, 0, None, closed="left")],
        "spectral": ["boolean", StrOptions({"auto"})],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "n_agreement_neighbors": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_clusters=8,
        *,
        n_neighbors=10,
        n_smoothing=4,
        spectral="auto",
        n_init=10,
        n_agreement_neighbors=30,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.n_smoothing = n_smoothing
        self.spectral = spectral
        self.n_init = n_init
        self.n_agreement_neighbors = n_agreement_neighbors
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Partition ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features, e.g. ``SelfLabelClusterer.transform`` output.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : BalancedGraphClustering
            Fitted estimator.
        """
        X = validate_data(self, X, dtype=[np.float32, np.float64])
        n = X.shape[0]
        if n < self.n_clusters:
            raise ValueError(
                f"n_samples={n} should be >= n_clusters={self.n_clusters}."
            )
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        spectral = self.spectral if not isinstance(self.spectral, str) else self.n_clusters <= 50
        spectral = spectral and n > 1
        graph = n > 1 and (self.n_init > 1 or self.n_smoothing or spectral)
        features = X.astype(np.float32)
        if graph:
            x = torch.from_numpy(features)
            k = min(max(self.n_agreement_neighbors, self.n_neighbors), n - 1)
            neighbors = cosine_neighbors(x - x.mean(dim=0), k, exclude_self=True)
            near = neighbors[:, :min(self.n_neighbors, n - 1)]
            agree = neighbors[:, :min(self.n_agreement_neighbors, n - 1)]
            if self.n_smoothing:
                features = smooth_over_neighbors(
                    torch.nn.functional.normalize(x, dim=1), near, self.n_smoothing
                ).numpy()
            if spectral:
                embedding = neighbor_spectral_embedding(near, self.n_clusters, random_state=seed)

        def run(i):
            labels = SinkhornAssigner(
                n_clusters=self.n_clusters, metric="cosine", random_state=(seed + i) % 2**32
            ).fit(features).labels_
            if spectral:
                labels = SinkhornAssigner(
                    n_clusters=self.n_clusters, metric="cosine",
                    init=_unit_means(embedding, labels, self.n_clusters),
                ).fit(embedding).labels_
            return labels

        runs = (run(i) for i in range(self.n_init))
        if graph:
            # max keeps the first of equal runs and holds no more than two at once.
            labels = max(runs, key=lambda r: neighbor_agreement(torch.as_tensor(r), agree))
            self.agreement_ = neighbor_agreement(torch.as_tensor(labels), agree)
        else:
            labels = next(runs)
            self.agreement_ = float("nan")
        self.labels_ = labels.astype(np.int64)
        plain = X.astype(np.float32)
        self.cluster_centers_ = _unit_means(plain, self.labels_, self.n_clusters)
        # New samples go to the centres among features like theirs
        # (unsmoothed), under the balancing of one assignment of the training
        # rows to those centres.
        self.assigner_ = SinkhornAssigner(
            n_clusters=self.n_clusters, metric="cosine", max_iter=1,
            init=self.cluster_centers_,
        ).fit(plain)
        return self

    def predict(self, X):
        """Cluster of each sample (the balanced nearest centre).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        return self.assigner_.predict(X.astype(np.float32))
