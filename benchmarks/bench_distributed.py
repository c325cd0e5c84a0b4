"""Distributed Sinkhorn-Knopp: P gloo processes vs 1 process on one matrix.

Each process builds only its own rows of a synthetic ``N x K`` matrix of
log-probabilities (rows come from per-chunk seeded generators, so any shard
can be produced without the rest) and calls
``sinkhorn_knopp(shard, process_group=WORLD)``. Every collective is counted
(bytes and time), which shows that an iteration exchanges ``O(K)`` bytes, not
``O(N K)``. From the measured per-element cost of an iteration's pass and the
measured all-reduce latency and bandwidth, it projects the per-iteration cost
for a larger problem (default: ImageNet, N = 1.28M, K = 3000, 8 ranks).

Usage::

    python benchmarks/bench_distributed.py                  # N=400k, K=1000, 2 ranks
    python benchmarks/bench_distributed.py --n 40000 --k 200 --no-write   # quick
    python benchmarks/bench_distributed.py --device cuda    # GPU compute term

``--device`` skips the gloo comparison and instead times, on that device,
one of the projected ranks' shards and the whole projected matrix.

Writes the tables and the command as a section of
``docs/benchmarks_distributed.md`` (one section per ``--tag``, by default
the machine kind; other sections are kept) unless ``--no-write``.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sklearn_sela import sinkhorn_knopp
from sklearn_sela.collectives import all_gather_rows, shard_bounds

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks_distributed.md")
CHUNK = 8192


# -- data --------------------------------------------------------------------
def make_rows(lo, hi, k, seed=0):
    """Rows ``[lo, hi)`` of the benchmark matrix (float32 log-probabilities).

    Row ``i`` has a preferred cluster (+4 on its logit) and N(0, 1) logits
    elsewhere; rows are drawn chunk by chunk from generators seeded by the
    chunk index, so every shard is the same slice of one global matrix.
    """
    out = torch.empty((hi - lo, k), dtype=torch.float32)
    for c in range(lo // CHUNK, (hi - 1) // CHUNK + 1):
        a, b = c * CHUNK, (c + 1) * CHUNK
        gen = torch.Generator().manual_seed(seed * 1_000_003 + c)
        x = torch.randn((CHUNK, k), generator=gen)
        cls = torch.randint(0, k, (CHUNK,), generator=gen)
        x[torch.arange(CHUNK), cls] += 4.0
        torch.log_softmax(x, dim=1, out=x)
        s, e = max(a, lo), min(b, hi)
        out[s - lo : e - lo] = x[s - a : e - a]
    return out


# -- collective accounting ---------------------------------------------------
class CommCounter:
    """Wraps torch.distributed collectives to count calls, bytes and time."""

    NAMES = ("all_reduce", "all_gather", "broadcast")

    def __init__(self):
        self.calls = []
        self._orig = {}

    def __enter__(self):
        for name in self.NAMES:
            orig = getattr(dist, name)
            self._orig[name] = orig

            def wrapped(*args, orig_=orig, name_=name, **kwargs):
                t = args[0] if name_ != "all_gather" else args[1]
                nbytes = t.numel() * t.element_size()
                start = time.perf_counter()
                res = orig_(*args, **kwargs)
                self.calls.append((name_, nbytes, time.perf_counter() - start))
                return res

            setattr(dist, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, orig in self._orig.items():
            setattr(dist, name, orig)

    def summary(self):
        return {
            "calls": len(self.calls),
            "bytes": int(sum(c[1] for c in self.calls)),
            "seconds": float(sum(c[2] for c in self.calls)),
            "sizes": sorted({c[1] for c in self.calls}),
        }


def _time_pass(W, reps=3):
    """Seconds of one Sinkhorn pass over W (best of ``reps``).

    The solver's per-iteration work, written out here so that the benchmark
    does not depend on the solver's private helpers: per block of rows (a
    few MB, cache-sized on CPUs) ``a = 1 / (W_blk @ b)`` then
    ``v += W_blk.T @ a``.
    """
    k = W.shape[1]
    b = torch.ones(k, dtype=torch.float32, device=W.device)
    a = torch.empty(W.shape[0], dtype=torch.float32, device=W.device)
    v = torch.empty(k, dtype=torch.float32, device=W.device)
    budget = (64 << 20) if W.is_cuda else (2 << 20)
    block = int(max(64, min(W.shape[0], budget // (4 * k))))
    best = math.inf
    for _ in range(reps):
        _sync(W.device)
        t = time.perf_counter()
        v.zero_()
        for start in range(0, W.shape[0], block):
            blk = W[start : start + block]
            ab = a[start : start + block]
            torch.mv(blk, b, out=ab)
            ab.reciprocal_()
            v.addmv_(blk.t(), ab)
        _sync(W.device)
        best = min(best, time.perf_counter() - t)
    return best


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _time_all_reduce(numel, reps):
    x = torch.ones(numel, dtype=torch.float32)
    dist.barrier()
    for _ in range(3):
        dist.all_reduce(x)
    dist.barrier()
    t = time.perf_counter()
    for _ in range(reps):
        dist.all_reduce(x)
    return (time.perf_counter() - t) / reps


# -- one rank ----------------------------------------------------------------
def _worker(rank, world, port, cfg, outdir):
    torch.set_num_threads(cfg["threads"])
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=1800),
    )
    try:
        n, k = cfg["n"], cfg["k"]
        lo, hi = shard_bounds(n, world, rank)
        S = make_rows(lo, hi, k, cfg["seed"])
        group = dist.group.WORLD
        out = {"rows": hi - lo}
        # Main solve: cold start, argmax labels (SeLa's default).
        dist.barrier()
        with CommCounter() as cc, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            res = sinkhorn_knopp(S, lam=cfg["lam"], tol=cfg["tol"], max_iter=cfg["max_iter"],
                                 process_group=group, return_soft=True)
            out["time"] = time.perf_counter() - t
        out["n_iter"] = res.n_iter
        out["comm"] = cc.summary()
        out["comm_iter_calls"] = [c for c in cc.calls if c[1] == k * 4]
        labels = all_gather_rows(res.labels, group)
        # Compute term: one pass over this rank's working matrix.
        out["pass"] = _time_pass(res.soft)
        del res
        # Balanced labels, warm-started from the argmax solve's scaling (as in
        # training, where every re-labelling is warm-started).
        warm = cfg.get("warm")
        with CommCounter() as cb, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            resb = sinkhorn_knopp(S, lam=cfg["lam"], tol=cfg["tol"], max_iter=cfg["max_iter"],
                                  warm_start=np.load(warm), assign="balanced",
                                  process_group=group, inplace=True)
            out["time_bal"] = time.perf_counter() - t
        out["n_iter_bal"] = resb.n_iter
        out["comm_bal"] = cb.summary()
        labels_bal = all_gather_rows(resb.labels, group)
        del resb, S
        # Communication microbenchmark: latency / bandwidth of all-reduce.
        out["ar"] = {
            str(m): _time_all_reduce(m, reps)
            for m, reps in ((1, 200), (cfg["k"], 200), (cfg["proj_k"], 200), (1 << 20, 10))
        }
        if rank == 0:
            np.save(os.path.join(outdir, "labels.npy"), labels.numpy())
            np.save(os.path.join(outdir, "labels_bal.npy"), labels_bal.numpy())
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


# -- driver ------------------------------------------------------------------
def run(cfg):
    torch.set_num_threads(cfg["threads"])
    n, k, world = cfg["n"], cfg["k"], cfg["world"]
    load0 = os.getloadavg()[0]
    # 1 process: the whole matrix.
    S = make_rows(0, n, k, cfg["seed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        ref = sinkhorn_knopp(S, lam=cfg["lam"], tol=cfg["tol"], max_iter=cfg["max_iter"],
                             return_soft=True)
        t_single = time.perf_counter() - t
    pass_single = _time_pass(ref.soft)
    ref_labels, ref_beta, ref_iter = ref.labels.numpy(), ref.log_beta.numpy(), ref.n_iter
    del ref
    with tempfile.TemporaryDirectory() as outdir:
        warm = os.path.join(outdir, "warm.npy")
        np.save(warm, ref_beta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            refb = sinkhorn_knopp(S, lam=cfg["lam"], tol=cfg["tol"], max_iter=cfg["max_iter"],
                                  warm_start=ref_beta, assign="balanced", inplace=True)
            t_single_bal = time.perf_counter() - t
        ref_bal, ref_iter_bal = refb.labels.numpy(), refb.n_iter
        del refb, S
        # P processes, each with its shard only.
        ctx = mp.start_processes(
            _worker, args=(world, free_port(), dict(cfg, warm=warm), outdir),
            nprocs=world, join=False, start_method="spawn",
        )
        while not ctx.join(timeout=5):
            pass
        ranks = []
        for r in range(world):
            with open(os.path.join(outdir, f"rank{r}.json")) as f:
                ranks.append(json.load(f))
        labels = np.load(os.path.join(outdir, "labels.npy"))
        labels_bal = np.load(os.path.join(outdir, "labels_bal.npy"))
    return dict(
        cfg=cfg, load=(load0, os.getloadavg()[0]), ranks=ranks,
        single=dict(time=t_single, n_iter=ref_iter, pass_=pass_single,
                    time_bal=t_single_bal, n_iter_bal=ref_iter_bal),
        agree=float((labels == ref_labels).mean()),
        agree_bal=float((labels_bal == ref_bal).mean()),
        sizes_equal=bool(np.array_equal(np.bincount(labels_bal, minlength=k),
                                        np.bincount(ref_bal, minlength=k))),
        sizes_range=(int(np.bincount(labels_bal, minlength=k).min()),
                     int(np.bincount(labels_bal, minlength=k).max())),
    )


def _fmt_bytes(b):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if b < 1000 or unit == "TB":
            return f"{b:.3g} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1000


def _fmt_s(s):
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def report(r):
    cfg, s, ranks = r["cfg"], r["single"], r["ranks"]
    n, k, world = cfg["n"], cfg["k"], cfg["world"]
    t_dist = max(x["time"] for x in ranks)
    it = ranks[0]["n_iter"]
    per_it_single = s["time"] / s["n_iter"]
    per_it_dist = t_dist / it
    comm = ranks[0]["comm"]
    # Collectives in the iteration loop: one all-reduce of K float32 each.
    iter_calls = ranks[0]["comm_iter_calls"]
    bytes_iter = sum(c[1] for c in iter_calls) / it
    comm_iter_time = max(sum(c[2] for c in x["comm_iter_calls"]) for x in ranks) / it
    setup_bytes = comm["bytes"] - sum(c[1] for c in iter_calls)
    bal = ranks[0]["comm_bal"]
    t_bal = max(x["time_bal"] for x in ranks)
    pass_rank = max(x["pass"] for x in ranks)
    rows = max(x["rows"] for x in ranks)
    lines = []
    add = lines.append
    add(f"| | 1 process | {world} processes (gloo) | ratio {world}p / 1p |")
    add("|---|---:|---:|---:|")
    add(f"| rows per process | {n:,} | {rows:,} | {rows / n:.2f} |")
    add(f"| working matrix per process (float32) | {_fmt_bytes(4 * n * k)} | "
        f"{_fmt_bytes(4 * rows * k)} | {rows / n:.2f} |")
    add(f"| Sinkhorn time, cold start, argmax | {_fmt_s(s['time'])} | {_fmt_s(t_dist)} | "
        f"{t_dist / s['time']:.2f} |")
    add(f"| iterations | {s['n_iter']} | {it} | {it / s['n_iter']:.2f} |")
    add(f"| time per iteration | {_fmt_s(per_it_single)} | {_fmt_s(per_it_dist)} | "
        f"{per_it_dist / per_it_single:.2f} |")
    add(f"| one pass over the working matrix (compute term) | {_fmt_s(s['pass_'])} | "
        f"{_fmt_s(pass_rank)} | {pass_rank / s['pass_']:.2f} |")
    add(f"| all-reduce time per iteration (incl. waiting for the slower rank) | - | "
        f"{_fmt_s(comm_iter_time)} | - |")
    add(f"| bytes all-reduced per iteration, per rank | 0 | {_fmt_bytes(bytes_iter)} "
        f"(= 4 K) | - |")
    add(f"| bytes exchanged besides the iterations (setup) | 0 | {_fmt_bytes(setup_bytes)} | - |")
    add(f"| gathering the N x K matrix instead would move | - | {_fmt_bytes(4 * n * k)} | "
        f"{4 * n * k / bytes_iter:,.0f} x one iteration |")
    add(f"| label agreement with 1 process (argmax) | - | {r['agree']:.6f} | - |")
    add(f"| balanced labels, warm start: time | {_fmt_s(s['time_bal'])} | {_fmt_s(t_bal)} | "
        f"{t_bal / s['time_bal']:.2f} |")
    add(f"| balanced labels, warm start: iterations | {s['n_iter_bal']} | "
        f"{ranks[0]['n_iter_bal']} | - |")
    add(f"| balanced labels: collectives / bytes per rank (whole solve) | - | "
        f"{bal['calls']} / {_fmt_bytes(bal['bytes'])} | - |")
    add(f"| balanced labels: agreement with 1 process | - | {r['agree_bal']:.6f} | - |")
    add(f"| balanced labels: same exact cluster sizes as 1 process | - | "
        f"{'yes' if r['sizes_equal'] else 'NO'} (sizes {r['sizes_range'][0]}-"
        f"{r['sizes_range'][1]}) | - |")
    table = "\n".join(lines)

    # -- projection ------------------------------------------------------
    pn, pk, pp = cfg["proj_n"], cfg["proj_k"], cfg["proj_world"]
    # Compute cost per matrix element: the best of the two measurements (on a
    # shared machine the ranks also compete with each other for cores).
    per_elem = min(pass_rank / (rows * k), s["pass_"] / (n * k))
    ar = ranks[0]["ar"]
    # Ring model on the measured P-rank all-reduce: t(m) = 2(P-1) a + 2(P-1)/P m / B.
    steps = 2 * (world - 1)
    alpha = ar["1"] / steps
    big = 4 * (1 << 20)
    bw = (2 * (world - 1) / world) * big / max(ar[str(1 << 20)] - steps * alpha, 1e-9)
    prow = math.ceil(pn / pp)
    t_comp = per_elem * prow * pk
    t_comm = 2 * (pp - 1) * alpha + 2 * (pp - 1) / pp * 4 * pk / bw
    t_one = per_elem * pn * pk
    plines = [
        f"| N = {pn:,}, K = {pk:,} | 1 process | {pp} ranks |",
        "|---|---:|---:|",
        f"| rows per rank | {pn:,} | {prow:,} |",
        f"| working matrix per rank (float32, per head) | {_fmt_bytes(4 * pn * pk)} | "
        f"{_fmt_bytes(4 * prow * pk)} |",
        f"| compute per iteration ({per_elem * 1e9:.3g} ns per element, best measured) | "
        f"{_fmt_s(t_one)} | {_fmt_s(t_comp)} |",
        f"| communication per iteration (all-reduce of {_fmt_bytes(4 * pk)}) | 0 | "
        f"{_fmt_s(t_comm)} |",
        f"| total per iteration | {_fmt_s(t_one)} | {_fmt_s(t_comp + t_comm)} |",
        f"| speed-up | 1 | {t_one / (t_comp + t_comm):.2f} |",
    ]
    proj = "\n".join(plines)
    notes = (
        f"Measured all-reduce on {world} local gloo ranks: {_fmt_s(ar['1'])} for 4 B, "
        f"{_fmt_s(ar[str(k)])} for K = {k} floats, {_fmt_s(ar[str(pk)])} for "
        f"K = {pk} floats, {_fmt_s(ar[str(1 << 20)])} for 4 MB; ring model "
        f"`t = 2(P-1) a + 2(P-1)/P * bytes / B` gives a = {_fmt_s(alpha)} per step, "
        f"B = {_fmt_bytes(bw)}/s."
    )
    return table, proj, notes


def make_rows_on(n, k, device, seed=0, block=65536):
    """A matrix like :func:`make_rows`, drawn directly on ``device`` (for GPUs)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty((n, k), dtype=torch.float32, device=device)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        x = torch.randn((hi - lo, k), generator=gen, device=device)
        cls = torch.randint(0, k, (hi - lo,), generator=gen, device=device)
        x[torch.arange(hi - lo, device=device), cls] += 4.0
        out[lo:hi] = torch.log_softmax(x, dim=1)
    return out


def run_device(cfg, device):
    """Per-iteration cost on one accelerator: one rank's shard vs the whole matrix."""
    pn, pk, pp = cfg["proj_n"], cfg["proj_k"], cfg["proj_world"]
    torch.set_num_threads(cfg["threads"])
    out = []
    for rows in (math.ceil(pn / pp), pn):
        S = make_rows_on(rows, pk, device, cfg["seed"])
        _sync(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            res = sinkhorn_knopp(S, lam=cfg["lam"], tol=cfg["tol"], max_iter=cfg["max_iter"],
                                 inplace=True)
            _sync(device)
            elapsed = time.perf_counter() - t
        out.append(dict(rows=rows, time=elapsed, n_iter=res.n_iter, pass_=_time_pass(S)))
        del res, S
        torch.cuda.empty_cache() if torch.device(device).type == "cuda" else None
    return out


def report_device(cfg, device, res):
    pn, pk, pp = cfg["proj_n"], cfg["proj_k"], cfg["proj_world"]
    shard, full = res
    cuda = torch.device(device).type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else str(device)
    lines = [
        f"| N = {pn:,}, K = {pk:,} on {name} | whole matrix (1 GPU) | one of {pp} shards |",
        "|---|---:|---:|",
        f"| rows | {full['rows']:,} | {shard['rows']:,} |",
        f"| working matrix (float32, in place) | {_fmt_bytes(4 * full['rows'] * pk)} | "
        f"{_fmt_bytes(4 * shard['rows'] * pk)} |",
        f"| one pass over the working matrix (compute term) | {_fmt_s(full['pass_'])} | "
        f"{_fmt_s(shard['pass_'])} |",
        f"| effective bandwidth of the pass (reads the matrix once) | "
        f"{_fmt_bytes(4 * full['rows'] * pk / full['pass_'])}/s | "
        f"{_fmt_bytes(4 * shard['rows'] * pk / shard['pass_'])}/s |",
        f"| cold solve (kernel build + iterations) | {_fmt_s(full['time'])}, "
        f"{full['n_iter']} it. | {_fmt_s(shard['time'])}, {shard['n_iter']} it. (alone) |",
        f"| time per iteration of that solve | {_fmt_s(full['time'] / full['n_iter'])} | "
        f"{_fmt_s(shard['time'] / shard['n_iter'])} |",
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=400_000)
    p.add_argument("--k", type=int, default=1_000)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--lam", type=float, default=25.0)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--proj-n", type=int, default=1_281_167)
    p.add_argument("--proj-k", type=int, default=3_000)
    p.add_argument("--proj-world", type=int, default=8)
    p.add_argument("--device", default=None,
                   help="instead of the gloo comparison, time one rank's shard and the "
                        "whole projected matrix on this device (e.g. cuda)")
    p.add_argument("--tag", default=None,
                   help="name of this run's section of the docs page (default: the "
                        "machine kind); a rerun with the same tag replaces it")
    p.add_argument("--no-write", action="store_true", help="do not write the docs page")
    args = p.parse_args(argv)
    cfg = dict(
        n=args.n, k=args.k, world=args.world, threads=args.threads, lam=args.lam,
        tol=args.tol, max_iter=args.max_iter, seed=args.seed, proj_n=args.proj_n,
        proj_k=args.proj_k, proj_world=args.proj_world,
    )
    command = "python " + " ".join(
        [os.path.relpath(os.path.abspath(__file__), ROOT)]
        + list(sys.argv[1:] if argv is None else argv)
    )
    if args.device is not None:
        res = run_device(cfg, args.device)
        table = report_device(cfg, args.device, res)
        print(f"Command: {command}\n\n{table}")
        body = _device_section(command, table, cfg, res)
        tag = args.tag or f"device-{args.device}"
    else:
        r = run(cfg)
        table, proj, notes = report(r)
        machine = (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
            f"(load average {r['load'][0]:.1f} before, {r['load'][1]:.1f} after), "
            f"torch {torch.__version__}, {args.threads} thread(s) per process, "
            f"lam = {args.lam:g}, tol = {args.tol:g}"
        )
        print(f"Command: {command}\nMachine: {machine}\n")
        print(table, "\n")
        print(proj, "\n")
        print(notes)
        body = _cpu_section(command, machine, table, proj, notes, cfg)
        tag = args.tag or f"cpu{os.cpu_count()}"
    if not args.no_write:
        _write_section(tag, body)
    return table


HEADER = """# Distributed Sinkhorn-Knopp: several processes vs one

Produced by `benchmarks/bench_distributed.py`; each section is rewritten by
a rerun of the command shown in it (its `--tag` names the section).

The matrix holds float32 log-probabilities (one preferred cluster per row,
+4 on its logit, N(0, 1) elsewhere). With P processes (gloo, on one
machine), each builds only its own N / P rows and calls
`sinkhorn_knopp(shard, process_group=WORLD)`; every collective is counted
by wrapping `torch.distributed`. The single process solves the whole matrix
with the same settings and the same number of threads per process.
"""


def _cpu_section(command, machine, table, proj, notes, cfg):
    cores = os.cpu_count()
    return f"""## {cfg['world']} processes vs 1, {cfg['n']:,} x {cfg['k']:,}, {cores} CPU cores

```
{command}
```

{machine}.

{table}

Per iteration each rank all-reduces the K column sums (4 K bytes) and
nothing else; the per-sample scaling stays on its rank. Besides the
iterations, the solve exchanges the global sample count once, and
`assign="balanced"` adds per-cluster counts, a threshold search or a gather
of the (few) samples proposing to over-full clusters, per rounding round.
Wall times depend on what else runs on the machine: where the load average
exceeds the number of cores, the processes do not run in parallel and the
ratio of times says little (the bytes, iterations and labels do not depend
on it).

### Projection: N = {cfg['proj_n']:,}, K = {cfg['proj_k']:,}, {cfg['proj_world']} ranks

From the compute cost per matrix element measured above (one pass on one
rank's shard or on the whole matrix, the better of the two) and the
all-reduce latency and bandwidth measured here between local gloo processes:

{proj}

{notes}
"""


def _device_section(command, table, cfg, res):
    shard = res[0]
    return f"""## One accelerator: the compute term at ImageNet scale

```
{command}
```

torch {torch.__version__}, lam = {cfg['lam']:g}, tol = {cfg['tol']:g}. One
rank of an {cfg['proj_world']}-GPU run holds {shard['rows']:,} rows; its
pass is the compute term of a distributed iteration, to which an NCCL
all-reduce of {_fmt_bytes(4 * cfg['proj_k'])} per iteration is added (not
measurable on one GPU; typically tens of microseconds within a node).

{table}
"""


_SECTION = re.compile(r"^% bench-section: (\S+)\n(.*?)^% end-bench-section\n", re.M | re.S)


def _write_section(tag, body):
    sections = {}
    if os.path.exists(DOC):
        with open(DOC) as f:
            for m in _SECTION.finditer(f.read()):
                sections[m.group(1)] = m.group(2).strip() + "\n"
    sections[tag] = body.strip() + "\n"
    text = HEADER + "".join(
        f"\n% bench-section: {t}\n{b}\n% end-bench-section\n" for t, b in sections.items()
    )
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w") as f:
        f.write(text)
    print(f"\nwrote section {tag!r} of {os.path.relpath(DOC, ROOT)}")


if __name__ == "__main__":
    main()
