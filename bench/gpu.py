"""GPU benchmarks: ember and torch on one CUDA device, each in its own process.

    python -m bench.gpu            # run on a machine with an NVIDIA GPU, CuPy and torch

Workloads (median ms per step, timed with device synchronisation):
- MLP 784-512-512-10, batch 64, Adam (overhead-bound);
- GPT-style 4 layers, d 256, T 256, B 16, AdamW, float32 and bf16 autocast.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any


def mlp(torch: Any) -> Any:
    nn = torch.nn
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).to("cuda")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(64, 784, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")

    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return step


def gpt(torch: Any, amp: bool) -> Any:
    nn = torch.nn
    F = nn.functional
    d, T, B, V, L, H = 256, 256, 16, 4096, 4, 8

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
            return x + self.fc2(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(V, d), nn.Embedding(T, d)
            self.blocks = nn.ModuleList([Block() for _ in range(L)])
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, V, bias=False)

        def forward(self, idx: Any) -> Any:
            x = self.tok(idx) + self.pos(torch.arange(T, device="cuda"))
            for b in self.blocks:
                x = b(x)
            return self.head(self.ln(x))

    model = GPT().to("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    x = torch.randint(0, V, (B, T), device="cuda")
    y = torch.randint(0, V, (B, T), device="cuda")

    def step() -> None:
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))
        loss.backward()
        opt.step()
    return step


WORKLOADS = {"MLP 784-512-512-10 B64 Adam": lambda t: mlp(t),
             "GPT 4x256 T256 B16 AdamW fp32": lambda t: gpt(t, False),
             "GPT 4x256 T256 B16 AdamW bf16": lambda t: gpt(t, True)}


def run_one(fw: str) -> None:
    if fw == "torch":
        import torch as mod
        sync = mod.cuda.synchronize
    else:
        import ember as mod
        sync = mod.cuda.synchronize
    mod.manual_seed(0)
    out = {}
    for name, make in WORKLOADS.items():
        try:
            step = make(mod)
            for _ in range(3):
                step()
            sync()
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - t0)
            out[name] = statistics.median(times) * 1e3
        except Exception as exc:  # report, keep going
            out[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    print(json.dumps(out))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        run_one(sys.argv[2])
        return
    res = {}
    for fw in ("ember", "torch"):
        p = subprocess.run([sys.executable, "-m", "bench.gpu", "--one", fw], capture_output=True,
                           text=True)
        if p.returncode != 0:
            print(p.stderr[-3000:])
        res[fw] = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
    print("| workload | ember ms | torch ms | ember/torch |\n|---|---|---|---|")
    for name in WORKLOADS:
        e, t = res.get("ember", {}).get(name), res.get("torch", {}).get(name)
        ratio = f"{e / t:.2f}x" if isinstance(e, float) and isinstance(t, float) else "—"
        fe = f"{e:.2f}" if isinstance(e, float) else str(e)
        ft = f"{t:.2f}" if isinstance(t, float) else str(t)
        print(f"| {name} | {fe} | {ft} | {ratio} |")


if __name__ == "__main__":
    main()
