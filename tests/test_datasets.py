import gzip
import os

import numpy as np
import pytest

from sklearn_sela.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    load_fashion_mnist,
    read_idx,
)


def _idx_bytes(array, type_byte=0x08):
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_byte]
    header = bytes([0, 0, type_byte, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.asarray(array, dtype=dtype).tobytes()


def _write(path, array, compress=True, type_byte=0x08):
    data = _idx_bytes(array, type_byte)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_split(directory, n=5, subset="train", compress=True, n_labels=None):
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, (n, 28, 28)).astype(np.uint8)
    y = rng.randint(0, 10, n_labels or n).astype(np.uint8)
    prefix = "train" if subset == "train" else "t10k"
    _write(directory / f"{prefix}-images-idx3-ubyte", X, compress)
    _write(directory / f"{prefix}-labels-idx1-ubyte", y, compress)
    return X, y


@pytest.mark.parametrize("compress", [True, False])
def test_fake_idx_files_parse(tmp_path, compress):
    X_true, y_true = _fake_split(tmp_path, n=5, subset="test", compress=compress)
    X, y = load_fashion_mnist("test", path=tmp_path)
    assert X.shape == (5, 28, 28) and X.dtype == np.uint8
    assert y.dtype == np.int64
    np.testing.assert_array_equal(X, X_true)
    np.testing.assert_array_equal(y, y_true)
    X[0, 0, 0] = 1  # writable, owned memory
    bunch = load_fashion_mnist("test", path=str(tmp_path), return_X_y=False)
    assert bunch.images.shape == (5, 28, 28) and bunch.data.shape == (5, 784)
    assert np.shares_memory(bunch.data, bunch.images)
    assert list(bunch.target_names) == list(FASHION_MNIST_CLASSES)
    assert "Fashion-MNIST" in bunch.DESCR


def test_read_idx_other_dtypes_and_shapes(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    _write(tmp_path / "ints", a, compress=False, type_byte=0x0C)
    out = read_idx(tmp_path / "ints")
    np.testing.assert_array_equal(out, a)
    assert out.dtype == np.int32 and out.dtype.isnative
    f = np.linspace(0, 1, 6, dtype=np.float32)
    _write(tmp_path / "floats", f, compress=True, type_byte=0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "floats.gz"), f)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic number"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(_idx_bytes(np.zeros((4, 2), np.uint8))[:-1])
    with pytest.raises(ValueError, match="data bytes"):
        read_idx(short)
    header_only = tmp_path / "header"
    header_only.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(header_only)


def test_inconsistent_counts(tmp_path):
    _fake_split(tmp_path, n=5, n_labels=4)
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        load_fashion_mnist(path=tmp_path)


def test_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(path=tmp_path)


def test_bad_subset():
    with pytest.raises(ValueError, match="subset"):
        load_fashion_mnist("validation")


@pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
    reason="dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist():
    X, y = load_fashion_mnist("test")
    assert X.shape == (10000, 28, 28) and X.dtype == np.uint8
    assert y.shape == (10000,) and y.min() == 0 and y.max() == 9
    assert np.array_equal(np.bincount(y), np.full(10, 1000))  # balanced split
    assert X.max() == 255
    X, y = load_fashion_mnist("train")
    assert X.shape == (60000, 28, 28)
    assert np.array_equal(np.bincount(y), np.full(10, 6000))
