"""Vision ops and layers against torch: F.pad and the padding layers, interpolate/Upsample in
every mode, grid_sample, affine_grid, pixel (un)shuffle, channel shuffle; extra_repr and
errors."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from nn_layer_parity import compare

torch = pytest.importorskip("torch")
rng = np.random.default_rng(3)


def _a(*shape):
    return rng.standard_normal(shape)


def _fn_parity(fe, ft, *arrays, grad=(0,), atol=1e-9):
    te = [ember.tensor(a, requires_grad=i in grad) for i, a in enumerate(arrays)]
    tt = [torch.tensor(a, requires_grad=i in grad) for i, a in enumerate(arrays)]
    ye, yt = fe(*te), ft(*tt)
    assert tuple(ye.shape) == tuple(yt.shape)
    np.testing.assert_allclose(ye.detach().numpy(), yt.detach().numpy(), atol=atol)
    g = _a(*yt.shape)
    ye.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    for i in grad:
        np.testing.assert_allclose(te[i].grad.numpy(), tt[i].grad.numpy(), atol=atol)


# ---------------------------------------------------------------------- padding
PAD_LAYERS = [
    ("ConstantPad1d", (2, 1.5), (2, 3, 4)), ("ConstantPad2d", ((1, 0, 2, 1), -1.0), (2, 3, 4)),
    ("ConstantPad3d", (1, 0.5), (1, 2, 2, 3, 2)), ("ZeroPad1d", ((1, 2),), (3, 4)),
    ("ZeroPad2d", (2,), (1, 2, 3, 3)), ("ZeroPad3d", ((1, 0, 0, 1, 2, 0),), (1, 2, 2, 2, 2)),
    ("ReflectionPad1d", (2,), (2, 3, 5)), ("ReflectionPad2d", ((1, 2, 2, 0),), (2, 2, 4, 4)),
    ("ReflectionPad3d", (1,), (1, 2, 3, 3, 3)), ("ReplicationPad1d", ((3, 1),), (2, 3, 4)),
    ("ReplicationPad2d", (2,), (3, 4, 4)), ("ReplicationPad3d", ((1, 0, 2, 1, 0, 1),),
                                            (1, 1, 2, 3, 2)),
    ("CircularPad1d", (2,), (2, 3, 4)), ("CircularPad2d", ((1, 2, 0, 1),), (1, 2, 3, 4)),
    ("CircularPad3d", (1,), (1, 1, 2, 3, 3)),
]


@pytest.mark.parametrize("cls,args,shape", PAD_LAYERS, ids=[c[0] for c in PAD_LAYERS])
def test_padding_layer_matches_torch(cls, args, shape):
    e, t = getattr(nn, cls)(*args), getattr(torch.nn, cls)(*args)
    compare(e, t, torch, _a(*shape))
    assert repr(e) == repr(t)
    assert e.padding == t.padding


@pytest.mark.parametrize("pad,mode,value", [
    ((1, 2), "constant", None), ((-1, 2, 1, -2), "constant", 3.0),
    ((2, 1, 1, 3), "reflect", None), ((2, 1, 1, 3), "replicate", None),
    ((3, 1, 2, 2), "circular", None), ((1, 1, 1, 1, 1, 1), "replicate", None),
])
def test_functional_pad_matches_torch(pad, mode, value):
    _fn_parity(lambda x: F.pad(x, pad, mode, value),
               lambda x: torch.nn.functional.pad(x, pad, mode, value), _a(2, 3, 4, 5))


def test_pad_errors_match_torch():
    x = ember.randn(1, 2, 3)
    with pytest.raises(RuntimeError, match=r"\[pad\] Padding size should be less than"):
        F.pad(x, (3, 0), mode="reflect")
    with pytest.raises(NotImplementedError, match=r"Unrecognised padding mode"):
        F.pad(x, (1, 1), mode="mirror")
    with pytest.raises(ValueError, match="doesn't take in value"):
        F.pad(x, (1, 1), mode="reflect", value=2.0)
    with pytest.raises(ValueError, match=r"\[ReflectionPad2d\] expected 3D or 4D input"):
        nn.ReflectionPad2d(1)(ember.randn(2, 2, 2, 2, 2))


# ---------------------------------------------------------------------- interpolate
INTERP = [
    ("nearest", None, {"scale_factor": 2}, (2, 3, 4, 5)),
    ("nearest", None, {"size": (7, 3)}, (2, 3, 4, 5)),
    ("nearest", None, {"scale_factor": 1.5}, (2, 3, 7)),
    ("nearest-exact", None, {"size": (5, 9)}, (1, 2, 4, 6)),
    ("nearest", None, {"scale_factor": (2, 1, 0.5)}, (1, 2, 3, 4, 6)),
    ("linear", False, {"scale_factor": 2.5}, (2, 3, 5)),
    ("linear", True, {"size": 9}, (2, 3, 5)),
    ("bilinear", False, {"size": (7, 3)}, (2, 3, 4, 5)),
    ("bilinear", True, {"scale_factor": 2}, (2, 3, 4, 5)),
    ("bilinear", False, {"scale_factor": 0.6, "recompute_scale_factor": True}, (1, 2, 9, 8)),
    ("bicubic", False, {"scale_factor": 2}, (1, 2, 4, 5)),
    ("bicubic", True, {"size": (3, 7)}, (1, 2, 4, 5)),
    ("trilinear", False, {"size": (3, 5, 4)}, (1, 2, 2, 3, 4)),
    ("trilinear", True, {"scale_factor": 1.7}, (1, 2, 2, 3, 4)),
    ("area", None, {"size": (3, 4)}, (2, 3, 7, 9)),
    ("area", None, {"scale_factor": 0.5}, (2, 3, 8)),
]


@pytest.mark.parametrize("mode,align,kw,shape", INTERP,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(INTERP)])
def test_interpolate_matches_torch(mode, align, kw, shape):
    _fn_parity(lambda x: F.interpolate(x, mode=mode, align_corners=align, **kw),
               lambda x: torch.nn.functional.interpolate(x, mode=mode, align_corners=align, **kw),
               _a(*shape), atol=2e-6)  # float32 source indices as torch; GPU FMA rounds apart


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("kw", [{"size": (3, 10)}, {"scale_factor": 0.37},
                                {"scale_factor": (2.5, 0.5)}])
def test_interpolate_antialias_matches_torch(mode, align, kw):
    _fn_parity(lambda x: F.interpolate(x, mode=mode, align_corners=align, antialias=True, **kw),
               lambda x: torch.nn.functional.interpolate(x, mode=mode, align_corners=align,
                                                         antialias=True, **kw),
               _a(2, 3, 8, 7), atol=1e-9)
    with pytest.raises(NotImplementedError, match="Anti-alias"):
        F.interpolate(ember.randn(1, 2, 5), size=3, mode="linear", antialias=True)


@pytest.mark.parametrize("cls,kw", [
    ("Upsample", {"scale_factor": 2}), ("Upsample", {"size": (5, 3), "mode": "bilinear"}),
    ("Upsample", {"scale_factor": 1.5, "mode": "bicubic", "align_corners": True}),
    ("UpsamplingNearest2d", {"scale_factor": 3}), ("UpsamplingBilinear2d", {"size": (6, 7)}),
])
def test_upsample_layers_match_torch(cls, kw):
    e, t = getattr(nn, cls)(**kw), getattr(torch.nn, cls)(**kw)
    compare(e, t, torch, _a(2, 2, 3, 4), atol=1e-6)
    assert repr(e) == repr(t)


def test_interpolate_errors_match_torch():
    x = ember.randn(1, 2, 4, 4)
    tx = torch.randn(1, 2, 4, 4)
    cases = [
        ({"size": 3, "scale_factor": 2}, ValueError),
        ({}, ValueError),
        ({"size": 3, "mode": "nearest", "align_corners": True}, ValueError),
        ({"size": 3, "mode": "linear"}, NotImplementedError),
        ({"size": (3, 3, 3)}, ValueError),
    ]
    for kw, exc in cases:
        with pytest.raises(exc):
            torch.nn.functional.interpolate(tx, **kw)
        with pytest.raises(exc, match=r"\[interpolate\]"):
            F.interpolate(x, **kw)


# ---------------------------------------------------------------------- grid sampling
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [False, True])
def test_grid_sample_matches_torch(mode, padding_mode, align):
    x, grid = _a(2, 3, 5, 6), rng.uniform(-1.3, 1.3, (2, 4, 3, 2))
    _fn_parity(lambda a, g: F.grid_sample(a, g, mode, padding_mode, align),
               lambda a, g: torch.nn.functional.grid_sample(a, g, mode, padding_mode, align),
               x, grid, grad=(0,) if mode == "nearest" else (0, 1))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflection"])
def test_grid_sample_5d_matches_torch(mode, padding_mode):
    x, grid = _a(2, 2, 3, 4, 5), rng.uniform(-1.2, 1.2, (2, 3, 2, 2, 3))
    _fn_parity(lambda a, g: F.grid_sample(a, g, mode, padding_mode, False),
               lambda a, g: torch.nn.functional.grid_sample(a, g, mode, padding_mode, False),
               x, grid, grad=(0,) if mode == "nearest" else (0, 1))


@pytest.mark.parametrize("size,align", [((2, 3, 4, 5), False), ((2, 3, 4, 5), True),
                                        ((2, 1, 2, 3, 4), False), ((2, 1, 3, 1, 4), True)])
def test_affine_grid_matches_torch(size, align):
    theta = _a(2, 2, 3) if len(size) == 4 else _a(2, 3, 4)
    _fn_parity(lambda t: F.affine_grid(t, size, align),
               lambda t: torch.nn.functional.affine_grid(t, size, align), theta)


def test_affine_grid_then_grid_sample_identity():
    x = ember.randn(1, 2, 5, 5)
    theta = ember.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    grid = F.affine_grid(theta, (1, 2, 5, 5), align_corners=False)
    y = F.grid_sample(x, grid, align_corners=False)
    np.testing.assert_allclose(y.numpy(), x.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[grid_sample\].*padding_mode"):
        F.grid_sample(x, grid, padding_mode="wrap")
    with pytest.raises(ValueError, match=r"Nx2x3"):
        F.affine_grid(ember.randn(1, 3, 3), (1, 2, 5, 5))


# ---------------------------------------------------------------------- rearrangement
@pytest.mark.parametrize("cls,arg,shape", [("PixelShuffle", 2, (2, 8, 3, 4)),
                                           ("PixelShuffle", 3, (9, 2, 2)),
                                           ("PixelUnshuffle", 2, (2, 2, 4, 6)),
                                           ("ChannelShuffle", 3, (2, 6, 2, 2))])
def test_rearrangement_layers_match_torch(cls, arg, shape):
    e, t = getattr(nn, cls)(arg), getattr(torch.nn, cls)(arg)
    compare(e, t, torch, _a(*shape))
    assert repr(e) == repr(t)


def test_pixel_shuffle_roundtrip_and_errors():
    x = ember.randn(2, 8, 3, 3)
    np.testing.assert_array_equal(F.pixel_unshuffle(F.pixel_shuffle(x, 2), 2).numpy(),
                                  x.numpy())
    with pytest.raises(RuntimeError, match=r"\[pixel_shuffle\].*divisible by the square"):
        F.pixel_shuffle(ember.randn(1, 3, 2, 2), 2)
    with pytest.raises(RuntimeError):
        torch.nn.functional.pixel_shuffle(torch.randn(1, 3, 2, 2), 2)
