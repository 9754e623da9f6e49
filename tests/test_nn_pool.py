"""Pooling layers and functions against torch: max/avg pooling 1-3d (ceil_mode, padding,
dilation, count_include_pad, divisor_override, return_indices), adaptive pooling, LPPool,
MaxUnpool, extra_repr, errors, and double backward."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from nn_layer_parity import compare

torch = pytest.importorskip("torch")
rng = np.random.default_rng(1)


def _a(*shape):
    return rng.standard_normal(shape)


LAYER_CASES = [
    ("MaxPool1d", (3,), {"stride": 2, "padding": 1, "ceil_mode": True}, (2, 3, 10)),
    ("MaxPool2d", (2,), {}, (2, 3, 8, 7)),
    ("MaxPool2d", ((3, 2),), {"stride": (2, 1), "padding": 1, "dilation": (1, 2)}, (1, 2, 9, 8)),
    ("MaxPool2d", (3,), {"stride": 2, "ceil_mode": True}, (3, 7, 8)),  # unbatched
    ("MaxPool3d", (2,), {"stride": 1, "padding": 1}, (1, 2, 3, 4, 3)),
    ("AvgPool1d", (3,), {"stride": 2, "padding": 1, "count_include_pad": False}, (2, 3, 9)),
    ("AvgPool2d", (3,), {"stride": 2, "padding": 1, "ceil_mode": True}, (2, 3, 8, 7)),
    ("AvgPool2d", (2,), {"divisor_override": 3}, (2, 3, 6, 6)),
    ("AvgPool2d", ((2, 3),), {"stride": 1, "padding": (1, 1), "count_include_pad": False},
     (3, 5, 6)),
    ("AvgPool3d", (2,), {"stride": (1, 2, 2), "ceil_mode": True}, (1, 2, 3, 5, 5)),
    ("AdaptiveAvgPool1d", (4,), {}, (2, 3, 10)),
    ("AdaptiveAvgPool2d", ((3, 5),), {}, (2, 3, 7, 9)),
    ("AdaptiveAvgPool2d", (1,), {}, (2, 4, 5, 5)),
    ("AdaptiveAvgPool2d", ((None, 2),), {}, (2, 3, 4, 5)),
    ("AdaptiveAvgPool3d", ((2, 3, 1),), {}, (1, 2, 5, 4, 3)),
    ("AdaptiveMaxPool1d", (3,), {"return_indices": True}, (2, 3, 8)),
    ("AdaptiveMaxPool2d", ((3, 4),), {}, (2, 3, 7, 9)),
    ("AdaptiveMaxPool2d", (2,), {"return_indices": True}, (3, 5, 5)),
    ("AdaptiveMaxPool3d", ((2, 2, 3),), {}, (1, 2, 4, 5, 3)),
    ("LPPool1d", (2, 3), {"stride": 2}, (2, 3, 9)),
    ("LPPool2d", (3, 2), {}, (2, 3, 6, 6)),
    ("LPPool2d", (1.5, (2, 3)), {"stride": 1, "ceil_mode": True}, (1, 2, 5, 6)),
]


@pytest.mark.parametrize("cls,args,kw,shape", LAYER_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(LAYER_CASES)])
def test_pool_layer_matches_torch(cls, args, kw, shape):
    x = _a(*shape)
    if cls.startswith("LPPool"):
        x = np.abs(x) + 0.1  # torch's LPPool differentiates |x|^p
    e, t = getattr(nn, cls)(*args, **kw), getattr(torch.nn, cls)(*args, **kw)
    compare(e, t, torch, x)
    assert repr(e) == repr(t)


def test_max_pool_with_indices_and_unpool_match_torch():
    x = _a(2, 3, 8, 6)
    ye, ie = F.max_pool2d(ember.tensor(x), 2, return_indices=True)
    yt, it = torch.nn.functional.max_pool2d(torch.tensor(x), 2, return_indices=True)
    assert ie.dtype == ember.int64
    np.testing.assert_array_equal(ie.numpy(), it.numpy())

    def call(m, v):
        idx = ember.tensor(it.numpy()) if isinstance(v, ember.Tensor) else it
        return m(v, idx)
    compare(nn.MaxUnpool2d(2), torch.nn.MaxUnpool2d(2), torch, yt.numpy(), call=call)

    def call_sized(m, v):
        idx = ember.tensor(it.numpy()) if isinstance(v, ember.Tensor) else it
        return m(v, idx, output_size=(9, 7))
    compare(nn.MaxUnpool2d(2), torch.nn.MaxUnpool2d(2), torch, yt.numpy(), call=call_sized)
    assert repr(nn.MaxUnpool2d(2, 1)) == repr(torch.nn.MaxUnpool2d(2, 1))
    y1, i1 = torch.nn.functional.max_pool1d(torch.tensor(x[0]), 3, 2, 1, return_indices=True)
    got = F.max_unpool1d(ember.tensor(y1.numpy()), ember.tensor(i1.numpy()), 3, 2, 1,
                         output_size=[6])
    want = torch.nn.functional.max_unpool1d(y1, i1, 3, 2, 1, output_size=[6])
    np.testing.assert_allclose(got.numpy(), want.numpy())


def test_pool_double_backward_matches_torch():
    xa = _a(2, 2, 6, 6)
    res = []
    for m in (torch, ember):
        x = m.tensor(xa, requires_grad=True)
        f = m.nn.functional
        y = f.max_pool2d(x, 3, 1, 1) + f.avg_pool2d(x, 2, 1) .sum() * 0.1
        (g,) = m.autograd.grad((y * y).sum(), (x,), create_graph=True)
        (g * g).sum().backward()
        res.append(x.grad.detach().numpy())
    np.testing.assert_allclose(res[1], res[0], atol=1e-9)


def test_pool_errors_match_torch():
    x = ember.randn(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match=r"\[max_pool2d\] pad should be at most half"):
        F.max_pool2d(x, 2, padding=2)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        F.avg_pool2d(x, 5)
    with pytest.raises(RuntimeError, match=r"\[MaxPool2d\] expected 4-d input"):
        nn.MaxPool2d(2)(ember.randn(4, 4))
    with pytest.raises(RuntimeError, match=r"not implemented for 'int64'"):
        F.max_pool2d(x.long(), 2)
    with pytest.raises(RuntimeError, match="non-zero size"):
        F.adaptive_max_pool2d(ember.randn(1, 2, 0, 3), 1)
    with pytest.raises(RuntimeError):
        torch.nn.functional.max_pool2d(torch.randn(1, 1, 4, 4), 2, padding=2)


@pytest.mark.parametrize("args", [(2,), (3, 1, 1)])
def test_max_pool_nan_and_ties_follow_torch(args):
    x = np.array([[[[np.nan, 1.0, 2.0, 2.0], [np.nan, 0.0, 1.0, 2.0],
                    [3.0, 3.0, np.nan, 1.0], [3.0, 3.0, 1.0, np.nan]]]])
    ye, ie = F.max_pool2d(ember.tensor(x), *args, return_indices=True)
    yt, it = torch.nn.functional.max_pool2d(torch.tensor(x), *args, return_indices=True)
    np.testing.assert_array_equal(ie.numpy(), it.numpy())
    np.testing.assert_allclose(ye.numpy(), yt.numpy(), equal_nan=True)


def test_float32_pooling_keeps_dtype():
    x = ember.randn(2, 3, 8, 8)
    for fn in (lambda v: F.max_pool2d(v, 2), lambda v: F.avg_pool2d(v, 2),
               lambda v: F.adaptive_avg_pool2d(v, 3), lambda v: F.adaptive_max_pool2d(v, 3)):
        assert fn(x).dtype == ember.float32
        assert fn(x.half()).dtype == ember.float16


@pytest.mark.parametrize("nd,shape,kernel,kw", [
    (2, (2, 3, 9, 8), 2, {"output_size": (4, 5)}),
    (2, (2, 3, 9, 8), (3, 2), {"output_ratio": (0.5, 0.6)}),
    (2, (3, 9, 9), 3, {"output_size": 4}),
    (3, (1, 2, 7, 6, 8), 2, {"output_size": 3}),
])
def test_fractional_max_pool_matches_torch(nd, shape, kernel, kw):
    batch = shape[0] if len(shape) == nd + 2 else 1
    samples = rng.uniform(0, 1, (batch, shape[-nd - 1], nd))
    fe = getattr(F, f"fractional_max_pool{nd}d")
    ft = getattr(torch.nn.functional, f"fractional_max_pool{nd}d")
    x = _a(*shape)
    xe, xt = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ye, ie = fe(xe, kernel, return_indices=True, _random_samples=ember.tensor(samples), **kw)
    yt, it = ft(xt, kernel, return_indices=True, _random_samples=torch.tensor(samples), **kw)
    np.testing.assert_array_equal(ie.numpy(), it.numpy())
    np.testing.assert_allclose(ye.detach().numpy(), yt.detach().numpy())
    g = _a(*yt.shape)
    ye.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(xe.grad.numpy(), xt.grad.numpy())


def test_fractional_max_pool_layer():
    m = nn.FractionalMaxPool2d(3, output_ratio=(0.5, 0.5), return_indices=True)
    y, idx = m(ember.randn(2, 3, 10, 10))
    assert tuple(y.shape) == (2, 3, 5, 5) and idx.dtype == ember.int64
    assert repr(m) == repr(torch.nn.FractionalMaxPool2d(3, output_ratio=(0.5, 0.5)))
    for kw in ({}, {"output_size": 2, "output_ratio": 0.5}, {"output_ratio": 1.5}):
        with pytest.raises(ValueError):
            torch.nn.FractionalMaxPool2d(2, **kw)
        with pytest.raises(ValueError):
            nn.FractionalMaxPool2d(2, **kw)
