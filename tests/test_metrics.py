"""Hand-checked cases for sklearn_sela.metrics."""

import itertools

import numpy as np
import pytest
from sklearn.datasets import load_digits

from sklearn_sela import SelfLabelClusterer
from sklearn_sela.metrics import (
    TrueLabelNMI,
    cluster_accuracy,
    clustering_scores,
    linear_probe_accuracy,
    weighted_knn_accuracy,
)




# -- cluster_accuracy -----------------------------------------------------------


def test_cluster_accuracy_is_invariant_to_renaming():
    assert cluster_accuracy([0, 0, 1, 1, 2], [2, 2, 0, 0, 1]) == 1.0
    assert cluster_accuracy(["a", "a", "b"], [7, 7, 3]) == 1.0


def test_cluster_accuracy_hand_cases():
    # One sample of class 1 sits in class 0's cluster.
    assert cluster_accuracy([0, 0, 1, 1], [0, 0, 0, 1]) == 0.75
    # Three clusters, two classes: only two clusters can be matched, so the
    # best is cluster 2 -> class 1 (2 samples) + one of clusters 0/1 -> class 0.
    assert cluster_accuracy([0, 0, 1, 1], [0, 1, 2, 2]) == 0.75
    # Two clusters, three classes: class 2 -> cluster 1 (2), class 0 or 1 ->
    # cluster 0 (1).
    assert cluster_accuracy([0, 1, 2, 2], [0, 0, 1, 1]) == 0.75
    # Everything in one cluster: the largest class.
    assert cluster_accuracy([0, 1, 1, 1, 2], [5] * 5) == 0.6


def test_cluster_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=60)
    pred = rng.integers(0, 4, size=60)
    best = max(
        np.mean(np.asarray(perm)[pred] == y) for perm in itertools.permutations(range(4))
    )
    assert cluster_accuracy(y, pred) == pytest.approx(best)


def test_cluster_accuracy_rejects_bad_input():
    with pytest.raises(ValueError):
        cluster_accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError):
        cluster_accuracy([], [])


def test_clustering_scores():
    scores = clustering_scores([0, 0, 1, 1], [1, 1, 0, 0])
    assert scores == {"acc": 1.0, "nmi": 1.0, "ari": 1.0}
    scores = clustering_scores([0, 0, 1, 1], [0, 1, 0, 1])
    assert scores["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert scores["acc"] == 0.5


# -- weighted_knn_accuracy --------------------------------------------------------

# The test point [1, 0] has cosine similarity 1 with a (class 0), 0.8 with
# b and c (class 1) and -1 with d (class 0).
KNN_TRAIN = np.array([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [-1.0, 0.0]])
KNN_LABELS = np.array([0, 1, 1, 0])


def test_weighted_knn_temperature_decides_the_vote():
    # k=3 keeps a, b, c. With T=0.1: e^10 = 22026 for class 0 against
    # 2 e^8 = 5962 for class 1, so class 0 wins. With T=1: e^1 = 2.72 against
    # 2 e^0.8 = 4.45, so the two farther neighbours win.
    test = np.array([[1.0, 0.0]])
    assert weighted_knn_accuracy(KNN_TRAIN, KNN_LABELS, test, [0], k=3, temperature=0.1) == 1.0
    assert weighted_knn_accuracy(KNN_TRAIN, KNN_LABELS, test, [1], k=3, temperature=1.0) == 1.0
    # k=1: the nearest neighbour alone.
    assert weighted_knn_accuracy(KNN_TRAIN, KNN_LABELS, test, [0], k=1) == 1.0


def test_weighted_knn_uses_cosine_similarity():
    # Scaling features does not change cosine neighbours; k > n_train is
    # clipped (here all 4 vote: class 0 gets e^10 + e^-10, class 1 2 e^8).
    test = np.array([[3.0, 0.0]])
    assert weighted_knn_accuracy(5 * KNN_TRAIN, KNN_LABELS, test, [0], k=50) == 1.0


def test_weighted_knn_matches_the_vote_written_out():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 5))
    test = rng.normal(size=(23, 5))
    y_train = rng.choice(["cat", "dog", "eel"], size=50)
    y_test = rng.choice(["cat", "dog", "eel"], size=23)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sim = unit(test) @ unit(train).T
    pred = []
    for row in sim:
        nn = np.argsort(-row)[:7]
        votes = {c: np.exp(row[nn][y_train[nn] == c] / 0.1).sum() for c in ("cat", "dog", "eel")}
        pred.append(max(votes, key=votes.get))
    expected = np.mean(np.array(pred) == y_test)
    assert weighted_knn_accuracy(train, y_train, test, y_test, k=7) == expected
    # Classifying the training set with k=1 finds each point itself.
    assert weighted_knn_accuracy(train, y_train, train, y_train, k=1) == 1.0


def test_weighted_knn_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        weighted_knn_accuracy(KNN_TRAIN, KNN_LABELS, KNN_TRAIN, KNN_LABELS, k=0)
    with pytest.raises(ValueError, match="temperature"):
        weighted_knn_accuracy(KNN_TRAIN, KNN_LABELS, KNN_TRAIN, KNN_LABELS, temperature=0)
    with pytest.raises(ValueError, match="features"):
        weighted_knn_accuracy(KNN_TRAIN, KNN_LABELS, np.ones((1, 3)), [0])


# -- linear_probe_accuracy --------------------------------------------------------


def test_linear_probe_separable_and_xor():
    X = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    y = [0, 0, 0, 1, 1, 1]
    assert linear_probe_accuracy(X, y, [[0.5], [11.5]], [0, 1]) == 1.0
    # XOR is not linearly separable: a linear probe gets at most 3 of 4.
    X = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    y = [0, 0, 1, 1]
    assert linear_probe_accuracy(X, y, X, y) <= 0.75


# -- TrueLabelNMI -------------------------------------------------------------------


def test_true_label_nmi_records_every_update():
    X, y = load_digits(return_X_y=True)
    X, y = X[:200] / 16.0, y[:200]
    est = SelfLabelClusterer(
        n_clusters=5, n_heads=2, max_epochs=4, n_label_updates=3, batch_size=64,
        callbacks=[TrueLabelNMI(y)], random_state=0,
    ).fit(X)
    rows = [row for row in est.history_ if "label_update" in row]
    assert len(rows) == 2
    assert all(len(row["nmi_true"]) == 2 for row in rows)
    assert all(0.0 <= v <= 1.0 for row in rows for v in row["nmi_true"])
    # Rows without a label update get no entry.
    assert sum("nmi_true" in row for row in est.history_) == 2


def test_true_label_nmi_checks_length():
    X, y = load_digits(return_X_y=True)
    est = SelfLabelClusterer(
        n_clusters=5, max_epochs=1, batch_size=64, callbacks=[TrueLabelNMI(y[:10])],
        random_state=0,
    )
    with pytest.raises(ValueError, match="true labels"):
        est.fit(X[:100])


def test_weighted_knn_is_exact_above_the_approximate_search_size():
    # 40,000 training rows: past the size where cosine_neighbors searches
    # approximately on a CPU. Random labels make every missed neighbour
    # count, so the score must be the one of the exact vote.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, 32))
    train = (centres[rng.integers(0, 200, 40_000)] + 0.3 * rng.normal(size=(40_000, 32)))
    test = centres[rng.integers(0, 200, 300)] + 0.3 * rng.normal(size=(300, 32))
    y_train, y_test = rng.integers(0, 5, 40_000), rng.integers(0, 5, 300)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sim = (unit(test) @ unit(train).T).astype(np.float32)
    nn = np.argsort(-sim, axis=1)[:, :50]
    top = np.take_along_axis(sim, nn, 1).astype(np.float64)
    w = np.exp((top - sim.max(1, keepdims=True)) / 0.1)
    votes = np.zeros((300, 5))
    np.add.at(votes, (np.arange(300)[:, None], y_train[nn]), w)
    expected = np.mean(votes.argmax(axis=1) == y_test)
    assert weighted_knn_accuracy(train.astype(np.float32), y_train,
                                 test.astype(np.float32), y_test) == expected
