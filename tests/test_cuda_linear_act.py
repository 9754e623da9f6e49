"""``nn.Sequential``'s fused Linear + ReLU / tanh-GELU on CUDA (``_linear_activation``, the
activation as cuBLASLt's epilogue): values and gradients against torch (CPU, float64 math
on the same weights), fusion only where nothing can observe the intermediate.

Marked ``cuda``: skipped without a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest

import ember

pytestmark = pytest.mark.cuda
torch = pytest.importorskip("torch")


def _models(act_e, act_t, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(64, 784), (512, 64), (10, 512)]
    ws = [(rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32) for s in sizes]
    bs = [(0.1 * rng.standard_normal(s[0])).astype(np.float32) for s in sizes]
    e = ember.nn.Sequential(ember.nn.Linear(784, 64), act_e(), ember.nn.Linear(64, 512),
                            act_e(), ember.nn.Linear(512, 10)).cuda()
    t = torch.nn.Sequential(torch.nn.Linear(784, 64), act_t(), torch.nn.Linear(64, 512),
                            act_t(), torch.nn.Linear(512, 10)).double()
    for le, lt, w, b in zip(e[::2], t[::2], ws, bs):
        le.weight.data = ember.tensor(w, device="cuda")
        le.bias.data = ember.tensor(b, device="cuda")
        lt.weight.data = torch.tensor(w, dtype=torch.float64)
        lt.bias.data = torch.tensor(b, dtype=torch.float64)
    return e, t


ACTS = [(ember.nn.ReLU, torch.nn.ReLU),
        (lambda: ember.nn.GELU(approximate="tanh"), lambda: torch.nn.GELU(approximate="tanh"))]


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("acts", ACTS, ids=["relu", "gelu_tanh"])
def test_fused_sequential_matches_torch(acts, amp):
    e, t = _models(*acts)
    x = np.random.default_rng(1).standard_normal((32, 784)).astype(np.float32)
    xe = ember.tensor(x, device="cuda", requires_grad=True)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    for _ in range(2):   # the second call replays the cuBLASLt plans
        with ember.autocast("cuda", dtype=ember.bfloat16, enabled=amp):
            ye = e(xe)
        assert "LinearActivationBackward0" in _chain(ye.grad_fn), "no fused Linear+activation"
        ye.float().sum().backward()
    for _ in range(2):    # two backwards on each side: accumulated grads
        yt = t(xt)
        yt.sum().backward()
    got = _arrays(ye.float().detach().cpu().numpy(), xe.grad.cpu().numpy(), e)
    want = _arrays(yt.detach().numpy(), xt.grad.numpy(), t)
    if amp:
        # the same model in torch's own CPU bfloat16 autocast sets the noise floor: a
        # pre-activation rounded across zero flips its ReLU mask, so bf16 results differ
        # from float64 by a few percent in torch as well
        t32 = _models(*acts)[1].float()
        x32 = torch.tensor(x, requires_grad=True)
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y32 = t32(x32)
            y32.float().sum().backward()
        floor = _arrays(y32.float().detach().numpy(), x32.grad.numpy(), t32)
    for what in got:
        err = _rel(got[what], want[what])
        tol = max(1e-2, 1.5 * _rel(floor[what], want[what])) if amp else 2e-4
        assert err < tol, (what, err, tol)


def _arrays(y, gx, model):
    out = {"output": y, "input grad": gx}
    for i, lin in enumerate(model[::2]):   # ember or torch: both have .cpu().numpy()
        out[f"weight {i} grad"] = lin.weight.grad.cpu().numpy()
        out[f"bias {i} grad"] = lin.bias.grad.cpu().numpy()
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _chain(node, depth=8):
    names = []
    while node is not None and depth:
        names.append(type(node).__name__)
        nxt = [e for e in node.next_functions if e[0] is not None]
        node = nxt[0][0] if nxt else None
        depth -= 1
    return names


def test_no_fusion_when_a_hook_watches_the_activation():
    e, _ = _models(*ACTS[0])
    seen = []
    e[1].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    y = e(ember.randn(4, 784, device="cuda"))
    assert seen == [ember.Size([4, 64])]   # the hook saw the Linear's output
    chain = _chain(y.grad_fn, 20)
    assert "ReluBackward0" in chain            # the watched pair ran as two modules
    assert "LinearActivationBackward0" in chain  # the unwatched pair still fused


def test_fused_double_backward_matches_torch():
    e, t = _models(*ACTS[1])
    x = np.random.default_rng(2).standard_normal((8, 784)).astype(np.float32)
    xe = ember.tensor(x, device="cuda", requires_grad=True)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (ge,) = ember.autograd.grad(e(xe).sum(), xe, create_graph=True)
    (gt,) = torch.autograd.grad(t(xt).sum(), xt, create_graph=True)
    (gge,) = ember.autograd.grad(ge.square().sum(), xe)
    (ggt,) = torch.autograd.grad(gt.square().sum(), xt)
    np.testing.assert_allclose(gge.cpu().numpy(), ggt.numpy(), rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("amp", [False, True])
def test_inference_gelu_epilogue_matches_torch(amp):
    # under no_grad nothing is saved for backward, so the tanh GELU runs as cuBLASLt's
    # GELU_BIAS epilogue (checked through the plan cache); values against torch in float64
    # (amp: against torch's own CPU bf16 autocast error, as in the training test)
    from ember.backend.cuda_ops import nvmath_linear
    e, t = _models(*ACTS[1])
    x = np.random.default_rng(4).standard_normal((32, 784)).astype(np.float32)
    xe = ember.tensor(x, device="cuda")
    with ember.no_grad():
        for _ in range(2):   # the second call takes cuBLASLt
            with ember.autocast("cuda", dtype=ember.bfloat16, enabled=amp):
                ye = e(xe)
    assert any(k[0] == "fwd_gelu_bias" for k in nvmath_linear._PLANS), "no GELU epilogue"
    with torch.no_grad():
        want = t(torch.tensor(x, dtype=torch.float64)).numpy()
        t32 = _models(*ACTS[1])[1].float()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            floor = t32(torch.tensor(x)).float().numpy()
    err = _rel(ye.float().cpu().numpy(), want)
    tol = max(1e-2, 1.5 * _rel(floor, want)) if amp else 2e-4
    assert err < tol, (err, tol)
