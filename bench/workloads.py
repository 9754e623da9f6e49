"""Benchmark workloads, written once against the torch API.

Each workload takes the framework module (``torch`` or ``ember``, bound as ``torch``) and
returns ``(step, n_inner)``: a zero-argument callable timed as one unit, and how many
operations one call performs (the reported time is per operation). Model definitions are
identical for both frameworks.
"""
from __future__ import annotations

from typing import Any, Callable

WORKLOADS: dict[str, Callable[[Any], tuple]] = {}


def workload(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        WORKLOADS[name] = fn
        return fn
    return deco


@workload("a + b (16 floats)")
def add_small(torch: Any) -> tuple:
    a = torch.randn(16)
    b = torch.randn(16)

    def step() -> None:
        for _ in range(1000):
            a + b
    return step, 1000


@workload("small forward+backward")
def small_fwd_bwd(torch: Any) -> tuple:
    a = torch.randn(16, requires_grad=True)
    b = torch.randn(16, requires_grad=True)

    def step() -> None:
        for _ in range(100):
            y = (a * b + a).sum()
            y.backward()
    return step, 100


@workload("matmul 1024x1024 f32")
def matmul(torch: Any) -> tuple:
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)

    def step() -> None:
        a @ b
    return step, 1


def _mlp_step(torch: Any, sizes: tuple, batch: int, make_opt: Callable) -> tuple:
    nn = torch.nn
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    opt = make_opt(torch, model)
    x = torch.randn(batch, sizes[0])
    y = torch.randint(0, sizes[-1], (batch,))
    loss_fn = nn.CrossEntropyLoss()
    state = {}

    def step() -> None:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        state["loss"] = loss
    return step, 1, state


@workload("MLP 784-256-256-10 SGD step")
def mlp(torch: Any) -> tuple:
    return _mlp_step(torch, (784, 256, 256, 10), 128,
                     lambda t, m: t.optim.SGD(m.parameters(), lr=0.01, momentum=0.9))


@workload("LeNet-5 Adam step")
def lenet(torch: Any) -> tuple:
    nn = torch.nn

    class LeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(1, 6, 5, padding=2)
            self.c2 = nn.Conv2d(6, 16, 5)
            self.f1 = nn.Linear(16 * 5 * 5, 120)
            self.f2 = nn.Linear(120, 84)
            self.f3 = nn.Linear(84, 10)

        def forward(self, x: Any) -> Any:
            x = torch.max_pool2d(torch.relu(self.c1(x)), 2) if hasattr(torch, "max_pool2d") else \
                nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
            x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
            x = x.flatten(1)
            return self.f3(torch.relu(self.f2(torch.relu(self.f1(x)))))

    model = LeNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    state = {}

    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        state["loss"] = loss
    return step, 1, state


@workload("LSTM LM step (2x200, vocab 10k, 35x20)")
def lstm_lm(torch: Any) -> tuple:
    nn = torch.nn

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10000, 200)
            self.rnn = nn.LSTM(200, 200, num_layers=2)
            self.out = nn.Linear(200, 10000)

        def forward(self, x: Any) -> Any:
            h, _ = self.rnn(self.emb(x))
            return self.out(h)

    model = LM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randint(0, 10000, (35, 20))
    y = torch.randint(0, 10000, (35, 20))
    state = {}

    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 10000), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        state["loss"] = loss
    return step, 1, state


@workload("tiny GPT step (4x128, T64, B16) AdamW")
def tiny_gpt(torch: Any) -> tuple:
    nn = torch.nn
    F = nn.functional
    d, T, B, V, L, H = 128, 64, 16, 256, 4, 4

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.fc = nn.Linear(d, 4 * d)
            self.fc2 = nn.Linear(4 * d, d)

        def forward(self, x: Any) -> Any:
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
            q = q.view(B, T, H, d // H).transpose(1, 2)
            k = k.view(B, T, H, d // H).transpose(1, 2)
            v = v.view(B, T, H, d // H).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
            return x + self.fc2(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(V, d)
            self.pos = nn.Embedding(T, d)
            self.blocks = nn.ModuleList([Block() for _ in range(L)])
            self.ln = nn.LayerNorm(d)
            self.head = nn.Linear(d, V, bias=False)

        def forward(self, idx: Any) -> Any:
            x = self.tok(idx) + self.pos(torch.arange(T))
            for b in self.blocks:
                x = b(x)
            return self.head(self.ln(x))

    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    x = torch.randint(0, V, (B, T))
    y = torch.randint(0, V, (B, T))
    state = {}

    def step() -> None:
        opt.zero_grad()
        loss = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
        loss.backward()
        opt.step()
        state["loss"] = loss
    return step, 1, state


@workload("DataLoader epoch (10k 3x32x32, crop+flip+norm, 4 workers, B128)")
def dataloader(torch: Any) -> tuple:
    import numpy as np

    from bench.bench_data import augment

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10_000, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=10_000)

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> tuple:
            return augment(images[i]), int(labels[i])

    loader = torch.utils.data.DataLoader(Images(), batch_size=128, shuffle=True, num_workers=4)

    def step() -> None:
        for _x, _y in loader:
            pass
    return step, 1
