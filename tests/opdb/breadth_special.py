"""Records for special functions, extra elementwise math and complex ops (issue: ops breadth).

Complex records build complex tensors from real leaves (``complex(a, b)``) and return real
results (``real``/``imag``/``abs``/``view_as_real``), so the generic gradient tests compare
torch's conjugate-Wirtinger gradients through complex intermediates."""
from __future__ import annotations

import math

import numpy as np
from scipy import special as sp

from opdb import ErrorInput, OpEntry, Sample, binary_samples, unary_samples

ENTRIES: list = []
FL = ("float32", "float64")
NUM = ("int64", "float32", "float64")
NAN, INF = float("nan"), float("inf")


def add(*entries: OpEntry) -> None:
    ENTRIES.extend(entries)


def unary(name, call, ref, low=-2.0, high=2.0, dtypes=NUM, grad=True, gradgrad=True,
          extra=(), **kw):
    def samples(rng):
        out = unary_samples(rng, low=low, high=high)
        return out + [Sample((np.asarray(v, dtype=float),), name=f"special-{i}")
                      for i, v in enumerate(extra)]
    return OpEntry(name, call, samples, ref=ref, dtypes=dtypes, grad=grad, gradgrad=gradgrad,
                   **kw)


def fn(name):
    return lambda m, x: getattr(m, name)(x)


def special(name):
    return lambda m, *a, **k: getattr(m.special, name)(*a, **k)


# ---------------------------------------------------------------- gamma family and friends
add(
    unary("erfinv", fn("erfinv"), sp.erfinv, -0.9, 0.9, dtypes=FL),
    unary("lgamma", fn("lgamma"), sp.gammaln, 0.2, 3.0, extra=([-0.5, -1.5, -2.3],)),
    unary("digamma", fn("digamma"), sp.psi, 0.2, 3.0, extra=([-0.5, -1.5],)),
    unary("i0", fn("i0"), sp.i0),
    unary("sinc", fn("sinc"), np.sinc, extra=([0.0, 1.0, -2.0, 0.5],)),
    unary("deg2rad", fn("deg2rad"), np.deg2rad, dtypes=NUM),
    unary("rad2deg", fn("rad2deg"), np.rad2deg, dtypes=NUM),
    unary("signbit", fn("signbit"), np.signbit, grad=False, dtypes=NUM + ("bool",),
          extra=([-0.0, 0.0, -INF, NAN],)),
    unary("isposinf", fn("isposinf"), np.isposinf, grad=False, extra=([INF, -INF, NAN, 1.0],)),
    unary("isneginf", fn("isneginf"), np.isneginf, grad=False, extra=([INF, -INF, NAN, 1.0],)),
    unary("isreal", fn("isreal"), lambda x: np.ones(x.shape, bool), grad=False,
          dtypes=NUM + ("bool",)),
    unary("nan_to_num", fn("nan_to_num"), lambda x: np.nan_to_num(x), dtypes=FL,
          extra=([NAN, INF, -INF, 1.5],)),
    OpEntry("nan_to_num_args", lambda m, x, **k: m.nan_to_num(x, **k),
            lambda rng: [Sample((np.array([NAN, INF, -INF, 1.5]),), {"nan": 2.0, "posinf": 9.0,
                                                                      "neginf": -7.0})],
            ref=lambda x, **k: np.nan_to_num(x, **k), dtypes=FL),
    OpEntry("nan_to_num_", lambda m, x: x.clone().nan_to_num_(0.5),
            lambda rng: [Sample((np.array([NAN, 2.0, -1.0]),))],
            ref=lambda x: np.nan_to_num(x, nan=0.5), dtypes=FL),
)


def _polygamma_samples(rng):
    return [Sample((n, rng.uniform(0.3, 3.0, (3, 4)))) for n in (0, 1, 2, 3)] + [
        Sample((1, rng.uniform(0.3, 3.0, ())), name="0-dim")]


add(OpEntry("polygamma", lambda m, n, x: m.polygamma(n, x), _polygamma_samples,
            ref=lambda n, x: sp.polygamma(n, x), dtypes=NUM, atol=1e-5, rtol=1e-5,
            errors=[ErrorInput(Sample((-1, np.ones(3))), RuntimeError, "negative n")]),
    OpEntry("polygamma_method", lambda m, n, x: x.polygamma(n), _polygamma_samples,
            ref=lambda n, x: sp.polygamma(n, x), dtypes=FL, atol=1e-5, rtol=1e-5,
            grad=False),
    OpEntry("mvlgamma", lambda m, x, p: m.mvlgamma(x, p),
            lambda rng: [Sample((rng.uniform(2.1, 4.0, (3, 4)), p)) for p in (1, 2, 5)],
            ref=lambda x, p: sp.multigammaln(x[..., None], p)[..., 0] if x.ndim == 0 else
            np.vectorize(lambda v: sp.multigammaln(v, p))(x), dtypes=FL))

add(OpEntry("logit", lambda m, x, **k: m.logit(x, **k),
            lambda rng: [Sample((rng.uniform(0.05, 0.95, (3, 4)),)),
                         Sample((rng.uniform(-0.2, 1.2, (3, 4)),), {"eps": 0.1}, name="eps"),
                         Sample((rng.uniform(0.05, 0.95, ()),))],
            ref=lambda x, eps=None: sp.logit(np.clip(x, eps, 1 - eps) if eps else x),
            dtypes=FL))


# ---------------------------------------------------------------- binary math
def binary(name, call, ref, dtypes=FL, grad=True, positive=False, scalar=True, **kw):
    def samples(rng):
        out = binary_samples(rng, positive)
        return out if scalar else [s for s in out if s.name != "scalar"]
    return OpEntry(name, call, samples, ref=ref, dtypes=dtypes, grad=grad, **kw)


def two(name):
    return lambda m, a, b: getattr(m, name)(a, b)


def _xlogy_samples(rng):
    return binary_samples(rng, True) + [
        Sample((np.array([0.0, 0.0, 1.0, 2.0]), np.array([0.0, NAN, 0.5, 3.0])), name="zeros"),
        Sample((2.0, rng.uniform(0.5, 2, (3,))), name="scalar-self")]


add(
    OpEntry("xlogy", two("xlogy"), _xlogy_samples,
            ref=lambda a, b: np.where(np.asarray(a) == 0, np.where(np.isnan(b), NAN, 0.0),
                                      a * np.log(np.where(np.asarray(a) == 0, 1.0, b))),
            dtypes=NUM,
            grad_samples=lambda rng: binary_samples(rng, True)),
    binary("hypot", two("hypot"), np.hypot, scalar=False,
           errors=[ErrorInput(Sample((np.array([1, 2]), np.array([1, 2]))), RuntimeError,
                              "not implemented")]),
    binary("logaddexp", two("logaddexp"), np.logaddexp, scalar=False),
    binary("logaddexp2", two("logaddexp2"), np.logaddexp2, scalar=False),
    binary("copysign", two("copysign"), np.copysign, dtypes=NUM),
    binary("nextafter", two("nextafter"), np.nextafter, grad=False, scalar=False),
    binary("fmax", two("fmax"), np.fmax, dtypes=NUM, scalar=False),
    binary("fmin", two("fmin"), np.fmin, dtypes=NUM, scalar=False),
    OpEntry("fmax_nan", two("fmax"),
            lambda rng: [Sample((np.array([1.0, NAN, 3.0, NAN]), np.array([2.0, 1.0, NAN, NAN])))],
            ref=np.fmax, dtypes=FL, grad=False),
    OpEntry("heaviside", two("heaviside"),
            lambda rng: [Sample((np.array([-1.0, 0.0, 2.0, 0.0]), np.array([0.5, 0.5, 0.5, 2.0]))),
                         Sample((rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (4,))))],
            ref=lambda a, b: np.heaviside(a, b), dtypes=NUM, grad=False,
            errors=[ErrorInput(Sample((np.ones(2), np.ones(2, np.float32))), RuntimeError,
                               "different dtypes")]),
    OpEntry("gcd", lambda m, a, b: m.gcd(a.long(), b.long()),
            lambda rng: [Sample((rng.integers(-20, 20, (3, 4)) * 1.0,
                                 rng.integers(0, 20, (3, 4)) * 1.0))],
            ref=lambda a, b: np.gcd(a.astype(np.int64), b.astype(np.int64)), dtypes=("int64",),
            grad=False),
    OpEntry("gcd_float", two("gcd"), lambda rng: [], dtypes=(), grad=False,
            errors=[ErrorInput(Sample((np.ones(2), np.ones(2))), RuntimeError, "integer")]),
    OpEntry("lcm", lambda m, a, b: m.lcm(a.long(), b.long()),
            lambda rng: [Sample((rng.integers(-20, 20, (3, 4)) * 1.0,
                                 rng.integers(0, 20, (3, 4)) * 1.0))],
            ref=lambda a, b: np.lcm(a.astype(np.int64), b.astype(np.int64)), dtypes=("int64",),
            grad=False),
)


class _Ints:
    """Integer exponents, passed through unconverted."""

    def __init__(self, a) -> None:
        self.a = np.asarray(a, dtype=np.int64)

    def __repr__(self) -> str:
        return f"ints{self.a.tolist()}"


def _frexp_ref(x):
    m, e = np.frexp(x)
    return m, e


add(OpEntry("frexp", lambda m, x: m.frexp(x), lambda rng: unary_samples(rng, low=-40, high=40),
            ref=_frexp_ref, dtypes=FL,
            errors=[ErrorInput(Sample((np.array([1, 2]),)), RuntimeError, "floating-point")]),
    OpEntry("ldexp", lambda m, x, e: m.ldexp(x, m.tensor(e.a) if isinstance(e, _Ints) else e),
            # non-negative exponents: torch's ldexp gradient computes 2**other in integers, so
            # it is 0 for negative exponents (ember gives the exact 2**other)
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)), _Ints([1, 2, 0, 3]))),
                         Sample((rng.uniform(-2, 2, (3,)), _Ints(2)))],
            ref=lambda x, e: np.ldexp(x, e.a), dtypes=FL,
            errors=[ErrorInput(Sample((np.ones(2), 2)), TypeError, "must be Tensor")]),
    OpEntry("float_power", lambda m, x, e: m.float_power(x, e),
            lambda rng: [Sample((rng.uniform(0.5, 2, (3, 4)), rng.uniform(-1, 2, (4,)))),
                         Sample((rng.uniform(0.5, 2, (3,)), 2)),
                         Sample((2.0, rng.uniform(-1, 1, (3,))), name="scalar-base")],
            ref=lambda x, e: np.power(np.asarray(x, np.float64), e), dtypes=NUM),
    OpEntry("isclose", lambda m, a, b, **k: m.isclose(a, b, **k),
            lambda rng: [Sample((np.array([1.0, 1.0, NAN, INF, -INF, 0.0]),
                                 np.array([1.0 + 1e-9, 1.1, NAN, INF, INF, 1e-9]))),
                         Sample((np.array([1.0, NAN]), np.array([1.05, NAN])),
                                {"rtol": 0.1, "equal_nan": True})],
            ref=lambda a, b, **k: np.isclose(a, b, **k), dtypes=FL, grad=False,
            errors=[ErrorInput(Sample((np.ones(2), np.ones(2, np.float32))), RuntimeError,
                               "did not match")]),
    OpEntry("allclose", lambda m, a, b, **k: m.allclose(a, b, **k),
            lambda rng: [Sample((np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-9]))),
                         Sample((np.array([1.0, 2.0]), np.array([1.0, 2.1])))],
            ref=lambda a, b: np.allclose(a, b), dtypes=FL, grad=False),
    OpEntry("equal", lambda m, a, b: m.equal(a, b),
            lambda rng: [Sample((np.array([1.0, 2.0]), np.array([1.0, 2.0]))),
                         Sample((np.array([1.0, 2.0]), np.array([1.0, 3.0]))),
                         Sample((np.array([1.0, 2.0]), np.array([1.0])))],
            ref=lambda a, b: a.shape == b.shape and bool((a == b).all()), dtypes=NUM,
            grad=False))


# ---------------------------------------------------------------- ember.special
add(
    unary("special_erfcx", special("erfcx"), sp.erfcx, dtypes=FL),
    unary("special_log_ndtr", special("log_ndtr"), sp.log_ndtr, dtypes=FL),
    unary("special_ndtr", special("ndtr"), sp.ndtr, dtypes=FL),
    unary("special_ndtri", special("ndtri"), sp.ndtri, 0.05, 0.95, dtypes=FL),
    unary("special_entr", special("entr"), sp.entr, 0.1, 2.0, dtypes=FL,
          extra=([0.0, -1.0, 0.5],)),
    unary("special_i0e", special("i0e"), sp.i0e, dtypes=FL),
    unary("special_i1", special("i1"), sp.i1, dtypes=FL, extra=([0.0, 1.0],)),
    unary("special_i1e", special("i1e"), sp.i1e, dtypes=FL, extra=([0.0, -1.0],)),
    OpEntry("special_xlog1py", special("xlog1py"),
            lambda rng: binary_samples(rng, True) + [
                Sample((np.array([0.0, 0.0, 1.0]), np.array([-1.0, NAN, 0.5])), name="zeros")],
            ref=lambda a, b: np.where(np.asarray(a) == 0, np.where(np.isnan(b), NAN, 0.0),
                                      a * np.log1p(np.where(np.asarray(a) == 0, 0.0, b))),
            dtypes=FL, grad_samples=lambda rng: binary_samples(rng, True)),
    OpEntry("special_zeta", lambda m, x, q: m.special.zeta(x, q),
            lambda rng: [Sample((3.0, rng.uniform(0.5, 2.0, (3, 4)))),
                         Sample((2.5, rng.uniform(0.5, 2.0, ())))],
            ref=lambda x, q: sp.zeta(x, q), dtypes=FL),
    OpEntry("special_zeta_tensors", lambda m, x, q: m.special.zeta(x, q),
            lambda rng: [Sample((rng.uniform(1.5, 4.0, (3, 4)), rng.uniform(0.5, 2.0, (4,))))],
            ref=lambda x, q: sp.zeta(x, q), dtypes=FL, grad=False),
)

_ALIASES = [("expit", sp.expit), ("gammaln", sp.gammaln), ("psi", sp.psi), ("sinc", np.sinc),
            ("expm1", np.expm1), ("exp2", np.exp2), ("log1p", np.log1p), ("erf", sp.erf),
            ("erfc", sp.erfc), ("erfinv", sp.erfinv), ("digamma", sp.psi), ("i0", sp.i0)]


def _alias_samples(rng):
    return [Sample((rng.uniform(0.1, 0.9, (3, 4)),))]


for _n, _r in _ALIASES:
    add(OpEntry(f"special.{_n}", special(_n), _alias_samples, ref=_r, dtypes=FL, grad=False))
add(OpEntry("special.misc", lambda m, kind, x: {
                "softmax": lambda: m.special.softmax(x, 1),
                "log_softmax": lambda: m.special.log_softmax(x, 0),
                "logsumexp": lambda: m.special.logsumexp(x, 1),
                "round": lambda: m.special.round(x, decimals=1),
                "logit": lambda: m.special.logit(x, eps=0.2),
                "multigammaln": lambda: m.special.multigammaln(x + 2, 3),
                "polygamma": lambda: m.special.polygamma(2, x),
                "xlogy": lambda: m.special.xlogy(x, x + 1)}[kind](),
            lambda rng: [Sample((k, rng.uniform(0.1, 0.9, (3, 4))), name=k)
                         for k in ("softmax", "log_softmax", "logsumexp", "round", "logit",
                                   "multigammaln", "polygamma", "xlogy")],
            ref=None, dtypes=FL, grad=False))


# ---------------------------------------------------------------- complex
def _cplx_samples(rng):
    r = lambda *s: rng.uniform(-2, 2, s)  # noqa: E731
    return [Sample((r(3, 4), r(3, 4))), Sample((r(4), r(3, 1)), name="broadcast"),
            Sample((r(), r()), name="0-dim"), Sample((r(4, 3), r(4, 3)), noncontig=True)]


def _cx(m, a, b):
    return m.complex(a, b)


def cplx(name, body, ref, samples=_cplx_samples, **kw):
    """A record over complex z = complex(a, b) built from real leaves; ``body(m, z)`` must
    return real tensors."""
    return OpEntry(name, lambda m, a, b: body(m, _cx(m, a, b)), samples,
                   ref=lambda a, b: ref(np.asarray(a) + 1j * np.asarray(b)), dtypes=FL, **kw)


def _np_cview(z):
    return np.stack([z.real, z.imag], -1)


add(
    cplx("complex", lambda m, z: m.view_as_real(z), _np_cview,
         errors=[ErrorInput(Sample((np.ones(2), np.ones(2, np.float32))), RuntimeError,
                            "scalar type"),
                 ErrorInput(Sample((np.array([1, 2]), np.array([1, 2]))), RuntimeError,
                            "Half, Float or Double")]),
    cplx("view_as_real", lambda m, z: m.view_as_real(z * 2), lambda z: _np_cview(z * 2)),
    cplx("real", lambda m, z: m.real(z * z), lambda z: (z * z).real),
    cplx("imag", lambda m, z: (z * z).imag, lambda z: (z * z).imag),
    cplx("angle", lambda m, z: m.angle(z), np.angle),
    cplx("conj_physical", lambda m, z: m.view_as_real(m.conj_physical(z) * z.exp()),
         lambda z: _np_cview(np.conj(z) * np.exp(z))),
    cplx("resolve_conj", lambda m, z: m.view_as_real(m.resolve_conj(z) * 1), _np_cview,
         covers=("resolve_neg",)),
    OpEntry("polar", lambda m, a, t: m.view_as_real(m.polar(a, t)),
            lambda rng: [Sample((rng.uniform(0.5, 2, (3, 4)), rng.uniform(-3, 3, (3, 4))))],
            ref=lambda a, t: _np_cview(a * np.exp(1j * t)), dtypes=FL),
    OpEntry("view_as_complex", lambda m, x: m.view_as_real(m.view_as_complex(x) * (1 + 2j)),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 2)),)),
                         Sample((rng.uniform(-1, 1, (2, 3, 2)),))],
            ref=lambda x: _np_cview((x[..., 0] + 1j * x[..., 1]) * (1 + 2j)), dtypes=FL,
            errors=[ErrorInput(Sample((np.ones((3, 3)),)), RuntimeError,
                               "last dimension of size 2"),
                    ErrorInput(Sample((np.ones((3, 2), np.int64),)), RuntimeError,
                               "float and double")]),
    OpEntry("angle_real", lambda m, x: m.angle(x),
            lambda rng: unary_samples(rng) + [Sample((np.array([-1.0, 0.0, NAN, 2.0]),))],
            ref=lambda x: np.where(x < 0, math.pi, 0.0) + x * 0, dtypes=NUM),
)

# conjugate-Wirtinger gradients of common ops through complex intermediates, against torch
_WIRTINGER = {
    "add": (lambda m, z: (z + z * 1j).abs(), lambda z: np.abs(z + z * 1j)),
    "mul": (lambda m, z: m.view_as_real(z * z.flip(-1) if z.ndim else z * z),
            lambda z: _np_cview(z * np.flip(z, -1) if z.ndim else z * z)),
    "div": (lambda m, z: m.view_as_real((z + 3) / (z * z + 1)),
            lambda z: _np_cview((z + 3) / (z * z + 1))),
    "abs": (lambda m, z: z.abs(), np.abs),
    "exp": (lambda m, z: m.view_as_real(z.exp()), lambda z: _np_cview(np.exp(z))),
    "log": (lambda m, z: m.view_as_real(z.log()), lambda z: _np_cview(np.log(z))),
    "sin": (lambda m, z: m.view_as_real(z.sin()), lambda z: _np_cview(np.sin(z))),
    "sqrt": (lambda m, z: m.view_as_real(z.sqrt()), lambda z: _np_cview(np.sqrt(z))),
    "pow": (lambda m, z: m.view_as_real(z ** 3), lambda z: _np_cview(z ** 3)),
    "sum": (lambda m, z: m.view_as_real((z * z).sum()), lambda z: _np_cview((z * z).sum())),
    "sum_abs": (lambda m, z: z.abs().sum(), lambda z: np.abs(z).sum()),
}
for _n, (_body, _ref) in _WIRTINGER.items():
    add(cplx(f"complex_grad_{_n}", _body, _ref,
             samples=lambda rng: _cplx_samples(rng)[:3]))
add(OpEntry("complex_grad_matmul",
            lambda m, a, b, c, d: m.view_as_real(m.complex(a, b) @ m.complex(c, d)),
            lambda rng: [Sample(tuple(rng.uniform(-1, 1, (3, 4)) for _ in range(2))
                                + tuple(rng.uniform(-1, 1, (4, 2)) for _ in range(2)))],
            ref=lambda a, b, c, d: _np_cview((a + 1j * b) @ (c + 1j * d)), dtypes=FL))
