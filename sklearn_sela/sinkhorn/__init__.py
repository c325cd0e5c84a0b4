"""Sinkhorn-Knopp solver for SeLa's equipartitioned label assignment.

This package is the numerical ground floor of ``sklearn_sela``: it works on
plain numpy arrays and torch tensors, and of the rest of the package it
imports only :mod:`sklearn_sela.collectives` (thin ``torch.distributed``
wrappers that import nothing themselves). Its modules: ``_sinkhorn`` (the
iterations, :func:`sinkhorn_knopp`, :func:`soft_assignments`), ``_kernel``
(the working kernel and its pass), ``_fused_pass`` (that pass, the
kernel's build and its labels, compiled for large CPU kernels) and
``_rounding`` (:func:`balanced_sizes` and the rounding of a plan to exactly
balanced labels, on one process or over a process group).

The problem (Asano et al., 2020, eq. 6-8) is, for an ``(N, K)`` matrix of
log-probabilities ``log P``,

.. math::

    \\min_{Q \\in U(r, c)} \\langle Q, -\\log P \\rangle + \\frac{1}{\\lambda}
    \\mathrm{KL}(Q \\,\\|\\, r c^\\top),

whose minimiser is ``Q = diag(alpha) P**lam diag(beta)`` with rows summing to
``1/N`` and columns summing to the cluster proportions ``c``.
With ``marginal_penalty=rho`` the column constraint becomes a penalty
``rho * KL(Q.T 1 || c)`` (semi-unbalanced transport, Chizat et al., 2018):
the rows still sum to ``1/N``, the cluster sizes may move away from ``c``.

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
  kept within a range of ``exp(36)`` (see ``_sinkhorn._ABSORB``), so that every product
  stays a normal float32 and a clamped entry stays below ``exp(-24)`` of its
  row's largest scaled entry. When ``b`` would leave that range it is folded
  ("absorbed") into the kernel, which is rebuilt from the scores: entries
  that were clamped get their true values back. With ``inplace=True`` the
  scores are gone; then the clamped entries of a float32/float64 buffer
  carry their true log-value in the last bits below ``exp(-F)`` (a relative
  change under ``2**-10``, see ``_kernel._to_kernel_``), and absorbing decodes
  it. A float16/bfloat16 buffer has too few bits for that: it keeps the
  scores, and each pass recomputes kernel blocks from them in float32.
* Cumulative logarithms of both scalings are kept in float64 and returned, so
  that a later call can warm start.
* Each iteration makes one streaming pass over the kernel: for a block of rows
  the row scaling is computed from the current column scaling and immediately
  used to accumulate the column sums, while the block is still in cache. On
  CPU, kernels of 4M entries or more run a compiled pass (numba) that does
  this four rows at a time, so the matrix is read once per iteration with
  one fork and join instead of three library calls per block; the threads
  take small parts of the rows in turn, so one that another process holds
  up does not hold up the others.
* The column update is over-relaxed, ``log_b += omega * log(target / col)``,
  with ``omega`` in ``[1, 1.9]`` set from the convergence rate observed over
  the first iterations (the classic ``2 / (1 + sqrt(1 - rate))``). Every step
  is safeguarded: ``omega`` falls back to 1 for a step unless the dual
  objective provably increases by at least a tenth of the plain step's
  increase, which keeps plain Sinkhorn's global convergence guarantee (the
  test costs ``O(K)``; see ``_sinkhorn._relaxation_gains``).
* Very large ``lam * score`` gaps (e.g. logits of magnitude 1e4 with
  ``lam = 100``) make the transport problem nearly unregularised: the
  scalings must move by ~1e6 nats, a bounded amount per iteration, so
  ``max_iter`` is reached (``ConvergenceWarning``). The result stays finite;
  ``assign="balanced"`` still gives exact cluster sizes.
"""

from ._rounding import balanced_sizes, check_proportions
from ._sinkhorn import SinkhornResult, sinkhorn_knopp, soft_assignments

__all__ = [
    "SinkhornResult",
    "sinkhorn_knopp",
    "soft_assignments",
    "balanced_sizes",
    "check_proportions",
]
