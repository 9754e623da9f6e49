"""Host cost of a whole eager training step: bench.gpu's ResNet-50 and GPT-2 steps at a tiny
batch, so that the GPU finishes long before the host and the synchronised step time is the
host's own time. ember and torch, each in its own process; then ember's cProfile (tottime;
C calls count in their caller) and its kernel launches per step.

    python -m bench.host_step                # ResNet-50 B 4, GPT-2 B 1 (T 1024), MLP B 64
    python -m bench.host_step --profile      # plus ember's profile and launch counts
    python -m bench.host_step --profile mlp  # the steps whose names contain a word
    python -m bench.host_step --variants     # plus: gc disabled / frozen, peak stats on
"""
from __future__ import annotations

import collections
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.host_profile import profile_steps


def _steps(m: Any) -> dict:
    from bench.gpu import gpt2, mlp, resnet50
    steps = {"ResNet-50 B4": lambda: resnet50(m, B=4)[0],
             "GPT-2 B1": lambda: gpt2(m, B=1)[0],
             "MLP 784-512-512-10 B64 Adam": lambda: mlp(m)[0],
             "MLP 784-512-512-10 B64 Adam, graphed": lambda: mlp(m, graphed=True)[0]}
    words = [a.lower() for a in sys.argv[1:] if not a.startswith("--") and a not in
             ("ember", "torch")]
    return {k: v for k, v in steps.items() if not words or any(w in k.lower() for w in words)}


def _time(m: Any, step: Any) -> float:
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        step()
        m.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run(fw: str, profile: bool) -> None:
    if fw == "torch":
        import torch as m
    else:
        import ember as m
        m.cuda.is_available()
    for name, make in _steps(m).items():
        step = make()
        for _ in range(3):
            step()
        m.cuda.synchronize()
        ms = _time(m, step)
        print(f"{fw:5s} {ms:8.2f} ms  {name}", flush=True)
        if "--variants" in sys.argv:
            # what the interpreter's cyclic garbage collector and the peak-memory hook
            # (installed by reset_peak_memory_stats) add to the step
            import gc
            gc.disable()
            print(f"{fw:5s} {_time(m, step):8.2f} ms  {name}, gc disabled", flush=True)
            gc.enable()
            gc.collect()
            gc.freeze()
            print(f"{fw:5s} {_time(m, step):8.2f} ms  {name}, gc.freeze() after warmup",
                  flush=True)
            gc.unfreeze()
            m.cuda.reset_peak_memory_stats()
            print(f"{fw:5s} {_time(m, step):8.2f} ms  {name}, peak-memory statistics on",
                  flush=True)
        if not profile:
            continue
        from ember.backend.cuda_ops import _nvrtc
        counts: collections.Counter = collections.Counter()
        orig = _nvrtc._Launcher.__call__

        def counting(self: Any, grid: tuple, block: tuple, args: tuple,
                     shared_mem: int = 0) -> None:
            counts[self.fn.__name__ if hasattr(self.fn, "__name__") else "kernel"] += 1
            return orig(self, grid, block, args, shared_mem)
        _nvrtc._Launcher.__call__ = counting
        step()
        m.cuda.synchronize()
        _nvrtc._Launcher.__call__ = orig
        raw = [k for k, f in _nvrtc._FUNCS.items() if f.raw]
        print(f"  NVRTC launches per step: {sum(counts.values())}; kernels launched with raw "
              f"pointers (CuPy refused an array dtype): {len(raw)} of {len(_nvrtc._FUNCS)}")
        reps = max(3, int(300 / ms))  # ~0.3 s of steps
        print(f"  profile of {reps} steps")
        profile_steps(step, reps, m.cuda.synchronize, 35, 30)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        run(sys.argv[2], "--profile" in sys.argv)
        return
    prof = "--profile" in sys.argv
    var = ["--variants"] if "--variants" in sys.argv else []
    words = [a for a in sys.argv[1:] if not a.startswith("--")]
    for fw in ("ember", "torch"):
        subprocess.run([sys.executable, "-m", "bench.host_step", "--one", fw] + var + words +
                       (["--profile"] if prof and fw == "ember" else []))


if __name__ == "__main__":
    main()
