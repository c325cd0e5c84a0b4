"""The Sinkhorn iteration's pass over a CPU kernel matrix, compiled.

One iteration needs, for every row ``i`` of the kernel ``W``, the row sum
``s_i = W[i] @ b`` for the current column scaling, its reciprocal
``a_i = 1 / s_i`` (the new row scaling), and then the column sums
``v = W.T @ a``. Torch can only do this as two matrix-vector products per
2 MB block of rows (``mv``, ``reciprocal_``, ``addmv_``: three library
calls per block, each with its own OpenMP fork and join): on a 2-core
machine that costs 0.6 to 1 times a plain ``mv`` over the whole matrix on
top of the one read from memory. Here each thread takes a contiguous range
of rows and does both products four rows at a time, while the rows are in
its L1 cache: one read of the matrix and one fork and join per pass.

This module is imported lazily by :mod:`sklearn_sela.sinkhorn` (numba's
import and the first compilation take about 2 seconds; the compiled code is
cached on disk), and only for matrices large enough to repay that.
"""

import numba
import numpy as np

# Rows whose column contributions are summed in the matrix dtype before
# being added to the float64 totals: bounds float32 round-off in the column
# sums as a per-block summation would, at no measurable cost.
_GROUP = 256


@numba.njit(
    parallel=True,
    # Reassociation lets LLVM vectorise the row sums; no "fast" flags that
    # assume finite values.
    fastmath={"reassoc", "contract"},
    error_model="numpy",
    cache=True,
)
def _pass(W, b, a, totals):
    n, k = W.shape
    n_parts = totals.shape[0]
    chunk = (n + n_parts - 1) // n_parts
    for t in numba.prange(n_parts):
        total = totals[t]
        total[:] = 0.0
        acc = np.empty(k, dtype=W.dtype)
        lo = t * chunk
        hi = min(n, lo + chunk)
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
        Threads to split the rows over (at most numba's thread count).
    """
    totals = np.empty((n_threads, W.shape[1]), dtype=np.float64)
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        _pass(W, b, a, totals)
    finally:
        numba.set_num_threads(previous)
    v[:] = totals.sum(axis=0)


def max_threads():
    """The most threads :func:`fused_pass` can use in this process."""
    return numba.config.NUMBA_NUM_THREADS
