"""Evaluation metrics for clusterings and learned representations.

Three protocols of the SeLa paper (Asano et al., ICLR 2020) and of the work it
compares with:

* :func:`cluster_accuracy` -- accuracy of a clustering after the best
  one-to-one matching of clusters to classes (Hungarian algorithm);
* :func:`weighted_knn_accuracy` -- the weighted k-nearest-neighbour classifier
  on cosine similarities of Wu et al. (2018), used in the paper's appendix
  A.1 with ``k=50`` and ``sigma=0.1``;
* :func:`linear_probe_accuracy` -- a linear classifier trained on frozen
  features (paper, sec. 4.1), here a logistic regression on standardised
  features.

:func:`clustering_scores` bundles ACC with scikit-learn's NMI and ARI, the
numbers the ``sela demo`` command prints, and the training callback
:class:`TrueLabelNMI` records how well the self-labels agree with known
classes during training (for demos and studies, not for training itself).
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_array, check_consistent_length, column_or_1d
from skorch.callbacks import Callback
import torch

from .neighbors import cosine_neighbors

__all__ = [
    "cluster_accuracy",
    "clustering_scores",
    "weighted_knn_accuracy",
    "linear_probe_accuracy",
    "TrueLabelNMI",
]


def cluster_accuracy(y_true, y_pred):
    """Clustering accuracy under the best one-to-one cluster-to-class matching.

    Cluster ids are arbitrary, so the predicted clusters are first matched to
    the true classes by the Hungarian algorithm
    (:func:`scipy.optimize.linear_sum_assignment`) to maximise the number of
    agreeing samples; the accuracy is that number divided by the number of
    samples.

    When there are more clusters than classes, only as many clusters as there
    are classes can be matched and the samples of the other clusters count as
    errors (so over-clustering is penalised, unlike a many-to-one "purity");
    with fewer clusters than classes, the unmatched classes are errors.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels (any hashable values).
    y_pred : array-like of shape (n_samples,)
        Cluster labels (any hashable values).

    Returns
    -------
    accuracy : float
        In ``[0, 1]``; 1 when the clustering equals the classes up to a
        renaming of the clusters.

    See Also
    --------
    sklearn.metrics.normalized_mutual_info_score : Matching-free agreement.

    Examples
    --------
    >>> from sklearn_sela.metrics import cluster_accuracy
    >>> cluster_accuracy([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    >>> cluster_accuracy([0, 0, 1, 1], [0, 0, 0, 1])
    0.75
    """
    y_true = column_or_1d(y_true, warn=False)
    y_pred = column_or_1d(y_pred, warn=False)
    check_consistent_length(y_true, y_pred)
    if y_true.shape[0] == 0:
        raise ValueError("cluster_accuracy needs at least one sample, got 0.")
    # rows: classes, columns: clusters; rectangular is fine for the solver.
    counts = contingency_matrix(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / y_true.shape[0])


def clustering_scores(y_true, y_pred):
    """ACC, NMI and ARI of a clustering against ground-truth classes.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels.
    y_pred : array-like of shape (n_samples,)
        Cluster labels.

    Returns
    -------
    scores : dict
        ``{"acc": ..., "nmi": ..., "ari": ...}``: :func:`cluster_accuracy`,
        :func:`sklearn.metrics.normalized_mutual_info_score` and
        :func:`sklearn.metrics.adjusted_rand_score`, as floats.

    Examples
    --------
    >>> from sklearn_sela.metrics import clustering_scores
    >>> clustering_scores([0, 0, 1, 1], [1, 1, 0, 0])
    {'acc': 1.0, 'nmi': 1.0, 'ari': 1.0}
    """
    return {
        "acc": cluster_accuracy(y_true, y_pred),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
    }


def _check_features(train_features, train_labels, test_features, test_labels):
    train_features = check_array(train_features, dtype=[np.float64, np.float32])
    test_features = check_array(test_features, dtype=[np.float64, np.float32])
    train_labels = column_or_1d(train_labels, warn=False)
    test_labels = column_or_1d(test_labels, warn=False)
    check_consistent_length(train_features, train_labels)
    check_consistent_length(test_features, test_labels)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train_features has {train_features.shape[1]} features but "
            f"test_features has {test_features.shape[1]}."
        )
    return train_features, train_labels, test_features, test_labels


def weighted_knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    k=50,
    temperature=0.1,
):
    """Accuracy of the weighted k-nearest-neighbour classifier of Wu et al.

    Each test sample votes among its ``k`` most cosine-similar training
    samples, neighbour ``j`` adding ``exp(s_j / temperature)`` to the score of
    its class, where ``s_j`` is the cosine similarity; the class with the
    largest total wins (Wu et al., "Unsupervised feature learning via
    non-parametric instance discrimination", CVPR 2018; SeLa appendix A.1 uses
    ``k=50`` and ``temperature=0.1``). It measures how well the feature space
    groups classes without training anything.

    Parameters
    ----------
    train_features : array-like of shape (n_train, n_features)
        Features of the labelled reference samples (e.g. from
        :meth:`SelfLabelClusterer.transform
        <sklearn_sela.SelfLabelClusterer.transform>`).
    train_labels : array-like of shape (n_train,)
        Their class labels.
    test_features : array-like of shape (n_test, n_features)
        Features of the samples to classify.
    test_labels : array-like of shape (n_test,)
        Their true class labels.
    k : int, default=50
        Number of neighbours; clipped to ``n_train``.
    temperature : float, default=0.1
        Temperature ``sigma`` of the vote weights ``exp(sim / sigma)``;
        smaller values give the closest neighbours more say.

    Returns
    -------
    accuracy : float
        Fraction of test samples whose predicted class is right.

    Notes
    -----
    Features are L2-normalised, so only their direction matters; a zero
    vector is similar to nothing. Ties between classes go to the class that
    sorts first. The neighbours are exact
    (:func:`~sklearn_sela.neighbors.cosine_neighbors` with
    ``method="exact"``), ``O(n_test n_train n_features)`` time in blocks of
    bounded memory, so the score does not depend on a search's recall.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_sela.metrics import weighted_knn_accuracy
    >>> train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> weighted_knn_accuracy(train, [0, 0, 1, 1], [[1.0, 0.2], [0.2, 1.0]],
    ...                       [0, 1], k=2)
    1.0
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    Xtr, ytr, Xte, yte = _check_features(
        train_features, train_labels, test_features, test_labels
    )
    classes, ytr_idx = np.unique(ytr, return_inverse=True)
    k = min(int(k), Xtr.shape[0])
    nn, nn_sim = cosine_neighbors(
        torch.from_numpy(Xtr), k, queries=torch.from_numpy(Xte), return_similarity=True,
        method="exact",
    )
    nn_sim = nn_sim.double()
    # Subtracting the row maximum leaves the argmax unchanged and keeps exp()
    # finite for small temperatures.
    weights = torch.exp((nn_sim - nn_sim.max(dim=1, keepdim=True).values) / temperature)
    votes = torch.zeros((len(Xte), classes.size), dtype=torch.float64)
    votes.scatter_add_(1, torch.from_numpy(ytr_idx)[nn], weights)
    pred = classes[votes.argmax(dim=1).numpy()]
    correct = int(np.sum(pred == yte))
    return correct / Xte.shape[0]


def linear_probe_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    C=1.0,
    max_iter=1000,
):
    """Test accuracy of a linear classifier trained on frozen features.

    The linear-probe protocol (paper, sec. 4.1): a classifier with little
    capacity of its own -- here a multinomial
    :class:`~sklearn.linear_model.LogisticRegression` on standardised
    features -- is fitted on the training features and scored on the test
    features, so its accuracy reflects how linearly separable the learned
    representation makes the classes.

    Parameters
    ----------
    train_features : array-like of shape (n_train, n_features)
        Features of the training samples.
    train_labels : array-like of shape (n_train,)
        Their class labels.
    test_features : array-like of shape (n_test, n_features)
        Features of the test samples.
    test_labels : array-like of shape (n_test,)
        Their class labels.
    C : float, default=1.0
        Inverse L2 regularisation strength of the logistic regression.
    max_iter : int, default=1000
        Iterations of the lbfgs solver.

    Returns
    -------
    accuracy : float
        Fraction of test samples classified correctly.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_sela.metrics import linear_probe_accuracy
    >>> X = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    >>> y = [0, 0, 0, 1, 1, 1]
    >>> linear_probe_accuracy(X, y, [[0.5], [11.5]], [0, 1])
    1.0
    """
    Xtr, ytr, Xte, yte = _check_features(
        train_features, train_labels, test_features, test_labels
    )
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=C, max_iter=max_iter)
    )
    probe.fit(Xtr, ytr)
    return float(probe.score(Xte, yte))


class TrueLabelNMI(Callback):
    """Record the NMI of the self-labels with known classes at each update.

    A skorch callback for :class:`~sklearn_sela.SelfLabelClusterer`'s
    ``callbacks`` parameter. At every epoch that starts with a self-labelling
    step it stores, in the history row, ``"nmi_true"``: per head, the NMI
    between the new labels and ``y_true`` (the curve of the paper's figure
    A.1, drawn by :func:`~sklearn_sela.plotting.plot_label_nmi`). The labels
    are never used for training.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Classes of the training samples, in the order given to ``fit``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn_sela import SelfLabelClusterer
    >>> from sklearn_sela.metrics import TrueLabelNMI
    >>> X, y = load_digits(return_X_y=True)
    >>> est = SelfLabelClusterer(10, max_epochs=2, callbacks=[TrueLabelNMI(y[:300])],
    ...                          random_state=0).fit(X[:300])
    >>> [len(row["nmi_true"]) for row in est.history_ if "nmi_true" in row]  # per head
    [10]
    """

    def __init__(self, y_true):
        self.y_true = y_true

    def on_epoch_begin(self, net, **kwargs):
        # The self-labelling callback comes first in the net's callbacks, so
        # at this point the update of this epoch (if any) has been made.
        row = net.history[-1]
        if "label_update" not in row or "nmi_true" in row:
            return
        y = np.asarray(self.y_true).ravel()
        labels = net.labels_.cpu().numpy()
        if labels.shape[0] != y.shape[0]:
            raise ValueError(
                f"TrueLabelNMI got {y.shape[0]} true labels for "
                f"{labels.shape[0]} training samples."
            )
        net.history.record(
            "nmi_true",
            [float(normalized_mutual_info_score(y, labels[:, t])) for t in range(labels.shape[1])],
        )
