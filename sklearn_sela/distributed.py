"""Multi-process SeLa: sharded Sinkhorn-Knopp and data-parallel training.

Everything here is driven by :mod:`torch.distributed` and switched on
automatically when a default process group with more than one rank exists
(``torchrun``, ``accelerate launch``, or ``init_process_group`` by hand), so a
script written for one process runs unchanged on several.

Layout of the work
------------------
* **Samples are sharded by contiguous index ranges** (:func:`shard_bounds`):
  rank ``r`` owns samples ``[r * N // P, (r + 1) * N // P)``. Every rank can
  compute every shard's bounds, so nothing about the partition is exchanged.
* **Self-labelling pass**: each rank writes the log-probabilities of its own
  shard into a local ``(N_r, K)`` buffer and calls
  :func:`~sklearn_sela.sinkhorn.sinkhorn_knopp` with ``process_group``; per
  iteration only the ``K`` column sums are all-reduced. The ``N x K`` matrix
  is never gathered; only the ``N`` int64 labels are (:func:`all_gather_rows`),
  so that every rank holds the labels of all samples in the original order.
* **Balanced labels** (:func:`balanced_labels_distributed`) reproduce the
  single-process greedy rounding with exact global cluster sizes, exchanging
  per-cluster counts and per-cluster margin thresholds (``O(K)`` per step).
* **Training**: :class:`ShardedRandomSampler` gives each rank its share of a
  shuffled epoch, the module is wrapped in
  :class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged
  across ranks) and unwrapped again at the end of ``fit``, and only rank 0
  prints or writes checkpoints (:class:`DistributedFit`).
"""

import atexit
import math
import multiprocessing
import os
import time

import torch
import torch.distributed as dist
from skorch.callbacks import Callback
from torch.utils.data import Sampler

from .neighbors import average_over_neighbors

__all__ = [
    "get_process_group",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "shard_bounds",
    "all_gather_rows",
    "balanced_labels_distributed",
    "ShardedRandomSampler",
    "ShardEpoch",
    "DistributedFit",
    "unwrap_module",
    "broadcast_buffers",
    "update_labels_distributed",
]

# Bit pattern of float64 +inf: non-negative doubles sort like their int64 bits.
_INF_BITS = 0x7FF0000000000000
# Balanced labels: below this many proposers to over-full clusters (over all
# ranks) their keys are all-gathered (~30 bytes each); above, thresholds are
# searched with all-reduces of (n_full_clusters, _SEARCH_WAYS - 1) counts.
_GATHER_LIMIT = 1 << 16
_SEARCH_WAYS = 16
# Set by init_from_environment to the pid of the process that joined the group.
_OWNER_VAR = "SKLEARN_SELA_DIST_PID"


# -- process group -----------------------------------------------------------
def get_process_group():
    """The default process group if several processes are running, else None.

    Returns ``torch.distributed.group.WORLD`` when :mod:`torch.distributed` is
    initialised with a world size above one; the estimators then switch to
    distributed mode by themselves.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_world_size() < 2:
        return None
    return dist.group.WORLD


def init_from_environment(device=None):
    """Initialise the default process group from a launcher's environment.

    Does nothing unless ``torch.distributed`` is not initialised yet and the
    variables set by ``torchrun`` (``WORLD_SIZE`` > 1, ``RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``) are present, in the launched process
    itself (not in its multiprocessing or joblib workers, nor in processes
    it starts, which inherit the variables). The backend is
    ``"cpu:gloo,cuda:nccl"`` when ``device`` is a CUDA device (NCCL for the
    GPU tensors, gloo for any CPU ones), else ``"gloo"``. The group is
    destroyed at interpreter exit.

    Returns
    -------
    initialised : bool
        Whether a group was created.
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) < 2 or not all(
        v in env for v in ("RANK", "MASTER_ADDR", "MASTER_PORT")
    ):
        return False
    # Processes started from a launched one (joblib/loky workers of a grid
    # search, subprocesses) inherit its variables but are not ranks.
    owner = env.get(_OWNER_VAR)
    if multiprocessing.current_process().name != "MainProcess" or (
        owner is not None and owner != str(os.getpid())
    ):
        return False
    cuda = device is not None and str(device).startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(_local_gpu(int(env["RANK"])))
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    env[_OWNER_VAR] = str(os.getpid())
    atexit.register(_destroy_group)
    return True


def _local_gpu(rank):
    """This process's GPU index: ``LOCAL_RANK``, else ``rank`` modulo the GPUs."""
    count = torch.cuda.device_count()
    local = int(os.environ.get("LOCAL_RANK", rank % max(count, 1)))
    if local >= count:
        # NCCL needs a GPU per process; torch's own error ("invalid device
        # ordinal") does not say that the launch started too many processes.
        raise RuntimeError(
            f"This process (LOCAL_RANK={local}) has no GPU of its own: {count} CUDA "
            f"device(s) are visible. Launch at most one process per GPU "
            f"(torchrun --nproc_per_node={max(count, 1)}), or pass device='cpu' to "
            f"train on the CPU (gloo)."
        )
    return local


def _destroy_group():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank(group=None):
    """Rank in ``group`` (the default group), 0 when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank(group)


def get_world_size(group=None):
    """Number of processes in ``group`` (the default group), 1 when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def is_main_process():
    """True on rank 0, and in any non-distributed process.

    Use it to guard side effects (files, printing) in your own callbacks.
    """
    return get_rank() == 0


def collective_device(group=None):
    """Device that collectives of ``group`` operate on: CUDA for NCCL, else CPU."""
    backend = dist.get_backend(group)
    if "nccl" in str(backend).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(x, group):
    dist.all_reduce(x, group=group)
    return x


def shard_bounds(n_samples, world_size, rank):
    """Contiguous index range ``[lo, hi)`` of the samples owned by ``rank``.

    Shards differ in size by at most one sample and, concatenated in rank
    order, give ``range(n_samples)``.
    """
    lo = (n_samples * rank) // world_size
    hi = (n_samples * (rank + 1)) // world_size
    return lo, hi


def all_gather_rows(local, group):
    """Concatenate every rank's ``local`` tensor along dim 0, in rank order.

    Shards may have different lengths (they are padded for the exchange). The
    result is on ``local``'s device; it has to go through the collective
    device of the group (CUDA for NCCL).
    """
    world = dist.get_world_size(group)
    dev = collective_device(group)
    x = local.to(dev)
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s.item()) for s in sizes]
    width = max(sizes)
    pad = torch.zeros((width,) + tuple(x.shape[1:]), dtype=x.dtype, device=dev)
    pad[: x.shape[0]] = x
    parts = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(parts, pad, group=group)
    out = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    return out.to(local.device)


# -- balanced labels with a process group ------------------------------------
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
        cnt = _all_reduce(cnt, group).view(n_act, ways - 1)
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
    both = _all_reduce(torch.cat([n_above, n_above.new_tensor([tie.numel()])]), group)
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

    The distributed counterpart of ``sinkhorn._balanced_labels`` (called by
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
        kernel object (anything ``sinkhorn._topk_labels`` reads).
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
    from .sinkhorn import _topk_labels, balanced_sizes

    n, k = kernel.shape
    device = kernel.device
    shard_sizes = all_gather_rows(torch.tensor([n], device=device), group)
    offset = int(shard_sizes[: dist.get_rank(group)].sum())
    everyone = torch.arange(n, device=device)
    open_mask = torch.ones(k, dtype=torch.bool, device=device)
    proposal, margin = _topk_labels(kernel, log_b, everyone, open_mask, block)
    demand = _all_reduce(torch.bincount(proposal, minlength=k), group)
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
        counts = _all_reduce(torch.bincount(proposal, minlength=k), group)
    return labels


# -- training ----------------------------------------------------------------
def unwrap_module(module):
    """The module inside a DistributedDataParallel wrapper (or ``module``)."""
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return module.module
    return module


def broadcast_buffers(module, group):
    """Give every rank rank 0's buffers (batch-norm running statistics).

    DDP keeps parameters identical; buffers updated by a rank's last training
    forward are not, so they are synchronised before a labelling pass, the
    label transfer and at the end of training.

    Parameters
    ----------
    module : torch.nn.Module
        The unwrapped module (see :func:`unwrap_module`).
    group : ProcessGroup
        The ranks to synchronise.
    """
    bufs = [b for b in module.buffers() if b.numel()]
    if not bufs:
        return
    dev = collective_device(group)
    for buf in bufs:
        x = buf.data.to(dev)
        dist.broadcast(x, src=0, group=group)
        if x is not buf.data:
            buf.data.copy_(x)


class ShardedRandomSampler(Sampler):
    """Each rank's share of a shuffled epoch over ``n_samples`` indices.

    Like :class:`torch.utils.data.distributed.DistributedSampler`: every rank
    draws the same permutation (seeded by ``seed`` and the epoch), pads it to
    a multiple of the world size by repeating its first indices, and takes
    every ``P``-th index from its rank. The world size is read when iterating,
    so outside a distributed run (e.g. a later ``partial_fit`` on the fitted
    net) it is a plain random sampler over all samples.

    Parameters
    ----------
    n_samples : int
        Dataset length.
    seed : int, default=0
        Base seed shared by all ranks.
    """

    def __init__(self, n_samples, seed=0):
        self.n_samples = int(n_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Use the permutation of ``epoch`` on the next iteration."""
        self.epoch = int(epoch)

    def _world(self):
        group = get_process_group()
        if group is None:
            return 1, 0
        return dist.get_world_size(group), dist.get_rank(group)

    def __len__(self):
        world, _ = self._world()
        return math.ceil(self.n_samples / world)

    def __iter__(self):
        world, rank = self._world()
        gen = torch.Generator().manual_seed((self.seed * 100003 + self.epoch) % (1 << 63))
        perm = torch.randperm(self.n_samples, generator=gen)
        total = math.ceil(self.n_samples / world) * world
        if total > self.n_samples:
            reps = math.ceil(total / self.n_samples)
            perm = perm.repeat(reps)[:total]
        return iter(perm[rank:total:world].tolist())


class ShardEpoch(Callback):
    """Tell the training sampler which epoch starts (new shuffle per epoch)."""

    def on_epoch_begin(self, net, **kwargs):
        sampler = getattr(net, "iterator_train__sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(len(net.history) - 1)


class DistributedFit:
    """What :meth:`SelfLabelClusterer.fit` changes when run on several ranks.

    Create it with :meth:`detect` (None in a single process), then call, in
    order: :meth:`agree_seed`, :meth:`configure` (before
    ``net.initialize()``), :meth:`wrap` (after the initial labels and any
    checkpoint are in place) and :meth:`unwrap` (after training).

    Parameters
    ----------
    group : ProcessGroup
        The process group, usually ``torch.distributed.group.WORLD``.
    """

    def __init__(self, group):
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if collective_device(group).type == "cuda":
            # NCCL needs each process on its own GPU before the first collective.
            self.local_device("cuda")

    @classmethod
    def detect(cls, device=None):
        """A :class:`DistributedFit` if running on several ranks, else None.

        If no process group exists but the process was started by a launcher
        (``torchrun``, ``accelerate launch``: ``WORLD_SIZE`` > 1, ``RANK``,
        ``MASTER_ADDR`` and ``MASTER_PORT`` set), the default group is
        initialised from those variables (:func:`init_from_environment`),
        so the single-process script needs no change.
        """
        if get_process_group() is None:
            init_from_environment(device)
        group = get_process_group()
        return None if group is None else cls(group)

    @property
    def is_main(self):
        return self.rank == 0

    def agree_seed(self, seed):
        """Rank 0's seed on every rank (``random_state=None`` differs per rank)."""
        dev = collective_device(self.group)
        x = torch.tensor([int(seed) % (1 << 62)], dtype=torch.int64, device=dev)
        dist.broadcast(x, src=0, group=self.group)
        return int(x.item())

    def local_device(self, device):
        """Pin ``"cuda"`` to this process's GPU (``LOCAL_RANK``)."""
        device = str(device)
        if device == "cuda":
            local = _local_gpu(self.rank)
            torch.cuda.set_device(local)
            return f"cuda:{local}"
        if device.startswith("cuda:"):
            torch.cuda.set_device(torch.device(device))
        return device

    def configure(self, net, n_samples, seed):
        """Shard the training data and silence every rank but rank 0.

        ``net.batch_size`` stays the global batch: each rank takes
        ``ceil(batch_size / P)`` samples per step, so one optimiser step sees
        about as many samples as in a single process with the same settings.
        """
        world = self.world_size
        per_rank = math.ceil(n_samples / world)
        if per_rank < 2:
            raise ValueError(
                f"n_samples={n_samples} is too small for {world} processes: "
                f"each rank needs at least 2 samples."
            )
        batch = min(max(2, math.ceil(net.batch_size / world)), per_rank)
        drop_last = per_rank % batch == 1
        callbacks = list(net.callbacks or [])
        for name, cb in callbacks:
            # skorch's ProgressBar would count batches of the whole data set.
            if name == "progress" and getattr(cb, "batches_per_epoch", None) == "auto":
                cb.batches_per_epoch = per_rank // batch if drop_last else -(-per_rank // batch)
        if not self.is_main:
            # Rank 0 alone prints and writes checkpoints; net.verbose=0 also
            # mutes skorch's PrintLog. Other user callbacks run on all ranks.
            callbacks = [
                (name, cb) for name, cb in callbacks if name not in ("progress", "checkpoint")
            ]
            for name, cb in callbacks:
                if name == "self_labelling" and hasattr(cb, "verbose"):
                    cb.verbose = 0
        params = dict(
            device=self.local_device(net.device),
            batch_size=batch,
            iterator_train__sampler=ShardedRandomSampler(n_samples, seed),
            iterator_train__shuffle=False,
            # A last batch of one sample would break batch norm.
            iterator_train__drop_last=drop_last,
            callbacks=callbacks + [("shard_epoch", ShardEpoch())],
        )
        if not self.is_main:
            params["verbose"] = 0
        net.set_params(**params)
        return net

    def wrap(self, net, seed, epochs_done=0):
        """Wrap ``net.module_`` in DDP; give each rank its own random stream.

        DDP broadcasts rank 0's parameters and buffers at construction, so
        all ranks start from the same model (also after resuming).
        Augmentation then draws different random numbers on each rank.
        """
        module = net.module_
        dev = next(module.parameters()).device
        ids = [dev.index] if dev.type == "cuda" else None
        net.module_ = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=ids, output_device=ids[0] if ids else None
        )
        torch.manual_seed((int(seed) + 1000003 * (self.rank + 1) + int(epochs_done)) % (1 << 62))
        return net

    def unwrap(self, net):
        """Remove the DDP wrapper; every rank keeps rank 0's buffers."""
        module = unwrap_module(net.module_)
        broadcast_buffers(module, self.group)
        net.module_ = module
        return net


@torch.no_grad()
def update_labels_distributed(net, dataset, group):
    """Self-labelling step of a :class:`~sklearn_sela.training.SelfLabelNet`
    whose samples are sharded over ``group``.

    Rank ``r`` computes the log-probabilities of its contiguous shard only
    (:func:`shard_bounds`), head by head
    (:meth:`~sklearn_sela.training.SelfLabelNet.head_log_probas`: one
    ``(N_r, K_t)`` buffer per head, or cached features and one reused
    buffer when the features are narrower than the heads together), solves
    each head with the distributed Sinkhorn (``process_group=group``; ``K``-length
    all-reduces) and all-gathers the int64 labels, so ``net.labels_`` is the
    same ``(N, T)`` tensor on every rank. Returns the same info dict as
    :meth:`SelfLabelNet.update_labels`, plus ``"local_rows"``.

    With ``net.label_neighbors > 1`` the neighbourhoods of a shard's samples
    reach into other shards, so each head's probabilities are all-gathered
    (``N x K_t`` on every rank) before the shard's rows are averaged.
    """
    start = time.perf_counter()
    n = len(net.labels_)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    lo, hi = shard_bounds(n, world, rank)
    dev = collective_device(group)
    module = unwrap_module(net.module_)
    broadcast_buffers(module, group)
    local = torch.empty((hi - lo, len(net.n_clusters)), dtype=torch.int64, device=dev)
    feats = net.label_pass_features(dataset, hi - lo)
    neighbors = None
    solves = []
    for t, buf in net.head_log_probas(dataset, shard=(lo, hi), device=dev, features_out=feats):
        if t == 0:
            # Neighbourhoods span shards: search among all ranks' features,
            # average over all ranks' probabilities.
            full = None if feats is None else all_gather_rows(feats, group).cpu()
            neighbors = net.label_neighbors_of(dataset, rows=(lo, hi), features=full)
            feats = full = None
        if neighbors is not None:
            average_over_neighbors(all_gather_rows(buf.exp(), group), neighbors, out=buf)
        local[:, t], res = net.solve_head(buf, t, process_group=group)
        solves.append(res)
    previous = net.labels_.clone()
    net.labels_ = all_gather_rows(local, group).cpu()
    info = net.label_update_info(previous, solves, start)
    info["local_rows"] = hi - lo
    return info
