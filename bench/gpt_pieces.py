"""Paired CPU timings, ember vs torch, of the tiny-GPT training step and of its pieces.

    python -m bench.gpt_pieces                 # the step, its phases, then every piece
    python -m bench.gpt_pieces "fwd (graph)"   # the pieces' forwards alone (graph recorded)
    python -m bench.gpt_pieces gelu adamw      # the cases whose name contains a word
    python -m bench.gpt_pieces prof            # cProfile of ember's GPT step
    python -m bench.gpt_pieces ab EMBER_BLAS_SPIN=0 step   # ember with VAR=VALUE vs without

The same two-worker design as ``bench.cpu_pieces`` (whose worker loop this reuses): ember and
torch run in two processes that take short turns, and only the medians taken together are
compared. Shapes are the step's: B16, T64, d128, 4 heads, vocabulary 256.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

STEP = "tiny GPT step (4x128, T64, B16) AdamW"
B, T, D, H, V = 16, 64, 128, 4, 256


def cases(fw: Any) -> dict:
    """name -> zero-argument callable, built the same way for either framework."""
    F = fw.nn.functional
    rng = np.random.default_rng(0)
    f32 = np.float32
    out: dict = {}

    def t(arr: np.ndarray, grad: bool = False) -> Any:
        return fw.tensor(arr, requires_grad=grad)

    from bench.workloads import WORKLOADS
    fw.manual_seed(0)
    step = WORKLOADS[STEP](fw)[0]
    out[STEP] = step
    # the step's phases, from the objects its closure holds (the model is the workload's)
    env = dict(zip(step.__code__.co_freevars, [c.cell_contents for c in step.__closure__]))
    model, gx, gy = env["model"], env["x"], env["y"]

    def gpt_forward() -> Any:
        return F.cross_entropy(model(gx).reshape(-1, V), gy.reshape(-1))

    def gpt_fwd_bwd() -> None:
        model.zero_grad()
        gpt_forward().backward()
    out["GPT step forward + loss (graph)"] = gpt_forward
    out["GPT step forward + loss + backward"] = gpt_fwd_bwd

    fwd_only: dict = {}   # fb's callables -> their forward alone

    def fb(fn: Any, *leaves: Any) -> Any:
        """fn() forward, then backward of a fixed upstream gradient into ``leaves``."""
        y0 = fn()
        g = fw.tensor(rng.standard_normal(tuple(y0.shape)).astype(f32))

        def run() -> None:
            y = fn()
            fw.autograd.grad(y, leaves, g)
        fwd_only[run] = fn
        return run

    x = t(rng.standard_normal((B, T, D), f32), True)
    lw = t(1 + 0.1 * rng.standard_normal(D, f32), True)
    lb = t(0.1 * rng.standard_normal(D, f32), True)
    out["layer_norm fwd+bwd 1024x128"] = fb(lambda: F.layer_norm(x, (D,), lw, lb), x, lw, lb)

    def lin(n_in: int, n_out: int, bias: bool = True) -> tuple:
        xi = t(rng.standard_normal((B, T, n_in), f32), True)
        w = t(rng.standard_normal((n_out, n_in), f32) * n_in ** -0.5, True)
        b = t(rng.standard_normal(n_out, f32) * 0.1, True) if bias else None
        return xi, w, b
    for name, (ni, no, bias) in {"qkv 128->384": (D, 3 * D, True),
                                 "proj 128->128": (D, D, True),
                                 "fc 128->512": (D, 4 * D, True),
                                 "fc2 512->128": (4 * D, D, True),
                                 "head 128->256": (D, V, False)}.items():
        xi, w, b = lin(ni, no, bias)
        leaves = (xi, w) + ((b,) if bias else ())
        out[f"linear fwd+bwd {name}"] = fb(lambda xi=xi, w=w, b=b: F.linear(xi, w, b), *leaves)

    h = t(rng.standard_normal((B, T, 4 * D), f32), True)
    out["gelu fwd+bwd 16x64x512"] = fb(lambda: F.gelu(h), h)

    def gelu_fwd() -> None:
        with fw.no_grad():
            F.gelu(h)
    out["gelu fwd 16x64x512 (no grad)"] = gelu_fwd

    qkv = t(rng.standard_normal((B, T, 3 * D), f32), True)

    def attn() -> Any:
        q, k, v = qkv.split(D, dim=2)
        q = q.view(B, T, H, D // H).transpose(1, 2)
        k = k.view(B, T, H, D // H).transpose(1, 2)
        v = v.view(B, T, H, D // H).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return a.transpose(1, 2).reshape(B, T, D)
    out["sdpa causal fwd+bwd (qkv split) 16x4x64x32"] = fb(attn, qkv)

    logits = t(rng.standard_normal((B * T, V), f32), True)
    tgt = fw.tensor(rng.integers(0, V, B * T))
    out["cross_entropy fwd+bwd 1024x256"] = fb(lambda: F.cross_entropy(logits, tgt), logits)

    tok = t(rng.standard_normal((V, D), f32), True)
    idx = fw.tensor(rng.integers(0, V, (B, T)))
    out["embedding fwd+bwd 16x64 of 256x128"] = fb(lambda: F.embedding(idx, tok), tok)

    def gpt_params() -> list:
        fw.manual_seed(0)
        shapes = [(V, D), (T, D)]
        for _ in range(4):
            shapes += [(D,), (D,), (3 * D, D), (3 * D,), (D, D), (D,), (D,), (D,),
                       (4 * D, D), (4 * D,), (D, 4 * D), (D,)]
        shapes += [(D,), (D,), (V, D)]
        ps = [fw.nn.Parameter(fw.randn(s)) for s in shapes]
        for p in ps:
            p.grad = fw.randn(p.shape)
        return ps
    # each piece's forward alone (graph recorded) too: in the step ember's forward lost to
    # torch's (1.39x paired) while its backward and optimizer won, which the fwd+bwd pieces hid
    for name, run in list(out.items()):
        if run in fwd_only:
            out[name.replace("fwd+bwd", "fwd (graph)")] = fwd_only[run]
    out["AdamW step (GPT params)"] = fw.optim.AdamW(gpt_params(), lr=3e-4).step
    return out


def prof() -> None:
    import ember
    from bench.host_profile import profile_steps
    from bench.workloads import WORKLOADS
    step = WORKLOADS[STEP](ember)[0]
    for _ in range(5):
        step()
    profile_steps(step, 50, lambda: None, 35)


def ab(setting: str, select: Any, rounds: Any, measure: float = 0.3, settle: float = 0.4) -> None:
    """Paired turns of two ember workers, one run with the environment variable ``setting``
    (``VAR=VALUE``) and one without: the A/B test of a switchable code path, on the same
    machine state (ember against torch moved by +-5% between runs minutes apart). Turns
    settle longer than ``cpu_pieces.paired``'s: a worker whose OpenBLAS threads spin keeps a
    core busy ~0.1 s after its turn, which the other's BLAS thread choice would see."""
    import os

    from bench import cpu_pieces
    var, value = setting.split("=", 1)
    base = {k: v for k, v in os.environ.items() if k != var}
    argv = [sys.executable, "-m", "bench.gpt_pieces", "worker", "ember"]
    cpu_pieces.turns({setting: (argv, dict(base, **{var: value})), "without": (argv, base)},
                     select, rounds, settle, measure, width=44)


def main() -> None:
    from bench import cpu_pieces
    args = sys.argv[1:]
    if args[:1] == ["prof"]:
        prof()
        return
    setting = None
    if args[:1] == ["ab"]:
        setting, args = args[1], args[2:]
    if args[:1] == ["worker"]:
        cpu_pieces.worker(args[1], cases)
        return
    rounds_arg = [a for a in args if a.startswith("rounds=")]
    words = [a for a in args if not a.startswith("rounds=")]

    def select(names: list) -> list:
        return [n for n in names if any(w.lower() in n.lower() for w in words)] \
            if words else names

    def rounds(n: str) -> int:
        return int(rounds_arg[0][7:]) if rounds_arg else (10 if n == STEP else 5)
    if setting is not None:
        ab(setting, select, rounds)
        return
    cpu_pieces.paired("bench.gpt_pieces", select, rounds, 0.3, width=44)


if __name__ == "__main__":
    main()
