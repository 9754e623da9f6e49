"""Fused training-mode batch_norm (NVRTC kernels, forward and backward), in both layouts.

The kernels are templates over ``<T, W>``: ``T`` stores the activations (input, output,
gradients), ``W`` the affine parameters and the returned batch statistics. Under autocast a
bfloat16 activation meets float32 weights (batch_norm is on neither autocast list, as in
torch), so ``W`` may be wider than ``T``; all arithmetic is fp32.

Each statistics kernel finalizes in the same launch: the last of a column's P blocks to
finish (an atomic counter per column, kept per device and stream, reset by that block) adds
the column's partials, one warp per channel, and writes mean, rstd, the returned statistics
and the apply coefficients (backward: the sums, dweight, dbias and the dx coefficients). So a
training forward is two launches (statistics, normalization) and so is the backward (the
running-statistics update is F.batch_norm's one extra kernel, ``update_running``).

NCHW (``(N, C, *)`` C-contiguous):
- statistics: a (C, P) grid of blocks sums ``x - K_c`` and its square per channel (``K_c`` is
  the channel's first element, a shift that keeps the fp32 sums from cancelling); the
  channel's finalize adds the P partials in fp64 and writes mean, rstd and the biased
  variance;
- normalization and ``dx`` are grid-stride elementwise kernels that track the channel of
  each element incrementally (no per-element 64-bit division).

Channels-last (memory ``(N, *, C)``: rows of C channels):
- statistics: each thread owns 8 (bf16/fp16; 4 for fp32) neighbouring channels and reads them
  with one 16-byte load per row; a block is channel groups x rows over a chunk of rows, the
  row partials meet in shared memory, one partial per (channel, chunk); the same fp64
  finalize as NCHW, by the last block of each column of channels;
- normalization ``(x - mean) * (rstd * w) + b`` and ``dx = A g + B (x - mean) + D`` run flat
  over memory in 16-byte vectors (the channel is ``i % C``, tracked incrementally); the
  output keeps the input's layout. C not a multiple of the vector width or unaligned
  arrays: scalar kernels (blocks of 32 channels x 8 rows for the statistics).

Evaluation mode and anything uncovered return ``NotImplemented`` (generic CuPy code). What
``ctx`` saves is the generic op's layout (ember/ops/nn_norm.py), so under ``create_graph``
its differentiable backward runs on the same node.
"""
from __future__ import annotations

from typing import Any

from ember.backend.cuda_ops import _layout as L
from ember.backend.cuda_ops import _nvrtc as K
from ember.ops.registry import OPS

_SRC = r"""
// ---- The statistics kernels finalize in the same launch ("last block done", as CUDA's
// threadFenceReduction sample): the P blocks of a column (a channel for NCHW, a group of
// channels for channels-last) each publish partial sums, fence, and count themselves in on
// the column's counter; the block that counts last sees every partial and finalizes the
// column's channels, then resets the counter. Counters persist between launches (one buffer
// per device and stream, zero between kernels), which saves a finalize launch per call.
__device__ __forceinline__ bool last_of_column(unsigned int* count, int col, int P) {
    __shared__ int last;
    __threadfence();                 // this block's partials are visible before it counts in
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        unsigned int t = atomicAdd(count + col, 1u);
        last = t == (unsigned int)(P - 1);
        if (last) count[col] = 0u;   // ready for the next launch on this stream
    }
    __syncthreads();
    return last != 0;
}

// Partials part (fp32): [p1 C*P | p2 C*P]. Workspace ws (fp32): forward
// [mean C | rstd C | coef 3C], where coef is mean, rstd * weight, bias per channel (the
// vectorized apply's inputs; ws outlives the call, saved for backward, so the partials live
// apart); backward [sums 2C | coef 4C], sums = (sum g, sum g * xhat), coef for
// dx = A g + B (x - mean) + D: mean, A = rstd * w, B = -A * rstd * sum(g xhat) / n,
// D = -A * sum(g) / n.

// Forward finalize of channel c by one warp: fp64 sums of the P partials; mean, rstd, the
// returned statistics (o1 = mean, o2 = biased variance, parameter dtype) and coef. kstride:
// distance between the first elements of neighbouring channels (HW for NCHW, 1 for
// channels-last), where the shift K_c of the statistics kernels was read.
template <typename T, typename W>
__device__ void fin_fwd(int c, int lane, float* ws, const float* part, int P, int C,
                        const T* x, long long kstride, long long count, float eps, W* o1, W* o2,
                        const W* w, const W* b, int has_w, int has_b) {
    const float* p1 = part;
    const float* p2 = part + (long long)C * P;
    double s1 = 0.0, s2 = 0.0;
    for (int k = lane; k < P; k += 32) {      // ld.cg: other blocks' partials, not from L1
        s1 += __ldcg(p1 + (long long)c * P + k);
        s2 += __ldcg(p2 + (long long)c * P + k);
    }
    for (int o = 16; o > 0; o >>= 1) {
        s1 += __shfl_xor_sync(0xffffffffu, s1, o);
        s2 += __shfl_xor_sync(0xffffffffu, s2, o);
    }
    if (lane) return;
    double m = s1 / count;
    double var = s2 / count - m * m;
    if (var < 0.0) var = 0.0;
    float mu = ld(x, (long long)c * kstride) + (float)m;
    float r = 1.f / sqrtf((float)var + eps);
    ws[c] = mu;
    ws[C + c] = r;
    st(o1, c, mu);
    st(o2, c, (float)var);
    ws[2 * C + c] = mu;
    ws[3 * C + c] = has_w ? r * ld(w, c) : r;
    ws[4 * C + c] = has_b ? ld(b, c) : 0.f;
}

// Backward finalize of channel c by one warp: sums, dbias (o1) / dweight (o2), coef.
template <typename T, typename W>
__device__ void fin_bwd(int c, int lane, float* ws, const float* part, int P, int C,
                        const float* mean, const float* rstd, float inv_count, W* o1, W* o2,
                        const W* w, int has_w) {
    const float* p1 = part;
    const float* p2 = part + (long long)C * P;
    float s1 = 0.f, s2 = 0.f;
    for (int k = lane; k < P; k += 32) {
        s1 += __ldcg(p1 + (long long)c * P + k);
        s2 += __ldcg(p2 + (long long)c * P + k);
    }
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    if (lane) return;
    ws[c] = s1;
    ws[C + c] = s2;
    st(o1, c, s1);
    st(o2, c, s2);
    float r = rstd[c];
    float A = has_w ? r * ld(w, c) : r;
    float* coef = ws + 2 * C;
    coef[c] = mean[c];
    coef[C + c] = A;
    coef[2 * C + c] = -A * r * s2 * inv_count;
    coef[3 * C + c] = -A * s1 * inv_count;
}

// Channels [c0, c0 + nc) of a finished column, one warp per channel (mode 0: forward).
template <typename T, typename W>
__device__ void finish_column(int mode, int c0, int nc, float* ws, const float* part, int P,
                              int C, const T* x, long long kstride, long long count, float eps,
                              const float* mean, const float* rstd, W* o1, W* o2,
                              const W* w, const W* b, int has_w, int has_b) {
    int t = threadIdx.y * blockDim.x + threadIdx.x;
    int lane = t & 31, nw = (blockDim.x * blockDim.y) >> 5;
    for (int k = t >> 5; k < nc; k += nw) {
        if (mode == 0)
            fin_fwd<T, W>(c0 + k, lane, ws, part, P, C, x, kstride, count, eps, o1, o2, w, b,
                          has_w, has_b);
        else
            fin_bwd<T, W>(c0 + k, lane, ws, part, P, C, mean, rstd, (float)(1.0 / count), o1,
                          o2, w, has_w);
    }
}

// ---- NCHW. Within channel c, flat j in [0, N*HW) is (n, s) = divmod(j, HW).
// Threads step j by `stride`; (n, s) advance by (sq, sr) = divmod(stride, HW), carrying.
// Grid (C, P); mode 0 sums x - K_c and its square (K_c: the channel's first element, a shift
// that keeps the fp32 sums from cancelling); mode 1 sums g and g * xhat. Then the column
// (channel) finalize above.
template <typename T, typename W>
__global__ void bn_stats(const T* __restrict__ x, const T* __restrict__ g, float* ws,
                         float* part, unsigned int* count, int N, int C, int HW, int mode,
                         float eps, const float* mean, const float* rstd, W* o1, W* o2, const W* w,
                         const W* b, int has_w, int has_b) {
    __shared__ float sh[32];
    int c = blockIdx.x, P = gridDim.y;
    long long total = (long long)N * HW;
    long long j = (long long)blockIdx.y * blockDim.x + threadIdx.x;
    long long stride = (long long)P * blockDim.x;
    long long n = j / HW, s = j % HW, sq = stride / HW, sr = stride % HW;
    float a1 = 0.f, a2 = 0.f;
    if (mode == 0) {
        float K = ld(x, (long long)c * HW);
        for (; j < total; j += stride) {
            float d = ld(x, (n * C + c) * HW + s) - K;
            a1 += d;
            a2 += d * d;
            n += sq; s += sr;
            if (s >= HW) { s -= HW; ++n; }
        }
    } else {
        float mu = mean[c], r = rstd[c];
        for (; j < total; j += stride) {
            long long k = (n * C + c) * HW + s;
            float gv = ld(g, k);
            a1 += gv;
            a2 += gv * (ld(x, k) - mu) * r;
            n += sq; s += sr;
            if (s >= HW) { s -= HW; ++n; }
        }
    }
    a1 = row_sum(a1, sh);
    a2 = row_sum(a2, sh);
    float* p1 = part;
    if (threadIdx.x == 0) {
        p1[(long long)c * P + blockIdx.y] = a1;
        p1[(long long)C * P + (long long)c * P + blockIdx.y] = a2;
    }
    if (!last_of_column(count, c, P)) return;
    finish_column<T, W>(mode, c, 1, ws, part, P, C, x, HW, total, eps, mean, rstd, o1, o2, w,
                        b, has_w, has_b);
}

template <typename T, typename W>
__global__ void bn_apply(const T* __restrict__ x, const W* __restrict__ w,
                         const W* __restrict__ b, const float* __restrict__ ws,
                         T* __restrict__ y, long long total, int C, int HW, int has_w,
                         int has_b) {
    const float* mean = ws;
    const float* rstd = ws + C;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long plane = i / HW, s = i % HW;
    long long sq = stride / HW, sr = stride % HW;
    int c = (int)(plane % C), cq = (int)(sq % C);
    for (; i < total; i += stride) {
        float v = (ld(x, i) - mean[c]) * rstd[c];
        if (has_w) v *= ld(w, c);
        if (has_b) v += ld(b, c);
        st(y, i, v);
        s += sr; c += cq;
        if (s >= HW) { s -= HW; ++c; }
        if (c >= C) c -= C;
    }
}

template <typename T, typename W>
__global__ void bn_bwd_dx(const T* __restrict__ g, const T* __restrict__ x,
                          const W* __restrict__ w, const float* __restrict__ mean,
                          const float* __restrict__ rstd, const float* __restrict__ sums,
                          T* __restrict__ dx, long long total, int C, int HW, float inv_count,
                          int has_w) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long plane = i / HW, s = i % HW;
    long long sq = stride / HW, sr = stride % HW;
    int c = (int)(plane % C), cq = (int)(sq % C);
    for (; i < total; i += stride) {
        float r = rstd[c];
        float xh = (ld(x, i) - mean[c]) * r;
        float v = ld(g, i) - sums[c] * inv_count - xh * sums[C + c] * inv_count;
        st(dx, i, v * r * (has_w ? ld(w, c) : 1.f));
        s += sr; c += cq;
        if (s >= HW) { s -= HW; ++c; }
        if (c >= C) c -= C;
    }
}

// running = (1 - momentum) * running + momentum * stat (the variance unbiased by `unbias`)
template <typename T, typename W>
__global__ void bn_running(W* __restrict__ rm, W* __restrict__ rv, const W* __restrict__ mean,
                           const W* __restrict__ var, int C, float momentum, float unbias,
                           int has_m, int has_v) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    if (has_m) st(rm, c, ld(rm, c) * (1.f - momentum) + ld(mean, c) * momentum);
    if (has_v) st(rv, c, ld(rv, c) * (1.f - momentum) + ld(var, c) * unbias * momentum);
}

// ---- channels-last: M rows of C channels. Block (32, 8): 32 channels, 8 rows at a time, over
// rows [blockIdx.y * chunk, +chunk). mode 0: sums of x - K_c and its square (forward);
// mode 1: sums of g and g * xhat (backward; g given). Column: the block's 32 channels.
template <typename T, typename W>
__global__ void bncl_stats(const T* __restrict__ x, const T* __restrict__ g, float* ws,
                           float* part, unsigned int* count, long long M, int C,
                           long long chunk, int mode,
                           float eps, const float* mean, const float* rstd, W* o1, W* o2,
                           const W* w, const W* b, int has_w, int has_b) {
    __shared__ float s1[8][33], s2[8][33];
    int c = blockIdx.x * 32 + threadIdx.x, P = gridDim.y;
    long long r0 = (long long)blockIdx.y * chunk;
    long long r1 = r0 + chunk < M ? r0 + chunk : M;
    float a1 = 0.f, a2 = 0.f;
    if (c < C) {
        if (mode == 0) {
            float K = ld(x, c);
            for (long long r = r0 + threadIdx.y; r < r1; r += 8) {
                float d = ld(x, r * C + c) - K;
                a1 += d;
                a2 += d * d;
            }
        } else {
            float mu = mean[c], rs = rstd[c];
            for (long long r = r0 + threadIdx.y; r < r1; r += 8) {
                long long k = r * C + c;
                float gv = ld(g, k);
                a1 += gv;
                a2 += gv * (ld(x, k) - mu) * rs;
            }
        }
    }
    s1[threadIdx.y][threadIdx.x] = a1;
    s2[threadIdx.y][threadIdx.x] = a2;
    __syncthreads();
    float* p1 = part;
    if (threadIdx.y == 0 && c < C) {
        for (int k = 1; k < 8; ++k) { a1 += s1[k][threadIdx.x]; a2 += s2[k][threadIdx.x]; }
        p1[(long long)c * P + blockIdx.y] = a1;
        p1[(long long)C * P + (long long)c * P + blockIdx.y] = a2;
    }
    if (!last_of_column(count, blockIdx.x, P)) return;
    int cb = blockIdx.x * 32;
    finish_column<T, W>(mode, cb, C - cb < 32 ? C - cb : 32, ws, part, P, C, x, 1, M, eps, mean,
                        rstd, o1, o2, w, b, has_w, has_b);
}

// Vectorized channels-last statistics (C % VW<T>::n == 0, 16-byte aligned rows): each thread
// owns N = VW<T>::n neighbouring channels and reads them with one 16-byte load per row; a
// block of 256 threads is GB channel groups x RB rows (GB * RB <= 256), over one chunk of
// rows; the RB row partials meet in shared memory (RB * GB * N * 2 floats <= 16 KB).
// Column: the block's GB * N channels.
template <typename T, typename W>
__global__ void bncl_stats_v(const T* __restrict__ x, const T* __restrict__ g, float* ws,
                             float* part, unsigned int* count, long long M, int C, long long chunk,
                             int mode, int GB, int RB, float eps, const float* mean,
                             const float* rstd, W* o1, W* o2, const W* w, const W* b,
                             int has_w, int has_b) {
    constexpr int N = VW<T>::n;
    extern __shared__ float sh[];
    int t = threadIdx.x, gi = t % GB, ri = t / GB, P = gridDim.y;
    int cb = blockIdx.x * GB * N;            // first channel of the block
    int c0 = cb + gi * N;
    bool act = ri < RB && c0 < C;
    long long r0 = (long long)blockIdx.y * chunk;
    long long r1 = r0 + chunk < M ? r0 + chunk : M;
    float a1[N], a2[N], k1[N], k2[N];
#pragma unroll
    for (int j = 0; j < N; ++j) { a1[j] = 0.f; a2[j] = 0.f; k1[j] = 0.f; k2[j] = 0.f; }
    if (act) {
        if (mode == 0) {
            ldv(x + c0, k1);                 // shift: row 0
            for (long long r = r0 + ri; r < r1; r += RB) {
                float v[N];
                ldv(x + r * C + c0, v);
#pragma unroll
                for (int j = 0; j < N; ++j) { float d = v[j] - k1[j]; a1[j] += d; a2[j] += d * d; }
            }
        } else {
#pragma unroll
            for (int j = 0; j < N; ++j) { k1[j] = mean[c0 + j]; k2[j] = rstd[c0 + j]; }
            for (long long r = r0 + ri; r < r1; r += RB) {
                float u[N], v[N];
                ldv(g + r * C + c0, u);
                ldv(x + r * C + c0, v);
#pragma unroll
                for (int j = 0; j < N; ++j) {
                    a1[j] += u[j];
                    a2[j] += u[j] * (v[j] - k1[j]) * k2[j];
                }
            }
        }
    }
    int W_ = GB * N;                         // channels per block
    float* s1 = sh;
    float* s2 = sh + RB * W_;
    if (ri < RB) {
#pragma unroll
        for (int j = 0; j < N; ++j) { s1[ri * W_ + gi * N + j] = a1[j]; s2[ri * W_ + gi * N + j] = a2[j]; }
    }
    __syncthreads();
    float* p1 = part;
    for (int cl = t; cl < W_; cl += blockDim.x) {
        int c = cb + cl;
        if (c >= C) continue;
        float u = 0.f, q = 0.f;
        for (int k = 0; k < RB; ++k) { u += s1[k * W_ + cl]; q += s2[k * W_ + cl]; }
        p1[(long long)c * P + blockIdx.y] = u;
        p1[(long long)C * P + (long long)c * P + blockIdx.y] = q;
    }
    if (!last_of_column(count, blockIdx.x, P)) return;
    finish_column<T, W>(mode, cb, C - cb < W_ ? C - cb : W_, ws, part, P, C, x, 1, M, eps, mean,
                        rstd, o1, o2, w, b, has_w, has_b);
}

// y = (x - mean) * (rstd * w) + b over 16-byte vectors (coef: the forward workspace's)
template <typename T, typename W>
__global__ void bncl_apply_v(const T* __restrict__ x, const float* __restrict__ ws,
                             T* __restrict__ y, long long nv, int C) {
    constexpr int N = VW<T>::n;
    const float* coef = ws + 2 * C;
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nt = (long long)gridDim.x * blockDim.x;
    int c = (int)((k * N) % C), step = (int)((nt * N) % C);
    for (; k < nv; k += nt) {
        float v[N];
        ldv(x + k * N, v);
#pragma unroll
        for (int j = 0; j < N; ++j)
            v[j] = (v[j] - coef[c + j]) * coef[C + c + j] + coef[2 * C + c + j];
        stv(y + k * N, v);
        c += step;
        if (c >= C) c -= C;
    }
}

// dx = A g + B (x - mean) + D over 16-byte vectors (coef: the backward workspace's)
template <typename T, typename W>
__global__ void bncl_bwd_dx_v(const T* __restrict__ g, const T* __restrict__ x,
                              const float* __restrict__ ws, T* __restrict__ dx, long long nv,
                              int C) {
    constexpr int N = VW<T>::n;
    const float* coef = ws + 2 * C;
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nt = (long long)gridDim.x * blockDim.x;
    int c = (int)((k * N) % C), step = (int)((nt * N) % C);
    for (; k < nv; k += nt) {
        float u[N], v[N];
        ldv(g + k * N, u);
        ldv(x + k * N, v);
#pragma unroll
        for (int j = 0; j < N; ++j) {
            int cc = c + j;
            u[j] = coef[C + cc] * u[j] + coef[2 * C + cc] * (v[j] - coef[cc]) + coef[3 * C + cc];
        }
        stv(dx + k * N, u);
        c += step;
        if (c >= C) c -= C;
    }
}

template <typename T, typename W>
__global__ void bncl_apply(const T* __restrict__ x, const W* __restrict__ w,
                           const W* __restrict__ b, const float* __restrict__ ws,
                           T* __restrict__ y, long long total, int C, int has_w, int has_b) {
    const float* mean = ws;
    const float* rstd = ws + C;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    int c = (int)(i % C), cq = (int)(stride % C);
    for (; i < total; i += stride) {
        float v = (ld(x, i) - mean[c]) * rstd[c];
        if (has_w) v *= ld(w, c);
        if (has_b) v += ld(b, c);
        st(y, i, v);
        c += cq;
        if (c >= C) c -= C;
    }
}

template <typename T, typename W>
__global__ void bncl_bwd_dx(const T* __restrict__ g, const T* __restrict__ x,
                            const W* __restrict__ w, const float* __restrict__ mean,
                            const float* __restrict__ rstd, const float* __restrict__ sums,
                            T* __restrict__ dx, long long total, int C, float inv_count,
                            int has_w) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    int c = (int)(i % C), cq = (int)(stride % C);
    for (; i < total; i += stride) {
        float r = rstd[c];
        float xh = (ld(x, i) - mean[c]) * r;
        float v = ld(g, i) - sums[c] * inv_count - xh * sums[C + c] * inv_count;
        st(dx, i, v * r * (has_w ? ld(w, c) : 1.f));
        c += cq;
        if (c >= C) c -= C;
    }
}
"""

K.define("batchnorm", _SRC, ("bn_stats", "bn_apply", "bn_bwd_dx", "bncl_stats", "bncl_apply",
                             "bncl_bwd_dx", "bn_running", "bncl_stats_v", "bncl_apply_v",
                             "bncl_bwd_dx_v"))

_THREADS = 256


def _bn_blocks(c: int, per_channel: int, threads: int) -> int:
    """NCHW blocks per channel for the statistics kernels: about 1,000 blocks in all, none
    with fewer than ~4 elements per thread."""
    want = max(1, 1024 // max(c, 1))
    most = max(1, per_channel // (threads * 4))
    return max(1, min(want, most, 65535))


def _cl_chunks(c: int, rows: int) -> tuple[int, int]:
    """Channels-last statistics: (chunks of rows, rows per chunk) for about 1,000 blocks of
    32 channels, each chunk at least 64 rows."""
    col_blocks = (c + 31) // 32
    want = max(1, 1024 // col_blocks)
    p = max(1, min(want, rows // 64, 65535))
    chunk = (rows + p - 1) // p
    return (rows + chunk - 1) // chunk, chunk


def _param_dtype(input: Any, *params: Any) -> Any:
    """The dtype of the parameters and statistics (all given ones must agree; the input's
    when none is given), or None when they disagree or the kernels do not cover it."""
    dts = {a.dtype for a in params if a is not None}
    if len(dts) > 1:
        return None
    dt = dts.pop() if dts else input.dtype
    if K.dtype_ctype(dt) is None:
        return None
    if any(a is not None and not a.flags.c_contiguous for a in params):
        return None
    return dt


def _layout(a: Any) -> str | None:
    if a.flags.c_contiguous:
        return "c"
    if L.is_channels_last(a):
        return "cl"
    return None


def _vec(c: int, *arrays: Any) -> int:
    """Elements per 16-byte vector when the channels-last vector kernels apply (C a multiple
    of it, every array 16-byte aligned), else 0."""
    n = 16 // arrays[0].itemsize
    return n if c % n == 0 and all(a.data.ptr % 16 == 0 for a in arrays) else 0


class _Kernels(dict):
    """The batch-norm kernels of one template instantiation, fetched on first use."""

    __slots__ = ("targs",)

    def __missing__(self, name: str) -> Any:
        fn = self[name] = K.function("batchnorm", name, self.targs)
        return fn


_KERNELS: dict = {}


def _kernels(targs: str) -> _Kernels:
    import cupy  # noqa: PLC0415 - only reached on the GPU
    key = (targs, cupy.cuda.runtime.getDevice())   # modules are loaded per device
    ks = _KERNELS.get(key)
    if ks is None:
        ks = _KERNELS[key] = _Kernels()
        ks.targs = targs
    return ks


# (layout, n, c, hw, nvec) -> launch plan of the statistics kernel
_GEOM: dict = {}


def _geometry(lay: str, n: int, c: int, hw: int, nvec: int) -> tuple:
    """(kernel, grid, block, P, columns, shape args, vector args, shared bytes) of the
    statistics launch: NCHW is (C, P) blocks (a column per channel); channels-last blocks of
    32 channels (scalar) or GB x N channels (vectorized) over P chunks of rows."""
    key = (lay, n, c, hw, nvec)
    geo = _GEOM.get(key)
    if geo is not None:
        return geo
    m = n * hw
    if lay == "c":
        p = _bn_blocks(c, m, _THREADS)
        geo = ("bn_stats", (c, p, 1), (_THREADS, 1, 1), p, c,
               (K.i32(n), K.i32(c), K.i32(hw)), (), 0)
    elif nvec:
        groups = c // nvec
        gb = min(groups, _THREADS)
        rb = _THREADS // gb
        gx = (groups + gb - 1) // gb
        p = max(1, min(2048 // gx, m // (rb * 8), 65535))
        chunk = (m + p - 1) // p
        p = (m + chunk - 1) // chunk
        geo = ("bncl_stats_v", (gx, p, 1), (_THREADS, 1, 1), p, gx,
               (K.i64(m), K.i32(c), K.i64(chunk)), (K.i32(gb), K.i32(rb)),
               rb * gb * nvec * 2 * 4)
    else:
        p, chunk = _cl_chunks(c, m)
        cols = (c + 31) // 32
        geo = ("bncl_stats", (cols, p, 1), (32, 8, 1), p, cols,
               (K.i64(m), K.i32(c), K.i64(chunk)), (), 0)
    _GEOM[key] = geo
    return geo


# (device, stream) -> the column counters of the statistics kernels (uint32, zero between
# launches: the last block of each column resets its own). Per stream, since launches on two
# streams may overlap.
_COUNTS: dict = {}


def _counts(xp: Any, cols: int) -> Any:
    key = (xp.cuda.runtime.getDevice(), xp.cuda.get_current_stream().ptr)
    buf = _COUNTS.get(key)
    if buf is None or buf.size < cols:
        buf = _COUNTS[key] = xp.zeros(max(cols, 1024), xp.uint32)
    return buf


_FWD, _BWD = K.i32(0), K.i32(1)


class BatchNormImpl:
    """Training-mode ``_batch_norm`` over NCHW or channels-last input; half-precision input
    may come with float32 parameters (then the batch statistics are float32 too). Forward:
    statistics (finalized in the same launch) and normalization, two launches; backward:
    statistics and dx, two launches."""

    def forward(ctx, xp, input, weight, bias, running_mean, running_var, training, eps):
        ct = K.ctype(input)
        if not training or ct is None or input.ndim < 2 or input.size == 0:
            return NotImplemented
        wdt = _param_dtype(input, weight, bias, running_mean, running_var)
        lay = _layout(input)
        if wdt is None or lay is None:
            return NotImplemented
        n, c = input.shape[0], input.shape[1]
        hw = input.size // (n * c)
        if n * hw < 2:
            return NotImplemented  # F.batch_norm rejects it; the generic code decides
        targs = f"{ct}, {K.dtype_ctype(wdt)}"
        fn = _kernels(targs).__getitem__
        nvec = _vec(c, input) if lay == "cl" else 0
        name, grid, block, p, cols, dims, vdims, shared = _geometry(lay, n, c, hw, nvec)
        ws = xp.empty(5 * c, xp.float32)       # mean, rstd, coef (saved: mean and rstd)
        part = xp.empty(2 * c * p, xp.float32)
        mean_t, var_t = xp.empty((2, c), wdt)  # the returned statistics: one allocation
        wa = weight if weight is not None else mean_t
        ba = bias if bias is not None else mean_t
        hasw, hasb = K.i32(weight is not None), K.i32(bias is not None)
        fn(name)(grid, block, (input, input, ws, part, _counts(xp, cols)) + dims + (_FWD,) +
                 vdims + (K.f32(eps), ws, ws, mean_t, var_t, wa, ba, hasw, hasb),
                 shared_mem=shared)
        if lay == "c":
            y = xp.empty_like(input)
            grid, block = K.flat_grid(input.size, _THREADS, 4)
            fn("bn_apply")(grid, block, (input, wa, ba, ws, y, K.i64(input.size), K.i32(c),
                                         K.i32(hw), hasw, hasb))
        else:
            y = L.empty_like(xp, input)
            if nvec and _vec(c, y):
                nv = input.size // nvec
                grid, block = K.flat_grid(nv, _THREADS, 2)
                fn("bncl_apply_v")(grid, block, (input, ws, y, K.i64(nv), K.i32(c)))
            else:
                grid, block = K.flat_grid(input.size, _THREADS, 4)
                fn("bncl_apply")(grid, block, (input, wa, ba, ws, y, K.i64(input.size),
                                               K.i32(c), hasw, hasb))
        bshape = (1, c) + (1,) * (input.ndim - 2)
        ctx.p = (True, eps, (0,) + tuple(range(2, input.ndim)), bshape)
        ctx.bn_layout = (lay, targs, wdt)
        ctx.save(input, weight, ws[:c].reshape(bshape), ws[c:2 * c].reshape(bshape))
        return y, mean_t, var_t

    def backward(ctx, g, _gm=None, _gv=None):
        if g is None:
            return (None,) * 7
        import cupy as xp  # noqa: PLC0415 - only reached on the GPU
        saved = ctx.saved
        x, w, mean, rstd = saved[0], saved[1], saved[2], saved[3]
        lay, targs, wdt = ctx.bn_layout
        fn = _kernels(targs).__getitem__
        xa = x._data
        n, c = xa.shape[0], xa.shape[1]
        hw = xa.size // (n * c)
        ma, ra = mean._data, rstd._data
        wa = w._data if w is not None else None
        if lay == "c":
            ga = K.contiguous(xp, g._data, xa.dtype)
            nvec = 0
        else:
            ga = L.as_layout(xp, g._data, xa, xa.dtype)
            nvec = _vec(c, xa, ga)
        name, grid, block, p, cols, dims, vdims, shared = _geometry(lay, n, c, hw, nvec)
        ws = xp.empty(6 * c, xp.float32)       # sums, coef
        part = xp.empty(2 * c * p, xp.float32)
        gb, gw = xp.empty((2, c), wdt)          # dbias, dweight: one allocation
        wp = wa if wa is not None else gw
        hasw = K.i32(wa is not None)
        fn(name)(grid, block, (xa, ga, ws, part, _counts(xp, cols)) + dims + (_BWD,) + vdims +
                 (K.f32(0.0), ma, ra, gb, gw, wp, wp, hasw, hasw), shared_mem=shared)
        need = ctx.needs_input_grad
        gx = None
        if need[0]:
            if lay == "c":
                dx = xp.empty_like(xa)
                grid, block = K.flat_grid(xa.size, _THREADS, 4)
                fn("bn_bwd_dx")(grid, block, (ga, xa, wp, ma, ra, ws, dx, K.i64(xa.size),
                                              K.i32(c), K.i32(hw), K.f32(1.0 / (n * hw)),
                                              hasw))
            else:
                dx = L.empty_like(xp, xa)
                if nvec and _vec(c, dx):
                    nv = xa.size // nvec
                    grid, block = K.flat_grid(nv, _THREADS, 2)
                    fn("bncl_bwd_dx_v")(grid, block, (ga, xa, ws, dx, K.i64(nv), K.i32(c)))
                else:
                    grid, block = K.flat_grid(xa.size, _THREADS, 4)
                    fn("bncl_bwd_dx")(grid, block, (ga, xa, wp, ma, ra, ws, dx,
                                                    K.i64(xa.size), K.i32(c),
                                                    K.f32(1.0 / (n * hw)), hasw))
            gx = K.wrap(dx, x.device)
        gw_t = K.wrap(gw, x.device) if w is not None and need[1] else None
        gb_t = K.wrap(gb, x.device) if need[2] else None
        return gx, gw_t, gb_t, None, None, None, None


def update_running(running_mean: Any, running_var: Any, mean: Any, var: Any, momentum: float,
                   n: int) -> bool:
    """``F.batch_norm``'s running-statistics update in one kernel (in place, versions bumped);
    False (nothing done) unless every tensor is on the GPU with the batch statistics' dtype,
    contiguous, and the fused batch_norm is installed."""
    if OPS["_batch_norm"].cuda_impl is not BatchNormImpl:
        return False
    runs = [t for t in (running_mean, running_var) if t is not None]
    if not runs or mean._device.type != "cuda":
        return False
    dt = mean._data.dtype
    ct = K.CTYPES.get(dt.name)
    if ct is None or var._data.dtype != dt or any(
            t._device is not mean._device or t._data.dtype != dt or
            not t._data.flags.c_contiguous or t._data.shape != mean._data.shape for t in runs):
        return False
    c = mean._data.size
    rm = running_mean._data if running_mean is not None else mean._data
    rv = running_var._data if running_var is not None else var._data
    K.function("batchnorm", "bn_running", f"{ct}, {ct}")(
        ((c + 127) // 128, 1, 1), (128, 1, 1),
        (rm, rv, mean._data, var._data, K.i32(c), K.f32(momentum), K.f32(n / max(n - 1, 1)),
         K.i32(running_mean is not None), K.i32(running_var is not None)))
    for t in runs:
        t._version[0] += 1
    return True


IMPLS = {"_batch_norm": BatchNormImpl}
