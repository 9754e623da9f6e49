"""``ember.linalg`` functions written over the linalg primitives (linalg_solve.py,
linalg_decomp.py), plus the primitives pinv and cholesky_solve, and torch's top-level aliases
(``ember.det``, ``ember.inverse``, ``ember.svd`` ...).

Composites get gradients, devices and tracing from the ops they call. Each is registered with
:func:`composite`; the ``linalg_*`` ones are exposed by ``ember/linalg.py`` under torch's names.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ember import dtypes as _dt
from ember.errors import check
from ember.ops import meta as M
from ember.ops.linalg_solve import (LinAlgError, check_matrix, eye_like, mH,
                                    permutation_from_pivots, raise_singular, real_dtype_np,
                                    same_dtype, tri_mask)
from ember.ops.reduce import return_type
from ember.ops.registry import OPS, OpDef, TensorMeta, _torch_name, composite, register
from ember.tensor import Tensor

slogdet_out = return_type("slogdet", ("sign", "logabsdet"))
linalg_slogdet_out = return_type("linalg_slogdet", ("sign", "logabsdet"))
inv_ex_out = return_type("linalg_inv_ex", ("inverse", "info"))
solve_ex_out = return_type("linalg_solve_ex", ("result", "info"))
lu_factor_out = return_type("linalg_lu_factor", ("LU", "pivots"))
lu_factor_ex_out = return_type("linalg_lu_factor_ex", ("LU", "pivots", "info"))
lu_out = return_type("linalg_lu", ("P", "L", "U"))
lu_unpack_out = return_type("lu_unpack", ("P", "L", "U"))
lstsq_out = return_type("linalg_lstsq", ("solution", "residuals", "rank", "singular_values"))
torch_svd_out = return_type("svd", ("U", "S", "V"))
torch_qr_out = return_type("qr", ("Q", "R"))
tri_solve_out = return_type("triangular_solve", ("solution", "cloned_coefficient"))


def _op(name: str) -> Any:
    return OPS[name].function


def _is_vector_rhs(A: Tensor, B: Tensor) -> bool:
    """torch's rule: B is a (batch of) vector(s) when 1-d, or when its shape is A's minus the
    last dim."""
    return B.ndim == 1 or (B.ndim == A.ndim - 1 and tuple(B.shape) == tuple(A.shape[:-1]))


# ---------------------------------------------------------------------- pinv (primitive)
def _tol_value(t: Any, xp: Any, batch: tuple) -> Any:
    if t is None:
        return None
    arr = t._data if isinstance(t, Tensor) else xp.asarray(float(t))
    return xp.asarray(arr, dtype=xp.float64)


def _pinv_meta(op: Any, A: Any, atol: Any = None, rtol: Any = None, hermitian: bool = False) -> Any:
    check_matrix("linalg.pinv", A, square=hermitian)
    return TensorMeta(tuple(A.shape[:-2]) + (A.shape[-1], A.shape[-2]))


@register("linalg_pinv", meta=_pinv_meta, sig="A, *, atol=None, rtol=None, hermitian=False",
          method=False, function=False, node_name="LinalgPinv")
class LinalgPinv(OpDef):
    """Moore-Penrose pseudo-inverse through the SVD (or eigh when ``hermitian``); singular
    values at most ``max(atol, rtol * sigma_max)`` are treated as zero."""

    def forward(ctx, xp, A, atol, rtol, hermitian):
        m, n = A.shape[-2:]
        rdt = real_dtype_np(xp, A.dtype)
        eps = float(xp.finfo(rdt).eps)
        a = _tol_value(atol, xp, A.shape[:-2])
        r = _tol_value(rtol, xp, A.shape[:-2])
        if r is None:
            r = xp.asarray(eps * max(m, n)) if a is None or bool((a <= 0).all()) else \
                xp.asarray(0.0)
        if a is None:
            a = xp.asarray(0.0)
        if A.size == 0:
            out = xp.zeros(A.shape[:-2] + (n, m), A.dtype)
        elif not hermitian:
            U, S, Vh = xp.linalg.svd(A, full_matrices=False)
            tol = xp.maximum(a[..., None], r[..., None] * S[..., :1])
            Sinv = xp.where(S > tol, 1 / xp.where(S > tol, S, 1), 0).astype(A.dtype)
            out = (xp.conj(xp.swapaxes(Vh, -1, -2)) * Sinv[..., None, :]) @ \
                xp.conj(xp.swapaxes(U, -1, -2))
        else:
            L, V = xp.linalg.eigh(A)
            La = xp.abs(L)
            tol = xp.maximum(a[..., None], r[..., None] * La.max(-1, keepdims=True))
            Linv = xp.where(La > tol, 1 / xp.where(La > tol, L, 1), 0).astype(A.dtype)
            out = (V * Linv[..., None, :]) @ xp.conj(xp.swapaxes(V, -1, -2))
        out = out.astype(A.dtype, copy=False)
        ctx.save(A, out)
        return out

    def backward(ctx, g, *rest):
        # Golub & Pereyra's derivative of the pseudo-inverse (torch's pinv_backward)
        A, P = ctx.saved
        m, n = A.shape[-2:]
        Ph, gh = mH(P), mH(g)
        if m <= n:
            K = gh.matmul(P)
            KPh = K.matmul(Ph)
            gA = -mH(P.matmul(K)) + KPh - A.matmul(P).matmul(KPh) + \
                Ph.matmul(P).matmul(gh - K.matmul(A))
        else:
            K = P.matmul(gh)
            PhK = Ph.matmul(K)
            gA = -mH(K.matmul(P)) + (gh - A.matmul(K)).matmul(P).matmul(Ph) + PhK - \
                PhK.matmul(P).matmul(A)
        return (gA,) + (None,) * 3


# ---------------------------------------------------------------------- cholesky_solve
def _chsolve_meta(op: Any, B: Any, L: Any, upper: bool = False) -> TensorMeta:
    check_matrix("cholesky_solve", L)
    check(isinstance(B, Tensor) and B.ndim >= 2, "cholesky_solve",
          f"b should have at least 2 dimensions, but has {getattr(B, 'ndim', 0)} dimensions "
          "instead")
    same_dtype("cholesky_solve", B, L, "self", "A")
    check(B.shape[-2] == L.shape[-1], "cholesky_solve",
          f"Incompatible matrix sizes for cholesky_solve: each A matrix is {L.shape[-1]} by "
          f"{L.shape[-1]} but each b matrix is {B.shape[-2]} by {B.shape[-1]}")
    batch = M.broadcast_shapes("cholesky_solve", tuple(B.shape[:-2]), tuple(L.shape[:-2]))
    return TensorMeta(tuple(batch) + tuple(B.shape[-2:]))


@register("cholesky_solve", meta=_chsolve_meta, sig="input, input2, upper=False",
          call="input, input2, upper",
          node_name="CholeskySolve")
class CholeskySolve(OpDef):
    """Solve ``A X = B`` given the Cholesky factor of ``A`` (``input2``: L, or U with
    ``upper=True``)."""

    def forward(ctx, xp, B, L, upper):
        batch = xp.broadcast_shapes(B.shape[:-2], L.shape[:-2])
        Lt = xp.triu(L) if upper else xp.tril(L)
        Lt = xp.conj(xp.swapaxes(Lt, -1, -2)) if upper else Lt
        A = Lt @ xp.conj(xp.swapaxes(Lt, -1, -2))
        Bb = xp.broadcast_to(B, batch + B.shape[-2:])
        X = xp.linalg.solve(xp.broadcast_to(A, batch + A.shape[-2:]), Bb) if B.size else \
            xp.zeros(batch + B.shape[-2:], B.dtype)
        ctx.upper = upper
        ctx.save(L, X)
        return X

    def backward(ctx, g):
        L, X = ctx.saved
        gB = cholesky_solve(g, L, ctx.upper)
        gL = None
        if ctx.next_edges[1] is not None:
            common = gB.matmul(mH(X))
            common = common + mH(common)
            gL = -L.matmul(common) if ctx.upper else -common.matmul(L)
        return gB, gL, None


cholesky_solve = OPS["cholesky_solve"].function


# ---------------------------------------------------------------------- solves
@composite("linalg_solve_triangular", method=False, function=False)
def solve_triangular(A: Tensor, B: Tensor, *, upper: bool, left: bool = True,
                     unitriangular: bool = False) -> Tensor:
    """Solve ``A X = B`` (``X A = B`` when not ``left``) for triangular ``A``; only the
    ``upper``/lower triangle of ``A`` is read, its diagonal taken as ones when
    ``unitriangular``. The gradient of ``A`` is projected onto that triangle, as in torch."""
    name = "linalg.solve_triangular"
    check_matrix(name, A)
    check(isinstance(B, Tensor) and B.ndim >= 2, name,
          "The input tensor B must have at least 2 dimensions.")
    same_dtype(name, A, B, "A", "B")
    n = A.shape[-1]
    k = 1 if unitriangular else 0
    T = A * tri_mask(n, n, k, False, A) if upper else A * tri_mask(n, n, -k, True, A)
    if unitriangular:
        T = T + eye_like(n, A)
    if left:
        check(B.shape[-2] == n, name, f"Incompatible shapes of A and B for the equation AX = B "
                                      f"({n}x{n} and {B.shape[-2]}x{B.shape[-1]})")
        return _op("_linalg_solve")(T, B)
    check(B.shape[-1] == n, name, f"Incompatible shapes of A and B for the equation XA = B "
                                  f"({B.shape[-2]}x{B.shape[-1]} and {n}x{n})")
    return _op("_linalg_solve")(T.mT, B.mT).mT


@composite("linalg_solve", method=False, function=False)
def solve(A: Tensor, B: Tensor, *, left: bool = True, out: Any = None) -> Tensor:
    """Solve ``A X = B`` (``X A = B`` when not ``left``) for square invertible ``A``; ``B`` may
    be a (batch of) vector(s)."""
    check_matrix("linalg.solve", A)
    check(isinstance(B, Tensor), "linalg.solve",
          f"argument 'B' must be Tensor, not {type(B).__name__}", TypeError)
    same_dtype("linalg.solve", A, B)
    vec = _is_vector_rhs(A, B)
    Bm = B.unsqueeze(-1) if vec else B
    if left:
        X = _op("_linalg_solve")(A, Bm)
    else:
        X = _op("_linalg_solve")(A.mT, Bm.mT).mT
    return X.squeeze(-1) if vec else X


@composite("linalg_solve_ex", method=False, function=False)
def solve_ex(A: Tensor, B: Tensor, *, left: bool = True, check_errors: bool = False) -> Any:
    """:func:`solve` that returns ``(result, info)``; ``info`` is nonzero for singular input."""
    _, _, info = _op("linalg_lu_factor_ex")(A.detach())
    if bool((info > 0).any()):
        if check_errors:
            raise_singular("torch.linalg.solve_ex", info._data, "solve")
        nan = A.new_full(tuple(B.shape), float("nan"))
        return solve_ex_out(nan, info)
    return solve_ex_out(solve(A, B, left=left), info)


@composite("linalg_inv_ex_", method=False, function=False)
def inv_ex(A: Tensor, *, check_errors: bool = False, out: Any = None) -> Any:
    """``(inverse, info)``; ``info`` is the 1-based index of the first zero pivot of a singular
    matrix (0 when invertible)."""
    inv, info = _op("linalg_inv_ex")(A, check_errors=check_errors)
    return inv_ex_out(inv, info)


@composite("linalg_inv", method=False, function=False)
def inv(A: Tensor, *, out: Any = None) -> Tensor:
    """Inverse of each square matrix; raises torch's LinAlgError for a singular one."""
    return _op("linalg_inv_ex")(A, check_errors=True)[0]


@composite("inverse")
def inverse(input: Tensor, *, out: Any = None) -> Tensor:
    """Alias of :func:`ember.linalg.inv`."""
    return inv(input)


@composite("linalg_det_", method=False, function=False)
def det(A: Tensor, *, out: Any = None) -> Tensor:
    """Determinant of each square matrix."""
    return _op("linalg_det")(A)


@composite("det")
def _det_top(input: Tensor) -> Tensor:
    """Determinant of each square matrix (alias of :func:`ember.linalg.det`)."""
    return _op("linalg_det")(input)


@composite("linalg_slogdet_", method=False, function=False)
def slogdet(A: Tensor, *, out: Any = None) -> Any:
    """``(sign, logabsdet)`` of each square matrix: ``det = sign * exp(logabsdet)``."""
    return linalg_slogdet_out(*_op("linalg_slogdet")(A))


@composite("slogdet")
def _slogdet_top(input: Tensor) -> Any:
    return slogdet_out(*_op("linalg_slogdet")(input))


@composite("logdet")
def logdet(input: Tensor) -> Tensor:
    """``log(det(input))``: NaN for a negative real determinant, ``-inf`` for zero."""
    import ember
    sign, logabs = _op("linalg_slogdet")(input)
    if input.is_complex():
        return sign.log() + logabs
    # a constant NaN where det < 0 (a masked product would leak NaN into the gradient)
    nan = ember.where(sign.detach() == -1, float("nan"), 0.0).to(logabs.dtype)
    return logabs + nan


# ---------------------------------------------------------------------- decompositions
@composite("linalg_cholesky", method=False, function=False)
def cholesky(A: Tensor, *, upper: bool = False, out: Any = None) -> Tensor:
    """Cholesky factor of Hermitian positive-definite matrices (lower unless ``upper``)."""
    return _op("linalg_cholesky_ex")(A, upper=upper, check_errors=True)[0]


@composite("linalg_cholesky_ex_", method=False, function=False)
def cholesky_ex(A: Tensor, *, upper: bool = False, check_errors: bool = False) -> Any:
    """``(L, info)``; ``info`` > 0 is the order of the first leading minor that is not
    positive-definite."""
    return _op("linalg_cholesky_ex")(A, upper=upper, check_errors=check_errors)


@composite("cholesky")
def _cholesky_top(input: Tensor, upper: bool = False, *, out: Any = None) -> Tensor:
    return cholesky(input, upper=upper)


@composite("cholesky_inverse")
def cholesky_inverse(input: Tensor, upper: bool = False, *, out: Any = None) -> Tensor:
    """Inverse of ``A = L L^H`` from its Cholesky factor ``input``."""
    check_matrix("cholesky_inverse", input)
    return cholesky_solve(eye_like(input.shape[-1], input).expand(*input.shape), input, upper)


@composite("linalg_qr_", method=False, function=False)
def qr(A: Tensor, mode: str = "reduced", *, out: Any = None) -> Any:
    """QR decomposition; ``mode`` is 'reduced', 'complete' or 'r' (Q is then empty)."""
    return _op("linalg_qr")(A, mode)


@composite("qr")
def _qr_top(input: Tensor, some: bool = True, *, out: Any = None) -> Any:
    Q, R = _op("linalg_qr")(input, "reduced" if some else "complete")
    return torch_qr_out(Q, R)


@composite("linalg_svd_", method=False, function=False)
def svd(A: Tensor, full_matrices: bool = True, *, driver: Any = None, out: Any = None) -> Any:
    """``A = U diag(S) Vh`` with singular values in descending order."""
    return _op("linalg_svd")(A, full_matrices, driver=driver)


@composite("svd")
def _svd_top(input: Tensor, some: bool = True, compute_uv: bool = True, *,
             out: Any = None) -> Any:
    """torch.svd: returns ``V`` (not ``Vh``); ``some=True`` gives the reduced factors."""
    import ember
    U, S, Vh = _op("linalg_svd")(input, not some)
    if not compute_uv:
        m, n = input.shape[-2:]
        b = tuple(input.shape[:-2])
        return torch_svd_out(ember.zeros(b + (m, m), dtype=input.dtype, device=input.device),
                             S, ember.zeros(b + (n, n), dtype=input.dtype, device=input.device))
    return torch_svd_out(U, S, mH(Vh))


@composite("linalg_svdvals", method=False, function=False)
def svdvals(A: Tensor, *, driver: Any = None, out: Any = None) -> Tensor:
    """Singular values, descending."""
    return _op("linalg_svd")(A, False, driver=driver)[1]


@composite("linalg_eigh_", method=False, function=False)
def eigh(A: Tensor, UPLO: str = "L", *, out: Any = None) -> Any:
    """Eigen-decomposition of Hermitian matrices (ascending real eigenvalues)."""
    return _op("linalg_eigh")(A, UPLO)


@composite("linalg_eigvalsh", method=False, function=False)
def eigvalsh(A: Tensor, UPLO: str = "L", *, out: Any = None) -> Tensor:
    """Eigenvalues of Hermitian matrices, ascending."""
    check_matrix("linalg.eigvalsh", A)
    return _op("linalg_eigh")(A, UPLO)[0]


@composite("linalg_eig_", method=False, function=False)
def eig(A: Tensor, *, out: Any = None) -> Any:
    """Eigenvalues and unit eigenvectors of square matrices (complex results)."""
    return _op("linalg_eig")(A)


@composite("linalg_eigvals", method=False, function=False)
def eigvals(A: Tensor, *, out: Any = None) -> Tensor:
    """Eigenvalues of square matrices (complex)."""
    check_matrix("linalg.eigvals", A)
    return _op("linalg_eig")(A)[0]


# ---------------------------------------------------------------------- LU
@composite("linalg_lu_factor_ex_", method=False, function=False)
def lu_factor_ex(A: Tensor, *, pivot: bool = True, check_errors: bool = False,
                 out: Any = None) -> Any:
    """``(LU, pivots, info)`` of LU with partial pivoting (pivots are 1-based, int32)."""
    return lu_factor_ex_out(*_op("linalg_lu_factor_ex")(A, pivot=pivot,
                                                         check_errors=check_errors))


@composite("linalg_lu_factor", method=False, function=False)
def lu_factor(A: Tensor, *, pivot: bool = True, out: Any = None) -> Any:
    """``(LU, pivots)``; raises for singular input, as torch does."""
    LU, piv, info = _op("linalg_lu_factor_ex")(A, pivot=pivot, check_errors=False)
    if A.shape[-1] == A.shape[-2]:
        raise_singular("torch.linalg.lu_factor", info._data, "factorization")
    return lu_factor_out(LU, piv)


@composite("lu_unpack", method=False)
def lu_unpack(LU_data: Tensor, LU_pivots: Tensor, unpack_data: bool = True,
              unpack_pivots: bool = True, *, out: Any = None) -> Any:
    """``(P, L, U)`` from the packed output of :func:`lu_factor`."""
    import ember
    check(LU_pivots.dtype is _dt.int32, "lu_unpack",
          "LU_pivots is expected to be a contiguous tensor of torch.int32 dtype. Note: this "
          "function is intended to be used with the output produced by torch.linalg.lu_factor",
          RuntimeError)
    m, n = LU_data.shape[-2:]
    k = min(m, n)
    empty = ember.empty(0, dtype=LU_data.dtype, device=LU_data.device)
    if unpack_data:
        L = LU_data[..., :, :k] * tri_mask(m, k, -1, True, LU_data) + eye_like(m, LU_data, k)
        U = LU_data[..., :k, :] * tri_mask(k, n, 0, False, LU_data)
    else:
        L = U = empty
    P = permutation_from_pivots(LU_pivots, m, LU_data) if unpack_pivots else empty
    return lu_unpack_out(P, L, U)


@composite("linalg_lu", method=False, function=False)
def lu(A: Tensor, *, pivot: bool = True, out: Any = None) -> Any:
    """``A = P L U`` with partial pivoting."""
    LU, piv, _ = _op("linalg_lu_factor_ex")(A, pivot=pivot)
    return lu_out(*lu_unpack(LU, piv))


@composite("lu")
def _lu_top(A: Tensor, pivot: bool = True, get_infos: bool = False, out: Any = None) -> Any:
    """torch.lu: ``(A_LU, pivots)`` (and ``infos`` with ``get_infos=True``)."""
    LU, piv, info = _op("linalg_lu_factor_ex")(A, pivot=pivot)
    return (LU, piv, info) if get_infos else (LU, piv)


@composite("linalg_lu_solve", method=False, function=False)
def lu_solve(LU: Tensor, pivots: Tensor, B: Tensor, *, left: bool = True,
             adjoint: bool = False, out: Any = None) -> Tensor:
    """Solve ``A X = B`` from ``A``'s LU factorisation (``X A = B`` when not ``left``;
    ``A^H`` when ``adjoint``)."""
    check_matrix("linalg.lu_solve", LU)
    P = permutation_from_pivots(pivots, LU.shape[-1], LU)
    n = LU.shape[-1]
    L = LU * tri_mask(n, n, -1, True, LU) + eye_like(n, LU)
    U = LU * tri_mask(n, n, 0, False, LU)
    if left and not adjoint:    # P L U X = B
        Y = solve_triangular(L, P.mT.matmul(B), upper=False, unitriangular=True)
        return solve_triangular(U, Y, upper=True)
    if left:                    # U^H L^H P^T X = B
        Y = solve_triangular(mH(U), B, upper=False)
        Y = solve_triangular(mH(L), Y, upper=True, unitriangular=True)
        return P.matmul(Y)
    if not adjoint:             # X P L U = B
        Y = solve_triangular(U, B, upper=True, left=False)
        Y = solve_triangular(L, Y, upper=False, left=False, unitriangular=True)
        return Y.matmul(P.mT)
    Y = B.matmul(P)             # X U^H L^H P^T = B
    Y = solve_triangular(mH(L), Y, upper=True, left=False, unitriangular=True)
    return solve_triangular(mH(U), Y, upper=False, left=False)


@composite("lu_solve")
def _lu_solve_top(b: Tensor, LU_data: Tensor, LU_pivots: Tensor, *, out: Any = None) -> Tensor:
    return lu_solve(LU_data, LU_pivots, b)


@composite("triangular_solve")
def triangular_solve(b: Tensor, A: Tensor, upper: bool = True, transpose: bool = False,
                     unitriangular: bool = False, *, out: Any = None) -> Any:
    """``(solution, cloned_coefficient)`` of ``op(A) X = b`` for triangular ``A``."""
    T = A.mT if transpose else A
    X = solve_triangular(T, b, upper=upper != transpose, unitriangular=unitriangular)
    return tri_solve_out(X, A.clone())


# ---------------------------------------------------------------------- norms
@composite("linalg_vector_norm_", method=False, function=False)
def vector_norm(x: Tensor, ord: Any = 2, dim: Any = None, keepdim: bool = False, *,
                dtype: Any = None, out: Any = None) -> Tensor:
    """The ``ord``-norm of ``x`` over ``dim`` (all dims when None) viewed as a vector."""
    return _op("linalg_vector_norm")(x, ord, dim, keepdim, dtype=dtype)


def _matrix_dims(A: Tensor, dim: Any, name: str) -> tuple:
    check(isinstance(dim, (tuple, list)) and len(dim) == 2, name,
          f"dim must be a 2-tuple. Got {dim}")
    d = M.wrap_dims(name, dim, A.ndim)
    check(d[0] != d[1], name, f"dims must be different. Got ({dim[0]}, {dim[1]})")
    return d


@composite("linalg_matrix_norm", method=False, function=False)
def matrix_norm(A: Tensor, ord: Any = "fro", dim: Any = (-2, -1), keepdim: bool = False, *,
                dtype: Any = None, out: Any = None) -> Tensor:
    """Matrix norm over ``dim``: 'fro', 'nuc', inf, -inf, 1, -1, 2, -2."""
    name = "linalg.matrix_norm"
    check(isinstance(A, Tensor) and A.ndim >= 2, name,
          "The input tensor A must have at least 2 dimensions.")
    check(A.dtype.category >= 2, name,
          f"Expected a floating point or complex tensor as input. Got {_torch_name(A.dtype)}")
    d0, d1 = _matrix_dims(A, dim, name)
    if dtype is not None:
        A = A.to(dtype)
    if isinstance(ord, str):
        check(ord in ("fro", "nuc"), name, f"Order {ord} not supported.")
        if ord == "fro":
            return _op("linalg_vector_norm")(A, 2, (d0, d1), keepdim)
        out = svdvals(A.movedim((d0, d1), (-2, -1))).sum(-1)
    else:
        check(ord in (1, -1, 2, -2, math.inf, -math.inf), name, f"Order {ord} not supported.")
        if abs(ord) == 2:
            s = svdvals(A.movedim((d0, d1), (-2, -1)))
            if s.shape[-1] == 0:  # an empty matrix has norm 0 (torch)
                out = s.sum(-1)
            else:
                out = s.amax(-1) if ord > 0 else s.amin(-1)
        else:
            if abs(ord) == math.inf:
                d0, d1 = d1, d0
            col = _op("linalg_vector_norm")(A, 1, d0, True)
            red = col.amax(d1, keepdim=True) if ord > 0 else col.amin(d1, keepdim=True)
            return red if keepdim else red.squeeze(max(d0, d1)).squeeze(min(d0, d1))
    if keepdim:
        out = out.unsqueeze(min(d0, d1)).unsqueeze(max(d0, d1))
    return out


@composite("linalg_norm", method=False, function=False)
def norm(A: Tensor, ord: Any = None, dim: Any = None, keepdim: bool = False, *,
         dtype: Any = None, out: Any = None) -> Tensor:
    """Vector or matrix norm: a matrix norm when ``dim`` is a 2-tuple (or ``A`` is 2-D with
    ``ord`` given and ``dim=None``), else a vector norm."""
    if isinstance(dim, int):
        dim = (dim,)
    if dim is not None and len(dim) == 2:
        return matrix_norm(A, "fro" if ord is None else ord, dim, keepdim, dtype=dtype)
    if dim is None and ord is not None:
        check(A.ndim in (1, 2), "linalg.norm",
              f"If dim is not specified but ord is, the input must be 1D or 2D. Got {A.ndim}D.")
        if A.ndim == 2:
            return matrix_norm(A, ord, (-2, -1), keepdim, dtype=dtype)
    check(not isinstance(ord, str), "linalg.norm", f"Order {ord} not supported for vector norms")
    return _op("linalg_vector_norm")(A, 2 if ord is None else ord, dim, keepdim, dtype=dtype)


@composite("linalg_cond", method=False, function=False)
def cond(A: Tensor, p: Any = None, *, out: Any = None) -> Tensor:
    """Condition number in the ``p`` norm (2-norm by default, from the singular values)."""
    check_matrix("linalg.cond", A, square=p not in (None, 2, -2))
    if p in (None, 2, -2):
        s = svdvals(A)
        if s.shape[-1] == 0:  # torch: the condition number of an empty matrix is 0
            return s.sum(-1)
        return s[..., 0] / s[..., -1] if p != -2 else s[..., -1] / s[..., 0]
    import ember
    inv_, info = _op("linalg_inv_ex")(A)
    res = matrix_norm(A, p) * matrix_norm(inv_, p)
    # torch: a singular matrix has infinite condition number
    return ember.where(info > 0, float("inf"), res)


# ---------------------------------------------------------------------- pinv / rank / lstsq
@composite("linalg_pinv_", method=False, function=False)
def pinv(A: Tensor, *, atol: Any = None, rtol: Any = None, hermitian: bool = False,
         out: Any = None) -> Tensor:
    """Moore-Penrose pseudo-inverse."""
    return _op("linalg_pinv")(A, atol=atol, rtol=rtol, hermitian=hermitian)


@composite("pinverse")
def pinverse(input: Tensor, rcond: float = 1e-15) -> Tensor:
    """torch.pinverse: :func:`pinv` with relative tolerance ``rcond``."""
    return _op("linalg_pinv")(input, rtol=rcond)


@composite("linalg_matrix_rank", method=False, function=False)
def matrix_rank(A: Tensor, *, atol: Any = None, rtol: Any = None, hermitian: bool = False,
                out: Any = None) -> Tensor:
    """Numerical rank: the number of singular values above ``max(atol, rtol * sigma_max)``."""
    import ember
    check_matrix("linalg.matrix_rank", A, square=hermitian)
    with ember.no_grad():
        s = eigvalsh(A).abs() if hermitian else svdvals(A)
    m, n = A.shape[-2:]
    eps = _dt.finfo(s.dtype).eps
    if rtol is None:
        rtol = eps * max(m, n) if atol is None or (not isinstance(atol, Tensor) and atol <= 0) \
            else 0.0
    if atol is None:
        atol = 0.0
    smax = s.amax(-1, keepdim=True) if s.shape[-1] else s.sum(-1, keepdim=True)
    rt = rtol.unsqueeze(-1) if isinstance(rtol, Tensor) else rtol
    at = atol.unsqueeze(-1) if isinstance(atol, Tensor) else atol
    tol = ember.maximum(ember.as_tensor(at, dtype=s.dtype, device=s.device), rt * smax)
    return (s > tol).sum(-1)


@composite("linalg_lstsq", method=False, function=False)
def lstsq(A: Tensor, B: Tensor, rcond: float | None = None, *, driver: str | None = None) -> Any:
    """Least-squares solution of ``A X = B`` (minimum norm), with ``(solution, residuals, rank,
    singular_values)`` filled as torch's CPU drivers do: 'gelsy' (default) gives the rank,
    'gelsd'/'gelss' also the singular values, and residuals come for tall full-rank input
    with drivers other than 'gelsy'."""
    import ember
    name = "torch.linalg.lstsq"
    check_matrix("linalg.lstsq", A, square=False)
    check(isinstance(B, Tensor) and B.ndim >= 1, name, "input.dim() must be greater or equal "
                                                       "to other.dim() and (input.dim() - "
                                                       "other.dim()) <= 1")
    same_dtype("linalg.lstsq", A, B, "input", "other")
    driver = "gelsy" if driver is None else driver
    check(driver in ("gels", "gelsy", "gelsd", "gelss"), name,
          "parameter `driver` should be one of (gels, gelsy, gelsd, gelss)")
    vec = B.ndim == A.ndim - 1
    Bm = B.unsqueeze(-1) if vec else B
    m, n = A.shape[-2:]
    check(Bm.shape[-2] == m, name, f"input.size(-2) should match other.size(-2). Got "
                                   f"{m} and {Bm.shape[-2]}")
    eps = _dt.finfo(A.dtype).eps
    rc = eps * max(m, n) if rcond is None or rcond < 0 else rcond
    P = _op("linalg_pinv")(A, rtol=rc)
    X = P.matmul(Bm)
    batch = tuple(A.shape[:-2])
    rdt = _dt.float32 if A.dtype in (_dt.float32, _dt.complex64) else _dt.float64
    empty_r = ember.empty(0, dtype=rdt, device=A.device)
    with ember.no_grad():
        s = svdvals(A) if A.numel() else ember.zeros(batch + (min(m, n),), dtype=rdt)
        rank = (s > rc * s[..., :1]).sum(-1) if min(m, n) else ember.zeros(batch, dtype=_dt.int64)
    resid = empty_r
    if driver != "gelsy" and m > n and bool((rank == n).all()):
        r = A.matmul(X) - Bm
        resid = (r.abs() ** 2).sum(-2) if r.is_complex() else (r * r).sum(-2)
        if vec:
            resid = resid.squeeze(-1)
    rank_out = rank if driver != "gels" else ember.empty(0, dtype=_dt.int64, device=A.device)
    sv = s if driver in ("gelsd", "gelss") else empty_r
    return lstsq_out(X.squeeze(-1) if vec else X, resid, rank_out, sv)


# ---------------------------------------------------------------------- products and powers
@composite("linalg_matrix_power", method=False, function=False)
def matrix_power(A: Tensor, n: int) -> Tensor:
    """``A`` to the integer power ``n`` (``n < 0`` inverts first; ``n == 0`` is the identity)."""
    name = "linalg.matrix_power"
    check(isinstance(A, Tensor) and A.ndim >= 2, name,
          "The input tensor A must have at least 2 dimensions.")
    check(A.shape[-1] == A.shape[-2], name, f"A must be batches of square matrices, but they "
                                            f"are {A.shape[-2]} by {A.shape[-1]} matrices")
    if n == 0:
        # the identity, but connected to A (torch reports a zero gradient, not None)
        import ember
        keep = ember.ones(tuple(A.shape), dtype=_dt.bool, device=A.device)
        return ember.where(keep, eye_like(A.shape[-1], A).expand(*A.shape), A)
    if n < 0:
        A = inv(A)
        n = -n
    result = None
    base = A
    while n:
        if n & 1:
            result = base if result is None else result.matmul(base)
        n >>= 1
        if n:
            base = base.matmul(base)
    return result


@composite("matrix_power")
def _matrix_power_top(input: Tensor, n: int) -> Tensor:
    """Alias of :func:`ember.linalg.matrix_power`."""
    return matrix_power(input, n)


@composite("linalg_matrix_exp_", method=False, function=False)
def matrix_exp(A: Tensor) -> Tensor:
    """Matrix exponential."""
    return _op("linalg_matrix_exp")(A)


@composite("matrix_exp")
def _matrix_exp_top(input: Tensor) -> Tensor:
    """Alias of :func:`ember.linalg.matrix_exp`."""
    return _op("linalg_matrix_exp")(input)


@composite("linalg_multi_dot", method=False, function=False)
def multi_dot(tensors: Sequence[Tensor], *, out: Any = None) -> Tensor:
    """Product of a chain of matrices (first/last may be vectors), in the cheapest order."""
    ts = list(tensors)
    check(len(ts) >= 2, "multi_dot", f"expected at least 2 tensors but got {len(ts)}")
    for i, t in enumerate(ts):
        ok = t.ndim == 2 or (t.ndim == 1 and i in (0, len(ts) - 1))
        check(ok, "multi_dot", f"tensor {i} must be 2D but got {t.ndim}D" if 0 < i < len(ts) - 1
              else f"the {'first' if i == 0 else 'last'} tensor must be 1D or 2D but got "
                   f"{t.ndim}D")
    first_vec, last_vec = ts[0].ndim == 1, ts[-1].ndim == 1
    if first_vec:
        ts[0] = ts[0].unsqueeze(0)
    if last_vec:
        ts[-1] = ts[-1].unsqueeze(-1)
    for i in range(len(ts) - 1):
        check(ts[i].shape[1] == ts[i + 1].shape[0], "multi_dot",
              f"tensors {i} and {i + 1} with shapes {tuple(ts[i].shape)} and "
              f"{tuple(ts[i + 1].shape)} cannot be multiplied")
    out_ = _chain(ts, _chain_order([t.shape[0] for t in ts] + [ts[-1].shape[1]]), 0,
                  len(ts) - 1)
    if first_vec:
        out_ = out_.squeeze(0)
    if last_vec:
        out_ = out_.squeeze(-1)
    return out_


def _chain_order(p: list) -> list:
    """Matrix-chain dynamic programme: split points minimising scalar multiplications."""
    n = len(p) - 1
    cost = [[0] * n for _ in range(n)]
    split = [[0] * n for _ in range(n)]
    for length in range(1, n):
        for i in range(n - length):
            j = i + length
            cost[i][j] = None
            for k in range(i, j):
                c = cost[i][k] + cost[k + 1][j] + p[i] * p[k + 1] * p[j + 1]
                if cost[i][j] is None or c < cost[i][j]:
                    cost[i][j], split[i][j] = c, k
    return split


def _chain(ts: list, split: list, i: int, j: int) -> Tensor:
    if i == j:
        return ts[i]
    k = split[i][j]
    return _chain(ts, split, i, k).matmul(_chain(ts, split, k + 1, j))


@composite("chain_matmul", method=False)
def chain_matmul(*matrices: Tensor, out: Any = None) -> Tensor:
    """Deprecated torch alias of :func:`ember.linalg.multi_dot`."""
    return multi_dot(matrices)


@composite("linalg_cross", method=False, function=False)
def cross(input: Tensor, other: Tensor, *, dim: int = -1, out: Any = None) -> Tensor:
    """Cross product of 3-vectors along ``dim`` (inputs broadcast)."""
    import ember
    name = "linalg.cross"
    check(input.ndim == other.ndim, name, "inputs must have the same number of dimensions.")
    shape = M.broadcast_shapes(name, tuple(input.shape), tuple(other.shape))
    input, other = input.expand(*shape), other.expand(*shape)
    d = M.wrap_dim(name, dim, input.ndim)
    check(input.shape[d] == 3 and other.shape[d] == 3, name,
          f"inputs dimension {dim} must have length 3. Got {input.shape[d]} and "
          f"{other.shape[d]}")
    a = [input.narrow(d, i, 1) for i in range(3)]
    b = [other.narrow(d, i, 1) for i in range(3)]
    return ember.cat([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                      a[0] * b[1] - a[1] * b[0]], d)


@composite("cross")
def _cross_top(input: Tensor, other: Tensor, dim: int | None = None, *, out: Any = None) -> Tensor:
    """torch.cross: with ``dim=None`` the first dimension of size 3 is used."""
    if dim is None:
        shape = M.broadcast_shapes("cross", tuple(input.shape), tuple(other.shape))
        dim = next((i for i, s in enumerate(shape) if s == 3), -1)
    return cross(input, other, dim=dim)


@composite("linalg_vecdot", method=False, function=False)
def vecdot(x: Tensor, y: Tensor, *, dim: int = -1, out: Any = None) -> Tensor:
    """``sum(conj(x) * y, dim)`` with broadcasting."""
    for t in (x, y):
        check(t.dtype.category >= 2, "linalg.vecdot", f"Expected a floating point or complex "
                                                      f"tensor as input. Got {_torch_name(t.dtype)}")
    return ((x.conj() if x.is_complex() else x) * y).sum(dim)


@composite("linalg_householder_product", method=False, function=False)
def householder_product(A: Tensor, tau: Tensor, *, out: Any = None) -> Tensor:
    """The first ``n`` columns of ``H_1 ... H_k`` with ``H_i = I - tau_i v_i v_i^H`` and ``v_i``
    the ``i``-th column of ``A`` below the diagonal, with a unit ``i``-th entry (LAPACK orgqr)."""
    name = "torch.linalg.householder_product"
    check(isinstance(A, Tensor) and A.ndim >= 2, name,
          "input must have at least 2 dimensions.")
    check(A.shape[-2] >= A.shape[-1], name, "input.shape[-2] must be greater than or equal to "
                                            "input.shape[-1]")
    check(A.shape[-1] >= tau.shape[-1], name, "input.shape[-1] must be greater than or equal "
                                              "to tau.shape[-1]")
    check(tau.ndim == A.ndim - 1, name, f"Expected tau to have one dimension less than input, "
                                        f"but got tau.ndim equal to {tau.ndim} and input.ndim is "
                                        f"equal to {A.ndim}")
    same_dtype(name, A, tau, "input", "tau")
    import ember
    m, n = A.shape[-2:]
    k = tau.shape[-1]
    rows = ember.arange(m, device=A.device)
    Q = eye_like(m, A, n).expand(*A.shape[:-2], m, n)
    for i in range(k - 1, -1, -1):
        below = (rows > i).to(A.dtype)
        v = A[..., :, i] * below + (rows == i).to(A.dtype)
        vh = v.conj() if v.is_complex() else v
        Q = Q - tau[..., i, None, None] * v.unsqueeze(-1) * (vh.unsqueeze(-2).matmul(Q))
    return Q


# ---------------------------------------------------------------------- tensor solves
@composite("linalg_tensorinv", method=False, function=False)
def tensorinv(A: Tensor, ind: int = 2, *, out: Any = None) -> Tensor:
    """The tensor inverse of ``A`` w.r.t. ``tensordot`` over ``ind`` dims."""
    name = "linalg.tensorinv"
    check(ind > 0, name, f"Expected a strictly positive integer for 'ind', but got {ind}")
    outer = tuple(A.shape[:ind])
    inner = tuple(A.shape[ind:])
    p, q = math.prod(outer), math.prod(inner)
    check(p == q, name, f"Expected self to satisfy the requirement prod(self.shape[ind:]) == "
                        f"prod(self.shape[:ind]), but got {q} != {p}")
    return inv(A.reshape(p, q)).reshape(inner + outer)


@composite("linalg_tensorsolve", method=False, function=False)
def tensorsolve(A: Tensor, B: Tensor, dims: Any = None, *, out: Any = None) -> Tensor:
    """Solve ``tensordot(A, X, X.ndim) = B`` for ``X``."""
    name = "linalg.tensorsolve"
    if dims is not None:
        nd = A.ndim
        dd = [d % nd for d in dims]
        rest = [d for d in range(nd) if d not in dd]
        A = A.permute(*(rest + dd))
    res_shape = tuple(A.shape[B.ndim:])
    p, q = B.numel(), math.prod(res_shape)
    check(p == q, name, f"Expected self to satisfy the requirement "
                        f"prod(self.shape[other.ndim:]) == prod(self.shape[:other.ndim]), but "
                        f"got {q} != {p}")
    return solve(A.reshape(p, q), B.reshape(p)).reshape(res_shape)


# ---------------------------------------------------------------------- aliases
@composite("linalg_diagonal", method=False, function=False)
def diagonal(A: Tensor, *, offset: int = 0, dim1: int = -2, dim2: int = -1) -> Tensor:
    """Alias of ``ember.diagonal`` with matrix-friendly defaults."""
    return A.diagonal(offset, dim1, dim2)


@composite("linalg_matmul", method=False, function=False)
def matmul(input: Tensor, other: Tensor, *, out: Any = None) -> Tensor:
    """Alias of ``ember.matmul``."""
    return input.matmul(other)


@composite("linalg_vander", method=False, function=False)
def vander(x: Tensor, *, N: int | None = None) -> Tensor:
    """Vandermonde matrix with increasing powers ``x^0 ... x^(N-1)`` along the last dim."""
    import ember
    check(x.ndim >= 1, "linalg.vander", "x must have at least one dimension.")
    N = x.shape[-1] if N is None else N
    check(N >= 0, "linalg.vander", "N must be non-negative.")
    if N == 0:
        return x.unsqueeze(-1)[..., :0]
    cols = [ember.ones_like(x)]
    for _ in range(1, N):
        cols.append(cols[-1] * x)
    return ember.stack(cols, -1)


LINALG_NAMES = {
    "solve_triangular": solve_triangular, "solve": solve, "solve_ex": solve_ex, "inv": inv,
    "inv_ex": inv_ex, "det": det, "slogdet": slogdet, "cholesky": cholesky,
    "cholesky_ex": cholesky_ex, "qr": qr, "svd": svd, "svdvals": svdvals, "eigh": eigh,
    "eigvalsh": eigvalsh, "eig": eig, "eigvals": eigvals, "lu_factor": lu_factor,
    "lu_factor_ex": lu_factor_ex, "lu": lu, "lu_solve": lu_solve, "vector_norm": vector_norm,
    "matrix_norm": matrix_norm, "norm": norm, "cond": cond, "pinv": pinv,
    "matrix_rank": matrix_rank, "lstsq": lstsq, "matrix_power": matrix_power,
    "matrix_exp": matrix_exp, "multi_dot": multi_dot, "cross": cross, "vecdot": vecdot,
    "householder_product": householder_product, "tensorinv": tensorinv,
    "tensorsolve": tensorsolve, "diagonal": diagonal, "matmul": matmul, "vander": vander,
    "LinAlgError": LinAlgError,
}
