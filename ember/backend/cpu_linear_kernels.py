"""numba passes around a Linear layer's GEMM on the CPU (``pip install ember[cpu]``).

After the product, NumPy adds the bias in a broadcast loop that ran a (128, 256) float32
output in ~5.5 us, and a ReLU after it is another full pass (another ~6 us, plus a fresh
output array). These loops do the bias add, or the bias add and the ReLU, in one pass
over the output in place (~2.5 us for the same array, where LLVM vectorizes the row loop
over the bias), and the fused Linear + ReLU op's gradient (``ops/linear_act``) is the
ReLU mask and the bias gradient's column sums in one pass. A plain Linear's bias gradient
takes the same column sums (``col_sums``), so both give the same bits.

Semantics follow the separate ops: the ReLU keeps NaN (``v if not v < 0 else 0``, torch's
``clamp_min``), its gradient is torch's ``threshold_backward`` (the incoming gradient where
the output is > 0 or NaN, else 0), and the bias gradient's column sums accumulate in
float64 (float32 data) or in the data's dtype (float64 data), row by row. Kernels take
C-contiguous 2-D float32/float64 outputs and contiguous 1-D vectors of the same dtype;
callers check that and keep their NumPy code otherwise. numba is imported on the first
call; without numba, or with ``EMBER_NUMBA=0``, :data:`kernels` returns None.
"""
from __future__ import annotations

from types import SimpleNamespace

from ember.backend.cpu_kernels import LazyKernels


def _build() -> SimpleNamespace:
    import numba
    import numpy as np

    jit = numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)

    @jit
    def bias_add(y, b):  # pragma: no cover - compiled
        # y[i, :] += b for every row, in place
        rows, n = y.shape
        for i in range(rows):
            r = y[i]
            for j in range(n):
                r[j] = r[j] + b[j]

    @jit
    def bias_relu(y, b, zero):  # pragma: no cover - compiled
        # y[i, :] = relu(y[i, :] + b) in place (the sum rounded first, as two ops would);
        # zero: 0 in y's dtype (an int literal would widen the select to float64)
        rows, n = y.shape
        for i in range(rows):
            r = y[i]
            for j in range(n):
                v = r[j] + b[j]
                r[j] = v if not v < 0 else zero

    @jit
    def relu(y, zero):  # pragma: no cover - compiled
        # y = relu(y) in place (a Linear without bias)
        rows, n = y.shape
        for i in range(rows):
            r = y[i]
            for j in range(n):
                v = r[j]
                r[j] = v if not v < 0 else zero

    @jit
    def relu_grad(g, y, out, gb, want_sum, zero):  # pragma: no cover - compiled
        # out = g where y > 0 (or NaN) else 0 (torch's threshold_backward on the ReLU's
        # output); with want_sum, gb = out's column sums (float64 partial sums, row order)
        rows, n = g.shape
        acc = np.zeros(n if want_sum else 0, np.float64)
        for i in range(rows):
            gr = g[i]
            yr = y[i]
            o = out[i]
            if want_sum:
                for j in range(n):
                    v = gr[j] if not yr[j] <= 0 else zero
                    o[j] = v
                    acc[j] += v
            else:
                for j in range(n):
                    o[j] = gr[j] if not yr[j] <= 0 else zero
        if want_sum:
            for j in range(n):
                gb[j] = acc[j]

    @jit
    def col_sums(g, gb):  # pragma: no cover - compiled
        # gb = g's column sums, accumulated exactly as relu_grad's (so a Linear's bias
        # gradient is the same bits whether its ReLU ran fused or as its own op)
        rows, n = g.shape
        acc = np.zeros(n, np.float64)
        for i in range(rows):
            gr = g[i]
            for j in range(n):
                acc[j] += gr[j]
        for j in range(n):
            gb[j] = acc[j]

    return SimpleNamespace(bias_add=bias_add, bias_relu=bias_relu, relu=relu,
                           relu_grad=relu_grad, col_sums=col_sums)


kernels = LazyKernels(_build)   # the compiled namespace, or None
