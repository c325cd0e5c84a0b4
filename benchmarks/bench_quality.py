"""Clustering and representation quality of SelfLabelClusterer vs KMeans.

For each data set and seed, fits ``SelfLabelClusterer(n_clusters=10,
random_state=seed)`` (default settings unless ``--max-epochs`` or ``--param``
say otherwise) and reports, against the true classes:

* ACC (Hungarian-matched accuracy), NMI and ARI of ``labels_`` (by default
  the balanced partition of the learned features, ``labels_from="auto"``);
* weighted kNN accuracy (k=50, cosine similarity, weights exp(sim/0.1)) and a
  logistic-regression linear probe on ``transform()`` features (whitened,
  ``whiten=True``, unless ``--param whiten=false``);
* wall time and process CPU time of the fit;
* on a second row, the same scores for the self-labels of head 0 of the same
  fit (``labels_all_[:, 0]``, what ``labels_from="head"`` gives);
* on a third row, kNN and the probe on the same fit's features before
  whitening (``whiten=False``; the same ``labels_``, which are a partition
  of these);
* on a fourth row, for the spectral clustering of the same fit's training
  features before whitening (what ``labels_from="spectral"`` gives, see
  ``sklearn_sela.spectral``), its time added to the fit's;

next to KMeans (K=10, n_init=10) on the raw pixels, whose kNN / probe use
the raw pixels as features, measured in the same run.

With ``--save-models DIR``, each fit of the main table is also written to
``DIR/{dataset}_seed{seed}.pt`` (:func:`sklearn_sela.persistence.save_model`),
so that later screens of the partition can read the very fits whose rows
were published (``load_model(path).transform(X)``, ``whiten=False`` for the
features that ``labels_`` partitions).

Evaluation splits: Fashion-MNIST trains on (a subset of) the training split
and the kNN / probe classify the test split (a subset of it with
``--subset``: ``max(1000, subset // 6)`` images) from the training features.
Digits has no test split: the clusterer is fitted on all 1797 images
(unsupervised, labels never seen), then the kNN / probe are fitted on a
seeded stratified 2/3 of the features and scored on the other 1/3.

Usage::

    python benchmarks/bench_quality.py --dataset digits --seeds 0 1 2
    python benchmarks/bench_quality.py --dataset fashion --subset 10000 --max-epochs 10
    python benchmarks/bench_quality.py --dataset digits --ablations --max-epochs 50
    python benchmarks/bench_quality.py --dataset fashion --ablations --grid 10:1 50:1 \\
        --label-updates 0
    python benchmarks/bench_quality.py --dataset digits --param lr=0.1 --param batch_size=128
    python benchmarks/bench_quality.py --dataset fashion --seeds 0 --save-models fits/
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import train_test_split

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    cluster_accuracy,
    linear_probe_accuracy,
    load_data,
    machine_info,
    markdown_table,
    weighted_knn_accuracy,
)

from sklearn_sela import SelfLabelClusterer  # noqa: E402
from sklearn_sela.persistence import save_model  # noqa: E402
from sklearn_sela.spectral import spectral_partition  # noqa: E402

HEAD_LABELS = "SelfLabelClusterer, head 0 self-labels"
RAW_LABELS = "SelfLabelClusterer, features not whitened"
SPECTRAL_LABELS = "SelfLabelClusterer, spectral partition"
HEADERS = ["dataset", "method", "seed", "ACC", "NMI", "ARI", "kNN", "linear", "fit [s]",
           "fit CPU [s]"]


def _scores(y, labels):
    return (cluster_accuracy(y, labels), normalized_mutual_info_score(y, labels),
            adjusted_rand_score(y, labels))


def _feature_scores(Ftr, ytr, Fte, yte, seed):
    if Fte is None:  # digits: split the features of the (unlabelled) fit data
        Ftr, Fte, ytr, yte = train_test_split(Ftr, ytr, test_size=1 / 3, stratify=ytr,
                                              random_state=seed)
    knn = weighted_knn_accuracy(Ftr, ytr, Fte, yte, k=50, temperature=0.1)
    lin = linear_probe_accuracy(Ftr, ytr, Fte, yte)
    return knn, lin


def _flat(X):
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    return X / 255.0 if X.max() > 1.5 and X.max() <= 255 and X.min() >= 0 else X


def run_kmeans(name, Xtr, ytr, Xte, yte, seed):
    t0, c0 = time.perf_counter(), time.process_time()
    km = KMeans(n_clusters=10, n_init=10, random_state=seed).fit(_flat(Xtr))
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    acc, nmi, ari = _scores(ytr, km.labels_)
    knn, lin = _feature_scores(_flat(Xtr), ytr, None if Xte is None else _flat(Xte), yte, seed)
    return [name, "KMeans (raw pixels)", seed, acc, nmi, ari, knn, lin, dt, dc]


def run_sela(name, Xtr, ytr, Xte, yte, seed, params, label="SelfLabelClusterer"):
    t0, c0 = time.perf_counter(), time.process_time()
    model = SelfLabelClusterer(random_state=seed, **params).fit(Xtr)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    acc, nmi, ari = _scores(ytr, model.labels_)
    Ftr = model.transform(Xtr)
    Fte = None if Xte is None else model.transform(Xte)
    knn, lin = _feature_scores(Ftr, ytr, Fte, yte, seed)
    return [name, label, seed, acc, nmi, ari, knn, lin, dt, dc], model, Ftr


def head_row(row, model, ytr):
    """``row`` rescored on the self-labels of head 0 of the same fit.

    The features, and so kNN, the probe and the times, are the fit's.
    """
    acc, nmi, ari = _scores(ytr, model.labels_all_[:, 0])
    return row[:3] + [acc, nmi, ari] + row[6:]


def raw_features_row(row, model, Xtr, ytr, Xte, yte, seed):
    """``row`` rescored with kNN and the probe on the fit's features before
    whitening (``whiten=False``, read by ``transform``), and those training
    features: ``(row, features)``."""
    model.set_params(whiten=False)
    try:
        Ftr = model.transform(Xtr)
        Fte = None if Xte is None else model.transform(Xte)
    finally:
        model.set_params(whiten=True)
    knn, lin = _feature_scores(Ftr, ytr, Fte, yte, seed)
    return row[:6] + [knn, lin] + row[8:], Ftr


def spectral_row(row, model, Ftr, ytr, seed):
    """``row`` rescored on the spectral partition of the fit's features.

    The labels are those of ``labels_from="spectral"`` (10 neighbours, the
    fit's seed); the partition's wall and CPU time are added to the fit's.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    labels = spectral_partition(Ftr, model.n_clusters_[model.head], n_neighbors=10,
                                random_state=seed)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    acc, nmi, ari = _scores(ytr, labels)
    print(f"spectral partition: {dt:.1f} s, cluster sizes {sorted(np.bincount(labels))}",
          flush=True)
    return row[:3] + [acc, nmi, ari] + row[6:8] + [row[8] + dt, row[9] + dc]


def _parse_param(text):
    key, _, value = text.partition("=")
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass
    if isinstance(value, list):
        value = tuple(value)
    return key, value


def _mean_rows(rows):
    out = []
    groups = {}
    for r in rows:
        groups.setdefault((r[0], r[1]), []).append(r)
    for (d, m), rs in groups.items():
        vals = np.array([r[3:] for r in rs], dtype=float)
        mean, std = vals.mean(0), vals.std(0)
        out.append([d, m, f"mean of {len(rs)}"]
                   + [f"{a:.3f} ± {s:.3f}" for a, s in zip(mean[:-2], std[:-2])]
                   + [f"{m:.1f}" for m in mean[-2:]])
    return out


def main_table(args, params):
    datasets = ["digits", "fashion"] if args.dataset == "all" else [args.dataset]
    rows = []
    for name in datasets:
        Xtr, ytr, Xte, yte = load_data(name, subset=args.subset if name == "fashion" else None)
        print(f"# {name}: train {Xtr.shape}, test {None if Xte is None else Xte.shape}",
              flush=True)
        for seed in args.seeds:
            if not args.no_kmeans:
                rows.append(run_kmeans(name, Xtr, ytr, Xte, yte, seed))
                print(rows[-1], flush=True)
            row, model, Ftr = run_sela(name, Xtr, ytr, Xte, yte, seed, params)
            rows.append(row)
            print(row, f"epochs={model.n_epochs_}", f"labels_from_={model.labels_from_}",
                  flush=True)
            if args.save_models:
                print("saved", save_model(model, os.path.join(
                    args.save_models, f"{name}_seed{seed}.pt")), flush=True)
            if model.labels_from_ != "head":
                rows.append(head_row(row, model, ytr))
                rows[-1][1] = HEAD_LABELS
                print(rows[-1], flush=True)
            if model.whiten:
                raw_row, Ftr = raw_features_row(row, model, Xtr, ytr, Xte, yte, seed)
                rows.append(raw_row)
                rows[-1][1] = RAW_LABELS
                print(rows[-1], flush=True)
            if model.labels_from_ != "spectral":
                rows.append(spectral_row(row, model, Ftr, ytr, seed))
                rows[-1][1] = SPECTRAL_LABELS
                print(rows[-1], flush=True)
    print()
    print(markdown_table(HEADERS, rows))
    if len(args.seeds) > 1:
        print()
        print(markdown_table(HEADERS, _mean_rows(rows)))
    return rows


GRID = [(k, t) for k in (10, 50, 100) for t in (1, 3, 10)]


def _parse_cell(text):
    k, _, t = text.partition(":")
    return int(k), int(t)


def ablations(args, params):
    """K x T grid (NMI of head 0, kNN) and label updates 0 vs default.

    ``--grid`` and ``--label-updates`` pick the cells, so that the grid can be
    split over several processes; the default-updates row reuses the grid's
    fit with the same K and T when this process ran it (same seed, same fit).
    """
    name = "digits" if args.dataset == "all" else args.dataset
    Xtr, ytr, Xte, yte = load_data(name, subset=args.subset if name == "fashion" else None)
    seed = args.seeds[0]
    rows, fits = [], {}
    for k, t in args.grid:
        p = dict(params, n_clusters=k, n_heads=t)
        row, model, _ = run_sela(name, Xtr, ytr, Xte, yte, seed, p, label=f"K={k} T={t}")
        # The paper's ablations score the self-labels.
        row = head_row(row, model, ytr)
        fits[k, t] = row, model
        rows.append([row[1], row[4], row[6], row[8], row[9]])
        print(rows[-1], flush=True)
    if rows:
        print()
        print(markdown_table(["setting", "NMI (head 0)", "kNN", "fit [s]", "fit CPU [s]"],
                             rows))
    rows2 = []
    default_cell = (params.get("n_clusters", 10), params.get("n_heads", 10))
    for m in args.label_updates:
        m = m if m == "auto" else int(m)
        label = f"n_label_updates={m}"
        if m == params.get("n_label_updates", "auto") and default_cell in fits:
            row, model = fits[default_cell]
            label += f" (the K={default_cell[0]} T={default_cell[1]} fit)"
        else:
            row, model, _ = run_sela(name, Xtr, ytr, Xte, yte, seed,
                                     dict(params, n_label_updates=m), label=label)
            row = head_row(row, model, ytr)
        rows2.append([label, model.net_.label_updates_, row[3], row[4], row[6], row[8],
                      row[9]])
        print(rows2[-1], flush=True)
    if rows2:
        print()
        print(markdown_table(["setting", "updates run", "ACC", "NMI", "kNN", "fit [s]",
                              "fit CPU [s]"], rows2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["digits", "fashion", "all"], default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--subset", type=int, default=None,
                   help="Fashion-MNIST: train on this many images (default all 60000)")
    p.add_argument("--max-epochs", default=None,
                   help="override max_epochs (default: the estimator's 'auto')")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="extra SelfLabelClusterer parameter (JSON value), repeatable")
    p.add_argument("--ablations", action="store_true",
                   help="run the K x T and label-update ablations instead (first seed)")
    p.add_argument("--grid", type=_parse_cell, nargs="*", default=GRID, metavar="K:T",
                   help="ablation grid cells (default: K in 10 50 100 x T in 1 3 10)")
    p.add_argument("--label-updates", nargs="*", default=[0, "auto"], metavar="M",
                   help="ablation n_label_updates values (default: 0 auto)")
    p.add_argument("--no-kmeans", action="store_true")
    p.add_argument("--save-models", metavar="DIR", default=None,
                   help="also save each fit of the main table to DIR (created if missing)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    params = dict(n_clusters=10)
    if args.max_epochs is not None:
        params["max_epochs"] = int(args.max_epochs)
    params.update(_parse_param(t) for t in args.param)
    if args.save_models:
        os.makedirs(args.save_models, exist_ok=True)
    print(machine_info())
    print(f"params: {params}", flush=True)
    if args.ablations:
        ablations(args, params)
    else:
        main_table(args, params)


if __name__ == "__main__":
    main()
