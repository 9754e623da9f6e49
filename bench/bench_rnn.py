"""Sequence-model training steps: ember vs torch on the CPU (not a test).

* LSTM language model (PyTorch's word_language_model): vocab 10k, d 200, 2 layers,
  seq 35, batch 20; forward + cross-entropy + backward + SGD step.
* Tiny GPT (nanoGPT-style): 4 layers, d 128, 4 heads, T 64, B 16, vocab 256, causal
  scaled_dot_product_attention; forward + backward + AdamW step (SGD by hand when
  ember.optim is missing).

Both frameworks build the same model from the same code (the APIs are the same), start from
the same weights (torch's state_dict loaded into ember) and run in this process. Prints the
median step time of each and the ember/torch ratio (lower is better).
Run: ``.venv/bin/python bench/bench_rnn.py [lstm|gpt] [--steps N]``.

Paired pieces of the LSTM LM step (bench/workloads.py's), ember and torch in two worker
processes taking turns (bench.cpu_pieces' driver)::

    .venv/bin/python -m bench.bench_rnn pieces [WORD ...]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import numpy as np

import ember

# torch is imported by main() for the in-process comparison only: the paired pieces' ember
# worker must not load it (its GNU OpenMP becomes MKL's threading layer in that process,
# whose spinning workers slowed ember's two-thread LSTM loops ~1.5x)
torch: Any = None


def lstm_lm(m: Any, vocab: int = 10000, d: int = 200, layers: int = 2) -> Any:
    nn = m.nn

    class RNNModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.2)
            self.encoder = nn.Embedding(vocab, d)
            self.rnn = nn.LSTM(d, d, layers, dropout=0.2)
            self.decoder = nn.Linear(d, vocab)

        def forward(self, x: Any, hidden: Any) -> Any:
            emb = self.drop(self.encoder(x))
            out, hidden = self.rnn(emb, hidden)
            return self.decoder(self.drop(out)).view(-1, vocab), hidden

    return RNNModel()


def tiny_gpt(m: Any, vocab: int = 256, d: int = 128, layers: int = 4, heads: int = 4,
             block: int = 64) -> Any:
    nn = m.nn
    F = m.nn.functional

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(d)
            self.c_attn = nn.Linear(d, 3 * d)
            self.c_proj = nn.Linear(d, d)
            self.ln_2 = nn.LayerNorm(d)
            self.fc = nn.Linear(d, 4 * d)
            self.proj = nn.Linear(4 * d, d)

        def forward(self, x: Any) -> Any:
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q = q.view(B, T, heads, C // heads).transpose(1, 2)
            k = k.view(B, T, heads, C // heads).transpose(1, 2)
            v = v.view(B, T, heads, C // heads).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = y.transpose(1, 2).reshape(B, T, C)
            x = x + self.c_proj(y)
            return x + self.proj(F.gelu(self.fc(self.ln_2(x))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(vocab, d)
            self.wpe = nn.Embedding(block, d)
            self.h = nn.ModuleList([Block() for _ in range(layers)])
            self.ln_f = nn.LayerNorm(d)
            self.lm_head = nn.Linear(d, vocab, bias=False)

        def forward(self, idx: Any) -> Any:
            pos = m.arange(idx.shape[1])
            x = self.wte(idx) + self.wpe(pos)
            for blk in self.h:
                x = blk(x)
            return self.lm_head(self.ln_f(x))

    return GPT()


def _cross_entropy(m: Any, logits: Any, target: Any) -> Any:
    F = m.nn.functional
    if hasattr(F, "cross_entropy"):
        return F.cross_entropy(logits, target)
    logp = F.log_softmax(logits, dim=-1)
    return -logp[m.arange(target.shape[0]), target].mean()


def _sync_weights(tmodel: Any, emodel: Any) -> None:
    emodel.load_state_dict({k: ember.tensor(v.detach().numpy())
                            for k, v in tmodel.state_dict().items()})


def _optimizer(m: Any, model: Any, kind: str) -> Callable[[], None]:
    params = list(model.parameters())
    optim = getattr(m, "optim", None)
    if kind == "adamw" and optim is not None and hasattr(optim, "AdamW"):
        opt = optim.AdamW(params, lr=1e-3)
    elif optim is not None and hasattr(optim, "SGD"):
        opt = optim.SGD(params, lr=0.1)
    else:
        def step() -> None:
            with m.no_grad():
                for p in params:
                    if p.grad is not None:
                        p -= 0.1 * p.grad
                    p.grad = None
        return step

    def step() -> None:
        opt.step()
        opt.zero_grad()
    return step


def _time(fn: Callable[[], Any], steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_lstm(steps: int) -> tuple:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 10000, (36, 20))
    res = {}
    tmodel = lstm_lm(torch)
    models = {"torch": tmodel, "ember": lstm_lm(ember)}
    _sync_weights(tmodel, models["ember"])
    for name, m in (("torch", torch), ("ember", ember)):
        model = models[name]
        model.train()
        x = m.tensor(data[:35])
        y = m.tensor(data[1:].reshape(-1))
        hidden = (m.zeros(2, 20, 200), m.zeros(2, 20, 200))
        step_opt = _optimizer(m, model, "sgd")

        def step(model: Any = model, m: Any = m, x: Any = x, y: Any = y, hidden: Any = hidden,
                 step_opt: Callable = step_opt) -> None:
            out, _ = model(x, hidden)
            loss = _cross_entropy(m, out, y)
            loss.backward()
            step_opt()
        res[name] = _time(step, steps)
    return res["ember"], res["torch"]


def bench_gpt(steps: int) -> tuple:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (16, 65))
    res = {}
    tmodel = tiny_gpt(torch)
    models = {"torch": tmodel, "ember": tiny_gpt(ember)}
    _sync_weights(tmodel, models["ember"])
    for name, m in (("torch", torch), ("ember", ember)):
        model = models[name]
        x = m.tensor(data[:, :64])
        y = m.tensor(data[:, 1:].reshape(-1))
        step_opt = _optimizer(m, model, "adamw")

        def step(model: Any = model, m: Any = m, x: Any = x, y: Any = y,
                 step_opt: Callable = step_opt) -> None:
            logits = model(x)
            loss = _cross_entropy(m, logits.reshape(-1, logits.shape[-1]), y)
            loss.backward()
            step_opt()
        res[name] = _time(step, steps)
    return res["ember"], res["torch"]


LM_STEP = "LSTM LM step (2x200, vocab 10k, 35x20)"


def pieces(fw: Any) -> dict:
    """name -> zero-argument callable: the LSTM LM step and its phases, built alike for
    either framework (``fw`` is ember or torch)."""
    from bench.workloads import WORKLOADS
    F = fw.nn.functional
    rng = np.random.default_rng(0)
    out: dict = {}
    fw.manual_seed(0)
    out[LM_STEP] = WORKLOADS[LM_STEP](fw)[0]
    fw.manual_seed(0)
    lstm = fw.nn.LSTM(200, 200, num_layers=2)
    x = fw.tensor(rng.standard_normal((35, 20, 200)).astype(np.float32), requires_grad=True)

    def lstm_fwd() -> None:
        lstm(x)
    out["lstm 2x200 fwd (graph)"] = lstm_fwd

    def lstm_fb() -> None:
        o, _ = lstm(x)
        o.sum().backward()
        x.grad = None
        lstm.zero_grad()
    out["lstm 2x200 fwd+bwd (+sum)"] = lstm_fb
    hid = fw.tensor(rng.standard_normal((700, 200)).astype(np.float32), requires_grad=True)
    head = fw.nn.Linear(200, 10000)
    y = fw.tensor(rng.integers(0, 10000, 700))

    def head_fb() -> None:
        F.cross_entropy(head(hid), y).backward()
        hid.grad = None
        head.zero_grad()
    out["head 700x200x10k + cross_entropy fwd+bwd"] = head_fb
    fw.manual_seed(0)
    model = fw.nn.ModuleDict({"emb": fw.nn.Embedding(10000, 200), "rnn": fw.nn.LSTM(200, 200, 2),
                              "out": fw.nn.Linear(200, 10000)})
    params = list(model.parameters())
    for p in params:
        p.grad = fw.ones_like(p) * 1e-3
    opt = fw.optim.SGD(params, lr=1e-6)
    out["sgd step (LM params, 4.6M)"] = opt.step
    out["clip_grad_norm_ (LM params)"] = \
        lambda: fw.nn.utils.clip_grad_norm_(params, 1e9)
    idx = fw.tensor(rng.integers(0, 10000, (35, 20)))
    emb = model["emb"]

    def emb_fb() -> None:
        emb(idx).sum().backward()
        emb.weight.grad = None
    out["embedding 10k x 200 fwd+bwd (+sum)"] = emb_fb
    return out


def main() -> None:
    import sys
    argv = sys.argv[1:]
    if argv[:1] == ["worker"]:
        from bench import cpu_pieces
        cpu_pieces.worker(argv[1], pieces)
        return
    if argv[:1] == ["pieces"]:
        from bench import cpu_pieces
        words = [w.lower() for w in argv[1:]]

        def select(names: list) -> list:
            return [n for n in names if not words or any(w in n.lower() for w in words)]
        cpu_pieces.paired("bench.bench_rnn", select, lambda n: 6 if n == LM_STEP else 5, 0.3,
                          width=44)
        return
    global torch
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", default=["lstm", "gpt"])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if torch is None:
        raise SystemExit("bench_rnn needs torch as the reference")
    print(f"{'workload':<44}{'ember':>12}{'torch':>12}{'ratio':>8}")
    cases = {"lstm": ("LSTM LM step (V10k d200 L2 T35 B20, SGD)", bench_lstm),
             "gpt": ("tiny GPT step (L4 d128 T64 B16, AdamW)", bench_gpt)}
    for key in args.which:
        label, fn = cases[key]
        e, t = fn(args.steps)
        print(f"{label:<44}{e * 1e3:>10.1f}ms{t * 1e3:>10.1f}ms{e / t:>8.2f}")


if __name__ == "__main__":
    main()
