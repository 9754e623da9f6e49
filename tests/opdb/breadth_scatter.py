"""Records for the gather/scatter/index family (issue: ops breadth) and for advanced indexing
mixes of slices, ints, None, Ellipsis, bool masks and integer tensors."""
from __future__ import annotations

import numpy as np

from opdb import ErrorInput, OpEntry, Sample

ENTRIES: list = []
DT = ("float32", "float64", "int64")


class Ix:
    """An index (or mask) array passed through the harness unconverted: it keeps its dtype
    (int64 by default) and never requires grad."""

    def __init__(self, a, dtype=np.int64) -> None:
        self.a = np.asarray(a, dtype=dtype)

    def t(self, m):
        return m.tensor(self.a)

    def __repr__(self) -> str:
        return f"Ix{self.a.shape}"


def add(*entries: OpEntry) -> None:
    ENTRIES.extend(entries)


def _np_gather(x, dim, idx):
    dim = dim % max(x.ndim, 1)
    return np.take_along_axis(x[tuple(slice(0, n) if d != dim else slice(None)
                                      for d, n in enumerate(idx.shape))], idx, dim)


def _np_scatter(x, dim, idx, src, op=None):
    out = x.copy()
    key = tuple(idx if d == dim else np.arange(n).reshape([-1 if k == d else 1
                                                            for k in range(idx.ndim)])
                for d, n in enumerate(idx.shape))
    vals = src[tuple(slice(0, n) for n in idx.shape)] if isinstance(src, np.ndarray) else src
    if op is None:
        out[key] = vals
    else:
        op.at(out, key, vals)
    return out


def _gather_samples(rng):
    x = rng.uniform(-1, 1, (3, 4))
    return [Sample((x, 1, Ix(rng.integers(0, 4, (3, 2))))),
            Sample((x, 0, Ix(rng.integers(0, 3, (2, 4))))),
            Sample((x, -1, Ix(rng.integers(0, 4, (2, 3)))), name="smaller-index"),
            Sample((rng.uniform(-1, 1, ()), 0, Ix(0)), name="0-dim"),
            Sample((x, 1, Ix(np.zeros((3, 0)))), name="empty-index"),
            Sample((rng.uniform(-1, 1, (4, 3)), 1, Ix(rng.integers(0, 3, (4, 3)))),
                   noncontig=True)]


add(OpEntry("gather", lambda m, x, d, i: m.gather(x, d, i.t(m)), _gather_samples,
            ref=lambda x, d, i: _np_gather(np.atleast_1d(x), d, np.atleast_1d(i.a)).reshape(
                i.a.shape),
            dtypes=DT + ("bool",),
            errors=[ErrorInput(Sample((np.ones((2, 3)), 1, Ix([[3]]))), RuntimeError,
                               r"\[gather\] index 3 is out of bounds for dimension 1"),
                    ErrorInput(Sample((np.ones((2, 3)), 1, Ix([[-1]]))), RuntimeError,
                               "out of bounds"),
                    ErrorInput(Sample((np.ones((2, 3)), 1, Ix([0]))), RuntimeError,
                               "same number of dimensions"),
                    ErrorInput(Sample((np.ones((2, 3)), 1, Ix(np.zeros((3, 1))))), RuntimeError,
                               "no larger than self"),
                    ErrorInput(Sample((np.ones((2, 3)), 1, Ix(np.zeros((2, 1)), np.float32))),
                               RuntimeError, "Expected dtype int32/int64")]))


def _scatter_samples(rng):
    x = rng.uniform(-1, 1, (3, 4))
    # unique targets per row, so "last write wins" has no ambiguity
    perm = np.stack([rng.permutation(4)[:2] for _ in range(3)])
    return [Sample((x, 1, Ix(perm), rng.uniform(-1, 1, (3, 3)))),
            Sample((x, 0, Ix(np.array([[2, 0, 1, 2]])), rng.uniform(-1, 1, (1, 4)))),
            Sample((x, 1, Ix(perm), 0.5), name="value"),
            Sample((x, 1, Ix(perm), rng.uniform(-1, 1, (3, 3))), {"reduce": "add"}),
            Sample((x, 1, Ix(perm), rng.uniform(0.5, 1.5, (3, 2))), {"reduce": "multiply"},
                   name="multiply")]


def _scatter_ref(x, d, i, src, reduce=None):
    op = {None: None, "add": np.add, "multiply": np.multiply}[reduce]
    return _np_scatter(x, d, i.a, src, op)


def _scatter_grad_samples(rng):
    perm = np.stack([rng.permutation(4)[:2] for _ in range(3)])
    return [Sample((rng.uniform(-1, 1, (3, 4)), 1, Ix(perm), rng.uniform(-1, 1, (3, 2)))),
            Sample((rng.uniform(-1, 1, (3, 4)), 1, Ix(perm), 0.5), name="value")]


def _scatter_torchless_samples(rng):
    # torch has no derivative for scatter(reduce=) and rejects a src larger than index in
    # backward (ember's gradient for src is zero outside the block it reads)
    s = _scatter_samples(rng)
    return [s[0], s[3], s[4]]


add(OpEntry("scatter", lambda m, x, d, i, s, **k: m.scatter(x, d, i.t(m), s, **k),
            _scatter_samples, ref=_scatter_ref, dtypes=("float32", "float64"),
            covers=("_scatter",), grad_samples=_scatter_grad_samples,
            errors=[ErrorInput(Sample((np.ones((2, 3)), 1, Ix([[5]]), 1.0)), RuntimeError,
                               "index 5 is out of bounds for dimension 1 with size 3"),
                    ErrorInput(Sample((np.ones((2, 3)), 1, Ix([0]), 1.0)), RuntimeError,
                               "same number of dimensions"),
                    ErrorInput(Sample((np.ones((2, 2)), 0, Ix([[0, 1, 0]]), np.ones((1, 2)))),
                               RuntimeError, "no larger"),
                    ErrorInput(Sample((np.ones((2, 2)), 0, Ix([[0]]), 1.0),
                                      {"reduce": "max"}), RuntimeError, "add or multiply")]),
    OpEntry("scatter_grad_beyond_torch",
            lambda m, x, d, i, s, **k: m.scatter(x, d, i.t(m), s, **k),
            _scatter_torchless_samples, ref=_scatter_ref, dtypes=(), torch_grad=False),
    OpEntry("scatter_", lambda m, x, d, i, s: x.clone().scatter_(d, i.t(m), s),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), 1, Ix([[0], [3], [1]]),
                                 rng.uniform(-1, 1, (3, 1))))],
            ref=lambda x, d, i, s: _np_scatter(x, d, i.a, s)))


def _sadd_samples(rng):
    x = rng.uniform(-1, 1, (3, 4))
    return [Sample((x, 1, Ix(rng.integers(0, 4, (3, 5))), rng.uniform(-1, 1, (3, 5)))),
            Sample((x, 0, Ix(rng.integers(0, 3, (2, 4))), rng.uniform(-1, 1, (3, 4))),
                   name="src-larger"),
            Sample((rng.uniform(-1, 1, (4, 3)), 1, Ix(rng.integers(0, 3, (4, 2))),
                    rng.uniform(-1, 1, (4, 2))), noncontig=True)]


add(OpEntry("scatter_add", lambda m, x, d, i, s: m.scatter_add(x, d, i.t(m), s), _sadd_samples,
            ref=lambda x, d, i, s: _np_scatter(x, d, i.a, s, np.add), dtypes=DT,
            grad_samples=lambda rng: [_sadd_samples(rng)[0]],
            errors=[ErrorInput(Sample((np.ones((2, 3)), 1, Ix([[5]]), np.ones((2, 3)))),
                               RuntimeError, "out of bounds")]),
    OpEntry("scatter_add_src_larger", lambda m, x, d, i, s: m.scatter_add(x, d, i.t(m), s),
            lambda rng: [_sadd_samples(rng)[1]], ref=lambda x, d, i, s: _np_scatter(
                x, d, i.a, s, np.add), dtypes=(), torch_grad=False),
    OpEntry("scatter_add_", lambda m, x, d, i, s: x.clone().scatter_add_(d, i.t(m), s),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), 1, Ix([[0, 0], [3, 1], [1, 1]]),
                                 rng.uniform(-1, 1, (3, 2))))],
            ref=lambda x, d, i, s: _np_scatter(x, d, i.a, s, np.add)))


def _np_scatter_reduce(x, dim, idx, src, reduce, include_self=True):
    out = x.copy()
    key = tuple(idx.a if d == dim else np.arange(n).reshape([-1 if k == d else 1
                                                              for k in range(idx.a.ndim)])
                for d, n in enumerate(idx.a.shape))
    vals = src[tuple(slice(0, n) for n in idx.a.shape)]
    ident = {"sum": 0, "mean": 0, "prod": 1, "amax": -np.inf, "amin": np.inf}[reduce]
    if not include_self:
        out[key] = ident
    if reduce == "mean":
        cnt = np.full(out.shape, 1 if include_self else 0)
        np.add.at(cnt, key, 1)
        np.add.at(out, key, vals)
        return np.where(cnt > 0, out / np.maximum(cnt, 1), out)
    ufunc = {"sum": np.add, "prod": np.multiply, "amax": np.maximum, "amin": np.minimum}[reduce]
    ufunc.at(out, key, vals)
    return out


def _sred_samples(rng):
    out = []
    for red in ("sum", "prod", "mean", "amax", "amin"):
        for inc in (True, False):
            x = rng.uniform(0.5, 1.5, (3, 4))
            idx = Ix(rng.integers(0, 4, (3, 3)))
            out.append(Sample((x, 1, idx, rng.uniform(0.5, 1.5, (3, 3)), red),
                              {"include_self": inc}, name=f"{red}-{inc}"))
    zx = np.array([[0.0, 1.5, 2.0], [0.5, 0.0, 1.0]])
    out.append(Sample((zx, 1, Ix([[0, 0], [2, 1]]), np.array([[0.0, 3.0], [0.0, 2.0]]), "prod"),
                      name="prod-zeros"))
    return out


def _sred_grad_samples(rng):
    return [s for s in _sred_samples(rng) if not s.name.startswith(("amax", "amin"))] + [
        Sample((np.array([[1.0, 5.0, 2.0]]), 1, Ix([[0, 2, 1]]), np.array([[3.0, 0.5, 4.0]]),
                r), {"include_self": True}, name=f"{r}-distinct")
        for r in ("amax", "amin")]


add(OpEntry("scatter_reduce",
            lambda m, x, d, i, s, r, **k: m.scatter_reduce(x, d, i.t(m), s, r, **k),
            _sred_samples, ref=_np_scatter_reduce, dtypes=("float32", "float64"),
            grad_samples=_sred_grad_samples, atol=1e-6,
            errors=[ErrorInput(Sample((np.ones((2, 3)), 1, Ix([[0]]), np.ones((2, 3)), "foo")),
                               RuntimeError, "reduce argument must be either"),
                    ErrorInput(Sample((np.ones((2, 3)), 1, Ix([[9]]), np.ones((2, 3)), "sum")),
                               RuntimeError, "out of bounds")]),
    OpEntry("scatter_reduce_int",
            lambda m, x, d, i, s, r: m.scatter_reduce(x.long(), d, i.t(m), s.long(), r),
            lambda rng: [Sample((np.array([0.0, 0.0, 0.0]), 0, Ix([0, 0, 1]),
                                 np.array([1.0, 2.0, 4.0]), r))
                         for r in ("sum", "prod", "mean", "amax", "amin")],
            ref=None, dtypes=("float32",), grad=False))


# ---------------------------------------------------------------- index_* along one dim
def _isel_samples(rng):
    x = rng.uniform(-1, 1, (3, 4))
    return [Sample((x, 1, Ix([2, 0, 2]))), Sample((x, 0, Ix([1]))), Sample((x, -1, Ix([]))),
            Sample((x, 0, Ix(1)), name="0-dim-index"),
            Sample((rng.uniform(-1, 1, ()), 0, Ix([0])), name="0-dim"),
            Sample((rng.uniform(-1, 1, (4, 3)), 1, Ix([0, 0, 2])), noncontig=True)]


add(OpEntry("index_select", lambda m, x, d, i: m.index_select(x, d, i.t(m)), _isel_samples,
            ref=lambda x, d, i: np.take(x, i.a.reshape(-1), axis=d) if x.ndim else x,
            dtypes=DT + ("bool",),
            errors=[ErrorInput(Sample((np.ones((2, 3)), 1, Ix([[0]]))), IndexError,
                               "supposed to be a vector"),
                    ErrorInput(Sample((np.ones((2, 3)), 1, Ix([0.0], np.float32))), RuntimeError,
                               "int32 or int64"),
                    ErrorInput(Sample((np.ones((2, 3)), 1, Ix([3]))), RuntimeError,
                               "out of bounds")]))


def _iadd_ref(x, d, i, s, alpha=1):
    out = x.copy()
    np.add.at(out, (slice(None),) * d + (i.a,), s * alpha)
    return out


add(OpEntry("index_add", lambda m, x, d, i, s, **k: m.index_add(x, d, i.t(m), s, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), 1, Ix([0, 2, 0]),
                                 rng.uniform(-1, 1, (3, 3)))),
                         Sample((rng.uniform(-1, 1, (3, 4)), 0, Ix([1, 1]),
                                 rng.uniform(-1, 1, (2, 4))), {"alpha": 2})],
            ref=_iadd_ref, dtypes=DT,
            errors=[ErrorInput(Sample((np.ones((2, 3)), 1, Ix([0, 1]), np.ones((2, 3)))),
                               RuntimeError, r"Number of indices \(2\)"),
                    ErrorInput(Sample((np.ones((2, 3)), 1, Ix([-1]), np.ones((2, 1)))),
                               RuntimeError, "out of bounds")]),
    OpEntry("index_add_", lambda m, x, d, i, s: x.clone().index_add_(d, i.t(m), s),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), 1, Ix([3, 3]),
                                 rng.uniform(-1, 1, (3, 2))))],
            ref=_iadd_ref))


def _icopy_ref(x, d, i, s):
    out = x.copy()
    out[(slice(None),) * d + (i.a,)] = s
    return out


def _ifill_ref(x, d, i, v):
    out = x.copy()
    out[(slice(None),) * d + (i.a,)] = v
    return out


add(OpEntry("index_copy", lambda m, x, d, i, s: m.index_copy(x, d, i.t(m), s),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), 1, Ix([3, 0]),
                                 rng.uniform(-1, 1, (3, 2)))),
                         Sample((rng.uniform(-1, 1, (3, 4)), 0, Ix([2]),
                                 rng.uniform(-1, 1, (1, 4))))],
            ref=_icopy_ref, dtypes=DT,
            errors=[ErrorInput(Sample((np.ones((2, 3)), 1, Ix([7]), np.ones((2, 1)))),
                               IndexError, "out of bounds")]),
    OpEntry("index_copy_", lambda m, x, d, i, s: x.clone().index_copy_(d, i.t(m), s),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), 1, Ix([1]),
                                 rng.uniform(-1, 1, (3, 1))))], ref=_icopy_ref),
    OpEntry("index_fill", lambda m, x, d, i, v: m.index_fill(x, d, i.t(m), v),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), 1, Ix([3, 0, -1]), 0.5)),
                         Sample((rng.uniform(-1, 1, (3, 4)), 0, Ix([1]), rng.uniform(-1, 1, ())),
                                name="tensor-value")],
            ref=_ifill_ref, dtypes=DT,
            errors=[ErrorInput(Sample((np.ones((2, 3)), 1, Ix([7]), 1.0)), IndexError,
                               "out of bounds")]),
    OpEntry("index_fill_", lambda m, x, d, i, v: x.clone().index_fill_(d, i.t(m), v),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), 1, Ix([1]), -2.0))],
            ref=_ifill_ref))


def _iput_ref(x, idx, v, accumulate=False):
    out = x.copy()
    key = tuple(i.a if isinstance(i, Ix) else i for i in idx)
    if accumulate:
        np.add.at(out, key, v)
    else:
        out[key] = v
    return out


def _iput_call(m, x, idx, v, **k):
    key = tuple(i.t(m) if isinstance(i, Ix) else m.tensor(i) for i in idx)
    return m.index_put(x, key, v, **k)


add(OpEntry("index_put", _iput_call,
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), (Ix([0, 2]), Ix([1, 3])),
                                 rng.uniform(-1, 1, (2,)))),
                         Sample((rng.uniform(-1, 1, (3, 4)), (Ix([0, 0, 2]),),
                                 rng.uniform(-1, 1, (3, 4))), {"accumulate": True}),
                         Sample((rng.uniform(-1, 1, (3, 4)), (np.array([True, False, True]),),
                                 rng.uniform(-1, 1, (4,))), name="bool-mask")],
            ref=_iput_ref, dtypes=("float32", "float64"),
            errors=[ErrorInput(Sample((np.ones((2, 3)), (Ix([9]),), np.ones(1))), IndexError,
                               "out of bounds")]),
    OpEntry("index_put_", lambda m, x, idx, v, **k: x.clone().index_put_(
                tuple(i.t(m) for i in idx), v, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), (Ix([1, 1]), Ix([0, 0])),
                                 rng.uniform(-1, 1, (2,))), {"accumulate": True})],
            ref=_iput_ref))


# ---------------------------------------------------------------- masks
def _mask_samples(rng, with_value=True):
    x = rng.uniform(-1, 1, (3, 4))
    v = (0.25,) if with_value else ()
    return [Sample((x, Mk(x > 0)) + v), Sample((x, Mk([True, False, True, False])) + v,
                                               name="broadcast-mask"),
            Sample((rng.uniform(-1, 1, (4,)), Mk([[True], [False]])) + v,
                   name="broadcast-both"),
            Sample((rng.uniform(-1, 1, ()), Mk(True)) + v, name="0-dim")]


def _np_masked_scatter(x, mk, s):
    shape = np.broadcast_shapes(x.shape, mk.shape)
    out = np.broadcast_to(x, shape).copy()
    m = np.broadcast_to(mk, shape)
    out[m] = s.reshape(-1)[:m.sum()]
    return out


def _mcall(fn):
    def call(m, x, mask, *rest, **k):
        return fn(m, x, mask.t(m), *rest, **k)
    return call


def Mk(a, dtype=bool):  # noqa: N802 - reads like a constructor
    return Ix(a, dtype)


def _mref(fn):
    def ref(x, mask, *rest, **k):
        return fn(x, mask.a, *rest, **k)
    return ref


add(OpEntry("masked_fill", _mcall(lambda m, x, mk, v: m.masked_fill(x, mk, v)), _mask_samples,
            ref=_mref(lambda x, mk, v: np.where(mk, v, x)), dtypes=DT + ("bool",),
            errors=[ErrorInput(Sample((np.ones(3), Mk([True, False]), 1.0)), RuntimeError,
                               "must match"),
                    ErrorInput(Sample((np.ones(3), Mk([1, 0, 1], np.uint8), 1.0)), RuntimeError,
                               "only supports boolean masks")]),
    OpEntry("masked_fill_tensor_value",
            _mcall(lambda m, x, mk, v: m.masked_fill(x, mk, v)),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), Mk(rng.uniform(-1, 1, (3, 4)) > 0),
                                 rng.uniform(-1, 1, ())))],
            ref=_mref(lambda x, mk, v: np.where(mk, v, x))),
    OpEntry("masked_fill_", _mcall(lambda m, x, mk, v: x.clone().masked_fill_(mk, v)),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), Mk([True, False, True, True]),
                                 2.0))],
            ref=_mref(lambda x, mk, v: np.where(mk, v, x))),
    OpEntry("masked_select", _mcall(lambda m, x, mk: m.masked_select(x, mk)),
            lambda rng: _mask_samples(rng, False),
            ref=_mref(lambda x, mk: np.broadcast_to(x, np.broadcast_shapes(x.shape, mk.shape))[
                np.broadcast_to(mk, np.broadcast_shapes(x.shape, mk.shape))]),
            dtypes=DT + ("bool",)),
    OpEntry("masked_scatter", _mcall(lambda m, x, mk, s: m.masked_scatter(x, mk, s)),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), Mk(rng.uniform(-1, 1, (3, 4)) > 0),
                                 rng.uniform(-1, 1, (4, 4)))),
                         Sample((rng.uniform(-1, 1, (3, 4)), Mk([True, False, False, True]),
                                 rng.uniform(-1, 1, (6,))), name="broadcast-mask")],
            ref=_mref(_np_masked_scatter), dtypes=DT,
            errors=[ErrorInput(Sample((np.ones(3), Mk([True] * 3), np.ones(2))), RuntimeError,
                               "Number of elements of source")]),
    OpEntry("masked_scatter_", _mcall(lambda m, x, mk, s: x.clone().masked_scatter_(mk, s)),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), Mk(rng.uniform(-1, 1, (3, 4)) > 0),
                                 rng.uniform(-1, 1, (12,))))],
            ref=_mref(_np_masked_scatter)))


# ---------------------------------------------------------------- take / put / nonzero
add(OpEntry("take", lambda m, x, i: m.take(x, i.t(m)),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), Ix([[0, 11], [-1, 5]]))),
                         Sample((rng.uniform(-1, 1, (5,)), Ix(2)), name="0-dim-index"),
                         Sample((rng.uniform(-1, 1, (4, 3)), Ix([1, 1, 7])), noncontig=True)],
            ref=lambda x, i: np.take(x.reshape(-1), i.a), dtypes=DT + ("bool",),
            errors=[ErrorInput(Sample((np.ones((2, 3)), Ix([10]))), IndexError,
                               "out of range: tried to access index 10"),
                    ErrorInput(Sample((np.ones((2, 3)), Ix([0.0], np.float32))), RuntimeError,
                               "Expected a long tensor")]),
    OpEntry("take_along_dim", lambda m, x, i, **k: m.take_along_dim(x, i.t(m), **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), Ix(rng.integers(0, 4, (3, 2)))),
                                {"dim": 1}),
                         Sample((rng.uniform(-1, 1, (3, 4)), Ix([[0, 2]])), {"dim": 1},
                                name="broadcast"),
                         Sample((rng.uniform(-1, 1, (3, 4)), Ix([[0, 11]])), name="dim=None")],
            ref=lambda x, i, dim=None: np.take_along_axis(
                x if dim is not None else x.reshape(-1),
                np.broadcast_to(i.a, (x.shape[0], i.a.shape[1])) if dim is not None
                else i.a.reshape(-1), dim if dim is not None else 0),
            dtypes=DT),
    OpEntry("put", lambda m, x, i, s, **k: m.put(x, i.t(m), s, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), Ix([0, -1, 5]),
                                 rng.uniform(-1, 1, (3,)))),
                         Sample((rng.uniform(-1, 1, (3, 4)), Ix([[1, 1]]),
                                 rng.uniform(-1, 1, (1, 2))), {"accumulate": True})],
            ref=lambda x, i, s, accumulate=False: _put_ref(x, i.a, s, accumulate), dtypes=DT,
            errors=[ErrorInput(Sample((np.ones((2, 3)), Ix([9]), np.ones(1))), IndexError,
                               "out of range"),
                    ErrorInput(Sample((np.ones((2, 3)), Ix([0]), np.ones(2))), IndexError,
                               "same number of elements")]),
    OpEntry("put_", lambda m, x, i, s: x.clone().put_(i.t(m), s),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), Ix([2, 7]),
                                 rng.uniform(-1, 1, (2,))))],
            ref=lambda x, i, s: _put_ref(x, i.a, s, False)))


def _put_ref(x, i, s, acc):
    out = x.copy().reshape(-1)
    if acc:
        np.add.at(out, i.reshape(-1), s.reshape(-1))
    else:
        out[i.reshape(-1)] = s.reshape(-1)
    return out.reshape(x.shape)


def _nz_samples(rng):
    return [Sample((rng.uniform(-1, 1, (3, 4)),)), Sample((rng.uniform(-1, 1, (5,)),)),
            Sample((np.array(1.0),), name="0-dim"), Sample((np.array(0.0),), name="0-dim-zero"),
            Sample((rng.uniform(-1, 1, (2, 3, 2)),), {"as_tuple": True})]


def _np_nonzero(x, as_tuple=False):
    x = x > 0 if x.dtype.kind == "f" else x
    if as_tuple:
        return tuple(np.nonzero(np.atleast_1d(x)))
    if x.ndim == 0:
        return np.zeros((int(bool(x)), 0))
    return np.argwhere(x)


add(OpEntry("nonzero", lambda m, x, **k: m.nonzero(x > 0 if x.is_floating_point() else x, **k),
            _nz_samples, ref=_np_nonzero, dtypes=DT + ("bool",), grad=False),
    OpEntry("argwhere", lambda m, x: m.argwhere(x > 0 if x.is_floating_point() else x),
            lambda rng: _nz_samples(rng)[:3], ref=lambda x: _np_nonzero(x), dtypes=DT,
            grad=False))


# ---------------------------------------------------------------- advanced indexing mixes
def _adv_samples(rng):
    x = rng.uniform(-1, 1, (3, 4, 5))
    return [
        Sample((x, (slice(None), Ix([0, 2]), 1)), name="slice-list-int"),
        Sample((x, (Ellipsis, Ix([4, 0]))), name="ellipsis-tensor"),
        Sample((x, (None, Ix([[0], [2]]), slice(1, 3), Ix([1, 4]))), name="none-bcast-split"),
        Sample((x, (x[:, :, 0] > 0,)), name="2d-mask"),
        Sample((x, (1, x[1, :, 0] > 0, slice(None, None, 2))), name="int-mask-slice"),
        Sample((x, (Ix([0, 0, 2]), Ellipsis, None)), name="tensor-ellipsis-none"),
        Sample((x, (slice(0, 2), None, Ix([[1, 2]]), Ix([3]))), name="adjacent-pair"),
        Sample((x, (Ix([-1, 0]), slice(None), Ix([-2, 1]))), name="separated-negative"),
        Sample((x, (Ix([]), 2)), name="empty-index"),
    ]


def _adv_call(m, x, key):
    k = tuple(i.t(m) if isinstance(i, Ix) else m.tensor(i) if isinstance(i, np.ndarray) else i
              for i in key)
    return x[k]


def _adv_ref(x, key):
    return x[tuple(i.a if isinstance(i, Ix) else i for i in key)]


add(OpEntry("getitem_advanced", _adv_call, _adv_samples, ref=_adv_ref, dtypes=DT + ("bool",),
            errors=[ErrorInput(Sample((np.ones((3, 4)), (Ix([0]), Ix([4])))), IndexError,
                               "out of bounds"),
                    ErrorInput(Sample((np.ones((3, 4)), (np.ones((2, 4)) > 0,))), IndexError,
                               "does not match the shape")]))


def _setitem_call(m, x, key, v):
    out = x.clone()
    k = tuple(i.t(m) if isinstance(i, Ix) else m.tensor(i) if isinstance(i, np.ndarray) else i
              for i in key)
    out[k] = v
    return out


def _setitem_ref(x, key, v):
    out = x.copy()
    out[tuple(i.a if isinstance(i, Ix) else i for i in key)] = v
    return out


add(OpEntry("setitem_advanced", _setitem_call,
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)), (slice(None), Ix([0, 3])),
                                 rng.uniform(-1, 1, (3, 2)))),
                         Sample((rng.uniform(-1, 1, (3, 4)), (Ix([2, 0]), None, 1),
                                 rng.uniform(-1, 1, (2, 1)))),
                         Sample((rng.uniform(-1, 1, (3, 4)), (Ellipsis, np.array([1.0, 0, 1, 0]) > 0),
                                 rng.uniform(-1, 1, (2,))))],
            ref=_setitem_ref, dtypes=("float32", "float64")))
