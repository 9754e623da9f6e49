"""The CPU LSTM layer's compiled time loops (ember/backend/cpu_rnn_kernels.py: numba with
MKL's sgemm per step) against torch, and the per-step Python loop they replace (MKL off)
against torch too: values and every gradient, padded and packed, both directions, given
initial states, float64 (which stays on the per-step loop)."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.ops import nn_rnn

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.host_only


@pytest.fixture(params=["fused", "fused-split", "steps"])
def lstm_path(request, monkeypatch):
    """The CPU paths: the compiled loops (needs numba and MKL) on one thread, split over two
    threads by sequences (forced, whatever the machine's load), and the per-step loop
    (``EMBER_MKL=0``); records which one each layer call took."""
    from ember.backend import cpu, cpu_rnn_kernels
    if request.param.startswith("fused"):
        pytest.importorskip("numba")
        monkeypatch.setenv("EMBER_MKL", "1")
        monkeypatch.setenv("EMBER_NUMBA", "1")
        if not cpu_rnn_kernels.available():
            pytest.skip("MKL or numba missing")
        two = request.param == "fused-split"
        monkeypatch.setattr(cpu_rnn_kernels, "MIN_ROWS", 1)

        def threads(n: int, min_rows: int = 1) -> int:
            return max(1, min(2 if two else 1, n // max(min_rows, 1)))
        monkeypatch.setattr(cpu, "row_threads", threads)
    else:
        monkeypatch.setenv("EMBER_MKL", "0")
    taken: list = []
    orig = nn_rnn._fused_lstm

    def spy(*args):
        res = orig(*args)
        taken.append(res is not None)
        return res
    monkeypatch.setattr(nn_rnn, "_fused_lstm", spy)
    return request.param, taken


def _run(m, x, lengths, layers, bidirectional, dtype, with_state, seed_params=None):
    m.manual_seed(0)
    lstm = m.nn.LSTM(x.shape[2], 24, num_layers=layers, bidirectional=bidirectional)
    if dtype == "float64":
        lstm = lstm.double()
    if seed_params is not None:
        with torch.no_grad():
            for p, q in zip(lstm.parameters(), seed_params):
                p.copy_(torch.tensor(q))
    params = [p.detach().numpy().copy() for p in lstm.parameters()]
    xt = m.tensor(x, requires_grad=True)
    dirs = 2 if bidirectional else 1
    rng = np.random.default_rng(5)
    state = None
    leaves = [xt]
    if with_state:
        h0 = m.tensor(rng.standard_normal((layers * dirs, x.shape[1], 24)).astype(dtype),
                      requires_grad=True)
        c0 = m.tensor(rng.standard_normal((layers * dirs, x.shape[1], 24)).astype(dtype),
                      requires_grad=True)
        state = (h0, c0)
        leaves += [h0, c0]
    inp = m.nn.utils.rnn.pack_padded_sequence(xt, lengths) if lengths else xt
    out, (h, c) = lstm(inp, state)
    data = out.data if lengths else out
    (data.pow(2).sum() + h.sum() + c.pow(2).sum()).backward()
    res = [data.detach().numpy(), h.detach().numpy(), c.detach().numpy()]
    res += [t.grad.numpy() for t in leaves] + [p.grad.numpy() for p in lstm.parameters()]
    return res, params


@pytest.mark.parametrize("lengths", [None, [9, 7, 7, 3, 1]])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lstm_layer_matches_torch(lstm_path, lengths, bidirectional, with_state, dtype):
    path, taken = lstm_path
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 5, 16)).astype(dtype)
    mine, params = _run(ember, x, lengths, 2, bidirectional, dtype, with_state)
    want, _ = _run(torch, x, lengths, 2, bidirectional, dtype, with_state, params)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    for e, t in zip(mine, want):
        np.testing.assert_allclose(e, t, **tol)
    # the compiled loops take float32 on the fused path (every layer call), nothing else
    fused = path != "steps" and dtype == "float32"
    assert taken and all(t == fused for t in taken)


def test_lstm_fused_long_sequence_and_saturated_gates(lstm_path):
    # the language model's shape class (many steps, larger batch) and inputs large enough
    # to saturate the gates (sigmoid and tanh near 0 and 1)
    path, taken = lstm_path
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((35, 20, 40)) * 6).astype(np.float32)
    mine, params = _run(ember, x, None, 2, False, "float32", False)
    want, _ = _run(torch, x, None, 2, False, "float32", False, params)
    for e, t in zip(mine, want):
        np.testing.assert_allclose(e, t, rtol=3e-4, atol=5e-5)
    assert taken and all(t == (path != "steps") for t in taken)
