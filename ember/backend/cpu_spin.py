"""A row-thread pool whose worker busy-waits briefly for the next piece (numba, ``nogil``).

``cpu.parallel_rows`` on a ``ThreadPoolExecutor`` pays two thread wake-ups a call: the pool
thread starts its piece 25-80 us late, and a caller that finishes first waits 25-90 us more
on the join (an idle virtual CPU halts, and waking it is an interrupt through the
hypervisor). Kernels under ~150 us therefore could not be split, and a training step has
dozens of them (residual adds, bias adds, layer norms, the optimizer). Here the worker, after
each piece, polls a flag outside the GIL for a short while (``_SPIN`` pauses, ~0.2 ms)
before blocking on a semaphore, and the caller waits for the join by polling too (outside
the GIL, so the worker can take it to return). A threaded GEMM parks the worker first
(:func:`park`): a spinning worker would hold the core the GEMM's second thread needs.

Protocol (one worker; ``ctl`` is an int64 array, the fields a cache line apart): the caller
stores the piece, then bumps ``ctl[_SEQ]``; the worker runs it and copies the sequence
number into ``ctl[_DONE]``. Python-level writes happen under the GIL; the polls are atomic
loads in compiled code. A worker that stops spinning sets ``ctl[_SLEEP]`` and re-checks the
sequence before blocking, and the caller releases the semaphore whenever it sees the flag
set (a spare release only makes the worker re-check once).
"""
from __future__ import annotations

import os
import platform
import threading
from typing import Any, Callable

import numpy as np

_SEQ, _DONE, _SLEEP, _PARK = 0, 8, 16, 24
_SPIN = 4000      # pauses the worker polls for after a piece (~40 ns each here: ~0.2 ms)
_JOIN_SPIN = 1 << 22  # pauses the caller polls for the join before blocking (~0.2 s)

_state: dict = {"pool": None, "failed": False}
_lock = threading.Lock()


def _compile() -> Any:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def load_acquire(typingctx, arr, idx):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = builder.gep(a.data, [args[1]])
            return builder.load_atomic(ptr, "acquire", 8)
        return types.int64(arr, idx), cg

    @intrinsic
    def store_release(typingctx, arr, idx, val):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = builder.gep(a.data, [args[1]])
            builder.store_atomic(args[2], ptr, "release", 8)
            return context.get_dummy_value()
        return types.none(arr, idx, val), cg

    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

    @intrinsic
    def pause(typingctx):  # pragma: no cover - compile-time
        def cg(context, builder, sig, args):
            # (x86's PAUSE: the poll yields the core's pipeline and saves power; numba's JIT
            # takes no inline asm, so it is LLVM's intrinsic)
            if x86:
                fnty = ir.FunctionType(ir.VoidType(), [])
                fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
                builder.call(fn, [])
            return context.get_dummy_value()
        return types.none(), cg

    @numba.njit(nogil=True)
    def wait_change(ctl, idx, old, spins, done):
        """Store ``done`` (if >= 0) into ``ctl[_DONE]``, then poll ``ctl[idx]`` until it differs from ``old`` (its new value) or ``spins``
        pauses pass (``old``); also stops when ``ctl[_PARK]`` is set (returns ``old``).
        The worker stores its done mark here, with the GIL released: stored from Python,
        the caller saw it while the worker still held the GIL, and blocked for it (a
        thread wake-up, ~20-40 us measured)."""
        if done >= 0:
            store_release(ctl, 8, done)
        for _ in range(spins):
            v = load_acquire(ctl, idx)
            if v != old:
                return v
            if load_acquire(ctl, 24) != 0:
                return old
            pause()
        return old

    @numba.njit(nogil=True)
    def wait_value(ctl, idx, want, spins):
        """Poll until ``ctl[idx] == want``; True when it got there within ``spins``."""
        for _ in range(spins):
            if load_acquire(ctl, idx) == want:
                return True
            pause()
        return False
    return wait_change, wait_value


class SpinPool:
    """One worker thread taking one piece per call (``run``)."""

    def __init__(self) -> None:
        self.wait_change, self.wait_value = _compile()
        self.ctl = np.zeros(32, np.int64)
        # compile both polls now (a first call from the worker would compile under the GIL)
        self.wait_change(self.ctl, _SEQ, 0, 1, -1)
        self.wait_value(self.ctl, _SEQ, 0, 1)
        self.sem = threading.Semaphore(0)
        self.task: Any = None
        self.error: BaseException | None = None
        self.seq = 0
        self.thread = threading.Thread(target=self._loop, name="ember-rows-spin", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        ctl, seen, done = self.ctl, 0, -1
        while True:
            seq = self.wait_change(ctl, _SEQ, seen, _SPIN, done)
            done = -1
            if seq == seen:
                ctl[_SLEEP] = 1
                if ctl[_SEQ] == seen:
                    self.sem.acquire()
                ctl[_SLEEP] = 0
                continue
            seen = seq
            fn, lo, hi = self.task
            try:
                fn(lo, hi)
            except BaseException as e:  # handed to the caller, which re-raises it
                self.error = e
            done = seen

    def run(self, fn: Callable[[int, int], None], mine: tuple, theirs: tuple) -> None:
        """``fn(*theirs)`` on the worker while this thread runs ``fn(*mine)``."""
        ctl = self.ctl
        self.task = (fn, theirs[0], theirs[1])
        self.error = None
        self.seq += 1
        ctl[_PARK] = 0
        ctl[_SEQ] = self.seq
        if ctl[_SLEEP]:
            self.sem.release()
        try:
            fn(*mine)
        finally:
            if not self.wait_value(ctl, _DONE, self.seq, _JOIN_SPIN):
                while ctl[_DONE] != self.seq:  # a descheduled worker: poll slowly
                    threading.Event().wait(1e-4)
        if self.error is not None:
            err, self.error = self.error, None
            raise err


def pool() -> SpinPool | None:
    """The process's spin pool (built on first use), or None without numba or with
    ``EMBER_ROWS_SPIN=0``."""
    if (_ENV.get(_KEY, _ONE) if _ENV is not None else os.environ.get(_KEY, _ONE)) == _ZERO \
            or _state["failed"]:
        return None
    p = _state["pool"]
    if p is None:
        with _lock:
            if _state["pool"] is None and not _state["failed"]:
                try:
                    _state["pool"] = SpinPool()
                except ImportError:
                    _state["failed"] = True
            p = _state["pool"]
    return p


def park() -> None:
    """Stop the worker's polling now (a threaded GEMM is about to want its core)."""
    p = _state["pool"]
    if p is not None:
        p.ctl[_PARK] = 1


def _reset() -> None:  # a forked child has none of the parent's threads
    _state["pool"] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset)

# os.environ's own mapping (bytes on POSIX): ~0.05 us a lookup against ~0.6 through
# os.environ.get, once per split kernel
_ENV: Any = getattr(os.environ, "_data", None)
_KEY: Any = os.environ.encodekey("EMBER_ROWS_SPIN") if _ENV is not None else "EMBER_ROWS_SPIN"
_ONE: Any = os.environ.encodevalue("1") if _ENV is not None else "1"
_ZERO: Any = os.environ.encodevalue("0") if _ENV is not None else "0"
