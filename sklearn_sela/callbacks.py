"""The skorch callbacks of SeLa training, and its checkpoints.

:class:`SelfLabelling` runs the self-labelling step of a
:class:`~sklearn_sela.training.SelfLabelNet` at scheduled epochs
(:func:`label_update_epochs`) and its label transfer once,
:class:`StepDrops` divides the learning rate at given epochs, and
:class:`Checkpoint` writes everything a resumed fit needs after each epoch
(:func:`save_checkpoint`, :func:`load_checkpoint`,
:func:`restore_checkpoint`). Each is a small :class:`skorch.callbacks.Callback`,
so it can be swapped or extended.
"""

import json
import os
import warnings

import numpy as np
import torch
from skorch.callbacks import Callback
from skorch.history import History
from sklearn.exceptions import ConvergenceWarning

from .distributed import unwrap_module

__all__ = [
    "SelfLabelling",
    "StepDrops",
    "Checkpoint",
    "label_update_epochs",
    "save_checkpoint",
    "load_checkpoint",
    "restore_checkpoint",
    "CHECKPOINT_FILE",
]

CHECKPOINT_FILE = "checkpoint.pt"


def label_update_epochs(max_epochs, n_updates, schedule="quadratic"):
    """Epochs at the start of which the labels are re-assigned.

    Parameters
    ----------
    max_epochs : int
        Total number of training epochs.
    n_updates : int
        Number of self-labelling steps M. 0 keeps the initial random labels
        (the paper's ablation, table 1).
    schedule : {"quadratic", "linear"}, default="quadratic"
        ``"quadratic"`` places update ``i`` at the fraction
        ``((i - 1) / (M - 1))**2`` of training (appendix A.1: denser at the
        start, where most learning happens); ``"linear"`` spreads them evenly.
        The first update is always at epoch 0.

    Returns
    -------
    epochs : list of int
        Sorted, distinct epoch indices in ``[0, max_epochs)``. When two
        fractions round to the same epoch the later one moves to the next
        free epoch, so ``min(n_updates, max_epochs)`` updates always run.
    """
    n = min(int(n_updates), int(max_epochs))
    if n <= 0:
        return []
    if n == 1:
        return [0]
    frac = np.linspace(0.0, 1.0, n)
    if schedule == "quadratic":
        frac = frac**2
    elif schedule != "linear":
        raise ValueError(
            f"label_schedule must be 'quadratic' or 'linear', got {schedule!r}."
        )
    raw = np.floor(frac * (max_epochs - 1) + 1e-9).astype(int)
    epochs = []
    for e in raw:
        e = max(e, epochs[-1] + 1) if epochs else e
        epochs.append(int(e))
    # Pushing duplicates forward can overrun the end: pull them back.
    for i in range(n - 1, -1, -1):
        limit = max_epochs - (n - i)
        if epochs[i] > limit:
            epochs[i] = limit
    return epochs



class SelfLabelling(Callback):
    """Run :meth:`SelfLabelNet.update_labels` at the start of given epochs.

    Parameters
    ----------
    epochs : list of int
        0-based epoch indices (see :func:`label_update_epochs`).
    transfer_epochs : list of int, default=()
        0-based epochs at whose start :meth:`SelfLabelNet.transfer_labels`
        runs; no update of ``epochs`` runs from the first on. Empty: no
        transfer.
    verbose : int, default=0
        Print one line per update when > 0.
    """

    def __init__(self, epochs, transfer_epochs=(), verbose=0):
        self.epochs = epochs
        self.transfer_epochs = transfer_epochs
        self.verbose = verbose

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        epoch = len(net.history) - 1
        if epoch in set(self.transfer_epochs):
            info = net.transfer_labels(dataset_train)
            net.history.record("label_transfer", info)
            if self.verbose:
                print(f"[label transfer epoch {epoch}] {info['time']:.1f}s, NMI vs "
                      f"previous {info['nmi_prev'][0]:.3f}", flush=True)
            return
        if any(epoch > e for e in self.transfer_epochs):
            return
        if epoch not in set(self.epochs):
            return
        info = net.update_labels(dataset_train)
        net.history.record("label_update", info)
        if self.verbose:
            heads = len(info["sinkhorn_iter"])
            print(
                f"[label update {net.label_updates_}/{len(self.epochs)} "
                f"epoch {epoch}] {info['time']:.1f}s, sinkhorn iter "
                f"{info['sinkhorn_iter'][0]}, cluster sizes "
                f"{info['min_size'][0]}-{info['max_size'][0]}, NMI vs previous "
                f"{info['nmi_prev'][0]:.3f}"
                + ("" if all(info.get("converged", [True])) else " (not converged)")
                + (f" (head 0 of {heads})" if heads > 1 else ""),
                flush=True,
            )

    def on_train_end(self, net, **kwargs):
        solves = [
            ok
            for row in net.history
            if "label_update" in row
            for ok in row["label_update"].get("converged", [])
        ]
        failed = solves.count(False)
        if failed:
            warnings.warn(
                f"{failed} of {len(solves)} Sinkhorn solves during training "
                f"stopped at sinkhorn_max_iter={net.sinkhorn_max_iter} before "
                f"reaching sinkhorn_tol={net.sinkhorn_tol} (see the "
                f"'label_update' entries of the history); labels from them "
                f"are approximately balanced.",
                ConvergenceWarning,
                stacklevel=2,
            )


class StepDrops(Callback):
    """Divide the learning rate by ``1 / gamma`` at given epochs.

    Stateless (the rate is a function of the epoch index), so a resumed run
    continues the schedule exactly.

    Parameters
    ----------
    milestones : list of int
        0-based epochs from which each further drop applies.
    gamma : float, default=0.1
        Multiplicative factor per drop.
    """

    def __init__(self, milestones, gamma=0.1):
        self.milestones = milestones
        self.gamma = gamma

    def on_epoch_begin(self, net, **kwargs):
        epoch = len(net.history) - 1
        drops = sum(epoch >= m for m in self.milestones)
        lr = net.lr * self.gamma**drops
        for group in net.optimizer_.param_groups:
            group["lr"] = lr
        net.history.record("lr", lr)


class Checkpoint(Callback):
    """Save everything needed to resume training every few epochs.

    Writes ``checkpoint.pt`` in ``dirname`` atomically (a crash while saving
    leaves the previous checkpoint intact). The file holds only tensors and
    plain Python values, so :func:`load_checkpoint` reads it with
    ``torch.load(..., weights_only=True)``: no code runs from it.

    Parameters
    ----------
    dirname : str or path
        Directory, created if missing.
    every : int, default=1
        Save after every ``every`` epochs, and after the last one.
    run : dict, default=None
        Plain values that identify the run (e.g. the estimator's
        parameters), saved with the state so that a resume can check them.
    """

    def __init__(self, dirname, every=1, run=None):
        self.dirname = dirname
        self.every = every
        self.run = run

    def on_epoch_end(self, net, **kwargs):
        done = len(net.history)
        if done % self.every and done != net.max_epochs:
            return
        save_checkpoint(net, self.dirname, self.run)


def save_checkpoint(net, dirname, run=None):
    """Write ``net``'s resumable state (and ``run``, plain values that
    identify the run) to ``dirname/checkpoint.pt``."""
    os.makedirs(dirname, exist_ok=True)
    state = {
        "run": json.dumps(run or {}),
        "epochs_done": len(net.history),
        "module": unwrap_module(net.module_).state_dict(),
        "optimizer": net.optimizer_.state_dict(),
        "labels": net.labels_.clone(),
        "log_betas": [
            None if b is None else torch.as_tensor(b) for b in net.log_betas_
        ],
        "proportions": [None if p is None else torch.as_tensor(p) for p in net.proportions_],
        "label_updates": net.label_updates_,
        "history": json.dumps(net.history.to_list(), default=float),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path = os.path.join(dirname, CHECKPOINT_FILE)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(dirname):
    """Read a checkpoint written by :class:`Checkpoint`, or None if absent.

    Uses ``weights_only=True``: only tensors and plain containers are
    unpickled.

    Raises
    ------
    ValueError
        If the file cannot be read or is not such a checkpoint: one line
        naming the file, never torch's advice to unpickle it as code.
    """
    path = os.path.join(dirname, CHECKPOINT_FILE)
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        keys = {"run", "epochs_done", "module", "optimizer", "labels", "log_betas",
                "proportions", "label_updates", "history", "rng_cpu", "rng_cuda"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise ValueError("not a sklearn-sela checkpoint")
    except Exception as exc:  # torch raises many types for damaged files
        reason = " ".join(str(exc).split()).split(". ")[0][:160] or type(exc).__name__
        raise ValueError(
            f"The checkpoint {path!r} is damaged or not a sklearn-sela checkpoint "
            f"({reason}); delete it to start the run afresh."
        ) from None
    return state


def restore_checkpoint(net, state):
    """Put ``state`` (from :func:`load_checkpoint`) back into an initialised net."""
    net.module_.load_state_dict(state["module"])
    net.optimizer_.load_state_dict(state["optimizer"])
    net.labels_ = state["labels"].clone()
    net.log_betas_ = list(state["log_betas"])
    net.proportions_ = [None if p is None else p.numpy() for p in state["proportions"]]
    net.label_updates_ = int(state["label_updates"])
    net.history_ = History(json.loads(state["history"]))
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["epochs_done"])
