"""Linear-algebra primitives around LU: inv_ex, det, slogdet, solve, lu_factor_ex and
matrix_exp, plus the checks and helpers the other linalg files share.

Forwards run LAPACK through ``xp.linalg`` (NumPy or CuPy) or ``scipy.linalg`` /
``cupyx.scipy.linalg``; backwards follow torch's ``FunctionsManual.cpp`` formulas, written in
ember ops so that double backward comes free.
"""
from __future__ import annotations

import warnings
from typing import Any

from ember import dtypes as _dt
from ember.errors import EmberRuntimeError, check
from ember.ops import meta as M
from ember.ops.registry import OpDef, TensorMeta, _torch_name, register
from ember.tensor import Tensor


class LinAlgError(EmberRuntimeError):
    """A numerical failure in a linear-algebra routine (torch.linalg.LinAlgError): a singular
    matrix, a matrix that is not positive-definite ... It is a RuntimeError, as in torch."""


# ---------------------------------------------------------------------- shared checks
def check_matrix(name: str, A: Any, arg: str = "A", square: bool = True,
                 allow_int: bool = False) -> None:
    """torch's input checks for a (batch of) matrix argument: a floating/complex Tensor with at
    least 2 dims, square when ``square``."""
    check(isinstance(A, Tensor), name, f"argument '{arg}' must be Tensor, not "
                                       f"{type(A).__name__}", TypeError)
    check(A.ndim >= 2, name, f"The input tensor {arg} must have at least 2 dimensions.")
    dt = A._dtype
    if not allow_int:
        check(dt.category >= 2, name, f"Expected a floating point or complex tensor as input. "
                                      f"Got {_torch_name(dt)}")
        check(dt.itemsize >= 4, name, f"Low precision dtypes not supported. Got "
                                      f"{_torch_name(dt)}")
    if square:
        m, n = A.shape[-2:]
        check(m == n, name, f"{arg} must be batches of square matrices, but they are {m} by {n} "
                            "matrices")


def same_dtype(name: str, A: Tensor, B: Tensor, a: str = "A", b: str = "B") -> None:
    check(A._dtype is B._dtype, name,
          f"Expected {a} and {b} to have the same dtype, but found {a} of type "
          f"{_torch_name(A._dtype)} and {b} of type {_torch_name(B._dtype)} instead.")


def batch_str(idx: int, batched: bool) -> str:
    return f"(Batch element {idx}): " if batched else ""


def scipy_linalg(xp: Any) -> Any:
    """scipy.linalg or cupyx.scipy.linalg, imported on first use."""
    if xp.__name__ == "numpy":
        import scipy.linalg as sl
        return sl
    import cupyx.scipy.linalg as csl
    return csl


def real_dtype_np(xp: Any, dt: Any) -> Any:
    return xp.dtype(dt).type(0).real.dtype


# ---------------------------------------------------------------------- ember-op helpers
def mH(t: Tensor) -> Tensor:
    """Conjugate transpose of the last two dims (a plain transpose for real tensors)."""
    t = t.transpose(-2, -1)
    return t.conj() if t.is_complex() else t


def eye_like(n: int, t: Tensor, m: int | None = None) -> Tensor:
    import ember
    return ember.eye(n, m, dtype=t.dtype, device=t.device)


def tri_mask(m: int, n: int, k: int, lower: bool, t: Tensor) -> Tensor:
    """A 0/1 matrix in ``t``'s dtype selecting tril(k) (``lower``) or triu(k)."""
    import ember
    r = ember.arange(m, device=t.device).unsqueeze(-1)
    c = ember.arange(n, device=t.device)
    keep = (c - r) <= k if lower else (c - r) >= k
    return keep.to(t.dtype)


def tril(t: Tensor, k: int = 0) -> Tensor:
    return t * tri_mask(t.shape[-2], t.shape[-1], k, True, t)


def triu(t: Tensor, k: int = 0) -> Tensor:
    return t * tri_mask(t.shape[-2], t.shape[-1], k, False, t)


def diag_embed(v: Tensor) -> Tensor:
    return v.unsqueeze(-1) * eye_like(v.shape[-1], v)


def real(t: Tensor) -> Tensor:
    """The real part as a real tensor; differentiable (the cast's adjoint re-embeds in C)."""
    if not t.is_complex():
        return t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return t.to(_dt.float32 if t.dtype is _dt.complex64 else _dt.float64)


def i_imag(t: Tensor) -> Tensor:
    """``i * Im(t)``, kept complex: ``(t - conj(t)) / 2``."""
    return (t - t.conj()) * 0.5


def is_zero(t: Tensor | None) -> bool:
    """Whether a gradient is absent or all zeros (the engine fills unused outputs with zeros;
    torch's formulas take shortcuts for undefined gradients, which we mirror)."""
    return t is None or not bool((t != 0).any())


# ---------------------------------------------------------------------- LU (getrf)
def lu_factor_arrays(xp: Any, A: Any) -> tuple:
    """(LU, pivots as 1-based int32, info) for each matrix of a batch, like LAPACK getrf."""
    sl = scipy_linalg(xp)
    m, n = A.shape[-2:]
    k = min(m, n)
    batch = A.shape[:-2]
    if A.size == 0:
        piv = xp.broadcast_to(xp.arange(1, k + 1, dtype=xp.int32), batch + (k,)).copy()
        return A.copy(), piv, xp.zeros(batch, dtype=xp.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on an exactly singular factor
        if xp.__name__ == "numpy":
            LU, piv = sl.lu_factor(A, check_finite=False)
        else:  # cupyx factors one matrix at a time
            flat = A.reshape((-1, m, n))
            parts = [sl.lu_factor(flat[i], check_finite=False) for i in range(flat.shape[0])]
            LU = xp.stack([p[0] for p in parts]).reshape(A.shape)
            piv = xp.stack([p[1] for p in parts]).reshape(batch + (k,))
    diag = xp.diagonal(LU, axis1=-2, axis2=-1)
    zero = diag == 0
    info = xp.where(zero.any(-1), xp.argmax(zero, -1) + 1, 0).astype(xp.int32)
    return LU, (piv + 1).astype(xp.int32), info


def raise_singular(name: str, info: Any, what: str) -> None:
    """torch's LinAlgError for the first failed matrix of a batch (info from getrf)."""
    flat = info.reshape(-1)
    bad = [i for i in range(flat.shape[0]) if int(flat[i]) > 0]
    if bad:
        i = bad[0]
        raise LinAlgError(f"{name}: {batch_str(i, info.ndim > 0)}The diagonal element "
                          f"{int(flat[i])} is zero, the {what} could not be completed because "
                          "the input matrix is singular.")


# ---------------------------------------------------------------------- inv
def _inv_meta(op: Any, A: Any, check_errors: bool = False) -> tuple:
    check_matrix("linalg.inv", A)
    return TensorMeta(A.shape), TensorMeta(A.shape[:-2], _dt.int32)


@register("linalg_inv_ex", meta=_inv_meta, sig="A, *, check_errors=False", method=False,
          function=False, nondiff_outputs=(1,), node_name="LinalgInvEx")
class LinalgInvEx(OpDef):
    """Inverse of each square matrix and LAPACK's ``info`` (0, or the 1-based index of the
    first zero pivot for a singular matrix)."""

    def forward(ctx, xp, A, check_errors):
        try:
            if xp.__name__ != "numpy":
                # CuPy returns inf/NaN for a singular matrix instead of raising: ask getrf
                _, _, info = lu_factor_arrays(xp, A)
                if bool((info > 0).any()):
                    raise ValueError("singular")
            inv = xp.linalg.inv(A)
            info = xp.zeros(A.shape[:-2], dtype=xp.int32)
        except Exception:  # a singular matrix somewhere in the batch
            _, _, info = lu_factor_arrays(xp, A)
            if check_errors:
                raise_singular("linalg.inv", info, "inversion")
            inv = xp.full(A.shape, xp.nan, dtype=A.dtype)
            ok = info == 0
            if bool(ok.any()):
                inv[ok] = xp.linalg.inv(A[ok])
        ctx.save(inv)
        return inv, info

    def backward(ctx, g, ginfo):
        (inv,) = ctx.saved
        ih = mH(inv)
        return -(ih.matmul(g).matmul(ih)), None


# ---------------------------------------------------------------------- det / slogdet
def _det_meta(op: Any, A: Any) -> TensorMeta:
    check_matrix("linalg.det", A)
    return TensorMeta(A.shape[:-2])


@register("linalg_det", meta=_det_meta, sig="A", method=False, function=False,
          node_name="LinalgDet")
class LinalgDet(OpDef):
    """Determinant of each square matrix."""

    def forward(ctx, xp, A):
        d = xp.asarray(xp.linalg.det(A)) if A.shape[-1] else xp.ones(A.shape[:-2], A.dtype)
        ctx.save(A, d)
        return d.astype(A.dtype, copy=False)

    def backward(ctx, g):
        A, det = ctx.saved
        if A.numel() == 0:
            return g.unsqueeze(-1).unsqueeze(-1) * A
        import ember
        gd = (g * det.conj()) if det.is_complex() else g * det
        n = A.shape[-1]
        if not ember.is_grad_enabled():
            # solve A^H G = conj(det) g I through LU where the factorisation has no zero pivot
            _, _, info = OPS_LINALG["linalg_lu_factor_ex"](A)
            singular = info > 0
        else:
            # for higher-order gradients torch switches to the SVD formula near singularity
            singular = det.abs() < 100.0 * _dt.finfo(A.dtype).eps
        if not bool(singular.any()):
            return OPS_LINALG["_linalg_solve"](mH(A), diag_embed(gd.unsqueeze(-1).expand(
                *gd.shape, n)))
        mask = singular.unsqueeze(-1).unsqueeze(-1)
        A_safe = ember.where(mask, eye_like(n, A), A)
        reg = OPS_LINALG["_linalg_solve"](mH(A_safe), diag_embed(
            ember.where(singular, gd * 0, gd).unsqueeze(-1).expand(*gd.shape, n)))
        # An exactly singular matrix (a zero pivot) has the gradient g adj(A)^H, not 0: torch's
        # first-order result there depends on its LAPACK (0 where the LU meets an exact zero
        # pivot, the adjugate where rounding leaves a tiny one, as MKL does), so ember gives
        # the adjugate, from the SVD A = U S Vh: conj(det U det Vh) U diag(prod_{j != i} s_j) Vh
        U, S, Vh = OPS_LINALG["linalg_svd"](A, False)
        alpha = OPS_LINALG["linalg_det"](U) * OPS_LINALG["linalg_det"](Vh)
        alpha = (alpha.conj() if alpha.is_complex() else alpha) * g
        D = _prod_others(S).to(A.dtype) * alpha.unsqueeze(-1)
        sing = (U * D.unsqueeze(-2)).matmul(Vh)
        return ember.where(mask, sing, reg)


def _prod_others(s: Tensor) -> Tensor:
    """prod_{j != i} s_j along the last dim, without dividing (zeros are allowed)."""
    import ember
    n = s.shape[-1]
    cols = []
    for i in range(n):
        keep = [j for j in range(n) if j != i]
        if keep:
            cols.append(s[..., keep].prod(-1))
        else:
            cols.append(ember.ones(s.shape[:-1], dtype=s.dtype, device=s.device))
    return ember.stack(cols, -1)


def _slogdet_meta(op: Any, A: Any) -> tuple:
    check_matrix("linalg.slogdet", A)
    return TensorMeta(A.shape[:-2]), TensorMeta(A.shape[:-2])


@register("linalg_slogdet", meta=_slogdet_meta, sig="A", method=False, function=False,
          node_name="LinalgSlogdet")
class LinalgSlogdet(OpDef):
    """(sign, log|det|) of each square matrix; the sign is complex for complex input."""

    def forward(ctx, xp, A):
        sign, logabs = xp.linalg.slogdet(A)
        rdt = real_dtype_np(xp, A.dtype)
        sign = xp.asarray(sign).astype(A.dtype, copy=False)
        logabs = xp.asarray(logabs).astype(rdt, copy=False)
        ctx.save(A, sign)
        return sign, logabs

    def backward(ctx, gsign, glog):
        A, sign = ctx.saved
        if A.is_complex():
            # d sign adjoint: -i Im(conj(g_sign) sign), folded into the log-abs term
            g = glog.to(A.dtype) - i_imag(gsign.conj() * sign)
        else:
            g = glog
        rhs = diag_embed(g.unsqueeze(-1).expand(*g.shape, A.shape[-1]))
        return OPS_LINALG["_linalg_solve"](mH(A), rhs)


# ---------------------------------------------------------------------- solve
def _solve_meta(op: Any, A: Any, B: Any) -> TensorMeta:
    check_matrix("linalg.solve", A)
    check(isinstance(B, Tensor), "linalg.solve", f"argument 'B' must be Tensor, not "
                                                 f"{type(B).__name__}", TypeError)
    same_dtype("linalg.solve", A, B)
    check(B.ndim >= 2 and B.shape[-2] == A.shape[-1], "linalg.solve",
          f"Incompatible shapes of A and B for the equation AX = B "
          f"({A.shape[-2]}x{A.shape[-1]} and {B.shape[-2] if B.ndim >= 2 else B.shape[-1]}x"
          f"{B.shape[-1]})")
    batch = M.broadcast_shapes("linalg.solve", tuple(A.shape[:-2]), tuple(B.shape[:-2]))
    return TensorMeta(tuple(batch) + tuple(B.shape[-2:]))


@register("_linalg_solve", meta=_solve_meta, sig="A, B", method=False, function=False,
          node_name="LinalgSolve")
class LinalgSolveMatrix(OpDef):
    """``X = A^{-1} B`` for matrix right-hand sides, with broadcast batch dims."""

    def forward(ctx, xp, A, B):
        batch = xp.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        Ab = xp.broadcast_to(A, batch + A.shape[-2:])
        Bb = xp.broadcast_to(B, batch + B.shape[-2:])
        if A.shape[-1] == 0 or B.size == 0:
            X = xp.zeros(batch + B.shape[-2:], dtype=A.dtype)
        else:
            try:
                if xp.__name__ != "numpy":  # CuPy does not raise for a singular matrix
                    _, _, info = lu_factor_arrays(xp, xp.ascontiguousarray(Ab))
                    if bool((info > 0).any()):
                        raise ValueError("singular")
                X = xp.linalg.solve(Ab, Bb)
            except Exception:
                _, _, info = lu_factor_arrays(xp, xp.ascontiguousarray(Ab))
                if bool((info > 0).any()):
                    raise LinAlgError("torch.linalg.solve: The solver failed because the input "
                                      "matrix is singular.") from None
                raise
        ctx.save(A, X)
        return X

    def backward(ctx, g):
        A, X = ctx.saved
        gB = OPS_LINALG["_linalg_solve"](mH(A), g)
        gA = None
        if ctx.next_edges[0] is not None:
            gA = -gB.matmul(mH(X))
        return gA, gB


# ---------------------------------------------------------------------- lu_factor
def _lu_meta(op: Any, A: Any, pivot: bool = True, check_errors: bool = False) -> tuple:
    check_matrix("linalg.lu_factor", A, square=False)
    k = min(A.shape[-2:])
    check(pivot, "linalg.lu_factor", "LU without pivoting is not implemented on the CPU",
          hint="torch supports pivot=False on CUDA only; ember follows its CPU behaviour")
    return (TensorMeta(A.shape), TensorMeta(A.shape[:-2] + (k,), _dt.int32),
            TensorMeta(A.shape[:-2], _dt.int32))


@register("linalg_lu_factor_ex", meta=_lu_meta, sig="A, *, pivot=True, check_errors=False",
          method=False, function=False, nondiff_outputs=(1, 2), node_name="LinalgLuFactorEx")
class LinalgLuFactorEx(OpDef):
    """Packed LU factorisation with partial pivoting: (LU, pivots, info), as LAPACK getrf."""

    def forward(ctx, xp, A, pivot, check_errors):
        LU, piv, info = lu_factor_arrays(xp, A)
        if check_errors:
            raise_singular("torch.linalg.lu_factor_ex", info, "factorization")
        ctx.save(LU, piv)
        return LU, piv, info

    def backward(ctx, gLU, gpiv, ginfo):
        LU, piv = ctx.saved
        m, n = LU.shape[-2:]
        k = min(m, n)
        L = tril(LU[..., :, :k], -1) + eye_like(m, LU, k)
        U = triu(LU[..., :k, :])
        gL = tril(gLU[..., :, :k], -1)
        gU = triu(gLU[..., :k, :])
        P = permutation_from_pivots(piv, m, LU)
        return lu_backward(gL, gU, P, L, U), None, None


def permutation_from_pivots(piv: Tensor, m: int, like: Tensor) -> Tensor:
    """The permutation matrix P with A = P L U, from LAPACK's sequential row swaps."""
    import numpy as np
    import ember
    p = np.asarray(piv._host()).astype(np.int64) - 1
    batch = p.shape[:-1]
    nb = int(np.prod(batch)) if batch else 1
    flat = p.reshape(nb, p.shape[-1])
    perms = np.tile(np.arange(m), (nb, 1))
    for b in range(flat.shape[0]):
        for i, j in enumerate(flat[b]):
            perms[b, [i, j]] = perms[b, [j, i]]
    # row i of P^T A is row perms[i] of A, so P[perms[i], i] = 1
    P = np.zeros((flat.shape[0], m, m))
    rows = perms
    P[np.arange(flat.shape[0])[:, None], rows, np.arange(m)[None, :]] = 1
    return ember.tensor(P.reshape(batch + (m, m)), dtype=like.dtype, device=like.device)


def lu_backward(gL: Tensor, gU: Tensor, P: Tensor, L: Tensor, U: Tensor) -> Tensor:
    """Adjoint of A = P L U (L unit lower m x k, U upper k x n), after torch's
    linalg_lu_backward: gA = P L^{-H} [tril(L^H gL, -1) + triu(gU U^H)] U^{-H} when square, with
    the extra trapezoid blocks for wide and tall matrices."""
    from ember.ops.linalg_ops import solve_triangular
    m, n = L.shape[-2], U.shape[-1]
    k = min(m, n)
    if m == n:
        phi = tril(mH(L).matmul(gL), -1) + triu(gU.matmul(mH(U)))
        x = solve_triangular(mH(L), phi, upper=True, unitriangular=True)
        x = solve_triangular(mH(U), x, upper=False, left=False)
        return P.matmul(x)
    if m < n:
        # A = P L [U1 | U2]: the U2 block is a plain product, the rest is the square case
        # U2 = L^{-1} P^T A2 feeds back into L's gradient: L^H gL -> L^H gL - gU2 U2^H
        U1, gU1, gU2 = U[..., :, :k], gU[..., :, :k], gU[..., :, k:]
        phi = tril(mH(L).matmul(gL) - gU2.matmul(mH(U[..., :, k:])), -1) + \
            triu(gU1.matmul(mH(U1)))
        x = solve_triangular(mH(L), phi, upper=True, unitriangular=True)
        x1 = solve_triangular(mH(U1), x, upper=False, left=False)
        x2 = solve_triangular(mH(L), gU2, upper=True, unitriangular=True)
        import ember
        return P.matmul(ember.cat([x1, x2], -1))
    # m > n: A = P [L1; L2] U, where L2 = B2 U^{-1} feeds back into U's gradient
    import ember
    L1, gL1, gL2 = L[..., :k, :], gL[..., :k, :], gL[..., k:, :]
    phi = tril(mH(L1).matmul(gL1), -1) + triu(gU.matmul(mH(U)) - mH(L[..., k:, :]).matmul(gL2))
    x = solve_triangular(mH(U), phi, upper=False, left=False)
    x1 = solve_triangular(mH(L1), x, upper=True, unitriangular=True)
    x2 = solve_triangular(mH(U), gL2, upper=False, left=False)
    return P.matmul(ember.cat([x1, x2], -2))


# ---------------------------------------------------------------------- matrix_exp
_PADE13 = (64764752532480000.0, 32382376266240000.0, 7771770303897600.0, 1187353796428800.0,
           129060195264000.0, 10559470521600.0, 670442572800.0, 33522128640.0, 1323241920.0,
           40840800.0, 960960.0, 16380.0, 182.0, 1.0)
_THETA13 = 5.371920351148152


def _expm(xp: Any, A: Any) -> Any:
    """exp(A) by scaling and squaring with the [13/13] Padé approximant (Higham 2005)."""
    n = A.shape[-1]
    if A.size == 0:
        return A.copy()
    b = _PADE13
    norm1 = xp.abs(A).sum(-2).max(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = xp.maximum(xp.ceil(xp.log2(xp.maximum(norm1, 1e-300) / _THETA13)), 0)
    s = xp.where(xp.isfinite(s), s, 0).astype(xp.int64)
    X = A / (2.0 ** s).astype(real_dtype_np(xp, A.dtype))[..., None, None]
    eye = xp.eye(n, dtype=A.dtype)
    X2 = X @ X
    X4 = X2 @ X2
    X6 = X4 @ X2
    U = X @ (X6 @ (b[13] * X6 + b[11] * X4 + b[9] * X2) + b[7] * X6 + b[5] * X4 + b[3] * X2
             + b[1] * eye)
    V = X6 @ (b[12] * X6 + b[10] * X4 + b[8] * X2) + b[6] * X6 + b[4] * X4 + b[2] * X2 + b[0] * eye
    R = xp.linalg.solve(V - U, V + U)
    smax = int(s.max()) if s.size else 0
    for i in range(smax):
        R = xp.where((s > i)[..., None, None], R @ R, R)
    return R.astype(A.dtype, copy=False)


def _mexp_meta(op: Any, A: Any) -> TensorMeta:
    check_matrix("linalg.matrix_exp", A)
    return TensorMeta(A.shape)


@register("linalg_matrix_exp", meta=_mexp_meta, sig="A", method=False, function=False,
          node_name="LinalgMatrixExp")
class LinalgMatrixExp(OpDef):
    """Matrix exponential of each square matrix."""

    def forward(ctx, xp, A):
        ctx.save(A)
        return _expm(xp, A)

    def backward(ctx, g):
        # Mathias (1996): exp([[A^H, G], [0, A^H]]) holds the adjoint in its top-right block.
        (A,) = ctx.saved
        import ember
        n = A.shape[-1]
        Ah = mH(A)
        top = ember.cat([Ah, g], -1)
        bottom = ember.cat([ember.zeros_like(Ah), Ah], -1)
        big = OPS_LINALG["linalg_matrix_exp"](ember.cat([top, bottom], -2))
        return big[..., :n, n:]


class _OpsView:
    """Late lookup of linalg op functions by registry name (backwards call each other)."""

    def __getitem__(self, name: str) -> Any:
        from ember.ops.registry import COMPOSITES, OPS
        if name in OPS:
            return OPS[name].function
        return COMPOSITES[name]


OPS_LINALG = _OpsView()
