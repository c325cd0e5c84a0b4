"""Tests for sklearn_sela.assigner.SinkhornAssigner."""

import doctest
import re
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import kmeans_plusplus
from sklearn.datasets import load_digits, make_blobs
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

import sklearn_sela.assigner as assigner_module
from sklearn_sela.assigner import SinkhornAssigner
from sklearn_sela.metrics import cluster_accuracy
from sklearn_sela.sinkhorn import balanced_sizes, sinkhorn_knopp, soft_assignments

# ---------------------------------------------------------------------------
# scikit-learn estimator checks
# ---------------------------------------------------------------------------

# scikit-learn's common checks treat any estimator with metric="precomputed"
# as taking a square pairwise matrix: they pass an (n_samples, n_samples)
# distance matrix (or, for check_clustering, 2-D blob features) and often set
# n_clusters to 1, 2 or 3 beforehand. SinkhornAssigner's precomputed input is
# an (n_samples, n_clusters) score matrix, so every check that fits on such
# data hits the documented "X must have one column per cluster" ValueError.
_SHAPE = (
    "metric='precomputed' needs an (n_samples, n_clusters) score matrix; the "
    "check fits on a square (n_samples, n_samples) pairwise matrix, so fit "
    "raises the n_features != n_clusters ValueError"
)
_PRECOMPUTED_XFAIL = {
    "check_clustering": (
        "fits 2-feature blobs with n_clusters=3: with metric='precomputed' the "
        "columns are cluster scores, so fit raises the n_features != "
        "n_clusters ValueError"
    ),
    "check_fit2d_1feature": (
        "the 1-feature X is turned into a square pairwise matrix, so fit "
        "raises the n_features != n_clusters ValueError instead of a "
        "'1 feature' error"
    ),
    "check_positive_only_tag_during_fit": _SHAPE,
    **{
        name: _SHAPE
        for name in [
            "check_dict_unchanged",
            "check_dont_overwrite_parameters",
            "check_dtype_object",
            "check_estimators_dtypes",
            "check_estimators_fit_returns_self",
            "check_estimators_nan_inf",
            "check_estimators_overwrite_params",
            "check_estimators_pickle",
            "check_f_contiguous_array_estimator",
            "check_fit2d_predict1d",
            "check_fit_check_is_fitted",
            "check_fit_idempotent",
            "check_fit_score_takes_y",
            "check_methods_sample_order_invariance",
            "check_methods_subset_invariance",
            "check_n_features_in",
            "check_n_features_in_after_fitting",
            "check_pipeline_consistency",
            "check_readonly_memmap_input",
            "check_transformer_data_not_an_array",
            "check_transformer_general",
            "check_transformer_n_iter",
            "check_transformer_preserve_dtypes",
        ]
    },
}


def _expected_failed_checks(estimator):
    if estimator.metric == "precomputed":
        return _PRECOMPUTED_XFAIL
    return {}


@parametrize_with_checks(
    [
        SinkhornAssigner(n_clusters=3, random_state=0),
        SinkhornAssigner(n_clusters=3, metric="cosine", random_state=0),
        SinkhornAssigner(n_clusters=3, metric="precomputed"),
        SinkhornAssigner(n_clusters=3, cluster_proportions="auto", random_state=0),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_docstring_examples():
    result = doctest.testmod(assigner_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

# Blobs in distinct directions from the origin, so that both metrics see them.
_CENTERS = np.array([[6.0, 0.0], [0.0, 6.0], [-5.0, -5.0]])


def _blobs(n_samples=300, std=0.7, random_state=0):
    return make_blobs(
        n_samples=n_samples,
        centers=_CENTERS,
        cluster_std=std,
        random_state=random_state,
    )


# ---------------------------------------------------------------------------
# Behaviour in feature space
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize(
    "proportions", [None, [0.5, 0.3, 0.2]], ids=["uniform", "proportions"]
)
def test_balanced_sizes_exact(metric, proportions):
    # 151 samples from unequal blobs: sizes follow balanced_sizes exactly.
    X, _ = make_blobs(
        n_samples=[90, 40, 21], centers=_CENTERS, cluster_std=1.0, random_state=1
    )
    sa = SinkhornAssigner(
        n_clusters=3, metric=metric, cluster_proportions=proportions, random_state=0
    ).fit(X)
    expected = balanced_sizes(151, proportions, n_clusters=3)
    sizes = np.bincount(sa.labels_, minlength=3)
    if proportions is None:
        # Which cluster gets the one extra sample is a tie the solver breaks
        # by demand; the multiset of sizes is fixed.
        np.testing.assert_array_equal(np.sort(sizes), np.sort(expected))
    else:
        np.testing.assert_array_equal(sizes, expected)
    assert sa.labels_.dtype == np.int64


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_recovers_equal_blobs(metric):
    X, y = _blobs()
    sa = SinkhornAssigner(n_clusters=3, metric=metric, random_state=0).fit(X)
    assert adjusted_rand_score(y, sa.labels_) > 0.99
    assert adjusted_rand_score(y, sa.predict(X)) > 0.99
    assert sa.cluster_centers_.shape == (3, 2)
    assert sa.n_features_in_ == 2
    assert sa.n_iter_ >= 1
    assert sa.inertia_ > 0
    assert sa.log_beta_.shape == (3,)
    if metric == "cosine":
        np.testing.assert_allclose(np.linalg.norm(sa.cluster_centers_, axis=1), 1.0)
    else:
        # Centres are the means of their clusters.
        for k in range(3):
            np.testing.assert_allclose(
                sa.cluster_centers_[k], X[sa.labels_ == k].mean(axis=0), atol=1e-8
            )


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_cluster_proportions_recover_imbalanced_blobs(metric):
    sizes = [120, 60, 30]
    X, y = make_blobs(
        n_samples=sizes, centers=_CENTERS, cluster_std=1.0, random_state=0
    )
    proportions = np.array(sizes) / sum(sizes)
    params = dict(n_clusters=3, metric=metric, n_init=2, random_state=0)
    uniform = SinkhornAssigner(**params).fit(X)
    matched = SinkhornAssigner(**params, cluster_proportions=proportions).fit(X)
    ari_uniform = adjusted_rand_score(y, uniform.labels_)
    ari_matched = adjusted_rand_score(y, matched.labels_)
    assert ari_matched > 0.95
    assert ari_matched - ari_uniform > 0.3
    np.testing.assert_array_equal(np.bincount(matched.labels_), sizes)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_auto_proportions_learn_imbalanced_blobs(metric):
    # Unknown, unequal sizes: "auto" finds them about as well as being told.
    sizes = np.array([240, 100, 40, 20])
    centers = np.vstack([_CENTERS, [[-6.0, 4.0]]])
    X, y = make_blobs(n_samples=sizes, centers=centers, cluster_std=1.2, random_state=0)
    params = dict(n_clusters=4, metric=metric, n_init=3, random_state=0)
    uniform = SinkhornAssigner(**params).fit(X)
    auto = SinkhornAssigner(**params, cluster_proportions="auto").fit(X)
    ari_uniform = adjusted_rand_score(y, uniform.labels_)
    ari_auto = adjusted_rand_score(y, auto.labels_)
    assert ari_auto > 0.9
    assert ari_auto - ari_uniform > 0.2
    found = np.sort(auto.cluster_proportions_)[::-1]
    np.testing.assert_allclose(found, sizes / sizes.sum(), atol=0.03)
    np.testing.assert_allclose(uniform.cluster_proportions_, 0.25, atol=1e-3)
    # labels_ are an exact rounding of the estimated sizes, and predict
    # carries them over.
    np.testing.assert_array_equal(
        np.bincount(auto.labels_, minlength=4),
        balanced_sizes(sizes.sum(), auto.cluster_proportions_),
    )
    assert np.mean(auto.predict(X) == auto.labels_) > 0.98


def test_auto_proportions_keep_the_better_of_two_starts():
    # From seeded centres, "auto" learns the sizes twice: from the seeds, and
    # from the equal-size k-means they lead to; it keeps the lower inertia.
    # On balanced digits the start from equal sizes is the one that keeps
    # the accuracy of equal sizes (from the seeds, the sizes drift).
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float64)
    auto = SinkhornAssigner(10, cluster_proportions="auto", random_state=0).fit(X)
    seeds, _ = kmeans_plusplus(X, 10, random_state=np.random.RandomState(0))
    from_seeds = SinkhornAssigner(10, cluster_proportions="auto", init=seeds).fit(X)
    equal = SinkhornAssigner(10, init=seeds).fit(X)
    from_equal = SinkhornAssigner(
        10, cluster_proportions="auto", init=equal.cluster_centers_).fit(X)
    better = min([from_seeds, from_equal], key=lambda m: m.inertia_)
    assert auto.inertia_ == pytest.approx(min(from_seeds.inertia_, from_equal.inertia_))
    np.testing.assert_array_equal(auto.labels_, better.labels_)
    assert auto.n_iter_ > equal.n_iter_
    acc = [cluster_accuracy(y, m.labels_) for m in (auto, from_seeds, equal)]
    assert acc[0] > acc[1] + 0.05
    assert acc[0] > acc[2] - 0.01


def test_auto_proportions_precomputed_are_the_maximum_likelihood_weights():
    # With fixed scores, "auto" settles where the weights equal the mean
    # posterior they induce: the EM fixed point of the mixture weights.
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=600, p=[0.7, 0.2, 0.1])
    X = rng.normal(size=(600, 1)) + 2.5 * y[:, None]
    logp = -0.5 * (X - 2.5 * np.arange(3)[None]) ** 2
    sa = SinkhornAssigner(
        n_clusters=3, metric="precomputed", lam=1.0, cluster_proportions="auto",
        sinkhorn_tol=1e-6,
    ).fit(logp)
    w = sa.cluster_proportions_
    post = np.log(w) + logp
    post = np.exp(post - np.logaddexp.reduce(post, axis=1, keepdims=True))
    np.testing.assert_allclose(post.mean(axis=0), w, atol=1e-4)
    np.testing.assert_allclose(w, np.bincount(y) / 600, atol=0.05)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_predict_consistent_with_fit_labels(metric):
    # Overlapping blobs: exact balancing moves a few boundary samples, the
    # argmax rule with the learned scaling must agree on almost all.
    X, _ = make_blobs(n_samples=240, centers=_CENTERS, cluster_std=2.5, random_state=1)
    sa = SinkhornAssigner(n_clusters=3, metric=metric, random_state=0).fit(X)
    assert np.mean(sa.predict(X) == sa.labels_) > 0.95
    # New samples close to training samples get their labels.
    rng = np.random.RandomState(0)
    X_new = X + 1e-3 * rng.standard_normal(X.shape)
    assert np.mean(sa.predict(X_new) == sa.labels_) > 0.95
    # predict on new data of the same distribution is still about balanced.
    X_other, _ = make_blobs(
        n_samples=600, centers=_CENTERS, cluster_std=2.5, random_state=2
    )
    counts = np.bincount(sa.predict(X_other), minlength=3)
    assert counts.min() > 160


def test_argmax_assign_predict_matches_labels():
    X, _ = make_blobs(n_samples=150, centers=_CENTERS, cluster_std=2.5, random_state=1)
    sa = SinkhornAssigner(n_clusters=3, assign="argmax", random_state=0).fit(X)
    np.testing.assert_array_equal(sa.predict(X), sa.labels_)
    # Balanced only up to the solver tolerance.
    assert np.bincount(sa.labels_).min() >= 45


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "precomputed"])
def test_transform_rows_sum_to_one(metric):
    X, _ = _blobs(n_samples=120, std=2.0)
    if metric == "precomputed":
        X = np.log(np.random.RandomState(0).dirichlet(np.ones(3), size=120))
    sa = SinkhornAssigner(n_clusters=3, metric=metric, random_state=0).fit(X)
    Q = sa.transform(X[:50])
    assert Q.shape == (50, 3)
    assert np.all(Q >= 0)
    np.testing.assert_allclose(Q.sum(axis=1), 1.0, rtol=1e-10)
    np.testing.assert_array_equal(Q.argmax(axis=1), sa.predict(X[:50]))
    np.testing.assert_allclose(sa.fit_transform(X), sa.transform(X))


def test_float32_preserved():
    X, _ = _blobs(n_samples=90)
    X = X.astype(np.float32)
    sa = SinkhornAssigner(n_clusters=3, random_state=0).fit(X)
    assert sa.cluster_centers_.dtype == np.float32
    assert sa.transform(X).dtype == np.float32
    labels64 = SinkhornAssigner(n_clusters=3, random_state=0).fit_predict(
        X.astype(np.float64)
    )
    assert adjusted_rand_score(labels64, sa.labels_) == 1.0


def test_euclidean_scale_and_shift_invariant():
    # The data-dependent temperature makes lam scale-free.
    X, _ = _blobs(n_samples=150, std=2.5)
    ref = SinkhornAssigner(n_clusters=3, lam=5.0, random_state=0).fit(X)
    scaled = SinkhornAssigner(n_clusters=3, lam=5.0, random_state=0).fit(
        1000.0 * X + 7.0
    )
    np.testing.assert_array_equal(ref.labels_, scaled.labels_)
    np.testing.assert_allclose(scaled.temperature_, 1e6 * ref.temperature_)
    np.testing.assert_allclose(
        ref.transform(X), scaled.transform(1000.0 * X + 7.0), atol=1e-6
    )


def test_score_is_negative_objective():
    X, _ = _blobs(n_samples=150, std=2.0)
    for metric in ["euclidean", "cosine"]:
        sa = SinkhornAssigner(n_clusters=3, metric=metric, random_state=0).fit(X)
        labels = sa.predict(X)
        if metric == "euclidean":
            expected = ((X - sa.cluster_centers_[labels]) ** 2).sum()
        else:
            Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
            expected = (1 - (Xn * sa.cluster_centers_[labels]).sum(axis=1)).sum()
        np.testing.assert_allclose(sa.score(X), -expected)
    # Training objective: inertia_ is the cost of labels_.
    sa = SinkhornAssigner(n_clusters=3, random_state=0).fit(X)
    np.testing.assert_allclose(
        sa.inertia_, ((X - sa.cluster_centers_[sa.labels_]) ** 2).sum()
    )


def test_random_state_reproducible():
    X, _ = _blobs(n_samples=200, std=2.5)
    params = dict(n_clusters=4, n_init=3, random_state=42)
    a = SinkhornAssigner(**params).fit(X)
    b = SinkhornAssigner(**params).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.log_beta_, b.log_beta_)
    assert a.inertia_ == b.inertia_
    # n_init keeps the best of its runs: never worse than its first run.
    single = SinkhornAssigner(n_clusters=4, n_init=1, random_state=42).fit(X)
    assert a.inertia_ <= single.inertia_ + 1e-9


def test_explicit_and_random_init():
    X, y = _blobs(n_samples=150)
    sa = SinkhornAssigner(n_clusters=3, init=_CENTERS, max_iter=20).fit(X)
    # With the true centres as init, cluster k is blob k.
    np.testing.assert_array_equal(sa.labels_, y)
    with pytest.warns(RuntimeWarning, match="only one init"):
        SinkhornAssigner(n_clusters=3, init=_CENTERS, n_init=2).fit(X)
    sa = SinkhornAssigner(n_clusters=3, init="random", n_init=2, random_state=0)
    assert adjusted_rand_score(y, sa.fit_predict(X)) > 0.99


def test_max_iter_and_convergence_warning():
    X, _ = _blobs(n_samples=150, std=2.5)
    sa = SinkhornAssigner(n_clusters=3, max_iter=1, random_state=0).fit(X)
    assert sa.n_iter_ == 1
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        SinkhornAssigner(n_clusters=3, sinkhorn_max_iter=1, random_state=0).fit(X)


def test_feature_names_and_dataframe():
    pd = pytest.importorskip("pandas")
    X, _ = _blobs(n_samples=90)
    df = pd.DataFrame(X, columns=["a", "b"])
    sa = SinkhornAssigner(n_clusters=3, random_state=0).fit(df)
    np.testing.assert_array_equal(sa.feature_names_in_, ["a", "b"])
    names = sa.get_feature_names_out()
    np.testing.assert_array_equal(
        names, ["sinkhornassigner0", "sinkhornassigner1", "sinkhornassigner2"]
    )
    out = sa.set_output(transform="pandas").transform(df)
    assert list(out.columns) == list(names)


# ---------------------------------------------------------------------------
# Precomputed scores
# ---------------------------------------------------------------------------


def _log_probs(n=200, k=4, seed=0):
    rng = np.random.RandomState(seed)
    return np.log(rng.dirichlet(0.5 * np.ones(k), size=n))


def test_precomputed_matches_solver():
    logp = _log_probs()
    sa = SinkhornAssigner(n_clusters=4, metric="precomputed", lam=10.0)
    labels = sa.fit_predict(logp)
    res = sinkhorn_knopp(logp, lam=10.0, assign="balanced")
    np.testing.assert_array_equal(labels, res.labels)
    np.testing.assert_array_equal(sa.labels_, res.labels)
    np.testing.assert_allclose(sa.log_beta_, res.log_beta)
    np.testing.assert_array_equal(np.bincount(labels), [50, 50, 50, 50])
    assert sa.n_iter_ == res.n_iter
    np.testing.assert_allclose(sa.inertia_, -logp[np.arange(200), labels].sum())
    assert not hasattr(sa, "cluster_centers_")
    # New score matrices get the learned scaling.
    new = _log_probs(n=50, seed=1)
    np.testing.assert_allclose(
        sa.transform(new), soft_assignments(new, res.log_beta, lam=10.0)
    )
    np.testing.assert_array_equal(
        sa.predict(new), np.argmax(10.0 * new + res.log_beta, axis=1)
    )
    np.testing.assert_allclose(sa.score(new), new[np.arange(50), sa.predict(new)].sum())


def test_precomputed_proportions_and_neg_inf():
    logp = _log_probs(n=100, k=3)
    logp[0] = [0.0, -np.inf, -np.inf]  # probability zero is allowed
    sa = SinkhornAssigner(
        n_clusters=3, metric="precomputed", cluster_proportions=[0.5, 0.3, 0.2]
    ).fit(logp)
    np.testing.assert_array_equal(np.bincount(sa.labels_), [50, 30, 20])
    assert sa.labels_[0] == 0
    res = sinkhorn_knopp(logp, cluster_proportions=[0.5, 0.3, 0.2], assign="balanced")
    np.testing.assert_array_equal(sa.labels_, res.labels)


# ---------------------------------------------------------------------------
# Pipeline and model selection
# ---------------------------------------------------------------------------


def _silhouette_scorer(estimator, X, y=None):
    return silhouette_score(X, estimator.predict(X))


def test_pipeline_and_grid_search_silhouette():
    X, _ = make_blobs(n_samples=240, centers=3, n_features=5, random_state=0)
    pipe = Pipeline(
        [
            ("scale", StandardScaler()),
            ("pca", PCA(n_components=2)),
            ("sela", SinkhornAssigner(random_state=0)),
        ]
    )
    pipe.set_params(sela__n_clusters=3).fit(X)
    np.testing.assert_array_equal(np.bincount(pipe[-1].labels_), [80, 80, 80])
    assert pipe.transform(X).shape == (240, 3)
    assert pipe.predict(X).shape == (240,)
    np.testing.assert_array_equal(
        pipe.get_feature_names_out(),
        ["sinkhornassigner0", "sinkhornassigner1", "sinkhornassigner2"],
    )
    search = GridSearchCV(
        pipe, {"sela__n_clusters": [2, 3, 4, 5]}, scoring=_silhouette_scorer, cv=3
    ).fit(X)
    assert search.best_params_ == {"sela__n_clusters": 3}
    assert search.predict(X).shape == (240,)


def test_grid_search_default_score():
    # scoring=None uses SinkhornAssigner.score (negative objective).
    X, _ = _blobs(n_samples=150, std=1.5)
    search = GridSearchCV(
        SinkhornAssigner(n_clusters=3, random_state=0),
        {"metric": ["euclidean", "cosine"]},
        cv=3,
    ).fit(X)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and np.all(scores < 0)
    assert search.best_estimator_.n_clusters == 3


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "proportions, match",
    [
        ([0.5, 0.5], re.escape("one entry per cluster: expected shape (3,), got (2,)")),
        ([[0.2, 0.3, 0.5]], "one entry per cluster"),
        ([0.5, 0.6, -0.1], "must be non-negative"),
        ([0.5, 0.5, 0.0], "strictly positive"),
        ([0.5, np.nan, 0.5], "must be finite"),
        ([0.5, 0.3, 0.3], "must sum to 1, got 1.1"),
    ],
)
@pytest.mark.parametrize("metric", ["euclidean", "precomputed"])
def test_bad_cluster_proportions(proportions, match, metric):
    X = _log_probs(n=30, k=3)
    sa = SinkhornAssigner(n_clusters=3, metric=metric, cluster_proportions=proportions)
    with pytest.raises(ValueError, match=match):
        sa.fit(X)


def test_too_few_samples():
    X = np.arange(4.0).reshape(2, 2)
    with pytest.raises(ValueError, match="n_samples=2 should be >= n_clusters=3"):
        SinkhornAssigner(n_clusters=3).fit(X)
    with pytest.raises(ValueError, match="n_samples=1 should be >= n_clusters=2"):
        SinkhornAssigner(n_clusters=2).fit(X[:1])


def test_precomputed_bad_input():
    X = _log_probs(n=30, k=3)
    with pytest.raises(ValueError, match="got 3 columns but n_clusters=4"):
        SinkhornAssigner(n_clusters=4, metric="precomputed").fit(X)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="contains NaN"):
        SinkhornAssigner(n_clusters=3, metric="precomputed").fit(bad)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match=re.escape("contains +inf")):
        SinkhornAssigner(n_clusters=3, metric="precomputed").fit(bad)
    sa = SinkhornAssigner(n_clusters=3, metric="precomputed").fit(X)
    with pytest.raises(ValueError, match="3 features"):
        sa.predict(X[:, :2])


@pytest.mark.parametrize(
    "params, match",
    [
        ({"metric": "manhattan"}, "'metric' parameter"),
        ({"lam": 0.0}, "'lam' parameter"),
        ({"assign": "greedy"}, "'assign' parameter"),
        ({"n_clusters": 0}, "'n_clusters' parameter"),
        ({"n_init": 0}, "'n_init' parameter"),
        ({"tol": -1.0}, "'tol' parameter"),
        ({"sinkhorn_max_iter": 0}, "'sinkhorn_max_iter' parameter"),
        ({"init": "kmeans"}, "'init' parameter"),
    ],
)
def test_invalid_parameters(params, match):
    X, _ = _blobs(n_samples=30)
    sa = SinkhornAssigner(**{"n_clusters": 3, **params})
    with pytest.raises(InvalidParameterError, match=match):
        sa.fit(X)


def test_bad_init_and_feature_mismatch():
    X, _ = _blobs(n_samples=30)
    with pytest.raises(ValueError, match=re.escape("init must have shape")):
        SinkhornAssigner(n_clusters=3, init=np.zeros((2, 2))).fit(X)
    sa = SinkhornAssigner(n_clusters=3, random_state=0)
    with pytest.raises(NotFittedError):
        sa.predict(X)
    sa.fit(X)
    with pytest.raises(ValueError, match="X has 3 features"):
        sa.transform(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="Input X contains NaN"):
        sa.predict(np.full((2, 2), np.nan))


def test_params_not_modified_by_fit():
    props = [0.5, 0.3, 0.2]
    sa = SinkhornAssigner(n_clusters=3, cluster_proportions=props, random_state=0)
    before = sa.get_params()
    X, _ = _blobs(n_samples=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sa.fit(X)
    assert sa.get_params() == before
    assert sa.cluster_proportions is props
    assert clone(sa).get_params() == before


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_cluster_centers_are_each_clusters_mean_or_direction(metric, monkeypatch):
    from sklearn_sela.assigner import cluster_centers

    rng = np.random.default_rng(0)
    X = rng.normal(size=(700, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=700)
    labels[labels == 2] = 3  # cluster 2 is empty: it keeps its given centre
    given = rng.normal(size=(4, 5)).astype(np.float32)
    # Several blocks of rows (the sums are accumulated block by block).
    monkeypatch.setattr(assigner_module, "_SUM_BLOCK_ENTRIES", 5 * 128)
    got = cluster_centers(X, labels, given, metric)
    assert got.dtype == np.float32
    for c in range(4):
        rows = X[labels == c].astype(np.float64)
        if not len(rows):
            np.testing.assert_array_equal(got[c], given[c])
            continue
        want = rows.mean(0) if metric == "euclidean" else rows.sum(0) / np.linalg.norm(rows.sum(0))
        np.testing.assert_allclose(got[c], want, rtol=1e-6, atol=1e-7)
