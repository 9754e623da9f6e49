"""Records for the fused activation primitives (ember/ops/nn_activation.py): each checks the
primitive against its decomposition's NumPy float64 reference and against torch."""
from __future__ import annotations

import math

import numpy as np
from scipy import special as sp

from opdb import ALL_FLOATS, ErrorInput, OpEntry, Sample, unary_samples


def _gelu_ref(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + sp.erf(x / math.sqrt(2)))


def _gelu_samples(rng):
    out = unary_samples(rng, low=-4, high=4)
    out.append(Sample((rng.uniform(-4, 4, (3, 5)),), {"approximate": "tanh"}, name="tanh"))
    out.append(Sample((rng.uniform(-4, 4, (4, 3)),), {"approximate": "tanh"}, noncontig=True,
                      name="tanh-nc"))
    return out


def _gelu_call(m, x, **kw):
    return m.nn.functional.gelu(x, **kw)


def _silu_call(m, x):
    return m.nn.functional.silu(x)


ENTRIES = [
    OpEntry("gelu", _gelu_call, _gelu_samples, ref=_gelu_ref, dtypes=ALL_FLOATS,
            atol=1e-6, rtol=1e-6,
            errors=[ErrorInput(Sample((np.ones(3),), {"approximate": "fast"}), RuntimeError,
                               "approximate")]),
    OpEntry("silu", _silu_call, lambda rng: unary_samples(rng, low=-4, high=4),
            ref=lambda x: x * sp.expit(x), dtypes=ALL_FLOATS),
]
