"""Sinkhorn-Knopp iterations: :func:`sinkhorn_knopp` and :func:`soft_assignments`.

See :mod:`sklearn_sela.sinkhorn` for the problem and its numerics.
"""

from dataclasses import dataclass
import math
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from ..collectives import all_reduce
from ._kernel import Kernel, compute_dtype, empty_matrix
from ._rounding import (
    argmax_labels,
    balanced_labels,
    balanced_labels_distributed,
    check_proportions,
)

# The pending column scaling b is kept within [exp(_B_TOP - _ABSORB),
# exp(_B_TOP)] = [exp(-20), exp(16)] and absorbed when it would leave it.
# Then every product in a pass stays a normal float32 (smallest exp(-87.3);
# subnormals make CPU arithmetic ~5x slower): W * b >= exp(-80), and, with
# a = 1 / (W b) >= exp(-16) / K, W * a >= exp(-76) / K, for K < 80,000. A
# clamped entry stays below exp(_ABSORB - F) = exp(-24) of its row's largest
# scaled entry.
_ABSORB = 36.0
_B_TOP = 16.0
# Over-relaxation: the rate is measured over iterations
# _RELAX_AFTER // 2 .. _RELAX_AFTER of plain Sinkhorn.
_RELAX_AFTER = 8
_MAX_OMEGA = 1.9
_SAFEGUARD = 0.1


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
        against the target proportions (with ``marginal_penalty``, against
        the sizes that the penalised optimum implies for the current
        scaling) plus the per-sample marginal, which is exact unless the
        plan has to use ``-inf`` scores.
    proportions : ndarray or Tensor of shape (n_clusters,)
        Column sums of ``Q``, float64, summing to one: the cluster sizes of
        the plan as fractions of the samples. They equal
        ``cluster_proportions`` up to ``marginal_error``, unless
        ``marginal_penalty`` lets them deviate.
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
    proportions: object
    soft: object = None



def _as_tensor(x, name):
    if isinstance(x, torch.Tensor):
        return x, True
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x), False
    raise TypeError(
        f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}."
    )


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


def _is_number(x):
    return isinstance(x, (int, float, np.number)) and not isinstance(x, (bool, np.bool_))


def _validate_scalar_params(lam, tol, max_iter, marginal_penalty=None):
    if not (_is_number(lam) and np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite number > 0, got {lam!r}.")
    if marginal_penalty is not None and not (
        _is_number(marginal_penalty)
        and np.isfinite(marginal_penalty)
        and marginal_penalty > 0
    ):
        raise ValueError(
            f"marginal_penalty must be None or a finite number > 0, got "
            f"{marginal_penalty!r}."
        )
    if not (_is_number(tol) and tol >= 0):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}.")
    if not (
        isinstance(max_iter, (int, np.integer))
        and not isinstance(max_iter, bool)
        and max_iter >= 1
    ):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}.")


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
        reach = all_reduce(reach.to(torch.float32), process_group, op="max") > 0
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
    marginal_penalty=None,
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
    marginal_penalty : float or None, default=None
        None keeps the cluster sizes exactly at ``cluster_proportions``
        (SeLa). A number ``rho > 0`` replaces that constraint by the penalty
        ``rho * KL(Q.T 1 || cluster_proportions)`` (semi-unbalanced
        transport, Chizat et al., 2018): the sizes follow the scores where
        they disagree with the proportions, the more so the smaller ``rho``
        (roughly ``q ~ c**t * q0**(1 - t)`` for the proportions ``c``, the
        sizes ``q0`` of the posterior ``softmax(lam * scores + log c)`` and
        ``t = rho * lam / (1 + rho * lam)``); ``result.proportions`` holds
        them. Each iteration costs the same; convergence takes more of them
        as ``rho`` grows.
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
        (``floor(N/K)`` or ``ceil(N/K)`` each under equipartition; the plan's
        own ``proportions`` with ``marginal_penalty``), by greedy rounding of
        ``Q`` that only revisits the samples argmax put into over-full
        clusters.
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
        ``balanced_labels_distributed`` of this package).

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
        if ``marginal_penalty`` is neither None nor a finite number > 0; if
        ``warm_start`` has the wrong length or is not finite.

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
    With ``marginal_penalty``, the column update is that of Chizat et al.
    (2018) for a KL-penalised marginal, ``log beta <- phi * (log c - log(P**lam.T
    alpha))`` with ``phi = rho * lam / (1 + rho * lam)``, without
    over-relaxation; it is the same problem as POT's
    ``ot.unbalanced.sinkhorn_unbalanced(a, c, -scores, 1 / lam, (inf, rho))``.

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
    _validate_scalar_params(lam, tol, max_iter, marginal_penalty)
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
    n_total = all_reduce(
        torch.tensor([n_local], dtype=torch.float64, device=S.device), process_group
    )
    n_total = int(n_total.item())
    if n_total < k:
        raise ValueError(
            f"n_samples={n_total} must be >= n_clusters={k}: an equipartition "
            f"needs at least one sample per cluster."
        )
    proportions = check_proportions(cluster_proportions, k)

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
        W = empty_matrix((n_local, k), work, S.device)
    cdt = compute_dtype(W.dtype)
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
    kernel = Kernel(S, W, lam, log_beta, payload, streamed)
    _check_reachable(kernel, proportions, n_total, process_group)

    target = torch.as_tensor(proportions * n_total, dtype=torch.float64, device=S.device)
    # The column sums the iteration heads for: the target itself, or with a
    # penalised marginal, the sizes that the current scaling implies at the
    # penalised optimum (they coincide at its fixed point).
    goal = target
    goal_c = target.to(cdt)
    if marginal_penalty is not None:
        tau = float(marginal_penalty) * lam
        phi = tau / (1.0 + tau)
        log_c = torch.log(target / n_total)
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
        all_reduce(v, process_group)
        # (a, b) has exact row sums; col = b * v are its column sums.
        col_c = b * v
        if marginal_penalty is not None:
            # The total column scaling over exp(lam * S) is log c + tau *
            # log(c / q) at the optimum (up to a constant), so the sizes it
            # implies are q ~ c * exp(-(log_beta - log c) / tau).
            excess = kernel.g + log_b - log_c
            goal = torch.softmax(log_c - excess / tau, dim=0) * n_total
            goal_c = goal.to(cdt)
        err = float((col_c - goal_c).abs().sum()) / n_total
        if err <= tol:
            converged = True
            break
        if n_iter == max_iter:
            break
        col = col_c.double()
        delta = (target / col).log_()
        if marginal_penalty is not None:
            # Chizat et al. (2018): log_beta <- phi * (log c - log(K.T a)),
            # with log(K.T a) = log q - log_beta.
            log_b += phi * delta - (1.0 - phi) * excess
        else:
            if n_iter == _RELAX_AFTER // 2:
                err_mid = err
            elif n_iter == _RELAX_AFTER:
                # Per-iteration rate of plain Sinkhorn; >= 1 on a plateau.
                rate = (err / err_mid) ** (2.0 / _RELAX_AFTER)
                omega = min(_MAX_OMEGA, 2.0 / (1.0 + math.sqrt(max(0.0, 1.0 - rate))))
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
    col = col_c.double()
    if kernel.zero_rows or process_group is not None:
        # -inf scores are a last resort of the working kernel, but the plan
        # the scalings describe, exp(log_alpha + lam * scores + log_beta),
        # is zero there: measure both of its marginals without them (every
        # rank takes part). The sample marginal then misses exactly that
        # mass, and the error can only grow. (Before a is overwritten.)
        zero = all_reduce(kernel.zero_mass(a, b), process_group)
        col -= zero
        lost = float(zero.sum())
        err = (float((col - goal).abs().sum()) + lost) / n_total
        converged = converged and err <= tol
        if lost > 0.5 * tol * n_total:
            short = (goal - col).cpu().numpy()
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
    found = col.clamp_(min=1e-300) / col.sum()
    if marginal_penalty is not None:
        # Exact rounding to the sizes the penalised plan settled on.
        proportions = found.cpu().numpy()

    if assign == "balanced":
        if process_group is not None:
            labels = balanced_labels_distributed(
                kernel, log_b, proportions, kernel.block, process_group
            )
        else:
            labels = balanced_labels(kernel, log_b, proportions)
    else:
        labels = kernel.argmax_labels(b) if kernel.compiled else argmax_labels(kernel, b)

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
        proportions=out(found),
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
    cdt = compute_dtype(S.dtype)
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
