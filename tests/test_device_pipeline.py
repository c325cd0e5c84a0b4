"""The GPU input pipeline, exercised on the CPU: augmentation after the copy
to the device, reading ahead, pinned memory, bfloat16 autocast and
channels-last weights."""

import threading

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from skorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, Subset

import sklearn_sela.training as training
from sklearn_sela import SelfLabelClusterer
from sklearn_sela.backbones import MultiHeadNet, make_backbone
from sklearn_sela.data import (
    AugmentedDataset,
    DeviceBatches,
    InputInfo,
    as_dataset,
    default_augmentation,
    split_batch_transform,
)
from sklearn_sela.training import SelfLabelNet

FAST = dict(n_clusters=5, n_heads=2, max_epochs=4, batch_size=64, random_state=0)


@pytest.fixture(scope="module")
def digit_images():
    X, _ = load_digits(return_X_y=True)
    return (X[:300].reshape(-1, 8, 8) * 16).astype(np.uint8)


def test_augmenting_after_the_copy_gives_the_same_fit(digit_images, monkeypatch):
    # The CUDA pipeline forced on the CPU: the DataLoader yields plain
    # batches, read ahead in a thread, and the net augments them. The
    # augmentation draws the same random numbers in the same order as inside
    # the DataLoader, so the fit is the same to the bit (training, label
    # updates and the transfer's augmented views).
    expected = SelfLabelClusterer(**FAST).fit(digit_images)
    made = []

    class Counted(DeviceBatches):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.transform is not None)

    monkeypatch.setattr(SelfLabelNet, "feeds_device", lambda self: True)
    monkeypatch.setattr(training, "DeviceBatches", Counted)
    est = SelfLabelClusterer(**FAST).fit(digit_images)
    assert any(made) and not all(made)  # training augments, label passes do not
    np.testing.assert_array_equal(est.labels_all_, expected.labels_all_)
    assert [r["train_loss"] for r in est.history_] == [
        r["train_loss"] for r in expected.history_
    ]


class _Numbered(Dataset):
    """Item ``i`` is a 1x2x2 image of value ``i``; item ``bad`` fails."""

    def __init__(self, n, bad=None):
        self.n, self.bad = n, bad

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            raise OSError(f"item {i} is unreadable")
        return torch.full((1, 2, 2), float(i))


def _plus_one(x):
    return x + 1


_plus_one.supports_batch = True


def test_device_batches_apply_the_transform_in_order():
    data = AugmentedDataset(_Numbered(10), _plus_one)
    plain, transform = split_batch_transform(data)
    assert transform is _plus_one and plain.transform is None
    batches = DeviceBatches(DataLoader(plain, batch_size=4), "cpu", transform)
    assert len(batches) == 3
    got = [(x[:, 0, 0, 0].tolist(), index.tolist()) for x, index in batches]
    assert got == [([1, 2, 3, 4], [0, 1, 2, 3]), ([5, 6, 7, 8], [4, 5, 6, 7]),
                   ([9, 10], [8, 9])]


def test_split_keeps_subsets_and_per_sample_transforms():
    data = AugmentedDataset(_Numbered(10), _plus_one)
    plain, transform = split_batch_transform(Subset(data, range(6, 9)))
    assert transform is _plus_one
    assert isinstance(plain, Subset) and plain.dataset.transform is None
    assert [plain[i][1] for i in range(3)] == [6, 7, 8]
    per_sample = AugmentedDataset(_Numbered(10), lambda x: x)
    assert split_batch_transform(per_sample) == (per_sample, None)
    assert split_batch_transform(_Numbered(3))[1] is None


def test_read_ahead_raises_in_the_caller_and_stops_its_thread():
    data = AugmentedDataset(_Numbered(40, bad=21))
    with pytest.raises(OSError, match="21"):
        list(DeviceBatches(DataLoader(data, batch_size=4), "cpu"))
    before = threading.active_count()
    batches = iter(DeviceBatches(DataLoader(AugmentedDataset(_Numbered(40)), batch_size=4), "cpu"))
    next(batches)
    next(batches)
    batches.close()  # the caller stops early
    assert threading.active_count() == before


def test_dataloaders_pin_memory_on_cuda_only():
    net = SelfLabelNet(torch.nn.Linear(2, 2), device="cpu")
    assert net.get_params_for("iterator_train")["pin_memory"] is False
    net.set_params(device="cuda")
    assert net.get_params_for("iterator_train")["pin_memory"] is True
    assert net.get_params_for("iterator_valid")["pin_memory"] is True
    net.set_params(iterator_valid__pin_memory=False)
    assert net.get_params_for("iterator_valid")["pin_memory"] is False
    assert "pin_memory" not in net.get_params_for("optimizer")


def test_cpu_computes_in_float32():
    net = SelfLabelNet(torch.nn.Linear(2, 2), device="cpu")
    assert not net.feeds_device()
    with net.autocast():
        assert not torch.is_autocast_enabled("cpu")


class _Dtypes(Callback):
    def __init__(self):
        self.seen = set()

    def on_batch_end(self, net, y_pred=None, loss=None, **kwargs):
        self.seen.add((y_pred[0].dtype, loss.dtype))


def test_bfloat16_autocast_fit_runs_with_float32_losses(digit_images, monkeypatch):
    # The CUDA precision, on the CPU: forward passes of training and
    # labelling in bfloat16, losses and Sinkhorn inputs in float32.
    monkeypatch.setattr(
        SelfLabelNet, "autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16)
    )
    dtypes = _Dtypes()
    est = SelfLabelClusterer(callbacks=[dtypes], **FAST).fit(digit_images)
    assert dtypes.seen == {(torch.bfloat16, torch.float32)}
    losses = [r["train_loss"] for r in est.history_]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    updates = [r["label_update"] for r in est.history_ if "label_update" in r]
    assert updates and all(all(u["converged"]) for u in updates)
    assert np.bincount(est.labels_, minlength=5).min() > 0


def test_convolution_weights_are_channels_last_on_cuda(monkeypatch):
    info = InputInfo("image", (3, 32, 32), 10)
    backbone, dim = make_backbone("resnet18", info)
    monkeypatch.setattr(SelfLabelNet, "_device_type", lambda self: "cuda")
    net = SelfLabelNet(MultiHeadNet(backbone, dim, [3]), device="cpu").initialize()
    conv = net.module_.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()


def test_presets_draw_their_parameters_on_the_host(digit_images):
    # The random stream, not the device, fixes the views: the parameters
    # are drawn with torch's global generator and sent to the batch's device.
    base, info = as_dataset(digit_images[:16])
    aug = default_augmentation(info)
    batch = base.get_batch(range(16))
    torch.manual_seed(3)
    a = aug(batch)
    torch.manual_seed(3)
    b = aug(batch.clone())
    torch.manual_seed(4)
    c = aug(batch)
    assert torch.equal(a, b) and not torch.equal(a, c)
