"""With EMBER_BLAS_SPIN=0, backend.cpu stops OpenBLAS's idle workers from busy-waiting (so
ember's own threads find the second core), without leaking the setting into the environment
of child processes; by default OpenBLAS keeps its own spin (the MLP step measured faster)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# A fresh interpreter: the setting is applied once per process, at the first BLAS lookup.
_PROBE = textwrap.dedent("""
    import os, time
    import numpy as np
    import ember
    from ember.backend import cpu
    libs = cpu._libs()
    if not libs or libs[0].internal_api != "openblas" or libs[0].threading_layer != "pthreads":
        print("SKIP")
        raise SystemExit
    cpu._set_blas_threads(2)
    a = np.ones((1024, 512), np.float32)
    b = np.ones((512, 512), np.float32)
    for _ in range(3):
        a @ b  # threaded: the workers would now spin for ~0.1 s
    t0 = os.times()
    time.sleep(0.25)
    t1 = os.times()
    busy = t1.user + t1.system - t0.user - t0.system
    print(busy, cpu.blas_spins(), "OPENBLAS_THREAD_TIMEOUT" in os.environ,
          float((a @ b)[0, 0]))
""")


def _probe(env_extra: dict) -> list:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env.update(env_extra)
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: BLAS runs no worker threads")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    if out == ["SKIP"]:
        pytest.skip("BLAS is not a pthreads OpenBLAS")
    return out


def test_openblas_workers_sleep_after_threaded_gemm_when_asked():
    busy, spins, leaked, value = _probe({"EMBER_BLAS_SPIN": "0"})
    assert spins == "False"
    assert leaked == "False"          # the variable was put back after OpenBLAS read it
    assert float(value) == 512.0      # GEMMs still right after the workers restarted
    # spinning workers burn ~0.1 s of CPU in this sleep; sleeping ones almost nothing
    assert float(busy) < 0.05, busy


def test_default_keeps_spinning_workers():
    busy, spins, leaked, value = _probe({})
    assert spins == "True"
    assert float(value) == 512.0
    assert float(busy) > 0.05, busy   # the probe can fail: OpenBLAS's default does spin
