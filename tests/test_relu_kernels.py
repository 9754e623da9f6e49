"""relu and its gradient on CPU arrays large enough for the one-pass kernels (numba), and the
NumPy path (``EMBER_NUMBA=0``), against torch: NaN inputs, inf/NaN gradients at clipped
elements, float64, Fortran order, a non-contiguous input."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_relu_forward_backward_match_torch(kernel_path, dtype, layout):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 6, 12, 12)).astype(dtype)   # 13824 elements
    x.reshape(-1)[::97] = np.nan
    x.reshape(-1)[1::89] = 0.0
    g = rng.standard_normal(x.shape).astype(dtype)
    g.reshape(-1)[::53] = np.inf
    g.reshape(-1)[5::71] = np.nan
    if layout == "F":
        x, g = np.asfortranarray(x), np.asfortranarray(g)
    elif layout == "strided":
        x, g = x[:, :, ::2], g[:, :, ::2]
    got = []
    for lib in (ember, torch):
        xi = lib.tensor(x, requires_grad=True)
        y = lib.relu(xi)
        y.backward(lib.tensor(g))
        got.append((y.detach().numpy(), xi.grad.numpy()))
    np.testing.assert_array_equal(got[0][0], got[1][0])
    np.testing.assert_array_equal(got[0][1], got[1][1])


def test_threshold_backward_through_relu_of_relu_output(kernel_path):
    # the backward selects on relu's output (y > 0), which equals selecting on x > 0
    x = np.linspace(-3, 3, 8192, dtype=np.float32).reshape(64, 128)
    e = ember.tensor(x, requires_grad=True)
    t = torch.tensor(x, requires_grad=True)
    (ember.relu(e) * 3).sum().backward()
    (torch.relu(t) * 3).sum().backward()
    np.testing.assert_array_equal(e.grad.numpy(), t.grad.numpy())
