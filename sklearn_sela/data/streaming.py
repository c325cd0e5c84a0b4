"""Dataset input: read the items of a map-style dataset one by one, on access.

:func:`from_dataset` is the dataset branch of
:func:`~sklearn_sela.data.as_dataset` (``ImageFolder``, skorch's
``SliceDataset``, ``TensorDataset``, :class:`~sklearn_sela.data.ImageFiles`,
...): PIL images, tensors and arrays become float32 tensors of one shape.
:class:`SkipUnreadable` keeps the readable samples of a dataset, and
:func:`raise_read_error` names the sample (and file) behind an error raised
reading one.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import os

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Subset
from torchvision.transforms.v2 import functional as TF

from .base import CHANNEL_COUNTS, InputInfo, check_expected, resize_images
from .image_files import PIL_GRAY_MODES

__all__ = ["SkipUnreadable"]

_PIL_ALPHA_MODES = ("RGBA", "RGBa", "PA")
_PIL_MODE_FOR_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}


def _is_pil(x):
    try:
        from PIL import Image  # a hard dependency of torchvision
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def _pil_channels(img):
    if img.mode in PIL_GRAY_MODES:
        return 1
    if img.mode in _PIL_ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return 4
    return 3


def _pil_to_tensor(img, channels, hw):
    from PIL import Image

    if channels == 1 and (img.mode.startswith("I") or img.mode == "F"):
        # High bit-depth grayscale: converting to "L" would clip, not scale,
        # and PIL resizes these modes poorly, so go through a tensor.
        arr = np.asarray(img, dtype=np.float32)
        if img.mode != "F":
            arr = arr / 65535.0
        t = torch.from_numpy(np.ascontiguousarray(arr))[None]
        return t if hw is None else resize_images(t[None], hw)[0]
    mode = _PIL_MODE_FOR_CHANNELS[channels]
    if img.mode != mode:
        img = img.convert(mode)
    if hw is not None and img.size != (hw[1], hw[0]):
        # PIL's bilinear filter widens its support when downscaling, so this
        # is antialiased.
        img = img.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    return TF.pil_to_tensor(img).to(torch.float32).div_(255.0)


def _to_float_tensor(x, where):
    """Convert an array/tensor item to a float32 tensor; None if not numeric."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise ValueError(
                f"{where} is a numpy array of dtype {x.dtype}; numeric data is required."
            )
        scale = x.dtype == np.uint8
        t = torch.from_numpy(np.array(x, dtype=np.float32))
    else:
        if x.is_complex():
            raise ValueError(f"{where} is a complex tensor; complex data not supported.")
        scale = x.dtype == torch.uint8
        # clone: items may alias the dataset's storage.
        t = x.detach().to("cpu", torch.float32, copy=True)
        if type(t) is not torch.Tensor:  # tv_tensors.Image and friends
            t = t.as_subclass(torch.Tensor)
    if scale:
        t.div_(255.0)
    elif not torch.isfinite(t).all():
        bad = "NaN" if torch.isnan(t).any() else "infinity"
        raise ValueError(f"Input X contains {bad} ({where}).")
    return t


def _item_layout(shape, is_tensor, where):
    """Channel layout of one dataset item of ndim 3."""
    a, c = shape[0], shape[2]
    if a in CHANNEL_COUNTS and (c not in CHANNEL_COUNTS or is_tensor):
        # torch tensors follow torchvision's CHW convention when ambiguous.
        return "chw"
    if c in CHANNEL_COUNTS:
        return "hwc"
    raise ValueError(
        f"Cannot find the channel axis of {where} with shape {tuple(shape)}: "
        "expected (channels, height, width) or (height, width, channels) with "
        "1, 3 or 4 channels."
    )


def _sample_path(dataset, index):
    """The file behind sample ``index``, when the dataset lists its files.

    Reads ``samples`` or ``imgs`` (torchvision's ``ImageFolder``,
    ``(path, target)`` pairs) or ``paths``
    (:class:`~sklearn_sela.data.ImageFiles`), through
    :class:`torch.utils.data.Subset` wrappers. None when there is no such
    list.
    """
    try:
        while isinstance(dataset, Subset):
            dataset, index = dataset.dataset, dataset.indices[index]
        for name in ("samples", "imgs", "paths"):
            entries = getattr(dataset, name, None)
            if entries is None:
                continue
            entry = entries[index]
            if isinstance(entry, (tuple, list)) and entry:
                entry = entry[0]
            if isinstance(entry, (str, os.PathLike)):
                return os.fspath(entry)
    except Exception:  # only a courtesy for the error message
        pass
    return None


class SkipUnreadable(Dataset):
    """The samples of a dataset that can be read; the others listed.

    Reads every sample of ``dataset`` once, as ``sela fit`` checks an image
    folder, and serves those that could be read, so that a fit on a
    collection with a few damaged files (an ``ImageFolder`` with a
    truncated image) need not stop at the first one. Costs one full pass
    over the data.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        A map-style dataset, e.g. :class:`torchvision.datasets.ImageFolder`.

    Attributes
    ----------
    indices : list of int
        Indices into ``dataset`` of the samples kept, in order.
    skipped : list of tuple
        ``(index, path, reason)`` of each sample that could not be read;
        ``path`` is its file where the dataset lists files (``samples``,
        ``imgs`` or ``paths``), else None.

    Examples
    --------
    >>> from sklearn_sela.data import SkipUnreadable
    >>> readable = SkipUnreadable([[0.0, 1.0], [1.0, 0.0]])
    >>> len(readable), readable.skipped
    (2, [])
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.indices, self.skipped = [], []
        for index in range(len(dataset)):
            try:
                dataset[index]
            except Exception as exc:  # any failure to read is the file's
                reason = " ".join(str(exc).split()) or type(exc).__name__
                self.skipped.append((index, _sample_path(dataset, index), reason))
            else:
                self.indices.append(index)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[index]]


def raise_read_error(exc, dataset, index):
    """Re-raise ``exc``, raised reading sample ``index`` of ``dataset``.

    The new error names the sample (and its file, where the dataset lists
    its files as ``samples``, ``imgs`` or ``paths``, through
    :class:`torch.utils.data.Subset` wrappers) and is of the same type,
    chained to the original (``raise ... from``), which a ``PIL`` error
    otherwise only reports many frames deep. Where that type cannot be built
    from a message, the original is re-raised with the same text as a note.
    Errors raised this way pass through unchanged when a dataset over this
    one re-raises them.

    Parameters
    ----------
    exc : Exception
        The error raised reading the sample.
    dataset : torch.utils.data.Dataset
        The dataset that was read.
    index : int
        Index of the sample in ``dataset``.

    Raises
    ------
    Exception
        Always: a new error of the type of ``exc`` chained to it, or ``exc``
        itself.
    """
    if getattr(exc, "_sela_sample_error", False):
        raise exc
    path = _sample_path(dataset, index)
    detail = str(exc) or type(exc).__name__
    where = f"sample {index}"
    if path is not None and path not in detail:
        where += f" ({path})"
    message = f"Could not read {where} of the dataset: {detail}"
    try:
        new = type(exc)(message)
        if message not in str(new):
            new = None
    except Exception:  # a constructor that wants other arguments
        new = None
    if new is None:
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(message)
        new = exc
    try:
        new._sela_sample_error = True
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        pass
    if new is exc:
        raise exc
    raise new from exc


def _extract_sample(item, index):
    where = f"item {index} of the dataset"
    if isinstance(item, (tuple, list)):
        if len(item) == 0:
            raise ValueError(f"{where.capitalize()} is an empty {type(item).__name__}.")
        item = item[0]  # (sample, target) convention of torchvision datasets
    elif isinstance(item, dict):
        for key in ("image", "img", "pixel_values", "x", "X", "input"):
            if key in item:
                item = item[key]
                break
        else:
            raise ValueError(
                f"{where.capitalize()} is a dict without an 'image', 'img', "
                "'pixel_values', 'x' or 'input' key."
            )
    if _is_pil(item) or isinstance(item, (np.ndarray, torch.Tensor)):
        return item
    raise ValueError(
        f"{where.capitalize()} is of type {type(item).__name__}; expected a PIL "
        "image, a torch tensor or a numpy array, optionally as the first "
        "element of a (sample, target) tuple."
    )


class _StreamingDataset(Dataset):
    """Convert the items of a map-style dataset one by one, on access.

    Parameters
    ----------
    dataset : indexable with ``len``
        The user's dataset (``ImageFolder``, ``SliceDataset``, ...).
    info : InputInfo
        Shape description of the produced items.
    resize : bool
        Whether images of another size are resized to ``info.sample_shape``
        (otherwise they raise ``ValueError``).
    """

    def __init__(self, dataset, info, resize):
        self.dataset = dataset
        self.info = info
        self.resize = resize

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        index = int(index)
        try:
            item = self.dataset[index]
        except Exception as exc:
            raise_read_error(exc, self.dataset, index)
        raw = _extract_sample(item, index)
        where = f"item {index} of the dataset"
        if self.info.kind == "tabular":
            x = _to_float_tensor(raw, where) if not _is_pil(raw) else None
            if x is None or x.ndim != 1:
                raise ValueError(
                    f"{where.capitalize()} is not a 1-D feature vector like item 0."
                )
            if x.shape != self.info.sample_shape:
                raise ValueError(
                    f"{where.capitalize()} has {x.shape[0]} features, but item 0 "
                    f"has {self.info.sample_shape[0]}."
                )
            return x
        c, h, w = self.info.sample_shape
        target_hw = (h, w) if self.resize else None
        if _is_pil(raw):
            if not self.resize and raw.size != (w, h):
                self._size_error(where, raw.size[1], raw.size[0])
            try:
                # A lazily opened image is only decoded here.
                return _pil_to_tensor(raw, c, target_hw)
            except Exception as exc:
                raise_read_error(exc, self.dataset, index)
        x = _to_float_tensor(raw, where)
        if x.ndim == 2:
            x = x[None]
        elif x.ndim == 3:
            if _item_layout(x.shape, isinstance(raw, torch.Tensor), where) == "hwc":
                x = x.permute(2, 0, 1)
        else:
            raise ValueError(
                f"{where.capitalize()} has {x.ndim} dimensions; images must be "
                "(height, width) or 3-D with a channel axis."
            )
        if x.shape[0] != c:
            raise ValueError(
                f"{where.capitalize()} has {x.shape[0]} channels, but the "
                f"dataset's images have {c} channels."
            )
        if tuple(x.shape[1:]) != (h, w):
            if not self.resize:
                self._size_error(where, x.shape[1], x.shape[2])
            x = resize_images(x[None], (h, w))[0]
        return x.contiguous()

    def _size_error(self, where, h, w):
        _, eh, ew = self.info.sample_shape
        raise ValueError(
            f"{where.capitalize()} has size {h}x{w} (height x width), but the "
            f"first image has size {eh}x{ew}. All images must share one size; "
            "pass image_size=(height, width) to resize them."
        )

    def get_batch(self, indices):
        """Return the samples at ``indices`` stacked in one float32 tensor.

        Parameters
        ----------
        indices : sequence of int, slice or range
            Sample positions.

        Returns
        -------
        batch : torch.Tensor of shape (len(indices), *info.sample_shape)
        """
        if isinstance(indices, slice):
            indices = range(*indices.indices(len(self)))
        return torch.stack([self[i] for i in indices])


def from_dataset(X, expected=None, image_size=None, estimator_name=None):
    """Validate a map-style dataset and wrap it in a converting dataset.

    The dataset branch of :func:`~sklearn_sela.data.as_dataset`, which
    documents the parameters and the result; ``image_size`` must already
    be validated (None or a pair of ints).

    Parameters
    ----------
    X : torch.utils.data.Dataset or indexable with ``len``
        The user's dataset; its item 0 is read to find the kind and shape.
    expected : InputInfo, default=None
        The description of the fitted input, or None.
    image_size : (int, int), default=None
        Output ``(height, width)`` of images, or None.
    estimator_name : str, default=None
        Name of the estimator in the messages about ``expected``.

    Returns
    -------
    dataset : torch.utils.data.Dataset
        Converts the items of ``X`` to float32 tensors on access.
    info : InputInfo
        Kind, per-sample shape and number of samples.
    """
    if isinstance(X, IterableDataset):
        raise ValueError(
            "Iterable-style datasets are not supported: samples must be "
            "addressable by index (a map-style dataset with __getitem__ and "
            "__len__)."
        )
    try:
        n_samples = len(X)
    except TypeError as exc:
        raise ValueError(
            f"The dataset of type {type(X).__name__} has no length; a map-style "
            "dataset with __len__ is required."
        ) from exc
    if n_samples == 0:
        raise ValueError(
            "Found array with 0 sample(s) (an empty dataset) while a minimum of "
            "1 is required."
        )
    try:
        first = X[0]
    except Exception as exc:
        raise_read_error(exc, X, 0)
    first = _extract_sample(first, 0)
    if _is_pil(first):
        kind = "image"
        channels = _pil_channels(first)
        hw = (first.size[1], first.size[0])
    else:
        arr = _to_float_tensor(first, "item 0 of the dataset")
        if arr.ndim == 1:
            kind = "tabular"
            if arr.shape[0] == 0:
                raise ValueError("Item 0 of the dataset has 0 features.")
        elif arr.ndim in (2, 3):
            kind = "image"
            if arr.ndim == 2:
                channels, hw = 1, tuple(arr.shape)
            elif _item_layout(arr.shape, isinstance(first, torch.Tensor), "item 0") == "chw":
                channels, hw = arr.shape[0], tuple(arr.shape[1:])
            else:
                channels, hw = arr.shape[2], tuple(arr.shape[:2])
            if min(hw) == 0:
                raise ValueError(
                    f"Item 0 of the dataset is an empty image of shape {tuple(arr.shape)}."
                )
        else:
            raise ValueError(
                f"Item 0 of the dataset has {arr.ndim} dimensions; expected a 1-D "
                "feature vector or a 2-D/3-D image."
            )

    if kind == "tabular":
        if image_size is not None:
            raise ValueError(
                "image_size was given but the dataset yields 1-D feature vectors; "
                "image_size only applies to images."
            )
        info = InputInfo("tabular", (arr.shape[0],), n_samples)
        check_expected(info, expected, estimator_name)
        ds = _StreamingDataset(X, info, resize=False)
    else:
        resize = False
        if image_size is not None:
            hw, resize = tuple(image_size), True
        elif expected is not None and expected.kind == "image":
            # Predicting on a folder of photos: match the fitted size.
            hw, resize = tuple(expected.sample_shape[1:]), True
        info = InputInfo("image", (channels,) + tuple(hw), n_samples)
        check_expected(info, expected, estimator_name)
        ds = _StreamingDataset(X, info, resize=resize)
    ds[0]  # fail now, not inside a DataLoader worker, if item 0 is unusable
    return ds, info

