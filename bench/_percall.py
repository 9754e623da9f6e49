"""The per-call timing loop shared by ``bench.host_ops_cpu`` and ``bench.gpu_host_ops``."""
from __future__ import annotations

import cProfile
import pstats
from typing import Any, Callable


def report(fw: str, cases: dict, *, clock: Callable[[], float], sync: Callable[[], Any],
           n: int, warmup: int, repeats: int, profile: bool,
           only: str | None = None) -> None:
    """Print the best of ``repeats`` mean times over ``n`` calls of each case (after
    ``warmup`` calls; ``sync`` after each batch), and with ``profile`` ember's cProfile."""
    for name, fn in cases.items():
        if only and only not in name:
            continue
        for _ in range(warmup):
            fn()
        sync()
        best = float("inf")
        for _ in range(repeats):
            t0 = clock()
            for _ in range(n):
                fn()
            best = min(best, (clock() - t0) / n)
            sync()
        print(f"{fw:5s} {best * 1e6:8.1f} us  {name}", flush=True)
        if profile:
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(n):
                fn()
            pr.disable()
            sync()
            pstats.Stats(pr).sort_stats("tottime").print_stats(22)
