"""Cluster sizes known or learned: imbalanced data.

Long-tailed Fashion-MNIST (``--dataset longtail``): from the training split
keep ``round(6000 * 10**(-c / 9))`` images of class ``c`` (imbalance ratio
10, 24,523 images), from the test split ``round(1000 * 10**(-c / 9))``
(4,085 images), both seeded subsets fixed across seeds. Long-tailed digits
(``digits-longtail``): ``round(170 * 10**(-c / 9))`` images of digit ``c``
(695 images; no test split). The balanced sets
(``fashion``, ``digits``) check what ``"auto"`` costs where the classes are
equal.

``--model assigner`` (fixed features): PCA to 50 dimensions of the pixels
scaled to [0, 1] (digits: the 64 pixels), fitted on the training images.
Rows, each fitted with ``random_state=seed`` and ``n_init=3``:

* ``KMeans``: scikit-learn's, unconstrained sizes;
* ``SinkhornAssigner``, ``cluster_proportions=None``: equal sizes (SeLa's
  constraint);
* ``SinkhornAssigner``, true proportions given (the class frequencies);
* ``SinkhornAssigner``, ``cluster_proportions="auto"``.

``--model sela``: ``SelfLabelClusterer`` with its defaults and
``random_state=seed`` on the images, with ``cluster_proportions`` None
(equal sizes), the true proportions, and ``"auto"``.

Columns: ACC (Hungarian-matched) and NMI of ``labels_``; of ``predict`` on
the test split (not for digits); "size error", the L1 distance between
the sorted cluster sizes and the sorted class sizes (fractions, 0 to 2);
the smallest cluster as a fraction of the smallest class; fit time.

Usage::

    python benchmarks/bench_imbalanced.py --dataset longtail fashion digits --seeds 0 1 2
    python benchmarks/bench_imbalanced.py --model sela --dataset longtail digits-longtail \
        digits --seeds 0 1 2
    python benchmarks/bench_imbalanced.py --model sela --dataset fashion --method auto

``--method`` runs only the named rows (``kmeans``, ``equal``, ``true``,
``auto``).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_data, long_tailed, machine_info, markdown_table  # noqa: E402

from sklearn_sela import SelfLabelClusterer, SinkhornAssigner  # noqa: E402
from sklearn_sela.metrics import cluster_accuracy  # noqa: E402

HEADERS = ["dataset", "method", "seed", "ACC", "NMI", "test ACC", "test NMI",
           "size error", "smallest / smallest class", "fit [s]"]


def dataset(name, model):
    if name == "longtail":
        Xtr, ytr, Xte, yte = load_data("fashion")
        Xtr, ytr = long_tailed(Xtr, ytr, 6000)
        Xte, yte = long_tailed(Xte, yte, 1000)
    elif name == "digits-longtail":
        Xtr, ytr, Xte, yte = load_data("digits")
        Xtr, ytr = long_tailed(Xtr, ytr, 170)
    else:
        Xtr, ytr, Xte, yte = load_data(name)
    if model == "sela":
        return Xtr, ytr, Xte, yte
    flat = lambda X: None if X is None else np.asarray(X, np.float32).reshape(len(X), -1)
    Xtr, Xte = flat(Xtr), flat(Xte)
    if not name.startswith("digits"):
        Xtr, Xte = Xtr / 255.0, Xte / 255.0
        pca = PCA(50, random_state=0).fit(Xtr)
        Xtr, Xte = pca.transform(Xtr), pca.transform(Xte)
    return Xtr, ytr, Xte, yte


def methods(ytr, model):
    """``{key: (row name, factory of seed)}``."""
    k = len(np.unique(ytr))
    truth = np.bincount(ytr, minlength=k) / len(ytr)
    sizes = {"equal": ("equal sizes", None), "true": ("true proportions", truth),
             "auto": ('"auto"', "auto")}
    if model == "sela":
        return {
            key: (f"SelfLabelClusterer, {name}",
                  lambda seed, p=p: SelfLabelClusterer(k, cluster_proportions=p, random_state=seed))
            for key, (name, p) in sizes.items()
        }
    out = {"kmeans": ("KMeans", lambda seed: KMeans(k, n_init=3, random_state=seed))}
    out.update({
        key: (f"SinkhornAssigner, {name}",
              lambda seed, p=p: SinkhornAssigner(k, cluster_proportions=p, n_init=3,
                                                 random_state=seed))
        for key, (name, p) in sizes.items()
    })
    return out


def row(name, method, seed, model, seconds, Xte, ytr, yte):
    labels = model.labels_
    k = len(np.unique(ytr))
    sizes = np.sort(np.bincount(labels, minlength=k))[::-1] / len(labels)
    truth = np.sort(np.bincount(ytr, minlength=k))[::-1] / len(ytr)
    test = [float("nan")] * 2
    if Xte is not None:
        pred = model.predict(Xte)
        test = [cluster_accuracy(yte, pred), normalized_mutual_info_score(yte, pred)]
    return [name, method, seed, cluster_accuracy(ytr, labels),
            normalized_mutual_info_score(ytr, labels), *test,
            float(np.abs(sizes - truth).sum()), float(sizes[-1] / truth[-1]), seconds]


def mean_rows(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r[0], r[1]), []).append(r)
    out = []
    for (d, m), rs in groups.items():
        v = np.array([r[3:] for r in rs], dtype=float)
        out.append([d, m, f"mean of {len(rs)}"]
                   + ["–" if np.isnan(a) else f"{a:.3f} ± {s:.3f}"
                      for a, s in zip(v.mean(0)[:-1], v.std(0)[:-1])]
                   + [f"{v.mean(0)[-1]:.1f}"])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", nargs="+", choices=["longtail", "fashion", "digits", "digits-longtail"],
                   default=["longtail"])
    p.add_argument("--model", choices=["assigner", "sela"], default="assigner")
    p.add_argument("--method", nargs="+", choices=["kmeans", "equal", "true", "auto"],
                   help="rows to run (default: all of the model's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_info(), flush=True)
    rows = []
    for name in args.dataset:
        Xtr, ytr, Xte, yte = dataset(name, args.model)
        print(f"# {name}: train {Xtr.shape}, test {None if Xte is None else Xte.shape}",
              flush=True)
        for seed in args.seeds:
            for key, (method, make) in methods(ytr, args.model).items():
                if args.method and key not in args.method:
                    continue
                t0 = time.perf_counter()
                model = make(seed).fit(Xtr)
                rows.append(row(name, method, seed, model, time.perf_counter() - t0,
                                Xte, ytr, yte))
                print(rows[-1], flush=True)
    print()
    print(markdown_table(HEADERS, rows))
    if len(args.seeds) > 1:
        print()
        print(markdown_table(HEADERS[:2] + HEADERS[3:], [r[:2] + r[3:] for r in mean_rows(rows)]))
    return rows


if __name__ == "__main__":
    main()
