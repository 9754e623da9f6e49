"""Host time of bench.gpu's graphed MLP step, phase by phase, ember against torch.

    python -m bench.graphed_mlp            # ember, then torch, each in its own process
    python -m bench.graphed_mlp --one ember
    python -m bench.graphed_mlp --profile     # ember's cProfile of 300 steps (tottime, cumtime)

The step is ``zero_grad``, the graphed model's forward (a graph replay), cross_entropy,
``backward`` (cross_entropy's backward and the backward graph's replay) and Adam. Each phase
is timed on the host without synchronising (the GPU trails far behind nothing: the MLP's GPU
work is ~0.1 ms), over 300 steps with a synchronisation after each step; printed are the
median microseconds of each phase, their sum, and the synchronised step (what bench.gpu
reports for "MLP ..., graphed").
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any


def _setup(m: Any) -> tuple:
    """bench.gpu's MLP (784-512-512-10, Adam, B64) made graphed: (model, opt, x, y, CE)."""
    nn = m.nn
    m.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).to("cuda")
    opt = m.optim.Adam(model.parameters(), lr=1e-3)
    x = m.randn(64, 784, device="cuda")
    y = m.randint(0, 10, (64,), device="cuda")
    return m.cuda.make_graphed_callables(model, (x,)), opt, x, y, nn.functional.cross_entropy


def run(fw: str) -> None:
    if fw == "torch":
        import torch as m
    else:
        import ember as m
    model, opt, x, y, CE = _setup(m)
    names = ("zero_grad", "forward", "loss", "backward", "step")
    times: dict = {k: [] for k in names + ("synced",)}
    clock = time.perf_counter
    for i in range(330):
        m.cuda.synchronize()
        t0 = clock()
        opt.zero_grad()
        t1 = clock()
        out = model(x)
        t2 = clock()
        loss = CE(out, y)
        t3 = clock()
        loss.backward()
        t4 = clock()
        opt.step()
        t5 = clock()
        m.cuda.synchronize()
        t6 = clock()
        if i >= 30:
            for k, a, b in zip(names + ("synced",), (t0, t1, t2, t3, t4, t0),
                               (t1, t2, t3, t4, t5, t6)):
                times[k].append(b - a)
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    parts = ", ".join(f"{k} {med[k]:.0f}" for k in names)
    print(f"{fw:5s} graphed MLP host us: {parts}; sum {sum(med[k] for k in names):.0f}; "
          f"synced step {med['synced']:.0f}", flush=True)


def profile() -> None:
    import ember as m
    from bench.host_profile import profile_steps
    model, opt, x, y, CE = _setup(m)

    def step() -> None:
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
        m.cuda.synchronize()
    for _ in range(30):
        step()
    profile_steps(step, 300, m.cuda.synchronize, 40, 40)


def main() -> None:
    if sys.argv[1:] == ["--profile"]:
        profile()
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        run(sys.argv[2])
        return
    for fw in ("ember", "torch"):
        subprocess.run([sys.executable, "-m", "bench.graphed_mlp", "--one", fw])


if __name__ == "__main__":
    main()
