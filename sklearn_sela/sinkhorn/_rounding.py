"""Integer labels from a Sinkhorn plan: cluster sizes and balanced rounding.

:func:`balanced_sizes` turns proportions into integer sizes;
:func:`balanced_labels` rounds a plan to labels with exactly those sizes
(greedy: every sample proposes to its best open cluster, an over-full
cluster keeps the proposers that would lose most by moving);
:func:`balanced_labels_distributed` gives the same labels when the plan's
rows are sharded over a process group, exchanging ``O(K)`` counts and
thresholds per round instead of the rows.
"""

import math

import numpy as np
import torch
import torch.distributed as dist

from ..collectives import all_gather_rows, all_reduce
from ._kernel import StoredKernel

# Bit pattern of float64 +inf: non-negative doubles sort like their int64 bits.
_INF_BITS = 0x7FF0000000000000
# Balanced labels: below this many proposers to over-full clusters (over all
# ranks) their keys are all-gathered (~30 bytes each); above, thresholds are
# searched with all-reduces of (n_full_clusters, _SEARCH_WAYS - 1) counts.
_GATHER_LIMIT = 1 << 16
_SEARCH_WAYS = 16


def balanced_sizes(n_samples, cluster_proportions=None, n_clusters=None, demand=None):
    """Integer cluster sizes that sum to ``n_samples`` and follow proportions.

    Uses largest-remainder rounding, so with uniform proportions every
    cluster gets ``floor(N / K)`` or ``ceil(N / K)`` samples (paper,
    footnote 2).

    Parameters
    ----------
    n_samples : int
        Total number of samples N.
    cluster_proportions : array-like of shape (n_clusters,), default=None
        Target proportions summing to one; uniform when None.
    n_clusters : int, default=None
        Number of clusters, needed when ``cluster_proportions`` is None.
    demand : array-like of shape (n_clusters,), default=None
        Tie-breaker among clusters with the same fractional remainder: the
        clusters with the largest demand (e.g. argmax counts) get the extra
        samples first.

    Returns
    -------
    sizes : ndarray of shape (n_clusters,), dtype int64

    Examples
    --------
    >>> from sklearn_sela import balanced_sizes
    >>> balanced_sizes(10, n_clusters=4)
    array([3, 3, 2, 2])
    >>> balanced_sizes(10, n_clusters=4, demand=[0, 5, 0, 5])
    array([2, 3, 2, 3])
    """
    if cluster_proportions is None:
        if n_clusters is None or int(n_clusters) < 1:
            raise ValueError(
                "balanced_sizes needs cluster_proportions or n_clusters >= 1."
            )
        proportions = np.full(int(n_clusters), 1.0 / int(n_clusters))
    else:
        proportions = check_proportions(cluster_proportions, len(cluster_proportions))
    if int(n_samples) < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}.")
    ideal = proportions * int(n_samples)
    sizes = np.floor(ideal).astype(np.int64)
    remainder = int(n_samples - sizes.sum())
    if remainder > 0:
        frac = np.round(ideal - sizes, 9)
        tie = np.zeros_like(frac) if demand is None else np.asarray(demand, float)
        order = np.lexsort((-tie, -frac))
        sizes[order[:remainder]] += 1
    return sizes


def check_proportions(cluster_proportions, n_clusters):
    """Validated cluster proportions as a float64 array.

    Parameters
    ----------
    cluster_proportions : array-like of shape (n_clusters,) or None
        Fractions of the samples per cluster: finite, strictly positive,
        summing to one (within 1e-6). None stands for equal sizes.
    n_clusters : int
        Number of clusters.

    Returns
    -------
    proportions : ndarray of shape (n_clusters,)

    Raises
    ------
    ValueError
        Saying which of the conditions above fails.
    """
    if cluster_proportions is None:
        return np.full(n_clusters, 1.0 / n_clusters)
    p = np.asarray(cluster_proportions, dtype=np.float64)
    if p.ndim != 1 or p.shape[0] != n_clusters:
        raise ValueError(
            f"cluster_proportions must have one entry per cluster: expected "
            f"shape ({n_clusters},), got {p.shape}."
        )
    if not np.all(np.isfinite(p)):
        raise ValueError("cluster_proportions must be finite.")
    if np.any(p < 0):
        raise ValueError("cluster_proportions must be non-negative.")
    if np.any(p == 0):
        raise ValueError(
            "cluster_proportions must be strictly positive: a cluster with "
            "proportion 0 should be removed from the score matrix instead."
        )
    if abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"cluster_proportions must sum to 1, got {p.sum():.6g}."
        )
    return p


def _topk_labels(kernel, log_b, rows, open_mask, block=None):
    """Best open cluster and log-margin to the next one, for some rows.

    ``kernel`` is a :class:`Kernel` (or a kernel matrix, in which case
    ``block`` is needed); ``log_b`` the pending log column scaling.
    """
    if isinstance(kernel, torch.Tensor):
        kernel = StoredKernel(kernel, block)
    device = kernel.device
    block = kernel.block
    n_rows = rows.numel()
    labels = torch.empty(n_rows, dtype=torch.int64, device=device)
    margin = torch.empty(n_rows, dtype=torch.float64, device=device)
    closed = ~open_mask
    two = int(open_mask.sum()) > 1
    for start in range(0, n_rows, block):
        q = kernel.log_rows(rows[start : start + block], log_b)
        q[:, closed] = -math.inf
        if two:
            val, top = q.topk(2, dim=1)
            labels[start : start + block] = top[:, 0]
            margin[start : start + block] = (val[:, 0] - val[:, 1]).double()
        else:
            labels[start : start + block] = q.argmax(dim=1)
            margin[start : start + block] = 0.0
    return labels, margin


def balanced_labels(kernel, log_b, proportions):
    """Labels with exactly ``sizes[j]`` samples in cluster ``j``.

    Greedy rounding of the Sinkhorn plan: every unassigned sample proposes to
    its best cluster that still has room; a cluster with more proposals than
    room keeps those that would lose most by moving (largest log-margin to
    their next choice) and closes. Each round closes a cluster or places every
    proposer, so at most K rounds run, and after the first one only the few
    samples that argmax put into over-full clusters are touched (in blocks,
    so memory stays bounded). Sizes follow :func:`balanced_sizes`, the
    rounding remainder going to the clusters argmax fills most.
    """
    n, k = kernel.n, kernel.k
    device = kernel.device
    everyone = torch.arange(n, device=device)
    open_mask = torch.ones(k, dtype=torch.bool, device=device)
    proposal, margin = _topk_labels(kernel, log_b, everyone, open_mask)
    counts = torch.bincount(proposal, minlength=k)
    sizes = balanced_sizes(n, proportions, demand=counts.cpu().numpy())
    room = torch.as_tensor(sizes, device=device)
    labels = torch.full((n,), -1, dtype=torch.int64, device=device)
    pending = everyone
    while pending.numel():
        counts = torch.bincount(proposal, minlength=k)
        full = counts > room
        if not full.any():
            labels[pending] = proposal
            break
        accept = ~full[proposal]
        labels[pending[accept]] = proposal[accept]
        room -= torch.bincount(proposal[accept], minlength=k)
        # Over-full clusters keep their `room` proposers with largest margin.
        rest = pending[~accept]
        rest_prop = proposal[~accept]
        order = torch.argsort(margin[~accept], descending=True, stable=True)
        order = order[torch.argsort(rest_prop[order], stable=True)]
        rest, rest_prop = rest[order], rest_prop[order]
        first = torch.searchsorted(rest_prop, rest_prop, right=False)
        rank = torch.arange(rest.numel(), device=device) - first
        keep = rank < room[rest_prop]
        labels[rest[keep]] = rest_prop[keep]
        room -= torch.bincount(rest_prop[keep], minlength=k)
        open_mask &= room > 0
        pending = rest[~keep]
        if pending.numel():
            proposal, margin = _topk_labels(kernel, log_b, pending, open_mask)
    return labels


def argmax_labels(kernel, b):
    labels = torch.empty(kernel.n, dtype=torch.int64, device=kernel.device)
    for start, stop, blk in kernel.blocks():
        # max(dim).indices: the first maximum, like argmax, twice as fast.
        q = torch.mul(blk, b, out=kernel.out[: stop - start])
        labels[start:stop] = torch.max(q, dim=1).indices
    return labels

def _margin_bits(margin):
    """Order-preserving int64 keys of non-negative margins (NaN counts as 0)."""
    m = torch.nan_to_num(margin.double(), nan=0.0, posinf=math.inf)
    # clamp, then + 0.0 turns -0.0 into +0.0 so that zero has a single key.
    m = m.clamp(min=0.0) + 0.0
    return m.view(torch.int64)


def _lexsort_rows(keys):
    """Stable order of the rows of an int64 matrix, first column most significant."""
    order = torch.arange(keys.shape[0], device=keys.device)
    for col in range(keys.shape[1] - 1, -1, -1):
        order = order[torch.argsort(keys[order, col], stable=True)]
    return order


def _keep_largest(prop, bits, history, target, full, group, n_global):
    """Which proposers over-full clusters keep, exactly ``target[j]`` globally.

    Each over-full cluster ``j`` keeps its ``target[j]`` proposers with the
    largest margin over all ranks, ties broken as the single-process greedy
    breaks them: by ``history`` (one int64 row per proposer, most significant
    first, ending with the global sample index).

    * Few proposers in all (``n_global <= _GATHER_LIMIT``, the usual case
      after the first round): their ``(cluster, margin, history)`` rows are
      all-gathered and every rank ranks them the same way; one exchange.
    * Many proposers: each over-full cluster's margin threshold (its
      ``target[j]``-th largest margin) is found by a ``_SEARCH_WAYS``-ary
      search on the margins' bit patterns, all clusters at once, with one
      all-reduce of ``(n_full, _SEARCH_WAYS - 1)`` counts per step (16 steps
      for 63 bits). Only the proposers exactly at a threshold are then
      all-gathered to settle ties.
    """
    k = target.numel()
    dev = bits.device
    if n_global <= _GATHER_LIMIT:
        keys = torch.cat([prop[:, None], -bits[:, None], history], dim=1)
        rows = all_gather_rows(keys, group)
        return torch.isin(history[:, -1], _ranked_ids(rows, target))
    act = torch.nonzero(full & (target > 0)).flatten()
    n_act = act.numel()
    pos = torch.full((k,), -1, dtype=torch.int64, device=dev)
    pos[act] = torch.arange(n_act, device=dev)
    mine = pos[prop] >= 0
    p_act, b_act = pos[prop[mine]], bits[mine]
    tgt = target[act]
    ways = _SEARCH_WAYS
    j = torch.arange(1, ways, device=dev)
    slot = p_act[:, None] * (ways - 1) + (j - 1)
    lo = torch.zeros(n_act, dtype=torch.int64, device=dev)
    hi = torch.full((n_act,), _INF_BITS, dtype=torch.int64, device=dev)
    # Largest t with count(bits >= t) >= target; count(bits >= 0) > target.
    while bool((lo < hi).any()):
        span = hi - lo
        step = torch.clamp(span // ways + (span % ways > 0).long(), min=1)
        thr = torch.minimum(lo[:, None] + step[:, None] * j, hi[:, None])
        ge = b_act[:, None] >= thr[p_act]
        cnt = torch.bincount(slot[ge], minlength=n_act * (ways - 1))
        cnt = all_reduce(cnt, group).view(n_act, ways - 1)
        n_ok = (cnt >= tgt[:, None]).sum(1)
        new_lo = torch.where(
            n_ok > 0, thr.gather(1, (n_ok - 1).clamp(min=0)[:, None])[:, 0], lo
        )
        new_hi = torch.where(
            n_ok < ways - 1, thr.gather(1, n_ok.clamp(max=ways - 2)[:, None])[:, 0] - 1, hi
        )
        moving = lo < hi
        lo = torch.where(moving, new_lo, lo)
        hi = torch.where(moving, new_hi, hi)
    # Clusters that keep nobody get a threshold above every key.
    thr = torch.full((k,), _INF_BITS + 1, dtype=torch.int64, device=dev)
    thr[act] = lo
    t = thr[prop]
    keep = bits > t
    tie = torch.nonzero(bits == t).flatten()
    n_above = torch.bincount(prop[keep], minlength=k)
    both = all_reduce(torch.cat([n_above, n_above.new_tensor([tie.numel()])]), group)
    if int(both[-1]) == 0:
        return keep
    quota_target = target - both[:-1]
    keys = torch.cat([prop[tie, None], history[tie]], dim=1)
    rows = all_gather_rows(keys, group)
    keep[tie[torch.isin(history[tie, -1], _ranked_ids(rows, quota_target))]] = True
    return keep


def _ranked_ids(rows, quota):
    """Global ids (last column) of the first ``quota[c]`` rows of each cluster.

    ``rows`` are int64 keys, cluster in the first column, sorted
    lexicographically; the same on every rank, so every rank agrees.
    """
    rows = rows[_lexsort_rows(rows)]
    cluster = rows[:, 0].contiguous()
    first = torch.searchsorted(cluster, cluster, right=False)
    within = torch.arange(rows.shape[0], device=rows.device) - first
    return rows[within < quota[cluster], -1]


def balanced_labels_distributed(kernel, log_b, proportions, block, group):
    """Exact-size labels from a row-sharded transport plan.

    The distributed counterpart of :func:`balanced_labels` (called by
    :func:`~sklearn_sela.sinkhorn.sinkhorn_knopp` for ``assign="balanced"``
    with a ``process_group``): every unassigned sample proposes to its best
    open cluster, per-cluster proposal counts are all-reduced, and each
    over-full cluster keeps exactly its remaining room, the proposers with the
    largest log-margin to their next choice, chosen across ranks by
    :func:`_keep_largest`; it then closes and the rest propose again. The
    global cluster sizes are exactly those of
    :func:`~sklearn_sela.sinkhorn.balanced_sizes` (rounding remainder to the
    clusters argmax fills most, counted globally) and the labels are those of
    the single-process greedy on the concatenated rows: ties in margin are
    broken in the same order, using each pending sample's history (its
    proposal and margin in every earlier round, then its global index).

    Parameters
    ----------
    kernel : Tensor of shape (n_local, n_clusters) or sinkhorn kernel
        This rank's rows of the working kernel: a matrix, or the solver's
        kernel object (``_kernel.Kernel``).
    log_b : Tensor of shape (n_clusters,)
        Pending log column scaling, float64 (identical on every rank).
    proportions : ndarray of shape (n_clusters,)
        Target cluster proportions.
    block : int
        Rows per block, used when ``kernel`` is a matrix.
    group : ProcessGroup
        The group the rows are sharded over.

    Returns
    -------
    labels : Tensor of shape (n_local,), int64
    """
    n, k = kernel.shape
    device = kernel.device
    shard_sizes = all_gather_rows(torch.tensor([n], device=device), group)
    offset = int(shard_sizes[: dist.get_rank(group)].sum())
    everyone = torch.arange(n, device=device)
    open_mask = torch.ones(k, dtype=torch.bool, device=device)
    proposal, margin = _topk_labels(kernel, log_b, everyone, open_mask, block)
    demand = all_reduce(torch.bincount(proposal, minlength=k), group)
    sizes = balanced_sizes(int(shard_sizes.sum()), proportions, demand=demand.cpu().numpy())
    room = torch.as_tensor(sizes, dtype=torch.int64).to(device)
    labels = torch.full((n,), -1, dtype=torch.int64, device=device)
    pending = everyone
    # Tie-break keys of the pending samples, most significant column first.
    history = (pending + offset)[:, None]
    counts = demand
    while True:
        if int(counts.sum()) == 0:
            break
        full = counts > room
        if not bool(full.any()):
            labels[pending] = proposal
            break
        accept = ~full[proposal]
        labels[pending[accept]] = proposal[accept]
        room = torch.where(full, room, room - counts)
        rest, rest_prop, rest_hist = pending[~accept], proposal[~accept], history[~accept]
        bits = _margin_bits(margin[~accept])
        n_rest = int(counts[full].sum())
        keep = _keep_largest(rest_prop, bits, rest_hist, room, full, group, n_rest)
        labels[rest[keep]] = rest_prop[keep]
        # Every over-full cluster is now exactly full.
        room = torch.where(full, torch.zeros_like(room), room)
        open_mask &= room > 0
        out = ~keep
        pending = rest[out]
        # The single-process greedy orders the rejected by (cluster, -margin,
        # previous order): that is their tie-break key from now on.
        history = torch.cat(
            [rest_prop[out, None], -bits[out, None], rest_hist[out]], dim=1
        )
        proposal, margin = _topk_labels(kernel, log_b, pending, open_mask, block)
        counts = all_reduce(torch.bincount(proposal, minlength=k), group)
    return labels


