"""GPU benchmarks: ember and torch on one CUDA device, each in its own process.

    python -m bench.gpu                 # every workload (needs an NVIDIA GPU, CuPy and torch)
    python -m bench.gpu gpt2 resnet     # the workloads whose names contain these substrings
    python -m bench.gpu --procs 4 MLP   # 4 processes per framework: median, fastest, slowest

Workloads (median over the timed steps, each synchronised; then ``pipelined_ms``: the same
number of steps back to back with one synchronisation at the end, a loop that reads no value
per step; few warmup steps so the whole run fits in minutes):

- MLP 784-512-512-10, batch 64, Adam: eager, with ``make_graphed_callables`` (forward
  and backward replayed as CUDA graphs; the optimizer step stays eager), and the whole step
  (forward, loss, backward, capturable Adam) captured as one graph and replayed;
- GPT-style 4 layers, d 256, T 256, B 16, AdamW, float32 and bf16 autocast;
- GPT-2 124M (12 layers, d 768, 12 heads, vocab 50304, T 1024, B 16; B 4 if B 16 runs out of
  memory), bf16 autocast, AdamW: tokens/s and peak memory;
- ResNet-50, 224x224, batch 128, bf16 autocast, channels_last, SGD with momentum: images/s
  and peak memory;
- single linear layers (forward) to place the CuPy/cuBLASLt switch: ember with nvmath
  (cuBLASLt) forced, ember with CuPy's cuBLAS forced, and torch.
"""
from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from bench import host_speed

WARMUP, STEPS = 3, 10


# ---------------------------------------------------------------------- workloads
def mlp(torch: Any, graphed: bool = False) -> tuple:
    nn = torch.nn
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).to("cuda")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(64, 784, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    if graphed:
        model = torch.cuda.make_graphed_callables(model, (x,))

    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return step, {}


def _whole_step_graph(torch: Any, body: Callable) -> tuple[Callable, Any]:
    """Capture one training step ``body`` (forward, loss, backward, optimizer) as one CUDA
    graph, torch's whole-network capture recipe: warm up on a side stream (kernels built,
    optimizer state made), capture, and return the replay and what the captured ``body``
    returned (its static outputs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = body()
    return graph.replay, out


def gpt(torch: Any, amp: bool, d: int = 256, T: int = 256, B: int = 16, V: int = 4096,
        L: int = 4, H: int = 8, whole_graph: bool = False) -> tuple:
    nn = torch.nn
    F = nn.functional

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x: Any) -> Any:
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
            q, k, v = (z.view(B, T, H, d // H).transpose(1, 2) for z in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
            return x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(V, d), nn.Embedding(T, d)
            self.blocks = nn.ModuleList([Block() for _ in range(L)])
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, V, bias=False)
            self.head.weight = self.tok.weight  # tied, as GPT-2

        def forward(self, idx: Any) -> Any:
            x = self.tok(idx) + self.pos(torch.arange(T, device="cuda"))
            for b in self.blocks:
                x = b(x)
            return self.head(self.ln(x))

    model = GPT().to("cuda")
    # A captured step needs the step count on the device (capturable=True), as in torch.
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1,
                            capturable=whole_graph)
    x = torch.randint(0, V, (B, T), device="cuda")
    y = torch.randint(0, V, (B, T), device="cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        loss.backward()
        opt.step()
    if whole_graph:
        step = _whole_step_graph(torch, step)[0]
    return step, {"tokens": B * T, "batch": B}


def gpt2(torch: Any, B: int = 16, whole_graph: bool = False) -> tuple:
    return gpt(torch, True, d=768, T=1024, B=B, V=50304, L=12, H=12, whole_graph=whole_graph)


def resnet50(torch: Any, B: int = 128, whole_graph: bool = False) -> tuple:
    if torch.__name__ == "torch":
        import torchvision
        model = torchvision.models.resnet50()
    else:
        model = torch.vision.models.resnet50()
    model = model.to("cuda").to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(B, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (B,), device="cuda")
    F = torch.nn.functional

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    if whole_graph:
        step = _whole_step_graph(torch, step)[0]
    return step, {"images": B, "batch": B}


def linear_fwd(torch: Any, m: int, k: int, n: int, backend: str = "") -> tuple:
    if backend:  # ember only: force one GEMM library
        from ember.backend.cuda_ops import nvmath_linear
        nvmath_linear.MIN_MACS = 0 if backend == "nvmath" else 1 << 62
        nvmath_linear.RECURRING[0] = backend == "nvmath"
    x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    w = torch.randn(n, k, device="cuda").to(torch.bfloat16)
    b = torch.randn(n, device="cuda").to(torch.bfloat16)
    F = torch.nn.functional

    def step() -> None:
        for _ in range(10):
            F.linear(x, w, b)
    return step, {"per_call": 10}


def mlp_whole_step_graph(torch: Any) -> tuple:
    """The MLP step (forward, loss, backward, capturable Adam) captured as one CUDA graph,
    as torch's whole-network capture recipe; each timed step is one replay."""
    nn = torch.nn
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).to("cuda")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    x = torch.randn(64, 784, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")

    def body() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    step, loss = _whole_step_graph(torch, body)
    return step, {"loss": loss}


def _linears() -> dict:
    out = {}
    for m, k, n in ((16384, 768, 3072), (16384, 768, 768), (64, 784, 512), (2048, 768, 768)):
        for be in ("nvmath", "cupy"):
            out[f"linear bf16 {m}x{k}->{n} fwd ({be} | torch)"] = \
                (lambda t, m=m, k=k, n=n, be=be: linear_fwd(t, m, k, n, be if t.__name__ ==
                                                            "ember" else ""))
    return out


WORKLOADS: dict = {
    "MLP 784-512-512-10 B64 Adam": lambda t: mlp(t),
    "MLP 784-512-512-10 B64 Adam, graphed": lambda t: mlp(t, graphed=True),
    "MLP 784-512-512-10 B64 Adam, whole step one graph": mlp_whole_step_graph,
    "GPT 4x256 T256 B16 AdamW fp32": lambda t: gpt(t, False),
    "GPT 4x256 T256 B16 AdamW bf16": lambda t: gpt(t, True),
    **_linears(),
    "ResNet-50 224 B128 bf16 channels_last SGD": lambda t: resnet50(t),
    "GPT-2 124M T1024 B16 bf16 AdamW": lambda t: gpt2(t),
    # The same two steps captured whole as one CUDA graph each (forward, backward and
    # optimizer replayed; no Python per op): what the kernels alone reach.
    "ResNet-50 224 B128 bf16 channels_last SGD, whole step one graph":
        lambda t: resnet50(t, whole_graph=True),
    "GPT-2 124M T1024 B16 bf16 AdamW, whole step one graph":
        lambda t: gpt2(t, whole_graph=True),
}


# ---------------------------------------------------------------------- harness
def _measure(mod: Any, make: Callable, name: str) -> dict:
    cuda = mod.cuda
    gc.collect()
    cuda.empty_cache()
    cuda.reset_peak_memory_stats()
    t_build = time.perf_counter()
    try:
        step, info = make(mod)
        for _ in range(WARMUP):
            step()
        cuda.synchronize()
    except Exception as exc:
        if "memory" not in f"{type(exc).__name__} {exc}".lower() or "GPT-2" not in name:
            raise
        step = None
        gc.collect()
        cuda.empty_cache()
        step, info = gpt2(mod, B=4)  # out of memory at B 16: report B 4
        for _ in range(WARMUP):
            step()
        cuda.synchronize()
    setup_s = time.perf_counter() - t_build
    # the host's own speed just before and after the timed steps (a pure-Python loop: the
    # device machine's host runs at about half speed for seconds at a time)
    probe = [host_speed.work()]
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        step()
        cuda.synchronize()
        times.append(time.perf_counter() - t0)
    # the same number of steps back to back, synchronised once at the end: a training loop
    # that reads no value per step, where one step's host work overlaps the last one's kernels
    t0 = time.perf_counter()
    for _ in range(STEPS):
        step()
    cuda.synchronize()
    pipelined = (time.perf_counter() - t0) / STEPS
    probe.append(host_speed.work())
    per_call = info.get("per_call", 1)
    ms = statistics.median(times) * 1e3 / per_call
    res = {"ms": ms, "pipelined_ms": pipelined * 1e3 / per_call,
           "peak_gib": cuda.max_memory_allocated() / 2 ** 30,
           "setup_s": setup_s, "host_probe_ms": [round(p * 1e3, 1) for p in probe]}
    if "tokens" in info:
        res["tokens_per_s"] = info["tokens"] / (ms / 1e3)
    if "images" in info:
        res["images_per_s"] = info["images"] / (ms / 1e3)
    if "batch" in info:
        res["batch"] = info["batch"]
    del step
    return res


def run_one(fw: str, only: list) -> None:
    if fw == "torch":
        import torch as mod
        mod.backends.cuda.matmul.allow_tf32 = False
    else:
        import ember as mod
    mod.manual_seed(0)
    gemm_switch: list = []
    if fw == "ember":
        mod.cuda.is_available()
        from ember.backend.cuda_ops import nvmath_linear
        gemm_switch = [nvmath_linear, nvmath_linear.MIN_MACS, nvmath_linear.RECURRING[0]]
    for name, make in WORKLOADS.items():
        if only and not any(s.lower() in name.lower() for s in only):
            continue
        if gemm_switch:  # the linear workloads force one GEMM library: undo that
            gemm_switch[0].MIN_MACS = gemm_switch[1]
            gemm_switch[0].RECURRING[0] = gemm_switch[2]
        try:
            res = _measure(mod, make, name)
        except Exception as exc:  # report, keep going
            res = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(json.dumps({name: res}), flush=True)


def profile(only: list) -> None:
    """``--profile``: ember only, one step per workload timed op by op (device-synchronised,
    so the GPU time of each op plus its host cost); backward nodes are reported as
    ``<op> (bwd)`` and the rest of the step (optimizer, Python glue) as ``(other)``."""
    import collections

    import ember
    from ember.ops.registry import OPS, OpNode

    ember.cuda.is_available()  # installs the CUDA implementations before wrapping them
    tot: dict = collections.defaultdict(float)
    cnt: collections.Counter = collections.Counter()
    depth = [0]
    sync = ember.cuda.synchronize

    def timed(fn: Callable, name: str) -> Callable:
        def wrapper(*a: Any) -> Any:
            if depth[0]:
                return fn(*a)
            depth[0] += 1
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*a)
            finally:
                sync()
                tot[name] += time.perf_counter() - t0
                cnt[name] += 1
                depth[0] -= 1
        return wrapper

    for name, op in OPS.items():
        op.forward = timed(op.forward, name)
        if op.cuda_impl is not None:
            op.cuda_impl.forward = timed(op.cuda_impl.forward, name + " [cuda impl]")
    orig_bw = OpNode.apply_backward

    def apply_backward(self: Any, grads: Any) -> Any:
        return timed(lambda: orig_bw(self, grads), self.op.name + " (bwd)")()
    OpNode.apply_backward = apply_backward
    for wname, make in WORKLOADS.items():
        if only and not any(x.lower() in wname.lower() for x in only):
            continue
        step, _ = make(ember)
        for _ in range(2):
            step()
        sync()
        tot.clear()
        cnt.clear()
        t0 = time.perf_counter()
        step()
        sync()
        total = time.perf_counter() - t0
        tot["(other)"] = total - sum(tot.values())
        print(f"## {wname}: {total * 1e3:.1f} ms in one profiled step")
        for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:25]:
            print(f"{v * 1e3:9.2f} ms  {cnt[k]:5d}x  {k}")
        del step
        from ember.backend.cuda_ops import _cudnn
        print("cuDNN graphs:", sum(v is not None for v in _cudnn._GRAPHS.values()), "built,",
              sum(v is None for v in _cudnn._GRAPHS.values()), "rejected:",
              _cudnn._failed_keys[:4])


def _fmt(r: dict | None, key: str) -> str:
    if not r:
        return "—"
    if "error" in r:
        return "error: " + r["error"][:120]
    v = r.get(key)
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _runs(fw: str, only: list, module: str = "bench.gpu") -> dict:
    """One ``python -m <module> --one fw`` process: the JSON lines it printed, merged
    ({workload: result}); its stderr is shown when it failed or printed none."""
    p = subprocess.run([sys.executable, "-m", module, "--one", fw, *only],
                       capture_output=True, text=True)
    out: dict = {}
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            out.update(json.loads(line))
    if p.returncode != 0 or not out:
        print(f"[{fw}] exit {p.returncode}:\n{p.stderr[-3000:]}")
    return out


def procs(n: int, only: list) -> None:
    """``--procs N``: each framework in N processes, taking turns (the device machine's host
    speed differs from one process to the next by up to ~1.7x, and ember's eager steps
    follow it): per workload the median, fastest and slowest process of each."""
    ms: dict = {"ember": {}, "torch": {}}
    piped: dict = {"ember": {}, "torch": {}}
    probes: dict = {"ember": {}, "torch": {}}
    for i in range(n):
        for fw in (("ember", "torch") if i % 2 == 0 else ("torch", "ember")):
            res = _runs(fw, only)
            print(json.dumps({"process": i, "framework": fw, "results": res}), flush=True)
            for name, r in res.items():
                if "ms" in r:
                    ms[fw].setdefault(name, []).append(r["ms"])
                    if "pipelined_ms" in r:
                        piped[fw].setdefault(name, []).append(r["pipelined_ms"])
                    probes[fw].setdefault(name, []).append(r.get("host_probe_ms"))
    print(json.dumps(ms))
    print(f"host probe (bench.host_speed's loop, ms; ~25-35 at full speed): "
          f"{json.dumps(probes)}")
    print(f"| workload | ember ms: median (fastest-slowest of {n}) | torch ms: median "
          f"(fastest-slowest) | ember/torch medians |")
    print("|---|---|---|---|")
    for table, suffix in ((ms, ""), (piped, ", pipelined")):
        for name in WORKLOADS:
            e, t = table["ember"].get(name), table["torch"].get(name)
            if not e and not t:
                continue
            cells = [f"{statistics.median(v):.3g} ({min(v):.3g}-{max(v):.3g})" if v else "—"
                     for v in (e, t)]
            ratio = f"{statistics.median(e) / statistics.median(t):.2f}x" if e and t else "—"
            print(f"| {name}{suffix} | {cells[0]} | {cells[1]} | {ratio} |")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        run_one(sys.argv[2], sys.argv[3:])
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--procs":
        procs(int(sys.argv[2]), sys.argv[3:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--profile":
        profile(sys.argv[2:])
        return
    only = sys.argv[1:]
    res = {fw: _runs(fw, only) for fw in ("ember", "torch")}
    print(json.dumps(res))
    print("| workload | ember ms | torch ms | ember/torch | ember / torch ms pipelined | "
          "ember tok/s or img/s | torch tok/s or img/s | ember peak GiB | torch peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in WORKLOADS:
        e, t = res["ember"].get(name), res["torch"].get(name)
        if e is None and t is None:
            continue
        ratio = "—"
        if e and t and "ms" in e and "ms" in t:
            ratio = f"{e['ms'] / t['ms']:.2f}x"
        rate = "tokens_per_s" if "GPT-2" in name or "GPT " in name else "images_per_s"
        label = name
        if e and e.get("batch") and "GPT-2" in name and e["batch"] != 16:
            label += f" (ember at B{e['batch']})"
        print(f"| {label} | {_fmt(e, 'ms')} | {_fmt(t, 'ms')} | {ratio} | "
              f"{_fmt(e, 'pipelined_ms')} / {_fmt(t, 'pipelined_ms')} | {_fmt(e, rate)} | "
              f"{_fmt(t, rate)} | {_fmt(e, 'peak_gib')} | {_fmt(t, 'peak_gib')} |")


if __name__ == "__main__":
    main()
