"""A character-level Transformer language model, trained with ember.

    python -m ember.examples.charlm [--text FILE] [--steps 300] [--device cpu|cuda]

By default it trains on ember's own Python source files (no download); ``--text FILE``
trains on any text instead. It prints the loss as it trains and then samples text.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import time
from typing import Any

import ember
import ember.nn as nn
import ember.nn.functional as F


def load_text(path: str | None) -> str:
    """The training text: a file, or ember's own source code."""
    if path:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = []
    for name in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        with open(name, encoding="utf-8") as f:
            parts.append(f.read())
    return "\n".join(parts)


class Block(nn.Module):
    """Pre-norm Transformer block: causal self-attention and a GELU MLP, both residual."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        shape = (b, t, self.heads, d // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class CharTransformer(nn.Module):
    """Token + position embeddings, ``layers`` blocks, a final norm and a tied-size head."""

    def __init__(self, vocab: int, block: int, d: int = 128, heads: int = 4, layers: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.block = block
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(block, d)
        self.blocks = nn.ModuleList([Block(d, heads, dropout) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: ember.Tensor) -> ember.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(ember.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))

    @ember.no_grad()
    def generate(self, idx: ember.Tensor, n: int, temperature: float = 0.8) -> ember.Tensor:
        """Append ``n`` sampled characters to ``idx`` (batch, time)."""
        for _ in range(n):
            logits = self(idx[:, -self.block:])[:, -1] / temperature
            nxt = ember.multinomial(F.softmax(logits, dim=-1), 1)
            idx = ember.cat([idx, nxt], dim=1)
        return idx


def main(argv: list | None = None) -> dict:
    parser = argparse.ArgumentParser(description="character-level Transformer LM")
    parser.add_argument("--text", default=None, help="train on this file (default: ember's source)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--sample", type=int, default=300, help="characters to generate")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    ember.manual_seed(args.seed)
    device = ember.device(args.device)
    text = load_text(args.text)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = ember.tensor([stoi[c] for c in text], dtype=ember.int64)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    print(f"text: {len(text):,} characters, vocabulary {len(chars)}")

    def batch(src: ember.Tensor) -> tuple:
        ix = ember.randint(0, len(src) - args.block - 1, (args.batch_size,))
        offs = ix[:, None] + ember.arange(args.block)[None]
        return src[offs].to(device), src[offs + 1].to(device)

    model = CharTransformer(len(chars), args.block, args.d_model, args.heads, args.layers).to(device)
    opt = ember.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = ember.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.steps, 1))
    start = time.perf_counter()
    loss = ember.tensor(math.log(len(chars)))
    for step in range(args.steps):
        x, y = batch(train)
        loss = F.cross_entropy(model(x).reshape(-1, len(chars)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(args.steps // 10, 1) == 0 or step == args.steps - 1:
            print(f"step {step:5d}  train loss {loss.item():.3f}  "
                  f"({time.perf_counter() - start:.1f} s)")
    model.eval()
    with ember.no_grad():
        vx, vy = batch(val)
        val_loss = F.cross_entropy(model(vx).reshape(-1, len(chars)), vy.reshape(-1)).item()
    print(f"validation loss {val_loss:.3f} (uniform guess: {math.log(len(chars)):.3f})")
    sample = ""
    if args.sample:
        seed = ember.tensor([[stoi.get(c, 0) for c in "def "]], device=device)
        out = model.generate(seed, args.sample)[0].tolist()
        sample = "".join(chars[i] for i in out)
        print("--- sample ---")
        print(sample)
    return {"train_loss": float(loss), "val_loss": val_loss, "sample": sample}


if __name__ == "__main__":
    main()
