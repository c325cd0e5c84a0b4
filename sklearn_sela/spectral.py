"""Spectral clustering of learned features through their k-nearest-neighbour graph.

The cosine k-nearest-neighbour graph of the features, symmetrised, and the
normalised spectral clustering of Ng, Jordan and Weiss (2001) on it -- the
leading eigenvectors of ``D^-1/2 A D^-1/2``, rows scaled to unit length,
then k-means. The same embedding, of a neighbour graph already searched
(:func:`neighbor_spectral_embedding`), is where
:class:`~sklearn_sela.BalancedGraphClustering` refines its balanced
partition. Pure numerics on numpy / torch / scipy arrays (the neighbour
search is :func:`sklearn_sela.neighbors.cosine_neighbors`).

Why not :class:`sklearn.cluster.SpectralClustering`: it builds the graph
with a tree or a dense distance matrix, and its default ARPACK eigensolver
works in shift-invert mode on the Laplacian, which needs a sparse
factorisation. Here the graph comes from blocked matrix products, and
LOBPCG finds the largest eigenvalues of the normalised adjacency with
sparse products only: the same partition, many times faster on tens of
thousands of samples. LOBPCG rather than
ARPACK's Lanczos for these: a graph of several connected components has
eigenvalue 1 once per component, and a single-vector Krylov method may
return fewer copies of a repeated eigenvalue than there are, where a block
method finds them all.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import lobpcg
from sklearn.cluster import KMeans
from sklearn.utils import check_array, check_random_state

from .neighbors import cosine_neighbors, symmetric_adjacency

__all__ = ["knn_graph", "neighbor_spectral_embedding", "spectral_partition"]

# Below this many samples a dense eigendecomposition is fast, and LOBPCG
# needs several times more samples than vectors.
_DENSE_BELOW = 300

# LOBPCG iterates on this many vectors more than it returns: they converge
# faster when the block reaches past the eigenvalues wanted.
_EXTRA_VECTORS = 5


def knn_graph(features, n_neighbors=10):
    """Symmetric cosine k-nearest-neighbour graph of the rows of ``features``.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Samples; they need not be normalised. All-zero rows have cosine 0
        with everything.
    n_neighbors : int, default=10
        Neighbours of each sample, itself excluded.

    Returns
    -------
    graph : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
        ``(A + A.T) / 2`` for the 0/1 adjacency ``A`` of each sample's
        ``n_neighbors`` most similar other samples: 1 where the relation is
        mutual, 1/2 where it is one-sided.
    """
    return _knn_graph(check_array(features, dtype=np.float32), n_neighbors)


def _knn_graph(features, n_neighbors):
    """:func:`knn_graph` of features already validated as float32."""
    x = torch.as_tensor(features)
    n = x.shape[0]
    if not 1 <= n_neighbors < n:
        raise ValueError(
            f"n_neighbors={n_neighbors} must be in [1, n_samples - 1] = [1, {n - 1}]."
        )
    return _neighbor_graph(cosine_neighbors(x, n_neighbors, exclude_self=True))


def _neighbor_graph(neighbors):
    """The symmetrised graph of a neighbour array, as a scipy CSR matrix."""
    n = neighbors.shape[0]
    adj = symmetric_adjacency(neighbors.cpu())
    rows, cols = adj.indices().numpy()
    return sp.csr_matrix((adj.values().double().numpy(), (rows, cols)), shape=(n, n))


def neighbor_spectral_embedding(neighbors, n_components, *, random_state=None):
    """Spectral embedding of a nearest-neighbour graph, rows of unit length.

    The ``n_components`` leading eigenvectors of the normalised adjacency
    ``D^-1/2 A D^-1/2`` of the symmetrised graph ``A = (B + B.T) / 2``
    (``B`` the 0/1 adjacency of ``neighbors``), each sample's row scaled to
    unit length: the embedding that :func:`spectral_partition` clusters
    (Ng, Jordan and Weiss, 2001). Samples that the graph links closely get
    nearby rows, however far apart they lie in the space the graph was
    built in.

    Parameters
    ----------
    neighbors : array-like or torch.Tensor of shape (n_samples, n_neighbors)
        Indices of each sample's nearest neighbours, itself excluded (e.g.
        from :func:`~sklearn_sela.neighbors.cosine_neighbors` with
        ``exclude_self=True``).
    n_components : int
        Number of eigenvectors, in ``[1, n_samples]``.
    random_state : int, RandomState instance or None, default=None
        Seeds the eigensolver's start vectors.

    Returns
    -------
    embedding : ndarray of shape (n_samples, n_components)
        float32 rows of unit length.
    """
    neighbors = torch.as_tensor(neighbors)
    n = neighbors.shape[0]
    if neighbors.ndim != 2 or not 1 <= neighbors.shape[1] < n:
        raise ValueError(
            f"neighbors must be an (n_samples, n_neighbors) index array with "
            f"1 <= n_neighbors < n_samples, got shape {tuple(neighbors.shape)}."
        )
    if not 1 <= n_components <= n:
        raise ValueError(
            f"n_components={n_components} must be in [1, n_samples] = [1, {n}]."
        )
    vectors = _leading_eigenvectors(
        _neighbor_graph(neighbors), n_components, check_random_state(random_state)
    )
    return vectors.astype(np.float32)


def _leading_eigenvectors(graph, k, rng):
    """The ``k`` leading eigenvectors of the normalised adjacency of
    ``graph``, rows scaled to unit length (float64)."""
    n = graph.shape[0]
    d = 1.0 / np.sqrt(np.asarray(graph.sum(axis=1)).ravel())
    norm_adj = sp.diags(d) @ graph @ sp.diags(d)
    block = k + _EXTRA_VECTORS
    if n < max(_DENSE_BELOW, 5 * block):
        _, vectors = np.linalg.eigh(norm_adj.toarray())
    else:
        values, vectors = lobpcg(
            norm_adj, rng.normal(size=(n, block)), largest=True, tol=1e-5, maxiter=2000
        )
        vectors = vectors[:, np.argsort(values)]
    vectors = vectors[:, -k:]
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def spectral_partition(features, n_clusters, *, n_neighbors=10, random_state=None):
    """Normalised spectral clustering of the features' k-NN graph.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Samples (e.g. the features of a trained network).
    n_clusters : int
        Number of clusters, and of eigenvectors used.
    n_neighbors : int, default=10
        Neighbours per sample in the graph (see :func:`knn_graph`).
    random_state : int, RandomState instance or None, default=None
        Seeds the eigensolver's start vector and k-means.

    Returns
    -------
    labels : ndarray of shape (n_samples,)
        Cluster of each sample, in ``[0, n_clusters)``. The clusters follow
        the graph and need not be the same size.
    """
    features = check_array(features, dtype=np.float32)
    n = features.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(
            f"n_clusters={n_clusters} must be in [1, n_samples] = [1, {n}]."
        )
    rng = check_random_state(random_state)
    vectors = _leading_eigenvectors(_knn_graph(features, n_neighbors), n_clusters, rng)
    km = KMeans(n_clusters, n_init=10, random_state=rng.randint(np.iinfo(np.int32).max))
    return km.fit_predict(vectors)
