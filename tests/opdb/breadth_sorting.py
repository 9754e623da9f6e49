"""Records for sorting and searching (issue: ops breadth): sort/argsort/msort, topk, kthvalue,
median/nanmedian, mode, quantile/nanquantile, unique(_consecutive), searchsorted/bucketize,
histc/histogram, bincount, count_nonzero, isin."""
from __future__ import annotations

import numpy as np

from opdb import ErrorInput, OpEntry, Sample

ENTRIES: list = []
FL = ("float32", "float64")
NAN = float("nan")


def add(*entries: OpEntry) -> None:
    ENTRIES.extend(entries)


class Raw:
    """An array passed through unconverted (its dtype is part of the case)."""

    def __init__(self, a, dtype=None) -> None:
        self.a = np.asarray(a, dtype=dtype)

    def t(self, m):
        return m.tensor(self.a)

    def __repr__(self) -> str:
        return f"Raw{self.a.shape}{self.a.dtype}"


def _vals_idx(vals, idx):
    return vals, idx


# ---------------------------------------------------------------- sort family
def _np_sort(x, dim=-1, descending=False, stable=False):
    if x.ndim == 0:
        return x, np.zeros((), np.int64)
    if descending:
        n = x.shape[dim]
        idx = np.flip(np.argsort(np.flip(x, dim), axis=dim, kind="stable"), dim)
        idx = n - 1 - idx
    else:
        idx = np.argsort(x, axis=dim, kind="stable")
    return np.take_along_axis(x, idx, dim), idx


def _sort_samples(rng):
    x = rng.uniform(-1, 1, (3, 5))
    return [Sample((x,)), Sample((x,), {"dim": 0, "descending": True}),
            Sample((np.array([1.0, NAN, 3.0, 1.0, -2.0, NAN]),), {"descending": True},
                   name="nan-desc"),
            Sample((np.array([1.0, NAN, 3.0, 1.0]),), name="nan-asc"),
            Sample((np.array([2.0, 1.0, 2.0, 1.0, 2.0]),), {"stable": True, "descending": True},
                   name="ties-stable"),
            Sample((rng.uniform(-1, 1, ()),), name="0-dim"),
            Sample((rng.uniform(-1, 1, (0, 3)),), name="empty"),
            Sample((rng.uniform(-1, 1, (5, 3)),), {"dim": 0}, noncontig=True)]


def _sort_grad_samples(rng):
    return [s for s in _sort_samples(rng) if not s.name.startswith(("nan", "ties"))]


add(OpEntry("sort", lambda m, x, **k: m.sort(x, **k), _sort_samples, ref=_np_sort,
            dtypes=FL + ("int64", "bool"), grad_samples=_sort_grad_samples,
            errors=[ErrorInput(Sample((np.ones((2, 3)),), {"dim": 2}), IndexError,
                               "out of range")]),
    OpEntry("argsort", lambda m, x, **k: m.argsort(x, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)),)),
                         Sample((np.array([1.0, 0.0, 1.0]),), {"descending": True,
                                                                "stable": True})],
            ref=lambda x, **k: _np_sort(x, **k)[1], dtypes=FL + ("int64",), grad=False),
    OpEntry("msort", lambda m, x: m.msort(x),
            lambda rng: [Sample((rng.uniform(-1, 1, (4, 3)),))],
            ref=lambda x: np.sort(x, 0), dtypes=FL + ("int64",)))


def _np_topk(x, k, dim=-1, largest=True, sorted=True):
    v, i = _np_sort(x, dim, descending=largest)
    key = (slice(None),) * (dim % x.ndim) + (slice(0, k),)
    return v[key], i[key]


add(OpEntry("topk", lambda m, x, k, **kw: m.topk(x, k, **kw),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 5)), 2)),
                         Sample((rng.uniform(-1, 1, (3, 5)), 3), {"dim": 0, "largest": False}),
                         Sample((rng.uniform(-1, 1, (6,)), 0)),
                         Sample((rng.uniform(-1, 1, (5, 3)), 1), {"dim": 0}, noncontig=True)],
            ref=_np_topk, dtypes=FL,
            errors=[ErrorInput(Sample((np.ones(2), 3)), RuntimeError, "k out of range")]))


def _np_kth(x, k, dim=-1, keepdim=False):
    v, i = _np_sort(x, dim)
    v = np.take(v, [k - 1], axis=dim)
    i = np.take(i, [k - 1], axis=dim)
    return (v, i) if keepdim else (v.squeeze(dim), i.squeeze(dim))


add(OpEntry("kthvalue", lambda m, x, k, **kw: m.kthvalue(x, k, **kw),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 5)), 2)),
                         Sample((rng.uniform(-1, 1, (3, 5)), 3), {"dim": 0, "keepdim": True}),
                         Sample((rng.uniform(-1, 1, (4,)), 4))],
            ref=_np_kth, dtypes=FL,
            errors=[ErrorInput(Sample((np.ones(2), 3)), RuntimeError, "out of range")]))


# ---------------------------------------------------------------- median / mode
def _np_median(x, dim=None, keepdim=False, ignore_nan=False):
    if dim is None:
        f = x.reshape(-1)
        s = np.sort(f)
        if ignore_nan:
            s = s[~np.isnan(s)]
            return np.float64(s[(s.size - 1) // 2]) if s.size else np.float64(NAN)
        return np.float64(NAN) if np.isnan(s).any() else np.float64(s[(s.size - 1) // 2])
    v, i = _np_sort(x, dim)
    n = x.shape[dim]
    valid = (~np.isnan(v)).sum(dim, keepdims=True)
    if ignore_nan:
        r = np.maximum(valid - 1, 0) // 2
    else:
        r = np.where(valid < n, valid, (n - 1) // 2)
    v, i = np.take_along_axis(v, r, dim), np.take_along_axis(i, r, dim)
    return (v, i) if keepdim else (v.squeeze(dim), i.squeeze(dim))


def _median_samples(rng):
    x = rng.uniform(-1, 1, (3, 5))
    return [Sample((x,)), Sample((x, 1)), Sample((x, 0), {"keepdim": True}),
            Sample((rng.uniform(-1, 1, (4, 4)), 1), name="even"),
            Sample((np.array([[1.0, NAN, 3.0, NAN], [2.0, 0.5, 1.0, 4.0]]), 1), name="nan"),
            Sample((np.array([1.0, NAN, 3.0]),), name="nan-all"),
            Sample((np.array([1.0, 2.0, 2.0, 3.0]),), name="ties-all"),
            Sample((rng.uniform(-1, 1, ()),), name="0-dim")]


def _median_grad_samples(rng):
    return [s for s in _median_samples(rng) if "nan" not in s.name]


for _name, _ign in (("median", False), ("nanmedian", True)):
    add(OpEntry(_name, lambda m, x, *a, _n=_name, **k: getattr(m, _n)(x, *a, **k),
                _median_samples,
                ref=lambda x, *a, _i=_ign, **k: _np_median(x, *a, ignore_nan=_i, **k),
                dtypes=FL + ("int64",), grad_samples=_median_grad_samples,
                covers=(f"_{_name}_all", f"_{_name}_dim"),
                errors=[ErrorInput(Sample((np.ones((2, 0)), 1)), IndexError, "non-zero size")]))


def _np_mode(x, dim=-1, keepdim=False):
    rows = np.moveaxis(x, dim, -1)
    lead = rows.shape[:-1]
    r2 = rows.reshape(-1, rows.shape[-1])
    vals, idxs = [], []
    for row in r2:
        u, c = np.unique(row, return_counts=True)
        v = u[np.argmax(c)]
        vals.append(v)
        idxs.append(np.nonzero(row == v)[0][-1])
    v, i = np.array(vals).reshape(lead), np.array(idxs).reshape(lead)
    if keepdim:
        v, i = np.expand_dims(v, dim), np.expand_dims(i, dim)
    return v, i


add(OpEntry("mode", lambda m, x, **k: m.mode(x, **k),
            lambda rng: [Sample((np.array([[3.0, 1, 3, 1, 2], [5, 5, 2, 2, 7], [1, 2, 3, 4, 5]]),)),
                         Sample((np.array([[3.0, 1], [3, 2], [1, 2]]),), {"dim": 0,
                                                                          "keepdim": True}),
                         Sample((np.round(rng.uniform(-2, 2, (4, 6))),), {"dim": 1})],
            # mode is not continuous in its input (a nudge breaks the tie that makes the mode),
            # so finite differences can't check it: the gradient is compared with torch in
            # test_ops_breadth_misc.py
            ref=_np_mode, dtypes=FL + ("int64",), grad=False))


# ---------------------------------------------------------------- quantiles
def _np_quantile(x, q, dim=None, keepdim=False, interpolation="linear", nan=False):
    fn = np.nanquantile if nan else np.quantile
    qq = q.a if isinstance(q, Raw) else q
    return fn(x, qq, axis=dim, keepdims=keepdim, method=interpolation)


def _q_call(name):
    def call(m, x, q, **k):
        qq = m.tensor(q.a, dtype=x.dtype) if isinstance(q, Raw) else q
        return getattr(m, name)(x, qq, **k)
    return call


def _q_samples(rng):
    x = rng.uniform(-1, 1, (3, 5))
    out = [Sample((x, 0.3)), Sample((x, Raw([0.0, 0.25, 1.0])), {"dim": 1, "keepdim": True}),
           Sample((x, 0.5), {"dim": 0}), Sample((x, Raw(0.75)), {"keepdim": True}),
           Sample((np.array([[1.0, NAN, 3.0, 2.0], [NAN, NAN, NAN, NAN]]), 0.5), {"dim": 1},
                  name="nan")]
    out += [Sample((x, Raw([0.1, 0.5, 0.9])), {"dim": 1, "interpolation": i}, name=i)
            for i in ("lower", "higher", "midpoint", "nearest")]
    return out


def _q_grad(rng):
    return [s for s in _q_samples(rng) if s.name != "nan"]


add(OpEntry("quantile", _q_call("quantile"), _q_samples, ref=_np_quantile, dtypes=FL,
            grad_samples=_q_grad,
            errors=[ErrorInput(Sample((np.ones(3), 1.5)), RuntimeError, "in the range"),
                    ErrorInput(Sample((np.array([1, 2]), 0.5)), RuntimeError,
                               "float or double")]),
    OpEntry("nanquantile", _q_call("nanquantile"), _q_samples,
            ref=lambda *a, **k: _np_quantile(*a, nan=True, **k), dtypes=FL,
            grad_samples=_q_grad))


# ---------------------------------------------------------------- unique
def _u_ref(x, sorted=True, return_inverse=False, return_counts=False, dim=None):
    x = x.a
    vals, inv, cnt = np.unique(x, return_inverse=True, return_counts=True, axis=dim,
                               equal_nan=False) if dim is None else np.unique(
        x, return_inverse=True, return_counts=True, axis=dim)
    inv = inv.reshape(x.shape) if dim is None else inv.reshape(-1)
    out = (vals,) + ((inv,) if return_inverse else ()) + ((cnt,) if return_counts else ())
    return out[0] if len(out) == 1 else out


add(OpEntry("unique", lambda m, x, **k: m.unique(x.t(m), **k),
            lambda rng: [Sample((Raw([[3, 1], [2, 1]]),), {"return_inverse": True,
                                                           "return_counts": True}),
                         Sample((Raw([3.0, 1.0, NAN, NAN, 1.0]),)),
                         Sample((Raw([[3, 1], [2, 1], [3, 1]]),), {"dim": 0,
                                                                   "return_inverse": True,
                                                                   "return_counts": True}),
                         Sample((Raw([[3, 1, 3], [2, 1, 2]]),), {"dim": 1}),
                         Sample((Raw([True, False, True]),), {"return_counts": True}),
                         Sample((Raw(np.zeros(0)),), {"return_inverse": True})],
            ref=_u_ref, dtypes=("float32",), grad=False, covers=("_unique",)))


def _uc_ref(x, return_inverse=False, return_counts=False, dim=None):
    x = x.a
    rows = x.reshape(-1, 1) if dim is None else np.moveaxis(x, dim, 0).reshape(x.shape[dim], -1)
    starts = np.concatenate([[True], (rows[1:] != rows[:-1]).any(1)])
    pos = np.nonzero(starts)[0]
    vals = (x.reshape(-1) if dim is None else np.moveaxis(x, dim, 0))[pos]
    if dim is not None:
        vals = np.moveaxis(vals, 0, dim)
    inv = (np.cumsum(starts) - 1).reshape(x.shape if dim is None else (-1,))
    cnt = np.diff(np.append(pos, rows.shape[0]))
    out = (vals,) + ((inv,) if return_inverse else ()) + ((cnt,) if return_counts else ())
    return out[0] if len(out) == 1 else out


add(OpEntry("unique_consecutive", lambda m, x, **k: m.unique_consecutive(x.t(m), **k),
            lambda rng: [Sample((Raw([1, 1, 2, 2, 3, 1, 1]),), {"return_inverse": True,
                                                                "return_counts": True}),
                         Sample((Raw([[1, 1], [1, 1], [2, 1], [1, 1]]),), {"dim": 0,
                                                                          "return_counts": True}),
                         Sample((Raw([[1.0, 1.0], [2.0, 2.0]]),), {"return_inverse": True})],
            ref=_uc_ref, dtypes=("float32",), grad=False, covers=("_unique_consecutive",)))


# ---------------------------------------------------------------- searching
def _ss_ref(seq, v, right=False, side=None, sorter=None, out_int32=False):
    s = seq.a
    mode = "right" if right or side == "right" else "left"
    vals = v.a if isinstance(v, Raw) else v
    if sorter is not None:
        s = np.take_along_axis(s, sorter.a, -1)
    if s.ndim == 1:
        return np.searchsorted(s, vals, side=mode)
    return np.stack([np.searchsorted(r, w, side=mode) for r, w in zip(s, vals)])


def _ss_call(m, seq, v, **k):
    k = {key: (val.t(m) if isinstance(val, Raw) else val) for key, val in k.items()}
    return m.searchsorted(seq.t(m), v.t(m) if isinstance(v, Raw) else v, **k)


add(OpEntry("searchsorted", _ss_call,
            lambda rng: [Sample((Raw([1.0, 3, 5, 7]), Raw([[0.0, 3], [6, 9]]))),
                         Sample((Raw([1.0, 3, 5, 7]), Raw([3.0, 5])), {"right": True}),
                         Sample((Raw([1.0, 3, 5, 7]), Raw([3.0, 5])), {"side": "right",
                                                                       "out_int32": True}),
                         Sample((Raw([[1.0, 3, 5], [2, 4, 6]]), Raw([[3.0], [5]]))),
                         Sample((Raw([1, 3, 5]), 3), name="scalar"),
                         Sample((Raw([5.0, 1, 3]), Raw([2.0, 4])),
                                {"sorter": Raw([1, 2, 0])}, name="sorter")],
            ref=_ss_ref, dtypes=("float32",), grad=False,
            errors=[ErrorInput(Sample((Raw([1, 3]), Raw([1])), {"right": True, "side": "left"}),
                               RuntimeError, "opposites"),
                    ErrorInput(Sample((Raw([[1, 3]]), Raw([1, 2]))), RuntimeError,
                               "first N-1 dimensions")]),
    OpEntry("bucketize", lambda m, x, b, **k: m.bucketize(x.t(m) if isinstance(x, Raw) else x,
                                                           b.t(m), **k),
            lambda rng: [Sample((Raw([[1, 5], [7, 0]]), Raw([1, 3, 5]))),
                         Sample((Raw([1, 5, 7]), Raw([1, 3, 5])), {"right": True}),
                         Sample((4, Raw([1, 3, 5])), name="scalar")],
            ref=lambda x, b, right=False: np.searchsorted(b.a, x.a if isinstance(x, Raw) else x,
                                                          side="right" if right else "left"),
            dtypes=("float32",), grad=False,
            errors=[ErrorInput(Sample((Raw([1]), Raw([[1, 2]]))), RuntimeError,
                               "1 dimension")]))


# ---------------------------------------------------------------- histograms and counts
def _np_histc(x, bins=100, min=0, max=0):
    x = x.reshape(-1)
    lo, hi = float(min), float(max)
    if lo == hi and x.size:
        lo, hi = x.min(), x.max()
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    v = x[(x >= lo) & (x <= hi)]
    idx = np.minimum(np.floor((v - lo) * bins / (hi - lo)).astype(int), bins - 1)
    return np.bincount(idx, minlength=bins)


add(OpEntry("histc", lambda m, x, **k: m.histc(x, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (30,)),), {"bins": 7}),
                         Sample((rng.uniform(-1, 1, (3, 10)),), {"bins": 4, "min": -0.5,
                                                                 "max": 0.5}),
                         Sample((np.array([2.0, 2.0]),), {"bins": 4}, name="same"),
                         Sample((np.zeros(0),), {"bins": 3}, name="empty")],
            ref=_np_histc, dtypes=FL, grad=False,
            errors=[ErrorInput(Sample((np.ones(3),), {"bins": 0}), RuntimeError,
                               "bins must be > 0")]))


def _np_histogram(x, bins=100, range=None, weight=None, density=False):
    b = bins.a if isinstance(bins, Raw) else bins
    w = weight.a if isinstance(weight, Raw) else weight
    return np.histogram(x, b, range=range, weights=w, density=density)


def _hist_call(m, x, bins=100, **k):
    b = m.tensor(bins.a, dtype=x.dtype) if isinstance(bins, Raw) else bins
    if isinstance(k.get("weight"), Raw):
        k["weight"] = m.tensor(k["weight"].a, dtype=x.dtype)
    return m.histogram(x, b, **k)


add(OpEntry("histogram", _hist_call,
            lambda rng: [Sample((rng.uniform(-1, 1, (20,)), 5)),
                         Sample((rng.uniform(-1, 1, (4, 5)), 4), {"range": (-0.5, 0.5),
                                                                  "density": True}),
                         Sample((rng.uniform(-1, 1, (10,)), Raw([-1.0, 0.0, 0.2, 1.0])),
                                {"weight": Raw(rng.uniform(0, 1, (10,)))}),
                         Sample((np.array([1.0, 2.0, 1.0]), 4), {"range": (0.0, 3.0)})],
            ref=_np_histogram, dtypes=FL, grad=False, atol=1e-6, covers=("_histogram",),
            errors=[ErrorInput(Sample((np.ones(3), 0)), RuntimeError, "bins must be > 0")]))


def _bc_ref(x, weights=None, minlength=0):
    return np.bincount(x.a, None if weights is None else weights, minlength)


add(OpEntry("bincount", lambda m, x, *a, **k: m.bincount(x.t(m), *a, **k),
            lambda rng: [Sample((Raw([0, 1, 1, 4]),)),
                         Sample((Raw([0, 1, 1, 4]), rng.uniform(0, 1, (4,))), {"minlength": 7}),
                         Sample((Raw(np.zeros(0, np.int64)),), {"minlength": 2})],
            ref=_bc_ref, dtypes=FL, grad=False,
            errors=[ErrorInput(Sample((Raw([-1, 2]),)), RuntimeError, "non-negative"),
                    ErrorInput(Sample((Raw([[1, 2]]),)), RuntimeError, "1-d")]),
    OpEntry("count_nonzero", lambda m, x, **k: m.count_nonzero(x, **k),
            lambda rng: [Sample((np.round(rng.uniform(-1, 1, (3, 4))),)),
                         Sample((np.round(rng.uniform(-1, 1, (3, 4))),), {"dim": 0}),
                         Sample((np.round(rng.uniform(-1, 1, (2, 3, 4))),), {"dim": (0, 2)})],
            ref=lambda x, dim=None: np.count_nonzero(x, axis=dim),
            dtypes=FL + ("int64", "bool"), grad=False),
    OpEntry("isin", lambda m, a, b, **k: m.isin(a.t(m) if isinstance(a, Raw) else a,
                                                b.t(m) if isinstance(b, Raw) else b, **k),
            lambda rng: [Sample((Raw([[1, 2], [3, 4]]), Raw([2, 3]))),
                         Sample((Raw([[1, 2], [3, 4]]), Raw([2, 3])), {"invert": True}),
                         Sample((Raw([1.0, 2.5]), 2.5), name="scalar-test"),
                         Sample((3, Raw([1, 3])), name="scalar-elements")],
            ref=lambda a, b, invert=False: np.isin(a.a if isinstance(a, Raw) else a,
                                                   b.a if isinstance(b, Raw) else b,
                                                   invert=invert),
            dtypes=("float32",), grad=False))
