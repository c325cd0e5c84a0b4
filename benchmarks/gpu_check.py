"""CUDA check and timings, for a machine with a GPU.

Checks that the CUDA paths give the same answers as the CPU ones and records
timings: the Sinkhorn solver on CUDA vs CPU on the same matrix (labels must
agree), bfloat16 input, an in-place ImageNet-scale solve (N=1,281,167,
K=3,000), and a short ``SelfLabelClusterer`` fit on CUDA whose pickle is
written to ``--out`` so that it can be loaded on a machine without CUDA.

Usage::

    python benchmarks/gpu_check.py --out DIR
"""

import argparse
import json
import os
import pickle
import platform
import time

import numpy as np
import torch

from sklearn_sela import SelfLabelClusterer, sinkhorn_knopp


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


def fit_checks(rows, out):
    rng = np.random.default_rng(0)
    # Structured synthetic 28x28 images: 10 prototypes plus noise.
    protos = rng.random((10, 28, 28)) > 0.7
    y = rng.integers(0, 10, 20_000)
    X = (protos[y] * 200 + rng.normal(0, 25, (20_000, 28, 28))).clip(0, 255).astype(np.uint8)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {platform.python_version()}")
    for step in (solver_checks, fit_checks):
        try:
            step(rows) if step is solver_checks else step(rows, args.out)
        except Exception as exc:  # keep the other step's numbers
            rows.append((f"{step.__name__} FAILED", float("nan"), "", repr(exc)))
    print(f"| {'case':<58} | {'time s':>8} | {'iter':>5} | notes |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 7}|-------|")
    for name, t, it, note in rows:
        print(f"| {name:<58} | {t:8.3f} | {it!s:>5} | {note} |")
    with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
        json.dump([dict(case=r[0], seconds=r[1], iterations=r[2], notes=r[3]) for r in rows], fh, indent=1)


if __name__ == "__main__":
    main()
