"""Records for ember.linalg and torch's top-level linear-algebra aliases (issue: ops breadth,
part 2). Decompositions whose factors are unique only up to signs/phases are checked through
gauge-invariant functions of the factors (projectors, products), as torch's OpInfos do."""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sl

from opdb import ErrorInput, OpEntry, Sample

ENTRIES: list = []
F = ("float32", "float64")


def add(*entries: OpEntry) -> None:
    ENTRIES.extend(entries)


def _wc(rng, *shape):
    """Well-conditioned square matrices: random plus a multiple of the identity."""
    a = rng.uniform(-1, 1, shape)
    return a + 3 * np.eye(shape[-1])


def _rect(rng, *shape):
    return rng.uniform(-1, 1, shape)


def _spd(m, a):
    n = a.shape[-1]
    return a @ a.mT + n * m.eye(n, dtype=a.dtype)


def _sym(m, a):
    return a + a.mT


def _sq_samples(rng):
    return [Sample((_wc(rng, 3, 3),)), Sample((_wc(rng, 2, 4, 4),)),
            Sample((_wc(rng, 3, 3),), noncontig=True), Sample((_wc(rng, 1, 1),))]


_nonsq = ErrorInput(Sample((np.ones((2, 3)),)), RuntimeError, "square")
_one_d = ErrorInput(Sample((np.ones(3),)), RuntimeError, "at least 2 dimensions")
_singular = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]])

add(
    OpEntry("linalg.inv", lambda m, a: m.linalg.inv(a), _sq_samples, ref=np.linalg.inv,
            dtypes=F, covers=("linalg_inv_ex", "linalg_inv", "inverse", "linalg_inv_ex_"),
            errors=[_nonsq, _one_d,
                    ErrorInput(Sample((np.array([[1.0, 2.0], [2.0, 4.0]]),)), RuntimeError,
                               r"linalg.inv: The diagonal element 2 is zero, the inversion could "
                               r"not be completed because the input matrix is singular.")]),
    OpEntry("inverse", lambda m, a: m.inverse(a), _sq_samples, ref=np.linalg.inv, dtypes=F,
            gradgrad=False),
    OpEntry("linalg.inv_ex", lambda m, a: m.linalg.inv_ex(a), _sq_samples,
            ref=lambda a: (np.linalg.inv(a), np.zeros(a.shape[:-2])), dtypes=F, gradgrad=False),
    # the singular sample's gradient is tested against its cofactor matrix in
    # test_linalg_misc (torch's first-order value there depends on its LAPACK)
    OpEntry("linalg.det", lambda m, a: m.linalg.det(a),
            lambda rng: _sq_samples(rng) + [Sample((_singular,), name="singular"),
                                            Sample((np.zeros((0, 0)),), name="0x0")],
            ref=np.linalg.det, dtypes=F, covers=("linalg_det", "linalg_det_", "det"), errors=[_nonsq],
            grad_samples=lambda rng: _sq_samples(rng) + [Sample((np.zeros((0, 0)),),
                                                                name="0x0")]),
    OpEntry("det", lambda m, a: m.det(a), _sq_samples, ref=np.linalg.det, dtypes=F,
            gradgrad=False),
    OpEntry("linalg.slogdet", lambda m, a: m.linalg.slogdet(a), _sq_samples,
            ref=lambda a: tuple(np.linalg.slogdet(a)), dtypes=F,
            covers=("linalg_slogdet", "linalg_slogdet_", "slogdet")),
    OpEntry("logdet", lambda m, a: m.logdet(a),
            lambda rng: _sq_samples(rng) + [Sample((-_wc(rng, 3, 3),), name="negative det")],
            ref=lambda a: np.log(np.linalg.det(a)), dtypes=F, grad_samples=_sq_samples),
)


def _solve_samples(rng):
    return [Sample((_wc(rng, 3, 3), _rect(rng, 3, 2))),
            Sample((_wc(rng, 3, 3), _rect(rng, 3)), name="vector"),
            Sample((_wc(rng, 2, 3, 3), _rect(rng, 2, 3)), name="batched vector"),
            Sample((_wc(rng, 2, 3, 3), _rect(rng, 3, 4)), name="broadcast B"),
            Sample((_wc(rng, 3, 3), _rect(rng, 2, 3)), {"left": False}, name="right"),
            Sample((_wc(rng, 3, 3), _rect(rng, 3, 2)), noncontig=True)]


def _np_solve(a, b, left=True):
    if not left:
        return np.swapaxes(np.linalg.solve(np.swapaxes(a, -1, -2), np.swapaxes(b, -1, -2)), -1, -2)
    if b.ndim == 1 or (b.ndim == a.ndim - 1 and b.shape == a.shape[:-1]):
        return np.linalg.solve(a, b[..., None])[..., 0]
    return np.linalg.solve(a, b)


add(
    OpEntry("linalg.solve", lambda m, a, b, **k: m.linalg.solve(a, b, **k), _solve_samples,
            ref=_np_solve, dtypes=F, covers=("_linalg_solve", "linalg_solve"),
            errors=[ErrorInput(Sample((np.ones((2, 3)), np.ones((2, 1)))), RuntimeError, "square"),
                    ErrorInput(Sample((_singular, np.ones((3, 1)))), RuntimeError, "singular"),
                    ErrorInput(Sample((np.eye(3), np.ones((4, 1)))), RuntimeError,
                               "Incompatible shapes")]),
    OpEntry("linalg.solve_ex", lambda m, a, b: m.linalg.solve_ex(a, b),
            lambda rng: _solve_samples(rng)[:2], ref=lambda a, b: (_np_solve(a, b),
                                                                   np.zeros(a.shape[:-2])),
            dtypes=F, gradgrad=False, covers=("linalg_solve_ex",)),
)


def _tri_samples(rng):
    return [Sample((_wc(rng, 3, 3), _rect(rng, 3, 2)), {"upper": True}),
            Sample((_wc(rng, 3, 3), _rect(rng, 3, 2)), {"upper": False}),
            Sample((_wc(rng, 2, 3, 3), _rect(rng, 2, 3)), {"upper": True, "left": False}),
            Sample((_wc(rng, 3, 3), _rect(rng, 3, 2)), {"upper": False, "unitriangular": True})]


def _np_tri(a, b, upper, left=True, unitriangular=False):
    t = np.triu(a) if upper else np.tril(a)
    if unitriangular:
        t = t - np.eye(a.shape[-1]) * np.diagonal(t, 0, -2, -1)[..., None, :] + np.eye(a.shape[-1])
    return np.linalg.solve(t, b) if left else np.swapaxes(
        np.linalg.solve(np.swapaxes(t, -1, -2), np.swapaxes(b, -1, -2)), -1, -2)


add(
    OpEntry("linalg.solve_triangular", lambda m, a, b, **k: m.linalg.solve_triangular(a, b, **k),
            _tri_samples, ref=_np_tri, dtypes=F, covers=("linalg_solve_triangular",),
            errors=[ErrorInput(Sample((np.eye(3), np.ones(3)), {"upper": True}), RuntimeError,
                               "at least 2 dimensions")]),
    OpEntry("triangular_solve", lambda m, b, a, **k: m.triangular_solve(b, a, **k),
            lambda rng: [Sample((_rect(rng, 3, 2), _wc(rng, 3, 3))),
                         Sample((_rect(rng, 3, 2), _wc(rng, 3, 3)), {"upper": False,
                                                                     "transpose": True})],
            ref=lambda b, a, upper=True, transpose=False: (
                _np_tri(a.T if transpose else a, b, upper != transpose), a), dtypes=F),
)


# ---------------------------------------------------------------- decompositions
def _chol_samples(rng):
    return [Sample((_rect(rng, 3, 3),)), Sample((_rect(rng, 2, 4, 4),)),
            Sample((_rect(rng, 3, 3),), {"upper": True})]


def _np_chol(a, upper=False):
    L = np.linalg.cholesky(a @ np.swapaxes(a, -1, -2) + a.shape[-1] * np.eye(a.shape[-1]))
    return np.swapaxes(L, -1, -2) if upper else L


_not_pd = ErrorInput(Sample((np.array([[1.0, 2.0], [2.0, 1.0]]),)), RuntimeError,
                     "leading minor of order 2 is not positive-definite")
add(
    OpEntry("linalg.cholesky", lambda m, a, **k: m.linalg.cholesky(_spd(m, a), **k),
            _chol_samples, ref=_np_chol, dtypes=F,
            covers=("linalg_cholesky_ex", "linalg_cholesky", "linalg_cholesky_ex_")),
    OpEntry("linalg.cholesky_errors", lambda m, a: m.linalg.cholesky(a), lambda rng: [],
            errors=[_not_pd, _nonsq]),
    OpEntry("linalg.cholesky_ex", lambda m, a: m.linalg.cholesky_ex(_spd(m, a)),
            lambda rng: _chol_samples(rng)[:2], ref=lambda a: (_np_chol(a), np.zeros(a.shape[:-2])),
            dtypes=F, gradgrad=False),
    OpEntry("cholesky", lambda m, a, **k: m.cholesky(_spd(m, a), **k), _chol_samples,
            ref=_np_chol, dtypes=F, gradgrad=False),
    OpEntry("cholesky_solve", lambda m, b, a, **k: m.cholesky_solve(
                b, m.linalg.cholesky(_spd(m, a), upper=k.get("upper", False)), **k),
            lambda rng: [Sample((_rect(rng, 3, 2), _rect(rng, 3, 3))),
                         Sample((_rect(rng, 2, 3, 2), _rect(rng, 3, 3)), {"upper": True})],
            ref=lambda b, a, upper=False: np.linalg.solve(
                a @ a.T + 3 * np.eye(3), b), dtypes=F),
    OpEntry("cholesky_inverse", lambda m, a, **k: m.cholesky_inverse(
                m.linalg.cholesky(_spd(m, a), upper=k.get("upper", False)), **k),
            lambda rng: [Sample((_rect(rng, 3, 3),)), Sample((_rect(rng, 3, 3),), {"upper": True})],
            ref=lambda a, upper=False: np.linalg.inv(a @ a.T + 3 * np.eye(3)), dtypes=F),
)


def _qr_samples(rng):
    return [Sample((_rect(rng, 4, 3),)), Sample((_rect(rng, 3, 4),)),
            Sample((_rect(rng, 2, 4, 3),), {"mode": "complete"}, name="complete tall"),
            Sample((_rect(rng, 3, 5),), {"mode": "complete"}),
            Sample((_rect(rng, 3, 3),), noncontig=True)]


add(
    OpEntry("linalg.qr", lambda m, a, **k: m.linalg.qr(a, **k), _qr_samples,
            ref=lambda a, mode="reduced": tuple(np.linalg.qr(a, mode=mode)), dtypes=F,
            grad_samples=lambda rng: [s for s in _qr_samples(rng) if s.name != "complete tall"],
            covers=("linalg_qr", "linalg_qr_"),
            errors=[ErrorInput(Sample((np.ones((3, 3)),), {"mode": "x"}), RuntimeError,
                               "unrecognized mode")]),
    OpEntry("linalg.qr_r", lambda m, a: m.linalg.qr(a, mode="r")[1],
            lambda rng: [Sample((_rect(rng, 4, 3),))],
            ref=lambda a: np.linalg.qr(a, mode="r"), dtypes=F, grad=False),
    OpEntry("qr", lambda m, a, **k: m.qr(a, **k),
            lambda rng: [Sample((_rect(rng, 4, 3),)), Sample((_rect(rng, 3, 4),), {"some": False})],
            ref=lambda a, some=True: tuple(np.linalg.qr(a, mode="reduced" if some else "complete")),
            dtypes=F, gradgrad=False),
)


def _svd_inv(m, a, full=False):
    """Gauge-invariant functions of the SVD: S, U diag(S) Vh (= A), and U Vh."""
    U, S, Vh = m.linalg.svd(a, full_matrices=full)
    k = S.shape[-1]
    return S, U[..., :, :k] @ Vh[..., :k, :], (U[..., :, :k] * S.unsqueeze(-2)) @ Vh[..., :k, :]


def _np_svd_inv(a, full=False):
    U, S, Vh = np.linalg.svd(a, full_matrices=False)
    return S, U @ Vh, a


def _svd_samples(rng):
    return [Sample((_rect(rng, 4, 3),)), Sample((_rect(rng, 3, 5),)),
            Sample((_rect(rng, 2, 3, 3),)), Sample((_rect(rng, 4, 3),), {"full": True})]


add(
    OpEntry("linalg.svd", _svd_inv, _svd_samples, ref=_np_svd_inv, dtypes=F,
            covers=("linalg_svd", "linalg_svd_"), atol=1e-6,
            grad_samples=lambda rng: [Sample((_rect(rng, 3, 2),)), Sample((_rect(rng, 2, 3),)),
                                      Sample((_rect(rng, 3, 2),), {"full": True})]),
    OpEntry("linalg.svdvals", lambda m, a: m.linalg.svdvals(a), lambda rng: _svd_samples(rng)[:3],
            ref=lambda a: np.linalg.svd(a, compute_uv=False), dtypes=F,
            covers=("linalg_svdvals",)),
    OpEntry("svd", lambda m, a, **k: (lambda r: (r.S, r.U @ r.V.mT))(m.svd(a, **k)),
            lambda rng: [Sample((_rect(rng, 4, 3),)), Sample((_rect(rng, 3, 3),))],
            ref=lambda a: (np.linalg.svd(a, compute_uv=False),
                           (lambda u, s, vh: u @ vh)(*np.linalg.svd(a, full_matrices=False))),
            dtypes=F, gradgrad=False),
)


def _eigh_inv(m, a, **k):
    L, V = m.linalg.eigh(_sym(m, a), **k)
    return L, V * V, (V * L.exp().unsqueeze(-2)) @ V.mT


def _np_eigh_inv(a, UPLO="L"):
    L, V = np.linalg.eigh(a + np.swapaxes(a, -1, -2))
    return L, V * V, (V * np.exp(L)[..., None, :]) @ np.swapaxes(V, -1, -2)


add(
    OpEntry("linalg.eigh", _eigh_inv,
            lambda rng: [Sample((_rect(rng, 3, 3),)), Sample((_rect(rng, 2, 4, 4),)),
                         Sample((_rect(rng, 3, 3),), {"UPLO": "U"})],
            ref=_np_eigh_inv, dtypes=F, covers=("linalg_eigh", "linalg_eigh_"),
            grad_samples=lambda rng: [Sample((_rect(rng, 3, 3),)),
                                      Sample((_rect(rng, 3, 3),), {"UPLO": "U"})]),
    OpEntry("linalg.eigvalsh", lambda m, a: m.linalg.eigvalsh(_sym(m, a)),
            lambda rng: [Sample((_rect(rng, 3, 3),)), Sample((_rect(rng, 2, 4, 4),))],
            ref=lambda a: np.linalg.eigvalsh(a + np.swapaxes(a, -1, -2)), dtypes=F,
            covers=("linalg_eigvalsh",)),
)


def _eig_samples(rng):
    # real spectrum with distinct eigenvalues: similar to a diagonal matrix
    out = []
    for shape in ((3, 3), (2, 3, 3)):
        P = _wc(rng, *shape)
        D = np.eye(shape[-1]) * np.array([1.0, 2.5, -1.5])
        out.append(Sample((P @ D @ np.linalg.inv(P),)))
    return out


add(
    OpEntry("linalg.eigvals", lambda m, a: m.linalg.eigvals(a).abs(), _eig_samples,
            ref=lambda a: np.abs(np.linalg.eigvals(a)), dtypes=F, atol=1e-5, rtol=1e-5,
            covers=("linalg_eigvals",), gradgrad=False),
    OpEntry("linalg.eig", lambda m, a: (lambda r: (r[0].abs(), (r[1] * r[1].conj()).abs()))(
                m.linalg.eig(a)), _eig_samples,
            ref=lambda a: (lambda w, v: (np.abs(w), np.abs(v * v.conj())))(*np.linalg.eig(a)),
            dtypes=F, atol=1e-5, rtol=1e-5, covers=("linalg_eig", "linalg_eig_"),
            gradgrad=False),
)


# ---------------------------------------------------------------- LU
def _lu_samples(rng):
    return [Sample((_rect(rng, 3, 3),)), Sample((_rect(rng, 2, 4, 4),)),
            Sample((_rect(rng, 3, 5),)), Sample((_rect(rng, 5, 3),))]


def _lu_grad_samples(rng):  # square, wide and tall, kept small for gradgradcheck
    return [Sample((_rect(rng, 3, 3),)), Sample((_rect(rng, 2, 3),)), Sample((_rect(rng, 3, 2),))]


def _np_lu_factor(a):
    LU, piv = sl.lu_factor(a)
    return LU, piv + 1


def _np_lu(a):
    return sl.lu(a)


add(
    OpEntry("linalg.lu_factor", lambda m, a: m.linalg.lu_factor(a), _lu_samples,
            ref=_np_lu_factor, dtypes=F,
            covers=("linalg_lu_factor", "linalg_lu_factor_ex", "linalg_lu_factor_ex_"),
            grad_samples=_lu_grad_samples,
            errors=[ErrorInput(Sample((_singular,)), RuntimeError, "singular")]),
    OpEntry("linalg.lu_factor_ex", lambda m, a: m.linalg.lu_factor_ex(a),
            lambda rng: _lu_samples(rng)[:1], dtypes=F, gradgrad=False),
    OpEntry("linalg.lu", lambda m, a: m.linalg.lu(a), _lu_samples,
            ref=_np_lu, dtypes=F,
            covers=("linalg_lu", "lu_unpack"), grad_samples=_lu_grad_samples),
    OpEntry("lu", lambda m, a: m.lu(a), lambda rng: _lu_samples(rng)[:1], dtypes=F),
    OpEntry("linalg.lu_solve", lambda m, a, b, **k: m.linalg.lu_solve(*m.linalg.lu_factor(a), b,
                                                                      **k),
            lambda rng: [Sample((_wc(rng, 3, 3), _rect(rng, 3, 2))),
                         Sample((_wc(rng, 3, 3), _rect(rng, 3, 2)), {"adjoint": True}),
                         Sample((_wc(rng, 3, 3), _rect(rng, 2, 3)), {"left": False}),
                         Sample((_wc(rng, 3, 3), _rect(rng, 2, 3)), {"left": False,
                                                                     "adjoint": True})],
            ref=lambda a, b, left=True, adjoint=False: _np_solve(a.T if adjoint else a, b, left),
            dtypes=F, covers=("linalg_lu_solve",),
            grad_samples=lambda rng: [Sample((_wc(rng, 2, 2), _rect(rng, 2, 1)), {"adjoint": True}),
                                      Sample((_wc(rng, 2, 2), _rect(rng, 1, 2)), {"left": False})]),
    OpEntry("lu_solve", lambda m, b, a: m.lu_solve(b, *m.linalg.lu_factor(a)),
            lambda rng: [Sample((_rect(rng, 3, 2), _wc(rng, 3, 3)))],
            ref=lambda b, a: np.linalg.solve(a, b), dtypes=F, gradgrad=False),
)


# ---------------------------------------------------------------- functions of matrices
add(
    OpEntry("linalg.matrix_exp", lambda m, a: m.linalg.matrix_exp(a),
            lambda rng: [Sample((_rect(rng, 3, 3),)), Sample((_rect(rng, 2, 3, 3) * 4,)),
                         Sample((_rect(rng, 1, 1),))],
            ref=sl.expm, dtypes=F, covers=("linalg_matrix_exp", "linalg_matrix_exp_",
                                           "matrix_exp")),
    OpEntry("linalg.matrix_power", lambda m, a, n: m.linalg.matrix_power(a, n),
            lambda rng: [Sample((_wc(rng, 3, 3) / 3, n)) for n in (0, 1, 3, -2)]
            + [Sample((_wc(rng, 2, 3, 3) / 3, 2))],
            ref=lambda a, n: np.linalg.matrix_power(a, n), dtypes=F + ("int64",),
            covers=("linalg_matrix_power", "matrix_power")),
    OpEntry("linalg.pinv", lambda m, a, **k: m.linalg.pinv(_sym(m, a) if k.get("hermitian")
                                                           else a, **k),
            lambda rng: [Sample((_rect(rng, 4, 3),)), Sample((_rect(rng, 3, 4),)),
                         Sample((_rect(rng, 2, 3, 3),)),
                         Sample((_rect(rng, 3, 3),), {"hermitian": True}),
                         Sample((np.outer([1.0, 2.0, 3.0], [1.0, -1.0, 0.5]),), name="rank 1")],
            ref=lambda a, hermitian=False: np.linalg.pinv(a + a.T if hermitian else a,
                                                          hermitian=hermitian),
            dtypes=F, covers=("linalg_pinv", "linalg_pinv_")),
    OpEntry("pinverse", lambda m, a: m.pinverse(a), lambda rng: [Sample((_rect(rng, 4, 3),))],
            ref=np.linalg.pinv, dtypes=F, gradgrad=False),
    OpEntry("linalg.matrix_rank", lambda m, a, **k: m.linalg.matrix_rank(a, **k),
            lambda rng: [Sample((_rect(rng, 4, 3),)),
                         Sample((np.outer([1.0, 2.0, 3.0], [1.0, -1.0, 0.5]),)),
                         Sample((_rect(rng, 2, 3, 3),), {"atol": 0.5}),
                         Sample((_rect(rng, 3, 3) + _rect(rng, 3, 3).T,), {"hermitian": True})],
            ref=lambda a, **k: np.linalg.matrix_rank(a, **({"tol": k["atol"]} if "atol" in k
                                                            else {})), dtypes=F, grad=False,
            covers=("linalg_matrix_rank",)),
    # rank and singular_values are not differentiable (torch): checked in test_linalg_misc
    OpEntry("linalg.lstsq", lambda m, a, b, **k: m.linalg.lstsq(a, b, **k)[:2],
            lambda rng: [Sample((_rect(rng, 5, 3), _rect(rng, 5, 2))),
                         Sample((_rect(rng, 5, 3), _rect(rng, 5, 2)), {"driver": "gelsd"}),
                         Sample((_rect(rng, 2, 5, 3), _rect(rng, 2, 5, 2)), {"driver": "gelss"}),
                         Sample((_rect(rng, 5, 3), _rect(rng, 5, 2)), {"driver": "gels"}),
                         Sample((_rect(rng, 3, 5), _rect(rng, 3, 2)), {"driver": "gelsd"})],
            dtypes=F, covers=("linalg_lstsq",), atol=1e-5, rtol=1e-5,
            grad_samples=lambda rng: [Sample((_rect(rng, 4, 2), _rect(rng, 4, 1))),
                                      Sample((_rect(rng, 4, 2), _rect(rng, 4, 1)),
                                             {"driver": "gelsd"}),
                                      Sample((_rect(rng, 2, 4), _rect(rng, 2, 1)))]),
)


# ---------------------------------------------------------------- products and norms
add(
    OpEntry("linalg.multi_dot", lambda m, ts: m.linalg.multi_dot(ts),
            lambda rng: [Sample(([_rect(rng, 2, 3), _rect(rng, 3, 4), _rect(rng, 4, 2)],)),
                         Sample(([_rect(rng, 3), _rect(rng, 3, 4), _rect(rng, 4)],)),
                         Sample(([_rect(rng, 3, 4), _rect(rng, 4, 5), _rect(rng, 5, 1),
                                  _rect(rng, 1, 6)],))],
            ref=lambda ts: np.linalg.multi_dot(ts), dtypes=F,
            covers=("linalg_multi_dot", "chain_matmul"),
            errors=[ErrorInput(Sample(([np.ones((2, 2))],)), RuntimeError, "at least 2")]),
    OpEntry("linalg.cross", lambda m, a, b, **k: m.linalg.cross(a, b, **k),
            lambda rng: [Sample((_rect(rng, 4, 3), _rect(rng, 4, 3))),
                         Sample((_rect(rng, 3, 2), _rect(rng, 3, 2)), {"dim": 0}),
                         Sample((_rect(rng, 2, 4, 3), _rect(rng, 1, 4, 3)))],
            ref=lambda a, b, dim=-1: np.cross(a, b, axis=dim), dtypes=F + ("int64",),
            covers=("linalg_cross",),
            errors=[ErrorInput(Sample((np.ones((2, 4, 3)), np.ones((4, 3)))), RuntimeError,
                               "same number of dimensions"),
                    ErrorInput(Sample((np.ones((2, 4)), np.ones((2, 4)))), RuntimeError,
                               "length 3")]),
    OpEntry("cross", lambda m, a, b, **k: m.cross(a, b, **k),
            lambda rng: [Sample((_rect(rng, 3, 2), _rect(rng, 3, 2))),
                         Sample((_rect(rng, 4, 3), _rect(rng, 4, 3)), {"dim": 1})],
            ref=lambda a, b, dim=None: np.cross(a, b, axis=0 if dim is None else dim), dtypes=F),
    OpEntry("linalg.vecdot", lambda m, a, b, **k: m.linalg.vecdot(a, b, **k),
            lambda rng: [Sample((_rect(rng, 3, 4), _rect(rng, 4))),
                         Sample((_rect(rng, 3, 4), _rect(rng, 3, 4)), {"dim": 0})],
            ref=lambda a, b, dim=-1: (a * b).sum(dim), dtypes=F, covers=("linalg_vecdot",),
            errors=[ErrorInput(Sample((np.ones(3, np.int64), np.ones(3, np.int64))),
                               RuntimeError, "floating point")]),
    OpEntry("linalg.householder_product",
            lambda m, a, t: m.linalg.householder_product(a, t),
            lambda rng: [Sample((_rect(rng, 4, 3), _rect(rng, 3))),
                         Sample((_rect(rng, 2, 4, 3), _rect(rng, 2, 2))),
                         Sample((_rect(rng, 3, 3), _rect(rng, 3)))],
            dtypes=F, covers=("linalg_householder_product",),
            grad_samples=lambda rng: [Sample((_rect(rng, 3, 2), _rect(rng, 2))),
                                      Sample((_rect(rng, 3, 3), _rect(rng, 2)))]),
    OpEntry("linalg.tensorinv", lambda m, a, **k: m.linalg.tensorinv(a, **k),
            lambda rng: [Sample((_wc(rng, 6, 6).reshape(6, 2, 3),), {"ind": 1}),
                         Sample((_wc(rng, 4, 4).reshape(2, 2, 2, 2),))],
            ref=lambda a, ind=2: np.linalg.tensorinv(a, ind), dtypes=F,
            covers=("linalg_tensorinv",)),
    OpEntry("linalg.tensorsolve", lambda m, a, b: m.linalg.tensorsolve(a, b),
            lambda rng: [Sample((_wc(rng, 6, 6).reshape(2, 3, 6), _rect(rng, 2, 3)))],
            ref=np.linalg.tensorsolve, dtypes=F, covers=("linalg_tensorsolve",)),
    OpEntry("linalg.diagonal", lambda m, a, **k: m.linalg.diagonal(a, **k),
            lambda rng: [Sample((_rect(rng, 2, 3, 3),)), Sample((_rect(rng, 3, 4),), {"offset": 1})],
            ref=lambda a, offset=0: np.diagonal(a, offset, -2, -1), dtypes=F,
            covers=("linalg_diagonal",)),
    OpEntry("linalg.matmul", lambda m, a, b: m.linalg.matmul(a, b),
            lambda rng: [Sample((_rect(rng, 2, 3), _rect(rng, 3, 4)))], ref=np.matmul, dtypes=F,
            covers=("linalg_matmul",)),
    OpEntry("linalg.vander", lambda m, x, **k: m.linalg.vander(x, **k),
            lambda rng: [Sample((_rect(rng, 4),)), Sample((_rect(rng, 2, 3),), {"N": 5})],
            ref=lambda x, N=None: np.stack([x ** i for i in range(N or x.shape[-1])], -1),
            dtypes=F, covers=("linalg_vander",)),
)


def _mnorm_samples(rng):
    out = [Sample((_rect(rng, 3, 4),), {"ord": o}) for o in ("fro", "nuc", 1, -1, 2, -2,
                                                               math.inf, -math.inf)]
    out.append(Sample((_rect(rng, 2, 3, 4),), {"ord": 1, "dim": (0, 2), "keepdim": True}))
    out.append(Sample((_rect(rng, 2, 3, 4),), {"ord": "nuc", "dim": (2, 0)}))
    return out


def _np_mnorm(a, ord="fro", dim=(-2, -1), keepdim=False):
    return np.linalg.norm(a, ord=ord, axis=dim, keepdims=keepdim)


add(
    OpEntry("linalg.matrix_norm", lambda m, a, **k: m.linalg.matrix_norm(a, **k),
            _mnorm_samples, ref=_np_mnorm, dtypes=F, covers=("linalg_matrix_norm",),
            errors=[ErrorInput(Sample((np.ones(3),)), RuntimeError, "at least 2 dimensions")]),
    OpEntry("linalg.norm", lambda m, a, *p, **k: m.linalg.norm(a, *p, **k),
            lambda rng: [Sample((_rect(rng, 3, 4),)), Sample((_rect(rng, 3, 4), "nuc")),
                         Sample((_rect(rng, 5),), {"ord": 3}),
                         Sample((_rect(rng, 3, 4),), {"dim": 1, "ord": math.inf}),
                         Sample((_rect(rng, 2, 3, 4),), {"dim": (1, 2), "ord": -1})],
            ref=lambda a, *p, ord=None, dim=None, keepdim=False: np.linalg.norm(
                a.reshape(-1) if dim is None and not p and ord is None else a,
                ord=p[0] if p else ord, axis=dim),
            dtypes=F, covers=("linalg_norm",)),
    OpEntry("linalg.vector_norm", lambda m, a, **k: m.linalg.vector_norm(a, **k),
            lambda rng: [Sample((_rect(rng, 3, 4),)), Sample((_rect(rng, 3, 4),), {"ord": 1,
                                                                                  "dim": 0})],
            ref=lambda a, ord=2, dim=None: np.linalg.norm(a.reshape(-1) if dim is None else a,
                                                          ord, dim),
            dtypes=F, covers=("linalg_vector_norm_",)),
    OpEntry("linalg.cond", lambda m, a, *p: m.linalg.cond(a, *p),
            lambda rng: [Sample((_wc(rng, 3, 3),)), Sample((_wc(rng, 3, 3), -2)),
                         Sample((_wc(rng, 2, 3, 3), "fro")), Sample((_wc(rng, 3, 3), 1)),
                         Sample((_rect(rng, 4, 3),))],
            ref=lambda a, *p: np.linalg.cond(a, *p), dtypes=F, covers=("linalg_cond",),
            # torch's own backward fails for p not in (None, 2, -2) (inv_ex output reused)
            grad_samples=lambda rng: [Sample((_wc(rng, 3, 3),)), Sample((_wc(rng, 3, 3), -2)),
                                      Sample((_rect(rng, 4, 3),))]),
)
