"""Kernel-by-kernel GPU time of one training step, ember against torch (same card).

    python -m bench.kernel_profile               # ResNet-50 B128 and GPT-2 B16 (bench.gpu)
    python -m bench.kernel_profile resnet        # workloads whose names contain a word
    python -m bench.kernel_profile resnet --top 40

CUPTI (through ``torch.profiler``, CUDA activity only) records every kernel the process
launches, whoever launched it, so the same recorder times ember's CuPy/cuDNN/NVRTC kernels
and torch's own. Each framework runs in its own process: warm-up steps, then two profiled
steps. The report groups kernels into families (convolution, GEMM, norm, pointwise,
optimizer, ...) and lists the largest kernels, in milliseconds per step. ember itself never
imports torch; only this script does, in the ember process after ember has built the model.
"""
from __future__ import annotations

import collections
import json
import re
import sys
from typing import Any

from bench.gpu import _runs

PROFILED = 2
FAMILIES = (  # first match wins; patterns on the lower-cased kernel name
    ("conv (cuDNN)", r"cudnn|conv|dgrad|wgrad|fprop|implicit_gemm|xmma|nchwtonhwc|nhwctonchw"),
    ("gemm", r"gemm|cutlass|cublas|sm90_xmma|nvjet|matmul"),
    ("attention", r"flash|fmha|sdpa|attn|attention"),
    ("batch norm", r"batch_?norm|bn_|welford"),
    ("layer norm", r"layer_?norm|ln_|rms"),
    ("softmax / loss", r"softmax|cross_entropy|nll|ce_|logsumexp"),
    ("optimizer", r"adam|sgd|multi_tensor|mt_|foreach|fused_"),
    ("reduction", r"reduce|sum|norm"),
    ("copy / cast", r"copy|cast|convert|transpose|fill|memset|memcpy"),
    ("pointwise", r"elementwise|vectorized|unrolled|relu|gelu|add|mul|where|threshold"),
)


def _family(name: str) -> str:
    low = name.lower()
    for fam, pat in FAMILIES:
        if re.search(pat, low):
            return fam
    return "other"


def _workloads(m: Any) -> dict:
    from bench.gpu import gpt2, resnet50
    return {"ResNet-50 B128 bf16 CL SGD": lambda: resnet50(m)[0],
            "GPT-2 B16 T1024 bf16 AdamW": lambda: gpt2(m)[0]}


def run_one(fw: str, only: list) -> None:
    if fw == "torch":
        import torch as mod
        mod.backends.cuda.matmul.allow_tf32 = False
    else:
        import ember as mod
    for name, make in _workloads(mod).items():
        if only and not any(s.lower() in name.lower() for s in only):
            continue
        prof = record(mod, make, PROFILED)
        kernels: collections.Counter = collections.Counter()
        calls: collections.Counter = collections.Counter()
        for ev in prof.events():
            dt = ev.device_time_total  # microseconds; a kernel event is one launch
            if "CUDA" not in str(ev.device_type) or not dt:
                continue
            kernels[ev.name] += dt / 1e3 / PROFILED  # us -> ms per step
            calls[ev.name] += 1
        print(json.dumps({name: {"kernels": dict(kernels),
                                 "calls": {k: v // PROFILED for k, v in calls.items()}}}),
              flush=True)


def _warm(mod: Any, make: Any) -> Any:
    """The step ``make()`` builds (seeded), run three times and synchronised."""
    mod.manual_seed(0)
    step = make()
    for _ in range(3):
        step()
    mod.cuda.synchronize()
    return step


def record(mod: Any, make: Any, steps: int) -> Any:
    """Build a step with ``make()`` (seeded), warm it up, and record ``steps`` synchronised
    steps' CUDA kernels through CUPTI; returns the torch profiler (its ``events()``)."""
    step = _warm(mod, make)
    import torch  # the recorder; in the ember process only for CUPTI
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        mod.cuda.synchronize()
        torch.cuda.synchronize()
    return prof


def record_each(mod: Any, make: Any, steps: int) -> list:
    """As :func:`record`, one profiler per synchronised step (so each step's kernels stand
    apart): a list of ``steps`` profilers."""
    step = _warm(mod, make)
    import torch
    from torch.profiler import ProfilerActivity, profile
    profs = []
    for _ in range(steps):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            mod.cuda.synchronize()
            torch.cuda.synchronize()
        profs.append(prof)
    return profs


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--one"]:
        run_one(args[1], args[2:])
        return
    top = 30
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i:i + 2]
    res = {fw: _runs(fw, args, "bench.kernel_profile") for fw in ("ember", "torch")}
    for name in res["ember"]:
        e = res["ember"][name]
        t = res["torch"].get(name, {"kernels": {}, "calls": {}})
        print(f"\n## {name}: kernel time per step, ms")
        fams: dict = {fw: collections.Counter() for fw in ("ember", "torch")}
        nk: dict = {fw: collections.Counter() for fw in ("ember", "torch")}
        for fw, r in (("ember", e), ("torch", t)):
            for k, v in r["kernels"].items():
                fams[fw][_family(k)] += v
                nk[fw][_family(k)] += r["calls"].get(k, 0)
        print("| family | ember ms | ember launches | torch ms | torch launches |")
        print("|---|---|---|---|---|")
        for fam in sorted(set(fams["ember"]) | set(fams["torch"]),
                          key=lambda f: -max(fams["ember"][f], fams["torch"][f])):
            print(f"| {fam} | {fams['ember'][fam]:.2f} | {nk['ember'][fam]} | "
                  f"{fams['torch'][fam]:.2f} | {nk['torch'][fam]} |")
        print(f"| total | {sum(fams['ember'].values()):.2f} | {sum(nk['ember'].values())} | "
              f"{sum(fams['torch'].values()):.2f} | {sum(nk['torch'].values())} |")
        for fw, r in (("ember", e), ("torch", t)):
            print(f"\n### {fw}: largest kernels (ms per step, launches)")
            for k, v in sorted(r["kernels"].items(), key=lambda kv: -kv[1])[:top]:
                print(f"{v:8.3f} {r['calls'].get(k, 0):5d}  [{_family(k)}] {k[:110]}")


if __name__ == "__main__":
    main()
