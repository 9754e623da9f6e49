"""Sampling profile of the host (Python) time of a bench.gpu workload's eager step.

    python -m bench.host_sample ResNet [seconds] [--batch B] [--lines]

``--batch`` shrinks the batch (ResNet-50, GPT workloads) so that the GPU never holds the host
back: a full launch queue would make a launch call wait and take the blame. ``--lines``
keys the self shares by source line instead of function.

A timer signal (``setitimer(ITIMER_REAL)``, every ~0.5 ms) interrupts the main thread while
steps run, and its handler records the stack it interrupted. The handler runs at the main
thread's next bytecode boundary, so a long C call (a launch, a library call) is charged to the
Python function that made it. (A sampler thread, which this tool used before, is biased: it
wins the GIL mostly when the main thread releases it, that is inside launches, and so charged
them most samples.) Unlike cProfile, whose per-call cost inflates small Python functions
several times over, the shares are of real time. Prints the self share per function (or
line) and the inclusive share per function.
"""
from __future__ import annotations

import collections
import signal
import sys
import time
from typing import Any

from bench.gpu import WORKLOADS


def main() -> None:
    import ember
    ember.cuda.is_available()
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    lines = "--lines" in sys.argv
    batch = int(sys.argv[sys.argv.index("--batch") + 1]) if "--batch" in sys.argv else 0
    if batch:
        args = [a for a in args if a != str(batch)]
    name = next(n for n in WORKLOADS if args[0].lower() in n.lower())
    secs = float(args[1]) if len(args) > 1 else 6.0
    if batch and "ResNet" in name:
        from bench.gpu import resnet50
        step, _ = resnet50(ember, B=batch)
    elif batch and "GPT" in name:
        from bench.gpu import gpt, gpt2
        step, _ = gpt2(ember, B=batch) if "GPT-2" in name else gpt(ember, "bf16" in name,
                                                                   B=batch)
    else:
        step, _ = WORKLOADS[name](ember)
    for _ in range(3):
        step()
    ember.cuda.synchronize()
    self_c: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    n = [0]

    def src(co: Any) -> str:
        return co.co_filename.split('/site-packages/')[-1].replace('/work/main/', '')

    def on_tick(signum: int, f: Any) -> None:
        if f is None:
            return
        n[0] += 1
        co = f.f_code
        self_c[f"{src(co)}:{f.f_lineno if lines else co.co_name}"] += 1
        seen = set()
        while f is not None:
            key = f"{src(f.f_code)}:{f.f_code.co_name}"
            if key not in seen:
                seen.add(key)
                incl[key] += 1
            f = f.f_back

    old = signal.signal(signal.SIGALRM, on_tick)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    steps = 0
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < secs:
            step()
            steps += 1
            ember.cuda.synchronize()   # keep the queue short: host time only
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    el = time.perf_counter() - t0
    print(f"## {name} (batch {batch or 'default'}): {steps} steps, {el / steps * 1e3:.1f} ms/step (synchronised), "
          f"{n[0]} samples")
    print("-- self (innermost Python frame; C calls count in their caller)")
    for k, v in self_c.most_common(80 if lines else 45):
        print(f"{100 * v / n[0]:6.2f}%  {k}")
    print("-- inclusive")
    for k, v in incl.most_common(70):
        print(f"{100 * v / n[0]:6.2f}%  {k}")


if __name__ == "__main__":
    main()
