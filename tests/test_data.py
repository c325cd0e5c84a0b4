import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sklearn_sela.data import (
    AugmentedDataset,
    BatchCompose,
    InputInfo,
    RandomColor,
    RandomGeometric,
    as_dataset,
    default_augmentation,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- layouts


def test_tabular_float64_is_cast_not_rescaled():
    X = np.arange(12, dtype=np.float64).reshape(3, 4) * 10
    ds, info = as_dataset(X)
    assert info == InputInfo("tabular", (4,), 3)
    assert len(ds) == 3
    item = ds[1]
    assert item.dtype == torch.float32 and item.shape == (4,)
    np.testing.assert_array_equal(item.numpy(), X[1].astype(np.float32))


def test_grayscale_3d_gets_channel_axis():
    X = np.random.RandomState(0).rand(5, 6, 7)
    ds, info = as_dataset(X)
    assert info == InputInfo("image", (1, 6, 7), 5)
    np.testing.assert_allclose(ds[2].numpy(), X[2][None].astype(np.float32))


def test_channels_last_is_transposed():
    X = np.random.RandomState(0).rand(5, 6, 7, 3).astype(np.float32)
    ds, info = as_dataset(X)
    assert info.sample_shape == (3, 6, 7)
    np.testing.assert_array_equal(ds[4].numpy(), X[4].transpose(2, 0, 1))


def test_channels_first_is_kept():
    X = np.random.RandomState(0).rand(5, 3, 6, 7).astype(np.float32)
    ds, info = as_dataset(X)
    assert info.sample_shape == (3, 6, 7)
    np.testing.assert_array_equal(ds[0].numpy(), X[0])


def test_four_channels_first_and_last():
    X = np.random.RandomState(0).rand(2, 4, 9, 9).astype(np.float32)
    assert as_dataset(X)[1].sample_shape == (4, 9, 9)
    assert as_dataset(X.transpose(0, 2, 3, 1))[1].sample_shape == (4, 9, 9)


def test_ambiguous_layout_defaults_to_channels_last():
    X = np.random.RandomState(0).rand(4, 3, 3, 3).astype(np.float32)
    ds, info = as_dataset(X)
    assert info.sample_shape == (3, 3, 3)
    np.testing.assert_array_equal(ds[0].numpy(), X[0].transpose(2, 0, 1))


def test_ambiguous_layout_follows_expected():
    # (N, 1, 5, 1): channels-first reads (1, 5, 1), channels-last (1, 1, 5).
    X = np.random.RandomState(0).rand(4, 1, 5, 1).astype(np.float32)
    assert as_dataset(X)[1].sample_shape == (1, 1, 5)
    expected = InputInfo("image", (1, 5, 1), 10)
    ds, info = as_dataset(X, expected=expected)
    assert info.sample_shape == (1, 5, 1)
    np.testing.assert_array_equal(ds[3].numpy(), X[3])


def test_no_channel_axis_raises():
    with pytest.raises(ValueError, match="channel axis"):
        as_dataset(np.zeros((2, 5, 6, 7)))


def test_uint8_is_scaled_to_unit_interval():
    X = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    ds, info = as_dataset(X)
    assert info.sample_shape == (1, 2, 2)
    np.testing.assert_allclose(ds[0].numpy()[0], [[0, 1], [0.2, 0.4]], rtol=1e-6)
    # Other integer types are not images by convention: cast, not rescaled.
    ds16, _ = as_dataset(X.astype(np.uint16))
    assert ds16[0].max().item() == 255.0


def test_torch_tensor_input_matches_numpy():
    X = np.random.RandomState(0).randint(0, 256, (6, 8, 8, 3)).astype(np.uint8)
    ds_np, info_np = as_dataset(X)
    T = torch.from_numpy(X.copy()).requires_grad_(False)
    ds_t, info_t = as_dataset(T)
    assert info_np == info_t
    torch.testing.assert_close(ds_np.get_batch(range(6)), ds_t.get_batch(range(6)))
    ds_f, _ = as_dataset(torch.rand(3, 5, requires_grad=True))
    assert not ds_f[0].requires_grad


def test_user_array_is_referenced_not_copied_nor_modified():
    X = np.random.RandomState(0).randint(0, 256, (20, 8, 8)).astype(np.uint8)
    X.setflags(write=False)  # would raise if anything wrote into it
    before = X.copy()
    ds, info = as_dataset(X)
    assert np.shares_memory(ds.array, X)
    item = ds[0]
    item += 1000  # items are fresh memory
    batch = ds.get_batch([0, 1])
    batch.mul_(0)
    aug = AugmentedDataset(ds, default_augmentation(info))
    for _ in DataLoader(aug, batch_size=8):
        pass
    np.testing.assert_array_equal(X, before)


def test_float32_items_do_not_alias_user_array():
    X = np.zeros((3, 4), dtype=np.float32)
    ds, _ = as_dataset(X)
    ds[0].fill_(7)
    ds.__getitems__([0, 1])[1].fill_(7)
    assert not X.any()


def test_getitems_and_dataloader_match_getitem():
    X = np.random.RandomState(0).randint(0, 256, (50, 28, 28)).astype(np.uint8)
    ds, _ = as_dataset(X)
    items = ds.__getitems__([3, 7, 3])
    assert isinstance(items, list) and len(items) == 3
    for i, item in zip([3, 7, 3], items):
        torch.testing.assert_close(item, ds[i])
    batches = list(DataLoader(ds, batch_size=16))
    assert [b.shape for b in batches][0] == (16, 1, 28, 28)
    full = torch.cat(batches)
    torch.testing.assert_close(full, torch.from_numpy(X[:, None] / 255.0).float())
    torch.testing.assert_close(ds.get_batch(slice(10, 20)), full[10:20])


def test_negative_and_out_of_range_index():
    ds, _ = as_dataset(np.arange(6.0).reshape(3, 2))
    assert ds[-1].tolist() == [4.0, 5.0]
    with pytest.raises(IndexError):
        ds[3]


def test_single_sample_allowed():
    ds, info = as_dataset(np.ones((1, 3)))
    assert info.n_samples == 1 and len(ds) == 1


def test_pandas_like_and_lists():
    ds, info = as_dataset([[1, 2], [3, 4]])
    assert info == InputInfo("tabular", (2,), 2)
    obj = np.array([[1, 2.5], [3, 4]], dtype=object)
    assert as_dataset(obj)[0][1].tolist() == [3.0, 4.0]


# ------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros((0, 3)), "Found array with 0 sample"),
        (np.zeros((0, 8, 8)), "Found array with 0 sample"),
        (np.zeros((3, 0)), "0 feature"),
        (np.array([[1.0, np.nan]]), "Input X contains NaN"),
        (np.array([[1.0, np.inf]]), "Input X contains infinity"),
        (np.array([[1e300, 1.0]]), "too large for dtype\\('float32'\\)"),
        (np.zeros(3), "Expected 2D array, got 1D array"),
        (np.float64(3.0), "Expected 2D array, got scalar"),
        (np.zeros((2, 3, 3, 3, 3)), "Found array with dim 5"),
        (np.array([["a", "b"]]), "strings"),
        (np.array([[1, "b"]], dtype=object), "dtype=object"),
        (np.array([[1 + 2j]]), "Complex data not supported"),
        (torch.tensor([[1.0, float("nan")]]), "Input X contains NaN"),
        (torch.zeros(0, 4), "0 sample"),
    ],
)
def test_validation_errors(X, match):
    with pytest.raises(ValueError, match=match):
        as_dataset(X)


def test_nan_in_float16_and_images():
    X = np.zeros((2, 8, 8), dtype=np.float16)
    X[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        as_dataset(X)


def test_sparse_input_rejected():
    sp = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="dense data is required"):
        as_dataset(sp.csr_matrix(np.eye(3)))


@pytest.mark.parametrize("image_size", [0, (3,), (2, 3, 4), "32", (4, -1), True])
def test_bad_image_size(image_size):
    with pytest.raises(ValueError, match="image_size"):
        as_dataset(np.zeros((2, 8, 8)), image_size=image_size)


def test_image_size_on_tabular_rejected():
    with pytest.raises(ValueError, match="only applies to images"):
        as_dataset(np.zeros((2, 8)), image_size=8)


def test_image_size_resizes_arrays():
    X = np.random.RandomState(0).rand(3, 10, 12, 3).astype(np.float32)
    ds, info = as_dataset(X, image_size=(20, 24))
    assert info.sample_shape == (3, 20, 24)
    assert ds[0].shape == (3, 20, 24)
    ds2, info2 = as_dataset(X, image_size=7)
    assert ds2.get_batch([0, 1]).shape == (2, 3, 7, 7)


def test_input_info_validation():
    with pytest.raises(ValueError, match="kind"):
        InputInfo("text", (3,), 1)
    with pytest.raises(ValueError, match="sample_shape"):
        InputInfo("image", (3,), 1)
    assert InputInfo("tabular", [np.int64(3)], 2).sample_shape == (3,)


# --------------------------------------------------------- expected input


def test_expected_feature_mismatch_message():
    expected = InputInfo("tabular", (64,), 100)
    msg = "X has 5 features, but SelfLabelClusterer is expecting 64 features as input."
    with pytest.raises(ValueError, match=msg):
        as_dataset(np.zeros((3, 5)), expected=expected, estimator_name="SelfLabelClusterer")
    # Without a name, the message speaks of the estimator.
    msg = "X has 5 features, but the estimator is expecting 64 features as input."
    with pytest.raises(ValueError, match=msg):
        as_dataset(np.zeros((3, 5)), expected=expected)
    _, info = as_dataset(np.zeros((3, 64)), expected=expected)
    assert info.n_samples == 3


def test_expected_image_mismatches():
    expected = InputInfo("image", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="X has 1 channels, but SelfLabelClusterer is expecting 3"):
        as_dataset(np.zeros((2, 32, 32)), expected=expected, estimator_name="SelfLabelClusterer")
    with pytest.raises(ValueError, match="size 28x28.*expecting images of size 32x32"):
        as_dataset(np.zeros((2, 28, 28, 3)), expected=expected)
    with pytest.raises(ValueError, match="expecting images of shape \\(3, 32, 32\\)"):
        as_dataset(np.zeros((2, 10)), expected=expected)
    with pytest.raises(ValueError, match="X contains images.*expecting 64 features"):
        as_dataset(np.zeros((2, 8, 8)), expected=InputInfo("tabular", (64,), 5))
    # An explicit image_size can make arrays fit.
    _, info = as_dataset(np.zeros((2, 28, 28, 3)), expected=expected, image_size=32)
    assert info.sample_shape == (3, 32, 32)


# ------------------------------------------------------------ datasets


def _write_png_folder(root, sizes, mode="RGB"):
    from PIL import Image

    rng = np.random.RandomState(0)
    paths = []
    for k, (h, w) in enumerate(sizes):
        cls = root / f"class{k % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        arr = rng.randint(0, 256, shape).astype(np.uint8)
        path = cls / f"img{k}.png"
        Image.fromarray(arr, mode=mode if mode != "RGB" else None).save(path)
        paths.append((path, arr))
    return paths


class _CountingLoader:
    def __init__(self):
        self.calls = 0

    def __call__(self, path):
        from torchvision.datasets.folder import default_loader

        self.calls += 1
        return default_loader(path)


def test_image_folder_streams_lazily(tmp_path):
    from torchvision.datasets import ImageFolder

    _write_png_folder(tmp_path, [(16, 12)] * 6)
    loader = _CountingLoader()
    folder = ImageFolder(tmp_path, loader=loader)
    ds, info = as_dataset(folder)
    assert info == InputInfo("image", (3, 16, 12), 6)
    assert loader.calls <= 2  # only item 0, to learn the shape
    pil, _ = folder[3]
    expected = torch.from_numpy(np.asarray(pil).transpose(2, 0, 1) / 255.0).float()
    torch.testing.assert_close(ds[3], expected)
    assert ds[3].dtype == torch.float32
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.shape == (4, 3, 16, 12)


def test_image_folder_mixed_sizes(tmp_path):
    from torchvision.datasets import ImageFolder

    _write_png_folder(tmp_path, [(16, 16), (16, 16), (20, 24), (16, 16)])
    folder = ImageFolder(tmp_path)
    ds, info = as_dataset(folder)
    assert info.sample_shape == (3, 16, 16)
    sizes = [folder[i][0].size for i in range(len(folder))]
    odd = sizes.index((24, 20))
    with pytest.raises(ValueError, match="pass image_size"):
        ds[odd]
    ds, info = as_dataset(folder, image_size=(8, 10))
    assert info.sample_shape == (3, 8, 10)
    assert ds.get_batch(range(4)).shape == (4, 3, 8, 10)


def test_image_folder_expected_resizes_and_checks_channels(tmp_path):
    from torchvision.datasets import ImageFolder

    _write_png_folder(tmp_path, [(16, 16), (20, 24)])
    folder = ImageFolder(tmp_path)
    ds, info = as_dataset(folder, expected=InputInfo("image", (3, 8, 8), 100))
    assert info == InputInfo("image", (3, 8, 8), 2)
    assert ds[0].shape == ds[1].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="X has 3 channels, but SelfLabelClusterer is expecting 1"):
        as_dataset(folder, expected=InputInfo("image", (1, 8, 8), 100),
                   estimator_name="SelfLabelClusterer")


def test_grayscale_png_dataset(tmp_path):
    from PIL import Image

    paths = _write_png_folder(tmp_path, [(9, 9)] * 3, mode="L")
    images = [Image.open(p) for p, _ in paths]
    ds, info = as_dataset(images_as_dataset(images))
    assert info.sample_shape == (1, 9, 9)
    np.testing.assert_allclose(ds[1].numpy()[0], paths[1][1] / 255.0, rtol=1e-6)


class images_as_dataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_tensor_dataset_and_slice_dataset():
    skorch_helper = pytest.importorskip("skorch.helper")
    X = torch.rand(7, 3, 10, 10)
    y = torch.arange(7)
    ds, info = as_dataset(TensorDataset(X, y))
    assert info == InputInfo("image", (3, 10, 10), 7)
    torch.testing.assert_close(ds[5], X[5])
    sliced = skorch_helper.SliceDataset(TensorDataset(X, y), idx=0)
    ds, info = as_dataset(sliced)
    assert info == InputInfo("image", (3, 10, 10), 7)
    torch.testing.assert_close(ds.get_batch([1, 2]), X[1:3])
    ds, info = as_dataset(TensorDataset(torch.rand(4, 6)))
    assert info == InputInfo("tabular", (6,), 4)


def test_dataset_items_numpy_hwc_uint8():
    X = np.random.RandomState(0).randint(0, 256, (3, 5, 6, 3)).astype(np.uint8)
    ds, info = as_dataset(images_as_dataset(list(X)))
    assert info.sample_shape == (3, 5, 6)
    np.testing.assert_allclose(ds[2].numpy(), X[2].transpose(2, 0, 1) / 255.0, rtol=1e-6)


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.zeros(3)


def test_dataset_errors():
    with pytest.raises(ValueError, match="0 sample"):
        as_dataset(images_as_dataset([]))
    with pytest.raises(ValueError, match="type str"):
        as_dataset(images_as_dataset(["a", "b"]))
    with pytest.raises(ValueError, match="type int"):
        as_dataset(images_as_dataset([(1, 0)]))
    with pytest.raises(ValueError, match="Iterable-style"):
        as_dataset(_Stream())
    bad = images_as_dataset([torch.zeros(1, 4, 4), torch.full((1, 4, 4), float("nan"))])
    ds, _ = as_dataset(bad)
    with pytest.raises(ValueError, match="NaN"):
        ds[1]
    mixed = images_as_dataset([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)])
    ds, _ = as_dataset(mixed)
    with pytest.raises(ValueError, match="1 channels"):
        ds[1]
    with pytest.raises(ValueError, match="expecting 5 features"):
        as_dataset(TensorDataset(torch.zeros(3, 4)), expected=InputInfo("tabular", (5,), 3))


# ----------------------------------------------------------- augmentation


def test_tabular_has_no_augmentation():
    assert default_augmentation(InputInfo("tabular", (5,), 3)) is None


@pytest.mark.parametrize("backend", ["fast", "torchvision"])
@pytest.mark.parametrize(
    "shape", [(1, 8, 8), (1, 28, 28), (1, 40, 40), (3, 32, 32), (3, 16, 16), (4, 32, 32)]
)
def test_augmentation_changes_images_keeps_shape_and_pickles(shape, backend):
    torch.manual_seed(0)
    info = InputInfo("image", shape, 10)
    aug = default_augmentation(info, backend=backend)
    aug = pickle.loads(pickle.dumps(aug))
    x = torch.rand(shape)
    x_before = x.clone()
    outs = [aug(x) for _ in range(4)]
    for out in outs:
        assert out.shape == x.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    assert any(not torch.allclose(out, x, atol=1e-3) for out in outs)
    assert not torch.allclose(outs[0], outs[1])  # random, not a fixed map
    torch.testing.assert_close(x, x_before)


@pytest.mark.parametrize("backend", ["fast", "torchvision"])
def test_small_grey_preset_jitters_brightness(backend):
    # Fashion-MNIST-sized grey images get brightness/contrast jitter on every
    # draw: a flat image (unchanged by any crop) must change its level.
    torch.manual_seed(0)
    aug = default_augmentation(InputInfo("image", (1, 28, 28), 10), backend=backend)
    levels = torch.stack([aug(torch.full((1, 28, 28), 0.5)).mean() for _ in range(8)])
    assert ((levels - 0.5).abs() > 1e-3).all()
    assert levels.std() > 0.05


def test_fast_augmentation_batches_per_sample():
    torch.manual_seed(0)
    aug = default_augmentation(InputInfo("image", (3, 32, 32), 10))
    assert aug.supports_batch
    x = torch.rand(1, 3, 32, 32).expand(8, -1, -1, -1).contiguous()
    out = aug(x)
    assert out.shape == x.shape
    # Each sample of the batch draws its own parameters.
    assert not torch.allclose(out[0], out[1])


def test_random_geometric_special_cases_are_exact():
    x = torch.rand(4, 3, 8, 6)
    identity = RandomGeometric(crop_scale=(1.0, 1.0), crop_ratio=(0.75, 0.75))
    torch.testing.assert_close(identity(x), x)
    torch.testing.assert_close(RandomGeometric(hflip=1.0)(x), x.flip(-1))
    # A zoom by 2 about the centre keeps the centre and blanks the border.
    zoom = RandomGeometric(scale=(0.5, 0.5))(torch.ones(1, 1, 8, 8))
    assert zoom[0, 0, 0, 0] == 0 and zoom[0, 0, 4, 4] == 1


def test_random_color_matches_torchvision_ops():
    from torchvision.transforms.v2 import functional as TF

    img = torch.rand(2, 3, 8, 8)
    for col, kwargs, reference in [
        (1, dict(brightness=0.4), lambda x, f: TF.adjust_brightness(x, f)),
        (2, dict(contrast=0.4), lambda x, f: TF.adjust_contrast(x, f)),
        (3, dict(saturation=0.4), lambda x, f: TF.adjust_saturation(x, f)),
    ]:
        params = dict(brightness=0, contrast=0, saturation=0, hue=0, p=1.0, grayscale_p=0)
        params.update(kwargs)
        torch.manual_seed(5)
        u = torch.rand(2, 6, dtype=torch.float64)
        factors = 1 + 0.4 * (u[:, col] * 2 - 1)
        torch.manual_seed(5)
        out = RandomColor(**params)(img)
        for i in range(2):
            expected = reference(img[i], float(factors[i]))
            torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)
    gray = RandomColor(0, 0, 0, 0, p=1.0, grayscale_p=1.0)(img)
    torch.testing.assert_close(gray, TF.rgb_to_grayscale(img, 3), atol=1e-4, rtol=0)
    # Hue: a third of a turn maps red to green exactly.
    red = torch.zeros(3, 2, 2)
    red[0] = 1
    jitter = RandomColor(0, 0, 0, hue=1 / 3, p=1.0, grayscale_p=0)
    torch.manual_seed(0)
    seen_green = False
    for _ in range(200):
        out = jitter(red)
        if torch.allclose(out[:, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=0.05):
            seen_green = True
            break
    assert seen_green


def test_random_color_keeps_out_of_range_data():
    x = torch.randn(2, 3, 8, 8) * 5
    torch.testing.assert_close(RandomColor(p=0.0, grayscale_p=0.0)(x), x, atol=1e-5, rtol=1e-5)
    out = RandomColor(p=1.0)(x)
    assert out.min() < -1 or out.max() > 2  # scale preserved, not clipped to [0, 1]


def test_batch_compose_repr_and_order():
    comp = BatchCompose([lambda x: x + 1, lambda x: x * 2])
    assert comp(torch.zeros(1)).item() == 2
    assert "BatchCompose" in repr(default_augmentation(InputInfo("image", (1, 8, 8), 1)))


def test_augmented_dataset_returns_indices():
    X = np.random.RandomState(0).randint(0, 256, (30, 8, 8)).astype(np.uint8)
    ds, info = as_dataset(X)
    plain = AugmentedDataset(ds)
    x, i = plain[4]
    assert i == 4 and isinstance(i, int)
    torch.testing.assert_close(x, ds[4])
    pairs = plain.__getitems__([2, 9])
    assert [p[1] for p in pairs] == [2, 9]
    torch.testing.assert_close(pairs[1][0], ds[9])

    aug = AugmentedDataset(ds, default_augmentation(info))
    aug = pickle.loads(pickle.dumps(aug))
    xb, ib = next(iter(DataLoader(aug, batch_size=10, shuffle=True)))
    assert xb.shape == (10, 1, 8, 8) and xb.dtype == torch.float32
    assert ib.dtype == torch.int64 and len(set(ib.tolist())) == 10
    assert not torch.allclose(xb, ds.get_batch(ib.tolist()))

    # A per-sample (non-batched) transform goes through __getitem__ semantics.
    flip = AugmentedDataset(ds, lambda t: t.flip(-1))
    xs, idx = next(iter(DataLoader(flip, batch_size=5)))
    torch.testing.assert_close(xs, ds.get_batch(range(5)).flip(-1))
    assert idx.tolist() == [0, 1, 2, 3, 4]


def test_augmented_dataset_over_streaming_dataset():
    base, info = as_dataset(TensorDataset(torch.rand(6, 1, 12, 12)))
    aug = AugmentedDataset(base, default_augmentation(info))
    xb, ib = next(iter(DataLoader(aug, batch_size=6)))
    assert xb.shape == (6, 1, 12, 12) and ib.tolist() == list(range(6))
