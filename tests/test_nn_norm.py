"""Normalization layers and functions against torch: BatchNorm1d/2d/3d (train/eval, running
statistics, momentum None, track_running_stats False, affine False), InstanceNorm, LayerNorm,
GroupNorm, RMSNorm, LocalResponseNorm; buffers, extra_repr, errors and double backward."""
from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from nn_layer_parity import compare

torch = pytest.importorskip("torch")
rng = np.random.default_rng(2)
# torch before 2.13 (the GPU machine has 2.11) has no `bias=` on the norm layers and does not
# print it: skip those cases there and compare the reprs without it.
TORCH_NORM_BIAS = "bias" in inspect.signature(torch.nn.BatchNorm2d.__init__).parameters


def _repr(m):
    return repr(m) if TORCH_NORM_BIAS else re.sub(r", bias=(True|False)", "", repr(m))


def _need_bias_kw(cls, kw):
    if "bias" in kw and "bias" not in inspect.signature(getattr(torch.nn, cls).__init__).parameters:
        pytest.skip(f"this torch has no bias= on {cls}")


def _a(*shape):
    return rng.standard_normal(shape) * 2 + 0.5


BN_CASES = [
    ("BatchNorm1d", (3,), {}, (8, 3)),
    ("BatchNorm1d", (3,), {"momentum": None}, (4, 3, 5)),
    ("BatchNorm1d", (3,), {"affine": False, "eps": 1e-3}, (4, 3, 5)),
    ("BatchNorm2d", (3,), {}, (4, 3, 5, 4)),
    ("BatchNorm2d", (3,), {"momentum": 0.3, "bias": False}, (2, 3, 4, 4)),
    ("BatchNorm2d", (3,), {"track_running_stats": False}, (4, 3, 3, 3)),
    ("BatchNorm3d", (2,), {}, (2, 2, 3, 3, 2)),
]


@pytest.mark.parametrize("cls,args,kw,shape", BN_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BN_CASES)])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_layer_matches_torch(cls, args, kw, shape, train):
    _need_bias_kw(cls, kw)
    e, t = getattr(nn, cls)(*args, **kw), getattr(torch.nn, cls)(*args, **kw)
    if train:
        compare(e, t, torch, _a(*shape), train=True, steps=3)
    else:
        # eval after training steps: uses the (updated) running statistics
        with torch.no_grad():
            t(torch.tensor(_a(*shape)).float())
        compare(e, t, torch, _a(*shape), train=False, steps=2)
    assert _repr(e) == repr(t)
    assert list(e.state_dict()) == list(t.state_dict())


def test_batch_norm_momentum_none_is_cumulative_average():
    e, t = nn.BatchNorm1d(2, momentum=None), torch.nn.BatchNorm1d(2, momentum=None)
    compare(e, t, torch, _a(6, 2), steps=4)
    assert int(e.num_batches_tracked.item()) == 4
    assert e.num_batches_tracked.dtype == ember.int64


def test_batch_norm_buffers_default_values_and_reset():
    bn = nn.BatchNorm2d(4)
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros(4))
    np.testing.assert_array_equal(bn.running_var.numpy(), np.ones(4))
    bn(ember.randn(3, 4, 2, 2))
    assert not np.allclose(bn.running_mean.numpy(), 0)
    bn.reset_running_stats()
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros(4))
    assert int(bn.num_batches_tracked.item()) == 0
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]


def test_functional_batch_norm_updates_running_stats_like_torch():
    x = _a(5, 3, 4)
    rm_e, rv_e = ember.zeros(3, dtype=ember.float64), ember.ones(3, dtype=ember.float64)
    rm_t, rv_t = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    F.batch_norm(ember.tensor(x), rm_e, rv_e, training=True, momentum=0.2)
    torch.nn.functional.batch_norm(torch.tensor(x), rm_t, rv_t, training=True, momentum=0.2)
    np.testing.assert_allclose(rm_e.numpy(), rm_t.numpy())
    np.testing.assert_allclose(rv_e.numpy(), rv_t.numpy())


def test_batch_norm_errors():
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel"):
        nn.BatchNorm1d(3)(ember.randn(1, 3))
    with pytest.raises(ValueError):
        torch.nn.BatchNorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"\[BatchNorm2d\] expected 4D input \(got 3D input"):
        nn.BatchNorm2d(3)(ember.randn(2, 3, 4))
    with pytest.raises(RuntimeError, match=r"\[BatchNorm2d\] expected input with 3 channels"):
        nn.BatchNorm2d(3)(ember.randn(2, 4, 3, 3))
    bn = nn.BatchNorm1d(3).eval()
    assert tuple(bn(ember.randn(1, 3)).shape) == (1, 3)  # one sample is fine in eval


IN_CASES = [
    ("InstanceNorm1d", (3,), {}, (2, 3, 6)),
    ("InstanceNorm1d", (3,), {"affine": True}, (3, 5)),  # unbatched
    ("InstanceNorm2d", (3,), {"affine": True, "track_running_stats": True}, (2, 3, 4, 4)),
    ("InstanceNorm3d", (2,), {"momentum": 0.5, "track_running_stats": True}, (2, 2, 3, 2, 2)),
]


@pytest.mark.parametrize("cls,args,kw,shape", IN_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(IN_CASES)])
@pytest.mark.parametrize("train", [True, False])
def test_instance_norm_layer_matches_torch(cls, args, kw, shape, train):
    _need_bias_kw(cls, kw)
    e, t = getattr(nn, cls)(*args, **kw), getattr(torch.nn, cls)(*args, **kw)
    compare(e, t, torch, _a(*shape), train=train, steps=2)
    assert _repr(e) == repr(t)


OTHER_CASES = [
    ("LayerNorm", (5,), {}, (3, 4, 5)),
    ("LayerNorm", ((4, 5),), {"eps": 1e-3, "bias": False}, (2, 4, 5)),
    ("LayerNorm", (5,), {"elementwise_affine": False}, (5,)),
    ("GroupNorm", (2, 4), {}, (3, 4, 5)),
    ("GroupNorm", (3, 6), {"affine": False, "eps": 1e-3}, (2, 6, 3, 2)),
    ("GroupNorm", (1, 4), {"bias": False}, (2, 4)),
    ("RMSNorm", (5,), {}, (3, 4, 5)),
    ("RMSNorm", ((4, 5),), {"eps": 1e-4}, (2, 4, 5)),
    ("RMSNorm", (5,), {"elementwise_affine": False}, (2, 5)),
    ("LocalResponseNorm", (3,), {}, (2, 5, 4, 4)),
    ("LocalResponseNorm", (2,), {"alpha": 0.1, "beta": 0.5, "k": 2.0}, (2, 4, 6)),
]


@pytest.mark.parametrize("cls,args,kw,shape", OTHER_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OTHER_CASES)])
def test_norm_layer_matches_torch(cls, args, kw, shape):
    _need_bias_kw(cls, kw)
    e, t = getattr(nn, cls)(*args, **kw), getattr(torch.nn, cls)(*args, **kw)
    # non-trivial affine parameters
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.tensor(_a(*p.shape)))
    compare(e, t, torch, _a(*shape))
    assert _repr(e) == repr(t)
    assert list(e.state_dict()) == list(t.state_dict())


def test_norm_layer_shape_errors_name_the_layer():
    with pytest.raises(RuntimeError, match=r"\[LayerNorm\] expected input \(\*, 4, 5\)"):
        nn.LayerNorm((4, 5))(ember.randn(2, 5, 4))
    with pytest.raises(RuntimeError, match=r"\[GroupNorm\] expected input \(N, C=6"):
        nn.GroupNorm(2, 6)(ember.randn(2, 4, 3))
    with pytest.raises(ValueError, match="num_channels must be divisible by num_groups"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError):
        torch.nn.GroupNorm(4, 6)
    with pytest.raises(RuntimeError, match=r"\[RMSNorm\]"):
        nn.RMSNorm(3)(ember.randn(2, 4))
    with pytest.raises(RuntimeError, match=r"\[layer_norm\] Given normalized_shape=\[3\]"):
        F.layer_norm(ember.randn(2, 4), (3,))


def test_norm_double_backward_matches_torch():
    xa, wa, ba = _a(4, 3, 5), _a(3), _a(3)
    res = []
    for m in (torch, ember):
        x = m.tensor(xa, requires_grad=True)
        w, b = m.tensor(wa, requires_grad=True), m.tensor(ba, requires_grad=True)
        f = m.nn.functional
        y = f.batch_norm(x, None, None, w, b, training=True) + f.group_norm(x, 3, w, b) + \
            f.layer_norm(x, (5,)) + f.rms_norm(x, (3, 5))
        gx, gw = m.autograd.grad((y ** 3).sum(), (x, w), create_graph=True)
        (gx.pow(2).sum() + gw.pow(2).sum()).backward()
        res.append((x.grad.detach().numpy(), w.grad.detach().numpy(), b.grad.detach().numpy()))
    for a, b in zip(res[1], res[0]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_float32_norms_match_torch():
    x = _a(4, 6, 5).astype(np.float32)
    for fn in (lambda m, v: m.nn.functional.batch_norm(v, None, None, training=True),
               lambda m, v: m.nn.functional.layer_norm(v, (5,)),
               lambda m, v: m.nn.functional.group_norm(v, 2),
               lambda m, v: m.nn.functional.rms_norm(v, (5,)),
               lambda m, v: m.nn.functional.instance_norm(v)):
        ye, yt = fn(ember, ember.tensor(x)), fn(torch, torch.tensor(x))
        assert ye.dtype == ember.float32
        np.testing.assert_allclose(ye.numpy(), yt.numpy(), atol=1e-5)


@pytest.mark.parametrize("size,channels", [(2, 3), (3, 7), (5, 4), (9, 3)])
def test_cross_map_lrn2d_matches_torch_forward_and_legacy_backward(size, channels):
    e, t = nn.CrossMapLRN2d(size, alpha=0.1), torch.nn.CrossMapLRN2d(size, alpha=0.1)
    compare(e, t, torch, _a(2, channels, 3, 3))
    assert _repr(e) == repr(t)
    with pytest.raises(ValueError, match=r"\[CrossMapLRN2d\] Expected input to be 4D"):
        e(ember.randn(2, 3, 4))


@pytest.mark.parametrize("name,shape", [("LazyInstanceNorm1d", (2, 3, 5)),
                                        ("LazyInstanceNorm2d", (2, 3, 4, 4)),
                                        ("LazyInstanceNorm3d", (3, 2, 3, 2))])
def test_lazy_instance_norm_infers_num_features(name, shape):
    m = getattr(nn, name)()
    x = _a(*shape)
    y = m(ember.tensor(x))
    base = name.replace("Lazy", "")
    assert type(m).__name__ == base and m.num_features == 3
    t = getattr(torch.nn, base)(m.num_features, affine=True, track_running_stats=True).double()
    np.testing.assert_allclose(y.detach().numpy(), t(torch.tensor(x)).detach().numpy(),
                               atol=1e-9)
    # The lazy module's buffers are float32 (the default dtype at construction), so the
    # running mean holds the float64 batch mean rounded to float32: a float32 tolerance.
    assert m.running_mean.dtype == ember.float32
    np.testing.assert_allclose(m.running_mean.numpy(), t.running_mean.numpy(), rtol=1e-6,
                               atol=1e-7)
