"""Convolution layers and functions against torch: Conv1d/2d/3d (padding modes, 'same',
groups, dilation), ConvTranspose1d/2d/3d (output_size), lazy convs, F.conv*, unfold/fold,
init distributions, extra_repr, constructor and input errors, and double backward."""
from __future__ import annotations

import math

import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from nn_layer_parity import compare

torch = pytest.importorskip("torch")
rng = np.random.default_rng(0)


def _a(*shape):
    return rng.standard_normal(shape)


CONV_CASES = [
    ("Conv1d", (3, 4, 3), {}, (2, 3, 9)),
    ("Conv1d", (4, 6, 3), {"stride": 2, "padding": 2, "dilation": 2, "groups": 2}, (2, 4, 11)),
    ("Conv1d", (3, 2, 4), {"padding": "same", "padding_mode": "circular"}, (2, 3, 7)),
    ("Conv2d", (3, 4, 3), {"padding": 1}, (2, 3, 6, 5)),
    ("Conv2d", (4, 6, (3, 2)), {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2),
                                "groups": 2, "bias": False}, (2, 4, 7, 6)),
    ("Conv2d", (3, 4, 3), {"padding": 2, "padding_mode": "reflect"}, (1, 3, 5, 6)),
    ("Conv2d", (3, 4, 3), {"padding": (1, 2), "padding_mode": "replicate"}, (2, 3, 5, 4)),
    ("Conv2d", (3, 4, 4), {"padding": "same", "dilation": 2}, (2, 3, 7, 6)),
    ("Conv2d", (3, 4, 3), {"padding": "valid"}, (3, 5, 5)),  # unbatched input
    ("Conv2d", (4, 4, 3), {"groups": 4, "padding": 1}, (2, 4, 5, 5)),  # depthwise
    ("Conv3d", (2, 3, 2), {"padding": 1, "stride": (1, 2, 1)}, (1, 2, 4, 5, 3)),
    ("Conv3d", (2, 2, 3), {"padding": 1, "padding_mode": "circular"}, (1, 2, 3, 4, 3)),
]


@pytest.mark.parametrize("cls,args,kw,shape", CONV_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CONV_CASES)])
@pytest.mark.parametrize("train", [True, False])
def test_conv_layer_matches_torch(cls, args, kw, shape, train):
    compare(getattr(nn, cls)(*args, **kw), getattr(torch.nn, cls)(*args, **kw), torch, _a(*shape),
            train=train)


TRANSPOSED_CASES = [
    ("ConvTranspose1d", (3, 4, 3), {"stride": 2, "padding": 1, "output_padding": 1}, (2, 3, 5)),
    ("ConvTranspose2d", (4, 6, 3), {"stride": 2, "groups": 2, "dilation": 2}, (2, 4, 4, 3)),
    ("ConvTranspose2d", (3, 2, (2, 3)), {"stride": (1, 3), "padding": (1, 0), "bias": False,
                                         "output_padding": (0, 2)}, (2, 3, 4, 4)),
    ("ConvTranspose2d", (3, 2, 3), {"stride": 2}, (3, 4, 4)),  # unbatched input
    ("ConvTranspose3d", (2, 3, 2), {"stride": 2, "padding": 1}, (1, 2, 3, 3, 2)),
]


@pytest.mark.parametrize("cls,args,kw,shape", TRANSPOSED_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TRANSPOSED_CASES)])
def test_conv_transpose_layer_matches_torch(cls, args, kw, shape):
    compare(getattr(nn, cls)(*args, **kw), getattr(torch.nn, cls)(*args, **kw), torch, _a(*shape))


def test_conv_transpose_output_size_matches_torch():
    def call(m, x):
        return m(x, output_size=[12, 11])
    compare(nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1),
            torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1), torch, _a(1, 4, 6, 6),
            call=call)
    up = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match="valid sizes range from"):
        up(ember.randn(1, 4, 6, 6), output_size=[20, 20])


@pytest.mark.parametrize("name", ["LazyConv1d", "LazyConv2d", "LazyConvTranspose2d"])
def test_lazy_conv_infers_in_channels(name):
    nd = 1 if "1d" in name else 2
    m = getattr(nn, name)(5, 3)
    x = ember.randn(2, 4, *([6] * nd))
    y = m(x)
    base = name.replace("Lazy", "")
    assert type(m).__name__ == base
    assert m.in_channels == 4
    tm = getattr(torch.nn, base)(4, 5, 3)
    assert tuple(m.weight.shape) == tuple(tm.weight.shape)
    assert tuple(y.shape) == tuple(tm(torch.randn(2, 4, *([6] * nd))).shape)


def test_conv_state_dict_names_and_init_distribution():
    m, t = nn.Conv2d(8, 16, 3), torch.nn.Conv2d(8, 16, 3)
    assert list(m.state_dict()) == list(t.state_dict())
    bound = 1 / math.sqrt(8 * 9)  # kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), +)
    w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(b).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound
    tr = nn.ConvTranspose2d(8, 4, 3, groups=2)
    assert tuple(tr.weight.shape) == (8, 2, 3, 3)


REPR_CASES = [
    ("Conv2d", (3, 8, 3), {}),
    ("Conv2d", (4, 8, (3, 5)), {"stride": 2, "padding": (1, 2), "dilation": 2, "groups": 2,
                                "bias": False, "padding_mode": "reflect"}),
    ("Conv1d", (3, 8, 3), {"padding": "same"}),
    ("Conv3d", (3, 6, 3), {"padding": "valid"}),
    ("ConvTranspose2d", (3, 8, 3), {"stride": 2, "output_padding": 1}),
    ("ConvTranspose1d", (4, 8, 3), {"groups": 2, "dilation": 3}),
]


@pytest.mark.parametrize("cls,args,kw", REPR_CASES)
def test_conv_repr_matches_torch(cls, args, kw):
    assert repr(getattr(nn, cls)(*args, **kw)) == repr(getattr(torch.nn, cls)(*args, **kw))


CTOR_ERRORS = [
    ("Conv2d", (3, 8, 3), {"groups": 0}),
    ("Conv2d", (3, 8, 3), {"groups": 2}),
    ("Conv2d", (4, 6, 3), {"groups": 4}),
    ("Conv2d", (3, 8, 3), {"padding": "full"}),
    ("Conv2d", (3, 8, 3), {"padding": "same", "stride": 2}),
    ("Conv2d", (3, 8, 3), {"padding_mode": "mirror"}),
    ("ConvTranspose2d", (3, 8, 3), {"padding_mode": "reflect"}),
]


@pytest.mark.parametrize("cls,args,kw", CTOR_ERRORS)
def test_conv_constructor_errors_match_torch(cls, args, kw):
    with pytest.raises(Exception) as t_info:
        getattr(torch.nn, cls)(*args, **kw)
    with pytest.raises(type(t_info.value)):
        getattr(nn, cls)(*args, **kw)


def test_conv_layer_input_errors_name_the_layer():
    m = nn.Conv2d(3, 8, 3)
    with pytest.raises(RuntimeError, match=r"\[Conv2d\].*C_in=3.*got \(2, 3, 8\)|"
                                           r"\[Conv2d\].*channels"):
        m(ember.randn(2, 3, 8))
    with pytest.raises(RuntimeError, match=r"\[Conv2d\] expected input \(N, C_in=3, H, W\)"):
        m(ember.randn(8, 8))
    with pytest.raises(RuntimeError, match=r"\[Conv2d\] expected input with 3 channels"):
        m(ember.randn(1, 4, 8, 8))
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(3, 2, 3))
    with pytest.raises(RuntimeError, match=r"\[Conv2d 1\]"):
        net(ember.randn(1, 1, 8, 8))
    with pytest.raises(RuntimeError):
        torch.nn.Conv2d(3, 8, 3)(torch.randn(1, 4, 8, 8))


def test_functional_conv_errors():
    x, w = ember.randn(1, 3, 5, 5), ember.randn(2, 3, 3, 3)
    with pytest.raises(RuntimeError, match=r"\[conv2d\] weight expects 4 dims \(out, in/groups"):
        F.conv2d(x, ember.randn(2, 3, 3))
    with pytest.raises(RuntimeError, match=r"Input type \(double\) and weight type \(float\)"):
        F.conv2d(x.double(), w)
    with pytest.raises(RuntimeError, match="not implemented for 'int64'"):
        F.conv2d(x.long(), w.long())
    with pytest.raises(ValueError, match="strided"):
        F.conv2d(x, w, stride=2, padding="same")


def test_double_backward_matches_torch():
    xa, wa = _a(2, 3, 6, 5), _a(4, 3, 3, 3)
    res = []
    for m in (torch, ember):
        x = m.tensor(xa, requires_grad=True)
        w = m.tensor(wa, requires_grad=True)
        y = m.nn.functional.conv2d(x, w, stride=2, padding=1)
        gx, gw = m.autograd.grad((y * y).sum(), (x, w), create_graph=True)
        (gx.pow(2).sum() + gw.sin().sum()).backward()
        res.append((x.grad.detach().numpy(), w.grad.detach().numpy()))
    for a, b in zip(res[0], res[1]):
        np.testing.assert_allclose(b, a, atol=1e-9)


@pytest.mark.parametrize("kw", [{"kernel_size": 2}, {"kernel_size": (2, 3), "dilation": (2, 1),
                                                     "padding": 1, "stride": (1, 2)}])
def test_fold_unfold_layers_match_torch(kw):
    compare(nn.Unfold(**kw), torch.nn.Unfold(**kw), torch, _a(2, 3, 6, 7))
    cols = torch.nn.Unfold(**kw)(torch.zeros(2, 3, 6, 7)).shape
    compare(nn.Fold((6, 7), **kw), torch.nn.Fold((6, 7), **kw), torch, _a(*cols))
    assert repr(nn.Fold((6, 7), **kw)) == repr(torch.nn.Fold((6, 7), **kw))
    assert repr(nn.Unfold(**kw)) == repr(torch.nn.Unfold(**kw))


def test_float32_conv_matches_torch():
    x, w, b = _a(4, 3, 12, 12).astype(np.float32), _a(8, 3, 5, 5).astype(np.float32), \
        _a(8).astype(np.float32)
    ye = F.conv2d(ember.tensor(x), ember.tensor(w), ember.tensor(b), padding=2)
    yt = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), padding=2)
    assert ye.dtype == ember.float32
    np.testing.assert_allclose(ye.numpy(), yt.numpy(), atol=1e-4)
    yh = F.conv2d(ember.tensor(x).half(), ember.tensor(w).half())
    assert yh.dtype == ember.float16


def test_lenet_style_training_step_matches_torch():
    """Conv -> relu -> max_pool -> conv -> flatten, one SGD-free backward, float64."""
    def build(m):
        return m.nn.Sequential(m.nn.Conv2d(1, 6, 5, padding=2), m.nn.ReLU(), m.nn.MaxPool2d(2),
                               m.nn.Conv2d(6, 16, 5), m.nn.ReLU(), m.nn.AvgPool2d(2),
                               m.nn.Flatten())
    compare(build(ember), build(torch), torch, _a(4, 1, 28, 28))


CHUNK_CASES = [  # (input shape, weight shape, conv kwargs): wide and exact column layouts
    ((5, 3, 9, 8), (4, 3, 3, 3), {"padding": 1}),
    ((5, 4, 9, 8), (6, 2, 3, 2), {"stride": (2, 1), "dilation": (1, 2), "groups": 2}),
    ((5, 2, 11), (3, 2, 4), {"padding": 2, "dilation": 2}),
    ((3, 2, 5, 4, 6), (2, 2, 2, 3, 2), {"padding": 1}),
]


def _two_threads(n, fn, min_rows=1):
    """parallel_rows as on a machine with two spare cores."""
    import threading
    t = threading.Thread(target=fn, args=(n // 2, n))
    t.start()
    fn(0, n // 2)
    t.join()


@pytest.mark.parametrize("xs,ws,kw", CHUNK_CASES)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf arithmetic, as torch does it
def test_conv_batch_chunks_match_torch(monkeypatch, xs, ws, kw, transposed, threads):
    """The CPU path splits the batch into chunks (a few samples each at these sizes), spread
    over threads when cores are free."""
    from ember.ops import nn_conv
    monkeypatch.setattr(nn_conv, "_CHUNK_BYTES", 1000)  # 1-2 samples per chunk
    if threads == 2:
        monkeypatch.setattr(nn_conv, "parallel_rows", _two_threads)
    else:
        monkeypatch.setattr(nn_conv, "parallel_rows", lambda n, fn, min_rows=1: fn(0, n))
    nd = len(xs) - 2
    if transposed:
        xs, ws = (xs[0], ws[0]) + xs[2:], (ws[0], ws[1]) + ws[2:]
        kw = {**kw, "groups": kw.get("groups", 1)}
    xa, wa = _a(*xs), _a(*ws)
    xa[1, 0, 2] = np.inf  # wide columns must not turn the garbage positions into NaN
    res = []
    for m in (torch, ember):
        x = m.tensor(xa, requires_grad=True)
        w = m.tensor(wa, requires_grad=True)
        fn = getattr(m.nn.functional, f"conv_transpose{nd}d" if transposed else f"conv{nd}d")
        y = fn(x, w, **kw)
        g = m.tensor(np.cos(np.arange(y.numel())).reshape(tuple(y.shape)))
        y.backward(g)
        res.append([t.detach().numpy() for t in (y, x.grad, w.grad)])
    for a, b in zip(res[0], res[1]):
        np.testing.assert_allclose(b, a, atol=1e-9, rtol=1e-9)
