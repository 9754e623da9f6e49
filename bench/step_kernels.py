"""GPU time of the GPT-2 step's own kernels: layer_norm (16384 x 768) and AdamW (124M params).

    python -m bench.step_kernels

Times with CUDA events around 30 back-to-back calls (the GPU is the bottleneck at these
sizes, so this is device time, not host time):
- layer_norm forward and backward (dx, dweight, dbias) through ember's register kernels
  (``_norm_rows``) and the generic row kernels of ``kernels_norm``, float32 and bfloat16,
  against torch's ``layer_norm`` forward and its backward (fwd+bwd minus fwd);
- one AdamW step over GPT-2 124M's parameter shapes: ember's multi-tensor kernel against
  torch's foreach (the default) and fused implementations.
"""
from __future__ import annotations

from typing import Any, Callable

ROWS, COLS = 16384, 768


def _gpt2_shapes() -> list:
    d, v, t = 768, 50304, 1024
    out = [(v, d), (t, d)]
    for _ in range(12):
        out += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d),
                (4 * d,), (d, 4 * d), (d,)]
    return out + [(d,), (d,)]


def _time(cp: Any, fn: Callable[[], Any], n: int = 30) -> float:
    for _ in range(3):
        fn()
    a, b = cp.cuda.Event(), cp.cuda.Event()
    a.record()
    for _ in range(n):
        fn()
    b.record()
    b.synchronize()
    return cp.cuda.get_elapsed_time(a, b) / n * 1e3


def main() -> None:
    import cupy as cp
    import ml_dtypes
    import numpy as np

    import ember
    from ember.backend.cuda_ops import _norm_rows
    from ember.backend.cuda_ops import _nvrtc as K
    ember.cuda.is_available()
    rows, cols = ROWS, COLS
    res: dict = {}
    for name, dt in (("float32", np.float32), ("bfloat16", ml_dtypes.bfloat16)):
        x = cp.random.standard_normal((rows, cols), dtype=np.float32).astype(dt)
        g = cp.random.standard_normal((rows, cols), dtype=np.float32).astype(dt)
        w = cp.random.standard_normal(cols, dtype=np.float32).astype(dt)
        b = cp.random.standard_normal(cols, dtype=np.float32).astype(dt)
        y, dx = cp.empty_like(x), cp.empty_like(x)
        mean, rstd = cp.empty(rows, cp.float32), cp.empty(rows, cp.float32)
        nv = _norm_rows.vectors(x, cols, y, w, b)
        ct = K.ctype(x)
        grid, block = K.row_config(rows, cols)

        def reg_fwd() -> None:
            _norm_rows.forward(cp, nv, x, w, b, y, mean, rstd, rows, cols, 1e-5, True)

        def reg_bwd() -> None:
            pw, pb = _norm_rows.backward(cp, nv, g, x, w, mean, rstd, dx, rows, cols, True,
                                         True)
            _norm_rows.colsum(cp, nv, pw, w.dtype)
            _norm_rows.colsum(cp, nv, pb, w.dtype)

        def old_fwd() -> None:
            K.function("norm", "ln_fwd", ct)(
                grid, block, (x, w, b, y, mean, rstd, K.i64(rows), K.i32(cols), K.f32(1e-5),
                              K.i32(1), K.i32(1), K.i32(1), K.aligned(x, y)))

        def old_bwd() -> None:
            K.function("norm", "ln_bwd_dx", ct)(
                grid, block, (g, x, w, mean, rstd, dx, K.i64(rows), K.i32(cols), K.i32(1),
                              K.i32(1), K.aligned(g, x, dx)))
            chunks = 256
            chunk = rows // chunks
            pw = cp.empty((chunks, cols), cp.float32)
            pb = cp.empty((chunks, cols), cp.float32)
            K.function("norm", "ln_bwd_wb", ct)(
                ((cols + 31) // 32, chunks, 1), (32, 8, 1),
                (g, x, mean, rstd, pw, pb, K.i64(rows), K.i32(cols), K.i64(chunk), K.i32(1)))
            pw.sum(axis=0).astype(w.dtype)
            pb.sum(axis=0).astype(w.dtype)

        res[name] = {"reg fwd": _time(cp, reg_fwd), "reg bwd": _time(cp, reg_bwd),
                     "old fwd": _time(cp, old_fwd), "old bwd": _time(cp, old_bwd)}

    # AdamW over GPT-2's shapes, ember
    shapes = _gpt2_shapes()
    ps = [ember.randn(*s, device="cuda", requires_grad=True) for s in shapes]
    for p in ps:
        p.grad = ember.randn(*p.shape, device="cuda") * 1e-3
    opt = ember.optim.AdamW(ps, lr=3e-4, weight_decay=0.1)
    res["adamw 124M ember"] = _time(cp, opt.step, 10)
    del ps, opt
    cp.get_default_memory_pool().free_all_blocks()

    import torch
    F = torch.nn.functional

    def t_time(fn: Callable[[], Any], n: int = 30) -> float:
        for _ in range(3):
            fn()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(n):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / n * 1e3

    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        x = torch.randn(rows, cols, device="cuda", dtype=dt, requires_grad=True)
        w = torch.randn(cols, device="cuda", dtype=dt, requires_grad=True)
        b = torch.randn(cols, device="cuda", dtype=dt, requires_grad=True)
        g = torch.randn(rows, cols, device="cuda", dtype=dt)
        with torch.no_grad():
            fwd = t_time(lambda: F.layer_norm(x, (cols,), w, b))

        def fb() -> None:
            torch.autograd.grad(F.layer_norm(x, (cols,), w, b), (x, w, b), g)
        res[name]["torch fwd"] = fwd
        res[name]["torch bwd"] = t_time(fb) - fwd
    for kind in ("foreach", "fused"):
        ps = [torch.randn(*s, device="cuda", requires_grad=True) for s in shapes]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        opt = torch.optim.AdamW(ps, lr=3e-4, weight_decay=0.1, **{kind: True})
        res[f"adamw 124M torch {kind}"] = t_time(opt.step, 10)
        del ps, opt
        torch.cuda.empty_cache()
    print(f"device: {torch.cuda.get_device_name(0)}; microseconds of GPU time per call")
    for k, v in res.items():
        if isinstance(v, dict):
            print(f"layer_norm {ROWS}x{COLS} {k}: " + ", ".join(f"{a} {t:.1f}"
                                                           for a, t in v.items()))
        else:
            print(f"{k}: {v:.1f}")


if __name__ == "__main__":
    main()
