"""CUDA source of the fused batch-norm kernels (NVRTC; launched by kernels_batchnorm.py, whose
docstring describes the algorithms). Kept apart from the launchers so that each file stays
readable: this one is only the C++ text and its kernel names."""

SOURCE = r"""
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
// f(k) gets each visited element's index k into the (N, C, HW) array.
template <typename F>
__device__ __forceinline__ void nchw_channel_walk(int c, int N, int C, int HW, F f) {
    long long total = (long long)N * HW;
    long long j = (long long)blockIdx.y * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.y * blockDim.x;
    long long n = j / HW, s = j % HW, sq = stride / HW, sr = stride % HW;
    for (; j < total; j += stride) {
        f((n * C + c) * HW + s);
        n += sq; s += sr;
        if (s >= HW) { s -= HW; ++n; }
    }
}

// The block's two sums into the channel's partials (block (c, b) of a (C, P) grid).
__device__ __forceinline__ void put_partials(float a1, float a2, float* __restrict__ p1,
                                             float* __restrict__ p2, float* sh) {
    a1 = row_sum(a1, sh);
    a2 = row_sum(a2, sh);
    int i = blockIdx.x * gridDim.y + blockIdx.y;
    if (threadIdx.x == 0) { p1[i] = a1; p2[i] = a2; }
}

template <typename T, typename W>
__global__ void bn_stats(const T* __restrict__ x, float* __restrict__ p1,
                         float* __restrict__ p2, int N, int C, int HW) {
    __shared__ float sh[32];
    int c = blockIdx.x;
    float K = ld(x, (long long)c * HW);
    float a1 = 0.f, a2 = 0.f;
    nchw_channel_walk(c, N, C, HW, [&](long long k) {
        float d = ld(x, k) - K;
        a1 += d;
        a2 += d * d;
    });
    put_partials(a1, a2, p1, p2, sh);
}

// kstride: distance between the first elements of neighbouring channels (HW for NCHW, 1 for
// channels-last), where the shift K_c of the statistics kernels was read.
// coef (3C floats): mean, rstd * weight, bias per channel (the vectorized apply's inputs)
// One warp per channel (lane 0..31): lanes stride over the P partials, fp64 sums. CG: the
// partials were written earlier in the same (cooperative) kernel, so they are read through
// L2 (__ldcg), never the read-only path.
template <typename T, typename W, bool CG>
__device__ __forceinline__ void bn_finalize_ch(
        int c, int lane, const T* __restrict__ x, const float* __restrict__ p1,
        const float* __restrict__ p2, int P, int C, long long kstride, long long count,
        float eps, float* __restrict__ mean, float* __restrict__ rstd, W* __restrict__ mean_t,
        W* __restrict__ var_t, const W* __restrict__ w, const W* __restrict__ b, int has_w,
        int has_b, float* __restrict__ coef, W* __restrict__ rm, W* __restrict__ rv,
        float momentum, float unbias, long long* __restrict__ nbt, int upd) {
    double s1 = 0.0, s2 = 0.0;
    for (int b = lane; b < P; b += 32) {
        long long i = (long long)c * P + b;
        s1 += CG ? __ldcg(p1 + i) : p1[i];
        s2 += CG ? __ldcg(p2 + i) : p2[i];
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
__global__ void bn_finalize(const T* __restrict__ x, const float* __restrict__ p1,
                            const float* __restrict__ p2, int P, int C, long long kstride,
                            long long count, float eps, float* __restrict__ mean,
                            float* __restrict__ rstd, W* __restrict__ mean_t,
                            W* __restrict__ var_t, const W* __restrict__ w,
                            const W* __restrict__ b, int has_w, int has_b,
                            float* __restrict__ coef, W* __restrict__ rm, W* __restrict__ rv,
                            float momentum, float unbias, long long* __restrict__ nbt,
                            int upd) {
    int c = blockIdx.x * blockDim.y + threadIdx.y;      // blockDim (32, 4): a warp a channel
    if (c >= C) return;
    bn_finalize_ch<T, W, false>(c, threadIdx.x, x, p1, p2, P, C, kstride, count, eps, mean,
                                rstd, mean_t, var_t, w, b, has_w, has_b, coef, rm, rv,
                                momentum, unbias, nbt, upd);
}

// Grid-stride over all N*C*HW elements of an NCHW array; f(i, c) gets each element's flat
// index and channel, the channel carried along as i advances (no division per element).
template <typename F>
__device__ __forceinline__ void nchw_flat_walk(long long total, int C, int HW, F f) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long plane = i / HW, s = i % HW;
    long long sq = stride / HW, sr = stride % HW;
    int c = (int)(plane % C), cq = (int)(sq % C);
    for (; i < total; i += stride) {
        f(i, c);
        s += sr; c += cq;
        if (s >= HW) { s -= HW; ++c; }
        if (c >= C) c -= C;
    }
}

template <typename T, typename W>
__global__ void bn_apply(const T* __restrict__ x, const W* __restrict__ w,
                         const W* __restrict__ b, const float* __restrict__ mean,
                         const float* __restrict__ rstd, T* __restrict__ y, long long total,
                         int C, int HW, int has_w, int has_b, int relu) {
    nchw_flat_walk(total, C, HW, [&](long long i, int c) {
        float v = (ld(x, i) - mean[c]) * rstd[c];
        if (has_w) v *= ld(w, c);
        if (has_b) v += ld(b, c);
        st(y, i, relu ? relu0(v) : v);
    });
}

template <typename T, typename W>
__global__ void bn_bwd_stats(const T* __restrict__ g, const T* __restrict__ x,
                             const float* __restrict__ mean, const float* __restrict__ rstd,
                             float* __restrict__ p1, float* __restrict__ p2, int N, int C,
                             int HW, const T* __restrict__ ym) {
    __shared__ float sh[32];
    int c = blockIdx.x;
    float mu = mean[c], r = rstd[c];
    float a1 = 0.f, a2 = 0.f;
    nchw_channel_walk(c, N, C, HW, [&](long long k) {
        float gv = gmask(g, ym, k);
        a1 += gv;
        a2 += gv * (ld(x, k) - mu) * r;
    });
    put_partials(a1, a2, p1, p2, sh);
}

// sums[c] = sum g, sums[C + c] = sum g * xhat; also dbias / dweight in the parameter type.
// coef (4C floats) for dx = A g + B (x - mean) + D: mean, A = rstd * w,
// B = -A * rstd * sum(g xhat) / n, D = -A * sum(g) / n. One warp per channel, CG as above.
template <typename T, typename W, bool CG>
__device__ __forceinline__ void bn_bwd_finalize_ch(
        int c, int lane, const float* __restrict__ p1, const float* __restrict__ p2, int P,
        int C, float* __restrict__ sums, W* __restrict__ gb, W* __restrict__ gw,
        const float* __restrict__ mean, const float* __restrict__ rstd,
        const W* __restrict__ w, int has_w, float inv_count, float* __restrict__ coef) {
    float s1 = 0.f, s2 = 0.f;
    for (int b = lane; b < P; b += 32) {
        long long i = (long long)c * P + b;
        s1 += CG ? __ldcg(p1 + i) : p1[i];
        s2 += CG ? __ldcg(p2 + i) : p2[i];
    }
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    if (lane) return;
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
__global__ void bn_bwd_finalize(const float* __restrict__ p1, const float* __restrict__ p2,
                                int P, int C, float* __restrict__ sums, W* __restrict__ gb,
                                W* __restrict__ gw, const float* __restrict__ mean,
                                const float* __restrict__ rstd, const W* __restrict__ w,
                                int has_w, float inv_count, float* __restrict__ coef) {
    int c = blockIdx.x * blockDim.y + threadIdx.y;      // blockDim (32, 4): a warp a channel
    if (c >= C) return;
    bn_bwd_finalize_ch<T, W, false>(c, threadIdx.x, p1, p2, P, C, sums, gb, gw, mean, rstd, w,
                                    has_w, inv_count, coef);
}

template <typename T, typename W>
__global__ void bn_bwd_dx(const T* __restrict__ g, const T* __restrict__ x,
                          const W* __restrict__ w, const float* __restrict__ mean,
                          const float* __restrict__ rstd, const float* __restrict__ sums,
                          T* __restrict__ dx, long long total, int C, int HW, float inv_count,
                          int has_w, const T* __restrict__ ym) {
    nchw_flat_walk(total, C, HW, [&](long long i, int c) {
        float r = rstd[c];
        float xh = (ld(x, i) - mean[c]) * r;
        float v = gmask(g, ym, i) - sums[c] * inv_count - xh * sums[C + c] * inv_count;
        st(dx, i, v * r * (has_w ? ld(w, c) : 1.f));
    });
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
// (bx, by): the block's channel group and chunk of rows, of P chunks (blockIdx and gridDim.y
// in the kernel; a cooperative kernel's blocks loop over them).
template <typename T>
__device__ __forceinline__ void bncl_stats_v_body(
        const T* __restrict__ x, const T* __restrict__ g, const float* __restrict__ mean,
        const float* __restrict__ rstd, float* __restrict__ p1, float* __restrict__ p2,
        long long M, int C, long long chunk, int mode, int GB, int RB, const T* __restrict__ ym,
        int bx, int by, int P, float* sh) {
    constexpr int N = VW<T>::n;
    int t = threadIdx.x, gi = t % GB, ri = t / GB;
    int cb = bx * GB * N;                    // first channel of the block
    int c0 = cb + gi * N;
    bool act = ri < RB && c0 < C;
    long long r0 = (long long)by * chunk;
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
        p1[(long long)c * P + by] = u;
        p2[(long long)c * P + by] = q;
    }
}

template <typename T, typename W>
__global__ void bncl_stats_v(const T* __restrict__ x, const T* __restrict__ g,
                             const float* __restrict__ mean, const float* __restrict__ rstd,
                             float* __restrict__ p1, float* __restrict__ p2, long long M, int C,
                             long long chunk, int mode, int GB, int RB,
                             const T* __restrict__ ym) {
    extern __shared__ float sh[];
    bncl_stats_v_body<T>(x, g, mean, rstd, p1, p2, M, C, chunk, mode, GB, RB, ym, blockIdx.x,
                         blockIdx.y, gridDim.y, sh);
}

// Per-channel coefficients of a thread's N channels: K rows of C floats from coef (16-byte
// aligned: C and c are multiples of N, and N is a multiple of 4 floats).
// CG: coef was written earlier in the same (cooperative) kernel: read through L2 (__ldcg).
template <int N, int K, bool CG>
__device__ __forceinline__ void ld_coef(const float* __restrict__ coef, int C, int c,
                                        float (&k)[K][N]) {
#pragma unroll
    for (int r = 0; r < K; ++r)
#pragma unroll
        for (int j = 0; j < N; j += 4) {
            if (CG) {
                float4 v = __ldcg(reinterpret_cast<const float4*>(coef + r * C + c + j));
                k[r][j] = v.x; k[r][j + 1] = v.y; k[r][j + 2] = v.z; k[r][j + 3] = v.w;
            } else {
                ldv(coef + r * C + c + j, &k[r][j]);
            }
        }
}

// y = (x - mean) * (rstd * w) + b over 16-byte vectors (coef from bn_finalize). The launcher
// (_cl_flat_grid) makes the grid stride a multiple of C, so a thread's channels never change:
// their coefficients stay in registers, and two vectors are in flight per iteration.
// k: the thread's first vector, nt: threads in the grid (nt * N a multiple of C).
template <typename T, bool CG>
__device__ __forceinline__ void bncl_apply_v_body(const T* __restrict__ x,
                                                  const float* __restrict__ coef,
                                                  T* __restrict__ y, long long nv, int C,
                                                  int relu, long long k, long long nt) {
    constexpr int N = VW<T>::n;
    float q[3][N];
    ld_coef<N, 3, CG>(coef, C, (int)((k * N) % C), q);
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

template <typename T, typename W>
__global__ void bncl_apply_v(const T* __restrict__ x, const float* __restrict__ coef,
                             T* __restrict__ y, long long nv, int C, int relu) {
    bncl_apply_v_body<T, false>(x, coef, y, nv, C, relu,
                                (long long)blockIdx.x * blockDim.x + threadIdx.x,
                                (long long)gridDim.x * blockDim.x);
}

// dx = A g + B (x - mean) + D over 16-byte vectors (coef from bn_bwd_finalize: rows mean,
// A, B, D); grid and registers as in bncl_apply_v.
template <typename T, bool CG>
__device__ __forceinline__ void bncl_bwd_dx_v_body(const T* __restrict__ g,
                                                   const T* __restrict__ x,
                                                   const float* __restrict__ coef,
                                                   T* __restrict__ dx, long long nv, int C,
                                                   const T* __restrict__ ym, long long k,
                                                   long long nt) {
    constexpr int N = VW<T>::n;
    float q[4][N];
    ld_coef<N, 4, CG>(coef, C, (int)((k * N) % C), q);
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
__global__ void bncl_bwd_dx_v(const T* __restrict__ g, const T* __restrict__ x,
                              const float* __restrict__ coef, T* __restrict__ dx, long long nv,
                              int C, const T* __restrict__ ym) {
    bncl_bwd_dx_v_body<T, false>(g, x, coef, dx, nv, C, ym,
                                 (long long)blockIdx.x * blockDim.x + threadIdx.x,
                                 (long long)gridDim.x * blockDim.x);
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

KERNELS = ("bn_stats", "bn_finalize", "bn_apply", "bn_bwd_stats", "bn_bwd_finalize",
           "bn_bwd_dx", "bncl_stats", "bncl_apply", "bncl_bwd_dx", "bn_running",
           "bncl_stats_v", "bncl_apply_v", "bncl_bwd_dx_v")

# The cooperative kernels: one launch for what bncl_stats_v, bn_finalize and bncl_apply_v
# (forward) or bncl_stats_v, bn_bwd_finalize and bncl_bwd_dx_v (backward) do in three, with a
# grid-wide barrier between the phases (launched with cuLaunchCooperativeKernel, every block
# resident). A family of its own: cooperative_groups.h may be missing from NVRTC's include
# path, and then only these are unavailable.
COOP_SOURCE = "#include <cooperative_groups.h>\n" + SOURCE + r"""
namespace cg = cooperative_groups;

// The statistics phase (mode 0: forward, 1: backward, as bncl_stats_v): the GX x P blocks of
// bncl_stats_v's grid, looped over by this grid's blocks.
template <typename T>
__device__ __forceinline__ void bncl_stats_grid(
        const T* __restrict__ x, const T* __restrict__ g, const float* __restrict__ mean,
        const float* __restrict__ rstd, float* __restrict__ p1, float* __restrict__ p2,
        long long M, int C, long long chunk, int mode, int GB, int RB,
        const T* __restrict__ ym, int GX, int P, float* sh) {
    for (int vb = blockIdx.x; vb < GX * P; vb += gridDim.x) {
        bncl_stats_v_body<T>(x, g, mean, rstd, p1, p2, M, C, chunk, mode, GB, RB, ym, vb % GX,
                             vb / GX, P, sh);
        __syncthreads();   // the next virtual block reuses the shared partials
    }
}

// Forward. The statistics' GX x P blocks are looped over by the grid's blocks; then one warp
// a channel finalizes; then the grid-stride apply (gridDim.x * blockDim.x * N a multiple of C).
template <typename T, typename W>
__global__ void bncl_fwd_coop(const T* __restrict__ x, float* __restrict__ p1,
                              float* __restrict__ p2, long long M, int C, long long chunk,
                              int GB, int RB, int GX, int P, float eps, float* __restrict__ mean,
                              float* __restrict__ rstd, W* __restrict__ mean_t,
                              W* __restrict__ var_t, const W* __restrict__ w,
                              const W* __restrict__ b, int has_w, int has_b,
                              float* __restrict__ coef, W* __restrict__ rm, W* __restrict__ rv,
                              float momentum, float unbias, long long* __restrict__ nbt,
                              int upd, T* __restrict__ y, long long nv, int relu) {
    extern __shared__ float sh[];
    cg::grid_group grid = cg::this_grid();
    bncl_stats_grid<T>(x, x, nullptr, nullptr, p1, p2, M, C, chunk, 0, GB, RB, nullptr, GX, P,
                       sh);
    grid.sync();
    int warps = blockDim.x >> 5;
    for (int c = blockIdx.x * warps + (threadIdx.x >> 5); c < C; c += gridDim.x * warps)
        bn_finalize_ch<T, W, true>(c, threadIdx.x & 31, x, p1, p2, P, C, 1LL, M, eps, mean,
                                   rstd, mean_t, var_t, w, b, has_w, has_b, coef, rm, rv,
                                   momentum, unbias, nbt, upd);
    grid.sync();
    bncl_apply_v_body<T, true>(x, coef, y, nv, C, relu,
                               (long long)blockIdx.x * blockDim.x + threadIdx.x,
                               (long long)gridDim.x * blockDim.x);
}

// Backward, the same phases: sums of g and g * xhat, the coefficients (and dweight, dbias),
// then dx unless do_dx is 0.
template <typename T, typename W>
__global__ void bncl_bwd_coop(const T* __restrict__ x, const T* __restrict__ g,
                              const float* __restrict__ mean, const float* __restrict__ rstd,
                              float* __restrict__ p1, float* __restrict__ p2, long long M, int C,
                              long long chunk, int GB, int RB, int GX, int P,
                              const T* __restrict__ ym, float* __restrict__ sums,
                              W* __restrict__ gb, W* __restrict__ gw, const W* __restrict__ w,
                              int has_w, float inv_count, float* __restrict__ coef,
                              T* __restrict__ dx, long long nv, int do_dx) {
    extern __shared__ float sh[];
    cg::grid_group grid = cg::this_grid();
    bncl_stats_grid<T>(x, g, mean, rstd, p1, p2, M, C, chunk, 1, GB, RB, ym, GX, P, sh);
    grid.sync();
    int warps = blockDim.x >> 5;
    for (int c = blockIdx.x * warps + (threadIdx.x >> 5); c < C; c += gridDim.x * warps)
        bn_bwd_finalize_ch<T, W, true>(c, threadIdx.x & 31, p1, p2, P, C, sums, gb, gw, mean,
                                       rstd, w, has_w, inv_count, coef);
    if (!do_dx) return;   // (uniform over the grid: no barrier follows)
    grid.sync();
    bncl_bwd_dx_v_body<T, true>(g, x, coef, dx, nv, C, ym,
                                (long long)blockIdx.x * blockDim.x + threadIdx.x,
                                (long long)gridDim.x * blockDim.x);
}
"""

COOP_KERNELS = ("bncl_fwd_coop", "bncl_bwd_coop")
