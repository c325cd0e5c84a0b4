"""Multi-process SeLa: process groups, the sharded sampler and DDP wiring.

Everything here is driven by :mod:`torch.distributed` and switched on
automatically when a default process group with more than one rank exists
(``torchrun``, ``accelerate launch``, or ``init_process_group`` by hand), so a
script written for one process runs unchanged on several.

Layout of the work
------------------
* **Samples are sharded by contiguous index ranges**
  (:func:`~sklearn_sela.collectives.shard_bounds`): rank ``r`` owns samples
  ``[r * N // P, (r + 1) * N // P)``. Every rank can compute every shard's
  bounds, so nothing about the partition is exchanged.
* **Self-labelling pass**: each rank writes the log-probabilities of its own
  shard into a local ``(N_r, K)`` buffer and calls
  :func:`~sklearn_sela.sinkhorn.sinkhorn_knopp` with ``process_group``; per
  iteration only the ``K`` column sums are all-reduced. The ``N x K`` matrix
  is never gathered; only the ``N`` int64 labels are
  (:func:`~sklearn_sela.collectives.all_gather_rows`), so that every rank holds the labels of all samples in the original order.
* **Balanced labels**: the solver's rounding reproduces the single-process
  greedy with exact global cluster sizes, exchanging per-cluster counts and
  per-cluster margin thresholds (``O(K)`` per step).
* **One label step**: :meth:`~sklearn_sela.training.SelfLabelNet.update_labels`
  is the same code on one process (the one-shard case) and on many.
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

import torch
import torch.distributed as dist
from skorch.callbacks import Callback
from torch.utils.data import Sampler

from .collectives import collective_device

__all__ = [
    "get_process_group",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "ShardedRandomSampler",
    "ShardEpoch",
    "DistributedFit",
    "unwrap_module",
    "broadcast_buffers",
]

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
    group : ProcessGroup or None
        The ranks to synchronise; None (one process) does nothing.
    """
    bufs = [b for b in module.buffers() if b.numel()]
    if group is None or not bufs:
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
