"""Shared helpers of the sklearn-sela benchmarks (data, metrics, tables)."""

import os
import platform
import socket
import time

import numpy as np
import torch


def free_port():
    """A free TCP port on the loopback interface, for a process group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_info():
    """One line describing where the benchmark ran."""
    try:
        load = "load avg %.1f/%.1f/%.1f" % os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux
        load = "load avg n/a"
    dev = "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return (
        f"{platform.machine()} {os.cpu_count()} logical cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), device {dev}, "
        f"{load} at start"
    )


def load_data(name, subset=None, seed=0):
    """Return ``(X_train, y_train, X_test, y_test)`` image arrays.

    ``digits``: the (N, 8, 8) float images of :func:`load_digits`, no
    separate test split (test = train: the kNN / probe then measure the
    training features, see the docs). ``fashion``: uint8 (N, 28, 28)
    Fashion-MNIST train and test; ``subset`` draws that many training images
    (stratified by nothing, a seeded random subset) and ``subset // 6`` test
    images.
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target, None, None
    if name in ("fashion", "fashion-mnist"):
        from sklearn_sela.datasets import load_fashion_mnist

        path = os.environ.get("FASHION_MNIST_DIR")  # default: the Debian package's
        Xtr, ytr = load_fashion_mnist("train", path=path)
        Xte, yte = load_fashion_mnist("test", path=path)
        if subset:
            rng = np.random.RandomState(seed)
            i = rng.choice(len(Xtr), subset, replace=False)
            j = rng.choice(len(Xte), max(1000, min(len(Xte), subset // 6)), replace=False)
            Xtr, ytr, Xte, yte = Xtr[i], ytr[i], Xte[j], yte[j]
        return Xtr, ytr, Xte, yte
    raise ValueError(f"unknown dataset {name!r}")


def long_tailed(X, y, largest, ratio=10.0, seed=0):
    """A seeded subset keeping ``round(largest * ratio**(-i / (C - 1)))``
    samples of the ``i``-th of the ``C`` classes: the first keeps
    ``largest``, the last ``largest / ratio``."""
    classes = np.unique(y)
    rng = np.random.RandomState(seed)
    keep = []
    for i, c in enumerate(classes):
        n = int(round(largest * ratio ** (-i / (len(classes) - 1))))
        keep.append(rng.choice(np.flatnonzero(y == c), n, replace=False))
    keep = np.sort(np.concatenate(keep))
    return X[keep], y[keep]


def markdown_table(headers, rows, floatfmt="{:.3f}"):
    """Render rows (lists) as a Markdown table string."""

    def fmt(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.perf_counter() - self.start
