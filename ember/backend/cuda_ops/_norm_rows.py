"""layer_norm / rms_norm rows held in registers (the fast path of ``kernels_norm``).

For rows of up to 32 * 8 vectors (1024 float32 or 2048 bf16/fp16 columns) whose length is
a multiple of the 16-byte vector, one warp keeps its whole row in registers: the forward
reads ``x`` once from memory (the generic row kernels read it three times: mean, variance,
output) and the backward reads ``g`` and ``x`` once, computing ``dx`` and, in the same
pass, per-warp partial sums of dweight/dbias (no second kernel re-reading both). Each warp
walks rows ``warp, warp + nwarps, ...`` and keeps its column partials in registers; the
partials (one row per warp) are summed by one CuPy reduction.
"""
from __future__ import annotations

from typing import Any

from ember.backend.cuda_ops import _nvrtc as K

MAX_NV = 8          # 16-byte vectors per lane

_SRC = r"""
// lane `l` holds columns (j * 32 + l) * N .. + N - 1 for j < NV
template <typename T, int NV>
__global__ void lnr_fwd(const T* __restrict__ x, const T* __restrict__ w,
                        const T* __restrict__ b, T* __restrict__ y, float* __restrict__ mean,
                        float* __restrict__ rstd, long long rows, int cols, float eps,
                        int center, int has_w, int has_b) {
    constexpr int N = VW<T>::n;
    long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    int lane = threadIdx.x;
    float v[NV][N];
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        int c = (j * 32 + lane) * N;
        if (c < cols) {
            ldv(xr + c, v[j]);
#pragma unroll
            for (int k = 0; k < N; ++k) acc += v[j][k];
        } else {
#pragma unroll
            for (int k = 0; k < N; ++k) v[j][k] = 0.f;
        }
    }
    float mu = center ? warp_sum(acc) / cols : 0.f;
    acc = 0.f;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        if ((j * 32 + lane) * N < cols) {
#pragma unroll
            for (int k = 0; k < N; ++k) {
                float d = v[j][k] - mu;
                acc += d * d;
            }
        }
    }
    float r = 1.f / sqrtf(warp_sum(acc) / cols + eps);
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        int c = (j * 32 + lane) * N;
        if (c < cols) {
            float wv[N], bv[N], o[N];
            if (has_w) ldv(w + c, wv);
            if (has_b) ldv(b + c, bv);
#pragma unroll
            for (int k = 0; k < N; ++k) {
                float t = (v[j][k] - mu) * r;
                if (has_w) t *= wv[k];
                if (has_b) t += bv[k];
                o[k] = t;
            }
            stv(yr + c, o);
        }
    }
    if (lane == 0) {
        if (center) mean[row] = mu;
        rstd[row] = r;
    }
}

// dx = r * (gh - mean(gh) - xhat * mean(gh * xhat)), gh = g * w; with pw/pb, warp q of the
// grid also writes row q of the partials sum(g * xhat) and sum(g) over the rows it handled.
template <typename T, int NV>
__global__ void lnr_bwd(const T* __restrict__ g, const T* __restrict__ x,
                        const T* __restrict__ w, const float* __restrict__ mean,
                        const float* __restrict__ rstd, T* __restrict__ dx,
                        float* __restrict__ pw, float* __restrict__ pb, long long rows,
                        int cols, int center, int has_w) {
    constexpr int N = VW<T>::n;
    int lane = threadIdx.x;
    long long warp = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    long long nwarps = (long long)gridDim.x * blockDim.y;
    float wv[NV][N], aw[NV][N], ab[NV][N];
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        int c = (j * 32 + lane) * N;
        if (has_w && c < cols) {
            ldv(w + c, wv[j]);
        } else {
#pragma unroll
            for (int k = 0; k < N; ++k) wv[j][k] = 1.f;
        }
#pragma unroll
        for (int k = 0; k < N; ++k) { aw[j][k] = 0.f; ab[j][k] = 0.f; }
    }
    for (long long row = warp; row < rows; row += nwarps) {
        const T* gr = g + row * cols;
        const T* xr = x + row * cols;
        float mu = center ? mean[row] : 0.f, r = rstd[row];
        float gv[NV][N], xh[NV][N];
        float a = 0.f, bs = 0.f;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            int c = (j * 32 + lane) * N;
            if (c < cols) {
                ldv(gr + c, gv[j]);
                ldv(xr + c, xh[j]);
#pragma unroll
                for (int k = 0; k < N; ++k) {
                    xh[j][k] = (xh[j][k] - mu) * r;
                    float gh = gv[j][k] * wv[j][k];
                    a += gh;
                    bs += gh * xh[j][k];
                    aw[j][k] += gv[j][k] * xh[j][k];
                    ab[j][k] += gv[j][k];
                }
            }
        }
        a = center ? warp_sum(a) / cols : 0.f;
        bs = warp_sum(bs) / cols;
        if (dx) {
            T* dr = dx + row * cols;
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                int c = (j * 32 + lane) * N;
                if (c < cols) {
                    float o[N];
#pragma unroll
                    for (int k = 0; k < N; ++k)
                        o[k] = r * (gv[j][k] * wv[j][k] - a - xh[j][k] * bs);
                    stv(dr + c, o);
                }
            }
        }
    }
    if (pw) {
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            int c = (j * 32 + lane) * N;
            if (c < cols) {
#pragma unroll
                for (int k = 0; k < N; ++k) {
                    pw[warp * cols + c + k] = aw[j][k];
                    pb[warp * cols + c + k] = ab[j][k];
                }
            }
        }
    }
}

// out[c] = sum over rows of p[r, c] (fp32, fixed order: deterministic); block (32, 32)
// covers 32 columns, its 32 row lanes stride over the rows, then combine in shared memory.
template <typename T, int NV>
__global__ void lnr_colsum(const float* __restrict__ p, T* __restrict__ out, int nrows,
                           int cols) {
    __shared__ float sh[32][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.f;
    if (c < cols)
        for (int r = threadIdx.y; r < nrows; r += 32) acc += p[(long long)r * cols + c];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        for (int k = 1; k < 32; ++k) acc += sh[k][threadIdx.x];
        st(out, c, acc);
    }
}
"""

K.define("norm_rows", _SRC, ("lnr_fwd", "lnr_bwd", "lnr_colsum"))

def vectors(arr: Any, cols: int, *others: Any) -> int:
    """Vectors per lane when the register kernels cover rows of ``cols`` columns of
    ``arr``'s dtype (16-byte aligned arrays, whole vectors per row), else 0."""
    ct = K.ctype(arr)
    if ct is None:
        return 0
    n = 16 // arr.itemsize
    if cols % n:
        return 0
    nv = -(-cols // (32 * n))
    if nv > MAX_NV or not K.aligned(arr, *(o for o in others if o is not None)):
        return 0
    return nv


def forward(xp: Any, nv: int, x: Any, w: Any, b: Any, y: Any, mean: Any, rstd: Any, rows: int,
            cols: int, eps: float, center: bool) -> None:
    K.function("norm_rows", "lnr_fwd", f"{K.ctype(x)}, {nv}")(
        ((rows + 3) // 4, 1, 1), (32, 4, 1),
        (x, w if w is not None else x, b if b is not None else x, y,
         mean if center else rstd, rstd, K.i64(rows), K.i32(cols), K.f32(eps), K.i32(center),
         K.i32(w is not None), K.i32(b is not None)))


def colsum(xp: Any, nv: int, partial: Any, dtype: Any) -> Any:
    """The column sums of a (warps, cols) float32 partial array, as ``dtype`` (CuPy's axis-0
    sum of such a tall array measured slow: a few threads per column)."""
    nrows, cols = partial.shape
    out = xp.empty(cols, dtype)
    K.function("norm_rows", "lnr_colsum", f"{K.ctype(out)}, {nv}")(
        ((cols + 31) // 32, 1, 1), (32, 32, 1), (partial, out, K.i32(nrows), K.i32(cols)))
    return out


def backward(xp: Any, nv: int, g: Any, x: Any, w: Any, mean: Any, rstd: Any, dx: Any,
             rows: int, cols: int, center: bool, want_wb: bool) -> tuple:
    """Runs the backward kernel; returns the (warps, cols) float32 partials of dweight and
    dbias (None, None without ``want_wb``); :func:`colsum` finishes them."""
    import numpy as np  # noqa: PLC0415
    fn = K.function("norm_rows", "lnr_bwd", f"{K.ctype(x)}, {nv}")
    # One wave of resident blocks, each warp striding over rows: the kernel holds a row and
    # its column partials in registers (144 a thread for float32 rows of 768), so 3 blocks
    # fit an H100 SM, and a fixed 4 per SM left a second, one-third-full wave
    blocks = max(1, min((rows + 3) // 4, fn.max_blocks(128, 0)))
    pw = pb = None
    if want_wb:
        pw = xp.empty((blocks * 4, cols), xp.float32)
        pb = xp.empty((blocks * 4, cols), xp.float32)
    null = np.uint64(0)
    fn(
        (blocks, 1, 1), (32, 4, 1),
        (g, x, w if w is not None else x, mean if center else rstd, rstd,
         dx if dx is not None else null, pw if pw is not None else null,
         pb if pb is not None else null, K.i64(rows), K.i32(cols), K.i32(center),
         K.i32(w is not None)))
    return pw, pb
