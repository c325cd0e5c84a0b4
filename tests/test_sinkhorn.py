"""Tests for the Sinkhorn-Knopp solver (``sklearn_sela.sinkhorn``).

Everything here is small and CPU-only, except the ``cuda`` cases, which run
only where a GPU is present. Reference values come from independent code:
exact transport (POT's ``ot.emd``, SciPy's ``linear_sum_assignment``) and a
float64 numpy re-computation of the plan from the returned scalings.
"""

import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from sklearn.exceptions import ConvergenceWarning

import sklearn_sela.sinkhorn._kernel as sk
import sklearn_sela.sinkhorn._sinkhorn as sk_solver
from sklearn_sela import SinkhornResult, balanced_sizes, sinkhorn_knopp, soft_assignments

CUDA = [
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"),
    )
]
DEVICES = ["cpu"] + CUDA
# (container, dtype): numpy has no bfloat16.
DTYPES = [
    ("numpy", np.float16),
    ("numpy", np.float32),
    ("numpy", np.float64),
    ("torch", torch.float16),
    ("torch", torch.bfloat16),
    ("torch", torch.float32),
    ("torch", torch.float64),
]


def _log_dirichlet(n, k, seed, alpha=1.0):
    rng = np.random.default_rng(seed)
    return np.log(rng.dirichlet(np.full(k, alpha), size=n))


def _cast(x, container, dtype, device="cpu"):
    if container == "numpy":
        return np.ascontiguousarray(x, dtype=dtype)
    return torch.as_tensor(np.asarray(x, dtype=np.float64)).to(device=device, dtype=dtype)


def _as_f64(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _reference_log_kernel(scores, lam):
    """``lam * scores`` with the solver's documented conventions, float64.

    A row of -inf only is uniform; other -inf entries sit ``_ZERO_GAP``
    below the row's lowest finite value (after multiplying by ``lam``).
    """
    s = _as_f64(scores).copy()
    empty = np.isneginf(s).all(axis=1)
    s[empty] = 0.0
    m = s.max(axis=1, keepdims=True)
    x = lam * (s - m)
    zero = np.isneginf(x)
    low = np.where(zero, 0.0, x).min(axis=1, keepdims=True)
    return np.where(zero, low - sk._ZERO_GAP, x) + lam * m


def _plan(scores, res, lam):
    """The plan ``Q`` rebuilt in float64 from the returned scalings."""
    z = (
        _as_f64(res.log_alpha)[:, None]
        + _reference_log_kernel(scores, lam)
        + _as_f64(res.log_beta)[None, :]
    )
    return np.exp(z)


def _marginal_errors(Q, proportions=None):
    n, k = Q.shape
    p = np.full(k, 1.0 / k) if proportions is None else np.asarray(proportions)
    row = np.abs(Q.sum(axis=1) - 1.0 / n).sum()
    col = np.abs(Q.sum(axis=0) - p).sum()
    return row, col


def _exact_cost(cost, sizes):
    ot = pytest.importorskip("ot")
    n = cost.shape[0]
    plan = ot.emd(np.ones(n), np.asarray(sizes, dtype=np.float64), cost)
    return float((plan * cost).sum())


# ---------------------------------------------------------------------------
# Agreement with exact optimal transport
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_balanced_labels_match_exact_transport_at_large_lambda(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 9))
    n = k * int(rng.integers(4, 16))
    # Imbalanced preferences, so that many samples must move.
    z = rng.normal(size=(n, k)) * rng.choice([0.5, 2.0]) + 2.0 * rng.normal(size=k)
    logp = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    res = sinkhorn_knopp(logp, lam=100.0, assign="balanced", tol=1e-4, max_iter=20000)
    assert res.converged
    sizes = np.bincount(res.labels, minlength=k)
    np.testing.assert_array_equal(sizes, np.full(k, n // k))
    cost = -logp
    ours = cost[np.arange(n), res.labels].sum()
    optimum = _exact_cost(cost, sizes)
    assert ours <= optimum + 0.01 * abs(optimum) + 1e-9


def test_exact_optimum_cross_checked_with_linear_sum_assignment():
    # The reference itself: emd on the (N, K) problem equals the assignment
    # problem on the cost expanded to N x N (each cluster repeated N/K times).
    logp = _log_dirichlet(24, 4, seed=3, alpha=0.5)
    cost = -logp
    expanded = np.repeat(cost, 6, axis=1)
    rows, cols = linear_sum_assignment(expanded)
    lsa = expanded[rows, cols].sum()
    assert _exact_cost(cost, [6, 6, 6, 6]) == pytest.approx(lsa, rel=1e-9)
    res = sinkhorn_knopp(logp, lam=100.0, assign="balanced", tol=1e-5, max_iter=20000)
    assert cost[np.arange(24), res.labels].sum() <= lsa * 1.01


def test_uneven_sizes_are_floor_or_ceil():
    logp = _log_dirichlet(103, 7, seed=1)
    res = sinkhorn_knopp(logp, lam=50.0, assign="balanced")
    sizes = np.bincount(res.labels, minlength=7)
    assert sizes.sum() == 103
    assert set(sizes) <= {103 // 7, 103 // 7 + 1}


def test_balanced_with_proportions_has_exact_sizes():
    p = np.array([0.5, 0.25, 0.125, 0.125])
    logp = _log_dirichlet(200, 4, seed=2)
    res = sinkhorn_knopp(logp, cluster_proportions=p, assign="balanced")
    np.testing.assert_array_equal(np.bincount(res.labels, minlength=4), [100, 50, 25, 25])


def test_balanced_from_unconverged_plan_is_still_exact():
    # Everyone prefers cluster 0; one iteration leaves argmax fully collapsed.
    logp = np.log(np.tile([0.97, 0.01, 0.01, 0.01], (400, 1)))
    logp += np.random.default_rng(0).normal(scale=1e-3, size=logp.shape)
    with pytest.warns(ConvergenceWarning):
        res = sinkhorn_knopp(logp, max_iter=1, assign="balanced")
    np.testing.assert_array_equal(np.bincount(res.labels, minlength=4), [100] * 4)


@pytest.mark.parametrize(
    "n,k,lam,rho",
    [(60, 4, 5.0, 0.5), (200, 7, 25.0, 0.05), (200, 7, 25.0, 5.0), (50, 3, 1.0, 0.01)],
)
def test_marginal_penalty_solves_pots_semi_unbalanced_problem(n, k, lam, rho):
    # min <Q, -S> + KL(Q || r c^T) / lam + rho KL(Q^T 1 || c) with exact rows,
    # solved by POT's generalised Sinkhorn to a tight threshold.
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(n + k)
    scores = _log_dirichlet(n, k, seed=k, alpha=0.5)
    c = rng.dirichlet(np.full(k, 3.0))
    res = sinkhorn_knopp(
        scores, lam=lam, cluster_proportions=c, marginal_penalty=rho,
        tol=1e-9, max_iter=100_000,
    )
    assert res.converged
    reference = ot.unbalanced.sinkhorn_unbalanced(
        np.full(n, 1.0 / n), c, -scores, 1.0 / lam, (float("inf"), rho),
        reg_type="kl", method="sinkhorn", numItermax=200_000, stopThr=1e-13,
    )
    Q = _plan(scores, res, lam)
    np.testing.assert_allclose(Q, reference, atol=1e-8)
    np.testing.assert_allclose(res.proportions, reference.sum(axis=0), atol=1e-8)
    # The sizes really moved away from the prior: the penalty is not exact.
    assert np.abs(res.proportions - c).sum() > 1e-3


def test_marginal_penalty_spans_posterior_to_equipartition():
    scores = _log_dirichlet(300, 5, seed=1, alpha=0.3)
    scores[:, 0] += 1.0  # cluster 0 is preferred by the scores
    lam = 2.0
    posterior = np.exp(lam * scores - np.logaddexp.reduce(lam * scores, axis=1)[:, None])
    sizes = [
        sinkhorn_knopp(scores, lam=lam, marginal_penalty=rho, tol=1e-7).proportions
        for rho in (1e-6, 0.3, 3.0, 1e6)
    ]
    # rho -> 0: the scores' own sizes (the posterior under the uniform
    # prior); rho -> inf: the exact equipartition; in between, in order.
    np.testing.assert_allclose(sizes[0], posterior.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(sizes[-1], np.full(5, 0.2), atol=1e-4)
    assert sizes[0][0] > sizes[1][0] > sizes[2][0] > sizes[3][0] > 0.2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_marginal_penalty_balanced_labels_and_warm_start(dtype):
    scores = _log_dirichlet(400, 6, seed=2, alpha=0.4).astype(dtype)
    scores[:, 1] += 0.5
    res = sinkhorn_knopp(scores, marginal_penalty=0.02, assign="balanced", tol=1e-6)
    assert res.converged
    np.testing.assert_allclose(res.proportions.sum(), 1.0, rtol=1e-6)
    # assign="balanced" rounds to the sizes the penalised plan settled on.
    np.testing.assert_array_equal(
        np.bincount(res.labels, minlength=6), balanced_sizes(400, res.proportions)
    )
    assert res.proportions.argmax() == 1 and res.proportions[1] > 1.2 / 6
    # A warm start from the solution converges at once to the same plan.
    again = sinkhorn_knopp(scores, marginal_penalty=0.02, warm_start=res, tol=1e-6)
    assert again.n_iter <= 2
    np.testing.assert_allclose(again.proportions, res.proportions, atol=1e-5)


# ---------------------------------------------------------------------------
# Marginals, scalings, soft assignments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("proportions", [None, [0.1, 0.2, 0.3, 0.4]])
def test_marginals_met_within_tolerance(proportions):
    k = 5 if proportions is None else len(proportions)
    logp = _log_dirichlet(300, k, seed=4)
    for tol in (1e-2, 1e-4):
        res = sinkhorn_knopp(
            logp, lam=25.0, tol=tol, cluster_proportions=proportions, max_iter=5000
        )
        assert res.converged and res.marginal_error <= tol
        row, col = _marginal_errors(_plan(logp, res, 25.0), proportions)
        assert row < 1e-9
        assert col <= tol * 1.001 + 1e-9


def test_result_fields():
    logp = torch.as_tensor(_log_dirichlet(50, 5, seed=0), dtype=torch.float32)
    res = sinkhorn_knopp(logp)
    assert isinstance(res, SinkhornResult)
    assert res.labels.dtype == torch.int64 and res.labels.shape == (50,)
    assert res.log_alpha.dtype == torch.float64 and res.log_alpha.shape == (50,)
    assert res.log_beta.dtype == torch.float64 and res.log_beta.shape == (5,)
    assert float(res.log_beta.max()) == 0.0
    assert res.converged and 1 <= res.n_iter <= 1000
    assert res.soft is None
    res_np = sinkhorn_knopp(logp.numpy())
    assert isinstance(res_np.labels, np.ndarray) and res_np.labels.dtype == np.int64
    assert isinstance(res_np.log_beta, np.ndarray)


def test_soft_assignments_match_plan_rows():
    logp = _log_dirichlet(120, 6, seed=5)
    res = sinkhorn_knopp(logp, lam=10.0, return_soft=True)
    Q = _plan(logp, res, 10.0)
    expected = Q / Q.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(res.soft, expected, atol=1e-10)
    np.testing.assert_allclose(soft_assignments(logp, res.log_beta, lam=10.0), expected, atol=1e-10)
    part = soft_assignments(logp, res.log_beta, lam=10.0, rows=[3, 7, 7])
    np.testing.assert_allclose(part, expected[[3, 7, 7]], atol=1e-10)
    sl = soft_assignments(torch.as_tensor(logp), torch.as_tensor(res.log_beta), lam=10.0, rows=slice(10, 20))
    np.testing.assert_allclose(sl.numpy(), expected[10:20], atol=1e-10)
    # Argmax labels are the argmax of the soft assignments.
    np.testing.assert_array_equal(res.labels, expected.argmax(axis=1))


def test_soft_assignments_handle_extreme_rows():
    s = np.array([[0.0, -np.inf, -np.inf], [-np.inf] * 3, [1e4, -1e4, 0.0]])
    q = soft_assignments(s, np.zeros(3), lam=100.0)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q.sum(axis=1), 1.0)
    np.testing.assert_allclose(q[1], [1 / 3] * 3)
    with pytest.raises(ValueError, match="NaN"):
        soft_assignments(np.array([[0.0, np.nan]]), np.zeros(2))
    with pytest.raises(ValueError, match="log_beta"):
        soft_assignments(s, np.zeros(2))


# ---------------------------------------------------------------------------
# Robustness: extreme inputs, every dtype (property-based)
# ---------------------------------------------------------------------------

_SCALES = [1e-6, 1e-2, 1.0, 30.0, 1e4]


@st.composite
def _problems(draw):
    k = draw(st.integers(1, 6))
    n = draw(st.integers(k, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from(_SCALES))
    s = rng.normal(size=(n, k)) * scale + draw(st.sampled_from([0.0, -7.0, 500.0]))
    if draw(st.booleans()):
        s[rng.random((n, k)) < draw(st.sampled_from([0.1, 0.5, 0.9]))] = -np.inf
    if draw(st.booleans()):
        s[rng.integers(n)] = -np.inf  # a row with no preference at all
    if k > 1 and draw(st.booleans()):
        s[:, rng.integers(k)] = -np.inf  # a cluster nobody may join
    container, dtype = draw(st.sampled_from(DTYPES))
    lam = draw(st.sampled_from([0.5, 25.0, 100.0]))
    return s, container, dtype, lam


def _finite(x):
    return bool(np.isfinite(_as_f64(x)).all())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=_problems(), assign=st.sampled_from(["argmax", "balanced"]))
def test_property_any_input_any_dtype(problem, assign):
    s, container, dtype, lam = problem
    scores = _cast(s, container, dtype)
    values = _as_f64(scores)  # what the solver sees, after the cast
    n, k = s.shape
    # A cluster with probability zero for every sample (no row without any
    # preference to fill it) cannot get its share: a clear error.
    unreachable = np.isneginf(values).all(axis=0)
    if unreachable.any() and not np.isneginf(values).all(axis=1).any():
        bad = ", ".join(map(str, np.flatnonzero(unreachable)[:10]))
        with pytest.raises(ValueError, match=re.escape(f"Cluster(s) {bad} have score -inf")):
            sinkhorn_knopp(scores, lam=lam, assign=assign, max_iter=300)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = sinkhorn_knopp(
            scores, lam=lam, assign=assign, return_soft=True, max_iter=300
        )
    # Input untouched, types preserved.
    np.testing.assert_array_equal(_as_f64(scores), values)
    assert type(res.labels) is type(scores)
    labels = _as_f64(res.labels).astype(np.int64)
    assert labels.min() >= 0 and labels.max() < k
    assert _finite(res.log_alpha) and _finite(res.log_beta) and _finite(res.soft)
    np.testing.assert_allclose(_as_f64(res.soft).sum(axis=1), 1.0, atol=1e-5)
    assert 0.0 <= res.marginal_error <= 2.0 + 1e-6
    assert res.converged == (res.marginal_error <= 1e-3)
    if assign == "balanced":
        assert set(np.bincount(labels, minlength=k)) <= {n // k, -(-n // k)}
    # The plan rebuilt independently in float64 has the reported accuracy,
    # where float32 (relative precision 6e-8) represents lam * scores well
    # enough to check it.
    finite = values[np.isfinite(values)]
    spread = lam * np.ptp(finite) if finite.size else 0.0
    if res.converged and spread < 500:
        row, col = _marginal_errors(_plan(values, res, lam))
        assert row < 1e-4
        assert col <= 1e-3 + 2e-4


@pytest.mark.parametrize("container,dtype", DTYPES)
def test_every_dtype_agrees_with_float64(container, dtype):
    logp = _log_dirichlet(400, 8, seed=6)
    ref = sinkhorn_knopp(logp, lam=25.0, tol=1e-5)
    res = sinkhorn_knopp(_cast(logp, container, dtype), lam=25.0, tol=1e-5)
    assert res.converged
    # Half precision rounds the scores themselves (bfloat16: 3 digits).
    agree = np.mean(_as_f64(res.labels) == ref.labels)
    assert agree >= (0.9 if dtype in (np.float16, torch.float16, torch.bfloat16) else 0.995)


def test_near_uniform_float32_does_not_collapse():
    # POT's float32 sinkhorn puts every sample into one cluster here.
    rng = np.random.default_rng(0)
    k, n = 20, 2000
    p = np.full((n, k), 1.0 / k) * (1.0 + 1e-4 * rng.normal(size=(n, k)))
    logp = np.log(p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    res = sinkhorn_knopp(logp, lam=25.0)
    counts = np.bincount(res.labels, minlength=k)
    assert res.converged
    assert counts.min() > 0 and counts.max() <= 2 * n // k


def test_very_peaked_and_huge_logits_stay_finite():
    rng = np.random.default_rng(1)
    n, k = 400, 8
    for scale, lam in [(30.0, 25.0), (1e4, 100.0)]:
        logits = (rng.normal(size=(n, k)) * scale).astype(np.float32)
        with warnings.catch_warnings():
            # At 1e4 the lam-scaled gaps are ~1e6 nats: the scalings have to
            # travel that far, which Sinkhorn does at a bounded rate.
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = sinkhorn_knopp(logits, lam=lam, max_iter=300, return_soft=True)
        assert _finite(res.log_alpha) and _finite(res.log_beta) and _finite(res.soft)
        counts = np.bincount(res.labels, minlength=k)
        assert counts.min() > 0 and counts.max() < n / 2
        bal = sinkhorn_knopp(logits, lam=lam, max_iter=5, assign="balanced")
        np.testing.assert_array_equal(np.bincount(bal.labels, minlength=k), [n // k] * k)


def test_minus_inf_entries_rows_and_columns():
    rng = np.random.default_rng(2)
    logp = _log_dirichlet(300, 6, seed=2)
    logp[rng.random(logp.shape) < 0.4] = -np.inf
    logp[:, 5] = -np.inf  # nobody wants cluster 5...
    logp[np.isneginf(logp).all(axis=1), 0] = 0.0
    with pytest.raises(ValueError, match=r"Cluster\(s\) 5 have score -inf"):
        sinkhorn_knopp(logp.astype(np.float32), lam=25.0, max_iter=2000)
    logp[:3] = -np.inf  # ...but three rows without any preference may go there
    # Three samples cannot make a sixth of 300: the solver still fills the
    # cluster, with -inf scores as a last resort, but does not call that
    # converged.
    zero_mass = r"-inf \(probability zero\), mostly in cluster\(s\) 5:"
    with pytest.warns(ConvergenceWarning, match=zero_mass):
        res = sinkhorn_knopp(logp.astype(np.float32), lam=25.0, max_iter=2000)
    assert not res.converged
    counts = np.bincount(res.labels, minlength=6)
    assert counts.min() > 0
    # The plan with the documented last-resort values meets the marginals...
    row, col = _marginal_errors(_plan(logp, res, 25.0))
    assert col <= 1.1e-3
    # Cluster 5 is filled by the samples that lose least by going there.
    assert counts[5] >= 300 // 6 // 2
    # ...but the mass it puts on -inf scores counts in the reported error.
    assert res.marginal_error > 0.2


def test_float16_inplace_buffer_matches_float32():
    logp = _log_dirichlet(500, 10, seed=7, alpha=0.3)
    ref = sinkhorn_knopp(logp.astype(np.float16).astype(np.float32), lam=50.0, tol=1e-4)
    for dtype in (torch.float16, torch.bfloat16):
        buf = torch.as_tensor(logp).to(dtype)
        values = buf.double()
        res = sinkhorn_knopp(buf, lam=50.0, tol=1e-4, inplace=True)
        expect = sinkhorn_knopp(values.float(), lam=50.0, tol=1e-4)
        assert res.soft.data_ptr() == buf.data_ptr() and res.soft.dtype == dtype
        assert torch.equal(res.labels, expect.labels)
        np.testing.assert_allclose(res.log_beta, expect.log_beta, atol=1e-3)
    assert np.mean(expect.labels.numpy() == ref.labels) > 0.9


# ---------------------------------------------------------------------------
# Large dynamic range: absorption of the scalings into the kernel
# ---------------------------------------------------------------------------


def _imbalanced(n, k, seed, scale=4.0):
    # Most samples prefer cluster 0 by ~`scale` nats; at lam = 100 the column
    # scaling must span hundreds of nats, far beyond float32's range.
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    z[:, 0] += 2 * scale
    return z - np.logaddexp.reduce(z, axis=1, keepdims=True)


def test_absorption_keeps_the_kernel_exact():
    logp = _imbalanced(240, 6, seed=0)
    res64 = sinkhorn_knopp(logp, lam=100.0, tol=1e-5, max_iter=20000)
    assert res64.converged and np.ptp(res64.log_beta) > 3 * sk_solver._ABSORB
    for inplace in (False, True):
        buf = logp.astype(np.float32)
        res = sinkhorn_knopp(buf, lam=100.0, tol=1e-5, max_iter=20000, inplace=inplace)
        assert res.converged
        np.testing.assert_array_equal(res.labels, res64.labels)
        # Only to 0.1 %: the dual is flat along clusters whose members are
        # one-sided (cluster 0 sits ~800 nats down).
        np.testing.assert_allclose(res.log_beta, res64.log_beta, rtol=5e-3, atol=0.05)


def test_payload_roundtrip():
    for dtype in (torch.float32, torch.float64):
        x = torch.cat([torch.linspace(-1200.0, 0.0, 50001), torch.tensor([-np.inf])]).to(dtype)
        w = sk._to_kernel_(x.clone(), sk._LOG_FLOOR, payload=True)
        low = sk._floor_value(sk._LOG_FLOOR, dtype)
        assert torch.all(w >= low * (1 - sk._PAYLOAD)) and torch.all(w <= 1)
        # Kernel values move by less than 0.1 % from the plain floor.
        plain = sk._to_kernel_(x.clone(), sk._LOG_FLOOR, payload=False)
        assert torch.all((w - plain).abs() <= plain * 1.01 * sk._PAYLOAD)
        back = sk._to_log_kernel_(w.clone(), sk._LOG_FLOOR, payload=True)
        ok = x > -(sk._LOG_FLOOR + sk._PAYLOAD_RANGE)
        err = (back[ok] - x[ok]).abs().max()
        # float32: rounding at encode and decode, 2 * 1024 * 2**-24 / 2**-10.
        assert err <= 0.13
        assert torch.all(back[~ok] <= -(sk._LOG_FLOOR + sk._PAYLOAD_RANGE) + 0.13)


# ---------------------------------------------------------------------------
# Over-relaxation and warm start
# ---------------------------------------------------------------------------


def test_relaxation_gain_is_kl_for_plain_step():
    rng = np.random.default_rng(0)
    t = torch.as_tensor(rng.dirichlet(np.ones(7)) * 100)
    c = torch.as_tensor(rng.dirichlet(np.ones(7)) * 100)
    d = (t / c).log()
    kl = float((t * d - t + c).sum())
    # omega = 1 is the exact maximiser along the step: any other is worse.
    for omega in (0.5, 1.5, 1.9, 2.5):
        plain, relaxed = sk_solver._relaxation_gains(t, c, d, omega)
        assert plain == pytest.approx(kl)
        assert relaxed < kl


def test_over_relaxation_same_fixed_point_fewer_iterations(monkeypatch):
    logp = _imbalanced(300, 8, seed=3, scale=2.0)
    fast = sinkhorn_knopp(logp, lam=25.0, tol=1e-6, max_iter=20000)
    monkeypatch.setattr(sk_solver, "_MAX_OMEGA", 1.0)
    plain = sinkhorn_knopp(logp, lam=25.0, tol=1e-6, max_iter=20000)
    assert fast.converged and plain.converged
    assert fast.n_iter < 0.8 * plain.n_iter
    np.testing.assert_array_equal(fast.labels, plain.labels)
    np.testing.assert_allclose(fast.log_beta, plain.log_beta, atol=1e-3)


@pytest.mark.parametrize(
    "kind,noise,ratio",
    [("result", 0.01, 0.25), ("numpy", 0.01, 0.25), ("torch", 0.05, 0.5)],
)
def test_warm_start_after_perturbation(kind, noise, ratio):
    rng = np.random.default_rng(8)
    logp = _imbalanced(600, 10, seed=8, scale=2.0)
    first = sinkhorn_knopp(logp, lam=25.0, tol=1e-4, max_iter=5000)
    # noise 0.01 is 0.25 nats after lam = 25: a small model update.
    z = logp + noise * rng.normal(size=logp.shape)
    moved = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    cold = sinkhorn_knopp(moved, lam=25.0, tol=1e-4, max_iter=5000)
    warm_from = {
        "result": first,
        "numpy": np.asarray(first.log_beta) + 3.0,  # the gauge does not matter
        "torch": torch.as_tensor(first.log_beta),
    }[kind]
    warm = sinkhorn_knopp(moved, lam=25.0, tol=1e-4, max_iter=5000, warm_start=warm_from)
    assert cold.converged and warm.converged
    assert warm.n_iter <= ratio * cold.n_iter
    assert np.mean(warm.labels == cold.labels) > 0.99
    # Warm-starting from the solution itself needs a single pass.
    again = sinkhorn_knopp(moved, lam=25.0, tol=1e-4, warm_start=warm)
    assert again.n_iter <= 2


# ---------------------------------------------------------------------------
# The compiled CPU pass (large stored kernels)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_compiled_pass_equals_the_two_products(dtype, n_threads):
    from sklearn_sela.sinkhorn import _fused_pass

    n_threads = min(n_threads, _fused_pass.max_threads())
    rng = np.random.default_rng(0)
    # 1031 rows: not a multiple of the 4-row step, the 256-row group or the
    # thread count; values spanning 12 orders of magnitude, as kernels do.
    W = np.exp(rng.uniform(-28.0, 0.0, size=(1031, 37))).astype(dtype)
    b = np.exp(rng.uniform(-5.0, 5.0, size=37)).astype(dtype)
    a = np.full(1031, np.nan, dtype=dtype)
    v = np.full(37, np.nan, dtype=dtype)
    _fused_pass.fused_pass(W, b, a, v, n_threads)
    W64 = W.astype(np.float64)
    a_ref = 1.0 / (W64 @ b.astype(np.float64))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a, a_ref, rtol=rtol)
    np.testing.assert_allclose(v, W64.T @ a.astype(np.float64), rtol=rtol)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_pass_gives_the_same_solve(monkeypatch, inplace, dtype):
    # Imbalanced, with lam = 100: the scalings move far enough to be
    # absorbed, so the in-place payload is decoded along the way.
    logp = _imbalanced(3001, 9, seed=5)
    kw = dict(lam=100.0, tol=1e-5, max_iter=20000, inplace=inplace)
    torch_pass = sinkhorn_knopp(logp.astype(dtype), **kw)
    monkeypatch.setattr(sk, "_COMPILED_MIN_ENTRIES", 0)
    compiled = sinkhorn_knopp(logp.astype(dtype), **kw)
    assert torch_pass.converged and compiled.converged
    assert abs(compiled.n_iter - torch_pass.n_iter) <= 0.02 * torch_pass.n_iter
    np.testing.assert_array_equal(compiled.labels, torch_pass.labels)
    # As in test_absorption_keeps_the_kernel_exact: the dual is flat along
    # one-sided clusters, so rounding moves them by up to 0.1 %.
    np.testing.assert_allclose(compiled.log_beta, torch_pass.log_beta, rtol=5e-3, atol=0.05)
    # The plans rebuilt in float64 meet the marginals as well as each other
    # (in place, both only to ~0.1: clamped entries carry approximate values).
    err = sum(_marginal_errors(_plan(logp, compiled, 100.0)))
    assert err <= 1.01 * sum(_marginal_errors(_plan(logp, torch_pass, 100.0))) + 5e-5


def test_only_large_cpu_kernels_are_compiled(monkeypatch):
    monkeypatch.setattr(sk, "_COMPILED_MIN_ENTRIES", 1000)
    big = torch.zeros(100, 10)
    W = torch.empty_like(big)
    assert sk.Kernel(big, W, 25.0, None, False, False).compiled
    assert not sk.Kernel(big[:99], W[:99], 25.0, None, False, False).compiled
    # float16 buffers are streamed from the scores: torch's pass.
    half = big.half()
    assert not sk.Kernel(half, half, 25.0, None, False, True).compiled


# ---------------------------------------------------------------------------
# In-place mode and memory
# ---------------------------------------------------------------------------


def _peak_rss():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024


def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_extra(fn):
    _reset_peak_rss()
    base = _peak_rss()
    fn()
    return _peak_rss() - base


@pytest.mark.skipif(
    not __import__("os").access("/proc/self/clear_refs", __import__("os").W_OK),
    reason="needs Linux /proc/self/clear_refs to reset the peak RSS",
)
@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_inplace_allocates_no_second_matrix(container):
    # torch's CPU allocations are invisible to tracemalloc; the kernel's peak
    # RSS is not. 24000 x 500 float32 = 48 MB, far above the solver's blocks.
    rng = np.random.default_rng(0)
    base = (rng.normal(size=(24000, 500)) * 3).astype(np.float32)
    make = (lambda: base.copy()) if container == "numpy" else (lambda: torch.from_numpy(base.copy()))
    sinkhorn_knopp(make(), lam=25.0, tol=1e-2, inplace=True)  # warm-up
    buf = make()
    extra = _peak_extra(lambda: sinkhorn_knopp(buf, lam=25.0, tol=1e-2, inplace=True))
    # Only O(N + K) vectors and a few 2 MB blocks of temporaries.
    assert extra < 0.4 * buf.nbytes
    # The measurement does see a second matrix when there is one.
    buf = make()
    extra = _peak_extra(lambda: sinkhorn_knopp(buf, lam=25.0, tol=1e-2))
    assert extra > 0.9 * buf.nbytes


def test_inplace_returns_soft_in_the_callers_buffer():
    logp = _log_dirichlet(200, 5, seed=9)
    ref = sinkhorn_knopp(logp.copy(), lam=25.0, return_soft=True)
    buf = logp.copy()
    res = sinkhorn_knopp(buf, lam=25.0, inplace=True)
    assert res.soft is buf and np.shares_memory(res.soft, buf)
    np.testing.assert_array_equal(res.labels, ref.labels)
    np.testing.assert_allclose(buf, ref.soft, atol=1e-12)
    t = torch.as_tensor(logp.astype(np.float32))
    res = sinkhorn_knopp(t, lam=25.0, inplace=True)
    assert res.soft is t
    np.testing.assert_allclose(t.sum(dim=1).numpy(), 1.0, atol=1e-5)


def test_inplace_rejects_unusable_buffers():
    logp = _log_dirichlet(20, 4, seed=0)
    ro = logp.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        sinkhorn_knopp(ro, inplace=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        sinkhorn_knopp(torch.as_tensor(logp.T.copy()).t(), inplace=True)
    # Without inplace, neither matters.
    sinkhorn_knopp(ro)
    sinkhorn_knopp(torch.as_tensor(logp.T.copy()).t())


# ---------------------------------------------------------------------------
# Stopping and warnings
# ---------------------------------------------------------------------------


def test_convergence_warning_and_iteration_count():
    logp = _imbalanced(200, 5, seed=1)
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        res = sinkhorn_knopp(logp, lam=25.0, max_iter=3)
    assert not res.converged and res.n_iter == 3 and res.marginal_error > 1e-3
    # The returned scalings are those the reported error was measured on.
    row, col = _marginal_errors(_plan(logp, res, 25.0))
    assert row < 1e-9 and col == pytest.approx(res.marginal_error, rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = sinkhorn_knopp(logp, lam=25.0, tol=0.5)
    assert res.converged


def test_single_cluster_and_n_equals_k():
    res = sinkhorn_knopp(np.zeros((5, 1)))
    assert res.converged and res.n_iter == 1 and list(res.labels) == [0] * 5
    logp = _log_dirichlet(6, 6, seed=1)
    res = sinkhorn_knopp(logp, assign="balanced")
    assert sorted(res.labels) == list(range(6))


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

_GOOD = _log_dirichlet(10, 3, seed=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scores=np.zeros(5)), "2-D"),
        (dict(scores=np.zeros((2, 3, 4))), "2-D"),
        (dict(scores=np.zeros((2, 3))), "n_samples=2 must be >= n_clusters=3"),
        (dict(scores=np.zeros((4, 0))), "at least one cluster"),
        (dict(scores=np.where(np.eye(10, 3) > 0, np.nan, _GOOD)), "NaN"),
        (dict(scores=np.where(np.eye(10, 3) > 0, np.inf, _GOOD)), r"\+inf"),
        (dict(scores=np.zeros((4, 2), dtype=np.int64)), "floating point"),
        (dict(lam=0.0), "lam must be"),
        (dict(lam=-1.0), "lam must be"),
        (dict(lam=np.nan), "lam must be"),
        (dict(lam=np.inf), "lam must be"),
        (dict(tol=-1.0), "tol must be"),
        (dict(max_iter=0), "max_iter must be"),
        (dict(max_iter=2.5), "max_iter must be"),
        (dict(assign="hungarian"), "assign must be"),
        (dict(cluster_proportions=[0.5, 0.5]), r"expected shape \(3,\)"),
        (dict(cluster_proportions=[[0.2, 0.3, 0.5]]), r"expected shape \(3,\)"),
        (dict(cluster_proportions=[1.2, -0.1, -0.1]), "non-negative"),
        (dict(cluster_proportions=[0.5, 0.5, 0.0]), "strictly positive"),
        (dict(cluster_proportions=[0.2, 0.2, 0.2]), "sum to 1"),
        (dict(cluster_proportions=[np.nan, 0.5, 0.5]), "finite"),
        (dict(warm_start=np.zeros(4)), r"warm_start .* expected shape \(3,\)"),
        (dict(warm_start=np.array([0.0, np.inf, 0.0])), "warm_start must be finite"),
        (dict(marginal_penalty=0.0), "marginal_penalty must be"),
        (dict(marginal_penalty=-1.0), "marginal_penalty must be"),
        (dict(marginal_penalty=np.inf), "marginal_penalty must be"),
        (dict(marginal_penalty="auto"), "marginal_penalty must be"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    kwargs = {"scores": _GOOD, **kwargs}
    with pytest.raises(ValueError, match=match):
        sinkhorn_knopp(kwargs.pop("scores"), **kwargs)


def test_nan_in_torch_half_input_raises():
    s = torch.zeros(8, 2, dtype=torch.bfloat16)
    s[5, 1] = float("nan")
    for inplace in (False, True):
        with pytest.raises(ValueError, match="NaN"):
            sinkhorn_knopp(s.clone(), inplace=inplace)


def test_non_array_input_raises_type_error():
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        sinkhorn_knopp([[0.0, 1.0], [1.0, 0.0]])


def test_balanced_sizes():
    np.testing.assert_array_equal(balanced_sizes(10, n_clusters=4), [3, 3, 2, 2])
    np.testing.assert_array_equal(balanced_sizes(10, n_clusters=4, demand=[0, 5, 0, 5]), [2, 3, 2, 3])
    sizes = balanced_sizes(1001, [0.5, 0.3, 0.2])
    assert sizes.sum() == 1001 and np.all(np.abs(sizes - np.array([500.5, 300.3, 200.2])) < 1)
    with pytest.raises(ValueError, match="n_clusters"):
        balanced_sizes(10)
    with pytest.raises(ValueError, match="sum to 1"):
        balanced_sizes(10, [0.5, 0.2])


# ---------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inplace", [False, True])
def test_device_and_modes_agree(device, inplace):
    logp = _imbalanced(500, 7, seed=4)
    ref = sinkhorn_knopp(logp, lam=25.0, tol=1e-5, max_iter=5000, assign="balanced")
    for dtype in (torch.float32, torch.float16):
        s = torch.as_tensor(logp).to(device=device, dtype=dtype)
        res = sinkhorn_knopp(
            s, lam=25.0, tol=1e-5, max_iter=5000, assign="balanced", inplace=inplace
        )
        assert res.labels.device.type == device and res.log_beta.device.type == device
        assert res.converged
        counts = torch.bincount(res.labels, minlength=7).cpu().numpy()
        np.testing.assert_array_equal(np.sort(counts), np.sort(np.bincount(ref.labels, minlength=7)))
        agree = np.mean(res.labels.cpu().numpy() == ref.labels)
        assert agree >= (0.99 if dtype == torch.float32 else 0.9)


# ---------------------------------------------------------------------------
# The compiled build, the scheduling of the compiled functions, the GPU pass
# ---------------------------------------------------------------------------


def _scores_with_special_rows(n, k, seed):
    logp = _log_dirichlet(n, k, seed).astype(np.float32)
    logp[3, 1] = -np.inf  # a probability zero
    logp[10, : k - 1] = -np.inf  # one possible cluster
    logp[17] = -np.inf  # no preference: uniform
    return logp


@pytest.mark.parametrize("warm", [False, True])
def test_compiled_build_equals_torch_build(monkeypatch, warm):
    from sklearn_sela.sinkhorn import _fused_pass

    S = torch.as_tensor(_scores_with_special_rows(1100, 23, seed=2))
    g = torch.as_tensor(np.random.default_rng(1).normal(size=23) * 5.0) if warm else None
    built = {}
    for minimum in (1 << 40, 0):
        monkeypatch.setattr(sk, "_COMPILED_MIN_ENTRIES", minimum)
        kernel = sk.Kernel(S, torch.empty_like(S), 25.0, g, False, False)
        assert kernel._compiled_build == (minimum == 0)
        built[minimum] = kernel
    torch_k, comp_k = built[1 << 40], built[0]
    # Same float operations up to exp(): torch's and the compiled one are
    # each within about one unit in the last place.
    np.testing.assert_allclose(comp_k.W.numpy(), torch_k.W.numpy(), rtol=3e-7, atol=0)
    np.testing.assert_array_equal(comp_k.shift.numpy(), torch_k.shift.numpy())
    np.testing.assert_array_equal(comp_k.row_max.numpy(), torch_k.row_max.numpy())
    np.testing.assert_array_equal(comp_k.empty.numpy(), torch_k.empty.numpy())
    np.testing.assert_array_equal(comp_k.reach.numpy(), torch_k.reach.numpy())
    assert comp_k.has_zeros and [r[:2] for r in comp_k.zero_rows] == [
        r[:2] for r in torch_k.zero_rows
    ]
    # Absorbing a scaling rebuilds the same kernel too.
    log_b = torch.linspace(-30.0, 0.0, 23, dtype=torch.float64)
    torch_k.absorb(log_b)
    comp_k.absorb(log_b)
    np.testing.assert_allclose(comp_k.W.numpy(), torch_k.W.numpy(), rtol=3e-7, atol=0)
    np.testing.assert_array_equal(comp_k.shift.numpy(), torch_k.shift.numpy())
    # exp() over the whole range the kernel uses, against float64.
    x = np.linspace(-60.0, 0.0, 100_001, dtype=np.float32)
    w, shift = np.empty((1, x.size), np.float32), np.empty(1)
    zero = np.zeros(1, dtype=bool)
    _fused_pass.build(
        x[None], w, np.zeros(1, np.float32), zero, zero, None, 1.0, 60.0, 60.0, shift, 1
    )
    np.testing.assert_allclose(w[0], np.exp(x.astype(np.float64)), rtol=1.2e-7)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_compiled_scan_rejects_nan_and_inf(monkeypatch, bad):
    monkeypatch.setattr(sk, "_COMPILED_MIN_ENTRIES", 0)
    logp = _log_dirichlet(300, 5, seed=0).astype(np.float32)
    logp[123, 2] = bad
    with pytest.raises(ValueError, match="NaN" if np.isnan(bad) else r"\+inf"):
        sinkhorn_knopp(logp)


def test_compiled_results_do_not_depend_on_threads():
    # Parts are fixed by the matrix, threads only share them out: the
    # column sums are added up in the same order whatever the thread count.
    from sklearn_sela.sinkhorn import _fused_pass

    rng = np.random.default_rng(3)
    W = np.exp(rng.uniform(-20.0, 0.0, size=(20_000, 31))).astype(np.float32)
    b = np.exp(rng.uniform(-3.0, 3.0, size=31)).astype(np.float32)
    assert _fused_pass.n_parts(W.shape[0]) > _fused_pass.max_threads()
    outs = []
    for n_threads in sorted({1, _fused_pass.max_threads()}):
        a, v = np.empty(20_000, np.float32), np.empty(31, np.float32)
        _fused_pass.fused_pass(W, b, a, v, n_threads)
        outs.append((a, v))
    for a, v in outs[1:]:
        np.testing.assert_array_equal(a, outs[0][0])
        np.testing.assert_array_equal(v, outs[0][1])


@pytest.mark.parametrize("entries", [None, 1000])
@pytest.mark.parametrize("inplace", [False, True])
def test_large_block_pass_gives_the_same_solve(monkeypatch, entries, inplace):
    # The GPU's pass (few large blocks, no host synchronisation), run on the
    # CPU: one block for the whole matrix, or several that do not divide it.
    logp = _imbalanced(3001, 9, seed=6)
    kw = dict(lam=100.0, tol=1e-5, max_iter=20000, inplace=inplace)
    ref = sinkhorn_knopp(logp.astype(np.float32), **kw)
    monkeypatch.setattr(sk, "_LARGE_PASS_DEVICES", ("cpu", "cuda"))
    if entries is not None:
        monkeypatch.setattr(sk, "_DEVICE_PASS_ENTRIES", entries)
    S = torch.as_tensor(logp.astype(np.float32))
    kernel = sk.Kernel(S, torch.empty_like(S), 100.0, None, False, False)
    assert kernel.pass_rows == (3001 if entries is None else 1000 // 9)
    res = sinkhorn_knopp(logp.astype(np.float32), **kw)
    assert res.converged
    assert abs(res.n_iter - ref.n_iter) <= 0.02 * ref.n_iter
    np.testing.assert_array_equal(res.labels, ref.labels)
    np.testing.assert_allclose(res.log_beta, ref.log_beta, rtol=5e-3, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_argmax_labels_equal_torch(dtype):
    from sklearn_sela.sinkhorn._rounding import argmax_labels

    # Ties (equal columns) must go to the first column, as torch's do.
    S = torch.as_tensor(_log_dirichlet(2000, 13, seed=7), dtype=dtype)
    S[:, 5] = S[:, 2]
    S[:100] = S[:100, :1]
    kernel = sk.Kernel(S, torch.empty_like(S), 25.0, None, False, False)
    b = torch.as_tensor(np.exp(np.random.default_rng(0).uniform(-5, 5, 13)), dtype=dtype)
    b[5] = b[2]
    np.testing.assert_array_equal(
        kernel.argmax_labels(b).numpy(), argmax_labels(kernel, b).numpy()
    )
