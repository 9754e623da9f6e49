"""Records for the core ops (issue: core): elementwise, reductions, shape, indexing, matmul,
softmax and conversions."""
from __future__ import annotations

import math

import numpy as np
from scipy import special as sp

from opdb import (ALL, ALL_FLOATS, FLOATS, INTS, NUMERIC, ErrorInput, OpEntry, Sample,
                  binary_samples, unary_samples)

ENTRIES: list = []


def add(*entries: OpEntry) -> None:
    ENTRIES.extend(entries)


# ---------------------------------------------------------------- unary
def unary(name, ref, positive=False, dtypes=NUMERIC, low=-2.0, high=2.0, grad=True,
          gradgrad=True, atol=1e-6, covers=()):
    def samples(rng):
        return unary_samples(rng, positive=positive, low=low, high=high)
    return OpEntry(name, lambda m, x, _n=name: getattr(m, _n)(x), samples, ref=ref,
                   dtypes=dtypes, grad=grad, gradgrad=gradgrad, atol=atol, covers=covers)


add(
    unary("exp", np.exp),
    unary("exp2", np.exp2),
    unary("expm1", np.expm1),
    unary("log", np.log, positive=True),
    unary("log2", np.log2, positive=True),
    unary("log10", np.log10, positive=True),
    unary("log1p", np.log1p, positive=True),
    unary("sqrt", np.sqrt, positive=True),
    unary("rsqrt", lambda x: 1 / np.sqrt(x), positive=True),
    unary("sin", np.sin), unary("cos", np.cos), unary("tan", np.tan, low=-1.2, high=1.2),
    unary("asin", np.arcsin, low=-0.9, high=0.9), unary("acos", np.arccos, low=-0.9, high=0.9),
    unary("atan", np.arctan), unary("sinh", np.sinh), unary("cosh", np.cosh),
    unary("tanh", np.tanh), unary("asinh", np.arcsinh),
    unary("acosh", np.arccosh, low=1.2, high=3.0),
    unary("atanh", np.arctanh, low=-0.9, high=0.9),
    unary("sigmoid", sp.expit), unary("erf", sp.erf), unary("erfc", sp.erfc),
    unary("reciprocal", lambda x: 1 / x, positive=True),
    unary("floor", np.floor, gradgrad=False), unary("ceil", np.ceil, gradgrad=False),
    unary("trunc", np.trunc, gradgrad=False), unary("frac", lambda x: x - np.trunc(x)),
    unary("neg", np.negative, dtypes=("int32", "int64", "float32", "float64")),
    unary("positive", lambda x: x),
    unary("abs", np.abs, dtypes=("int32", "int64", "float32", "float64")),
    unary("sign", np.sign, gradgrad=False),
    unary("square", np.square),
    unary("relu", lambda x: np.maximum(x, 0), covers=("threshold_backward",)),
    unary("conj", np.conj),
    unary("logical_not", np.logical_not, dtypes=ALL, grad=False),
    unary("bitwise_not", None, dtypes=("bool", "uint8", "int32", "int64"), grad=False),
    unary("isnan", np.isnan, grad=False), unary("isinf", np.isinf, grad=False),
    unary("isfinite", np.isfinite, grad=False),
    unary("sgn", np.sign, gradgrad=False),
)
add(OpEntry("round", lambda m, x, **k: m.round(x, **k),
            lambda rng: unary_samples(rng) + [Sample((rng.uniform(-5, 5, (6,)),),
                                                     {"decimals": 2})],
            ref=lambda x, decimals=0: np.round(x, decimals), dtypes=NUMERIC, gradgrad=False))


# ---------------------------------------------------------------- binary
def binary(name, ref, positive=False, dtypes=NUMERIC, grad=True, gradgrad=True, errors=(),
           covers=(), samples=None, call=None, scalar=True):
    def default_samples(rng):
        out = binary_samples(rng, positive)
        return out if scalar else [s for s in out if s.name != "scalar"]
    return OpEntry(name, call or (lambda m, a, b, _n=name, **k: getattr(m, _n)(a, b, **k)),
                   samples or default_samples, ref=ref,
                   dtypes=dtypes, grad=grad, gradgrad=gradgrad, errors=errors, covers=covers)


_bcast_err = ErrorInput(Sample((np.ones((2, 3)), np.ones((2, 4)))), RuntimeError,
                        r"\[.*\] The size of tensor a")
add(
    binary("add", np.add, errors=[_bcast_err]),
    binary("sub", np.subtract, dtypes=("uint8", "int64", "float32", "float64"),
           errors=[_bcast_err]),
    binary("mul", np.multiply, errors=[_bcast_err]),
    binary("div", np.true_divide, positive=True),
    binary("remainder", np.remainder, positive=True, dtypes=FLOATS + ("int64",)),
    binary("fmod", np.fmod, positive=True, dtypes=FLOATS + ("int64",)),
    binary("floor_divide", np.floor_divide, positive=True, dtypes=FLOATS + ("int64",),
           grad=False),
    binary("pow", np.power, positive=True, dtypes=FLOATS + ("int64",)),
    binary("atan2", scalar=False, ref=np.arctan2),
    binary("maximum", scalar=False, ref=np.maximum), binary("minimum", scalar=False, ref=np.minimum),
    binary("eq", np.equal, grad=False), binary("ne", np.not_equal, grad=False),
    binary("lt", np.less, grad=False), binary("le", np.less_equal, grad=False),
    binary("gt", np.greater, grad=False), binary("ge", np.greater_equal, grad=False),
    binary("logical_and", scalar=False, ref=np.logical_and, grad=False, dtypes=ALL),
    binary("logical_or", scalar=False, ref=np.logical_or, grad=False, dtypes=ALL),
    binary("logical_xor", scalar=False, ref=np.logical_xor, grad=False, dtypes=ALL),
)


def _int_pairs(rng):
    a = rng.integers(-8, 8, (3, 4))
    return [Sample((a, rng.integers(0, 3, (3, 4)))), Sample((a, rng.integers(0, 3, (4,))))]


for _name, _ref in (("bitwise_and", np.bitwise_and), ("bitwise_or", np.bitwise_or),
                    ("bitwise_xor", np.bitwise_xor), ("bitwise_left_shift", np.left_shift),
                    ("bitwise_right_shift", np.right_shift)):
    add(OpEntry(_name, lambda m, a, b, _n=_name: getattr(m, _n)(a.long(), b.long()), _int_pairs,
                ref=lambda a, b, _r=_ref: _r(a.astype(np.int64), b.astype(np.int64)),
                dtypes=("int64",), grad=False, gradgrad=False))

add(OpEntry("div_rounding", lambda m, a, b, mode: m.div(a, b, rounding_mode=mode),
            lambda rng: [Sample((rng.uniform(-5, 5, (3, 4)), rng.uniform(0.5, 2, (3, 4)), "trunc")),
                         Sample((rng.uniform(-5, 5, (3, 4)), rng.uniform(0.5, 2, (4,)), "floor"))],
            ref=lambda a, b, mode: np.trunc(a / b) if mode == "trunc" else np.floor(a / b),
            dtypes=FLOATS + ("int64",), gradgrad=False))


# ---------------------------------------------------------------- ternary
def _where_samples(rng):
    return [Sample((rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (3, 4)),
                    rng.uniform(-1, 1, (4,)))),
            Sample((rng.uniform(-1, 1, (4,)), rng.uniform(-1, 1, (2, 4)), rng.uniform(-1, 1, ())))]


add(OpEntry("where", lambda m, c, a, b: m.where(c > 0 if c.is_floating_point() else c, a, b),
            _where_samples,
            ref=lambda c, a, b: np.where(c > 0, a, b),
            errors=[ErrorInput(Sample((np.ones(3, np.int64), np.ones(3), np.ones(3))),
                               RuntimeError, "boolean")],
            covers=()),
    OpEntry("clamp", lambda m, x, lo, hi: m.clamp(x, lo, hi),
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)), -0.5, 0.7)),
                         Sample((rng.uniform(-2, 2, (3, 4)), None, 0.3)),
                         Sample((rng.uniform(-2, 2, (3, 4)), rng.uniform(-1, 0, (4,)),
                                 rng.uniform(0, 1, (3, 1))))],
            ref=lambda x, lo, hi: np.clip(x, lo, hi), dtypes=NUMERIC, gradgrad=False,
            errors=[ErrorInput(Sample((np.ones(3), None, None)), RuntimeError,
                               "At least one")],
            covers=("clamp_min", "clamp_max")),
    OpEntry("lerp", lambda m, a, b, w: m.lerp(a, b, w),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (3, 4)), 0.3)),
                         Sample((rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (4,)),
                                 rng.uniform(0, 1, (3, 4))))],
            ref=lambda a, b, w: a + w * (b - a)),
    OpEntry("addcmul", lambda m, a, b, c, **k: m.addcmul(a, b, c, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (3, 4)),
                                 rng.uniform(-1, 1, (4,))), {"value": 0.5})],
            ref=lambda a, b, c, value=1: a + value * b * c),
    OpEntry("addcdiv", lambda m, a, b, c, **k: m.addcdiv(a, b, c, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (3, 4)),
                                 rng.uniform(0.5, 1.5, (4,))), {"value": 2.0})],
            ref=lambda a, b, c, value=1: a + value * b / c),
)


# ---------------------------------------------------------------- reductions
def red_samples(rng, dims=(None, 0, 1, (0, 1), -1)):
    out = [Sample((rng.uniform(-2, 2, (3, 4)),), {"dim": d, "keepdim": k})
           for d in dims for k in (False, True)]
    out.append(Sample((rng.uniform(-2, 2, ()),), {}))
    out.append(Sample((rng.uniform(-2, 2, (4, 3)),), {"dim": 1}, noncontig=True))
    return out


def _np_red(fn):
    def ref(x, dim=None, keepdim=False):
        axis = tuple(dim) if isinstance(dim, (tuple, list)) else dim
        return fn(x, axis=axis, keepdims=keepdim)
    return ref


add(
    OpEntry("sum", lambda m, x, **k: m.sum(x, **k), red_samples, ref=_np_red(np.sum),
            dtypes=ALL, covers=("sum_to_size",)),
    OpEntry("mean", lambda m, x, **k: m.mean(x, **k), red_samples, ref=_np_red(np.mean),
            dtypes=FLOATS + ("int64",)),
    OpEntry("prod", lambda m, x, **k: m.prod(x, **k),
            lambda rng: [Sample((rng.uniform(0.5, 1.5, (3, 4)),), {"dim": 1}),
                         Sample((rng.uniform(0.5, 1.5, (3, 4)),), {"dim": 0, "keepdim": True}),
                         Sample((rng.uniform(0.5, 1.5, (5,)),), {}),
                         Sample((np.array([[1.5, 0.0, 2.0], [0.5, 3.0, 1.0]]),), {"dim": 1})],
            ref=_np_red(np.prod), dtypes=("int64", "float32", "float64")),
    OpEntry("amax", lambda m, x, **k: m.amax(x, **k),
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)),), {"dim": d, "keepdim": kd})
                         for d in (0, 1, (0, 1)) for kd in (False, True)],
            ref=_np_red(np.max), dtypes=NUMERIC),
    OpEntry("amin", lambda m, x, **k: m.amin(x, **k),
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)),), {"dim": d}) for d in (0, 1, (0, 1))],
            ref=_np_red(np.min), dtypes=NUMERIC),
    OpEntry("max", lambda m, x, *a, **k: m.max(x, *a, **k),
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)),)),
                         Sample((rng.uniform(-2, 2, (3, 4)), 1)),
                         Sample((rng.uniform(-2, 2, (3, 4)), 0), {"keepdim": True}),
                         Sample((rng.uniform(-2, 2, (3, 4)), rng.uniform(-2, 2, (4,))))],
            ref=lambda x, *a, keepdim=False: (np.max(x) if not a else
                                              (np.max(x, a[0], keepdims=keepdim),
                                               np.argmax(x, a[0], keepdims=keepdim))
                                              if isinstance(a[0], int) else np.maximum(x, a[0])),
            dtypes=NUMERIC, covers=("_max_dim",),
            errors=[ErrorInput(Sample((np.ones((2, 0)), 1)), IndexError, "non-zero size")]),
    OpEntry("min", lambda m, x, *a, **k: m.min(x, *a, **k),
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)),)),
                         Sample((rng.uniform(-2, 2, (3, 4)), 1))],
            ref=lambda x, *a: np.min(x) if not a else (np.min(x, a[0]), np.argmin(x, a[0])),
            dtypes=NUMERIC, covers=("_min_dim",)),
    OpEntry("argmax", lambda m, x, **k: m.argmax(x, **k),
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)),), {"dim": d}) for d in (None, 0, 1)],
            ref=lambda x, dim=None: np.argmax(x, dim), dtypes=NUMERIC, grad=False),
    OpEntry("argmin", lambda m, x, **k: m.argmin(x, **k),
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)),), {"dim": d, "keepdim": True})
                         for d in (0, 1)],
            ref=lambda x, dim=None, keepdim=False: np.argmin(x, dim, keepdims=keepdim),
            dtypes=NUMERIC, grad=False),
    OpEntry("var", lambda m, x, **k: m.var(x, **k),
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)),), {"dim": d, "correction": c})
                         for d in (None, 0, 1) for c in (0, 1)]
            + [Sample((rng.uniform(-2, 2, (3, 4)),), {"dim": 1, "keepdim": True})],
            ref=lambda x, dim=None, correction=1, keepdim=False: np.var(
                x, axis=dim, ddof=correction, keepdims=keepdim),
            errors=[ErrorInput(Sample((np.ones(3).astype(np.int64),)), RuntimeError, "var")]),
    OpEntry("std", lambda m, x, *a, **k: m.std(x, *a, **k),
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)),), {"dim": d}) for d in (None, 0, 1)]
            + [Sample((rng.uniform(-2, 2, (3, 4)), 1, False))],
            ref=lambda x, *a, dim=None: np.std(x, axis=a[0] if a else dim,
                                               ddof=0 if len(a) > 1 and not a[1] else 1)),
    OpEntry("logsumexp", lambda m, x, **k: m.logsumexp(x, **k),
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)),), {"dim": d, "keepdim": kd})
                         for d in (0, 1, (0, 1)) for kd in (False, True)],
            ref=lambda x, dim, keepdim=False: sp.logsumexp(x, axis=dim, keepdims=keepdim),
            dtypes=FLOATS + ("int64",)),
    OpEntry("norm", lambda m, x, *a, **k: m.norm(x, *a, **k),
            lambda rng: [Sample((rng.uniform(-2, 2, (3, 4)),)),
                         Sample((rng.uniform(-2, 2, (3, 4)), 1), {"dim": 1}),
                         Sample((rng.uniform(-2, 2, (3, 4)), 3), {"dim": 0, "keepdim": True}),
                         Sample((rng.uniform(-2, 2, (3, 4)), math.inf), {"dim": 1})],
            ref=lambda x, p=2, dim=None, keepdim=False: np.linalg.norm(
                x.reshape(-1) if dim is None else x, ord=p, axis=dim, keepdims=keepdim),
            covers=("linalg_vector_norm",)),
    OpEntry("all", lambda m, x, **k: m.all(x, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)),), {"dim": d}) for d in (None, 0, 1)],
            ref=lambda x, dim=None: np.all(x, axis=dim), dtypes=("bool", "uint8", "float32"),
            grad=False),
    OpEntry("any", lambda m, x, **k: m.any(x, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)),), {"dim": d}) for d in (None, 0, 1)],
            ref=lambda x, dim=None: np.any(x, axis=dim), dtypes=("bool", "float32"), grad=False),
    OpEntry("cumsum", lambda m, x, **k: m.cumsum(x, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)),), {"dim": d}) for d in (0, 1, -1)]
            + [Sample((rng.uniform(-1, 1, ()),), {"dim": 0})],
            ref=lambda x, dim: np.cumsum(x, axis=dim) if x.ndim else x, dtypes=ALL),
)


# ---------------------------------------------------------------- shape and views
def shape_entry(name, call, shapes, ref, dtypes=("float32", "int64"), errors=(), covers=()):
    def samples(rng):
        out = []
        for shp, kw in shapes:
            out.append(Sample((rng.uniform(-1, 1, shp),), dict(kw)))
        out.append(Sample((rng.uniform(-1, 1, shapes[0][0]),), dict(shapes[0][1]),
                          noncontig=len(shapes[0][0]) >= 2))
        return out
    return OpEntry(name, call, samples, ref=ref, dtypes=dtypes, errors=errors, covers=covers)


add(
    shape_entry("reshape", lambda m, x, shape: x.reshape(shape),
                [((3, 4), {"shape": (2, 6)}), ((3, 4), {"shape": (-1,)}), ((2, 3, 4), {"shape": (4, -1)})],
                lambda x, shape: x.reshape(shape),
                errors=[ErrorInput(Sample((np.ones((3, 4)),), {"shape": (5, 2)}), RuntimeError,
                                   "invalid for input of size 12")]),
    shape_entry("view", lambda m, x, shape: x.contiguous().view(shape),
                [((3, 4), {"shape": (2, 6)}), ((2, 3, 4), {"shape": (6, 4)})],
                lambda x, shape: x.reshape(shape)),
    shape_entry("flatten", lambda m, x, **k: m.flatten(x, **k),
                [((2, 3, 4), {}), ((2, 3, 4), {"start_dim": 1}), ((2, 3, 4), {"end_dim": 1})],
                lambda x, start_dim=0, end_dim=-1: x.reshape(
                    x.shape[:start_dim] + (-1,) + (x.shape[end_dim + 1:] if end_dim != -1 else ()))),
    shape_entry("unflatten", lambda m, x, dim, sizes: x.unflatten(dim, sizes),
                [((3, 12), {"dim": 1, "sizes": (3, 4)}), ((12,), {"dim": 0, "sizes": (2, -1)})],
                lambda x, dim, sizes: x.reshape(x.shape[:dim] + tuple(
                    s if s != -1 else x.shape[dim] // -np.prod(sizes) for s in sizes)
                    + x.shape[dim + 1:])),
    shape_entry("squeeze", lambda m, x, **k: x.squeeze(**k),
                [((3, 1, 4, 1), {}), ((3, 1, 4, 1), {"dim": 1}), ((3, 1, 4, 1), {"dim": 0})],
                lambda x, dim=None: np.squeeze(x, dim) if dim is None or x.shape[dim] == 1 else x),
    shape_entry("unsqueeze", lambda m, x, dim: x.unsqueeze(dim),
                [((3, 4), {"dim": 0}), ((3, 4), {"dim": -1}), ((3, 4), {"dim": 1})],
                lambda x, dim: np.expand_dims(x, dim),
                errors=[ErrorInput(Sample((np.ones((3, 4)),), {"dim": 4}), IndexError,
                                   "out of range")]),
    shape_entry("permute", lambda m, x, dims: x.permute(*dims),
                [((2, 3, 4), {"dims": (2, 0, 1)}), ((2, 3), {"dims": (1, 0)})],
                lambda x, dims: np.transpose(x, dims),
                errors=[ErrorInput(Sample((np.ones((3, 4)),), {"dims": (0,)}), RuntimeError,
                                   "does not match")]),
    shape_entry("transpose", lambda m, x, a, b: x.transpose(a, b),
                [((2, 3, 4), {"a": 0, "b": 2}), ((3, 4), {"a": -1, "b": 0})],
                lambda x, a, b: np.swapaxes(x, a, b), covers=("swapaxes", "swapdims")),
    shape_entry("t", lambda m, x: x.t(), [((3, 4), {}), ((5,), {})],
                lambda x: x.T),
    shape_entry("expand", lambda m, x, sizes: x.expand(*sizes),
                [((3, 1), {"sizes": (3, 4)}), ((4,), {"sizes": (2, 4)}), ((1, 4), {"sizes": (-1, 4)})],
                lambda x, sizes: np.broadcast_to(x, tuple(s if s != -1 else x.shape[i - (len(sizes) - x.ndim)] for i, s in enumerate(sizes))),
                covers=("expand_as",),
                errors=[ErrorInput(Sample((np.ones((3, 2)),), {"sizes": (3, 4)}), RuntimeError,
                                   "must match the existing size")]),
    shape_entry("narrow", lambda m, x, d, s, n: x.narrow(d, s, n),
                [((5, 4), {"d": 0, "s": 1, "n": 3}), ((5, 4), {"d": 1, "s": 2, "n": 2})],
                lambda x, d, s, n: np.take(x, range(s, s + n), axis=d)),
    shape_entry("select", lambda m, x, d, i: x.select(d, i),
                [((5, 4), {"d": 0, "i": 1}), ((5, 4), {"d": 1, "i": -1})],
                lambda x, d, i: np.take(x, i, axis=d),
                errors=[ErrorInput(Sample((np.ones((3, 4)),), {"d": 0, "i": 3}), IndexError,
                                   "out of range")]),
    shape_entry("unbind", lambda m, x, **k: x.unbind(**k),
                [((3, 4), {}), ((3, 4), {"dim": 1})],
                lambda x, dim=0: tuple(np.moveaxis(x, dim, 0))),
    shape_entry("split", lambda m, x, s, **k: x.split(s, **k),
                [((5, 4), {"s": 2}), ((5, 4), {"s": [1, 3], "dim": 1})],
                lambda x, s, dim=0: tuple(np.split(x, list(range(s, x.shape[dim], s)) if isinstance(s, int) else np.cumsum(s)[:-1], axis=dim)),
                covers=("split_with_sizes",)),
    shape_entry("chunk", lambda m, x, c, **k: x.chunk(c, **k),
                [((5, 4), {"c": 2}), ((5, 4), {"c": 3, "dim": 1})],
                lambda x, c, dim=0: tuple(np.split(x, list(range(-(-x.shape[dim] // c), x.shape[dim], -(-x.shape[dim] // c))), axis=dim))),
    shape_entry("movedim", lambda m, x, s, d: m.movedim(x, s, d),
                [((2, 3, 4), {"s": 0, "d": 2}), ((2, 3, 4), {"s": (0, 1), "d": (2, 0)})],
                lambda x, s, d: np.moveaxis(x, s, d), covers=("moveaxis",)),
    shape_entry("diagonal", lambda m, x, **k: m.diagonal(x, **k),
                [((4, 4), {}), ((3, 5), {"offset": 1}), ((2, 3, 4), {"offset": -1, "dim1": 1, "dim2": 2})],
                lambda x, offset=0, dim1=0, dim2=1: np.diagonal(x, offset, dim1, dim2),
                covers=("_diagonal_put",)),
    shape_entry("unfold", lambda m, x, d, size, step: x.unfold(d, size, step),
                [((7,), {"d": 0, "size": 3, "step": 2}), ((3, 6), {"d": 1, "size": 2, "step": 1})],
                lambda x, d, size, step: np.moveaxis(np.lib.stride_tricks.sliding_window_view(x, size, axis=d), d, d)[tuple(slice(None) if i != d else slice(None, None, step) for i in range(x.ndim))]),
    shape_entry("as_strided", lambda m, x, size, stride: x.contiguous().as_strided(size, stride),
                [((4, 4), {"size": (2, 2), "stride": (1, 2)}), ((6,), {"size": (3, 2), "stride": (1, 1)})],
                lambda x, size, stride: np.lib.stride_tricks.as_strided(
                    np.ascontiguousarray(x), size, tuple(s * 8 for s in stride))),
    shape_entry("clone", lambda m, x: x.clone(), [((3, 4), {})], lambda x: x),
    shape_entry("_to_copy", lambda m, x: x.to(m.float64) * 1, [((3, 4), {})], lambda x: x,
                dtypes=ALL),
)


def _cat_samples(rng):
    return [Sample(([rng.uniform(-1, 1, (2, 3)), rng.uniform(-1, 1, (4, 3))],), {"dim": 0}),
            Sample(([rng.uniform(-1, 1, (2, 3)), rng.uniform(-1, 1, (2, 1))],), {"dim": 1}),
            Sample(([rng.uniform(-1, 1, (3,))],), {})]


add(OpEntry("cat", lambda m, ts, **k: m.cat(ts, **k), _cat_samples,
            ref=lambda ts, dim=0: np.concatenate(ts, dim), dtypes=ALL, covers=("concat", "concatenate"),
            errors=[ErrorInput(Sample(([np.ones((2, 3)), np.ones((2, 4))],), {"dim": 0}),
                               RuntimeError, "Sizes of tensors must match")]),
    OpEntry("stack", lambda m, ts, **k: m.stack(ts, **k),
            lambda rng: [Sample(([rng.uniform(-1, 1, (2, 3)) for _ in range(3)],), {"dim": d})
                         for d in (0, 1, -1)],
            ref=lambda ts, dim=0: np.stack(ts, dim), dtypes=ALL,
            errors=[ErrorInput(Sample(([np.ones((2, 3)), np.ones((2, 4))],)), RuntimeError,
                               "equal size")]))


# ---------------------------------------------------------------- indexing
def _idx_samples(rng):
    x = rng.uniform(-1, 1, (4, 5))
    return [Sample((x, (1,))), Sample((x, (slice(1, 3), 2))), Sample((x, (Ellipsis, None, 1))),
            Sample((x, (np.array([0, 2, 2]),))), Sample((x, (x > 0,))),
            Sample((x, (slice(None), [1, 3]))), Sample((x, (np.array([0, 1]), np.array([2, 4]))))]


def _getitem(m, x, key):
    k = tuple(m.tensor(v) if isinstance(v, np.ndarray) else v for v in key)
    return x[k]


add(OpEntry("getitem", _getitem, _idx_samples, ref=lambda x, key: x[key],
            dtypes=("float32", "int64", "bool"), covers=("index", "_put"),
            errors=[ErrorInput(Sample((np.ones((3, 4)), (5,))), IndexError, "out of bounds"),
                    ErrorInput(Sample((np.ones((3, 4)), (0, 0, 0))), IndexError,
                               "too many indices")]))


# ---------------------------------------------------------------- matmul family
def _mm_samples(rng):
    r = lambda *s: rng.uniform(-1, 1, s)  # noqa: E731
    return [Sample((r(3, 4), r(4, 5))), Sample((r(4), r(4, 2))), Sample((r(3, 4), r(4))),
            Sample((r(4), r(4))), Sample((r(2, 3, 4), r(4, 2))), Sample((r(2, 1, 3, 4), r(3, 4, 2))),
            Sample((r(4, 3), r(3, 2)), noncontig=True)]


add(OpEntry("matmul", lambda m, a, b: m.matmul(a, b), _mm_samples, ref=np.matmul,
            dtypes=("float32", "float64", "int64"),
            errors=[ErrorInput(Sample((np.ones((64, 100)), np.ones((784, 256)))), RuntimeError,
                               r"\[matmul\] inner dimensions differ: input \(64, 100\)"),
                    ErrorInput(Sample((np.ones(()), np.ones(3))), RuntimeError, "at least 1D")],
            covers=("mm", "bmm", "mv", "dot")),
    OpEntry("mm", lambda m, a, b: m.mm(a, b),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (4, 2))))],
            ref=np.matmul,
            errors=[ErrorInput(Sample((np.ones((2, 3)), np.ones((4, 2)))), RuntimeError,
                               "cannot be multiplied")]),
    OpEntry("bmm", lambda m, a, b: m.bmm(a, b),
            lambda rng: [Sample((rng.uniform(-1, 1, (2, 3, 4)), rng.uniform(-1, 1, (2, 4, 2))))],
            ref=np.matmul),
    OpEntry("mv", lambda m, a, b: m.mv(a, b),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (4,))))],
            ref=np.matmul),
    OpEntry("dot", lambda m, a, b: m.dot(a, b),
            lambda rng: [Sample((rng.uniform(-1, 1, (4,)), rng.uniform(-1, 1, (4,))))],
            ref=np.dot),
    OpEntry("addmm", lambda m, c, a, b, **k: m.addmm(c, a, b, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 2)), rng.uniform(-1, 1, (3, 4)),
                                 rng.uniform(-1, 1, (4, 2))), {"beta": 0.5, "alpha": 2.0}),
                         Sample((rng.uniform(-1, 1, (2,)), rng.uniform(-1, 1, (3, 4)),
                                 rng.uniform(-1, 1, (4, 2))))],
            ref=lambda c, a, b, beta=1, alpha=1: beta * c + alpha * (a @ b)),
    OpEntry("einsum", lambda m, eq, *ops: m.einsum(eq, *ops),
            lambda rng: [Sample(("ij,jk->ik", rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (4, 2)))),
                         Sample(("bij,bjk", rng.uniform(-1, 1, (2, 3, 4)), rng.uniform(-1, 1, (2, 4, 2)))),
                         Sample(("ii->i", rng.uniform(-1, 1, (3, 3)))),
                         Sample(("ij->", rng.uniform(-1, 1, (3, 4)))),
                         Sample(("...ij,...jk->...ik", rng.uniform(-1, 1, (2, 3, 4)), rng.uniform(-1, 1, (4, 2)))),
                         Sample(("i,j->ij", rng.uniform(-1, 1, (3,)), rng.uniform(-1, 1, (4,))))],
            ref=lambda eq, *ops: np.einsum(eq, *ops)),
)


# ---------------------------------------------------------------- softmax
def _sm_samples(rng):
    return [Sample((rng.uniform(-3, 3, (3, 5)),), {"dim": d}) for d in (0, 1, -1)] + [
        Sample((rng.uniform(-3, 3, (2, 3, 4)),), {"dim": 1})]


def _np_softmax(x, dim):
    e = np.exp(x - x.max(dim, keepdims=True))
    return e / e.sum(dim, keepdims=True)


add(OpEntry("softmax", lambda m, x, **k: m.softmax(x, **k), _sm_samples, ref=_np_softmax,
            dtypes=ALL_FLOATS),
    OpEntry("log_softmax", lambda m, x, **k: m.log_softmax(x, **k), _sm_samples,
            ref=lambda x, dim: np.log(_np_softmax(x, dim)), dtypes=ALL_FLOATS))


def _lin_samples(rng):
    r = lambda *s: rng.uniform(-1, 1, s)  # noqa: E731
    return [Sample((r(3, 4), r(5, 4), r(5))), Sample((r(2, 3, 4), r(5, 4), None)),
            Sample((r(4,), r(5, 4), r(5))),
            Sample((r(4, 3), r(5, 3), r(5)), noncontig=True)]


def _lin_act_samples(rng):
    r = lambda *s: rng.uniform(-1, 1, s)  # noqa: E731
    return [Sample((r(3, 4), r(5, 4), r(5)), {"activation": "relu"}),
            Sample((r(2, 3, 4), r(5, 4), None), {"activation": "relu"}),
            Sample((r(3, 4), r(5, 4), r(5)), {"activation": "gelu_tanh"}),
            Sample((r(2, 3, 4), r(6, 4), r(6)), {"activation": "gelu_tanh"})]


def _lin_act_call(m, x, w, b, activation):
    if m.__name__ == "ember":
        return m._linear_activation(x, w, b, activation)
    if activation not in ("relu", "gelu_tanh"):   # torch: the two ops it fuses
        raise ValueError(f"unknown activation {activation!r}")
    y = m.nn.functional.linear(x, w, b)
    return m.relu(y) if activation == "relu" else m.nn.functional.gelu(y, approximate="tanh")


def _np_lin_act(x, w, b, activation):
    h = x @ w.T + (b if b is not None else 0)
    if activation == "relu":
        return np.maximum(h, 0)
    return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))


add(OpEntry("_linear_activation", _lin_act_call, _lin_act_samples, ref=_np_lin_act,
            errors=[ErrorInput(Sample((np.ones((2, 4)), np.ones((3, 4)), None),
                                      {"activation": "tanh"}),
                               ValueError, r"\[_linear_activation\] activation must be")]))
add(OpEntry("linear", lambda m, x, w, b: m.nn.functional.linear(x, w, b), _lin_samples,
            ref=lambda x, w, b: x @ w.T + (b if b is not None else 0),
            errors=[ErrorInput(Sample((np.ones((64, 100)), np.ones((256, 784)), None)),
                               RuntimeError, r"\[linear\] mat1 and mat2 shapes cannot be multiplied")]))
