"""Input handling: turn arrays, tensors and torch datasets into sample streams.

:func:`as_dataset` validates the input given to an estimator (in the spirit of
:func:`sklearn.utils.check_array`) and wraps it in a lazy
:class:`torch.utils.data.Dataset` whose items are float32 tensors of a fixed
shape, without any target.  :class:`AugmentedDataset` adds the random data
augmentation of SeLa (Asano et al., ICLR 2020, section 3.4) and returns the
sample index alongside each sample, so that the training loop can look up the
current pseudo-label of every sample of a batch.

Layout rules for array input
----------------------------
========================  =====================================================
shape of ``X``            interpretation
========================  =====================================================
``(N, D)``                tabular data with ``D`` features
``(N, H, W)``             grayscale images, one channel
``(N, A, B, C)``          if ``A`` is in {1, 3, 4} and ``C`` is not:
                          channels-first ``(N, C, H, W)``; otherwise, if ``C``
                          is in {1, 3, 4}: channels-last ``(N, H, W, C)``
========================  =====================================================

A 4-D shape such as ``(N, 3, 3, 3)`` or ``(N, 1, 28, 1)`` fits both layouts.
It is read as channels-last, unless ``expected`` (the :class:`InputInfo` seen
during ``fit``) is given and only the channels-first reading matches it.

The items of a dataset follow the same rule per item, with one difference
for ambiguous 3-D items: torch tensors are read channels-first (torchvision's
``ToTensor`` convention), numpy arrays channels-last (PIL's convention).
PIL images are converted to their natural channel count (1 for grayscale
modes, 4 for modes with alpha, 3 otherwise) and later images are converted
to the mode of the first.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import math
import numbers
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, IterableDataset, Subset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .image_files import _PIL_GRAY_MODES

__all__ = [
    "InputInfo",
    "as_dataset",
    "default_augmentation",
    "AugmentedDataset",
    "SkipUnreadable",
    "RandomGeometric",
    "RandomColor",
    "BatchCompose",
]

# Name used in scikit-learn style error messages about fitted input.
_ESTIMATOR_NAME = "SelfLabelClusterer"
_CHANNELS = (1, 3, 4)
_KINDS = ("tabular", "image")
# ITU-R 601-2 luma weights, the ones torchvision uses for grayscale.
_LUMA = (0.299, 0.587, 0.114)
# Cross-product matrix of the gray axis (1, 1, 1): hue shifts are rotations
# about that axis (Rodrigues' formula), which the HSV hexcone projects along.
_GRAY_AXIS_CROSS = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / math.sqrt(3)


@dataclass(frozen=True)
class InputInfo:
    """Description of the input an estimator was fitted on.

    Parameters
    ----------
    kind : {"tabular", "image"}
        Whether samples are feature vectors or images.
    sample_shape : tuple of int
        ``(n_features,)`` for tabular data, ``(channels, height, width)`` for
        images; this is the shape of one item of the dataset returned by
        :func:`as_dataset`.
    n_samples : int
        Number of samples.
    """

    kind: str
    sample_shape: tuple
    n_samples: int

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}.")
        shape = tuple(int(s) for s in self.sample_shape)
        if len(shape) != (1 if self.kind == "tabular" else 3):
            raise ValueError(
                f"sample_shape {shape} does not fit kind={self.kind!r}: expected "
                "(n_features,) for tabular data and (channels, height, width) "
                "for images."
            )
        # Frozen dataclass: normalise lists / numpy ints so that equality and
        # hashing behave.
        object.__setattr__(self, "sample_shape", shape)
        object.__setattr__(self, "n_samples", int(self.n_samples))


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _check_image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        hw = (int(image_size), int(image_size))
    elif isinstance(image_size, (str, bytes)):
        hw = ()
    else:
        try:
            hw = tuple(int(s) for s in image_size)
        except (TypeError, ValueError):
            hw = ()
        if len(hw) != 2 or any(isinstance(s, bool) for s in image_size):
            hw = ()
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(
            "image_size must be None, a positive int or a pair of positive ints "
            f"(height, width), got {image_size!r}."
        )
    return hw


def _assert_all_finite(array):
    """Raise scikit-learn's error messages for NaN or infinite values."""
    if array.dtype.kind != "f" or array.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        # One reduction is much cheaper than element-wise tests and is finite
        # iff every element is (barring overflow of the sum itself).
        finite_sum = np.isfinite(np.sum(array, dtype=np.float64))
    if not finite_sum:
        if np.isnan(array).any():
            raise ValueError("Input X contains NaN.")
        if np.isinf(array).any():
            raise ValueError(
                f"Input X contains infinity or a value too large for {array.dtype!r}."
            )
    if array.dtype.itemsize > 4:
        # Finite float64 values can still overflow float32, the dtype the
        # networks see. max/min avoid the full temporary of np.abs.
        limit = np.finfo(np.float32).max
        if np.max(array) > limit or np.min(array) < -limit:
            raise ValueError(
                "Input X contains infinity or a value too large for "
                "dtype('float32')."
            )


def _check_numeric_dtype(array):
    kind = array.dtype.kind
    if kind in "biuf":
        return array
    if kind in "US":
        raise ValueError(
            "dtype='numeric' is not compatible with arrays of bytes/strings. "
            "Convert your data to numeric values explicitly instead."
        )
    if kind == "c":
        raise ValueError("Complex data not supported.")
    if kind == "O":
        # scikit-learn converts numeric object arrays (e.g. from mixed pandas
        # frames); a copy is unavoidable here.
        try:
            return array.astype(np.float64)
        except TypeError:
            # numpy's message ("float() argument must be a string or a real
            # number, not 'dict'") is what scikit-learn users see too.
            raise
        except ValueError as exc:
            raise ValueError(
                "X has dtype=object and could not be converted to numbers: "
                f"{exc}"
            ) from exc
    raise ValueError(f"X has unsupported dtype {array.dtype!r}; numeric data is required.")


def _is_sparse(X):
    return hasattr(X, "nnz") and hasattr(X, "toarray") and hasattr(X, "tocsr")


def _is_indexable_dataset(X):
    if isinstance(X, Dataset):
        return True
    if isinstance(X, (list, tuple, str, bytes, dict)) or hasattr(X, "__array__"):
        return False
    # Duck-typed sequences of samples such as skorch's SliceDataset.
    return hasattr(X, "__getitem__") and hasattr(X, "__len__")


def _expected_mismatch(info, expected):
    """Return a scikit-learn style message if ``info`` does not fit ``expected``."""
    if expected is None:
        return None
    name = _ESTIMATOR_NAME
    if info.kind == "tabular":
        if expected.kind == "tabular":
            if info.sample_shape != expected.sample_shape:
                return (
                    f"X has {info.sample_shape[0]} features, but {name} is "
                    f"expecting {expected.sample_shape[0]} features as input."
                )
            return None
        return (
            f"X has {info.sample_shape[0]} features, but {name} is expecting "
            f"images of shape {expected.sample_shape} (channels, height, width) "
            "as input."
        )
    if expected.kind == "tabular":
        return (
            f"X contains images of shape {info.sample_shape} (channels, height, "
            f"width), but {name} is expecting {expected.sample_shape[0]} "
            "features as input."
        )
    c, h, w = info.sample_shape
    ec, eh, ew = expected.sample_shape
    if c != ec:
        return f"X has {c} channels, but {name} is expecting {ec} channels as input."
    if (h, w) != (eh, ew):
        return (
            f"X has images of size {h}x{w} (height x width), but {name} is "
            f"expecting images of size {eh}x{ew} as input. Resize them to "
            f"{eh}x{ew} first."
        )
    return None


def _check_expected(info, expected):
    if expected is not None and not isinstance(expected, InputInfo):
        raise TypeError(f"expected must be an InputInfo or None, got {type(expected).__name__}.")
    msg = _expected_mismatch(info, expected)
    if msg is not None:
        raise ValueError(msg)


def _resize_batch(batch, hw):
    if tuple(batch.shape[-2:]) == tuple(hw):
        return batch
    # antialias only acts when downscaling; it avoids the aliasing that plain
    # bilinear sampling produces on large reductions.
    return F.interpolate(batch, size=hw, mode="bilinear", align_corners=False, antialias=True)


# --------------------------------------------------------------------------
# Array input
# --------------------------------------------------------------------------


class _ArrayDataset(Dataset):
    """Lazy view of a validated array; converts only the requested rows.

    Parameters
    ----------
    array : ndarray
        The user's array (a reference, never written to).
    layout : {"tabular", "gray", "chw", "hwc"}
        How to read the axes after the sample axis.
    info : InputInfo
        Shape description of the produced items.
    resize : tuple of int or None
        Output ``(height, width)`` if images must be resized.
    """

    def __init__(self, array, layout, info, resize=None):
        self.array = array
        self.layout = layout
        self.info = info
        self.resize = resize
        self._scale = array.dtype == np.uint8

    def __len__(self):
        return self.array.shape[0]

    def get_batch(self, indices):
        """Return the samples at ``indices`` stacked in one float32 tensor.

        Parameters
        ----------
        indices : sequence of int, slice or range
            Sample positions.

        Returns
        -------
        batch : torch.Tensor of shape (len(indices), *info.sample_shape)
            A fresh tensor that does not share memory with the user's array.
        """
        if isinstance(indices, slice):
            indices = range(*indices.indices(len(self)))
        # np.take always copies, so nothing downstream can write into the
        # user's array, and a memory-mapped array is only read batch-wise.
        chunk = np.take(self.array, np.asarray(indices, dtype=np.intp), axis=0)
        if self._scale:
            batch = torch.from_numpy(chunk).to(torch.float32).div_(255.0)
        else:
            batch = torch.from_numpy(chunk.astype(np.float32, copy=False))
        if self.layout == "gray":
            batch = batch.unsqueeze(1)
        elif self.layout == "hwc":
            batch = batch.permute(0, 3, 1, 2).contiguous()
        if self.resize is not None:
            batch = _resize_batch(batch, self.resize)
        return batch

    def __getitem__(self, index):
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of bounds for {n} samples")
        return self.get_batch([index % n])[0]

    def __getitems__(self, indices):
        # torch DataLoader's batched-fetch protocol: one vectorised conversion
        # per batch instead of one per sample; default_collate restacks.
        return list(self.get_batch(indices).unbind(0))


def _infer_4d_layout(shape, expected, image_size):
    a, c = shape[1], shape[3]
    cf = a in _CHANNELS and c not in _CHANNELS
    cl = c in _CHANNELS
    if cf:
        return "chw"
    if not cl:
        raise ValueError(
            f"Cannot find the channel axis of X with shape {shape}: 4-D image "
            "arrays must be (n_samples, channels, height, width) or (n_samples, "
            "height, width, channels) with 1, 3 or 4 channels."
        )
    if a in _CHANNELS and expected is not None and expected.kind == "image":
        # Both layouts fit; let the fitted input decide, channels-last wins
        # ties for consistency with fit.
        def shape_for(layout):
            chw = (a, shape[2], c) if layout == "chw" else (c, shape[1], shape[2])
            hw = image_size if image_size is not None else chw[1:]
            return (chw[0],) + tuple(hw)

        if shape_for("hwc") != expected.sample_shape and shape_for("chw") == expected.sample_shape:
            return "chw"
    return "hwc"


def _from_array(X, expected, image_size):
    if isinstance(X, torch.Tensor):
        if X.layout != torch.strided:
            raise TypeError(
                "Sparse data was passed for X, but dense data is required. "
                "Use '.to_dense()' to convert to a dense tensor."
            )
        if X.is_complex():
            raise ValueError("Complex data not supported.")
        t = X.detach()
        if t.device.type != "cpu":
            # One host copy: DataLoader workers and numpy indexing need CPU.
            t = t.cpu()
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)
        array = t.resolve_conj().resolve_neg().numpy()  # shares memory
    else:
        array = np.asarray(X)
    array = _check_numeric_dtype(array)

    if array.ndim == 0:
        raise ValueError(
            f"Expected 2D array, got scalar array instead:\narray={array}.\n"
            "Reshape your data either using array.reshape(-1, 1) if your data "
            "has a single feature or array.reshape(1, -1) if it contains a "
            "single sample."
        )
    if array.ndim == 1:
        raise ValueError(
            f"Expected 2D array, got 1D array instead:\narray={array}.\n"
            "Reshape your data either using array.reshape(-1, 1) if your data "
            "has a single feature or array.reshape(1, -1) if it contains a "
            "single sample."
        )
    if array.ndim > 4:
        raise ValueError(
            f"Found array with dim {array.ndim}. Expected 2 (tabular data), 3 "
            "(grayscale images) or 4 (images with channels)."
        )
    if array.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={array.shape}) while a "
            "minimum of 1 is required."
        )
    if array.ndim == 2 and array.shape[1] == 0:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={array.shape}) while a "
            "minimum of 1 is required."
        )
    if array.ndim > 2 and min(array.shape[1:]) == 0:
        raise ValueError(f"Found image array with an empty axis (shape={array.shape}).")

    if array.ndim == 2:
        if image_size is not None:
            raise ValueError(
                f"image_size={image_size} was given but X is tabular with shape "
                f"{array.shape}; image_size only applies to images."
            )
        layout, sample_shape = "tabular", (array.shape[1],)
    elif array.ndim == 3:
        layout, sample_shape = "gray", (1,) + array.shape[1:]
    else:
        layout = _infer_4d_layout(array.shape, expected, image_size)
        if layout == "chw":
            sample_shape = array.shape[1:]
        else:
            sample_shape = (array.shape[3],) + array.shape[1:3]
    resize = None
    if layout != "tabular" and image_size is not None:
        if tuple(image_size) != tuple(sample_shape[1:]):
            resize = tuple(image_size)
        sample_shape = (sample_shape[0],) + tuple(image_size)

    kind = "tabular" if layout == "tabular" else "image"
    info = InputInfo(kind=kind, sample_shape=tuple(sample_shape), n_samples=array.shape[0])
    _check_expected(info, expected)
    _assert_all_finite(array)
    return _ArrayDataset(array, layout, info, resize), info


# --------------------------------------------------------------------------
# Dataset input (ImageFolder, SliceDataset, TensorDataset, ...)
# --------------------------------------------------------------------------

_PIL_ALPHA_MODES = ("RGBA", "RGBa", "PA")
_PIL_MODE_FOR_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}


def _is_pil(x):
    try:
        from PIL import Image  # a hard dependency of torchvision
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def _pil_channels(img):
    if img.mode in _PIL_GRAY_MODES:
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
        return t if hw is None else _resize_batch(t[None], hw)[0]
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
    if a in _CHANNELS and (c not in _CHANNELS or is_tensor):
        # torch tensors follow torchvision's CHW convention when ambiguous.
        return "chw"
    if c in _CHANNELS:
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
    (:class:`~sklearn_sela.image_files.ImageFiles`), through
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


def _raise_read_error(exc, dataset, index):
    """Re-raise ``exc``, raised reading sample ``index`` of ``dataset``.

    The new error names the sample (and its file, see :func:`_sample_path`)
    and is of the same type, chained to the original (``raise ... from``),
    which a ``PIL`` error otherwise only reports many frames deep. Where that
    type cannot be built from a message, the original is re-raised with the
    same text as a note. Errors raised this way pass through unchanged when
    a dataset over this one re-raises them.
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
            _raise_read_error(exc, self.dataset, index)
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
                _raise_read_error(exc, self.dataset, index)
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
            x = _resize_batch(x[None], (h, w))[0]
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


def _from_dataset(X, expected, image_size):
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
        _raise_read_error(exc, X, 0)
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
        _check_expected(info, expected)
        ds = _StreamingDataset(X, info, resize=False)
    else:
        resize = False
        if image_size is not None:
            hw, resize = tuple(image_size), True
        elif expected is not None and expected.kind == "image":
            # Predicting on a folder of photos: match the fitted size.
            hw, resize = tuple(expected.sample_shape[1:]), True
        info = InputInfo("image", (channels,) + tuple(hw), n_samples)
        _check_expected(info, expected)
        ds = _StreamingDataset(X, info, resize=resize)
    ds[0]  # fail now, not inside a DataLoader worker, if item 0 is unusable
    return ds, info


def as_dataset(X, *, expected=None, image_size=None):
    """Validate input data and wrap it in a lazy torch dataset.

    Parameters
    ----------
    X : array-like, torch.Tensor or torch.utils.data.Dataset
        One of:

        - ``(n_samples, n_features)`` tabular data;
        - ``(n_samples, height, width)`` grayscale images;
        - ``(n_samples, channels, height, width)`` or
          ``(n_samples, height, width, channels)`` images with 1, 3 or 4
          channels (see the module docstring for how the layout is chosen);
        - a map-style dataset (``__getitem__`` and ``__len__``), e.g.
          :class:`torchvision.datasets.ImageFolder` or skorch's
          ``SliceDataset``, whose items are images (PIL images, tensors or
          arrays) or ``(image, target)`` tuples; targets are ignored. Items
          are loaded lazily, one at a time.

        ``uint8`` data is scaled by 1/255; other numeric dtypes are cast to
        float32 without rescaling. The user's data is never modified, and
        arrays are not copied: conversion happens per batch.
    expected : InputInfo, default=None
        The description returned when fitting. When given, the input must
        match it (``ValueError`` otherwise), except that the images of a
        dataset input are resized to the expected height and width.
    image_size : int or (int, int), default=None
        Resize images to this ``(height, width)``. Without it, all images of
        a dataset must have the size of its first image.

    Returns
    -------
    dataset : torch.utils.data.Dataset
        ``dataset[i]`` is a float32 tensor of shape ``info.sample_shape``
        (no target, no augmentation). It implements ``__getitems__`` for fast
        batched fetching by :class:`torch.utils.data.DataLoader`, and
        ``get_batch(indices)``, which returns a stacked
        ``(len(indices), *sample_shape)`` tensor. It pickles if ``X`` does.
        When an item of a dataset ``X`` cannot be read (e.g. a truncated
        image file), the error raised names the sample index, and its file
        for datasets that list them (``ImageFolder``'s ``samples``,
        :class:`~sklearn_sela.image_files.ImageFiles`' ``paths``); it has
        the type of the original error, chained to it.
    info : InputInfo
        Kind, per-sample shape and number of samples.

    Raises
    ------
    ValueError
        If the data is empty, contains NaN or infinity, is not numeric, has
        an unsupported shape, yields unusable items, or does not match
        ``expected``.
    TypeError
        If ``X`` is a sparse matrix.
    OSError
        Or whatever a dataset ``X`` raises, if its first item cannot be
        read; the message names the sample (see ``dataset`` above).
    """
    image_size = _check_image_size(image_size)
    if _is_sparse(X):
        raise TypeError(
            "Sparse data was passed for X, but dense data is required. Use "
            "'.toarray()' to convert to a dense numpy array."
        )
    if not isinstance(X, (np.ndarray, torch.Tensor)) and _is_indexable_dataset(X):
        return _from_dataset(X, expected, image_size)
    return _from_array(X, expected, image_size)


# --------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------


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
        theta = torch.from_numpy(self.sample_theta(n, height, width)).to(batch.device, batch.dtype)
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
        if img.numel() and (img.min() < 0 or img.max() > 1):
            # Jitter clamps to [0, 1]; map out-of-range samples into it and
            # back, so standardised data keeps its scale.
            lo = flat.amin(dim=(1, 2)).clamp(max=0).view(n, 1, 1)
            hi = flat.amax(dim=(1, 2)).clamp(min=1).view(n, 1, 1)
            flat = (flat - lo) / (hi - lo)
        dev, dtype = batch.device, batch.dtype
        mean = flat.mean(2)
        if k == 3:
            mean = mean @ torch.tensor(_LUMA, dtype=dtype, device=dev)
        else:
            mean = mean[:, 0]
        mat = torch.from_numpy(mat).to(dev, dtype)
        offset = (torch.from_numpy(shift).to(dev, dtype) * mean).view(n, 1, 1)
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


def default_augmentation(info, *, backend="fast"):
    """Return the default SeLa augmentation for the given input.

    The presets follow the paper (section 3.4 and appendix A.1): random
    resized crops, horizontal flips, colour jitter and random grayscale for
    colour images, and milder geometric jitter for small grayscale images.

    ============================  ===============================================
    input                         preset
    ============================  ===============================================
    tabular                       ``None`` (no augmentation)
    3 channels, min(H, W) >= 32   crop scale (0.2, 1), flip, ColorJitter(0.4, 0.4,
                                  0.4, 0.1) with p=0.8, grayscale p=0.2
    3 channels, smaller           same with crop scale (0.5, 1)
    4 channels                    as 3 channels; the alpha channel is only
                                  cropped and flipped
    1 channel, min(H, W) < 16     affine: rotation +-15 degrees, shift +-15%,
                                  zoom (0.8, 1.2); e.g. 8x8 digits
    1 channel, 16 to 31 pixels    crop scale (0.3, 1), ratio (0.8, 1.25), brightness
                                  and contrast 0.8 always, no flip (e.g.
                                  Fashion-MNIST; flips would confuse digits)
    1 channel, min(H, W) >= 32    crop scale (0.2, 1), flip, brightness and
                                  contrast 0.4 with p=0.8
    ============================  ===============================================

    Parameters
    ----------
    info : InputInfo
        Description of the input (from :func:`as_dataset`).
    backend : {"fast", "torchvision"}, default="fast"
        ``"fast"`` returns :class:`BatchCompose` of :class:`RandomGeometric`
        and :class:`RandomColor`, which work on single images and, much
        faster, on whole batches (also on GPU). ``"torchvision"`` returns the
        equivalent :class:`torchvision.transforms.v2.Compose` of the stock
        transforms, applied per sample.

    Returns
    -------
    transform : callable or None
        A picklable callable mapping a float ``(C, H, W)`` tensor to a
        tensor of the same shape, or ``None`` for tabular data.
    """
    if not isinstance(info, InputInfo):
        raise TypeError(f"info must be an InputInfo, got {type(info).__name__}.")
    if backend not in ("fast", "torchvision"):
        raise ValueError(f"backend must be 'fast' or 'torchvision', got {backend!r}.")
    if info.kind == "tabular":
        return None
    c, h, w = info.sample_shape
    small = min(h, w)
    geo = {}
    color = None
    if c == 1 and small < 16:
        # Stronger than (10, 0.1, (0.9, 1.1)): digits ACC 0.87 vs 0.69 at
        # batch 128 (docs/benchmarks_quality.md).
        geo = dict(degrees=15.0, translate=0.15, scale=(0.8, 1.2))
    elif c == 1 and small < 32:
        # Without brightness/contrast jitter, overall brightness is an easy
        # cue for the self-labels (Fashion-MNIST, 10k images: NMI 0.54 with
        # the jitter, 0.36 without; docs/benchmarks_quality.md).
        geo = dict(crop_scale=(0.3, 1.0), crop_ratio=(0.8, 1.25))
        color = dict(brightness=0.8, contrast=0.8, saturation=0.0, hue=0.0, p=1.0, grayscale_p=0.0)
    elif c == 1:
        geo = dict(crop_scale=(0.2, 1.0), hflip=0.5)
        color = dict(brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0, p=0.8, grayscale_p=0.0)
    else:
        geo = dict(crop_scale=(0.2, 1.0) if small >= 32 else (0.5, 1.0), hflip=0.5)
        color = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8, grayscale_p=0.2)

    if backend == "fast":
        steps = [RandomGeometric(**geo)]
        if color is not None:
            steps.append(RandomColor(**color))
        return BatchCompose(steps)

    steps = []
    if "degrees" in geo:
        steps.append(v2.RandomAffine(
            degrees=geo["degrees"], translate=(geo["translate"],) * 2, scale=geo["scale"],
            interpolation=v2.InterpolationMode.BILINEAR,
        ))
    else:
        steps.append(v2.RandomResizedCrop((h, w), scale=geo["crop_scale"],
                                          ratio=geo.get("crop_ratio", (3 / 4, 4 / 3)),
                                          antialias=True))
    if geo.get("hflip"):
        steps.append(v2.RandomHorizontalFlip(geo["hflip"]))
    if color is not None and c in (1, 3):
        jitter = v2.ColorJitter(color["brightness"], color["contrast"],
                                color["saturation"] or None, color["hue"] or None)
        steps.append(v2.RandomApply([jitter], p=color["p"]))
        if color["grayscale_p"]:
            steps.append(v2.RandomGrayscale(p=color["grayscale_p"]))
    return v2.Compose(steps)


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
            _raise_read_error(exc, self.base, i)
        if self.transform is not None:
            x = self.transform(x)
        return x, i

    def _read(self, indices):
        xs = []
        try:
            for i in indices:
                xs.append(self.base[i])
        except Exception as exc:
            _raise_read_error(exc, self.base, i)
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
