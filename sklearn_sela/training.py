"""The SeLa training loop on skorch: cross-entropy on self-labels, with the
labels re-assigned by Sinkhorn-Knopp at scheduled epochs.

:class:`SelfLabelNet` is a :class:`skorch.NeuralNet` whose targets are not
given by the user but held by the net (``labels_``) and replaced by
:meth:`SelfLabelNet.update_labels`. Scheduling, learning-rate drops and
checkpoints are small skorch callbacks, in :mod:`sklearn_sela.callbacks`.

This module is over 700 lines: it is one class, the net and the two steps
that make its labels (the self-labelling step and the label transfer),
whose shared passes over the data and device handling stay together.
"""

import contextlib
import time
import warnings

import numpy as np
import torch
from skorch import NeuralNet
from skorch.dataset import unpack_data
from skorch.utils import to_device
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import normalized_mutual_info_score
from torch.utils.data import Subset

from .backbones import FeatureWhitening, MultiHeadNet
from .data import AugmentedDataset, DeviceBatches, split_batch_transform
from .assigner import SinkhornAssigner, cluster_centers
from .collectives import all_gather_rows, collective_device, local_shard
from .distributed import broadcast_buffers, get_process_group, unwrap_module
from .neighbors import average_over_neighbors, cosine_neighbors, neighbor_agreement
from .neighbors import smooth_over_neighbors
from .spectral import neighbor_spectral_embedding
from .sinkhorn import sinkhorn_knopp

__all__ = ["SelfLabelNet"]

# The label transfer (SelfLabelNet.transfer_labels): neighbours per sample in
# the graph its features are averaged over, averaging steps, and iterations
# of the balanced k-means that starts from each head's clusters.
_TRANSFER_NEIGHBORS = 10
_TRANSFER_SMOOTHING = 4
_TRANSFER_MAX_ITER = 20
# Augmented views whose unit features are averaged for the transfer, and the
# largest K refined in the spectral embedding of the neighbour graph (its
# eigensolve grows with K squared); above it, the heads of one K share one
# k-means (each iteration is an N x K transport solve).
_TRANSFER_VIEWS = 8
_TRANSFER_SPECTRAL_MAX = 50
# Up to _TRANSFER_SPECTRAL_MAX clusters, k-means restarts (k-means++ seeded)
# that compete with each head's own partition by neighbour agreement.
_TRANSFER_N_INIT = 10


class SelfLabelNet(NeuralNet):
    """skorch net trained with cross-entropy on labels it assigns itself.

    The module must return a tuple of ``T`` logit tensors, one per head. The
    training dataset must yield ``(x, index)`` pairs; the target of a sample
    is looked up in ``labels_`` by its index, so labels can change between
    epochs without rebuilding the data pipeline.

    Parameters
    ----------
    module : torch.nn.Module class or instance
        Network with ``T`` heads (see :class:`~sklearn_sela.backbones.MultiHeadNet`).
    n_clusters : list of int
        Number of clusters ``K_t`` of each head.
    lam : float, default=25.0
        Sinkhorn lambda.
    sinkhorn_tol : float, default=1e-3
        Marginal tolerance of the Sinkhorn solve.
    sinkhorn_max_iter : int, default=1000
        Iteration cap of the Sinkhorn solve.
    assign : {"argmax", "balanced"}, default="argmax"
        How labels are read from the transport plan.
    augment_labels : bool, default=False
        Whether the self-labelling pass sees the training augmentation (one
        random view per sample) or the plain samples; see
        :meth:`get_label_dataset`.
    label_seed : int, default=0
        Seed of the initial random equipartition.
    label_neighbors : int, default=1
        Size of the neighbourhood (the sample and its nearest others in
        feature space) whose probabilities are averaged before each
        self-labelling solve; 1 is the paper's step. See
        :meth:`label_neighbors_of`.
    cluster_proportions : list or "auto", default=None
        Cluster sizes of the label steps and transfers, as fractions: None
        for equal sizes; a list with one entry per head, None or an array of
        ``K_t`` positive fractions summing to one; or ``"auto"``, estimated
        per head by each label transfer (see :meth:`transfer_labels`).
    **kwargs
        Passed to :class:`skorch.NeuralNet` (``optimizer``, ``lr``,
        ``max_epochs``, ``batch_size``, ``device``, ``callbacks``,
        ``iterator_train__num_workers``, ...).

    Notes
    -----
    On a CUDA device the net feeds the GPU itself (:meth:`feeds_device`):
    the DataLoaders pin memory (unless ``iterator_*__pin_memory`` says
    otherwise), batches are copied without waiting and augmented on the GPU
    (:class:`~sklearn_sela.data.DeviceBatches`), the forward passes
    of training and labelling run under bfloat16 autocast with the losses
    and the Sinkhorn inputs in float32 (:meth:`autocast`), and the module's
    convolution weights are in the channels-last memory format. Elsewhere
    the net computes in float32 with the augmentation in the DataLoader.

    Worker processes (``iterator_train__num_workers``) then only read
    samples: in-memory arrays need none (a thread reads one batch ahead).
    Streamed image folders decode their files in the workers, and the GPU
    waits unless they keep up: give them the cores the main process does
    not use, ``os.cpu_count() - 1`` on a machine of its own.

    Attributes
    ----------
    labels_ : Tensor of shape (n_samples, n_heads)
        Current self-labels (int64, CPU).
    log_betas_ : list of Tensor
        Per head, the Sinkhorn cluster scaling of the last update (warm start
        of the next one), or None before the first.
    proportions_ : list of ndarray or None
        Per head, the cluster sizes that its label steps aim at (float64
        fractions), or None for equal sizes; with ``"auto"``, the estimate
        of the last label transfer (None before the first).
    label_updates_ : int
        Number of label updates done.
    """

    def __init__(
        self,
        module,
        *args,
        n_clusters=(10,),
        lam=25.0,
        sinkhorn_tol=1e-3,
        sinkhorn_max_iter=1000,
        assign="argmax",
        augment_labels=False,
        label_seed=0,
        label_neighbors=1,
        cluster_proportions=None,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        **kwargs,
    ):
        super().__init__(module, *args, criterion=criterion, train_split=train_split, **kwargs)
        self.n_clusters = n_clusters
        self.lam = lam
        self.sinkhorn_tol = sinkhorn_tol
        self.sinkhorn_max_iter = sinkhorn_max_iter
        self.assign = assign
        self.augment_labels = augment_labels
        self.label_seed = label_seed
        self.label_neighbors = label_neighbors
        self.cluster_proportions = cluster_proportions

    # skorch pickles the attributes with these prefixes through torch.load
    # with a map_location, so that a net trained on CUDA loads where CUDA is
    # missing; it adds module_, criterion_ and optimizer_ itself. The module
    # parameter belongs with them: given as an instance, it is the very
    # module that training moved to the device, and pickled plainly its
    # storages keep their "cuda:0" tag.
    cuda_dependent_attributes_ = ["module"]

    def fit_loop(self, X, y=None, **fit_params):
        """skorch's training loop, remembering an interrupt.

        skorch ends training quietly when a ``KeyboardInterrupt`` (Ctrl-C)
        reaches it; ``interrupted_`` tells the caller that it did, so that
        a half-trained net is not taken for a finished one.
        """
        self.interrupted_ = False
        try:
            return super().fit_loop(X, y, **fit_params)
        except KeyboardInterrupt:
            self.interrupted_ = True
            raise

    # -- feeding the device -----------------------------------------------
    def _device_type(self):
        return "cpu" if self.device is None else torch.device(self.device).type

    def feeds_device(self):
        """Whether batches are augmented on the net's device: on CUDA.

        Then :meth:`get_iterator` hands the DataLoader the plain samples and
        augments each batch on the device
        (:class:`~sklearn_sela.data.DeviceBatches`); on the CPU the
        DataLoader augments, as skorch does.
        """
        return self._device_type() == "cuda"

    def autocast(self):
        """The precision of the training and labelling forward passes.

        bfloat16 autocast on CUDA: convolutions and matrix products in
        bfloat16, which needs no loss scaling; the losses
        (:meth:`get_loss`) and the log-probabilities given to Sinkhorn are
        computed in float32 from the logits. Elsewhere a no-op context:
        float32 throughout.
        """
        if self._device_type() != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def get_params_for(self, prefix):
        """skorch's parameters of ``prefix``; DataLoaders pin memory on CUDA
        unless told otherwise, so that batches are copied without waiting."""
        params = super().get_params_for(prefix)
        if prefix in ("iterator_train", "iterator_valid"):
            params.setdefault("pin_memory", self._device_type() == "cuda")
        return params

    def get_iterator(self, dataset, training=False):
        """skorch's DataLoader; with :meth:`feeds_device`, one of the plain
        samples whose batches are augmented on the device."""
        if not self.feeds_device():
            return super().get_iterator(dataset, training=training)
        plain, transform = split_batch_transform(dataset)
        return DeviceBatches(super().get_iterator(plain, training=training), self.device,
                             transform)

    def initialize_module(self):
        """skorch's module, its convolution weights channels-last on CUDA
        (what cuDNN's tensor-core kernels read; on the CPU it would change
        the arithmetic of the results)."""
        super().initialize_module()
        if self._device_type() == "cuda":
            self.module_.to(memory_format=torch.channels_last)
        return self

    def infer(self, x, **fit_params):
        """skorch's forward pass, under :meth:`autocast`."""
        with self.autocast():
            return super().infer(x, **fit_params)

    def train_step(self, batch, **fit_params):
        """skorch's optimisation step, refusing a loss that is not finite.

        Checked after the step, where skorch reads the loss anyway: a check
        before the backward pass would wait for the GPU once more per batch.
        """
        step = super().train_step(batch, **fit_params)
        loss = step["loss"].detach()
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"The training loss became {float(loss):g} in epoch {len(self.history)}: "
                f"training diverged. Try a smaller learning rate than lr={self.lr:g}."
            )
        return step

    # -- labels -----------------------------------------------------------
    def init_labels(self, n_samples):
        """Start from a random equipartition of ``n_samples`` for each head."""
        gen = torch.Generator().manual_seed(int(self.label_seed))
        cols = [torch.randperm(n_samples, generator=gen) % k for k in self.n_clusters]
        self.labels_ = torch.stack(cols, dim=1)
        self.log_betas_ = [None] * len(self.n_clusters)
        given = self.cluster_proportions
        if given is None or isinstance(given, str):
            given = [None] * len(self.n_clusters)
        self.proportions_ = [None if p is None else np.asarray(p, dtype=np.float64)
                             for p in given]
        self.label_updates_ = 0
        return self

    @property
    def learns_proportions(self):
        """Whether the cluster sizes are estimated (``"auto"``)."""
        return isinstance(self.cluster_proportions, str)

    def _learned(self, t, sizes):
        """With ``"auto"``, head ``t``'s next estimate: ``sizes`` as
        fractions, none below half a sample (a proportion of zero would
        close the cluster for good)."""
        if self.learns_proportions:
            p = np.maximum(np.asarray(sizes, dtype=np.float64), 0.0)
            p = np.maximum(p / p.sum(), 0.5 / len(self.labels_))
            self.proportions_[t] = p / p.sum()

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """Cross-entropy averaged over heads, in float32; ``y_true`` holds
        sample indices."""
        targets = self.labels_[y_true.cpu()]
        if self._device_type() == "cuda":
            # A copy from pinned memory does not wait for the forward pass.
            targets = targets.pin_memory()
        targets = targets.to(self.device, non_blocking=True)
        losses = [
            self.criterion_(logits.float(), targets[:, t]) for t, logits in enumerate(y_pred)
        ]
        return sum(losses) / len(losses)

    def _label_batches(self, dataset, offset=0):
        """Yield ``(inputs on the device, buffer rows)`` in evaluation mode.

        Callers run the unwrapped module on them: a DistributedDataParallel
        wrapper would synchronise buffers at every forward, and the ranks'
        shards may differ by a batch.
        """
        self._set_training(False)
        for batch in self.get_iterator(dataset, training=False):
            Xi, idx = unpack_data(batch)
            yield to_device(Xi, self.device), torch.as_tensor(idx).cpu() - offset

    @torch.no_grad()
    def log_probas_into(self, dataset, buffers, offset=0, features_out=None):
        """Write every head's log-probabilities for ``dataset`` into ``buffers``.

        ``buffers[t]`` is a preallocated ``(N, K_t)`` float32 tensor; rows
        are filled at the sample indices the dataset yields, minus
        ``offset`` (a shard's first index), so no list of batch outputs is
        ever concatenated. ``features_out``, an ``(N, D)`` CPU tensor, also
        receives the backbone features of the same rows from the same
        forward pass (the module must be a
        :class:`~sklearn_sela.backbones.MultiHeadNet`).
        """
        module = unwrap_module(self.module_)
        for x, rows in self._label_batches(dataset, offset):
            with self.autocast():
                if features_out is None:
                    outputs = module(x)
                else:
                    out, outputs = module.features_and_logits(x)
            if features_out is not None:
                features_out[rows] = out.float().cpu()
            for buf, logits in zip(buffers, outputs):
                buf[rows.to(buf.device)] = torch.log_softmax(logits.float(), dim=1).to(buf.device)
        return buffers

    @torch.no_grad()
    def features_into(self, dataset, buffer, offset=0, embed=False, features_out=None):
        """Write the backbone features of ``dataset`` into ``buffer`` (N, D).

        With ``embed``, write what the heads read instead
        (:meth:`~sklearn_sela.backbones.MultiHeadNet.embed` of the features);
        ``features_out`` then receives the backbone features of the same pass.
        """
        module = unwrap_module(self.module_)
        for x, rows in self._label_batches(dataset, offset):
            with self.autocast():
                out = module.features(x)
                emb = module.embed(out) if embed else out
            if features_out is not None:
                features_out[rows] = out.float().cpu()
            buffer[rows] = emb.float().cpu()
        return buffer

    @torch.no_grad()
    def training_features(self, dataset, n_views=0):
        """Backbone features of every training sample.

        Returns an ``(N, D)`` float32 CPU tensor in sample order. With
        ``n_views=0``, the features without augmentation: what ``transform``
        gives for the training data (an
        :class:`~sklearn_sela.data.AugmentedDataset` is read without its
        transform, whatever ``augment_labels`` says). With ``n_views > 0``,
        the mean over that many passes through ``dataset`` as it is, each
        with its own random augmentation, of the features scaled to unit
        length. Under ``torch.distributed`` each rank computes its shard and
        the rows are all-gathered, so every rank holds the same matrix.
        """
        if isinstance(dataset, AugmentedDataset) and not n_views:
            dataset = AugmentedDataset(dataset.base, None)
        group = get_process_group()
        lo, hi = local_shard(len(self.labels_), group)
        if group is not None:
            dataset = Subset(dataset, range(lo, hi))
        dim = unwrap_module(self.module_).feature_dim
        if not n_views:
            local = self.features_into(dataset, torch.empty((hi - lo, dim)), lo)
        else:
            local, view = torch.zeros((hi - lo, dim)), torch.empty((hi - lo, dim))
            for _ in range(n_views):
                self.features_into(dataset, view, lo)
                local += torch.nn.functional.normalize(view, dim=1)
            local /= n_views
        return all_gather_rows(local, group).cpu()

    def head_log_probas(self, dataset, shard=None, device="cpu", features_out=None):
        """Yield ``(t, log-probabilities)`` of each head for ``dataset``.

        Each ``(N, K_t)`` float32 matrix (on ``device``) may be overwritten
        by the caller and is not used again after the next one is
        requested. ``shard=(lo, hi)`` restricts the pass to samples
        ``lo:hi`` (one rank's rows). When what the heads read (the
        features, or the projection's embedding) is narrower than their
        outputs together (``D + max K_t < sum K_t``, e.g. ImageNet with
        AlexNet's ``D = 4096``, ``K = 3000``, ``T = 10``), it is computed
        once and each head's matrix in turn from it, into one reused buffer,
        as the paper's release does: ``N (D + max K)`` floats instead of ``N
        sum K`` (36 GB instead of 154 GB in that example). Otherwise all
        heads are computed in one pass. ``features_out``, an ``(hi - lo,
        D)`` CPU tensor, receives the backbone features from the same pass
        (a :class:`~sklearn_sela.backbones.MultiHeadNet` only); it is
        filled before the first head is yielded.
        """
        lo, hi = (0, len(self.labels_)) if shard is None else shard
        if shard is not None:
            dataset = Subset(dataset, range(lo, hi))
        n, ks = hi - lo, list(self.n_clusters)
        module = unwrap_module(self.module_)
        if not isinstance(module, MultiHeadNet) or module.embed_dim + max(ks) >= sum(ks):
            buffers = [torch.empty((n, k), dtype=torch.float32, device=device) for k in ks]
            self.log_probas_into(dataset, buffers, offset=lo, features_out=features_out)
            for t in range(len(ks)):
                buf, buffers[t] = buffers[t], None  # freed once solved
                yield t, buf
            return
        embedded = self.features_into(
            dataset, torch.empty((n, module.embed_dim), dtype=torch.float32), lo, embed=True,
            features_out=features_out,
        )
        storage = torch.empty(n * max(ks), dtype=torch.float32, device=device)
        # The heads' products run where the model is (a GPU does them in a
        # blink), in row blocks of a few MB (CPU cache) or 256 MB (GPU).
        dev = next(module.parameters()).device
        budget = (256 << 20) if dev.type == "cuda" else (4 << 20)
        rows = max(1, budget // (4 * max(ks)))
        for t, k in enumerate(ks):
            buf = storage[: n * k].view(n, k)
            for start in range(0, n, rows):
                # Not around the yield: the caller would run without grad.
                with torch.no_grad(), self.autocast():
                    block = module.head_logits(t, embedded[start:start + rows].to(dev))
                    buf[start:start + rows] = torch.log_softmax(block.float(), dim=1).to(
                        storage.device
                    )
            yield t, buf

    def get_label_dataset(self, dataset):
        """The dataset the self-labelling pass reads, given the training one.

        With ``augment_labels=False`` an :class:`~sklearn_sela.data.AugmentedDataset`
        is read without its transform. The paper (section 3.4) defines the
        scores as an expectation over random transformations; a single random
        view per sample is a noisy estimate of it, and the plain sample is a
        steadier one. Other datasets are used as they are.
        """
        if not self.augment_labels and isinstance(dataset, AugmentedDataset):
            return AugmentedDataset(dataset.base, None)
        return dataset

    def label_neighbors_of(self, dataset, rows=None, features=None):
        """Each sample's neighbourhood for the self-labelling step, or None.

        With ``label_neighbors = k > 1``, the ``k`` training samples whose
        backbone features (of the plain samples, centred) have the largest
        cosine similarity with the sample's, the sample itself first. The
        step then scores a sample by the mean of its neighbourhood's
        predicted probabilities, so that samples with similar features get
        the same label unless the transport's equal sizes say otherwise.
        The search is an ``N x N`` similarity in row blocks on the net's
        device. ``rows=(lo, hi)`` returns the neighbourhoods of those
        samples only (one rank's shard).

        ``features`` are the ``(N, D)`` training features if the caller
        has them (the labelling pass computes them, see
        :meth:`label_pass_features`); they are centred in place. Without
        them, this costs one more pass over the data.

        Returns
        -------
        neighbors : LongTensor of shape (hi - lo, k) or None
        """
        if self.label_neighbors <= 1:
            return None
        if features is None:
            feats = self.training_features(dataset)
        else:
            feats = features
        feats -= feats.mean(dim=0)
        k = min(int(self.label_neighbors), len(feats))
        return cosine_neighbors(feats.to(self.device), k, rows=rows).cpu()

    def label_pass_features(self, dataset, n_rows):
        """An empty ``(n_rows, D)`` buffer for the labelling pass to write the
        backbone features into (``features_out`` of :meth:`head_log_probas`),
        or None when the pass cannot give :meth:`label_neighbors_of` its
        features: neighbourhoods not used, a module other than a
        :class:`~sklearn_sela.backbones.MultiHeadNet`, or a pass over
        augmented samples (``augment_labels=True``).

        Sharing the pass saves one of the two passes over the data that the
        step would otherwise make (on Fashion-MNIST, about a fifth of the
        step's time on a CPU), with the same labels to the bit.
        """
        module = unwrap_module(self.module_)
        augmented = isinstance(dataset, AugmentedDataset) and dataset.transform is not None
        if self.label_neighbors <= 1 or augmented or not isinstance(module, MultiHeadNet):
            return None
        return torch.empty((n_rows, module.feature_dim))

    @torch.no_grad()
    def update_labels(self, dataset):
        """Self-labelling step (paper, step 2) for every head.

        Computes the log-probabilities of the training samples (of
        :meth:`get_label_dataset`, head by head with
        :meth:`head_log_probas`), averages the probabilities over each
        sample's neighbourhood when ``label_neighbors > 1``
        (:meth:`label_neighbors_of`, on the features of the same pass), and
        solves the transport problem per head, warm-started from that
        head's previous scaling.

        The same code serves one process and many. Under
        ``torch.distributed`` with several ranks, rank ``r`` computes the
        log-probabilities of its contiguous shard only
        (:func:`~sklearn_sela.collectives.shard_bounds`), solves each head
        with the distributed Sinkhorn (``process_group``; ``K``-length
        all-reduces) and all-gathers the int64 labels, so ``labels_`` is
        the same ``(N, T)`` tensor on every rank; neighbourhoods reach into
        other shards, so features and each head's probabilities are then
        all-gathered before a shard's rows are averaged. One process is
        the one-shard case, where every gather is the identity.

        Returns
        -------
        info : dict
            Time, Sinkhorn iterations, smallest and largest cluster and NMI
            with the previous labelling, each per head (lists); with
            several ranks also ``"local_rows"``, the shard's size.
        """
        dataset = self.get_label_dataset(dataset)
        start = time.perf_counter()
        group = get_process_group()
        broadcast_buffers(unwrap_module(self.module_), group)
        lo, hi = local_shard(len(self.labels_), group)
        shard = None if group is None else (lo, hi)
        dev = collective_device(group)
        local = torch.empty((hi - lo, len(self.n_clusters)), dtype=torch.int64, device=dev)
        feats = self.label_pass_features(dataset, hi - lo)
        neighbors = None
        solves = []
        for t, buf in self.head_log_probas(dataset, shard=shard, device=dev, features_out=feats):
            if t == 0:  # the pass is done: feats are filled
                if feats is not None:
                    feats = all_gather_rows(feats, group).cpu()
                neighbors = self.label_neighbors_of(dataset, rows=shard, features=feats)
                feats = None
            if neighbors is not None:
                average_over_neighbors(all_gather_rows(buf.exp(), group), neighbors, out=buf)
            local[:, t], res = self.solve_head(buf, t, process_group=group)
            solves.append(res)
        previous = self.labels_
        self.labels_ = all_gather_rows(local, group).cpu()
        info = self.label_update_info(previous, solves, start)
        if group is not None:
            info["local_rows"] = hi - lo
        return info

    @torch.no_grad()
    def transfer_labels(self, dataset):
        """Label transfer: each head's labels become a refined partition of
        the learned features, which the rest of training teaches the heads.

        The backbone features of each training sample, scaled to unit length
        and averaged over ``_TRANSFER_VIEWS`` randomly augmented views (the
        training augmentation of ``dataset``; the plain sample without one),
        are whitened by their own statistics
        (:class:`~sklearn_sela.backbones.FeatureWhitening`) and averaged
        ``_TRANSFER_SMOOTHING`` times over each sample's
        ``_TRANSFER_NEIGHBORS`` nearest neighbours (cosine;
        :func:`~sklearn_sela.neighbors.smooth_over_neighbors`), so that what
        a neighbourhood shares stays and what sets a sample apart fades. A
        balanced spherical k-means
        (:class:`~sklearn_sela.assigner.SinkhornAssigner`, with the head's
        ``proportions_`` as cluster sizes) on the result starts from the
        centres of a head's clusters, so a large K needs no k-means++
        seeding. Up to
        ``_TRANSFER_SPECTRAL_MAX`` clusters, each head's is then refined by
        the same k-means in the spectral embedding of the neighbour graph
        (:func:`~sklearn_sela.spectral.neighbor_spectral_embedding`), where
        clusters follow its connected regions, and competes with
        ``_TRANSFER_N_INIT`` runs seeded by k-means++ (shared by the heads
        of one K): the head takes the one that splits the fewest
        neighbourhoods (:func:`~sklearn_sela.neighbors.neighbor_agreement`).
        Above, all heads of one K take one k-means, from that of their
        partitions that splits the fewest. Cosine heads then get the unit
        mean embedding of each new cluster as its prototype, so that they
        predict the new partition from the first batch on.

        With ``cluster_proportions="auto"`` each of these k-means learns the
        cluster sizes (``SinkhornAssigner(cluster_proportions="auto")``) in
        the smoothed features and keeps them in the spectral embedding; the
        head takes the partition of lowest k-means objective in the smoothed
        features (neighbour agreement favours unequal sizes: a cluster that
        swallows its neighbour cuts fewer edges), and its sizes become the
        head's ``proportions_``, which the label steps then impose. The
        sizes are thus estimated on fixed features, where no feedback
        between labels and network can shrink a cluster away; the label
        steps before the first transfer keep equal sizes, SeLa's guard
        against collapse.

        Parameters
        ----------
        dataset : Dataset
            The training dataset (an
            :class:`~sklearn_sela.data.AugmentedDataset` for the views).

        Returns
        -------
        info : dict
            As :meth:`label_update_info`, with the k-means iterations per
            head (``kmeans_iter``) in place of Sinkhorn's.
        """
        start = time.perf_counter()
        previous = self.labels_.clone()
        augmented = dataset
        dataset = self.get_label_dataset(dataset)
        module = unwrap_module(self.module_)
        # Every rank then computes the same features, partition and
        # prototypes (DDP does not synchronise parameters set by hand).
        broadcast_buffers(module, get_process_group())
        views = (_TRANSFER_VIEWS and isinstance(augmented, AugmentedDataset)
                 and augmented.transform is not None)
        cosine = isinstance(module, MultiHeadNet) and module.temperature is not None
        # Plain features: the prototypes' source, and partitioned without views.
        feats = self.training_features(dataset) if cosine or not views else None
        x = self.training_features(augmented, _TRANSFER_VIEWS) if views else feats
        n = len(x)
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"The features became infinite in epoch {len(self.history)}: "
                                     "training diverged. Try a smaller learning rate than "
                                     f"lr={self.lr:g}.")
        x = FeatureWhitening(x.shape[1]).fit(x.numpy())(x).to(self.device)
        neighbors = cosine_neighbors(x, min(_TRANSFER_NEIGHBORS, n - 1), exclude_self=True)
        unit = torch.nn.functional.normalize
        smoothed = unit(smooth_over_neighbors(unit(x, dim=1), neighbors, _TRANSFER_SMOOTHING),
                        dim=1).cpu().numpy()
        neighbors = neighbors.cpu()
        if cosine:
            embedding = torch.cat([  # unit rows, as the heads read them
                module.embed(block.to(self.device)).float().cpu()
                for block in feats.split(max(1, (1 << 22) // feats.shape[1]))
            ]).numpy()
        seed = int(self.label_seed)
        # Unit rows of the leading eigenvectors of the graph, per K.
        spectral = {
            k: neighbor_spectral_embedding(neighbors, k, random_state=seed)
            for k in set(self.n_clusters) if 1 < k <= _TRANSFER_SPECTRAL_MAX and n > k
        }

        auto = "auto" if self.learns_proportions else None

        def partition(k, proportions, labels=None, random_state=None):
            """Balanced k-means (cluster sizes ``proportions``) of the
            smoothed features from the centres of ``labels`` (k-means++
            without), then of the spectral embedding. Returns its score
            (higher is better), labels and k-means iterations."""
            run = None
            for space in [smoothed] + ([spectral[k]] if k in spectral else []):
                # A cluster the head left empty starts at a sample (at zero,
                # it scores 0 everywhere and the transport solves crawl).
                init = "k-means++" if labels is None else cluster_centers(
                    space, labels, space[np.random.default_rng(seed).choice(n, k, replace=False)],
                    "cosine")
                step = SinkhornAssigner(
                    n_clusters=k, metric="cosine", init=init, max_iter=_TRANSFER_MAX_ITER,
                    cluster_proportions=proportions, random_state=random_state,
                ).fit(space)
                labels, run = step.labels_, run or step
                if auto:  # the first space's sizes, kept in the spectral one
                    proportions = step.cluster_proportions_
            if auto:  # the k-means objective of the smoothed features
                centers = cluster_centers(smoothed, labels, smoothed[:k], "cosine")
                score = float(np.einsum("ij,ij->", smoothed, centers[labels]))
            else:
                score = neighbor_agreement(torch.as_tensor(labels), neighbors)
            return score, labels, int(run.n_iter_)

        # Large K: the heads share one k-means, from their most agreeing partition.
        heads_of = {k: [t for t, kt in enumerate(self.n_clusters) if kt == k]
                    for k in set(self.n_clusters) if k > _TRANSFER_SPECTRAL_MAX}
        shared = {}
        for k, heads in heads_of.items():
            t = max(heads, key=lambda t: neighbor_agreement(previous[:, t], neighbors))
            shared[k] = partition(k, auto or self.proportions_[t], previous[:, t].numpy())
        iterations = []
        restarts = {}  # shared by the heads of one K and the same sizes
        chosen = {}  # shared by the heads of one K, the same sizes and labels
        for t, k in enumerate(self.n_clusters):
            sizes = auto or self.proportions_[t]
            key = (k, sizes if sizes is None or auto else tuple(sizes))
            if k in spectral and key not in restarts:
                restarts[key] = [partition(k, sizes, random_state=seed + i)
                                 for i in range(_TRANSFER_N_INIT)]
            if k in shared:
                run = shared[k]
            else:
                # The head's own partition, or a restart that scores higher
                # (max keeps the first of equal ones). Heads with equal
                # labels (as the last transfer often leaves them) get the
                # same result: partition() draws no random numbers here.
                own = previous[:, t].numpy()
                mine = (key, own.tobytes())
                if mine not in chosen:
                    chosen[mine] = max([partition(k, sizes, own)] + restarts.get(key, []),
                                       key=lambda run: run[0])
                run = chosen[mine]
            _, labels, n_iter = run
            self.labels_[:, t] = torch.as_tensor(labels, dtype=torch.int64)
            self._learned(t, np.bincount(labels, minlength=k))
            if cosine:
                weight = module.heads[t].weight
                weight.copy_(torch.from_numpy(
                    cluster_centers(embedding, labels, weight.detach().cpu().numpy(), "cosine")
                ))
            iterations.append(n_iter)
        info = self.label_update_info(previous, [], start)
        info["kmeans_iter"] = iterations
        return info

    def solve_head(self, buf, t, process_group=None):
        """Solve head ``t``'s transport problem on its log-probabilities.

        ``buf`` is overwritten (in-place solve) and the head's scaling is
        kept for the next warm start. Non-convergence is not warned about
        here: it is recorded per update and reported once at the end of
        training by :class:`SelfLabelling`.

        The cluster sizes are the head's ``proportions_``.

        Returns
        -------
        labels : Tensor of shape (len(buf),)
        result : SinkhornResult
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = sinkhorn_knopp(
                buf,
                lam=self.lam,
                cluster_proportions=self.proportions_[t],
                tol=self.sinkhorn_tol,
                max_iter=self.sinkhorn_max_iter,
                warm_start=self.log_betas_[t],
                assign=self.assign,
                inplace=True,
                process_group=process_group,
            )
        # Kept on the CPU: fitted state that pickles with CUDA storages cannot
        # be loaded where CUDA is missing (skorch maps only its modules).
        self.log_betas_[t] = res.log_beta.cpu()
        # The soft plan is the scratch buffer: let the caller free it.
        res.soft = None
        return res.labels, res

    def label_update_info(self, previous, solves, start):
        """Count the update and summarise it against the ``previous`` labels.

        Returns
        -------
        info : dict
            Per head (lists): Sinkhorn iterations, convergence, smallest and
            largest cluster, NMI with the previous labelling; and the time
            since ``start``.
        """
        info = {
            "sinkhorn_iter": [res.n_iter for res in solves],
            "converged": [bool(res.converged) for res in solves],
            "min_size": [],
            "max_size": [],
            "nmi_prev": [],
        }
        for t, k in enumerate(self.n_clusters):
            sizes = torch.bincount(self.labels_[:, t], minlength=k)
            info["min_size"].append(int(sizes.min()))
            info["max_size"].append(int(sizes.max()))
            info["nmi_prev"].append(
                float(normalized_mutual_info_score(previous[:, t], self.labels_[:, t]))
            )
        self.label_updates_ += 1
        info["time"] = time.perf_counter() - start
        return info
