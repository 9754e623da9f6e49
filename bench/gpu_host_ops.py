"""Host cost of single eager op calls on CUDA (tiny tensors, so the GPU never limits):
ember against torch in one process each, then cProfile's top entries for ember.

    python -m bench.gpu_host_ops            # us per call, ember and torch
    python -m bench.gpu_host_ops --profile  # plus ember's cProfile per case
    python -m bench.gpu_host_ops --profile "MLP:"   # only the cases whose names contain it
"""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Callable

from bench._percall import report


def cases(m: Any) -> dict[str, Callable[[], Any]]:
    F = m.nn.functional
    cl = m.channels_last
    dev = "cuda"
    x = m.randn(8, 64, 8, 8, device=dev).to(m.bfloat16).to(memory_format=cl).requires_grad_()
    w = m.randn(64, 64, 3, 3, device=dev).to(memory_format=cl).requires_grad_()
    bn = m.nn.BatchNorm2d(64).to(dev)
    lin = m.nn.Linear(256, 256).to(dev)
    xl = m.randn(64, 256, device=dev, requires_grad=True)
    h = (x * 1).detach().requires_grad_()
    gy = m.ones_like(x)

    def relu_():
        return F.relu(h * 1, inplace=True)

    def cast():
        return w.to(m.bfloat16)

    def conv():
        with m.autocast("cuda", dtype=m.bfloat16):
            return F.conv2d(x, w, padding=1)

    def batchnorm():
        return bn(x)

    def batchnorm_bwd():
        bn(x).backward(gy)

    def add_():
        a = x * 1
        a += x
        return a

    def linear_amp():
        with m.autocast("cuda", dtype=m.bfloat16):
            return lin(xl)

    def mul():
        return x * 1

    def fwd_bwd_relu_chain():
        y = x * 1
        for _ in range(10):
            y = F.relu(y)
        y.sum().backward()
    # one GPT-2 block's forward pieces at a tiny size (d 768, 12 heads, T 64), under autocast
    # as bench.gpu's GPT-2 step runs them
    d, T, H = 768, 64, 12
    ln = m.nn.LayerNorm(d).to(dev)
    qkv, proj = m.nn.Linear(d, 3 * d).to(dev), m.nn.Linear(d, d).to(dev)
    fc = m.nn.Linear(d, 4 * d).to(dev)
    xs = m.randn(1, T, d, device=dev, requires_grad=True)

    def amp(fn: Callable) -> Callable:
        def run() -> Any:
            with m.autocast("cuda", dtype=m.bfloat16):
                return fn()
        return run

    def attention():
        q, k, v = qkv(xs).split(d, dim=2)
        q, k, v = (z.view(1, T, H, d // H).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return proj(a.transpose(1, 2).reshape(1, T, d))

    def split_views():
        q, k, v = xs.split(d // 3, dim=2)
        return [z.view(1, T, 4, d // 12).transpose(1, 2) for z in (q, k, v)]

    qs = [m.randn(1, H, T, d // H, device=dev, dtype=m.bfloat16, requires_grad=True)
          for _ in range(3)]

    def sdpa():
        return F.scaled_dot_product_attention(*qs, is_causal=True)

    ys = m.randn(1, T, d, device=dev, dtype=m.bfloat16, requires_grad=True)

    def residual_add():   # a float32 residual plus a bf16 sublayer output
        return xs + ys

    def residual_mlp():
        h = xs + proj(xs)
        return F.gelu(fc(ln(h)), approximate="tanh")
    # the graphed MLP step's eager pieces (bench.gpu "MLP ..., graphed"): its loss on the
    # (64, 10) logits, that loss's backward, and Adam over the MLP's six parameters
    logits = m.randn(64, 10, device=dev, requires_grad=True)
    labels = m.randint(0, 10, (64,), device=dev)
    mlp_params = [m.randn(*s, device=dev, requires_grad=True)
                  for s in ((512, 784), (512,), (512, 512), (512,), (10, 512), (10,))]
    for p_ in mlp_params:
        p_.grad = m.randn_like(p_)
    adam = m.optim.Adam(mlp_params, lr=1e-3)

    def ce_bwd():
        F.cross_entropy(logits, labels).backward()
    mlp = {"MLP: cross_entropy (64, 10)": lambda: F.cross_entropy(logits, labels),
           "MLP: cross_entropy fwd + bwd": ce_bwd,
           "MLP: Adam step (6 params)": adam.step}
    gpt = {"GPT block: attention (qkv, split/view/transpose, sdpa, proj)": amp(attention),
           "GPT block: split + 3 view/transpose": split_views,
           "GPT block: sdpa bf16 (grad)": sdpa,
           "GPT block: layer_norm (grad)": amp(lambda: ln(xs)),
           "GPT block: residual add fp32 + bf16 (grad)": amp(residual_add),
           "GPT block: x + proj(x), ln, fc, gelu": amp(residual_mlp)}
    return mlp | gpt | {"mul (one op)": mul, "mul + relu_": relu_, "cast fp32->bf16 (leaf)": cast,
            "conv2d autocast (cast + conv)": conv, "BatchNorm2d train": batchnorm,
            "BatchNorm2d train fwd + bwd": batchnorm_bwd,
            "mul + add_": add_, "Linear autocast (2 casts + linear)": linear_amp,
            "12 ops fwd + backward": fwd_bwd_relu_chain}


def run(fw: str, profile: bool) -> None:
    if fw == "torch":
        import torch as m
    else:
        import ember as m
        m.cuda.is_available()
    words = [a for a in sys.argv[3:] if not a.startswith("--")]
    report(fw, cases(m), clock=time.perf_counter, sync=m.cuda.synchronize, n=300, warmup=20,
           repeats=3, profile=profile, only=words[0] if words else None)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        run(sys.argv[2], "--profile" in sys.argv)
        return
    prof = "--profile" in sys.argv
    words = [a for a in sys.argv[1:] if not a.startswith("--")][:1]
    for fw in ("ember", "torch"):
        subprocess.run([sys.executable, "-m", "bench.gpu_host_ops", "--one", fw] +
                       (["--profile"] if prof and fw == "ember" else []) + words)


if __name__ == "__main__":
    main()
