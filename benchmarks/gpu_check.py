"""CUDA check and timings, for a machine with a GPU.

Checks that the CUDA paths give the same answers as the CPU ones and records
timings: the Sinkhorn solver on CUDA vs CPU on the same matrix (labels must
agree), bfloat16 input, an in-place ImageNet-scale solve (N=1,281,167,
K=3,000), and a short ``SelfLabelClusterer`` fit on CUDA whose pickle is
written to ``--out`` and loaded again in a process that cannot see the GPU
(and can be carried to a machine without CUDA).
Then the NCCL path: ranks launched as subprocesses on ``cuda:0`` with the
``"cpu:gloo,cuda:nccl"`` backend that :func:`init_from_environment` picks;
first two ranks (NCCL refuses two ranks on one GPU on most versions, and
the outcome is recorded), then one rank with the estimators' distributed
mode forced on, which runs every collective, DDP and the sharded label
update through NCCL.

The throughput step compares the training epochs of ``SelfLabelClusterer``
(images per second, label steps excluded) with a plain PyTorch loop over
the same data on the same GPU: the network the fit built (a copy of
``net_.module_``), the same batch size, SGD with the same settings, the
same augmentation applied on the GPU, bfloat16 autocast and float32
losses; the uint8 images stay in host memory and each batch is gathered,
pinned and copied without waiting; no value is read back during an epoch.
Target: ours >= 0.8x plain. Then one Sinkhorn iteration against one float32
``torch.mv`` at N = 1,281,167, K = 3,000 (target <= 2x); the per-iteration
time is the difference of two solves with ``tol=0`` that stop at different
``max_iter``, so the set-up and the rounding cancel.

Usage::

    python benchmarks/gpu_check.py --out DIR
    python benchmarks/gpu_check.py --out DIR --steps sinkhorn_iteration throughput
    python benchmarks/gpu_check.py --out DIR --dry-run   # tiny sizes, CPU, end to end
"""

import argparse
import copy
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from sklearn_sela import SelfLabelClusterer, sinkhorn_knopp
from sklearn_sela.data import as_dataset, default_augmentation

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import free_port  # noqa: E402


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn):
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - start


def solver_checks(rows):
    gen = torch.Generator().manual_seed(0)
    n, k = 200_000, 1_000
    logp = torch.log_softmax(torch.randn(n, k, generator=gen) * 3, dim=1)
    cpu, t_cpu = _timed(lambda: sinkhorn_knopp(logp, lam=25.0))
    gpu_in = logp.cuda()
    sinkhorn_knopp(gpu_in[:2000, :100])  # CUDA context and kernels warm-up
    gpu, t_gpu = _timed(lambda: sinkhorn_knopp(gpu_in, lam=25.0))
    agree = float((gpu.labels.cpu() == cpu.labels).double().mean())
    b = torch.empty(k, device="cuda")
    _, t_mv = _timed(lambda: [gpu_in @ b for _ in range(10)])
    rows.append(("sinkhorn 200k x 1k peaked, CPU (16 cores)", t_cpu, cpu.n_iter, ""))
    rows.append(
        ("sinkhorn 200k x 1k peaked, CUDA", t_gpu, gpu.n_iter,
         f"agree {agree:.4f}; per-iter / mv {t_gpu / gpu.n_iter / (t_mv / 10):.2f}")
    )
    bf, t_bf = _timed(lambda: sinkhorn_knopp(gpu_in.bfloat16(), lam=25.0))
    agree_bf = float((bf.labels.cpu() == cpu.labels).double().mean())
    rows.append(("sinkhorn 200k x 1k, CUDA bfloat16 input", t_bf, bf.n_iter, f"agree {agree_bf:.4f}"))
    warm, t_warm = _timed(
        lambda: sinkhorn_knopp(gpu_in + 0.05 * torch.randn_like(gpu_in), lam=25.0, warm_start=gpu)
    )
    rows.append(("sinkhorn warm re-solve after perturbation, CUDA", t_warm, warm.n_iter,
                 f"{warm.n_iter / gpu.n_iter:.0%} of cold iterations"))
    bal, t_bal = _timed(lambda: sinkhorn_knopp(gpu_in, lam=25.0, assign="balanced"))
    sizes = torch.bincount(bal.labels, minlength=k)
    rows.append(("sinkhorn balanced labels, CUDA", t_bal, bal.n_iter,
                 f"sizes {int(sizes.min())}-{int(sizes.max())}"))

    n, k = 1_281_167, 3_000
    buf = torch.empty(n, k, device="cuda")
    for start in range(0, n, 100_000):
        blk = buf[start : start + 100_000]
        blk.normal_().mul_(3)
        blk.sub_(torch.logsumexp(blk, dim=1, keepdim=True))
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    big, t_big = _timed(lambda: sinkhorn_knopp(buf, lam=25.0, inplace=True))
    extra = (torch.cuda.max_memory_allocated() - before) / 2**30
    rows.append(("sinkhorn ImageNet-scale in-place 1.28M x 3k, CUDA", t_big, big.n_iter,
                 f"peak extra {extra:.2f} GiB over the 14.3 GiB buffer; soft is buffer: "
                 f"{big.soft.data_ptr() == buf.data_ptr()}"))
    del buf, big

    from sklearn_sela.neighbors import cosine_neighbors

    feats = torch.randn(60_000, 512, generator=gen)
    nb_cpu, t_nb_cpu = _timed(lambda: cosine_neighbors(feats, 10))
    nb_gpu, t_nb_gpu = _timed(lambda: cosine_neighbors(feats.cuda(), 10))
    same = float((nb_gpu.cpu() == nb_cpu).double().mean())
    rows.append(("label neighbours 60k x 512, k=10, CPU (16 cores)", t_nb_cpu, "", ""))
    rows.append(("label neighbours 60k x 512, k=10, CUDA", t_nb_gpu, "",
                 f"{t_nb_cpu / t_nb_gpu:.0f}x faster; same indices {same:.4f}"))


def _images(n, shape, k, seed=0):
    """Structured synthetic uint8 images, ``k`` prototypes plus noise, and
    each image's prototype."""
    rng = np.random.default_rng(seed)
    protos = rng.random((k, *shape)) > 0.7
    y = rng.integers(0, k, n)
    X = (protos[y] * 200 + rng.normal(0, 25, (n, *shape))).clip(0, 255).astype(np.uint8)
    return X, y


def fit_checks(rows, out):
    X, y = _images(20_000, (28, 28), 10)
    est = SelfLabelClusterer(
        n_clusters=10, n_heads=3, max_epochs=4, batch_size=256, device="cuda", random_state=0
    )
    _, t_fit = _timed(lambda: est.fit(X))
    from sklearn.metrics import normalized_mutual_info_score as nmi

    rows.append(("SelfLabelClusterer fit 20k x 28x28, 4 epochs, T=3, CUDA", t_fit, "",
                 f"{4 * 20_000 / t_fit:.0f} img/s incl. label updates; NMI {nmi(y, est.labels_):.3f}"))
    feats = est.transform(X[:1000])
    with open(os.path.join(out, "cuda_model.pkl"), "wb") as fh:
        pickle.dump(est, fh)
    np.save(os.path.join(out, "cuda_features.npy"), feats)
    np.save(os.path.join(out, "cuda_X.npy"), X[:1000])
    # The pickle must load where CUDA is missing: a process that cannot see the GPU.
    code = (
        "import pickle, warnings, numpy as np\n"
        "warnings.simplefilter('ignore')\n"
        "est = pickle.load(open('cuda_model.pkl', 'rb'))\n"
        "gap = np.abs(est.transform(np.load('cuda_X.npy')) - np.load('cuda_features.npy')).max()\n"
        "print(f'{est.net_.device} {gap:.2e}')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    rows.append(("pickle of the CUDA fit, loaded without CUDA", float("nan"), "",
                 f"device, max |transform gap|: {done.stdout.strip()}" if done.returncode == 0
                 else f"FAILED: {done.stderr.strip().splitlines()[-1]}"))




def _training_rate(est, n):
    """Images per second of the fit's training epochs after the first: each
    epoch's time less its label update or transfer (run at its start)."""
    seconds = 0.0
    rows = est.history_[1:]
    for row in rows:
        label = row.get("label_update", row.get("label_transfer", {"time": 0.0}))
        seconds += row["dur"] - label["time"]
    return len(rows) * n / seconds


def plain_loop(module, X, aug, n_heads, k, batch_size, lr, momentum, weight_decay, epochs,
               device):
    """Images per second of a plain PyTorch training loop, after one
    untimed epoch (cuDNN's choices, the allocator's pools)."""
    module.train()
    dev = torch.device(device)
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    images = torch.from_numpy(X)
    gray = images.ndim == 3
    targets = torch.randint(0, k, (len(X), n_heads), device=dev)
    cuda = dev.type == "cuda"
    steps = len(X) // batch_size

    def epoch():
        perm = torch.randperm(len(X))
        if cuda:
            perm = perm.pin_memory()  # its slices index the targets on the GPU
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x = images[idx]
            if cuda:
                x = x.pin_memory()
            x = x.to(dev, non_blocking=True).float().div_(255)
            x = aug(x.unsqueeze(1) if gray else x)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                logits = module(x)
            y = targets[idx.to(dev, non_blocking=True)]
            loss = sum(torch.nn.functional.cross_entropy(z.float(), y[:, t])
                       for t, z in enumerate(logits)) / len(logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()
    _, t = _timed(lambda: [epoch() for _ in range(epochs)])
    return epochs * steps * batch_size / t


def throughput_checks(rows, dry=False):
    device = "cpu" if dry else "cuda"
    cases = (
        # name, n, sample shape (uint8, channels first), backbone, K, T, epochs
        ("convnet 28x28 gray", 30_000, (28, 28), "convnet", 10, 10, 5),
        ("alexnet 96x96 RGB", 10_000, (3, 96, 96), "alexnet", 100, 10, 4),
    )
    if dry:
        cases = (("convnet 28x28 gray", 512, (28, 28), "convnet", 4, 2, 2),
                 ("alexnet 64x64 RGB", 128, (3, 64, 64), "alexnet", 4, 2, 2))
    batch = 64 if dry else 256
    for name, n, shape, backbone, k, heads, epochs in cases:
        X, _ = _images(n, shape, k)
        est = SelfLabelClusterer(n_clusters=k, n_heads=heads, backbone=backbone,
                                 max_epochs=epochs, batch_size=batch, device=device,
                                 random_state=0)
        _, t_fit = _timed(lambda: est.fit(X))
        ours = _training_rate(est, n)
        _, info = as_dataset(X)
        plain = plain_loop(
            copy.deepcopy(est.net_.module_), X, default_augmentation(info), heads, k, batch,
            est.lr, 0.9, est.weight_decay, 1 if dry else 2, device,
        )
        rows.append((f"fit {name}, {n:,}, K={k} T={heads}, batch {batch}", t_fit, "",
                     f"{epochs * n / t_fit:.0f} img/s incl. label steps"))
        rows.append((f"training epochs vs plain loop, {name}", float("nan"), "",
                     f"ours {ours:.0f} img/s, plain {plain:.0f} img/s, "
                     f"ratio {ours / plain:.2f} (target >= 0.8)"))


def sinkhorn_iteration_check(rows, dry=False):
    device = "cpu" if dry else "cuda"
    n, k = (20_000, 300) if dry else (1_281_167, 3_000)
    scores = torch.empty(n, k, device=device)
    for start in range(0, n, 100_000):
        blk = scores[start:start + 100_000]
        blk.normal_().mul_(3)
        blk.sub_(torch.logsumexp(blk, dim=1, keepdim=True))
    v = torch.rand(k, device=device)
    torch.mv(scores, v)  # warm-up
    _, t_mv = _timed(lambda: [torch.mv(scores, v) for _ in range(10)])
    t_mv /= 10
    few, many = 5, 25

    def solve(iterations):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return sinkhorn_knopp(scores, lam=25.0, tol=0.0, max_iter=iterations)

    solve(few)  # warm-up
    # The fastest of three runs each: timings only err upwards.
    (a, t_a), (b, t_b) = (
        min((_timed(lambda: solve(iters)) for _ in range(3)), key=lambda run: run[1])
        for iters in (few, many)
    )
    per_iter = (t_b - t_a) / (b.n_iter - a.n_iter)
    rows.append((f"sinkhorn iteration vs float32 mv, {n:,} x {k:,}, {device}", per_iter,
                 f"{b.n_iter - a.n_iter}",
                 f"mv {t_mv * 1e3:.2f} ms, iteration {per_iter * 1e3:.2f} ms, "
                 f"ratio {per_iter / t_mv:.2f} (target <= 2)"))


def nccl_worker(rank, world, port, out):
    """One rank of the NCCL check; writes its findings to ``out/nccl{world}_{rank}.json``."""
    import datetime

    import torch.distributed as dist

    import sklearn_sela.collectives as collectives
    import sklearn_sela.distributed as sela_dist
    import sklearn_sela.training as sela_training

    torch.cuda.set_device(0)
    dist.init_process_group(
        "cpu:gloo,cuda:nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
        world_size=world, timeout=datetime.timedelta(seconds=60),
    )
    if world == 1:
        # A one-rank group is "not distributed" to the estimators; force the
        # distributed mode so that its NCCL collectives run all the same.
        for mod in (sela_dist, sela_training):
            mod.get_process_group = lambda: dist.group.WORLD
    found = {"collective_device": str(collectives.collective_device())}
    gen = torch.Generator().manual_seed(1)
    n, k = 40_001, 50
    logp = torch.log_softmax(torch.randn(n, k, generator=gen) * 3, dim=1)
    logp[:, 0] += 1.0  # a popular cluster: the balanced rounding has work to do
    lo, hi = collectives.shard_bounds(n, world, rank)
    for assign in ("argmax", "balanced"):
        whole = sinkhorn_knopp(logp.cuda(), assign=assign)
        shard = sinkhorn_knopp(logp[lo:hi].cuda(), assign=assign, process_group=dist.group.WORLD)
        labels = collectives.all_gather_rows(shard.labels, dist.group.WORLD)
        found[assign] = {
            "agree_with_single_process": float((labels == whole.labels).double().mean()),
            "n_iter": [shard.n_iter, whole.n_iter],
            "sizes": [int(c) for c in torch.bincount(labels, minlength=k).aminmax()],
        }
    X, _ = _images(2_001, (28, 28), 4)
    est = SelfLabelClusterer(
        n_clusters=4, n_heads=2, max_epochs=2, batch_size=128,
        device="cuda", random_state=0,
    )
    start = time.perf_counter()
    est.fit(X)
    found["fit_s"] = time.perf_counter() - start
    found["fit_sizes"] = np.bincount(est.labels_, minlength=4).tolist()
    found["fit_labels_head"] = est.labels_[:20].tolist()
    found["predict_agrees"] = float((est.predict(X) == est.labels_).mean())
    dist.destroy_process_group()
    with open(os.path.join(out, f"nccl{world}_{rank}.json"), "w") as fh:
        json.dump(found, fh)


def nccl_checks(rows, out):
    scratch = tempfile.mkdtemp()
    for world in (2, 1):
        port = free_port()
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--out", scratch, "--nccl-rank", str(r), str(world), str(port)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for r in range(world)
        ]
        logs = []
        for p in procs:
            try:
                logs.append(p.communicate(timeout=150)[0])
            except subprocess.TimeoutExpired:
                p.kill()
                logs.append(p.communicate()[0] + "\n[killed after 150 s]")
        wall = time.perf_counter() - start
        with open(os.path.join(out, "nccl.log"), "a") as fh:
            fh.write(f"== {world} rank(s) ==\n" + "\n".join(logs))
        paths = [os.path.join(scratch, f"nccl{world}_{r}.json") for r in range(world)]
        if not all(os.path.exists(p) for p in paths):
            lines = [ln for log in logs for ln in log.splitlines()]
            why = [ln for ln in lines if "Error" in ln or "error" in ln.split(":")[0]] or lines
            rows.append((f"NCCL, {world} ranks on cuda:0: FAILED", wall, "", why[-1][-300:]))
            continue
        found = [json.load(open(p)) for p in paths]
        same = all(f["fit_labels_head"] == found[0]["fit_labels_head"] for f in found)
        f0 = found[0]
        rows.append((
            f"NCCL, {world} rank(s) on cuda:0: solver + fit", wall, "",
            f"collectives on {f0['collective_device']}; agree argmax "
            f"{f0['argmax']['agree_with_single_process']:.4f}, balanced "
            f"{f0['balanced']['agree_with_single_process']:.4f} (sizes "
            f"{f0['balanced']['sizes']}); fit {f0['fit_s']:.1f} s, sizes {f0['fit_sizes']}, "
            f"ranks agree {same}, predict = labels_ {f0['predict_agrees']:.3f}",
        ))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = {
        "sinkhorn_iteration": lambda rows: sinkhorn_iteration_check(rows, args.dry_run),
        "throughput": lambda rows: throughput_checks(rows, args.dry_run),
        "solver": solver_checks,
        "fit": lambda rows: fit_checks(rows, args.out),
        "nccl": lambda rows: nccl_checks(rows, args.out),
    }
    parser.add_argument("--out", default=".")
    parser.add_argument("--steps", nargs="+", choices=list(steps), default=list(steps),
                        help="what to run (default: all)")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes on the CPU, sinkhorn_iteration and throughput "
                             "only: checks that the script runs")
    parser.add_argument("--nccl-rank", nargs=3, type=int, metavar=("RANK", "WORLD", "PORT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nccl_rank:
        nccl_worker(*args.nccl_rank, args.out)
        return
    os.makedirs(args.out, exist_ok=True)
    rows = []
    gpu = "dry run on the CPU" if args.dry_run else torch.cuda.get_device_name(0)
    print(f"torch {torch.__version__}, {gpu}, {platform.python_version()}")
    for name in args.steps:
        if args.dry_run and name not in ("sinkhorn_iteration", "throughput"):
            continue  # CUDA only
        try:
            steps[name](rows)
        except Exception as exc:  # keep the other steps' numbers
            rows.append((f"{name} FAILED", float("nan"), "", repr(exc)))
    print(f"| {'case':<58} | {'time s':>8} | {'iter':>5} | notes |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 7}|-------|")
    for name, t, it, note in rows:
        print(f"| {name:<58} | {t:8.3f} | {it!s:>5} | {note} |")
    with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
        json.dump([dict(case=r[0], seconds=r[1], iterations=r[2], notes=r[3]) for r in rows], fh, indent=1)


if __name__ == "__main__":
    main()
