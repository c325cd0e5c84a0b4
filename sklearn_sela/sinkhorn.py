"""Sinkhorn-Knopp solver for SeLa's equipartitioned label assignment.

This module is the numerical ground floor of the package: it works on plain
numpy arrays and torch tensors and imports nothing else from ``sklearn_sela``.

The problem (Asano et al., 2020, eq. 6-8) is, for an ``(N, K)`` matrix of
log-probabilities ``log P``,

.. math::

    \\min_{Q \\in U(r, c)} \\langle Q, -\\log P \\rangle + \\frac{1}{\\lambda}
    \\mathrm{KL}(Q \\,\\|\\, r c^\\top),

whose minimiser is ``Q = diag(alpha) P**lam diag(beta)`` with rows summing to
``1/N`` and columns summing to the cluster proportions ``c``.

Notes on the numerics
---------------------
* The matrix ``P**lam`` is never formed directly: each row is shifted in the
  log domain by its maximum before exponentiation, so every row of the working
  kernel has a largest entry of exactly one. Entries more than ``_LOG_FLOOR``
  nats below their row maximum are clamped to ``exp(-_LOG_FLOOR)`` rather than
  allowed to underflow: exact zeros would make a cluster that no sample
  currently prefers unreachable (division by zero, collapse), and subnormal
  floats make CPU arithmetic tens of times slower. The floor perturbs the
  transport plan by less than ``N * K * exp(-_LOG_FLOOR)`` in total mass.
* The scaling vectors are rescaled so that they stay near one; when the column
  scaling drifts past ``exp(+-_ABSORB)`` it is folded ("absorbed") into the
  kernel, which is then re-normalised row by row. Their cumulative logarithms
  are kept in float64 and returned, so that a later call can warm start.
* Each iteration makes one streaming pass over the kernel: for a block of rows
  the row scaling is computed from the current column scaling and immediately
  used to accumulate the column sums, while the block is still in cache.
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

# Kernel entries below exp(-_LOG_FLOOR) of their row maximum are clamped up to
# it. exp(-60) ~ 8.8e-27 keeps kernel * scaling products far from float32's
# subnormal range (1.2e-38) for scalings within exp(+-_ABSORB).
_LOG_FLOOR = 60.0
_ABSORB = 12.0
# Bytes of kernel processed per block in the fused pass: small enough to stay
# in a CPU's L2/L3 cache between the two matrix-vector products of a block.
_CPU_BLOCK_BYTES = 2 << 20
_CUDA_BLOCK_BYTES = 64 << 20


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
        Logarithm of the per-cluster scaling, float64. Pass it (or the whole
        result) as ``warm_start`` to a later call.
    n_iter : int
        Number of scaling iterations run.
    converged : bool
        Whether the marginal error fell below ``tol`` within ``max_iter``.
    marginal_error : float
        L1 distance between the cluster marginal of ``Q`` and the target
        proportions, the per-sample marginal being exact.
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
    """
    if cluster_proportions is None:
        proportions = np.full(n_clusters, 1.0 / n_clusters)
    else:
        proportions = np.asarray(cluster_proportions, dtype=np.float64)
    ideal = proportions * n_samples
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
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("cluster_proportions must be finite and non-negative.")
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


def _build_kernel(S, W, lam, g, block):
    """Write ``exp(clamp(lam * S + g - rowmax))`` into ``W``; return row maxima.

    ``S`` and ``W`` may be the same tensor (in-place mode). Returns the row
    shifts in float64; NaN or +inf in ``S`` shows up as a non-finite shift,
    which is cheaper than a separate validation pass.
    """
    n = S.shape[0]
    cdt = _compute_dtype(W.dtype)
    g = g.to(device=W.device, dtype=cdt)
    shifts = torch.empty(n, dtype=torch.float64, device=W.device)
    for start in range(0, n, block):
        stop = min(start + block, n)
        blk = S[start:stop].to(cdt, copy=True)
        blk.mul_(lam).add_(g)
        h = blk.amax(dim=1)
        # NaN propagates through amax: report it before anything is written.
        if torch.isnan(h).any():
            raise ValueError("Input scores contain NaN.")
        if torch.isposinf(h).any():
            raise ValueError(
                "Input scores contain +inf; pass log-probabilities or finite "
                "scores (-inf is allowed and means probability zero)."
            )
        # A row that is entirely -inf carries no preference: make it uniform.
        h = torch.where(torch.isneginf(h), torch.zeros_like(h), h)
        blk.sub_(h[:, None]).clamp_(min=-_LOG_FLOOR).exp_()
        W[start:stop].copy_(blk)
        shifts[start:stop] = h.double()
    return shifts


def _absorb(W, log_b, block):
    """Fold the column scaling ``exp(log_b)`` into ``W``; renormalise rows.

    Returns the per-row log shift that was removed (float64).
    """
    n = W.shape[0]
    cdt = _compute_dtype(W.dtype)
    log_b = log_b.to(cdt)
    shifts = torch.empty(n, dtype=torch.float64, device=W.device)
    for start in range(0, n, block):
        stop = min(start + block, n)
        blk = W[start:stop].to(cdt, copy=True)
        blk.log_().add_(log_b)
        h = blk.amax(dim=1)
        blk.sub_(h[:, None]).clamp_(min=-_LOG_FLOOR).exp_()
        W[start:stop].copy_(blk)
        shifts[start:stop] = h.double()
    return shifts


def _fused_pass(W, b, block):
    """One Sinkhorn iteration's pass over ``W``.

    For each block of rows: ``u = W_blk @ b`` (row sums for the current column
    scaling), ``a = 1 / u`` (rows then sum to one) and ``v += W_blk.T @ a``
    (column sums for the new row scaling). Returns ``(a, v)``.
    """
    n = W.shape[0]
    cdt = b.dtype
    a = torch.empty(n, dtype=cdt, device=W.device)
    v = torch.zeros_like(b)
    convert = W.dtype != cdt
    for start in range(0, n, block):
        blk = W[start : start + block]
        if convert:
            blk = blk.to(cdt)
        u = torch.mv(blk, b)
        torch.reciprocal(u, out=a[start : start + block])
        v.addmv_(blk.t(), a[start : start + block])
    return a, v


def _scaled_rows(W, b, rows):
    """Rows of ``W * b`` (proportional to rows of Q), in compute dtype."""
    return W[rows].to(b.dtype) * b


def _argmax_labels(W, b, block, top2=False):
    n = W.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=W.device)
    margin = torch.empty(n, dtype=torch.float64, device=W.device) if top2 else None
    for start in range(0, n, block):
        stop = min(start + block, n)
        q = W[start:stop].to(b.dtype) * b
        if top2 and W.shape[1] > 1:
            val, idx = q.topk(2, dim=1)
            labels[start:stop] = idx[:, 0]
            margin[start:stop] = (val[:, 0].log() - val[:, 1].log()).double()
        else:
            labels[start:stop] = q.argmax(dim=1)
            if top2:
                margin[start:stop] = math.inf
    return labels, margin


def _balanced_labels(W, b, sizes, block):
    """Labels with exactly ``sizes[j]`` samples in cluster ``j``.

    Greedy rounding of the Sinkhorn plan: every unassigned sample proposes to
    its best cluster that still has room; a cluster with more proposals than
    room keeps those that would lose most by moving (largest log-margin to
    their next choice) and closes. Each round closes a cluster or places every
    proposer, so at most K rounds run, and after the first one only the few
    samples that argmax put into over-full clusters are touched.
    """
    n, k = W.shape
    device = W.device
    sizes = torch.as_tensor(sizes, device=device)
    room = sizes.clone()
    labels = torch.full((n,), -1, dtype=torch.int64, device=device)
    open_mask = torch.ones(k, dtype=torch.bool, device=device)
    proposal, margin = _argmax_labels(W, b, block, top2=True)
    pending = torch.arange(n, device=device)
    while pending.numel():
        counts = torch.bincount(proposal, minlength=k)
        full = counts > room
        if not full.any():
            labels[pending] = proposal
            room -= counts
            break
        accept = ~full[proposal]
        labels[pending[accept]] = proposal[accept]
        room -= torch.bincount(proposal[accept], minlength=k)
        # Over-full clusters keep their `room` proposers with largest margin.
        rest = pending[~accept]
        rest_prop = proposal[~accept]
        rest_margin = margin[~accept]
        order = torch.argsort(rest_margin, descending=True, stable=True)
        order = order[torch.argsort(rest_prop[order], stable=True)]
        rest, rest_prop = rest[order], rest_prop[order]
        first = torch.searchsorted(rest_prop, rest_prop, right=False)
        rank = torch.arange(rest.numel(), device=device) - first
        keep = rank < room[rest_prop]
        labels[rest[keep]] = rest_prop[keep]
        room -= torch.bincount(rest_prop[keep], minlength=k)
        open_mask &= room > 0
        pending = rest[~keep]
        if not pending.numel():
            break
        q = _scaled_rows(W, b, pending).log()
        q[:, ~open_mask] = -math.inf
        if int(open_mask.sum()) > 1:
            val, idx = q.topk(2, dim=1)
            proposal = idx[:, 0]
            margin = (val[:, 0] - val[:, 1]).double()
        else:
            proposal = q.argmax(dim=1)
            margin = torch.zeros(pending.numel(), dtype=torch.float64, device=device)
    return labels


def _validate_scalar_params(lam, tol, max_iter):
    if not (isinstance(lam, (int, float, np.number)) and np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite number > 0, got {lam!r}.")
    if not (isinstance(tol, (int, float, np.number)) and tol >= 0):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}.")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}.")


def _global_sum(x, process_group):
    if process_group is not None:
        torch.distributed.all_reduce(x, group=process_group)
    return x


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
        per-row constant (logits). ``-inf`` means probability zero. float16,
        bfloat16, float32 and float64 are accepted, on CPU or CUDA. Not
        modified unless ``inplace=True``.
    lam : float, default=25.0
        Inverse regularisation strength lambda (the paper uses 25). Larger
        values approach the exact transport problem and need more iterations.
    cluster_proportions : array-like of shape (n_clusters,), default=None
        Target fraction of samples per cluster (a prior on cluster sizes),
        positive and summing to one. Uniform (equipartition) when None.
    tol : float, default=1e-3
        Stop when the L1 error of the cluster marginal (the sample marginal
        being exact after every iteration) is at most ``tol``. The error is
        in units of total mass, so it is between 0 and 2.
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
        N=1,281,167, K=3,000 in float32 (15.4 GB) fits a 24 GB machine.
    process_group : torch.distributed.ProcessGroup or None, default=None
        When given, ``scores`` is this rank's shard of the rows (samples) of
        a matrix distributed over the group; only K-length vectors are
        exchanged per iteration. Use ``torch.distributed.group.WORLD`` for
        the default group.

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
        cluster, contains NaN or +inf; if ``lam <= 0``; if
        ``cluster_proportions`` has the wrong length, negative entries or
        does not sum to one.

    See Also
    --------
    soft_assignments : Rows of Q for any subset of samples from the scores.
    sklearn_sela.SinkhornAssigner : scikit-learn estimator over this solver.

    Notes
    -----
    Each iteration costs one streaming pass over the ``N x K`` working matrix
    (the row update and the column sums share it), the matrix-vector
    iteration of the paper ``alpha <- 1 / (P**lam beta)``,
    ``beta <- c / (P**lam.T alpha)``. The kernel is built with a per-row shift
    in the log domain, so float32 is safe for any ``lam``; see the module
    docstring for details.

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
    if assign not in ("argmax", "balanced"):
        raise ValueError(f"assign must be 'argmax' or 'balanced', got {assign!r}.")
    S, is_torch = _as_tensor(scores, "scores")
    if S.ndim != 2:
        raise ValueError(
            f"scores must be a 2-D (n_samples, n_clusters) matrix, got "
            f"{S.ndim}-D with shape {tuple(S.shape)}."
        )
    if not (S.is_floating_point()):
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
        W = torch.empty((n_local, k), dtype=work, device=S.device)
    cdt = _compute_dtype(W.dtype)
    block = _block_rows(W)

    if warm_start is None:
        log_beta = torch.zeros(k, dtype=torch.float64, device=S.device)
    else:
        wb = warm_start.log_beta if isinstance(warm_start, SinkhornResult) else warm_start
        wb = torch.as_tensor(np.asarray(wb) if not isinstance(wb, torch.Tensor) else wb)
        if wb.shape != (k,):
            raise ValueError(
                f"warm_start must hold one log-scaling per cluster: expected "
                f"shape ({k},), got {tuple(wb.shape)}."
            )
        log_beta = wb.to(device=S.device, dtype=torch.float64).clone()
        log_beta -= log_beta.max()
    # log_alpha accumulates everything removed from the rows of lam * S.
    log_alpha = -_build_kernel(S, W, lam, log_beta, block)

    target = torch.as_tensor(proportions * n_total, dtype=cdt, device=S.device)
    b = torch.ones(k, dtype=cdt, device=S.device)
    converged = False
    err = math.inf
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        a, v = _fused_pass(W, b, block)
        _global_sum(v, process_group)
        # (a, b) has exact row sums; b * v are its column sums.
        err = float((b * v - target).abs().sum()) / n_total
        if err <= tol:
            converged = True
            break
        b = target / v
        # Fix the gauge (alpha * s, beta / s) so that b stays near one.
        b /= b.max()
        lb = b.log()
        if float(lb.min()) < -_ABSORB:
            log_alpha -= _absorb(W, lb, block)
            log_beta += lb.double()
            b = torch.ones_like(b)
    log_alpha += a.double().log() - math.log(n_total)
    log_beta += b.double().log()

    if not converged:
        warnings.warn(
            f"Sinkhorn-Knopp did not converge in max_iter={max_iter} iterations "
            f"(marginal error {err:.3g} > tol={tol:g}); increase max_iter, "
            f"lower lam or raise tol.",
            ConvergenceWarning,
            stacklevel=2,
        )

    if assign == "balanced":
        if process_group is not None:
            raise NotImplementedError("assign='balanced' with a process_group.")
        sizes = balanced_sizes(n_total, proportions)
        labels = _balanced_labels(W, b, sizes, block)
    else:
        labels, _ = _argmax_labels(W, b, block)

    soft = None
    if return_soft or inplace:
        for start in range(0, n_local, block):
            blk = W[start : start + block]
            q = blk.to(cdt) * b
            q /= q.sum(dim=1, keepdim=True)
            blk.copy_(q)
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
        float32 (float64 for float64 scores); each row sums to one.
    """
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
    z = S.to(cdt) * lam + lb.to(device=S.device, dtype=cdt)
    q = torch.softmax(z, dim=1)
    return q if is_torch else q.numpy()
