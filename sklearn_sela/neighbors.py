"""Cosine nearest neighbours and averages over them.

:func:`cosine_neighbors` is the one k-nearest-neighbour search of the
package: behind the spectral partition (:mod:`sklearn_sela.spectral`), the
neighbour-averaged self-labelling step
(``SelfLabelClusterer(label_neighbors=k)``), its label transfer and choice
of head, :class:`~sklearn_sela.BalancedGraphClustering` and
:func:`~sklearn_sela.metrics.weighted_knn_accuracy`. The exact search is a
blocked matrix product on the features' device whose ``(rows, N)``
similarity block is capped, so memory stays bounded whatever ``N`` is; large
CPU problems go to an approximate faiss index instead, whose cost grows
about as ``N**1.5`` rather than ``N**2``.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import math
import queue
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
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
# The approximate search (CPU): used from this many samples; min(n / 64,
# 2 sqrt(n)) cells, large enough for efficient products, their centroids
# from 10 spherical k-means iterations on 40 points per cell; the number of
# cells probed doubles from 2 until a sample of 1024 queries finds 95% of
# its exact neighbours.
_APPROX_MIN_SAMPLES = 1 << 15
_POINTS_PER_CELL = 64
_CELLS_PER_ROOT = 2
_KMEANS_ITERATIONS = 10
_TRAIN_PER_CELL = 40
_MIN_PROBES = 2
_CALIBRATION_QUERIES = 1024
_TARGET_RECALL = 0.95


@torch.no_grad()
def cosine_neighbors(
    features,
    n_neighbors,
    *,
    queries=None,
    rows=None,
    exclude_self=False,
    return_similarity=False,
    method="auto",
):
    """Indices of each sample's most similar samples by cosine similarity.

    The one neighbour search of the package: the label step, the spectral
    graph, :class:`~sklearn_sela.BalancedGraphClustering` and the kNN metric
    all call it. Small problems and CUDA tensors get the exact search, a
    blocked matrix product in ``O(n_queries * n_samples * n_features)``. On
    CPU, from ``2**15`` samples on, the samples are cut into about
    ``2 sqrt(n_samples)`` cells by the k-means of
    `faiss <https://github.com/facebookresearch/faiss>`_ and each query is
    compared with the samples of the few cells nearest to it only: as many
    cells as a sample of the queries needs to find 95% of its exact
    neighbours. On clustered features that costs about
    ``O(n_samples**1.5 * n_features)``; where no few cells suffice, the
    exact search runs. Timings and recall: :ref:`benchmarks-scaling`.

    Parameters
    ----------
    features : Tensor of shape (n_samples, n_features)
        Samples searched; they need not be normalised. All-zero rows have
        cosine 0 with everything.
    n_neighbors : int
        Neighbours returned per query.
    queries : Tensor of shape (n_queries, n_features), default=None
        Search the neighbours of these points among ``features``. None
        means the samples themselves (or ``rows`` of them).
    rows : tuple of int (lo, hi), default=None
        With ``queries=None``, search the neighbours of samples ``lo:hi``
        only (among all samples), e.g. one rank's shard. None means all.
    exclude_self : bool, default=False
        With ``queries=None``, whether a sample may not be its own
        neighbour. When it may, it is its own nearest one (cosine 1) unless
        it has exact duplicates.
    return_similarity : bool, default=False
        Also return the cosine similarities of the neighbours found.
    method : {"auto", "exact", "approximate"}, default="auto"
        "auto" picks the approximate search on CPU from ``2**15`` samples
        on and the exact one otherwise.

    Returns
    -------
    neighbors : LongTensor of shape (n_queries, n_neighbors)
        Row ``i`` holds the indices, into ``features``, of query ``i``'s
        neighbours, most similar first; on ``features``' device.
    similarity : Tensor of shape (n_queries, n_neighbors)
        Their cosine similarities; only with ``return_similarity=True``.
    """
    n = features.shape[0]
    if queries is not None and (rows is not None or exclude_self):
        raise ValueError("rows and exclude_self apply only with queries=None.")
    if method not in ("auto", "exact", "approximate"):
        raise ValueError(
            f"method must be 'auto', 'exact' or 'approximate', got {method!r}."
        )
    most = n - 1 if exclude_self else n
    if not 1 <= n_neighbors <= most:
        raise ValueError(
            f"n_neighbors={n_neighbors} must be in [1, {most}] for {n} samples"
            + (", the sample itself excluded." if exclude_self else ".")
        )
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    x = torch.nn.functional.normalize(features.to(dtype), dim=1)
    if queries is None:
        lo, hi = (0, n) if rows is None else rows
        q = x[lo:hi]
    else:
        lo = None
        q = torch.nn.functional.normalize(queries.to(device=x.device, dtype=dtype), dim=1)
    approximate = method == "approximate" or (
        method == "auto" and x.device.type == "cpu" and n >= _APPROX_MIN_SAMPLES
    )
    search = _approximate_search if approximate and x.device.type == "cpu" else _exact_search
    # One more neighbour when the query itself is to be dropped.
    sim, idx = search(x, q, n_neighbors + bool(exclude_self))
    if exclude_self:
        sim, idx = _drop_self(sim, idx, lo, n_neighbors)
    return (idx, sim) if return_similarity else idx


def _exact_search(x, q, k):
    step = max(1, _BLOCK_ENTRIES // x.shape[0])
    sims = torch.empty((q.shape[0], k), dtype=x.dtype, device=x.device)
    idx = torch.empty((q.shape[0], k), dtype=torch.int64, device=x.device)
    for start in range(0, q.shape[0], step):
        found = (q[start:start + step] @ x.T).topk(k, dim=1)
        sims[start:start + step], idx[start:start + step] = found.values, found.indices
    return sims, idx


def _drop_self(sim, idx, lo, k):
    """Remove each query's own index (or, where the search did not return
    it, its least similar neighbour), keeping ``k`` per row."""
    own = torch.arange(lo, lo + idx.shape[0], device=idx.device)[:, None]
    drop = idx == own
    # Keep exactly one dropped entry per row: the first match, else the last.
    first = drop.int().cumsum(dim=1) == 1
    drop &= first
    drop[:, -1] |= ~drop.any(dim=1)
    keep = ~drop
    return sim[keep].reshape(-1, k), idx[keep].reshape(-1, k)


def _approximate_search(x, q, k):
    """Cosine search among ``x`` (unit rows) in the cells around each query.

    faiss' k-means cuts the samples into ``n_cells`` cells; each query is
    compared with the samples of its ``n_probes`` nearest cells only. The
    comparisons are grouped by cell, one matrix product of the cell's
    samples with all the queries that probe it, so the work runs at the
    speed of a blocked product rather than one dot product at a time.
    """
    import faiss  # on first use: most fits never need it

    n, d = x.shape
    n_cells = int(min(n // _POINTS_PER_CELL, _CELLS_PER_ROOT * math.sqrt(n)))
    data = np.ascontiguousarray(x.float().numpy())
    n_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())
    try:
        kmeans = faiss.Kmeans(
            d, n_cells, niter=_KMEANS_ITERATIONS, spherical=True, seed=0,
            max_points_per_centroid=_TRAIN_PER_CELL,
        )
        sample = np.random.default_rng(0).choice(n, min(n, _TRAIN_PER_CELL * n_cells), replace=False)
        kmeans.train(data[np.sort(sample)])
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(kmeans.centroids)
        members = torch.from_numpy(quantizer.search(data, 1)[1][:, 0])
        probes = _calibrated_probes(quantizer, members, x, q, k)
        if not probes:  # no structure that a few cells capture
            return _exact_search(x, q, k)
        cells = torch.from_numpy(
            quantizer.search(np.ascontiguousarray(q.float().numpy()), probes)[1]
        )
    finally:
        faiss.omp_set_num_threads(n_threads)
    sim, idx = _scan_cells(x, members, q, cells, k)
    # Cells too small to hold k candidates leave -1: search those exactly.
    short = (idx < 0).any(dim=1).nonzero().flatten()
    if len(short):
        sim[short], idx[short] = _exact_search(x, q[short], k)
    return sim, idx


def _scan_cells(x, members, q, cells, k):
    """The ``k`` most similar samples to each query among the members of
    its cells (``cells[i]``: query ``i``'s cell ids; ``members[j]``: sample
    ``j``'s cell); -1 where fewer than ``k`` were seen.

    Each cell's samples meet all the queries that probe it in one matrix
    product, and each (query, probe) pair's best ``k`` go to a slot of their
    own, so the cells can be scanned in any order without locks. Cells are
    taken in turn by as many Python threads as torch has, each running
    single-threaded products: those of one cell are too small to be worth
    splitting, and a thread held up by another process then delays only the
    cells it took. The slots are merged once per pass over the cells, with
    as many probes per pass as the ``_BLOCK_ENTRIES`` budget allows.
    """
    m, n_probes = cells.shape
    n_cells = int(members.max()) + 1
    by_cell = torch.argsort(members, stable=True)
    cell_bounds = torch.searchsorted(members[by_cell], torch.arange(n_cells + 1)).tolist()
    best_sim = torch.full((m, k), -math.inf, dtype=x.dtype)
    best_idx = torch.full((m, k), -1)
    per_pass = max(1, min(n_probes, _BLOCK_ENTRIES // (m * k)))
    n_threads = torch.get_num_threads()
    for p0 in range(0, n_probes, per_pass):
        probes = cells[:, p0:p0 + per_pass]
        g = probes.shape[1]
        sims = torch.full((m, g, k), -math.inf, dtype=x.dtype)
        idxs = torch.full((m, g, k), -1)
        pairs = probes.reshape(-1)
        order = torch.argsort(pairs, stable=True)
        pair_bounds = torch.searchsorted(pairs[order], torch.arange(n_cells + 1)).tolist()
        query_of, slot_of = order // g, order % g
        todo = queue.SimpleQueue()
        for c in range(n_cells):
            if cell_bounds[c] < cell_bounds[c + 1] and pair_bounds[c] < pair_bounds[c + 1]:
                todo.put(c)

        def work():
            while True:
                try:
                    c = todo.get_nowait()
                except queue.Empty:
                    return
                ids = by_cell[cell_bounds[c]:cell_bounds[c + 1]]
                block = x[ids].T
                top = min(k, len(ids))
                step = max(1, _BLOCK_ENTRIES // len(ids))
                for lo in range(pair_bounds[c], pair_bounds[c + 1], step):
                    hi = min(lo + step, pair_bounds[c + 1])
                    rows, slots = query_of[lo:hi], slot_of[lo:hi]
                    found = (q[rows] @ block).topk(top, dim=1)
                    sims[rows, slots, :top] = found.values
                    idxs[rows, slots, :top] = ids[found.indices]

        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(n_threads) as pool:
                for future in [pool.submit(work) for _ in range(n_threads)]:
                    future.result()
        finally:
            torch.set_num_threads(n_threads)
        merged_sim = torch.cat([best_sim, sims.view(m, g * k)], dim=1)
        merged_idx = torch.cat([best_idx, idxs.view(m, g * k)], dim=1)
        best_sim, order = merged_sim.topk(k, dim=1)
        best_idx = merged_idx.gather(1, order)
    return best_sim, best_idx


def _calibrated_probes(quantizer, members, x, q, k):
    """The fewest cells to probe (doubling from ``_MIN_PROBES``) with which
    a sample of the queries finds at least ``_TARGET_RECALL`` of its exact
    neighbours; 0 when even a quarter of the cells does not, where the
    exact search costs less."""
    m = min(len(q), _CALIBRATION_QUERIES)
    pick = torch.from_numpy(np.sort(np.random.default_rng(1).choice(len(q), m, replace=False)))
    sample = q[pick]
    exact = _exact_search(x, sample, k)[1]
    most = quantizer.ntotal // 4
    cells = torch.from_numpy(quantizer.search(np.ascontiguousarray(sample.float().numpy()), most)[1])
    probes = _MIN_PROBES
    while probes <= most:
        found = _scan_cells(x, members, sample, cells[:, :probes], k)[1]
        if _recall(found, exact) >= _TARGET_RECALL:
            return probes
        probes *= 2
    return 0


def _recall(found, exact):
    # Share of the exact neighbours (per row, any order) that were found.
    return (found[:, :, None] == exact[:, None, :]).any(dim=1).float().mean().item()


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
    device = probas.device
    step = max(1, _BLOCK_ENTRIES // probas.shape[1])
    weights = torch.full((min(step, len(neighbors)) * k,), 1.0 / k, dtype=probas.dtype,
                         device=device)
    for start in range(0, len(neighbors), step):
        # A block of rows as a sparse averaging matrix: a sparse product
        # reads each neighbour's row once where gathering them copies it.
        idx = neighbors[start:start + step].to(device).sort(dim=1).values
        rows = len(idx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
            average = torch.sparse_csr_tensor(
                torch.arange(0, rows * k + 1, k, device=device), idx.reshape(-1),
                weights[:rows * k], (rows, len(probas)), check_invariants=False,
            )
        mean = average @ probas
        # A class no neighbour gives any mass keeps a finite log.
        mean.clamp_min_(torch.finfo(mean.dtype).tiny)
        out[start:start + rows] = mean.log_().to(out.device)
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
