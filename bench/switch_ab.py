"""One of ember's runtime switches off and on, alternating inside one process (GPU).

    python -m bench.switch_ab relu ResNet-B4 ResNet      # EMBER_FUSE_RELU's switch
    python -m bench.switch_ab linact MLP                 # Sequential's Linear+activation

The device host's speed differs between processes by up to ~1.7x (bench/RESULTS.md), so an
A/B of two settings in two processes measures the host as much as the change. Here both
settings run in one process: rounds of a few synchronised steps with the switch off, then
on (the order flips every round), and the medians per setting and of the per-round ratios
are printed. Workloads: ``ResNet`` (bench.gpu's ResNet-50 B128 bf16 channels-last SGD),
``ResNet-B4`` (the same at batch 4: the host's own time), ``GPT-2``, ``GPT-2-B1``, ``MLP``.
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Any


def _switch(name: str) -> list:
    if name == "relu":
        from ember.nn.modules import fused
        return fused.FUSE_RELU
    if name == "linact":
        from ember.nn.modules import container
        return container.FUSE_LINEAR_ACT
    raise SystemExit(f"unknown switch {name!r} (relu, linact)")


def _steps(m: Any, name: str) -> Any:
    from bench.gpu import gpt2, mlp, resnet50
    return {"ResNet": lambda: resnet50(m)[0], "ResNet-B4": lambda: resnet50(m, B=4)[0],
            "GPT-2": lambda: gpt2(m)[0], "GPT-2-B1": lambda: gpt2(m, B=1)[0],
            "MLP": lambda: mlp(m)[0]}[name]()


def main() -> None:
    import ember
    flag = _switch(sys.argv[1])
    rounds = 8
    for name in sys.argv[2:] or ["ResNet-B4"]:
        step = _steps(ember, name)
        for v in (False, True):       # warm both paths (kernels compiled, plans cached)
            flag[0] = v
            for _ in range(3):
                step()
        ember.cuda.synchronize()
        per = 5 if name.startswith(("ResNet", "GPT")) else 50
        times: dict = {False: [], True: []}
        ratios = []
        for r in range(rounds):
            got = {}
            for v in ((False, True) if r % 2 == 0 else (True, False)):
                flag[0] = v
                step()
                ember.cuda.synchronize()
                ts = []
                for _ in range(per):
                    t0 = time.perf_counter()
                    step()
                    ember.cuda.synchronize()
                    ts.append(time.perf_counter() - t0)
                got[v] = statistics.median(ts) * 1e3
                times[v].append(got[v])
            ratios.append(got[True] / got[False])
        flag[0] = True
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:10s} {sys.argv[1]} off {off:8.3f} ms  on {on:8.3f} ms  on/off "
              f"{statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})",
              flush=True)
        del step


if __name__ == "__main__":
    main()
