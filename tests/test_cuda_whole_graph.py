"""Whole training steps captured as one CUDA graph (torch's whole-network capture recipe)
must train exactly like the same steps run eagerly (marked cuda; skipped without a GPU).

The models cover what the GPU benchmarks capture: embedding (whose index check cannot read
the indices on the host during capture), layer norm, causal attention, a tied head,
cross_entropy and AdamW under bf16 autocast; conv, batch norm (running statistics updated
in place), channels_last and SGD with momentum.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

import ember

pytestmark = pytest.mark.cuda
nn, F = ember.nn, ember.nn.functional


class _TinyGPT(nn.Module):
    def __init__(self, V: int = 64, T: int = 16, d: int = 32, H: int = 4) -> None:
        super().__init__()
        self.T, self.d, self.H = T, d, H
        self.tok, self.pos = nn.Embedding(V, d), nn.Embedding(T, d)
        self.ln1, self.ln = nn.LayerNorm(d), nn.LayerNorm(d)
        # no qkv bias: the key bias has an exactly zero gradient (softmax ignores a constant
        # added to every score of a row), so Adam would move it by rounding noise alone
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d)
        self.head = nn.Linear(d, V, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx: Any) -> Any:
        B, T, d, H = idx.shape[0], self.T, self.d, self.H
        x = self.tok(idx) + self.pos(ember.arange(T, device="cuda"))
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(B, T, H, d // H).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
        return self.head(self.ln(x))


def _gpt_case() -> tuple:
    rng = np.random.default_rng(1)
    x = ember.tensor(rng.integers(0, 64, (4, 16)), device="cuda")
    y = ember.tensor(rng.integers(0, 64, (4, 16)), device="cuda")

    def build(capturable: bool) -> tuple:
        ember.manual_seed(0)
        m = _TinyGPT().to("cuda")
        return m, ember.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1,
                                    capturable=capturable)

    def loss_of(m: Any) -> Any:
        with ember.autocast("cuda", dtype=ember.bfloat16):
            return F.cross_entropy(m(x).reshape(-1, 64), y.reshape(-1))
    return build, loss_of


def _cnn_case() -> tuple:
    rng = np.random.default_rng(2)
    x = ember.tensor(rng.standard_normal((8, 3, 12, 12)).astype(np.float32),
                     device="cuda").to(memory_format=ember.channels_last)
    y = ember.tensor(rng.integers(0, 5, 8), device="cuda")

    def build(capturable: bool) -> tuple:
        ember.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, stride=2, bias=False),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5))
        m = m.to("cuda").to(memory_format=ember.channels_last)
        return m, ember.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    def loss_of(m: Any) -> Any:
        with ember.autocast("cuda", dtype=ember.bfloat16):
            return F.cross_entropy(m(x), y)
    return build, loss_of


def _capture(body: Callable, warmup: int) -> tuple:
    """torch's capture recipe: ``warmup`` calls of ``body`` on a side stream, then one
    captured call; returns the graph and what the captured call returned."""
    side = ember.cuda.Stream()
    side.wait_stream(ember.cuda.current_stream())
    with ember.cuda.stream(side):
        for _ in range(warmup):
            body()
    ember.cuda.current_stream().wait_stream(side)
    g = ember.cuda.CUDAGraph()
    with ember.cuda.graph(g):
        out = body()   # capture records the kernels without running them
    return g, out


def _state(m: Any) -> list:
    return [t.detach().float().cpu().numpy().astype(np.float64)
            for t in list(m.parameters()) + list(m.buffers())]


@pytest.mark.parametrize("case", [_gpt_case, _cnn_case], ids=["gpt_adamw", "cnn_bn_sgd"])
def test_whole_step_graph_trains_like_eager(case: Callable) -> None:
    build, loss_of = case()
    eager, opt_e = build(True)
    start = _state(eager)
    losses = []
    for _ in range(8):
        opt_e.zero_grad(set_to_none=True)
        loss = loss_of(eager)
        loss.backward()
        opt_e.step()
        losses.append(float(loss))

    graphed, opt_g = build(True)

    def body() -> Any:
        opt_g.zero_grad(set_to_none=True)
        loss = loss_of(graphed)
        loss.backward()
        opt_g.step()
        return loss
    g, static_loss = _capture(body, 3)   # the 3 warm-up steps train too
    got = []
    for _ in range(5):
        g.replay()
        got.append(float(static_loss))
    np.testing.assert_allclose(got, losses[3:], rtol=2e-2, atol=2e-3)
    # What 8 steps changed (parameters, running statistics, batch counts) must agree. Per
    # element that is too strict: an Adam-type step moves a weight by about lr whatever its
    # gradient's size, so where bf16 rounding flips the sign of a near-zero gradient the
    # weight moves the other way (eager steps after a side-stream warm-up, no graph, differ
    # from plain eager steps so). Compared as whole tensors instead.
    for s0, e, gr in zip(start, _state(eager), _state(graphed)):
        de, dg = e - s0, gr - s0
        assert np.linalg.norm(dg - de) <= 0.05 * np.linalg.norm(de) + 1e-6, \
            (np.linalg.norm(dg - de), np.linalg.norm(de))


def test_fp32_attention_and_4d_matmuls_capture_and_replay_new_inputs() -> None:
    # float32 attention (cuDNN's SDPA takes bf16/fp16 only, so the generic path runs) and a
    # hand-written one with 4-d matmuls, forward and backward, captured once and replayed on
    # fresh inputs copied into the static ones; compared with torch in float64
    torch = pytest.importorskip("torch")
    B, H, T, D = 2, 3, 16, 8
    rng = np.random.default_rng(5)
    q, k, v, w = (ember.zeros(B, H, T, D, device="cuda", requires_grad=i < 3)
                  for i in range(4))

    def body() -> Any:
        for t in (q, k, v):
            t.grad = None
        s = (q @ k.transpose(-2, -1)) / D ** 0.5
        o1 = s.softmax(-1) @ v
        o2 = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        loss = (o1 * w).sum() + (o2 * w).sum()
        loss.backward()
        return loss

    def fill() -> list:
        arrs = [rng.standard_normal((B, H, T, D)) for _ in range(4)]
        with ember.no_grad():
            for t, a in zip((q, k, v, w), arrs):
                t.copy_(ember.tensor(a.astype(np.float32)))
        return arrs

    fill()
    g, static_loss = _capture(body, 2)
    for _ in range(2):
        arrs = fill()
        g.replay()
        tq, tk, tv, tw = (torch.tensor(a.astype(np.float32).astype(np.float64),
                                       requires_grad=i < 3) for i, a in enumerate(arrs))
        ts = (tq @ tk.transpose(-2, -1)) / D ** 0.5
        tl = ((ts.softmax(-1) @ tv) * tw).sum() + (
            torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
            * tw).sum()
        tl.backward()
        np.testing.assert_allclose(float(static_loss), tl.item(), rtol=1e-4, atol=1e-4)
        for e, t in ((q, tq), (k, tk), (v, tv)):
            np.testing.assert_allclose(e.grad.cpu().numpy(), t.grad.numpy(), rtol=1e-3,
                                       atol=1e-4)


def test_embedding_bad_index_in_a_captured_graph_gives_nan_rows_then_raises() -> None:
    # while capturing, the index check runs on the device: a replay with a bad index sets
    # that index's output rows to NaN (no device fault), and the next eager embedding call
    # raises the IndexError naming it
    rng = np.random.default_rng(3)
    w = ember.tensor(rng.standard_normal((10, 4)).astype(np.float32), device="cuda")
    idx = ember.tensor([1, 2, 3], device="cuda")
    F.embedding(idx, w)                       # eager first (creates the device's flag)
    g = ember.cuda.CUDAGraph()
    with ember.cuda.graph(g):
        out = F.embedding(idx, w)
    g.replay()
    np.testing.assert_array_equal(out.cpu().numpy(), w.cpu().numpy()[[1, 2, 3]])
    idx.copy_(ember.tensor([4, 12, 0]))
    # made before the replay: the check waits for its record only on an idle stream, and an
    # index upload queued just before the call would leave the stream busy for a moment
    zero, ten = ember.tensor([0], device="cuda"), ember.tensor([10], device="cuda")
    g.replay()
    got = out.cpu().numpy()
    np.testing.assert_array_equal(got[[0, 2]], w.cpu().numpy()[[4, 0]])
    assert np.isnan(got[1]).all()
    with pytest.raises(IndexError, match="index 12"):
        F.embedding(zero, w)
    F.embedding(zero, w)   # reported once, then clear
    ember.cuda.synchronize()   # an idle GPU: the eager call raises at once
    with pytest.raises(IndexError, match="index out of range"):
        F.embedding(ten, w)   # this call's own check


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_clip_grad_norm_multi_tensor_matches_torch_and_captures(dtype: str) -> None:
    # clip_grad_norm_ on CUDA: per-tensor sums of squares in one multi-tensor launch and one
    # scaling launch; checked against torch (float64, CPU) on sizes across the kernel's
    # 4096-element chunks, a channels-last gradient, and inside a captured graph
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    shapes = [(3, 5), (4096,), (4097,), (64, 3, 3, 3), (10000,), (1,)]
    dt = getattr(ember, dtype)
    for max_norm in (0.5, 1e6):          # clipped, and left alone (coefficient 1)
        grads = [rng.standard_normal(s) for s in shapes]
        ps = []
        for s, g in zip(shapes, grads):
            p = ember.nn.Parameter(ember.zeros(s, device="cuda", dtype=dt))
            gt = ember.tensor(g, device="cuda").to(dt)
            if len(s) == 4:
                gt = gt.to(memory_format=ember.channels_last)
            p.grad = gt
            ps.append(p)
        stored = [p.grad.detach().double().cpu().numpy() for p in ps]
        tp = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes]
        for p, a in zip(tp, stored):
            p.grad = torch.tensor(a)
        want = torch.nn.utils.clip_grad_norm_(tp, max_norm)
        total = ember.nn.utils.clip_grad_norm_(ps, max_norm)
        tol = 1e-12 if dtype == "float64" else (1e-6 if dtype == "float32" else 1e-2)
        np.testing.assert_allclose(float(total), want.item(), rtol=tol)
        for p, t in zip(ps, tp):
            np.testing.assert_allclose(p.grad.double().cpu().numpy(), t.grad.numpy(),
                                       rtol=max(tol, 1e-6) * 10, atol=1e-7)
    # captured: the graph replays the norm and the scaling on whatever the gradients hold
    g, static_total = _capture(lambda: ember.nn.utils.clip_grad_norm_(ps, 0.5), 1)
    fresh = [rng.standard_normal(s) for s in shapes]
    with ember.no_grad():
        for p, a in zip(ps, fresh):
            p.grad.copy_(ember.tensor(a).to(dt))
    stored = [p.grad.detach().double().cpu().numpy() for p in ps]
    g.replay()
    norm = np.sqrt(sum((a ** 2).sum() for a in stored))
    tol = 1e-6 if dtype != "bfloat16" else 1e-2
    np.testing.assert_allclose(float(static_total), norm, rtol=tol)
    for p, a in zip(ps, stored):
        np.testing.assert_allclose(p.grad.double().cpu().numpy(), a * min(0.5 / (norm + 1e-6), 1),
                                   rtol=10 * tol, atol=1e-6)


def test_eager_conv_after_a_captured_conv_runs_on_the_default_stream() -> None:
    # a capture borrows the device's first cuDNN handle for its own stream; later eager
    # convolutions must get the handle back on their stream (left on the capture stream, they
    # raced the default stream and crashed once that stream was destroyed with the graph)
    import gc

    from ember.backend.cuda_ops import _cudnn
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    xg, wg = ember.tensor(x, device="cuda"), ember.tensor(w, device="cuda")
    F.conv2d(xg, wg)                               # the default stream's handle first
    g = ember.cuda.CUDAGraph()
    with ember.cuda.graph(g):
        F.conv2d(xg, wg, padding=1)
    g.replay()
    del g
    gc.collect()
    got = F.conv2d(xg, wg, padding=1).cpu().numpy()
    h = _cudnn.handle(__import__("cupy"))
    assert _cudnn._BOUND[id(h)] == __import__("cupy").cuda.get_current_stream().ptr
    torch = pytest.importorskip("torch")
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), padding=1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
