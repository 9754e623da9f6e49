"""scaled_dot_product_attention forward+backward on the GPU: ember on cuDNN, ember's generic
CuPy code (CUDA implementations detached) and torch, in one process, bf16.

    python -m bench.bench_sdpa_gpu

Cases: a (B, 1, 1, S) bool key-padding mask, a (1, 1, L, S) float mask, causal dropout 0.1,
causal grouped-query heads (16 query heads over 4). Median over the timed steps, with a
device synchronisation around each step.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

B, H, L, D = 4, 16, 1024, 64
CASES = ["bool_keypad", "float_mask", "causal_dropout", "causal_gqa"]


def _inputs(lib: Any, case: str) -> tuple:
    rng = np.random.default_rng(0)
    hk = 4 if case == "causal_gqa" else H
    arrs = [rng.standard_normal((B, h, L, D)).astype(np.float32) for h in (H, hk, hk)]
    t = [lib.tensor(a, device="cuda").to(lib.bfloat16).requires_grad_() for a in arrs]
    kw: dict = {}
    if case == "bool_keypad":
        m = np.ones((B, 1, 1, L), bool)
        m[:, ..., L - 100:] = False
        kw["attn_mask"] = lib.tensor(m, device="cuda")
    elif case == "float_mask":
        kw["attn_mask"] = lib.tensor(rng.standard_normal((1, 1, L, L)).astype(np.float32),
                                     device="cuda").to(lib.bfloat16)
    elif case == "causal_dropout":
        kw.update(is_causal=True, dropout_p=0.1)
    else:
        kw.update(is_causal=True, enable_gqa=True)
    g = lib.tensor(rng.standard_normal((B, H, L, D)).astype(np.float32),
                   device="cuda").to(lib.bfloat16)
    return t, kw, g


def _time(step: Callable[[], None], sync: Callable[[], None], warmup: int = 3,
          steps: int = 10) -> float:
    for _ in range(warmup):
        step()
    sync()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def _step(lib: Any, case: str) -> Callable[[], None]:
    t, kw, g = _inputs(lib, case)

    def step() -> None:
        out = lib.nn.functional.scaled_dot_product_attention(*t, **kw)
        out.backward(g)
        for x in t:
            x.grad = None
    return step


def main() -> None:
    import cupy as cp

    import ember
    from ember.ops.registry import OPS
    ember.cuda.is_available()
    op = OPS["scaled_dot_product_attention"]
    sync_e = cp.cuda.Device().synchronize
    rows = []
    try:
        import torch
    except ImportError:
        torch = None
    for case in CASES:
        fused = _time(_step(ember, case), sync_e)
        impl, op.cuda_impl = op.cuda_impl, None
        try:
            generic = _time(_step(ember, case), sync_e)
        finally:
            op.cuda_impl = impl
        ref = _time(_step(torch, case), torch.cuda.synchronize) if torch else float("nan")
        rows.append((case, fused, generic, ref))
    print(f"sdpa fwd+bwd bf16 B{B} H{H} L{L} D{D} (ms, median)")
    print(f"{'case':16s} {'ember cuDNN':>12s} {'ember generic':>14s} {'torch':>8s} "
          f"{'ember/torch':>12s}")
    for case, f, gen, r in rows:
        print(f"{case:16s} {f:12.3f} {gen:14.3f} {r:8.3f} {f / r:12.2f}")


if __name__ == "__main__":
    main()
