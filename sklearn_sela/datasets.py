"""Loaders for image datasets installed on the local machine.

Nothing is ever downloaded.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import gzip
import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

__all__ = ["load_fashion_mnist", "read_idx", "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES"]

#: Where the Debian package ``dataset-fashion-mnist`` installs the files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: Class names of Fashion-MNIST labels 0 to 9.
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Type byte of the idx header -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path):
    """Read an array stored in the idx format of (Fashion-)MNIST.

    The header is two zero bytes, a type byte, the number of dimensions
    ``d``, then ``d`` big-endian uint32 sizes; the data follows in C order.
    Files ending in ``.gz`` are decompressed.

    Parameters
    ----------
    path : str or path-like
        File to read.

    Returns
    -------
    array : ndarray
        The stored array, in native byte order.

    Raises
    ------
    ValueError
        If the header is not an idx header or the data length does not
        match the dimensions.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an idx file: bad magic number "
            f"{raw[:4].hex() if len(raw) >= 4 else raw.hex()!r} (expected 0000 followed "
            "by a type byte in 08, 09, 0b, 0c, 0d, 0e and the number of dimensions)."
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: its idx header announces {ndim} dimensions.")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path} holds {len(raw) - header} data bytes, but its idx header "
            f"announces shape {shape} of {dtype.name} ({expected} bytes)."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    # frombuffer views read-only bytes; the copy owns writable, native memory.
    return data.astype(dtype.newbyteorder("="))


def _find(directory, stem):
    for name in (stem + ".gz", stem):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}.gz not found in {directory}. Install the "
        "Debian package with `apt-get install dataset-fashion-mnist` (files go "
        f"to {FASHION_MNIST_DIR}), or pass path= a directory holding "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
        "(gzipped or not). Nothing is downloaded."
    )


def load_fashion_mnist(subset="train", path=None, return_X_y=True):
    """Load Fashion-MNIST (Xiao et al., 2017) from local idx files.

    =================   ==============================
    Classes                                         10
    Samples (train)                              60000
    Samples (test)                               10000
    Image size                      28x28, grayscale
    =================   ==============================

    Parameters
    ----------
    subset : {"train", "test"}, default="train"
        Which split to load.
    path : str or path-like, default=None
        Directory holding the idx files; defaults to
        ``/usr/share/datasets/fashion-mnist`` (Debian package
        ``dataset-fashion-mnist``).
    return_X_y : bool, default=True
        If True, return ``(X, y)``; otherwise a :class:`~sklearn.utils.Bunch`.

    Returns
    -------
    X : ndarray of shape (n_samples, 28, 28), dtype uint8
        Images (``return_X_y=True``).
    y : ndarray of shape (n_samples,), dtype int64
        Labels 0-9 (``return_X_y=True``).
    data : :class:`~sklearn.utils.Bunch`
        (``return_X_y=False``) with ``images`` (n_samples, 28, 28) uint8,
        ``data`` the same pixels flattened to (n_samples, 784) as in
        :func:`sklearn.datasets.load_digits` (a view, no copy), ``target``,
        ``target_names`` and ``DESCR``. Pass ``images``, not ``data``, to
        an estimator that should treat the samples as images.

    Raises
    ------
    FileNotFoundError
        If the files are missing.
    ValueError
        If ``subset`` is unknown or the files are malformed or inconsistent.
    """
    if subset not in _FILES:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}.")
    directory = Path(os.fspath(path)) if path is not None else Path(FASHION_MNIST_DIR)
    images_file, labels_file = (_find(directory, stem) for stem in _FILES[subset])
    X = read_idx(images_file)
    y = read_idx(labels_file)
    if X.ndim != 3 or y.ndim != 1 or X.dtype != np.uint8:
        raise ValueError(
            f"Unexpected idx contents: images {X.dtype} {X.shape}, labels {y.shape}; "
            "expected uint8 (n, height, width) images and (n,) labels."
        )
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{images_file} holds {X.shape[0]} images but {labels_file} holds "
            f"{y.shape[0]} labels."
        )
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= len(FASHION_MNIST_CLASSES)):
        raise ValueError(f"{labels_file} holds labels outside 0-9.")
    if return_X_y:
        return X, y
    return Bunch(
        data=X.reshape(len(X), -1),
        images=X,
        target=y,
        target_names=np.array(FASHION_MNIST_CLASSES),
        DESCR=(
            "Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 28x28 grayscale "
            f"images of 10 clothing categories, {subset} split, read from "
            f"{directory}."
        ),
    )
