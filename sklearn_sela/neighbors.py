"""Cosine nearest neighbours and averages over them, in blocked products.

Pure torch on tensors: the k-nearest-neighbour search behind the spectral
partition (:mod:`sklearn_sela.spectral`), behind the neighbour-averaged
self-labelling step (``SelfLabelClusterer(label_neighbors=k)``), its label
transfer and choice of head, and :class:`~sklearn_sela.BalancedGraphClustering`. The
``(rows, N)`` similarity block of one matrix product is capped, so the
memory stays bounded whatever ``N`` is; the products run on the features'
device.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import torch

__all__ = [
    "cosine_neighbors",
    "average_over_neighbors",
    "smooth_over_neighbors",
    "symmetric_adjacency",
    "neighbor_agreement",
]

# Entries of one similarity or gathered block: 2**25 float32, 128 MB.
_BLOCK_ENTRIES = 1 << 25


@torch.no_grad()
def cosine_neighbors(features, n_neighbors, *, rows=None, exclude_self=False):
    """Indices of each sample's most similar samples by cosine similarity.

    Parameters
    ----------
    features : Tensor of shape (n_samples, n_features)
        Samples; they need not be normalised. All-zero rows have cosine 0
        with everything.
    n_neighbors : int
        Neighbours returned per sample.
    rows : tuple of int (lo, hi), default=None
        Search the neighbours of samples ``lo:hi`` only (among all samples),
        e.g. one rank's shard. None means all samples.
    exclude_self : bool, default=False
        Whether a sample may not be its own neighbour. When it may, it is
        its own nearest one (cosine 1) unless it has exact duplicates.

    Returns
    -------
    neighbors : LongTensor of shape (hi - lo, n_neighbors)
        Row ``i`` holds the indices, into ``features``, of sample
        ``lo + i``'s neighbours, most similar first; on ``features``' device.
    """
    n = features.shape[0]
    most = n - 1 if exclude_self else n
    if not 1 <= n_neighbors <= most:
        raise ValueError(
            f"n_neighbors={n_neighbors} must be in [1, {most}] for {n} samples"
            + (", the sample itself excluded." if exclude_self else ".")
        )
    lo, hi = (0, n) if rows is None else rows
    x = torch.nn.functional.normalize(features.float(), dim=1)
    step = max(1, _BLOCK_ENTRIES // n)
    out = torch.empty((hi - lo, n_neighbors), dtype=torch.int64, device=x.device)
    for start in range(lo, hi, step):
        stop = min(start + step, hi)
        sim = x[start:stop] @ x.T
        if exclude_self:
            i = torch.arange(stop - start, device=x.device)
            sim[i, i + start] = -2.0  # below any cosine
        out[start - lo:stop - lo] = sim.topk(n_neighbors, dim=1).indices
    return out


@torch.no_grad()
def average_over_neighbors(probas, neighbors, out):
    """Log of each sample's probabilities averaged over its neighbours.

    Parameters
    ----------
    probas : Tensor of shape (n_samples, n_classes)
        Probabilities of all samples (the rows ``neighbors`` points into).
    neighbors : LongTensor of shape (n_rows, k)
        For each output row, the ``k`` samples to average.
    out : Tensor of shape (n_rows, n_classes)
        Written with ``log(mean_j probas[neighbors[i, j]])``. It must not
        share memory with ``probas``: rows are read after others are written.

    Returns
    -------
    out : Tensor
    """
    k = neighbors.shape[1]
    step = max(1, _BLOCK_ENTRIES // (k * probas.shape[1]))
    for start in range(0, len(neighbors), step):
        idx = neighbors[start:start + step].to(probas.device)
        mean = probas[idx].mean(dim=1)
        # A class no neighbour gives any mass keeps a finite log.
        mean.clamp_min_(torch.finfo(mean.dtype).tiny)
        out[start:start + step] = mean.log_().to(out.device)
    return out


def symmetric_adjacency(neighbors):
    """The symmetrised adjacency matrix of a k-nearest-neighbour graph.

    Parameters
    ----------
    neighbors : LongTensor of shape (n_samples, n_neighbors)
        Each sample's neighbours (e.g. from :func:`cosine_neighbors`).

    Returns
    -------
    adjacency : sparse Tensor of shape (n_samples, n_samples)
        ``(B + B.T) / 2`` for the 0/1 adjacency ``B`` of ``neighbors``,
        coalesced: 1 where the relation is mutual, 1/2 where it is
        one-sided.
    """
    n, k = neighbors.shape
    rows = torch.arange(n, device=neighbors.device).repeat_interleave(k)
    cols = neighbors.reshape(-1)
    index = torch.cat([torch.stack([rows, cols]), torch.stack([cols, rows])], dim=1)
    weight = torch.full((2 * n * k,), 0.5, device=neighbors.device)
    # coalesce() sums the two halves of a mutual pair into weight 1.
    return torch.sparse_coo_tensor(index, weight, (n, n), check_invariants=True).coalesce()


@torch.no_grad()
def smooth_over_neighbors(features, neighbors, n_steps):
    """Features averaged over the neighbourhood graph, ``n_steps`` times.

    Each step replaces every sample's features by the weighted mean of its
    own and those of the samples it is linked to in the symmetrised graph
    ``I + (B + B.T) / 2``, with ``B`` the 0/1 adjacency of ``neighbors``:
    weight 1 for itself and for a mutual neighbour, 1/2 where the relation
    is one-sided. A low-pass filter on the graph: what neighbours share is
    kept, what sets a sample apart from its neighbourhood fades.

    Parameters
    ----------
    features : Tensor of shape (n_samples, n_features)
        Samples.
    neighbors : LongTensor of shape (n_samples, k)
        Row ``i`` holds the indices of sample ``i``'s neighbours, itself
        excluded (e.g. :func:`cosine_neighbors` with ``exclude_self=True``).
    n_steps : int
        Number of averaging steps; 0 returns ``features`` unchanged.

    Returns
    -------
    smoothed : Tensor of shape (n_samples, n_features)
        float32, on ``features``' device; a new tensor unless ``n_steps``
        is 0.
    """
    if n_steps == 0:
        return features
    n = neighbors.shape[0]
    device = features.device
    diag = torch.arange(n, device=device)
    eye = torch.sparse_coo_tensor(
        torch.stack([diag, diag]), torch.ones(n, device=device), (n, n), check_invariants=False
    )
    adj = (symmetric_adjacency(neighbors.to(device)) + eye).coalesce()
    index, weight = adj.indices(), adj.values()
    degree = torch.zeros(n, device=device).index_add_(0, index[0], weight)
    adj = torch.sparse_coo_tensor(
        index, weight / degree[index[0]], (n, n), is_coalesced=True, check_invariants=False
    )
    x = features.float()
    for _ in range(n_steps):
        x = torch.sparse.mm(adj, x)
    return x


@torch.no_grad()
def neighbor_agreement(labels, neighbors):
    """Fraction of (sample, neighbour) pairs whose two samples share a label.

    A partition that follows the neighbourhood graph cuts few of its edges;
    among balanced partitions of the same features, the one with the highest
    agreement is the one that splits the fewest neighbourhoods.

    Parameters
    ----------
    labels : LongTensor of shape (n_samples,)
        Cluster of each sample.
    neighbors : LongTensor of shape (n_samples, k)
        Row ``i`` holds the indices of sample ``i``'s neighbours (from
        :func:`cosine_neighbors`, usually with ``exclude_self=True``: a
        sample always agrees with itself).

    Returns
    -------
    agreement : float
        In [0, 1].
    """
    labels = labels.to(neighbors.device)
    return (labels[neighbors] == labels[:, None]).float().mean().item()
