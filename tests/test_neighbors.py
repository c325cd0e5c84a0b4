import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

import sklearn_sela.neighbors as neighbors
from sklearn_sela.neighbors import (
    average_over_neighbors,
    cosine_neighbors,
    neighbor_agreement,
    smooth_over_neighbors,
)


def _points(n=60, dim=6, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    X[::5] *= 20.0  # lengths must not matter
    return X


@pytest.mark.parametrize("exclude_self", [False, True])
def test_cosine_neighbors_match_scikit_learn(monkeypatch, exclude_self):
    X = _points()
    # Several row blocks, to cover the blocked products.
    monkeypatch.setattr(neighbors, "_BLOCK_ENTRIES", 7 * len(X))
    got = cosine_neighbors(torch.from_numpy(X), 4, exclude_self=exclude_self)
    assert got.dtype == torch.int64 and got.shape == (60, 4)
    ref = NearestNeighbors(n_neighbors=5, metric="cosine").fit(X)
    ref = ref.kneighbors(X, return_distance=False)
    np.testing.assert_array_equal(got.numpy(), ref[:, 1:] if exclude_self else ref[:, :4])
    if not exclude_self:
        np.testing.assert_array_equal(got[:, 0].numpy(), np.arange(60))
    # One shard's rows, searched among all samples.
    part = cosine_neighbors(torch.from_numpy(X), 4, rows=(13, 41), exclude_self=exclude_self)
    np.testing.assert_array_equal(part.numpy(), got[13:41].numpy())


def _clustered(n=4000, dim=32, n_centres=40, seed=0):
    # Low intrinsic dimension, as learned features have: the regime in
    # which an index of cells finds the neighbours by looking at a few.
    rng = np.random.RandomState(seed)
    centres = rng.normal(size=(n_centres, 8)) * 2
    z = centres[rng.randint(n_centres, size=n)] + rng.normal(size=(n, 8))
    x = z @ rng.normal(size=(8, dim)) + 0.05 * rng.normal(size=(n, dim))
    return torch.from_numpy(x.astype(np.float32))


def _overlap(found, exact):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), exact.tolist())])


@pytest.mark.parametrize("exclude_self", [False, True])
def test_approximate_neighbors_find_most_exact_ones(exclude_self):
    x = _clustered()
    exact, exact_sim = cosine_neighbors(
        x, 10, exclude_self=exclude_self, method="exact", return_similarity=True
    )
    found, sim = cosine_neighbors(
        x, 10, exclude_self=exclude_self, method="approximate", return_similarity=True
    )
    assert found.shape == (4000, 10) and found.dtype == torch.int64
    # Calibrated to 95% on a sample of queries; the whole set is close.
    assert _overlap(found, exact) > 0.93
    own = (found == torch.arange(4000)[:, None]).any(dim=1)
    assert not own.any() if exclude_self else own.float().mean() > 0.99
    # Similarities are the cosines of the pairs returned, most similar first.
    unit = torch.nn.functional.normalize(x, dim=1)
    np.testing.assert_allclose(sim, (unit[:, None, :] * unit[found]).sum(-1), atol=1e-5)
    assert (sim[:, :-1] >= sim[:, 1:] - 1e-6).all()
    assert (sim <= exact_sim + 1e-5).all()  # never better than the best
    # A shard's rows, and explicit queries, give the same neighbours.
    part = cosine_neighbors(x, 10, rows=(100, 300), exclude_self=exclude_self,
                            method="approximate")
    np.testing.assert_array_equal(part, found[100:300])


def test_approximate_search_falls_back_to_exact_without_structure():
    # Isotropic noise in 64 dimensions: no few cells hold a point's
    # neighbours, so the calibration finds no breadth and searches exactly.
    x = torch.from_numpy(np.random.RandomState(0).normal(size=(3000, 64)).astype(np.float32))
    np.testing.assert_array_equal(
        cosine_neighbors(x, 5, method="approximate"), cosine_neighbors(x, 5, method="exact")
    )


def test_auto_method_follows_the_number_of_samples(monkeypatch):
    x = _clustered(n=2000)
    queries = x[:50] + 0.01
    exact = cosine_neighbors(x, 8, queries=queries, method="exact")
    assert torch.equal(cosine_neighbors(x, 8, queries=queries), exact)
    monkeypatch.setattr(neighbors, "_APPROX_MIN_SAMPLES", 1000)
    calls = []
    search = neighbors._approximate_search
    monkeypatch.setattr(neighbors, "_approximate_search",
                        lambda *a: calls.append(1) or search(*a))
    assert _overlap(cosine_neighbors(x, 8, queries=queries), exact) > 0.9
    assert calls == [1]


def test_cosine_neighbors_bad_count():
    X = torch.from_numpy(_points(n=5))
    assert cosine_neighbors(X, 5).shape == (5, 5)
    with pytest.raises(ValueError, match=r"n_neighbors=5 must be in \[1, 4\] for 5 samples"):
        cosine_neighbors(X, 5, exclude_self=True)
    with pytest.raises(ValueError, match=r"n_neighbors=0 must be in \[1, 5\]"):
        cosine_neighbors(X, 0)
    with pytest.raises(ValueError, match="only with queries=None"):
        cosine_neighbors(X, 2, queries=X, exclude_self=True)
    with pytest.raises(ValueError, match="method must be"):
        cosine_neighbors(X, 2, method="hnsw")


def test_average_over_neighbors(monkeypatch):
    rng = np.random.RandomState(0)
    P = rng.dirichlet(np.ones(5), size=30).astype(np.float32)
    P[:, 4] = 0.0  # a class nobody predicts keeps a finite log
    P /= P.sum(axis=1, keepdims=True)
    nbr = rng.randint(0, 30, size=(12, 3))
    monkeypatch.setattr(neighbors, "_BLOCK_ENTRIES", 2 * 3 * 5)  # blocks of 2 rows
    out = torch.full((12, 5), np.nan)
    got = average_over_neighbors(torch.from_numpy(P), torch.from_numpy(nbr), out=out)
    assert got is out
    expected = np.log(np.maximum(P[nbr].mean(axis=1), np.finfo(np.float32).tiny))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert np.isfinite(got.numpy()).all()


def test_neighbor_agreement_counts_the_pairs_inside_clusters():
    labels = torch.tensor([0, 0, 1, 1, 2])
    # 5 samples x 2 neighbours: pairs (0,1) (1,0) (2,3) (3,2) share a label,
    # (0,4) (1,2) (2,0) (3,4) (4,0) (4,3) do not.
    neighbors = torch.tensor([[1, 4], [0, 2], [3, 0], [2, 4], [0, 3]])
    assert neighbor_agreement(labels, neighbors) == pytest.approx(4 / 10)
    assert neighbor_agreement(torch.zeros(5, dtype=torch.int64), neighbors) == 1.0


def test_smooth_over_neighbors_averages_over_the_symmetrised_graph():
    # 0 and 1 are each other's neighbours (weight 1); 2 points to 0 alone
    # (weight 1/2 both ways); every sample also keeps itself (weight 1).
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [4.0, 4.0]])
    neighbors = torch.tensor([[1], [0], [0]])
    one = smooth_over_neighbors(x, neighbors, 1)
    expected = torch.stack([
        (x[0] + x[1] + 0.5 * x[2]) / 2.5,
        (x[1] + x[0]) / 2.0,
        (x[2] + 0.5 * x[0]) / 1.5,
    ])
    torch.testing.assert_close(one, expected)
    torch.testing.assert_close(smooth_over_neighbors(x, neighbors, 2),
                               smooth_over_neighbors(one, neighbors, 1))
    assert smooth_over_neighbors(x, neighbors, 0) is x
    # Constant features are a fixed point: the weights of each row sum to 1.
    ones = torch.ones(3, 2)
    torch.testing.assert_close(smooth_over_neighbors(ones, neighbors, 5), ones)
