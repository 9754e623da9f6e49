"""``linear`` and ``matmul`` on cuBLASLt through nvmath-python.

Two reasons to leave CuPy's ``matmul`` (cuBLAS ``gemmEx``):

- **Speed.** cuBLASLt picks better kernels for skinny-K shapes (GPU.md: 133 us against 263
  us for (16384x768) @ (768x3072) in bf16) and fuses the bias into the GEMM (``BIAS``
  epilogue) and the bias gradient into the weight-gradient GEMM (``BGRADB``); a planned GEMM
  replayed by one direct ``cublasLtMatmul`` call also costs less host time than CuPy's
  matmul. Planning a shape costs milliseconds, so GEMMs under ``EMBER_NVMATH_MIN_MACS``
  multiply-adds (default 2**28) go to cuBLASLt only from their shape's second call on.
- **CUDA graph capture.** CuPy refuses every cuBLAS call while a stream is capturing; nvmath
  captures. On any non-default stream (capture runs on one, and torch's capture recipe warms
  up on one) every supported GEMM goes here, whatever its size, so a capture finds the plans
  its warmup made (planning is not capturable).

Layouts (cuBLASLt epilogues are column-major, GPU.md's pitfall): with ``x (M, K)`` and
``w (N, K)`` row-major,

- ``y = x @ w.T + b`` is computed as ``y.T = w @ x.T`` with the ``BIAS`` epilogue, whose
  column-major ``(N, M)`` result is ``y`` row-major; without a bias, as ``x @ w.T`` directly;
- ``dw = dy.T @ x`` as ``dw.T = x.T @ dy`` with ``BGRADB`` (sum of ``dy`` over rows = the
  bias gradient), column-major ``(K, N)``, that is ``dw`` row-major;
- ``dx = dy @ w``.

Plans are cached per (kind, shapes, strides, dtype, epilogue, TF32, device) and launched on
the caller's stream; float32
GEMMs use TF32 when ``ember.backends.cuda.matmul.allow_tf32`` is on.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

from ember.backend.cuda_ops import _nvrtc as K

try:  # optional: the 'cuda' extra installs it
    import nvmath  # type: ignore[import-not-found]
    from nvmath.bindings import cublasLt as _cublaslt  # type: ignore[import-not-found]
    from nvmath.linalg.advanced import Matmul, MatmulEpilog, MatmulOptions
except Exception as _exc:
    nvmath = None
    _IMPORT_ERROR: Exception | None = _exc
else:
    _IMPORT_ERROR = None

# Measured on H100, bf16 F.linear forward with bias, per call (torch 2.11 in brackets):
# (16384x768)@(768x3072) 121 us on cuBLASLt, 364 us on CuPy (118); (16384x768)@(768x768) 46
# against 100 us (35); (2048x768)@(768x768) 43 against 63 us (23); (64x784)@(784x512) 89
# against 61 us (16). Below this many multiply-adds CuPy's cuBLAS runs (on the default stream).
MIN_MACS = int(os.environ.get("EMBER_NVMATH_MIN_MACS", str(1 << 28)))
# Smaller GEMMs go to cuBLASLt from their shape's second call on (see _worth_it); 0 keeps
# them on CuPy always.
RECURRING = [os.environ.get("EMBER_NVMATH_RECURRING", "1") != "0"]
# _linear_activation's ReLU runs as the GEMM's epilogue below this size (multiply-adds)
EPILOG_MAX_MACS = int(os.environ.get("EMBER_RELU_EPILOG_MAX_MACS", str(1 << 28)))
_DTYPES = ("float32", "float16", "bfloat16")
_PLANS: dict = {}
_FAILED: dict = {}
# Set while make_graphed_callables warms up and captures: every supported GEMM takes the
# cuBLASLt path then, so its plan exists before capture (planning is not capturable).
FORCE = [False]


def _tf32() -> bool:
    bc = _BACKENDS_CUDA[0]
    if bc is None:
        from ember.backends import cuda as bc
        _BACKENDS_CUDA[0] = bc
    return bc.matmul.allow_tf32


_BACKENDS_CUDA: list = [None]   # ember.backends.cuda, bound on first use (a GEMM key asks)


def _options(dtype: Any) -> Any:
    if K.dtype_name(dtype) == "float32" and _tf32():
        return MatmulOptions(compute_type=nvmath.linalg.ComputeType.COMPUTE_32F_FAST_TF32)
    return MatmulOptions()


class _Launch:
    """A planned GEMM replayed by one direct ``cublasLtMatmul`` call.

    ``Matmul.execute`` costs about 40 us of Python per call (result and event bookkeeping);
    after the first execute has allocated the plan's workspace, the same descriptors,
    algorithm and workspace are reused here with a result array allocated by CuPy (so it
    comes from the current pool, the private one during graph capture). The epilogue's
    vector (bias in, or bias gradient out) is re-pointed through the descriptor.
    """

    __slots__ = ("mm", "args", "shape", "strides", "dtype", "aux", "nbytes", "bias_ptr")

    def __init__(self, mm: Any, result: Any, aux: Any) -> None:
        ws = mm.workspace
        held = ws.ptr is not None
        self.mm = mm  # keeps the descriptors, layouts, algorithm and workspace alive
        self.args = (mm.handle, mm.mm_desc, mm.alpha.ctypes.data, mm.a_layout_ptr,
                     mm.b_layout_ptr, mm.beta.ctypes.data, mm.c_layout_ptr, mm.d_layout_ptr,
                     mm.cached_best_algorithm_struct.ctypes.data,
                     ws.raw_ptr if held else 0, ws.size if held else 0)
        self.shape, self.dtype, self.strides = result.shape, result.dtype, result.strides
        # the result and the epilogue's output vector share one pool allocation (the vector
        # 256-byte aligned after the result): one allocation fewer per weight-gradient GEMM
        self.nbytes = (result.nbytes + 255) // 256 * 256
        self.aux = None
        if aux is not None:
            name, vec = next(iter(aux.items()))
            self.aux = (name, vec.shape, self.nbytes)
            self.nbytes += vec.nbytes
        self.bias_ptr = None   # the pointer the descriptor holds (set again only on change)
        mm.release_operands()  # drop the planning-time operands (no memory kept alive)

    def __call__(self, cp: Any, a: Any, b: Any, bias: Any, stream: Any) -> Any:
        h, desc, alpha, al, bl, beta, cl, dl, algo, ws, wss = self.args
        mem = cp.cuda.alloc(self.nbytes)
        out = cp.ndarray(self.shape, self.dtype, mem, self.strides)
        aux = None
        if bias is not None:
            ptr = bias.data.ptr
            if ptr != self.bias_ptr:   # a layer's bias keeps its memory from step to step
                self.mm.mm_desc_ifc.bias_pointer = self.bias_ptr = ptr
        elif self.aux is not None:
            aux = cp.ndarray(self.aux[1], self.dtype, mem + self.aux[2])
            self.mm.mm_desc_ifc.bias_pointer = aux.data.ptr
        _cublaslt.matmul(h, desc, alpha, a.data.ptr, al, b.data.ptr, bl, beta, 0, cl,
                         out.data.ptr, dl, algo, ws, wss, stream.ptr)
        return out if aux is None else (out, {self.aux[0]: aux})


def gemm(cp: Any, a: Any, b: Any, tag: str, epilog: Any = None, bias: Any = None) -> Any:
    """``a @ b`` on cuBLASLt (with an optional epilogue), or None when nvmath rejects it.

    Returns the result array, or ``(result, aux dict)`` for epilogues with outputs.
    """
    stream = cp.cuda.get_current_stream()
    # No stream in the key: a plan made while warming up on a side stream must serve the
    # capture stream (torch's graph-capture recipe); launches take the stream per call.
    key = (tag, a.shape, a.strides, b.shape, b.strides, a.dtype.str, epilog,
           None if bias is None else bias.strides, K.dtype_name(a.dtype) == "float32" and _tf32(),
           cp.cuda.runtime.getDevice())
    launch = _PLANS.get(key)
    if launch is not None:
        return launch(cp, a, b, bias, stream)
    if key in _FAILED:
        return None
    inputs = {"bias": bias} if bias is not None else None
    try:
        mm = Matmul(a, b, options=_options(a.dtype), stream=stream)
        if epilog is None:
            mm.plan()
        else:
            mm.plan(epilog=epilog, epilog_inputs=inputs)
        res = mm.execute(stream=stream)
    except Exception as exc:  # an unsupported layout/epilogue: the caller falls back
        _FAILED[key] = repr(exc)[:300]
        return None
    finally:
        # nvmath's stream contexts leave CuPy's current stream at the null stream when the
        # caller made its stream current with .use() (ember.cuda.stream does): put it back
        stream.use()
    out, aux = res if isinstance(res, tuple) else (res, None)
    if out.ndim == 2 and (aux is None or len(aux) == 1):
        _PLANS[key] = _Launch(mm, out, aux)
    else:
        _PLANS[key] = _Replan(mm)
    return res


class _Replan:
    """A planned GEMM run through nvmath's own ``execute`` (batched results)."""

    __slots__ = ("mm",)

    def __init__(self, mm: Any) -> None:
        self.mm = mm

    def __call__(self, cp: Any, a: Any, b: Any, bias: Any, stream: Any) -> Any:
        self.mm.reset_operands_unchecked(a=a, b=b, epilog_inputs=None if bias is None
                                         else {"bias": bias})
        try:
            return self.mm.execute(stream=stream)
        finally:
            stream.use()  # see gemm()


def _rows(a: Any) -> Any:
    """``a`` as a C-contiguous 2-d ``(rows, last)`` array (a copy only when needed)."""
    a2 = a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a
    return a2 if a2.flags.c_contiguous else a2.copy()


def _batch3(a: Any) -> Any:
    """``a`` as ``(batch, rows, cols)``."""
    return a if a.ndim == 3 else a.reshape((-1,) + a.shape[-2:])


def _gemm_batched(cp: Any, a: Any, b: Any) -> Any:
    """``a @ b`` for equal batch dims of any rank as one strided batched cuBLASLt GEMM (the
    batch dims merged: a view for the usual strides, else a copy), or None when nvmath
    rejects it. (B, H, M, K) @ (B, H, K, N) is attention's shape; unlike CuPy's cuBLAS
    matmul it runs inside a CUDA graph capture."""
    y = gemm(cp, _batch3(a), _batch3(b), "bmm")
    return y if y is None or a.ndim == 3 else y.reshape(a.shape[:-1] + (b.shape[-1],))


def batched_matmul(cp: Any, a: Any, b: Any) -> Any:
    """``a @ b`` on raw arrays (attention's fallback): :func:`_gemm_batched` where a capture
    needs it (any non-default stream, as :class:`NvMatmul`), else CuPy's matmul."""
    if nvmath is not None and a.ndim == b.ndim >= 3 and a.shape[:-2] == b.shape[:-2] and \
            a.dtype == b.dtype and K.dtype_name(a.dtype) in _DTYPES and a.size and b.size and \
            cp.cuda.get_current_stream().ptr != 0:
        y = _gemm_batched(cp, a, b)
        if y is not None:
            return y
    return cp.matmul(a, b)


_SEEN: dict = {}


def _worth_it(cp: Any, macs: int, key: tuple) -> bool:
    """Whether a GEMM of ``macs`` multiply-adds with these operand shapes (``key``) goes to
    cuBLASLt: large ones always; small ones from their shape's second call on. A replayed
    plan costs less host time than CuPy's matmul (a Linear under autocast: 124 against 154-165
    us per call, H200), but planning a new shape costs milliseconds, so a shape seen once (a
    one-off size in a dynamic-shape workload) stays on CuPy."""
    if macs >= MIN_MACS or FORCE[0]:
        return True
    # On a side stream (capture runs on one, and torch's whole-step capture recipe warms up
    # on one), every GEMM takes cuBLASLt, so a capture finds the plans its warmup made:
    # planning itself is not capturable.
    if cp.cuda.get_current_stream().ptr != 0:
        return True
    if not RECURRING[0]:
        return False
    n = _SEEN.get(key, 0)
    if n:
        return True
    if len(_SEEN) > 4096:   # a workload of ever-new shapes: forget, plan nothing more
        _SEEN.clear()
    _SEEN[key] = 1
    return False


def _linear_operands(xp: Any, input: Any, weight: Any, bias: Any) -> tuple | None:
    """``(x2, w, b, n)`` for a linear that goes to cuBLASLt: the input as (rows, K) and the
    weight as C-contiguous 2-d arrays, the bias contiguous (or None), n the output features;
    None when the dtypes/shapes are not covered or the GEMM stays on CuPy (:func:`_worth_it`)."""
    if weight.ndim != 2 or input.ndim < 2 or K.dtype_name(input.dtype) not in _DTYPES or \
            weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        return None
    n, k = weight.shape
    m = input.size // k if k else 0
    if not m or not n or not k or not _worth_it(xp, m * n * k, ("linear", input.shape,
                                                                 weight.shape)):
        return None
    b = None if bias is None else bias if bias.flags.c_contiguous else bias.copy()
    return _rows(input), _rows(weight), b, n


class NvLinear:
    """``linear`` on cuBLASLt with the bias fused (forward) and the bias gradient fused into
    the weight-gradient GEMM (backward)."""

    def forward(ctx, xp, input, weight, bias):
        ops = _linear_operands(xp, input, weight, bias)
        if ops is None:
            return NotImplemented
        x2, w, b, n = ops
        if b is not None:
            yt = gemm(xp, w, x2.T, "fwd_bias", MatmulEpilog.BIAS, b)
            y = None if yt is None else yt.T
        else:
            y = gemm(xp, x2, w.T, "fwd")
        if y is None:
            return NotImplemented
        need = ctx.needs_input_grad
        ctx.save(input if need[1] else None, weight if need[0] else None)
        ctx.has_bias = bias is not None
        ctx.w_ndim = 2
        return y.reshape(input.shape[:-1] + (n,))

    def backward(ctx, grad):
        x, w = ctx.saved
        return _linear_backward(ctx, grad, x, w)


def _linear_backward(ctx: Any, grad: Any, x: Any, w: Any) -> tuple:
    """Linear's backward on cuBLASLt (``x``, ``w``: the saved input and weight, either None
    when its partner needs no gradient); the generic formulas where cuBLASLt refuses."""
    from ember.tensor import _make
    g = grad._data
    cp = _xp(grad)
    n = g.shape[-1]
    m = g.size // n if n else 0
    kdim = (x if x is not None else w).shape[-1]
    if not m or K.dtype_name(g.dtype) not in _DTYPES:  # (the forward chose cuBLASLt: so does this)
        return _generic_backward(ctx, grad, x, w)
    g2 = _rows(g)
    gx = gw = gb = None
    want_b = ctx.has_bias and ctx.next_edges[2] is not None
    if ctx.next_edges[0] is not None:
        r = gemm(cp, g2, _rows(w._data), "dx")
        if r is None:
            return _generic_backward(ctx, grad, x, w)
        gx = _make(r.reshape(g.shape[:-1] + (kdim,)), w._dtype, w._device)
    if ctx.next_edges[1] is not None:
        x2 = _rows(x._data)
        res = gemm(cp, x2.T, g2, "dw_bgrad", MatmulEpilog.BGRADB) if want_b else None
        if res is not None:
            dwt, aux = res
            gb = _make(aux["bgradb"].reshape(n), grad._dtype, grad._device)
        else:  # no bias, or cuBLASLt refused the fused bias gradient
            dwt = gemm(cp, x2.T, g2, "dw")
        if dwt is None:
            return _generic_backward(ctx, grad, x, w)
        gw = _make(dwt.T, x._dtype, x._device)
    if want_b and gb is None:
        gb = grad.reshape(-1, n).sum(0)
    return gx, gw, gb


def _generic_backward(ctx: Any, grad: Any, x: Any, w: Any) -> tuple:
    """Linear's own gradients (ember ops, or arrays on CuPy's cuBLAS) where cuBLASLt refuses."""
    from ember.ops.blas import linear_grads
    return linear_grads(ctx, grad, x, w)


class NvLinearAct:
    """``_linear_activation`` on cuBLASLt. ReLU is the GEMM's epilogue (``RELU_BIAS``) for
    GEMMs under ``EPILOG_MAX_MACS``, else the activation kernel after a bias GEMM; the
    tanh GELU follows the bias-epilogue GEMM as the fused activation kernel (the
    ``GELU_AUX_BIAS`` epilogue's aux output has a layout of cuBLASLt's choosing, which the
    planned-launch path does not re-point yet). The backward applies the activation's
    derivative with the fused activation kernel, then Linear's cuBLASLt backward (the bias
    gradient fused into the weight GEMM)."""

    def forward(ctx, xp, input, weight, bias, activation):
        ops = None if bias is None or activation not in ("relu", "gelu_tanh") else \
            _linear_operands(xp, input, weight, bias)
        if ops is None:
            return NotImplemented
        x2, w, b, n = ops
        m, k = x2.shape
        relu = activation == "relu"
        # The ReLU epilogue pays off where host time rules (small GEMMs: one kernel less);
        # on large ones cuBLASLt's RELU_BIAS kernels measured slower than BIAS plus the
        # activation kernel (H200, 4096^3 bf16: 2.39 vs 2.20 ms a fwd+bwd of two layers).
        # The tanh GELU is an epilogue only where nothing is recorded for backward: its
        # GELU_BIAS form has no aux output to re-point (the training form, GELU_AUX_BIAS,
        # writes the pre-activation to an aux buffer of cuBLASLt's layout).
        epi = m * n * k < EPILOG_MAX_MACS and (relu or not K.recording(ctx))
        if epi:
            yt = gemm(xp, w, x2.T, "fwd_relu_bias" if relu else "fwd_gelu_bias",
                      MatmulEpilog.RELU_BIAS if relu else MatmulEpilog.GELU_BIAS, b)
            if yt is None and not relu:   # cuBLASLt refused it: bias GEMM + GELU kernel
                epi = False
        if not epi:
            yt = gemm(xp, w, x2.T, "fwd_bias", MatmulEpilog.BIAS, b)
        if yt is None:
            return NotImplemented
        h = yt.T.reshape(input.shape[:-1] + (n,))
        if epi:
            y = h
        else:
            from ember.backend.cuda_ops.kernels_activation import _run
            y = _run(xp, "act_fwd", (h,), h, 3 if relu else 1)
        # what the derivative reads: ReLU's output (out > 0), the GELU's pre-activation
        s = y if relu else h
        need = ctx.needs_input_grad
        # the generic backward's layout (it runs for create_graph): a GELU's double backward
        # recomputes the pre-activation from input, weight and bias
        if relu:
            ctx.save(input if need[1] else None, weight if need[0] else None, s, None)
        else:
            ctx.save(input, weight, s, bias)
        ctx.activation = activation
        ctx.act = 3 if relu else 1        # the activation kernels' modes
        ctx.has_bias = True
        ctx.w_ndim = 2
        return y

    def backward(ctx, grad):
        from ember.backend.cuda_ops import _layout as L
        from ember.backend.cuda_ops.kernels_activation import _dense, _run
        from ember.tensor import _make
        x, w, s, _ = ctx.saved
        cp = _xp(grad)
        sa = _dense(cp, s._data)
        g = L.as_layout(cp, grad._data, sa, sa.dtype)
        gh = _make(_run(cp, "act_bwd", (g, sa), sa, ctx.act), grad._dtype, grad._device)
        return _linear_backward(ctx, gh, x, w) + (None,)


class NvMatmul:
    """``matmul`` on cuBLASLt for 2-d operands, ``(*, K) @ (K, N)`` and products with equal
    batch dims; others (and small ones outside capture) run the generic code."""

    def forward(ctx, xp, input, other):
        if K.dtype_name(input.dtype) not in _DTYPES or other.dtype != input.dtype or \
                input.ndim < 2 or other.ndim < 2 or not input.size or not other.size:
            return NotImplemented
        k, n = other.shape[-2], other.shape[-1]
        if other.ndim == 2:
            if not _worth_it(xp, (input.size // k) * n * k, ("mm", input.shape, other.shape)):
                return NotImplemented
            a = input if input.ndim == 2 else _rows(input)
            y = gemm(xp, a, other, "mm")
            if y is not None and input.ndim > 2:
                y = y.reshape(input.shape[:-1] + (n,))
        elif input.ndim == other.ndim >= 3 and input.shape[:-2] == other.shape[:-2]:
            if not _worth_it(xp, input.size * n, ("bmm", input.shape, other.shape)):
                return NotImplemented
            y = _gemm_batched(xp, input, other)
        else:
            return NotImplemented
        if y is None:
            return NotImplemented
        need = ctx.needs_input_grad
        ctx.save(input if need[1] else None, other if need[0] else None)
        ctx.ndims = (input.ndim, other.ndim)
        return y

    def backward(ctx, grad):  # the generic formulas; their matmuls dispatch back here
        from ember.ops.registry import OPS
        return OPS["matmul"].backward(ctx, grad)


def _xp(t: Any) -> Any:
    from ember.backend import get_xp
    return get_xp(t.device)


if nvmath is None:
    warnings.warn(f"ember: nvmath-python not installed; linear layers use CuPy's cuBLAS "
                  f"matmul, which CUDA graph capture refuses ({_IMPORT_ERROR})", RuntimeWarning,
                  stacklevel=2)
    IMPLS: dict = {}
else:
    IMPLS = {"linear": NvLinear, "matmul": NvMatmul, "_linear_activation": NvLinearAct}
