"""Records for the convolution primitives (ember/ops/nn_conv.py): ``convolution`` (forward,
transposed, groups, dilation; its double backward exercises ``_conv_weight_grad``) and
``im2col``/``col2im``. References are direct NumPy float64 loops over kernel offsets."""
from __future__ import annotations

import numpy as np

from opdb import ErrorInput, OpEntry, Sample


def _t(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def ref_conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, transposed=False,
             output_padding=0):
    """Convolution by definition: a sum over kernel offsets of shifted input slices."""
    nd = w.ndim - 2
    s, p, d, op = _t(stride, nd), _t(padding, nd), _t(dilation, nd), _t(output_padding, nd)
    k = w.shape[2:]
    n = x.shape[0]
    if not transposed:
        xp = np.pad(x, [(0, 0), (0, 0)] + [(pi, pi) for pi in p])
        out = tuple((x.shape[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1
                    for i in range(nd))
        o, cg = w.shape[0], w.shape[1]
        og = o // groups
        y = np.zeros((n, o) + out)
        for kidx in np.ndindex(*k):
            sl = tuple(slice(kidx[i] * d[i], kidx[i] * d[i] + s[i] * (out[i] - 1) + 1, s[i])
                       for i in range(nd))
            patch = xp[(slice(None), slice(None)) + sl]
            for g in range(groups):
                y[:, g * og:(g + 1) * og] += np.einsum(
                    "nc...,oc->no...", patch[:, g * cg:(g + 1) * cg],
                    w[(slice(g * og, (g + 1) * og), slice(None)) + kidx])
    else:
        cin, cog = w.shape[0], w.shape[1]
        cig = cin // groups
        ins = x.shape[2:]
        out = tuple((ins[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1
                    for i in range(nd))
        full = tuple(out[i] + 2 * p[i] + s[i] for i in range(nd))
        y = np.zeros((n, cog * groups) + full)
        for kidx in np.ndindex(*k):
            sl = tuple(slice(kidx[i] * d[i], kidx[i] * d[i] + s[i] * (ins[i] - 1) + 1, s[i])
                       for i in range(nd))
            for g in range(groups):
                y[(slice(None), slice(g * cog, (g + 1) * cog)) + sl] += np.einsum(
                    "nc...,co->no...", x[:, g * cig:(g + 1) * cig],
                    w[(slice(g * cig, (g + 1) * cig), slice(None)) + kidx])
        y = y[(slice(None), slice(None)) + tuple(slice(p[i], p[i] + out[i]) for i in range(nd))]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nd)
    return y


def _conv_call(m, x, w, b=None, transposed=False, nd=None, **k):
    nd = nd or w.ndim - 2
    fn = getattr(m.nn.functional, f"conv_transpose{nd}d" if transposed else f"conv{nd}d")
    return fn(x, w, b, **k)


def _conv_samples(rng):
    def a(*shape):
        return rng.standard_normal(shape)
    return [
        Sample((a(2, 3, 7), a(4, 3, 3), a(4)), {"stride": 2, "padding": 1}, name="1d"),
        Sample((a(2, 4, 6, 5), a(6, 2, 3, 2), a(6)),
               {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2},
               name="2d-groups-dilation"),
        Sample((a(1, 2, 4, 5), a(3, 2, 1, 1), None), name="2d-1x1-nobias"),
        Sample((a(2, 3, 5, 4), a(3, 4, 3, 3), a(4)),
               {"transposed": True, "stride": 2, "padding": 1, "output_padding": 1},
               name="transposed-2d"),
        Sample((a(1, 4, 4, 3), a(4, 2, 2, 3), None),
               {"transposed": True, "stride": (1, 2), "dilation": 2, "groups": 2},
               name="transposed-groups"),
        Sample((a(1, 2, 3, 4, 3), a(2, 2, 2, 2, 2), a(2)), {"padding": 1}, name="3d"),
        Sample((a(1, 2, 3, 3, 3), a(2, 3, 2, 1, 2), a(3)),
               {"transposed": True, "stride": 2, "output_padding": (1, 0, 1)},
               name="transposed-3d"),
        Sample((a(2, 3, 6), a(2, 3, 4), None), {"padding": "same", "dilation": 1},
               name="same-even-kernel"),
        Sample((a(2, 3, 6, 5), a(4, 3, 3, 3), a(4)), {"padding": "valid"}, name="valid"),
        Sample((a(4, 3, 5, 4), a(4, 3, 3, 3), a(4)), {"padding": 1}, noncontig=True,
               name="noncontig"),
    ]


def _conv_ref(x, w, b=None, padding=0, dilation=1, **k):
    if padding == "valid":
        padding = 0
    if padding == "same":
        kk = w.shape[2:]
        total = [dilation * (q - 1) for q in kk]
        x = np.pad(x, [(0, 0), (0, 0)] + [(t // 2, t - t // 2) for t in total])
        padding = 0
    return ref_conv(x, w, b, padding=padding, dilation=dilation, **k)


_conv_errors = [
    ErrorInput(Sample((np.ones((1, 4, 5, 5)), np.ones((2, 3, 3, 3)))), RuntimeError,
               r"\[conv2d\].*expected input\[1, 4, 5, 5\] to have 3 channels"),
    ErrorInput(Sample((np.ones((1, 3, 2, 2)), np.ones((2, 3, 3, 3)))), RuntimeError,
               r"Kernel size can't be greater than actual input size"),
    ErrorInput(Sample((np.ones((1, 3, 5, 5)), np.ones((2, 3, 3))), {"nd": 2}), RuntimeError,
               r"\[conv2d\] weight expects 4 dims"),
    ErrorInput(Sample((np.ones((3, 5)), np.ones((2, 3, 3, 3)))), RuntimeError,
               r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d"),
    ErrorInput(Sample((np.ones((1, 3, 5, 5)), np.ones((2, 3, 3, 3)), np.ones(3))), RuntimeError,
               r"bias"),
    ErrorInput(Sample((np.ones((1, 3, 5, 5)), np.ones((2, 3, 3, 3))), {"stride": 0}),
               RuntimeError, r"non-positive stride"),
    ErrorInput(Sample((np.ones((1, 3, 5, 5)), np.ones((3, 2, 3, 3))),
                      {"transposed": True, "stride": 2, "output_padding": 2}), RuntimeError,
               r"output padding must be smaller"),
]


def _unfold_call(m, x, **k):
    return m.nn.functional.unfold(x, **k)


def _fold_call(m, x, **k):
    return m.nn.functional.fold(x, **k)


def _unfold_ref(x, kernel_size, dilation=1, padding=0, stride=1):
    n, c = x.shape[:2]
    w = np.zeros((c * int(np.prod(_t(kernel_size, 2))), c) + _t(kernel_size, 2))
    kk = int(np.prod(_t(kernel_size, 2)))
    for ci in range(c):
        for j, kidx in enumerate(np.ndindex(*_t(kernel_size, 2))):
            w[(ci * kk + j, ci) + kidx] = 1.0
    y = ref_conv(x, w, None, stride, padding, dilation)
    return y.reshape(n, y.shape[1], -1)


ENTRIES = [
    OpEntry("convolution", _conv_call, _conv_samples, ref=_conv_ref, atol=1e-9, rtol=1e-9,
            errors=_conv_errors, covers=("_conv_weight_grad",)),
    OpEntry("im2col", _unfold_call,
            lambda rng: [Sample((rng.standard_normal((2, 3, 5, 6)),),
                                {"kernel_size": (2, 3), "dilation": (1, 2), "padding": 1,
                                 "stride": (2, 1)}),
                         Sample((rng.standard_normal((1, 2, 4, 4)),), {"kernel_size": 2}),
                         Sample((rng.standard_normal((2, 4, 3)),), {"kernel_size": 2,
                                                                    "padding": 1})],
            ref=lambda x, **k: _unfold_ref(x if x.ndim == 4 else x[None], **k)[0 if x.ndim == 3
                                                                               else slice(None)],
            errors=[ErrorInput(Sample((np.ones((1, 2, 2, 2)),), {"kernel_size": 3}),
                               RuntimeError, r"\[unfold\]")]),
    OpEntry("col2im", _fold_call,
            lambda rng: [Sample((rng.standard_normal((2, 12, 12)),),
                                {"output_size": (5, 6), "kernel_size": 2, "padding": 1,
                                 "stride": 2}),
                         Sample((rng.standard_normal((1, 8, 9)),),
                                {"output_size": 4, "kernel_size": (2, 2)})],
            errors=[ErrorInput(Sample((np.ones((1, 8, 5)),), {"output_size": 4,
                                                              "kernel_size": 2}),
                               RuntimeError, r"\[fold\]")]),
]
