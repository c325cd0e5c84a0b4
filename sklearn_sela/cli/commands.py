"""``sela demo``, ``sela predict`` and ``sela transform``."""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import csv
import time

import numpy as np

from .inputs import infer, load_input
from .options import given_params
from .runtime import (
    UserError,
    WarningCounter,
    can_plot,
    make_epoch_bar,
    say,
    staged,
    write_labels_csv,
)

# ---------------------------------------------------------------------------
# sela demo
# ---------------------------------------------------------------------------


def _demo_fit(args, X, y):
    """k-means and SeLa on the digits; the fitted models and their times."""
    from sklearn.cluster import KMeans

    from ..clusterer import SelfLabelClusterer
    from ..metrics import TrueLabelNMI

    params = given_params(args)
    if args.quick:
        params.setdefault("max_epochs", 2)
    t0 = time.perf_counter()
    km = KMeans(n_clusters=10, n_init=1 if args.quick else 10,
                random_state=params.get("random_state"))
    km.fit(X.reshape(len(X), -1))
    t_km = time.perf_counter() - t0
    est = SelfLabelClusterer(
        n_clusters=10, **params,
        callbacks=[TrueLabelNMI(y), make_epoch_bar(disable=args.quiet)],
    )
    t0 = time.perf_counter()
    with WarningCounter():
        est.fit(X)
    return km, t_km, est, time.perf_counter() - t0


def _demo_table(y, km, t_km, est, t_sela):
    from ..metrics import clustering_scores

    rows = [
        (f"KMeans (k=10, n_init={km.n_init})", clustering_scores(y, km.labels_), t_km),
        (f"SeLa [10 x {est.n_heads}], {est.n_epochs_} epochs",
         clustering_scores(y, est.labels_), t_sela),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'method':<{width}}    ACC    NMI    ARI   time")
    for name, s, secs in rows:
        print(f"{name:<{width}}  {s['acc']:.3f}  {s['nmi']:.3f}  {s['ari']:.3f}  {secs:5.1f}s")


def cmd_demo(args):
    """``sela demo``: digits, SeLa next to k-means, montage and NMI plot."""
    from sklearn.datasets import load_digits

    from ..plotting import plot_cluster_montage, plot_label_nmi

    digits = load_digits()
    # The 8x8 images (grey levels scaled to [0, 1]): the conv net with image
    # augmentation clusters them far better than an MLP on the 64 pixels as
    # tabular features.
    X, y = digits.images / 16.0, digits.target
    say(args, f"sela demo: {X.shape[0]} handwritten digits (8x8 pixels), 10 classes")
    km, t_km, est, t_sela = _demo_fit(args, X, y)
    _demo_table(y, km, t_km, est, t_sela)
    if not can_plot(args):
        return 0
    seed = est.random_state

    def write(folder):
        plot_cluster_montage(
            digits.images, est.labels_, n_per_cluster=12, random_state=seed,
            title="SeLa clusters of the digits (random members per cluster)",
            path=folder.file("digits_montage.png"),
        )
        plot_label_nmi(est.history_, title="Digits: NMI of the self-labels over training",
                       path=folder.file("digits_label_nmi.png"))

    return staged(args, "demo", ["digits_montage.png", "digits_label_nmi.png"], write)


# ---------------------------------------------------------------------------
# sela predict / sela transform
# ---------------------------------------------------------------------------


def _load_model(args):
    """The fitted model and the input, checked against each other."""
    from ..persistence import ModelFileError, load_model

    try:
        est = load_model(args.model, **given_params(args))
    except ModelFileError as exc:
        raise UserError(str(exc)) from None
    info = est.input_info_
    channels = info.sample_shape[0] if info.kind == "image" else None
    inp = load_input(args.path, args, channels=channels)
    if info.kind == "tabular" and inp.kind != "array":
        raise UserError(
            f"the model {args.model!r} was trained on tabular data "
            f"({info.sample_shape[0]} features); give a .npy/.npz array, not images."
        )
    return est, inp


def cmd_predict(args):
    """``sela predict``: cluster labels (and probabilities) of new data."""
    est, inp = _load_model(args)
    probas = infer(est, inp.data, "probas", args.quiet, "predicting")
    names = ["probabilities.npy"] + [f"probabilities_head{t}.npy" for t in range(len(probas) - 1)]

    def write(folder):
        labels = np.stack([p.argmax(axis=1) for p in probas], axis=1)
        write_labels_csv(folder.file("predictions.csv"), inp.ids, inp.id_name,
                         labels[:, 0], labels[:, 1:])
        if args.proba:
            for name, p in zip(names, probas):
                np.save(folder.file(name), p.astype(np.float32))

    return staged(args, "predict", ["predictions.csv"] + names, write)


def cmd_transform(args):
    """``sela transform``: backbone features of new data."""
    est, inp = _load_model(args)
    feats = infer(est, inp.data, "features", args.quiet, "features")

    def write(folder):
        np.save(folder.file("features.npy"), feats)
        if inp.id_name == "path":
            with open(folder.file("features_index.csv"), "w", newline="", encoding="utf-8",
                      errors="surrogateescape") as fh:
                writer = csv.writer(fh)
                writer.writerow(["row", "path"])
                writer.writerows(enumerate(inp.ids))

    return staged(args, "transform", ["features.npy", "features_index.csv"], write)
