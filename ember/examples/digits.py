"""Train a small CNN on scikit-learn's handwritten digits, end to end, with ember.

    python -m ember.examples.digits [--epochs 40] [--seed 0] [--device cpu|cuda]

Data (1,797 8x8 images that ship inside scikit-learn, no network) goes through a
torchvision-style Dataset and a 2-worker DataLoader; the model trains with AdamW and a
OneCycleLR schedule, stops early on validation loss, reports test accuracy and wall time,
saves a checkpoint with ``ember.save``, reloads it into a fresh model and checks the
predictions are identical, and (with matplotlib) plots the curves and a confusion matrix.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.utils.data import DataLoader, Dataset, random_split


class Digits(Dataset):
    """The UCI handwritten digits (via scikit-learn), in the style of ``torchvision.datasets``.

    Args:
        root: unused (the data ships inside scikit-learn); kept for the familiar signature.
        transform: applied to each image, a float32 tensor of shape (1, 8, 8) in [0, 1].
        target_transform: applied to each int label.

    Example::

        >>> ds = Digits()
        >>> img, label = ds[0]
        >>> img.shape, label
        (ember.Size([1, 8, 8]), 0)
    """

    classes = [str(i) for i in range(10)]

    def __init__(self, root: str | None = None, transform: Callable | None = None,
                 target_transform: Callable | None = None) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover - the demo extra installs it
            raise RuntimeError("the digits demo needs scikit-learn: pip install 'ember[demo]'") \
                from exc
        data = load_digits()
        self.data = (data.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
        self.targets = data.target.astype(np.int64)
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple:
        img = ember.from_numpy(self.data[index])
        target = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers, a 2x2 max-pool and a two-layer classifier head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.25),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        return self.classifier(self.features(x))


def evaluate(model: nn.Module, loader: DataLoader, device: Any) -> tuple[float, float, np.ndarray]:
    """(mean loss, accuracy, predictions) over a loader, in eval mode without grad."""
    model.eval()
    total, correct, loss_sum, preds = 0, 0, 0.0, []
    with ember.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            p = logits.argmax(1)
            correct += int((p == y).sum())
            total += len(y)
            preds.append(p.cpu().numpy())
    return loss_sum / total, correct / total, np.concatenate(preds)


def main(argv: list | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--out", default=".", help="folder for the checkpoint and the plot")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    start = time.perf_counter()
    ember.manual_seed(args.seed)
    device = ember.device(args.device)
    full = Digits()
    gen = ember.Generator().manual_seed(args.seed)
    train_set, val_set, test_set = random_split(full, [0.7, 0.15, 0.15], generator=gen)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              num_workers=args.workers, generator=gen,
                              persistent_workers=args.workers > 0)
    val_loader = DataLoader(val_set, batch_size=256)
    test_loader = DataLoader(test_set, batch_size=256)

    model = DigitsCNN().to(device)
    opt = ember.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    sched = ember.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs,
                                                steps_per_epoch=len(train_loader))
    history = {"train_loss": [], "val_loss": [], "val_acc": []}
    best_val, best_state, bad_epochs = float("inf"), None, 0
    bar = tqdm(range(args.epochs), desc="digits", disable=args.quiet, file=sys.stdout)
    for epoch in bar:
        model.train()
        running, seen = 0.0, 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss) * len(y)
            seen += len(y)
        val_loss, val_acc, _ = evaluate(model, val_loader, device)
        history["train_loss"].append(running / seen)
        history["val_loss"].append(val_loss)
        history["val_acc"].append(val_acc)
        bar.set_postfix(loss=f"{running / seen:.3f}", val_loss=f"{val_loss:.3f}",
                        val_acc=f"{val_acc:.3f}")
        if val_loss < best_val - 1e-4:
            best_val, best_state, bad_epochs = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            bad_epochs += 1
            if bad_epochs >= args.patience:
                bar.write(f"early stop at epoch {epoch + 1}: no val-loss improvement for "
                          f"{args.patience} epochs")
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)

    test_loss, test_acc, preds = evaluate(model, test_loader, device)
    wall = time.perf_counter() - start
    print(f"test accuracy: {test_acc * 100:.2f}%  (test loss {test_loss:.4f}, "
          f"{len(test_set)} images)")
    print(f"wall time: {wall:.1f} s")

    # Checkpoint: model + optimizer state, reloaded into a fresh model.
    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "digits_checkpoint.pt")
    ember.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                "test_acc": test_acc}, ckpt)
    state = ember.load(ckpt, map_location=device)
    fresh = DigitsCNN().to(device)
    fresh.load_state_dict(state["model"])
    opt2 = ember.optim.AdamW(fresh.parameters(), lr=args.lr)
    opt2.load_state_dict(state["optimizer"])
    _, acc2, preds2 = evaluate(fresh, test_loader, device)
    identical = bool(np.array_equal(preds, preds2))
    print(f"checkpoint: {ckpt} reloaded; identical predictions: {identical}")
    if not identical:
        raise RuntimeError("reloaded model's predictions differ from the trained model's")

    if not args.no_plot:
        _plot(history, test_set, preds, os.path.join(args.out, "digits_training.png"))
    return {"test_acc": test_acc, "wall_s": wall, "identical": identical, "history": history}


def _plot(history: dict, test_set: Any, preds: np.ndarray, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: skipping the plot (pip install 'ember[demo]')")
        return
    labels = np.array([test_set[i][1] for i in range(len(test_set))])
    cm = np.zeros((10, 10), dtype=int)
    for t, p in zip(labels, preds):
        cm[t, p] += 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.plot(history["train_loss"], label="train loss")
    ax1.plot(history["val_loss"], label="val loss")
    ax1b = ax1.twinx()
    ax1b.plot(history["val_acc"], color="tab:green", label="val accuracy")
    ax1.set_xlabel("epoch")
    ax1.set_title("training curves")
    ax1b.set_ylabel("val accuracy")
    lines = ax1.get_lines() + ax1b.get_lines()
    ax1.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    ax2.imshow(cm, cmap="Blues")
    for i in range(10):
        for j in range(10):
            ax2.text(j, i, cm[i, j], ha="center", va="center", fontsize=7)
    ax2.set_xlabel("predicted")
    ax2.set_ylabel("true")
    ax2.set_title("test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
