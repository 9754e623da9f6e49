"""Records for scaled_dot_product_attention (ember/ops/nn_attention.py): the fused primitive
against a NumPy float64 reference (the documented decomposition) and against torch, with bool
and float masks, causal masking, custom scale, broadcast heads and grouped-query heads.
Bool masks are nested lists (array samples are cast to the float dtype under test)."""
from __future__ import annotations

import math

import numpy as np

from opdb import ErrorInput, OpEntry, Sample


def _call(m, q, k, v, mask=None, **kw):
    if isinstance(mask, list):
        mask = m.tensor(mask)
    return m.nn.functional.scaled_dot_product_attention(q, k, v, mask, **kw)


def _ref(q, k, v, mask=None, is_causal=False, scale=None, enable_gqa=False):
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if enable_gqa:
        k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
        v = np.repeat(v, q.shape[-3] // v.shape[-3], axis=-3)
    scores = q @ np.swapaxes(k, -1, -2) * s
    L, S = scores.shape[-2:]
    if is_causal:
        mask = np.tril(np.ones((L, S), bool))
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
    m = scores.max(-1, keepdims=True)
    e = np.exp(scores - np.where(np.isfinite(m), m, 0))
    d = e.sum(-1, keepdims=True)
    return (e / np.where(d == 0, 1, d)) @ v


def _samples(rng):
    def r(*shape):
        return rng.standard_normal(shape)
    bool_mask = (rng.random((4, 6)) > 0.3).tolist()
    blocked = (rng.random((4, 6)) > 0.3)
    blocked[1] = False  # a fully masked query row gives zeros, like torch
    return [
        Sample((r(2, 3, 4, 5), r(2, 3, 6, 5), r(2, 3, 6, 7))),
        Sample((r(2, 3, 4, 5), r(2, 3, 6, 5), r(2, 3, 6, 7), bool_mask), name="bool mask"),
        Sample((r(2, 3, 4, 5), r(2, 3, 6, 5), r(2, 3, 6, 7), blocked.tolist()),
               name="masked row"),
        Sample((r(2, 3, 4, 5), r(2, 3, 6, 5), r(2, 3, 6, 7), r(4, 6)), name="float mask"),
        Sample((r(2, 3, 4, 5), r(2, 3, 6, 5), r(2, 3, 6, 7)), {"is_causal": True},
               name="causal"),
        Sample((r(2, 3, 6, 5), r(2, 3, 4, 5), r(2, 3, 4, 3)), {"is_causal": True},
               name="causal L>S"),
        Sample((r(2, 4, 4, 5), r(2, 2, 6, 5), r(2, 2, 6, 7)), {"enable_gqa": True,
                                                               "scale": 0.3}, name="gqa"),
        Sample((r(4, 5), r(6, 5), r(6, 7)), name="2-d"),
        Sample((r(2, 3, 4, 5), r(2, 1, 6, 5), r(2, 1, 6, 7)), name="broadcast heads"),
        Sample((r(3, 5, 4), r(3, 6, 4), r(3, 6, 2)), noncontig=True, name="noncontig"),
    ]


def _grad_samples(rng):
    # gradcheck/gradgradcheck perturb every element: keep these tiny
    def r(*shape):
        return rng.standard_normal(shape)
    mask = (rng.random((2, 3)) > 0.3)
    mask[:, 0] = True
    return [
        Sample((r(1, 2, 2, 2), r(1, 2, 3, 2), r(1, 2, 3, 2), mask.tolist()), name="bool mask"),
        Sample((r(1, 2, 2, 2), r(1, 2, 3, 2), r(1, 2, 3, 2), r(2, 3)), name="float mask"),
        Sample((r(2, 3, 2), r(2, 3, 2), r(2, 3, 2)), {"is_causal": True}, name="causal"),
        Sample((r(1, 2, 2, 2), r(1, 1, 3, 2), r(1, 1, 3, 2)), {"enable_gqa": True},
               name="gqa"),
    ]


def _errors():
    q = np.ones((1, 2, 3, 4))
    return [
        ErrorInput(Sample((q, np.ones((1, 2, 5, 3)), np.ones((1, 2, 5, 6)))), RuntimeError,
                   "scaled_dot_product_attention"),
        ErrorInput(Sample((q, np.ones((1, 2, 5, 4)), np.ones((1, 2, 5, 6)), [[True] * 5] * 3),
                          {"is_causal": True}), RuntimeError, "is_causal"),
        ErrorInput(Sample((np.ones((1, 4, 3, 4)), np.ones((1, 3, 5, 4)), np.ones((1, 3, 5, 6))),
                          {"enable_gqa": True}), RuntimeError, "heads"),
    ]


ENTRIES = [
    OpEntry("scaled_dot_product_attention", _call, _samples, ref=_ref,
            dtypes=("float32", "float64"), atol=1e-6, rtol=1e-6, errors=_errors(),
            grad_samples=_grad_samples),
]
