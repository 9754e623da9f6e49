"""Host time versus GPU time of one eager training step (ember or torch, one process).

    python -m bench.gpu_time ember ResNet GPT-2     # substrings of bench.gpu's workload names

For each workload: the synchronised step (what bench.gpu reports), the host time to enqueue
one step, and the GPU's own time for a step. The GPU time is measured with the host far
ahead: a spin kernel holds the stream for longer than the host needs to enqueue the steps,
so when it ends the GPU runs the queued work back to back; events after the spin and after
the last step bound the pure GPU time (valid when nothing in the step waits for the GPU,
which the printed 'enqueue' column confirms by staying under the spin time).
"""
from __future__ import annotations

import faulthandler
import os
import statistics
import sys
import time
from typing import Any

from bench.gpu import WORKLOADS

_SPIN = r'''
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { __nanosleep(1000); asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); }
    while (t - t0 < ns);
}'''


def _tools(fw: str) -> tuple:
    if fw == "torch":
        import torch

        def spin(ms: float) -> None:
            torch.cuda._sleep(int(ms * 1.98e6))  # ~cycles at the H100's 1.98 GHz boost
        ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
        return torch, spin, ev, torch.cuda.synchronize
    import cupy as cp

    import ember
    ember.cuda.is_available()
    k = cp.RawKernel(_SPIN, "spin")

    def spin(ms: float) -> None:
        k((1,), (1,), (cp.uint64(int(ms * 1e6)),))

    class Ev:
        def __init__(self) -> None:
            self.e = cp.cuda.Event()

        def record(self) -> None:
            self.e.record()

        def elapsed_time(self, other: Any) -> float:
            return cp.cuda.get_elapsed_time(self.e, other.e)
    return ember, spin, Ev, ember.cuda.synchronize


def _phases(mod: Any, step: Any, sync: Any, name: str) -> dict:
    """Host time of the forward (with the loss), backward and optimizer step of bench.gpu's
    ResNet-50 / GPT workloads, rebuilt from the step closure's variables; each phase is
    timed without synchronising (the GPU trails), the step is synchronised afterwards."""
    if not getattr(step, "__closure__", None):  # a graph replay: no phases to rebuild
        return {}
    cells = dict(zip(step.__code__.co_freevars, (c.cell_contents for c in step.__closure__)))
    if not {"model", "opt", "x", "y"} <= cells.keys():
        return {}
    model, opt, x, y = cells["model"], cells["opt"], cells["x"], cells["y"]
    F = mod.nn.functional
    times: dict = {"forward": [], "backward": [], "optimizer": []}
    for _ in range(7):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with mod.autocast("cuda", dtype=mod.bfloat16):
            out = model(x)
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        times["forward"].append(t1 - t0)
        times["backward"].append(t2 - t1)
        times["optimizer"].append(t3 - t2)
    sync()
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    fw, only = sys.argv[1], sys.argv[2:]
    mod, spin, Event, sync = _tools(fw)
    if fw == "torch":
        mod.backends.cuda.matmul.allow_tf32 = False
    mod.manual_seed(0)
    if fw == "ember" and os.environ.get("NO_RANGE_SYNC"):
        # embedding's index range check reads the indices back (a sync at the step's start,
        # which hides the GPU time behind it); off for this measurement only
        import ember.ops.nn_embedding as emb
        emb._check_range = lambda *a, **k: None
    for name, make in WORKLOADS.items():
        if only and not any(s.lower() in name.lower() for s in only):
            continue
        step, info = make(mod)
        for _ in range(3):
            step()
        sync()
        synced = []
        for _ in range(5):
            t0 = time.perf_counter()
            step()
            sync()
            synced.append(time.perf_counter() - t0)
        n = 1
        gpu, enq = [], []
        for _ in range(3):
            spin(800.0)
            a, b = Event(), Event()
            a.record()
            if os.environ.get("FIND_SYNC"):  # where the host waits for the spinning GPU
                faulthandler.dump_traceback_later(0.4, file=sys.stdout)
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            faulthandler.cancel_dump_traceback_later()
            enq.append((time.perf_counter() - t0) / n)
            b.record()
            sync()
            gpu.append(a.elapsed_time(b) / n)
        ph = _phases(mod, step, sync, name)
        if ph:
            print(f"{fw:5s} {name}: host per phase (GPU trailing, no sync inside): " +
                  ", ".join(f"{k} {v:.1f} ms" for k, v in ph.items()), flush=True)
        print(f"{fw:5s} {name}: synced {statistics.median(synced) * 1e3:.1f} ms, "
              f"enqueue {statistics.median(enq) * 1e3:.1f} ms/step (spin 800 ms, {n} step), "
              f"GPU {statistics.median(gpu):.1f} ms/step", flush=True)
        del step


if __name__ == "__main__":
    main()
