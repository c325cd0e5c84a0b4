"""The ``sela`` command: self-labelling clustering from the shell.

Sub-commands:

``sela demo``
    Cluster scikit-learn's handwritten digits, compare with k-means, and write
    a montage of the clusters and a plot of label stability.
``sela fit PATH``
    Train on an image folder (any nesting) or a ``.npy``/``.npz`` array and
    write the clusters and self-labels, the model, a montage of the clusters
    and a summary.
``sela predict MODEL PATH`` / ``sela transform MODEL PATH``
    Cluster new data, or extract its features, with a saved model.

Run ``sela --help`` or ``sela COMMAND --help`` for the options. Usage errors
exit with status 2 (argparse); user errors (missing files, unreadable
inputs, impossible settings) print one line and exit with status 1; ``--debug``
shows the full traceback instead.

The image-folder reader the command uses lives in
:mod:`sklearn_sela.image_files` (:class:`~sklearn_sela.image_files.ImageFiles`,
a lazily loading dataset of image files usable with
:class:`~sklearn_sela.SelfLabelClusterer` from Python too, and the functions
that find and check the files); its public names are importable from this
module as well, for compatibility.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import argparse
import csv
import json
import math
import os
import shlex
import sys
import time
import traceback
import warnings

import numpy as np

# Re-exported: these lived here before sklearn_sela.image_files existed.
from .image_files import (
    IMAGE_EXTENSIONS,
    ImageFiles,
    check_image_files,
    find_image_files,
)

__all__ = [
    "main",
    "build_parser",
    "find_image_files",
    "check_image_files",
    "ImageFiles",
    "IMAGE_EXTENSIONS",
]

ARRAY_EXTENSIONS = (".npy", ".npz")
BACKBONES = ("auto", "mlp", "convnet", "alexnet", "resnet18", "resnet50")

EPILOG = """\
examples:
  sela demo                                   # digits, about 1.5 minutes
  sela fit photos/ --clusters 50 --image-size 64 --out run1
  sela fit data.npy --clusters 10 --heads 5 --epochs 100 --features
  sela predict run1/model.pt new_photos/ --out run1/new
  sela transform run1/model.pt new_photos/ --out run1/new

Exit status: 0 on success, 1 on a user error (one-line message on stderr),
2 on a usage error, 130 when interrupted.
"""


class UserError(Exception):
    """A problem with the user's input or settings: reported in one line."""


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


class _Input:
    """What a PATH argument resolved to."""

    def __init__(self, data, ids, id_name, kind, *, skipped=(), sizes=(), n_found=None):
        self.data = data          # array or ImageFiles
        self.ids = ids            # first column of the csv outputs
        self.id_name = id_name    # "path" or "index"
        self.kind = kind          # "folder", "image", "array"
        self.skipped = list(skipped)
        self.sizes = list(sizes)  # (width, height) per image file
        self.n_found = n_found

    def __len__(self):
        return len(self.ids)


def _load_array(path, key):
    try:
        if path.lower().endswith(".npy"):
            if key is not None:
                raise UserError(f"--key only applies to .npz files, not {path!r}.")
            # Memory-mapped: batches are read from disk as needed.
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if not keys:
                    raise UserError(f"{path!r} holds no arrays.")
                if key is None:
                    if len(keys) == 1:
                        key = keys[0]
                    elif "X" in keys:
                        key = "X"
                    else:
                        raise UserError(
                            f"{path!r} holds several arrays ({', '.join(keys)}); "
                            "choose one with --key NAME."
                        )
                if key not in keys:
                    raise UserError(
                        f"{path!r} has no array named {key!r}; it holds "
                        f"{', '.join(keys)}."
                    )
                arr = archive[key]
    except UserError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read array file {path!r}: {exc}") from exc
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise UserError(
            f"{path!r} holds an array of dtype {arr.dtype}; a numeric array is needed."
        )
    if arr.ndim not in (2, 3, 4):
        raise UserError(
            f"{path!r} holds an array of shape {arr.shape}; expected (N, D) "
            "features or (N, H, W), (N, H, W, C), (N, C, H, W) images."
        )
    return arr


def _report_skipped(skipped, quiet):
    if not skipped:
        return
    lines = [f"sela: skipped {len(skipped)} unreadable image file(s):"]
    shown = skipped[:20]
    lines += [f"  {p}: {why}" for p, why in shown]
    if len(skipped) > len(shown):
        lines.append(f"  ... and {len(skipped) - len(shown)} more (see the summary)")
    print("\n".join(lines), file=sys.stderr)


def _load_input(path, args, channels=None, exclude=()):
    """Resolve a PATH argument to an array or an :class:`ImageFiles`.

    ``channels`` (1 or 3) forces the colour mode of image files, to match a
    fitted model; otherwise grey when every image is grey, else RGB. Files
    whose real path is in ``exclude``, or lies under one there, are not
    input (a command's own outputs).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path!r} does not exist.")
    quiet = getattr(args, "quiet", False)
    if os.path.isdir(path):
        found = find_image_files(path)
        if exclude:
            exclude = tuple(exclude)
            under = tuple(os.path.join(e, "") for e in exclude)
            real = [os.path.realpath(f) for f in found]
            found = [f for f, r in zip(found, real) if r not in exclude and not r.startswith(under)]
        if not found:
            raise UserError(
                f"no image files found in folder {path!r} (looked for "
                f"{', '.join(IMAGE_EXTENSIONS)} at any depth)."
            )
        kind, files = "folder", found
    elif path.lower().endswith(ARRAY_EXTENSIONS):
        arr = _load_array(path, getattr(args, "key", None))
        return _Input(arr, list(range(arr.shape[0])), "index", "array")
    elif path.lower().endswith(IMAGE_EXTENSIONS):
        kind, files = "image", [path]
    else:
        raise UserError(
            f"{path!r} is neither a folder, an image file nor a .npy/.npz "
            "array file."
        )
    if getattr(args, "key", None) is not None:
        raise UserError("--key only applies to .npz files.")
    check = getattr(args, "check", "full")
    if check == "none":
        good, skipped, sizes, modes = files, [], [], []
    else:
        good, skipped, sizes, modes = check_image_files(
            files,
            full=check == "full",
            n_jobs=max(1, getattr(args, "workers", 0) or 0, min(4, os.cpu_count() or 1)),
            progress=not quiet,
        )
    _report_skipped(skipped, quiet)
    if not good:
        raise UserError(
            f"none of the {len(files)} image file(s) in {path!r} could be read."
        )
    if channels is not None:
        mode = "L" if channels == 1 else "RGB"
    elif modes:
        mode = ImageFiles.common_mode(modes)
    else:
        from PIL import Image

        with Image.open(good[0]) as im:
            mode = ImageFiles.common_mode([im.mode])
    return _Input(
        ImageFiles(good, mode), good, "path", kind,
        skipped=skipped, sizes=sizes, n_found=len(files),
    )


# ---------------------------------------------------------------------------
# Training helpers
# ---------------------------------------------------------------------------


def _make_epoch_bar(disable):
    """A skorch callback showing one progress bar over the training epochs."""
    from skorch.callbacks import Callback
    from tqdm.auto import tqdm

    class EpochProgress(Callback):
        def __init__(self):
            self.bar = None

        def on_train_begin(self, net, X=None, y=None, **kwargs):
            done = len(net.history)
            self.bar = tqdm(
                total=net.max_epochs, initial=done, desc="training", unit="epoch",
                # None: off when stderr is not a terminal (CI logs, pipes).
                disable=True if disable else None, file=sys.stderr, dynamic_ncols=True,
            )

        def on_epoch_end(self, net, **kwargs):
            if self.bar is None:
                return
            row = net.history[-1]
            post = {}
            if "train_loss" in row:
                post["loss"] = f"{row['train_loss']:.3f}"
            updates = [r for r in net.history if "label_update" in r]
            if updates:
                post["nmi_prev"] = f"{updates[-1]['label_update']['nmi_prev'][0]:.3f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

        def on_train_end(self, net, X=None, y=None, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

        def __getstate__(self):
            state = dict(self.__dict__)
            state["bar"] = None  # tqdm objects do not pickle
            return state

    return EpochProgress()


class _WarningCounter:
    """Count Sinkhorn convergence warnings instead of printing each one."""

    def __init__(self):
        self.convergence = 0
        self._show = None

    def __enter__(self):
        from sklearn.exceptions import ConvergenceWarning

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("always", ConvergenceWarning)
        self._show = warnings.showwarning

        def show(message, category, *rest, **kw):
            if issubclass(category, ConvergenceWarning):
                self.convergence += 1
            else:
                self._show(message, category, *rest, **kw)

        warnings.showwarning = show
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        return False


def _check_device(device):
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"invalid --device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(
            f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) found."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available on this machine.")


def _setup_torch(args):
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if hasattr(args, "device"):
        _check_device(args.device)


def _chunks(n, batch_size, target=50):
    """Slices covering ``range(n)``, about ``target`` of them, batch aligned."""
    size = max(batch_size, math.ceil(n / target / batch_size) * batch_size)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _subset(data, sl):
    if isinstance(data, ImageFiles):
        return ImageFiles(data.paths[sl], data.mode)
    return data[sl]


def _infer(est, data, what, quiet, desc):
    """Features of ``data``, or the probabilities of the estimator's clusters
    followed by those of every head, chunked for a progress bar."""
    from tqdm.auto import tqdm

    parts = []
    for sl in tqdm(
        _chunks(len(data), est.net_.batch_size), desc=desc, unit="chunk",
        disable=True if quiet else None, file=sys.stderr, leave=False,
    ):
        chunk = _subset(data, sl)
        if what == "features":
            parts.append(est.transform(chunk))
        else:
            heads = est.predict_proba_heads(chunk)
            parts.append([heads[est.head_]] + heads)
    if what == "features":
        return np.concatenate(parts)
    return [np.concatenate([p[t] for p in parts]) for t in range(len(parts[0]))]


def _write_labels_csv(path, ids, id_name, clusters, head_labels):
    """One row per sample: its id, its cluster, then each head's label.

    UTF-8; a file name that is not valid UTF-8 is written byte for byte
    (Python's surrogate escapes), as the file system holds it.
    """
    labels = np.column_stack([clusters, head_labels])
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [id_name, "cluster"] + [f"label_{t}" for t in range(labels.shape[1] - 1)]
        )
        for ident, row in zip(ids, labels.tolist()):
            writer.writerow([ident] + row)


def _montage_images(inp, est):
    """Indexable images for the montage, or None for tabular data."""
    if isinstance(inp.data, ImageFiles):
        return inp.data
    if est.input_info_.kind != "image":
        return None
    from .data import as_dataset

    ds, _ = as_dataset(inp.data)
    return ds


def _label_update_records(history):
    out = []
    for row in history:
        if "label_update" in row:
            info = row["label_update"]
            out.append({
                "epoch": int(row["epoch"]) - 1,
                "time_s": round(float(info["time"]), 4),
                "sinkhorn_iter": [int(i) for i in info["sinkhorn_iter"]],
                "min_size": [int(i) for i in info["min_size"]],
                "max_size": [int(i) for i in info["max_size"]],
                "nmi_prev": [round(float(v), 6) for v in info["nmi_prev"]],
            })
    return out


def _folder_classes(paths, root):
    """Top-level sub-folder of each path under ``root`` (ImageFolder classes)."""
    out = []
    for p in paths:
        rel = os.path.relpath(p, root)
        parts = rel.split(os.sep)
        out.append(parts[0] if len(parts) > 1 else "")
    return out


def _parse_image_size(text):
    try:
        if "x" in text.lower():
            h, w = text.lower().split("x")
            size = (int(h), int(w))
        else:
            size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid image size {text!r}: use S (square) or HxW, e.g. 64 or 48x64"
        ) from None
    if min(size if isinstance(size, tuple) else (size,)) < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return size


def _int_at_least(minimum, auto=False, why=""):
    """argparse type: an int >= ``minimum`` (or "auto" when ``auto``)."""

    def parse(text):
        if auto and text == "auto":
            return "auto"
        try:
            value = int(text)
        except ValueError:
            expected = "an integer or 'auto'" if auto else "an integer"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}{why}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)
_batch_size = _int_at_least(2, why=" (batch normalisation needs 2 samples)")


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_float_or(word):
    """argparse type: a positive number, or ``word`` ("auto", "none")."""

    def parse(text):
        return text if text == word else _positive_float(text)

    return parse


def _projection(text):
    """argparse type of --projection: comma-separated widths, or none."""
    if text == "none":
        return "none"
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated widths such as 512,128, or none; got {text!r}"
        ) from None
    if not all(w >= 1 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be >= 1, got {text!r}")
    return tuple(widths)


def _say(args, message):
    if not getattr(args, "quiet", False):
        print(message, flush=True)


def _can_plot(args):
    """Whether matplotlib is there to draw the figures. It is optional: without
    it a command still writes everything else, and says how to get them."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _say(args, "figures skipped: matplotlib is not installed "
                   "(pip install matplotlib)")
        return False
    return True


def _write_json(path, obj):
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def _given(**options):
    """The options the user set: those left unset (None) keep the estimator's
    own defaults."""
    return {name: value for name, value in options.items() if value is not None}


def cmd_demo(args):
    """``sela demo``: digits, SeLa next to k-means, montage and NMI plot."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits

    from .clusterer import SelfLabelClusterer
    from .metrics import TrueLabelNMI, clustering_scores
    from .plotting import plot_cluster_montage, plot_label_nmi

    digits = load_digits()
    # The 8x8 images (grey levels scaled to [0, 1]): the conv net with image
    # augmentation clusters them far better than an MLP on the 64 pixels as
    # tabular features (docs/benchmarks_quality.md).
    X, y = digits.images / 16.0, digits.target
    epochs = args.epochs if args.epochs is not None else (2 if args.quick else "auto")
    _say(args, f"sela demo: {X.shape[0]} handwritten digits (8x8 pixels), 10 classes")

    t0 = time.perf_counter()
    km = KMeans(n_clusters=10, n_init=1 if args.quick else 10, random_state=args.seed)
    km.fit(X.reshape(len(X), -1))
    t_km = time.perf_counter() - t0

    est = SelfLabelClusterer(
        n_clusters=10,
        **_given(n_heads=args.heads),
        max_epochs=epochs,
        device=args.device,
        callbacks=[TrueLabelNMI(y), _make_epoch_bar(disable=args.quiet)],
        random_state=args.seed,
    )
    t0 = time.perf_counter()
    with _WarningCounter():
        est.fit(X)
    t_sela = time.perf_counter() - t0

    rows = [
        (f"KMeans (k=10, n_init={km.n_init})", clustering_scores(y, km.labels_), t_km),
        (
            f"SeLa [10 x {est.n_heads}], {est.n_epochs_} epochs",
            clustering_scores(y, est.labels_),
            t_sela,
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'method':<{width}}    ACC    NMI    ARI   time")
    for name, s, secs in rows:
        print(f"{name:<{width}}  {s['acc']:.3f}  {s['nmi']:.3f}  {s['ari']:.3f}  {secs:5.1f}s")

    if not _can_plot(args):
        return 0

    def write(folder):
        plot_cluster_montage(
            digits.images, est.labels_, n_per_cluster=12, random_state=args.seed,
            title="SeLa clusters of the digits (random members per cluster)",
            path=folder.file("digits_montage.png"),
        )
        plot_label_nmi(est.history_, title="Digits: NMI of the self-labels over training",
                       path=folder.file("digits_label_nmi.png"))

    return _staged(args, "demo", ["digits_montage.png", "digits_label_nmi.png"], write)


def _estimator_from_args(args, callbacks, checkpoint_dir):
    from .clusterer import SelfLabelClusterer

    clusters = args.clusters[0] if len(args.clusters) == 1 else list(args.clusters)
    return SelfLabelClusterer(
        n_clusters=clusters,
        backbone=args.backbone,
        augment=None if args.no_augment else "auto",
        max_epochs=args.epochs,
        lr=args.lr,
        n_label_updates=args.label_updates,
        image_size=args.image_size,
        device=args.device,
        num_workers=args.workers,
        callbacks=callbacks,
        checkpoint_dir=checkpoint_dir,
        random_state=args.seed,
        **_given(batch_size=args.batch_size, n_heads=args.heads, lam=args.lam,
                 label_neighbors=args.label_neighbors),
        # "none" asks for the paper's linear heads on the backbone features.
        **{name: None if value == "none" else value
           for name, value in _given(projection=args.projection,
                                     temperature=args.temperature).items()},
    )


FIT_OUTPUTS = ("labels.csv", "model.pt", "features.npy", "montage.png", "label_nmi.png",
               "summary.json")


def _fit_checkpoint_dir(args, out):
    """The checkpoint folder of ``sela fit`` (None without --checkpoint),
    checked against --resume."""
    from .training import CHECKPOINT_FILE

    if not (args.checkpoint or args.resume):
        return None
    ckpt_dir = args.checkpoint_dir or os.path.join(out, "checkpoint")
    exists = os.path.exists(os.path.join(ckpt_dir, CHECKPOINT_FILE))
    if args.resume and not exists:
        raise UserError(
            f"--resume: no checkpoint in {ckpt_dir!r} (was the first run "
            "started with --checkpoint and the same --out?)."
        )
    if not args.resume and exists:
        raise UserError(
            f"{ckpt_dir!r} already holds a checkpoint; add --resume to "
            "continue that run, or delete the folder to start afresh."
        )
    args.checkpoint_path = ckpt_dir
    return ckpt_dir


def _check_sizes(inp, args):
    if inp.kind in ("folder", "image") and args.image_size is None:
        distinct = sorted(set(inp.sizes))
        if len(distinct) > 1:
            counts = {s: inp.sizes.count(s) for s in distinct}
            common = max(counts, key=counts.get)
            raise UserError(
                f"the {len(inp)} images have {len(distinct)} different sizes "
                f"(most common {common[1]}x{common[0]}, height x width); pass "
                "--image-size, e.g. --image-size 64, to resize them."
            )


def cmd_fit(args):
    """``sela fit``: train on a folder or array; write labels, model, summary."""
    from .outputs import OutputFolder

    start = time.perf_counter()
    try:
        # Before any work: the folder can be written, and no file sela did
        # not write would be replaced.
        folder = OutputFolder(args.out, "fit", FIT_OUTPUTS, overwrite=args.overwrite)
    except OSError as exc:
        raise UserError(str(exc)) from None
    try:
        ckpt_dir = _fit_checkpoint_dir(args, folder.path)
        # Outputs of earlier runs into a folder inside PATH are not input.
        inp = _load_input(args.path, args, exclude=folder.own_paths())
        t_check = time.perf_counter() - start
        _check_sizes(inp, args)
        _say(args, f"sela fit: {len(inp)} samples from {args.path}"
                   + (f" ({len(inp.skipped)} unreadable file(s) skipped)" if inp.skipped
                      else ""))
        est = _estimator_from_args(args, [_make_epoch_bar(disable=args.quiet)], ckpt_dir)
        t0 = time.perf_counter()
        with _WarningCounter() as counter:
            est.fit(inp.data)
        times = {"reading": t_check, "fit": time.perf_counter() - t0}
        summary = _write_fit_results(folder, est, inp, args, counter, times, start)
        written = folder.commit()
    except BaseException:
        folder.discard()
        raise
    clusters, heads = summary["clusters"], summary["heads"]
    _say(args, f"trained {est.n_epochs_} epochs in {times['fit']:.1f}s; cluster sizes "
               + f"{clusters['min_size']}-{clusters['max_size']} (head {est.head_}); "
               + "; ".join(f"head {h['head']}: {h['min_size']}-{h['max_size']}" for h in heads))
    if counter.convergence:
        _say(args, f"note: {counter.convergence} Sinkhorn solve(s) stopped at the "
                   "iteration limit before the tolerance (counted in the summary).")
    for path in written:
        _say(args, f"wrote {path}")
    return 0


def _sizes_of(labels, k):
    sizes = np.bincount(labels, minlength=k)
    return {
        "n_clusters": int(k),
        "cluster_sizes": sizes.tolist(),
        "min_size": int(sizes.min()),
        "max_size": int(sizes.max()),
    }


def _write_fit_results(folder, est, inp, args, counter, times, start):
    """Write the results of ``sela fit`` into the staging folder; the summary."""
    from . import __version__
    from .persistence import model_params, save_model
    from .plotting import plot_cluster_montage, plot_label_nmi

    outputs = {"labels": "labels.csv", "model": "model.pt"}
    _write_labels_csv(folder.file("labels.csv"), inp.ids, inp.id_name, est.labels_,
                      est.labels_all_)
    save_model(est, folder.file("model.pt"))
    if args.features:
        feats = _infer(est, inp.data, "features", args.quiet, "features")
        np.save(folder.file("features.npy"), feats)
        outputs["features"] = "features.npy"
    images = _montage_images(inp, est)
    updates = _label_update_records(est.history_)
    plots = (images is not None or bool(updates)) and _can_plot(args)
    if plots and images is not None:
        plot_cluster_montage(
            images, est.labels_, n_per_cluster=args.montage_cols,
            max_clusters=args.montage_rows, random_state=0,
            title=f"Clusters of head {est.head_}", path=folder.file("montage.png"),
        )
        outputs["montage"] = "montage.png"
    if plots and updates:
        plot_label_nmi(est.history_, path=folder.file("label_nmi.png"))
        outputs["label_nmi_plot"] = "label_nmi.png"
    clusters = {"head": int(est.head_), **_sizes_of(est.labels_, est.n_clusters_[est.head_])}
    heads = [{"head": t, **_sizes_of(est.labels_all_[:, t], k)}
             for t, k in enumerate(est.n_clusters_)]
    if args.score_folders and inp.kind == "folder":
        from .metrics import clustering_scores

        classes = _folder_classes(inp.ids, args.path)
        if len(set(classes)) > 1:
            clusters["scores_vs_folders"] = clustering_scores(classes, est.labels_)
            for t, h in enumerate(heads):
                h["scores_vs_folders"] = clustering_scores(classes, est.labels_all_[:, t])
    summary = {
        "command": "sela " + " ".join(shlex.quote(a) for a in args.argv),
        "library_version": __version__,
        "input": {
            "path": args.path,
            "kind": inp.kind,
            "files_found": inp.n_found,
            "n_samples": len(inp),
            "sample_kind": est.input_info_.kind,
            "sample_shape": list(est.input_info_.sample_shape),
            "skipped": [{"path": p, "reason": why} for p, why in inp.skipped],
        },
        "parameters": model_params(est),
        "seed": int(est.net_.label_seed),
        "device": str(est.net_.device),
        "n_epochs": int(est.n_epochs_),
        "time_s": {
            "reading": round(times["reading"], 3),
            "fit": round(times["fit"], 3),
            "total": round(time.perf_counter() - start, 3),
        },
        "clusters": clusters,
        "heads": heads,
        "label_updates": updates,
        "sinkhorn_not_converged": counter.convergence,
        "outputs": outputs,
    }
    _write_json(folder.file("summary.json"), summary)
    return summary


def _load_for_inference(args):
    from .persistence import ModelFileError, load_model

    try:
        return load_model(
            args.model, device=args.device, batch_size=args.batch_size,
            num_workers=args.workers,
        )
    except ModelFileError as exc:
        raise UserError(str(exc)) from None


def _load_for_model(est, args):
    info = est.input_info_
    channels = info.sample_shape[0] if info.kind == "image" else None
    inp = _load_input(args.path, args, channels=channels)
    _check_kind(est, inp, args.model)
    return inp


def _check_kind(est, inp, model_path):
    info = est.input_info_
    if info.kind == "tabular" and inp.kind != "array":
        raise UserError(
            f"the model {model_path!r} was trained on tabular data "
            f"({info.sample_shape[0]} features); give a .npy/.npz array, not images."
        )


def _staged(args, command, names, write):
    """Run ``write(folder)`` into a staged :class:`~sklearn_sela.outputs.OutputFolder`
    of ``--out`` and commit it; say what was written."""
    from .outputs import OutputFolder

    try:
        folder = OutputFolder(args.out, command, names, overwrite=True)
    except OSError as exc:
        raise UserError(str(exc)) from None
    try:
        write(folder)
        written = folder.commit()
    except BaseException:
        folder.discard()
        raise
    for p in written:
        _say(args, f"wrote {p}")
    return 0


def cmd_predict(args):
    """``sela predict``: cluster labels (and probabilities) of new data."""
    est = _load_for_inference(args)
    inp = _load_for_model(est, args)
    probas = _infer(est, inp.data, "probas", args.quiet, "predicting")
    names = ["probabilities.npy"] + [f"probabilities_head{t}.npy" for t in range(len(probas) - 1)]

    def write(folder):
        labels = np.stack([p.argmax(axis=1) for p in probas], axis=1)
        _write_labels_csv(folder.file("predictions.csv"), inp.ids, inp.id_name,
                          labels[:, 0], labels[:, 1:])
        if args.proba:
            for name, p in zip(names, probas):
                np.save(folder.file(name), p.astype(np.float32))

    return _staged(args, "predict", ["predictions.csv"] + names, write)


def cmd_transform(args):
    """``sela transform``: backbone features of new data."""
    est = _load_for_inference(args)
    inp = _load_for_model(est, args)
    feats = _infer(est, inp.data, "features", args.quiet, "features")

    def write(folder):
        np.save(folder.file("features.npy"), feats)
        if inp.id_name == "path":
            with open(folder.file("features_index.csv"), "w", newline="", encoding="utf-8",
                      errors="surrogateescape") as fh:
                writer = csv.writer(fh)
                writer.writerow(["row", "path"])
                writer.writerows(enumerate(inp.ids))

    return _staged(args, "transform", ["features.npy", "features_index.csv"], write)


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------


def _paragraphs(*texts):
    """Wrap each paragraph for the raw description formatter."""
    import textwrap

    return "\n\n".join(textwrap.fill(t, width=79) for t in texts)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep paragraph breaks; append defaults that say something."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and default is not None
            and default is not False
            and default is not argparse.SUPPRESS
            and action.option_strings
        ):
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            text += f" (default: {shown})"
        return text


def _common(parser, *, device=True, reading=True):
    g = parser.add_argument_group("runtime")
    if device:
        g.add_argument("--device", default="auto",
                       help="torch device: auto (CUDA when available), cpu, cuda, cuda:1, ...")
        g.add_argument("--workers", type=_nonneg_int, default=0, metavar="N",
                       help="DataLoader worker processes for reading samples")
    g.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads for torch (default: torch's choice); 1 is "
                        "fastest on a machine busy with other work")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or messages, only errors")
    g.add_argument("--debug", action="store_true",
                   help="show the full traceback on errors")
    if reading:
        r = parser.add_argument_group("reading the input")
        r.add_argument("--key", default=None, metavar="NAME",
                       help="array to use from a .npz file (default: its only "
                            "array, or the one named X)")
        r.add_argument("--check", choices=("full", "header", "none"), default="full",
                       help="how image files are checked up front: 'full' decodes "
                            "each one, 'header' only verifies the file structure; "
                            "unreadable files are skipped and reported")


def build_parser():
    """Build the ``sela`` argument parser.

    Returns
    -------
    parser : argparse.ArgumentParser
        Parses the command line into a namespace whose ``func`` runs the
        chosen sub-command.
    """
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="sela",
        description=_paragraphs(
            "Self-labelling clustering and representation learning (SeLa, "
            "Asano, Rupprecht & Vedaldi, ICLR 2020): trains a network with "
            "cross-entropy on cluster labels that it assigns itself, under an "
            "equal-size constraint solved by Sinkhorn-Knopp.",
            "Run 'sela COMMAND --help' for the options of a command.",
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # -- demo ---------------------------------------------------------------
    p = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="cluster scikit-learn's digits and compare with k-means",
        description=_paragraphs(
            "Cluster scikit-learn's 1,797 handwritten digits with SeLa and with "
            "KMeans, and print ACC (accuracy after matching clusters to digits), "
            "NMI and ARI against the true digits.",
            "Writes into --out: digits_montage.png (one row of random members "
            "per cluster) and digits_label_nmi.png (NMI between consecutive "
            "self-labellings, and with the true digits, over training). Takes "
            "about two minutes on two idle CPU cores (longer on a "
            "busy machine; --threads 1 helps there); needs no download.",
        ),
    )
    p.add_argument("--out", default=".", metavar="DIR", help="folder for the PNG files")
    p.add_argument("--quick", action="store_true",
                   help="2 epochs only (a smoke test; the clusters will be poor)")
    p.add_argument("--epochs", type=_positive_int, default=None, metavar="N",
                   help="training epochs (default: the estimator's 'auto', 200 here)")
    p.add_argument("--heads", type=_positive_int, default=None, metavar="T",
                   help="clustering heads T (default: the estimator's, 10); the "
                        "scores are those of the head chosen after training")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed")
    _common(p, reading=False)
    p.set_defaults(func=cmd_demo)

    # -- fit ----------------------------------------------------------------
    p = sub.add_parser(
        "fit", formatter_class=_Formatter,
        help="train on an image folder or a .npy/.npz array",
        description=_paragraphs(
            "Train SeLa on PATH: a folder of images (searched at any depth for "
            f"{', '.join(IMAGE_EXTENSIONS)}; class sub-folders are allowed "
            "but not needed), a single image, or a .npy/.npz array of shape "
            "(N, D) features or (N, H, W), (N, H, W, C), (N, C, H, W) images. "
            "Unreadable image files are skipped and reported; images of "
            "different sizes need --image-size.",
            "Writes into --out: labels.csv (file path, or row index for "
            "arrays, then the cluster -- what the model predicts for it -- "
            "and one self-label column per head), model.pt "
            "(weights and plain parameters, loaded without running code), "
            "montage.png of the clusters (images only), label_nmi.png, "
            "features.npy (with "
            "--features) and summary.json (parameters, times, cluster sizes, "
            "Sinkhorn iterations per label update, skipped files).",
            "The results are written as a set, only once training has finished: "
            "an interrupted or failed run leaves the folder as it was, and a "
            "run replaces the previous run's results whole (listed in "
            ".sela-fit-outputs.json). Files of those names that sela did not write "
            "are not replaced without --overwrite, and sela's own outputs in a "
            "folder inside PATH are not read as input.",
        ),
    )
    p.add_argument("path", metavar="PATH", help="image folder, image file, or .npy/.npz file")
    m = p.add_argument_group("model")
    m.add_argument("-k", "--clusters", type=_positive_int, nargs="+", default=[10],
                   metavar="K", help="clusters per head: one K for all heads, or one per head")
    m.add_argument("-t", "--heads", type=_positive_int, default=None, metavar="T",
                   help="number of clustering heads T (default: the estimator's, 10; "
                        "ignored when several K are given)")
    m.add_argument("--backbone", choices=BACKBONES, default="auto",
                   help="network: auto = MLP for features, conv net for images "
                        "under 64 px, AlexNet from 64 px")
    m.add_argument("--projection", type=_projection, default=None, metavar="W,W|none",
                   help="widths of the projection MLP before the heads (default 512,128); "
                        "none: heads on the backbone features, as in the paper")
    m.add_argument("--temperature", type=_positive_float_or("none"), default=None,
                   metavar="T|none",
                   help="temperature of the cosine heads (default 0.1); none: linear "
                        "heads, as in the paper")
    m.add_argument("--image-size", type=_parse_image_size, default=None, metavar="S|HxW",
                   help="resize images to S x S or H x W pixels (needed when "
                        "the images differ in size)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=_int_at_least(1, auto=True), default="auto", metavar="N|auto",
                   help="training epochs, or auto (about 400k sample visits, 20-200 epochs)")
    t.add_argument("--batch-size", type=_batch_size, default=None, metavar="N",
                   help="mini-batch size (default: SelfLabelClusterer's)")
    t.add_argument("--lr", type=_positive_float, default=0.05, metavar="LR", help="initial SGD learning rate")
    t.add_argument("--label-updates", type=_int_at_least(0, auto=True), default="auto", metavar="M|auto",
                   help="number of self-labelling (Sinkhorn) steps; auto = half the epochs")
    t.add_argument("--label-neighbors", type=_int_at_least(1), default=None, metavar="K",
                   help="self-label each sample on its heads' probabilities averaged over "
                        "it and its K-1 nearest samples in feature space; 1 = the paper's "
                        "step (default: SelfLabelClusterer's)")
    t.add_argument("--lam", type=_positive_float_or("auto"), default=None, metavar="LAMBDA|auto",
                   help="Sinkhorn lambda (default auto: 25 with linear heads, "
                        "20 x temperature with cosine heads)")
    t.add_argument("--no-augment", action="store_true", help="train without data augmentation")
    t.add_argument("--seed", type=int, default=None, metavar="N",
                   help="random seed (default: random; the seed used is in summary.json)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=".", metavar="DIR", help="output folder (created if missing)")
    o.add_argument("--overwrite", action="store_true",
                   help="replace files of the output names (labels.csv, model.pt, ...) "
                        "in --out that sela did not write; without it the run is refused "
                        "before training")
    o.add_argument("--features", action="store_true",
                   help="also write the backbone features of the training data to features.npy")
    o.add_argument("--montage-rows", type=_positive_int, default=20, metavar="N",
                   help="clusters shown in the montage (the largest when there are more)")
    o.add_argument("--montage-cols", type=_positive_int, default=10, metavar="N",
                   help="images per cluster in the montages")
    o.add_argument("--score-folders", action="store_true",
                   help="with class sub-folders (ImageFolder layout): report "
                        "ACC/NMI/ARI against the folder names in summary.json")
    c = p.add_argument_group("checkpoints")
    c.add_argument("--checkpoint", action="store_true",
                   help="save the training state after every epoch, to resume an "
                        "interrupted run")
    c.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="checkpoint folder (default: OUT/checkpoint)")
    c.add_argument("--resume", action="store_true",
                   help="continue the run saved in the checkpoint folder (give the same options)")
    _common(p)
    p.set_defaults(func=cmd_fit)

    # -- predict / transform --------------------------------------------------
    for name, func, text, extra in (
        ("predict", cmd_predict,
         "cluster new data with a saved model",
         "Writes predictions.csv (file path or row index, the cluster, then "
         "one label column per head) into --out; with --proba also "
         "probabilities.npy (the clusters') and probabilities_headT.npy."),
        ("transform", cmd_transform,
         "extract backbone features of new data with a saved model",
         "Writes features.npy (one row per sample, float32) and, for images, "
         "features_index.csv (row -> file path) into --out."),
    ):
        p = sub.add_parser(
            name, formatter_class=_Formatter, help=text,
            description=_paragraphs(
                f"{text[0].upper() + text[1:]}. MODEL is a model.pt written by "
                "'sela fit'; PATH is an image folder, an image file, or a "
                ".npy/.npz array shaped like the training data (folder images "
                "are resized to the training size).",
                extra,
            ),
        )
        p.add_argument("model", metavar="MODEL", help="model file written by 'sela fit'")
        p.add_argument("path", metavar="PATH", help="image folder, image file, or .npy/.npz file")
        p.add_argument("--out", default=".", metavar="DIR", help="output folder (created if missing)")
        p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                       help="inference batch size (default: the training batch size)")
        if name == "predict":
            p.add_argument("--proba", action="store_true",
                           help="also write the cluster probabilities, overall and per head")
        _common(p)
        p.set_defaults(func=func)
    return parser


def main(argv=None):
    """Run the ``sela`` command.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    status : int
        0 on success, 1 on a user error, 2 on a usage error, 130 when
        interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.argv = argv
    try:
        _setup_torch(args)
        return args.func(args)
    except KeyboardInterrupt:
        hint = "; no results were written" if args.func is cmd_fit else ""
        ckpt = getattr(args, "checkpoint_path", None)
        if ckpt is not None and os.path.exists(os.path.join(ckpt, "checkpoint.pt")):
            hint += (f"; the checkpoint in {ckpt} holds the last complete epoch: run "
                     "the same command with --resume to continue")
        print(f"sela: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        message = _user_message(exc)
        if message is None:
            if not args.debug:
                traceback.print_exc()
            print("sela: internal error (please report it with the traceback above)",
                  file=sys.stderr)
            return 1
        print(f"sela: error: {message}", file=sys.stderr)
        return 1


def _user_message(exc):
    """One-line message for errors caused by input or settings, else None."""
    import torch

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory on the device; try a smaller --batch-size or --image-size."
    if isinstance(exc, (ValueError, OSError, FloatingPointError)):
        text = " ".join(str(exc).split())
        return text or type(exc).__name__
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
