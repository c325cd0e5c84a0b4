"""What every ``sela`` command shares: messages, errors, progress, devices,
chunked inference and staged output folders."""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import csv
import json
import sys
import warnings

import numpy as np



class UserError(Exception):
    """A problem with the user's input or settings: reported in one line."""


def say(args, message):
    """Print ``message`` unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(message, flush=True)


def can_plot(args):
    """Whether matplotlib is there to draw the figures. It is optional: without
    it a command still writes everything else, and says how to get them."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        say(args, "figures skipped: matplotlib is not installed "
                  "(pip install matplotlib)")
        return False
    return True


def write_json(path, obj):
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


def write_labels_csv(path, ids, id_name, clusters, head_labels):
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


def staged(args, command, names, write):
    """Run ``write(folder)`` into a staged :class:`~sklearn_sela.outputs.OutputFolder`
    of ``--out`` and commit it; say what was written."""
    from ..outputs import OutputFolder

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
        say(args, f"wrote {p}")
    return 0


# ---------------------------------------------------------------------------
# Training and inference
# ---------------------------------------------------------------------------


def make_epoch_bar(disable):
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


class WarningCounter:
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


def check_device(device):
    """A one-line error now, rather than a torch error after reading the input."""
    import torch

    if device is None or device == "auto":
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


def setup_torch(args, params):
    """Apply ``--threads`` and check the device before any work."""
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    check_device(params.get("device"))
