"""Records for the fused ReLU tails (ember/ops/nn_fused.py): ember's one op against torch's
two (batch_norm then relu; add then relu), with NumPy float64 references."""
from __future__ import annotations

import numpy as np

from opdb import ErrorInput, OpEntry, Sample
from opdb.nn_norm import _bn_call, _bn_ref, _bn_samples, bn_buffers


def _bn_relu_call(m, x, rm=None, rv=None, w=None, b=None, training=False, eps=1e-5):
    if m.__name__ != "ember":
        return m.relu(_bn_call(m, x, rm, rv, w, b, training=training, eps=eps))
    from ember.nn.functional.normalization import _batch_norm
    return _batch_norm(x, *bn_buffers(m, x, rm, rv), w, b, training, 0.1, eps, None,
                       relu=True)


def _add_relu_call(m, a, b):
    return m._add_relu(a, b) if m.__name__ == "ember" else m.relu(a + b)


def _add_relu_samples(rng):
    def a(*shape):
        return rng.standard_normal(shape)
    return [Sample((a(3, 4), a(3, 4))), Sample((a(2, 3, 4), a(4)), name="broadcast"),
            Sample((a(4, 5), a(4, 5)), noncontig=True), Sample((a(0, 3), a(3)), name="empty")]


ENTRIES = [
    OpEntry("_batch_norm_relu", _bn_relu_call, _bn_samples,
            ref=lambda *a, **k: np.maximum(_bn_ref(*a, **k), 0), atol=1e-9, rtol=1e-7,
            errors=[ErrorInput(Sample((np.ones((2, 3)), [0.0] * 4, [1.0] * 4)),
                               RuntimeError, r"running_mean should contain 3 elements")]),
    OpEntry("_add_relu", _add_relu_call, _add_relu_samples,
            ref=lambda a, b: np.maximum(a + b, 0),
            errors=[ErrorInput(Sample((np.ones((2, 3)), np.ones((4,)))),
                               RuntimeError, r"\[_add_relu\]")]),
]
