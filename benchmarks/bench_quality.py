"""Clustering and representation quality of SelfLabelClusterer vs KMeans.

For each data set and seed, fits ``SelfLabelClusterer(n_clusters=10,
random_state=seed)`` (default settings unless ``--max-epochs`` or ``--param``
say otherwise) and reports, against the true classes:

* ACC (Hungarian-matched accuracy), NMI and ARI of ``labels_``;
* ACC and NMI of ``predict`` on the test split (Fashion-MNIST: images never
  seen in ``fit``), and the fraction of training samples for which
  ``predict(X_train)`` equals ``labels_``;
* weighted kNN accuracy (k=50, cosine similarity, weights exp(sim/0.1)) and a
  logistic-regression linear probe on ``transform()`` features;
* wall time, process CPU time and peak resident memory of the process so far;
* with ``--graph``, a second row for ``BalancedGraphClustering`` on the same
  fit's ``transform`` features (its time added to the fit's);

next to KMeans (K=10, n_init=10) on the raw pixels, whose kNN / probe use
the raw pixels as features, measured in the same run.

Evaluation splits: Fashion-MNIST trains on (a subset of) the training split
and the kNN / probe classify the test split (a subset of it with
``--subset``: ``max(1000, subset // 6)`` images) from the training features.
Digits has no test split: the clusterer is fitted on all 1797 images
(unsupervised, labels never seen), then the kNN / probe are fitted on a
seeded stratified 2/3 of the features and scored on the other 1/3.

Usage::

    python benchmarks/bench_quality.py --dataset digits --seeds 0 1 2
    python benchmarks/bench_quality.py --dataset fashion --seeds 0 1 2 --threads 2
    python benchmarks/bench_quality.py --dataset fashion --subset 10000 --max-epochs 10
    python benchmarks/bench_quality.py --dataset digits --ablations --max-epochs 50
    python benchmarks/bench_quality.py --dataset digits --param lr=0.1 --param batch_size=128
    python benchmarks/bench_quality.py --headline --seeds 0 --threads 2

``--headline`` fits the paper's ImageNet setting, ``SelfLabelClusterer(
n_clusters=3000, n_heads=10)``, on the 60,000 Fashion-MNIST training images
(or ``--subset``) and prints its time per stage and peak memory.
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import train_test_split

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import load_data, machine_info, markdown_table  # noqa: E402

from sklearn_sela import BalancedGraphClustering, SelfLabelClusterer  # noqa: E402
from sklearn_sela.persistence import save_model  # noqa: E402
from sklearn_sela.metrics import (  # noqa: E402
    cluster_accuracy,
    linear_probe_accuracy,
    weighted_knn_accuracy,
)

GRAPH_LABELS = "BalancedGraphClustering on transform"
HEADERS = ["dataset", "method", "seed", "ACC", "NMI", "ARI", "test ACC", "test NMI",
           "predict = labels_", "kNN", "linear",
           "fit [s]", "fit CPU [s]", "peak RSS [GB]"]


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


def _peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _flat(X):
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    return X / 255.0 if X.max() > 1.5 and X.max() <= 255 and X.min() >= 0 else X


def _test_scores(yte, pred):
    if yte is None:
        return [float("nan")] * 2
    return [cluster_accuracy(yte, pred), normalized_mutual_info_score(yte, pred)]


def run_kmeans(name, Xtr, ytr, Xte, yte, seed):
    t0, c0 = time.perf_counter(), time.process_time()
    km = KMeans(n_clusters=10, n_init=10, random_state=seed).fit(_flat(Xtr))
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    test = _test_scores(yte, None if Xte is None else km.predict(_flat(Xte)))
    same = float(np.mean(km.predict(_flat(Xtr)) == km.labels_))
    knn, lin = _feature_scores(_flat(Xtr), ytr, None if Xte is None else _flat(Xte), yte, seed)
    return ([name, "KMeans (raw pixels)", seed, *_scores(ytr, km.labels_), *test, same,
             knn, lin, dt, dc, _peak_gb()])


def run_sela(name, Xtr, ytr, Xte, yte, seed, params, label="SelfLabelClusterer"):
    t0, c0 = time.perf_counter(), time.process_time()
    model = SelfLabelClusterer(random_state=seed, **params).fit(Xtr)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_gb()
    test = _test_scores(yte, None if Xte is None else model.predict(Xte))
    same = float(np.mean(model.predict(Xtr) == model.labels_))
    Ftr = model.transform(Xtr)
    Fte = None if Xte is None else model.transform(Xte)
    knn, lin = _feature_scores(Ftr, ytr, Fte, yte, seed)
    row = [name, label, seed, *_scores(ytr, model.labels_), *test, same, knn, lin,
           dt, dc, peak]
    return row, model, Ftr


def graph_row(row, model, Ftr, ytr, Xte, yte, seed):
    """``row`` rescored on ``BalancedGraphClustering`` of the fit's training
    features (``transform``); its wall and CPU time are added to the fit's."""
    t0, c0 = time.perf_counter(), time.process_time()
    graph = BalancedGraphClustering(model.n_clusters_[model.head_], random_state=seed).fit(Ftr)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    test = _test_scores(yte, None if Xte is None else graph.predict(model.transform(Xte)))
    same = float(np.mean(graph.predict(Ftr) == graph.labels_))
    return (row[:3] + [*_scores(ytr, graph.labels_), *test, same] + row[9:11]
            + [row[11] + dt, row[12] + dc, _peak_gb()])


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
                   + [f"{a:.3f} ± {s:.3f}" for a, s in zip(mean[:-3], std[:-3])]
                   + [f"{m:.1f}" for m in mean[-3:-1]] + [f"{mean[-1]:.2f}"])
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
            print(row, f"epochs={model.n_epochs_}", f"head_={model.head_}", flush=True)
            if args.save_models:
                save_model(model, os.path.join(args.save_models, f"{name}_seed{seed}.pt"))
            if args.graph:
                rows.append(graph_row(row, model, Ftr, ytr, Xte, yte, seed))
                rows[-1][1] = GRAPH_LABELS
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
        fits[k, t] = row, model
        rows.append([row[1], row[4], row[9], row[11], row[12]])
        print(rows[-1], flush=True)
    if rows:
        print()
        print(markdown_table(["setting", "NMI", "kNN", "fit [s]", "fit CPU [s]"],
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
        rows2.append([label, model.net_.label_updates_, row[3], row[4], row[9], row[11],
                      row[12]])
        print(rows2[-1], flush=True)
    if rows2:
        print()
        print(markdown_table(["setting", "updates run", "ACC", "NMI", "kNN", "fit [s]",
                              "fit CPU [s]"], rows2))


def stage_times(model, fit_seconds):
    """Wall time of each stage of a fit, from its history: training epochs,
    label updates, the label transfers, and what runs outside the epochs
    (set-up and the balancing and head choice after training)."""
    history = model.history_
    epochs = sum(row["dur"] for row in history)
    updates = sum(row["label_update"]["time"] for row in history if "label_update" in row)
    transfers = [row["label_transfer"]["time"] for row in history if "label_transfer" in row]
    transfer = sum(transfers)
    return {
        "training epochs": epochs - updates - transfer,
        f"label updates ({model.net_.label_updates_ - len(transfers)})": updates,
        f"label transfers ({len(transfers)})": transfer,
        "outside the epochs": fit_seconds - epochs,
        "fit": fit_seconds,
    }


def headline(args, params):
    """K=3000, T=10 on Fashion-MNIST: stage times and peak memory."""
    Xtr, ytr, Xte, yte = load_data("fashion", subset=args.subset)
    params = dict(params, n_clusters=3000, n_heads=10)
    print(f"# headline: train {Xtr.shape}, params {params}", flush=True)
    for seed in args.seeds:
        t0 = time.perf_counter()
        model = SelfLabelClusterer(random_state=seed, verbose=1, **params).fit(Xtr)
        dt = time.perf_counter() - t0
        rows = [[name, f"{sec:.0f}", f"{sec / dt:.0%}"]
                for name, sec in stage_times(model, dt).items()]
        rows.append(["peak RSS [GB]", f"{_peak_gb():.2f}", ""])
        sizes = np.bincount(model.labels_, minlength=3000)
        rows.append(["clusters used / smallest / largest",
                     f"{(sizes > 0).sum()} / {sizes.min()} / {sizes.max()}", ""])
        rows.append(["NMI of labels_ (train) / predict (test)",
                     f"{normalized_mutual_info_score(ytr, model.labels_):.3f} / "
                     f"{normalized_mutual_info_score(yte, model.predict(Xte)):.3f}", ""])
        print()
        print(f"seed {seed}, {model.n_epochs_} epochs, head_ {model.head_}")
        print(markdown_table(["stage", "seconds", "share"], rows))


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
    p.add_argument("--headline", action="store_true",
                   help="fit K=3000, T=10 on Fashion-MNIST and print stage times instead")
    p.add_argument("--graph", action="store_true",
                   help="also score BalancedGraphClustering on each fit's features")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--save-models", metavar="DIR", default=None,
                   help="save each fit of the main table to DIR/<dataset>_seed<seed>.pt")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    params = dict(n_clusters=10)
    if args.max_epochs is not None:
        params["max_epochs"] = int(args.max_epochs)
    params.update(_parse_param(t) for t in args.param)
    print(machine_info())
    print(f"params: {params}", flush=True)
    if args.headline:
        headline(args, params)
    elif args.ablations:
        ablations(args, params)
    else:
        main_table(args, params)


if __name__ == "__main__":
    main()
