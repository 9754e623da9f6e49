"""Matrix decompositions: cholesky_ex, qr, svd, eigh and eig.

Each is a registered op: the forward calls LAPACK through ``xp.linalg``; the backward is
torch's adjoint formula (``FunctionsManual.cpp``), with its gauge checks for complex singular
vectors and eigenvectors, written in ember ops.
"""
from __future__ import annotations

from typing import Any

from ember import dtypes as _dt
from ember.errors import check, make
from ember.ops.linalg_solve import (OPS_LINALG, LinAlgError, batch_str, check_matrix, diag_embed,
                                    eye_like, i_imag, is_zero, mH, real, real_dtype_np, tril,
                                    triu)
from ember.ops.reduce import return_type
from ember.ops.registry import OpDef, TensorMeta, register
from ember.tensor import Tensor

cholesky_ex_out = return_type("linalg_cholesky_ex", ("L", "info"))
qr_out = return_type("linalg_qr", ("Q", "R"))
svd_out = return_type("linalg_svd", ("U", "S", "Vh"))
eigh_out = return_type("linalg_eigh", ("eigenvalues", "eigenvectors"))
eig_out = return_type("linalg_eig", ("eigenvalues", "eigenvectors"))


def _complex_np(xp: Any, dt: Any) -> Any:
    return xp.complex64 if xp.dtype(dt) in (xp.float32, xp.complex64) else xp.complex128


def _rdt(t: Tensor) -> Any:
    return {"complex64": _dt.float32, "complex128": _dt.float64}.get(t.dtype.name, t.dtype)


# ---------------------------------------------------------------------- cholesky
def _chol_meta(op: Any, A: Any, upper: bool = False, check_errors: bool = False) -> tuple:
    check_matrix("linalg.cholesky", A)
    return TensorMeta(A.shape), TensorMeta(A.shape[:-2], _dt.int32)


def _chol_info(xp: Any, A: Any) -> Any:
    """LAPACK potrf's info per matrix: the order of the first leading minor that is not
    positive-definite (0 when the factorisation succeeds)."""
    n = A.shape[-1]
    flat = A.reshape((-1, n, n))
    info = xp.zeros(flat.shape[0], dtype=xp.int32)
    for b in range(flat.shape[0]):
        for k in range(1, n + 1):
            if not _chol_ok(xp, flat[b, :k, :k]):
                info[b] = k
                break
    return info.reshape(A.shape[:-2])


def _chol_ok(xp: Any, M: Any) -> bool:
    """Whether potrf succeeds: NumPy raises, CuPy returns NaN instead."""
    try:
        L = xp.linalg.cholesky(M)
    except Exception:
        return False
    return not bool(xp.isnan(L).any())


@register("linalg_cholesky_ex", meta=_chol_meta, sig="A, *, upper=False, check_errors=False",
          method=False, function=False, nondiff_outputs=(1,), out_type=cholesky_ex_out,
          node_name="LinalgCholeskyEx")
class LinalgCholeskyEx(OpDef):
    """Cholesky factor of each Hermitian positive-definite matrix (lower, or upper with
    ``upper=True``) and LAPACK's ``info``."""

    def forward(ctx, xp, A, upper, check_errors):
        n = A.shape[-1]
        if n == 0:
            L = A.copy()
            info = xp.zeros(A.shape[:-2], dtype=xp.int32)
        else:
            # LAPACK reads one triangle only: make the input Hermitian from the lower one
            low = xp.tril(A) if not upper else xp.conj(xp.swapaxes(xp.triu(A), -1, -2))
            H = low + xp.conj(xp.swapaxes(xp.tril(low, -1), -1, -2))
            try:
                L = xp.linalg.cholesky(H)
                if xp.__name__ != "numpy" and bool(xp.isnan(L).any()):
                    raise ValueError("not positive-definite")  # CuPy signals with NaN
                info = xp.zeros(A.shape[:-2], dtype=xp.int32)
            except Exception:
                info = _chol_info(xp, H)
                if check_errors:
                    flat = info.reshape(-1)
                    i = int(xp.argmax(flat > 0))
                    raise LinAlgError(
                        f"linalg.cholesky: {batch_str(i, info.ndim > 0)}The factorization could "
                        "not be completed because the input is not positive-definite (the "
                        f"leading minor of order {int(flat[i])} is not positive-definite).")
                L = xp.full(A.shape, xp.nan, dtype=A.dtype)
                ok = info == 0
                if bool(ok.any()):
                    L[ok] = xp.linalg.cholesky(H[ok])
        out = xp.conj(xp.swapaxes(L, -1, -2)).copy() if upper else L
        ctx.upper = upper
        ctx.save(out)
        return out, info

    def backward(ctx, g, ginfo):
        (L,) = ctx.saved
        if ctx.upper:
            L, g = mH(L), mH(g)
        from ember.ops.linalg_ops import solve_triangular
        n = L.shape[-1]
        Linv = solve_triangular(L, eye_like(n, L), upper=False)
        phi = mH(L).matmul(g)
        phi = tril(phi) - 0.5 * diag_embed(phi.diagonal(0, -2, -1))
        gA = mH(Linv).matmul(phi).matmul(Linv)
        return (gA + mH(gA)) * 0.5, None, None


# ---------------------------------------------------------------------- qr
def _qr_meta(op: Any, A: Any, mode: str = "reduced") -> tuple:
    check_matrix("linalg.qr", A, square=False)
    check(mode in ("reduced", "complete", "r"), "linalg.qr",
          f"qr received unrecognized mode '{mode}' but expected one of 'reduced' (default), "
          "'r', or 'complete'")
    m, n = A.shape[-2:]
    k = min(m, n)
    batch = tuple(A.shape[:-2])
    if mode == "r":
        return TensorMeta((0,)), TensorMeta(batch + (k, n))
    if mode == "complete":
        return TensorMeta(batch + (m, m)), TensorMeta(batch + (m, n))
    return TensorMeta(batch + (m, k)), TensorMeta(batch + (k, n))


@register("linalg_qr", meta=_qr_meta, sig="A, mode='reduced'", method=False, function=False,
          out_type=qr_out, node_name="LinalgQr")
class LinalgQr(OpDef):
    """QR decomposition ``A = Q R`` (Householder, LAPACK geqrf/orgqr)."""

    def forward(ctx, xp, A, mode):
        m, n = A.shape[-2:]
        k = min(m, n)
        batch = A.shape[:-2]
        if A.size == 0:
            Q = xp.zeros(batch + ((m, m) if mode == "complete" else (m, k)), A.dtype)
            if m and mode != "r":
                Q[..., :, :min(Q.shape[-1], m)] += xp.eye(m, min(Q.shape[-1], m), dtype=A.dtype)
            R = xp.zeros(batch + ((m, n) if mode == "complete" else (k, n)), A.dtype)
        elif mode == "r":
            R = xp.linalg.qr(A, mode="r")
            Q = xp.zeros((0,), A.dtype)
        else:
            Q, R = xp.linalg.qr(A, mode=mode)
        ctx.mode = mode
        ctx.save(Q, R)
        return Q, R

    def backward(ctx, gQ, gR):
        Q, R = ctx.saved
        if ctx.mode == "r":
            raise make(RuntimeError, "linalg.qr",
                       "The derivative of linalg.qr depends on Q, which is not computed when "
                       "mode='r'. Please use linalg.qr(A, mode='reduced') if you are going to "
                       "differentiate through linalg.qr.")
        m, n = Q.shape[-2], R.shape[-1]
        if ctx.mode == "complete" and m > n:
            raise make(RuntimeError, "linalg.qr", "The QR decomposition is not differentiable "
                                                  "when mode='complete' and nrows > ncols.")
        from ember.ops.linalg_ops import solve_triangular
        import ember
        gA = gR.matmul(mH(R)) - mH(Q).matmul(gQ)
        if m >= n:
            X = triu(gA)
            X = X + mH(X)
            # halve the real part of the diagonal (the imaginary part stays)
            d = X.diagonal(0, -2, -1)
            X = X - diag_embed(real(d).to(X.dtype) * 0.5)
            gA = Q.matmul(X) + gQ
            return solve_triangular(mH(R), gA, upper=False, left=False), None
        X = -gA
        Y = tril(X - mH(X))
        if Y.is_complex():
            Y = Y - diag_embed(i_imag(Y.diagonal(0, -2, -1)) * 0.5)
        gA = Q.matmul(Y)
        gA = solve_triangular(mH(R[..., :, :m]), gA, upper=False, left=False)
        gA = ember.cat([gA, ember.zeros(gA.shape[:-1] + (n - m,), dtype=gA.dtype,
                                        device=gA.device)], -1)
        return gA + Q.matmul(gR), None


# ---------------------------------------------------------------------- svd
def _svd_meta(op: Any, A: Any, full_matrices: bool = True, driver: Any = None) -> tuple:
    check_matrix("linalg.svd", A, square=False)
    check(driver is None, "linalg.svd", "keyword argument `driver=` is only supported on CUDA "
                                        "inputs with cuSOLVER backend.")
    m, n = A.shape[-2:]
    k = min(m, n)
    b = tuple(A.shape[:-2])
    if full_matrices:
        return TensorMeta(b + (m, m)), TensorMeta(b + (k,)), TensorMeta(b + (n, n))
    return TensorMeta(b + (m, k)), TensorMeta(b + (k,)), TensorMeta(b + (k, n))


@register("linalg_svd", meta=_svd_meta, sig="A, full_matrices=True, *, driver=None",
          method=False, function=False, out_type=svd_out, node_name="LinalgSvd")
class LinalgSvd(OpDef):
    """Singular value decomposition ``A = U diag(S) Vh``, singular values descending."""

    def forward(ctx, xp, A, full_matrices, driver):
        m, n = A.shape[-2:]
        k = min(m, n)
        b = A.shape[:-2]
        rdt = real_dtype_np(xp, A.dtype)
        if A.size == 0:
            um, vn = (m, n) if full_matrices else (k, k)
            U = xp.zeros(b + (m, um), A.dtype)
            U[...] = xp.eye(m, um, dtype=A.dtype)
            Vh = xp.zeros(b + (vn, n), A.dtype)
            Vh[...] = xp.eye(vn, n, dtype=A.dtype)
            S = xp.zeros(b + (k,), rdt)
        else:
            U, S, Vh = xp.linalg.svd(A, full_matrices=full_matrices)
        ctx.full = full_matrices
        ctx.save(U, S, Vh)
        return U, S.astype(rdt, copy=False), Vh

    def backward(ctx, gU, gS, gVh):
        U, S, Vh = ctx.saved
        k = S.shape[-1]
        if ctx.full:
            U, Vh = U[..., :, :k], Vh[..., :k, :]
            gU, gVh = gU[..., :, :k], gVh[..., :k, :]
        return svd_backward(None if is_zero(gU) else gU, gS,
                            None if is_zero(gVh) else gVh, U, S, Vh), None, None


def svd_backward(gU: Tensor | None, gS: Tensor, gVh: Tensor | None, U: Tensor, S: Tensor,
                 Vh: Tensor) -> Tensor:
    """Adjoint of the thin SVD (torch's formula; distinct singular values, and full rank for
    rectangular or complex input)."""
    m, n = U.shape[-2], Vh.shape[-1]
    if gU is None and gVh is None:
        # svdvals: U diag(gS) Vh
        gSc = gS.to(U.dtype)
        return U.matmul(gSc.unsqueeze(-1) * Vh) if m >= n else (U * gSc.unsqueeze(-2)).matmul(Vh)
    cplx = U.is_complex()
    Sc = S.to(U.dtype)
    UhgU = VhgV = None
    if gU is not None:
        X = mH(U).matmul(gU)
        UhgU = X - mH(X)
    if gVh is not None:
        X = Vh.matmul(mH(gVh))
        VhgV = X - mH(X)
    if cplx:
        im_u = _imag_of(UhgU.diagonal(0, -2, -1)) if UhgU is not None else None
        im_v = _imag_of(VhgV.diagonal(0, -2, -1)) if VhgV is not None else None
        tot = (im_u if im_u is not None else 0) + (im_v if im_v is not None else 0)
        if not bool((abs_t(tot) <= 1e-2 + 1e-2 * (abs_t(im_v) if im_v is not None else 0)).all()):
            raise make(RuntimeError, "linalg.svd",
                       "svd_backward: The singular vectors in the complex case are specified up "
                       "to multiplication by e^{i phi}. The specified loss function depends on "
                       "this phase term, making it ill-defined.")
    S2 = S * S
    E = S2.unsqueeze(-2) - S2.unsqueeze(-1)
    E = E + eye_like(S.shape[-1], E)
    E = E.to(U.dtype)
    if UhgU is not None and VhgV is not None:
        gA = (UhgU * Sc.unsqueeze(-2) + Sc.unsqueeze(-1) * VhgV) / E
    elif UhgU is not None:
        gA = (UhgU / E) * Sc.unsqueeze(-2)
    else:
        gA = Sc.unsqueeze(-1) * (VhgV / E)
    gA = gA + diag_embed(gS.to(U.dtype))
    if cplx and UhgU is not None and VhgV is not None:
        gA = gA + diag_embed(UhgU.diagonal(0, -2, -1) / (2.0 * Sc))
    if m > n and gU is not None:
        gA = U.matmul(gA)
        gUSinv = gU / Sc.unsqueeze(-2)
        gA = gA + gUSinv - U.matmul(mH(U).matmul(gUSinv))
        return gA.matmul(Vh)
    if m < n and gVh is not None:
        gA = gA.matmul(Vh)
        SinvgVh = gVh / Sc.unsqueeze(-1)
        gA = gA + SinvgVh - SinvgVh.matmul(mH(Vh)).matmul(Vh)
        return U.matmul(gA)
    return U.matmul(gA.matmul(Vh)) if m >= n else U.matmul(gA).matmul(Vh)


def _imag_of(t: Tensor) -> Tensor:
    return real(i_imag(t) * -1j)


def abs_t(t: Any) -> Any:
    return t.abs() if isinstance(t, Tensor) else abs(t)


# ---------------------------------------------------------------------- eigh / eig
def _eigh_meta(op: Any, A: Any, UPLO: str = "L") -> tuple:
    check_matrix("linalg.eigh", A)
    check(UPLO in ("L", "U", "l", "u"), "linalg.eigh",
          f"Expected UPLO argument to be 'L' or 'U', but got {UPLO}")
    return TensorMeta(A.shape[:-1], _rdt(A)), TensorMeta(A.shape)


@register("linalg_eigh", meta=_eigh_meta, sig="A, UPLO='L'", method=False, function=False,
          out_type=eigh_out, node_name="LinalgEigh")
class LinalgEigh(OpDef):
    """Eigenvalues (ascending, real) and orthonormal eigenvectors of Hermitian matrices, read
    from the ``UPLO`` triangle."""

    def forward(ctx, xp, A, UPLO):
        if A.size == 0:
            L, V = xp.zeros(A.shape[:-1], real_dtype_np(xp, A.dtype)), A.copy()
        else:
            L, V = xp.linalg.eigh(A, UPLO=UPLO.upper())
        ctx.save(L, V)
        return L.astype(real_dtype_np(xp, A.dtype), copy=False), V

    def backward(ctx, gL, gV):
        L, V = ctx.saved
        return eig_backward(gL, None if is_zero(gV) else gV, L, V, True), None


def _eig_meta(op: Any, A: Any) -> tuple:
    check_matrix("linalg.eig", A)
    cdt = _dt.complex64 if A.dtype in (_dt.float32, _dt.complex64) else _dt.complex128
    return TensorMeta(A.shape[:-1], cdt), TensorMeta(A.shape, cdt)


@register("linalg_eig", meta=_eig_meta, sig="A", method=False, function=False,
          out_type=eig_out, node_name="LinalgEig")
class LinalgEig(OpDef):
    """Eigenvalues and unit-norm eigenvectors of general square matrices (always complex)."""

    def forward(ctx, xp, A):
        cdt = _complex_np(xp, A.dtype)
        if A.size == 0:
            L, V = xp.zeros(A.shape[:-1], cdt), xp.zeros(A.shape, cdt)
        elif hasattr(xp.linalg, "eig") and xp.__name__ == "numpy":
            L, V = xp.linalg.eig(A)
        else:  # CuPy has no general eigensolver: run LAPACK geev on the host, as torch does
            import numpy as np
            L, V = np.linalg.eig(xp.asnumpy(A))
            L, V = xp.asarray(L), xp.asarray(V)
        ctx.real_input = A.dtype.kind != "c"
        L, V = L.astype(cdt, copy=False), V.astype(cdt, copy=False)
        ctx.save(L, V)
        return L, V

    def backward(ctx, gL, gV):
        L, V = ctx.saved
        g = eig_backward(gL, None if is_zero(gV) else gV, L, V, False)
        return real(g) if ctx.real_input else g


def eig_backward(gL: Tensor, gV: Tensor | None, L: Tensor, V: Tensor, hermitian: bool) -> Tensor:
    """Adjoint of A = V diag(L) V^{-1} with unit-norm eigenvectors (torch's formula)."""
    name = "linalg_eigh_backward" if hermitian else "linalg_eig_backward"
    gLc = gL.to(V.dtype)
    if gV is None:
        if hermitian:
            return (V * gLc.unsqueeze(-2)).matmul(mH(V))
        return OPS_LINALG["_linalg_solve"](mH(V), gLc.unsqueeze(-1) * mH(V))
    VhgV = mH(V).matmul(gV)
    d = VhgV.diagonal(0, -2, -1)
    if V.is_complex() and not bool((_imag_of(d).abs() <= 1e-2).all()):
        raise make(RuntimeError, name,
                   f"{name}: The eigenvectors in the complex case are specified up to "
                   "multiplication by e^{i phi}. The specified loss function depends on this "
                   "quantity, so it is ill-defined.")
    if hermitian:
        VhgV = 0.5 * (VhgV - mH(VhgV))
    else:
        VhgV = VhgV - mH(V).matmul(V * real(d).to(V.dtype).unsqueeze(-2))
    Lc = L.conj() if L.is_complex() else L
    E = Lc.unsqueeze(-2) - Lc.unsqueeze(-1)
    E = E + eye_like(L.shape[-1], E)
    ret = VhgV / E.to(VhgV.dtype)
    if not is_zero(gL):  # torch leaves the diagonal alone when gL is undefined
        ret = ret - diag_embed(ret.diagonal(0, -2, -1)) + diag_embed(gLc)
    if hermitian:
        return V.matmul(ret.matmul(mH(V)))
    return OPS_LINALG["_linalg_solve"](mH(V), ret.matmul(mH(V)))


__all__ = ["svd_backward", "eig_backward", "LinAlgError"]
