"""Paired CPU timings, ember vs torch, of whole training steps and of their pieces.

    python -m bench.cpu_pieces                 # the MLP and LeNet steps, then every piece
    python -m bench.cpu_pieces steps           # whole steps only
    python -m bench.cpu_pieces conv ce         # the cases whose name contains a word
    python -m bench.cpu_pieces prof MLP        # cProfile of ember's MLP (or LeNet) step

The bench machine's timings drift 1.5-2x within minutes, so ember and torch run in two
worker processes side by side and take short turns (the same number for each), and the
medians of their per-call times are compared: only numbers taken together are. Two processes
rather than one: torch's OpenMP threads spin after each parallel region and would take a core
from ember's next call; each turn starts with an untimed settling time so that ember's BLAS
thread count (from the machine's recent busy time) does not see torch's turn.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

STEPS = ("MLP 784-256-256-10 SGD step", "LeNet-5 Adam step")


def cases(fw: Any) -> dict:
    """name -> zero-argument callable, built the same way for either framework."""
    F = fw.nn.functional
    rng = np.random.default_rng(0)
    f32 = np.float32
    out: dict = {}

    def t(arr: np.ndarray, grad: bool = False) -> Any:
        return fw.tensor(arr, requires_grad=grad)

    from bench.workloads import WORKLOADS
    for name in STEPS:
        fw.manual_seed(0)
        out[name] = WORKLOADS[name](fw)[0]

    # --- MLP pieces (batch 128)
    x = t(rng.standard_normal((128, 784), f32))
    w = t(rng.standard_normal((256, 784), f32) * 0.03, True)
    b = t(rng.standard_normal(256, f32), True)
    out["linear fwd 128x784x256 (graph)"] = lambda: F.linear(x, w, b)

    def lin_fb() -> None:
        F.linear(x, w, b).sum().backward()
        w.grad = None
        b.grad = None
    out["linear fwd+bwd(+sum) 128x784x256"] = lin_fb
    y = F.linear(x, w, b)
    gy = fw.ones_like(y)
    out["linear bwd 128x784x256 (autograd.grad)"] = \
        lambda: fw.autograd.grad(y, (w, b), gy, retain_graph=True)
    lg = t(rng.standard_normal((128, 10), f32), True)
    tg = fw.tensor(rng.integers(0, 10, 128))

    def ce_nograd() -> None:
        with fw.no_grad():
            F.cross_entropy(lg, tg)
    out["cross_entropy fwd 128x10 (no grad)"] = ce_nograd
    out["cross_entropy fwd 128x10 (graph)"] = lambda: F.cross_entropy(lg, tg)

    def ce_fb() -> None:
        F.cross_entropy(lg, tg).backward()
        lg.grad = None
    out["cross_entropy fwd+bwd 128x10"] = ce_fb
    h = t(rng.standard_normal((128, 256), f32), True)
    out["relu fwd 128x256 (graph)"] = lambda: fw.relu(h)
    hr = fw.relu(h)
    gh = fw.ones_like(hr)
    out["relu bwd 128x256 (autograd.grad)"] = \
        lambda: fw.autograd.grad(hr, h, gh, retain_graph=True)

    def mlp_params() -> list:
        fw.manual_seed(0)
        m = fw.nn.Sequential(fw.nn.Linear(784, 256), fw.nn.ReLU(), fw.nn.Linear(256, 256),
                             fw.nn.ReLU(), fw.nn.Linear(256, 10))
        ps = list(m.parameters())
        for p in ps:
            p.grad = fw.randn(p.shape)
        return ps
    out["SGD momentum step (MLP params)"] = \
        fw.optim.SGD(mlp_params(), lr=0.01, momentum=0.9).step

    # --- LeNet pieces (batch 64)
    img = t(rng.standard_normal((64, 1, 28, 28), f32))
    c1 = t(rng.standard_normal((6, 1, 5, 5), f32) * 0.2, True)
    c1b = t(rng.standard_normal(6, f32) * 0.1, True)
    out["conv1 fwd 64x1x28x28 k5 p2 (graph)"] = lambda: F.conv2d(img, c1, c1b, padding=2)
    y1 = F.conv2d(img, c1, c1b, padding=2)
    g1 = fw.ones_like(y1)
    out["conv1 bwd (w, b)"] = lambda: fw.autograd.grad(y1, (c1, c1b), g1, retain_graph=True)
    a2 = t(np.maximum(rng.standard_normal((64, 6, 14, 14), f32), 0), True)
    c2 = t(rng.standard_normal((16, 6, 5, 5), f32) * 0.1, True)
    c2b = t(rng.standard_normal(16, f32) * 0.1, True)
    out["conv2 fwd 64x6x14x14 k5 (graph)"] = lambda: F.conv2d(a2, c2, c2b)
    y2 = F.conv2d(a2, c2, c2b)
    g2 = fw.ones_like(y2)
    out["conv2 bwd (x, w, b)"] = \
        lambda: fw.autograd.grad(y2, (a2, c2, c2b), g2, retain_graph=True)
    p1 = t(rng.standard_normal((64, 6, 28, 28), f32), True)
    out["max_pool2d fwd 64x6x28x28 k2 (graph)"] = lambda: F.max_pool2d(p1, 2)
    q1 = F.max_pool2d(p1, 2)
    gq1 = fw.ones_like(q1)
    out["max_pool2d bwd 64x6x28x28"] = lambda: fw.autograd.grad(q1, p1, gq1, retain_graph=True)
    p2 = t(rng.standard_normal((64, 16, 10, 10), f32), True)
    out["max_pool2d fwd 64x16x10x10 k2 (graph)"] = lambda: F.max_pool2d(p2, 2)
    q2 = F.max_pool2d(p2, 2)
    gq2 = fw.ones_like(q2)
    out["max_pool2d bwd 64x16x10x10"] = lambda: fw.autograd.grad(q2, p2, gq2, retain_graph=True)
    r1 = t(rng.standard_normal((64, 6, 28, 28), f32), True)
    out["relu fwd 64x6x28x28 (graph)"] = lambda: fw.relu(r1)
    rr = fw.relu(r1)
    grr = fw.ones_like(rr)
    out["relu bwd 64x6x28x28"] = lambda: fw.autograd.grad(rr, r1, grr, retain_graph=True)
    lx = t(rng.standard_normal((64, 400), f32))
    lw = t(rng.standard_normal((120, 400), f32) * 0.05, True)
    lb = t(rng.standard_normal(120, f32), True)

    def lin2_fb() -> None:
        F.linear(lx, lw, lb).sum().backward()
        lw.grad = None
        lb.grad = None
    out["linear fwd+bwd(+sum) 64x400x120"] = lin2_fb

    def adam_params() -> list:
        fw.manual_seed(0)
        shapes = [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120),
                  (84,), (10, 84), (10,)]
        ps = [fw.nn.Parameter(fw.randn(s)) for s in shapes]
        for p in ps:
            p.grad = fw.randn(p.shape)
        return ps
    out["Adam step (LeNet params)"] = fw.optim.Adam(adam_params(), lr=1e-3).step
    return out


def worker(fw_name: str, make_cases: Callable[[Any], dict] | None = None) -> None:
    """Build the cases (``make_cases``, this module's :func:`cases` by default), print their
    names, then answer ``name settle measure`` requests from stdin: call the case for
    ``settle`` seconds untimed, then for ``measure`` seconds (at least 3 calls), and print the
    seconds of each timed call."""
    if fw_name == "torch":
        import torch as fw
        fw.set_num_threads(2)  # as bench.run_one
    else:
        import ember as fw
    table = (make_cases or cases)(fw)
    print(json.dumps(list(table)), flush=True)
    clock = time.perf_counter
    for line in sys.stdin:
        name, settle, measure = line.split()
        fn = table[name.replace("~", " ")]
        end = clock() + float(settle)
        while clock() < end:
            fn()
        times: list = []
        end = clock() + float(measure)
        while len(times) < 3 or clock() < end:
            t0 = clock()
            fn()
            times.append(clock() - t0)
        print(json.dumps(times), flush=True)


def turns(sides: dict, select: Callable[[list], list], rounds: Callable[[str], int],
          settle: float, measure: float, width: int = 42) -> None:
    """Time each selected case in two worker processes taking alternating turns
    (``rounds(name)`` of them) and print the two medians and their ratio. ``sides`` maps two
    labels to ``(argv, env)`` of a worker (``python -m <module> worker <fw>``; env None:
    this process's). Each turn runs the case ``settle`` s untimed, then ``measure`` s timed."""
    procs = {lab: subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, env=env) for lab, (argv, env) in sides.items()}
    names = [json.loads(p.stdout.readline()) for p in procs.values()][0]
    first, second = procs

    def call(lab: str, name: str) -> list:
        procs[lab].stdin.write(f"{name.replace(' ', '~')} {settle} {measure}\n")
        procs[lab].stdin.flush()
        return json.loads(procs[lab].stdout.readline())

    for name in select(names):
        times: dict = {first: [], second: []}
        for r in range(rounds(name)):
            for lab in ((first, second) if r % 2 == 0 else (second, first)):
                times[lab].extend(call(lab, name))
        a, b = statistics.median(times[first]), statistics.median(times[second])
        print(f"{name:{width}s} {first} {a * 1e6:9.1f} us  {second} {b * 1e6:9.1f} us  "
              f"{a / b:5.2f}x  (n {len(times[first])}/{len(times[second])})", flush=True)
    for p in procs.values():
        p.stdin.close()
        p.wait()


def paired(module: str, select: Callable[[list], list], rounds: Callable[[str], int],
           measure: float, width: int = 42) -> None:
    """ember against torch (``python -m <module> worker <fw>``) in alternating turns.

    Turns last ``0.15 + measure`` s, the first 0.15 s untimed: ember's BLAS thread count
    follows the machine's busy time over the last 0.1 s, which must not see torch's turn."""
    sides = {fw: ([sys.executable, "-m", module, "worker", fw], None)
             for fw in ("ember", "torch")}
    turns(sides, select, rounds, 0.15, measure, width)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["worker"]:
        worker(args[1])
        return
    if args[:1] == ["prof"]:
        prof(args[1] if len(args) > 1 else "MLP")
        return
    words = [a for a in args if a != "steps"]

    def select(names: list) -> list:
        if not args:   # "steps": the whole steps; a word: the cases whose name contains it
            return names
        return [n for n in names if ("steps" in args and n in STEPS) or
                any(w.lower() in n.lower() for w in words)]
    paired("bench.cpu_pieces", select, lambda n: 8 if n in STEPS else 5, 0.2)


def prof(which: str) -> None:
    import ember
    from bench.host_profile import profile_steps
    from bench.workloads import WORKLOADS
    name = [n for n in WORKLOADS if which.lower() in n.lower()][0]
    step = WORKLOADS[name](ember)[0]
    for _ in range(5):
        step()
    profile_steps(step, 100, lambda: None, 40)


if __name__ == "__main__":
    main()
