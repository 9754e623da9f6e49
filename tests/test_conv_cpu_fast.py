"""The direct CPU conv kernels (backend/cpu_conv_kernels) against torch's conv2d.

Every case runs on both CPU paths (``kernel_path``: the numba kernels, and the im2col code
with ``EMBER_NUMBA=0``) and checks which path ran, so a kernel that silently stopped being
used, or a fallback that stopped falling back, fails here.
"""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.backend import cpu_conv_kernels

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

# (N, C, H, W, O, kernel, stride, padding, dilation, groups, bias, kernels used)
# kernels used: the subset of "fwd", "wgrad", "igrad" that the fast path must take
CASES = [
    (64, 1, 28, 28, 6, (5, 5), 1, 2, 1, 1, True, {"fwd", "wgrad"}),       # LeNet conv1
    (64, 6, 14, 14, 16, (5, 5), 1, 0, 1, 1, True, {"fwd", "wgrad", "igrad"}),  # LeNet conv2
    (3, 5, 11, 9, 14, (3, 3), 2, 1, 1, 1, True, {"fwd", "wgrad", "igrad"}),  # O in 9..16
    (3, 5, 11, 9, 20, (3, 3), 2, 1, 1, 1, True, set()),  # O past 16: im2col (measured)
    (2, 30, 7, 7, 8, (3, 3), 1, 1, 1, 1, True, set()),   # 270 taps: im2col
    (2, 4, 13, 12, 7, (3, 2), 1, 2, 2, 1, False, {"fwd", "wgrad", "igrad"}),  # dilation
    (4, 9, 9, 10, 3, (3, 3), (2, 1), (0, 1), (2, 1), 1, True,
     {"fwd", "wgrad", "igrad"}),                                             # mixed tuples
    (2, 16, 6, 6, 12, (1, 1), 1, 0, 1, 1, True, {"fwd", "wgrad"}),  # 1x1: < 4 taps, no igrad
    (2, 12, 6, 6, 16, (3, 3), 1, 1, 1, 1, True, {"fwd", "wgrad", "igrad"}),  # C in 9..16
    (2, 4, 5, 5, 8, (5, 5), 1, 0, 1, 1, True, {"wgrad"}),  # 1x1 output: < a pixel tile
    (2, 4, 8, 8, 6, (3, 3), 1, 1, 1, 2, True, set()),     # groups: im2col path
    (2, 2, 8, 8, 5, (3, 3), 1, 1, 1, 1, True, {"fwd", "wgrad"}),  # C < 4: no igrad
    (3, 3, 12, 12, 5, (3, 3), 1, 0, 1, 1, True, {"fwd", "wgrad"}),  # pixel-lane wgrad, odd O
]


def _spy(monkeypatch: pytest.MonkeyPatch) -> set:
    """Record which kernel entry points run."""
    used: set = set()
    for name, tag in (("conv2d_forward", "fwd"), ("conv2d_weight_grad", "wgrad"),
                      ("conv2d_input_grad", "igrad"), ("conv2d_backward", "igrad")):
        fn = getattr(cpu_conv_kernels, name)

        def wrapped(*a, _fn=fn, _tag=tag, **k):
            out = _fn(*a, **k)
            if out is not None:
                used.add(_tag)
            return out
        monkeypatch.setattr(cpu_conv_kernels, name, wrapped)
    return used


def _pair(x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    e = [ember.tensor(a, requires_grad=True) if a is not None else None for a in (x, w, b)]
    t = [torch.tensor(a, requires_grad=True) if a is not None else None for a in (x, w, b)]
    return e, t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-o{c[4]}-"
                                                       f"k{c[5]}-s{c[6]}-p{c[7]}-d{c[8]}"
                                                       f"-g{c[9]}")
def test_conv2d_matches_torch(case, dtype, kernel_path, monkeypatch) -> None:
    n, c, h, wd, o, k, s, p, d, groups, has_bias, kinds = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = (rng.standard_normal((o, c // groups) + k) * 0.3).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if has_bias else None
    used = _spy(monkeypatch)
    (ex, ew, eb), (tx, tw, tb) = _pair(x, w, b)
    ey = ember.nn.functional.conv2d(ex, ew, eb, stride=s, padding=p, dilation=d, groups=groups)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p, dilation=d, groups=groups)
    g = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ey.backward(ember.tensor(g))
    ty.backward(torch.tensor(g))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ey.detach().numpy(), ty.detach().numpy(), **tol)
    for e, t in ((ex, tx), (ew, tw), (eb, tb)):
        if t is not None:
            scale = max(1.0, float(t.grad.abs().max()))
            np.testing.assert_allclose(e.grad.numpy() / scale, t.grad.numpy() / scale, **tol)
    expect = kinds if kernel_path == "numba" and dtype == np.float32 else set()
    assert used == expect


@pytest.mark.parametrize("op", [(1, 1), (0, 1)])
def test_conv_transpose2d_matches_torch(op, kernel_path, monkeypatch) -> None:
    """The transposed conv's forward is the input-gradient kernel (output_padding: rows
    no window reads)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 7, 6)).astype(np.float32)
    w = (rng.standard_normal((6, 5, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    used = _spy(monkeypatch)
    (ex, ew, eb), (tx, tw, tb) = _pair(x, w, b)
    kw = dict(stride=2, padding=1, output_padding=op)
    ey = ember.nn.functional.conv_transpose2d(ex, ew, eb, **kw)
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, **kw)
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    ey.backward(ember.tensor(g))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(ey.detach().numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    for e, t in ((ex, tx), (ew, tw), (eb, tb)):
        np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), rtol=1e-4, atol=1e-4)
    assert ("igrad" in used) == (kernel_path == "numba")


def test_nonfinite_values_match_torch(kernel_path) -> None:
    """inf/NaN inputs and weights: the zero lanes that pad the channels to a vector must not
    leak NaN into real outputs."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 9, 9)).astype(np.float32)
    w = (rng.standard_normal((10, 6, 3, 3)) * 0.3).astype(np.float32)
    x[0, 1, 4, 4] = np.inf
    x[1, 2, 0, 0] = np.nan
    w[3, 0, 1, 1] = -np.inf
    (ex, ew, _), (tx, tw, _) = _pair(x, w, None)
    ey = ember.nn.functional.conv2d(ex, ew)
    ty = torch.nn.functional.conv2d(tx, tw)
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    g[0, 2, 3, 3] = np.inf
    ey.backward(ember.tensor(g))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(ey.detach().numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ew.grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [CASES[0], CASES[-1]], ids=["lenet-conv1", "odd-o"])
def test_pixel_lane_weight_grad_runs(case, monkeypatch) -> None:
    """The pixel-lane weight gradient (stride-1 rows, a moved-back last step per row, odd
    channel counts) is the one taken for these shapes, and matches torch."""
    if cpu_conv_kernels.kernels() is None:
        pytest.skip("numba kernels off (EMBER_NUMBA=0 or numba missing)")
    n, c, h, wd, o, k, s, p, d, groups, has_bias, _ = case
    calls: list = []
    real = cpu_conv_kernels._weight_grad_px
    monkeypatch.setattr(cpu_conv_kernels, "_weight_grad_px",
                        lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = (rng.standard_normal((o, c) + k) * 0.3).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    (ex, ew, eb), (tx, tw, tb) = _pair(x, w, b)
    ey = ember.nn.functional.conv2d(ex, ew, eb, stride=s, padding=p, dilation=d)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p, dilation=d)
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    ey.backward(ember.tensor(g))
    ty.backward(torch.tensor(g))
    for e, t in ((ew, tw), (eb, tb)):
        scale = max(1.0, float(t.grad.abs().max()))
        np.testing.assert_allclose(e.grad.numpy() / scale, t.grad.numpy() / scale, rtol=1e-4,
                                   atol=1e-4)
    assert calls


def test_kernels_off_without_numba_switch(monkeypatch) -> None:
    monkeypatch.setenv("EMBER_NUMBA", "0")
    x = np.zeros((1, 4, 6, 6), np.float32)
    assert not cpu_conv_kernels.forward_fits(x, np.zeros((4, 4, 3, 3), np.float32), 1)
