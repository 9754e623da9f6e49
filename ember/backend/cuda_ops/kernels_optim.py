"""Multi-tensor optimizer steps (NVRTC): one launch updates every parameter of a group.

A per-parameter update costs one kernel launch (5-10 us of host time) per tensor; GPT-2 has
~150 parameter tensors, so the launches, not the memory traffic, dominate a small model's
step. Here the tensors of a group are described by a small int64 table on the device, one
row per tensor (``ROW`` fields: param, grad, three state pointers, element count, step
pointer, first chunk index), and one launch walks all of them: block ``b`` finds its tensor
by binary search over the rows' first-chunk column and updates ``CHUNK`` elements of it
(the layout of apex's and torch's ``multi_tensor_apply``, with the table in device memory
instead of kernel parameters).

The table is cached by the pointers and sizes it holds, so a training loop whose arrays
recur (CuPy's pool hands back the same blocks step after step) uploads it once. Built while
a CUDA graph is being captured, it is copied from pinned host memory (a capturable copy) and
kept for the life of the process, since the graph may replay it at any time.

Storage types: float32, bfloat16, float16 (fp32 arithmetic), float64 (fp64 arithmetic). The
step count is either a host value (bias corrections passed as scalars) or a float32/float64
device scalar per tensor, read in the kernel, so the whole step can be captured.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from ember.backend.cuda import stream_capturing
from ember.backend.cuda_ops import _nvrtc as K
from ember.backend.cuda_ops import _upload

ROW = 8            # int64 fields per tensor row
CHUNK = 4096       # elements per block
THREADS = 256      # threads per block; each handles CHUNK / THREADS elements, 4 at a time
STEP_HOST, STEP_F32, STEP_F64 = 0, 1, 2

# The table walk every multi-tensor kernel shares: a block per CHUNK elements of one tensor.
_TABLE_SRC = r"""
__device__ __forceinline__ double ld(const double* p, long long i) { return p[i]; }
__device__ __forceinline__ void st(double* p, long long i, double v) { p[i] = v; }

template <typename M, typename T> __device__ __forceinline__ M load(const T* p, long long i) {
    return (M)ld(p, i);
}
template <typename M, typename T> __device__ __forceinline__ void store(T* p, long long i,
                                                                       M v) {
    st(p, i, v);
}

// The row of the tensor that owns chunk c (rows are sorted by their first chunk).
__device__ __forceinline__ const long long* find_row(const long long* meta, int nt,
                                                     long long c) {
    int lo = 0, hi = nt - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (meta[mid * 8 + 7] <= c) lo = mid; else hi = mid - 1;
    }
    return meta + lo * 8;
}

// Block c's tensor row and its element range [start, end): CHUNK elements of that tensor.
__device__ __forceinline__ const long long* chunk_range(const long long* meta, int nt,
                                                        int chunk, long long* start,
                                                        long long* end) {
    long long c = blockIdx.x;
    const long long* r = find_row(meta, nt, c);
    long long n = r[5];
    *start = (c - r[7]) * chunk;
    *end = *start + chunk < n ? *start + chunk : n;
    return r;
}
"""

_SRC = _TABLE_SRC + r"""
template <typename M>
__device__ __forceinline__ M read_step(const long long* r, int step_kind) {
    if (step_kind == 1) return (M)(*reinterpret_cast<const float*>(r[6]));
    return (M)(*reinterpret_cast<const double*>(r[6]));
}

// torch's lerp: start + w * (end - start), or end - (end - start) * (1 - w) for |w| >= 0.5
template <typename M> __device__ __forceinline__ M lerp(M a, M b, M w) {
    return (w < (M)0.5 && w > (M)-0.5) ? a + w * (b - a) : b - (b - a) * ((M)1 - w);
}

// Add 1 to every tensor's device step (one thread per row); runs before the update.
template <typename T, typename M>
__global__ void mt_step_inc(const long long* __restrict__ meta, int nt, int step_kind) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= nt) return;
    const long long* r = meta + t * 8;
    if (step_kind == 1) *reinterpret_cast<float*>(r[6]) += 1.f;
    else *reinterpret_cast<double*>(r[6]) += 1.0;
}

// Adam / AdamW (torch's foreach order of operations, fused):
//   g = maximize ? -g : g;  decoupled: p *= 1 - lr wd, else g += wd p
//   m = lerp(m, g, 1 - b1);  v = v b1' + (1 - b2) g^2;  amsgrad: vmax = max(vmax, v)
//   p += -lr / (1 - b1^t) * m / (sqrt(v or vmax) / sqrt(1 - b2^t) + eps)
template <typename T, typename M>
__global__ void mt_adam(const long long* __restrict__ meta, int nt, int chunk,
                        M lr_host, const float* __restrict__ lr_dev, M beta1, M beta2, M eps,
                        M wd, int decoupled, int amsgrad, int maximize, int step_kind,
                        M step_size_host, M bc2_sqrt_host) {
    long long start, end;
    const long long* r = chunk_range(meta, nt, chunk, &start, &end);
    T* p = reinterpret_cast<T*>(r[0]);
    const T* g = reinterpret_cast<const T*>(r[1]);
    T* m = reinterpret_cast<T*>(r[2]);
    T* v = reinterpret_cast<T*>(r[3]);
    T* vmax = reinterpret_cast<T*>(r[4]);
    M lr = lr_dev ? (M)(*lr_dev) : lr_host;
    M neg_step_size, bc2_sqrt;
    if (step_kind) {
        M s = read_step<M>(r, step_kind);
        neg_step_size = -lr / ((M)1 - pow(beta1, s));
        bc2_sqrt = sqrt((M)1 - pow(beta2, s));
    } else {
        neg_step_size = -step_size_host;
        bc2_sqrt = bc2_sqrt_host;
    }
    M decay = (M)1 - lr * wd;
    M w1 = (M)1 - beta1, w2 = (M)1 - beta2;
    for (long long base = start + threadIdx.x; base < end; base += 4 * blockDim.x) {
        M pv[4], gv[4], mv[4], vv[4], xv[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            long long i = base + (long long)k * blockDim.x;
            if (i < end) {
                pv[k] = load<M>(p, i); gv[k] = load<M>(g, i);
                mv[k] = load<M>(m, i); vv[k] = load<M>(v, i);
                xv[k] = amsgrad ? load<M>(vmax, i) : (M)0;
            }
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            long long i = base + (long long)k * blockDim.x;
            if (i >= end) continue;
            M gk = maximize ? -gv[k] : gv[k];
            M pk = pv[k];
            if (wd != (M)0) {
                if (decoupled) pk = pk * decay; else gk = gk + wd * pk;
            }
            M mk = lerp(mv[k], gk, w1);
            M vk = vv[k] * beta2 + w2 * (gk * gk);
            M den = vk;
            if (amsgrad) {
                M xk = xv[k] > vk ? xv[k] : vk;
                if (vk != vk) xk = vk;              // NaN propagates, as torch's maximum
                store<M>(vmax, i, xk);
                den = xk;
            }
            den = sqrt(den) / bc2_sqrt + eps;
            pk = pk + neg_step_size * (mk / den);
            store<M>(p, i, pk); store<M>(m, i, mk); store<M>(v, i, vk);
        }
    }
}

// SGD (torch's foreach order): g = maximize ? -g : g; g += wd p;
//   momentum: buf = first ? g : buf mu + (1 - dampening) g; g = nesterov ? g + mu buf : buf
//   p += -lr g
template <typename T, typename M>
__global__ void mt_sgd(const long long* __restrict__ meta, int nt, int chunk,
                       M lr_host, const float* __restrict__ lr_dev, M momentum, M dampening,
                       M wd, int nesterov, int maximize, int first) {
    long long start, end;
    const long long* r = chunk_range(meta, nt, chunk, &start, &end);
    T* p = reinterpret_cast<T*>(r[0]);
    const T* g = reinterpret_cast<const T*>(r[1]);
    T* buf = reinterpret_cast<T*>(r[2]);
    M lr = lr_dev ? (M)(*lr_dev) : lr_host;
    M keep = (M)1 - dampening;
    for (long long base = start + threadIdx.x; base < end; base += 4 * blockDim.x) {
        M pv[4], gv[4], bv[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            long long i = base + (long long)k * blockDim.x;
            if (i < end) {
                pv[k] = load<M>(p, i); gv[k] = load<M>(g, i);
                bv[k] = (buf && !first) ? load<M>(buf, i) : (M)0;
            }
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            long long i = base + (long long)k * blockDim.x;
            if (i >= end) continue;
            M gk = maximize ? -gv[k] : gv[k];
            if (wd != (M)0) gk = gk + wd * pv[k];
            if (buf) {
                M bk = first ? gk : bv[k] * momentum + keep * gk;
                store<M>(buf, i, bk);
                gk = nesterov ? gk + momentum * bk : bk;
            }
            store<M>(p, i, pv[k] + (-lr) * gk);
        }
    }
}

// Gradient clipping, first pass: out[t] += sum of squares of tensor t's chunk (row slot 0
// holds the tensor; fp64 partials, one atomic add per block). out starts at zero.
template <typename T, typename M>
__global__ void mt_sqnorm(const long long* __restrict__ meta, int nt, int chunk,
                          double* __restrict__ out) {
    __shared__ double part[32];
    long long start, end;
    const long long* r = chunk_range(meta, nt, chunk, &start, &end);
    const T* a = reinterpret_cast<const T*>(r[0]);
    double acc = 0.0;
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        double v = (double)load<M>(a, i);
        acc += v * v;
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s += part[w];
        atomicAdd(out + (r - meta) / 8, s);
    }
}

// Gradient clipping, second pass: every tensor *= coef[0] (a device scalar of the storage
// type, so the host never reads it).
template <typename T, typename M>
__global__ void mt_scale(const long long* __restrict__ meta, int nt, int chunk,
                         const T* __restrict__ coef) {
    long long start, end;
    const long long* r = chunk_range(meta, nt, chunk, &start, &end);
    T* a = reinterpret_cast<T*>(r[0]);
    M k = load<M>(coef, 0);
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x)
        store<M>(a, i, load<M>(a, i) * k);
}
"""

K.define("optim", _SRC, ("mt_step_inc", "mt_adam", "mt_sgd", "mt_sqnorm", "mt_scale"))

_CAST_SRC = _TABLE_SRC + r"""
// Every tensor of the table cast at once: row slot 0 the float32 source, slot 1 the
// destination (same layout), rounded as the single cast kernel rounds (autocast's weights)
template <typename Tin, typename Tout>
__global__ void mt_cast(const long long* __restrict__ meta, int nt, int chunk) {
    long long start, end;
    const long long* r = chunk_range(meta, nt, chunk, &start, &end);
    const Tin* a = reinterpret_cast<const Tin*>(r[0]);
    Tout* out = reinterpret_cast<Tout*>(r[1]);
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) st(out, i, ld(a, i));
}
"""

K.define("optim_cast", _CAST_SRC, ("mt_cast",))

# template arguments (storage type, math type) per dtype name
TARGS = {"float32": "float, float", "bfloat16": "bf16_t, float", "float16": "half_t, float",
         "float64": "double, double"}

_TABLES: "OrderedDict[tuple, Any]" = OrderedDict()
_KEEP: list = []          # tables built during a capture: referenced by a graph, never freed
_TEMPLATES: dict = {}     # static key -> (host table with the gradient column unset, chunks)
_MAX_TABLES = 64


_BY_DTYPE: dict = {}


def _targs(dt: Any) -> tuple:
    """(template arguments, NumPy math scalar type) of a storage dtype (NumPy's ``dtype.name``
    is a Python property: cached by the dtype object)."""
    hit = _BY_DTYPE.get(dt)
    if hit is None:
        hit = _BY_DTYPE[dt] = (TARGS[dt.name],
                               np.float64 if dt.name == "float64" else np.float32)
    return hit


def covered(dtype: Any) -> bool:
    """Whether the multi-tensor kernels handle arrays of this NumPy dtype."""
    return K.dtype_name(dtype) in TARGS


def _ptrs(arrs: Sequence[Any] | None, nt: int) -> tuple:
    if arrs is None:
        return (0,) * nt
    return tuple(0 if a is None else a.data.ptr for a in arrs)


def static_key(lists: Sequence[Sequence[Any] | None], steps: Sequence[Any] | None) -> tuple:
    """The part of a table's cache key that does not change from step to step (all but the
    gradients, ``lists[1]``): callers that keep their parameter and state arrays compute it
    once and pass it as ``static``."""
    nt = len(lists[0])
    return (tuple(_ptrs(a, nt) for i, a in enumerate(lists) if i != 1),
            tuple(a.size for a in lists[0]), _ptrs(steps, nt))


def _table(cp: Any, lists: Sequence[Sequence[Any] | None], steps: Sequence[Any] | None,
           static: tuple | None, keep: bool = True) -> tuple[Any, int]:
    """The device table for these tensors (cached by pointers and sizes unless not ``keep``)
    and its chunk count. ``lists``: params, grads, then up to three state lists (None: no
    such state)."""
    nt = len(lists[0])
    if static is None:
        static = static_key(lists, steps)
    key = (static, _ptrs(lists[1], nt))
    hit = _TABLES.get(key)
    if hit is not None:
        _TABLES.move_to_end(key)
        return hit
    tmpl = _TEMPLATES.get(static) if keep else None
    if tmpl is None:
        others, sizes, step_ptrs = static
        chunks = [(n + CHUNK - 1) // CHUNK for n in sizes]
        first = np.zeros(nt, dtype=np.int64)
        if nt > 1:
            np.cumsum(chunks[:-1], out=first[1:])
        cols = [others[0], (0,) * nt, *others[1:]]
        while len(cols) < 5:
            cols.append((0,) * nt)
        cols += [sizes, step_ptrs]
        host = np.stack([np.asarray(c, dtype=np.int64) for c in cols] + [first], axis=1)
        tmpl = (host, int(sum(chunks)))
        if keep:
            _TEMPLATES[static] = tmpl
            while len(_TEMPLATES) > _MAX_TABLES:
                del _TEMPLATES[next(iter(_TEMPLATES))]
    host = tmpl[0].copy()
    host[:, 1] = key[1]   # the gradients: the only column that changes between steps
    # Pinned staging (never a pageable copy, which would wait for the stream to drain);
    # inside a capture the copy becomes a graph node (CuPy's ndarray.set refuses that).
    capturing = stream_capturing()
    dev = _upload.to_device(cp, host)
    entry = (dev, tmpl[1])
    if capturing:
        _KEEP.append(entry)
    if not keep:
        return entry
    _TABLES[key] = entry
    while len(_TABLES) > _MAX_TABLES:
        _TABLES.popitem(last=False)   # a table still in flight keeps its block: the pool
        # reuses freed blocks only in stream order
    return entry


def _lr_args(lr: Any, mt: Any) -> tuple:
    """(host lr, device lr pointer or 0): a CUDA float32 lr is read by the kernel."""
    if isinstance(lr, (int, float)):
        return mt(lr), np.uint64(0)
    return mt(0.0), np.uint64(lr.data.ptr)


def adam(params: Sequence[Any], grads: Sequence[Any], exp_avgs: Sequence[Any],
         exp_avg_sqs: Sequence[Any], max_exp_avg_sqs: Sequence[Any] | None,
         steps: Sequence[Any] | None, step: float, *, lr: Any, beta1: float, beta2: float,
         eps: float, weight_decay: float, amsgrad: bool, maximize: bool,
         decoupled_weight_decay: bool, static: tuple | None = None) -> None:
    """One Adam/AdamW step over all tensors (CuPy arrays of one dtype, C-contiguous, in place).

    ``steps``: float32/float64 device scalars per tensor, incremented here and read by the
    kernel (capturable/fused); None means every tensor is at host step ``step`` (after
    increment). ``lr``: a Python number or a float32 CuPy scalar. ``static``: the tensors'
    :func:`static_key`, when the caller keeps it.
    """
    import cupy as cp  # noqa: PLC0415
    targs, mt = _targs(params[0].dtype)
    lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs]
    table, nchunks = _table(cp, lists, steps, static)
    nt = len(params)
    step_kind = STEP_HOST
    if steps is not None:
        step_kind = STEP_F32 if steps[0].dtype == np.float32 else STEP_F64
        K.function("optim", "mt_step_inc", targs)(((nt + 127) // 128, 1, 1), (128, 1, 1),
                                                  (table, np.int32(nt), np.int32(step_kind)))
        step_size, bc2_sqrt = 0.0, 1.0
    else:
        if not isinstance(lr, (int, float)):
            raise TypeError("[Adam] a device lr needs device steps (capturable=True)")
        step_size = lr / (1 - beta1 ** step)
        bc2_sqrt = (1 - beta2 ** step) ** 0.5
    lr_host, lr_dev = _lr_args(lr, mt)
    if nchunks == 0:
        return
    # the hyperparameters' kernel scalars, kept while they stay the same (~12 NumPy scalars
    # a step otherwise); only the step's bias corrections change each step
    ckey = (mt, nt, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
            step_kind)
    plain = type(eps) in _NUM and type(weight_decay) in _NUM and type(beta1) in _NUM and \
        type(beta2) in _NUM   # (a Tensor hyperparameter's value could change: not kept)
    consts = _ADAM_CONSTS.get(ckey) if plain else None
    if consts is None:
        if len(_ADAM_CONSTS) > 256:
            _ADAM_CONSTS.clear()
        consts = (
            (np.int32(nt), np.int32(CHUNK)),
            (mt(beta1), mt(beta2), mt(eps), mt(weight_decay), np.int32(decoupled_weight_decay),
             np.int32(amsgrad), np.int32(maximize), np.int32(step_kind)))
        if plain:
            _ADAM_CONSTS[ckey] = consts
    K.function("optim", "mt_adam", targs)(
        (nchunks, 1, 1), (THREADS, 1, 1),
        (table,) + consts[0] + (lr_host, lr_dev) + consts[1] + (mt(step_size), mt(bc2_sqrt)))


_ADAM_CONSTS: dict = {}   # adam's hyperparameters -> their kernel scalars
_NUM = (float, int, bool)


def sgd(params: Sequence[Any], grads: Sequence[Any], bufs: Sequence[Any] | None, first: bool,
        *, lr: Any, momentum: float, dampening: float, weight_decay: float, nesterov: bool,
        maximize: bool, static: tuple | None = None) -> None:
    """One SGD step over all tensors (CuPy arrays of one dtype, C-contiguous, in place).

    ``bufs``: the momentum buffers (None without momentum); ``first`` fills them with the
    gradient instead of decaying them (all tensors of one call share it).
    """
    import cupy as cp  # noqa: PLC0415
    targs, mt = _targs(params[0].dtype)
    table, nchunks = _table(cp, [params, grads, bufs], None, static)
    if nchunks == 0:
        return
    lr_host, lr_dev = _lr_args(lr, mt)
    K.function("optim", "mt_sgd", targs)(
        (nchunks, 1, 1), (THREADS, 1, 1),
        (table, np.int32(len(params)), np.int32(CHUNK), lr_host, lr_dev, mt(momentum),
         mt(dampening), mt(weight_decay), np.int32(nesterov), np.int32(maximize),
         np.int32(first)))


def multi_cast(srcs: Sequence[Any], dsts: Sequence[Any], keep: bool = True) -> None:
    """``dsts[i][...] = srcs[i]`` in one launch: sources of one float dtype, destinations of
    another, each pair dense in one layout (a flat index is the same element in both).
    ``keep``: cache the pointer table (False for arrays that are new at every call, such as
    gradients, which would only push the optimizers' tables out of the cache)."""
    import cupy as cp  # noqa: PLC0415
    table, nchunks = _table(cp, [list(srcs), list(dsts)], None, None, keep)
    if nchunks:
        K.function("optim_cast", "mt_cast", f"{K.dtype_ctype(srcs[0].dtype)}, "
                                            f"{K.dtype_ctype(dsts[0].dtype)}")(
            (nchunks, 1, 1), (THREADS, 1, 1), (table, np.int32(len(srcs)), np.int32(CHUNK)))


def _dense(a: Any) -> bool:
    """Whether ``a`` covers one block of memory exactly (any order of its dims): a norm and a
    scale do not care about the order, so channels-last gradients qualify too."""
    if a.flags.c_contiguous:
        return True
    from ember.backend.cuda_ops import _layout as L  # noqa: PLC0415
    return L.dense_order(a) is not None


def clip_covered(arrays: Sequence[Any]) -> bool:
    """Whether :func:`sq_norms` and :func:`scale_` take these arrays (one covered dtype,
    dense, non-empty list)."""
    if not arrays:
        return False
    dt = arrays[0].dtype
    return covered(dt) and all(a.dtype == dt and _dense(a) for a in arrays)


def sq_norms(arrays: Sequence[Any]) -> Any:
    """Each array's sum of squares (fp64 accumulation) as one float64 device array, in two
    launches whatever the number of arrays (``clip_grad_norm_``'s per-tensor norms)."""
    import cupy as cp  # noqa: PLC0415
    dt = arrays[0].dtype
    out = cp.zeros(len(arrays), cp.float64)
    table, nchunks = _table(cp, [list(arrays), None], None, None)
    if nchunks:
        K.function("optim", "mt_sqnorm", _targs(dt)[0])(
            (nchunks, 1, 1), (THREADS, 1, 1),
            (table, np.int32(len(arrays)), np.int32(CHUNK), out))
    return out


def scale_(arrays: Sequence[Any], coef: Any) -> None:
    """Multiply every array in place by ``coef``, a one-element device array of their dtype."""
    import cupy as cp  # noqa: PLC0415
    dt = arrays[0].dtype
    table, nchunks = _table(cp, [list(arrays), None], None, None)
    if nchunks:
        K.function("optim", "mt_scale", _targs(dt)[0])(
            (nchunks, 1, 1), (THREADS, 1, 1),
            (table, np.int32(len(arrays)), np.int32(CHUNK), coef))
