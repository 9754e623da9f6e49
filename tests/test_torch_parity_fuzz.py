"""Torch parity fuzzing: thousands of random calls (random op, shapes, dtypes and arguments,
fixed seeds) run on ember and on torch 2.13, comparing result dtypes, shapes and values,
gradients (float64), and exception types. The pass rate is printed and must be 100% over the
ops ember provides; ops that ember does not have yet are listed as skipped, and deliberate
deviations are listed in ``DEVIATIONS`` with the reason.

Run ``pytest tests/test_torch_parity_fuzz.py -s`` to see the per-op table.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")

N_CALLS = 2000
SEED = 20261126
FLOAT = ("float32", "float64")
NUM = ("int32", "int64", "float32", "float64")
ALLD = ("bool", "uint8", "int32", "int64", "float32", "float64")

# Deliberate deviations (documented): name -> reason. These ops are not fuzzed.
DEVIATIONS: dict = {}


@dataclass
class Spec:
    name: str
    call: Callable                  # call(m, *tensors, **kw)
    shapes: Callable                # shapes(rng) -> list of shapes
    dtypes: tuple = FLOAT
    kwargs: Callable = lambda rng, shapes: {}  # noqa: E731
    gen: str = "uniform"            # uniform | positive | matrix | spd | int_index
    grad: bool = True
    atol: float = 1e-5
    needs: tuple = ()               # attributes ember must have (else skipped)
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- shape generators
def _shape(rng, max_ndim=3, allow_empty=True):
    nd = int(rng.integers(0, max_ndim + 1))
    lo = 0 if allow_empty and rng.random() < 0.1 else 1
    return tuple(int(rng.integers(lo, 5)) for _ in range(nd))


def _one(rng):
    return [_shape(rng)]


def _bcast_pair(rng):
    a = _shape(rng)
    if rng.random() < 0.08:   # a (usually) incompatible pair: errors must match
        return [a, tuple(int(rng.integers(2, 6)) for _ in range(max(len(a), 1)))]
    b = list(a)
    for i in range(len(b)):
        if rng.random() < 0.3:
            b[i] = 1
    if b and rng.random() < 0.3:
        b = b[int(rng.integers(0, len(b))):]
    return [a, tuple(b)]


def _same_pair(rng):
    a = _shape(rng)
    return [a, a]


def _nd(rng, lo=1, hi=3):
    nd = int(rng.integers(lo, hi + 1))
    return tuple(int(rng.integers(1, 5)) for _ in range(nd))


def _square(rng, batch_max=2):
    n = int(rng.integers(1, 5))
    batch = tuple(int(rng.integers(1, 3)) for _ in range(int(rng.integers(0, batch_max + 1))))
    if rng.random() < 0.05:   # not square: errors must match
        return [batch + (n, n + 1)]
    return [batch + (n, n)]


def _rect(rng):
    m, n = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    batch = tuple(int(rng.integers(1, 3)) for _ in range(int(rng.integers(0, 2))))
    return [batch + (m, n)]


def _dim(rng, shapes, key="dim"):
    nd = len(shapes[0])
    return {key: int(rng.integers(-max(nd, 1), max(nd, 1)))} if rng.random() < 0.95 else \
        {key: nd + 2}


def _dim_keep(rng, shapes):
    d = _dim(rng, shapes)
    d["keepdim"] = bool(rng.random() < 0.5)
    return d


def _mm_pair(rng):
    k = int(rng.integers(1, 5))
    a = tuple(int(rng.integers(1, 4)) for _ in range(int(rng.integers(0, 2)))) + \
        (int(rng.integers(1, 4)), k)
    b = (k if rng.random() < 0.95 else k + 1, int(rng.integers(1, 4)))
    return [a, b]


def _sq_rhs(rng):
    n = int(rng.integers(1, 5))
    return [(n, n), (n, int(rng.integers(1, 3)))]


# ---------------------------------------------------------------- the op table
def U(name, **kw):
    return Spec(name, lambda m, x, _n=name: getattr(m, _n)(x), _one, **kw)


def B(name, **kw):
    return Spec(name, lambda m, a, b, _n=name: getattr(m, _n)(a, b), _bcast_pair, **kw)


SPECS = [
    U("exp"), U("sin"), U("cos"), U("tanh"), U("sigmoid"), U("neg", dtypes=NUM),
    U("abs", dtypes=NUM), U("log", gen="positive"), U("sqrt", gen="positive"),
    U("rsqrt", gen="positive"), U("log1p", gen="positive"), U("expm1"), U("erf"),
    U("atan"), U("asinh"), U("relu", dtypes=NUM), U("square", dtypes=NUM),
    U("reciprocal", gen="positive"), U("floor", dtypes=NUM, grad=False),
    U("sign", dtypes=NUM, grad=False), U("sgn", grad=False),
    U("logical_not", dtypes=ALLD, grad=False), U("isnan", dtypes=FLOAT, grad=False),
    U("erfinv", gen="unit", needs=("erfinv",)), U("lgamma", gen="positive", needs=("lgamma",)),
    U("digamma", gen="positive", needs=("digamma",)),
    U("nan_to_num", needs=("nan_to_num",)), U("signbit", grad=False, needs=("signbit",)),
    B("add", dtypes=NUM), B("sub", dtypes=NUM), B("mul", dtypes=ALLD), B("div", gen="positive"),
    B("maximum", dtypes=NUM), B("minimum", dtypes=NUM), B("atan2"),
    B("pow", gen="positive"), B("eq", dtypes=ALLD, grad=False), B("lt", dtypes=NUM, grad=False),
    B("logical_and", dtypes=ALLD, grad=False), B("logaddexp", needs=("logaddexp",)),
    B("hypot", needs=("hypot",)), B("fmax", needs=("fmax",)), B("copysign", needs=("copysign",)),
    B("xlogy", gen="positive", needs=("xlogy",)),
    Spec("where", lambda m, c, a, b: m.where(c > 0, a, b),
         lambda rng: _bcast_pair(rng) + [_bcast_pair(rng)[1]], dtypes=NUM),
    Spec("clamp", lambda m, x, lo=None, hi=None: m.clamp(x, lo, hi), _one, dtypes=NUM,
         kwargs=lambda rng, s: {"lo": -0.5, "hi": 0.7} if rng.random() < 0.5 else {"hi": 0.2}),
    Spec("lerp", lambda m, a, b, w=0.3: m.lerp(a, b, w), _same_pair),
    # reductions
    Spec("sum", lambda m, x, **k: m.sum(x, **k), _one, dtypes=ALLD, kwargs=_dim_keep),
    Spec("mean", lambda m, x, **k: m.mean(x, **k), _one, kwargs=_dim_keep),
    Spec("prod", lambda m, x, **k: m.prod(x, **k), _one, dtypes=NUM, kwargs=_dim_keep),
    Spec("amax", lambda m, x, **k: m.amax(x, **k), _one, dtypes=NUM, kwargs=_dim_keep),
    Spec("max_dim", lambda m, x, **k: m.max(x, **k), _one, dtypes=NUM, kwargs=_dim_keep),
    Spec("argmax", lambda m, x, **k: m.argmax(x, **k), _one, dtypes=NUM, kwargs=_dim_keep,
         grad=False),
    Spec("std", lambda m, x, **k: m.std(x, **k), lambda rng: [_nd(rng)], kwargs=_dim_keep),
    Spec("var", lambda m, x, **k: m.var(x, **k), lambda rng: [_nd(rng)], kwargs=_dim_keep),
    Spec("logsumexp", lambda m, x, **k: m.logsumexp(x, **k), lambda rng: [_nd(rng)],
         kwargs=_dim_keep),
    Spec("cumsum", lambda m, x, **k: m.cumsum(x, **k), _one, dtypes=NUM, kwargs=_dim),
    Spec("cumprod", lambda m, x, **k: m.cumprod(x, **k), _one, dtypes=NUM, kwargs=_dim,
         needs=("cumprod",)),
    Spec("logcumsumexp", lambda m, x, **k: m.logcumsumexp(x, **k), lambda rng: [_nd(rng)],
         kwargs=_dim, needs=("logcumsumexp",)),
    Spec("norm", lambda m, x, **k: m.norm(x, **k), lambda rng: [_nd(rng)],
         kwargs=lambda rng, s: {"p": [1, 2, 3, math.inf][int(rng.integers(0, 4))]}),
    Spec("softmax", lambda m, x, **k: m.softmax(x, **k), lambda rng: [_nd(rng)], kwargs=_dim),
    Spec("log_softmax", lambda m, x, **k: m.log_softmax(x, **k), lambda rng: [_nd(rng)],
         kwargs=_dim),
    # shape and indexing
    Spec("transpose", lambda m, x: x.transpose(0, -1), lambda rng: [_nd(rng)], dtypes=ALLD),
    Spec("permute", lambda m, x: x.permute(tuple(reversed(range(x.ndim)))), _one, dtypes=ALLD),
    Spec("flatten", lambda m, x: m.flatten(x), _one, dtypes=ALLD),
    Spec("unsqueeze", lambda m, x, **k: x.unsqueeze(**k), _one, dtypes=NUM, kwargs=_dim),
    Spec("squeeze", lambda m, x: x.squeeze(), _one, dtypes=NUM),
    Spec("cat", lambda m, a, b, **k: m.cat([a, b], **k), _same_pair, dtypes=NUM, kwargs=_dim),
    Spec("stack", lambda m, a, b, **k: m.stack([a, b], **k), _same_pair, dtypes=NUM,
         kwargs=lambda rng, s: {"dim": int(rng.integers(0, len(s[0]) + 1))}),
    Spec("flip", lambda m, x, **k: m.flip(x, (k["dim"],)), lambda rng: [_nd(rng)], dtypes=NUM,
         kwargs=_dim, needs=("flip",)),
    Spec("roll", lambda m, x, **k: m.roll(x, 2, k["dim"]), lambda rng: [_nd(rng)], dtypes=NUM,
         kwargs=_dim, needs=("roll",)),
    Spec("tril", lambda m, x: m.tril(x), lambda rng: [_nd(rng, 2, 3)], dtypes=NUM,
         needs=("tril",)),
    Spec("triu", lambda m, x, **k: m.triu(x, 1), lambda rng: [_nd(rng, 2, 3)], dtypes=NUM,
         needs=("triu",)),
    Spec("gather", lambda m, x, i: m.gather(x, 0, (i.abs() * 7).long() % x.shape[0]),
         lambda rng: [(3, 4), (2, 4)], needs=("gather",)),
    Spec("index_select", lambda m, x, i: m.index_select(x, 1, (i.abs() * 7).long() % 4),
         lambda rng: [(3, 4), (5,)], needs=("index_select",)),
    Spec("sort", lambda m, x, **k: m.sort(x, **k), lambda rng: [_nd(rng)], kwargs=_dim,
         needs=("sort",)),
    Spec("topk", lambda m, x: m.topk(x, 1), lambda rng: [_nd(rng)], needs=("topk",)),
    Spec("trace", lambda m, x: m.trace(x), lambda rng: [(3, 4)], needs=("trace",)),
    Spec("outer", lambda m, a, b: m.outer(a, b), lambda rng: [(3,), (4,)], needs=("outer",)),
    Spec("diag_embed", lambda m, x: m.diag_embed(x), lambda rng: [_nd(rng)],
         needs=("diag_embed",)),
    # products
    Spec("matmul", lambda m, a, b: m.matmul(a, b), _mm_pair, dtypes=NUM),
    Spec("einsum", lambda m, a, b: m.einsum("...ij,jk->...ik", a, b), _mm_pair),
    # linalg
    Spec("linalg.inv", lambda m, a: m.linalg.inv(a), _square, gen="matrix"),
    Spec("linalg.det", lambda m, a: m.linalg.det(a), _square, gen="matrix"),
    Spec("linalg.slogdet", lambda m, a: m.linalg.slogdet(a), _square, gen="matrix"),
    Spec("linalg.solve", lambda m, a, b: m.linalg.solve(a, b), _sq_rhs, gen="matrix"),
    Spec("linalg.cholesky", lambda m, a: m.linalg.cholesky(a @ a.mT + a.shape[-1] *
                                                           m.eye(a.shape[-1], dtype=a.dtype)),
         _square, gen="matrix"),
    Spec("linalg.qr.R", lambda m, a: m.linalg.qr(a).R.abs(), _rect),
    Spec("linalg.svdvals", lambda m, a: m.linalg.svdvals(a), _rect, atol=1e-4),
    Spec("linalg.eigvalsh", lambda m, a: m.linalg.eigvalsh(a + a.mT), _square),
    Spec("linalg.pinv", lambda m, a: m.linalg.pinv(a), _rect, atol=1e-4),
    Spec("linalg.matrix_exp", lambda m, a: m.linalg.matrix_exp(a), _square),
    Spec("linalg.matrix_norm", lambda m, a, **k: m.linalg.matrix_norm(a, **k), _rect,
         kwargs=lambda rng, s: {"ord": ["fro", "nuc", 1, -1, 2, math.inf][int(rng.integers(0, 6))]},
         atol=1e-4),
    Spec("linalg.vector_norm", lambda m, a, **k: m.linalg.vector_norm(a, **k), _one,
         kwargs=lambda rng, s: {"ord": [1, 2, 0.5, math.inf][int(rng.integers(0, 4))]}),
    Spec("linalg.matrix_power", lambda m, a, **k: m.linalg.matrix_power(a, **k), _square,
         gen="matrix", kwargs=lambda rng, s: {"n": int(rng.integers(-2, 4))}),
    Spec("linalg.cross", lambda m, a, b: m.linalg.cross(a, b), lambda rng: [(2, 3), (2, 3)]),
    Spec("linalg.vecdot", lambda m, a, b: m.linalg.vecdot(a, b), _bcast_pair),
    Spec("linalg.lstsq", lambda m, a, b: m.linalg.lstsq(a, b).solution,
         lambda rng: [(4, 2), (4, int(rng.integers(1, 3)))]),
    Spec("linalg.lu_factor", lambda m, a: m.linalg.lu_factor(a).LU, _square, gen="matrix"),
    Spec("linalg.solve_triangular", lambda m, a, b: m.linalg.solve_triangular(a, b, upper=True),
         _sq_rhs, gen="matrix"),
    # fft
    Spec("fft.fft", lambda m, x, **k: _re(m, m.fft.fft(x, **k)), lambda rng: [_nd(rng)],
         kwargs=lambda rng, s: {"n": int(rng.integers(1, 6)), "norm": ["backward", "ortho",
                                                                   "forward"][int(rng.integers(0, 3))]}),
    Spec("fft.rfft", lambda m, x, **k: _re(m, m.fft.rfft(x, **k)), lambda rng: [_nd(rng)],
         kwargs=_dim),
    Spec("fft.irfft", lambda m, x, **k: m.fft.irfft(x, **k), lambda rng: [_nd(rng)],
         kwargs=lambda rng, s: {"n": int(rng.integers(1, 7))}),
    Spec("fft.fftn", lambda m, x: _re(m, m.fft.fftn(x)), lambda rng: [_nd(rng)]),
    Spec("fft.irfft2", lambda m, x: m.fft.irfft2(x), lambda rng: [_nd(rng, 2, 3)]),
    Spec("fft.hfft", lambda m, x: m.fft.hfft(x), lambda rng: [_nd(rng)]),
    Spec("fft.fftshift", lambda m, x: m.fft.fftshift(x), _one, dtypes=NUM),
]


def _re(m, z):
    """A real, differentiable view of a complex result (real part plus imaginary part)."""
    if hasattr(m, "real") and callable(m.real):
        return m.real(z) + m.real(z * -1j) * 0.5
    from ember.ops.linalg_solve import real
    return real(z) + real(z * -1j) * 0.5


# ---------------------------------------------------------------- one call
def _arrays(spec: Spec, rng, shapes, dtype):
    out = []
    for shp in shapes:
        if spec.gen == "positive":
            a = rng.uniform(0.2, 2.0, shp)
        elif spec.gen == "unit":
            a = rng.uniform(-0.9, 0.9, shp)
        elif spec.gen == "matrix" and len(shp) >= 2 and shp[-1] == shp[-2]:
            a = rng.uniform(-1, 1, shp) + shp[-1] * np.eye(shp[-1])
        else:
            a = rng.uniform(-2, 2, shp)
        if dtype == "bool":
            a = a > 0
        elif dtype.startswith(("int", "uint")):
            a = np.round(np.abs(a) * 3 if dtype == "uint8" else a * 3).astype(dtype)
        else:
            a = a.astype(dtype)
        out.append(a)
    return out


def _category(exc: BaseException) -> str:
    for kind in (IndexError, TypeError, ValueError, RuntimeError):
        if isinstance(exc, kind):
            return kind.__name__
    return type(exc).__name__


def _outs(o):
    if isinstance(o, (tuple, list)):
        return list(o)
    return [o]


def _to_np(t):
    if isinstance(t, ember.Tensor):
        return t.detach().numpy()
    return t.detach().resolve_conj().resolve_neg().numpy()


def _run_one(spec: Spec, rng) -> str | None:
    """None on agreement, else a description of the mismatch."""
    shapes = spec.shapes(rng)
    dtype = spec.dtypes[int(rng.integers(0, len(spec.dtypes)))]
    arrays = _arrays(spec, rng, shapes, dtype)
    kwargs = spec.kwargs(rng, shapes)
    grad = spec.grad and dtype == "float64"
    e_in = [ember.tensor(a).requires_grad_(grad) for a in arrays]
    t_in = [torch.tensor(a).requires_grad_(grad) for a in arrays]
    t_exc = e_exc = None
    try:
        t_out = spec.call(torch, *t_in, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any torch error must be matched
        t_exc = exc
    try:
        e_out = spec.call(ember, *e_in, **kwargs)
    except Exception as exc:  # noqa: BLE001
        e_exc = exc
    if t_exc is not None or e_exc is not None:
        if t_exc is None or e_exc is None:
            return f"exception mismatch: torch {t_exc!r} vs ember {e_exc!r}"
        if _category(t_exc) != _category(e_exc):
            return f"exception type: torch {type(t_exc).__name__} vs ember {type(e_exc).__name__}"
        if "numpy" in str(e_exc).lower():
            return f"NumPy text leaked: {e_exc}"
        return None
    t_list, e_list = _outs(t_out), _outs(e_out)
    if len(t_list) != len(e_list):
        return f"output count {len(e_list)} vs {len(t_list)}"
    tol = {"float32": 1e-4}.get(dtype, 1e-7)
    tol = max(tol, spec.atol if dtype == "float32" else 1e-7)
    for t, e in zip(t_list, e_list):
        if str(e.dtype).split(".")[-1] != str(t.dtype).split(".")[-1]:
            return f"dtype {e.dtype} vs torch {t.dtype}"
        if tuple(e.shape) != tuple(t.shape):
            return f"shape {tuple(e.shape)} vs torch {tuple(t.shape)}"
        ev, tv = _to_np(e), _to_np(t)
        if ev.dtype == np.bool_:
            if not np.array_equal(ev, tv):
                return "bool values differ"
        elif not np.allclose(ev.astype(np.complex128), tv.astype(np.complex128), rtol=tol,
                             atol=tol, equal_nan=True):
            return f"values differ (max {np.nanmax(np.abs(ev - tv)) if ev.size else 0})"
    if grad:
        weights = [rng.uniform(-1, 1, tuple(o.shape)) for o in t_list]
        losses = []
        for m, outs in ((torch, t_list), (ember, e_list)):
            total = None
            for o, w in zip(outs, weights):
                if o.requires_grad and not o.is_complex():
                    term = (o * m.tensor(w, dtype=o.dtype)).sum()
                    total = term if total is None else total + term
            losses.append(total)
        if (losses[0] is None) != (losses[1] is None):
            return "requires_grad differs"
        if losses[0] is not None:
            tg = torch.autograd.grad(losses[0], t_in, allow_unused=True)
            eg = ember.autograd.grad(losses[1], e_in, allow_unused=True)
            for a, b in zip(eg, tg):
                if b is None:
                    if a is not None and np.any(_to_np(a)):
                        return "ember gradient where torch has none"
                    continue
                if a is None:
                    if np.any(_to_np(b)):
                        return "no ember gradient"
                    continue
                if not np.allclose(_to_np(a), _to_np(b), rtol=1e-6, atol=1e-6, equal_nan=True):
                    return f"gradient differs (max {np.nanmax(np.abs(_to_np(a) - _to_np(b)))})"
    return None


def test_torch_parity_fuzz():
    rng = np.random.default_rng(SEED)
    active = [s for s in SPECS if s.name not in DEVIATIONS
              and all(hasattr(ember, n) for n in s.needs)]
    skipped = sorted(s.name for s in SPECS if s not in active)
    stats: dict = {s.name: [0, 0] for s in active}
    failures: list = []
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(N_CALLS):
            spec = active[int(rng.integers(0, len(active)))]
            call_rng = np.random.default_rng([SEED, i])
            try:
                err = _run_one(spec, call_rng)
            except Exception as exc:  # noqa: BLE001 - a crash in the comparison is a failure
                err = f"harness crash: {exc!r}"
            stats[spec.name][0] += 1
            if err is not None:
                stats[spec.name][1] += 1
                failures.append((spec.name, i, err))
    elapsed = time.perf_counter() - start
    passed = N_CALLS - len(failures)
    rate = 100.0 * passed / N_CALLS
    print(f"\ntorch parity fuzz: {passed}/{N_CALLS} calls agree ({rate:.2f}%) over "
          f"{len(active)} ops in {elapsed:.1f}s; skipped (not in ember yet): {skipped}")
    for name, (n, bad) in sorted(stats.items()):
        if bad:
            print(f"  {name}: {bad}/{n} mismatches")
    for name, i, err in failures[:30]:
        print(f"  call {i} {name}: {err}")
    assert not failures, f"{len(failures)} mismatches, first: {failures[:5]}"
