"""Distributed Sinkhorn and data-parallel fitting on 2 CPU processes (gloo).

One module-scoped fixture spawns two ranks once (``torch.multiprocessing``,
spawn start method, a free loopback port); they run every distributed check
and write their results to files that the tests below inspect.
"""

import datetime
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

import sklearn_sela.distributed as sela_dist
import sklearn_sela.sinkhorn._rounding as sela_rounding
import sklearn_sela.training as sela_training
from sklearn_sela import SelfLabelClusterer, balanced_sizes, sinkhorn_knopp
from sklearn_sela.distributed import (
    DistributedFit,
    ShardedRandomSampler,
    get_process_group,
    is_main_process,
)
from sklearn_sela.collectives import shard_bounds

WORLD = 2
N, K = 1001, 12  # odd N: shards of 500 and 501 rows
PROPORTIONS = np.linspace(1.0, 3.0, K) / np.linspace(1.0, 3.0, K).sum()
FIT_N, FIT_K = 201, 4
# Label updates at epochs 0 and 1, the label transfers at epochs 2 and 3 (of 4).
FIT_PARAMS = dict(n_clusters=FIT_K, max_epochs=4, n_label_updates=3, batch_size=32)
TIMEOUT = 150


def _scores():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(N, K)).astype(np.float32) * 2.0
    logits[:, 0] += 1.5  # a popular cluster: argmax is far from balanced
    return logits - np.log(np.exp(logits).sum(1, keepdims=True))


def _fit_data():
    X, _ = make_blobs(FIT_N, centers=FIT_K, n_features=5, random_state=0)
    return X.astype(np.float32)


def _imbalanced_data():
    # Blob sizes 120, 50, 20 and 11: the sizes "auto" should learn.
    return make_blobs([120, 50, 20, 11], n_features=5, random_state=0)


def _plain_dataset(X):
    from sklearn_sela.data import AugmentedDataset, as_dataset

    return AugmentedDataset(as_dataset(X)[0], None)  # yields (x, index)


SOLVES = {
    "argmax": dict(assign="argmax"),
    "balanced": dict(assign="balanced"),
    # One iteration: a poor plan whose argmax overfills many clusters, so the
    # greedy rounding needs several rounds.
    "balanced_rough": dict(assign="balanced", max_iter=1),
    "balanced_prior": dict(assign="balanced", cluster_proportions=PROPORTIONS),
    # The same with the threshold search that large problems use instead of
    # gathering the proposers to over-full clusters.
    "balanced_rough_search": dict(assign="balanced", max_iter=1),
}


def _worker(rank, port, outdir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        out = {}
        # -- distributed Sinkhorn on this rank's rows only ------------------
        full = np.load(os.path.join(outdir, "scores.npy"), mmap_mode="r")
        lo, hi = shard_bounds(N, WORLD, rank)
        shard = np.ascontiguousarray(full[lo:hi])
        group = get_process_group()
        for name, kw in SOLVES.items():
            limit = sela_rounding._GATHER_LIMIT
            if name.endswith("_search"):
                sela_rounding._GATHER_LIMIT = 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = sinkhorn_knopp(shard, process_group=group, **kw)
            sela_rounding._GATHER_LIMIT = limit
            out[name] = dict(
                labels=res.labels, log_beta=res.log_beta, n_iter=res.n_iter,
                log_alpha=res.log_alpha,
            )
        # -- the single-process script, unchanged -------------------------
        X = _fit_data()
        est = SelfLabelClusterer(
            **FIT_PARAMS, checkpoint_dir=os.path.join(outdir, "ckpt"),
            random_state=None,  # ranks draw different seeds: must agree
        ).fit(X)
        out["fit"] = dict(
            labels=est.labels_,
            head=est.head_,
            labels_all=est.labels_all_,
            state={k: v.clone() for k, v in est.net_.module_.state_dict().items()},
            updates=[r["label_update"] for r in est.history_ if "label_update" in r],
            module_type=type(est.net_.module_).__name__,
            batch_size=est.net_.batch_size,
            callbacks=[name for name, _ in est.net_.callbacks_],
        )
        if rank == 0:
            with open(os.path.join(outdir, "est.pkl"), "wb") as f:
                pickle.dump(est, f)
        # -- learned cluster sizes: the same on every rank ----------------
        # A fixed seed: whether a drawn one splits the largest blob varies
        # (the fit above checks that drawn seeds agree across ranks).
        auto = SelfLabelClusterer(**FIT_PARAMS, cluster_proportions="auto",
                                  random_state=0).fit(_imbalanced_data()[0].astype(np.float32))
        out["auto"] = dict(labels=auto.labels_, proportions=np.array(auto.cluster_proportions_))
        # -- a neighbour-averaged label update, neighbourhoods across shards --
        net = est.net_
        net.label_neighbors = 7
        averaged = []
        real_average = sela_training.average_over_neighbors

        def counting(*args, **kwargs):
            averaged.append(1)
            return real_average(*args, **kwargs)

        sela_training.average_over_neighbors = counting
        try:
            net.update_labels(_plain_dataset(X))
        finally:
            sela_training.average_over_neighbors = real_average
        out["neighbour_update"] = net.labels_.clone()
        out["neighbour_averages"] = len(averaged)
        torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, spawn_ranks):
    outdir = str(tmp_path_factory.mktemp("dist"))
    np.save(os.path.join(outdir, "scores.npy"), _scores())
    spawn_ranks(_worker, outdir, WORLD, TIMEOUT)
    results = [
        torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False)
        for r in range(WORLD)
    ]
    return outdir, results


@pytest.mark.parametrize("name", list(SOLVES))
def test_sinkhorn_equals_single_process(ranks, name):
    _, results = ranks
    kw = SOLVES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sinkhorn_knopp(_scores(), **kw)
    labels = np.concatenate([r[name]["labels"] for r in results])
    log_alpha = np.concatenate([r[name]["log_alpha"] for r in results])
    assert labels.shape == (N,)
    for r in results:
        assert r[name]["n_iter"] == ref.n_iter
        np.testing.assert_allclose(r[name]["log_beta"], ref.log_beta, atol=1e-4)
    np.testing.assert_allclose(log_alpha, ref.log_alpha, atol=1e-4)
    assert (labels == ref.labels).mean() >= 0.999
    if kw["assign"] == "balanced":
        sizes = np.bincount(labels, minlength=K)
        # Exact global sizes: those of the single-process solve, and
        # floor/ceil of N * proportion (the remainder's placement follows
        # the argmax demand).
        np.testing.assert_array_equal(sizes, np.bincount(ref.labels, minlength=K))
        ideal = N * (PROPORTIONS if "cluster_proportions" in kw else np.full(K, 1 / K))
        assert np.all((sizes == np.floor(ideal)) | (sizes == np.ceil(ideal)))


def test_rough_plan_needs_rounding(ranks):
    # Guard that the "balanced_rough" case exercises the multi-round greedy.
    _, results = ranks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sinkhorn_knopp(_scores(), assign="argmax", max_iter=1)
    sizes = np.bincount(ref.labels, minlength=K)
    assert sizes.max() > 2 * balanced_sizes(N, n_clusters=K).max()
    assert all(r["balanced_rough"]["n_iter"] == 1 for r in results)


def test_distributed_fit(ranks):
    outdir, results = ranks
    fits = [r["fit"] for r in results]
    # Labels for all N samples, identical on every rank: the same head's
    # predictions; the transfer's partition, all-gathered from the ranks'
    # shards, balanced.
    for f in fits:
        assert f["labels"].shape == (FIT_N,)
        assert f["head"] == fits[0]["head"]
        np.testing.assert_array_equal(f["labels"], fits[0]["labels"])
        np.testing.assert_array_equal(f["labels_all"], fits[0]["labels_all"])
        sizes = np.bincount(f["labels_all"][:, 0], minlength=FIT_K)
        assert set(sizes) <= {FIT_N // FIT_K, -(-FIT_N // FIT_K)}
        # DDP is unwrapped before the estimator is stored.
        assert f["module_type"] == "MultiHeadNet"
        assert f["batch_size"] == 16  # global batch 32 over 2 ranks
    # Each rank labelled only its own shard of the samples.
    for rank, f in enumerate(fits):
        lo, hi = shard_bounds(FIT_N, WORLD, rank)
        assert [u["local_rows"] for u in f["updates"]] == [hi - lo] * 2
    # Same model (parameters and batch-norm buffers) on every rank.
    for key, value in fits[0]["state"].items():
        torch.testing.assert_close(value, fits[1]["state"][key], rtol=0, atol=0)
    # Only rank 0 writes checkpoints; it saved the unwrapped module.
    assert "checkpoint" in fits[0]["callbacks"]
    assert "checkpoint" not in fits[1]["callbacks"]
    state = torch.load(os.path.join(outdir, "ckpt", "checkpoint.pt"), weights_only=True)
    assert set(state["module"]) == set(fits[0]["state"])
    assert state["epochs_done"] == 4


def test_fitted_model_usable_in_parent(ranks):
    outdir, results = ranks
    with open(os.path.join(outdir, "est.pkl"), "rb") as f:
        est = pickle.load(f)
    X = _fit_data()
    np.testing.assert_array_equal(est.labels_, results[0]["fit"]["labels"])
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    # The same clusters as a single-process fit with the ranks' seed (not
    # the same numbers: each rank normalised its own half-batches).
    single = SelfLabelClusterer(**FIT_PARAMS, random_state=est.net_.label_seed).fit(X)
    assert adjusted_rand_score(single.labels_, est.labels_) > 0.9
    feats = est.transform(X[:10])
    assert feats.shape[0] == 10 and np.isfinite(feats).all()


def test_distributed_fit_learns_the_same_sizes(ranks):
    # With cluster_proportions="auto" every rank learns the same unequal
    # sizes (the transfer's k-means runs on all-gathered features) and ends
    # with the same clusters. (A 4-epoch fit of these blobs has not settled
    # its partition, so the ranks' own batch-norm statistics can move a
    # cluster against a single-process fit: that is checked with equal
    # sizes above.)
    _, results = ranks
    a, b = (r["auto"] for r in results)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    np.testing.assert_array_equal(a["proportions"], b["proportions"])
    assert a["proportions"].max() > 1.2 / FIT_K
    assert np.bincount(a["labels"], minlength=FIT_K).max() > 1.2 * FIT_N / FIT_K


def test_neighbour_update_equals_single_process(ranks):
    # Each rank averaged its shard's probabilities over neighbourhoods that
    # reach into the other shard; the same step in one process agrees.
    outdir, results = ranks
    with open(os.path.join(outdir, "est.pkl"), "rb") as f:
        net = pickle.load(f).net_  # as fitted, before that step
    torch.testing.assert_close(results[0]["neighbour_update"], results[1]["neighbour_update"],
                               rtol=0, atol=0)
    net.label_neighbors = 7
    net.update_labels(_plain_dataset(_fit_data()))
    got = results[0]["neighbour_update"].numpy()
    assert (got == net.labels_.numpy()).mean() >= 0.99
    # Each rank averaged every head's probabilities. (Whether the averaging
    # changes any label depends on the fit, whose seed is drawn: on these
    # well-separated blobs it often does not.)
    assert [r["neighbour_averages"] for r in results] == [net.labels_.shape[1]] * WORLD


def _cuda_worker(rank, port, outdir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        est = SelfLabelClusterer(
            **FIT_PARAMS, device="cuda", random_state=0,
        ).fit(_fit_data())
        torch.save({"labels": est.labels_, "device": str(est.net_.device)},
                   os.path.join(outdir, f"cuda{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_distributed_fit_on_cuda(tmp_path, spawn_ranks):
    # Two ranks on the GPU(s) at hand (both on cuda:0 with one GPU; gloo
    # carries CUDA tensors): DDP on CUDA, labels on every rank.
    spawn_ranks(_cuda_worker, str(tmp_path), WORLD, TIMEOUT)
    outs = [torch.load(tmp_path / f"cuda{r}.pt", weights_only=False) for r in range(WORLD)]
    np.testing.assert_array_equal(outs[0]["labels"], outs[1]["labels"])
    assert all(o["device"].startswith("cuda") for o in outs)


# -- single-process pieces ----------------------------------------------------
def test_not_distributed_by_default():
    assert get_process_group() is None
    assert DistributedFit.detect() is None
    assert is_main_process()


@pytest.mark.parametrize("n, world", [(10, 3), (1001, 2), (5, 8)])
def test_shard_bounds_partition(n, world):
    bounds = [shard_bounds(n, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


class _FakeRankSampler(ShardedRandomSampler):
    def __init__(self, n, seed, world, rank):
        super().__init__(n, seed)
        self._w = (world, rank)

    def _world(self):
        return self._w


def test_sampler_shards_cover_epoch_and_reshuffle():
    n, world = 11, 3
    parts = [list(_FakeRankSampler(n, 5, world, r)) for r in range(world)]
    assert all(len(p) == len(_FakeRankSampler(n, 5, world, 0)) == 4 for p in parts)
    assert set(sum(parts, [])) == set(range(n))
    s = _FakeRankSampler(n, 5, world, 0)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    # Outside a distributed run: a permutation of all samples.
    plain = ShardedRandomSampler(n, 5)
    assert len(plain) == n and sorted(plain) == list(range(n))


def test_init_from_environment_only_in_launched_process(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(sela_dist.atexit, "register", lambda fn: None)
    for var in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", sela_dist._OWNER_VAR):
        monkeypatch.delenv(var, raising=False)
    assert not sela_dist.init_from_environment("cpu")  # no launcher
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    # A process started by a rank inherits its variables but is no rank.
    monkeypatch.setenv(sela_dist._OWNER_VAR, str(os.getpid() + 1))
    assert not sela_dist.init_from_environment("cpu")
    monkeypatch.delenv(sela_dist._OWNER_VAR)
    assert sela_dist.init_from_environment("cpu")
    assert calls == [{"backend": "gloo"}]
    assert os.environ[sela_dist._OWNER_VAR] == str(os.getpid())


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch):
    # torchrun --nproc_per_node=2 on a machine with one GPU: rank 1 would
    # ask for cuda:1 (NCCL also refuses two ranks on one GPU).
    picked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", picked.append)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: None)
    monkeypatch.setattr(sela_dist.atexit, "register", lambda fn: None)
    for var, value in dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1",
                           MASTER_ADDR="127.0.0.1", MASTER_PORT="29500").items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv(sela_dist._OWNER_VAR, raising=False)
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK=1.*1 CUDA device.*nproc_per_node=1"):
        sela_dist.init_from_environment("cuda")
    assert picked == []
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert sela_dist.init_from_environment("cuda")
    assert picked == [0]
    monkeypatch.delenv(sela_dist._OWNER_VAR)
