"""nn part A on the GPU: layers, activations, losses, init and utils on CUDA tensors must
match the same computation on the CPU (values and gradients). Skipped without CuPy/GPU."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import ember

pytestmark = pytest.mark.cuda
enn = ember.nn
F = ember.nn.functional
RNG = np.random.default_rng(0)


def _np(t):
    return t.detach().cpu().numpy()


def _model():
    return enn.Sequential(enn.Linear(12, 16), enn.GELU(), enn.Linear(16, 16),
                          enn.SiLU(), enn.Dropout(0.2), enn.Linear(16, 5)).double()


def test_mlp_training_step_matches_cpu():
    cpu = _model().eval()
    gpu = copy.deepcopy(cpu).to("cuda")
    assert gpu[0].weight.device.type == "cuda"
    x = RNG.standard_normal((8, 12))
    y = np.array([0, 1, 2, 3, 4, 0, -100, 2])
    outs = []
    for m, dev in ((cpu, "cpu"), (gpu, "cuda")):
        xt = ember.tensor(x, device=dev, requires_grad=True)
        loss = F.cross_entropy(m(xt), ember.tensor(y, device=dev), label_smoothing=0.1)
        loss.backward()
        outs.append((float(loss), _np(xt.grad), [_np(p.grad) for p in m.parameters()]))
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-10)
    np.testing.assert_allclose(outs[1][1], outs[0][1], rtol=1e-8, atol=1e-12)
    for a, b in zip(outs[1][2], outs[0][2]):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
    gpu.zero_grad()
    assert all(p.grad is None for p in gpu.parameters())
    sd = gpu.state_dict()
    assert all(v.device.type == "cuda" for v in sd.values())
    cpu.load_state_dict({k: v.cpu() for k, v in sd.items()})


@pytest.mark.parametrize("fn", ["relu", "gelu", "silu", "mish", "elu", "selu", "softplus",
                                "logsigmoid", "hardswish", "leaky_relu", "softmax", "glu"])
def test_activations_match_cpu(fn):
    x = RNG.uniform(-4, 4, (4, 6))
    res = []
    for dev in ("cpu", "cuda"):
        t = ember.tensor(x, device=dev, requires_grad=True)
        kw = {"dim": 1} if fn in ("softmax", "glu") else {}
        out = getattr(F, fn)(t, **kw)
        (out * out).sum().backward()
        res.append((_np(out), _np(t.grad)))
    np.testing.assert_allclose(res[1][0], res[0][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res[1][1], res[0][1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
                                  "binary_cross_entropy_with_logits", "kl_div",
                                  "cross_entropy_probs", "nll_loss", "cross_entropy_kdim",
                                  "ctc_loss"])
def test_losses_match_cpu(name):
    x = RNG.standard_normal((4, 5))
    y = RNG.uniform(0.1, 0.9, (4, 5))

    def run(dev):
        t = ember.tensor(x, device=dev, requires_grad=True)
        tgt = ember.tensor(y, device=dev)
        if name == "cross_entropy_probs":
            out = F.cross_entropy(t, tgt / tgt.sum(1, keepdim=True), reduction="none")
        elif name == "nll_loss":
            out = F.nll_loss(t.log_softmax(1), ember.tensor([1, 0, 4, 2], device=dev),
                             weight=ember.ones(5, dtype=ember.float64, device=dev) * 2)
        elif name == "cross_entropy_kdim":
            xk = t.reshape(2, 5, 2)
            out = F.cross_entropy(xk, ember.tensor([[0, 4], [2, 3]], device=dev))
        elif name == "ctc_loss":
            lp = t.reshape(4, 1, 5).log_softmax(2)
            out = F.ctc_loss(lp, ember.tensor([[1, 2]], device=dev), [4], [2])
        elif name == "kl_div":
            out = F.kl_div(t.log_softmax(1), tgt, reduction="batchmean")
        else:
            out = getattr(F, name)(t, tgt)
        out.sum().backward()
        return _np(out), _np(t.grad)
    (a, ga), (b, gb) = run("cpu"), run("cuda")
    np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gb, ga, rtol=1e-8, atol=1e-12)


def test_dropout_and_init_on_cuda():
    x = ember.ones(4000, device="cuda")
    y = _np(F.dropout(x, 0.25))
    assert abs((y == 0).mean() - 0.25) < 0.05
    w = ember.empty(64, 32, device="cuda")
    for init in (enn.init.kaiming_uniform_, enn.init.xavier_normal_, enn.init.orthogonal_,
                 enn.init.trunc_normal_):
        init(w)
        assert w.device.type == "cuda" and np.isfinite(_np(w)).all()
    q = _np(enn.init.orthogonal_(ember.empty(8, 8, device="cuda")))
    np.testing.assert_allclose(q @ q.T, np.eye(8), atol=1e-5)


def test_utils_on_cuda():
    m = enn.Linear(6, 4).double().to("cuda")
    (m(ember.randn(3, 6, dtype=ember.float64, device="cuda")) ** 2).sum().backward()
    total = enn.utils.clip_grad_norm_(m.parameters(), 0.1)
    assert total.device.type == "cuda"
    norm = np.sqrt(sum((_np(p.grad) ** 2).sum() for p in m.parameters()))
    assert norm <= 0.1 + 1e-6
    sn = enn.utils.parametrizations.spectral_norm(enn.Linear(6, 4).to("cuda"))
    assert sn(ember.randn(2, 6, device="cuda")).device.type == "cuda"
    orth = enn.utils.parametrizations.orthogonal(enn.Linear(4, 4).double().to("cuda"))
    q = _np(orth.weight)
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-10)


def test_view_gradients_are_adopted_without_a_copy(monkeypatch):
    # cuBLASLt's weight gradient is the transposed view of a column-major result and its bias
    # gradient a reshape of the epilogue's vector: whole-block views nothing else holds, which
    # become .grad as they are (a second backward accumulates into them). Values against NumPy.
    from ember.autograd import engine
    copies = []
    real = engine._copy_like
    monkeypatch.setattr(engine, "_copy_like", lambda a, like: copies.append(a.shape) or
                        real(a, like))
    x = RNG.standard_normal((64, 96)).astype(np.float32)
    lin = enn.Linear(96, 48).to("cuda")
    w, b = _np(lin.weight).astype(np.float64), _np(lin.bias).astype(np.float64)
    xt = ember.tensor(x, device="cuda")
    for _ in range(2):   # small GEMMs take cuBLASLt from their shape's second call
        (lin(xt) ** 2).sum().backward()
    g = 2 * (x.astype(np.float64) @ w.T + b)
    for k in (1, 2):
        lin.zero_grad()
        copies.clear()
        for _ in range(k):
            (lin(xt) ** 2).sum().backward()
        assert copies == [], copies
        np.testing.assert_allclose(_np(lin.weight.grad), k * g.T @ x, rtol=2e-3, atol=1e-2)
        np.testing.assert_allclose(_np(lin.bias.grad), k * g.sum(0), rtol=2e-3, atol=1e-2)
