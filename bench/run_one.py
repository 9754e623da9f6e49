"""Run every workload on one framework in this process and print JSON results.

Usage: python -m bench.run_one {ember|torch} [name-substring ...]
"""
from __future__ import annotations

import json
import statistics
import sys
import time


def main() -> None:
    fw = sys.argv[1]
    wanted = sys.argv[2:]
    if fw == "torch":
        import torch as mod
        import torch.utils.data  # noqa: F401  (the workloads use torch.utils.data)
        mod.set_num_threads(2)
    else:
        import ember as mod
        import ember.utils.data  # noqa: F401
    mod.manual_seed(0)
    from bench.workloads import WORKLOADS
    results = {}
    for name, make in WORKLOADS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        try:
            made = make(mod)
        except Exception as exc:  # a workload the framework can't run yet
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        step, n = made[0], made[1]
        state = made[2] if len(made) > 2 else {}
        try:
            step()  # warm-up (and first-call caches)
            times = []
            budget = time.perf_counter() + 3.0
            while len(times) < 5 or (time.perf_counter() < budget and len(times) < 50):
                t0 = time.perf_counter()
                step()
                times.append((time.perf_counter() - t0) / n)
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        loss = state.get("loss")
        results[name] = {"median_s": statistics.median(times), "runs": len(times),
                         "loss": float(loss) if loss is not None else None}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
