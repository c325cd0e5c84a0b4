"""Benchmark of ``sklearn_sela.sinkhorn_knopp`` against two baselines.

Run from the repository root::

    python benchmarks/bench_sinkhorn.py                  # full run (~30 min, 2 cores, 17 GB RAM)
    python benchmarks/bench_sinkhorn.py --quick          # N = 20,000: a smoke run
    python benchmarks/bench_sinkhorn.py --skip-imagenet  # without the 15.4 GB case
    python benchmarks/bench_sinkhorn.py --device cuda    # ours on a GPU (no baselines)
    python benchmarks/bench_sinkhorn.py --busy none      # without the busy-machine rows

All methods run in this one process on the same matrices (N = 200,000
samples, K = 1,000 clusters, lambda = 25):

* ``ours``: :func:`sklearn_sela.sinkhorn_knopp` on float32 log-probabilities.
* ``release``: the update rule of the original SeLa release
  (``optimize_L_sk``), reimplemented in float64 numpy: ``PS = P ** lam``,
  ``r = 1 / (K PS^T c)``, ``c = 1 / (N PS r)``. It runs twice: with its own
  stopping rule (``sum_i |c_i / c_new_i - 1| < 0.1``, checked every 10
  iterations) and stopped at the same marginal tolerance as ours (checked
  every 10 iterations too, at no extra cost).
* ``POT``: ``ot.sinkhorn(a, b, M, reg)`` with ``M = -log P`` and
  ``reg = 1 / lambda`` in float64, ``method="sinkhorn"`` and
  ``method="sinkhorn_log"``. POT's ``stopThr`` bounds the L2 norm of the
  cluster-marginal error; ``tol / sqrt(K)`` is used, which implies an L1
  error of at most ``tol``. Iterations are capped (``--pot-max-iter``,
  ``--pot-log-max-iter``).

Inputs are prepared outside the timed calls: float32 log-probabilities for
ours, float64 probabilities for the release, the float64 cost ``-log P``
for POT.

Columns: wall time (including building the kernel and reading the labels),
iterations, peak extra resident memory during the call (Linux ``VmHWM``,
reset before each call), the L1 error of the cluster marginal of the
returned plan (rows being exact for all methods), label agreement, and the
ratio of the method's time to ours. *Label agreement* is the fraction of
samples whose argmax label equals that of a higher-precision reference: our
solver on the float64 matrix, warm-started from the float32 solution and run
to a tenth of the tolerance (``--ref-tol``, default 1e-4).

Also reported: the time of one plain float32 matrix-vector product over the
same (N, K) matrix (the memory-bandwidth floor) against our time per
iteration (the median of 25 passes of a solve forced to run 25 iterations;
and the whole solve's time divided by its iterations); a warm
re-solve after perturbing the scores; and one in-place solve at ImageNet
scale (N = 1,281,167, K = 3,000, float32: 15.4 GB), the buffer filled in
chunks so that no second matrix ever exists, with the process's peak RSS.

"Beside a busy process" (CPU only): ours and POT's ``method="sinkhorn"``
solve the same matrix again while other processes keep every core busy
(``--busy spin``: one pure-Python spin loop per core; ``--busy matmul``: one
process running float32 matrix products on as many torch threads as cores),
started before each timed solve and killed after it. Their ratio is in the
last column, each one's slowdown against its own idle time in the note.
"""

import argparse
import gc
import math
import os
import platform
import re
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

import sklearn_sela.sinkhorn as sk
from sklearn_sela.sinkhorn._kernel import Kernel
from sklearn_sela import sinkhorn_knopp

LAM = 25.0


# ---------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------


def _status(field):
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"{field}:\s+(\d+)", f.read())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


DEVICE = "cpu"


def _sync():
    if DEVICE != "cpu":
        torch.cuda.synchronize()


def measure(fn):
    """Run ``fn``; return (result, seconds, peak extra memory in bytes or None).

    On CPU the memory is the process's resident set (``VmHWM``, reset
    first); on CUDA, the device allocator's peak.
    """
    gc.collect()
    if DEVICE == "cpu":
        ok = _reset_peak()
        base = _status("VmRSS")
    else:
        _sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    dt = time.perf_counter() - t0
    if DEVICE == "cpu":
        peak = _status("VmHWM")
        extra = peak - base if ok and peak is not None and base is not None else None
    else:
        extra = torch.cuda.max_memory_allocated() - base
    return out, dt, extra


def mv_floor(X, reps=15):
    """Median and min time of one float32 matrix-vector product over X."""
    x = torch.ones(X.shape[1], dtype=X.dtype, device=X.device)
    torch.mv(X, x)
    times = []
    for _ in range(reps):
        _sync()
        t0 = time.perf_counter()
        torch.mv(X, x)
        _sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


class PassTimer:
    """Times every fused pass of our solver, in place (wraps the method)."""

    def __init__(self):
        self.times = []
        self._orig = Kernel.fused_pass

    def __enter__(self):
        orig, times = self._orig, self.times

        def timed(kernel, b, a, v):
            _sync()
            t0 = time.perf_counter()
            orig(kernel, b, a, v)
            _sync()
            times.append(time.perf_counter() - t0)

        Kernel.fused_pass = timed
        return self

    def __exit__(self, *exc):
        Kernel.fused_pass = self._orig


_BUSY_CODE = {
    "spin": "while True:\n    pass",
    "matmul": (
        "import torch\ntorch.set_num_threads({cores})\n"
        "x = torch.randn(1024, 1024)\nwhile True:\n    x @ x"
    ),
}


class BusyCores:
    """Other processes keeping every core busy while the block runs.

    ``spin``: one pure-Python loop per core; ``matmul``: one process with a
    thread per core multiplying matrices. Started (and given a moment to
    start spinning) on entry, killed on exit.
    """

    def __init__(self, kind):
        self.kind = kind
        self.procs = []

    def __enter__(self):
        cores = os.cpu_count()
        code = _BUSY_CODE[self.kind].format(cores=cores)
        n = cores if self.kind == "spin" else 1
        self.procs = [
            subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
            for _ in range(n)
        ]
        time.sleep(2.0)  # (past imports: the load is on when the clock starts)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def col_error_from_plan_rows(col_sums, proportions):
    return float(np.abs(np.asarray(col_sums) - proportions).sum())


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def make_logits_chunk(kind, rows, k, gen, freq=None):
    """Logits for ``rows`` samples (float32)."""
    if kind == "peaked":
        # Each sample has a clear favourite (p_max ~ 0.9), drawn from mildly
        # imbalanced cluster frequencies, so that Sinkhorn has to move mass.
        y = torch.multinomial(freq, rows, replacement=True, generator=gen)
        z = torch.randn(rows, k, generator=gen).mul_(2.0)
        z[torch.arange(rows), y] += 12.0
    else:
        # Near-uniform: every probability within a few % of 1/K.
        z = torch.randn(rows, k, generator=gen).mul_(0.05)
    return z


def make_scores(kind, n, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    freq = torch.as_tensor(rng.dirichlet(np.full(k, 5.0)))
    bias = torch.as_tensor(rng.normal(size=k) * 0.02, dtype=torch.float32)
    out = torch.empty((n, k), dtype=torch.float32)
    step = 50_000
    for s in range(0, n, step):
        z = make_logits_chunk(kind, min(step, n - s), k, gen, freq)
        if kind != "peaked":
            z += bias
        out[s : s + step] = torch.log_softmax(z, dim=1)
    return out


# ---------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------


def release_loop(P64, lam, *, marginal_tol=None, max_iter=100_000):
    """The original release's Sinkhorn (optimize_L_sk), float64 numpy.

    ``P64`` (N, K) probabilities, overwritten by ``P ** lam`` in place, as
    in the release. With ``marginal_tol`` it stops when the L1 error of the
    cluster marginal is at most that instead of its own rule; both are
    checked every 10 iterations. Returns labels, iterations, L1 error.
    """
    PS = np.power(P64, lam, out=P64)
    n, k = PS.shape
    inv_k, inv_n = 1.0 / k, 1.0 / n
    r = np.full(k, inv_k)
    c = np.full(n, inv_n)
    err, it, col_err = math.inf, 0, math.inf
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        while it < max_iter:
            cps = c @ PS  # K-vector: PS^T c
            if marginal_tol is not None and it % 10 == 0 and it > 0:
                # Plan (c, r_old): rows exact, columns r_old * PS^T c.
                col_err = float(np.abs(r * cps - inv_k).sum())
                if col_err <= marginal_tol:
                    break
            r_new = inv_k / cps
            c_new = inv_n / (PS @ r_new)
            if marginal_tol is None and it % 10 == 0:
                err = np.nansum(np.abs(c / c_new - 1))
            c, r = c_new, r_new
            it += 1
            if marginal_tol is None and err < 0.1:
                break
        # Final plan (c, r): rows exact; its cluster marginal and labels.
        cps = c @ PS
        col_err = float(np.abs(r * cps - inv_k).sum())
        labels = np.empty(n, dtype=np.int64)
        step = 50_000
        for s in range(0, n, step):
            labels[s : s + step] = np.nanargmax(PS[s : s + step] * r, axis=1)
    return labels, it, col_err


def pot_sinkhorn(M, lam, tol, max_iter, method):
    import ot

    n, k = M.shape
    a = np.full(n, 1.0 / n)
    b = np.full(k, 1.0 / k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        G, log = ot.sinkhorn(
            a, b, M, 1.0 / lam, method=method, numItermax=max_iter,
            stopThr=tol / math.sqrt(k), log=True,
        )
    notes = sorted({str(w.message).split(".")[0][:60] for w in caught})
    G = np.asarray(G)
    finite = bool(np.isfinite(G).all())
    labels = np.argmax(np.nan_to_num(G, nan=-1.0), axis=1)
    col_err = float(np.abs(np.nansum(G, axis=0) - b).sum())
    n_iter = int(log.get("niter", len(log.get("err", [])) * 10)) + 1
    del G
    return labels, n_iter, col_err, finite, notes


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def fmt_mem(x):
    return "n/a" if x is None else f"{x / 1e9:.2f} GB"


def table_row(r):
    """One Markdown table row for a result dict."""
    method = r["method"].strip()
    if r["iters"] is None:  # the per-iteration line
        return f"| {r['case']} | {method} | {r['time'] * 1e3:.1f} ms | | | | | {r['extra']} |"
    it = str(r["iters"]) + (" (not converged)" if r.get("conv") is False else "")
    mem = fmt_mem(r["mem"]) if r["mem"] is not None else ""
    err = "" if r["err"] is None else f"{r['err']:.1e}"
    agree = "" if r["agree"] is None else f"{r['agree']:.2%}"
    if r["ratio"] is None:
        ratio = ""
    elif method.startswith("ours"):
        ratio = "1x"
    else:
        ratio = f"{r['ratio']:.1f}x"
    extra = r.get("extra") or ""
    if extra and not method.startswith("per iteration"):
        ratio = f"{ratio} ({extra})" if ratio else extra
    return f"| {r['case']} | {method} | {r['time']:.1f} s | {it} | {mem} | {err} | {agree} | {ratio} |"


def run_case(kind, n, k, args, rows, notes):
    print(f"\n## {kind}: N={n:,} K={k:,} lambda={LAM:g}", flush=True)
    S = make_scores(kind, n, k).to(DEVICE)
    pmax = float(S.max(dim=1).values.exp().mean())
    print(f"mean max probability {pmax:.4f}", flush=True)
    tol = args.tol

    # Ours, float32.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sinkhorn_knopp(S[:2000], lam=LAM)  # warm-up (threads, allocator)
    ours, t_ours, m_ours = measure(lambda: sinkhorn_knopp(S, lam=LAM, tol=tol, max_iter=20000))
    # Time per iteration: 25 forced passes (tol=0), each against a plain
    # float32 matrix-vector product over the same matrix, measured in turn.
    with PassTimer() as timer, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sinkhorn_knopp(S, lam=LAM, tol=0.0, max_iter=25)
    mv_med, mv_min = mv_floor(S, reps=25)
    pass_med, pass_min = float(np.median(timer.times)), float(np.min(timer.times))
    # Reference: float64, warm-started from ours, to args.ref_tol.
    ref, t_ref, _ = measure(
        lambda: sinkhorn_knopp(
            S.double(), lam=LAM, tol=args.ref_tol, warm_start=ours, max_iter=20000
        )
    )
    ref_labels = ref.labels.cpu().numpy()
    notes.append(
        f"{kind}: reference (float64, warm-started from ours, tol {args.ref_tol:g}) "
        f"took {ref.n_iter} more iterations, {t_ref:.1f} s; L1 error "
        f"{ref.marginal_error:.1e}."
    )

    def agree(labels):
        return float(np.mean(np.asarray(labels) == ref_labels))

    rows.append(dict(
        case=kind, method=f"ours (float32, {DEVICE})", time=t_ours, iters=ours.n_iter,
        mem=m_ours, err=ours.marginal_error, agree=agree(ours.labels.cpu().numpy()),
        ratio=1.0, conv=ours.converged,
    ))
    rows.append(dict(
        case=kind, method="  per iteration vs float32 mv", time=pass_med,
        iters=None, mem=None, err=None, agree=None, ratio=None,
        extra=f"pass {pass_med * 1e3:.1f} ms vs mv {mv_med * 1e3:.1f} ms = "
        f"{pass_med / mv_med:.2f}x (medians of 25; minima {pass_min * 1e3:.1f} vs "
        f"{mv_min * 1e3:.1f} ms = {pass_min / mv_min:.2f}x); whole solve "
        f"{t_ours / ours.n_iter * 1e3:.1f} ms per iteration",
    ))
    print(rows[-2], "\n", rows[-1]["extra"], flush=True)

    # Warm re-solve after small perturbations of the logits.
    gen = torch.Generator().manual_seed(1)
    for eps in args.perturb:
        z = S + eps * torch.randn(S.shape, generator=gen).to(DEVICE)
        S2 = torch.log_softmax(z, dim=1)
        del z
        cold = sinkhorn_knopp(S2, lam=LAM, tol=tol, max_iter=20000)
        warm, t_warm, _ = measure(
            lambda: sinkhorn_knopp(S2, lam=LAM, tol=tol, max_iter=20000, warm_start=ours)
        )
        rows.append(dict(
            case=kind, method=f"  warm re-solve, noise {eps:g}", time=t_warm,
            iters=warm.n_iter, mem=None, err=warm.marginal_error,
            agree=float(np.mean(warm.labels.cpu().numpy() == cold.labels.cpu().numpy())),
            ratio=None,
            extra=f"{warm.n_iter} vs {cold.n_iter} cold iterations = "
            f"{warm.n_iter / cold.n_iter:.0%} (agreement with the cold re-solve)",
        ))
        print(rows[-1]["extra"], flush=True)
        del S2, cold, warm
    gc.collect()

    if DEVICE != "cpu":
        del S, ours, ref
        gc.collect()
        return
    S = S.cpu()
    # The release's loop, float64: own rule, then our tolerance.
    for label, mtol, cap in (
        ("release loop, same tol", tol, args.release_max_iter),
        ("release loop, own rule", None, args.release_own_max_iter),
    ):
        # Input: probabilities, as the release takes them (not timed).
        P64 = S.double().exp_().numpy()
        (lab, it, err), t, m = measure(
            lambda: release_loop(P64, LAM, marginal_tol=mtol, max_iter=cap)
        )
        del P64
        rows.append(dict(
            case=kind, method=label + " (float64)", time=t, iters=it, mem=m,
            err=err, agree=agree(lab), ratio=t / t_ours,
            conv=(err <= tol) if mtol is not None else (it < cap),
        ))
        print(rows[-1], flush=True)
        gc.collect()

    # POT, float64.
    pot_idle = {}
    for method in args.pot_methods:
        cap = args.pot_max_iter if method == "sinkhorn" else args.pot_log_max_iter
        M = S.double().neg_().numpy()  # cost = -log P, float64 (not timed)
        (lab, it, err, finite, warn), t, m = measure(
            lambda: pot_sinkhorn(M, LAM, tol, cap, method)
        )
        del M
        rows.append(dict(
            case=kind, method=f"POT {method} (float64)", time=t, iters=it, mem=m,
            err=err, agree=agree(lab), ratio=t / t_ours, conv=err <= tol,
            extra=("non-finite plan; " if not finite else "") + "; ".join(warn),
        ))
        print(rows[-1], flush=True)
        pot_idle[method] = t
        gc.collect()

    if args.busy != "none":
        run_busy(kind, S, args, t_ours, pot_idle, agree, rows)
    del S, ours, ref
    gc.collect()


def run_busy(kind, S, args, t_ours, pot_idle, agree, rows):
    """Ours and POT's ``sinkhorn`` again, each beside busy processes."""
    tol = args.tol
    with BusyCores(args.busy):
        res, t_busy, m = measure(
            lambda: sinkhorn_knopp(S, lam=LAM, tol=tol, max_iter=20000)
        )
    where = f"beside busy processes ({args.busy}, {os.cpu_count()} cores)"
    rows.append(dict(
        case=kind, method=f"ours (float32, cpu) {where}", time=t_busy,
        iters=res.n_iter, mem=m, err=res.marginal_error,
        agree=agree(res.labels.numpy()), ratio=1.0, conv=res.converged,
        extra=f"{t_busy / t_ours:.1f}x its idle time",
    ))
    print(rows[-1], flush=True)
    del res
    if "sinkhorn" not in args.pot_methods:
        return
    M = S.double().neg_().numpy()
    with BusyCores(args.busy):
        (lab, it, err, finite, warn), t, m = measure(
            lambda: pot_sinkhorn(M, LAM, tol, args.pot_max_iter, "sinkhorn")
        )
    del M
    rows.append(dict(
        case=kind, method=f"POT sinkhorn (float64) {where}", time=t, iters=it,
        mem=m, err=err, agree=agree(lab), ratio=t / t_busy, conv=err <= tol,
        extra=f"{t / pot_idle['sinkhorn']:.1f}x its idle time"
        + ("; non-finite plan" if not finite else "")
        + "".join("; " + w for w in warn),
    ))
    print(rows[-1], flush=True)
    gc.collect()


def run_imagenet(args, notes):
    n, k = 1_281_167, 3_000
    print(f"\n## in-place, ImageNet scale: N={n:,} K={k:,}", flush=True)
    need = n * k * 4
    avail = None
    if DEVICE != "cpu":
        avail = torch.cuda.mem_get_info()[0]
    else:
        try:
            with open("/proc/meminfo") as f:
                avail = int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1)) * 1024
        except OSError:
            pass
    if avail is not None and avail < need * 1.15:
        notes.append(
            f"ImageNet-scale run skipped: {avail / 1e9:.1f} GB available, "
            f"{need / 1e9:.1f} GB needed for the buffer."
        )
        print(notes[-1], flush=True)
        return None
    gc.collect()
    _reset_peak()
    rss0 = _status("VmRSS")
    if DEVICE != "cpu":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    buf = torch.empty((n, k), dtype=torch.float32, device=DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    freq = torch.as_tensor(np.random.default_rng(0).dirichlet(np.full(k, 5.0)), device=DEVICE)
    step = 20_000
    for s in range(0, n, step):
        rows = min(step, n - s)
        y = torch.multinomial(freq, rows, replacement=True, generator=gen)
        z = torch.randn(rows, k, generator=gen, device=DEVICE).mul_(2.0)
        z[torch.arange(rows, device=DEVICE), y] += 6.0
        buf[s : s + rows] = torch.log_softmax(z, dim=1)
        del z
    _sync()
    t_fill = time.perf_counter() - t0
    with PassTimer() as timer:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res, t, _ = measure(
                lambda: sinkhorn_knopp(
                    buf, lam=LAM, tol=args.tol, inplace=True, max_iter=args.imagenet_max_iter
                )
            )
    peak = _status("VmHWM") if DEVICE == "cpu" else torch.cuda.max_memory_allocated()
    mv_med, mv_min = mv_floor(buf, reps=3)
    out = dict(
        n=n, k=k, buffer=need, fill=t_fill, time=t, iters=res.n_iter,
        conv=res.converged, err=res.marginal_error, peak=peak, rss0=rss0,
        shares=res.soft is buf, pass_med=float(np.median(timer.times)), mv=mv_med,
        sizes=torch.bincount(res.labels, minlength=k),
        warned=any("converge" in str(w.message) for w in caught),
    )
    print(out, flush=True)
    del buf, res
    gc.collect()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 20,000 (smoke run)")
    parser.add_argument("--skip-imagenet", action="store_true", help="skip the 15.4 GB in-place run")
    parser.add_argument("--n", type=int, default=None, help="override N (default 200,000)")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--tol", type=float, default=1e-3, help="L1 marginal tolerance for all methods")
    parser.add_argument("--cases", nargs="+", default=["peaked", "near-uniform"])
    parser.add_argument("--perturb", nargs="*", type=float, default=[0.01, 0.05])
    parser.add_argument("--pot-methods", nargs="*", default=["sinkhorn", "sinkhorn_log"])
    parser.add_argument("--pot-max-iter", type=int, default=2000)
    parser.add_argument("--pot-log-max-iter", type=int, default=20,
                        help="cap of POT sinkhorn_log (about 11 s per iteration at full size)")
    parser.add_argument("--release-max-iter", type=int, default=5000,
                        help="cap of the release loop stopped at our tolerance")
    parser.add_argument("--release-own-max-iter", type=int, default=1000,
                        help="cap of the release loop with its own stopping rule")
    parser.add_argument("--ref-tol", type=float, default=1e-4,
                        help="marginal tolerance of the float64 reference solve")
    parser.add_argument("--device", default="cpu",
                        help="device for our solver; baselines (numpy, POT) run on CPU only")
    parser.add_argument("--imagenet-max-iter", type=int, default=300)
    parser.add_argument("--busy", choices=["spin", "matmul", "none"], default="spin",
                        help="load of the 'beside busy processes' rows (CPU only)")
    parser.add_argument("--markdown", default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    n = args.n or (20_000 if args.quick else 200_000)
    global DEVICE
    DEVICE = args.device

    try:
        import ot

        pot = ot.__version__
    except ImportError:
        pot, args.pot_methods = "not installed", []
    where = (
        torch.cuda.get_device_name() if DEVICE != "cpu"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    header = [
        "# sinkhorn_knopp benchmark",
        "",
        f"Command: `python benchmarks/{os.path.basename(__file__)} "
        + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
        f"Machine: {where} (CPU threads: {torch.get_num_threads()} of "
        f"{os.cpu_count()} cores), Python {platform.python_version()}, torch "
        f"{torch.__version__}, numpy {np.__version__}, POT {pot}. lambda = "
        f"{LAM:g}, marginal tolerance (L1) = {args.tol:g}.",
    ]
    print("\n".join(header), flush=True)
    rows, notes = [], []
    for kind in args.cases:
        run_case(kind, n, args.k, args, rows, notes)
    big = None if (args.skip_imagenet or args.quick) else run_imagenet(args, notes)

    lines = header + [
        "",
        "| case | method | time | iterations | peak extra memory | marginal L1 error | label agreement | time / ours |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(table_row(r))
    if big is not None:
        lines += [
            "",
            f"In-place, N={big['n']:,} K={big['k']:,} float32 ({big['buffer'] / 1e9:.1f} GB buffer, "
            f"{DEVICE}): filled in chunks in {big['fill']:.0f} s; solve {big['time']:.0f} s, "
            f"{big['iters']} iterations, converged={big['conv']} (L1 error {big['err']:.1e}), "
            f"pass {big['pass_med']:.2f} s vs mv {big['mv']:.2f} s "
            f"({big['pass_med'] / big['mv']:.2f}x); peak "
            + (f"RSS of the process {big['peak'] / 1e9:.1f} GB = buffer + "
               f"{(big['rss0'] or 0) / 1e9:.2f} GB (interpreter and libraries, before) + "
               f"{(big['peak'] - big['buffer'] - (big['rss0'] or 0)) / 1e9:.2f} GB (solver); "
               if DEVICE == "cpu" else f"GPU memory {big['peak'] / 1e9:.1f} GB; ")
            +             f"result.soft is the buffer: {big['shares']}; cluster sizes "
            f"{int(big['sizes'].min())}..{int(big['sizes'].max())}.",
        ]
    if notes:
        lines += [""] + [f"- {x}" for x in notes]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
