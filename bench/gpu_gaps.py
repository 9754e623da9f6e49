"""Where the GPU waits for the host in one eager training step (ember or torch, one card).

    python -m bench.gpu_gaps                  # GPT-2 B16 and ResNet-50 B128, ember and torch
    python -m bench.gpu_gaps GPT --top 25     # workloads whose names contain a word
    python -m bench.gpu_gaps GPT --steps 5    # idle time of 5 steps; details of the median
    GAPS_DUMP=dir python -m bench.gpu_gaps    # also write every kernel (start, duration,
                                              # name) to dir/<framework>_<workload>.json

A synchronised step's time is its kernels' time plus the time the GPU sits idle: before the
first kernel (the host has not queued anything yet) and in gaps where the host falls behind.
CUPTI (through ``torch.profiler``, as in ``bench.kernel_profile``) records every kernel with
its start and end; this script sorts them, sums the idle time between consecutive kernels,
splits it by tenth of the step (so a slow phase shows: forward, backward, optimizer), and
lists the largest gaps with the kernels on either side. ember never imports torch; only this
script does, in the ember process, after ember has built the model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from bench.kernel_profile import record_each

GAP_US = 2.0  # idle time below this between two kernels is launch latency, not host lag


def _workloads(m: Any) -> dict:
    from bench.gpu import gpt2, resnet50
    return {"GPT-2 B16 T1024 bf16 AdamW": lambda: gpt2(m)[0],
            "ResNet-50 B128 bf16 CL SGD": lambda: resnet50(m)[0]}


def run_one(fw: str, only: list, top: int, steps: int = 1) -> None:
    mod: Any
    if fw == "torch":
        import torch as mod
    else:
        import ember as mod
    for name, make in _workloads(mod).items():
        if only and not any(s.lower() in name.lower() for s in only):
            continue
        runs = []
        for prof in record_each(mod, make, steps):
            ks = sorted((ev.time_range.start, ev.time_range.end, ev.name) for ev in
                        prof.events() if "CUDA" in str(ev.device_type) and ev.device_time_total)
            if ks:
                runs.append(ks)
        if not runs:
            print(f"{fw}: no kernels recorded")
            continue
        if steps > 1:   # each step's idle total; the median step is shown in detail
            idles = [_idle(ks) for ks in runs]
            print(f"\n{fw}: idle ms per step " + " ".join(f"{i / 1e3:.2f}" for i in idles))
            runs.sort(key=_idle)
        ks = runs[len(runs) // 2]
        span = ks[-1][1] - ks[0][0]
        busy = sum(e - s for s, e, _ in ks)
        gaps = _gaps(ks)
        idle = sum(g[0] for g in gaps)
        dump = os.environ.get("GAPS_DUMP")
        if dump:   # the whole sequence, for offline reading: [start us, duration us, name]
            rows = [[round(s - ks[0][0], 1), round(e - s, 1), n] for s, e, n in ks]
            tag = "".join(c for c in name.split()[0].lower() if c.isalnum())
            with open(os.path.join(dump, f"{fw}_{tag}.json"), "w") as f:
                json.dump(rows, f)
        print(f"\n## {fw}: {name}")
        print(f"kernels {len(ks)}, first-to-last {span / 1e3:.2f} ms, kernel time "
              f"{busy / 1e3:.2f} ms, idle gaps > {GAP_US:g} us: {len(gaps)} totalling "
              f"{idle / 1e3:.2f} ms")
        tenths = [0.0] * 10
        for g, _, _, _, at in gaps:
            tenths[min(9, int(10 * at / span))] += g
        print("idle ms by tenth of the step: " + " ".join(f"{t / 1e3:.2f}" for t in tenths))
        print("largest gaps (us, kernel index, at ms, before -> after):")
        for g, i, a, b, at in sorted(gaps, reverse=True)[:top]:
            print(f"{g:8.1f} {i:5d} {at / 1e3:7.2f}  {a[:60]} -> {b[:60]}")


def _gaps(ks: list) -> list:
    """The GPU's idle gaps over ``GAP_US`` between the sorted kernels ``ks`` (start, end,
    name): (microseconds, kernel index, kernel before, kernel after, start in the step)."""
    gaps = []
    end = ks[0][1]
    for i in range(1, len(ks)):
        s, e, n = ks[i]
        if s - end > GAP_US:
            gaps.append((s - end, i, ks[i - 1][2], n, s - ks[0][0]))
        end = max(end, e)
    return gaps


def _idle(ks: list) -> float:
    """Idle microseconds between the sorted kernels ``ks``."""
    return sum(g[0] for g in _gaps(ks))


def main() -> None:
    args = sys.argv[1:]
    opts = {"--top": 20, "--steps": 1}
    for name in opts:
        if name in args:
            i = args.index(name)
            opts[name] = int(args[i + 1])
            del args[i:i + 2]
    if args[:1] == ["--one"]:
        run_one(args[1], args[2:], opts["--top"], opts["--steps"])
        return
    for fw in ("ember", "torch"):
        subprocess.run([sys.executable, "-m", "bench.gpu_gaps", "--one", fw, "--top",
                        str(opts["--top"]), "--steps", str(opts["--steps"]), *args])


if __name__ == "__main__":
    main()
