"""Record for the fused ``cross_entropy`` primitive (ember/ops/nn_loss.py): checked against a
NumPy float64 version of its decomposition (log_softmax + nll_loss + label smoothing) and
against torch, over index targets (weights, ignore_index, K-dim, unbatched) and probability
targets (whose gradient torch also defines)."""
from __future__ import annotations

import numpy as np

from opdb import ErrorInput, OpEntry, Sample


def _ce_call(m, x, *prob, target=None, weight=None, **kw):
    if prob:
        t = prob[0]
    else:
        t = m.tensor(target)
    w = m.tensor(weight, dtype=x.dtype) if weight is not None else None
    return m.nn.functional.cross_entropy(x, t, weight=w, **kw)


def _log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    s = x - m
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def _ce_ref(x, *prob, target=None, weight=None, ignore_index=-100, reduction="mean",
            label_smoothing=0.0):
    cd = 1 if x.ndim >= 2 else 0
    c = x.shape[cd]
    logp = _log_softmax(x, cd)
    wshape = [1] * x.ndim
    wshape[cd] = c
    w_b = weight.reshape(wshape) if weight is not None else np.ones(wshape)
    if prob:
        t = prob[0] * (1 - label_smoothing) + label_smoothing / c
        loss = -(logp * w_b * t).sum(cd)
        denom = x.size / c
    else:
        tgt = np.asarray(target)
        valid = tgt != ignore_index
        safe = np.where(valid, tgt, 0)
        picked = np.take_along_axis(logp, np.expand_dims(safe, cd), cd).squeeze(cd)
        w_t = (weight[safe] if weight is not None else np.ones(safe.shape)) * valid
        nll = -w_t * picked
        smooth = -(logp * w_b).sum(cd) * valid
        loss = (1 - label_smoothing) * nll + label_smoothing / c * smooth
        denom = w_t.sum()
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / denom


def _samples(rng):
    x = rng.standard_normal
    return [
        Sample((x((4, 5)),), {"target": rng.integers(0, 5, (4,))}),
        Sample((x((4, 5)),), {"target": np.array([1, -100, 3, 0]), "reduction": "sum"}),
        Sample((x((4, 5)),), {"target": np.array([1, -100, 3, 0]), "reduction": "none",
                              "weight": rng.uniform(0.5, 2, (5,))}),
        Sample((x((4, 5)),), {"target": np.array([1, 2, -1, 0]), "ignore_index": -1,
                              "weight": rng.uniform(0.5, 2, (5,)), "label_smoothing": 0.2}),
        Sample((x((2, 3, 4, 2)),), {"target": rng.integers(0, 3, (2, 4, 2))}, name="K-dim"),
        Sample((x((2, 3, 4)),), {"target": rng.integers(0, 3, (2, 4)), "reduction": "none",
                                 "label_smoothing": 0.1}, name="K-dim-none-smooth"),
        Sample((x((5,)),), {"target": np.array(2)}, name="unbatched"),
        Sample((x((4, 5)),), {"target": rng.integers(0, 5, (4,))}, noncontig=True),
        Sample((x((3, 4)), rng.dirichlet(np.ones(4), 3)), {}, name="probs"),
        Sample((x((3, 4)), rng.dirichlet(np.ones(4), 3)),
               {"weight": rng.uniform(0.5, 2, (4,)), "label_smoothing": 0.3,
                "reduction": "none"}, name="probs-weight-smooth"),
        Sample((x((0, 4)),), {"target": np.zeros((0,), np.int64), "reduction": "sum"},
               name="empty"),
    ]


def _err(shape, target, exc, match, **kw):
    return ErrorInput(Sample((np.ones(shape),), {"target": target, **kw}), exc, match)


ENTRIES = [
    OpEntry("cross_entropy", _ce_call, _samples, ref=_ce_ref, dtypes=("float32", "float64"),
            atol=1e-6, rtol=1e-6,
            errors=[_err((3, 5), np.array([1, 2, 7]), IndexError, "out of bounds"),
                    _err((3, 5), np.array([1, 2]), ValueError, "batch_size"),
                    _err((3, 5), np.array([1, 2, 3]), ValueError, "reduction",
                         reduction="avg"),
                    _err((3, 5, 2), np.zeros((3, 4), np.int64), RuntimeError, "size mismatch")]),
]
