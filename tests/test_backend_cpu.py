"""ember.backend.cpu: BLAS thread choice by GEMM size and by the load of other processes,
and the row-parallel helper."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from ember.backend import cpu


@pytest.fixture
def fresh_state(monkeypatch):
    """Run with a private copy of the module state, restored afterwards."""
    real = cpu._state
    monkeypatch.setattr(cpu, "_state", dict(real))
    cpu._state.update(next_sample=0.0, last=None, spare=None)
    yield cpu._state
    real["current"] = None  # the BLAS count may have changed: the next GEMM re-applies its own


def _fake_samples(monkeypatch, samples):
    it = iter(samples)
    monkeypatch.setattr(cpu, "_machine_sample", lambda now: next(it))


def test_spare_threads_follow_other_processes(fresh_state, monkeypatch):
    monkeypatch.setattr(cpu, "_CORES", 2)
    # (time, machine busy s, own CPU s): others use 2 cores, then only our own 1 core is busy
    _fake_samples(monkeypatch, [(0.0, 0.0, 0.0), (1.0, 2.0, 0.0), (2.0, 3.0, 1.0)])
    assert cpu._spare_threads(0.0) is None          # one sample: no rate yet
    assert cpu._spare_threads(1.0) == 1             # both cores taken by others
    assert cpu._spare_threads(1.05) == 1            # cached inside the sample period
    assert cpu._spare_threads(2.0) == 2             # busy time was all ours


def test_gemm_threads_small_products_use_one_thread(fresh_state, monkeypatch):
    if not cpu._libs():
        pytest.skip("no BLAS library found by threadpoolctl")
    cpu.gemm_threads(np, 1000)
    assert cpu._state["current"] == 1
    monkeypatch.setattr(cpu, "_spare_threads", lambda now: 1)
    cpu.gemm_threads(np, 1 << 30)                   # large, but no spare core
    assert cpu._state["current"] == 1


@pytest.mark.parametrize("spare", [1, 2, 3])
def test_parallel_rows_covers_each_row_once(monkeypatch, spare):
    monkeypatch.setattr(cpu, "_spare_threads", lambda now: spare)
    monkeypatch.setitem(cpu._state, "default", 4)
    seen = np.zeros(103, np.int64)
    lock = threading.Lock()

    def fn(lo, hi):
        with lock:
            seen[lo:hi] += 1

    cpu.parallel_rows(103, fn, min_rows=10)
    assert (seen == 1).all()


def test_parallel_rows_propagates_errors(monkeypatch):
    monkeypatch.setattr(cpu, "_spare_threads", lambda now: 2)
    monkeypatch.setitem(cpu._state, "default", 2)

    def fn(lo, hi):
        if lo > 0:
            raise ValueError("worker failed")

    with pytest.raises(ValueError, match="worker failed"):
        cpu.parallel_rows(10, fn)
