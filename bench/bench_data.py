"""DataLoader throughput: ember vs torch on a synthetic CIFAR-like image dataset.

10,000 random 3x32x32 uint8 images with a random-crop (pad 4) + horizontal-flip + normalize
transform written once in NumPy and shared by both frameworks; shuffled batches of 128 from 4
worker processes. Each framework's epoch time (worker start-up included) is the median of
several epochs after a warm-up; prints images/s and the ember/torch time ratio (lower is
better for ember). Run: ``.venv/bin/python bench/bench_data.py [--workers 4] [--epochs 3]``.
Not a test.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import ember
import ember.utils.data as edata

try:
    import torch
    import torch.utils.data as tdata
except ImportError:  # pragma: no cover
    torch = None

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32).reshape(3, 1, 1) * 255
STD = np.array([0.2470, 0.2435, 0.2616], np.float32).reshape(3, 1, 1) * 255


def augment(img: np.ndarray) -> np.ndarray:
    """Random 32x32 crop of the 4-pixel zero-padded image, random flip, per-channel normalize."""
    padded = np.pad(img, ((0, 0), (4, 4), (4, 4)))
    y, x = np.random.randint(0, 9, size=2)
    out = padded[:, y:y + 32, x:x + 32]
    if np.random.rand() < 0.5:
        out = out[:, :, ::-1]
    return ((out.astype(np.float32) - MEAN) / STD).copy()


def make_dataset(base: type, images: np.ndarray, labels: np.ndarray, transform: bool):
    class Images(base):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            img = augment(images[i]) if transform else images[i]
            return img, int(labels[i])
    return Images()


def epoch_time(loader) -> float:
    t0 = time.perf_counter()
    n = 0
    for x, y in loader:
        n += int(x.shape[0])
    elapsed = time.perf_counter() - t0
    assert n == len(loader.dataset)
    return elapsed


def bench(name: str, loader, epochs: int) -> float:
    epoch_time(loader)  # warm-up: page in the dataset, import paths, first forks
    times = [epoch_time(loader) for _ in range(epochs)]
    med = statistics.median(times)
    print(f"{name:6s} epoch {med * 1e3:8.1f} ms   {len(loader.dataset) / med:9.0f} images/s")
    return med


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-transform", action="store_true",
                        help="raw uint8 images: measures the loader's own overhead")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=args.n)
    kw = dict(batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    transform = not args.no_transform
    print(f"{args.n} images 3x32x32, batch {args.batch_size}, {args.workers} workers, "
          f"{'crop+flip+normalize in NumPy' if transform else 'no transform'}")
    ember.manual_seed(0)
    e = bench("ember", edata.DataLoader(make_dataset(edata.Dataset, images, labels, transform), **kw),
              args.epochs)
    if torch is None:
        print("torch not installed: no ratio")
        return
    torch.manual_seed(0)
    t = bench("torch", tdata.DataLoader(make_dataset(tdata.Dataset, images, labels, transform), **kw),
              args.epochs)
    print(f"ember/torch time ratio: {e / t:.2f}")


if __name__ == "__main__":
    main()
