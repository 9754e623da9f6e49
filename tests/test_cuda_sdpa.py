"""scaled_dot_product_attention on cuDNN (ember.backend.cuda_ops.cudnn_sdpa): explicit masks
(bool / float, broadcast shapes), grouped-query heads, dropout, against torch (CPU, float32,
from the same half-precision values) or a NumPy float64 reference.

Dropout masks are cuDNN's own (not the generic path's, nor torch's), so dropout is checked by
statistics and structure: the mask read back from the output, mean preservation, the rate,
reproducibility under ``manual_seed``, and forward/backward against the reference run with
the replayed mask (``ctx.keep_fn``, which double backward uses).

Marked ``cuda``: skipped without a GPU; skipped without the cuDNN frontend.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest

import ember
import ember.nn.functional as F

pytestmark = pytest.mark.cuda

B, H, L, S, D = 2, 4, 64, 80, 64
TOL = {"bfloat16": 3e-2, "float16": 1e-2}


@pytest.fixture(autouse=True)
def _cudnn_ready():
    """Skip without the frontend; keep cuDNN's rejection log as it was (test_cuda_libs
    asserts it is empty), after printing what this test added."""
    pytest.importorskip("cudnn")
    from ember.backend.cuda_ops import _cudnn
    from ember.ops.registry import OPS
    ember.cuda.is_available()  # installs the CUDA implementations
    assert OPS["scaled_dot_product_attention"].cuda_impl is not None
    before = list(_cudnn._failed_keys)
    yield
    added = _cudnn._failed_keys[len(before):]
    if added:
        print("cuDNN rejected:", added)
    _cudnn._failed_keys[:] = before


@contextlib.contextmanager
def generic_path():
    """Run the block with the CUDA implementations detached (the generic CuPy code)."""
    from ember.ops.registry import OPS
    saved = {n: op.cuda_impl for n, op in OPS.items() if op.cuda_impl is not None}
    for n in saved:
        OPS[n].cuda_impl = None
    try:
        yield
    finally:
        for n, impl in saved.items():
            OPS[n].cuda_impl = impl


def _calls() -> tuple:
    from ember.backend.cuda_ops import cudnn_sdpa
    return cudnn_sdpa.CALLS["forward"], cudnn_sdpa.CALLS["backward"]


def _failures() -> list:
    from ember.backend.cuda_ops import _cudnn
    return list(_cudnn._failed_keys)


def _np(t: ember.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float64)


def _close(a, b, tol: float, what: str) -> None:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert np.isfinite(a).all(), f"{what}: non-finite values"
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)
    assert err <= tol, f"{what}: max relative error {err:.2e} > {tol}"


def _qkv(rng, dtype, hk=H, l=L, s=S, d=D, grad=True):
    q = rng.standard_normal((B, H, l, d))
    k = rng.standard_normal((B, hk, s, d))
    v = rng.standard_normal((B, hk, s, d))
    return [ember.tensor(a, dtype=dtype, device="cuda", requires_grad=grad) for a in (q, k, v)]


def _torch_ref(e_args, mask=None, **kw):
    """torch's CPU float32 attention on the same (rounded) values: (out, [grads]) for a
    random upstream gradient ``kw['g']``."""
    torch = pytest.importorskip("torch")
    g = kw.pop("g")
    t = [torch.tensor(_np(a), dtype=torch.float32, requires_grad=True) for a in e_args]
    tm = None
    if mask is not None:
        tm = torch.tensor(mask.detach().cpu().numpy()) if mask.dtype == ember.bool else \
            torch.tensor(_np(mask), dtype=torch.float32)
    out = torch.nn.functional.scaled_dot_product_attention(*t, attn_mask=tm, **kw)
    out.backward(torch.tensor(g, dtype=torch.float32))
    return out.detach().numpy(), [a.grad.numpy() for a in t]


def _run(args, mask=None, g=None, **kw):
    out = F.scaled_dot_product_attention(*args, attn_mask=mask, **kw)
    if g is None:
        g = np.random.default_rng(99).standard_normal(tuple(out.shape))
    out.backward(ember.tensor(g, dtype=out.dtype, device="cuda"))
    return out, g


def _np_ref(q, k, v, mask=None, causal=False, scale=None, keep=None, g=None):
    """Float64 attention (torch's semantics, fully masked rows give 0) and its gradients;
    ``keep`` is the dropout mask already divided by (1 - p)."""
    hq, hk, hv = q.shape[1], k.shape[1], v.shape[1]
    kk, vv = np.repeat(k, hq // hk, axis=1), np.repeat(v, hq // hv, axis=1)
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    sc = q @ kk.swapaxes(-1, -2) * s
    if causal:
        sc = np.where(np.tril(np.ones(sc.shape[-2:], bool)), sc, -np.inf)
    if mask is not None:
        sc = np.where(mask, sc, -np.inf) if mask.dtype == bool else sc + mask
    m = sc.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(sc - m)
    den = e.sum(-1, keepdims=True)
    p = e / np.where(den == 0, 1.0, den)
    pd = p * keep if keep is not None else p
    out = pd @ vv
    if g is None:
        return out, None
    dv = pd.swapaxes(-1, -2) @ g
    dp = g @ vv.swapaxes(-1, -2)
    if keep is not None:
        dp = dp * keep
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = ds @ kk * s
    dk = ds.swapaxes(-1, -2) @ q * s
    b = q.shape[0]
    dk = dk.reshape(b, hk, hq // hk, *dk.shape[2:]).sum(2)
    dv = dv.reshape(b, hv, hq // hv, *dv.shape[2:]).sum(2)
    return out, [dq, dk, dv]


# ---------------------------------------------------------------------- masks
def _mask(case: str, rng, dtype, l=L, s=S):
    """(ember mask, whether cuDNN is expected to run it)."""
    def keep_some(m):  # no fully masked row (tested on its own below)
        m[..., 0] = True
        return m
    if case == "bool_full":
        arr = keep_some(rng.random((B, H, l, s)) > 0.3)
    elif case == "bool_2d":
        arr = keep_some(rng.random((l, s)) > 0.5)
    elif case == "bool_keypad":  # (B, 1, 1, S) key padding: broadcast over L is materialised
        arr = np.ones((B, 1, 1, s), bool)
        arr[0, ..., s - 17:] = False
        arr[1, ..., s - 5:] = False
    elif case == "float_heads":
        return ember.tensor(rng.standard_normal((1, H, l, s)), dtype=dtype, device="cuda")
    elif case == "float_batch":
        return ember.tensor(rng.standard_normal((B, 1, l, s)), dtype=dtype, device="cuda")
    elif case == "float_expand":  # stride-0 batch and head dims
        m = ember.tensor(rng.standard_normal((l, s)), dtype=dtype, device="cuda")
        return m.expand(B, H, l, s)
    elif case == "float_rows":  # (L, 1): broadcast over keys, materialised
        return ember.tensor(rng.standard_normal((l, 1)), dtype=dtype, device="cuda")
    elif case == "float_noncontig":  # a transposed (S, L) buffer: rows not unit-stride
        m = ember.tensor(rng.standard_normal((B, H, s, l)), dtype=dtype, device="cuda")
        return m.transpose(-1, -2)
    else:
        raise AssertionError(case)
    return ember.tensor(arr, device="cuda")


MASKS = ["bool_full", "bool_2d", "bool_keypad", "float_heads", "float_batch", "float_expand",
         "float_rows", "float_noncontig"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("case", MASKS)
def test_sdpa_mask_matches_torch(case, dtype):
    dt = getattr(ember, dtype)
    rng = np.random.default_rng(MASKS.index(case))
    args = _qkv(rng, dt)
    mask = _mask(case, rng, dt)
    f0, b0 = _calls()
    out, g = _run(args, mask)
    f1, b1 = _calls()
    assert (f1 - f0, b1 - b0) == (1, 1), f"cuDNN did not run {case}: {_failures()}"
    assert out.grad_fn.cudnn_o is not None and out.grad_fn.cudnn_bias is not None
    ref, grads = _torch_ref(args, mask, g=g)
    _close(_np(out), ref, TOL[dtype], f"out {case}")
    for name, a, r in zip("qkv", args, grads):
        _close(_np(a.grad), r, TOL[dtype], f"d{name} {case}")


@pytest.mark.parametrize("lengths", [(37, 45), (24, 130)])
def test_sdpa_mask_odd_lengths(lengths):
    """Sequence lengths off the 8-element grid: the bias rows are padded to 16 bytes."""
    l, s = lengths
    rng = np.random.default_rng(l)
    args = _qkv(rng, ember.bfloat16, l=l, s=s)
    m = rng.random((l, s)) > 0.4
    m[:, 0] = True
    mask = ember.tensor(m, device="cuda")
    out, g = _run(args, mask)
    ref, grads = _torch_ref(args, mask, g=g)
    _close(_np(out), ref, TOL["bfloat16"], "out")
    for name, a, r in zip("qkv", args, grads):
        _close(_np(a.grad), r, TOL["bfloat16"], f"d{name}")


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_fully_masked_rows_give_zeros(kind):
    rng = np.random.default_rng(5)
    args = _qkv(rng, ember.bfloat16)
    m = rng.random((L, S)) > 0.3
    m[:, 0] = True
    m[[3, 40]] = False  # two rows see no key
    if kind == "bool":
        mask = ember.tensor(m, device="cuda")
    else:
        mask = ember.tensor(np.where(m, 0.0, -np.inf), dtype=ember.bfloat16, device="cuda")
    f0, _ = _calls()
    out, g = _run(args, mask)
    assert _calls()[0] == f0 + 1, _failures()
    o = _np(out)
    assert not o[:, :, [3, 40]].any()
    assert not _np(args[0].grad)[:, :, [3, 40]].any()
    ref, grads = _np_ref(*(_np(a) for a in args), mask=m, g=g)
    _close(o, ref, TOL["bfloat16"], "out")
    for name, a, r in zip("qkv", args, grads):
        _close(_np(a.grad), r, TOL["bfloat16"], f"d{name}")


def test_sdpa_float_mask_requiring_grad_falls_back():
    rng = np.random.default_rng(6)
    args = _qkv(rng, ember.bfloat16)
    mask = ember.tensor(rng.standard_normal((1, H, L, S)), dtype=ember.bfloat16, device="cuda",
                        requires_grad=True)
    f0, b0 = _calls()
    out, g = _run(args, mask)
    assert _calls() == (f0, b0)  # the generic code, which differentiates the mask
    torch = pytest.importorskip("torch")
    t = [torch.tensor(_np(a), dtype=torch.float32, requires_grad=True) for a in args + [mask]]
    to = torch.nn.functional.scaled_dot_product_attention(*t[:3], attn_mask=t[3])
    to.backward(torch.tensor(g, dtype=torch.float32))
    _close(_np(out), to.detach().numpy(), TOL["bfloat16"], "out")
    for name, a, r in zip(("q", "k", "v", "mask"), args + [mask], t):
        _close(_np(a.grad), r.grad.numpy(), TOL["bfloat16"], f"d{name}")


def test_sdpa_causal_with_mask_is_an_error():
    rng = np.random.default_rng(7)
    args = _qkv(rng, ember.bfloat16, grad=False)
    mask = ember.tensor(np.ones((L, S), bool), device="cuda")
    with pytest.raises(RuntimeError, match="attn_mask"):
        F.scaled_dot_product_attention(*args, attn_mask=mask, is_causal=True)


# ---------------------------------------------------------------------- grouped-query heads
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("hk", [2, 1])
@pytest.mark.parametrize("variant", ["plain", "causal", "mask"])
def test_sdpa_gqa_matches_torch(hk, variant, dtype):
    dt = getattr(ember, dtype)
    rng = np.random.default_rng(10 + hk)
    args = _qkv(rng, dt, hk=hk)
    kw = {"enable_gqa": True}
    mask = None
    if variant == "causal":
        kw["is_causal"] = True
    elif variant == "mask":
        mask = _mask("bool_full", rng, dt)
    f0, b0 = _calls()
    out, g = _run(args, mask, **kw)
    assert _calls() == (f0 + 1, b0 + 1), f"cuDNN did not run: {_failures()}"
    assert tuple(args[1].grad.shape) == (B, hk, S, D)
    ref, grads = _torch_ref(args, mask, g=g, **kw)
    _close(_np(out), ref, TOL[dtype], "out")
    for name, a, r in zip("qkv", args, grads):
        _close(_np(a.grad), r, TOL[dtype], f"d{name}")


def test_sdpa_gqa_bshd_views_with_mask():
    """The fused-projection layout: q, k, v are (B, T, heads, D) views of one buffer."""
    rng = np.random.default_rng(12)
    hk, t = 2, 96
    qkv = ember.tensor(rng.standard_normal((B, t, (H + 2 * hk) * D)), dtype=ember.bfloat16,
                       device="cuda", requires_grad=True)
    q, k, v = qkv.split([H * D, hk * D, hk * D], dim=2)
    q = q.view(B, t, H, D).transpose(1, 2)
    k = k.view(B, t, hk, D).transpose(1, 2)
    v = v.view(B, t, hk, D).transpose(1, 2)
    mask = ember.tensor(np.tril(np.ones((t, t), bool)) | (rng.random((t, t)) > 0.7),
                        device="cuda")
    f0, _ = _calls()
    out, g = _run([q, k, v], mask, enable_gqa=True)
    assert _calls()[0] == f0 + 1, _failures()
    torch = pytest.importorskip("torch")
    tq = torch.tensor(_np(qkv), dtype=torch.float32, requires_grad=True)
    a, b_, c = tq.split([H * D, hk * D, hk * D], dim=2)
    to = torch.nn.functional.scaled_dot_product_attention(
        a.view(B, t, H, D).transpose(1, 2), b_.view(B, t, hk, D).transpose(1, 2),
        c.view(B, t, hk, D).transpose(1, 2), attn_mask=torch.tensor(_np(mask) > 0),
        enable_gqa=True)
    to.backward(torch.tensor(g, dtype=torch.float32))
    _close(_np(out), to.detach().numpy(), TOL["bfloat16"], "out")
    _close(_np(qkv.grad), tq.grad.numpy(), TOL["bfloat16"], "dqkv")


# ---------------------------------------------------------------------- dropout
def _offset() -> int:
    return ember.random._cuda_generators[0]._rng().offset


def test_sdpa_dropout_mask_structure_and_rate():
    """q = k = 0 makes every weight 1/S and v = I makes the output the weights themselves:
    out * S * (1 - p) is cuDNN's 0/1 keep mask, read straight off the forward."""
    p, n = 0.3, 64
    q = ember.zeros(B, H, n, n, dtype=ember.bfloat16, device="cuda", requires_grad=True)
    k = ember.zeros(B, H, n, n, dtype=ember.bfloat16, device="cuda")
    v = ember.tensor(np.broadcast_to(np.eye(n), (B, H, n, n)).copy(), dtype=ember.bfloat16,
                     device="cuda")
    f0, _ = _calls()
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
    assert _calls()[0] == f0 + 1, _failures()
    m = _np(out) * n * (1 - p)
    assert np.abs(m - np.round(m)).max() < 0.05, "output is not (weights * 0/1 mask)"
    m = np.round(m)
    assert set(np.unique(m)) <= {0.0, 1.0}
    rate = 1.0 - m.mean()
    assert abs(rate - p) < 0.02, f"dropped fraction {rate:.3f}, expected {p}"
    # mean preservation: each row of the weights sums to 1 on average after the rescale
    assert abs((_np(out) * n).mean() - 1.0) < 0.03
    # independent masks per batch and head
    assert (m[0, 0] != m[0, 1]).any() and (m[0, 0] != m[1, 0]).any()
    # the replayed mask (double backward) is the forward's
    keep = out.grad_fn.keep_fn()
    np.testing.assert_allclose(np.asarray(keep.get(), np.float64) * (1 - p), m, atol=1e-6)


def test_sdpa_dropout_seeding_and_generator_stream():
    rng = np.random.default_rng(20)
    args = _qkv(rng, ember.bfloat16, grad=False)

    def f():
        return _np(F.scaled_dot_product_attention(*args, dropout_p=0.2))

    ember.manual_seed(1234)
    f()
    start = _offset()
    a = f()
    assert _offset() == start + 1  # one draw per call, as the generic path's rand
    b = f()
    assert not np.array_equal(a, b)  # successive calls differ
    ember.manual_seed(1234)
    f()
    c = f()
    np.testing.assert_array_equal(a, c)  # manual_seed reproduces
    with generic_path():
        before = _offset()
        F.scaled_dot_product_attention(*args, dropout_p=0.2)
        assert _offset() == before + 1  # the generic path consumes the stream alike


@pytest.mark.parametrize("variant", ["plain", "causal_gqa", "mask"])
def test_sdpa_dropout_matches_reference_with_replayed_mask(variant):
    """Forward and gradients equal the float64 reference run with the mask cuDNN applied
    (``ctx.keep_fn``): the backward replays the forward's mask from the saved seed."""
    p = 0.2
    rng = np.random.default_rng(30)
    hk = 2 if variant == "causal_gqa" else H
    args = _qkv(rng, ember.bfloat16, hk=hk, l=48)
    kw = {"dropout_p": p}
    mask = mask_np = None
    if variant == "causal_gqa":
        kw.update(is_causal=True, enable_gqa=True)
    elif variant == "mask":
        mask_np = rng.random((B, 1, 48, S)) > 0.3
        mask_np[..., 0] = True
        mask = ember.tensor(mask_np, device="cuda")
    f0, b0 = _calls()
    out = F.scaled_dot_product_attention(*args, attn_mask=mask, **kw)
    keep = np.asarray(out.grad_fn.keep_fn().get(), np.float64)
    g = rng.standard_normal(tuple(out.shape))
    out.backward(ember.tensor(g, dtype=out.dtype, device="cuda"))
    assert _calls() == (f0 + 1, b0 + 1), _failures()
    visible = np.ones(keep.shape, bool)
    if variant == "causal_gqa":
        visible &= np.tril(np.ones(keep.shape[-2:], bool))
    elif variant == "mask":
        visible &= mask_np
    frac = (keep[visible] == 0).mean()  # hidden scores may have no mask entry
    assert abs(frac - p) < 0.03, f"dropped fraction {frac:.3f}, expected {p}"
    ref, grads = _np_ref(*(_np(a) for a in args), mask=mask_np,
                         causal=variant == "causal_gqa", keep=keep, g=g)
    _close(_np(out), ref, TOL["bfloat16"], "out")
    for name, a, r in zip("qkv", args, grads):
        _close(_np(a.grad), r, TOL["bfloat16"], f"d{name}")


def test_sdpa_dropout_double_backward_uses_the_same_mask():
    """create_graph=True runs the generic decomposition with the replayed mask: its first
    derivatives equal the fused backward's, and they can be differentiated again. (float16:
    the decomposition's batched bfloat16 matmul is not available on CuPy.)"""
    rng = np.random.default_rng(40)
    args = _qkv(rng, ember.float16, hk=2)
    out = F.scaled_dot_product_attention(*args, dropout_p=0.25, is_causal=True,
                                         enable_gqa=True)
    g = ember.tensor(rng.standard_normal(tuple(out.shape)), dtype=ember.float16, device="cuda")
    b0 = _calls()[1]
    fused = ember.autograd.grad(out, args, g, retain_graph=True)
    assert _calls()[1] == b0 + 1
    generic = ember.autograd.grad(out, args, g, create_graph=True)
    assert _calls()[1] == b0 + 1  # the second one did not run the fused backward
    for name, a, r in zip("qkv", fused, generic):  # two float16 computations
        _close(_np(a), _np(r), 3e-2, f"d{name}")
    (gv,) = ember.autograd.grad(generic[0].float().pow(2).sum(), [args[2]])
    assert np.isfinite(_np(gv)).all() and np.abs(_np(gv)).max() > 0
