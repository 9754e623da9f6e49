"""CPU backend details: BLAS thread control for NumPy's GEMMs.

OpenBLAS's worker threads busy-wait. On a small machine that is also running DataLoader
workers (or anything else), a small GEMM on two spinning threads can take 50x longer than on
one (measured: a 64x400 @ 400x120 product, 46 ms with 2 threads under load vs 0.6 ms with 1).
Small products gain nothing from threads anyway, so ember runs GEMMs under ``SMALL_MACS``
multiply-adds on one thread.

Larger ones use the default count only while the machine has cores to spare: the master
thread waits for every worker, so a worker that has to share its core with another process
stalls each GEMM by a scheduler time slice (an MLP training step on a 2-core machine with
one core taken: 27 ms median with 2 BLAS threads, 7 ms with 1). Every ``_SAMPLE_S`` seconds
``gemm_threads`` reads the machine's busy time from ``/proc/stat``, subtracts this process's
own CPU time, and allows as many threads as there are cores the other processes leave free
(this process's main thread included). Where ``/proc/stat`` is missing, threads go by size
only. Switching is one ctypes call into the BLAS library, made only when the wanted count
changes.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

SMALL_MACS = 1 << 23  # ~8M multiply-adds: a few ms on one core
MKL_THREADED_MACS = 1 << 18  # MKL's GEMMs from this size on may use the spare cores
_SAMPLE_S = 0.1       # how often the load of other processes is re-read
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_CORES = os.cpu_count() or 1

_state: dict = {"libs": None, "current": None, "default": None, "spare": None,
                "next_sample": 0.0, "last": None, "spin": False, "mkl": None,
                "threaded_at": -1.0}  # (when MKL last had the spare cores: cpu_team)


def _libs() -> list:
    libs = _state["libs"]
    if libs is None:
        try:
            from threadpoolctl import ThreadpoolController
            ctl = ThreadpoolController().select(user_api="blas")
            # MKL, when ember's route loaded it first, takes its count from
            # backend/cpu_mkl (_state["mkl"]), not from the NumPy BLAS's switches
            libs = [lib for lib in ctl.lib_controllers
                    if getattr(lib, "internal_api", None) != "mkl"]
        except Exception:  # threadpoolctl missing or no BLAS found: leave threads alone
            libs = []
        _state["libs"] = libs
        if libs:
            _state["default"] = max(lib.num_threads for lib in libs)
            _state["current"] = _state["default"]
            _state["spin"] = not all(_short_spin(lib) for lib in libs)
    return libs


# OpenBLAS's pthreads workers busy-wait for 2^28 cycles (~0.1 s) after each threaded GEMM
# before they sleep (measured: 0.11 s of CPU time over a 0.2 s sleep). In a training step a
# threaded GEMM comes every few ms, so one core was never free for ember's own threads (the
# attention blocks, numba kernels), which had to run serially beside the spinner. 2^20
# cycles (~0.4 ms) keeps the workers awake across the back-to-back GEMMs of one linear's
# forward and backward and frees the core soon after. Measured with
# ``bench.gpt_pieces ab`` (two ember workers in alternating turns): tiny-GPT step with
# 2^20 against 2^4 (workers sleep at once) 0.97x, 0.99x, 0.98x; linear fwd+bwd pieces
# 0.87-0.94x (proj 1.06x); 2^4 against the default 2^28 1.00x on the step (the GEMMs lost
# to the wake-ups what the kernels gained on the second core); 2^22 0.94x then 1.08x,
# 2^24 1.10x, 2^18 1.02x against 2^4. Against OpenBLAS's own default (A/B on the four CPU
# training steps, bench.steps_paired's workers): tiny GPT 0.99x, LSTM 1.01x, LeNet-5 1.04x
# then 0.95x, but the MLP step 1.05x, 1.15x, 1.15x, 1.00x (its small GEMMs pay the
# wake-ups), so the short spin is opt-in: EMBER_BLAS_SPIN=0.
_SPIN_TIMEOUT = "20"


def _short_spin(lib: Any, force: bool = False) -> bool:
    """Set OpenBLAS's worker timeout to ``2^_SPIN_TIMEOUT`` cycles; True when its idle
    workers no longer spin for long.

    OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` once (``openblas_read_env``) and applies it
    when it starts its threads, so the variable is set, read, and put back (child processes
    see the user's environment), then the idle workers are stopped; the next threaded GEMM
    starts them again with the new timeout. Skipped where the user set the variable, where
    unless ``EMBER_BLAS_SPIN=0`` (the default keeps OpenBLAS's spin), and for other BLAS
    libraries or OpenMP builds (returns False: callers keep assuming spinning workers).
    ``force`` applies it without ``EMBER_BLAS_SPIN=0`` (:func:`quiet_blas_workers`)."""
    if getattr(lib, "internal_api", None) != "openblas" or \
            getattr(lib, "threading_layer", None) != "pthreads":
        return False
    user = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    if user is not None:  # the user's own choice stands: short spins count as no spinning
        try:
            return int(user) <= int(_SPIN_TIMEOUT)
        except ValueError:
            return False
    if not force and os.environ.get("EMBER_BLAS_SPIN", "1") != "0":
        return False
    dll = getattr(lib, "dynlib", None)
    read_env = getattr(dll, "openblas_read_env", None)
    shutdown = getattr(dll, "blas_thread_shutdown_", None)
    if read_env is None or shutdown is None:
        return False
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = _SPIN_TIMEOUT
    try:
        read_env()
    finally:
        del os.environ["OPENBLAS_THREAD_TIMEOUT"]
    shutdown()
    return True


def quiet_blas_workers() -> None:
    """Cut OpenBLAS's idle spinning to ~0.4 ms whatever ``EMBER_BLAS_SPIN`` says (a user's
    ``OPENBLAS_THREAD_TIMEOUT`` still stands): called when MKL starts taking the large GEMMs
    (``backend/cpu_mkl``). OpenBLAS then still runs the GEMMs of the ops that call NumPy
    directly (the LSTM's recurrence, attention's per-block products, convolution), and its
    workers, spinning ~0.1 s after each threaded one, took the second core from MKL's
    threads: the tiny GPT step went from 42 ms to 75-82 ms with MKL beside default-spinning
    OpenBLAS workers, and to 37.5-38.3 ms with short spins (one process, alternating)."""
    libs = _libs()
    if libs and _state["spin"]:
        _state["spin"] = not all(_short_spin(lib, force=True) for lib in libs)


def blas_spins() -> bool:
    """Whether the BLAS library's idle workers busy-wait for long (False once :func:`_libs`
    shortened OpenBLAS's spinning, or where no BLAS library was found)."""
    _libs()
    return bool(_state["spin"])


def _machine_sample(now: float) -> tuple | None:
    """(time, machine busy seconds, this process's CPU seconds), or None off Linux."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = (sum(ticks) - ticks[3] - ticks[4]) / _HZ
    t = os.times()
    return now, busy, t.user + t.system


def _spare_threads(now: float) -> int | None:
    """Cores that other processes left free over the last sample period (at least 1)."""
    if now < _state["next_sample"]:
        return _state["spare"]
    _state["next_sample"] = now + _SAMPLE_S
    cur = _machine_sample(now)
    last, _state["last"] = _state["last"], cur
    if cur is None or last is None or cur[0] <= last[0]:
        return _state["spare"]
    others = max(0.0, (cur[1] - last[1]) - (cur[2] - last[2])) / (cur[0] - last[0])
    _state["spare"] = max(1, int(_CORES - others + 0.5))
    return _state["spare"]


def gemm_threads(xp: Any, macs: int) -> None:
    """Choose the BLAS thread count for a GEMM of ``macs`` multiply-adds (CPU only): NumPy's
    BLAS gets one thread under ``SMALL_MACS``, MKL (``backend/cpu_mkl``) the spare cores from
    ``MKL_THREADED_MACS`` on (``macs`` 0: one thread for both)."""
    if xp.__name__ != "numpy":
        return
    libs = _libs()
    want = _state["default"] or _CORES
    if want > 1 and macs >= MKL_THREADED_MACS:
        now = time.monotonic()
        spare = _spare_threads(now)
        if spare is not None:
            want = min(want, spare)
        if want > 1:
            _state["threaded_at"] = now   # (backend/cpu_team: MKL's team is awake)
    else:
        want = 1
    # MKL's count. Unlike OpenBLAS's spinning pthreads, MKL runs a product too small to
    # split on the calling thread by itself, and its OpenMP workers wait ~1 ms
    # (cpu_mkl._BLOCKTIME_MS): with the spare cores it ran the MLP's 128x256x10 product in
    # 8.7 us against 10.2 on one thread, LeNet's 64x400x120 in 33 against 45 us
    _state["mkl"] = want
    if libs:
        _set_blas_threads(want if macs >= SMALL_MACS else 1)


def _set_blas_threads(want: int) -> None:
    if want != _state["current"]:
        for lib in _state["libs"] or ():
            lib.set_num_threads(want)
        _state["current"] = want


def set_default_threads(n: int) -> None:
    """The thread count large GEMMs use (``ember.set_num_threads``)."""
    _libs()
    _state["default"] = max(int(n), 1)
    _state["current"] = None


def _keep_freed_memory() -> None:
    """glibc: serve blocks up to 32 MB from the heap and keep freed memory for reuse.

    By default glibc mmaps every block above a threshold that only grows when a bigger mmapped
    block is freed, so arrays of one recurring size (a layer's activations, every step) can sit
    right at it: each is a fresh mapping whose pages fault in on first touch (LeNet training
    step on a shared 2-core machine: ~1200 page faults per step; median 15-21 ms with this,
    20-28 ms without). These are
    the values glibc's own heuristic reaches once a 32 MB block has been freed. Skipped off
    glibc, or with ``EMBER_MALLOC_TUNING=0``.
    """
    if os.environ.get("EMBER_MALLOC_TUNING", "1") == "0":
        return
    try:
        import ctypes
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 64 << 20)


_keep_freed_memory()


# ---------------------------------------------------------------------- row-parallel loops
# NumPy releases the GIL inside ufunc loops, so an exp-heavy pass over a large array (the
# log-softmax of an LM's (700, 10000) logits) runs on several cores from Python threads. Like
# the GEMMs it only uses cores that other processes leave free: a busy core would make the
# join wait a time slice.
_pool: dict = {"executor": None, "workers": 0}


def _reset_pool() -> None:  # a forked child has none of the parent's threads
    _pool["executor"] = None
    _pool["workers"] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool)


def row_threads(n: int, min_rows: int = 1) -> int:
    """How many threads :func:`parallel_rows` would use for ``n`` rows now."""
    _libs()
    threads = _state["default"] or 1
    if threads > 1:
        spare = _spare_threads(time.monotonic())
        threads = min(threads, spare) if spare is not None else threads
    return max(1, min(threads, n // max(min_rows, 1)))


def parallel_rows(n: int, fn: Any, min_rows: int = 1) -> None:
    """Call ``fn(lo, hi)`` over ``[0, n)`` in contiguous pieces of at least ``min_rows``
    rows, one piece per spare core (the calling thread takes one); ``fn`` must only touch
    its own rows.

    Pieces pay for threads only when they are long: each NumPy call in a piece takes the
    GIL back when it returns, so pieces made of many calls on ~100 KB arrays wait on each
    other (measured on two free cores: GELU over 32K-element chunks slower than serial,
    over 64K chunks ~1.4x faster; a (1024, 128) layer norm no faster)."""
    threads = row_threads(n, min_rows)
    if threads == 1 or threading.current_thread().name.startswith("ember-rows"):
        # (a piece that itself splits runs serially: a pool worker waiting on work queued
        # behind it would wait for ever)
        fn(0, n)
        return
    # the pieces' own BLAS calls (GEMVs, per-block products) run on one thread each: a
    # threaded BLAS called from several threads at once serializes them (and spins)
    _set_blas_threads(1)
    if _pool["workers"] < threads - 1:
        from concurrent.futures import ThreadPoolExecutor
        if _pool["executor"] is not None:
            _pool["executor"].shutdown(wait=False)
        _pool["executor"] = ThreadPoolExecutor(threads - 1, thread_name_prefix="ember-rows")
        _pool["workers"] = threads - 1
    bounds = [n * i // threads for i in range(threads + 1)]
    futures = [_pool["executor"].submit(fn, bounds[i], bounds[i + 1])
               for i in range(1, threads)]
    try:
        fn(bounds[0], bounds[1])
    finally:
        for f in futures:
            f.result()
