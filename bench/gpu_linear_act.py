"""Linear + ReLU / tanh-GELU through nn.Sequential on the GPU: ember with the pair fused
(``_linear_activation``: ReLU as the cuBLASLt epilogue) and unfused
(``EMBER_FUSE_LINEAR_ACT=0``), and torch, each in its own process, same card.

    python -m bench.gpu_linear_act

Shapes: a wide bf16 MLP (B 4096, 4096 -> 4096 -> 4096, autocast), where the activation's
extra pass over memory is a visible part of the GEMMs' time, and the MLP of bench.gpu
(B 64, 784 -> 512 -> 512 -> 10, float32), where host time rules. Forward + backward per
call, and the small MLP's forward alone under no_grad (where the tanh GELU is cuBLASLt's
GELU_BIAS epilogue too); median of timed calls after warm-up, synchronised.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Any


def _case(m: Any, act: str, wide: bool, train: bool = True) -> Any:
    nn = m.nn
    A = (lambda: nn.ReLU()) if act == "relu" else (lambda: nn.GELU(approximate="tanh"))
    if wide:
        model = nn.Sequential(nn.Linear(4096, 4096), A(), nn.Linear(4096, 4096), A(),
                              nn.Linear(4096, 4096)).cuda()
        x = m.randn(4096, 4096, device="cuda")
    else:
        model = nn.Sequential(nn.Linear(784, 512), A(), nn.Linear(512, 512), A(),
                              nn.Linear(512, 10)).cuda()
        x = m.randn(64, 784, device="cuda")

    def run() -> None:
        with m.autocast("cuda", dtype=m.bfloat16, enabled=wide):
            y = model(x)
        y.float().sum().backward()

    def infer() -> None:
        with m.no_grad():
            model(x)
    return run if train else infer


def one(fw: str, label: str) -> None:
    m: Any
    if fw == "torch":
        import torch as m
    else:
        import ember as m
    for wide, train in ((True, True), (False, True), (False, False)):
        for act in ("relu", "gelu_tanh"):
            run = _case(m, act, wide, train)
            for _ in range(5):
                run()
            m.cuda.synchronize()
            times = []
            for _ in range(30):
                t0 = time.perf_counter()
                run()
                m.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            name = ("B4096 4096x3 bf16" if wide else "B64 784-512-512-10 fp32") + f" {act}" + \
                ("" if train else ", forward under no_grad")
            print(f"{label:14s} {statistics.median(times) * 1e3:8.3f} ms  {name}", flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        one(sys.argv[2], sys.argv[3])
        return
    for fw, label, env in (("ember", "ember", {}),
                           ("ember", "ember-unfused", {"EMBER_FUSE_LINEAR_ACT": "0"}),
                           ("torch", "torch", {})):
        subprocess.run([sys.executable, "-m", "bench.gpu_linear_act", "--one", fw, label],
                       env={**os.environ, **env})


if __name__ == "__main__":
    main()
