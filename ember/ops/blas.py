"""Matrix products: matmul, mm, bmm, mv, dot, addmm, einsum (BLAS through ``xp.matmul``)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as _np

from ember import dtypes as _dt
from ember._state import _State
from ember.backend import get_xp
from ember.backend import cpu_linear_kernels, cpu_mkl
from ember.backend.cpu import gemm_threads, parallel_rows
from ember.backend.cuda import stream_capturing
from ember.errors import check, make
from ember.ops import meta as M
from ember.ops.registry import OPS, OpDef, TensorMeta, apply, composite, register
from ember.tensor import Tensor, _make


def _same_dtype(op: str, a: Tensor, b: Tensor) -> None:
    # Cheap test first: the message (dtype names, shapes) is built only on failure; formatting
    # it on every call cost ~4 us per operand pair.
    if a._dtype is not b._dtype:
        raise make(RuntimeError, op, f"expected both operands to have the same dtype, but got: "
                                     f"input {a._dtype} {tuple(a.shape)} and other {b._dtype} "
                                     f"{tuple(b.shape)}", hint="cast one side with .to(dtype)")


def _matmul_meta(op: Any, input: Any, other: Any) -> TensorMeta:
    for name, t in (("input", input), ("other", other)):
        if not isinstance(t, Tensor):
            raise make(TypeError, op.name, f"argument '{name}' must be Tensor, not "
                                           f"{type(t).__name__}")
    a, b = input._data.shape, other._data.shape
    if not a or not b:
        raise make(RuntimeError, op.name,
                   f"both arguments to matmul need to be at least 1D, but they are {len(a)}D "
                   f"and {len(b)}D")
    _same_dtype(op.name, input, other)
    k_a = a[-1]
    k_b = b[-2] if len(b) >= 2 else b[0]
    if k_a != k_b:
        shown_b = f"{tuple(b)}"
        raise make(RuntimeError, op.name,
                   f"inner dimensions differ: input {tuple(a)} @ other {shown_b} "
                   f"({k_a} != {k_b})",
                   hint="the last dim of input must equal the second-to-last dim of other")
    batch = M.broadcast_shapes(op.name, tuple(a[:-2]), tuple(b[:-2])) if len(a) > 2 or len(b) > 2 \
        else ()
    out = tuple(batch) + ((a[-2],) if len(a) >= 2 else ()) + ((b[-1],) if len(b) >= 2 else ())
    return TensorMeta(out)


def _mm(xp: Any, a: Any, b: Any) -> Any:
    """``a @ b`` of two 2-D arrays: through MKL on the CPU where ``backend.cpu_mkl`` takes
    it (float32/float64, large enough, expressible strides), else ``xp.matmul``; a NumPy
    operand BLAS cannot read (no unit step, e.g. the stride-0 gradient of ``sum()``) is
    copied first: NumPy's own loop for such strides ran a 256x128x784 weight gradient in
    ~700 us against ~170 through MKL."""
    if xp is _np:
        if not _dense(a):
            a = _np.ascontiguousarray(a)
        if not _dense(b):
            b = _np.ascontiguousarray(b)
        y = cpu_mkl.mm(a, b)
        if y is not None:
            return y
    return xp.matmul(a, b)


def _dense(a: Any) -> bool:
    """Whether BLAS reads the 2-D array ``a`` in place (unit steps along one axis, rows or
    columns apart by at least their length; NumPy's matmul then calls BLAS too)."""
    if a.flags.c_contiguous or a.flags.f_contiguous:
        return True
    s0, s1 = a.strides
    it = a.itemsize
    return (s1 == it and s0 >= it * a.shape[1]) or (s0 == it and s1 >= it * a.shape[0])


def _xp_matmul(xp: Any, a: Any, b: Any) -> Any:
    """``xp.matmul``, except that CuPy's batched matmul does not know ml_dtypes' bfloat16
    (dtype char 'E'): a batched bfloat16 product runs in float32 there (fp32 accumulation; the
    caller rounds once, as torch's bf16 GEMMs)."""
    if xp is not _np and a.dtype.name == "bfloat16" and (a.ndim > 2 or b.ndim > 2):
        return xp.matmul(a.astype(xp.float32), b.astype(xp.float32))
    return xp.matmul(a, b)


@register("matmul", meta=_matmul_meta, sig="input, other", dunders=("__matmul__",),
          onnx="MatMul")
class Matmul(OpDef):
    """Matrix product with NumPy's rules for 1-d operands and broadcast batch dims."""

    def forward(ctx, xp, input, other):
        need = ctx.needs_input_grad  # save only what the needed gradients use
        ctx.save(input if need[1] else None, other if need[0] else None)
        ctx.ndims = (input.ndim, other.ndim)
        gemm_threads(xp, input.size * (other.shape[-1] if other.ndim > 1 else 1))
        if input.ndim > 2 and other.ndim == 2 and input.flags.c_contiguous:
            # (*, K) @ (K, N) as one GEMM: NumPy would loop over the leading dims
            y = _mm(xp, input.reshape(-1, input.shape[-1]), other).reshape(
                input.shape[:-1] + (other.shape[1],))
        else:
            y = None
            if xp is _np and input.ndim == 2 and other.ndim == 2:
                y = _mm(xp, input, other)
            elif xp is _np and input.ndim >= 2 and other.ndim >= 2:
                y = cpu_mkl.matmul(input, other)   # None: NumPy's turn
            if y is None:
                y = _xp_matmul(xp, input, other)
        # NumPy's bfloat16 matmul accumulates and returns float32; round back like torch
        return y if y.dtype == input.dtype else y.astype(input.dtype)

    def backward(ctx, grad):
        a, b = ctx.saved  # either may be None when its partner needs no gradient
        a_nd, b_nd = ctx.ndims
        g = grad
        if a_nd == 1:
            g = g.unsqueeze(-2 if b_nd >= 2 else 0)
        if b_nd == 1:
            g = g.unsqueeze(-1)
        ga = gb = None
        if ctx.next_edges[0] is not None:
            b2 = b.unsqueeze(-1) if b_nd == 1 else b
            bt = b2.transpose(-1, -2)
            ga = g.matmul(bt.conj() if bt.is_complex() else bt)
            if a_nd == 1:
                ga = ga.squeeze(-2)
        if ctx.next_edges[1] is not None and a_nd > 2 and b_nd == 2:
            # b was broadcast over a's leading dims: one GEMM over the flattened rows instead
            # of a batch of per-row-block products summed afterwards (a huge temporary)
            a_rows = a.reshape(-1, a.shape[-1])
            a_rows = a_rows.conj() if a_rows.is_complex() else a_rows
            gb = a_rows.transpose(-1, -2).matmul(g.reshape(-1, g.shape[-1]))
        elif ctx.next_edges[1] is not None:
            a2 = a.unsqueeze(0) if a_nd == 1 else a
            at = a2.transpose(-1, -2)
            gb = (at.conj() if at.is_complex() else at).matmul(g)
            if b_nd == 1:
                gb = gb.squeeze(-1)
        return ga, gb


def _linear_meta(op: Any, input: Any, weight: Any, bias: Any = None) -> TensorMeta:
    # Checks read the arrays' shapes directly and build messages only on failure: this rule
    # runs on every Linear call, and eager f-strings and Size objects cost ~10 us of it.
    if not isinstance(input, Tensor):
        raise make(TypeError, "linear",
                   f"argument 'input' must be Tensor, not {type(input).__name__}")
    xs = input._data.shape
    ws = weight._data.shape
    if len(ws) not in (1, 2):
        raise make(RuntimeError, "linear", f"weight must be 1-D or 2-D, got shape {tuple(ws)}")
    if not xs or xs[-1] != ws[-1]:
        raise make(RuntimeError, "linear",
                   f"mat1 and mat2 shapes cannot be multiplied: input {tuple(xs)} @ "
                   f"weight.T {tuple(reversed(ws))}",
                   hint=f"the last dim of input must equal in_features={ws[-1]}")
    dt = input._dtype
    if weight._dtype is not dt:
        _same_dtype("linear", input, weight)
    if bias is not None and bias._dtype is not dt:
        _same_dtype("linear", input, bias)
    if len(ws) == 2:
        return TensorMeta(xs[:-1] + (ws[0],))
    return TensorMeta(xs[:-1])


@register("linear", meta=_linear_meta, method=False, sig="input, weight, bias=None",
          onnx="Gemm")
class Linear(OpDef):
    """``y = input @ weight.T + bias`` as one op (one GEMM, bias added in place)."""

    def forward(ctx, xp, input, weight, bias):
        y = linear_arrays(xp, input, weight, bias)
        need = ctx.needs_input_grad
        ctx.save(input if need[1] else None, weight if need[0] else None)
        ctx.has_bias = bias is not None
        ctx.w_ndim = weight.ndim
        return y

    def backward(ctx, grad):
        x, w = ctx.saved  # either may be None when its partner needs no gradient
        return linear_grads(ctx, grad, x, w)


def linear_arrays(xp: Any, input: Any, weight: Any, bias: Any, relu: bool = False) -> Any:
    """``input @ weight.T + bias`` on arrays: one GEMM, the bias added in place; with
    ``relu``, ``relu(input @ weight.T + bias)``, the bias and the ReLU in one pass where
    the CPU kernels take the output (else two)."""
    gemm_threads(xp, input.size * (weight.shape[0] if weight.ndim > 1 else 1))
    if input.ndim > 2 and weight.ndim == 2:
        # one GEMM over all rows: NumPy loops over the leading dims of a stacked
        # (*, K) @ (K, N), about 8x slower at (35, 20, 200) @ (200, 10000)
        y = _mm(xp, input.reshape(-1, input.shape[-1]), weight.T).reshape(
            input.shape[:-1] + (weight.shape[0],))
    elif input.ndim == 2 and weight.ndim == 2:
        y = _mm(xp, input, weight.T)  # weight.T is a view: BLAS reads it transposed
    else:
        y = xp.matmul(input, weight.T)
    if y.dtype != input.dtype:  # bfloat16: fp32 accumulation, rounded once
        y = y.astype(input.dtype)
    if relu and bias_relu_(xp, y, bias):
        return y
    if bias is not None:
        _add_bias(xp, y, bias)
    if relu:
        # NaN stays NaN, as torch's relu; CuPy's bfloat16 maximum returns float32
        y = xp.maximum(y, y.dtype.type(0)).astype(y.dtype, copy=False)
    return y


def linear_grads(ctx: Any, grad: Tensor, x: Tensor | None, w: Tensor | None) -> tuple:
    """Linear's gradients (input, weight, bias) of ``grad`` for the saved input ``x`` and
    weight ``w`` (either None when its partner needs no gradient), as ``ctx.next_edges``
    asks; ``ctx.has_bias`` and ``ctx.w_ndim`` describe the call. Linear and the ops built on
    it (``_linear_activation``, cuBLASLt's fallbacks) share it."""
    edges = ctx.next_edges
    if not _State.enabled and ctx.w_ndim == 2 and grad._data.dtype.kind == "f":
        return _linear_backward_arrays(ctx, grad, x, w)
    gx = gw = gb = None
    if edges[0] is not None:
        gx = grad.matmul(w) if w.ndim == 2 else grad.unsqueeze(-1) * w
    if edges[1] is not None:
        if ctx.w_ndim == 2:
            g2 = grad.reshape(-1, grad.shape[-1])
            gw = g2.t().matmul(x.reshape(-1, x.shape[-1]))
        else:
            gw = (grad.unsqueeze(-1) * x).reshape(-1, x.shape[-1]).sum(0)
    if ctx.has_bias and edges[2] is not None:
        gb = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.w_ndim == 2 else grad.sum()
    return gx, gw, gb


def _add_bias(xp: Any, y: Any, bias: Any) -> None:
    """``y += bias`` in place; a large NumPy output (an LM's (700, 10000) logits) is split
    over the cores other processes leave free (a memory-bound pass, ~1.5x on two cores),
    a smaller float one is one numba pass (``backend/cpu_linear_kernels``: 2.3 against
    5.5 us for NumPy's broadcast add over a (128, 256) float32 output)."""
    if xp is _np and y.ndim >= 2 and y.flags.c_contiguous:
        if y.size >= 1 << 20:
            y2 = y.reshape(-1, y.shape[-1])

            def rows(lo: int, hi: int) -> None:
                y2[lo:hi] += bias

            parallel_rows(y2.shape[0], rows,
                          min_rows=max(1, (1 << 16) // max(y2.shape[1], 1)))
            return
        if _bias_kernel_ok(y, bias):
            nb = cpu_linear_kernels.kernels()
            if nb is not None:
                nb.bias_add(y.reshape(-1, y.shape[-1]), bias)
                return
    y += bias


def _bias_kernel_ok(y: Any, bias: Any) -> bool:
    """Whether the numba bias passes take ``y`` (C-contiguous, >= 2-D, float32/float64) and
    ``bias`` (one contiguous row of y's dtype)."""
    dt = y.dtype
    return (dt == _np.float32 or dt == _np.float64) and type(bias) is _np.ndarray and \
        bias.dtype == dt and bias.ndim == 1 and bias.shape[0] == y.shape[-1] and \
        bias.flags.c_contiguous and y.size > 0


def bias_relu_(xp: Any, y: Any, bias: Any) -> bool:
    """``y = relu(y + bias)`` in place (bias may be None) in one numba pass over a NumPy
    output; False (nothing done) where the kernels do not take these arrays."""
    if xp is not _np or y.ndim < 2 or not y.flags.c_contiguous or y.size == 0 or \
            (bias is not None and not _bias_kernel_ok(y, bias)) or \
            (y.dtype != _np.float32 and y.dtype != _np.float64):
        return False
    nb = cpu_linear_kernels.kernels()
    if nb is None:
        return False
    y2 = y.reshape(-1, y.shape[-1])
    if bias is None:
        nb.relu(y2, y.dtype.type(0))
    else:
        nb.bias_relu(y2, bias, y.dtype.type(0))
    return True


def relu_linear_grads(ctx: Any, grad: Tensor, y: Tensor, x: Tensor | None,
                      w: Tensor | None) -> tuple | None:
    """The gradients (input, weight, bias) of ``relu(linear(x, w, b))`` from its output
    ``y`` on NumPy arrays when no graph of the backward is wanted: the ReLU mask and the
    bias gradient's column sums in one numba pass (the same sums as :func:`_bias_grad`'s,
    so the same bits as a separate ReLU and Linear), then Linear's two GEMMs. None where
    that does not apply (the caller takes the generic route)."""
    g = grad._data
    ya = y._data
    if _State.enabled or ctx.w_ndim != 2 or type(g) is not _np.ndarray or \
            type(ya) is not _np.ndarray or g.shape != ya.shape or g.ndim < 2 or \
            g.size == 0 or g.dtype != ya.dtype or \
            (g.dtype != _np.float32 and g.dtype != _np.float64) or \
            not (g.flags.c_contiguous and ya.flags.c_contiguous):
        return None
    nb = cpu_linear_kernels.kernels()
    if nb is None:
        return None
    n = g.shape[-1]
    g2 = g.reshape(-1, n)
    gh = _np.empty_like(g2)
    want = bool(ctx.has_bias and ctx.next_edges[2] is not None)
    fused_sum = want and g.size < _COL_SUMS_MAX
    gb = _np.empty(n if fused_sum else 0, g.dtype)
    nb.relu_grad(g2, ya.reshape(-1, n), gh, gb, fused_sum, g.dtype.type(0))
    if want and not fused_sum:
        gb = _bias_grad(_np, gh)
    gx, gw, _ = _linear_backward_arrays(ctx, _make(gh.reshape(g.shape), grad._dtype,
                                                   grad._device), x, w, bias=False)
    return gx, gw, (_make(gb, grad._dtype, grad._device) if want else None)


# Bias gradients of up to this many elements are numba column sums, larger ones a GEMV
_COL_SUMS_MAX = 1 << 20


def _bias_grad(xp: Any, g2: Any) -> Any:
    """The column sums of the 2-D gradient ``g2`` (a Linear's bias gradient): one numba pass
    with float64 partial sums for NumPy float arrays up to ``_COL_SUMS_MAX`` elements (2 us
    for (128, 256) float32), else a GEMV: one BLAS pass, ~2x faster than NumPy's axis-0
    sum at (700, 10000), and more accurate (wider partial sums)."""
    if xp is _np and not _dense(g2):
        g2 = _np.ascontiguousarray(g2)   # (a stride-0 gradient: NumPy's GEMV loop is slow)
    if xp is _np and g2.size < _COL_SUMS_MAX and g2.flags.c_contiguous and g2.size and \
            (g2.dtype == _np.float32 or g2.dtype == _np.float64):
        nb = cpu_linear_kernels.kernels()
        if nb is not None:
            gb = _np.empty(g2.shape[1], g2.dtype)
            nb.col_sums(g2, gb)
            return gb
    return xp.matmul(_ones(xp, g2.shape[0], g2.dtype), g2)


def _linear_backward_arrays(ctx: Any, grad: Tensor, x: Tensor | None,
                            w: Tensor | None, bias: bool = True) -> tuple:
    """Linear's backward straight on arrays when no graph of the backward is wanted: two
    GEMMs and a column sum, no dispatcher round trips (they cost as much as the small GEMMs
    of an MLP). Both products read their operands transposed in place (BLAS flags, no
    copies); the weight gradient comes out C-contiguous, so the engine can adopt it as
    ``.grad`` without a copy."""
    edges = ctx.next_edges
    g = grad._data
    n_out = g.shape[-1]
    # (reshape(-1, 0) is ambiguous to NumPy: zero output features name the rows)
    g2 = g.reshape(-1, n_out) if n_out else g.reshape(math.prod(g.shape[:-1]), 0)
    dev = grad._device
    dt = grad._dtype
    xp = _np if type(g) is _np.ndarray else get_xp(dev)
    gx = gw = gb = None
    if edges[0] is not None:
        wa = w._data
        gemm_threads(xp, g2.size * wa.shape[1])
        gx = _mm(xp, g2, wa)
        gx = _make(gx.reshape(g.shape[:-1] + (wa.shape[1],)), dt, dev)
    if edges[1] is not None:
        xa = x._data
        x2 = xa.reshape(-1, xa.shape[-1])
        gemm_threads(xp, g2.size * x2.shape[1])
        gw = _make(_mm(xp, g2.T, x2), dt, dev)
    if bias and ctx.has_bias and edges[2] is not None:
        gb = _make(_bias_grad(xp, g2), dt, dev)
    return gx, gw, gb


_ONES: dict = {}


def _ones(xp: Any, n: int, dtype: Any) -> Any:
    """A read-only vector of ones for the bias-gradient GEMV, kept per (device, n, dtype):
    on the GPU a fresh one costs an allocation and a fill launch every backward."""
    if xp is _np:
        return _np.ones(n, dtype)
    key = (xp.cuda.runtime.getDevice(), n, dtype)
    v = _ONES.get(key)
    if v is None:
        v = xp.ones(n, dtype)
        if not stream_capturing() and len(_ONES) < 64:
            _ONES[key] = v   # never keep memory from a graph's private pool
    return v


def _dims(op: str, t: Tensor, n: int, name: str) -> None:
    check(t.ndim == n, op, f"{name} must be a {n}D tensor, got shape {tuple(t.shape)}")


@composite()
def mm(input: Tensor, mat2: Tensor) -> Tensor:
    """Product of two matrices, ``(n, m) @ (m, p)``."""
    _dims("mm", input, 2, "input")
    _dims("mm", mat2, 2, "mat2")
    check(input.shape[1] == mat2.shape[0], "mm",
          f"mat1 and mat2 shapes cannot be multiplied ({input.shape[0]}x{input.shape[1]} and "
          f"{mat2.shape[0]}x{mat2.shape[1]})")
    return input.matmul(mat2)


@composite()
def bmm(input: Tensor, mat2: Tensor) -> Tensor:
    """Batched product, ``(b, n, m) @ (b, m, p)``."""
    _dims("bmm", input, 3, "batch1")
    _dims("bmm", mat2, 3, "batch2")
    check(input.shape[0] == mat2.shape[0], "bmm", f"batch1 and batch2 must have same number of "
                                                  f"batches, got {input.shape[0]} and "
                                                  f"{mat2.shape[0]}")
    check(input.shape[2] == mat2.shape[1], "bmm",
          f"Expected size for first two dimensions of batch2 tensor to be: [{input.shape[0]}, "
          f"{input.shape[2]}] but got: [{mat2.shape[0]}, {mat2.shape[1]}].")
    return input.matmul(mat2)


@composite()
def mv(input: Tensor, vec: Tensor) -> Tensor:
    """Matrix-vector product, ``(n, m) @ (m,)``."""
    _dims("mv", input, 2, "input")
    _dims("mv", vec, 1, "vec")
    return input.matmul(vec)


@composite()
def dot(input: Tensor, other: Tensor) -> Tensor:
    """Inner product of two 1-d tensors."""
    check(input.ndim == 1 and other.ndim == 1, "dot",
          f"1D tensors expected, but got {input.ndim}D and {other.ndim}D tensors")
    check(input.shape[0] == other.shape[0], "dot",
          f"inconsistent tensor size, expected tensor [{input.shape[0]}] and src "
          f"[{other.shape[0]}] to have the same number of elements, but got {input.shape[0]} "
          f"and {other.shape[0]} elements respectively")
    return input.matmul(other)


@composite()
def addmm(input: Tensor, mat1: Tensor, mat2: Tensor, *, beta: float = 1,
          alpha: float = 1) -> Tensor:
    """``beta * input + alpha * (mat1 @ mat2)``."""
    prod = mm(mat1, mat2)
    if alpha != 1:
        prod = prod * alpha
    if beta == 0:
        return prod  # torch ignores input entirely (NaNs in it do not propagate)
    return prod + (input if beta == 1 else input * beta)


# ---------------------------------------------------------------------- einsum
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _parse_einsum(eq: str, shapes: Sequence[tuple]) -> tuple[list[str], str]:
    """Explicit subscripts, with '...' replaced by letters the equation doesn't use."""
    eq = eq.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    ins = lhs.split(",")
    check(len(ins) == len(shapes), "einsum", "more operands were provided than specified in the "
                                             "equation" if len(shapes) > len(ins) else
          "fewer operands were provided than specified in the equation")
    used = set(c for c in eq if c.isalpha())
    free = [c for c in _LETTERS if c not in used]
    ell_n = 0
    for s, shp in zip(ins, shapes):
        if "..." in s:
            ell_n = max(ell_n, len(shp) - (len(s) - 3))
    ell = "".join(free[:ell_n])
    new_ins = []
    for s, shp in zip(ins, shapes):
        if "..." in s:
            k = len(shp) - (len(s) - 3)
            s = s.replace("...", ell[ell_n - k:] if k else "")
        check(len(s) == len(shp), "einsum", f"the number of subscripts in the equation "
                                            f"({len(s)}) does not match the number of dimensions "
                                            f"({len(shp)}) for operand {len(new_ins)}")
        new_ins.append(s)
    if arrow:
        out = rhs.replace("...", ell)
    else:
        counts: dict = {}
        for s in new_ins:
            for c in s:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    return new_ins, out


def _einsum_meta(op: Any, operands: tuple, equation: str) -> TensorMeta:
    ins, out = _parse_einsum(equation, [t._data.shape for t in operands])
    sizes: dict = {}
    for s, t in zip(ins, operands):
        for c, n in zip(s, t._data.shape):
            if c in sizes and sizes[c] != n and n != 1 and sizes[c] != 1:
                raise make(RuntimeError, "einsum", f"operands do not broadcast: subscript {c} has "
                                                   f"size {sizes[c]} and {n}")
            sizes[c] = max(n, sizes.get(c, n))
    return TensorMeta(tuple(sizes[c] for c in out))


@register("einsum", meta=_einsum_meta, promote="default", variadic=True, method=False,
          function=False)
class Einsum(OpDef):
    """Einstein summation over the operands."""

    def forward(ctx, xp, operands, equation):
        ins, out = _parse_einsum(equation, [o.shape for o in operands])
        ctx.ins, ctx.out = ins, out
        ctx.save(*operands)
        expr = ",".join(ins) + "->" + out
        dt = operands[0].dtype if operands else None
        # neither NumPy's nor CuPy's einsum has a bfloat16 loop: float32 math, one rounding
        # (as matmul)
        low = dt is not None and _dt._FROM_NP.get(dt) is _dt.bfloat16
        arrays = [o.astype(xp.float32) for o in operands] if low else operands
        if len(arrays) > 2 and xp.__name__ == "numpy":
            res = xp.einsum(expr, *arrays, optimize=True)
        else:
            res = xp.einsum(expr, *arrays)
        return res.astype(dt) if low else res

    def backward(ctx, grad):
        ops = ctx.saved
        grads = []
        for i, s in enumerate(ctx.ins):
            if ctx.next_edges[i] is None:
                grads.append(None)
                continue
            others = [o for j, o in enumerate(ops) if j != i]
            other_subs = [t for j, t in enumerate(ctx.ins) if j != i]
            avail = set(ctx.out).union(*[set(t) for t in other_subs]) if other_subs else set(ctx.out)
            # letters repeated within operand i (a diagonal) or missing elsewhere are rebuilt
            target = "".join(dict.fromkeys(c for c in s if c in avail))
            expr = ",".join([ctx.out] + other_subs) + "->" + target
            g = einsum(expr, grad, *others)
            # a letter of size 1 here but broadcast against a larger one elsewhere: every
            # position of the larger dim got the same gradient, so expand it back
            sizes = dict(zip(s, ops[i].shape))
            full = [sizes[c] if n == 1 else n for c, n in zip(target, g.shape)]
            if list(g.shape) != full:
                g = g.expand(*full)
            grads.append(_expand_subscripts(g, target, s, ops[i].shape))
        return grads, None


def _expand_subscripts(g: Tensor, have: str, want: str, shape: tuple) -> Tensor:
    """Turn a gradient over subscripts ``have`` into one of operand subscripts ``want``."""
    import ember
    if have == want:
        return g
    # insert summed-away letters as broadcast dims
    letters = list(dict.fromkeys(want))
    sizes = {c: n for c, n in zip(want, shape)}
    for c in letters:
        if c not in have:
            g = g.unsqueeze(-1).expand(*g.shape, sizes[c])
            have = have + c
    g = g.permute([have.index(c) for c in letters])
    if len(letters) == len(want):
        return g.permute([letters.index(c) for c in want]) if "".join(letters) != want else g
    # repeated letters: place values on the diagonal
    out = ember.zeros(shape, dtype=g.dtype, device=g.device)
    idx = []
    for c in want:
        n = sizes[c]
        ar = ember.arange(n, device=g.device)
        view = [1] * len(letters)
        view[letters.index(c)] = n
        idx.append(ar.reshape(view))
    return apply(OPS["_put"], (out, tuple(i._data for i in idx), g, True))


def einsum(equation: str, *operands: Any) -> Tensor:
    """Einstein summation, e.g. ``einsum('bij,bjk->bik', a, b)``."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not isinstance(equation, str):
        raise make(TypeError, "einsum", "the first argument must be the equation string; the "
                                        "sublist format is not supported")
    return apply(OPS["einsum"], (operands, equation))


from ember.ops.registry import PUBLIC_FUNCTIONS  # noqa: E402

PUBLIC_FUNCTIONS["einsum"] = einsum
