"""Feature extractors ("backbones") and the multi-head network of SeLa.

:func:`make_backbone` turns a specification (a name or a user
:class:`torch.nn.Module`) into a module mapping a batch of samples of shape
``(B, *info.sample_shape)`` to ``(B, D)`` features; :class:`MultiHeadNet`
puts ``T`` classification heads on top, one per simultaneous clustering
(SeLa section 3.5), linear as in the paper or cosine heads behind a
projection MLP (SeLa-v2).
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import copy
import math
import numbers

import numpy as np
import torch
import torchvision
from sklearn.covariance import LedoitWolf
from torch import nn

from .data import InputInfo

__all__ = [
    "BACKBONE_NAMES",
    "make_backbone",
    "MLP",
    "ConvNet",
    "AlexNetFeatures",
    "MultiHeadNet",
    "FeatureWhitening",
]

BACKBONE_NAMES = ("auto", "mlp", "convnet", "alexnet", "resnet18", "resnet50")

# Smallest side AlexNet accepts: its 11x11 stride-4 conv and three 3x3
# stride-2 max pools reduce 63 pixels to 1 (see _alexnet_out_size).
ALEXNET_MIN_SIZE = 63


class MLP(nn.Sequential):
    """Fully connected backbone for tabular data.

    ``Linear - BatchNorm1d - ReLU`` blocks; images are flattened first.

    Parameters
    ----------
    in_features : int
        Number of input features (product of the sample shape).
    hidden : tuple of int, default=(512, 512)
        Widths of the hidden blocks.
    feature_dim : int, default=128
        Width of the last block, the feature dimension.
    """

    def __init__(self, in_features, hidden=(512, 512), feature_dim=128):
        layers = [nn.Flatten()]
        width = in_features
        for out in (*hidden, feature_dim):
            # The bias would be cancelled by the batch norm's mean removal.
            layers += [nn.Linear(width, out, bias=False), nn.BatchNorm1d(out),
                       nn.ReLU(inplace=True)]
            width = out
        super().__init__(*layers)
        self.feature_dim = feature_dim


class ConvNet(nn.Module):
    """Compact convolutional backbone for small images (8x8 and up).

    Stages of ``conv3x3 - [MaxPool2d] - BatchNorm2d - ReLU`` with widths
    ``widths``; in every stage but the last, a 2x2 max pool halves the
    feature map while its smaller side is at least 6, so maps never shrink
    below 3x3 (an 8x8 digit is pooled once, a 28x28 image three times, to
    3x3, which an unpadded last convolution reduces to 1x1). Global
    average pooling and ``Linear - BatchNorm1d - ReLU`` give
    the ``feature_dim`` features (128, as in the paper's kNN protocol), or,
    with ``feature_dim=None``, the pooled maps are the features
    (``widths[-1]`` of them): what :class:`MultiHeadNet` needs below a
    projection head, which takes the place of that last block.

    Parameters
    ----------
    in_channels : int
        Number of input channels.
    image_size : (int, int)
        Input height and width; fixes where pooling happens.
    widths : tuple of int, default=(32, 64, 128, 256)
        Output channels of the convolutional stages.
    feature_dim : int or None, default=128
        Output dimension; None for the pooled convolutional features.
    last_padding : {1, 0}, default=1
        Zero padding of the last stage's convolution. 0 shrinks the last
        map by one pixel on each side; on a 3x3 map (28x28 images) it then reads
        the whole map, so the features keep where on the image a pattern
        lies instead of averaging it over the map. Same weights; the last
        convolution then runs at ``(h - 2)(w - 2)`` positions instead of ``h w``.

    Notes
    -----
    The first stage is a single 32-channel convolution rather than two
    64-channel ones: at full resolution those cost most of the compute, and
    on CPUs they made the network several times slower. Inputs are
    converted to the channels-last memory format, which is faster with
    oneDNN on CPU and with cuDNN on recent GPUs.
    """

    def __init__(self, in_channels, image_size, widths=(32, 64, 128, 256), feature_dim=128,
                 last_padding=1):
        super().__init__()
        layers = []
        c = in_channels
        h, w = image_size
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            padding = last_padding if last else 1
            layers.append(nn.Conv2d(c, width, 3, padding=padding, bias=False))
            c = width
            if not last and min(h, w) >= 6:
                # Pooling before batch norm and ReLU runs them on a quarter
                # of the activations; the max commutes with both (for a
                # positive batch-norm scale), and they cost a third of the
                # CPU time at full resolution.
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if feature_dim is None:
            self.head = nn.Flatten()
            feature_dim = c
        else:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(c, feature_dim, bias=False),
                                      nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.feature_dim = feature_dim
        self.to(memory_format=torch.channels_last)

    def forward(self, x):
        """Compute features.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W)
            Images.

        Returns
        -------
        features : torch.Tensor of shape (B, feature_dim)
        """
        x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.pool(self.features(x)))


def _alexnet_out_size(size):
    # conv 11/4 pad 2, then three max pools 3/2 with convs that keep the size.
    size = (size + 2 * 2 - 11) // 4 + 1
    for _ in range(3):
        size = (size - 3) // 2 + 1
    return size


class AlexNetFeatures(nn.Module):
    """AlexNet with batch normalisation, as used by SeLa, without its classifier.

    The torchvision AlexNet (the 64-192-384-256-256 filter variant the paper
    calls "AlexNet (small)"), randomly initialised, with a ``BatchNorm2d``
    after every convolution, as in the authors' code. The output is the
    4096-d activation after the second fully connected layer and its ReLU
    (dropout 0.5 before each fully connected layer, as in AlexNet).

    Parameters
    ----------
    in_channels : int, default=3
        Number of input channels.
    """

    def __init__(self, in_channels=3):
        super().__init__()
        base = torchvision.models.alexnet(weights=None)
        layers = []
        first = True
        for layer in base.features:
            if isinstance(layer, nn.Conv2d):
                layers += [
                    nn.Conv2d(in_channels if first else layer.in_channels, layer.out_channels,
                              layer.kernel_size, layer.stride, layer.padding, bias=False),
                    nn.BatchNorm2d(layer.out_channels),
                ]
                first = False
            else:
                layers.append(layer)
        self.features = nn.Sequential(*layers)
        self.avgpool = base.avgpool
        # Drop the 1000-way output layer: the SeLa heads replace it.
        self.classifier = nn.Sequential(*list(base.classifier.children())[:-1])
        self.feature_dim = 4096

    def forward(self, x):
        """Compute features.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W)
            Images, at least 63x63.

        Returns
        -------
        features : torch.Tensor of shape (B, 4096)
        """
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _resnet(name, channels, image_size):
    model = getattr(torchvision.models, name)(weights=None)
    if min(image_size) < 64:
        # CIFAR-style stem: a 7x7 stride-2 conv and a max pool would reduce
        # a 32x32 image to 8x8 before the first residual block.
        model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    if model.conv1.in_channels != 3 or model.conv1.kernel_size != (7, 7):
        # Same initialisation torchvision gives the convolution it replaces.
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, dim


def _require_images(name, info):
    if info.kind != "image":
        raise ValueError(
            f"Backbone {name!r} needs images, but the input is tabular with "
            f"{info.sample_shape[0]} features; use 'mlp' or 'auto'."
        )


def _infer_feature_dim(module, info):
    try:
        param = next(module.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    if not dtype.is_floating_point:
        dtype = torch.float32
    # Two samples, not one: batch norm refuses a batch of one in train mode,
    # and it tells the batch axis apart from the feature axis.
    x = torch.zeros((2, *info.sample_shape), device=device, dtype=dtype)
    # Per-module flags: a user module may deliberately mix train/eval parts.
    modes = [(m, m.training) for m in module.modules()]
    module.eval()  # no batch-norm statistics update, no dropout
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as exc:
        raise ValueError(
            f"The backbone module failed on a dummy batch of shape {tuple(x.shape)} "
            f"(2 samples of the input's shape {info.sample_shape}): {exc}"
        ) from exc
    finally:
        for m, training in modes:
            m.training = training
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            "The backbone module must return a 2-D tensor of features of shape "
            f"(batch_size, feature_dim); on a batch of 2 it returned {shape}."
        )
    if out.shape[1] == 0:
        raise ValueError("The backbone module returned 0 features per sample.")
    return int(out.shape[1])


def make_backbone(spec, info, *, projection=False):
    """Build the feature extractor for the given input.

    Parameters
    ----------
    spec : str or torch.nn.Module
        One of:

        - ``"auto"``: ``"mlp"`` for tabular data, ``"convnet"`` for images
          whose smaller side is under 64 pixels, ``"alexnet"`` otherwise;
        - ``"mlp"``: :class:`MLP` (512-512-128 with batch norm), 128 features;
          images are flattened;
        - ``"convnet"``: :class:`ConvNet`, 128 features (with
          ``projection``: the pooled maps, 128 or 256 features), for images
          of any size (meant for 8x8 to about 64x64); widths (32, 64, 128)
          for images under 16 pixels, (32, 64, 128, 256) and an unpadded
          last convolution (``last_padding=0``) otherwise;
        - ``"alexnet"``: :class:`AlexNetFeatures`, 4096 features, images of
          at least 63x63;
        - ``"resnet18"`` / ``"resnet50"``: torchvision ResNets, randomly
          initialised, output of the global average pool (512 / 2048
          features). For images under 64 pixels the stem is the CIFAR one
          (3x3 stride-1 conv, no max pool);
        - a :class:`torch.nn.Module` mapping ``(B, *info.sample_shape)`` to
          ``(B, D)``: a deep copy is returned (fitting never trains the
          caller's instance) and ``D`` is found by one forward pass of a zero
          batch of 2 in eval mode; train/eval flags are restored afterwards.

        Torchvision architectures never download weights; their first
        convolution is replaced when the input does not have 3 channels.
    info : InputInfo
        Description of the input, from :func:`sklearn_sela.data.as_dataset`.
    projection : bool, default=False
        Whether a projection head will follow (:class:`MultiHeadNet`'s
        ``projection``). The convnet then ends at its global average pool:
        the ``Linear - BatchNorm1d - ReLU`` block it otherwise ends with is
        the projection's job. Other backbones are unchanged.

    Returns
    -------
    module : torch.nn.Module
        Maps ``(B, *info.sample_shape)`` float tensors to ``(B, D)``.
    feature_dim : int
        ``D``.

    Raises
    ------
    ValueError
        For an unknown name, an architecture that does not fit the input
        (an image network on tabular data, AlexNet on images under 63x63),
        or a module that fails on, or does not return 2-D features for, a
        dummy batch.
    TypeError
        If ``spec`` is neither a string nor a module.
    """
    if not isinstance(info, InputInfo):
        raise TypeError(f"info must be an InputInfo, got {type(info).__name__}.")
    if isinstance(spec, nn.Module):
        module = copy.deepcopy(spec)
        return module, _infer_feature_dim(module, info)
    if not isinstance(spec, str):
        raise TypeError(
            "backbone must be one of "
            f"{', '.join(repr(n) for n in BACKBONE_NAMES)} or a torch.nn.Module, "
            f"got {type(spec).__name__}."
        )
    name = spec.lower()
    if name not in BACKBONE_NAMES:
        raise ValueError(
            f"Unknown backbone {spec!r}; valid names are "
            f"{', '.join(repr(n) for n in BACKBONE_NAMES)}, or pass a torch.nn.Module."
        )
    if name == "auto":
        if info.kind == "tabular":
            name = "mlp"
        else:
            name = "convnet" if min(info.sample_shape[1:]) < 64 else "alexnet"

    if name == "mlp":
        module = MLP(math.prod(info.sample_shape))
        return module, module.feature_dim
    _require_images(name, info)
    channels, height, width = info.sample_shape
    if name == "convnet":
        # Under 16 pixels (8x8 digits) every stage after the single pooling
        # runs at 4x4, where a 256-wide stage costs 3/4 of the compute with
        # no better clusters or kNN on digits.
        # From 16 pixels on, the last convolution is unpadded: on 28x28
        # Fashion-MNIST (3x3 last map) that gains test ACC, while on 8x8
        # digits (4x4 last map) it lost ACC.
        small = min(height, width) < 16
        widths = (32, 64, 128) if small else (32, 64, 128, 256)
        module = ConvNet(channels, (height, width), widths=widths,
                         feature_dim=None if projection else 128,
                         last_padding=1 if small else 0)
        return module, module.feature_dim
    if name == "alexnet":
        if _alexnet_out_size(min(height, width)) < 1:
            raise ValueError(
                f"AlexNet needs images of at least {ALEXNET_MIN_SIZE}x"
                f"{ALEXNET_MIN_SIZE} pixels, got {height}x{width}; use "
                "backbone='convnet' or resize the images (image_size)."
            )
        module = AlexNetFeatures(channels)
        return module, module.feature_dim
    return _resnet(name, channels, (height, width))


class FeatureWhitening(nn.Module):
    """Whitening of features by the statistics of a fitted set: ``(x - mean) @ matrix``.

    After :meth:`fit`, the fitted features have zero mean and (nearly)
    identity covariance, so every direction in which they vary counts the
    same in a dot product or a distance: the few directions of largest
    variance no longer dominate cosine similarity. ``matrix`` is the ZCA
    whitening matrix ``C^{-1/2}`` of the Ledoit-Wolf covariance estimate
    ``C``, whose shrinkage keeps it well conditioned when there are few
    samples for the dimension. Before :meth:`fit` it is the identity map.

    Parameters
    ----------
    dim : int
        Feature dimension ``D``.

    Attributes
    ----------
    mean : torch.Tensor of shape (D,)
        Buffer: the fitted features' mean.
    matrix : torch.Tensor of shape (D, D)
        Buffer: the symmetric whitening matrix.
    """

    def __init__(self, dim):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.eye(dim))

    @torch.no_grad()
    def fit(self, features):
        """Set the buffers from ``features``, an ``(N, D)`` array.

        ``O(N D^2 + D^3)`` time, ``O(N D)`` extra memory. Directions with no
        variance at all are mapped to zero.

        Returns
        -------
        self : FeatureWhitening
        """
        # float64: the squares of large float32 features overflow.
        estimate = LedoitWolf(store_precision=False).fit(np.asarray(features, np.float64))
        variances, vectors = np.linalg.eigh(estimate.covariance_)
        keep = variances > np.finfo(np.float32).eps * max(float(variances.max()), 0.0)
        scale = np.zeros_like(variances)
        scale[keep] = 1.0 / np.sqrt(variances[keep])
        self.mean.copy_(torch.from_numpy(estimate.location_))
        self.matrix.copy_(torch.from_numpy((vectors * scale) @ vectors.T))
        return self

    def forward(self, x):
        """Whiten ``(B, D)`` features (computed in float32)."""
        return (x.float() - self.mean) @ self.matrix


class MultiHeadNet(nn.Module):
    """A backbone with ``T`` classification heads, optionally behind a projection.

    ``backbone -> [projection MLP] -> T heads``. With the defaults (no
    projection, no temperature) the heads are linear layers on the backbone
    features, as in the paper (section 3.5). With a ``temperature`` they are
    cosine classifiers: the logits are the cosine similarities of the
    L2-normalised embedding with each head's L2-normalised weight rows (one
    prototype per cluster), divided by the temperature, as in the SeLa-v2
    variant of Caron et al. (2020, SwAV, appendix). Either way the
    features used downstream are the backbone's, before any projection;
    ``whitening`` holds their whitening by the training statistics, set
    after training (:meth:`FeatureWhitening.fit`).

    Parameters
    ----------
    backbone : torch.nn.Module
        Maps inputs to ``(B, feature_dim)`` features.
    feature_dim : int
        Output dimension of ``backbone``.
    n_clusters : list of int or int
        Number of clusters of each head (an int means one head).
    projection : tuple of int or None, default=None
        Widths of an MLP between the features and the heads: a
        ``Linear - BatchNorm1d - ReLU`` block per width but the last, then a
        ``Linear`` layer to the last width (the embedding). None: the heads
        read the features.
    temperature : float or None, default=None
        Temperature of cosine heads; None for linear heads (with bias).

    Attributes
    ----------
    backbone : torch.nn.Module
        The feature extractor.
    projection : torch.nn.Module
        The projection MLP (an ``Identity`` without one).
    heads : torch.nn.ModuleList of torch.nn.Linear
        ``heads[t]`` maps embeddings to ``n_clusters[t]`` logits (cosine
        heads use only the weight).
    n_clusters : list of int
        Clusters per head.
    feature_dim : int
        Feature dimension.
    embed_dim : int
        Width of the embedding the heads read (``projection[-1]``, or
        ``feature_dim``).
    whitening : FeatureWhitening
        Whitening of the backbone features (the identity until fitted).
    temperature : float or None
        As given.
    """

    def __init__(self, backbone, feature_dim, n_clusters, *, projection=None, temperature=None):
        super().__init__()
        if isinstance(n_clusters, numbers.Integral):
            n_clusters = [n_clusters]
        n_clusters = list(n_clusters)
        if not n_clusters or not all(
            isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1
            for k in n_clusters
        ):
            raise ValueError(
                f"n_clusters must be a non-empty list of positive ints, got {n_clusters!r}."
            )
        self.backbone = backbone
        self.feature_dim = int(feature_dim)
        self.n_clusters = [int(k) for k in n_clusters]
        self.temperature = None if temperature is None else float(temperature)
        layers, width = [], self.feature_dim
        widths = list(projection or ())
        for i, out in enumerate(widths):
            if i < len(widths) - 1:
                # The bias would be cancelled by the batch norm's mean removal.
                layers += [nn.Linear(width, out, bias=False), nn.BatchNorm1d(out),
                           nn.ReLU(inplace=True)]
            else:
                layers.append(nn.Linear(width, out))
            width = out
        self.projection = nn.Sequential(*layers) if layers else nn.Identity()
        self.embed_dim = width
        cosine = self.temperature is not None
        self.heads = nn.ModuleList(
            nn.Linear(width, k, bias=not cosine) for k in self.n_clusters
        )
        self.whitening = FeatureWhitening(self.feature_dim)

    def embed(self, features):
        """Map backbone features to what the heads read.

        Parameters
        ----------
        features : torch.Tensor of shape (B, feature_dim)

        Returns
        -------
        embedding : torch.Tensor of shape (B, embed_dim)
            The projection's output, L2-normalised for cosine heads.
        """
        z = self.projection(features)
        if self.temperature is not None:
            z = nn.functional.normalize(z, dim=1)
        return z

    def head_logits(self, t, embedding):
        """Logits of head ``t`` for embeddings from :meth:`embed`.

        Parameters
        ----------
        t : int
            Head index.
        embedding : torch.Tensor of shape (B, embed_dim)

        Returns
        -------
        logits : torch.Tensor of shape (B, n_clusters[t])
        """
        head = self.heads[t]
        if self.temperature is None:
            return head(embedding)
        weight = nn.functional.normalize(head.weight, dim=1)
        return nn.functional.linear(embedding, weight) / self.temperature

    def forward(self, x):
        """Compute the logits of every head.

        Parameters
        ----------
        x : torch.Tensor of shape (B, ...)
            Input batch.

        Returns
        -------
        logits : tuple of torch.Tensor
            ``logits[t]`` has shape ``(B, n_clusters[t])``. A tuple, so that
            skorch passes it through to the criterion unchanged.
        """
        return self.features_and_logits(x)[1]

    def features_and_logits(self, x):
        """Compute the backbone features and every head's logits in one pass.

        Parameters
        ----------
        x : torch.Tensor of shape (B, ...)
            Input batch.

        Returns
        -------
        features : torch.Tensor of shape (B, feature_dim)
        logits : tuple of torch.Tensor
            What :meth:`forward` returns.
        """
        features = self.backbone(x)
        z = self.embed(features)
        return features, tuple(self.head_logits(t, z) for t in range(len(self.heads)))

    def features(self, x):
        """Compute the backbone features.

        Parameters
        ----------
        x : torch.Tensor of shape (B, ...)
            Input batch.

        Returns
        -------
        features : torch.Tensor of shape (B, feature_dim)
        """
        return self.backbone(x)
