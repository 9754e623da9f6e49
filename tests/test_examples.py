"""Smoke tests of the runnable examples, with tiny settings (seconds each)."""
from __future__ import annotations

import pytest

import ember


def test_digits_demo_trains_checkpoints_and_plots(tmp_path):
    pytest.importorskip("sklearn")
    from ember.examples import digits
    res = digits.main(["--epochs", "2", "--workers", "2", "--out", str(tmp_path), "--quiet"])
    assert res["identical"]
    assert res["test_acc"] > 0.5          # two epochs already learn most digits
    assert (tmp_path / "digits_checkpoint.pt").exists()
    state = ember.load(tmp_path / "digits_checkpoint.pt")
    assert set(state) == {"model", "optimizer", "epoch", "test_acc"}
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "digits_training.png").stat().st_size > 1000
    except ImportError:
        pass


def test_digits_dataset_is_torchvision_style():
    pytest.importorskip("sklearn")
    from ember.examples.digits import Digits
    ds = Digits(transform=lambda x: x * 2, target_transform=lambda y: y + 100)
    img, label = ds[5]
    assert len(ds) == 1797 and tuple(img.shape) == (1, 8, 8) and img.dtype is ember.float32
    assert 100 <= label < 110 and float(img.max()) <= 2.0


def test_regression_example_fits_sin():
    from ember.examples import regression
    res = regression.main(["--steps", "400"])
    assert res["loss"] < 0.01
    c = res["coeffs"]
    assert abs(c[1] - 0.857) < 0.05 and abs(c[3] + 0.093) < 0.01


def test_charlm_example_learns_and_samples(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcabcabcabd " * 200)
    from ember.examples import charlm
    res = charlm.main(["--text", str(text), "--steps", "60", "--layers", "1", "--d-model", "32",
                       "--block", "16", "--sample", "20"])
    assert res["train_loss"] < 1.0   # uniform over 5 characters would be 1.6
    assert len(res["sample"]) == 24
