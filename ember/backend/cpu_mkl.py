"""Optional Intel oneMKL route for the CPU's float32/float64 GEMMs (``pip install ember[cpu]``).

NumPy's OpenBLAS reaches ~75% of this AVX-512 host's peak on the GEMMs of ember's training
steps, torch's MKL ~88%. When the ``mkl`` wheel is installed (``libmkl_rt.so.*`` under
``sys.prefix/lib`` or among the package's files), the CPU linear layer and matmul call
``cblas_sgemm`` / ``cblas_dgemm`` (and ``cblas_?gemm_batch_strided`` for equal batches),
through numba-compiled callers where numba is installed (``backend/cpu_mkl_jit``: ~1 us a
call), else through ctypes (~7 us). :func:`matmul` returns None where NumPy should run
instead: other dtypes, zero sizes, products too small to pay for the call (``MIN_MACS``),
operands whose strides cblas cannot express (negative or element-strided rows and
columns), dimensions beyond MKL's 32-bit integers. Momentum SGD of large parameters runs
as MKL's threaded ``?axpby`` passes where a core is spare (:func:`sgd_momentum`).
``EMBER_MKL=0`` (read on every call) switches the route off; the library is loaded on the
first large GEMM, never by ``import ember``.

Threads: MKL gets the count ember chose for it (``backend.cpu.gemm_threads``: the cores
other processes leave free from 256K multiply-adds on, one thread below; MKL itself keeps
a product too small to split on one thread), set only when it changes. MKL runs on Intel's OpenMP (``libiomp5``; GNU OpenMP where a library such as
torch already loaded it, see :func:`_threading_layer`). Intel's idle workers busy-wait for
``KMP_BLOCKTIME`` (200 ms by default) after each threaded region: on a 2-core machine that
takes the core from ember's own row threads and numba kernels, as OpenBLAS's spinning
workers did, so ember sets it to ``_BLOCKTIME_MS`` unless the user set ``KMP_BLOCKTIME``
(tiny GPT step, one process alternating with the NumPy path at 41.6-43.5 ms: 0 ms 42.2-43.6,
1 ms 37.7-39.8, 5 ms 38.5-41.8, 200 ms 37.9-44.8; GNU OpenMP's default spin 46.8-48.2).
OpenBLAS stays loaded for everything else (GEMVs, convolution's ``np.dot``, the LSTM's
recurrence), and its workers, which spin ~0.1 s after each threaded GEMM by default, get
ember's short spin once MKL loads (``backend.cpu.quiet_blas_workers``).
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from typing import Any

import numpy as np

from ember.backend.cpu import _state as _cpu_state, gemm_threads

# Products under this many multiply-adds stay with NumPy (and those with fewer than MIN_K
# terms per sum under MIN_MACS_CTYPES). Through the compiled caller (backend/cpu_mkl_jit,
# ~1 us a call) MKL on the spare cores took 128x256x10 (an MLP's last layer) in 8.7 us
# against NumPy's 13.9 and matched it at 64x64x64 (262K); NumPy stayed faster below that
# and at 128x10x256 and 128x4x512 (5.8 against 8.7 us, 8.7 against 12.2), but not at
# 512x10x512 (71 against 45 us) or 700x1x1024 (757 against 131). Through ctypes alone
# (~7 us a call) every product needs MIN_MACS_CTYPES.
MIN_MACS = 1 << 18
MIN_MACS_CTYPES = 1 << 19
MIN_K = 16
# Idle OpenMP workers wait this long for the next threaded region before they sleep.
_BLOCKTIME_MS = 1
_INT_MAX = (1 << 31) - 1   # MKL_INT of the LP64 interface mkl_rt uses by default

_ROW, _NO, _TRANS = 101, 111, 112
_lock = threading.Lock()
_mkl: dict = {"lib": None, "tried": False, "threads": None, "path": None, "layer": None,
              "jit": None, "sgemm": 0, "dgemm": 0, "saxpby": 0, "daxpby": 0}
_ONE32 = np.float32(1)
_ZERO32 = np.float32(0)


def enabled() -> bool:
    """Whether the route may be used now (``EMBER_MKL=0`` turns it off at any time)."""
    return _ENV.get(_ENV_KEY, _ON) != _OFF


# ``os.environ``'s own mapping (bytes on POSIX, upper-case str on Windows), which every
# ``os.environ`` write updates: a lookup there costs ~0.05 us against ~0.6 us through
# ``os.environ.get`` (key encoding, value decoding), and runs ten times a training step
_ENV = getattr(os.environ, "_data", os.environ)
_ENV_KEY: Any = os.environ.encodekey("EMBER_MKL") if _ENV is not os.environ else "EMBER_MKL"
_ON: Any = os.environ.encodevalue("1") if _ENV is not os.environ else "1"
_OFF: Any = os.environ.encodevalue("0") if _ENV is not os.environ else "0"


def _find() -> str | None:
    """The path of ``libmkl_rt.so.*`` from the ``mkl`` wheel, or None."""
    hits = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    if hits:
        return hits[-1]
    try:
        from importlib import metadata
        files = metadata.files("mkl") or ()
    except Exception:  # not installed
        return None
    for f in files:
        if os.path.basename(str(f)).startswith("libmkl_rt.so"):
            return str(f.locate())
    return None


def _load() -> Any:
    """The loaded ``libmkl_rt`` with its GEMM functions typed, or None (loaded once)."""
    if _mkl["tried"]:
        return _mkl["lib"]
    with _lock:
        if _mkl["tried"]:
            return _mkl["lib"]
        lib = None
        path = _find()
        if path is not None:
            try:
                lib = _open(path)
            except (OSError, AttributeError):
                lib = None
        _mkl["lib"], _mkl["path"] = lib, path if lib is not None else None
        if lib is not None:
            from ember.backend.cpu import quiet_blas_workers
            quiet_blas_workers()
            _bind_jit(lib)
        _mkl["tried"] = True
    return lib


def _bind_jit(lib: Any) -> None:
    """The numba callers (``backend/cpu_mkl_jit``) and the cblas addresses they call, when
    numba is there (else the ctypes calls stay)."""
    try:
        from ember.backend import cpu_mkl_jit
        jit = cpu_mkl_jit.kernels()
    except Exception:  # numba missing or broken: the ctypes path works alone
        jit = None
    if jit is None:
        return
    for name in ("sgemm", "dgemm", "saxpby", "daxpby"):
        _mkl[name] = ctypes.cast(getattr(lib, "cblas_" + name), ctypes.c_void_p).value
    _mkl["jit"] = jit


def _open(path: str) -> Any:
    lib = ctypes.CDLL(path)
    layer = _threading_layer(path)
    lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
    lib.MKL_Set_Threading_Layer(layer)   # before any other MKL call
    ci, vp = ctypes.c_int, ctypes.c_void_p
    for name, real in (("cblas_sgemm", ctypes.c_float), ("cblas_dgemm", ctypes.c_double)):
        fn = getattr(lib, name)
        fn.argtypes = [ci, ci, ci, ci, ci, ci, real, vp, ci, vp, ci, real, vp, ci]
        fn.restype = None
    for name, real in (("cblas_sgemm_batch_strided", ctypes.c_float),
                       ("cblas_dgemm_batch_strided", ctypes.c_double)):
        fn = getattr(lib, name)
        fn.argtypes = [ci, ci, ci, ci, ci, ci, real, vp, ci, ci, vp, ci, ci, real, vp, ci,
                       ci, ci]
        fn.restype = None
    lib.MKL_Set_Num_Threads.argtypes = [ci]
    lib.MKL_Set_Num_Threads.restype = None
    if layer == _INTEL and "KMP_BLOCKTIME" not in os.environ:
        _set_blocktime(path)
    _mkl["layer"] = layer
    return lib


_INTEL, _SEQUENTIAL, _GNU = 0, 1, 3


def _threading_layer(mkl_path: str) -> int:
    """MKL's OpenMP: Intel's (``libiomp5``, whose idle workers' busy-wait ember can shorten,
    and which copes with fork), unless GNU OpenMP is already in the process (torch loads
    it): MKL's Intel-threaded code then bound some OpenMP calls to ``libgomp`` and gave
    wrong products on two threads (a (1, 2048) @ (2048, 512) GEMV came out doubled), so it
    runs on that ``libgomp`` instead. One thread where neither can be loaded."""
    try:
        with open("/proc/self/maps") as f:
            gomp = "libgomp" in f.read()
    except OSError:
        gomp = False
    if gomp:
        try:
            ctypes.CDLL("libgomp.so.1")
            return _GNU
        except OSError:
            return _SEQUENTIAL
    if os.path.exists(os.path.join(os.path.dirname(mkl_path), "libiomp5.so")):
        return _INTEL
    return _SEQUENTIAL


def _set_blocktime(mkl_path: str) -> None:
    """Shorten the OpenMP workers' busy-wait (``kmp_set_blocktime``, which applies to the
    teams of the calling thread: ember's GEMMs run on the main thread)."""
    try:
        iomp = ctypes.CDLL(os.path.join(os.path.dirname(mkl_path), "libiomp5.so"))
        iomp.kmp_set_blocktime.argtypes = [ctypes.c_int]
        iomp.kmp_set_blocktime(_BLOCKTIME_MS)
    except (OSError, AttributeError):
        pass


def available() -> bool:
    """Whether the route is on and MKL could be loaded (loads it)."""
    return enabled() and _load() is not None


def _threads(lib: Any) -> None:
    """Give MKL the thread count ember chose for this product (``gemm_threads``)."""
    want = _cpu_state["mkl"]
    if want is not None and want != _mkl["threads"]:
        lib.MKL_Set_Num_Threads(want)
        _mkl["threads"] = want


def _layout(a: np.ndarray) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) reading the 2-D array ``a`` as a row-major
    matrix, or None where cblas cannot (negative, unaligned or element-strided steps)."""
    rows, cols = a.shape
    item = a.itemsize
    s0, s1 = a.strides
    if s0 % item or s1 % item:
        return None
    s0 //= item
    s1 //= item
    if cols == 1:
        s1 = 1   # a single column or row: its step is never taken
    if rows == 1:
        s0 = max(cols, 1)
    if s1 == 1 and s0 >= max(cols, 1):
        return _NO, s0
    if s0 == 1 and s1 >= max(rows, 1):
        return _TRANS, s1
    return None


def _fits(*dims: int) -> bool:
    for d in dims:
        if d > _INT_MAX:
            return False
    return True


def mm(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``a @ b`` for 2-D float32/float64 arrays of one dtype through MKL, or None where
    NumPy should compute it."""
    m, k = a.shape
    n = b.shape[1]
    macs = m * n * k
    if macs < MIN_MACS or (k < MIN_K and macs < MIN_MACS_CTYPES) or macs == 0 or \
            not enabled():
        return None
    dt = a.dtype
    if dt != b.dtype or (dt != np.float32 and dt != np.float64):
        return None
    lib = _mkl["lib"] if _mkl["tried"] else _load()
    if lib is None or m > _INT_MAX or n > _INT_MAX or k > _INT_MAX:
        return None
    jit = _mkl["jit"]
    if jit is not None:
        # the compiled caller reads strides and pointers itself (~1 us against ~7 us here)
        out = np.empty((m, n), dt)
        _threads(lib)
        if dt == np.float32:
            ok = jit.gemm(_mkl["sgemm"], a, b, out, _ONE32, _ZERO32)
        else:
            ok = jit.gemm(_mkl["dgemm"], a, b, out, 1.0, 0.0)
        return out if ok else None
    la = _layout(a)
    lb = _layout(b)
    if macs < MIN_MACS_CTYPES or la is None or lb is None or not _fits(la[1], lb[1]):
        return None
    out = np.empty((m, n), dt)
    _threads(lib)
    fn = lib.cblas_sgemm if dt == np.float32 else lib.cblas_dgemm
    fn(_ROW, la[0], lb[0], m, n, k, 1.0, a.ctypes.data, la[1], b.ctypes.data, lb[1], 0.0,
       out.ctypes.data, n)
    return out


def bmm(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``a @ b`` for 3-D float32/float64 arrays with one batch size through MKL's strided
    batch GEMM, or None where NumPy should compute it."""
    batch, m, k = a.shape
    n = b.shape[2]
    if batch * m * n * k < MIN_MACS_CTYPES or b.shape[0] != batch or not enabled():
        return None
    dt = a.dtype
    if dt != b.dtype or (dt != np.float32 and dt != np.float64) or m == 0 or n == 0 or \
            k == 0:
        return None
    lib = _mkl["lib"] if _mkl["tried"] else _load()
    if lib is None:
        return None
    item = dt.itemsize
    sa, sb = a.strides[0], b.strides[0]
    if sa <= 0 or sb <= 0 or sa % item or sb % item:   # (an expanded batch: NumPy)
        return None
    la = _layout(a[0])
    lb = _layout(b[0])
    if la is None or lb is None or not _fits(batch, m, n, k, la[1], lb[1], sa // item,
                                             sb // item, m * n):
        return None
    out = np.empty((batch, m, n), dt)
    _threads(lib)
    fn = lib.cblas_sgemm_batch_strided if dt == np.float32 else lib.cblas_dgemm_batch_strided
    fn(_ROW, la[0], lb[0], m, n, k, 1.0, a.ctypes.data, la[1], sa // item, b.ctypes.data,
       lb[1], sb // item, 0.0, out.ctypes.data, n, m * n, batch)
    return out


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """NumPy's ``matmul(a, b)`` for 2-D @ 2-D and equal-batch 3-D @ 3-D float operands
    through MKL, or None for NumPy to compute (any other case)."""
    if a.ndim == 2 and b.ndim == 2:
        return mm(a, b)
    if a.ndim == 3 and b.ndim == 3:
        return bmm(a, b)
    return None


# SGD steps of parameters under this many elements stay on the one-pass numba kernel
SGD_MIN = 1 << 15


def _axpby_route(param: np.ndarray) -> Any:
    """``(?axpby, scalar type)`` for an SGD step on ``param`` by MKL's passes, else None:
    the route off, MKL or numba missing, under ``SGD_MIN`` elements, or no core spare."""
    n = param.size
    if n < SGD_MIN or n > _INT_MAX or not enabled():
        return None
    lib = _mkl["lib"] if _mkl["tried"] else _load()
    if lib is None or _mkl["jit"] is None:
        return None
    gemm_threads(np, 1 << 30)
    if _cpu_state["mkl"] < 2:
        return None
    _threads(lib)
    if param.dtype == np.float32:
        return _mkl["saxpby"], np.float32
    return _mkl["daxpby"], float


def sgd_plain(param: np.ndarray, grad: np.ndarray, lr: float, g_scale: float) -> bool:
    """A momentum-free SGD step ``param += -lr * g_scale * grad`` in place on contiguous
    1-D float32/float64 arrays of one dtype, as one MKL ``?axpby`` pass over the spare
    cores (NumPy's ``param -= lr * grad`` is two passes and a temporary on one core: an
    LSTM language model's step took 2.45 ms of it against torch's 0.73); False (nothing
    done) where :func:`sgd_momentum` would decline too."""
    route = _axpby_route(param)
    if route is None:
        return False
    f, c = route
    _mkl["jit"].axpby(f, c(-lr * g_scale), grad, c(1), param)
    return True


def sgd_momentum(param: np.ndarray, grad: np.ndarray, buf: np.ndarray, lr: float,
                 momentum: float, g_scale: float, decay: float) -> bool:
    """One momentum-SGD step ``buf = momentum * buf + g_scale * grad + decay * param;
    param -= lr * buf`` in place on contiguous 1-D float32/float64 arrays of one dtype, as
    two or three MKL ``?axpby`` passes spread over the spare cores; False (nothing done)
    where the route is off, MKL or numba missing, the arrays under ``SGD_MIN`` elements, or
    no core spare (ember's numba kernel makes one pass on one core, faster than these
    passes there).

    torch spreads its SGD's passes over its threads; on one core the step of an MLP's
    784x256 weight took 78 us inside the training step against 22-35 us here (the
    gradient, written by both cores' GEMM threads, also stays where it was)."""
    route = _axpby_route(param)
    if route is None:
        return False
    f, c = route
    jit = _mkl["jit"]
    jit.axpby(f, c(g_scale), grad, c(momentum), buf)
    if decay != 0:
        jit.axpby(f, c(decay), param, c(1), buf)
    jit.axpby(f, c(-lr), buf, c(1), param)
    return True
