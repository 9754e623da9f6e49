"""Host-side (Python) cost of one eager training step of a bench.gpu workload, ember only.

    python -m bench.host_profile MLP          # cProfile of 50 steps, top functions by own time
    PROFILE_TOP=60 PROFILE_CUM=80 python -m bench.host_profile ResNet   # more rows, cumulative

Prints the wall time per step (device-synchronised once at the end, so it is the host
time when the GPU keeps up), the optimizer step alone, and cProfile's top entries.
"""
from __future__ import annotations

import cProfile
import pstats
import os
import sys
import time
from typing import Any

from bench.gpu import WORKLOADS


def main() -> None:
    import ember
    ember.cuda.is_available()
    only = sys.argv[1:] or ["MLP"]
    for name, make in WORKLOADS.items():
        if not any(s.lower() in name.lower() for s in only):
            continue
        step, _ = make(ember)
        for _ in range(5):
            step()
        ember.cuda.synchronize()
        n = 10 if "GPT-2" in name else 50
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        ember.cuda.synchronize()
        print(f"## {name}: {(time.perf_counter() - t0) / n * 1e3:.3f} ms/step (pipelined)")
        opt = step.__closure__ and [c.cell_contents for c in step.__closure__
                                    if hasattr(c.cell_contents, "param_groups")]
        if opt:
            o = opt[0]
            t0 = time.perf_counter()
            for _ in range(n):
                o.step()
            ember.cuda.synchronize()
            print(f"   optimizer step alone: {(time.perf_counter() - t0) / n * 1e3:.3f} ms")
        profile_steps(step, n, ember.cuda.synchronize, int(os.environ.get("PROFILE_TOP", "30")),
                      int(os.environ.get("PROFILE_CUM", "0")))


def profile_steps(step: Any, n: int, sync: Any, top: int, cum: int = 0) -> None:
    """cProfile of ``n`` calls of ``step`` (synchronised at the end): the ``top`` entries
    by own time, and the ``cum`` first by cumulative time when ``cum``."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        step()
    sync()
    prof.disable()
    st = pstats.Stats(prof)
    st.sort_stats("tottime").print_stats(top)
    if cum:
        st.sort_stats("cumulative").print_stats(cum)


if __name__ == "__main__":
    main()
