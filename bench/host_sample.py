"""Sampling profile of the host (Python) time of a bench.gpu workload's eager step.

    python -m bench.host_sample ResNet [seconds] [--batch B] [--lines]

``--batch`` shrinks the batch (ResNet-50, GPT workloads) so that the GPU never holds the host
back: a full launch queue would make a launch call wait and take the blame. ``--lines``
keys the self shares by source line instead of function.

A thread samples the main thread's stack every ~0.5 ms while steps run back to back (the
GPU trails; nothing synchronises inside a step). Unlike cProfile, whose per-call cost
inflates small Python functions several times over, the shares are of real time. Prints
the self share per source line's function and the inclusive share per function.
"""
from __future__ import annotations

import collections
import sys
import threading
import time

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
    main_id = threading.get_ident()
    self_c: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    n = [0]
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            time.sleep(0.0005)
            f = sys._current_frames().get(main_id)
            if f is None:
                continue
            n[0] += 1
            co = f.f_code
            where = f.f_lineno if lines else co.co_name
            self_c[f"{co.co_filename.split('/site-packages/')[-1].replace('/work/main/', '')}"
                   f":{where}"] += 1
            seen = set()
            while f is not None:
                co = f.f_code
                key = f"{co.co_filename.split('/site-packages/')[-1].replace('/work/main/', '')}" \
                      f":{co.co_name}"
                if key not in seen:
                    seen.add(key)
                    incl[key] += 1
                f = f.f_back

    sys.setswitchinterval(0.0002)
    th = threading.Thread(target=sampler, daemon=True)
    steps = 0
    th.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < secs:
        step()
        steps += 1
        ember.cuda.synchronize()   # keep the queue short: host time only
    stop.set()
    th.join()
    el = time.perf_counter() - t0
    print(f"## {name}: {steps} steps, {el / steps * 1e3:.1f} ms/step (synchronised), "
          f"{n[0]} samples")
    print("-- self (innermost Python frame; C calls count in their caller)")
    for k, v in self_c.most_common(80 if lines else 45):
        print(f"{100 * v / n[0]:6.2f}%  {k}")
    print("-- inclusive")
    for k, v in incl.most_common(70):
        print(f"{100 * v / n[0]:6.2f}%  {k}")


if __name__ == "__main__":
    main()
