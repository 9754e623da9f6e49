"""Host (Python) cost of single eager calls on the CPU with tiny tensors, where compute is
negligible: what each dispatch, autograd node, Module call and autocast cast costs. Most of
it is the same on CUDA (bench.gpu_host_ops measures there). Ember against torch, each in
its own process, best of several repeats of process CPU time (the bench machine is shared:
wall time counts the other processes' slices, CPU time does not).

    python -m bench.host_ops_cpu              # us per call, ember and torch
    python -m bench.host_ops_cpu --profile    # plus ember's cProfile per case
    python -m bench.host_ops_cpu --one ember  # one framework only
"""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Callable

from bench._percall import report


def cases(m: Any) -> dict[str, Callable[[], Any]]:
    F = m.nn.functional
    a = m.randn(4, 4)
    b = m.randn(4, 4)
    ag = m.randn(4, 4, requires_grad=True)
    x = m.randn(4, 8, requires_grad=True)
    w = m.randn(8, 8, requires_grad=True)
    bias = m.randn(8, requires_grad=True)
    xi = m.randn(2, 4, 3, 3, requires_grad=True)
    wc = m.randn(4, 4, 3, 3, requires_grad=True)
    bn = m.nn.BatchNorm2d(4)
    ln = m.nn.LayerNorm(8)
    lin = m.nn.Linear(8, 8)
    xs = m.randn(4, 8)
    logits = m.randn(128, 10, requires_grad=True)  # the MLP bench's loss input
    labels = m.randint(0, 10, (128,))
    # views as a tiny GPT's attention takes them: (B, T, C) -> heads and back
    xg = m.randn(2, 6, 8, requires_grad=True)
    w1 = m.randn(8, 16, requires_grad=True)
    b1 = m.randn(16, requires_grad=True)
    w2 = m.randn(16, 4, requires_grad=True)
    xin = m.randn(32, 8)

    def add():
        return a + b

    def add_grad():
        return ag + b

    def relu():
        return F.relu(a)

    def linear_fwd_bwd():
        F.linear(x, w, bias).sum().backward()

    def linear_module():
        return lin(xs)

    def batchnorm():
        return bn(xi)

    def layernorm():
        return ln(x)

    def conv():
        return F.conv2d(xi, wc, padding=1)

    def cast_amp():
        with m.autocast("cpu", dtype=m.bfloat16):
            return F.linear(x, w, bias)

    def chain_bwd():
        y = ag * 1
        for _ in range(10):
            y = F.relu(y)
        y.sum().backward()

    def cross_entropy():
        return F.cross_entropy(logits, labels)

    def cross_entropy_bwd():
        F.cross_entropy(logits, labels).backward()

    def view():
        return xg.view(2, 6, 2, 4)

    def view_infer():
        return xg.view(2, 6, -1, 4)

    def reshape():
        return xg.reshape(12, 8)

    def transpose():
        return xg.transpose(1, 2)

    def permute():
        return xg.permute(0, 2, 1)

    def split():
        return xg.split(4, dim=2)

    def unsqueeze():
        return xg.unsqueeze(1)

    def flatten():
        return xg.flatten(1)

    def heads_bwd():
        q, k = xg.split(4, dim=2)
        q = q.view(2, 6, 2, 2).transpose(1, 2)
        k = k.reshape(2, 6, 2, 2).permute(0, 2, 3, 1)
        (q @ k).sum().backward()

    def mlp_bwd():
        h = (xin @ w1 + b1).relu()
        ((h @ w2) ** 2).mean().backward()

    return {"a + b": add, "a + b (requires_grad)": add_grad, "F.relu": relu,
            "F.linear fwd+sum+bwd": linear_fwd_bwd, "Linear module": linear_module,
            "BatchNorm2d train": batchnorm, "LayerNorm module (grad)": layernorm,
            "F.conv2d 3x3 (grad)": conv, "autocast linear (2 casts)": cast_amp,
            "12 ops fwd + backward": chain_bwd,
            "cross_entropy (128, 10) (grad)": cross_entropy,
            "cross_entropy (128, 10) fwd+bwd": cross_entropy_bwd,
            "view (grad)": view, "view -1 (grad)": view_infer, "reshape (grad)": reshape,
            "transpose (grad)": transpose, "permute (grad)": permute,
            "split 2 (grad)": split, "unsqueeze (grad)": unsqueeze, "flatten (grad)": flatten,
            "heads: split/view/transpose/permute/matmul fwd+bwd": heads_bwd,
            "MLP 2 layers fwd+bwd": mlp_bwd}


def run(fw: str, profile: bool, only: str | None = None) -> None:
    if fw == "torch":
        import torch as m
        m.set_num_threads(1)
    else:
        import ember as m
    report(fw, cases(m), clock=time.process_time, sync=lambda: None, n=500, warmup=50,
           repeats=7, profile=profile, only=only)


def main() -> None:
    args = sys.argv[1:]
    prof = "--profile" in args
    only = None
    if "--only" in args:
        only = args[args.index("--only") + 1]
    if "--one" in args:
        run(args[args.index("--one") + 1], prof, only)
        return
    for fw in ("ember", "torch"):
        cmd = [sys.executable, "-m", "bench.host_ops_cpu", "--one", fw]
        if prof and fw == "ember":
            cmd.append("--profile")
        if only:
            cmd += ["--only", only]
        subprocess.run(cmd)


if __name__ == "__main__":
    main()
