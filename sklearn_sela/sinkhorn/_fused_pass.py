"""The Sinkhorn iteration's pass over a CPU kernel matrix, and its build, compiled.

One iteration needs, for every row ``i`` of the kernel ``W``, the row sum
``s_i = W[i] @ b`` for the current column scaling, its reciprocal
``a_i = 1 / s_i`` (the new row scaling), and then the column sums
``v = W.T @ a``. Torch can only do this as two matrix-vector products per
2 MB block of rows (``mv``, ``reciprocal_``, ``addmv_``: three library
calls per block, each with its own OpenMP fork and join): on a 2-core
machine that costs 0.6 to 1 times a plain ``mv`` over the whole matrix on
top of the one read from memory. Here both products are done four rows at a
time, while the rows are in L1 cache: one read of the matrix and one fork
and join per pass. Building the kernel from the scores (and rebuilding it
when a scaling is folded in) is likewise one compiled pass instead of about
eight torch calls per block.

Scheduling: the rows are cut into many more parts than threads, and each
thread takes the next part from a shared atomic counter until none is left
(numba's ``prange`` alone gives each thread a fixed share, whatever
``parallel_chunksize`` says, with the OpenMP and workqueue layers). When
other processes share the cores, a thread that the OS deschedules then
delays the pass by at most one small part, where a fixed share makes the
other threads wait for all of it at the join; with torch's blockwise calls
every one of thousands of joins per pass waits for the slowest thread. The
parts are fixed by the matrix, so the results do not depend on the threads.

This module is imported lazily by :mod:`sklearn_sela.sinkhorn` (numba's
import and the first compilation take about 2 seconds; the compiled code is
cached on disk), and only for matrices large enough to repay that.
"""

import numba
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

# Rows whose column contributions are summed in the matrix dtype before
# being added to the float64 totals: bounds float32 round-off in the column
# sums as a per-block summation would, at no measurable cost.
_GROUP = 256
# Parts per thread (at least): enough that a descheduled thread holds up
# little of the pass, few enough that the per-part column totals (float64,
# K each) stay small next to the matrix.
_PARTS_PER_THREAD = 16
_MIN_PARTS = 64

# exp(x) = 2**n * exp(r), n = round(x / ln 2), r = x - n ln 2 in
# [-ln 2 / 2, ln 2 / 2] (ln 2 split in two so that r is exact), exp(r) from
# the minimax polynomial of Cephes' expf (relative error ~1e-7, as libm's
# expf). Written out so that LLVM vectorises it: numba calls libm's scalar
# exp, several times slower than the memory traffic of the build. float32
# constants keep the arithmetic in float32.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0, _P1, _P2, _P3, _P4, _P5 = (
    np.float32(c)
    for c in (
        1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
        4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1,
    )
)
_HALF, _ONE = np.float32(0.5), np.float32(1.0)


def n_parts(n):
    """How many parts the rows of an ``n``-row matrix are cut into."""
    parts = max(_MIN_PARTS, _PARTS_PER_THREAD * numba.config.NUMBA_NUM_THREADS)
    return max(1, min(parts, -(-n // _GROUP)))


@intrinsic
def _take(typingctx, counter):
    """Atomically increment ``counter[0]`` (int64); return its old value."""
    sig = types.int64(counter)

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [zero])
        one = context.get_constant(types.int64, 1)
        return builder.atomic_rmw("add", ptr, one, "monotonic")

    return sig, codegen


@numba.njit(inline="always")
def _bounds(t, n, parts):
    # Part t's rows; parts differ by at most one _GROUP.
    groups = (n + _GROUP - 1) // _GROUP
    lo = (groups * t // parts) * _GROUP
    hi = min(n, (groups * (t + 1) // parts) * _GROUP)
    return lo, hi


@numba.njit(
    parallel=True,
    # Reassociation lets LLVM vectorise the row sums; no "fast" flags that
    # assume finite values.
    fastmath={"reassoc", "contract"},
    error_model="numpy",
    cache=True,
)
def _pass(W, b, a, totals, counter, workers):
    n, k = W.shape
    parts = totals.shape[0]
    for _ in numba.prange(workers):
        acc = np.empty(k, dtype=W.dtype)
        t = _take(counter)
        while t < parts:
            _pass_part(W, b, a, totals[t], acc, t, parts)
            t = _take(counter)


@numba.njit(fastmath={"reassoc", "contract"}, error_model="numpy", cache=True)
def _pass_part(W, b, a, total, acc, t, parts):
    n, k = W.shape
    total[:] = 0.0
    lo, hi = _bounds(t, n, parts)
    for g0 in range(lo, hi, _GROUP):
        g1 = min(hi, g0 + _GROUP)
        acc[:] = 0.0
        i = g0
        while i + 4 <= g1:
            r0, r1, r2, r3 = W[i], W[i + 1], W[i + 2], W[i + 3]
            # Start from the first product so the sums keep W's dtype.
            s0, s1, s2, s3 = r0[0] * b[0], r1[0] * b[0], r2[0] * b[0], r3[0] * b[0]
            for j in range(1, k):
                bj = b[j]
                s0 += r0[j] * bj
                s1 += r1[j] * bj
                s2 += r2[j] * bj
                s3 += r3[j] * bj
            # Read back from ``a``: the reciprocals in W's dtype.
            a[i], a[i + 1], a[i + 2], a[i + 3] = 1.0 / s0, 1.0 / s1, 1.0 / s2, 1.0 / s3
            q0, q1, q2, q3 = a[i], a[i + 1], a[i + 2], a[i + 3]
            for j in range(k):
                acc[j] += r0[j] * q0 + r1[j] * q1 + r2[j] * q2 + r3[j] * q3
            i += 4
        while i < g1:
            r0 = W[i]
            s0 = r0[0] * b[0]
            for j in range(1, k):
                s0 += r0[j] * b[j]
            a[i] = 1.0 / s0
            q0 = a[i]
            for j in range(k):
                acc[j] += r0[j] * q0
            i += 1
        for j in range(k):
            total[j] += acc[j]


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _extremes(S, row_max, row_min, parts, counter, workers):
    n, k = S.shape
    for _ in numba.prange(workers):
        t = _take(counter)
        while t < parts:
            lo, hi = _bounds(t, n, parts)
            for i in range(lo, hi):
                m, low, nan = -np.inf, np.inf, False
                for j in range(k):
                    s = S[i, j]
                    m = max(m, s)
                    low = min(low, s)
                    nan |= s != s
                row_max[i] = np.nan if nan else m
                row_min[i] = low
            t = _take(counter)


@numba.njit(error_model="numpy", inline="always")
def _exp_f32(x, floor):
    """``exp(max(x, -floor))`` for float32 ``x <= 0``, ``floor < 87``."""
    x = max(x, -floor)
    n = np.floor(x * _LOG2E + _HALF)
    r = x - n * _LN2_HI - n * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * r * r + r + _ONE
    # 2**n from its exponent bits (n >= -87: a normal float32).
    return p * np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)


@numba.njit(fastmath={"nnan", "ninf", "nsz"}, error_model="numpy", cache=True)
def _row(s, x, w, m, g, use_g, lam_c, floor_c):
    # A row of finite scores. The flags let LLVM vectorise the maximum; no
    # reassociation or contraction: the same roundings as torch's calls.
    for j in range(s.shape[0]):
        x[j] = (s[j] - m) * lam_c
    top = np.float32(0.0)
    if use_g:
        top = x[0] + g[0]
        for j in range(s.shape[0]):
            x[j] += g[j]
            top = max(top, x[j])
        for j in range(s.shape[0]):
            x[j] -= top
    for j in range(s.shape[0]):
        w[j] = _exp_f32(x[j], floor_c)
    return top


@numba.njit(error_model="numpy", cache=True)
def _special_row(s, x, w, m, empty, g, use_g, lam_c, floor_c, gap_c):
    # A row with -inf scores, or of -inf only (uniform).
    zero = np.float32(0.0)
    low, zeros = zero, False
    for j in range(s.shape[0]):
        xj = zero if empty else (s[j] - m) * lam_c
        x[j] = xj
        if xj == -np.inf:
            zeros = True
        else:
            low = min(low, xj)
    if zeros:
        for j in range(s.shape[0]):
            if x[j] == -np.inf:
                x[j] = low - gap_c
    top = zero
    if use_g:
        top = np.float32(-np.inf)
        for j in range(s.shape[0]):
            x[j] += g[j]
            top = max(top, x[j])
        for j in range(s.shape[0]):
            x[j] -= top
    for j in range(s.shape[0]):
        w[j] = _exp_f32(x[j], floor_c)
    return top


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _build(
    S, W, row_max, special, empty, g, use_g, lam, lam_c, floor_c, gap_c, shift,
    parts, counter, workers,
):
    # The same float operations, in the same order, as Kernel._log_block and
    # Kernel._peak_at_zero; lam_c, floor_c, gap_c: float32.
    n, k = S.shape
    for _ in numba.prange(workers):
        x = np.empty(k, dtype=W.dtype)
        t = _take(counter)
        while t < parts:
            lo, hi = _bounds(t, n, parts)
            for i in range(lo, hi):
                m = row_max[i]
                if special[i]:
                    top = _special_row(
                        S[i], x, W[i], m, empty[i], g, use_g, lam_c, floor_c, gap_c
                    )
                else:
                    top = _row(S[i], x, W[i], m, g, use_g, lam_c, floor_c)
                shift[i] = np.float64(m) * lam + np.float64(top)
            t = _take(counter)


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _argmax(W, b, labels, parts, counter, workers):
    n, k = W.shape
    for _ in numba.prange(workers):
        t = _take(counter)
        while t < parts:
            lo, hi = _bounds(t, n, parts)
            for i in range(lo, hi):
                # The first largest W[i, j] * b[j], products rounded as torch's.
                best, top = 0, W[i, 0] * b[0]
                for j in range(1, k):
                    q = W[i, j] * b[j]
                    if q > top:
                        best, top = j, q
                labels[i] = best
            t = _take(counter)


def _threads(n_threads):
    return min(n_threads, numba.config.NUMBA_NUM_THREADS)


def _run(fn, n_threads, *args):
    # One worker per thread, taking parts from a shared counter (see the
    # module docstring).
    workers = _threads(n_threads)
    previous = numba.get_num_threads()
    numba.set_num_threads(workers)
    try:
        fn(*args, np.zeros(1, dtype=np.int64), workers)
    finally:
        numba.set_num_threads(previous)


def fused_pass(W, b, a, v, n_threads):
    """``a = 1 / (W @ b)`` and ``v = W.T @ a`` in one read of ``W``.

    Parameters
    ----------
    W : ndarray of shape (n, k), float32 or float64, C-contiguous
        The kernel matrix.
    b : ndarray of shape (k,), same dtype as ``W``
        The column scaling.
    a : ndarray of shape (n,), same dtype as ``W``
        Output: the row scaling.
    v : ndarray of shape (k,), same dtype as ``W``
        Output: the column sums of ``diag(a) W``.
    n_threads : int
        Threads to share the parts among (at most numba's thread count).
        The result does not depend on it.
    """
    totals = np.empty((n_parts(W.shape[0]), W.shape[1]), dtype=np.float64)
    _run(_pass, n_threads, W, b, a, totals)
    v[:] = totals.sum(axis=0)


def row_extremes(S, n_threads):
    """Row maxima (NaN for a row holding NaN) and row minima of ``S``.

    Parameters
    ----------
    S : ndarray of shape (n, k), float32 or float64, C-contiguous
    n_threads : int

    Returns
    -------
    row_max, row_min : ndarray of shape (n,), S's dtype
    """
    row_max = np.empty(S.shape[0], dtype=S.dtype)
    row_min = np.empty(S.shape[0], dtype=S.dtype)
    _run(_extremes, n_threads, S, row_max, row_min, n_parts(S.shape[0]))
    return row_max, row_min


def build(S, W, row_max, empty, special, g, lam, floor, gap, shift, n_threads):
    """Write the kernel ``W = exp(max(lam * (S - row_max) + g - h, -floor))``.

    The conventions of :class:`~sklearn_sela.sinkhorn._kernel.Kernel`: a
    row of ``empty`` is uniform, ``-inf`` scores sit ``gap`` below the
    row's lowest finite value (after ``lam``), ``h`` makes each row's
    largest entry one.

    Parameters
    ----------
    S : ndarray of shape (n, k), float32, C-contiguous
        The scores.
    W : ndarray of shape (n, k), float32, C-contiguous
        Output: the kernel (a separate buffer).
    row_max : ndarray of shape (n,), float32
        Finite row maxima of ``S`` (0 for empty rows).
    empty : ndarray of shape (n,), bool
        Rows whose scores are all ``-inf``.
    special : ndarray of shape (n,), bool
        Rows with some ``-inf`` score (empty ones included).
    g : ndarray of shape (k,), float32, or None
        The folded column scaling (log).
    lam, floor, gap : float
    shift : ndarray of shape (n,), float64
        Output: the per-row shifts, ``lam * row_max + h``.
    n_threads : int
    """
    use_g = g is not None
    if g is None:
        g = np.zeros(S.shape[1], dtype=np.float32)
    _run(
        _build, n_threads, S, W, row_max, special, empty, g, use_g, float(lam),
        np.float32(lam), np.float32(floor), np.float32(gap), shift, n_parts(S.shape[0]),
    )


def argmax_labels(W, b, n_threads):
    """Per row, the first column of largest ``W[i, j] * b[j]``.

    Parameters
    ----------
    W : ndarray of shape (n, k), float32 or float64, C-contiguous
    b : ndarray of shape (k,), same dtype as ``W``
    n_threads : int

    Returns
    -------
    labels : ndarray of shape (n,), int64
    """
    labels = np.empty(W.shape[0], dtype=np.int64)
    _run(_argmax, n_threads, W, b, labels, n_parts(W.shape[0]))
    return labels


def max_threads():
    """The most threads the compiled functions can use in this process."""
    return numba.config.NUMBA_NUM_THREADS
