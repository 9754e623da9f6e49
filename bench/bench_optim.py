"""Benchmark: one optimizer step over an MLP's parameters (784-256-256-10), ember vs torch.

Prints the time per step of each and the ember/torch ratio (lower is better). Not a test.
Usage: python bench/bench_optim.py [--steps N] [--optim Adam,AdamW,SGD] [--dtype float32]
       [--device cuda]   (CuPy vs torch CUDA; torch picks its foreach kernels there)
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _params(lib, dtype_name: str, device: str = "cpu") -> list:
    rng = np.random.default_rng(0)
    shapes = [(256, 784), (256,), (256, 256), (256,), (10, 256), (10,)]
    dtype = getattr(lib, dtype_name)
    params = []
    for s in shapes:
        p = lib.tensor(rng.standard_normal(s).astype(dtype_name), dtype=dtype, device=device,
                       requires_grad=True)
        p.grad = lib.tensor(rng.standard_normal(s).astype(dtype_name), dtype=dtype,
                            device=device)
        params.append(p)
    return params


def _time_pair(opt_a, opt_b, steps: int, syncs: tuple, reps: int = 7) -> tuple:
    """Best time per step of each optimizer; runs are interleaved so that load on a shared
    machine hits both alike. ``syncs`` wait for each framework's GPU work (or do nothing)."""
    for opt, sync in zip((opt_a, opt_b), syncs):
        for _ in range(5):  # warm-up: lazy state initialization, kernel compilation
            opt.step()
        sync()
    best = [float("inf"), float("inf")]
    for _ in range(reps):
        for i, (opt, sync) in enumerate(zip((opt_a, opt_b), syncs)):
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            sync()
            best[i] = min(best[i], (time.perf_counter() - t0) / steps)
    return best[0], best[1]


CONFIGS = {
    "Adam": dict(lr=1e-3),
    "AdamW": dict(lr=1e-3, weight_decay=1e-2),
    "SGD": dict(lr=1e-2, momentum=0.9),
    "RMSprop": dict(lr=1e-3),
    "Adagrad": dict(lr=1e-2),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--optim", default="Adam")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch
    import ember
    import ember.optim  # noqa: F401

    if args.device == "cpu":
        # numpy's elementwise ops are single-threaded: compare like for like
        torch.set_num_threads(1)
        syncs = (lambda: None, lambda: None)
        where = "1 thread"
    else:
        syncs = (ember.cuda.synchronize, torch.cuda.synchronize)
        where = args.device
    print(f"{'optimizer':10s} {'ember ms':>9s} {'torch ms':>9s} {'ratio':>6s}  "
          f"(torch {torch.__version__}, {args.dtype}, {where}, 784-256-256-10 MLP)")
    for name in args.optim.split(","):
        kw = CONFIGS.get(name, dict(lr=1e-3))
        t_ember, t_torch = _time_pair(
            getattr(ember.optim, name)(_params(ember, args.dtype, args.device), **kw),
            getattr(torch.optim, name)(_params(torch, args.dtype, args.device), **kw),
            args.steps, syncs)
        print(f"{name:10s} {t_ember * 1e3:9.3f} {t_torch * 1e3:9.3f} {t_ember / t_torch:6.2f}")


if __name__ == "__main__":
    main()
