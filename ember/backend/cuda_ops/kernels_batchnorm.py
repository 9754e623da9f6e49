"""Fused training-mode batch_norm (NVRTC kernels, forward and backward), in both layouts.

The kernels are templates over ``<T, W>``: ``T`` stores the activations (input, output,
gradients), ``W`` the affine parameters and the returned batch statistics. Under autocast a
bfloat16 activation meets float32 weights (batch_norm is on neither autocast list, as in
torch), so ``W`` may be wider than ``T``; all arithmetic is fp32.

NCHW (``(N, C, *)`` C-contiguous):
- statistics: a (C, P) grid of blocks sums ``x - K_c`` and its square per channel (``K_c`` is
  the channel's first element, a shift that keeps the fp32 sums from cancelling); one warp
  per channel adds the P partials in fp64 and writes mean, rstd and the biased variance;
- normalization and ``dx`` are grid-stride elementwise kernels that track the channel of
  each element incrementally (no per-element 64-bit division).

Channels-last (memory ``(N, *, C)``: rows of C channels):
- statistics: each thread owns 8 (bf16/fp16; 4 for fp32) neighbouring channels and reads them
  with one 16-byte load per row; a block is channel groups x rows over a chunk of rows, the
  row partials meet in shared memory, one partial per (channel, chunk); the same fp64
  finalize as NCHW (which also writes per-channel coefficients);
- normalization ``(x - mean) * (rstd * w) + b`` and ``dx = A g + B (x - mean) + D`` run flat
  over memory in 16-byte vectors; the grid stride is a multiple of C, so each thread keeps
  its channels and their coefficients in registers; the output keeps the input's layout. C not a multiple of the vector width or unaligned
  arrays: scalar kernels (blocks of 32 channels x 8 rows for the statistics).

Evaluation mode and anything uncovered return ``NotImplemented`` (generic CuPy code). What
``ctx`` saves is the generic op's layout (ember/ops/nn_norm.py), so under ``create_graph``
its differentiable backward runs on the same node.
"""
from __future__ import annotations

import math
import threading
from operator import is_
from typing import Any

import numpy as np

from ember.backend.cuda_ops import _layout as L
from ember.backend.cuda_ops import _nvrtc as K
from ember.ops.registry import OPS

_SRC = r"""
// The fused ReLU (_batch_norm_relu): relu0 on the output (NaN stays NaN, as torch's relu);
// in the backward, the incoming gradient where the saved output ym is > 0, else 0 (torch's
// threshold_backward; ym null: no ReLU).
__device__ __forceinline__ float relu0(float v) { return v < 0.f ? 0.f : v; }

template <typename T>
__device__ __forceinline__ float gmask(const T* __restrict__ g, const T* __restrict__ ym,
                                       long long k) {
    float gv = ld(g, k);
    return (ym && !(ld(ym, k) > 0.f)) ? 0.f : gv;
}

template <int N, typename T>
__device__ __forceinline__ void gmaskv(float (&u)[N], const T* __restrict__ ym) {
    float m[N];
    ldv(ym, m);
#pragma unroll
    for (int j = 0; j < N; ++j) if (!(m[j] > 0.f)) u[j] = 0.f;
}

// ---- NCHW. Within channel c, flat j in [0, N*HW) is (n, s) = divmod(j, HW).
// Threads step j by `stride`; (n, s) advance by (sq, sr) = divmod(stride, HW), carrying.
template <typename T, typename W>
__global__ void bn_stats(const T* __restrict__ x, float* __restrict__ p1,
                         float* __restrict__ p2, int N, int C, int HW) {
    __shared__ float sh[32];
    int c = blockIdx.x, P = gridDim.y;
    long long total = (long long)N * HW;
    long long j = (long long)blockIdx.y * blockDim.x + threadIdx.x;
    long long stride = (long long)P * blockDim.x;
    long long n = j / HW, s = j % HW, sq = stride / HW, sr = stride % HW;
    float K = ld(x, (long long)c * HW);
    float a1 = 0.f, a2 = 0.f;
    for (; j < total; j += stride) {
        float d = ld(x, (n * C + c) * HW + s) - K;
        a1 += d;
        a2 += d * d;
        n += sq; s += sr;
        if (s >= HW) { s -= HW; ++n; }
    }
    a1 = row_sum(a1, sh);
    a2 = row_sum(a2, sh);
    if (threadIdx.x == 0) { p1[c * P + blockIdx.y] = a1; p2[c * P + blockIdx.y] = a2; }
}

// kstride: distance between the first elements of neighbouring channels (HW for NCHW, 1 for
// channels-last), where the shift K_c of the statistics kernels was read.
// coef (3C floats): mean, rstd * weight, bias per channel (the vectorized apply's inputs)
template <typename T, typename W>
__global__ void bn_finalize(const T* __restrict__ x, const float* __restrict__ p1,
                            const float* __restrict__ p2, int P, int C, long long kstride,
                            long long count, float eps, float* __restrict__ mean,
                            float* __restrict__ rstd, W* __restrict__ mean_t,
                            W* __restrict__ var_t, const W* __restrict__ w,
                            const W* __restrict__ b, int has_w, int has_b,
                            float* __restrict__ coef, W* __restrict__ rm, W* __restrict__ rv,
                            float momentum, float unbias, long long* __restrict__ nbt,
                            int upd) {
    // one warp per channel (blockDim (32, 4)): lanes stride over the P partials, fp64 sums
    int c = blockIdx.x * blockDim.y + threadIdx.y;
    if (c >= C) return;
    double s1 = 0.0, s2 = 0.0;
    for (int b = threadIdx.x; b < P; b += 32) {
        s1 += p1[(long long)c * P + b];
        s2 += p2[(long long)c * P + b];
    }
    for (int o = 16; o > 0; o >>= 1) {
        s1 += __shfl_xor_sync(0xffffffffu, s1, o);
        s2 += __shfl_xor_sync(0xffffffffu, s2, o);
    }
    if (threadIdx.x) return;
    double m = s1 / count;
    double var = s2 / count - m * m;
    if (var < 0.0) var = 0.0;
    float mu = ld(x, (long long)c * kstride) + (float)m;
    float r = 1.f / sqrtf((float)var + eps);
    mean[c] = mu;
    rstd[c] = r;
    st(mean_t, c, mu);
    st(var_t, c, (float)var);
    coef[c] = mu;
    coef[C + c] = has_w ? r * ld(w, c) : r;
    coef[2 * C + c] = has_b ? ld(b, c) : 0.f;
    if (upd) {   // F.batch_norm's running update, bn_running's arithmetic on the stored stats
        if (rm) st(rm, c, ld(rm, c) * (1.f - momentum) + ld(mean_t, c) * momentum);
        if (rv) st(rv, c, ld(rv, c) * (1.f - momentum) + ld(var_t, c) * unbias * momentum);
        if (nbt && c == 0) nbt[0] += 1;
    }
}

template <typename T, typename W>
__global__ void bn_apply(const T* __restrict__ x, const W* __restrict__ w,
                         const W* __restrict__ b, const float* __restrict__ mean,
                         const float* __restrict__ rstd, T* __restrict__ y, long long total,
                         int C, int HW, int has_w, int has_b, int relu) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long plane = i / HW, s = i % HW;
    long long sq = stride / HW, sr = stride % HW;
    int c = (int)(plane % C), cq = (int)(sq % C);
    for (; i < total; i += stride) {
        float v = (ld(x, i) - mean[c]) * rstd[c];
        if (has_w) v *= ld(w, c);
        if (has_b) v += ld(b, c);
        st(y, i, relu ? relu0(v) : v);
        s += sr; c += cq;
        if (s >= HW) { s -= HW; ++c; }
        if (c >= C) c -= C;
    }
}

template <typename T, typename W>
__global__ void bn_bwd_stats(const T* __restrict__ g, const T* __restrict__ x,
                             const float* __restrict__ mean, const float* __restrict__ rstd,
                             float* __restrict__ p1, float* __restrict__ p2, int N, int C,
                             int HW, const T* __restrict__ ym) {
    __shared__ float sh[32];
    int c = blockIdx.x, P = gridDim.y;
    long long total = (long long)N * HW;
    long long j = (long long)blockIdx.y * blockDim.x + threadIdx.x;
    long long stride = (long long)P * blockDim.x;
    long long n = j / HW, s = j % HW, sq = stride / HW, sr = stride % HW;
    float mu = mean[c], r = rstd[c];
    float a1 = 0.f, a2 = 0.f;
    for (; j < total; j += stride) {
        long long k = (n * C + c) * HW + s;
        float gv = gmask(g, ym, k);
        a1 += gv;
        a2 += gv * (ld(x, k) - mu) * r;
        n += sq; s += sr;
        if (s >= HW) { s -= HW; ++n; }
    }
    a1 = row_sum(a1, sh);
    a2 = row_sum(a2, sh);
    if (threadIdx.x == 0) { p1[c * P + blockIdx.y] = a1; p2[c * P + blockIdx.y] = a2; }
}

// sums[c] = sum g, sums[C + c] = sum g * xhat; also dbias / dweight in the parameter type.
// coef (4C floats) for dx = A g + B (x - mean) + D: mean, A = rstd * w,
// B = -A * rstd * sum(g xhat) / n, D = -A * sum(g) / n
template <typename T, typename W>
__global__ void bn_bwd_finalize(const float* __restrict__ p1, const float* __restrict__ p2,
                                int P, int C, float* __restrict__ sums, W* __restrict__ gb,
                                W* __restrict__ gw, const float* __restrict__ mean,
                                const float* __restrict__ rstd, const W* __restrict__ w,
                                int has_w, float inv_count, float* __restrict__ coef) {
    int c = blockIdx.x * blockDim.y + threadIdx.y;      // one warp per channel, as above
    if (c >= C) return;
    float s1 = 0.f, s2 = 0.f;
    for (int b = threadIdx.x; b < P; b += 32) {
        s1 += p1[(long long)c * P + b];
        s2 += p2[(long long)c * P + b];
    }
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    if (threadIdx.x) return;
    sums[c] = s1;
    sums[C + c] = s2;
    st(gb, c, s1);
    st(gw, c, s2);
    float r = rstd[c];
    float A = has_w ? r * ld(w, c) : r;
    coef[c] = mean[c];
    coef[C + c] = A;
    coef[2 * C + c] = -A * r * s2 * inv_count;
    coef[3 * C + c] = -A * s1 * inv_count;
}

template <typename T, typename W>
__global__ void bn_bwd_dx(const T* __restrict__ g, const T* __restrict__ x,
                          const W* __restrict__ w, const float* __restrict__ mean,
                          const float* __restrict__ rstd, const float* __restrict__ sums,
                          T* __restrict__ dx, long long total, int C, int HW, float inv_count,
                          int has_w, const T* __restrict__ ym) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long plane = i / HW, s = i % HW;
    long long sq = stride / HW, sr = stride % HW;
    int c = (int)(plane % C), cq = (int)(sq % C);
    for (; i < total; i += stride) {
        float r = rstd[c];
        float xh = (ld(x, i) - mean[c]) * r;
        float v = gmask(g, ym, i) - sums[c] * inv_count - xh * sums[C + c] * inv_count;
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
                           int has_m, int has_v, long long* __restrict__ nbt) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (nbt && c == 0) nbt[0] += 1;   // BatchNorm's num_batches_tracked, when given
    if (c >= C) return;
    if (has_m) st(rm, c, ld(rm, c) * (1.f - momentum) + ld(mean, c) * momentum);
    if (has_v) st(rv, c, ld(rv, c) * (1.f - momentum) + ld(var, c) * unbias * momentum);
}

// ---- channels-last: M rows of C channels. Block (32, 8): 32 channels, 8 rows at a time, over
// rows [blockIdx.y * chunk, +chunk). mode 0: sums of x - K_c and its square (forward);
// mode 1: sums of g and g * xhat (backward; g given).
template <typename T, typename W>
__global__ void bncl_stats(const T* __restrict__ x, const T* __restrict__ g,
                           const float* __restrict__ mean, const float* __restrict__ rstd,
                           float* __restrict__ p1, float* __restrict__ p2, long long M, int C,
                           long long chunk, int mode, const T* __restrict__ ym) {
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
                float gv = gmask(g, ym, k);
                a1 += gv;
                a2 += gv * (ld(x, k) - mu) * rs;
            }
        }
    }
    s1[threadIdx.y][threadIdx.x] = a1;
    s2[threadIdx.y][threadIdx.x] = a2;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int k = 1; k < 8; ++k) { a1 += s1[k][threadIdx.x]; a2 += s2[k][threadIdx.x]; }
        p1[(long long)c * P + blockIdx.y] = a1;
        p2[(long long)c * P + blockIdx.y] = a2;
    }
}

// Vectorized channels-last statistics (C % VW<T>::n == 0, 16-byte aligned rows): each thread
// owns N = VW<T>::n neighbouring channels and reads them with one 16-byte load per row; a
// block of 256 threads is GB channel groups x RB rows (GB * RB <= 256), over one chunk of
// rows; the RB row partials meet in shared memory (RB * GB * N * 2 floats <= 16 KB).
template <typename T, typename W>
__global__ void bncl_stats_v(const T* __restrict__ x, const T* __restrict__ g,
                             const float* __restrict__ mean, const float* __restrict__ rstd,
                             float* __restrict__ p1, float* __restrict__ p2, long long M, int C,
                             long long chunk, int mode, int GB, int RB,
                             const T* __restrict__ ym) {
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
                if (ym) gmaskv<N>(u, ym + r * C + c0);
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
    for (int cl = t; cl < W_; cl += blockDim.x) {
        int c = cb + cl;
        if (c >= C) continue;
        float u = 0.f, q = 0.f;
        for (int k = 0; k < RB; ++k) { u += s1[k * W_ + cl]; q += s2[k * W_ + cl]; }
        p1[(long long)c * P + blockIdx.y] = u;
        p2[(long long)c * P + blockIdx.y] = q;
    }
}

// Per-channel coefficients of a thread's N channels: K rows of C floats from coef (16-byte
// aligned: C and c are multiples of N, and N is a multiple of 4 floats).
template <int N, int K>
__device__ __forceinline__ void ld_coef(const float* __restrict__ coef, int C, int c,
                                        float (&k)[K][N]) {
#pragma unroll
    for (int r = 0; r < K; ++r)
#pragma unroll
        for (int j = 0; j < N; j += 4) ldv(coef + r * C + c + j, &k[r][j]);
}

// y = (x - mean) * (rstd * w) + b over 16-byte vectors (coef from bn_finalize). The launcher
// (_cl_flat_grid) makes the grid stride a multiple of C, so a thread's channels never change:
// their coefficients stay in registers, and two vectors are in flight per iteration.
template <typename T, typename W>
__global__ void bncl_apply_v(const T* __restrict__ x, const float* __restrict__ coef,
                             T* __restrict__ y, long long nv, int C, int relu) {
    constexpr int N = VW<T>::n;
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nt = (long long)gridDim.x * blockDim.x;
    float q[3][N];
    ld_coef<N, 3>(coef, C, (int)((k * N) % C), q);
    for (; k + nt < nv; k += 2 * nt) {
        float u[N], v[N];
        ldv(x + k * N, u);
        ldv(x + (k + nt) * N, v);
#pragma unroll
        for (int j = 0; j < N; ++j) {
            u[j] = (u[j] - q[0][j]) * q[1][j] + q[2][j];
            v[j] = (v[j] - q[0][j]) * q[1][j] + q[2][j];
            if (relu) { u[j] = relu0(u[j]); v[j] = relu0(v[j]); }
        }
        stv(y + k * N, u);
        stv(y + (k + nt) * N, v);
    }
    if (k < nv) {
        float v[N];
        ldv(x + k * N, v);
#pragma unroll
        for (int j = 0; j < N; ++j) {
            v[j] = (v[j] - q[0][j]) * q[1][j] + q[2][j];
            if (relu) v[j] = relu0(v[j]);
        }
        stv(y + k * N, v);
    }
}

// dx = A g + B (x - mean) + D over 16-byte vectors (coef from bn_bwd_finalize: rows mean,
// A, B, D); grid and registers as in bncl_apply_v.
template <typename T, typename W>
__global__ void bncl_bwd_dx_v(const T* __restrict__ g, const T* __restrict__ x,
                              const float* __restrict__ coef, T* __restrict__ dx, long long nv,
                              int C, const T* __restrict__ ym) {
    constexpr int N = VW<T>::n;
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nt = (long long)gridDim.x * blockDim.x;
    float q[4][N];
    ld_coef<N, 4>(coef, C, (int)((k * N) % C), q);
    for (; k + nt < nv; k += 2 * nt) {
        float u[N], v[N], a[N], b[N];
        ldv(g + k * N, u);
        ldv(x + k * N, v);
        ldv(g + (k + nt) * N, a);
        ldv(x + (k + nt) * N, b);
        if (ym) { gmaskv<N>(u, ym + k * N); gmaskv<N>(a, ym + (k + nt) * N); }
#pragma unroll
        for (int j = 0; j < N; ++j) {
            u[j] = q[1][j] * u[j] + q[2][j] * (v[j] - q[0][j]) + q[3][j];
            a[j] = q[1][j] * a[j] + q[2][j] * (b[j] - q[0][j]) + q[3][j];
        }
        stv(dx + k * N, u);
        stv(dx + (k + nt) * N, a);
    }
    if (k < nv) {
        float u[N], v[N];
        ldv(g + k * N, u);
        ldv(x + k * N, v);
        if (ym) gmaskv<N>(u, ym + k * N);
#pragma unroll
        for (int j = 0; j < N; ++j)
            u[j] = q[1][j] * u[j] + q[2][j] * (v[j] - q[0][j]) + q[3][j];
        stv(dx + k * N, u);
    }
}

template <typename T, typename W>
__global__ void bncl_apply(const T* __restrict__ x, const W* __restrict__ w,
                           const W* __restrict__ b, const float* __restrict__ mean,
                           const float* __restrict__ rstd, T* __restrict__ y, long long total,
                           int C, int has_w, int has_b, int relu) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    int c = (int)(i % C), cq = (int)(stride % C);
    for (; i < total; i += stride) {
        float v = (ld(x, i) - mean[c]) * rstd[c];
        if (has_w) v *= ld(w, c);
        if (has_b) v += ld(b, c);
        st(y, i, relu ? relu0(v) : v);
        c += cq;
        if (c >= C) c -= C;
    }
}

template <typename T, typename W>
__global__ void bncl_bwd_dx(const T* __restrict__ g, const T* __restrict__ x,
                            const W* __restrict__ w, const float* __restrict__ mean,
                            const float* __restrict__ rstd, const float* __restrict__ sums,
                            T* __restrict__ dx, long long total, int C, float inv_count,
                            int has_w, const T* __restrict__ ym) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    int c = (int)(i % C), cq = (int)(stride % C);
    for (; i < total; i += stride) {
        float r = rstd[c];
        float xh = (ld(x, i) - mean[c]) * r;
        float v = gmask(g, ym, i) - sums[c] * inv_count - xh * sums[C + c] * inv_count;
        st(dx, i, v * r * (has_w ? ld(w, c) : 1.f));
        c += cq;
        if (c >= C) c -= C;
    }
}
"""

K.define("batchnorm", _SRC, ("bn_stats", "bn_finalize", "bn_apply", "bn_bwd_stats",
                             "bn_bwd_finalize", "bn_bwd_dx", "bncl_stats", "bncl_apply",
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
    when none is given), or None when they disagree or the kernels do not cover it. A
    layer passes the same arrays every step: the answer is kept by their identity."""
    key = tuple(map(id, params))
    hit = _PARAM_DT.get(key)
    if hit is not None and all(map(is_, hit[0], params)):
        return hit[1]
    dt = _param_dtype_of(input, params)
    if any(a is not None for a in params):   # (none at all: the input's dtype decides)
        if len(_PARAM_DT) > 4096:
            _PARAM_DT.clear()
        _PARAM_DT[key] = (params, dt)
    return dt


_PARAM_DT: dict = {}   # ids of the parameter arrays -> (the arrays, their dtype or None)


def _param_dtype_of(input: Any, params: tuple) -> Any:
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


# (c, m, nvec) -> launch geometry of the vectorised channels-last statistics kernel
_CL_GEOM: dict = {}


def _cl_geom(c: int, m: int, nvec: int) -> tuple:
    key = (c, m, nvec)
    geo = _CL_GEOM.get(key)
    if geo is None:
        groups = c // nvec
        gb = min(groups, _THREADS)
        rb = _THREADS // gb
        gx = (groups + gb - 1) // gb
        p = max(1, min(2048 // gx, m // (rb * 8), 65535))
        chunk = (m + p - 1) // p
        p = (m + chunk - 1) // chunk
        geo = _CL_GEOM[key] = ((gx, p, 1), p, K.i64(m), K.i32(c), K.i64(chunk), K.i32(gb),
                               K.i32(rb), rb * gb * nvec * 2 * 4)
    return geo


def _cl_flat_grid(nv: int, c: int, nvec: int) -> tuple[tuple, tuple]:
    """(grid, block) of the vectorised channels-last elementwise kernels: a few waves of
    256-thread blocks, their number a multiple of ``c / gcd(c, 256 * nvec)`` so that the grid
    stride covers whole rows and each thread keeps its channels (and their coefficients)."""
    unit = c // math.gcd(c, _THREADS * nvec)
    blocks = min((nv + _THREADS * 4 - 1) // (_THREADS * 4), 2048)
    blocks = max(unit, (blocks + unit - 1) // unit * unit)
    return (blocks, 1, 1), (_THREADS, 1, 1)


def _stats_plan(lay: str, c: int, m: int, nvec: int) -> tuple:
    """The statistics kernels' launch: ``(P, ...)`` with P partial sums per channel; NCHW
    ``(P,)``, channels-last vectorised ``(P, geometry)``, channels-last scalar ``(P, chunk)``."""
    if lay == "c":
        return (_bn_blocks(c, m, _THREADS),)
    if nvec:
        geo = _cl_geom(c, m, nvec)
        return geo[1], geo
    return _cl_chunks(c, m)


_NULL = np.uint64(0)
_U64 = np.uint64
_ONE = np.int32(1)
_NO_UPDATE = (_NULL, _NULL, np.float32(0), np.float32(0), _NULL, np.int32(0))


class _Running(threading.local):
    """F.batch_norm's running update armed for the next CUDA batch norm of this thread:
    ``(running_mean, running_var, momentum, unbias, num_batches_tracked, dtype, done)``
    (arrays or None; float32 scalars; a one-item list set when a finalize kernel did it)."""

    pending: Any = None


_RUNNING = _Running()


def arm_running(running_mean: Any, running_var: Any, momentum: float, n: int,
                nbt: Any = None) -> list | None:
    """Ask the next fused batch-norm forward on this thread to update the running statistics
    (and ``nbt += 1``) inside its finalize kernel, as :func:`update_running` would; returns
    the ``done`` flag (a list) to read after the call, or None when the tensors are not
    covered (on the GPU, one float dtype, contiguous, one element per channel). The caller
    clears the request with :func:`disarm_running` after the call either way."""
    if OPS["_batch_norm"].cuda_impl is not BatchNormImpl:
        return None
    rm_a = running_mean._data if running_mean is not None else None
    rv_a = running_var._data if running_var is not None else None
    nbt_a = nbt._data if nbt is not None else None
    r0 = running_mean if running_mean is not None else running_var
    if r0 is None:
        return None
    # A layer passes the same buffer arrays every step: their checks are kept by identity
    # (an array's dtype, shape and layout never change; a replaced buffer is a new array).
    hit = _ARMED_OK.get((id(rm_a), id(rv_a), id(nbt_a)))
    if hit is not None and hit[0] is rm_a and hit[1] is rv_a and hit[2] is nbt_a and \
            hit[3] is r0._device and \
            (nbt is None or nbt._device is hit[3]):
        dt = hit[4]
    else:
        dt = _arm_check(running_mean, running_var, nbt)
        if dt is None:
            return None
        if len(_ARMED_OK) > 4096:
            _ARMED_OK.clear()
        _ARMED_OK[(id(rm_a), id(rv_a), id(nbt_a))] = (
            rm_a, rv_a, nbt_a, r0._device, dt)
    key = (momentum, n)
    consts = _ARM_CONSTS.get(key)
    if consts is None:
        if len(_ARM_CONSTS) > 4096:
            _ARM_CONSTS.clear()
        consts = _ARM_CONSTS[key] = (np.float32(momentum), np.float32(n / max(n - 1, 1)))
    done = [False]
    _RUNNING.pending = (rm_a, rv_a, consts[0], consts[1], nbt_a, dt, done)
    return done


_ARMED_OK: dict = {}    # ids of (running_mean, running_var, nbt) arrays -> accepted, with dtype
_ARM_CONSTS: dict = {}  # (momentum, n) -> their float32 kernel arguments


def _arm_check(running_mean: Any, running_var: Any, nbt: Any) -> Any:
    """The running statistics' dtype when the finalize kernel can update them, else None."""
    runs = [t for t in (running_mean, running_var) if t is not None]
    if not runs:
        return None
    r0 = runs[0]
    dt = r0._data.dtype
    if r0._device.type != "cuda" or K.dtype_ctype(dt) is None or any(
            t._device is not r0._device or t._data.dtype != dt or t._data.ndim != 1 or
            not t._data.flags.c_contiguous for t in runs) or \
            (len(runs) == 2 and runs[1]._data.shape != r0._data.shape):
        return None
    if nbt is not None and (nbt._device is not r0._device or nbt._data.dtype != np.int64
                            or nbt._data.size != 1 or not nbt._data.flags.c_contiguous):
        return None
    return dt


def disarm_running() -> None:
    _RUNNING.pending = None


class BatchNormImpl:
    """Training-mode ``_batch_norm`` over NCHW or channels-last input; half-precision input
    may come with float32 parameters (then the batch statistics are float32 too)."""

    def forward(ctx, xp, input, weight, bias, running_mean, running_var, training, eps):
        return _forward(ctx, xp, input, weight, bias, running_mean, running_var, training,
                        eps, 0)

    def backward(ctx, g, _gm=None, _gv=None):
        return _backward(ctx, g, ctx.saved if g is not None else None, None)


class BatchNormReluImpl:
    """``_batch_norm_relu``: the same kernels with the ReLU inside (the output saved too:
    the backward kernels mask the gradient with it)."""

    def forward(ctx, xp, input, weight, bias, running_mean, running_var, training, eps):
        return _forward(ctx, xp, input, weight, bias, running_mean, running_var, training,
                        eps, 1)

    def backward(ctx, g, _gm=None, _gv=None):
        if g is None:
            return (None,) * 7
        saved = ctx.saved
        return _backward(ctx, g, saved, saved[4]._data)


def _fwd_plan(input: Any, wdt: Any, hasw: bool, hasb: bool, relu: int) -> Any:
    """What the forward launches for one input geometry: ``(fn, lay, c, P, scratch floats,
    stats launch, finalize launch, apply launch, reduction axes, broadcast shape,
    (lay, targs, wdt), the int32 has-weight and has-bias flags)``, the launches as (kernel
    name, grid, block, constant trailing arguments[, shared bytes]); False where the
    kernels do not apply."""
    ct = K.ctype(input)
    if ct is None or input.ndim < 2 or input.size == 0:
        return False
    lay = _layout(input)
    if lay is None:
        return False
    n, c = input.shape[0], input.shape[1]
    hw = input.size // (n * c)
    if n * hw < 2:
        return False  # F.batch_norm rejects it; the generic code decides
    targs = f"{ct}, {K.dtype_ctype(wdt)}"
    fn = _kernels(targs).__getitem__
    m = n * hw
    nvec = _vec(c, input) if lay != "c" else 0   # y is a fresh, aligned allocation
    plan = _stats_plan(lay, c, m, nvec)
    p = plan[0]
    if lay == "c":
        stats = ("bn_stats", (c, p, 1), (_THREADS, 1, 1), (K.i32(n), K.i32(c), K.i32(hw)), 0)
    elif nvec:
        grid, _, m64, c32, chunk64, gb32, rb32, shared = plan[1]
        stats = ("bncl_stats_v", grid, (_THREADS, 1, 1),
                 (m64, c32, chunk64, K.i32(0), gb32, rb32, _NULL), shared)
    else:
        chunk = plan[1]
        stats = ("bncl_stats", ((c + 31) // 32, p, 1), (32, 8, 1),
                 (K.i64(n * hw), K.i32(c), K.i64(chunk), K.i32(0), _NULL), 0)
    fin = ("bn_finalize", ((c + 3) // 4, 1, 1), (32, 4, 1),
           (K.i32(p), K.i32(c), K.i64(hw if lay == "c" else 1), K.i64(m)))
    hw_, hb_, rl = K.i32(hasw), K.i32(hasb), K.i32(relu)
    if lay == "c":
        grid, block = K.flat_grid(input.size, _THREADS, 4)
        apply = ("bn_apply", grid, block, (K.i64(input.size), K.i32(c), K.i32(hw), hw_, hb_, rl))
    elif nvec:
        nv = input.size // nvec
        grid, block = _cl_flat_grid(nv, c, nvec)
        apply = ("bncl_apply_v", grid, block, (K.i64(nv), K.i32(c), rl))
    else:
        grid, block = K.flat_grid(input.size, _THREADS, 4)
        apply = ("bncl_apply", grid, block, (K.i64(input.size), K.i32(c), hw_, hb_, rl))
    return (fn, lay, c, p, 5 * c + 2 * c * p, stats, fin, apply,
            (0,) + tuple(range(2, input.ndim)), (1, c) + (1,) * (input.ndim - 2),
            (lay, targs, wdt), (hw_, hb_))


_FWD_PLANS: dict = {}   # input geometry, parameters' dtype, ... -> _fwd_plan's result


def _forward(ctx: Any, xp: Any, input: Any, weight: Any, bias: Any, running_mean: Any,
             running_var: Any, training: bool, eps: float, relu: int) -> Any:
    """The training forward (``relu``: 1 applies the ReLU in the kernels and saves the output
    for the backward's mask), or NotImplemented for what the kernels do not cover.

    The launch geometry of a repeated call (a training loop's) comes from ``_FWD_PLANS``;
    only the allocations, the pointers and ``eps`` are per call."""
    if not training:
        return NotImplemented
    wdt = _param_dtype(input, weight, bias, running_mean, running_var)
    if wdt is None:
        return NotImplemented
    hasw, hasb = weight is not None, bias is not None
    key = (input.shape, input.strides, input.dtype, wdt, hasw, hasb, relu,
           input.data.ptr % 16 == 0, xp.cuda.runtime.getDevice())
    plan = _FWD_PLANS.get(key)
    if plan is None:
        plan = _fwd_plan(input, wdt, hasw, hasb, relu)
        if len(_FWD_PLANS) > 1024:
            _FWD_PLANS.clear()
        _FWD_PLANS[key] = plan
    if plan is False:
        return NotImplemented
    fn, lay, c, p, nscratch, stats_l, fin_l, apply_l, axes, bshape, bn_layout, flags = plan
    # one float32 scratch allocation, addressed by pointer: mean, rstd, coef (3C: mean,
    # rstd * w, b), then the two (C, P) partial sums; it is saved whole for the backward
    scratch = xp.empty(nscratch, xp.float32)
    base = scratch.data.ptr
    mean, rstd, coef = _U64(base), _U64(base + 4 * c), _U64(base + 8 * c)
    p1, p2 = _U64(base + 20 * c), _U64(base + 20 * c + 4 * c * p)
    stats = xp.empty((2, c), wdt)   # the returned statistics: one allocation
    mean_t, var_t = stats[0], stats[1]
    wa = weight if hasw else mean_t
    ba = bias if hasb else mean_t
    name, grid, block, tail, shared = stats_l
    if lay == "c":
        fn(name)(grid, block, (input, p1, p2) + tail)
    else:
        fn(name)(grid, block, (input, input, mean, rstd, p1, p2) + tail, shared_mem=shared)
    y = xp.empty_like(input) if lay == "c" else L.empty_like(xp, input)
    pend = _RUNNING.pending
    if pend is not None and pend[0] is running_mean and pend[1] is running_var and \
            pend[5] == wdt:
        # F.batch_norm armed its running update for this call: the finalize kernel does it
        rm_a, rv_a, mom, unb, nbt_a, _, done = pend
        upd = (rm_a if rm_a is not None else _NULL, rv_a if rv_a is not None else _NULL,
               mom, unb, nbt_a if nbt_a is not None else _NULL, _ONE)
        done[0] = True
    else:
        upd = _NO_UPDATE
    name, grid, block, tail = fin_l
    fn(name)(grid, block, (input, p1, p2) + tail + (K.f32(eps), mean, rstd, mean_t, var_t,
                                                    wa, ba) + flags + (coef,) + upd)
    name, grid, block, tail = apply_l
    if name == "bncl_apply_v":
        fn(name)(grid, block, (input, coef, y) + tail)
    else:
        fn(name)(grid, block, (input, wa, ba, mean, rstd, y) + tail)
    ctx.p = (True, eps, axes, bshape)
    ctx.bn_layout = bn_layout
    # slots 2 and 3 hold the batch statistics in the generic op's layout; only this backward
    # reads them (the generic one runs under create_graph, and recomputes them from x)
    if relu:   # the output last (BatchNormRelu's layout)
        ctx.save(input, weight, scratch, None, y)
    else:
        ctx.save(input, weight, scratch, None)
    return y, mean_t, var_t


def _bwd_plan(lay: str, targs: str, shape: tuple, c: int, nvec: int, hasw: bool) -> tuple:
    """What the backward launches for one geometry: ``(fn, P, scratch floats, stats launch,
    finalize launch, dx launch)``, the launches as (kernel name, grid, block, constant
    trailing arguments[, shared bytes])."""
    fn = _kernels(targs).__getitem__
    n = shape[0]
    size = math.prod(shape)
    hw = size // (n * c)
    plan = _stats_plan(lay, c, n * hw, nvec)
    p = plan[0]
    mode = K.i32(1)
    if lay == "c":
        stats = ("bn_bwd_stats", (c, p, 1), (_THREADS, 1, 1), (K.i32(n), K.i32(c), K.i32(hw)), 0)
    elif nvec:
        grid, _, m64, c32, chunk64, gb32, rb32, shared = plan[1]
        stats = ("bncl_stats_v", grid, (_THREADS, 1, 1), (m64, c32, chunk64, mode, gb32, rb32),
                 shared)
    else:
        stats = ("bncl_stats", ((c + 31) // 32, p, 1), (32, 8, 1),
                 (K.i64(n * hw), K.i32(c), K.i64(plan[1]), mode), 0)
    inv = K.f32(1.0 / (n * hw))
    fin = ("bn_bwd_finalize", ((c + 3) // 4, 1, 1), (32, 4, 1), (K.i32(p), K.i32(c)),
           (K.i32(hasw), inv))
    if lay == "c":
        grid, block = K.flat_grid(size, _THREADS, 4)
        dx = ("bn_bwd_dx", grid, block, (K.i64(size), K.i32(c), K.i32(hw), inv, K.i32(hasw)))
    elif nvec:
        grid, block = _cl_flat_grid(size // nvec, c, nvec)
        dx = ("bncl_bwd_dx_v", grid, block, (K.i64(size // nvec), K.i32(c)))
    else:
        grid, block = K.flat_grid(size, _THREADS, 4)
        dx = ("bncl_bwd_dx", grid, block, (K.i64(size), K.i32(c), inv, K.i32(hasw)))
    return fn, p, 6 * c + 2 * c * p, stats, fin, dx


_BWD_PLANS: dict = {}   # geometry, layout, kernels, ... -> _bwd_plan's result


def _backward(ctx: Any, g: Any, saved: tuple, ym: Any) -> tuple:
    """The batch norm's gradients from ``ctx.saved`` (``ym``: the fused ReLU's output,
    masking ``g``). The launch geometry of a repeated call comes from ``_BWD_PLANS``."""
    if g is None:
        return (None,) * 7
    import cupy as xp  # noqa: PLC0415 - only reached on the GPU
    x, w = saved[0], saved[1]
    lay, targs, wdt = ctx.bn_layout
    xa = x._data
    c = xa.shape[1]
    fbase = saved[2]._data.data.ptr          # the forward's scratch: mean, rstd first
    ma, ra = _U64(fbase), _U64(fbase + 4 * c)
    wa = w._data if w is not None else None
    ymp = ym if ym is not None else _NULL    # the output has x's layout
    if lay == "c":
        ga = K.contiguous(xp, g._data, xa.dtype)
        nvec = 0
    else:
        ga = L.as_layout(xp, g._data, xa, xa.dtype)
        nvec = _vec(c, ga, xa) if ym is None else _vec(c, ga, xa, ym)
    key = (xa.shape, lay, targs, nvec, wa is not None, xp.cuda.runtime.getDevice())
    plan = _BWD_PLANS.get(key)
    if plan is None:
        plan = _bwd_plan(lay, targs, xa.shape, c, nvec, wa is not None)
        if len(_BWD_PLANS) > 1024:
            _BWD_PLANS.clear()
        _BWD_PLANS[key] = plan
    fn, p, nscratch, stats_l, fin_l, dx_l = plan
    # scratch: sums (2C), coef (4C: mean, A, B, D), then the two (C, P) partial sums
    scratch = xp.empty(nscratch, xp.float32)
    base = scratch.data.ptr
    sums, coef = _U64(base), _U64(base + 8 * c)
    p1, p2 = _U64(base + 24 * c), _U64(base + 24 * c + 4 * c * p)
    name, grid, block, tail, shared = stats_l
    if lay == "c":
        fn(name)(grid, block, (ga, xa, ma, ra, p1, p2) + tail + (ymp,))
    else:
        fn(name)(grid, block, (xa, ga, ma, ra, p1, p2) + tail + (ymp,), shared_mem=shared)
    gb = xp.empty(c, wdt)
    gw = xp.empty(c, wdt)
    name, grid, block, mid, tail = fin_l
    fn(name)(grid, block, (p1, p2) + mid + (sums, gb, gw, ma, ra,
                                            wa if wa is not None else gw) + tail + (coef,))
    need = ctx.needs_input_grad
    gx = None
    if need[0]:
        wp = wa if wa is not None else gw
        dx = xp.empty_like(xa) if lay == "c" else L.empty_like(xp, xa)   # fresh: aligned
        name, grid, block, tail = dx_l
        if lay == "c":
            fn(name)(grid, block, (ga, xa, wp, ma, ra, sums, dx) + tail + (ymp,))
        elif nvec:
            fn(name)(grid, block, (ga, xa, coef, dx) + tail + (ymp,))
        else:
            fn(name)(grid, block, (ga, xa, wp, ma, ra, sums, dx) + tail + (ymp,))
        gx = K.wrap(dx, x.device)
    gw_t = K.wrap(gw, x.device) if w is not None and need[1] else None
    gb_t = K.wrap(gb, x.device) if need[2] else None
    return gx, gw_t, gb_t, None, None, None, None


def update_running(running_mean: Any, running_var: Any, mean: Any, var: Any, momentum: float,
                   n: int, nbt: Any = None) -> bool:
    """``F.batch_norm``'s running-statistics update in one kernel (in place, versions bumped),
    and with ``nbt`` (BatchNorm's int64 ``num_batches_tracked``, on the same device) its
    ``+= 1`` too; False (nothing done) unless every tensor is on the GPU with the batch
    statistics' dtype, contiguous, and the fused batch_norm is installed."""
    if OPS["_batch_norm"].cuda_impl is not BatchNormImpl:
        return False
    runs = [t for t in (running_mean, running_var) if t is not None]
    if not runs or mean._device.type != "cuda":
        return False
    dt = mean._data.dtype
    ct = K.dtype_ctype(dt)
    if ct is None or var._data.dtype != dt or any(
            t._device is not mean._device or t._data.dtype != dt or
            not t._data.flags.c_contiguous or t._data.shape != mean._data.shape for t in runs):
        return False
    if nbt is not None and (nbt._device is not mean._device or nbt._data.dtype != np.int64
                            or nbt._data.size != 1):
        return False
    c = mean._data.size
    rm = running_mean._data if running_mean is not None else mean._data
    rv = running_var._data if running_var is not None else var._data
    K.function("batchnorm", "bn_running", f"{ct}, {ct}")(
        ((c + 127) // 128, 1, 1), (128, 1, 1),
        (rm, rv, mean._data, var._data, K.i32(c), K.f32(momentum), K.f32(n / max(n - 1, 1)),
         K.i32(running_mean is not None), K.i32(running_var is not None),
         nbt._data if nbt is not None else np.uint64(0)))
    for t in runs if nbt is None else runs + [nbt]:
        t._version[0] += 1
    return True


IMPLS = {"_batch_norm": BatchNormImpl, "_batch_norm_relu": BatchNormReluImpl}
