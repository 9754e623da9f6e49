"""Compile, cache and launch ember's own NVRTC kernels (the ``kernels_*`` modules).

Each kernel family is one CUDA source whose ``__global__`` functions are templates over the
storage type ``T`` (and, for a few, an index type). :func:`function` compiles a family once
per template-argument tuple with ``cupy.RawModule`` and hands back the instantiated function;
nothing is compiled before a kernel's first call, and nothing here imports CuPy at module
import (``import ember`` must not initialise CUDA).

Half types are handled without ``cuda_fp16.h``/``cuda_bf16.h``: the storage structs below hold
the 16 raw bits, loads widen to float (bf16 by a shift, fp16 by the PTX ``cvt`` instruction),
stores round to nearest even. The CUDA headers are not always on NVRTC's include path when
CuPy comes from a wheel, and kernels only ever compute in float32, so the header types would
buy nothing. All arithmetic is fp32; only loads and stores see the storage type.
"""
from __future__ import annotations

from threading import get_ident as _ident
from typing import Any

import numpy as np

# storage type (C++ name) per dtype name; float64 is left to the generic code on purpose:
# these kernels accumulate in fp32, which would break float64's precision contract.
CTYPES = {"float32": "float", "bfloat16": "bf16_t", "float16": "half_t"}
INDEX_CTYPES = {"int64": "long long", "int32": "int"}

PRELUDE = r"""
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
struct bf16_t { unsigned short bits; };
struct half_t { unsigned short bits; };
struct alignas(16) u4_t { unsigned int x, y, z, w; };
// elements per 16-byte vector access
template <typename T> struct VW { static constexpr int n = 16 / (int)sizeof(T); };

__device__ __forceinline__ float h2f(unsigned int h) {
    float f;
    unsigned short b = (unsigned short)h;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(b));
    return f;
}
__device__ __forceinline__ unsigned int f2h(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
__device__ __forceinline__ unsigned int f2bf(float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;   // NaN stays a quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                   // nearest, ties to even
    return u >> 16;
}

__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, long long i) {
    return __uint_as_float(((unsigned int)p[i].bits) << 16);
}
__device__ __forceinline__ float ld(const half_t* p, long long i) { return h2f(p[i].bits); }
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t* p, long long i, float v) {
    p[i].bits = (unsigned short)f2bf(v);
}
__device__ __forceinline__ void st(half_t* p, long long i, float v) {
    p[i].bits = (unsigned short)f2h(v);
}

// 16-byte loads/stores of VW<T>::n consecutive elements (p must be 16-byte aligned).
__device__ __forceinline__ void ldv(const float* p, float* v) {
    u4_t a = *reinterpret_cast<const u4_t*>(p);
    v[0] = __uint_as_float(a.x); v[1] = __uint_as_float(a.y);
    v[2] = __uint_as_float(a.z); v[3] = __uint_as_float(a.w);
}
__device__ __forceinline__ void ldv(const bf16_t* p, float* v) {
    u4_t a = *reinterpret_cast<const u4_t*>(p);
    unsigned int w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        v[2 * k] = __uint_as_float(w[k] << 16);
        v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}
__device__ __forceinline__ void ldv(const half_t* p, float* v) {
    u4_t a = *reinterpret_cast<const u4_t*>(p);
    unsigned int w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        v[2 * k] = h2f(w[k] & 0xffffu);
        v[2 * k + 1] = h2f(w[k] >> 16);
    }
}
__device__ __forceinline__ void stv(float* p, const float* v) {
    u4_t a;
    a.x = __float_as_uint(v[0]); a.y = __float_as_uint(v[1]);
    a.z = __float_as_uint(v[2]); a.w = __float_as_uint(v[3]);
    *reinterpret_cast<u4_t*>(p) = a;
}
__device__ __forceinline__ void stv(bf16_t* p, const float* v) {
    u4_t a;
    a.x = f2bf(v[0]) | (f2bf(v[1]) << 16); a.y = f2bf(v[2]) | (f2bf(v[3]) << 16);
    a.z = f2bf(v[4]) | (f2bf(v[5]) << 16); a.w = f2bf(v[6]) | (f2bf(v[7]) << 16);
    *reinterpret_cast<u4_t*>(p) = a;
}
__device__ __forceinline__ void stv(half_t* p, const float* v) {
    u4_t a;
    a.x = f2h(v[0]) | (f2h(v[1]) << 16); a.y = f2h(v[2]) | (f2h(v[3]) << 16);
    a.z = f2h(v[4]) | (f2h(v[5]) << 16); a.w = f2h(v[6]) | (f2h(v[7]) << 16);
    *reinterpret_cast<u4_t*>(p) = a;
}

// 4 consecutive elements (p aligned to 4 elements: 16 bytes for float, 8 for 16-bit types).
struct alignas(8) u2_t { unsigned int x, y; };
__device__ __forceinline__ void ld4(const float* p, float* v) { ldv(p, v); }
__device__ __forceinline__ void ld4(const bf16_t* p, float* v) {
    u2_t a = *reinterpret_cast<const u2_t*>(p);
    v[0] = __uint_as_float(a.x << 16); v[1] = __uint_as_float(a.x & 0xffff0000u);
    v[2] = __uint_as_float(a.y << 16); v[3] = __uint_as_float(a.y & 0xffff0000u);
}
__device__ __forceinline__ void ld4(const half_t* p, float* v) {
    u2_t a = *reinterpret_cast<const u2_t*>(p);
    v[0] = h2f(a.x & 0xffffu); v[1] = h2f(a.x >> 16);
    v[2] = h2f(a.y & 0xffffu); v[3] = h2f(a.y >> 16);
}
__device__ __forceinline__ void st4(float* p, const float* v) { stv(p, v); }
__device__ __forceinline__ void st4(bf16_t* p, const float* v) {
    u2_t a;
    a.x = f2bf(v[0]) | (f2bf(v[1]) << 16); a.y = f2bf(v[2]) | (f2bf(v[3]) << 16);
    *reinterpret_cast<u2_t*>(p) = a;
}
__device__ __forceinline__ void st4(half_t* p, const float* v) {
    u2_t a;
    a.x = f2h(v[0]) | (f2h(v[1]) << 16); a.y = f2h(v[2]) | (f2h(v[3]) << 16);
    *reinterpret_cast<u2_t*>(p) = a;
}

// Row loops over threadIdx.x: scalar up to the row's first 16-byte boundary, 16-byte vectors,
// then a scalar tail. Every array a kernel walks this way has the same dtype and row length
// and a 16-byte aligned base (the host checks, else passes vec = 0: all scalar), so one
// `head` serves them all.
template <typename T>
__device__ __forceinline__ int row_head(const T* r, int cols, int vec) {
    if (!vec) return cols;
    int h = (int)(((16u - ((unsigned int)(unsigned long long)r & 15u)) & 15u) / sizeof(T));
    return h < cols ? h : cols;
}

// f(c, a[c]) for every column c of the row
template <typename T, typename F>
__device__ __forceinline__ void row_each(const T* a, int cols, int vec, F f) {
    constexpr int N = VW<T>::n;
    int head = row_head(a, cols, vec);
    int end = head + (cols - head) / N * N;
    for (int c = threadIdx.x; c < head; c += blockDim.x) f(c, ld(a, c));
    for (int k = head + threadIdx.x * N; k < end; k += blockDim.x * N) {
        float v[N];
        ldv(a + k, v);
#pragma unroll
        for (int j = 0; j < N; ++j) f(k + j, v[j]);
    }
    for (int c = end + threadIdx.x; c < cols; c += blockDim.x) f(c, ld(a, c));
}

// f(c, a[c], b[c])
template <typename T, typename F>
__device__ __forceinline__ void row_each2(const T* a, const T* b, int cols, int vec, F f) {
    constexpr int N = VW<T>::n;
    int head = row_head(a, cols, vec);
    int end = head + (cols - head) / N * N;
    for (int c = threadIdx.x; c < head; c += blockDim.x) f(c, ld(a, c), ld(b, c));
    for (int k = head + threadIdx.x * N; k < end; k += blockDim.x * N) {
        float u[N], v[N];
        ldv(a + k, u);
        ldv(b + k, v);
#pragma unroll
        for (int j = 0; j < N; ++j) f(k + j, u[j], v[j]);
    }
    for (int c = end + threadIdx.x; c < cols; c += blockDim.x) f(c, ld(a, c), ld(b, c));
}

// out[c] = f(c, a[c])
template <typename T, typename F>
__device__ __forceinline__ void row_map(const T* a, T* out, int cols, int vec, F f) {
    constexpr int N = VW<T>::n;
    int head = row_head(a, cols, vec);
    int end = head + (cols - head) / N * N;
    for (int c = threadIdx.x; c < head; c += blockDim.x) st(out, c, f(c, ld(a, c)));
    for (int k = head + threadIdx.x * N; k < end; k += blockDim.x * N) {
        float v[N];
        ldv(a + k, v);
#pragma unroll
        for (int j = 0; j < N; ++j) v[j] = f(k + j, v[j]);
        stv(out + k, v);
    }
    for (int c = end + threadIdx.x; c < cols; c += blockDim.x) st(out, c, f(c, ld(a, c)));
}

// out[c] = f(c, a[c], b[c])
template <typename T, typename F>
__device__ __forceinline__ void row_map2(const T* a, const T* b, T* out, int cols, int vec,
                                         F f) {
    constexpr int N = VW<T>::n;
    int head = row_head(a, cols, vec);
    int end = head + (cols - head) / N * N;
    for (int c = threadIdx.x; c < head; c += blockDim.x)
        st(out, c, f(c, ld(a, c), ld(b, c)));
    for (int k = head + threadIdx.x * N; k < end; k += blockDim.x * N) {
        float u[N], v[N];
        ldv(a + k, u);
        ldv(b + k, v);
#pragma unroll
        for (int j = 0; j < N; ++j) u[j] = f(k + j, u[j], v[j]);
        stv(out + k, u);
    }
    for (int c = end + threadIdx.x; c < cols; c += blockDim.x)
        st(out, c, f(c, ld(a, c), ld(b, c)));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over threadIdx.x. Rows are either one warp each (blockDim.x == 32, any blockDim.y: no
// shared memory, no barrier) or one block each (blockDim.y == 1). Every thread of the row
// gets the total. `sh` holds 32 floats; the leading barrier lets calls follow each other.
__device__ __forceinline__ float row_sum(float v, float* sh) {
    v = warp_sum(v);
    if (blockDim.x == 32) return v;
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.f;
    return warp_sum(v);
}

// Online softmax state (running max m, sum s of exp(x - m)); merge keeps -inf and NaN right.
__device__ __forceinline__ void ms_add(float& m, float& s, float v) {
    if (v > m) { s = s * expf(m - v) + 1.f; m = v; }
    else if (v != -INFINITY) { s += expf(v - m); }
}
// ms_add over one 16-byte vector's N values: the vector's max rescales s once, then N
// independent exps (a dependent chain per vector, not per value). Where the running max is
// still -inf or the vector holds an infinity or only NaN, value by value as ms_add.
template <int N>
__device__ __forceinline__ void ms_add_vec(float& m, float& s, const float* v) {
    float mv = v[0];
#pragma unroll
    for (int j = 1; j < N; ++j) mv = fmaxf(mv, v[j]);
    if (m == -INFINITY || !isfinite(mv)) {
#pragma unroll
        for (int j = 0; j < N; ++j) ms_add(m, s, v[j]);
        return;
    }
    if (mv > m) { s *= expf(m - mv); m = mv; }
    float t = 0.f;
#pragma unroll
    for (int j = 0; j < N; ++j) t += expf(v[j] - m);
    s += t;
}
// A thread's online-softmax state (m, s) over its columns of a row: two 16-byte vectors in
// flight per step (a 50k-class row is ~6 vectors a thread; one at a time left the loads
// waiting on each vector's exps)
template <typename T>
__device__ __forceinline__ void row_ms_scan(const T* a, int cols, int vec, float& m, float& s) {
    constexpr int N = VW<T>::n;
    int head = row_head(a, cols, vec);
    int end = head + (cols - head) / N * N;
    int step = blockDim.x * N;
    for (int c = threadIdx.x; c < head; c += blockDim.x) ms_add(m, s, ld(a, c));
    int k = head + threadIdx.x * N;
    for (; k + step < end; k += 2 * step) {
        float u[N], v[N];
        ldv(a + k, u);
        ldv(a + k + step, v);
        ms_add_vec<N>(m, s, u);
        ms_add_vec<N>(m, s, v);
    }
    if (k < end) {
        float u[N];
        ldv(a + k, u);
        ms_add_vec<N>(m, s, u);
    }
    for (int c = end + threadIdx.x; c < cols; c += blockDim.x) ms_add(m, s, ld(a, c));
}

__device__ __forceinline__ void ms_merge(float& m, float& s, float m2, float s2) {
    if (m2 > m) { s = s * expf(m - m2) + s2; m = m2; }
    else if (m2 != -INFINITY) { s += s2 * expf(m2 - m); }
}
__device__ __forceinline__ void row_ms(float& m, float& s, float* shm, float* shs) {
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        ms_merge(m, s, m2, s2);
    }
    if (blockDim.x == 32) return;
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) { shm[wid] = m; shs[wid] = s; }
    __syncthreads();
    m = lane < nw ? shm[lane] : -INFINITY;
    s = lane < nw ? shs[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        ms_merge(m, s, m2, s2);
    }
}
"""

_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {}
_MODULES: dict = {}
_FUNCS: dict = {}
_GET_DEVICE: list = [None]   # cupy.cuda.runtime.getDevice, once CuPy is loaded


def define(family: str, source: str, kernels: tuple[str, ...]) -> None:
    """Register a kernel family: CUDA ``source`` (the prelude is prepended) and the names of
    its ``__global__`` templates (all taking the same template arguments)."""
    _SOURCES[family] = (source, kernels)


def function(family: str, name: str, targs: str, coop: bool = False) -> Any:
    """The compiled ``name<targs>`` of ``family`` (compiling the family on first use);
    ``coop``: a kernel with grid-wide barriers, launched cooperatively (:class:`_CoopLauncher`)."""
    get_device = _GET_DEVICE[0]
    if get_device is None:
        import cupy  # noqa: PLC0415 - lazy: only once a CUDA op runs
        get_device = _GET_DEVICE[0] = cupy.cuda.runtime.getDevice
    dev = get_device()   # a module is loaded per device
    key = (family, name, targs, dev)
    fn = _FUNCS.get(key)
    if fn is not None:
        return fn
    import cupy  # noqa: PLC0415
    mkey = (family, targs, dev)
    mod = _MODULES.get(mkey)
    source, kernels = _SOURCES[family]
    if mod is None:
        exprs = [f"{k}<{targs}>" for k in kernels]
        mod = cupy.RawModule(code=PRELUDE + source, options=("-std=c++17",),
                             name_expressions=exprs)
        _MODULES[mkey] = mod
    fn = (_CoopLauncher if coop else _Launcher)(mod.get_function(f"{name}<{targs}>"))
    _FUNCS[key] = fn
    return fn


class _Launcher:
    """A compiled kernel; ``launcher(grid, block, args)`` runs it on the current stream.

    Arrays go to the kernel as their device pointers. The first launch with a given tuple of
    argument types goes through CuPy's ``RawKernel`` call, which converts every argument
    anew (~0.4 us each: a 23-argument launch cost ~15 us, 6 arguments ~8 us). From then on,
    a launch with those types (and from the thread that made the block) writes the values
    into that types' kept parameter block with one ``struct.pack_into`` and calls
    ``cuLaunchKernel`` through CuPy's driver binding (~4.4 us at any argument count):
    argument sizes follow CuPy's conversions (NumPy scalars their own, arrays a pointer).
    One kernel may keep a block for each of a few type tuples (:data:`_MAX_PACKS`): a batch
    norm backward passes its ReLU mask as an array in one layer and as a null pointer in
    the next, and with one block these alternating calls each took CuPy's call. The driver
    copies the parameters at the launch, so a block is reused at once; a launch from another
    thread takes CuPy's call. Should CuPy refuse an array of a dtype it does not know
    (bfloat16 comes from ml_dtypes), the raw pointers are passed to it instead.
    """

    __slots__ = ("fn", "raw", "packs", "_occupancy")

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.raw = False
        self.packs: dict = {}   # argument types -> _Packed (False: these types never pack)
        self._occupancy: dict = {}   # (threads, shared bytes) -> resident blocks

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        types = tuple(map(type, args))
        fast = self.packs.get(types)
        if fast and fast.thread == _ident() and len(grid) == 3 and len(block) == 3:
            fast.fill(args)
            gx, gy, gz = grid
            bx, by, bz = block
            _LAUNCH[0](fast.fptr, gx, gy, gz, bx, by, bz, shared_mem, _STREAM_PTR[0](),
                       fast.params, 0)
            return
        if not self.raw:
            try:
                self.fn(grid, block, args, shared_mem=shared_mem)
            except (TypeError, ValueError):
                self.raw = True
            else:
                if fast is None:
                    self._keep(types, args, grid, block)
                return
        import cupy  # noqa: PLC0415
        self.fn(grid, block, tuple(np.uint64(a.data.ptr) if isinstance(a, cupy.ndarray) else a
                                   for a in args), shared_mem=shared_mem)
        if fast is None:
            self._keep(types, args, grid, block)

    def _keep(self, types: tuple, args: tuple, grid: tuple, block: tuple) -> None:
        if len(self.packs) < _MAX_PACKS:
            self.packs[types] = _packed(self.fn, args, grid, block)

    def max_blocks(self, threads: int, shared: int) -> int:
        return _max_blocks(self, threads, shared)


def _max_blocks(launcher: Any, threads: int, shared: int) -> int:
    """Blocks of ``threads`` threads and ``shared`` dynamic shared bytes of the launcher's
    kernel that are resident on the device at once (0: the kernel cannot be launched so): a
    cooperative grid's limit, and the grid a grid-stride kernel fills in one wave."""
    key = (threads, shared)
    n = launcher._occupancy.get(key)
    if n is None:
        import cupy  # noqa: PLC0415
        from cupy_backends.cuda.api import driver  # noqa: PLC0415
        per_sm = driver.occupancyMaxActiveBlocksPerMultiprocessor(
            launcher.fn.kernel.ptr, threads, shared)
        sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
        n = launcher._occupancy[key] = int(per_sm) * int(sms)
    return n


class _CoopLauncher:
    """A compiled kernel that synchronises its whole grid (cooperative groups' ``grid.sync``):
    every launch goes through ``cuLaunchCooperativeKernel``, which needs all of the grid's
    blocks resident at once (:meth:`max_blocks`). Arguments as in :class:`_Launcher`, always
    through a kept parameter block (one for each tuple of argument types and thread)."""

    __slots__ = ("fn", "packs", "_occupancy")

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.packs: dict = {}   # (argument types, thread) -> _Packed
        self._occupancy: dict = {}

    def max_blocks(self, threads: int, shared: int) -> int:
        return _max_blocks(self, threads, shared)

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        key = (tuple(map(type, args)), _ident())
        fast = self.packs.get(key)
        if not fast:
            fast = _packed(self.fn, args, grid, block)
            if not fast:
                raise TypeError("cooperative launch: unsupported argument types "
                                f"{[type(a).__name__ for a in args]}")
            if len(self.packs) >= _MAX_PACKS:
                self.packs.clear()
            self.packs[key] = fast
            if _COOP[0] is None:
                from cupy_backends.cuda.api import driver  # noqa: PLC0415
                _COOP[0] = driver.launchCooperativeKernel
        fast.fill(args)
        gx, gy, gz = grid
        bx, by, bz = block
        _COOP[0](fast.fptr, gx, gy, gz, bx, by, bz, shared_mem, _STREAM_PTR[0](), fast.params)


_COOP: list = [None]   # cupy_backends' driver.launchCooperativeKernel
_MAX_PACKS = 8         # kept parameter blocks per kernel (argument type tuples)


class _Packed:
    """A kernel's kept parameter block: the argument types it was laid out for, the
    ``struct`` packer, the block, the array of pointers to each parameter, the positions of
    the arrays (passed as their pointers), the CUfunction and the owning thread."""

    __slots__ = ("types", "pack", "block", "params", "keep", "arrays", "fptr", "thread")

    def fill(self, args: tuple) -> None:
        """Write one launch's ``args`` into the block (arrays as their device pointers)."""
        vals = list(args)
        for i in self.arrays:
            vals[i] = vals[i].data.ptr
        self.pack(self.block, 0, *vals)


# struct codes of the NumPy scalar argument types (each passed at its own size, as CuPy
# does); a Python scalar keeps a launch on CuPy's call
_CODES: dict = {np.int8: "b", np.uint8: "B", np.int16: "h", np.uint16: "H", np.int32: "i",
                np.uint32: "I", np.int64: "q", np.uint64: "Q", np.float16: "e",
                np.float32: "f", np.float64: "d", np.bool_: "?"}
_LAUNCH: list = [None]       # cupy_backends' driver.launchKernel
_STREAM_PTR: list = [None]   # the current CuPy stream's pointer


def _stream_ptr_from(get_current_stream: Any) -> Any:
    """The current stream's pointer through CuPy's ``get_current_stream`` bound once (an
    import statement in the per-launch function cost ~0.3 us on each of ~430 launches of a
    ResNet-50 step)."""
    def ptr() -> int:
        return get_current_stream().ptr
    return ptr


def _packed(fn: Any, args: tuple, grid: Any, block: Any) -> Any:
    """The :class:`_Packed` launch of ``fn`` for ``args``' types, or False where it cannot
    apply (an argument type without a code, a grid or block not given as three numbers,
    a CuPy without the driver binding)."""
    import struct  # noqa: PLC0415 - once per kernel
    import threading  # noqa: PLC0415
    import cupy  # noqa: PLC0415
    try:
        if len(grid) != 3 or len(block) != 3:
            return False
        codes, arrays = [], []
        for i, a in enumerate(args):
            if isinstance(a, cupy.ndarray):
                if type(a) is not cupy.ndarray:
                    return False
                codes.append("Q")
                arrays.append(i)
            else:
                codes.append(_CODES[type(a)])
        if _LAUNCH[0] is None:
            from cupy_backends.cuda.api import driver  # noqa: PLC0415
            stream = getattr(cupy.cuda.stream, "get_current_stream_ptr", None)
            _STREAM_PTR[0] = stream if stream is not None else \
                _stream_ptr_from(cupy.cuda.get_current_stream)
            _LAUNCH[0] = driver.launchKernel
        fptr = fn.kernel.ptr
    except (KeyError, TypeError, AttributeError, ImportError):
        return False
    st = struct.Struct("@" + "".join(codes))
    block_arr = np.zeros(max(st.size, 8), np.uint8)
    base = block_arr.ctypes.data
    # each parameter's offset: native alignment, as in a C struct of these fields
    offs = [struct.calcsize("@" + "".join(codes[:i + 1])) - struct.calcsize(c)
            for i, c in enumerate(codes)]
    p = _Packed()
    p.types = tuple(map(type, args))
    p.pack = st.pack_into
    p.block = block_arr
    p.keep = np.array([base + o for o in offs] or [0], np.uint64)
    p.params = p.keep.ctypes.data
    p.arrays = tuple(arrays)
    p.fptr = fptr
    p.thread = threading.get_ident()
    return p


_CT_BY_DTYPE: dict = {}


# the storage types of the 16-bit floats (bfloat16, float16)
HALF_CTYPES = ("bf16_t", "half_t")


def ctype(arr: Any) -> str | None:
    """The storage C++ type of an array's dtype, or None when the kernels do not cover it."""
    return dtype_ctype(arr.dtype)


def dtype_ctype(dt: Any) -> str | None:
    """:func:`ctype` of a NumPy dtype, cached by the dtype object (NumPy's ``dtype.name``
    is a Python property costing ~2 us, and a ResNet-50 step asked ~900 times)."""
    try:
        return _CT_BY_DTYPE[dt]
    except KeyError:
        ct = _CT_BY_DTYPE[dt] = CTYPES.get(dt.name)
        return ct


_NAME_BY_DTYPE: dict = {}


def dtype_name(dt: Any) -> str:
    """``dt.name``, cached by the dtype object (the property costs ~1-2 us a call)."""
    try:
        return _NAME_BY_DTYPE[dt]
    except KeyError:
        name = _NAME_BY_DTYPE[dt] = dt.name
        return name


def i32(v: int) -> Any:
    return np.int32(v)


def i64(v: int) -> Any:
    return np.int64(v)


def f32(v: float) -> Any:
    return np.float32(v)


def row_config(rows: int, cols: int) -> tuple[tuple, tuple]:
    """(grid, block) for a row-wise kernel: a warp per row (4 rows a block) up to 1024
    columns, else a block per row sized to the row (256 to 1024 threads)."""
    if cols <= 1024:
        return ((rows + 3) // 4, 1, 1), (32, 4, 1)
    threads = 256 if cols <= 4096 else 512 if cols <= 16384 else 1024
    return (rows, 1, 1), (threads, 1, 1)


def flat_grid(n: int, threads: int = 256, per_thread: int = 1) -> tuple[tuple, tuple]:
    """(grid, block) for a grid-stride elementwise kernel over ``n`` items."""
    blocks = max(1, min((n + threads * per_thread - 1) // (threads * per_thread), 1 << 20))
    return (blocks, 1, 1), (threads, 1, 1)


def aligned(*arrays: Any) -> Any:
    """1 when every array starts on a 16-byte boundary (the kernels may use 16-byte vector
    loads and stores), else 0."""
    return np.int32(all(a.data.ptr % 16 == 0 for a in arrays))


def contiguous(xp: Any, a: Any, dtype: Any = None) -> Any:
    """``a`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    if not a.flags.c_contiguous:
        a = xp.ascontiguousarray(a)
    return a


def wrap(arr: Any, device: Any) -> Any:
    """A constant ember Tensor around a result array (what a backward returns)."""
    if not _LAZY:
        _load()
    return _LAZY[1](arr, _LAZY[0][arr.dtype], device)


def recording(ctx: Any) -> bool:
    """Whether forward got a real graph node (not the shared no-grad dummy)."""
    if not _LAZY:
        _load()
    return isinstance(ctx, _LAZY[2])


# (dtypes._FROM_NP, tensor._make, registry.OpNode), imported on first use: this module loads
# before them, and an import statement in wrap/recording cost ~1 us on each backward output
_LAZY: list = []


def _load() -> None:
    from ember.dtypes import _FROM_NP
    from ember.ops.registry import OpNode
    from ember.tensor import _make
    _LAZY[:] = [_FROM_NP, _make, OpNode]
