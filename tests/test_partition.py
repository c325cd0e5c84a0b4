"""BalancedGraphClustering: the balanced partition along the neighbour graph."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_sela import BalancedGraphClustering, SinkhornAssigner
from sklearn_sela.neighbors import cosine_neighbors, neighbor_agreement, smooth_over_neighbors
from sklearn_sela.spectral import neighbor_spectral_embedding


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def _graph(X, k):
    F = torch.from_numpy(X)
    return cosine_neighbors(F - F.mean(dim=0), k, exclude_self=True)


def test_one_run_without_graph_is_the_balanced_kmeans(digits):
    X, _ = digits
    est = BalancedGraphClustering(10, n_smoothing=0, spectral=False, n_init=1,
                                  random_state=0).fit(X)
    seed = np.random.RandomState(0).randint(np.iinfo(np.int32).max)
    alone = SinkhornAssigner(10, metric="cosine", random_state=seed).fit(X)
    np.testing.assert_array_equal(est.labels_, alone.labels_)
    assert np.isnan(est.agreement_)


def test_smoothing_partitions_the_averaged_features(digits):
    X, y = digits
    est = BalancedGraphClustering(10, n_smoothing=3, spectral=False, n_init=1,
                                  random_state=0).fit(X)
    smoothed = smooth_over_neighbors(
        torch.nn.functional.normalize(torch.from_numpy(X), dim=1), _graph(X, 10), 3
    ).numpy()
    seed = np.random.RandomState(0).randint(np.iinfo(np.int32).max)
    alone = SinkhornAssigner(10, metric="cosine", random_state=seed).fit(smoothed)
    np.testing.assert_array_equal(est.labels_, alone.labels_)
    plain = clone(est).set_params(n_smoothing=0).fit(X)
    graph = _graph(X, 10)
    # The averaged features split fewer neighbourhoods, and follow the classes.
    assert (neighbor_agreement(torch.from_numpy(est.labels_), graph)
            > neighbor_agreement(torch.from_numpy(plain.labels_), graph))
    assert (normalized_mutual_info_score(y, est.labels_)
            > normalized_mutual_info_score(y, plain.labels_))


def test_keeps_the_run_that_splits_fewest_neighbourhoods(digits):
    X, _ = digits
    est = BalancedGraphClustering(10, n_smoothing=0, spectral=False, n_init=6,
                                  random_state=3).fit(X)
    seed = np.random.RandomState(3).randint(np.iinfo(np.int32).max)
    runs = [SinkhornAssigner(10, metric="cosine", random_state=seed + i).fit(X).labels_
            for i in range(6)]
    graph = _graph(X, 30)
    agreement = [neighbor_agreement(torch.from_numpy(r), graph) for r in runs]
    np.testing.assert_array_equal(est.labels_, runs[int(np.argmax(agreement))])
    assert est.agreement_ == pytest.approx(max(agreement))


def test_spectral_refines_each_run_in_the_graph_embedding(digits):
    X, y = digits
    est = BalancedGraphClustering(10, n_smoothing=0, n_init=1, random_state=0).fit(X)
    seed = np.random.RandomState(0).randint(np.iinfo(np.int32).max)
    run = SinkhornAssigner(10, metric="cosine", random_state=seed).fit(X).labels_
    embedding = neighbor_spectral_embedding(_graph(X, 10), 10, random_state=seed)
    sums = np.zeros((10, embedding.shape[1]))
    np.add.at(sums, run, embedding / np.linalg.norm(embedding, axis=1, keepdims=True))
    init = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    refined = SinkhornAssigner(10, metric="cosine", init=init).fit(embedding).labels_
    np.testing.assert_array_equal(est.labels_, refined)
    assert not np.array_equal(est.labels_, run)
    # "auto" refines up to 50 clusters only.
    big = BalancedGraphClustering(60, n_smoothing=0, n_init=1, random_state=0).fit(X)
    plain = SinkhornAssigner(60, metric="cosine", random_state=seed).fit(X).labels_
    np.testing.assert_array_equal(big.labels_, plain)


def test_new_samples_go_to_the_balanced_nearest_centre(digits):
    X, _ = digits
    est = BalancedGraphClustering(10, random_state=0).fit(X[:1500])
    assert np.bincount(est.labels_, minlength=10).tolist() == [150] * 10
    centres = est.cluster_centers_
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, rtol=1e-5)
    pred = est.predict(X[1500:])
    np.testing.assert_array_equal(pred, est.assigner_.predict(X[1500:]))
    # Mostly the nearest centre by cosine; the balancing moves a few.
    cos = (X[1500:] / np.linalg.norm(X[1500:], axis=1, keepdims=True)) @ centres.T
    assert (pred == cos.argmax(axis=1)).mean() > 0.8
    # On the training rows, predict mostly gives labels_ back.
    assert (est.predict(X[:1500]) == est.labels_).mean() > 0.8


def test_in_a_pipeline_after_whitening(digits):
    X, y = digits
    pipe = make_pipeline(PCA(whiten=True, random_state=0),
                         BalancedGraphClustering(10, random_state=0))
    labels = pipe.fit_predict(X)
    assert labels.shape == (len(X),)
    assert normalized_mutual_info_score(y, labels) > 0.6


@pytest.mark.parametrize("params, match", [
    (dict(n_clusters=0), "n_clusters"),
    (dict(spectral="yes"), "spectral"),
    (dict(n_init=0), "n_init"),
])
def test_bad_parameters(digits, params, match):
    with pytest.raises(ValueError, match=match):
        BalancedGraphClustering(**params).fit(digits[0][:50])


def test_too_few_samples():
    with pytest.raises(ValueError, match="n_samples=3 should be >= n_clusters=5"):
        BalancedGraphClustering(5).fit(np.eye(3))


@parametrize_with_checks([BalancedGraphClustering(n_clusters=3, n_init=2, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
