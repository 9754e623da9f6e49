"""Records for the extra reductions and scans (issue: ops breadth): cumprod, cummax/cummin,
logcumsumexp, nansum/nanmean, aminmax, var_mean/std_mean, diff, trapezoid/trapz,
cumulative_trapezoid."""
from __future__ import annotations

import numpy as np
from scipy import integrate

from opdb import ErrorInput, OpEntry, Sample

ENTRIES: list = []
FL = ("float32", "float64")
NAN = float("nan")


def add(*entries: OpEntry) -> None:
    ENTRIES.extend(entries)


def _scan_samples(rng, low=-1.0, high=1.0):
    r = lambda *s: rng.uniform(low, high, s)  # noqa: E731
    return [Sample((r(3, 4),), {"dim": 1}), Sample((r(3, 4),), {"dim": 0}),
            Sample((r(),), {"dim": 0}, name="0-dim"), Sample((r(0, 3),), {"dim": 1}, name="empty"),
            Sample((r(4, 3),), {"dim": -1}, noncontig=True)]


def _cumprod_samples(rng):
    return _scan_samples(rng, 0.5, 1.5) + [
        Sample((np.array([[2.0, 0.0, 3.0, 0.0, 5.0], [1.0, 2.0, 3.0, 4.0, 0.0]]),), {"dim": 1},
               name="zeros"),
        Sample((np.array([[0.0, 1.5], [2.0, 0.5], [0.0, 3.0]]),), {"dim": 0}, name="zeros-dim0")]


def _np_cummax(x, dim, fn=np.maximum):
    if x.ndim == 0:
        return x, np.zeros((), np.int64)
    vals = fn.accumulate(x, axis=dim)
    hit = (x == vals) | (np.isnan(x) & np.isnan(vals))
    shape = [1] * x.ndim
    shape[dim] = -1
    pos = np.arange(x.shape[dim]).reshape(shape)
    return vals, np.maximum.accumulate(np.where(hit, pos, 0), axis=dim)


def _np_lcse(x, dim):
    return x if x.ndim == 0 else np.logaddexp.accumulate(x, axis=dim)


add(OpEntry("cumprod", lambda m, x, **k: m.cumprod(x, **k), _cumprod_samples,
            ref=lambda x, dim: np.cumprod(x, axis=dim) if x.ndim else x,
            dtypes=FL + ("int64",),
            errors=[ErrorInput(Sample((np.ones((2, 3)),), {"dim": 2}), IndexError,
                               "out of range")]),
    OpEntry("cumprod_", lambda m, x, **k: x.clone().cumprod_(**k),
            lambda rng: [Sample((rng.uniform(0.5, 1.5, (3, 4)),), {"dim": 1})],
            ref=lambda x, dim: np.cumprod(x, axis=dim)),
    OpEntry("cummax", lambda m, x, **k: m.cummax(x, **k),
            lambda rng: _scan_samples(rng) + [
                Sample((np.array([1.0, 1.0, 0.0, 2.0, 2.0, NAN, 3.0, NAN]),), {"dim": 0},
                       name="ties-nan")],
            ref=_np_cummax, dtypes=FL + ("int64",),
            grad_samples=lambda rng: _scan_samples(rng)),
    OpEntry("cummin", lambda m, x, **k: m.cummin(x, **k), _scan_samples,
            ref=lambda x, dim: _np_cummax(x, dim, np.minimum), dtypes=FL + ("int64",)),
    OpEntry("logcumsumexp", lambda m, x, **k: m.logcumsumexp(x, **k),
            lambda rng: _scan_samples(rng, -3, 3) + [
                Sample((np.array([1.0, -2.0, 30.0, 4.0]),), {"dim": 0}, name="large")],
            ref=_np_lcse, dtypes=FL, gradgrad=False))


def _nan_x(rng):
    x = rng.uniform(-1, 1, (3, 4))
    x[0, 1] = x[2, 3] = NAN
    return x


def _nan_samples(rng):
    return [Sample((_nan_x(rng),)), Sample((_nan_x(rng),), {"dim": 1}),
            Sample((_nan_x(rng),), {"dim": 0, "keepdim": True}),
            Sample((rng.uniform(-1, 1, (3, 4)),), {"dim": (0, 1)})]


add(OpEntry("nansum", lambda m, x, **k: m.nansum(x, **k), _nan_samples,
            ref=lambda x, dim=None, keepdim=False: np.nansum(
                x, axis=tuple(dim) if isinstance(dim, tuple) else dim, keepdims=keepdim),
            dtypes=FL + ("int64",)),
    OpEntry("nanmean", lambda m, x, **k: m.nanmean(x, **k),
            lambda rng: _nan_samples(rng) + [Sample((np.array([[NAN, NAN], [1.0, NAN]]),),
                                                    {"dim": 1}, name="all-nan-row")],
            ref=lambda x, dim=None, keepdim=False: _np_nanmean(x, dim, keepdim), dtypes=FL,
            # an all-NaN row gets a zero gradient in ember, NaN in torch (documented deviation)
            grad_samples=_nan_samples,
            errors=[ErrorInput(Sample((np.array([1, 2]),)), RuntimeError, "floating point")]))


def _np_nanmean(x, dim, keepdim):
    axis = tuple(dim) if isinstance(dim, tuple) else dim
    keep = ~np.isnan(x)
    return np.nansum(x, axis=axis, keepdims=keepdim) / keep.sum(axis=axis, keepdims=keepdim)


add(OpEntry("aminmax", lambda m, x, **k: m.aminmax(x, **k),
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 4)),)),
                         Sample((rng.uniform(-1, 1, (3, 4)),), {"dim": 0, "keepdim": True}),
                         Sample((rng.uniform(-1, 1, (3, 4)),), {"keepdim": True}),
                         Sample((rng.uniform(-1, 1, (3, 4)),), {"dim": -1})],
            ref=lambda x, dim=None, keepdim=False: (np.min(x, axis=dim, keepdims=keepdim),
                                                    np.max(x, axis=dim, keepdims=keepdim)),
            dtypes=FL + ("int64",),
            errors=[ErrorInput(Sample((np.ones(0),)), RuntimeError, "aminmax")]))


def _vm_samples(rng):
    x = rng.uniform(-1, 1, (3, 4))
    return [Sample((x,)), Sample((x, 1)), Sample((x, 0), {"correction": 0, "keepdim": True}),
            Sample((x, (0, 1), False)), Sample((x, True))]


def _np_vm(fn):
    def ref(x, dim=None, unbiased=None, keepdim=False, correction=None):
        if isinstance(dim, bool):
            unbiased, dim = dim, None
        ddof = correction if correction is not None else (0 if unbiased is False else 1)
        axis = tuple(dim) if isinstance(dim, tuple) else dim
        return fn(x, axis=axis, ddof=ddof, keepdims=keepdim), np.mean(x, axis=axis,
                                                                      keepdims=keepdim)
    return ref


add(OpEntry("var_mean", lambda m, x, *a, **k: m.var_mean(x, *a, **k), _vm_samples,
            ref=_np_vm(np.var), dtypes=FL),
    OpEntry("std_mean", lambda m, x, *a, **k: m.std_mean(x, *a, **k), _vm_samples,
            ref=_np_vm(np.std), dtypes=FL))


# ---------------------------------------------------------------- differences and integrals
def _diff_samples(rng):
    r = lambda *s: rng.uniform(-1, 1, s)  # noqa: E731
    return [Sample((r(3, 5),)), Sample((r(3, 5),), {"n": 2, "dim": 0}),
            Sample((r(3, 5), 1, -1, r(3, 1), r(3, 2)), name="prepend-append"),
            Sample((r(4,),), {"n": 5}, name="n>len"),
            Sample((r(5, 3),), {"dim": 0}, noncontig=True)]


add(OpEntry("diff", lambda m, x, *a, **k: m.diff(x, *a, **k), _diff_samples,
            ref=lambda x, n=1, dim=-1, prepend=None, append=None: np.diff(
                x, n, dim, **({"prepend": prepend} if prepend is not None else {}),
                **({"append": append} if append is not None else {})),
            dtypes=FL + ("int64", "bool"),
            errors=[ErrorInput(Sample((np.ones(()),)), RuntimeError, "at least one")]))


def _trapz_samples(rng):
    r = lambda *s: rng.uniform(-1, 1, s)  # noqa: E731
    return [Sample((r(3, 5),)), Sample((r(3, 5),), {"dx": 0.5, "dim": 0}),
            Sample((r(3, 4), np.array([0.0, 1.0, 3.0, 6.0]))),
            Sample((r(3, 4), r(3, 4))), Sample((r(0),), name="empty")]


def _np_trapz(y, x=None, dx=None, dim=-1):
    return np.trapezoid(y, x=x, dx=1.0 if dx is None else dx, axis=dim)


def _np_cumtrapz(y, x=None, dx=None, dim=-1):
    return integrate.cumulative_trapezoid(y, x=x, dx=1.0 if dx is None else dx, axis=dim)


def _trapz_call(name):
    def call(m, y, *a, **k):
        return getattr(m, name)(y, *a, **k)
    return call


add(OpEntry("trapezoid", _trapz_call("trapezoid"), _trapz_samples, ref=_np_trapz,
            dtypes=FL + ("int64",),
            errors=[ErrorInput(Sample((np.ones((2, 3)), np.ones(4))), RuntimeError,
                               "one `x` value")]),
    OpEntry("trapz", _trapz_call("trapz"), lambda rng: _trapz_samples(rng)[:3], ref=_np_trapz,
            dtypes=FL),
    OpEntry("cumulative_trapezoid", _trapz_call("cumulative_trapezoid"),
            lambda rng: _trapz_samples(rng)[:4], ref=_np_cumtrapz, dtypes=FL + ("int64",)))
