"""Host and GPU time of an eager ResNet-50 step by phase, and host time per module type.

    python -m bench.gpu_phases          # batch 128
    python -m bench.gpu_phases 4        # another batch

CUDA events recorded at the phase boundaries (forward with the loss, backward, optimizer)
give each phase's span on the GPU's timeline; ``perf_counter`` gives the host's. A phase whose
GPU span equals its host time is host-bound (the GPU waits for launches); one whose GPU span
is longer is GPU-bound. Leaf modules' forward calls (convolution, batch norm, pooling, the
classifier, the fused add + ReLU) are timed on the host too. 20 synchronised steps after 5
warm-up steps; prints ms per step. ember only.
"""
from __future__ import annotations

import collections
import sys
import time
from typing import Any, Callable


def _timed(acc: dict, label: str, fn: Callable) -> Callable:
    def wrapper(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        r = fn(*a, **k)
        acc[label] += time.perf_counter() - t
        return r
    return wrapper


def main() -> None:
    import ember
    import ember.nn as nn
    import ember.vision.models.resnet as R
    F = ember.nn.functional
    acc: dict = collections.defaultdict(float)
    for cls, name, label in ((nn.Conv2d, "forward", "conv fwd"),
                             (nn.BatchNorm2d, "_forward", "bn fwd"),
                             (nn.Linear, "forward", "linear fwd"),
                             (nn.MaxPool2d, "forward", "maxpool fwd"),
                             (nn.AdaptiveAvgPool2d, "forward", "avgpool fwd")):
        setattr(cls, name, _timed(acc, label, getattr(cls, name)))
    R.add_relu = _timed(acc, "add_relu", R.add_relu)
    B = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    model = ember.vision.models.resnet50().to("cuda").to(memory_format=ember.channels_last)
    opt = ember.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = ember.randn(B, 3, 224, 224, device="cuda").to(memory_format=ember.channels_last)
    y = ember.randint(0, 1000, (B,), device="cuda")
    n = 20
    for it in range(5 + n):
        ember.cuda.synchronize()
        if it == 5:
            acc.clear()
        ev = [ember.cuda.Event(enable_timing=True) for _ in range(4)]
        t0 = time.perf_counter()
        ev[0].record()
        opt.zero_grad(set_to_none=True)
        with ember.autocast("cuda", dtype=ember.bfloat16):
            loss = F.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        ev[1].record()
        loss.backward()
        t2 = time.perf_counter()
        ev[2].record()
        opt.step()
        t3 = time.perf_counter()
        ev[3].record()
        ember.cuda.synchronize()
        t4 = time.perf_counter()
        if it >= 5:
            for k, v in (("host fwd", t1 - t0), ("host bwd", t2 - t1), ("host opt", t3 - t2),
                         ("synced step", t4 - t0)):
                acc[k] += v
            for k, (a, b) in (("gpu fwd", (0, 1)), ("gpu bwd", (1, 2)), ("gpu opt", (2, 3))):
                acc[k] += ev[a].elapsed_time(ev[b]) / 1e3
    print(f"ResNet-50 B{B} (ms/step): " +
          ", ".join(f"{k} {v / n * 1e3:.2f}" for k, v in acc.items()), flush=True)


if __name__ == "__main__":
    main()
