"""Library-backed CUDA ops (cuDNN frontend convs and attention, nvmath cuBLASLt linears) and
CUDA graphs: each GPU result is compared with the generic CuPy code on the same inputs.

Marked ``cuda``: skipped without a GPU; a test needing a library that is not installed skips.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import ember
import ember.nn.functional as F

pytestmark = pytest.mark.cuda


@contextlib.contextmanager
def generic_path():
    """Run the block with every CUDA implementation detached (the generic CuPy code)."""
    from ember.ops.registry import OPS
    ember.cuda.is_available()  # installs the implementations on first use
    saved = {n: op.cuda_impl for n, op in OPS.items() if op.cuda_impl is not None}
    for n in saved:
        OPS[n].cuda_impl = None
    try:
        yield
    finally:
        for n, impl in saved.items():
            OPS[n].cuda_impl = impl


def _impl(name: str) -> object:
    from ember.ops.registry import OPS
    ember.cuda.is_available()
    return OPS[name].cuda_impl


def _need(name: str, module: str) -> None:
    pytest.importorskip(module)
    assert _impl(name) is not None, f"{name} has no CUDA implementation although {module} " \
                                    "imports"


def _close(a: np.ndarray, b: np.ndarray, tol: float, what: str) -> None:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    scale = max(np.abs(b).max(), 1e-6)
    err = np.abs(a - b).max() / scale
    assert err <= tol, f"{what}: max relative error {err:.2e} > {tol}"


def _np(t: ember.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _no_cudnn_failures() -> None:
    from ember.backend.cuda_ops import _cudnn
    assert not _cudnn._failed_keys, f"cuDNN rejected: {_cudnn._failed_keys}"


# ---------------------------------------------------------------------- convolution
CONVS = [
    # (x shape, weight shape, stride, padding, dilation, groups, transposed, out_pad)
    ((2, 8, 12, 12), (16, 8, 3, 3), 1, 1, 1, 1, False, 0),
    ((2, 8, 13, 11), (16, 8, 3, 3), 2, 1, 1, 1, False, 0),
    ((2, 8, 12, 12), (8, 8, 3, 3), 1, 2, 2, 1, False, 0),
    ((2, 8, 12, 12), (16, 4, 3, 3), 1, 1, 1, 2, False, 0),
    ((2, 8, 12, 12), (8, 1, 3, 3), 1, 1, 1, 8, False, 0),      # depthwise
    ((4, 16, 7, 7), (32, 16, 1, 1), 1, 0, 1, 1, False, 0),     # 1x1
    ((2, 4, 20), (6, 4, 5), 2, 2, 1, 1, False, 0),             # 1-d
    ((1, 4, 6, 6, 6), (8, 4, 3, 3, 3), 1, 1, 1, 1, False, 0),  # 3-d
    ((2, 8, 6, 6), (8, 4, 3, 3), 2, 1, 1, 1, True, 1),         # transposed
]


def _conv_run(cfg, dtype, channels_last, bias, seed=0):
    xs, ws, s, p, d, g, tr, op = cfg
    rng = np.random.default_rng(seed)
    x = ember.tensor(rng.standard_normal(xs), dtype=dtype, device="cuda")
    w = ember.tensor(rng.standard_normal(ws) * 0.2, dtype=dtype, device="cuda")
    bch = ws[1] * g if tr else ws[0]
    b = ember.tensor(rng.standard_normal(bch), dtype=dtype, device="cuda") if bias else None
    if channels_last:
        x = x.to(memory_format=ember.channels_last)
        w = w.to(memory_format=ember.channels_last)
    for t in (x, w) + ((b,) if b is not None else ()):
        t.requires_grad_(True)
    y = ember.convolution(x, w, b, [s] * (len(xs) - 2), [p] * (len(xs) - 2),
                          [d] * (len(xs) - 2), tr, [op] * (len(xs) - 2), g)
    gy = ember.tensor(rng.standard_normal(tuple(y.shape)), dtype=dtype, device="cuda")
    y.backward(gy)
    out = [y, x.grad, w.grad] + ([b.grad] if b is not None else [])
    return out, y


@pytest.mark.parametrize("cfg", CONVS, ids=lambda c: f"x{c[0]}w{c[1]}s{c[2]}p{c[3]}d{c[4]}"
                                                      f"g{c[5]}{'T' if c[6] else ''}")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_conv_matches_generic(cfg, dtype):
    _need("convolution", "cudnn")
    dt = getattr(ember, dtype)
    fast, _ = _conv_run(cfg, dt, False, bias=True)
    with generic_path():
        ref, _ = _conv_run(cfg, dt, False, bias=True)
    tol = 1e-2 if dtype == "float32" else 3e-2  # cuDNN may use TF32 for float32, as torch
    for name, a, b in zip(("y", "dx", "dw", "db"), fast, ref):
        assert a.dtype is dt
        _close(_np(a), _np(b), tol, f"{name} {dtype}")
    _no_cudnn_failures()


@pytest.mark.parametrize("cfg", [CONVS[0], CONVS[1], CONVS[6]], ids=str)
def test_conv_float32_exact_without_tf32(cfg, monkeypatch):
    _need("convolution", "cudnn")
    monkeypatch.setattr(ember.backends.cudnn, "allow_tf32", False)
    fast, _ = _conv_run(cfg, ember.float32, False, bias=False)
    with generic_path():
        ref, _ = _conv_run(cfg, ember.float32, False, bias=False)
    for name, a, b in zip(("y", "dx", "dw"), fast, ref):
        _close(_np(a), _np(b), 1e-5, f"{name} float32 without TF32")
    _no_cudnn_failures()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cfg", [CONVS[0], CONVS[1], CONVS[3], CONVS[5]], ids=str)
def test_conv_channels_last(cfg, dtype):
    _need("convolution", "cudnn")
    dt = getattr(ember, dtype)
    fast, y = _conv_run(cfg, dt, True, bias=False)
    assert y.is_contiguous(memory_format=ember.channels_last)  # the output follows x
    with generic_path():
        ref, _ = _conv_run(cfg, dt, False, bias=False)
    tol = 1e-2 if dtype == "float32" else 3e-2
    for name, a, b in zip(("y", "dx", "dw"), fast, ref):
        _close(_np(a), _np(b), tol, f"{name} {dtype} channels_last")
    _no_cudnn_failures()


def test_conv_double_backward_runs_generic_formulas():
    _need("convolution", "cudnn")
    x = ember.randn(2, 3, 8, 8, device="cuda", requires_grad=True)
    w = ember.randn(4, 3, 3, 3, device="cuda", requires_grad=True)
    res = []
    for ctx in (contextlib.nullcontext(), generic_path()):
        with ctx:
            y = F.conv2d(x, w, padding=1)
            (gx,) = ember.autograd.grad(y.pow(2).sum(), x, create_graph=True)
            (gw,) = ember.autograd.grad(gx.pow(2).sum(), w)
            res.append((_np(gx), _np(gw)))
    _close(res[0][0], res[1][0], 1e-2, "gx")
    _close(res[0][1], res[1][1], 2e-2, "gw (double backward)")


def test_conv_in_resnet_block_bf16_channels_last():
    _need("convolution", "cudnn")
    m = ember.vision.models.resnet18(num_classes=10).cuda().to(memory_format=ember.channels_last)
    x = ember.randn(4, 3, 64, 64, device="cuda").to(memory_format=ember.channels_last)
    with ember.autocast("cuda", dtype=ember.bfloat16):
        out = m(x)
    out.float().sum().backward()
    assert out.shape == (4, 10) and m.conv1.weight.grad is not None
    assert np.isfinite(_np(m.conv1.weight.grad)).all()


# ---------------------------------------------------------------------- attention
def _sdpa_run(dtype, causal, bshd, seed=0, scale=None):
    rng = np.random.default_rng(seed)
    B, H, L, D = 2, 4, 128, 64
    if bshd:  # the GPT layout: one (B, L, 3*H*D) projection viewed per head
        qkv = ember.tensor(rng.standard_normal((B, L, 3 * H * D)), dtype=dtype, device="cuda",
                           requires_grad=True)
        q, k, v = (z.view(B, L, H, D).transpose(1, 2) for z in qkv.split(H * D, dim=2))
        leaves = [qkv]
    else:
        q, k, v = (ember.tensor(rng.standard_normal((B, H, L, D)), dtype=dtype, device="cuda",
                                requires_grad=True) for _ in range(3))
        leaves = [q, k, v]
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    go = ember.tensor(rng.standard_normal(tuple(out.shape)), dtype=dtype, device="cuda")
    out.backward(go)
    return [out] + [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bshd", [False, True])
def test_sdpa_matches_generic(dtype, causal, bshd):
    _need("scaled_dot_product_attention", "cudnn")
    dt = getattr(ember, dtype)
    fast = _sdpa_run(dt, causal, bshd)
    with generic_path():
        ref = _sdpa_run(dt, causal, bshd)
    for name, a, b in zip(("out", "g0", "g1", "g2"), fast, ref):
        _close(_np(a), _np(b), 3e-2, f"sdpa {name} {dtype} causal={causal}")
    _no_cudnn_failures()


def test_sdpa_scale_and_fallbacks():
    _need("scaled_dot_product_attention", "cudnn")
    fast = _sdpa_run(ember.bfloat16, True, False, scale=0.05)
    with generic_path():
        ref = _sdpa_run(ember.bfloat16, True, False, scale=0.05)
    _close(_np(fast[0]), _np(ref[0]), 3e-2, "sdpa scale")
    # float32 and an explicit mask take the generic code (same results as with it detached)
    q = ember.randn(1, 2, 16, 8, device="cuda")
    mask = ember.rand(16, 16, device="cuda") > 0.3
    a = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    with generic_path():
        b = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    _close(_np(a), _np(b), 1e-6, "sdpa float32 masked")


# ---------------------------------------------------------------------- linear / matmul
@pytest.fixture
def nvmath_always(monkeypatch):
    pytest.importorskip("nvmath")
    from ember.backend.cuda_ops import nvmath_linear
    monkeypatch.setattr(nvmath_linear, "MIN_MACS", 0)
    return nvmath_linear


def _linear_run(dtype, bias, shape, seed=0):
    rng = np.random.default_rng(seed)
    x = ember.tensor(rng.standard_normal(shape), dtype=dtype, device="cuda", requires_grad=True)
    w = ember.tensor(rng.standard_normal((96, shape[-1])) * 0.1, dtype=dtype, device="cuda",
                     requires_grad=True)
    b = ember.tensor(rng.standard_normal(96), dtype=dtype, device="cuda",
                     requires_grad=True) if bias else None
    y = F.linear(x, w, b)
    gy = ember.tensor(rng.standard_normal(tuple(y.shape)), dtype=dtype, device="cuda")
    y.backward(gy)
    return [y, x.grad, w.grad] + ([b.grad] if bias else [])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(64, 80), (4, 33, 80)])
def test_linear_matches_generic(nvmath_always, dtype, bias, shape):
    dt = getattr(ember, dtype)
    _linear_run(dt, bias, shape, seed=0)  # plans; the second call replays the plan directly
    fast = _linear_run(dt, bias, shape, seed=1)
    with generic_path():
        ref = _linear_run(dt, bias, shape, seed=1)
    tol = 1e-5 if dtype == "float32" else 2e-2
    for name, a, b in zip(("y", "dx", "dw", "db"), fast, ref):
        assert a.dtype is dt and a.shape == b.shape
        _close(_np(a), _np(b), tol, f"linear {name} {dtype}")
    assert not nvmath_always._FAILED, nvmath_always._FAILED


@pytest.mark.parametrize("shapes", [((64, 80), (80, 48)), ((3, 20, 80), (80, 48)),
                                    ((3, 20, 80), (3, 80, 48))])
def test_matmul_matches_generic(nvmath_always, shapes):
    res = []
    for seed, ctx in ((0, contextlib.nullcontext()), (1, contextlib.nullcontext()),
                      (1, generic_path())):
        rng = np.random.default_rng(seed)
        with ctx:
            a = ember.tensor(rng.standard_normal(shapes[0]), dtype=ember.float32,
                             device="cuda", requires_grad=True)
            b = ember.tensor(rng.standard_normal(shapes[1]), dtype=ember.float32,
                             device="cuda", requires_grad=True)
            y = a @ b
            y.sum().backward()
            res.append((_np(y), _np(a.grad), _np(b.grad)))
    for x, y in zip(*res[1:]):
        _close(x, y, 1e-5, f"matmul {shapes}")


def test_library_calls_keep_the_current_stream(nvmath_always):
    s = ember.cuda.Stream()
    with ember.cuda.stream(s):
        # new cuBLASLt plan and new cuDNN graph: their setup must not switch streams
        F.linear(ember.randn(7, 24, device="cuda"), ember.randn(40, 24, device="cuda"))
        assert ember.cuda.current_stream() == s
        if _impl("convolution") is not None:
            F.conv2d(ember.randn(1, 3, 9, 9, device="cuda"), ember.randn(5, 3, 3, 3,
                                                                      device="cuda"))
            assert ember.cuda.current_stream() == s
    ember.cuda.synchronize()


# ---------------------------------------------------------------------- graphs, pinned copies
def _mlp(seed=0):
    ember.manual_seed(seed)
    nn = ember.nn
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10)).cuda()


def test_make_graphed_callables_matches_eager():
    pytest.importorskip("nvmath")
    eager, graphed = _mlp(), _mlp()
    x0 = ember.randn(64, 784, device="cuda")
    g = ember.cuda.make_graphed_callables(graphed, (x0,))
    assert g is graphed
    opt_e = ember.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
    opt_g = ember.optim.SGD(graphed.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        x = ember.randn(64, 784, device="cuda")
        y = ember.randint(0, 10, (64,), device="cuda")
        losses = []
        for model, opt in ((eager, opt_e), (graphed, opt_g)):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss))
        assert abs(losses[0] - losses[1]) < 1e-4 * max(1.0, abs(losses[0])), (step, losses)
    for pe, pg in zip(eager.parameters(), graphed.parameters()):
        _close(_np(pg), _np(pe), 1e-4, "parameters after 3 graphed steps")


def _torch_mlp_grads(model):
    """``grads(x, y)``: torch's (CPU, float64) parameter gradients of the cross-entropy of
    ``model``'s weights on ``(x, y)``, in ``model.parameters()`` order."""
    torch = pytest.importorskip("torch")
    ref = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                              torch.nn.Linear(512, 512), torch.nn.ReLU(),
                              torch.nn.Linear(512, 10)).double()
    with torch.no_grad():
        for pt, pe in zip(ref.parameters(), model.parameters()):
            pt.copy_(torch.from_numpy(_np(pe).astype(np.float64)))

    def grads(x, y):
        ref.zero_grad()
        xt = torch.from_numpy(_np(x).astype(np.float64))
        yt = torch.from_numpy(y.cpu().numpy())
        torch.nn.functional.cross_entropy(ref(xt), yt).backward()
        return [p.grad.numpy().copy() for p in ref.parameters()]
    return grads


def test_make_graphed_callables_grads_accumulate_and_stay_fresh():
    # The graphed backward hands out gradients copied from its static buffers (one copy
    # per dtype): accumulation without zero_grad, zero_grad(set_to_none=False), and a
    # held gradient must all give torch's gradients (no optimizer step: fixed weights).
    pytest.importorskip("nvmath")
    graphed = _mlp(1)
    torch_grads = _torch_mlp_grads(graphed)
    x0 = ember.randn(64, 784, device="cuda")
    ember.cuda.make_graphed_callables(graphed, (x0,))
    xs = [ember.randn(64, 784, device="cuda") for _ in range(3)]
    ys = [ember.randint(0, 10, (64,), device="cuda") for _ in range(3)]
    want = [torch_grads(x, y) for x, y in zip(xs, ys)]
    for x, y in zip(xs[:2], ys[:2]):   # two backwards, no zero_grad: sums
        F.cross_entropy(graphed(x), y).backward()
    for p, a, b in zip(graphed.parameters(), want[0], want[1]):
        _close(_np(p.grad), a + b, 1e-4, "accumulated graphed grads")
    kept = [p.grad for p in graphed.parameters()]
    for p in graphed.parameters():
        p.grad.zero_()                  # set_to_none=False keeps the tensors
    F.cross_entropy(graphed(xs[2]), ys[2]).backward()
    for p, w in zip(graphed.parameters(), want[2]):
        _close(_np(p.grad), w, 1e-4, "grads after zero_() and one backward")
    graphed.zero_grad()
    F.cross_entropy(graphed(xs[0]), ys[0]).backward()
    for p, w in zip(graphed.parameters(), want[0]):
        _close(_np(p.grad), w, 1e-4, "grads after zero_grad() and one backward")
    ptrs = {p.grad.data_ptr() for p in graphed.parameters()}
    assert len(ptrs) == len(kept), "two parameters share gradient memory"
    # the tensors held from before zero_grad were not overwritten by the later replay
    for g, w in zip(kept, want[2]):
        _close(_np(g), w, 1e-4, "a held gradient after later replays")


def test_make_graphed_callables_reuses_only_a_free_gradient_block():
    # The copy of the gradients goes into a block kept between calls while nothing holds
    # its arrays: zero_grad() frees it (the same memory again), a held view keeps it (the
    # next call takes another block and the view keeps its values). Compared with torch.
    pytest.importorskip("nvmath")
    graphed = _mlp(2)
    torch_grads = _torch_mlp_grads(graphed)
    ember.cuda.make_graphed_callables(graphed, (ember.randn(64, 784, device="cuda"),))
    xs = [ember.randn(64, 784, device="cuda") for _ in range(3)]
    ys = [ember.randint(0, 10, (64,), device="cuda") for _ in range(3)]
    want = [torch_grads(x, y) for x, y in zip(xs, ys)]
    first = next(graphed.parameters())
    ptrs, held = [], None
    for k in range(3):
        graphed.zero_grad()
        F.cross_entropy(graphed(xs[k]), ys[k]).backward()
        for p, w in zip(graphed.parameters(), want[k]):
            _close(_np(p.grad), w, 1e-4, f"graphed grads at call {k}")
        ptrs.append(first.grad.data_ptr())
        if k == 1:
            held = first.grad.view(-1)
    assert ptrs[0] == ptrs[1], "a freed gradient block was not reused"
    assert ptrs[2] != ptrs[1], "a block a held view still reads was written again"
    _close(_np(held).reshape(want[1][0].shape), want[1][0], 1e-4, "a held gradient view")


def test_make_graphed_function_with_input_grad():
    pytest.importorskip("nvmath")
    w = ember.randn(32, 16, device="cuda", requires_grad=True)

    def fn(a):
        return F.linear(a, w).tanh() * 2

    x = ember.randn(8, 16, device="cuda", requires_grad=True)
    gfn = ember.cuda.make_graphed_callables(fn, (x,))
    x2 = ember.randn(8, 16, device="cuda", requires_grad=True)
    out = gfn(x2)
    (gx,) = ember.autograd.grad(out.sum(), x2)
    x3 = x2.detach().requires_grad_(True)
    ref = fn(x3)
    (rx,) = ember.autograd.grad(ref.sum(), x3)
    _close(_np(out), _np(ref), 1e-5, "graphed fn out")
    _close(_np(gx), _np(rx), 1e-5, "graphed fn input grad")


def test_pinned_non_blocking_copy():
    x = ember.randn(1000, 33)
    p = x.pin_memory()
    assert p.is_pinned() and not x.is_pinned()
    g = p.to("cuda", non_blocking=True)
    h = p.cuda(non_blocking=True)
    ember.cuda.synchronize()
    np.testing.assert_array_equal(g.cpu().numpy(), x.numpy())
    np.testing.assert_array_equal(h.cpu().numpy(), x.numpy())
