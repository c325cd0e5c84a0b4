"""Collective helpers over a :mod:`torch.distributed` process group.

The ground floor beside the solver: this module imports nothing from
``sklearn_sela``. Every function takes a ``group``; ``group=None`` means a
single process, for which each helper is the identity, so code written for
one rank of many runs unchanged on its own.

Samples are sharded by contiguous index ranges (:func:`shard_bounds`), and
:func:`all_gather_rows` concatenates every rank's rows in rank order, so the
gathered matrix is in the samples' original order.
"""

import torch
import torch.distributed as dist

__all__ = ["shard_bounds", "local_shard", "collective_device", "all_reduce", "all_gather_rows"]


def shard_bounds(n_samples, world_size, rank):
    """Contiguous index range ``[lo, hi)`` of the samples owned by ``rank``.

    Shards differ in size by at most one sample and, concatenated in rank
    order, give ``range(n_samples)``.
    """
    lo = (n_samples * rank) // world_size
    hi = (n_samples * (rank + 1)) // world_size
    return lo, hi


def local_shard(n_samples, group):
    """This rank's range ``[lo, hi)`` of ``n_samples`` in ``group``
    (:func:`shard_bounds`); ``(0, n_samples)`` when ``group`` is None."""
    if group is None:
        return 0, n_samples
    return shard_bounds(n_samples, dist.get_world_size(group), dist.get_rank(group))


def collective_device(group=None):
    """Device that collectives of ``group`` operate on: CUDA for NCCL, else CPU.

    CPU when ``group`` is None and no default group exists.
    """
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return torch.device("cpu")
    backend = dist.get_backend(group)
    if "nccl" in str(backend).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(x, group, op="sum"):
    """Reduce ``x`` in place over ``group`` (``op`` is ``"sum"`` or ``"max"``).

    Returns ``x``; unchanged when ``group`` is None.
    """
    if group is not None:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        dist.all_reduce(x, op=ops[op], group=group)
    return x


def all_gather_rows(local, group):
    """Concatenate every rank's ``local`` tensor along dim 0, in rank order.

    Shards may have different lengths (they are padded for the exchange). The
    result is on ``local``'s device; it has to go through the collective
    device of the group (CUDA for NCCL). With ``group=None``, ``local``
    itself is returned.
    """
    if group is None:
        return local
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
