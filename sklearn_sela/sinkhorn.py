"""Sinkhorn-Knopp solver for SeLa's equipartitioned label assignment.

This module is the numerical ground floor of the package: it works on plain
numpy arrays and torch tensors and imports nothing else from ``sklearn_sela``
but its compiled CPU pass, :mod:`sklearn_sela._fused_pass`.

The problem (Asano et al., 2020, eq. 6-8) is, for an ``(N, K)`` matrix of
log-probabilities ``log P``,

.. math::

    \\min_{Q \\in U(r, c)} \\langle Q, -\\log P \\rangle + \\frac{1}{\\lambda}
    \\mathrm{KL}(Q \\,\\|\\, r c^\\top),

whose minimiser is ``Q = diag(alpha) P**lam diag(beta)`` with rows summing to
``1/N`` and columns summing to the cluster proportions ``c``.

Notes on the numerics
---------------------
* The matrix ``P**lam`` is never formed directly. The working kernel is
  ``W[i, j] = exp(lam * S[i, j] + g[j] - h[i])``, where ``g`` is the part of
  the column scaling already folded in and ``h[i]`` makes the largest entry of
  every row exactly one. The per-row shift is applied to the scores *before*
  multiplying by ``lam``, so ``lam * S`` never overflows. Scores are used as
  they are, however small; only ``-inf`` (probability zero) is replaced, by
  a value 60 nats (after ``lam``) below the row's lowest finite one, so that
  every cluster stays reachable (a row of ``-inf`` only is uniform). That
  is a last resort, not part of the problem: a cluster that no sample may
  join is an error, and when the plan needs -inf entries to reach the
  target sizes (too few samples may join a cluster), their mass counts in
  the marginal error and the result is not ``converged``. The rows that
  hold -inf entries are measured once, after the iterations; in-place
  float32/float64 buffers keep their -inf pattern for that, one bit per
  entry of those rows.
* Entries more than ``F = 60`` nats below their row maximum are *stored* as
  ``exp(-F)`` rather than allowed to underflow: subnormal floats make CPU
  arithmetic many times slower (``exp()`` of underflowing values ~20x,
  matrix-vector products with subnormals ~5x). This storage floor is not
  part of the problem: the remaining column scaling ``b = exp(log_b)`` is
  kept within a range of ``exp(36)`` (see ``_ABSORB``), so that every product
  stays a normal float32 and a clamped entry stays below ``exp(-24)`` of its
  row's largest scaled entry. When ``b`` would leave that range it is folded
  ("absorbed") into the kernel, which is rebuilt from the scores: entries
  that were clamped get their true values back. With ``inplace=True`` the
  scores are gone; then the clamped entries of a float32/float64 buffer
  carry their true log-value in the last bits below ``exp(-F)`` (a relative
  change under ``2**-10``, see :func:`_to_kernel_`), and absorbing decodes
  it. A float16/bfloat16 buffer has too few bits for that: it keeps the
  scores, and each pass recomputes kernel blocks from them in float32.
* Cumulative logarithms of both scalings are kept in float64 and returned, so
  that a later call can warm start.
* Each iteration makes one streaming pass over the kernel: for a block of rows
  the row scaling is computed from the current column scaling and immediately
  used to accumulate the column sums, while the block is still in cache. On
  CPU, kernels of 4M entries or more run a compiled pass (numba) that does
  this four rows at a time in each thread, so the matrix is read once per
  iteration with one fork and join instead of three library calls per
  block.
* The column update is over-relaxed, ``log_b += omega * log(target / col)``,
  with ``omega`` in ``[1, 1.9]`` set from the convergence rate observed over
  the first iterations (the classic ``2 / (1 + sqrt(1 - rate))``). Every step
  is safeguarded: ``omega`` falls back to 1 for a step unless the dual
  objective provably increases by at least a tenth of the plain step's
  increase, which keeps plain Sinkhorn's global convergence guarantee (the
  test costs ``O(K)``; see :func:`_relaxation_gains`).
* Very large ``lam * score`` gaps (e.g. logits of magnitude 1e4 with
  ``lam = 100``) make the transport problem nearly unregularised: the
  scalings must move by ~1e6 nats, a bounded amount per iteration, so
  ``max_iter`` is reached (``ConvergenceWarning``). The result stays finite;
  ``assign="balanced"`` still gives exact cluster sizes.
"""

from dataclasses import dataclass
import math
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

__all__ = [
    "SinkhornResult",
    "sinkhorn_knopp",
    "soft_assignments",
    "balanced_sizes",
]

# Kernel floor F (nats below the row maximum): exp(-60) ~ 8.8e-27.
_LOG_FLOOR = 60.0
# A -inf score (probability zero) is given lam * score = (the row's lowest
# finite value) - _ZERO_GAP: last resort, but reachable, so that every
# cluster can be filled. Finite scores are used as they are, however small.
_ZERO_GAP = 60.0
# The pending column scaling b is kept within [exp(_B_TOP - _ABSORB),
# exp(_B_TOP)] = [exp(-20), exp(16)] and absorbed when it would leave it.
# Then every product in a pass stays a normal float32 (smallest exp(-87.3);
# subnormals make CPU arithmetic ~5x slower): W * b >= exp(-80), and, with
# a = 1 / (W b) >= exp(-16) / K, W * a >= exp(-76) / K, for K < 80,000. A
# clamped entry stays below exp(_ABSORB - F) = exp(-24) of its row's largest
# scaled entry.
_ABSORB = 36.0
_B_TOP = 16.0
# In-place float32/float64 buffers: a clamped entry at x < -F nats is stored
# as exp(-F) * (1 - _PAYLOAD * min(x_gap, _PAYLOAD_RANGE) / _PAYLOAD_RANGE),
# x_gap = -F - x. float32's 24-bit mantissa resolves the gap to about
# _PAYLOAD_RANGE * 2**-13 ~ 0.1 nats (of lam * scores), while the kernel
# value moves by less than 0.1 %.
_PAYLOAD = 2.0**-10
_PAYLOAD_RANGE = 1024.0
# Over-relaxation: the rate is measured over iterations
# _RELAX_AFTER // 2 .. _RELAX_AFTER of plain Sinkhorn.
_RELAX_AFTER = 8
_MAX_OMEGA = 1.9
_SAFEGUARD = 0.1
# Bytes of kernel processed per block in the fused pass: small enough to stay
# in a CPU core's L2 cache between the two matrix-vector products of a block,
# large enough that per-call overhead (and the OpenMP barrier of every call,
# costly when other processes share the cores) stays small.
_CPU_BLOCK_BYTES = 2 << 20
_CUDA_BLOCK_BYTES = 64 << 20
# Stored CPU kernels of at least this many entries run the compiled pass of
# ``_fused_pass`` (one read of the matrix, one fork and join, against about
# 1.6 to 2 times a plain mv for torch's blockwise pass); smaller ones use
# torch, whose pass is then a few calls and needs no compilation.
_COMPILED_MIN_ENTRIES = 1 << 22
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


@dataclass
class SinkhornResult:
    """Outcome of :func:`sinkhorn_knopp`.

    Attributes
    ----------
    labels : ndarray or Tensor of shape (n_samples,)
        Hard cluster label per sample (int64), same array type and device as
        the input scores.
    log_alpha : ndarray or Tensor of shape (n_samples,)
        Logarithm of the per-sample scaling, float64: ``Q[i, j] ~=
        exp(log_alpha[i] + lam * scores[i, j] + log_beta[j])``.
    log_beta : ndarray or Tensor of shape (n_clusters,)
        Logarithm of the per-cluster scaling, float64, with maximum 0. Pass it
        (or the whole result) as ``warm_start`` to a later call.
    n_iter : int
        Number of scaling iterations run.
    converged : bool
        Whether the marginal error fell below ``tol`` within ``max_iter``:
        a statement about the plan ``Q``. Labels from ``assign="balanced"``
        have exactly the target sizes either way; those from
        ``assign="argmax"`` are only approximately balanced, converged or
        not.
    marginal_error : float
        L1 distance between the marginals of ``Q`` (the plan above, zero
        where a score is ``-inf``) and their targets: the cluster marginal
        against the target proportions plus the per-sample marginal, which
        is exact unless the plan has to use ``-inf`` scores.
    soft : ndarray or Tensor of shape (n_samples, n_clusters) or None
        Rows of ``Q`` each normalised to sum to one, when asked for with
        ``return_soft=True`` or ``inplace=True`` (then it is the caller's
        buffer).
    """

    labels: object
    log_alpha: object
    log_beta: object
    n_iter: int
    converged: bool
    marginal_error: float
    soft: object = None


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
        proportions = _check_proportions(cluster_proportions, len(cluster_proportions))
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


def _as_tensor(x, name):
    if isinstance(x, torch.Tensor):
        return x, True
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x), False
    raise TypeError(
        f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}."
    )


def _check_proportions(cluster_proportions, n_clusters):
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


def _block_rows(W):
    budget = _CUDA_BLOCK_BYTES if W.is_cuda else _CPU_BLOCK_BYTES
    row_bytes = W.shape[1] * W.element_size()
    return int(max(64, min(W.shape[0], budget // max(row_bytes, 1))))


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _floor_value(floor, dtype):
    # exp(-floor) rounded to the compute dtype, as clamp() compares in it.
    return float(torch.tensor(-floor, dtype=dtype).exp())


def _empty_matrix(shape, dtype, device):
    """An uninitialised working matrix.

    On CPU it comes from numpy, which asks Linux for transparent huge pages
    for large buffers (torch's allocator does not): the first pass over an
    800 MB kernel then spends about half as long in page faults.
    """
    if device.type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(shape, dtype=_NUMPY_DTYPES[dtype]))
    return torch.empty(shape, dtype=dtype, device=device)


def _to_kernel_(x, floor, payload, tmp=None):
    """Turn log-kernel values ``x <= 0`` into kernel entries, in place.

    Values below ``-floor`` become ``exp(-floor)``; with ``payload`` they are
    stored a hair below it, ``exp(-floor) * (1 - 2**-10 * t)`` with ``t`` in
    ``(0, 1]`` growing with the distance below the floor, so that
    :func:`_to_log_kernel_` can recover them. Entries that were not clamped
    are ``>= exp(-floor)`` exactly, so the two cases never mix up. ``tmp``:
    an optional buffer shaped like ``x`` for the payload.
    """
    low = _floor_value(floor, x.dtype)
    if payload:
        tail = torch.clamp(x, max=-floor, out=tmp).neg_().sub_(floor)
        tail.clamp_(max=_PAYLOAD_RANGE).mul_(-_PAYLOAD / _PAYLOAD_RANGE).add_(1.0)
        x.clamp_(min=-floor).exp_().clamp_(min=low).mul_(tail)
    else:
        x.clamp_(min=-floor).exp_().clamp_(min=low)
    return x


def _to_log_kernel_(w, floor, payload, tmp=None):
    """Inverse of :func:`_to_kernel_` (in place, compute dtype)."""
    if payload:
        low = _floor_value(floor, w.dtype)
        tail = torch.mul(w, -1.0 / low, out=tmp).add_(1.0).clamp_(min=0.0)
        tail.mul_(_PAYLOAD_RANGE / _PAYLOAD)
        w.log_().clamp_(min=-floor).sub_(tail)
    else:
        w.log_()
    return w


def _row_max(x):
    """Validated row maxima of a block of scores; all -inf rows give 0.

    NaN or +inf in the scores is caught here, from the row maxima, which is
    cheaper than a separate validation pass. Returns ``(m, empty)``.
    """
    m = x.amax(dim=1)
    # NaN propagates through amax: report it before anything is written.
    if torch.isnan(m).any():
        raise ValueError("Input scores contain NaN.")
    if torch.isposinf(m).any():
        raise ValueError(
            "Input scores contain +inf; pass log-probabilities or finite "
            "scores (-inf is allowed and means probability zero)."
        )
    empty = torch.isneginf(m)
    return torch.where(empty, torch.zeros_like(m), m), empty


_BITS = (1, 2, 4, 8, 16, 32, 64, 128)


def _pack_bits(mask):
    """Pack a boolean ``(r, k)`` matrix to ``(r, ceil(k / 8))`` uint8."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.packbits(mask.numpy(), axis=1, bitorder="little"))
    return _pack_bits_torch(mask)


def _unpack_bits(packed, k):
    """Inverse of :func:`_pack_bits`, as a ``(r, k)`` uint8 matrix of 0/1."""
    if packed.device.type == "cpu":
        bits = np.unpackbits(packed.numpy(), axis=1, count=k, bitorder="little")
        return torch.from_numpy(bits)
    return _unpack_bits_torch(packed, k)


def _pack_bits_torch(mask):
    # Any device; on CPU numpy's packbits is several times faster.
    r, k = mask.shape
    m = mask.to(torch.uint8)
    if k % 8:
        m = torch.cat([m, m.new_zeros(r, 8 - k % 8)], dim=1)
    bits = torch.tensor(_BITS, dtype=torch.uint8, device=mask.device)
    return (m.view(r, -1, 8) * bits).sum(dim=2, dtype=torch.uint8)


def _unpack_bits_torch(packed, k):
    bits = torch.tensor(_BITS, dtype=torch.uint8, device=packed.device)
    return (packed[:, :, None] & bits).view(packed.shape[0], -1)[:, :k]


class _Kernel:
    """The working kernel ``W[i, j] = exp(lam * S[i, j] + g[j] - shift[i])``.

    ``g`` (float64) is the part of the column scaling folded in, ``shift``
    (float64) makes each row's largest entry one. Three storage modes:

    * stored in a separate matrix ``W`` (the default): absorbing a scaling
      rebuilds ``W`` from the scores, so clamped entries are recovered
      exactly;
    * stored in the scores' own float32/float64 buffer (in-place): clamped
      entries carry their log-value below the floor (see :func:`_to_kernel_`)
      and absorbing decodes it;
    * streamed (in-place float16/bfloat16 buffers, whose few mantissa bits
      cannot carry that payload): the buffer keeps the scores and every pass
      recomputes kernel blocks from them in float32. Exact, and absorbing is
      free, at the price of a few elementwise operations per entry and pass.
    """

    def __init__(self, S, W, lam, g, payload, streamed):
        self.S, self.W, self.lam = S, W, lam
        self.streamed = streamed
        self.payload = payload
        self.n, self.k = S.shape
        # Tensor-like attributes, for sklearn_sela.distributed.
        self.shape = S.shape
        self.device = S.device
        self.cdt = _compute_dtype(W.dtype)
        self.floor = _LOG_FLOOR
        self.block = _block_rows(W)
        self._scratch()
        self.g = (
            torch.zeros(self.k, dtype=torch.float64, device=self.device)
            if g is None
            else g.clone()
        )
        self.shift = torch.empty(self.n, dtype=torch.float64, device=self.device)
        # Validate the scores and record what later rebuilds need (row maxima,
        # rows without any finite score, whether -inf occurs at all) in the
        # same pass that builds the kernel.
        self.row_max = torch.empty(self.n, dtype=self.cdt, device=self.device)
        self.empty = torch.empty(self.n, dtype=torch.bool, device=self.device)
        self.has_zeros = False
        # Columns some sample can join with nonzero probability (see
        # _note_zeros), and where the -inf entries are, kept to measure the
        # plan's mass on them at the end (in-place, the scores are gone).
        self.reach = torch.zeros(self.k, dtype=torch.bool, device=self.device)
        self._all_reach = False
        self.zero_rows = []
        gc = None if g is None else self.g.to(self.cdt)
        for start in range(0, self.n, self.block):
            stop = min(start + self.block, self.n)
            blk = S[start:stop]
            m, empty = _row_max(blk)
            self.row_max[start:stop] = m
            self.empty[start:stop] = empty
            # (A row minimum is much cheaper than isneginf(blk).any().)
            has_zero = torch.isneginf(blk.amin(dim=1))
            zeros = bool(has_zero.any())
            self.has_zeros = self.has_zeros or zeros
            if zeros:
                self._note_zeros(blk, start, has_zero, empty)
            else:
                self._all_reach = True
            if not streamed:
                self._write(start, stop, gc, empty, zeros)
        self.has_empty = bool(self.empty.any())
        if self._all_reach:
            self.reach.fill_(True)
        if streamed:
            self.shift.copy_(self.row_max.double() * lam)
        self.compiled = (
            not streamed
            and self.device.type == "cpu"
            and self.n * self.k >= _COMPILED_MIN_ENTRIES
        )

    def _note_zeros(self, blk, start, has_zero, empty):
        """Record what a block of scores with -inf entries implies.

        A column is reachable when some row gives it a finite score, or some
        row is entirely -inf (uniform by convention). Blocks without -inf
        reach every column, so the column maxima are only taken here, and
        only until every column is reached. The rows with some, but not
        only, -inf entries are listed for :meth:`zero_mass`; a kernel stored
        in the scores' own buffer also keeps their -inf pattern, one bit per
        entry, since the scores are overwritten.
        """
        if not self._all_reach:
            if bool(empty.any()):
                self._all_reach = True
            else:
                self.reach |= blk.amax(dim=0) > -math.inf
                self._all_reach = bool(self.reach.all())
        rows = has_zero & ~empty
        local = None
        if not bool(rows.all()):
            local = rows.nonzero().squeeze(1)
            if not local.numel():
                return
        packed = None
        if self.payload:
            packed = _pack_bits(torch.isneginf(blk if local is None else blk[local]))
        self.zero_rows.append((start, start + blk.shape[0], local, packed))

    def zero_mass(self, a, b):
        """Mass of the plan ``a[i] W[i, j] b[j]`` on -inf scores, per cluster.

        In units of samples (float64): each row of ``diag(a) W diag(b)``
        sums to one, for ``a = 1 / (W b)`` as the last pass left it. The
        working kernel gives -inf scores a tiny but nonzero value (a last
        resort, so that an infeasible problem still yields labels), while
        the plan the scalings describe, ``exp(log_alpha + lam * scores +
        log_beta)``, is zero there. One pass over the rows with -inf
        entries.
        """
        z = torch.zeros(self.k, dtype=self.cdt, device=self.device)
        g = self.g.to(self.cdt) if self.streamed else None
        for start, stop, local, packed in self.zero_rows:
            # The mask goes into whichever scratch block the kernel rows
            # do not occupy, as 0/1 in the compute dtype (multiplying by a
            # boolean mask is several times slower).
            if self.streamed:
                w, buf = self._stream_block(start, stop, g), self.out
            else:
                w, buf = self.W[start:stop], self.work
            ar = a[start:stop]
            if local is not None:
                w, ar = w[local], ar[local]
            buf = buf[: w.shape[0]]
            if packed is not None:
                torch.ne(_unpack_bits(packed, self.k), 0, out=buf)
            else:
                s = self.S[start:stop]
                torch.eq(s if local is None else s[local], -math.inf, out=buf)
            z.addmv_(buf.mul_(w).t(), ar)
        return z.double() * b.double()

    def _scratch(self):
        # Two reused blocks: ``work`` for the kernel's own blocks (building,
        # streaming, absorbing), ``out`` for what callers compute from them.
        # A fresh multi-megabyte temporary per block costs page faults on
        # every allocation on CPU, as much time as the arithmetic itself.
        shape = (self.block, self.k)
        self.work = torch.empty(shape, dtype=self.cdt, device=self.device)
        self.out = torch.empty(shape, dtype=self.cdt, device=self.device)

    def _shifted(self, start, stop):
        """Scores ``start:stop`` minus their row maxima, in the work block.

        Subtracting while copying saves a pass; ``S`` is left intact.
        """
        m = self.row_max[start:stop, None]
        return torch.sub(self.S[start:stop], m, out=self.work[: stop - start])

    def _log_block(self, x, rows, g, empty, zeros, shifted=False):
        """``lam * (x - row_max) + g`` in place, for a block ``x`` of scores.

        A row of scores that is entirely -inf carries no preference: it is
        made uniform (zero). Other -inf entries (probability zero) rank
        ``_ZERO_GAP`` below the row's least likely cluster: last resort, but
        reachable, so that every cluster can be filled. Shifting before
        scaling means ``lam * S`` never overflows. ``shifted``: the row
        maxima are already subtracted.
        """
        if not shifted:
            x.sub_(self.row_max[rows, None])
        if empty is not None and empty.any():
            x[empty] = 0.0  # (the row maximum of such a row is 0)
        x.mul_(self.lam)
        if zeros:
            zero = torch.isneginf(x)
            if zero.any():
                low = torch.where(zero, torch.zeros_like(x), x).amin(dim=1)
                x = torch.where(zero, (low - _ZERO_GAP)[:, None], x)
        if g is not None:
            x.add_(g)
        return x

    def _peak_at_zero(self, x, rows, g):
        """Make each row's largest log-kernel value 0; record ``shift[rows]``.

        Without a folded scaling ``g`` the rows already peak at 0 (the row
        maxima were subtracted before scaling by ``lam``).
        """
        h = self.row_max[rows].double() * self.lam
        if g is not None:
            hg = x.amax(dim=1)
            x.sub_(hg[:, None])
            h += hg.double()
        self.shift[rows] = h
        return x

    def _write(self, start, stop, g, empty, zeros):
        """Build kernel rows ``start:stop`` from the scores."""
        rows = slice(start, stop)
        x = self._log_block(self._shifted(start, stop), rows, g, empty, zeros, shifted=True)
        x = self._peak_at_zero(x, rows, g)
        if self.payload:
            tmp = self.out[: stop - start]
            self.W[rows].copy_(_to_kernel_(x, self.floor, True, tmp))
        else:
            # Straight into W: clamping first keeps exp() out of the
            # underflow range, where it is many times slower. (Unlike the
            # payload encoding, nothing reads a clamped entry back exactly.)
            torch.exp(x.clamp_(min=-self.floor), out=self.W[rows])

    def _build(self, g):
        """Rewrite ``W`` from the scores for the folded scaling ``g``."""
        g = g.to(self.cdt)
        for start in range(0, self.n, self.block):
            stop = min(start + self.block, self.n)
            empty = self.empty[start:stop] if self.has_empty else None
            self._write(start, stop, g, empty, self.has_zeros)

    def _stream_block(self, start, stop, g):
        """Kernel rows ``start:stop`` computed from the scores (streamed)."""
        rows = slice(start, stop)
        x = self._log_block(
            self.work[: stop - start].copy_(self.S[rows]), rows, g,
            self.empty[rows] if self.has_empty else None, self.has_zeros,
        )
        return self._peak_at_zero(x, rows, g).clamp_(min=-self.floor).exp_()

    def blocks(self):
        """Yield ``(start, stop, kernel rows in the compute dtype)``.

        A streamed block lives in ``work`` and is overwritten by the next one.
        """
        g = self.g.to(self.cdt) if self.streamed else None
        for start in range(0, self.n, self.block):
            stop = min(start + self.block, self.n)
            if self.streamed:
                yield start, stop, self._stream_block(start, stop, g)
            else:
                yield start, stop, self.W[start:stop].to(self.cdt)

    def fused_pass(self, b, a, v):
        """One Sinkhorn iteration's pass over the kernel, writing ``a``, ``v``.

        For each block of rows: ``u = W_blk @ b`` (row sums for the current
        column scaling), ``a = 1 / u`` (rows then sum to one) and
        ``v += W_blk.T @ a`` (column sums for the new row scaling). The block
        is read twice, the second time from cache. Nothing of size N x K is
        allocated. Large stored CPU kernels run the compiled equivalent,
        which reads each row once (:mod:`sklearn_sela._fused_pass`).
        """
        if self.compiled:
            from . import _fused_pass

            n_threads = min(torch.get_num_threads(), _fused_pass.max_threads())
            _fused_pass.fused_pass(
                self.W.detach().numpy(), b.numpy(), a.numpy(), v.numpy(), n_threads
            )
            return
        v.zero_()
        for start, stop, blk in self.blocks():
            ab = a[start:stop]
            torch.mv(blk, b, out=ab)
            ab.reciprocal_()
            v.addmv_(blk.t(), ab)

    def absorb(self, log_b):
        """Fold the column scaling ``exp(log_b)`` into the kernel."""
        self.g += log_b
        if self.streamed:
            return  # the next pass computes its blocks with the new g
        if self.W is not self.S:
            # Rebuilding from the scores restores clamped entries exactly.
            self._build(self.g)
            return
        lb = log_b.to(self.cdt)
        for start in range(0, self.n, self.block):
            stop = min(start + self.block, self.n)
            x = self.work[: stop - start].copy_(self.W[start:stop])
            tmp = self.out[: stop - start]
            x = _to_log_kernel_(x, self.floor, self.payload, tmp).add_(lb)
            h = x.amax(dim=1)
            x.sub_(h[:, None])
            _to_kernel_(x, self.floor, self.payload, tmp)
            self.W[start:stop].copy_(x)
            self.shift[start:stop] += h.double()

    def log_rows(self, idx, log_b):
        """``log(W[idx] * b)`` up to per-row constants, in the compute dtype."""
        if self.streamed:
            return self._log_block(
                self.S[idx].to(self.cdt), idx, (self.g + log_b).to(self.cdt),
                self.empty[idx] if self.has_empty else None, self.has_zeros,
            )
        # Payload-encoded floors decode to their (tiny) differences in log.
        q = torch.index_select(self.W, 0, idx, out=self.out[: idx.numel()])
        return q.log_().add_(log_b.to(self.cdt))


class _StoredKernel(_Kernel):
    """A kernel matrix already built (no scores behind it)."""

    def __init__(self, W, block):
        self.S = self.W = W
        self.streamed = False
        self.n, self.k = W.shape
        self.shape, self.device = W.shape, W.device
        self.cdt = _compute_dtype(W.dtype)
        self.block = block
        self._scratch()


def _relaxation_gains(target, col, delta, omega):
    """Increases of the dual objective from the column steps ``delta`` and
    ``omega * delta``.

    With ``alpha`` fixed at its current (exact) value, the dual
    ``D(alpha, beta) = sum_j t_j beta_j + sum_i alpha_i -
    sum_ij exp(alpha_i + beta_j) W_ij`` changes by
    ``sum_j [omega t_j delta_j - col_j expm1(omega delta_j)]`` when
    ``beta += omega * delta``, ``delta = log(t / col)``. For ``omega = 1``
    this is the generalised KL divergence of ``col`` from ``t`` (plain
    Sinkhorn's step, the exact maximiser in ``beta``). The next row update
    can only increase the dual further, so requiring at least a fixed
    fraction of the plain gain bounds the over-relaxed iteration's progress
    below by the plain one's, up to that fraction.

    Returns the gains of the plain step and of ``omega``'s, computed
    together (one synchronisation: on small problems the per-call overhead,
    not the arithmetic, is what this costs).
    """
    steps = torch.tensor([[1.0], [omega]], dtype=delta.dtype, device=delta.device)
    sd = steps * delta
    plain, relaxed = (sd * target - col * torch.expm1(sd)).sum(dim=1).tolist()
    return plain, relaxed


def _topk_labels(kernel, log_b, rows, open_mask, block=None):
    """Best open cluster and log-margin to the next one, for some rows.

    ``kernel`` is a :class:`_Kernel` (or a kernel matrix, in which case
    ``block`` is needed); ``log_b`` the pending log column scaling.
    """
    if isinstance(kernel, torch.Tensor):
        kernel = _StoredKernel(kernel, block)
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


def _balanced_labels(kernel, log_b, proportions):
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


def _argmax_labels(kernel, b):
    labels = torch.empty(kernel.n, dtype=torch.int64, device=kernel.device)
    for start, stop, blk in kernel.blocks():
        # max(dim).indices: the first maximum, like argmax, twice as fast.
        q = torch.mul(blk, b, out=kernel.out[: stop - start])
        labels[start:stop] = torch.max(q, dim=1).indices
    return labels


def _is_number(x):
    return isinstance(x, (int, float, np.number)) and not isinstance(x, (bool, np.bool_))


def _validate_scalar_params(lam, tol, max_iter):
    if not (_is_number(lam) and np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite number > 0, got {lam!r}.")
    if not (_is_number(tol) and tol >= 0):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}.")
    if not (
        isinstance(max_iter, (int, np.integer))
        and not isinstance(max_iter, bool)
        and max_iter >= 1
    ):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}.")


def _global_sum(x, process_group):
    if process_group is not None:
        torch.distributed.all_reduce(x, group=process_group)
    return x


def _global_max(x, process_group):
    if process_group is not None:
        torch.distributed.all_reduce(
            x, op=torch.distributed.ReduceOp.MAX, group=process_group
        )
    return x


def _show(indices, limit=10):
    """``"1, 4, 7"``, shortened to ``limit`` indices."""
    indices = [int(i) for i in indices]
    text = ", ".join(map(str, indices[:limit]))
    return text + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def _check_reachable(kernel, proportions, n_total, process_group):
    """Raise if some cluster has probability zero for every sample.

    Such a cluster cannot get its target size from samples that may join
    it; the solver would fill it with samples of probability zero anyway
    (their -inf scores are a last resort, see the module docstring).
    """
    reach = kernel.reach
    if process_group is not None:
        # Another rank's rows may reach the cluster.
        reach = _global_max(reach.to(torch.float32), process_group) > 0
    if bool(reach.all()):
        return
    bad = (~reach).nonzero().squeeze(1).tolist()
    k = kernel.k
    uniform = bool(np.allclose(proportions, 1.0 / k, rtol=0, atol=1e-12))
    if uniform:
        size = f"the equal-size constraint ({n_total} / {k} samples per cluster)"
    else:
        size = "the cluster sizes set by cluster_proportions"
    raise ValueError(
        f"Cluster(s) {_show(bad)} have score -inf (probability zero) for every "
        f"sample, so no sample can join them and {size} cannot be met. "
        f"Remove these columns from the scores (and their entries from "
        f"cluster_proportions; a proportion of 0 is not allowed), or give "
        f"them a finite score for some samples."
    )


def sinkhorn_knopp(
    scores,
    *,
    lam=25.0,
    cluster_proportions=None,
    tol=1e-3,
    max_iter=1000,
    warm_start=None,
    assign="argmax",
    return_soft=False,
    inplace=False,
    process_group=None,
):
    """Equipartitioned label assignment by Sinkhorn-Knopp matrix scaling.

    Solves the entropy-regularised transport problem of SeLa (Asano et al.,
    ICLR 2020, eq. 6-8): finds ``Q = diag(alpha) P**lam diag(beta)`` whose
    rows sum to ``1/N`` and whose columns sum to the cluster proportions, and
    returns hard labels from it.

    Parameters
    ----------
    scores : ndarray or Tensor of shape (n_samples, n_clusters)
        Log-probabilities ``log p(y | x_i)``, or any scores defined up to a
        per-row constant (logits). ``-inf`` means probability zero; a row that
        is entirely ``-inf`` is treated as uniform. Every cluster needs a
        finite score for some sample (or a row of ``-inf`` only); if too few
        samples may join a cluster for its target size, the labels still
        use ``-inf`` scores as a last resort, but the result is not
        ``converged``. float16, bfloat16, float32
        and float64 are accepted, on CPU or CUDA. Not modified unless
        ``inplace=True``.
    lam : float, default=25.0
        Inverse regularisation strength lambda (the paper uses 25). Larger
        values approach the exact transport problem and need more iterations.
    cluster_proportions : array-like of shape (n_clusters,), default=None
        Target fraction of samples per cluster (a prior on cluster sizes),
        positive and summing to one. Uniform (equipartition) when None.
    tol : float, default=1e-3
        Stop when the L1 error of the cluster marginal (the sample marginal
        being exact after every iteration) is at most ``tol``. The error is
        in units of total mass, so it is between 0 and 2. float32 working
        matrices (all but float64 input) cannot resolve much below ``1e-6``.
    max_iter : int, default=1000
        Maximum number of scaling iterations. A
        :class:`~sklearn.exceptions.ConvergenceWarning` is raised when it is
        reached before ``tol``.
    warm_start : SinkhornResult or array-like of shape (n_clusters,), default=None
        A previous result, or its ``log_beta``. Re-labelling after the model
        has changed a little then needs a fraction of the cold iterations.
    assign : {"argmax", "balanced"}, default="argmax"
        How hard labels are read from ``Q``. ``"argmax"`` takes the largest
        entry per sample (approximately balanced); ``"balanced"`` returns an
        exact partition with cluster sizes from :func:`balanced_sizes`
        (``floor(N/K)`` or ``ceil(N/K)`` each under equipartition), by greedy
        rounding of ``Q`` that only revisits the samples argmax put into
        over-full clusters.
    return_soft : bool, default=False
        Also return the soft assignments (rows of ``Q`` normalised to sum to
        one) as ``result.soft``. This is the solver's working matrix, so it
        costs no extra memory, but it is kept alive.
    inplace : bool, default=False
        Use ``scores`` itself as the working matrix instead of allocating one
        (it must be a writable, C-contiguous float tensor/array). On return,
        ``scores`` holds the soft assignments (``result.soft``); its original
        values are lost. This halves peak memory, e.g. ImageNet-scale
        N=1,281,167, K=3,000 in float32 (15.4 GB) fits a 24 GB machine. A
        float16/bfloat16 buffer keeps the scores until the end and each pass
        recomputes the kernel from them (exact, but each iteration costs a
        few elementwise operations per entry more).
    process_group : torch.distributed.ProcessGroup or None, default=None
        When given, ``scores`` is this rank's shard of the rows (samples) of
        a matrix distributed over the group; only K-length vectors are
        exchanged per iteration. Use ``torch.distributed.group.WORLD`` for
        the default group. Every rank must call with its shard (the global
        matrix is the shards concatenated in rank order); ``labels``,
        ``log_alpha`` and ``soft`` are this rank's rows, and
        ``assign="balanced"`` gives exact global cluster sizes (see
        :func:`sklearn_sela.distributed.balanced_labels_distributed`).

    Returns
    -------
    result : SinkhornResult
        Labels, scaling vectors (log domain), number of iterations,
        convergence flag, final marginal error, and optionally soft
        assignments.

    Raises
    ------
    ValueError
        If ``scores`` is not 2-D, has fewer samples than clusters or no
        cluster, contains NaN or +inf; if some cluster's scores are ``-inf``
        for every sample (over all ranks with ``process_group``), as no
        sample can join it (with ``inplace=True`` the buffer has then been
        overwritten); if ``lam <= 0``; if ``cluster_proportions`` has the
        wrong length, entries that are not positive or does not sum to one;
        if ``warm_start`` has the wrong length or is not finite.

    Warns
    -----
    ConvergenceWarning
        If ``max_iter`` is reached before ``tol``, or if the plan only meets
        the target sizes by using ``-inf`` scores (too few samples may join
        some cluster); ``result.converged`` is then False.

    See Also
    --------
    soft_assignments : Rows of Q for any subset of samples from the scores.
    sklearn_sela.SinkhornAssigner : scikit-learn estimator over this solver.

    Notes
    -----
    Each iteration costs one streaming pass over the ``N x K`` working matrix
    (the row update and the column sums share it), the matrix-vector
    iteration of the paper ``alpha <- 1 / (P**lam beta)``,
    ``beta <- c / (P**lam.T alpha)``, with the column update over-relaxed
    under a safeguard that keeps the dual objective increasing. The kernel is
    built with a per-row shift in the log domain and a floor, so float32 is
    safe for any ``lam`` and any scores; see the module docstring for details.
    Apart from the working matrix (none with ``inplace=True``), memory is
    ``O(N + K)`` plus a few MB of blocks.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_sela import sinkhorn_knopp
    >>> rng = np.random.default_rng(0)
    >>> logp = np.log(rng.dirichlet(np.ones(4), size=100))
    >>> res = sinkhorn_knopp(logp, assign="balanced")
    >>> np.bincount(res.labels)
    array([25, 25, 25, 25])
    """
    _validate_scalar_params(lam, tol, max_iter)
    lam = float(lam)
    if assign not in ("argmax", "balanced"):
        raise ValueError(f"assign must be 'argmax' or 'balanced', got {assign!r}.")
    S, is_torch = _as_tensor(scores, "scores")
    if S.ndim != 2:
        raise ValueError(
            f"scores must be a 2-D (n_samples, n_clusters) matrix, got "
            f"{S.ndim}-D with shape {tuple(S.shape)}."
        )
    if not S.is_floating_point():
        raise ValueError(f"scores must be a floating point matrix, got dtype {S.dtype}.")
    n_local, k = S.shape
    if k < 1:
        raise ValueError("scores must have at least one cluster (column), got 0.")
    n_total = _global_sum(
        torch.tensor([n_local], dtype=torch.float64, device=S.device), process_group
    )
    n_total = int(n_total.item())
    if n_total < k:
        raise ValueError(
            f"n_samples={n_total} must be >= n_clusters={k}: an equipartition "
            f"needs at least one sample per cluster."
        )
    proportions = _check_proportions(cluster_proportions, k)

    if inplace:
        if S.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"inplace=True needs a float buffer, got {S.dtype}.")
        if not S.is_contiguous():
            raise ValueError("inplace=True needs a C-contiguous scores buffer.")
        if not is_torch and not scores.flags.writeable:
            raise ValueError("inplace=True needs a writable scores array.")
        W = S
    else:
        work = S.dtype if S.dtype in (torch.float32, torch.float64) else torch.float32
        W = _empty_matrix((n_local, k), work, S.device)
    cdt = _compute_dtype(W.dtype)
    # A half-precision buffer cannot hold the kernel faithfully: stream it.
    streamed = W.dtype != cdt
    payload = inplace and not streamed

    if warm_start is None:
        log_beta = None
    else:
        wb = warm_start.log_beta if isinstance(warm_start, SinkhornResult) else warm_start
        wb = torch.as_tensor(np.asarray(wb) if not isinstance(wb, torch.Tensor) else wb)
        if wb.shape != (k,):
            raise ValueError(
                f"warm_start must hold one log-scaling per cluster: expected "
                f"shape ({k},), got {tuple(wb.shape)}."
            )
        log_beta = wb.to(device=S.device, dtype=torch.float64).clone()
        if not torch.isfinite(log_beta).all():
            raise ValueError("warm_start must be finite.")
        log_beta -= log_beta.max()
    kernel = _Kernel(S, W, lam, log_beta, payload, streamed)
    _check_reachable(kernel, proportions, n_total, process_group)

    target = torch.as_tensor(proportions * n_total, dtype=torch.float64, device=S.device)
    target_c = target.to(cdt)
    # Pending column scaling b = exp(log_b), not yet folded into the kernel.
    log_b = torch.zeros(k, dtype=torch.float64, device=S.device)
    b = torch.ones(k, dtype=cdt, device=S.device)
    a = torch.empty(n_local, dtype=cdt, device=S.device)
    v = torch.empty(k, dtype=cdt, device=S.device)
    omega = 1.0
    err_mid = math.inf
    converged = False
    err = math.inf
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        kernel.fused_pass(b, a, v)
        _global_sum(v, process_group)
        # (a, b) has exact row sums; col = b * v are its column sums.
        col_c = b * v
        err = float((col_c - target_c).abs().sum()) / n_total
        if err <= tol:
            converged = True
            break
        if n_iter == max_iter:
            break
        if n_iter == _RELAX_AFTER // 2:
            err_mid = err
        elif n_iter == _RELAX_AFTER:
            # Per-iteration rate of plain Sinkhorn; >= 1 on a plateau.
            rate = (err / err_mid) ** (2.0 / _RELAX_AFTER)
            omega = min(_MAX_OMEGA, 2.0 / (1.0 + math.sqrt(max(0.0, 1.0 - rate))))
        col = col_c.double()
        delta = (target / col).log_()
        step = omega
        if step > 1.0:
            plain, relaxed = _relaxation_gains(target, col, delta, step)
            if not relaxed >= _SAFEGUARD * plain:
                step = 1.0
        log_b += step * delta
        # Fix the gauge (alpha * s, beta / s): the largest b is exp(_B_TOP).
        log_b -= log_b.max() - _B_TOP
        if streamed or float(log_b.min()) < _B_TOP - _ABSORB:
            kernel.absorb(log_b)
            log_b.zero_()
        b = log_b.exp().to(cdt)

    loop_converged = converged
    zero_note = ""
    if kernel.zero_rows or process_group is not None:
        # -inf scores are a last resort of the working kernel, but the plan
        # the scalings describe, exp(log_alpha + lam * scores + log_beta),
        # is zero there: measure both of its marginals without them (every
        # rank takes part). The sample marginal then misses exactly that
        # mass, and the error can only grow. (Before a is overwritten.)
        zero = _global_sum(kernel.zero_mass(a, b), process_group)
        col = col_c.double() - zero
        lost = float(zero.sum())
        err = (float((col - target).abs().sum()) + lost) / n_total
        converged = converged and err <= tol
        if lost > 0.5 * tol * n_total:
            short = (target - col).cpu().numpy()
            bad = np.flatnonzero(short >= 0.5)
            bad = bad if bad.size else [int(np.argmax(short))]
            zero_note = (
                f" The plan puts {lost / n_total:.3g} of its mass on scores "
                f"that are -inf (probability zero), mostly in cluster(s) "
                f"{_show(bad)}: too few samples may join them to reach their "
                f"target sizes, and the labels put samples of probability "
                f"zero there."
            )
    if not converged:
        if loop_converged:
            msg = (
                f"Sinkhorn-Knopp found no plan within tol={tol:g} of the "
                f"target marginals using only scores above -inf (marginal "
                f"error {err:.3g}).{zero_note}"
            )
        else:
            msg = (
                f"Sinkhorn-Knopp did not converge in max_iter={max_iter} "
                f"iterations (marginal error {err:.3g} > tol={tol:g}); "
                f"increase max_iter, lower lam or raise tol.{zero_note}"
            )
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)

    # Q[i, j] = a[i] W[i, j] b[j] / N with W = exp(lam S + g - shift).
    # (a is overwritten when float64: it is not needed any more.)
    log_alpha = a.double().log_() - kernel.shift - math.log(n_total)
    log_beta = kernel.g + log_b
    # Same gauge as warm starts: max(log_beta) = 0, compensated in log_alpha.
    top = log_beta.max()
    log_beta -= top
    log_alpha += top

    if assign == "balanced":
        if process_group is not None:
            # Lazy import: the only place this module reaches up the package.
            from .distributed import balanced_labels_distributed

            labels = balanced_labels_distributed(
                kernel, log_b, proportions, kernel.block, process_group
            )
        else:
            labels = _balanced_labels(kernel, log_b, proportions)
    else:
        labels = _argmax_labels(kernel, b)

    soft = None
    if return_soft or inplace:
        for start, stop, q in kernel.blocks():
            q = torch.mul(q, b, out=kernel.out[: stop - start])
            q /= q.sum(dim=1, keepdim=True)
            W[start:stop].copy_(q)
        soft = W

    def out(t):
        if is_torch:
            return t
        if t is W and inplace:
            return scores
        return t.cpu().numpy()

    return SinkhornResult(
        labels=out(labels),
        log_alpha=out(log_alpha),
        log_beta=out(log_beta),
        n_iter=n_iter,
        converged=converged,
        marginal_error=err,
        soft=None if soft is None else out(soft),
    )


def soft_assignments(scores, log_beta, *, lam=25.0, rows=None):
    """Soft balanced assignments ``Q[i] / Q[i].sum()`` for some samples.

    Rows of ``Q`` normalised to one do not depend on the per-sample scaling,
    so they follow from the scores and the cluster scaling alone: ``softmax(
    lam * scores[i] + log_beta)``.

    Parameters
    ----------
    scores : ndarray or Tensor of shape (n_samples, n_clusters)
        The scores passed to :func:`sinkhorn_knopp` (or new samples' scores).
    log_beta : array-like of shape (n_clusters,)
        ``SinkhornResult.log_beta``.
    lam : float, default=25.0
        The ``lam`` used for the solve.
    rows : array-like of int or slice, default=None
        Which samples; all when None.

    Returns
    -------
    Q : ndarray or Tensor of shape (n_rows, n_clusters)
        float32 (float64 for float64 scores); each row sums to one. Only this
        matrix is allocated.

    Raises
    ------
    ValueError
        If ``scores`` is not 2-D or contains NaN or +inf, if ``log_beta`` has
        the wrong shape or if ``lam <= 0``.
    """
    _validate_scalar_params(lam, 0.0, 1)
    S, is_torch = _as_tensor(scores, "scores")
    if S.ndim != 2:
        raise ValueError(f"scores must be 2-D, got shape {tuple(S.shape)}.")
    if rows is not None:
        S = S[torch.as_tensor(rows) if not isinstance(rows, slice) else rows]
    lb = torch.as_tensor(
        log_beta if isinstance(log_beta, torch.Tensor) else np.asarray(log_beta)
    )
    if lb.shape != (S.shape[1],):
        raise ValueError(
            f"log_beta must have shape ({S.shape[1]},), got {tuple(lb.shape)}."
        )
    cdt = _compute_dtype(S.dtype)
    q = S.to(cdt, copy=True)
    m = q.amax(dim=1)
    if torch.isnan(m).any() or torch.isposinf(m).any():
        raise ValueError("Input scores contain NaN or +inf.")
    # Same conventions as the solver: shift before scaling (no overflow), an
    # all -inf row is uniform.
    empty = torch.isneginf(m)
    if empty.any():
        q[empty] = 0.0
        m = torch.where(empty, torch.zeros_like(m), m)
    q.sub_(m[:, None]).mul_(float(lam)).add_(lb.to(device=S.device, dtype=cdt))
    q.sub_(q.amax(dim=1, keepdim=True)).exp_()
    q.div_(q.sum(dim=1, keepdim=True))
    return q if is_torch else q.cpu().numpy()
