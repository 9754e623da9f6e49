"""Records for the embedding primitives (ember/ops/nn_embedding.py): embedding, its dense
backward, embedding_renorm_ and embedding_bag, each against a NumPy float64 reference and
against torch. Index arguments are Python lists (the generic tests cast every array sample
to the float dtype under test); the calls turn them into int64 tensors."""
from __future__ import annotations

import numpy as np

from opdb import ErrorInput, OpEntry, Sample

IDX = [[0, 2, 2], [5, 1, 0]]


# ---------------------------------------------------------------- embedding
def _emb_call(m, w, idx, padding_idx=-1, scale_grad_by_freq=False):
    return m.embedding(w, m.tensor(idx, dtype=m.int64), padding_idx, scale_grad_by_freq)


def _emb_ref(w, idx, padding_idx=-1, scale_grad_by_freq=False):
    return w[np.asarray(idx, dtype=np.int64)]


def _emb_samples(rng):
    w = rng.standard_normal((6, 4))
    return [
        Sample((w, IDX)),
        Sample((w, [3, 3, 1]), {"padding_idx": 3}, name="padding"),
        Sample((w, IDX), {"scale_grad_by_freq": True}, name="freq"),
        Sample((w, IDX), {"padding_idx": 2, "scale_grad_by_freq": True}, name="pad+freq"),
        Sample((w, 4), name="0-dim index"),
        Sample((w, []), name="empty"),
        Sample((rng.standard_normal((6, 4)), IDX), noncontig=True, name="noncontig weight"),
    ]


def _emb_grad_samples(rng):
    # padding_idx and scale_grad_by_freq deliberately differ from the numerical derivative
    # (the padding row gets no gradient; rows are rescaled): their gradients are compared
    # with torch through the forward-sample list instead.
    return [s for s in _emb_samples(rng) if not s.kwargs]


def _emb_errors():
    w = np.ones((5, 3))
    return [
        ErrorInput(Sample((w, np.array([1.0, 2.0]))), RuntimeError, "indices"),
        ErrorInput(Sample((np.ones(5), np.array([1]))), RuntimeError, "2-D"),
        ErrorInput(Sample((w, np.array([5]))), IndexError, "out of range"),
        ErrorInput(Sample((w, np.array([-1]))), IndexError, "out of range"),
    ]


def _emb_err_call(m, w, idx):
    return m.embedding(w, idx)


# ---------------------------------------------------------------- dense backward
def _dense_call(m, g, idx, num=6, padding_idx=-1, by_freq=False):
    t = m.tensor(idx)
    if m.__name__ == "torch":
        return m.ops.aten.embedding_dense_backward(g, t, num, padding_idx, by_freq)
    from ember.ops.nn_embedding import embedding_dense_backward
    return embedding_dense_backward(g, t, num, padding_idx, by_freq)


def _dense_ref(g, idx, num=6, padding_idx=-1, by_freq=False):
    idx = np.asarray(idx).reshape(-1)
    rows = g.reshape(-1, g.shape[-1]).copy()
    if by_freq:
        counts = np.bincount(idx, minlength=num)
        rows = rows / counts[idx][:, None]
    if padding_idx >= 0:
        rows[idx == padding_idx] = 0
    out = np.zeros((num, g.shape[-1]))
    np.add.at(out, idx, rows)
    return out


def _dense_samples(rng):
    g = rng.standard_normal((2, 3, 4))
    return [Sample((g, IDX)),
            Sample((g, IDX), {"padding_idx": 2}, name="padding"),
            Sample((g, IDX), {"by_freq": True}, name="freq"),
            Sample((g, IDX), {"padding_idx": 0, "by_freq": True}, name="pad+freq")]


# ---------------------------------------------------------------- embedding_renorm_
def _renorm_call(m, w, idx, max_norm=1.0, norm_type=2.0):
    w = w.detach().clone()
    with m.no_grad():
        m.embedding_renorm_(w, m.tensor(idx), max_norm, norm_type)
    return w


def _renorm_ref(w, idx, max_norm=1.0, norm_type=2.0):
    w = w.copy()
    for r in np.unique(np.asarray(idx)):
        n = np.linalg.norm(w[r], ord=norm_type)
        if n > max_norm:
            w[r] *= max_norm / (n + 1e-7)
    return w


def _renorm_samples(rng):
    w = rng.standard_normal((6, 4)) * 2
    return [Sample((w, IDX)),
            Sample((w, [1, 4]), {"max_norm": 0.5, "norm_type": 1.0}, name="l1"),
            Sample((w, [0, 5, 5]), {"max_norm": 3.0, "norm_type": float("inf")}, name="inf")]


# ---------------------------------------------------------------- embedding_bag
IND = [1, 2, 4, 4, 3, 0, 5]
OFF = [0, 2, 2, 5]
OFF_LAST = [0, 2, 2, 5, 7]  # CSR layout: the extra last offset is len(input)


def _bag_call(m, w, ind, off, psw=None, mode=0, include_last_offset=False, padding_idx=None):
    out = m.embedding_bag(w, m.tensor(ind), m.tensor(off), False, mode, False, psw,
                          include_last_offset, padding_idx)
    return out[0]  # offset2bag/bag_size/max_indices are kernel bookkeeping, not compared


def _bag_ref(w, ind, off, psw=None, mode=0, include_last_offset=False, padding_idx=None):
    ind = np.asarray(ind)
    n = len(ind)
    nb = len(off) - (1 if include_last_offset else 0)
    ends = list(off[1:nb]) + [off[nb] if include_last_offset else n]
    out = np.zeros((nb, w.shape[1]))
    pad = None if padding_idx is None else padding_idx % w.shape[0]
    for b in range(nb):
        sel = [i for i in range(off[b], ends[b]) if ind[i] != pad]
        if not sel:
            continue
        rows = w[ind[sel]]
        if psw is not None:
            rows = rows * psw[sel][:, None]
        out[b] = rows.sum(0) if mode == 0 else rows.mean(0) if mode == 1 else rows.max(0)
    return out


def _bag_samples(rng):
    w = rng.standard_normal((6, 4))
    psw = rng.standard_normal(7)
    out = []
    for mode in (0, 1, 2):
        out.append(Sample((w, IND, OFF), {"mode": mode}, name=f"mode{mode}"))
        out.append(Sample((w, IND, OFF), {"mode": mode, "padding_idx": 4}, name=f"pad{mode}"))
        out.append(Sample((w, IND, OFF_LAST), {"mode": mode, "include_last_offset": True},
                          name=f"last{mode}"))
    out.append(Sample((w, IND, OFF, psw), {"mode": 0}, name="per-sample weights"))
    out.append(Sample((w, IND, OFF, psw), {"mode": 0, "padding_idx": -1}, name="psw+pad"))
    return out


ENTRIES = [
    OpEntry("embedding", _emb_call, _emb_samples, ref=_emb_ref, dtypes=("float32", "float64"),
            grad_samples=_emb_grad_samples),
    OpEntry("embedding_errors", _emb_err_call, lambda rng: [], errors=_emb_errors(),
            grad=False),
    OpEntry("embedding_dense_backward", _dense_call,
            lambda rng: [s for s in _dense_samples(rng) if "by_freq" not in s.kwargs],
            ref=_dense_ref),
    # torch's double backward of the frequency-scaled gradient drops the 1/count factor
    # (derivatives.yaml: embedding_dense_double_backward); ember's is exact, so these samples
    # are checked by gradcheck/gradgradcheck instead of against torch's gradients.
    OpEntry("embedding_dense_backward_freq", _dense_call,
            lambda rng: [s for s in _dense_samples(rng) if "by_freq" in s.kwargs],
            ref=_dense_ref, torch_grad=False),
    OpEntry("embedding_renorm_", _renorm_call, _renorm_samples, ref=_renorm_ref, grad=False,
            gradgrad=False, atol=1e-6),
    OpEntry("embedding_bag", _bag_call, _bag_samples, ref=_bag_ref,
            errors=[ErrorInput(Sample((np.ones((5, 3)), IND, OFF)), RuntimeError,
                               "out of range")]),
]
