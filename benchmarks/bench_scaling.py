"""Cost of one label update as the number of samples grows.

For each ``N`` in ``--sizes``, a :class:`~sklearn_sela.SelfLabelClusterer`
(``n_clusters=1000``, ``n_heads=1``, MLP backbone) starts a fit on ``N``
synthetic 256-d feature rows, and its first label update is timed by stage
(the fit is stopped after it): the forward pass over all samples, the
neighbour search of ``label_neighbors=30``
(:func:`~sklearn_sela.neighbors.cosine_neighbors`), the Sinkhorn solve and
the rest (averaging over the neighbours, bookkeeping). Beside it: the exact
search's cost, timed on 2,000 of the same queries and scaled to ``N``, and
the recall@30 of the search the update ran against the exact one on those
queries. The growth exponents are least-squares slopes of log time on log N
(``N log N`` from 50k to 1M is an exponent of 1.08).

The rows are ``N`` points of 1,000 Gaussian clusters in a 32-d latent space
(centres spread 2, unit spread within a cluster) put through a random
256-unit ReLU layer, plus noise of 0.1: clustered features with a low
intrinsic dimension, as a trained network's are. ``--spread 1`` makes the
clusters overlap (a harder search).

``--fit-rows N`` then times a full default fit,
``SelfLabelClusterer(random_state=0).fit(X)`` (with ``verbose=1``), on
``N`` such rows, and prints its time with that of the label updates and
of the label transfer.

Usage::

    python benchmarks/bench_scaling.py --threads 2
    python benchmarks/bench_scaling.py --threads 2 --sizes 50000 --fit-rows 500000
"""

import argparse
import os
import sys
import time
from unittest import mock

import numpy as np
import torch

from sklearn_sela import SelfLabelClusterer
from sklearn_sela.neighbors import cosine_neighbors
from sklearn_sela.training import SelfLabelNet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, markdown_table  # noqa: E402

_QUERIES = 2000


def clustered_rows(n, spread=2.0, seed=0, dim=256, latent=32, n_centres=1000):
    """``n`` synthetic feature rows (float32) with cluster structure."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, latent)).astype(np.float32) * spread
    lift = rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):  # bounded temporaries at 1M rows
        m = min(n, lo + 100_000) - lo
        z = centres[rng.integers(0, n_centres, m)] + rng.standard_normal((m, latent), dtype=np.float32)
        out[lo:lo + m] = np.maximum(z @ lift, 0) + 0.1 * rng.standard_normal((m, dim), dtype=np.float32)
    return out


class _Stop(Exception):
    pass


class StageTimes:
    """Wraps the label update's stages on :class:`SelfLabelNet` and sums
    their times; keeps the searched features and neighbours of the last
    update for the recall."""

    def __init__(self):
        self.times = {"total": 0.0, "forward": 0.0, "search": 0.0, "sinkhorn": 0.0}
        self.features = self.neighbors = None

    def _timed(self, key, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[key] += time.perf_counter() - start
        return wrapper

    def _forward(self, fn):
        def wrapper(*args, **kwargs):
            gen = fn(*args, **kwargs)
            while True:
                start = time.perf_counter()
                try:
                    item = next(gen)
                except StopIteration:
                    return
                finally:
                    self.times["forward"] += time.perf_counter() - start
                yield item
        return wrapper

    def _search(self, fn):
        def wrapper(net, dataset, rows=None, features=None):
            out = fn(net, dataset, rows=rows, features=features)
            self.features, self.neighbors = features, out
            return out
        return self._timed("search", wrapper)

    def _once(self, fn):
        def wrapper(*args, **kwargs):
            fn(*args, **kwargs)
            raise _Stop
        return wrapper

    def patches(self):
        cls = SelfLabelNet
        return [
            mock.patch.object(
                cls, "update_labels", self._once(self._timed("total", cls.update_labels))
            ),
            mock.patch.object(cls, "head_log_probas", self._forward(cls.head_log_probas)),
            mock.patch.object(cls, "label_neighbors_of", self._search(cls.label_neighbors_of)),
            mock.patch.object(cls, "solve_head", self._timed("sinkhorn", cls.solve_head)),
        ]


def one_update(n, spread):
    X = clustered_rows(n, spread)
    stages = StageTimes()
    est = SelfLabelClusterer(
        n_clusters=1000, n_heads=1, max_epochs=1, n_label_updates=1, random_state=0
    )
    patches = stages.patches()
    for p in patches:
        p.start()
    try:
        est.fit(X)
    except _Stop:
        pass
    finally:
        for p in patches:
            p.stop()
    # The features the search ran on (centred in place by the update).
    feats, found = stages.features, stages.neighbors
    rows = torch.from_numpy(np.random.default_rng(1).choice(n, _QUERIES, replace=False))
    start = time.perf_counter()
    exact = cosine_neighbors(feats, found.shape[1], queries=feats[rows], method="exact")
    exact_time = (time.perf_counter() - start) * n / _QUERIES
    hits = (found[rows][:, :, None] == exact[:, None, :]).any(dim=1).float().mean().item()
    t = stages.times
    return {
        "N": n,
        "forward [s]": t["forward"],
        "search [s]": t["search"],
        "Sinkhorn [s]": t["sinkhorn"],
        "rest [s]": t["total"] - t["forward"] - t["search"] - t["sinkhorn"],
        "update [s]": t["total"],
        "exact search, est. [s]": exact_time,
        "recall@30": hits,
    }


def slope(sizes, times):
    return float(np.polyfit(np.log(sizes), np.log(times), 1)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--spread", type=float, default=2.0)
    parser.add_argument("--fit-rows", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(machine_info(), flush=True)
    rows = []
    for n in args.sizes:
        rows.append(one_update(n, args.spread))
        print(rows[-1], flush=True)
    if rows:
        headers = list(rows[0])
        print(f"\nOne label update, K=1000, T=1, label_neighbors=30, spread {args.spread}:\n")
        print(markdown_table(headers, [[r[h] for h in headers] for r in rows], "{:.2f}"))
        if len(rows) > 1:
            sizes = [r["N"] for r in rows]
            print("\nGrowth exponent (time ~ N**a): update a = %.2f, search a = %.2f, "
                  "exact search a = %.2f" % (
                      slope(sizes, [r["update [s]"] for r in rows]),
                      slope(sizes, [r["search [s]"] for r in rows]),
                      slope(sizes, [r["exact search, est. [s]"] for r in rows])))
    if args.fit_rows:
        X = clustered_rows(args.fit_rows, args.spread, seed=1)
        start = time.perf_counter()
        est = SelfLabelClusterer(random_state=0, verbose=1).fit(X)
        elapsed = time.perf_counter() - start
        sizes = np.bincount(est.labels_, minlength=est.n_clusters)
        updates = [row["label_update"]["time"] for row in est.history_ if "label_update" in row]
        transfer = sum(row["label_transfer"]["time"] for row in est.history_
                       if "label_transfer" in row)
        print(f"\nDefault fit on {args.fit_rows} rows: {elapsed:.0f} s "
              f"({len(est.history_)} epochs; {len(updates)} label updates "
              f"{sum(updates):.0f} s, label transfer {transfer:.0f} s; "
              f"cluster sizes {sizes.min()}-{sizes.max()})")


if __name__ == "__main__":
    main()
