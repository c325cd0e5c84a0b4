"""``SelfLabelClusterer``: the scikit-learn face of SeLa training.

This module is over 700 lines: a quarter of it is the estimator's
parameter documentation, and its private helpers (building the skorch net,
resume checks, the inference pass, the fitted state) stay beside the class,
as in scikit-learn's ``_kmeans.py``.
"""

from numbers import Integral, Real
import json
import math
import os
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import ProgressBar
from skorch.history import History

from .backbones import MultiHeadNet, make_backbone
from .data import AugmentedDataset, as_dataset, default_augmentation
from .distributed import DistributedFit
from .neighbors import cosine_neighbors, neighbor_agreement
from .sinkhorn import check_proportions, sinkhorn_knopp, soft_assignments
from .callbacks import (
    Checkpoint,
    SelfLabelling,
    StepDrops,
    label_update_epochs,
    load_checkpoint,
    restore_checkpoint,
)
from .training import SelfLabelNet

__all__ = ["SelfLabelClusterer"]

# The label transfer (SelfLabelNet.transfer_labels) runs at these fractions
# of training; the heads learn its partition for the rest, and the second
# partitions the features that learned the first.
_TRANSFER_AT = (0.6, 0.8)

# SGD momentum (the paper's).
_MOMENTUM = 0.9

# Neighbours per training sample in the agreement that picks the head.
_AGREEMENT_NEIGHBORS = 30

# Marginal tolerance of the Sinkhorn solves during training: looser than the
# solver's default, as the labels barely change below it.
_SINKHORN_TOL = 1e-2


def _transfer_epochs(max_epochs, label_epochs):
    """Epochs of the label transfer: none without self-labelling, and none
    before any training happened."""
    if not label_epochs:
        return []
    return sorted({e for e in (int(round(f * max_epochs)) for f in _TRANSFER_AT) if e > 0})


# Parameters that a resumed fit may change: they do not change what is trained.
_RESUME_FREE = {"verbose", "device", "num_workers", "callbacks", "checkpoint_dir"}


def _plain(value):
    """``value`` as a plain JSON value (a module or callable by its type)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return type(value).__name__


def _auto_epochs(n_samples):
    # About 400k sample-visits, between 20 and 200 epochs: small data sets need
    # many passes for the labels to settle, large ones few (time budget).
    return int(np.clip(math.ceil(4e5 / n_samples), 20, 200))


def _resolve_device(device):
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _seed_from(random_state):
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    return int(random_state)


class SelfLabelClusterer(ClusterMixin, TransformerMixin, BaseEstimator):
    """Self-labelling clustering and representation learning (SeLa).

    Trains a network (backbone + ``n_heads`` classification heads) with
    cross-entropy on labels that it assigns itself, alternating with a
    self-labelling step that solves an equipartition-constrained optimal
    transport problem by Sinkhorn-Knopp (Asano, Rupprecht & Vedaldi, ICLR
    2020). Training runs through :mod:`skorch`. The clusters are the
    network's: :meth:`predict` is the most probable cluster of one head
    under the cluster balancing learned on the training data, and
    ``labels_`` is :meth:`predict` of the training data.

    Beyond the paper's step, each self-labelling step averages the heads'
    predictions over the sample's nearest neighbours in feature space
    (``label_neighbors``), and at 3/5 and again at 4/5 of training a label
    transfer replaces each head's labels by a balanced k-means of the
    whitened features (averaged over 8 augmented views and over their
    neighbourhood graph, refined in its spectral embedding up to 50
    clusters), started from the head's clusters or, up to 50 clusters, from
    10 k-means++ seedings if one of those splits fewer neighbourhoods (above
    50, the heads of one K share one k-means, from the head partition that
    splits the fewest); the heads learn that partition in the following
    epochs.
    After training, the head whose clusters split the fewest neighbourhoods
    of the training samples is the one that :meth:`predict` uses
    (``head_``). Measured effects: :ref:`benchmarks-quality`.

    Parameters
    ----------
    n_clusters : int or list of int, default=10
        Number of clusters K, or one K per head (heads may differ, paper
        section 3.5; ``head_`` is then chosen among the heads with the first
        head's K).

    n_heads : int, default=10
        Number of clustering heads T sharing the backbone. Each head starts
        from its own random labelling, which keeps the features from settling
        on one poor clustering. Ignored if ``n_clusters`` is a list. Each
        self-labelling step solves T transport problems, ``O(N K)`` each per
        Sinkhorn iteration.

    backbone : str or torch.nn.Module, default="auto"
        ``"auto"`` (MLP for tabular data, a compact conv net for images
        smaller than 64 pixels, AlexNet above), ``"mlp"``, ``"convnet"``,
        ``"alexnet"``, ``"resnet18"``, ``"resnet50"`` (randomly initialised),
        or a module mapping a batch to ``(B, D)`` features.

    augment : "auto", callable or None, default="auto"
        Transform of a float ``(C, H, W)`` (or ``(D,)``) tensor applied in
        training (paper section 3.4); a callable may also take a batch.
        ``"auto"`` picks a preset by data kind (none for tabular data).

    max_epochs : int or "auto", default="auto"
        Training epochs; ``"auto"`` uses about 400k sample visits, clipped to
        [20, 200] epochs.

    batch_size : int, default=128
        Mini-batch size of training and inference.

    lr : float, default=0.05
        Initial SGD learning rate (paper: 0.05).

    weight_decay : float, default=5e-4
        SGD weight decay (SGD with momentum 0.9, as in the paper).

    lr_drops : tuple of float, default=(0.375, 0.75, 0.875)
        Fractions of ``max_epochs`` at which the learning rate is divided by
        10 (paper: epochs 150, 300, 350 of 400).

    n_label_updates : int or "auto", default="auto"
        Number of self-labelling steps M, placed at ``((i-1)/(M-1))**2`` of
        training (appendix A.1); those that fall on or after the first label
        transfer give way to it. ``"auto"`` is half the number of epochs
        (the paper's best: 80 for 160 epochs). 0 keeps the initial random
        labels and skips the transfers (ablation).

    label_neighbors : int, default=30
        Size of the neighbourhood (the sample and its nearest training
        samples by cosine similarity of the features) whose predictions are
        averaged in each self-labelling step; 1 is the paper's step. Each
        step then adds a similarity search: exact, ``O(N^2 D)``, below 32,768
        samples and on CUDA; approximate (95% of the exact neighbours), about
        ``O(N^1.5 D)``, above on CPU (timings: :ref:`benchmarks-scaling`).

    projection : tuple of int or None, default=(512, 128)
        Widths of the MLP between the backbone features and the heads, as in
        SeLa-v2 (Caron et al. 2020). :meth:`transform` returns the backbone
        features before it. None: the heads read the backbone features (the
        paper's architecture).

    temperature : float or None, default=0.1
        Cosine heads: each head's logits are the cosine similarities of the
        unit embedding with one unit prototype per cluster, divided by
        ``temperature``. None: linear heads with bias (the paper).

    lam : float or "auto", default="auto"
        Sinkhorn lambda: the labels solve the transport problem on the
        heads' probabilities raised to the power ``lam``. ``"auto"`` is 25
        with linear heads (the paper) and ``20 * temperature`` with cosine
        heads.

    cluster_proportions : array-like of shape (n_clusters,), "auto" or None, \
            default=None
        Cluster sizes, as fractions of the samples, that the label steps,
        the label transfers and the balancing of :meth:`predict` impose:
        None for equal sizes (the paper's equipartition); an array of
        positive fractions summing to one for every head, or a list of
        them, one per head; or ``"auto"`` for unequal, unknown sizes: each
        label transfer learns them from the features and the later label
        steps keep them (before the first transfer, sizes are equal). No
        extra cost. See :ref:`imbalanced`.

    image_size : int or (int, int), default=None
        Resize streamed images (e.g. an ``ImageFolder``) to this size.

    device : str, default="auto"
        Torch device; ``"auto"`` uses CUDA when available.

    num_workers : int, default=0
        DataLoader worker processes.

    callbacks : list of skorch callbacks, default=None
        Extra callbacks passed to the skorch net.

    checkpoint_dir : str or path, default=None
        If set, training state is saved there after every epoch, and a later
        ``fit`` with the same directory resumes from it; only ``verbose``,
        ``device``, ``num_workers`` and ``callbacks`` may differ (a
        mismatch is refused, naming the parameters), and
        ``random_state=None`` continues the saved run's seed.

    verbose : int, default=0
        0: silent; 1: one line per label update and a progress bar per epoch;
        2: also skorch's per-epoch table.

    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, initial labels, shuffling and
        augmentation; CPU runs with the same seed are identical.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample: :meth:`predict` of the training
        data, with cluster sizes near ``cluster_proportions_[head_]`` (the
        balancing of ``log_betas_``).

    head_ : int
        The head :meth:`predict`, :meth:`predict_proba` and :meth:`score`
        use: of the heads with ``n_clusters_[0]`` clusters, the one whose
        predicted clusters hold the largest fraction of each training
        sample's 30 nearest neighbours (cosine, centred features before
        whitening).

    labels_all_ : ndarray of shape (n_samples, n_heads)
        The last self-labels of every head (the training targets).

    n_clusters_ : list of int
        K per head.

    net_ : SelfLabelNet
        The fitted skorch net (``net_.module_`` is the torch model).

    history_ : skorch History
        Per-epoch loss, learning rate and label-update records (time,
        Sinkhorn iterations, smallest/largest cluster, NMI between
        consecutive labellings).

    log_betas_ : list of ndarray
        Per head, the cluster balancing of :meth:`predict_proba`: the
        Sinkhorn cluster scaling of the transport problem on the head's
        predictions for the training data.

    cluster_proportions_ : list of ndarray
        Per head, the cluster sizes (fractions of the training samples) of
        the balancing in ``log_betas_``: ``cluster_proportions`` (equal for
        None), or the estimate with ``"auto"``.

    input_info_ : InputInfo
        Kind and sample shape of the training input.

    n_features_in_ : int
        Number of features (tabular input only).

    n_epochs_ : int
        Epochs trained.

    See Also
    --------
    sklearn_sela.SinkhornAssigner : Balanced assignment on fixed features,
        e.g. this estimator's ``transform`` output.
    sklearn_sela.BalancedGraphClustering : Balanced partition of fixed
        features along their neighbourhood graph.
    sklearn_sela.sinkhorn_knopp : The self-labelling solver.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn_sela import SelfLabelClusterer
    >>> X, _ = load_digits(return_X_y=True)
    >>> model = SelfLabelClusterer(n_clusters=10, max_epochs=2, random_state=0)
    >>> model.fit(X[:300]).labels_.shape
    (300,)
    """

    _parameter_constraints = {
        "n_clusters": [Interval(Integral, 1, None, closed="left"), list, tuple],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "backbone": [str, torch.nn.Module],
        "augment": [StrOptions({"auto"}), callable, None],
        "max_epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "lr_drops": [list, tuple],
        "n_label_updates": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "label_neighbors": [Interval(Integral, 1, None, closed="left")],
        "projection": [tuple, list, None],
        "temperature": [Interval(Real, 0, None, closed="neither"), None],
        "lam": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "cluster_proportions": ["array-like", list, StrOptions({"auto"}), None],
        "image_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "device": [str],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "callbacks": [list, None],
        "checkpoint_dir": [str, os.PathLike, None],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_clusters=10,
        n_heads=10,
        *,
        backbone="auto",
        augment="auto",
        max_epochs="auto",
        batch_size=128,
        lr=0.05,
        weight_decay=5e-4,
        lr_drops=(0.375, 0.75, 0.875),
        n_label_updates="auto",
        label_neighbors=30,
        projection=(512, 128),
        temperature=0.1,
        lam="auto",
        cluster_proportions=None,
        image_size=None,
        device="auto",
        num_workers=0,
        callbacks=None,
        checkpoint_dir=None,
        verbose=0,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.backbone = backbone
        self.augment = augment
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_drops = lr_drops
        self.n_label_updates = n_label_updates
        self.label_neighbors = label_neighbors
        self.projection = projection
        self.temperature = temperature
        self.lam = lam
        self.cluster_proportions = cluster_proportions
        self.image_size = image_size
        self.device = device
        self.num_workers = num_workers
        self.callbacks = callbacks
        self.checkpoint_dir = checkpoint_dir
        self.verbose = verbose
        self.random_state = random_state

    # -- helpers ----------------------------------------------------------
    def _cluster_list(self):
        if isinstance(self.n_clusters, (list, tuple)):
            ks = list(self.n_clusters)
            if not ks or not all(isinstance(k, Integral) and k >= 1 for k in ks):
                raise ValueError(
                    f"n_clusters must be a positive int or a non-empty list of "
                    f"positive ints, got {self.n_clusters!r}."
                )
            return [int(k) for k in ks]
        return [int(self.n_clusters)] * int(self.n_heads)

    def _dataset(self, X, reset):
        expected = None if reset else self.input_info_
        base, info = as_dataset(X, expected=expected, image_size=self.image_size,
                                estimator_name=type(self).__name__)
        if reset:
            self.input_info_ = info
            if info.kind == "tabular":
                self.n_features_in_ = info.sample_shape[0]
            elif hasattr(self, "n_features_in_"):
                del self.n_features_in_
        return base, info

    def _projection(self):
        if self.projection is None:
            return None
        widths = list(self.projection)
        if not widths or not all(
            isinstance(w, Integral) and not isinstance(w, bool) and w >= 1 for w in widths
        ):
            raise ValueError(
                f"projection must be None or a non-empty sequence of positive "
                f"ints, got {self.projection!r}."
            )
        return tuple(int(w) for w in widths)

    def _lam(self):
        if self.lam != "auto":
            return float(self.lam)
        return 25.0 if self.temperature is None else 20.0 * self.temperature

    def _proportions(self, ks):
        """``cluster_proportions`` checked against the heads' K: None,
        ``"auto"`` or one float64 array per head."""
        given = self.cluster_proportions
        if given is None or isinstance(given, str):
            return given
        per_head = len(given) > 0 and np.ndim(given[0]) == 1
        if per_head and len(given) != len(ks):
            raise ValueError(
                f"cluster_proportions has {len(given)} arrays, expected one per head "
                f"({len(ks)})."
            )
        checked = []
        for t, k in enumerate(ks):
            try:
                checked.append(check_proportions(given[t] if per_head else given, k))
            except ValueError as exc:
                where = f"head {t}, " if per_head else ""
                raise ValueError(f"{str(exc).rstrip('.')} ({where}n_clusters={k}).") from None
        return checked

    def _augmentation(self, info):
        if self.augment == "auto":
            return default_augmentation(info)
        return self.augment

    def _schedule(self, max_epochs):
        n_updates = (
            max(1, max_epochs // 2) if self.n_label_updates == "auto" else self.n_label_updates
        )
        return label_update_epochs(max_epochs, n_updates)

    def _run(self, seed, n_samples):
        """What identifies a run for a resume: the parameters that change
        what is trained, the seed and the number of samples."""
        run = {
            name: _plain(value) for name, value in self.get_params(deep=False).items()
            if name not in _RESUME_FREE
        }
        run.update(random_state=seed, n_samples=n_samples)
        return run

    def _check_resume(self, saved, run):
        differ = sorted(k for k in set(saved) | set(run) if saved.get(k) != run.get(k))
        if differ:
            raise ValueError(
                f"The checkpoint in {os.fspath(self.checkpoint_dir)!r} is of another run: "
                + ", ".join(f"{k}={saved.get(k)!r} there, {run.get(k)!r} here" for k in differ)
                + ". Fit with the saved settings to resume it, or use another "
                "checkpoint_dir."
            )

    def _build_net(self, info, ks, max_epochs, n_samples, seed, run=None):
        projection = self._projection()
        backbone, dim = make_backbone(self.backbone, info, projection=projection is not None)
        module = MultiHeadNet(
            backbone, dim, ks, projection=projection, temperature=self.temperature
        )
        label_epochs = self._schedule(max_epochs)
        milestones = sorted({int(round(f * max_epochs)) for f in self.lr_drops})
        callbacks = [
            ("lr_drops", StepDrops(milestones, 0.1)),
            ("self_labelling", SelfLabelling(
                label_epochs, _transfer_epochs(max_epochs, label_epochs), verbose=self.verbose
            )),
        ]
        if self.checkpoint_dir is not None:
            callbacks.append(("checkpoint", Checkpoint(self.checkpoint_dir, run=run)))
        if self.verbose:
            callbacks.append(("progress", ProgressBar()))
        callbacks += list(self.callbacks or [])
        batch_size = min(self.batch_size, n_samples)
        net = SelfLabelNet(
            module,
            n_clusters=ks,
            lam=self._lam(),
            sinkhorn_tol=_SINKHORN_TOL,
            label_seed=seed,
            label_neighbors=self.label_neighbors,
            cluster_proportions=self._proportions(ks),
            optimizer=torch.optim.SGD,
            optimizer__momentum=_MOMENTUM,
            optimizer__weight_decay=self.weight_decay,
            lr=self.lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            # A last batch of one sample would break batch norm.
            iterator_train__drop_last=n_samples % batch_size == 1,
            iterator_train__shuffle=True,
            iterator_train__num_workers=self.num_workers,
            iterator_valid__num_workers=self.num_workers,
            device=_resolve_device(self.device),
            callbacks=callbacks,
            verbose=int(self.verbose >= 2),
        )
        if self.verbose < 2:
            # skorch adds PrintLog by default; keep output to what was asked.
            net.set_params(callbacks__print_log=None)
        return net

    # -- fitting ----------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the network on self-labels of ``X``.

        Parameters
        ----------
        X : array-like, Tensor or torch Dataset
            Tabular ``(N, D)`` data, images ``(N, H, W)``, ``(N, H, W, C)``
            or ``(N, C, H, W)`` (uint8 or float), or a Dataset of images such
            as :class:`torchvision.datasets.ImageFolder` (streamed).
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : SelfLabelClusterer
            Fitted estimator.

        Raises
        ------
        KeyboardInterrupt
            When training is interrupted (Ctrl-C): nothing of the
            interrupted fit is kept on the estimator; with ``checkpoint_dir``
            a later ``fit`` resumes from the last complete epoch.

        Notes
        -----
        Under ``torchrun`` (``torch.distributed`` initialised with several
        ranks) the same call trains data-parallel: see
        :mod:`sklearn_sela.distributed` and the "Distributed training" page.
        Every rank ends with the same fitted estimator.
        """
        ks = self._cluster_list()
        self._proportions(ks)  # bad sizes fail before the data are read
        base, info = self._dataset(X, reset=True)
        n = info.n_samples
        if n < 2:
            raise ValueError(
                f"n_samples={n} is too small: SelfLabelClusterer needs at least "
                f"2 samples to train with batch normalisation."
            )
        if max(ks) > n:
            raise ValueError(
                f"n_samples={n} should be >= n_clusters={max(ks)}: every "
                f"cluster needs at least one sample."
            )
        max_epochs = _auto_epochs(n) if self.max_epochs == "auto" else int(self.max_epochs)
        state = None if self.checkpoint_dir is None else load_checkpoint(self.checkpoint_dir)
        saved = None if state is None else json.loads(state["run"])
        if saved is not None and self.random_state is None:
            seed = int(saved["random_state"])  # the saved run's seed: continue it
        else:
            seed = _seed_from(self.random_state)
        # Several ranks (torchrun): shard data, DDP, rank 0 logs; else None.
        ddp = DistributedFit.detect(_resolve_device(self.device))
        if ddp is not None:
            seed = ddp.agree_seed(seed)
        run = self._run(seed, n)
        if saved is not None:
            self._check_resume(saved, run)
        torch.manual_seed(seed)
        net = self._build_net(info, ks, max_epochs, n, seed, run)
        if ddp is not None:
            ddp.configure(net, n, seed)
        net.initialize()
        net.init_labels(n)
        done = 0 if state is None else restore_checkpoint(net, state)
        train_set = AugmentedDataset(base, self._augmentation(info))
        if ddp is not None:
            ddp.wrap(net, seed, done)
        if done < max_epochs:
            net.partial_fit(train_set, None, epochs=max_epochs - done)
        if getattr(net, "interrupted_", False):
            resume = "" if self.checkpoint_dir is None else (
                f"; fit again with checkpoint_dir={os.fspath(self.checkpoint_dir)!r} "
                f"to resume from the last complete epoch"
            )
            raise KeyboardInterrupt(
                f"training interrupted in epoch {len(net.history)} of {max_epochs}{resume}"
            )
        if ddp is not None:
            ddp.unwrap(net)
        self.net_ = net
        self.n_clusters_ = ks
        self.n_epochs_ = len(net.history)
        self.labels_all_ = net.labels_.numpy().copy()
        self.head_ = 0
        # The cluster balancing of predict: one solve of the transport
        # problem on each head's predictions for the training data, with
        # the sizes of its label steps.
        features, log_probas = self._forward(base)
        net.module_.whitening.fit(features)
        solves = [
            sinkhorn_knopp(
                torch.from_numpy(lp), lam=net.lam, tol=_SINKHORN_TOL,
                cluster_proportions=net.proportions_[t],
            )
            for t, lp in enumerate(log_probas)
        ]
        self.log_betas_ = [np.asarray(res.log_beta.cpu()) for res in solves]
        self.cluster_proportions_ = [np.asarray(res.proportions.cpu()) for res in solves]
        # The same computation as predict's: labels_ is predict(X) to the bit.
        probas = self._balanced(log_probas)
        candidates = [t for t, k in enumerate(ks) if k == ks[0]]
        if len(candidates) > 1:
            x = torch.as_tensor(features, device=net.device)
            neighbors = cosine_neighbors(
                x - x.mean(dim=0), min(_AGREEMENT_NEIGHBORS, n - 1), exclude_self=True
            )
            self.head_ = max(candidates, key=lambda t: neighbor_agreement(
                torch.as_tensor(probas[t].argmax(axis=1)), neighbors
            ))
        self.labels_ = probas[self.head_].argmax(axis=1)
        return self

    @property
    def history_(self):
        check_is_fitted(self, "net_")
        return self.net_.history

    # -- inference --------------------------------------------------------
    @torch.no_grad()
    def _forward(self, base, features=True, probas=True, heads=None, whiten=False):
        """One network pass over a dataset from :meth:`_dataset`: the
        backbone features (``whiten``: whitened) and/or the
        log-probabilities of ``heads`` (all when None), concatenated over
        batches (numpy)."""
        net = self.net_
        module = net.module_
        module.eval()
        heads = range(len(module.heads)) if heads is None else heads
        feats, probs = [], []
        for batch in net.get_iterator(AugmentedDataset(base), training=False):
            f = module.features(batch[0].to(net.device))
            if features:
                feats.append((module.whitening(f) if whiten else f.float()).cpu())
            if probas:
                z = module.embed(f)
                probs.append([
                    torch.log_softmax(module.head_logits(t, z).float(), dim=1).cpu()
                    for t in heads
                ])
        feats = torch.cat(feats).numpy() if features else None
        if probas:
            probs = [torch.cat([p[t] for p in probs]).numpy() for t in range(len(probs[0]))]
        return feats, probs

    def _balanced(self, log_probas, heads=None):
        """The probabilities of ``heads`` (all when None) under their cluster
        balancing, from their log-probabilities."""
        heads = range(len(self.log_betas_)) if heads is None else heads
        return [
            soft_assignments(lp, self.log_betas_[t], lam=self.net_.lam)
            for lp, t in zip(log_probas, heads)
        ]

    def _new_data(self, X):
        check_is_fitted(self, "net_")
        return self._dataset(X, reset=False)[0]

    def _check_head(self, head):
        head = self.head_ if head is None else head
        if not isinstance(head, Integral) or not 0 <= head < len(self.n_clusters_):
            raise ValueError(
                f"head={head!r} is out of range for {len(self.n_clusters_)} head(s)."
            )
        return int(head)

    def predict_proba(self, X, head=None):
        """Cluster probabilities of each sample.

        The head's probabilities ``p = softmax(h_t(phi(x)))`` under the
        cluster balancing learned on the training data (``log_betas_``):
        ``softmax(lam * log p + log_betas_[t])``, the rows of the transport
        plan of the paper's label step.

        Parameters
        ----------
        X : array-like, Tensor or Dataset
            Same kinds of input as :meth:`fit`.
        head : int, default=None
            Which head; None for ``head_``, the estimator's own clusters.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters_[head])
            Rows sum to one.
        """
        check_is_fitted(self, "net_")
        heads = [self._check_head(head)]
        log_probas = self._forward(self._new_data(X), features=False, heads=heads)[1]
        return self._balanced(log_probas, heads)[0]

    def predict_proba_heads(self, X):
        """Cluster probabilities of every head, from one pass of the network.

        Parameters
        ----------
        X : array-like, Tensor or Dataset
            Same kinds of input as :meth:`fit`.

        Returns
        -------
        probas : list of ndarray
            Per head ``t``, as :meth:`predict_proba` with ``head=t``, of
            shape ``(n_samples, n_clusters_[t])``.
        """
        return self._balanced(self._forward(self._new_data(X), features=False)[1])

    def predict(self, X, head=None):
        """Most probable cluster of each sample (see :meth:`predict_proba`).

        ``predict`` of the training data is ``labels_``.

        Parameters
        ----------
        X : array-like, Tensor or Dataset
            Same kinds of input as :meth:`fit`.
        head : int, default=None
            Which head; None for ``head_``, the estimator's own clusters.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.predict_proba(X, head=head).argmax(axis=1)

    def transform(self, X):
        """Backbone features ``phi(x)``, whitened, for downstream models.

        The features are whitened by their statistics on the training data
        (zero mean, nearly identity covariance there; see
        :class:`~sklearn_sela.backbones.FeatureWhitening`), so that every
        direction the network learned counts the same in the cosine
        similarity or distance of a nearest-neighbour search. The map is
        affine and invertible on the directions the features vary in, so an
        unregularised linear model fits the same on either.

        Parameters
        ----------
        X : array-like, Tensor or Dataset
            Same kinds of input as :meth:`fit`.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out)
            float32.
        """
        return self._forward(self._new_data(X), probas=False, whiten=True)[0]

    def fit_transform(self, X, y=None):
        """Fit, then return the features of ``X`` (see :meth:`transform`)."""
        return self.fit(X, y).transform(X)

    def score(self, X, y=None, head=None):
        """Normalised information between samples and predicted clusters.

        ``(H(mean_i p_i) - mean_i H(p_i)) / log K`` for the predicted
        distributions ``p_i`` of :meth:`predict_proba`: 1 when every sample is assigned with certainty
        and the clusters are used equally (the paper's objective, sec. 3.2:
        maximal information between data index and label), 0 when the
        predictions carry no information. Dividing by ``log K`` makes values
        comparable across ``n_clusters``: a K larger than the structure of
        the data forces arbitrary splits, whose predictions are less certain
        on unseen data, so the score does not simply grow with K.

        Parameters
        ----------
        X : array-like, Tensor or Dataset
            Data to score (held-out data in a grid search).
        y : Ignored
            Not used, present for API consistency.
        head : int, default=None
            Which head; None for the estimator's own clusters (those of
            ``labels_``, see :meth:`predict_proba`).

        Returns
        -------
        score : float
            In [0, 1]; higher is better.
        """
        p = self.predict_proba(X, head=head).astype(np.float64)
        k = p.shape[1]
        if k == 1:
            return 0.0
        eps = 1e-12
        cond = -(p * np.log(p + eps)).sum(axis=1).mean()
        marg = p.mean(axis=0)
        ent = -(marg * np.log(marg + eps)).sum()
        return float((ent - cond) / np.log(k))

    # -- state -------------------------------------------------------------
    def __getstate__(self):
        """The estimator as plain values, for pickles, copies and model files.

        The fitted network ``net_`` is given as its weights (on the CPU) and
        its training record rather than as the skorch object, so that one
        definition of the fitted state serves :mod:`pickle`,
        :func:`copy.deepcopy` and :func:`sklearn_sela.persistence.save_model`,
        and a model fitted on a GPU opens where there is none.
        """
        state = dict(super().__getstate__())
        net = state.pop("net_", None)
        if net is not None:
            state["net_"] = {
                "state_dict": {
                    k: v.detach().to("cpu", copy=True)
                    for k, v in net.module_.state_dict().items()
                },
                "labels": net.labels_.cpu().clone(),
                "log_betas": [None if b is None else b.cpu() for b in net.log_betas_],
                "proportions": [None if p is None else torch.as_tensor(p)
                                for p in net.proportions_],
                "history": net.history.to_list(),
                "max_epochs": int(net.max_epochs),
                "seed": int(net.label_seed),
                "label_updates": int(getattr(net, "label_updates_", 0)),
            }
        return state

    def __setstate__(self, state):
        """Restore from :meth:`__getstate__`, rebuilding the network from the
        parameters and loading its weights (``load_state_dict``'s errors
        name what does not fit)."""
        state = dict(state)
        net = state.pop("net_", None)
        super().__setstate__(state)
        if net is None:
            return
        info = self.input_info_
        built = self._build_net(
            info, self.n_clusters_, net["max_epochs"], info.n_samples, net["seed"]
        )
        if str(built.device).startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(
                f"This model was fitted with device={self.device!r}, but CUDA is "
                "not available here: it runs on the CPU.",
                UserWarning,
                stacklevel=2,
            )
            built.device = "cpu"
        built.initialize()
        built.module_.load_state_dict(net["state_dict"])
        built.module_.eval()
        built.labels_ = net["labels"].to(torch.int64).clone()
        built.log_betas_ = list(net["log_betas"])
        built.proportions_ = [None if p is None else p.numpy() for p in net["proportions"]]
        built.label_updates_ = net["label_updates"]
        built.history_ = History(net["history"])
        self.net_ = built

    @property
    def _n_features_out(self):
        check_is_fitted(self, "net_")
        return int(self.net_.module_.feature_dim)

    def get_feature_names_out(self, input_features=None):
        """Names ``selflabelclusterer0 ...`` of the :meth:`transform` output.

        Parameters
        ----------
        input_features : Ignored
            Not used, present for API consistency.

        Returns
        -------
        names : ndarray of str objects
        """
        check_is_fitted(self, "net_")
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self._n_features_out)], dtype=object)
