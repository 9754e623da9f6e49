"""Records for the normalization primitives (ember/ops/nn_norm.py) and the padding and
rearrangement ops (ember/ops/nn_sample.py), with NumPy float64 references."""
from __future__ import annotations

import numpy as np

from opdb import ErrorInput, OpEntry, Sample


def _norm(x, axes, eps, center=True):
    mean = x.mean(axis=axes, keepdims=True) if center else 0.0
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def ref_batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                   training=False, momentum=0.1, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if training:
        y = _norm(x, (0,) + tuple(range(2, x.ndim)), eps)
    else:
        y = (x - running_mean.reshape(shape)) / np.sqrt(running_var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def bn_buffers(m, x, rm, rv):
    # running statistics are buffers, never differentiated (torch refuses it): the samples
    # pass them as lists so that gradcheck does not perturb them
    dt = x.dtype
    rm = m.tensor(rm, dtype=dt) if rm is not None else None
    if rv is not None:
        rv = m.tensor(rv, dtype=dt).abs() + 0.5  # a variance must be positive
    return rm, rv


def _bn_call(m, x, rm=None, rv=None, w=None, b=None, **k):
    return m.nn.functional.batch_norm(x, *bn_buffers(m, x, rm, rv), w, b, **k)


def _bn_ref(x, rm=None, rv=None, w=None, b=None, **k):
    rm = np.asarray(rm) if rm is not None else None
    if rv is not None:
        rv = np.abs(np.asarray(rv)) + 0.5
    return ref_batch_norm(x, rm, rv, w, b, **k)


def _bn_samples(rng):
    def a(*shape):
        return rng.standard_normal(shape)
    return [
        Sample((a(4, 3), None, None, a(3), a(3)), {"training": True}, name="train-2d"),
        Sample((a(2, 3, 4, 5), None, None, a(3), a(3)), {"training": True, "eps": 1e-3},
               name="train-4d"),
        Sample((a(2, 3, 5), list(a(3)), list(a(3)), a(3), None), {"training": False},
               name="eval"),
        Sample((a(2, 3, 4), None, None, None, None), {"training": True}, name="no-affine"),
        Sample((a(4, 3, 2, 2), None, None, a(3), a(3)), {"training": True}, noncontig=True,
               name="noncontig"),
    ]


def ref_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    k = len(normalized_shape)
    y = _norm(x, tuple(range(x.ndim - k, x.ndim)), eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def ref_group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    n, c = x.shape[:2]
    y = _norm(x.reshape(n, num_groups, -1), (2,), eps).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def ref_rms_norm(x, normalized_shape, weight=None, eps=None):
    eps = np.finfo(np.float64).eps if eps is None else eps
    k = len(normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    return y * weight if weight is not None else y


def ref_pad(x, pad, mode="constant", value=None):
    nd = len(pad) // 2
    for i in range(nd):
        dim = x.ndim - 1 - i
        a, b = pad[2 * i], pad[2 * i + 1]
        sl = [slice(None)] * x.ndim
        sl[dim] = slice(max(-a, 0), x.shape[dim] - max(-b, 0))
        x = x[tuple(sl)]
        width = [(0, 0)] * x.ndim
        width[dim] = (max(a, 0), max(b, 0))
        np_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
                   "circular": "wrap"}[mode]
        kw = {"constant_values": value or 0.0} if mode == "constant" else {}
        x = np.pad(x, width, mode=np_mode, **kw)
    return x


def _pad_samples(rng):
    def a(*shape):
        return rng.standard_normal(shape)
    return [
        Sample((a(2, 3, 4), (1, 2)), name="constant-1d"),
        Sample((a(2, 3, 4, 5), (1, -1, 2, 0)), {"value": 1.5}, name="constant-negative"),
        Sample((a(2, 3, 4, 5), (2, 1, 1, 3)), {"mode": "reflect"}, name="reflect-2d"),
        Sample((a(2, 3, 4, 5), (2, 1, 1, 3)), {"mode": "replicate"}, name="replicate-2d"),
        Sample((a(2, 3, 4, 5), (2, 1, 1, 3)), {"mode": "circular"}, name="circular-2d"),
        Sample((a(1, 2, 3, 4, 3), (1, 1, 2, 0, 1, 2)), {"mode": "replicate"}, name="3d"),
        Sample((a(3, 5), (2, 2)), {"mode": "reflect"}, name="reflect-unbatched"),
        Sample((a(4, 3, 5), (1, 2)), {"mode": "circular"}, noncontig=True, name="noncontig"),
    ]


def _f(name):
    def call(m, *args, **k):
        return getattr(m.nn.functional, name)(*args, **k)
    return call


ENTRIES = [
    OpEntry("_batch_norm", _bn_call, _bn_samples, ref=_bn_ref, atol=1e-9, rtol=1e-7,
            errors=[ErrorInput(Sample((np.ones((1, 3)), None, None), {"training": True}),
                               ValueError, r"\[batch_norm\] Expected more than 1 value"),
                    ErrorInput(Sample((np.ones((2, 3)), [0.0] * 4, [1.0] * 4)),
                               RuntimeError, r"running_mean should contain 3 elements")]),
    OpEntry("layer_norm", _f("layer_norm"),
            lambda rng: [Sample((rng.standard_normal((2, 3, 4)), (4,),
                                 rng.standard_normal(4), rng.standard_normal(4))),
                         Sample((rng.standard_normal((2, 3, 4)), (3, 4)), {"eps": 1e-3}),
                         Sample((rng.standard_normal((5,)), (5,), rng.standard_normal(5))),
                         Sample((rng.standard_normal((4, 3)), (3,), None,
                                 rng.standard_normal(3)), noncontig=True)],
            ref=ref_layer_norm, atol=1e-9, rtol=1e-7,
            errors=[ErrorInput(Sample((np.ones((2, 3)), (4,))), RuntimeError,
                               r"\[layer_norm\] Given normalized_shape=\[4\]")]),
    OpEntry("group_norm", _f("group_norm"),
            lambda rng: [Sample((rng.standard_normal((2, 6, 3, 2)), 3,
                                 rng.standard_normal(6), rng.standard_normal(6))),
                         Sample((rng.standard_normal((2, 4, 5)), 1)),
                         Sample((rng.standard_normal((3, 4)), 4, rng.standard_normal(4), None),
                                {"eps": 1e-2}),
                         Sample((rng.standard_normal((4, 4, 3)), 2, rng.standard_normal(4),
                                 rng.standard_normal(4)), noncontig=True)],
            ref=ref_group_norm, atol=1e-9, rtol=1e-7,
            errors=[ErrorInput(Sample((np.ones((2, 6, 3)), 4)), RuntimeError,
                               r"divisible by num_groups")]),
    OpEntry("rms_norm", _f("rms_norm"),
            lambda rng: [Sample((rng.standard_normal((2, 3, 4)), (4,), rng.standard_normal(4))),
                         Sample((rng.standard_normal((2, 3, 4)), (3, 4)), {"eps": 1e-3}),
                         Sample((rng.standard_normal((4, 3)), (3,)), noncontig=True)],
            ref=ref_rms_norm, atol=1e-9, rtol=1e-7,
            errors=[ErrorInput(Sample((np.ones((2, 3)), (2,))), RuntimeError,
                               r"\[rms_norm\] Given normalized_shape")]),
    OpEntry("_pad", _f("pad"), _pad_samples, ref=ref_pad, atol=1e-12,
            covers=("_pad_backward",),
            errors=[ErrorInput(Sample((np.ones((1, 2, 3)), (3, 0)), {"mode": "reflect"}),
                               RuntimeError, r"\[pad\] Padding size should be less than"),
                    ErrorInput(Sample((np.ones((1, 2, 3)), (1,))), RuntimeError,
                               r"divisible by 2"),
                    ErrorInput(Sample((np.ones((1, 2, 3, 3)), (1, 1)), {"mode": "reflect"}),
                               NotImplementedError, r"\[pad\] Padding size 2 is not supported"),
                    ErrorInput(Sample((np.ones((1, 2, 3)), (1, 1)), {"mode": "wrap"}),
                               NotImplementedError, r"Unrecognised padding mode")]),
    OpEntry("pixel_shuffle", _f("pixel_shuffle"),
            lambda rng: [Sample((rng.standard_normal((2, 8, 3, 2)), 2)),
                         Sample((rng.standard_normal((9, 2, 2)), 3)),
                         Sample((rng.standard_normal((2, 1, 4, 2, 3)), 2))],
            errors=[ErrorInput(Sample((np.ones((1, 3, 2, 2)), 2)), RuntimeError,
                               r"divisible by the square")]),
    OpEntry("pixel_unshuffle", _f("pixel_unshuffle"),
            lambda rng: [Sample((rng.standard_normal((2, 2, 4, 6)), 2)),
                         Sample((rng.standard_normal((1, 6, 3)), 3))],
            errors=[ErrorInput(Sample((np.ones((1, 3, 3, 2)), 2)), RuntimeError,
                               r"divisible by downscale_factor")]),
    OpEntry("channel_shuffle", _f("channel_shuffle"),
            lambda rng: [Sample((rng.standard_normal((2, 6, 4)), 3)),
                         Sample((rng.standard_normal((1, 4, 2, 3)), 2))],
            ref=lambda x, g: x.reshape((x.shape[0], g, x.shape[1] // g) + x.shape[2:])
            .swapaxes(1, 2).reshape(x.shape),
            errors=[ErrorInput(Sample((np.ones((1, 4, 3)), 3)), RuntimeError,
                               r"divisible by groups")]),
]
