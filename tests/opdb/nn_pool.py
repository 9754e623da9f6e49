"""Records for the pooling primitives (ember/ops/nn_pool.py): max pooling with indices (its
double backward runs ``_pool_scatter`` and ``_pool_gather``), adaptive max pooling and
average pooling (with ``_avg_pool_backward``). References loop over kernel offsets in
NumPy float64."""
from __future__ import annotations

import numpy as np

from opdb import ErrorInput, OpEntry, Sample


def _t(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _out(size, k, s, p, d, ceil):
    span = size + 2 * p - d * (k - 1) - 1
    o = (-(-span // s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= size + p:
        o -= 1
    return o


def _geometry(x, kernel_size, stride, padding, dilation, ceil_mode):
    nd = x.ndim - 2
    k = _t(kernel_size, nd)
    s = _t(stride if stride else kernel_size, nd)
    p, d = _t(padding, nd), _t(dilation, nd)
    sp = x.shape[2:]
    out = tuple(_out(sp[i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(nd))
    return nd, k, s, p, d, sp, out


def _windows(arr, nd, k, s, p, d, sp, out, fill):
    """Yield (kernel offset, slice of the padded array, positions) for each kernel offset."""
    extra = [max(0, (out[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - sp[i] - 2 * p[i])
             for i in range(nd)]
    padded = np.pad(arr, [(0, 0), (0, 0)] + [(p[i], p[i] + extra[i]) for i in range(nd)],
                    constant_values=fill)
    for kidx in np.ndindex(*k):
        sl = tuple(slice(kidx[i] * d[i], kidx[i] * d[i] + s[i] * (out[i] - 1) + 1, s[i])
                   for i in range(nd))
        pos = 0
        for i in range(nd):
            shape = [1] * nd
            shape[i] = out[i]
            coord = (np.arange(out[i]) * s[i] - p[i] + kidx[i] * d[i]).reshape(shape)
            pos = pos + coord * int(np.prod(sp[i + 1:]))
        yield padded[(slice(None), slice(None)) + sl], pos


def ref_max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=True):
    nd, k, s, p, d, sp, out = _geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    best = np.full(x.shape[:2] + out, -np.inf)
    idx = np.zeros(x.shape[:2] + out, dtype=np.int64)
    for vals, pos in _windows(x, nd, k, s, p, d, sp, out, -np.inf):
        upd = vals > best
        best = np.where(upd, vals, best)
        idx = np.where(upd, pos, idx)
    return best, idx


def ref_avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
    nd, k, s, p, d, sp, out = _geometry(x, kernel_size, stride, padding, 1, ceil_mode)
    total = np.zeros(x.shape[:2] + out)
    for vals, _ in _windows(x, nd, k, s, p, d, sp, out, 0.0):
        total += vals
    if divisor_override:
        return total / divisor_override
    # the divisor counts the window elements inside the input (or inside input + padding)
    ones = np.ones((1, 1) + sp)
    mask = np.pad(ones, [(0, 0), (0, 0)] + [(p[i], p[i]) for i in range(nd)],
                  constant_values=1.0 if count_include_pad else 0.0)
    count = np.zeros((1, 1) + out)
    geo = (nd, k, s, (0,) * nd, d, mask.shape[2:], out)
    for vals, _ in _windows(mask, *geo, 0.0):
        count += vals
    return total / count


def _mp_call(m, x, nd=None, **k):
    nd = nd or x.ndim - 2
    return getattr(m.nn.functional, f"max_pool{nd}d")(x, return_indices=True, **k)


def _mp_samples(rng):
    def a(*shape):
        return rng.standard_normal(shape)
    return [
        Sample((a(2, 3, 6, 7),), {"kernel_size": 2}, name="2x2"),
        Sample((a(1, 2, 7, 8),), {"kernel_size": 3, "stride": 2, "padding": 1}, name="overlap"),
        Sample((a(2, 2, 9),), {"kernel_size": 3, "stride": 2, "ceil_mode": True}, name="1d-ceil"),
        Sample((a(1, 2, 7, 6),), {"kernel_size": (2, 3), "stride": (2, 1), "padding": (1, 1),
                                  "dilation": (2, 1), "ceil_mode": True}, name="dilation-ceil"),
        Sample((a(1, 2, 4, 5, 4),), {"kernel_size": 2, "stride": 1}, name="3d"),
        Sample((a(4, 3, 6, 6),), {"kernel_size": 2}, noncontig=True, name="noncontig"),
    ]


def _ap_call(m, x, nd=None, **k):
    nd = nd or x.ndim - 2
    return getattr(m.nn.functional, f"avg_pool{nd}d")(x, **k)


def _ap_samples(rng):
    def a(*shape):
        return rng.standard_normal(shape)
    return [
        Sample((a(2, 3, 6, 7),), {"kernel_size": 2}, name="2x2"),
        Sample((a(1, 2, 7, 8),), {"kernel_size": 3, "stride": 2, "padding": 1,
                                  "ceil_mode": True}, name="pad-ceil"),
        Sample((a(1, 2, 7, 8),), {"kernel_size": 3, "stride": 2, "padding": 1,
                                  "ceil_mode": True, "count_include_pad": False},
               name="exclude-pad"),
        Sample((a(2, 2, 9),), {"kernel_size": 4, "stride": 3, "padding": 2}, name="1d"),
        Sample((a(1, 2, 4, 5, 4),), {"kernel_size": (2, 3, 2), "divisor_override": 5},
               name="3d-divisor"),
        Sample((a(4, 3, 6, 6),), {"kernel_size": 3, "stride": 1}, noncontig=True,
               name="noncontig"),
    ]


def _amp_call(m, x, output_size):
    nd = x.ndim - 2
    return getattr(m.nn.functional, f"adaptive_max_pool{nd}d")(x, output_size, True)


_mp_err = [
    ErrorInput(Sample((np.ones((1, 1, 4, 4)),), {"kernel_size": 2, "padding": 2}), RuntimeError,
               r"\[max_pool2d\] pad should be at most half"),
    ErrorInput(Sample((np.ones((1, 1, 2, 2)),), {"kernel_size": 3}), RuntimeError,
               r"Output size is too small"),
    ErrorInput(Sample((np.ones((2, 2)),), {"kernel_size": 1, "nd": 2}), RuntimeError,
               r"\[max_pool2d\] Expected 3D \(unbatched\) or 4D"),
]

ENTRIES = [
    OpEntry("_max_pool", _mp_call, _mp_samples, ref=ref_max_pool, atol=1e-12,
            errors=_mp_err, covers=("_pool_scatter", "_pool_gather")),
    OpEntry("_avg_pool", _ap_call, _ap_samples, ref=ref_avg_pool, atol=1e-12,
            covers=("_avg_pool_backward",),
            errors=[ErrorInput(Sample((np.ones((1, 1, 4, 4)),), {"kernel_size": 2,
                                                                 "divisor_override": 0}),
                               RuntimeError, "divisor must be not zero")]),
    OpEntry("_adaptive_max_pool", _amp_call,
            lambda rng: [Sample((rng.standard_normal((2, 3, 7, 9)), (3, 4))),
                         Sample((rng.standard_normal((2, 3, 5)), 3)),
                         Sample((rng.standard_normal((1, 2, 5, 4, 3)), (2, 3, 3))),
                         Sample((rng.standard_normal((1, 2, 6, 6)), (6, 2)))],
            errors=[ErrorInput(Sample((np.ones((1, 2, 0, 3)), (1, 1))), RuntimeError,
                               r"non-zero size")]),
]
