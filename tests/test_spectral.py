import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

import sklearn_sela.neighbors as neighbors
import sklearn_sela.spectral as spectral
from sklearn_sela import SinkhornAssigner
from sklearn_sela.spectral import knn_graph, spectral_partition


def _blobs_on_sphere(sizes, dim=8, spread=0.15, seed=0):
    # Clusters of very different sizes around random directions: cosine
    # neighbours stay inside their cluster.
    rng = np.random.RandomState(seed)
    centres = rng.normal(size=(len(sizes), dim))
    X = np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])
    y = np.repeat(np.arange(len(sizes)), sizes)
    return X.astype(np.float32), y


def test_knn_graph_is_the_symmetrised_cosine_neighbour_graph(monkeypatch):
    X, _ = _blobs_on_sphere([40, 30, 20], dim=5)
    X[::7] *= 10.0  # lengths must not matter
    # Several row blocks, to cover the blocked products.
    monkeypatch.setattr(neighbors, "_BLOCK_ENTRIES", 90 * 16)
    G = knn_graph(X, n_neighbors=4)
    assert G.shape == (90, 90)
    assert abs(G - G.T).max() == 0
    assert G.diagonal().max() == 0
    assert set(np.unique(G.data)) <= {0.5, 1.0}
    # Row i holds i's own 4 nearest (cosine, self excluded), with weight at
    # least 1/2, plus those that have i among theirs.
    nn = NearestNeighbors(n_neighbors=5, metric="cosine").fit(X)
    own = nn.kneighbors(X, return_distance=False)[:, 1:]
    A = np.zeros((90, 90))
    A[np.repeat(np.arange(90), 4), own.ravel()] = 1.0
    np.testing.assert_array_equal(G.toarray(), (A + A.T) / 2)


def test_spectral_partition_finds_clusters_of_any_size():
    X, y = _blobs_on_sphere([300, 80, 20])
    labels = spectral_partition(X, 3, random_state=0)
    assert adjusted_rand_score(y, labels) == 1.0
    # An equipartition cannot: it must cut the large cluster.
    balanced = SinkhornAssigner(n_clusters=3, metric="cosine", random_state=0).fit(X)
    assert adjusted_rand_score(y, balanced.labels_) < 0.6


def test_spectral_partition_iterative_and_dense_solvers_agree(monkeypatch):
    # Four connected components: eigenvalue 1 four times over, which ARPACK's
    # single-vector Lanczos (scipy eigsh) found 2 or 3 times (ARI 0.38 to 0.63).
    X, y = _blobs_on_sphere([300, 200, 120, 80], dim=16, spread=0.3)
    iterative = spectral_partition(X, 4, random_state=0)
    monkeypatch.setattr(spectral, "_DENSE_BELOW", 10**6)
    dense = spectral_partition(X, 4, random_state=0)
    assert adjusted_rand_score(dense, iterative) == 1.0
    assert adjusted_rand_score(y, iterative) == 1.0


def test_spectral_partition_is_reproducible():
    X, _ = _blobs_on_sphere([50, 50, 50, 50], spread=0.8, seed=1)
    a = spectral_partition(X, 4, random_state=3)
    np.testing.assert_array_equal(a, spectral_partition(X, 4, random_state=3))
    assert a.shape == (200,) and set(a) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_clusters=2, n_neighbors=10), r"n_neighbors=10 must be in \[1, n_samples - 1\] = \[1, 9\]"),
        (dict(n_clusters=2, n_neighbors=0), r"n_neighbors=0 must be in"),
        (dict(n_clusters=11, n_neighbors=3), r"n_clusters=11 must be in \[1, n_samples\] = \[1, 10\]"),
    ],
)
def test_spectral_partition_rejects_bad_sizes(kwargs, match):
    X, _ = _blobs_on_sphere([5, 5])
    with pytest.raises(ValueError, match=match):
        spectral_partition(X, **kwargs)


def test_spectral_partition_rejects_non_finite_features():
    X, _ = _blobs_on_sphere([5, 5])
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        spectral_partition(X, 2)


def _neighbors(X, k):
    import torch

    return neighbors.cosine_neighbors(torch.from_numpy(X), k, exclude_self=True)


def test_neighbor_spectral_embedding_is_the_unit_rows_of_the_leading_eigenvectors():
    # One connected graph: the two leading eigenvalues are simple, so the
    # eigenvectors are defined up to sign, which row scaling does not see.
    X, _ = _blobs_on_sphere([150, 150, 100], spread=0.9, seed=2)
    nbrs = _neighbors(X, 6)
    emb = spectral.neighbor_spectral_embedding(nbrs, 2, random_state=0)  # LOBPCG
    B = np.zeros((400, 400))
    B[np.repeat(np.arange(400), 6), nbrs.numpy().ravel()] = 1.0
    A = (B + B.T) / 2
    d = 1.0 / np.sqrt(A.sum(axis=1))
    values, vectors = np.linalg.eigh(d[:, None] * A * d[None, :])
    assert values[-2] < values[-1] - 1e-3 and values[-3] < values[-2] - 1e-3
    expected = vectors[:, -2:] / np.linalg.norm(vectors[:, -2:], axis=1, keepdims=True)
    assert emb.dtype == np.float32 and emb.shape == (400, 2)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    signs = np.sign((emb * expected).sum(axis=0))
    np.testing.assert_allclose(emb * signs, expected, atol=2e-3)


def test_neighbor_spectral_embedding_gives_each_component_one_direction():
    # Two components that the graph never links: every sample of one gets the
    # same row, orthogonal to the other's, however the features are spread.
    X, y = _blobs_on_sphere([60, 40], spread=0.05, seed=4)
    emb = spectral.neighbor_spectral_embedding(_neighbors(X, 5), 2, random_state=0)
    for k in (0, 1):
        np.testing.assert_allclose(emb[y == k], np.tile(emb[y == k][0], ((y == k).sum(), 1)),
                                   atol=1e-5)
    assert abs(emb[y == 0][0] @ emb[y == 1][0]) < 1e-5


@pytest.mark.parametrize(
    "shape, n_components, match",
    [
        ((10, 10), 2, r"1 <= n_neighbors < n_samples, got shape \(10, 10\)"),
        ((10,), 2, r"index array"),
        ((10, 3), 11, r"n_components=11 must be in \[1, n_samples\] = \[1, 10\]"),
        ((10, 3), 0, r"n_components=0 must be in"),
    ],
)
def test_neighbor_spectral_embedding_rejects_bad_sizes(shape, n_components, match):
    nbrs = np.zeros(shape, dtype=np.int64)
    with pytest.raises(ValueError, match=match):
        spectral.neighbor_spectral_embedding(nbrs, n_components)
