import numpy as np
import pytest
import torch
from torch import nn

from sklearn_sela.backbones import (
    ALEXNET_MIN_SIZE,
    BACKBONE_NAMES,
    MLP,
    AlexNetFeatures,
    ConvNet,
    FeatureWhitening,
    MultiHeadNet,
    make_backbone,
)
from sklearn_sela.data import InputInfo

torch.set_num_threads(1)


def _image(c, h, w):
    return InputInfo("image", (c, h, w), 100)


@pytest.mark.parametrize(
    "info, cls",
    [
        (InputInfo("tabular", (64,), 10), MLP),
        (_image(1, 8, 8), ConvNet),
        (_image(3, 63, 80), ConvNet),
    ],
)
def test_auto_choice(info, cls):
    module, dim = make_backbone("auto", info)
    assert isinstance(module, cls)


@pytest.mark.parametrize(
    "spec, shape, dim",
    [
        ("mlp", (64,), 128),
        ("mlp", (1, 8, 8), 128),  # images are flattened
        ("convnet", (1, 8, 8), 128),
        ("convnet", (1, 28, 28), 128),
        ("convnet", (3, 32, 32), 128),
        ("convnet", (4, 9, 13), 128),
        ("resnet18", (3, 32, 32), 512),
        ("resnet18", (1, 64, 64), 512),
        ("resnet50", (3, 64, 64), 2048),
    ],
)
def test_output_shapes(spec, shape, dim):
    kind = "tabular" if len(shape) == 1 else "image"
    module, d = make_backbone(spec, InputInfo(kind, shape, 10))
    assert d == dim
    module.eval()
    with torch.no_grad():
        out = module(torch.rand(2, *shape))
    assert out.shape == (2, dim) and out.dtype == torch.float32


def test_convnet_pooling_stops_at_small_maps():
    pools = lambda m: sum(isinstance(l, nn.MaxPool2d) for l in m.features)
    assert pools(ConvNet(1, (8, 8))) == 1
    assert pools(ConvNet(1, (28, 28))) == 3
    assert pools(ConvNet(3, (32, 32))) == 3


def test_convnet_last_convolution_reads_the_whole_map_from_16_pixels():
    def last_map(module, shape):
        return tuple(module.features(torch.zeros(2, *shape)).shape[2:])

    # 28x28: one unpadded 3x3 convolution over the last 3x3 map.
    assert last_map(make_backbone("convnet", _image(1, 28, 28))[0], (1, 28, 28)) == (1, 1)
    assert last_map(make_backbone("convnet", _image(3, 32, 32))[0], (3, 32, 32)) == (2, 2)
    # Under 16 pixels the last stage keeps its padding and its 4x4 map.
    assert last_map(make_backbone("convnet", _image(1, 8, 8))[0], (1, 8, 8)) == (4, 4)
    assert last_map(ConvNet(1, (28, 28)), (1, 28, 28)) == (3, 3)
    assert last_map(ConvNet(1, (28, 28), last_padding=0), (1, 28, 28)) == (1, 1)


def test_convnet_trains():
    module, dim = make_backbone("convnet", _image(1, 28, 28))
    out = module(torch.rand(4, 1, 28, 28))
    out.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    assert (out >= 0).all()  # ends with ReLU


def test_convnet_pooled_features_under_a_projection():
    module, dim = make_backbone("convnet", _image(1, 28, 28), projection=True)
    assert dim == module.feature_dim == 256 and isinstance(module.head, nn.Flatten)
    out = module(torch.rand(4, 1, 28, 28))
    assert out.shape == (4, 256) and (out >= 0).all()  # the pooled ReLU maps
    assert make_backbone("convnet", _image(1, 8, 8), projection=True)[1] == 128
    # Only the convnet has a block of its own that the projection replaces.
    assert make_backbone("mlp", InputInfo("tabular", (10,), 5), projection=True)[1] == 128


def test_alexnet_auto_batchnorm_features_and_channels():
    # One test: each AlexNet costs seconds to initialise (57M parameters).
    module, dim = make_backbone("auto", _image(3, 64, 64))
    assert isinstance(module, AlexNetFeatures) and dim == 4096
    assert sum(isinstance(m, nn.BatchNorm2d) for m in module.modules()) == 5
    assert isinstance(module.classifier[-1], nn.ReLU)  # 1000-way layer removed
    module.eval()
    with torch.no_grad():
        assert module(torch.rand(2, 3, 64, 64)).shape == (2, 4096)
    module, dim = make_backbone("alexnet", _image(1, 63, 63))
    assert module.features[0].in_channels == 1
    with torch.no_grad():
        assert module.eval()(torch.rand(2, 1, 63, 63)).shape == (2, 4096)


def test_alexnet_too_small_raises():
    assert ALEXNET_MIN_SIZE == 63
    with pytest.raises(ValueError, match="at least 63x63"):
        make_backbone("alexnet", _image(3, 62, 100))


def test_resnet_first_conv_adapts():
    module, _ = make_backbone("resnet18", _image(4, 32, 32))
    assert module.conv1.in_channels == 4 and module.conv1.kernel_size == (3, 3)
    assert isinstance(module.maxpool, nn.Identity)
    module, _ = make_backbone("resnet18", _image(1, 96, 96))
    assert module.conv1.in_channels == 1 and module.conv1.kernel_size == (7, 7)


def test_image_backbones_reject_tabular():
    for name in ("convnet", "alexnet", "resnet18"):
        with pytest.raises(ValueError, match="needs images"):
            make_backbone(name, InputInfo("tabular", (10,), 3))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names are 'auto', 'mlp', 'convnet'"):
        make_backbone("vgg", InputInfo("tabular", (3,), 1))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        make_backbone(3, InputInfo("tabular", (3,), 1))
    assert set(BACKBONE_NAMES) == {"auto", "mlp", "convnet", "alexnet", "resnet18", "resnet50"}


def test_user_module_dim_inferred_copied_and_modes_restored():
    user = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Dropout(), nn.Linear(32, 17)
    )
    user.train()
    user[3].eval()  # a deliberately mixed state must survive
    running_mean = user[2].running_mean.clone()
    module, dim = make_backbone(user, _image(1, 8, 8))
    assert dim == 17
    assert module is not user  # training the result never touches the user's
    assert module.training and not module[3].training
    assert user.training and not user[3].training
    torch.testing.assert_close(module[2].running_mean, running_mean)  # eval-mode probe
    before = user[1].weight.clone()
    with torch.no_grad():
        module[1].weight.add_(1)
    torch.testing.assert_close(user[1].weight, before)


def test_user_module_bad_output():
    with pytest.raises(ValueError, match="2-D tensor"):
        make_backbone(nn.Identity(), _image(1, 8, 8))  # returns 4-D
    with pytest.raises(ValueError, match="failed on a dummy batch"):
        make_backbone(nn.Linear(5, 3), InputInfo("tabular", (4,), 2))

    class TupleOut(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(ValueError, match="2-D tensor"):
        make_backbone(TupleOut(), InputInfo("tabular", (4,), 2))


def test_multi_head_net():
    backbone, dim = make_backbone("mlp", InputInfo("tabular", (10,), 5))
    net = MultiHeadNet(backbone, dim, [3, 5, 7])
    assert len(net.heads) == 3 and net.n_clusters == [3, 5, 7]
    x = torch.rand(4, 10)
    logits = net(x)
    assert isinstance(logits, tuple)
    assert [tuple(l.shape) for l in logits] == [(4, 3), (4, 5), (4, 7)]
    assert net.features(x).shape == (4, dim)
    net.eval()
    with torch.no_grad():
        feats = net.features(x)
        torch.testing.assert_close(net(x)[1], net.heads[1](feats))
    assert len(MultiHeadNet(backbone, dim, 4).heads) == 1
    assert isinstance(net.projection, nn.Identity) and net.embed_dim == dim
    for bad in ([], [0], [2, -1], [2.5], [True]):
        with pytest.raises(ValueError, match="n_clusters"):
            MultiHeadNet(backbone, dim, bad)


def test_cosine_heads_behind_a_projection():
    backbone, dim = make_backbone("mlp", InputInfo("tabular", (10,), 5))
    net = MultiHeadNet(backbone, dim, [3, 5], projection=(32, 8), temperature=0.1)
    linears = [m for m in net.projection if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(dim, 32), (32, 8)]
    assert isinstance(net.projection[-1], nn.Linear)  # no ReLU on the embedding
    assert net.embed_dim == 8 and all(h.bias is None for h in net.heads)
    net.eval()
    x = torch.rand(6, 10)
    with torch.no_grad():
        feats = net.features(x)
        z = net.embed(feats)
        logits = net(x)
        assert feats.shape == (6, dim)  # the features are the backbone's
        torch.testing.assert_close(z.norm(dim=1), torch.ones(6))
        # Cosine similarity with each prototype over the temperature.
        w = net.heads[1].weight
        torch.testing.assert_close(logits[1], (z @ (w / w.norm(dim=1, keepdim=True)).T) / 0.1)
        assert logits[0].abs().max() <= 10 + 1e-4
        # The prototypes' lengths do not matter.
        net.heads[0].weight.mul_(7.0)
        torch.testing.assert_close(net(x)[0], logits[0])
        torch.testing.assert_close(net.head_logits(1, z), logits[1])


def test_feature_whitening_gives_zero_mean_and_identity_covariance():
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    scales = np.array([3.0, 2.0, 1.0, 0.5, 0.4, 0.3])
    x = ((rng.normal(size=(20000, 6)) * scales) @ rotation + 5.0).astype(np.float32)
    x[:, 2] = 7.0  # a feature that never varies
    whitening = FeatureWhitening(6)
    torch.testing.assert_close(whitening(torch.from_numpy(x)), torch.from_numpy(x))  # identity
    z = whitening.fit(x)(torch.from_numpy(x)).double().numpy()
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z[:, 2], 0, atol=1e-4)  # no variance: mapped to zero
    cov = np.cov(np.delete(z, 2, axis=1).T)
    np.testing.assert_allclose(cov, np.eye(5), atol=0.02)
    # ZCA: the matrix is symmetric, so whitened features stay aligned with the inputs.
    torch.testing.assert_close(whitening.matrix, whitening.matrix.T)
    assert "whitening.matrix" in MultiHeadNet(nn.Linear(6, 6), 6, [2]).state_dict()
