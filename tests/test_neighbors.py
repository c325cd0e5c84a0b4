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


def test_cosine_neighbors_bad_count():
    X = torch.from_numpy(_points(n=5))
    assert cosine_neighbors(X, 5).shape == (5, 5)
    with pytest.raises(ValueError, match=r"n_neighbors=5 must be in \[1, 4\] for 5 samples"):
        cosine_neighbors(X, 5, exclude_self=True)
    with pytest.raises(ValueError, match=r"n_neighbors=0 must be in \[1, 5\]"):
        cosine_neighbors(X, 0)


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
