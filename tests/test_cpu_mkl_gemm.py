"""The optional MKL route of CPU GEMMs (ember/backend/cpu_mkl.py) against NumPy float64 and
torch: the route's own products (1-row/1-column, transposed, Fortran, sliced and batched
operands; the cases it must hand back to NumPy), and linear/matmul/mm/bmm/addmm values and
gradients through ember with it. Skipped where the ``mkl`` wheel is not installed."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.backend import cpu_mkl

pytestmark = pytest.mark.skipif(cpu_mkl._find() is None, reason="mkl wheel not installed")

RNG = np.random.default_rng(7)


def _tol(dt: np.dtype, k: int) -> dict:
    if dt == np.float32:
        return {"rtol": 2e-5, "atol": 2e-6 * k}
    return {"rtol": 1e-12, "atol": 1e-13 * k}


def _randn(shape: tuple, dt: type) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dt)


@pytest.fixture(autouse=True)
def route_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The route on, whatever the environment running the tests says."""
    monkeypatch.delenv("EMBER_MKL", raising=False)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list:
    """Records each product the route computed (not the ones it handed to NumPy)."""
    taken: list = []
    mm, bmm = cpu_mkl.mm, cpu_mkl.bmm

    def mm_counted(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        y = mm(a, b)
        if y is not None:
            taken.append(("mm", a.shape, b.shape))
        return y

    def bmm_counted(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        y = bmm(a, b)
        if y is not None:
            taken.append(("bmm", a.shape, b.shape))
        return y
    monkeypatch.setattr(cpu_mkl, "mm", mm_counted)
    monkeypatch.setattr(cpu_mkl, "bmm", bmm_counted)
    return taken


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 2048, 512), (512, 2048, 1), (700, 1, 1024),
                                   (128, 784, 256), (257, 129, 33)])
@pytest.mark.parametrize("layout", ["cc", "tc", "ct", "tt", "fortran", "sliced"])
def test_mm_layouts_vs_float64(dt: type, m: int, k: int, n: int, layout: str) -> None:
    if layout[0] == "t":            # a read transposed: a view of a (k, m) array
        a = _randn((k, m), dt).T
    elif layout == "fortran":
        a = np.asfortranarray(_randn((m, k), dt))
    elif layout == "sliced":        # every other row of a wider array: lda > k
        a = _randn((2 * m, k + 3), dt)[::2, 1:k + 1]
    else:
        a = _randn((m, k), dt)
    if layout in ("ct", "tt"):
        b = _randn((n, k), dt).T
    elif layout == "fortran":
        b = np.asfortranarray(_randn((k, n), dt))
    elif layout == "sliced":
        b = _randn((k, 2 * n), dt)[:, :n]
    else:
        b = _randn((k, n), dt)
    y = cpu_mkl.mm(a, b)
    assert y is not None and y.dtype == dt and y.shape == (m, n) and y.flags.c_contiguous
    ref = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(y, ref, **_tol(dt, k))


def test_mm_hands_back_to_numpy() -> None:
    a = _randn((256, 256), np.float32)
    b = _randn((256, 256), np.float32)
    assert cpu_mkl.mm(a, b) is not None
    assert cpu_mkl.mm(a[:, ::2], b[::2]) is None                       # element-strided
    assert cpu_mkl.mm(a[::-1], b) is None                              # negative step
    assert cpu_mkl.mm(a.astype(np.float16), b.astype(np.float16)) is None
    assert cpu_mkl.mm(a.astype(np.complex64), b.astype(np.complex64)) is None
    assert cpu_mkl.mm(a, b.astype(np.float64)) is None                 # mixed dtypes
    assert cpu_mkl.mm(a[:8, :8], b[:8, :8]) is None                    # tiny
    assert cpu_mkl.mm(np.zeros((0, 256), np.float32), b) is None       # empty
    assert cpu_mkl.mm(np.zeros((256, 0), np.float32), np.zeros((0, 256), np.float32)) is None


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("trans", [False, True])
def test_bmm_batched_vs_float64(dt: type, trans: bool) -> None:
    a = _randn((6, 96, 128), dt)
    b = _randn((6, 64, 128), dt).transpose(0, 2, 1) if trans else _randn((6, 128, 64), dt)
    y = cpu_mkl.bmm(a, b)
    assert y is not None and y.shape == (6, 96, 64)
    np.testing.assert_allclose(y, a.astype(np.float64) @ b.astype(np.float64), **_tol(dt, 128))
    # an expanded (stride-0) batch and a mismatched batch go to NumPy
    assert cpu_mkl.bmm(np.broadcast_to(a[:1], a.shape), b) is None
    assert cpu_mkl.bmm(a[:2], b) is None


def test_switch_off_gives_numpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _randn((128, 784), np.float32)
    w = _randn((256, 784), np.float32)
    monkeypatch.setenv("EMBER_MKL", "0")
    assert cpu_mkl.mm(x, w.T) is None
    y = F.linear(ember.from_numpy(x), ember.from_numpy(w)).numpy()
    assert np.array_equal(y, np.matmul(x, w.T))   # bit for bit NumPy's product
    monkeypatch.setenv("EMBER_MKL", "1")
    assert cpu_mkl.mm(x, w.T) is not None


_FRESH = r"""
import sys
import numpy as np
import ember
from ember.backend import cpu, cpu_mkl
assert "torch" not in sys.modules
rng = np.random.default_rng(3)
worst = 0.0
for m, k, n in ((1, 2048, 512), (128, 784, 256), (512, 2048, 1), (1024, 128, 384)):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32).T   # a linear layer's weight.T
    y = cpu_mkl.mm(a, b)
    assert y is not None, (m, k, n)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    # the excess over the float32 tolerance the other tests use (rtol 2e-5, atol 2e-6 k)
    worst = max(worst, float(np.max(np.abs(y - ref) - 2e-5 * np.abs(ref) - 2e-6 * k)))
print(cpu_mkl._mkl["layer"], worst)
"""


def test_fresh_process_without_torch_matches_float64() -> None:
    # The test process imports torch (GNU OpenMP loaded), so MKL runs on GNU OpenMP here;
    # a training script without torch gets Intel's OpenMP (the layer once seen to double a
    # GEMV's result beside libgomp): its products are checked in a fresh interpreter
    import os
    import subprocess
    import sys
    env = dict(os.environ)
    env.pop("EMBER_MKL", None)
    out = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    layer, worst = out.stdout.split()
    assert int(layer) in (cpu_mkl._INTEL, cpu_mkl._SEQUENTIAL)
    assert float(worst) <= 0.0


def test_threads_follow_ember(counted: list) -> None:
    from ember.backend import cpu
    x = ember.randn(512, 512)
    x.matmul(x)
    assert counted
    if cpu._state["current"] is not None:
        assert cpu_mkl._mkl["threads"] == cpu._state["current"]


torch = pytest.importorskip("torch")


def _pair(arr: np.ndarray, grad: bool = True) -> tuple:
    return (ember.tensor(arr, requires_grad=grad),
            torch.tensor(arr, requires_grad=grad))


def _close(e: ember.Tensor, t: torch.Tensor, k: int) -> None:
    ea = e.detach().numpy()
    np.testing.assert_allclose(ea, t.detach().numpy(), **_tol(ea.dtype, 4 * k))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(128, 784), (16, 64, 128), (1, 2048), (3000, 200)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_fwd_bwd_vs_torch(counted: list, dt: type, shape: tuple, bias: bool) -> None:
    k = shape[-1]
    n = 1 if shape[0] == 3000 else 384
    xe, xt = _pair(_randn(shape, dt))
    we, wt = _pair(_randn((n, k), dt) * k ** -0.5)
    be, bt = _pair(_randn(n, dt)) if bias else (None, None)
    ye = F.linear(xe, we, be)
    yt = torch.nn.functional.linear(xt, wt, bt)
    _close(ye, yt, k)
    g = _randn(tuple(yt.shape), dt)
    ye.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    rows = int(np.prod(shape[:-1]))
    _close(xe.grad, xt.grad, n)
    _close(we.grad, wt.grad, rows)
    if bias:
        _close(be.grad, bt.grad, rows)
    assert counted   # at least the large products went through MKL


@pytest.mark.parametrize("dt", DTYPES)
def test_linear_fortran_weight_and_empty(counted: list, dt: type) -> None:
    x = _randn((256, 300), dt)
    w = np.asfortranarray(_randn((200, 300), dt))
    ye = F.linear(ember.from_numpy(x), ember.from_numpy(w))
    yt = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w))
    _close(ye, yt, 300)
    xe, xt = _pair(np.zeros((0, 300), dt))
    we, wt = _pair(_randn((200, 300), dt))
    ye = F.linear(xe, we)
    assert tuple(ye.shape) == (0, 200)
    ye.sum().backward()
    assert np.array_equal(we.grad.numpy(), np.zeros((200, 300), dt))


@pytest.mark.parametrize("dt", DTYPES)
def test_matmul_family_vs_torch(counted: list, dt: type) -> None:
    ae, at = _pair(_randn((96, 160), dt))
    be, bt = _pair(_randn((200, 160), dt))
    ye = ember.mm(ae, be.t())                         # b read transposed
    yt = torch.mm(at, bt.t())
    _close(ye, yt, 160)
    g = _randn((96, 200), dt)
    ye.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    _close(ae.grad, at.grad, 200)
    _close(be.grad, bt.grad, 96)

    ce, ct = _pair(_randn((8, 64, 96), dt))
    de, dt_ = _pair(_randn((8, 96, 72), dt))
    ye = ember.bmm(ce, de)
    yt = torch.bmm(ct, dt_)
    _close(ye, yt, 96)
    g = _randn((8, 64, 72), dt)
    ye.backward(ember.tensor(g))
    yt.backward(torch.tensor(g))
    _close(ce.grad, ct.grad, 72)
    _close(de.grad, dt_.grad, 64)

    ie, it = _pair(_randn((96, 200), dt))
    ye = ember.addmm(ie, ae, be.t(), beta=0.5, alpha=2.0)
    yt = torch.addmm(it, at, bt.t(), beta=0.5, alpha=2.0)
    _close(ye, yt, 160)

    xe, xt = _pair(_randn((4, 50, 160), dt))
    _close(xe @ be.t(), xt @ bt.t(), 160)             # (*, K) @ (K, N) folded
    _close(ember.matmul(xe[:, ::2], be.t()), torch.matmul(xt[:, ::2], bt.t()), 160)
    kinds = {c[0] for c in counted}
    assert kinds == {"mm", "bmm"}


def test_one_row_and_column_vs_torch(counted: list) -> None:
    a = _randn((1, 4096), np.float32)
    b = _randn((4096, 300), np.float32)
    _close(ember.from_numpy(a) @ ember.from_numpy(b), torch.from_numpy(a) @ torch.from_numpy(b),
           4096)
    _close(ember.from_numpy(b.T.copy()) @ ember.from_numpy(a.T.copy()),
           torch.from_numpy(b.T.copy()) @ torch.from_numpy(a.T.copy()), 4096)
    assert len(counted) == 2


@pytest.mark.parametrize("caller", ["numba", "ctypes"])
@pytest.mark.parametrize("dt", DTYPES)
def test_both_callers_vs_float64(monkeypatch: pytest.MonkeyPatch, caller: str,
                                 dt: type) -> None:
    # the compiled caller (backend/cpu_mkl_jit) and the ctypes one it replaces where numba
    # is missing: the same layouts, the same hand-backs
    cpu_mkl._load()
    if caller == "numba":
        if cpu_mkl._mkl["jit"] is None:
            pytest.skip("numba not installed")
    else:
        monkeypatch.setitem(cpu_mkl._mkl, "jit", None)
    for a, b in ((_randn((128, 256), dt), _randn((10, 256), dt).T),       # 128x256x10
                 (_randn((300, 128), dt).T, _randn((300, 200), dt)),      # weight gradient
                 (_randn((70, 90), dt)[::2, 3:83], np.asfortranarray(_randn((80, 64), dt)))):
        y = cpu_mkl.mm(a, b)
        macs = a.shape[0] * a.shape[1] * b.shape[1]
        if caller == "ctypes" and macs < cpu_mkl.MIN_MACS_CTYPES or macs < cpu_mkl.MIN_MACS:
            assert y is None
            continue
        assert y is not None and y.flags.c_contiguous and y.dtype == dt
        np.testing.assert_allclose(y, a.astype(np.float64) @ b.astype(np.float64),
                                   **_tol(dt, a.shape[1]))
    a = _randn((512, 512), dt)
    assert cpu_mkl.mm(a[:, ::2], a[::2]) is None                   # element-strided
    assert cpu_mkl.mm(a[::-1], a) is None                           # negative step
    assert cpu_mkl.mm(_randn((128, 10), dt), _randn((10, 256), dt)) is None   # k < MIN_K


@pytest.fixture
def spare_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two cores spare whatever the machine's load, so the SGD route may run."""
    from ember.backend import cpu
    if not cpu._libs():
        pytest.skip("no BLAS library found by threadpoolctl")
    monkeypatch.setattr(cpu, "_spare_threads", lambda now: 2)
    monkeypatch.setitem(cpu._state, "default", 2)


def _sgd_route_vs_torch(monkeypatch: pytest.MonkeyPatch, route_name: str, dt: str, kw: dict,
                        steps: int) -> list:
    """``steps`` SGD steps of ember and torch over a large, a small and a just-large
    parameter, compared (with the momentum buffers when there are some); returns what each
    call of ``cpu_mkl.<route_name>`` answered."""
    if cpu_mkl._load() is None or cpu_mkl._mkl["jit"] is None:
        pytest.skip("numba not installed")
    taken: list = []
    route = getattr(cpu_mkl, route_name)

    def counted(*args: object) -> bool:
        done = route(*args)
        taken.append(done)
        return done
    monkeypatch.setattr(cpu_mkl, route_name, counted)
    rng = np.random.default_rng(12)
    shapes = [(300, 200), (64,), (cpu_mkl.SGD_MIN,)]
    w0 = [rng.standard_normal(s).astype(dt) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dt) for s in shapes] for _ in range(steps)]
    res = []
    for m in (ember, torch):
        ws = [m.tensor(w.copy(), requires_grad=True) for w in w0]
        opt = m.optim.SGD(ws, **kw)
        for gs in grads:
            for w, g in zip(ws, gs):
                w.grad = m.tensor(g)
            opt.step()
        res.append([w.detach().numpy() for w in ws] +
                   [opt.state[w]["momentum_buffer"].numpy() for w in ws
                    if kw.get("momentum", 0) != 0])
    tol = dict(rtol=1e-6, atol=1e-6) if dt == "float32" else dict(rtol=1e-12, atol=1e-12)
    for e, t in zip(*res):
        np.testing.assert_allclose(e, t, **tol)
    return taken


@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("kw", [
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, dampening=0.3, maximize=True, weight_decay=0.02),
    dict(lr=0.05, momentum=0.9, nesterov=True),            # numba's one pass
])
def test_sgd_momentum_route_vs_torch(spare_cores: None, monkeypatch: pytest.MonkeyPatch,
                                     dt: str, kw: dict) -> None:
    taken = _sgd_route_vs_torch(monkeypatch, "sgd_momentum", dt, kw, 4)
    # steps 2-4 of the two large parameters (the first step makes the buffers)
    assert taken == ([] if kw.get("nesterov") else [True] * 6)


@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("kw", [dict(lr=0.05), dict(lr=0.2, maximize=True),
                                dict(lr=0.05, weight_decay=0.01)])   # decay: NumPy's passes
def test_sgd_plain_route_vs_torch(spare_cores: None, monkeypatch: pytest.MonkeyPatch,
                                  dt: str, kw: dict) -> None:
    # momentum-free SGD: large parameters take one MKL axpby pass each (without decay)
    taken = _sgd_route_vs_torch(monkeypatch, "sgd_plain", dt, kw, 3)
    assert taken == ([] if kw.get("weight_decay") else [True] * 6)


def test_sgd_route_needs_a_spare_core(monkeypatch: pytest.MonkeyPatch) -> None:
    from ember.backend import cpu
    if cpu_mkl._load() is None or cpu_mkl._mkl["jit"] is None or not cpu._libs():
        pytest.skip("numba or threadpoolctl not installed")
    monkeypatch.setattr(cpu, "_spare_threads", lambda now: 1)
    p = np.ones(1 << 16, np.float32)
    assert not cpu_mkl.sgd_momentum(p, p.copy(), p.copy(), 0.1, 0.9, 1.0, 0.0)
    assert np.array_equal(p, np.ones(1 << 16, np.float32))   # nothing written
