"""Saving to a path is atomic: a crash at any point leaves the old or the new checkpoint."""
from __future__ import annotations

import os
import random
import signal
import stat
import sys
import time

import numpy as np
import pytest

import ember
from ember.serialization import load, save

N = 1 << 18  # 1 MiB of float32: a save takes long enough to be killed in the middle


def _checkpoint(tag: int) -> dict:
    return {"tag": tag, "w": ember.full((N,), float(tag)), "b": ember.arange(tag % 7 + 1)}


def _check(path: str) -> int:
    ckpt = load(path)
    tag = ckpt["tag"]
    w = ckpt["w"].numpy()
    assert w.shape == (N,) and (w == float(tag)).all(), f"torn checkpoint for tag {tag}"
    assert ckpt["b"].tolist() == list(range(tag % 7 + 1))
    return tag


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process.*fork")
def test_sigkill_during_save_leaves_old_or_new(tmp_path):
    # fork() is cheap enough for dozens of kills; a child that deadlocked after fork (a lock
    # held by another thread of the parent) is killed like any other and only costs coverage.
    target = str(tmp_path / "ckpt.pt")
    save(_checkpoint(0), target)
    rng = random.Random(1234)
    last = 0
    kills = 0
    deadline = time.monotonic() + 8.0
    while kills < 40 and time.monotonic() < deadline:
        start = last + 1
        pid = os.fork()
        if pid == 0:  # child: save newer and newer checkpoints until killed
            try:
                tag = start
                while True:
                    save(_checkpoint(tag), target)
                    tag += 1
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.06))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
        tag = _check(target)  # loadable, consistent, and never older than before
        assert tag == 0 or tag >= last
        last = max(last, tag)
    assert kills >= 15
    assert last > 0, "no save ever completed: the test did not exercise renames"
    # Only the target and temporaries of killed writers are in the directory.
    for name in os.listdir(tmp_path):
        assert name == "ckpt.pt" or (name.startswith(".ckpt.pt.") and name.endswith(".tmp"))


def test_failed_save_keeps_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "ckpt.pt"
    save(_checkpoint(3), target)
    before = target.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save({"x": ember.ones(2), "bad": Unpicklable()}, target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and symlinks")
def test_permissions_and_symlinks(tmp_path):
    target = tmp_path / "ckpt.pt"
    save(_checkpoint(1), target)
    os.chmod(target, 0o640)
    save(_checkpoint(2), target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    link = tmp_path / "latest.pt"
    os.symlink(target, link)
    save(_checkpoint(5), link)
    assert os.path.islink(link) and _check(str(target)) == 5


def test_file_object_is_written_in_place(tmp_path):
    path = tmp_path / "f.pt"
    with open(path, "wb") as fh:
        fh.write(b"")
        save({"x": ember.ones(3)}, fh)
    assert np.array_equal(load(path)["x"].numpy(), np.ones(3, np.float32))
