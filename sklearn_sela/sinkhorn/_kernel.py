"""The working kernel of the Sinkhorn solver: built, streamed and absorbed.

The kernel is ``W[i, j] = exp(lam * S[i, j] + g[j] - h[i])`` for scores
``S``, the part ``g`` of the column scaling folded in so far and per-row
shifts ``h`` that make each row's largest entry one. :class:`Kernel` builds
it (in the caller's buffer with ``inplace=True``), gives it out in row
blocks, runs one iteration's pass over it (:meth:`Kernel.fused_pass`) and
folds the column scaling into it when that leaves its safe range
(:meth:`Kernel.absorb`). The reasons for the floor, the payload bits and
the streamed half-precision case are in :mod:`sklearn_sela.sinkhorn`.
"""

import math

import numpy as np
import torch

# Kernel floor F (nats below the row maximum): exp(-60) ~ 8.8e-27.
_LOG_FLOOR = 60.0
# A -inf score (probability zero) is given lam * score = (the row's lowest
# finite value) - _ZERO_GAP: last resort, but reachable, so that every
# cluster can be filled. Finite scores are used as they are, however small.
_ZERO_GAP = 60.0
# In-place float32/float64 buffers: a clamped entry at x < -F nats is stored
# as exp(-F) * (1 - _PAYLOAD * min(x_gap, _PAYLOAD_RANGE) / _PAYLOAD_RANGE),
# x_gap = -F - x. float32's 24-bit mantissa resolves the gap to about
# _PAYLOAD_RANGE * 2**-13 ~ 0.1 nats (of lam * scores), while the kernel
# value moves by less than 0.1 %.
_PAYLOAD = 2.0**-10
_PAYLOAD_RANGE = 1024.0
# Bytes of kernel processed per block in the fused pass: small enough to stay
# in a CPU core's L2 cache between the two matrix-vector products of a block,
# large enough that per-call overhead (and the OpenMP barrier of every call,
# costly when other processes share the cores) stays small.
_CPU_BLOCK_BYTES = 2 << 20
_CUDA_BLOCK_BYTES = 64 << 20
# Entries per product in the pass over a stored kernel on a GPU. Its two
# matrix-vector products run on views of the kernel (no scratch block), so
# the blocks can be large: a GPU streams a whole block in the time the host
# takes to launch a few kernels, and a pass over small blocks is bound by the
# launches (three per block). One block up to 2**28 entries (1 GB of
# float32; below 2**31 entries per call, the safe size for BLAS indices).
_DEVICE_PASS_ENTRIES = 1 << 28
# Devices whose stored kernels take that pass; a test adds "cpu".
_LARGE_PASS_DEVICES = ("cuda",)
# Stored CPU kernels of at least this many entries run the compiled pass of
# ``_fused_pass`` (one read of the matrix, one fork and join, against about
# 1.6 to 2 times a plain mv for torch's blockwise pass), and float32 ones
# are also built by it; smaller ones use torch, whose pass is then a few
# calls and needs no compilation.
_COMPILED_MIN_ENTRIES = 1 << 22
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _block_rows(W):
    budget = _CUDA_BLOCK_BYTES if W.is_cuda else _CPU_BLOCK_BYTES
    row_bytes = W.shape[1] * W.element_size()
    return int(max(64, min(W.shape[0], budget // max(row_bytes, 1))))


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _floor_value(floor, dtype):
    # exp(-floor) rounded to the compute dtype, as clamp() compares in it.
    return float(torch.tensor(-floor, dtype=dtype).exp())


def empty_matrix(shape, dtype, device):
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
    return _checked_row_max(x.amax(dim=1))


def _checked_row_max(m):
    """:func:`_row_max` from the raw row maxima ``m`` (NaN where a row has one)."""
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


class Kernel:
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
        self.cdt = compute_dtype(W.dtype)
        self.floor = _LOG_FLOOR
        self.block = _block_rows(W)
        self.pass_rows = self._pass_rows()
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
        self.compiled = (
            not streamed
            and self.device.type == "cpu"
            and self.n * self.k >= _COMPILED_MIN_ENTRIES
        )
        # The compiled build: float32 scores into a separate float32 kernel.
        self._compiled_build = (
            self.compiled
            and not payload
            and S.dtype == W.dtype == torch.float32
            and S.is_contiguous()
            and W.is_contiguous()
        )
        if self._compiled_build:
            self._scan_compiled(g is not None)
        else:
            self._scan(g is not None)
        self.has_empty = bool(self.empty.any())
        if self._all_reach:
            self.reach.fill_(True)
        if streamed:
            self.shift.copy_(self.row_max.double() * lam)

    def _scan(self, warm):
        """Validate the scores, block by block, and build the kernel from them.

        ``warm``: build it with the folded scaling ``g``.
        """
        S, streamed = self.S, self.streamed
        gc = self.g.to(self.cdt) if warm else None
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

    def _scan_compiled(self, warm):
        """:meth:`_scan` as two compiled passes: row extremes, then the kernel.

        Torch's blockwise scan makes about ten library calls per 2 MB block,
        each a fork and join of its threads: cheap on idle cores, but each
        join waits for the slowest thread, a whole time slice when another
        process keeps the cores busy (see ``_fused_pass``).
        """
        from . import _fused_pass

        row_max, row_min = _fused_pass.row_extremes(
            self.S.detach().numpy(), self._threads()
        )
        m, empty = _checked_row_max(torch.from_numpy(row_max))
        self.row_max.copy_(m)
        self.empty.copy_(empty)
        has_zero = torch.isneginf(torch.from_numpy(row_min))
        self.has_zeros = bool(has_zero.any())
        # Rows the compiled build treats apart (-inf scores, maybe all).
        self._special = has_zero.numpy()
        if not self.has_zeros:
            self._all_reach = True
        else:
            for start in range(0, self.n, self.block):
                stop = min(start + self.block, self.n)
                if bool(has_zero[start:stop].any()):
                    self._note_zeros(
                        self.S[start:stop], start, has_zero[start:stop],
                        self.empty[start:stop],
                    )
                else:
                    self._all_reach = True
        self._build(self.g if warm else None)

    def _threads(self):
        # The compiled functions follow torch's intra-op thread setting.
        from . import _fused_pass

        return min(torch.get_num_threads(), _fused_pass.max_threads())

    def _pass_rows(self):
        """Rows per block in torch's pass over the kernel."""
        if self.streamed or self.device.type not in _LARGE_PASS_DEVICES:
            return self.block
        return max(1, min(self.n, _DEVICE_PASS_ENTRIES // max(self.k, 1)))

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
        """Rewrite ``W`` from the scores for the folded scaling ``g`` (or none)."""
        if self._compiled_build:
            from . import _fused_pass

            _fused_pass.build(
                self.S.detach().numpy(), self.W.detach().numpy(),
                self.row_max.numpy(), self.empty.numpy(), self._special,
                None if g is None else g.to(self.cdt).numpy(),
                self.lam, self.floor, _ZERO_GAP, self.shift.numpy(), self._threads(),
            )
            return
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
        ``v += W_blk.T @ a`` (column sums for the new row scaling). On the CPU
        the block is read twice, the second time from cache. Nothing of size N x K is
        allocated. Large stored CPU kernels run the compiled equivalent,
        which reads each row once (``_fused_pass``). Stored GPU kernels take
        the products over blocks of up to ``_DEVICE_PASS_ENTRIES`` (the
        whole matrix, up to 1 GB): three launches per block, no host
        synchronisation.
        """
        if self.compiled:
            # Lazy: numba's import and first compilation take ~2 s.
            from . import _fused_pass

            _fused_pass.fused_pass(
                self.W.detach().numpy(), b.numpy(), a.numpy(), v.numpy(), self._threads()
            )
            return
        if self.streamed:
            blocks = self.blocks()
        else:
            blocks = (
                (start, min(start + self.pass_rows, self.n))
                for start in range(0, self.n, self.pass_rows)
            )
            blocks = ((start, stop, self.W[start:stop]) for start, stop in blocks)
        for start, stop, blk in blocks:
            ab = a[start:stop]
            torch.mv(blk, b, out=ab)
            ab.reciprocal_()
            if start == 0:
                torch.mv(blk.t(), ab, out=v)
            else:
                v.addmv_(blk.t(), ab)

    def argmax_labels(self, b):
        """Labels of a compiled kernel: per row, the first largest ``W * b``.

        The same labels as ``_rounding.argmax_labels``, in one compiled
        pass instead of two torch calls per block.
        """
        from . import _fused_pass

        labels = _fused_pass.argmax_labels(
            self.W.detach().numpy(), b.numpy(), self._threads()
        )
        return torch.from_numpy(labels)

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


class StoredKernel(Kernel):
    """A kernel matrix already built (no scores behind it)."""

    def __init__(self, W, block):
        self.S = self.W = W
        self.streamed = False
        self.n, self.k = W.shape
        self.shape, self.device = W.shape, W.device
        self.cdt = compute_dtype(W.dtype)
        self.block = block
        self._scratch()

