"""Faults are reported, not hidden: nothing lost, nothing pretended.

* :func:`~sklearn_sela.sinkhorn_knopp` refuses a cluster that no sample may
  join (all scores ``-inf``), and does not call a plan converged when it
  only meets the cluster sizes through ``-inf`` scores (checked against the
  plan rebuilt in float64 from the returned scalings, also across two
  ranks of a gloo process group);
* :func:`~sklearn_sela.data.find_image_files` raises for a folder
  that does not exist or is not a folder, instead of returning ``[]``;
* an unreadable sample of a dataset (a truncated PNG file read through
  torchvision's ``ImageFolder`` or sklearn_sela's ``ImageFiles``) raises an
  error that names the sample index and its file, of the original type and
  chained to the original error.
"""

import datetime
import sys
import errno
import os
import pickle
import re
import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from sklearn_sela import SelfLabelClusterer, sinkhorn_knopp
from sklearn_sela.data import AugmentedDataset, ImageFiles, as_dataset, find_image_files

# ---------------------------------------------------------------------------
# Sinkhorn: -inf columns and honest convergence
# ---------------------------------------------------------------------------

LAM = 25.0
# (container, dtype, inplace): stored kernel, in-place float32/float64 (the
# scores are overwritten: their -inf pattern is kept aside) and in-place
# float16 (streamed from the scores).
MODES = [
    ("numpy", np.float64, False),
    ("numpy", np.float32, False),
    ("torch", torch.bfloat16, False),
    ("numpy", np.float64, True),
    ("torch", torch.float32, True),
    ("torch", torch.float16, True),
]


def _log_dirichlet(n, k, seed):
    rng = np.random.default_rng(seed)
    return np.log(rng.dirichlet(np.ones(k), size=n))


def _cast(x, container, dtype):
    if container == "numpy":
        return np.array(x, dtype=dtype)  # a fresh, writable copy
    return torch.as_tensor(np.asarray(x, dtype=np.float64)).to(dtype)


def _f64(x):
    if isinstance(x, torch.Tensor):
        return x.detach().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _plan_errors(scores, res, lam=LAM, proportions=None):
    """L1 errors of the sample and cluster marginals of the plan
    ``exp(log_alpha + lam * scores + log_beta)``, rebuilt in float64: zero
    wherever a score is -inf (no row here is entirely -inf)."""
    s = _f64(scores)
    q = np.exp(_f64(res.log_alpha)[:, None] + lam * s + _f64(res.log_beta)[None, :])
    n, k = s.shape
    p = np.full(k, 1.0 / k) if proportions is None else np.asarray(proportions)
    row = np.abs(q.sum(axis=1) - 1.0 / n).sum()
    col = np.abs(q.sum(axis=0) - p).sum()
    return row, col


@pytest.mark.parametrize("container,dtype,inplace", MODES)
@pytest.mark.parametrize("assign", ["argmax", "balanced"])
def test_cluster_nobody_may_join_is_an_error(container, dtype, inplace, assign):
    logp = _log_dirichlet(100, 4, seed=0)
    logp[:, 2] = -np.inf  # probability zero for every sample
    scores = _cast(logp, container, dtype)
    # Before: 24 of the 100 samples labelled 2, and converged=True.
    with pytest.raises(ValueError) as info:
        sinkhorn_knopp(scores, lam=LAM, assign=assign, inplace=inplace)
    msg = str(info.value)
    assert re.search(r"Cluster\(s\) 2 have score -inf \(probability zero\) for every sample", msg)
    assert "equal-size constraint (100 / 4 samples per cluster) cannot be met" in msg


def test_cluster_nobody_may_join_with_cluster_proportions():
    logp = _log_dirichlet(100, 4, seed=1)
    logp[:, [1, 3]] = -np.inf
    with pytest.raises(ValueError, match=re.escape(
        "Cluster(s) 1, 3 have score -inf (probability zero) for every sample, "
        "so no sample can join them and the cluster sizes set by "
        "cluster_proportions cannot be met"
    )):
        sinkhorn_knopp(logp, cluster_proportions=[0.4, 0.1, 0.4, 0.1])
    # A cluster cannot be switched off with proportion 0 (that was already
    # refused): the remedy the message names, dropping the columns, works.
    with pytest.raises(ValueError, match="strictly positive"):
        sinkhorn_knopp(logp, cluster_proportions=[0.5, 0.0, 0.5, 0.0])
    res = sinkhorn_knopp(np.ascontiguousarray(logp[:, [0, 2]]), cluster_proportions=[0.5, 0.5])
    assert res.converged
    assert np.bincount(res.labels, minlength=2).min() > 0


def test_rows_without_preference_may_fill_a_cluster():
    # A row that is entirely -inf is uniform by convention, so it may join
    # any cluster: no error, and with enough such rows the plan is exact...
    logp = _log_dirichlet(100, 4, seed=2)
    logp[:, 3] = -np.inf
    logp[:30] = -np.inf
    res = sinkhorn_knopp(logp, lam=LAM, assign="balanced")
    assert res.converged
    assert set(np.flatnonzero(res.labels == 3)) <= set(range(30))
    # ...but 5 such rows cannot make a quarter of 100 (before: converged).
    logp[5:30] = _log_dirichlet(25, 4, seed=2)
    logp[5:30, 3] = -np.inf
    with pytest.warns(ConvergenceWarning, match=r"mostly in cluster\(s\) 3:"):
        res = sinkhorn_knopp(logp, lam=LAM, assign="balanced")
    assert not res.converged and res.marginal_error > 0.3


@pytest.mark.parametrize("container,dtype,inplace", MODES)
@pytest.mark.parametrize("assign", ["argmax", "balanced"])
def test_converged_only_without_minus_inf_mass(container, dtype, inplace, assign):
    logp = _log_dirichlet(100, 4, seed=3)
    logp[10:, 3] = -np.inf  # only 10 samples may join cluster 3, which needs 25
    scores = _cast(logp, container, dtype)
    values = _f64(scores).copy()  # (in place, scores are overwritten)
    with pytest.warns(ConvergenceWarning) as caught:
        res = sinkhorn_knopp(scores, lam=LAM, assign=assign, inplace=inplace)
    msg = " ".join(str(w.message) for w in caught)
    assert "using only scores above -inf" in msg
    assert re.search(r"-inf \(probability zero\), mostly in cluster\(s\) 3:", msg)
    # Before: converged=True with marginal_error < tol, while the plan of
    # the returned scalings gives cluster 3 only ~10 of its 25 samples.
    assert not res.converged
    row, col = _plan_errors(values, res)
    assert col > 0.1
    # The reported error is that plan's, not understated.
    assert res.marginal_error >= row + col - 1e-3
    labels = _f64(res.labels).astype(int)
    if assign == "balanced":  # sizes stay exact, through -inf scores
        np.testing.assert_array_equal(np.bincount(labels, minlength=4), [25] * 4)

    # Enough samples for cluster 3, and -inf elsewhere too: converged, and
    # the plan rebuilt with exact zeros at -inf meets both marginals; so
    # does a warm-started solve.
    rng = np.random.default_rng(4)
    logp[10:40, 3] = _log_dirichlet(30, 1, seed=4)[:, 0] - 1.0
    logp[:, :3][rng.random((100, 3)) < 0.2] = -np.inf
    logp[np.isneginf(logp).all(axis=1), 0] = 0.0
    values = _f64(_cast(logp, container, dtype)).copy()
    res = sinkhorn_knopp(_cast(logp, container, dtype), lam=LAM, assign=assign, inplace=inplace)
    assert res.converged and res.marginal_error <= 1e-3
    # (float32 arithmetic, as for all but float64 scores, resolves lam *
    # scores to ~3e-5 nats here.)
    assert sum(_plan_errors(values, res)) <= 1e-3 + 2e-4
    warm = sinkhorn_knopp(
        _cast(logp, container, dtype), lam=LAM, assign=assign, inplace=inplace, warm_start=res
    )
    assert warm.converged and warm.n_iter <= res.n_iter
    assert sum(_plan_errors(values, warm)) <= 1e-3 + 2e-4


def test_minus_inf_pattern_kept_on_any_device(monkeypatch):
    # In place, float32/float64 scores are overwritten: their -inf pattern is
    # packed to bits (numpy on CPU, torch elsewhere). The torch packing, run
    # here on CPU, gives the same answers.
    import sklearn_sela.sinkhorn._kernel as sk

    rng = np.random.default_rng(6)
    for k in (1, 8, 13):
        mask = torch.as_tensor(rng.random((9, k)) < 0.5)
        packed = sk._pack_bits_torch(mask)
        assert torch.equal(packed, sk._pack_bits(mask))
        assert torch.equal(sk._unpack_bits_torch(packed, k).bool(), mask)
    logp = _log_dirichlet(100, 5, seed=6)
    logp[rng.random(logp.shape) < 0.3] = -np.inf
    logp[8:, 4] = -np.inf
    logp[np.isneginf(logp).all(axis=1), 0] = 0.0
    with pytest.warns(ConvergenceWarning):
        ref = sinkhorn_knopp(logp.copy(), lam=LAM, inplace=True)
    monkeypatch.setattr(sk, "_pack_bits", sk._pack_bits_torch)
    monkeypatch.setattr(sk, "_unpack_bits", sk._unpack_bits_torch)
    with pytest.warns(ConvergenceWarning, match=r"mostly in cluster\(s\) 4:"):
        res = sinkhorn_knopp(logp.copy(), lam=LAM, inplace=True)
    assert not res.converged
    assert res.marginal_error == pytest.approx(ref.marginal_error, rel=1e-9)
    assert res.marginal_error >= sum(_plan_errors(logp, res)) - 1e-3


# -- two ranks of a gloo process group --------------------------------------

WORLD = 2
_DIST_TIMEOUT = 120


def _dist_problems():
    """Global score matrices; rank r holds rows [60 r, 60 r + 60)."""
    base = _log_dirichlet(120, 4, seed=5)
    other_rank = base.copy()
    other_rank[:60, 3] = -np.inf  # rank 0 alone would have to raise
    nobody = base.copy()
    nobody[:, 3] = -np.inf
    few = base.copy()
    few[np.r_[0:60, 65:120], 3] = -np.inf  # 5 samples for a target of 30
    one_sided = base.copy()
    one_sided[60:90, 0] = -np.inf  # -inf on rank 1 only, feasible
    return dict(other_rank=other_rank, nobody=nobody, few=few, one_sided=one_sided)


def _dist_worker(rank, port, outdir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
        world_size=WORLD, timeout=datetime.timedelta(seconds=60),
    )
    try:
        out = {}
        for name, full in _dist_problems().items():
            shard = np.ascontiguousarray(full[60 * rank : 60 * rank + 60])
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    res = sinkhorn_knopp(
                        shard, lam=LAM, assign="balanced", process_group=dist.group.WORLD
                    )
            except ValueError as exc:
                out[name] = dict(raised=str(exc))
                continue
            out[name] = dict(
                converged=res.converged, error=res.marginal_error, labels=res.labels,
                warnings=[str(w.message) for w in caught],
            )
        with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(out, f)
    finally:
        dist.destroy_process_group()


def test_minus_inf_checks_across_ranks(tmp_path, spawn_ranks):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    spawn_ranks(_dist_worker, str(tmp_path), WORLD, _DIST_TIMEOUT)
    ranks = []
    for r in range(WORLD):
        with open(tmp_path / f"rank{r}.pkl", "rb") as f:
            ranks.append(pickle.load(f))
    problems = _dist_problems()
    # Rank 1's rows reach the cluster that rank 0's rows do not.
    for name in ("other_rank", "one_sided"):
        assert all(r[name]["converged"] for r in ranks), name
        labels = np.concatenate([r[name]["labels"] for r in ranks])
        np.testing.assert_array_equal(np.bincount(labels, minlength=4), [30] * 4)
    # Nobody reaches it: every rank raises (none waits for the others).
    for r in ranks:
        assert "Cluster(s) 3 have score -inf" in r["nobody"]["raised"]
    # Too few samples, on one rank: both report the same honest error, that
    # of a single process on the whole matrix.
    with pytest.warns(ConvergenceWarning):
        single = sinkhorn_knopp(problems["few"], lam=LAM, assign="balanced")
    for r in ranks:
        assert not r["few"]["converged"]
        assert r["few"]["error"] == pytest.approx(single.marginal_error, rel=1e-6)
        assert any("mostly in cluster(s) 3" in w for w in r["few"]["warnings"])
    assert single.marginal_error > 0.3


# ---------------------------------------------------------------------------
# find_image_files: a missing folder is not an empty one
# ---------------------------------------------------------------------------


def test_find_image_files_missing_folder(tmp_path):
    missing = tmp_path / "typo"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as info:
        find_image_files(missing)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(missing)


def test_find_image_files_not_a_folder(tmp_path):
    from PIL import Image

    path = tmp_path / "one.png"
    Image.new("L", (4, 4)).save(path)
    with pytest.raises(NotADirectoryError, match=re.escape(str(path))) as info:
        find_image_files(path)
    assert info.value.errno == errno.ENOTDIR
    # An existing folder without images is still just empty.
    (tmp_path / "empty").mkdir()
    assert find_image_files(tmp_path / "empty") == []
    assert find_image_files(tmp_path) == [str(path)]


def test_find_image_files_unlistable_folder(tmp_path, monkeypatch):
    # (Simulated: chmod does not stop root, who may run the tests.)
    root = str(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(b"")
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) in (root, os.path.join(root, "sub")):
            blocked = os.fspath(path)
            raise PermissionError(errno.EACCES, "Permission denied", blocked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PermissionError, match="Permission denied"):
        find_image_files(root)
    monkeypatch.setattr(os, "scandir", lambda p: (
        scandir(p) if os.fspath(p) != root else real_scandir(p)
    ))
    # An unlistable sub-folder is skipped, as os.walk does.
    assert find_image_files(root) == [os.path.join(root, "a.png")]


# ---------------------------------------------------------------------------
# Unreadable samples name their index and file
# ---------------------------------------------------------------------------


@pytest.fixture
def folder_with_truncated_png(tmp_path, monkeypatch):
    """An ImageFolder layout of 2 x 5 noise PNGs; ``b/2.png`` (sample 7)
    keeps only the first half of its bytes."""
    from PIL import Image, ImageFile

    # Decoding must fail (the default), whatever another test set.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    bad = tmp_path / "b" / "2.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return tmp_path, str(bad), 7


def _check_read_error(exc, index, path):
    assert isinstance(exc, OSError)
    assert str(exc).startswith(f"Could not read sample {index} ")
    assert path in str(exc)
    # The original error, chained, says what was wrong with the file.
    assert isinstance(exc.__cause__, OSError)
    assert "truncated" in str(exc.__cause__) and "truncated" in str(exc)


def test_truncated_image_in_image_folder(folder_with_truncated_png):
    from torch.utils.data import Subset
    from torchvision.datasets import ImageFolder

    root, bad, index = folder_with_truncated_png
    folder = ImageFolder(root)
    assert folder.samples[index][0] == bad
    ds, info = as_dataset(folder)
    assert info.n_samples == 10
    for read in (
        lambda: ds[index],
        lambda: ds.get_batch(range(4, 9)),
        lambda: AugmentedDataset(ds).__getitems__([0, index]),
        lambda: AugmentedDataset(folder)[index],  # a user dataset as base
    ):
        with pytest.raises(OSError) as exc:
            read()
        _check_read_error(exc.value, index, bad)
    assert ds[index - 1].shape == (3, 16, 16)  # the others still read
    # Through a Subset the index is the subset's, the file still found.
    with pytest.raises(OSError) as exc:
        as_dataset(Subset(folder, [index, 0]))  # item 0 is read up front
    _check_read_error(exc.value, 0, bad)


def test_truncated_image_in_image_files(folder_with_truncated_png):
    root, bad, index = folder_with_truncated_png
    paths = find_image_files(root)
    assert paths[index] == bad
    ds, _ = as_dataset(ImageFiles(paths))
    with pytest.raises(OSError) as exc:
        ds.get_batch([0, index])
    _check_read_error(exc.value, index, bad)
    # ImageFiles names the file itself; it is not repeated.
    assert str(exc.value).count(bad) == 1


def test_truncated_image_fails_fit_with_its_name(folder_with_truncated_png):
    from torchvision.datasets import ImageFolder

    root, bad, index = folder_with_truncated_png
    est = SelfLabelClusterer(n_clusters=2, max_epochs=1, batch_size=4, random_state=0)
    with pytest.raises(OSError) as exc:
        est.fit(ImageFolder(root))
    _check_read_error(exc.value, index, bad)


class _Failing(torch.utils.data.Dataset):
    """Items are arrays, except item ``bad``, which raises ``error``."""

    def __init__(self, error, bad=2):
        self.error, self.bad = error, bad

    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == self.bad:
            raise self.error
        return np.zeros(3, dtype=np.float32)


class _TwoArgError(Exception):
    def __init__(self, code, reason):
        super().__init__(f"{code}: {reason}")


def test_read_errors_keep_their_type():
    ds, _ = as_dataset(_Failing(ValueError("bad record")))
    expected = r"^Could not read sample 2 of the dataset: bad record$"
    with pytest.raises(ValueError, match=expected) as exc:
        ds[2]
    assert str(exc.value.__cause__) == "bad record"
    # An out-of-range index stays an IndexError (iteration relies on it).
    ds, _ = as_dataset(_Failing(IndexError("list index out of range")))
    with pytest.raises(IndexError, match="Could not read sample 2"):
        ds[2]
    # A type that cannot be built from a message: the original, with a note.
    ds, _ = as_dataset(_Failing(_TwoArgError(7, "gone")))
    with pytest.raises(_TwoArgError) as exc:
        ds[2]
    assert str(exc.value) == "7: gone"
    if hasattr(exc.value, "add_note"):
        assert "Could not read sample 2 of the dataset: 7: gone" in exc.value.__notes__
    # The first item is read up front: its failure names it as well.
    with pytest.raises(ValueError, match="^Could not read sample 0 of the dataset: nope$"):
        as_dataset(_Failing(ValueError("nope"), bad=0))


# ---------------------------------------------------------------------------
# Interrupts: Ctrl-C stops a fit, it does not end it
# ---------------------------------------------------------------------------


def test_interrupted_fit_raises_and_keeps_nothing(tmp_path):
    from skorch.callbacks import Callback

    class CtrlC(Callback):
        def on_epoch_begin(self, net, **kwargs):
            if len(net.history) == 3:
                raise KeyboardInterrupt  # what the terminal's SIGINT raises

    X = np.random.default_rng(0).normal(size=(120, 5)).astype(np.float32)
    est = SelfLabelClusterer(n_clusters=3, n_heads=1, max_epochs=6, callbacks=[CtrlC()],
                             checkpoint_dir=str(tmp_path), random_state=0)
    with pytest.raises(KeyboardInterrupt, match=r"epoch 3 of 6.*checkpoint_dir="):
        est.fit(X)
    assert not hasattr(est, "labels_") and not hasattr(est, "net_")
    # The checkpoint holds the two complete epochs; a fit resumes from it and
    # ends as an uninterrupted fit does.
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epochs_done"] == 2
    resumed = SelfLabelClusterer(n_clusters=3, n_heads=1, max_epochs=6,
                                 checkpoint_dir=str(tmp_path), random_state=0).fit(X)
    full = SelfLabelClusterer(n_clusters=3, n_heads=1, max_epochs=6, random_state=0).fit(X)
    np.testing.assert_array_equal(resumed.labels_, full.labels_)


def test_sigint_stops_sela_fit_with_status_130_and_no_results(tmp_path):
    import shutil
    import signal
    import subprocess

    exe = shutil.which("sela")
    if exe is None:
        pytest.skip("the sela command is not installed")
    X = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.csv").write_text("a user's own file\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [exe, "fit", str(tmp_path / "X.npy"), "--n-clusters", "3", "--n-heads", "1",
           "--max-epochs", "40", "--random-state", "0", "--checkpoint", "--out", str(out),
           "--quiet", "--overwrite"]
    # A shell without job control starts background commands with SIGINT
    # ignored, and Python keeps an ignored SIGINT ignored: give the child
    # the default disposition, as a terminal's foreground job has.
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = out / "checkpoint" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the fit ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("sela: interrupted; no results were written; the checkpoint in ")
    assert "--resume" in lines[-1]
    # The user's file is untouched and no result of the run was written.
    assert (out / "labels.csv").read_text() == "a user's own file\n"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "labels.csv"]
    done = torch.load(ckpt, weights_only=True)["epochs_done"]
    assert 1 <= done < 40
    # Resumed, the run ends where an uninterrupted one does.
    (out / "labels.csv").unlink()
    subprocess.run(cmd + ["--resume"], check=True, env=env, capture_output=True)
    ref = tmp_path / "ref"
    subprocess.run([a if a != str(out) else str(ref) for a in cmd if a != "--checkpoint"],
                   check=True, env=env, capture_output=True)
    assert (out / "labels.csv").read_text() == (ref / "labels.csv").read_text()


# ---------------------------------------------------------------------------
# Resumes check that they continue the same run; divergence is named
# ---------------------------------------------------------------------------


def _blobs():
    return np.random.default_rng(1).normal(size=(90, 6)).astype(np.float32)


def test_resume_refuses_another_run_naming_the_parameters(tmp_path):
    X = _blobs()
    SelfLabelClusterer(n_clusters=3, n_heads=1, max_epochs=2, checkpoint_dir=str(tmp_path),
                       random_state=0).fit(X)
    for change, names in ((dict(n_clusters=4), "n_clusters=3 there, 4 here"),
                          (dict(lr=0.1, max_epochs=1),
                           "lr=0.05 there, 0.1 here, max_epochs=2 there, 1 here"),
                          (dict(random_state=5), "random_state=0 there, 5 here")):
        params = {**dict(n_clusters=3, n_heads=1, max_epochs=2, random_state=0), **change}
        with pytest.raises(ValueError, match=re.escape(names)):
            SelfLabelClusterer(checkpoint_dir=str(tmp_path), **params).fit(X)
    with pytest.raises(ValueError, match=re.escape("n_samples=90 there, 60 here")):
        SelfLabelClusterer(n_clusters=3, n_heads=1, max_epochs=2, random_state=0,
                           checkpoint_dir=str(tmp_path)).fit(X[:60])
    # What does not change the training may differ; random_state=None
    # continues the saved run's seed.
    est = SelfLabelClusterer(n_clusters=3, n_heads=1, max_epochs=2, verbose=0,
                             num_workers=0, checkpoint_dir=str(tmp_path)).fit(X)
    assert est.net_.label_seed == 0


def test_damaged_checkpoint_is_named_and_never_unpickled(tmp_path):
    X = _blobs()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint\.pt' is damaged.*delete it"):
        SelfLabelClusterer(n_clusters=3, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(X)

    class Hostile:
        def __reduce__(self):
            return (os.system, ("echo hacked > " + str(tmp_path / "pwned"),))

    torch.save({"run": Hostile()}, path)
    with pytest.raises(ValueError, match="damaged") as info:
        SelfLabelClusterer(n_clusters=3, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(X)
    assert not (tmp_path / "pwned").exists()
    assert "weights_only" not in str(info.value)


def test_diverging_training_names_the_epoch_and_the_learning_rate():
    X = _blobs() * 1e3
    with pytest.raises(FloatingPointError, match=r"in epoch \d+: training diverged.*lr=1e\+06"):
        SelfLabelClusterer(n_clusters=3, n_heads=1, max_epochs=5, lr=1e6,
                           random_state=0).fit(X)


# ---------------------------------------------------------------------------
# Output folders: written whole after training, never over a user's files
# ---------------------------------------------------------------------------


def _images(folder, n=24):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")


def _fit(*argv):
    from sklearn_sela.cli import main

    return main(["fit", *argv, "--n-clusters", "2", "--n-heads", "1", "--max-epochs", "2",
                 "--random-state", "0", "-q"])


def test_outputs_are_not_read_back_as_input_and_replace_the_previous_set(tmp_path,
                                                                           monkeypatch):
    import csv

    _images(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert _fit(".", "--features") == 0  # cd images && sela fit .
    first = set(os.listdir(tmp_path))
    assert {"labels.csv", "model.pt", "features.npy", "montage.png", "summary.json",
            ".sela-fit-outputs.json"} <= first
    assert _fit(".") == 0  # again: its own montage.png is no input
    with open(tmp_path / "labels.csv") as fh:
        paths = [row[0] for row in csv.reader(fh)][1:]
    assert len(paths) == 24 and all(os.path.basename(p)[:-4].isdigit() for p in paths)
    # The second run's set replaced the first's: no stale features.npy.
    assert not (tmp_path / "features.npy").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".sela-partial")]


def test_files_sela_did_not_write_are_kept_unless_overwrite(tmp_path, capsys):
    _images(tmp_path / "img")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("mine")
    (out / "notes.txt").write_text("mine too")
    assert _fit(str(tmp_path / "img"), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "holds summary.json, which sela did not write" in err and "--overwrite" in err
    assert (out / "summary.json").read_text() == "mine"
    assert _fit(str(tmp_path / "img"), "--out", str(out), "--overwrite") == 0
    assert (out / "summary.json").read_text() != "mine"
    assert (out / "notes.txt").read_text() == "mine too"  # never sela's to replace


def test_unwritable_output_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import sklearn_sela.clusterer as clusterer
    import sklearn_sela.outputs as outputs

    _images(tmp_path / "img")

    def read_only(**kwargs):  # what a read-only folder answers (also to root here)
        raise PermissionError(13, "Permission denied")

    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(outputs.tempfile, "mkdtemp", read_only)
    monkeypatch.setattr(clusterer.SelfLabelClusterer, "fit", no_training)
    assert _fit(str(tmp_path / "img"), "--out", str(tmp_path / "ro")) == 1
    err = capsys.readouterr().err
    assert "cannot write into the output folder" in err and "Permission denied" in err
    # A path below a file cannot even be created.
    (tmp_path / "file").write_text("")
    assert _fit(str(tmp_path / "img"), "--out", str(tmp_path / "file" / "out")) == 1
    assert "sela: error:" in capsys.readouterr().err


def test_a_failed_run_leaves_the_previous_results(tmp_path, monkeypatch):
    import sklearn_sela.cli.fit as cli_fit

    _images(tmp_path / "img")
    out = tmp_path / "out"
    assert _fit(str(tmp_path / "img"), "--out", str(out)) == 0
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cli_fit, "write_labels_csv", broken)
    assert _fit(str(tmp_path / "img"), "--out", str(out)) == 1
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before


def test_file_names_that_are_not_utf8_are_written_byte_for_byte(tmp_path):
    if sys.platform == "darwin":
        pytest.skip("the file system requires UTF-8 names")
    from PIL import Image

    folder = tmp_path / "img"
    _images(folder, n=6)
    odd = os.fsencode(str(folder)) + b"/caf\xe9.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.fsdecode(odd))
    assert _fit(str(folder), "--out", str(tmp_path / "out")) == 0
    data = (tmp_path / "out" / "labels.csv").read_bytes()
    assert b"caf\xe9.png" in data and data.count(b"\n") == 8


def test_skip_unreadable_keeps_the_readable_samples_and_lists_the_others(tmp_path):
    from torchvision.datasets import ImageFolder

    from sklearn_sela.data import SkipUnreadable

    for cls in ("a", "b"):
        _images(tmp_path / cls, n=6)
    broken = tmp_path / "b" / "3.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    folder = ImageFolder(str(tmp_path), transform=lambda im: np.asarray(im.convert("L")))
    readable = SkipUnreadable(folder)
    assert len(readable) == 11 and readable.indices == [i for i in range(12) if i != 9]
    [(index, path, reason)] = readable.skipped
    assert index == 9 and path == str(broken) and reason
    est = SelfLabelClusterer(n_clusters=2, n_heads=1, max_epochs=1, random_state=0)
    assert est.fit(readable).labels_.shape == (11,)
