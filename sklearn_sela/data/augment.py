"""Batched random augmentation and the training dataset of SeLa.

:class:`RandomGeometric` and :class:`RandomColor` re-implement the
torchvision augmentations SeLa uses (Asano et al., ICLR 2020, section 3.4)
so that they work on whole ``(B, C, H, W)`` batches, with per-sample random
parameters, as well as on single images; :class:`BatchCompose` chains them.
:class:`AugmentedDataset` applies a transform and returns the sample index
alongside each sample, so that the training loop can look up the current
pseudo-label of every sample of a batch. The presets are in
:mod:`sklearn_sela.data.presets`. :class:`DeviceBatches` feeds a GPU: it
copies the plain batches of a DataLoader to the device and augments them
there (:func:`split_batch_transform` separates a dataset from its batched
augmentation).
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import math
import queue
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .streaming import raise_read_error

__all__ = [
    "RandomGeometric",
    "RandomColor",
    "BatchCompose",
    "AugmentedDataset",
    "DeviceBatches",
    "split_batch_transform",
]

# ITU-R 601-2 luma weights, the ones torchvision uses for grayscale.
_LUMA = (0.299, 0.587, 0.114)
# Cross-product matrix of the gray axis (1, 1, 1): hue shifts are rotations
# about that axis (Rodrigues' formula), which the HSV hexcone projects along.
_GRAY_AXIS_CROSS = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / math.sqrt(3)


def _params_to(array, like):
    """The numpy parameters ``array`` as a tensor on ``like``'s device and dtype.

    The parameters are drawn on the host whatever the device, so that the
    random stream and the distribution do not depend on it. A plain copy to
    a GPU waits for the work queued there; from pinned memory it does not.
    """
    params = torch.from_numpy(array)
    if like.device.type == "cuda":
        params = params.pin_memory().to(like.device, non_blocking=True)
    return params.to(like.device, like.dtype)


def _as_batch(x):
    if x.ndim == 3:
        return x[None], True
    if x.ndim == 4:
        return x, False
    raise ValueError(
        f"Expected a (C, H, W) image or a (B, C, H, W) batch, got shape {tuple(x.shape)}."
    )


class RandomGeometric:
    """Random resized crop, horizontal flip and affine jitter in one resampling.

    Every sample gets its own random parameters; a ``(B, C, H, W)`` batch is
    transformed with a single :func:`torch.nn.functional.grid_sample` call,
    which is much cheaper per sample than chaining torchvision transforms.
    The output has the input's shape, dtype and device.

    Parameters
    ----------
    crop_scale : (float, float) or None, default=None
        Range of the crop area as a fraction of the image area, as in
        :class:`torchvision.transforms.v2.RandomResizedCrop`; ``None`` skips
        cropping.
    crop_ratio : (float, float), default=(3/4, 4/3)
        Range of the crop aspect ratio (width / height), sampled log-uniformly.
    hflip : float, default=0.0
        Probability of a horizontal flip.
    degrees : float, default=0.0
        Rotations are drawn uniformly from ``[-degrees, degrees]``.
    translate : float, default=0.0
        Shifts are drawn uniformly from ``[-translate, translate]`` times the
        image width/height.
    scale : (float, float) or None, default=None
        Range of the zoom factor of the affine jitter.

    Notes
    -----
    Sampling is bilinear with zero padding (as ``RandomAffine(fill=0)``);
    crops stay inside the image. Crop boxes are continuous rather than
    rounded to whole pixels.
    """

    supports_batch = True

    def __init__(self, crop_scale=None, crop_ratio=(3 / 4, 4 / 3), hflip=0.0,
                 degrees=0.0, translate=0.0, scale=None):
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.hflip = hflip
        self.degrees = degrees
        self.translate = translate
        self.scale = scale

    def _crop_fractions(self, u_area, u_ratio, aspect):
        # aspect = H / W; returns the crop width and height as fractions of
        # the image's. Ten candidates per sample and the first one that fits
        # is kept, like torchvision's ten tries; if none fits, the full image.
        lo, hi = self.crop_scale
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        area = u_area * (hi - lo) + lo
        ratio = np.exp(u_ratio * (log_hi - log_lo) + log_lo)
        w = np.sqrt(area * ratio * aspect)
        h = np.sqrt(area / ratio / aspect)
        ok = (w <= 1) & (h <= 1)
        first = ok.argmax(1)
        rows = np.arange(len(first))
        found = ok[rows, first]
        return np.where(found, w[rows, first], 1.0), np.where(found, h[rows, first], 1.0)

    def sample_theta(self, n, height, width):
        """Draw the affine sampling matrices of ``n`` samples.

        Parameters
        ----------
        n : int
            Number of samples.
        height, width : int
            Image size, needed to keep rotations rigid and crops in shape.

        Returns
        -------
        theta : ndarray of shape (n, 2, 3)
            Matrices for :func:`torch.nn.functional.affine_grid`.
        """
        # Random numbers come from torch's generator (seeded per DataLoader
        # worker, and by torch.manual_seed); the arithmetic runs in numpy,
        # whose per-call overhead on tiny arrays is a fraction of torch's:
        # this is most of the cost for single images.
        u = torch.rand(n, 27, dtype=torch.float64).numpy()
        # theta maps output coordinates to input coordinates, both in
        # grid_sample's normalised [-1, 1] frame.
        a11, a12, tx = np.ones(n), np.zeros(n), np.zeros(n)
        a21, a22, ty = np.zeros(n), np.ones(n), np.zeros(n)
        if self.degrees or self.scale is not None or self.translate:
            angle = (u[:, 0] * 2 - 1) * (self.degrees * math.pi / 180)
            zoom = 1.0
            if self.scale is not None:
                zoom = u[:, 1] * (self.scale[1] - self.scale[0]) + self.scale[0]
            cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
            # Inverse rotation in pixel units, expressed in normalised units
            # (x_n = 2 x / W): keeps rotations rigid on non-square images.
            a11, a12 = cos, sin * (height / width)
            a21, a22 = -sin * (width / height), cos
            shift_x = (u[:, 2] * 2 - 1) * (2 * self.translate)
            shift_y = (u[:, 3] * 2 - 1) * (2 * self.translate)
            tx = -(a11 * shift_x + a12 * shift_y)
            ty = -(a21 * shift_x + a22 * shift_y)
        if self.crop_scale is not None:
            fw, fh = self._crop_fractions(u[:, 7:17], u[:, 17:27], height / width)
            cx = (u[:, 4] * 2 - 1) * (1 - fw)
            cy = (u[:, 5] * 2 - 1) * (1 - fh)
            # crop(affine(x)): scale the affine rows into the crop window.
            a11, a12, tx = a11 * fw, a12 * fh, a11 * cx + a12 * cy + tx
            a21, a22, ty = a21 * fw, a22 * fh, a21 * cx + a22 * cy + ty
        if self.hflip:
            flip = np.where(u[:, 6] < self.hflip, -1.0, 1.0)
            a11, a21 = a11 * flip, a21 * flip
        return np.stack([a11, a12, tx, a21, a22, ty], 1).reshape(n, 2, 3)

    def __call__(self, x):
        """Transform one ``(C, H, W)`` image or a ``(B, C, H, W)`` batch.

        Parameters
        ----------
        x : torch.Tensor
            Float image(s).

        Returns
        -------
        out : torch.Tensor
            Transformed image(s), same shape as ``x``.
        """
        batch, single = _as_batch(x)
        n, _, height, width = batch.shape
        theta = _params_to(self.sample_theta(n, height, width), batch)
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        return out[0] if single else out

    def __repr__(self):
        return (f"{type(self).__name__}(crop_scale={self.crop_scale}, crop_ratio="
                f"{self.crop_ratio}, hflip={self.hflip}, degrees={self.degrees}, "
                f"translate={self.translate}, scale={self.scale})")


class RandomColor:
    """Colour jitter and random grayscale, vectorised over a batch.

    Each sample, with probability ``p``, gets brightness, contrast,
    saturation and hue factors drawn as in
    :class:`torchvision.transforms.v2.ColorJitter`, then, with probability
    ``grayscale_p``, is converted to grayscale (kept with its channel
    count). Only the first three channels are jittered (an alpha channel is
    left alone); single-channel images only get brightness and contrast.

    Parameters
    ----------
    brightness, contrast, saturation : float, default=0.4
        Factors are drawn uniformly from ``[1 - v, 1 + v]``.
    hue : float, default=0.1
        Hue shift drawn uniformly from ``[-hue, hue]`` (fraction of a turn).
    p : float, default=0.8
        Probability of applying the jitter.
    grayscale_p : float, default=0.2
        Probability of converting to grayscale.

    Notes
    -----
    The operations are applied in a fixed order (torchvision uses a random
    one) and, being affine in the pixel values, are composed into one
    per-sample matrix, with a single clamp to [0, 1] at the end instead of
    one after each step. The hue shift is a rotation about the gray axis of
    RGB space: exact for primary colours at multiples of 1/3 turn, a close
    and far cheaper approximation of torchvision's HSV round trip otherwise
    (mean absolute deviation 0.065 from it at a 0.1 turn on uniform noise
    images, where the shift itself moves pixels by 0.10).
    Values are assumed to lie in [0, 1] (as produced for ``uint8`` input);
    a sample outside that range is rescaled to it for the jitter and mapped
    back, so standardised data is not clipped.
    """

    supports_batch = True

    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                 p=0.8, grayscale_p=0.2):
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.p = p
        self.grayscale_p = grayscale_p

    def __call__(self, x):
        """Transform one ``(C, H, W)`` image or a ``(B, C, H, W)`` batch.

        Parameters
        ----------
        x : torch.Tensor
            Float image(s) with 1, 3 or 4 channels.

        Returns
        -------
        out : torch.Tensor
            Transformed image(s), same shape as ``x``.
        """
        batch, single = _as_batch(x)
        n, c = batch.shape[:2]
        k = 3 if c >= 3 else 1
        mat, scale, shift = self.sample_params(n, k)
        img = batch[:, :k]
        flat = img.reshape(n, k, -1)
        lo = hi = None
        # Testing the range on a GPU would wait for it; there every batch is
        # mapped, which is exact for samples in [0, 1] (lo = 0, hi = 1).
        if img.numel() and (
            batch.device.type != "cpu" or img.min() < 0 or img.max() > 1
        ):
            # Jitter clamps to [0, 1]; map out-of-range samples into it and
            # back, so standardised data keeps its scale.
            lo = flat.amin(dim=(1, 2)).clamp(max=0).view(n, 1, 1)
            hi = flat.amax(dim=(1, 2)).clamp(min=1).view(n, 1, 1)
            flat = (flat - lo) / (hi - lo)
        mean = flat.mean(2)
        if k == 3:
            mean = mean @ _params_to(np.asarray(_LUMA), batch)
        else:
            mean = mean[:, 0]
        mat = _params_to(mat, batch)
        offset = (_params_to(shift, batch) * mean).view(n, 1, 1)
        out = torch.baddbmm(offset, mat, flat).clamp_(0, 1)
        if lo is not None:
            out = out * (hi - lo) + lo
        out = out.view_as(img)
        if c > k:
            out = torch.cat([out, batch[:, k:]], 1)
        return out[0] if single else out

    def sample_params(self, n, k):
        """Draw the per-sample colour transforms.

        Brightness, contrast, saturation, hue and grayscale are all affine in
        the pixel values, so they fold into one ``k x k`` matrix and an offset
        proportional to the image's mean luma: a single pass over the pixels
        instead of one per operation.

        Parameters
        ----------
        n : int
            Number of samples.
        k : {1, 3}
            Number of jittered channels.

        Returns
        -------
        mat : ndarray of shape (n, k, k)
            Linear part.
        scale : ndarray of shape (n,)
            Brightness times contrast factor (already folded into ``mat``).
        shift : ndarray of shape (n,)
            Offset per unit of mean luma.
        """
        # torch's generator (seeded per DataLoader worker), numpy arithmetic
        # (much lower per-call overhead on tiny arrays than torch).
        u = torch.rand(n, 6, dtype=torch.float64).numpy()
        apply = u[:, 0] < self.p

        def factor(col, v):
            # 1 + v * U(-1, 1) where the jitter applies, exactly 1 elsewhere.
            return np.where(apply, 1 + v * (u[:, col] * 2 - 1), 1.0)

        b = factor(1, self.brightness)
        ct = factor(2, self.contrast)
        if k == 3:
            luma = np.asarray(_LUMA)
            to_gray = np.outer(np.ones(3), luma)
            s = factor(3, self.saturation)[:, None, None]
            mat = s * np.eye(3) + (1 - s) * to_gray
            if self.hue:
                angle = np.where(apply, self.hue * (u[:, 4] * 2 - 1), 0.0) * (2 * math.pi)
                cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
                rot = (cos * np.eye(3) + (1 - cos) / 3 * np.ones((3, 3))
                       + sin * _GRAY_AXIS_CROSS)
                mat = rot @ mat
            if self.grayscale_p:
                gray_now = (u[:, 5] < self.grayscale_p)[:, None, None]
                mat = np.where(gray_now, to_gray @ mat, mat)
        else:
            mat = np.ones((n, 1, 1))
        scale = b * ct
        # Gray pixels are fixed points of saturation, hue and grayscale, so
        # the contrast offset passes through them unchanged.
        return scale[:, None, None] * mat, scale, (1 - ct) * b

    def __repr__(self):
        return (f"{type(self).__name__}(brightness={self.brightness}, contrast="
                f"{self.contrast}, saturation={self.saturation}, hue={self.hue}, "
                f"p={self.p}, grayscale_p={self.grayscale_p})")


class BatchCompose:
    """Chain transforms that accept both single images and batches.

    Parameters
    ----------
    transforms : list of callable
        Each maps a ``(C, H, W)`` or ``(B, C, H, W)`` tensor to one of the
        same shape and has ``supports_batch = True``.
    """

    supports_batch = True

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        """Apply the transforms in order.

        Parameters
        ----------
        x : torch.Tensor
            A ``(C, H, W)`` image or a ``(B, C, H, W)`` batch.

        Returns
        -------
        out : torch.Tensor
            Transformed input, same shape.
        """
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self):
        inner = ",\n    ".join(repr(t) for t in self.transforms)
        return f"{type(self).__name__}([\n    {inner}\n])"



class AugmentedDataset(Dataset):
    """Dataset of ``(augmented sample, index)`` pairs for self-labelling.

    The index lets the training loop look up each sample's current
    pseudo-label, which changes whenever the labels are re-optimised.

    Parameters
    ----------
    base : torch.utils.data.Dataset
        Dataset whose items are float tensors, typically from
        :func:`as_dataset`.
    transform : callable or None, default=None
        Random transform applied to each sample. If it has a true
        ``supports_batch`` attribute (as the presets of
        :func:`default_augmentation` do), batched fetches transform the
        whole batch in one call, with per-sample random parameters.

    Notes
    -----
    An item of ``base`` that cannot be read raises an error of the same
    type naming its index (and file, for datasets that list their files,
    as :func:`as_dataset` does), chained to the original one.
    """

    def __init__(self, base, transform=None):
        self.base = base
        self.transform = transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        i = int(i)
        try:
            x = self.base[i]
        except Exception as exc:
            raise_read_error(exc, self.base, i)
        if self.transform is not None:
            x = self.transform(x)
        return x, i

    def _read(self, indices):
        xs = []
        try:
            for i in indices:
                xs.append(self.base[i])
        except Exception as exc:
            raise_read_error(exc, self.base, i)
        return xs

    def __getitems__(self, indices):
        # torch DataLoader's batched-fetch protocol (also forwarded by
        # torch.utils.data.Subset); default_collate stacks the pairs.
        indices = [int(i) for i in indices]
        get_batch = getattr(self.base, "get_batch", None)
        if self.transform is None or getattr(self.transform, "supports_batch", False):
            if get_batch is not None:
                batch = get_batch(indices)
            else:
                batch = torch.stack(self._read(indices))
            if self.transform is not None:
                batch = self.transform(batch)
            xs = batch.unbind(0)
        else:
            xs = [self.transform(x) for x in self._read(indices)]
        return list(zip(xs, indices))


def split_batch_transform(dataset):
    """Separate a dataset from its batched augmentation.

    Parameters
    ----------
    dataset : Dataset
        Typically an :class:`AugmentedDataset`, or a
        :class:`torch.utils.data.Subset` of one.

    Returns
    -------
    plain : Dataset
        ``dataset`` yielding the same ``(sample, index)`` pairs without the
        augmentation, or ``dataset`` itself.
    transform : callable or None
        The augmentation, when it transforms whole batches
        (``supports_batch``); None, with ``dataset`` unchanged, otherwise: a
        per-sample transform stays where the samples are read.
    """
    inner = dataset.dataset if isinstance(dataset, Subset) else dataset
    transform = getattr(inner, "transform", None)
    if not isinstance(inner, AugmentedDataset) or not getattr(transform, "supports_batch", False):
        return dataset, None
    plain = AugmentedDataset(inner.base, None)
    if isinstance(dataset, Subset):
        plain = Subset(plain, dataset.indices)
    return plain, transform


_END = object()


def _read_ahead(batches, device):
    """Yield the items of the iterator ``batches``, reading the next one in
    a thread while the caller works on the current one.

    The first item is read by the caller: a shuffling sampler draws its seed
    from torch's global generator then, as without the thread.
    """
    first = next(batches, _END)
    if first is _END:
        return
    ready = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(entry):
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def read():
        if device.type == "cuda":
            # Pinned memory is allocated through the current device: the
            # caller's GPU, not GPU 0, under torch.distributed.
            torch.cuda.set_device(device)
        try:
            for item in batches:
                if not put((item, None)):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            put((None, exc))
            return
        put((_END, None))

    reader = threading.Thread(target=read, name="sela-read-ahead", daemon=True)
    reader.start()
    try:
        yield first
        while True:
            item, exc = ready.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        reader.join()


class DeviceBatches:
    """The ``(x, index)`` batches of a DataLoader, on a device and augmented there.

    Each batch is copied to ``device`` (without waiting for it when the
    loader pins memory, ``pin_memory=True``) and ``transform`` is applied
    there to the whole batch: on a GPU, the augmentation costs the host
    nothing but the drawing of its parameters. A loader without worker
    processes is read one batch ahead in a thread, so that the next batch is
    read and pinned while the device trains on the current one.

    Parameters
    ----------
    loader : iterable of (Tensor, Tensor)
        Typically a :class:`torch.utils.data.DataLoader` of the plain
        dataset from :func:`split_batch_transform`.
    device : str or torch.device
        Where the batches go.
    transform : callable or None, default=None
        Batched augmentation (``supports_batch``), such as the presets of
        :func:`~sklearn_sela.data.default_augmentation`.

    Notes
    -----
    The presets draw their random parameters on the host, from torch's
    global generator, in the calling process: the same numbers, in the same
    order, as :class:`AugmentedDataset` with ``num_workers=0`` on the CPU.
    ``torch.manual_seed`` thus fixes the augmentation, and its distribution
    does not depend on the device. The items of the dataset are read in the
    thread: they must not draw from that generator (those of
    :func:`~sklearn_sela.data.as_dataset` draw nothing).
    """

    def __init__(self, loader, device, transform=None):
        self.loader = loader
        self.device = device
        self.transform = transform

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        device = torch.device(self.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        batches = iter(self.loader)
        if getattr(self.loader, "num_workers", 0) == 0:
            batches = _read_ahead(batches, device)
        try:
            for x, index in batches:
                x = x.to(device, non_blocking=True)
                if self.transform is not None:
                    x = self.transform(x)
                yield x, index
        finally:
            # Stops the reading thread when the caller stops early.
            getattr(batches, "close", lambda: None)()
