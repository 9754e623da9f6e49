"""Micro-benchmark of ember's fused CUDA kernels: generic CuPy vs fused vs torch, per op.

    python -m bench.gpu_kernels            # on a machine with an NVIDIA GPU, CuPy and torch
    python -m bench.gpu_kernels --quick    # bf16 only, smaller
    python -m bench.gpu_kernels norm       # only the ops whose names contain "norm"

For each case: milliseconds per call (median of 5 timed batches, the device synchronised
around each batch, so host overhead counts) of the forward alone (no autograd) and of
forward + backward, for ember's generic CuPy code (``cuda_ops.uninstall()``), the fused
kernels, and torch on the same device. ember itself never imports torch; only this script
does, after ember has built its inputs. "f+b" adds ``y.float().mean().backward()`` (or
``loss.backward()``), so ember's autograd overhead is in those columns.

Measured on one H100 80GB HBM3 (CuPy 14.2, torch on the same card), ms per call:

    op                      dtype     gen fwd fused fwd torch fwd  gen f+b fused f+b torch f+b
    softmax 16384x1024      float32     0.349     0.075     0.050    0.762     0.403     0.272
    log_softmax             float32     0.351     0.075     0.049    0.766     0.383     0.202
    layer_norm 16384x768    float32     0.397     0.101     0.052    1.931     0.750     0.255
    rms_norm 16384x768      float32     0.234     0.087     0.039    1.215     0.661     0.222
    cross_entropy 8192x50257 float32    5.511     0.826     2.086   11.578     2.099     4.886
    embedding 50257x768     float32     0.153     0.153     0.037    0.469     0.454     0.493
    dropout 16384x3072      float32     1.709     0.137     0.180    2.277     0.602     0.539
    batch_norm 64x64x56x56  float32     8.719     0.087     0.125   10.210     0.493     0.507
    gelu 16384x3072         float32     1.204     0.137     0.138    4.185     0.667     0.545
    gelu tanh               float32     2.171     0.137     0.137    7.074     0.664     0.546
    silu                    float32     0.482     0.137     0.138    2.254     0.664     0.546
    softmax                 bfloat16    0.513     0.041     0.037    1.072     0.378     0.297
    log_softmax             bfloat16    0.516     0.050     0.035    1.082     0.364     0.265
    layer_norm              bfloat16    0.528     0.078     0.038    2.383     0.886     0.290
    rms_norm                bfloat16    0.360     0.048     0.025    1.654     0.483     0.256
    cross_entropy           bfloat16    7.404     0.683     0.738   15.193     1.611     2.112
    embedding               bfloat16    0.146     0.144     0.020    (fails)   0.716     0.512
    dropout                 bfloat16    2.186     0.097     0.105    3.235     1.002     0.657
    batch_norm              bfloat16    8.854     0.082     0.203   10.669     0.521     0.759
    gelu                    bfloat16    1.684     0.094     0.074    7.299     1.023     0.643
    gelu tanh               bfloat16    2.650     0.085     0.070   10.905     1.003     0.636
    silu                    bfloat16    0.963     0.079     0.070    3.452     0.995     0.637

(The generic bf16 embedding backward fails: ``cupy.add.at`` has no bfloat16.)
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable

import numpy as np


def _time(fn: Callable[[], Any], sync: Callable[[], None], budget: float = 0.15) -> float:
    """Median ms per call of ``fn`` (batches sized to about ``budget`` seconds)."""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = max(time.perf_counter() - t0, 1e-6)
    n = max(1, min(200, int(budget / one)))
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        runs.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(runs)


def _cases(quick: bool) -> list:
    """(name, dtype, arrays builder, ember fn, torch fn); fns take (lib, *tensors)."""
    def ln(lib, x, w, b):
        return lib.nn.functional.layer_norm(x, (x.shape[-1],), w, b)

    def rms(lib, x, w):
        return lib.nn.functional.rms_norm(x, (x.shape[-1],), w)

    def ce(lib, x, t):
        return lib.nn.functional.cross_entropy(x, t)

    def emb(lib, w, i):
        return lib.nn.functional.embedding(i, w)

    def drop(lib, x):
        return lib.nn.functional.dropout(x, 0.1)

    def bn(lib, x, w, b):
        return lib.nn.functional.batch_norm(x, None, None, w, b, training=True)

    def gelu(lib, x):
        return lib.nn.functional.gelu(x)

    def gelu_tanh(lib, x):
        return lib.nn.functional.gelu(x, approximate="tanh")

    def silu(lib, x):
        return lib.nn.functional.silu(x)

    rng = np.random.default_rng(0)

    def randn(*s):
        return rng.standard_normal(s).astype(np.float32)

    rows = 8192 if quick else 16384
    cases = []
    for dt in ("bfloat16",) if quick else ("float32", "bfloat16"):
        cases += [
            ("softmax", dt, lambda: [randn(rows, 1024)], lambda L, x: x.softmax(-1)),
            ("log_softmax", dt, lambda: [randn(rows, 1024)], lambda L, x: x.log_softmax(-1)),
            ("layer_norm", dt, lambda: [randn(rows, 768), randn(768), randn(768)], ln),
            ("rms_norm", dt, lambda: [randn(rows, 768), randn(768)], rms),
            ("cross_entropy V=50257", dt,
             lambda: [randn(rows // 2, 50257), rng.integers(0, 50257, rows // 2)], ce),
            ("embedding 50257x768", dt,
             lambda: [randn(50257, 768), rng.integers(0, 50257, rows)], emb),
            ("dropout p=0.1", dt, lambda: [randn(rows, 3072)], drop),
            ("batch_norm 64x64x56x56", dt,
             lambda: [randn(64, 64, 56, 56), randn(64), randn(64)], bn),
            ("gelu", dt, lambda: [randn(rows, 3072)], gelu),
            ("gelu tanh", dt, lambda: [randn(rows, 3072)], gelu_tanh),
            ("silu", dt, lambda: [randn(rows, 3072)], silu),
        ]
    return cases


def main(argv: list) -> None:
    quick = "--quick" in argv
    import ember
    from ember.backend import cuda_ops
    assert ember.cuda.is_available()
    from ember.backend import get_xp
    cp = get_xp(ember.device("cuda"))

    def esync() -> None:
        cp.cuda.get_current_stream().synchronize()

    def ember_inputs(arrays: list, dt: str, grad: bool) -> list:
        out = []
        for a in arrays:
            if a.dtype.kind == "f":
                t = ember.tensor(a, device="cuda").to(getattr(ember, dt))
                out.append(t.requires_grad_(grad))
            else:
                out.append(ember.tensor(a, device="cuda"))
        return out

    def ember_step(fn: Any, ts: list, grad: bool) -> Callable[[], Any]:
        if not grad:
            def fwd() -> None:
                with ember.no_grad():
                    fn(ember, *ts)
            return fwd
        leaves = [t for t in ts if t.requires_grad]

        def fwd_bwd() -> None:
            for t in leaves:
                t.grad = None
            y = fn(ember, *ts)
            (y.sum() if y.ndim == 0 else y.float().mean()).backward()
        return fwd_bwd

    results = []
    cases = _cases(quick)
    names = [a for a in argv if not a.startswith("--")]   # substrings of op names to keep
    if names:
        cases = [c for c in cases if any(n in c[0] for n in names)]
    for name, dt, make, fn in cases:
        arrays = make()
        row = {"op": name, "dtype": dt}
        for mode, grad in (("fwd", False), ("fwd+bwd", True)):
            ts = ember_inputs(arrays, dt, grad)
            cuda_ops._installed.clear()
            cuda_ops.install()
            row[f"fused {mode}"] = _time(ember_step(fn, ts, grad), esync)
            cuda_ops.uninstall()
            try:
                row[f"generic {mode}"] = _time(ember_step(fn, ts, grad), esync)
            except Exception as exc:  # e.g. out of memory in the unfused path
                row[f"generic {mode}"] = float("nan")
                print(f"  generic {name} {dt} {mode}: {type(exc).__name__}: {exc}"[:200])
            cuda_ops._installed.clear()
            cuda_ops.install()
            del ts
        results.append((row, arrays, fn))
        cp.get_default_memory_pool().free_all_blocks()

    import torch  # only here: ember is done building its inputs
    tdev = torch.device("cuda")

    def tsync() -> None:
        torch.cuda.synchronize()

    for row, arrays, fn in results:
        tdt = getattr(torch, row["dtype"])
        for mode, grad in (("fwd", False), ("fwd+bwd", True)):
            ts = []
            for a in arrays:
                if a.dtype.kind == "f":
                    ts.append(torch.tensor(a, device=tdev).to(tdt).requires_grad_(grad))
                else:
                    ts.append(torch.tensor(a, device=tdev))
            if not grad:
                def step() -> None:
                    with torch.no_grad():
                        fn(torch, *ts)
            else:
                leaves = [t for t in ts if t.requires_grad]

                def step() -> None:
                    for t in leaves:
                        t.grad = None
                    y = fn(torch, *ts)
                    (y.sum() if y.ndim == 0 else y.float().mean()).backward()
            row[f"torch {mode}"] = _time(step, tsync)
        torch.cuda.empty_cache()

    print(f"device: {ember.cuda.get_device_name(0)}; ms per call (median), lower is better")
    head = (f"{'op':<24}{'dtype':<10}" + "".join(f"{h:>10}" for h in
            ("gen fwd", "fused fwd", "torch fwd", "gen f+b", "fused f+b", "torch f+b",
             "gen/fused")))
    print(head)
    print("-" * len(head))
    for row, _, _ in results:
        vals = [row["generic fwd"], row["fused fwd"], row["torch fwd"], row["generic fwd+bwd"],
                row["fused fwd+bwd"], row["torch fwd+bwd"]]
        ratio = row["generic fwd+bwd"] / row["fused fwd+bwd"]
        print(f"{row['op']:<24}{row['dtype']:<10}" + "".join(f"{v:>10.3f}" for v in vals)
              + f"{ratio:>9.1f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
