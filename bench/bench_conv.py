"""conv2d forward+backward: ember vs torch on the CPU, at LeNet and ResNet-ish shapes, and a
whole LeNet-5 Adam training step (batch 64, 28x28).

Prints the best-of-N time of each framework and the ember/torch ratio (lower is better); the
minimum is used because the CPU may be shared and noise only adds. Both frameworks use the
same thread count: set ``OPENBLAS_NUM_THREADS`` (torch follows it); on a loaded machine
multi-threaded OpenBLAS can be 10-100x slower than one thread, so compare like with like.
Run: ``OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_conv.py``. Not a test.
"""
from __future__ import annotations

import os
import time

import numpy as np

import ember

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

# (name, input shape, weight shape, stride, padding, input requires grad)
CASES = [
    ("lenet conv1 64x1x28x28 k5 p2", (64, 1, 28, 28), (6, 1, 5, 5), 1, 2, False),
    ("lenet conv2 64x6x14x14 k5", (64, 6, 14, 14), (16, 6, 5, 5), 1, 0, True),
    ("resnet 3x3 16x64x32x32", (16, 64, 32, 32), (64, 64, 3, 3), 1, 1, True),
    ("resnet 3x3 s2 16x64x32x32", (16, 64, 32, 32), (128, 64, 3, 3), 2, 1, True),
    ("resnet 1x1 16x128x16x16", (16, 128, 16, 16), (256, 128, 1, 1), 1, 0, True),
    ("resnet stem 8x3x64x64 k7 s2", (8, 3, 64, 64), (64, 3, 7, 7), 2, 3, False),
]


def _time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.min(times))  # min: the CPU is shared, noise only adds


def _step(m, x, w, b, stride, padding):
    def run():
        for t in (x, w, b):
            t.grad = None
        y = m.nn.functional.conv2d(x, w, b, stride=stride, padding=padding)
        y.sum().backward()
    return run


def _lenet(m):
    nn = m.nn
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def _lenet_step(m, xa, ya):
    net = _lenet(m)
    opt = m.optim.Adam(net.parameters(), lr=1e-3)
    x, y = m.tensor(xa), m.tensor(ya)

    def run():
        opt.zero_grad()
        loss = m.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return run


def main(reps: int = 20) -> None:
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", os.cpu_count() or 1))
    if torch is not None:
        torch.set_num_threads(threads)
    print(f"threads: {threads}")
    rng = np.random.default_rng(0)
    print(f"{'case':34s} {'ember ms':>9s} {'torch ms':>9s} {'ratio':>6s}")
    for name, xs, ws, stride, padding, xgrad in CASES:
        xa = rng.standard_normal(xs).astype(np.float32)
        wa = rng.standard_normal(ws).astype(np.float32) * 0.1
        ba = rng.standard_normal(ws[0]).astype(np.float32)
        ex = ember.tensor(xa, requires_grad=xgrad)
        ew, eb = ember.tensor(wa, requires_grad=True), ember.tensor(ba, requires_grad=True)
        te = _time(_step(ember, ex, ew, eb, stride, padding), reps)
        if torch is None:
            print(f"{name:34s} {te * 1e3:9.2f}")
            continue
        tx = torch.tensor(xa, requires_grad=xgrad)
        tw, tb = torch.tensor(wa, requires_grad=True), torch.tensor(ba, requires_grad=True)
        tt = _time(_step(torch, tx, tw, tb, stride, padding), reps)
        print(f"{name:34s} {te * 1e3:9.2f} {tt * 1e3:9.2f} {te / tt:6.2f}")
    xa = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    ya = rng.integers(0, 10, 64)
    te = _time(_lenet_step(ember, xa, ya), reps)
    name = "LeNet-5 Adam step, batch 64"
    if torch is None:
        print(f"{name:34s} {te * 1e3:9.2f}")
        return
    tt = _time(_lenet_step(torch, xa, ya), reps)
    print(f"{name:34s} {te * 1e3:9.2f} {tt * 1e3:9.2f} {te / tt:6.2f}")


if __name__ == "__main__":
    main()
