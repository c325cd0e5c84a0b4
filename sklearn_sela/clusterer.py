"""``SelfLabelClusterer``: the scikit-learn face of SeLa training."""

from numbers import Integral, Real
import math
import os

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, _fit_context
from sklearn.covariance import LedoitWolf
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import normalize
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import ProgressBar
from torch.utils.data import Subset

from .assigner import SinkhornAssigner, _cluster_centers
from .backbones import MultiHeadNet, make_backbone
from .data import AugmentedDataset, as_dataset, default_augmentation
from .distributed import DistributedFit
from .neighbors import cosine_neighbors, neighbor_agreement, smooth_over_neighbors
from .spectral import neighbor_spectral_embedding, spectral_partition
from .training import (
    Checkpoint,
    SelfLabelling,
    SelfLabelNet,
    StepDrops,
    label_update_epochs,
    load_checkpoint,
    restore_checkpoint,
)

__all__ = ["SelfLabelClusterer"]

# labels_from="auto" partitions the features when the (N, D) training
# features and the assignment's (N, K) scores have at most this many entries
# together (512 MB in float32): Fashion-MNIST's 60,000 x (128 + 10) easily;
# not ImageNet, whose AlexNet features alone are 1.28M x 4096 (21 GB). The
# whitening statistics read at most this many feature entries too.
_MAX_PARTITION_ENTRIES = 1 << 27

# Neighbours in the graph of labels_from="spectral" and in the vote that
# assigns new samples to its clusters.
_SPECTRAL_NEIGHBORS = 10

# Neighbours per sample in the graph that picks among the feature partitions
# (partition_n_init). 10 picked a poor run on two of four
# Fashion-MNIST fits; 30, 50 and 100 picked alike (docs/benchmarks_quality.md).
_AGREEMENT_NEIGHBORS = 30

# Neighbours per sample in the graph over which partition_smoothing averages
# the features: the nearest of the agreement's, so one search serves both.
_SMOOTHING_NEIGHBORS = 10


# partition_spectral="auto" refines the feature partition up to this many
# clusters. The eigensolve grows with the square of the number of
# eigenvectors: on Fashion-MNIST's 60,000 samples (1 thread) it took 18 s for
# 10, 151 s for 50 and 264 s for 100, and one refinement 4, 25 and 81 s.
_SPECTRAL_MAX_CLUSTERS = 50


def _auto_epochs(n_samples):
    # About 400k sample-visits, between 20 and 200 epochs: small data sets need
    # many passes for the labels to settle, large ones few (time budget).
    return int(np.clip(math.ceil(4e5 / n_samples), 20, 200))


def _cluster_means(x, labels, n_clusters):
    """Unit-length mean of the unit rows of ``x`` in each cluster: the
    centres that ``SinkhornAssigner(metric="cosine")`` gives those labels."""
    x = normalize(x)
    return _cluster_centers(x, labels, np.zeros((n_clusters, x.shape[1]), x.dtype), "cosine")


def _whitening(features):
    """ZCA whitening of ``features`` (N, D): ``(mean, matrix)``, float32.

    ``(x - mean) @ matrix`` has identity covariance under the Ledoit-Wolf
    estimate of the features' covariance. The shrinkage keeps the matrix
    well conditioned when N is not much larger than D (or smaller), where
    the sample covariance has tiny or zero eigenvalues whose inverse square
    roots would blow noise up; ZCA rather than PCA whitening keeps each
    output dimension aligned with the feature it came from.
    """
    cov = LedoitWolf().fit(features)
    eigvals, eigvecs = np.linalg.eigh(cov.covariance_)
    top = eigvals.max()
    if top <= 0:  # every sample has the same features: nothing to scale
        matrix = np.eye(len(eigvals))
    else:
        # Only a guard against rounding: the shrinkage already bounds the
        # eigenvalues away from zero.
        matrix = (eigvecs / np.sqrt(np.maximum(eigvals, 1e-7 * top))) @ eigvecs.T
    return cov.location_.astype(np.float32), matrix.astype(np.float32)


def _whitening_sample(net, train_set, seed):
    """Training features the whitening statistics are estimated from: all of
    them, or a seeded random ``_MAX_PARTITION_ENTRIES / D`` when all would not
    fit in that budget (a covariance of D dimensions needs far fewer)."""
    n, dim = len(train_set), net.module_.feature_dim
    size = max(2, _MAX_PARTITION_ENTRIES // dim)
    if n <= size:
        return net.training_features(train_set).numpy()
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    # Every rank under torchrun reads the same rows (same seed).
    sample = AugmentedDataset(Subset(train_set.base, rows.tolist()))
    return net.features_into(sample, torch.empty((size, dim))).numpy()


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

    Trains a network (backbone + ``n_heads`` linear classification heads)
    with cross-entropy on labels that it assigns itself, alternating with a
    self-labelling step that solves an equipartition-constrained optimal
    transport problem by Sinkhorn-Knopp (Asano, Rupprecht & Vedaldi, ICLR
    2020). Training runs through :mod:`skorch`.

    Parameters
    ----------
    n_clusters : int or list of int, default=10
        Number of clusters K, or one K per head (heads may differ, paper 3.5).
    n_heads : int, default=10
        Number of clustering heads T sharing the backbone (paper 3.5: T = 10
        for its best ImageNet model). Each head starts from its own random
        labelling, which keeps the shared features from settling on one
        poor clustering: on digits, mean accuracy 0.95 over 4 seeds with 10
        heads against 0.85 with one (docs/benchmarks_quality.md). Ignored if
        ``n_clusters`` is a list (then T = its length).
    backbone : str or torch.nn.Module, default="auto"
        ``"auto"`` (MLP for tabular data, a compact conv net for images
        smaller than 64 pixels, AlexNet above), ``"mlp"``, ``"convnet"``,
        ``"alexnet"``, ``"resnet18"``, ``"resnet50"`` (randomly initialised),
        or a module mapping a batch to ``(B, D)`` features.
    augment : "auto", callable or None, default="auto"
        Per-sample transform of a float ``(C, H, W)`` (or ``(D,)``) tensor
        applied in training (paper 3.4). ``"auto"`` picks a preset by data
        kind (none for tabular data).
    augment_labels : bool, default=False
        Whether the self-labelling pass also sees the augmentation (one
        random view per sample). The default labels the plain samples, a
        steadier estimate of the paper's expectation over transformations:
        on digits, clustering accuracy 0.95 against 0.76 with 10 heads
        (docs/benchmarks_quality.md).
    max_epochs : int or "auto", default="auto"
        Training epochs; ``"auto"`` uses about 400k sample visits, clipped to
        [20, 200] epochs.
    batch_size : int, default=128
        Mini-batch size (128 gave far better clusters than 256 on small data
        sets such as digits, see docs/benchmarks_quality.md).
    lr : float, default=0.05
        Initial SGD learning rate (paper: 0.05).
    momentum : float, default=0.9
        SGD momentum.
    weight_decay : float, default=5e-4
        SGD weight decay.
    lr_drops : tuple of float, default=(0.375, 0.75, 0.875)
        Fractions of ``max_epochs`` at which the learning rate is multiplied
        by ``lr_gamma`` (paper: epochs 150, 300, 350 of 400).
    lr_gamma : float, default=0.1
        Learning-rate drop factor.
    n_label_updates : int or "auto", default="auto"
        Number of self-labelling steps M, the first at epoch 0. ``"auto"``
        is half the number of epochs (the paper's best: 80 for 160 epochs).
        0 keeps the initial random labels (ablation).
    label_schedule : {"quadratic", "linear"}, default="quadratic"
        Where the updates fall in training: ``((i-1)/(M-1))**2`` of the way
        (appendix A.1) or evenly.
    label_neighbors : int, default=30
        Each self-labelling step scores a sample by its heads' predicted
        probabilities averaged over its neighbourhood: the sample and its
        ``label_neighbors - 1`` nearest training samples by cosine
        similarity of the centred backbone features (of the plain samples).
        Samples with similar features then get the same label unless the
        equal cluster sizes say otherwise. 1 is the paper's step, the
        sample's own probabilities. On Fashion-MNIST, 30 raised the
        accuracy of ``labels_`` from 0.610 to 0.670 (10: 0.663) and the
        linear probe from 0.877 to 0.881 (means of 4 seeds); on digits it
        kept both targets (accuracy 0.963, NMI 0.928;
        docs/benchmarks_quality.md). Each step adds an ``N x N``
        similarity search in row blocks (``O(N^2 D)``, on the net's device)
        on the features that its pass over the data computes anyway: on
        Fashion-MNIST a step took 1.19 training epochs (2 threads; 1.50 when
        the search made a pass of its own), and a whole fit 25 minutes on
        one thread. For millions of samples without a GPU, set 1.
    projection : tuple of int or None, default=(512, 128)
        Widths of the MLP between the backbone features and the heads
        (``Linear - BatchNorm1d - ReLU`` to 512, then ``Linear`` to a
        128-d embedding), as in SeLa-v2 (Caron et al. 2020, SwAV appendix).
        :meth:`transform` returns the backbone features before it, which
        are better than the embedding for kNN, linear probes and the
        partition of ``labels_from="features"``. With it, the default
        convnet ends at its global average pool (256 features for images
        of 16 pixels and more, 128 below). None: the heads read the backbone
        features (the paper's architecture).
    temperature : float or None, default=0.1
        Cosine heads: each head's logits are the cosine similarities of the
        L2-normalised embedding with its L2-normalised weight rows (one
        prototype per cluster) divided by ``temperature``. None: linear
        heads with bias (the paper). With both defaults, the features of a
        Fashion-MNIST fit scored a weighted kNN accuracy of 0.857 and a
        linear probe of 0.878, against 0.823 and 0.849 with the paper's
        heads (3 seeds); the partition's accuracy stayed about the same
        (0.626 against 0.621; docs/benchmarks_quality.md).
    lam : float or "auto", default="auto"
        Sinkhorn lambda: the labels solve the transport problem on the
        heads' probabilities raised to the power ``lam``. ``"auto"`` is 25
        with linear heads (the paper) and ``20 * temperature`` with cosine
        heads, i.e. the transport of ``exp(20 * cosine)``, the sharpness of
        SwAV's ``epsilon = 0.05``.
    sinkhorn_tol : float, default=1e-2
        Marginal tolerance (L1 error of the cluster sizes, as fractions of
        N) of each Sinkhorn solve during training. Looser than the solver's
        own default (1e-3): once the network is confident the solve is
        nearly an unregularised assignment and converges slowly, while the
        labels barely change (on digits, 99% of the labels of a solve to
        1e-4, 3.4x fewer iterations than 1e-3, and half the fit time at the
        same clustering accuracy; docs/benchmarks_quality.md).
    assign : {"argmax", "balanced"}, default="argmax"
        Labels from the transport plan by argmax (paper) or as an exact
        equipartition.
    head : int, default=0
        The head whose number of clusters the partition has. With
        ``labels_from="head"``, also the head whose self-labels are
        ``labels_`` and whose predictions :meth:`predict`,
        :meth:`predict_proba` and :meth:`score` return unless told otherwise.
    labels_from : {"auto", "features", "head", "spectral"}, default="auto"
        Where ``labels_`` and the estimator's predictions come from.
        ``"features"``: after training, the learned features of the training
        samples, averaged over augmented views (``partition_views``) and
        over their neighbourhoods (``partition_smoothing``), are partitioned
        into ``n_clusters_[head]`` equal-sized clusters by balanced spherical
        k-means (:class:`~sklearn_sela.SinkhornAssigner` with
        ``metric="cosine"``, the same Sinkhorn equipartition as the
        self-labelling), refined in the spectral embedding of their
        neighbour graph (``partition_spectral``); new samples go to the
        nearest cluster centre under the learned balancing
        (``feature_assigner_``). ``"head"``: the
        self-labels of head ``head`` and its softmax (the paper's clusters).
        ``"spectral"``: spectral clustering of the training features' cosine
        10-nearest-neighbour graph
        (:func:`~sklearn_sela.spectral.spectral_partition`); the clusters
        follow the graph and need not be the same size; new samples get the
        distance-weighted vote of their 10 nearest training samples
        (``feature_classifier_``, which keeps the ``(N, D)`` training
        features, also in saved models). ``"auto"`` is ``"features"``
        unless ``n_samples * (n_features + n_clusters_[head])`` exceeds
        2**27, with ``n_features`` the width of :meth:`transform` (the
        partition holds the ``(N, D)`` features and an ``(N, K)`` score
        matrix: 512 MB in float32). The heads' self-labels are
        in ``labels_all_`` either way. On Fashion-MNIST the feature partition
        scored a clustering accuracy of 0.63 against 0.49 for head 0 (mean of
        3 seeds); on digits 0.960 against 0.909. The spectral partition of the
        same fits: NMI 0.71 against 0.57 and accuracy 0.64 against 0.63 on
        Fashion-MNIST, whose classes are not equally compact in feature space;
        NMI 0.930 against 0.919 but accuracy 0.923 against 0.960 on digits
        (docs/benchmarks_quality.md).
    partition_n_init : int, default=10
        Runs of the balanced k-means of ``labels_from="features"``, from
        seeds ``random_state``, ``random_state + 1``, ...; the run kept
        (after the refinement of ``partition_spectral``) is the one whose
        clusters split the fewest neighbourhoods: the largest
        fraction of each training sample's 30 nearest neighbours (cosine,
        centred features) in its own cluster
        (:func:`~sklearn_sela.neighbors.neighbor_agreement`). The k-means
        objective is a poor guide here: on Fashion-MNIST the runs on one
        fit's features end in a few distinct partitions, up to 16 points of
        accuracy apart, with nearly equal objectives, while the agreement
        picked the most accurate of 20 runs on each of four fits. With 10
        runs the default Fashion-MNIST fits of seeds 0 to 3 scored accuracy
        0.691 on average against 0.670 with one (seed 2: 0.697 against
        0.616; the others within 0.001), digits 0.963 as before
        (docs/benchmarks_quality.md). 1 is the single run of earlier
        versions. Each run costs about half a minute on Fashion-MNIST's
        60,000 samples on 2 CPU cores, against a 25-minute fit.
    partition_smoothing : int, default=4
        Steps of neighbour averaging before the balanced k-means of
        ``labels_from="features"``: the training features, scaled to unit
        length, are averaged over each sample's 10 nearest neighbours
        (cosine, centred features; the symmetrised graph,
        :func:`~sklearn_sela.neighbors.smooth_over_neighbors`) this many
        times, and the k-means partitions the result. What a sample shares
        with its neighbourhood stays, what sets it apart fades, so the
        clusters follow the neighbourhood graph more closely. New samples
        go to the resulting centres by their own features, without
        averaging. On the default Fashion-MNIST fits of seeds 0 to 3 the
        partition's accuracy went from 0.691 to 0.698 and its NMI from 0.628
        to 0.644 (three fits gained, one lost 2.5 points), on digits from
        0.963 to 0.972 (every seed gained; docs/benchmarks_quality.md). 0
        partitions the features themselves (earlier versions).
    partition_views : int, default=8
        Randomly augmented views of each training sample whose features
        (scaled to unit length) are averaged for the partition of
        ``labels_from="features"``: after training, the training data pass
        through the network this many more times, each time with the
        training augmentation, and the neighbour search, the averaging of
        ``partition_smoothing`` and the k-means all read the mean. What the
        views of a sample share is what the network learned to be invariant
        to, so the partition follows the content more than the pose.
        ``transform`` and new samples are unchanged: they go to the
        resulting centres by their own features without augmentation, so
        ``predict`` on the training samples can differ from ``labels_``
        more often than without the views. Without augmentation
        (``augment=None``, tabular data) it has no effect. On the default
        Fashion-MNIST fits of seeds 0 to 3 the partition's accuracy went
        from 0.698 to 0.716 and its NMI from 0.644 to 0.657; digits kept
        theirs (0.970 against 0.972; docs/benchmarks_quality.md). The eight
        passes took about two minutes on one CPU thread for Fashion-MNIST's
        60,000 images. 0 partitions the features without augmentation
        (earlier versions).
    partition_spectral : bool or "auto", default="auto"
        Refine each k-means run of ``labels_from="features"`` in the
        spectral embedding of the training samples' 10-nearest-neighbour
        graph (the graph of ``partition_smoothing``; the leading
        ``n_clusters_[head]`` eigenvectors of its normalised adjacency, rows
        of unit length, :func:`~sklearn_sela.spectral.neighbor_spectral_embedding`):
        the balanced k-means runs again there, from the centres of the run's
        clusters, and ``partition_n_init`` picks among the refined runs. The
        clusters stay equal-sized, as the self-labelling's, but follow the
        graph's connected regions rather than the features' directions,
        where the spherical k-means cuts elongated classes. New samples have
        no place in the embedding: they go to the unit mean features of the
        clusters (features without augmentation), under the balancing of
        one assignment of the training samples to those centres
        (``feature_assigner_``), so ``predict`` on the training samples
        differs from ``labels_`` more often than without the refinement.
        On the default Fashion-MNIST fits of seeds 0 to 3 the partition's
        accuracy went from 0.716 to 0.727 and its NMI from 0.657 to 0.704
        (every seed between 0.722 and 0.734; seed 1 from 0.645, seeds 2
        and 3 down from 0.749 and 0.745; every seed gained NMI); on digits
        from 0.970 to 0.962 (docs/benchmarks_quality.md).
        The embedding costs one eigensolve (LOBPCG) of the
        60,000-sample graph, about half a minute on one CPU thread, and
        each refinement a few seconds, for 10 clusters; both grow with the
        square of the number of clusters (264 s and 81 s for 100), so
        ``"auto"`` refines up to 50 clusters (``n_clusters_[head]``) and
        keeps the runs as they are above. False keeps them as they are
        always (earlier versions); True refines whatever the number.
    whiten : bool, default=True
        Whether :meth:`transform` whitens the features: subtracts the mean of
        the training features and multiplies by the inverse square root of
        their covariance (ZCA; Ledoit-Wolf shrunk estimate, from at most
        ``2**27 / n_features`` training samples), so that every direction
        in which the training features vary has unit variance. Distances
        and cosine similarities then weigh all of them equally instead of
        being dominated by the few directions of largest variance. On
        Fashion-MNIST the weighted kNN accuracy of the features went from
        0.857 to 0.894 (3 seeds; 0.980 to 0.995 on digits) with the linear
        probe unchanged (docs/benchmarks_quality.md). The partitions of
        ``labels_from`` use the features before whitening, which gave
        better clusters (digits: accuracy 0.96 against 0.84 with
        whitening). The statistics are computed in every ``fit``
        (``whitening_mean_``, ``whitening_matrix_``) and this parameter is
        read by :meth:`transform`, so ``set_params(whiten=False)`` gives
        the raw features of a fitted model without fitting again.
    image_size : int or (int, int), default=None
        Resize streamed images (e.g. an ``ImageFolder``) to this size.
    device : str, default="auto"
        Torch device; ``"auto"`` uses CUDA when available.
    num_workers : int, default=0
        DataLoader worker processes.
    callbacks : list of skorch callbacks, default=None
        Extra callbacks passed to the skorch net.
    checkpoint_dir : str or path, default=None
        If set, training state is saved there every ``checkpoint_every``
        epochs, and a later ``fit`` with the same directory resumes from it.
    checkpoint_every : int, default=1
        Epochs between checkpoints.
    verbose : int, default=0
        0: silent; 1: one line per label update and a progress bar per epoch;
        2: also skorch's per-epoch table.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, initial labels, shuffling and
        augmentation; CPU runs with the same seed are identical.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample: the balanced partition of the
        learned features, or the self-labels of head ``head`` (see
        ``labels_from``).
    labels_all_ : ndarray of shape (n_samples, n_heads)
        Self-labels of every head.
    labels_from_ : {"features", "head", "spectral"}
        What ``labels_from`` resolved to.
    whitening_mean_ : ndarray of shape (n_features_out,)
        Mean of the training features (see ``whiten``).
    whitening_matrix_ : ndarray of shape (n_features_out, n_features_out)
        Symmetric whitening matrix: :meth:`transform` returns
        ``(features - whitening_mean_) @ whitening_matrix_`` when ``whiten``.
    feature_assigner_ : SinkhornAssigner
        The balanced assignment that takes new samples to the clusters of
        ``labels_`` (``labels_from_ == "features"`` only): the fitted
        partition of the training features, or with ``partition_spectral``
        one assignment of them to the centres of the refined clusters, whose
        own ``labels_`` can differ from the estimator's.
    feature_classifier_ : sklearn.neighbors.KNeighborsClassifier
        The vote over the training features and ``labels_`` that assigns new
        samples (``labels_from_ == "spectral"`` only).
    n_clusters_ : list of int
        K per head.
    net_ : SelfLabelNet
        The fitted skorch net (``net_.module_`` is the torch model).
    history_ : skorch History
        Per-epoch loss, learning rate and label-update records (time,
        Sinkhorn iterations, smallest/largest cluster, NMI between
        consecutive labellings).
    log_betas_ : list of ndarray
        Per head, the Sinkhorn cluster scaling of the last update.
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
        "augment_labels": ["boolean"],
        "max_epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "lr_drops": [list, tuple],
        "lr_gamma": [Interval(Real, 0, 1, closed="right")],
        "n_label_updates": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "label_schedule": [StrOptions({"quadratic", "linear"})],
        "label_neighbors": [Interval(Integral, 1, None, closed="left")],
        "projection": [tuple, list, None],
        "temperature": [Interval(Real, 0, None, closed="neither"), None],
        "lam": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "sinkhorn_tol": [Interval(Real, 0, None, closed="left")],
        "assign": [StrOptions({"argmax", "balanced"})],
        "head": [Interval(Integral, 0, None, closed="left")],
        "labels_from": [StrOptions({"auto", "features", "head", "spectral"})],
        "partition_n_init": [Interval(Integral, 1, None, closed="left")],
        "partition_smoothing": [Interval(Integral, 0, None, closed="left")],
        "partition_views": [Interval(Integral, 0, None, closed="left")],
        "partition_spectral": ["boolean", StrOptions({"auto"})],
        "whiten": ["boolean"],
        "image_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "device": [str],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "callbacks": [list, None],
        "checkpoint_dir": [str, os.PathLike, None],
        "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
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
        augment_labels=False,
        max_epochs="auto",
        batch_size=128,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        lr_drops=(0.375, 0.75, 0.875),
        lr_gamma=0.1,
        n_label_updates="auto",
        label_schedule="quadratic",
        label_neighbors=30,
        projection=(512, 128),
        temperature=0.1,
        lam="auto",
        sinkhorn_tol=1e-2,
        assign="argmax",
        head=0,
        labels_from="auto",
        partition_n_init=10,
        partition_smoothing=4,
        partition_views=8,
        partition_spectral="auto",
        whiten=True,
        image_size=None,
        device="auto",
        num_workers=0,
        callbacks=None,
        checkpoint_dir=None,
        checkpoint_every=1,
        verbose=0,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.backbone = backbone
        self.augment = augment
        self.augment_labels = augment_labels
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_drops = lr_drops
        self.lr_gamma = lr_gamma
        self.n_label_updates = n_label_updates
        self.label_schedule = label_schedule
        self.label_neighbors = label_neighbors
        self.projection = projection
        self.temperature = temperature
        self.lam = lam
        self.sinkhorn_tol = sinkhorn_tol
        self.assign = assign
        self.head = head
        self.labels_from = labels_from
        self.partition_n_init = partition_n_init
        self.partition_smoothing = partition_smoothing
        self.partition_views = partition_views
        self.partition_spectral = partition_spectral
        self.whiten = whiten
        self.image_size = image_size
        self.device = device
        self.num_workers = num_workers
        self.callbacks = callbacks
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
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
        base, info = as_dataset(X, expected=expected, image_size=self.image_size)
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

    def _augmentation(self, info):
        if self.augment == "auto":
            return default_augmentation(info)
        return self.augment

    def _resolve_labels_from(self, n_samples, n_features, n_clusters):
        if self.labels_from != "auto":
            return self.labels_from
        if n_samples * (n_features + n_clusters) <= _MAX_PARTITION_ENTRIES:
            return "features"
        return "head"

    def _partition_features(self, features, plain, n_clusters, seed, device):
        """Balanced spherical k-means of the training ``features`` (averaged
        over views), averaged over their neighbourhoods, each run refined in
        the spectral embedding of the neighbour graph: of
        ``partition_n_init`` runs, the one that splits the fewest
        neighbourhoods (see ``labels_from`` and the ``partition_*``
        parameters). Returns ``(assigner, labels)``: the balanced
        assignment that takes new samples, whose features are like
        ``plain`` (the training features without augmentation), and
        ``labels_``."""
        n = len(features)
        smoothing = self.partition_smoothing if n > 1 else 0
        if isinstance(self.partition_spectral, str):  # "auto"
            spectral = n > 1 and n_clusters <= _SPECTRAL_MAX_CLUSTERS
        else:
            spectral = n > 1 and bool(self.partition_spectral)
        if self.partition_n_init > 1 or smoothing or spectral:
            x = torch.as_tensor(features, device=device)
            neighbors = cosine_neighbors(
                x - x.mean(dim=0), min(_AGREEMENT_NEIGHBORS, n - 1), exclude_self=True
            )
        if smoothing:
            # Unit rows first, so that each neighbour weighs by its direction
            # alone, as in the cosine k-means that follows.
            features = smooth_over_neighbors(
                torch.nn.functional.normalize(x.float(), dim=1),
                neighbors[:, :_SMOOTHING_NEIGHBORS], smoothing,
            ).cpu().numpy()
        if spectral:
            embedding = neighbor_spectral_embedding(
                neighbors[:, :_SMOOTHING_NEIGHBORS], n_clusters, random_state=seed
            )

        def candidate(i):
            # Run 0 is seeded as the single partition of earlier versions, so
            # partition_n_init=1 and no smoothing or refinement give those
            # labels_ back.
            run = SinkhornAssigner(
                n_clusters=n_clusters, metric="cosine", random_state=(seed + i) % 2**32
            ).fit(features)
            if not spectral:
                return run, run.labels_
            # The balanced k-means again, in the embedding, from the centres
            # of the run's clusters there: a few cheap iterations in
            # n_clusters dimensions. The run itself is not needed after.
            return None, SinkhornAssigner(
                n_clusters=n_clusters, metric="cosine",
                init=_cluster_means(embedding, run.labels_, n_clusters),
            ).fit(embedding).labels_

        candidates = (candidate(i) for i in range(self.partition_n_init))
        if self.partition_n_init == 1:
            run, labels = next(candidates)
        else:
            # max keeps the first of equal runs and holds no more than two at once.
            run, labels = max(
                candidates,
                key=lambda c: neighbor_agreement(torch.as_tensor(c[1]), neighbors),
            )
        if spectral:
            # New samples have no place in the embedding: they go to the
            # centres of the refined clusters among features like theirs,
            # under the balancing that one assignment of the training
            # samples to those centres learns.
            run = SinkhornAssigner(
                n_clusters=n_clusters, metric="cosine", max_iter=1,
                init=_cluster_means(plain, labels, n_clusters),
            ).fit(plain)
        return run, labels.copy()

    def _partition_spectral(self, features, n_clusters, seed):
        """Spectral clustering of the training features, and the vote that
        extends it to new samples (see ``labels_from``): (vote, labels)."""
        n = len(features)
        labels = spectral_partition(
            features, n_clusters, n_neighbors=min(_SPECTRAL_NEIGHBORS, n - 1),
            random_state=seed,
        ).astype(np.int64)
        # Distance weights make a training sample its own (only) voter, so
        # predict() on the training data gives back labels_.
        vote = KNeighborsClassifier(
            n_neighbors=min(_SPECTRAL_NEIGHBORS, n), weights="distance", metric="cosine",
            algorithm="brute",
        ).fit(features, labels)
        return vote, labels

    def _schedule(self, max_epochs):
        n_updates = (
            max(1, max_epochs // 2) if self.n_label_updates == "auto" else self.n_label_updates
        )
        return label_update_epochs(max_epochs, n_updates, self.label_schedule)

    def _build_net(self, info, ks, max_epochs, n_samples, seed):
        projection = self._projection()
        backbone, dim = make_backbone(self.backbone, info, projection=projection is not None)
        module = MultiHeadNet(
            backbone, dim, ks, projection=projection, temperature=self.temperature
        )
        label_epochs = self._schedule(max_epochs)
        milestones = sorted({int(round(f * max_epochs)) for f in self.lr_drops})
        callbacks = [
            ("lr_drops", StepDrops(milestones, self.lr_gamma)),
            ("self_labelling", SelfLabelling(label_epochs, verbose=self.verbose)),
        ]
        if self.checkpoint_dir is not None:
            callbacks.append(
                ("checkpoint", Checkpoint(self.checkpoint_dir, self.checkpoint_every))
            )
        if self.verbose:
            callbacks.append(("progress", ProgressBar()))
        callbacks += list(self.callbacks or [])
        batch_size = min(self.batch_size, n_samples)
        net = SelfLabelNet(
            module,
            n_clusters=ks,
            lam=self._lam(),
            sinkhorn_tol=self.sinkhorn_tol,
            assign=self.assign,
            augment_labels=self.augment_labels,
            label_seed=seed,
            label_neighbors=self.label_neighbors,
            optimizer=torch.optim.SGD,
            optimizer__momentum=self.momentum,
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

        Notes
        -----
        Under ``torchrun`` (``torch.distributed`` initialised with several
        ranks) the same call trains data-parallel: see
        :mod:`sklearn_sela.distributed` and the "Distributed training" page.
        Every rank ends with the same fitted estimator.
        """
        ks = self._cluster_list()
        if self.head >= len(ks):
            raise ValueError(
                f"head={self.head} is out of range for {len(ks)} head(s)."
            )
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
        seed = _seed_from(self.random_state)
        # Several ranks (torchrun): shard data, DDP, rank 0 logs; else None.
        ddp = DistributedFit.detect(_resolve_device(self.device))
        if ddp is not None:
            seed = ddp.agree_seed(seed)
        torch.manual_seed(seed)
        net = self._build_net(info, ks, max_epochs, n, seed)
        if ddp is not None:
            ddp.configure(net, n, seed)
        net.initialize()
        net.init_labels(n)
        done = 0
        if self.checkpoint_dir is not None:
            state = load_checkpoint(self.checkpoint_dir)
            if state is not None:
                if tuple(state["labels"].shape) != (n, len(ks)):
                    raise ValueError(
                        f"The checkpoint in {self.checkpoint_dir!r} was written "
                        f"for {state['labels'].shape[0]} samples and "
                        f"{state['labels'].shape[1]} head(s), not {n} and "
                        f"{len(ks)}; use another checkpoint_dir."
                    )
                done = restore_checkpoint(net, state)
        train_set = AugmentedDataset(base, self._augmentation(info))
        if ddp is not None:
            ddp.wrap(net, seed, done)
        if done < max_epochs:
            net.partial_fit(train_set, None, epochs=max_epochs - done)
        if ddp is not None:
            ddp.unwrap(net)
        self.net_ = net
        self.n_clusters_ = ks
        self.n_epochs_ = len(net.history)
        self.labels_all_ = net.labels_.numpy().copy()
        self.labels_from_ = self._resolve_labels_from(
            n, net.module_.feature_dim, ks[self.head]
        )
        for name in ("feature_assigner_", "feature_classifier_"):
            self.__dict__.pop(name, None)
        if self.labels_from_ == "head":
            self.labels_ = self.labels_all_[:, self.head].copy()
            features = _whitening_sample(net, train_set, seed)
        else:
            features = net.training_features(train_set).numpy()
        if self.labels_from_ == "features":
            views = features
            if self.partition_views and train_set.transform is not None:
                views = net.training_features(train_set, self.partition_views).numpy()
            self.feature_assigner_, self.labels_ = self._partition_features(
                views, features, ks[self.head], seed, net.device
            )
        elif self.labels_from_ == "spectral":
            self.feature_classifier_, self.labels_ = self._partition_spectral(
                features, ks[self.head], seed
            )
        self.whitening_mean_, self.whitening_matrix_ = _whitening(features)
        self.log_betas_ = [
            None if b is None else np.asarray(torch.as_tensor(b).cpu())
            for b in net.log_betas_
        ]
        return self

    @property
    def history_(self):
        check_is_fitted(self, "net_")
        return self.net_.history

    # -- inference --------------------------------------------------------
    @torch.no_grad()
    def _forward(self, X, features=True, probas=True):
        """One network pass: the backbone features and/or every head's
        probabilities, concatenated over batches (numpy)."""
        check_is_fitted(self, "net_")
        base, _ = self._dataset(X, reset=False)
        net = self.net_
        module = net.module_
        module.eval()
        feats, probs = [], []
        for batch in net.get_iterator(AugmentedDataset(base), training=False):
            f = module.features(batch[0].to(net.device))
            if features:
                feats.append(f.float().cpu())
            if probas:
                z = module.embed(f)
                probs.append([
                    torch.softmax(module.head_logits(t, z).float(), dim=1).cpu()
                    for t in range(len(module.heads))
                ])
        feats = torch.cat(feats).numpy() if features else None
        if probas:
            probs = [torch.cat([p[t] for p in probs]).numpy() for t in range(len(probs[0]))]
        return feats, probs

    def _check_head(self, head):
        head = self.head if head is None else head
        if not 0 <= head < len(self.n_clusters_):
            raise ValueError(
                f"head={head} is out of range for {len(self.n_clusters_)} head(s)."
            )
        return head

    def predict_proba(self, X, head=None):
        """Cluster probabilities of each sample.

        With ``head=None`` and ``labels_from_ == "features"``: the soft
        balanced assignment of the features ``phi(x)`` to the partition's
        clusters (``feature_assigner_.transform``); with ``labels_from_ ==
        "spectral"``: the distance-weighted vote of the 10 training samples
        with the most similar features (``feature_classifier_``).
        Otherwise the softmax ``softmax(h_t(phi(x)))`` of head ``t``.

        Parameters
        ----------
        X : array-like, Tensor or Dataset
            Same kinds of input as :meth:`fit`.
        head : int, default=None
            Which head; None for the estimator's own clusters (those of
            ``labels_``).

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters_[head])
            Rows sum to one.
        """
        check_is_fitted(self, "net_")
        if head is None and self.labels_from_ != "head":
            return self._partition_proba(self._forward(X, probas=False)[0])
        head = self._check_head(head)
        return self.predict_proba_heads(X)[head]

    def predict_proba_heads(self, X):
        """Cluster probabilities of every head, from one pass of the network.

        Parameters
        ----------
        X : array-like, Tensor or Dataset
            Same kinds of input as :meth:`fit`.

        Returns
        -------
        probas : list of ndarray
            Per head ``t``, ``softmax(h_t(phi(x)))`` of shape
            ``(n_samples, n_clusters_[t])``.
        """
        return self._forward(X, features=False)[1]

    def _whitened(self, features):
        if not self.whiten:
            return features
        check_is_fitted(
            self, "whitening_matrix_",
            msg="This model has no whitening statistics (it was saved before "
                "sklearn-sela had them); use whiten=False, or fit it again.",
        )
        return (features - self.whitening_mean_) @ self.whitening_matrix_

    def _cluster_and_head_probas(self, X):
        """``[predict_proba(X)] + predict_proba_heads(X)`` from one network pass."""
        features, heads = self._forward(X)
        if self.labels_from_ != "head":
            return [self._partition_proba(features)] + heads
        return [heads[self.head]] + heads

    def _partition_proba(self, features):
        """Soft assignment of backbone features to the partition's clusters."""
        if self.labels_from_ == "features":
            return self.feature_assigner_.transform(features)
        vote = self.feature_classifier_
        # The columns are the clusters the vote has seen: all of them unless
        # k-means left one empty (heavily duplicated features).
        proba = np.zeros((len(features), self.n_clusters_[self.head]))
        proba[:, vote.classes_] = vote.predict_proba(features)
        return proba

    def predict(self, X, head=None):
        """Most probable cluster of each sample (see :meth:`predict_proba`).

        Parameters
        ----------
        X : array-like, Tensor or Dataset
            Same kinds of input as :meth:`fit`.
        head : int, default=None
            Which head; None for the estimator's own clusters (those of
            ``labels_``).

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.predict_proba(X, head=head).argmax(axis=1)

    def transform(self, X):
        """Backbone features ``phi(x)`` for downstream models.

        Whitened with the training features' statistics when ``whiten``
        (the default; see there).

        Parameters
        ----------
        X : array-like, Tensor or Dataset
            Same kinds of input as :meth:`fit`.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out)
            float32.
        """
        return self._whitened(self._forward(X, probas=False)[0])

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
