"""Row and elementwise passes on MKL's own OpenMP team (Intel OpenMP's ``GOMP_parallel``):
float32 residual adds and in-place products, GELU (value and derivative), layer norm forward
and backward, the fused attention forward and backward (``cpu_team_kernels``).

In a training step MKL's GEMMs come every few hundred microseconds, and after each one its
OpenMP worker busy-waits (``cpu_mkl._BLOCKTIME_MS``) on the spare core. A Python row thread
(``cpu.parallel_rows``) that wants that core waits for the scheduler to preempt the spinning
worker (25-80 us measured), so a 80 us pass could not be split; torch runs its elementwise
loops on the same OpenMP team as its GEMMs, which starts at once. Here the pass is a numba
``cfunc`` (no GIL: the team's threads are not Python threads) that ``GOMP_parallel`` runs on
that team: the threads take chunks (32 KB of an add, 64 layer-norm rows, 4 attention heads)
off an atomic counter, so a late worker only takes fewer chunks. Each route is used only
within ``_WARM_S`` of a threaded MKL GEMM (``cpu.gemm_threads`` records it): after a 2 ms
pause, waking the team cost more than the pass saved. Used only where MKL runs on Intel
OpenMP (``cpu_mkl``'s usual layer) and a core is spare; ``EMBER_TEAM=0`` switches it off.

Why it pays: an add of two (16, 64, 128) float32 arrays into a fresh array writes memory
that is not in the core's cache, and one core's misses (~6.5 GB/s of stores measured in the
tiny-GPT step) bound it, not the arithmetic; two cores have twice the outstanding misses.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from ember.backend import cpu

_CHUNK = 8192   # float32 elements a chunk of an add (32 KB)
_GELU_CHUNK = 16384  # GELU's (~8 us of work)
_LN_CHUNK = 64  # layer-norm rows a chunk
_LN_BACK_CHUNK = 128  # the backward's (its kernel's float32 runs are 128 rows)
_ATTN_CHUNK = 4  # (batch, head) pairs a chunk (a 64 x 64 x 32 causal head: ~10 us)
_WARM_S = 0.0008   # how long after MKL's last threaded GEMM its worker still spins
MIN_SIZE = 1 << 16   # below this one core is as fast (the fork and join cost ~5-10 us)
ADD, MUL = 0, 1   # the passes ``binary`` runs

_state: dict = {"tried": False, "fn": None}
_lock = threading.Lock()
# the one control block is filled then read by the team: a second Python thread arriving
# meanwhile takes its usual path instead of waiting
_busy = threading.Lock()


def _build() -> Any:
    from ember.backend import cpu_mkl
    path = cpu_mkl._mkl.get("path")
    if path is None or cpu_mkl._mkl.get("layer") != cpu_mkl._INTEL:
        return None
    iomp = ctypes.CDLL(os.path.join(os.path.dirname(path), "libiomp5.so"))
    gomp = iomp.GOMP_parallel
    gomp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    gomp.restype = None
    from ember.backend import cpu_team_kernels
    k = cpu_team_kernels.kernels()
    if k is None:
        return None
    ctl = np.zeros(48, np.int64)
    ctlf = ctl.view(np.float64)
    addr = ctl.ctypes.data

    def address(body: Any) -> Any:
        return None if body is None else body.address
    binary_body = k.binary_body.address
    pack = k.pack

    def binary(op: int, a: np.ndarray, b: np.ndarray, out: Any) -> np.ndarray:
        if out is None:
            out = np.empty(a.shape, np.float32)
        pack(ctl, op, a, b, out, _CHUNK)
        gomp(binary_body, addr, 2, 0)   # (ctypes releases the GIL for the call)
        return out
    gelu_body = address(k.gelu_body)

    def gelu(x: np.ndarray, y: np.ndarray, d: Any) -> bool:
        pack(ctl, 0 if d is None else 1, x, y, y if d is None else d, _GELU_CHUNK)
        gomp(gelu_body, addr, 2, 0)
        return True
    ln_body = address(k.ln_body)
    pack_ln = k.pack_ln

    def ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, y: np.ndarray,
           mean: np.ndarray, rstd: np.ndarray) -> bool:
        pack_ln(ctl, ctlf, x, w, b, eps, y, mean, rstd, _LN_CHUNK)
        gomp(ln_body, addr, 2, 0)
        return True
    attn_body = address(k.attn_fwd_body)
    pack_attn = getattr(k, "pack_attn", None)

    def attn_fwd(q: np.ndarray, kk: np.ndarray, v: np.ndarray, out: np.ndarray,
                 p: np.ndarray, st: tuple, scale: Any, causal: bool, direct: int) -> bool:
        pack_attn(ctl, ctlf, q, kk, v, out, p, st[0], st[1], st[2], st[3], float(scale),
                  causal, direct, _ATTN_CHUNK)
        gomp(attn_body, addr, 2, 0)
        return True
    bwd_body = address(k.attn_bwd_body)
    pack_bwd = getattr(k, "pack_attn_bwd", None)

    def attn_bwd(arrays: tuple, st: tuple, scale: Any, causal: bool, direct: int) -> bool:
        flat = np.array([x for s3 in st for x in s3], np.int64)
        pack_bwd(ctl, ctlf, *arrays, flat, float(scale), causal, direct, _ATTN_CHUNK)
        gomp(bwd_body, addr, 2, 0)
        return True
    lnb_body = address(k.ln_back_body)
    pack_lnb = getattr(k, "pack_ln_back", None)

    def ln_back(x: np.ndarray, g: np.ndarray, w: np.ndarray, mean: np.ndarray,
                rstd: np.ndarray, want_gx: bool) -> tuple:
        rows, n = x.shape
        nc = -(-rows // _LN_BACK_CHUNK)
        gw = np.zeros((nc, n))
        gb = np.zeros((nc, n))
        gx = np.empty_like(x) if want_gx else x[:0]
        pack_lnb(ctl, x, g, w, mean, rstd, gx, gw, gb, want_gx, _LN_BACK_CHUNK)
        gomp(lnb_body, addr, 2, 0)
        return (gx if want_gx else None), gw.sum(0), gb.sum(0)
    # each pass with its result (True where it has none); None where its kernel did not
    # compile, which keeps that route off
    from ember.backend import cpu_kernels   # (it imports this module)
    return SimpleNamespace(
        numba_on=cpu_kernels.enabled, binary=binary, gelu=gelu if gelu_body is not None else None,
        ln=ln if ln_body is not None else None,
        attn_fwd=attn_fwd if attn_body is not None else None,
        attn_bwd=attn_bwd if bwd_body is not None else None,
        ln_back=ln_back if lnb_body is not None else None)


def _on_team(name: str, *args: Any) -> Any:
    """The launcher's pass ``name`` (its result) on MKL's team; None when the route is off,
    that pass did not compile, or another Python thread is filling the one control block."""
    go = _team()
    run = None if go is None else getattr(go, name)
    if run is None or not _busy.acquire(False):
        return None
    try:
        return run(*args)
    finally:
        _busy.release()


def binary(op: int, a: Any, b: Any, out: Any = None) -> Any:
    """``a + b`` (``op`` 0) or ``a * b`` (1) for two C-contiguous float32 NumPy arrays of one
    shape, on two cores of MKL's team, into ``out`` (a new array when None; it may be ``a``
    or ``b``, each element is read before it is written); None when that route is off or
    does not apply."""
    if type(a) is not np.ndarray or type(b) is not np.ndarray \
            or a.dtype != np.float32 or b.dtype != np.float32 or a.shape != b.shape \
            or a.size < MIN_SIZE or not (a.flags.c_contiguous and b.flags.c_contiguous):
        return None
    if out is not None and (out.dtype != np.float32 or out.shape != a.shape
                            or not out.flags.c_contiguous):
        return None
    return _on_team("binary", op, a, b, out)


def gelu(x: Any, y: Any, d: Any) -> bool:
    """cpu_kernels' float32 GELU spans of the 1-D contiguous ``x`` into ``y`` (and its
    derivative into ``d`` unless None) on MKL's team; False when that route is off."""
    return _on_team("gelu", x, y, d) is not None


def layer_norm(x: Any, w: Any, b: Any, eps: float, y: Any, mean: Any, rstd: Any) -> bool:
    """cpu_kernels' float32 layer-norm rows of the C-contiguous (rows, n) ``x`` into ``y``,
    ``mean`` and ``rstd`` (rows,), ``w``/``b`` (n,) contiguous, on MKL's team; False when
    that route is off."""
    if x.dtype != np.float32 or x.size < MIN_SIZE or w.dtype != np.float32 \
            or b.dtype != np.float32:
        return False
    return _on_team("ln", x, w, b, float(eps), y, mean, rstd) is not None


def attention_forward(q: Any, k: Any, v: Any, out: Any, p: Any, st: tuple, scale: Any,
                      causal: bool, direct: int) -> bool:
    """cpu_attention_kernels' forward (its arguments) over the (batch, head) pairs on MKL's
    team; False when that route is off."""
    if q.shape[0] * q.shape[1] < 2 * _ATTN_CHUNK:
        return False
    return _on_team("attn_fwd", q, k, v, out, p, st, scale, causal, direct) is not None


def attention_backward(arrays: tuple, st: tuple, scale: Any, causal: bool,
                       direct: int) -> bool:
    """cpu_attention_kernels' backward (``arrays`` q, k, v, g, p, dq, dk, dv; ``st`` their
    element strides but p's) over the (batch, head) pairs on MKL's team; False when off."""
    q = arrays[0]
    if q.shape[0] * q.shape[1] < 2 * _ATTN_CHUNK:
        return False
    return _on_team("attn_bwd", arrays, st, scale, causal, direct) is not None


def layer_norm_backward(x: Any, g: Any, w: Any, mean: Any, rstd: Any,
                        want_gx: bool) -> tuple | None:
    """cpu_kernels' float32 layer-norm backward (its arguments and result) in 128-row
    chunks on MKL's team; None when that route is off."""
    if x.dtype != np.float32 or x.size < MIN_SIZE or g.dtype != np.float32 \
            or w.dtype != np.float32:
        return None
    return _on_team("ln_back", x, g, w, mean, rstd, want_gx)


def _team() -> Any:
    """The launcher when the route may run now, else None."""
    fn = _state["fn"]
    if fn is None:
        if _state["tried"]:
            return None
        from ember.backend import cpu_mkl
        if not cpu_mkl._mkl.get("tried"):
            return None   # (MKL not loaded yet: no GEMM has run, so no team is warm)
        with _lock:
            if not _state["tried"]:
                try:
                    _state["fn"] = _build()
                except (OSError, AttributeError, ImportError):
                    _state["fn"] = None
                _state["tried"] = True
        fn = _state["fn"]
        if fn is None:
            return None
    if (_ENV.get(_KEY) if _ENV is not None else os.environ.get("EMBER_TEAM")) == _ZERO:
        return None
    if not fn.numba_on():   # (EMBER_NUMBA=0 at any time: no numba code runs)
        return None
    # the team's worker sleeps ~1 ms after MKL's last threaded region (its block time):
    # waking it costs more than the pass saves (a (16, 64, 128) add after a 2 ms pause:
    # 77 us against NumPy's 37), and a busy machine leaves no core
    if time.monotonic() - cpu._state["threaded_at"] > _WARM_S or cpu.row_threads(2) < 2:
        return None
    return fn


def _reset() -> None:  # a forked child: Intel OpenMP's team is the parent's
    _state["tried"], _state["fn"] = True, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset)

_ENV: Any = getattr(os.environ, "_data", None)
_KEY: Any = os.environ.encodekey("EMBER_TEAM") if _ENV is not None else None
_ZERO: Any = os.environ.encodevalue("0") if _ENV is not None else "0"
