"""``sela fit``: train on a folder or an array; write labels, model, figures
and a summary as one set into ``--out``."""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import os
import shlex
import time

import numpy as np

from .inputs import check_sizes, folder_classes, infer, load_input, montage_images
from .options import given_params
from .runtime import (
    UserError,
    WarningCounter,
    can_plot,
    make_epoch_bar,
    say,
    write_json,
    write_labels_csv,
)

FIT_OUTPUTS = ("labels.csv", "model.pt", "features.npy", "montage.png", "label_nmi.png",
               "summary.json")


def fit_checkpoint_dir(args, out):
    """The checkpoint folder of ``sela fit`` (None without --checkpoint),
    checked against --resume."""
    from ..callbacks import CHECKPOINT_FILE

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


def _open_output(args):
    """The staged output folder; checked before any work: it can be written,
    and no file sela did not write would be replaced."""
    from ..outputs import OutputFolder

    try:
        return OutputFolder(args.out, "fit", FIT_OUTPUTS, overwrite=args.overwrite)
    except OSError as exc:
        raise UserError(str(exc)) from None


def _train(args, folder, start):
    """Read the input and fit; the input, estimator, warnings and times."""
    from ..clusterer import SelfLabelClusterer

    params = given_params(args)
    ckpt_dir = fit_checkpoint_dir(args, folder.path)
    # Outputs of earlier runs into a folder inside PATH are not input.
    inp = load_input(args.path, args, exclude=folder.own_paths())
    t_check = time.perf_counter() - start
    check_sizes(inp, params.get("image_size"))
    skipped = f" ({len(inp.skipped)} unreadable file(s) skipped)" if inp.skipped else ""
    say(args, f"sela fit: {len(inp)} samples from {args.path}{skipped}")
    est = SelfLabelClusterer(**params, callbacks=[make_epoch_bar(disable=args.quiet)],
                             checkpoint_dir=ckpt_dir)
    t0 = time.perf_counter()
    with WarningCounter() as counter:
        est.fit(inp.data)
    return inp, est, counter, {"reading": t_check, "fit": time.perf_counter() - t0}


def cmd_fit(args):
    """``sela fit``: train on a folder or array; write labels, model, summary."""
    start = time.perf_counter()
    folder = _open_output(args)
    try:
        inp, est, counter, times = _train(args, folder, start)
        outputs = _write_outputs(folder, est, inp, args)
        summary = _summary(est, inp, args, counter, times, start, outputs)
        write_json(folder.file("summary.json"), summary)
        written = folder.commit()
    except BaseException:
        folder.discard()
        raise
    _report(args, est, summary, times, counter, written)
    return 0


def _report(args, est, summary, times, counter, written):
    clusters, heads = summary["clusters"], summary["heads"]
    say(args, f"trained {est.n_epochs_} epochs in {times['fit']:.1f}s; cluster sizes "
              + f"{clusters['min_size']}-{clusters['max_size']} (head {est.head_}); "
              + "; ".join(f"head {h['head']}: {h['min_size']}-{h['max_size']}"
                          for h in heads))
    if counter.convergence:
        say(args, f"note: {counter.convergence} Sinkhorn solve(s) stopped at the "
                  "iteration limit before the tolerance (counted in the summary).")
    for path in written:
        say(args, f"wrote {path}")


def _write_outputs(folder, est, inp, args):
    """Write labels, model, features and figures; ``{what: file name}``."""
    from ..persistence import save_model
    from ..plotting import plot_cluster_montage, plot_label_nmi

    outputs = {"labels": "labels.csv", "model": "model.pt"}
    write_labels_csv(folder.file("labels.csv"), inp.ids, inp.id_name, est.labels_,
                     est.labels_all_)
    save_model(est, folder.file("model.pt"))
    if args.features:
        np.save(folder.file("features.npy"),
                infer(est, inp.data, "features", args.quiet, "features"))
        outputs["features"] = "features.npy"
    images = montage_images(inp, est)
    updates = any("label_update" in row for row in est.history_)
    plots = (images is not None or updates) and can_plot(args)
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
    return outputs


def _sizes_of(labels, k):
    sizes = np.bincount(labels, minlength=k)
    return {
        "n_clusters": int(k),
        "cluster_sizes": sizes.tolist(),
        "min_size": int(sizes.min()),
        "max_size": int(sizes.max()),
    }


def _cluster_summaries(est, inp, args):
    """The sizes (and scores against class folders) of the estimator's
    clusters and of each head's."""
    clusters = {"head": int(est.head_), **_sizes_of(est.labels_, est.n_clusters_[est.head_])}
    heads = [{"head": t, **_sizes_of(est.labels_all_[:, t], k)}
             for t, k in enumerate(est.n_clusters_)]
    if args.score_folders and inp.kind == "folder":
        from ..metrics import clustering_scores

        classes = folder_classes(inp.ids, args.path)
        if len(set(classes)) > 1:
            clusters["scores_vs_folders"] = clustering_scores(classes, est.labels_)
            for t, h in enumerate(heads):
                h["scores_vs_folders"] = clustering_scores(classes, est.labels_all_[:, t])
    return clusters, heads


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


def _input_summary(est, inp, args):
    return {
        "path": args.path,
        "kind": inp.kind,
        "files_found": inp.n_found,
        "n_samples": len(inp),
        "sample_kind": est.input_info_.kind,
        "sample_shape": list(est.input_info_.sample_shape),
        "skipped": [{"path": p, "reason": why} for p, why in inp.skipped],
    }


def _summary(est, inp, args, counter, times, start, outputs):
    """The content of summary.json."""
    from .. import __version__
    from ..persistence import model_params

    clusters, heads = _cluster_summaries(est, inp, args)
    return {
        "command": "sela " + " ".join(shlex.quote(a) for a in args.argv),
        "library_version": __version__,
        "input": _input_summary(est, inp, args),
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
        "label_updates": _label_update_records(est.history_),
        "sinkhorn_not_converged": counter.convergence,
        "outputs": outputs,
    }
