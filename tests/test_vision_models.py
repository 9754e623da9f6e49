"""ember.vision.models: torchvision's parameter counts, state_dict key names, forward shapes,
and pretrained weights loaded from the cache directory (torchvision itself is not installable
beside torch 2.13 here, so the expected numbers are torchvision's published values)."""
import os
import urllib.error

import numpy as np
import pytest

import ember
from ember.vision import models

# torchvision's documented parameter counts (models/*.py "num_params" meta)
NUM_PARAMS = {
    "resnet18": 11689512, "resnet34": 21797672, "resnet50": 25557032, "resnet101": 44549160,
    "resnet152": 60192808, "resnext50_32x4d": 25028904, "wide_resnet50_2": 68883240,
    "vgg11": 132863336, "vgg11_bn": 132868840, "vgg16": 138357544, "vgg16_bn": 138365992,
    "vgg19": 143667240, "vgg19_bn": 143678248, "alexnet": 61100840, "mobilenet_v2": 3504872,
    "mobilenet_v3_large": 5483032, "mobilenet_v3_small": 2542856, "efficientnet_b0": 5288548,
    "convnext_tiny": 28589128, "vit_b_16": 86567656, "densenet121": 7978856,
    "squeezenet1_0": 1248424, "squeezenet1_1": 1235496,
}

# key names from torchvision's published checkpoints
KEYS = {
    "resnet18": ["conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
                 "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                 "layer2.0.downsample.1.running_var", "layer4.1.bn2.bias", "fc.weight",
                 "fc.bias"],
    "resnet50": ["layer1.0.conv3.weight", "layer1.0.bn3.weight", "layer4.2.conv3.weight"],
    "vgg16": ["features.0.weight", "features.28.weight", "classifier.0.weight",
              "classifier.3.weight", "classifier.6.bias"],
    "vgg11_bn": ["features.1.running_mean", "features.25.weight", "classifier.6.weight"],
    "alexnet": ["features.0.weight", "features.10.weight", "classifier.1.weight",
                "classifier.6.weight"],
    "mobilenet_v2": ["features.0.0.weight", "features.0.1.running_mean",
                     "features.1.conv.0.0.weight", "features.1.conv.1.weight",
                     "features.2.conv.3.weight", "features.18.0.weight",
                     "classifier.1.weight"],
    "mobilenet_v3_small": ["features.0.0.weight", "features.1.block.1.fc1.weight",
                           "features.1.block.1.fc2.bias", "features.12.0.weight",
                           "classifier.0.weight", "classifier.3.weight"],
    "mobilenet_v3_large": ["features.4.block.2.fc1.weight", "features.16.1.running_var",
                           "classifier.3.bias"],
    "efficientnet_b0": ["features.0.0.weight", "features.1.0.block.1.fc1.weight",
                        "features.2.0.block.0.0.weight", "features.8.0.weight",
                        "classifier.1.weight"],
    "convnext_tiny": ["features.0.0.weight", "features.0.1.weight", "features.1.0.layer_scale",
                      "features.1.0.block.0.weight", "features.1.0.block.2.weight",
                      "features.1.0.block.3.weight", "features.1.0.block.5.weight",
                      "features.2.0.weight", "features.2.1.weight", "features.7.2.layer_scale",
                      "classifier.0.weight", "classifier.2.weight"],
    "vit_b_16": ["class_token", "conv_proj.weight", "encoder.pos_embedding",
                 "encoder.layers.encoder_layer_0.ln_1.weight",
                 "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
                 "encoder.layers.encoder_layer_0.self_attention.in_proj_bias",
                 "encoder.layers.encoder_layer_0.self_attention.out_proj.weight",
                 "encoder.layers.encoder_layer_0.mlp.0.weight",
                 "encoder.layers.encoder_layer_11.mlp.3.bias", "encoder.ln.weight",
                 "heads.head.weight"],
    "densenet121": ["features.conv0.weight", "features.norm0.running_mean",
                    "features.denseblock1.denselayer1.norm1.weight",
                    "features.denseblock1.denselayer6.conv2.weight",
                    "features.transition1.conv.weight",
                    "features.denseblock4.denselayer16.conv2.weight", "features.norm5.bias",
                    "classifier.weight"],
    "squeezenet1_1": ["features.0.weight", "features.3.squeeze.weight",
                      "features.3.expand1x1.weight", "features.12.expand3x3.bias",
                      "classifier.1.weight"],
}


@pytest.fixture
def fast_init(monkeypatch):
    """Skip random initialisation: these tests only look at shapes and names."""
    def keep(self, *a, **k):
        return self
    for name in ("uniform_", "normal_"):
        monkeypatch.setattr(ember.Tensor, name, keep)
    monkeypatch.setattr(ember.nn.init, "trunc_normal_", lambda t, *a, **k: t)


@pytest.mark.parametrize("name", sorted(NUM_PARAMS))
def test_param_count_and_keys(name, fast_init):
    m = getattr(models, name)()
    assert sum(p.numel() for p in m.parameters()) == NUM_PARAMS[name]
    keys = set(m.state_dict().keys())
    for k in KEYS.get(name, []):
        assert k in keys, f"{name}: missing torchvision key {k}"


@pytest.mark.parametrize("name,size,kw", [
    ("resnet18", 32, {}), ("resnext50_32x4d", 32, {}), ("vgg11", 32, {"init_weights": False}),
    ("alexnet", 64, {}), ("mobilenet_v2", 32, {}), ("mobilenet_v3_small", 32, {}),
    ("efficientnet_b0", 32, {}), ("convnext_tiny", 32, {}), ("densenet121", 32, {}),
    ("squeezenet1_1", 32, {}), ("vit_b_16", 32, {"image_size": 32}),
])
def test_forward_shape_eval(name, size, kw):
    ember.manual_seed(0)
    m = getattr(models, name)(num_classes=7, **kw).eval()
    with ember.no_grad():
        out = m(ember.randn(1, 3, size, size))
    assert tuple(out.shape) == (1, 7)
    assert bool(ember.isfinite(out).all())


def test_resnet_trains_one_step():
    ember.manual_seed(0)
    m = models.resnet18(num_classes=3)
    opt = ember.optim.SGD(m.parameters(), lr=0.01)
    x = ember.randn(2, 3, 32, 32)
    loss = ember.nn.functional.cross_entropy(m(x), ember.tensor([0, 2]))
    loss.backward()
    assert m.conv1.weight.grad is not None and m.fc.bias.grad is not None
    opt.step()


def test_weights_enums_keep_torchvision_urls_and_transforms():
    w = models.ResNet18_Weights.IMAGENET1K_V1
    assert w.url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert models.ResNet50_Weights.DEFAULT is models.ResNet50_Weights.IMAGENET1K_V2
    assert models.ResNet18_Weights.verify("IMAGENET1K_V1") is w
    with pytest.raises(TypeError):
        models.ResNet18_Weights.verify(models.VGG16_Weights.IMAGENET1K_V1)
    preset = w.transforms()
    out = preset(ember.randint(0, 256, (3, 300, 280), dtype=ember.uint8))
    assert tuple(out.shape) == (3, 224, 224) and out.dtype == ember.float32
    assert "resnet18" in models.list_models()
    assert models.get_model_weights("resnet18") is models.ResNet18_Weights
    assert models.get_weight("ResNet18_Weights.IMAGENET1K_V1") is w
    assert isinstance(models.get_model("squeezenet1_1", num_classes=5),
                      models.SqueezeNet)


def test_pretrained_weights_load_from_cache_dir(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    ember.manual_seed(1)
    src = models.squeezenet1_1()
    # a checkpoint written by torch, as the real download would be
    torch.save({k: torch.from_numpy(v.numpy().copy()) for k, v in src.state_dict().items()},
               ckpt_dir / "squeezenet1_1-b8a52dc0.pth")
    m = models.squeezenet1_1(weights=models.SqueezeNet1_1_Weights.IMAGENET1K_V1)
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k].numpy(), v.numpy())
    # torchvision's deprecated spelling still works, with its warning
    with pytest.warns(UserWarning, match="pretrained"):
        legacy = models.squeezenet1_1(pretrained=True)
    np.testing.assert_array_equal(legacy.features[0].weight.detach().numpy(),
                                  src.features[0].weight.detach().numpy())


def test_missing_weights_offline_raise_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("network unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match="not in the cache"):
        models.alexnet(weights="IMAGENET1K_V1")
    assert not os.listdir(tmp_path / "hub" / "checkpoints")


def _torch_resnet18(torch, num_classes):
    """torchvision's ResNet-18 layout written with torch.nn only (torchvision itself cannot
    be installed beside torch 2.13 here): same module names, so the state_dicts match."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            idt = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + idt)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            chans = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
            for i, (cin, cout, s) in enumerate(chans):
                setattr(self, f"layer{i + 1}", nn.Sequential(Block(cin, cout, s),
                                                             Block(cout, cout, 1)))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return Net()


def test_resnet18_matches_torch_built_equivalent():
    torch = pytest.importorskip("torch")
    ember.manual_seed(0)
    em = models.resnet18(num_classes=5)
    tm = _torch_resnet18(torch, 5)
    sd = {k: torch.from_numpy(v.numpy().copy()) for k, v in em.state_dict().items()}
    # non-trivial BN statistics so eval mode exercises them
    rng = np.random.default_rng(0)
    for k in sd:
        if k.endswith("running_mean"):
            sd[k] = torch.from_numpy(rng.normal(0, 0.1, sd[k].shape).astype(np.float32))
        elif k.endswith("running_var"):
            sd[k] = torch.from_numpy(rng.uniform(0.5, 1.5, sd[k].shape).astype(np.float32))
    tm.load_state_dict(sd)
    em.load_state_dict({k: ember.tensor(v.numpy()) for k, v in sd.items()})
    x = rng.standard_normal((4, 3, 64, 64)).astype(np.float32)
    em.eval()
    tm.eval()
    with ember.no_grad():
        a = em(ember.tensor(x)).numpy()
    with torch.no_grad():
        b = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # training mode: batch statistics and gradients agree too
    em.train()
    tm.train()
    xe = ember.tensor(x, requires_grad=True)
    xt = torch.from_numpy(x).requires_grad_(True)
    em(xe).square().sum().backward()
    tm(xt).square().sum().backward()
    np.testing.assert_allclose(em.conv1.weight.grad.numpy(), tm.conv1.weight.grad.numpy(),
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(xe.grad.numpy(), xt.grad.numpy(), rtol=1e-3, atol=1e-4)
