"""Training throughput of SelfLabelClusterer vs a hand-written PyTorch loop.

Times one training epoch of :class:`sklearn_sela.SelfLabelClusterer` (skorch
net, DataLoader over ``AugmentedDataset``, label lookup in ``get_loss``) and
of a plain PyTorch loop over the same model architecture, data, batch size,
optimizer and augmentation (the batch is sliced from one preloaded float
tensor and augmented in one call; labels are a tensor indexed by the batch's
sample indices). Also times one self-labelling step (forward pass over all N
training samples, plus Sinkhorn-Knopp for each head) relative to one
training epoch, and against the same step with the neighbour search making
its own pass over the data (``label_neighbors > 1``; the step before the
labelling pass also wrote the features for it), on copies of the same net.

The two are run alternately (``--rounds`` times) in the same process so
that load from other processes affects both alike; each round trains
``--warmup`` + ``--epochs`` epochs and only the last ``--epochs`` are timed.
The reported epoch time is the median over all timed epochs.

Usage::

    python benchmarks/bench_training.py               # Fashion-MNIST 10k
    python benchmarks/bench_training.py --quick       # digits 8x8, seconds
    python benchmarks/bench_training.py --data digits --epochs 5 --rounds 3
"""

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from unittest import mock

import torch
from skorch.callbacks import Callback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import load_data, machine_info, markdown_table  # noqa: E402

from sklearn_sela import SelfLabelClusterer  # noqa: E402
from sklearn_sela.backbones import MultiHeadNet, make_backbone  # noqa: E402
from sklearn_sela.data import AugmentedDataset, as_dataset, default_augmentation  # noqa: E402
from sklearn_sela.training import SelfLabelNet  # noqa: E402


class EpochTimes(Callback):
    """Wall time of each epoch's training, after any label update.

    Placed last among the callbacks: ``on_epoch_begin`` runs after the
    self-labelling callback, ``on_epoch_end`` after skorch's own.
    """

    def __init__(self):
        self.times = []
        self.cpu = []

    def initialize(self):
        return self  # keep the list across skorch's re-initialisation

    def on_epoch_begin(self, net, **kwargs):
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()

    def on_epoch_end(self, net, **kwargs):
        self.times.append(time.perf_counter() - self._t0)
        self.cpu.append(time.process_time() - self._c0)


def run_ours(X, args, seed):
    timer = EpochTimes()
    model = SelfLabelClusterer(
        n_clusters=args.k,
        n_heads=args.heads,
        backbone=args.backbone,
        augment="auto",
        max_epochs=args.warmup + args.epochs,
        n_label_updates=1,  # only at epoch 0, which is a warm-up epoch
        batch_size=args.batch_size,
        device="cpu",
        callbacks=[("bench_epoch_times", timer)],
        random_state=seed,
    )
    model.fit(X)
    epoch_times = list(zip(timer.times, timer.cpu))[args.warmup:]
    # Label-update cost, measured directly on copies of the trained net (the
    # step changes labels and warm starts): one data pass, then two.
    base, info = as_dataset(X)
    train_set = AugmentedDataset(base, default_augmentation(info))
    label_times = []
    for rep in range(args.label_reps):
        pair = {}
        for separate_pass in (False, True) if rep % 2 == 0 else (True, False):
            net = copy.deepcopy(model.net_)
            patch = (mock.patch.object(SelfLabelNet, "label_pass_features", lambda *a: None)
                     if separate_pass else contextlib.nullcontext())
            with patch:
                t0, c0 = time.perf_counter(), time.process_time()
                net.update_labels(train_set)
                pair[separate_pass] = (time.perf_counter() - t0, time.process_time() - c0)
        label_times.append((pair[False], pair[True]))
    return epoch_times, label_times


def run_baseline(X, args, seed):
    """Hand-written loop: same model, data, batch size, optimizer, augmentation."""
    base, info = as_dataset(X)
    augment = default_augmentation(info)
    torch.manual_seed(seed)
    backbone, dim = make_backbone(args.backbone, info)
    model = MultiHeadNet(backbone, dim, [args.k] * args.heads)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    crit = torch.nn.CrossEntropyLoss()
    n = len(base)
    data = base.get_batch(range(n))  # all samples as one float tensor
    gen = torch.Generator().manual_seed(seed)
    labels = torch.stack(
        [torch.randperm(n, generator=gen) % args.k for _ in range(args.heads)], dim=1
    )
    bs = min(args.batch_size, n)
    times = []
    model.train()
    for epoch in range(args.warmup + args.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        perm = torch.randperm(n)
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            if len(idx) < 2:
                continue
            xb = augment(data[idx]) if augment is not None else data[idx]
            logits = model(xb)
            targets = labels[idx]
            loss = sum(crit(z, targets[:, t]) for t, z in enumerate(logits)) / len(logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times[args.warmup:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["fashion", "digits"], default="fashion")
    p.add_argument("--subset", type=int, default=10000, help="Fashion-MNIST training images")
    p.add_argument("--backbone", default="convnet")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--heads", type=int, default=10,
                   help="clustering heads T, for both loops (the estimator's default)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--label-reps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true",
                   help="digits 8x8 images, 2 timed epochs, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.epochs, args.rounds, args.label_reps = "digits", 2, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    X, _, _, _ = load_data(args.data, subset=args.subset if args.data == "fashion" else None,
                           seed=args.seed)
    print(machine_info())
    print(f"data={args.data} X{tuple(X.shape)} backbone={args.backbone} K={args.k} "
          f"batch={args.batch_size} warmup={args.warmup} epochs/round={args.epochs} "
          f"rounds={args.rounds} seed={args.seed}", flush=True)
    ours, base, labels = [], [], []
    for r in range(args.rounds):
        # Alternate the order so that drifting load does not favour one side.
        order = ("ours", "base") if r % 2 == 0 else ("base", "ours")
        for which in order:
            if which == "ours":
                e, lt = run_ours(X, args, args.seed)
                ours += e
                labels += lt
            else:
                e = run_baseline(X, args, args.seed)
                base += e
            print(f"round {r} {which}: wall/cpu " + " ".join(
                f"{w:.2f}/{c:.2f}" for w, c in e), flush=True)

    def med(pairs, i):
        return statistics.median(p[i] for p in pairs)

    rows = []
    for name, i in (("wall", 0), ("process CPU", 1)):
        mo, mb = med(ours, i), med(base, i)
        rows.append([f"epoch {name} time, median [s]", mo, mb, mo / mb])
        lo, lb = min(p[i] for p in ours), min(p[i] for p in base)
        rows.append([f"epoch {name} time, min [s]", lo, lb, lo / lb])
    print()
    print(markdown_table(["", "SelfLabelClusterer", "plain PyTorch loop", "ratio"], rows))
    print()
    shared = [one for one, _ in labels]
    separate = [two for _, two in labels]
    lrows = [[name, med(shared, i), med(separate, i), med(shared, i) / med(separate, i),
              med(ours, i), med(shared, i) / med(ours, i)]
             for name, i in (("wall", 0), ("process CPU", 1))]
    print(markdown_table(
        ["", "label update [s]", "same, neighbour search's own pass [s]", "ratio",
         "training epoch (ours) [s]", "label update / epoch"], lrows))
    mo, mb = med(ours, 0), med(base, 0)
    co, cb = med(ours, 1), med(base, 1)
    print(f"\nratio target <= 1.10: wall {mo / mb:.3f} "
          f"({'met' if mo / mb <= 1.10 else 'MISSED'}), CPU {co / cb:.3f} "
          f"({'met' if co / cb <= 1.10 else 'MISSED'})")
    return mo / mb


if __name__ == "__main__":
    main()
