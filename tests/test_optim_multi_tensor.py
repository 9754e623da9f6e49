"""Multi-tensor (foreach / fused) Adam, AdamW and SGD: CUDA trajectories against torch,
CUDA graph capture of a capturable step, and the CPU argument handling of fused/foreach."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.optim as eoptim
from ember.optim import _multi_tensor

torch = pytest.importorskip("torch")

# odd sizes, a tensor crossing the 4096-element chunk boundary, one spanning three chunks
SHAPES = [(7, 13), (3,), (4097,), (65, 129), (1,), (2, 3, 5)]

CONFIGS = [
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=0.01, maximize=True, weight_decay=0.05)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, amsgrad=True, weight_decay=0.3, maximize=True, eps=1e-6)),
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, maximize=True, weight_decay=0.02)),
]
# how the kernels are reached: torch's CUDA default (foreach=None), fused, capturable
MODES = [dict(), dict(fused=True), dict(foreach=True, capturable=True)]


def _mode_ok(name: str, mode: dict) -> bool:
    return not (name == "SGD" and "capturable" in mode)


CASES = [(n, kw, m) for n, kw in CONFIGS for m in MODES if _mode_ok(n, m)]


def _grads(rng, shapes):
    return [rng.standard_normal(s) for s in shapes]


def _run(lib, name, kwargs, init, grads_seq, device, dtype, missing=None):
    """Steps an optimizer over fixed gradients; ``missing[(step, i)]`` leaves a grad None."""
    ps = [lib.tensor(a, dtype=getattr(lib, dtype), device=device, requires_grad=True)
          for a in init]
    opt = getattr(lib.optim, name)(ps, **kwargs)
    for k, grads in enumerate(grads_seq):
        for i, (p, g) in enumerate(zip(ps, grads)):
            if missing and (k, i) in missing:
                p.grad = None
                continue
            p.grad = lib.tensor(g + 0.3 * np.asarray(p.detach().cpu().float().numpy()),
                                dtype=getattr(lib, dtype), device=device)
        opt.step()
    return [p.detach().cpu().float().numpy() for p in ps], opt


@pytest.mark.cuda
@pytest.mark.parametrize("name,kwargs,mode", CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_multi_tensor_matches_torch(name, kwargs, mode, dtype, monkeypatch):
    from ember.backend.cuda_ops import kernels_optim
    calls = []
    orig = getattr(kernels_optim, "sgd" if name == "SGD" else "adam")
    monkeypatch.setattr(kernels_optim, "sgd" if name == "SGD" else "adam",
                        lambda *a, **k: (calls.append(len(a[0])), orig(*a, **k)))
    rng = np.random.default_rng(3)
    init = _grads(rng, SHAPES)
    seq = [_grads(rng, SHAPES) for _ in range(8)]
    want, _ = _run(torch, name, dict(kwargs, foreach=False), init, seq, "cpu", dtype)
    got, opt = _run(ember, name, {**kwargs, **mode}, init, seq, "cuda", dtype)
    assert calls == [len(SHAPES)] * len(seq)         # one multi-tensor launch per step
    rtol, atol = (1e-10, 1e-12) if dtype == "float64" else (2e-5, 2e-6)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    for st in opt.state.values():
        for key, v in st.items():
            if key == "step":
                on_device = bool(mode.get("fused") or mode.get("capturable"))
                assert v.is_cuda == on_device
                assert float(v) == len(seq)
            else:
                assert v.is_cuda and v.dtype == getattr(ember, dtype), key


@pytest.mark.cuda
@pytest.mark.parametrize("name,kwargs", [("Adam", dict(lr=0.01, weight_decay=0.1)),
                                         ("AdamW", dict(lr=0.01, amsgrad=True)),
                                         ("SGD", dict(lr=0.05, momentum=0.9))])
def test_cuda_missing_grads_split_steps(name, kwargs):
    # a parameter without a grad on some steps lags behind: host steps differ per tensor
    # and momentum buffers start at different steps; results still match torch
    rng = np.random.default_rng(5)
    init = _grads(rng, SHAPES)
    seq = [_grads(rng, SHAPES) for _ in range(6)]
    missing = {(0, 2), (1, 2), (0, 4), (3, 0)}
    want, _ = _run(torch, name, dict(kwargs, foreach=False), init, seq, "cpu", "float64",
                   missing)
    got, _ = _run(ember, name, kwargs, init, seq, "cuda", "float64", missing)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("name,kwargs", [("Adam", dict(lr=0.01, weight_decay=0.1)),
                                         ("AdamW", dict(lr=0.01, weight_decay=0.1)),
                                         ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True))])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_half_params_fp32_math(name, kwargs, dtype):
    # 16-bit params and states, fp32 arithmetic. References: torch's fused CPU Adam (fp32
    # math too; its single-tensor fp16 path divides by eps = 1e-8 rounded to 0 and gives
    # NaN), and its single-tensor SGD (its fused CPU SGD with momentum gives other values
    # for bf16/fp16 in 2.13)
    rng = np.random.default_rng(11)
    init = _grads(rng, SHAPES)
    seq = [_grads(rng, SHAPES) for _ in range(5)]
    ref = dict(foreach=False) if name == "SGD" else dict(fused=True)
    want, _ = _run(torch, name, dict(kwargs, **ref), init, seq, "cpu", dtype)
    got, _ = _run(ember, name, dict(kwargs, fused=True), init, seq, "cuda", dtype)
    # roundings of the stored 16-bit values differ by an ulp here and there after 5 steps
    tol = 6e-2 if dtype == "bfloat16" else 1e-2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_cuda_capturable_step_replays_in_graph(name):
    # the whole step (device step counts, a device lr) is captured once and replayed
    rng = np.random.default_rng(2)
    init = _grads(rng, SHAPES)
    grads = _grads(rng, SHAPES)
    kw = dict(betas=(0.8, 0.95), weight_decay=0.1)
    tp = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in init]
    topt = getattr(torch.optim, name)(tp, lr=0.01, **kw)
    for _ in range(6):
        for p, g in zip(tp, grads):
            p.grad = torch.tensor(g, dtype=torch.float32)
        topt.step()
    ep = [ember.tensor(a, dtype=ember.float32, device="cuda", requires_grad=True) for a in init]
    for p, g in zip(ep, grads):
        p.grad = ember.tensor(g, dtype=ember.float32, device="cuda")
    lr = ember.tensor(0.01, device="cuda")
    eopt = getattr(eoptim, name)(ep, lr=lr, capturable=True, **kw)
    eopt.step()                                       # step 1 eager (creates the state)
    g = ember.cuda.CUDAGraph()
    with ember.cuda.graph(g):
        eopt.step()                                   # captured: runs on replay only
    for _ in range(5):
        g.replay()
    ember.cuda.synchronize()
    for p, t in zip(ep, tp):
        np.testing.assert_allclose(p.detach().cpu().numpy(), t.detach().numpy(), rtol=2e-5,
                                   atol=2e-6)
    assert float(eopt.state[ep[0]]["step"]) == 6


@pytest.mark.cuda
def test_cuda_capture_of_non_capturable_step_raises_like_torch():
    p = ember.randn(10, device="cuda", requires_grad=True)
    p.grad = ember.randn(10, device="cuda")
    opt = eoptim.AdamW([p])
    opt.step()
    g = ember.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturable is False"):
        with ember.cuda.graph(g):
            opt.step()
    opt.step()                                      # the stream is usable again


@pytest.mark.cuda
def test_cuda_foreach_false_keeps_per_parameter_path(monkeypatch):
    from ember.backend.cuda_ops import kernels_optim
    monkeypatch.setattr(kernels_optim, "adam", None)   # would fail if called
    monkeypatch.setattr(kernels_optim, "sgd", None)
    p = ember.randn(10, device="cuda", requires_grad=True)
    p.grad = ember.randn(10, device="cuda")
    eoptim.Adam([p], foreach=False).step()
    eoptim.SGD([p], foreach=False, momentum=0.9).step()


# ---------------------------------------------------------------------- CPU argument handling
@pytest.mark.parametrize("name,kwargs", [("Adam", dict(lr=0.01, weight_decay=0.1)),
                                         ("AdamW", dict(lr=0.01, amsgrad=True)),
                                         ("SGD", dict(lr=0.05, momentum=0.9))])
@pytest.mark.parametrize("mode", [dict(fused=True), dict(foreach=True),
                                  dict(fused=True, capturable=True)])
def test_cpu_fused_and_foreach_run_like_torch(name, kwargs, mode):
    if name == "SGD" and "capturable" in mode:
        pytest.skip("SGD has no capturable")
    rng = np.random.default_rng(0)
    init = _grads(rng, SHAPES[:3])
    seq = [_grads(rng, SHAPES[:3]) for _ in range(4)]
    want, topt = _run(torch, name, {**kwargs, **mode}, init, seq, "cpu", "float32")
    got, eopt = _run(ember, name, {**kwargs, **mode}, init, seq, "cpu", "float32")
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    for (tp, ts), (ep, es) in zip(topt.state.items(), eopt.state.items()):
        assert sorted(ts) == sorted(es)
        if "step" in ts:
            assert es["step"].dtype == ember.float32 and not es["step"].is_cuda
            assert str(ts["step"].dtype) == "torch.float32"


def test_cpu_groups_do_not_take_the_multi_tensor_path():
    p = ember.randn(4, requires_grad=True)
    p.grad = ember.randn(4)
    opt = eoptim.Adam([p], fused=True)
    assert not _multi_tensor.adam(opt, opt.param_groups[0], [p])
    opt = eoptim.SGD([p], foreach=True, momentum=0.9)
    assert not _multi_tensor.sgd(opt, opt.param_groups[0], [p])
    assert not _multi_tensor.adam(opt, {"differentiable": True}, [p])


@pytest.mark.parametrize("kwargs,err", [
    (dict(fused=True, foreach=True), "`fused` and `foreach` cannot be `True` together"),
    (dict(fused=True, differentiable=True), "`fused` does not support `differentiable`"),
])
@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
def test_fused_flag_errors_match_torch(name, kwargs, err):
    for lib in (torch, ember):
        p = lib.zeros(3, requires_grad=True)
        with pytest.raises(RuntimeError, match=err):
            getattr(lib.optim, name)([p], lr=0.1, **kwargs)


def test_tensor_lr_with_foreach_needs_capturable_like_torch():
    for lib in (torch, ember):
        p = lib.zeros(3, requires_grad=True)
        with pytest.raises(ValueError, match="lr as a Tensor is not supported"):
            lib.optim.Adam([p], lr=lib.tensor(0.1), foreach=True)


def _bump_reference(arrays):
    """The per-array increment the fast path replaces."""
    by_step = {}
    for i, a in enumerate(arrays):
        a += 1
        by_step.setdefault(float(a), []).append(i)
    return by_step


@pytest.mark.parametrize("values, dtype, shared", [
    ([3.0] * 6, np.float32, False),
    ([2.0 ** 24] * 3, np.float32, False),     # float32 stops counting here: so must the path
    ([2.0 ** 53 - 1] * 2, np.float64, False),
    ([1.0, 5.0, 1.0], np.float32, False),     # loaded states at different steps
    ([4.0, 4.0], np.float32, True),           # one array serving two parameters
])
def test_host_step_bump_matches_per_array_increment(values, dtype, shared):
    def make():
        arrays = [np.array(v, dtype) for v in values]
        if shared:
            arrays[1] = arrays[0]
        return arrays
    fast, ref = make(), make()
    got, want = _multi_tensor._bump_host_steps(fast), _bump_reference(ref)
    assert got == want
    for a, b in zip(fast, ref):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
