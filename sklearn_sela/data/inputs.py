"""Input handling: turn arrays, tensors and torch datasets into sample streams.

:func:`as_dataset` validates the input given to an estimator (in the spirit of
:func:`sklearn.utils.check_array`) and wraps it in a lazy
:class:`torch.utils.data.Dataset` whose items are float32 tensors of a fixed
shape, without any target. Arrays and tensors are handled here, map-style
datasets in :mod:`sklearn_sela.data.streaming`.
:class:`~sklearn_sela.data.AugmentedDataset` adds the random data
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

import numbers

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import CHANNEL_COUNTS, InputInfo, check_expected, resize_images
from .streaming import from_dataset

__all__ = ["as_dataset"]


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
            batch = resize_images(batch, self.resize)
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
    cf = a in CHANNEL_COUNTS and c not in CHANNEL_COUNTS
    cl = c in CHANNEL_COUNTS
    if cf:
        return "chw"
    if not cl:
        raise ValueError(
            f"Cannot find the channel axis of X with shape {shape}: 4-D image "
            "arrays must be (n_samples, channels, height, width) or (n_samples, "
            "height, width, channels) with 1, 3 or 4 channels."
        )
    if a in CHANNEL_COUNTS and expected is not None and expected.kind == "image":
        # Both layouts fit; let the fitted input decide, channels-last wins
        # ties for consistency with fit.
        def shape_for(layout):
            chw = (a, shape[2], c) if layout == "chw" else (c, shape[1], shape[2])
            hw = image_size if image_size is not None else chw[1:]
            return (chw[0],) + tuple(hw)

        if shape_for("hwc") != expected.sample_shape and shape_for("chw") == expected.sample_shape:
            return "chw"
    return "hwc"


def _from_array(X, expected, image_size, estimator_name):
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
    check_expected(info, expected, estimator_name)
    _assert_all_finite(array)
    return _ArrayDataset(array, layout, info, resize), info


def as_dataset(X, *, expected=None, image_size=None, estimator_name=None):
    """Validate input data and wrap it in a lazy torch dataset.

    Parameters
    ----------
    X : array-like, torch.Tensor or torch.utils.data.Dataset
        One of:

        - ``(n_samples, n_features)`` tabular data;
        - ``(n_samples, height, width)`` grayscale images;
        - ``(n_samples, channels, height, width)`` or
          ``(n_samples, height, width, channels)`` images with 1, 3 or 4
          channels (see the docstring of :mod:`sklearn_sela.data.inputs` for
          how the layout is chosen);
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
    estimator_name : str, default=None
        Name of the estimator the input is for, as in scikit-learn's
        messages (``"X has 5 features, but KMeans is expecting 64 features
        as input."``); estimators pass ``type(self).__name__``. None reads
        "the estimator". Only used in the errors about ``expected``.

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
        :class:`~sklearn_sela.data.ImageFiles`' ``paths``); it has
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
        return from_dataset(X, expected, image_size, estimator_name)
    return _from_array(X, expected, image_size, estimator_name)

