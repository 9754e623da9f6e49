"""ember.linalg beyond the op records: complex inputs (values and gradients vs torch), the
gauge checks of complex decompositions, lstsq's driver-dependent outputs, error types and
messages, return types, and the namespace against torch.linalg."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")


def _c(rng, *shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _both(arr, grad=False):
    e = ember.tensor(arr)
    t = torch.tensor(arr)
    if grad:
        e.requires_grad_(True)
        t.requires_grad_(True)
    return e, t


def _np(t):
    if isinstance(t, ember.Tensor):
        return t.detach().numpy()
    return t.detach().resolve_conj().resolve_neg().numpy()


def _close(a, b, tol=1e-8):
    np.testing.assert_allclose(_np(a), _np(b), rtol=tol, atol=tol)


# ---------------------------------------------------------------- complex values and grads
COMPLEX_FNS = {
    "inv": lambda m, a: m.linalg.inv(a),
    "det": lambda m, a: m.linalg.det(a),
    "slogdet": lambda m, a: m.linalg.slogdet(a).logabsdet,
    "solve": lambda m, a: m.linalg.solve(a, a[..., :1] * 2 + 1),
    "matrix_exp": lambda m, a: m.linalg.matrix_exp(a),
    "pinv": lambda m, a: m.linalg.pinv(a),
    "svdvals": lambda m, a: m.linalg.svdvals(a),
    "svd_proj": lambda m, a: (lambda r: r.U @ r.Vh)(m.linalg.svd(a, full_matrices=False)),
    "eigvalsh": lambda m, a: m.linalg.eigvalsh(a + a.mH),
    "eigh_proj": lambda m, a: (lambda r: (r.eigenvectors * r.eigenvalues.exp().unsqueeze(-2)) @
                               r.eigenvectors.mH)(m.linalg.eigh(a + a.mH)),
    "cholesky": lambda m, a: m.linalg.cholesky(a @ a.mH + 3 * m.eye(3, dtype=a.dtype)),
    "qr": lambda m, a: m.linalg.qr(a).R,
    "eigvals": lambda m, a: m.linalg.eigvals(a),
    "lu_factor": lambda m, a: m.linalg.lu_factor(a).LU,
    "matrix_norm_nuc": lambda m, a: m.linalg.matrix_norm(a, "nuc"),
    "vecdot": lambda m, a: m.linalg.vecdot(a, a * 2),
}


def _loss(m, out):
    """A real scalar that depends on every part of a (possibly complex) output, and is
    gauge-invariant where the function's output is."""
    if out.is_complex():
        return (out * out.conj()).sum().abs() + (out * (0.3 + 0.7j)).sum().abs()
    return (out * out).sum()


@pytest.mark.parametrize("name", sorted(COMPLEX_FNS))
def test_complex_values_and_gradients_match_torch(name):
    rng = np.random.default_rng(0)
    a = _c(rng, 2, 3, 3) + 3 * np.eye(3)
    fn = COMPLEX_FNS[name]
    e, t = _both(a, grad=True)
    eo, to = fn(ember, e), fn(torch, t)
    assert str(eo.dtype).split(".")[-1] == str(to.dtype).split(".")[-1]
    _close(eo, to, 1e-7)
    _loss(ember, eo).backward()
    _loss(torch, to).backward()
    _close(e.grad, t.grad, 1e-6)


def test_complex_svd_phase_dependent_loss_raises_like_torch():
    rng = np.random.default_rng(1)
    a = _c(rng, 3, 3)
    for m in (ember, torch):
        x = m.tensor(a, requires_grad=True)
        U = m.linalg.svd(x).U
        loss = (U[0, 0] * (1 + 0j)).abs() + (U * (0.5 + 2j)).sum().abs()
        with pytest.raises(RuntimeError, match="e\\^\\{i phi\\}"):
            loss.backward()


def test_complex_eigh_phase_dependent_loss_raises_like_torch():
    rng = np.random.default_rng(2)
    a = _c(rng, 3, 3)
    for m in (ember, torch):
        x = m.tensor(a, requires_grad=True)
        V = m.linalg.eigh(x + x.mH).eigenvectors
        with pytest.raises(RuntimeError, match="e\\^\\{i phi\\}"):
            (V * (0.5 + 2j)).sum().abs().backward()


def test_eig_of_real_input_has_real_gradient():
    rng = np.random.default_rng(3)
    P = rng.standard_normal((3, 3)) + 3 * np.eye(3)
    a = P @ np.diag([1.0, 2.0, -1.5]) @ np.linalg.inv(P)
    e, t = _both(a, grad=True)
    for m, x in ((ember, e), (torch, t)):
        L, V = m.linalg.eig(x)
        (L.abs().sum() + (V * V.conj()).abs().sum()).backward()
    assert e.grad.dtype == ember.float64
    _close(e.grad, t.grad, 1e-6)


# ---------------------------------------------------------------- lstsq outputs per driver
@pytest.mark.parametrize("driver", [None, "gels", "gelsy", "gelsd", "gelss"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (2, 6, 4)])
def test_lstsq_outputs_match_torch(driver, shape):
    rng = np.random.default_rng(4)
    a = rng.standard_normal(shape)
    b = rng.standard_normal(shape[:-1] + (2,))
    if driver == "gels" and shape[-2] < shape[-1]:
        pytest.skip("gels needs full column rank")
    e = ember.linalg.lstsq(ember.tensor(a), ember.tensor(b), driver=driver)
    t = torch.linalg.lstsq(torch.tensor(a), torch.tensor(b), driver=driver)
    assert type(e).__name__ == "linalg_lstsq"
    for f in ("solution", "residuals", "rank", "singular_values"):
        ev, tv = getattr(e, f), getattr(t, f)
        assert tuple(ev.shape) == tuple(tv.shape), f
        assert str(ev.dtype).split(".")[-1] == str(tv.dtype).split(".")[-1], f
        _close(ev, tv, 1e-8)


def test_lstsq_rank_deficient_is_minimum_norm():
    a = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    b = np.array([[1.0], [2.0], [2.0]])
    e = ember.linalg.lstsq(ember.tensor(a), ember.tensor(b), driver="gelsd")
    t = torch.linalg.lstsq(torch.tensor(a), torch.tensor(b), driver="gelsd")
    _close(e.solution, t.solution, 1e-10)
    assert int(e.rank) == int(t.rank) == 1


# ---------------------------------------------------------------- errors
def test_singular_inverse_message_and_type():
    a = ember.tensor([[1.0, 2.0], [2.0, 4.0]])
    with pytest.raises(ember.linalg.LinAlgError) as info:
        ember.linalg.inv(a)
    assert isinstance(info.value, RuntimeError)
    assert str(info.value) == ("linalg.inv: The diagonal element 2 is zero, the inversion could "
                               "not be completed because the input matrix is singular.")


def test_batched_singular_names_the_batch_element():
    a = np.stack([np.eye(2), [[1.0, 2.0], [2.0, 4.0]]])
    with pytest.raises(RuntimeError, match=r"\(Batch element 1\): The diagonal element 2"):
        ember.linalg.inv(ember.tensor(a))
    with pytest.raises(RuntimeError, match=r"\(Batch element 1\): The diagonal element 2"):
        torch.linalg.inv(torch.tensor(a))


def test_inv_ex_reports_info_without_raising():
    a = np.stack([np.eye(2), [[1.0, 2.0], [2.0, 4.0]]])
    e = ember.linalg.inv_ex(ember.tensor(a))
    t = torch.linalg.inv_ex(torch.tensor(a))
    assert e.info.tolist() == t.info.tolist() == [0, 2]
    assert e.info.dtype == ember.int32
    _close(e.inverse[0], t.inverse[0])


@pytest.mark.parametrize("call", [
    lambda m: m.linalg.inv(m.ones(2, 3)),
    lambda m: m.linalg.det(m.ones(3)),
    lambda m: m.linalg.inv(m.ones(2, 2, dtype=m.int64)),
    lambda m: m.linalg.cholesky(m.tensor([[1.0, 2.0], [2.0, 1.0]])),
    lambda m: m.linalg.solve(m.eye(2), m.ones(2, dtype=m.float64)),
    lambda m: m.linalg.qr(m.ones(2, 2), mode="bad"),
    lambda m: m.linalg.eigh(m.ones(2, 2), UPLO="X"),
    lambda m: m.linalg.matrix_norm(m.ones(2, 2), ord=3),
    lambda m: m.linalg.householder_product(m.ones(2, 3), m.ones(2)),
    lambda m: m.linalg.tensorinv(m.ones(2, 3), ind=1),
])
def test_error_types_match_torch(call):
    with pytest.raises(Exception) as t_info:
        call(torch)
    with pytest.raises(Exception) as e_info:
        call(ember)
    base = RuntimeError if isinstance(t_info.value, RuntimeError) else type(t_info.value)
    assert isinstance(e_info.value, base)
    assert "numpy" not in str(e_info.value).lower()


def test_qr_mode_r_is_not_differentiable():
    x = ember.randn(3, 3, requires_grad=True)
    Q, R = ember.linalg.qr(x, mode="r")
    assert Q.numel() == 0
    with pytest.raises(RuntimeError, match="mode='r'"):
        R.sum().backward()


# ---------------------------------------------------------------- API surface
def test_namespace_covers_torch_linalg():
    wanted = {"cholesky", "cholesky_ex", "cond", "cross", "det", "diagonal", "eig", "eigh",
              "eigvals", "eigvalsh", "householder_product", "inv", "inv_ex", "lstsq", "lu",
              "lu_factor", "lu_factor_ex", "lu_solve", "matmul", "matrix_exp", "matrix_norm",
              "matrix_power", "matrix_rank", "multi_dot", "norm", "pinv", "qr", "slogdet",
              "solve", "solve_ex", "solve_triangular", "svd", "svdvals", "tensorinv",
              "tensorsolve", "vander", "vecdot", "vector_norm", "LinAlgError"}
    assert wanted <= set(dir(torch.linalg))
    missing = sorted(n for n in wanted if not hasattr(ember.linalg, n))
    assert not missing


@pytest.mark.parametrize("name", ["det", "inverse", "logdet", "slogdet", "cholesky", "qr", "svd",
                                  "pinverse", "matrix_power", "matrix_exp", "cholesky_solve",
                                  "cholesky_inverse", "lu_unpack", "triangular_solve",
                                  "lu_solve", "lu", "cross", "chain_matmul"])
def test_top_level_aliases_exist(name):
    assert callable(getattr(ember, name))
    if name not in ("lu_unpack", "chain_matmul"):
        assert hasattr(ember.Tensor, name) == hasattr(torch.Tensor, name)


def test_torch_svd_returns_v_and_compute_uv_false():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 3))
    e, t = ember.svd(ember.tensor(a)), torch.svd(torch.tensor(a))
    _close(e.U * e.S @ e.V.mT, torch.tensor(a))
    assert tuple(e.V.shape) == tuple(t.V.shape) == (3, 3)
    e2, t2 = ember.svd(ember.tensor(a), compute_uv=False), torch.svd(torch.tensor(a),
                                                                      compute_uv=False)
    assert tuple(e2.U.shape) == tuple(t2.U.shape) and not e2.U.any()
    _close(e2.S, t2.S)


def test_return_type_field_names():
    a = ember.eye(3, dtype=ember.float64)
    assert ember.linalg.slogdet(a)._fields == ("sign", "logabsdet")
    assert ember.linalg.eigh(a)._fields == ("eigenvalues", "eigenvectors")
    assert ember.linalg.svd(a)._fields == ("U", "S", "Vh")
    assert ember.linalg.lu(a)._fields == ("P", "L", "U")
    assert ember.linalg.lu_factor_ex(a)._fields == ("LU", "pivots", "info")
    assert ember.triangular_solve(a, a)._fields == ("solution", "cloned_coefficient")


def test_lu_roundtrip_and_pivots_match_torch():
    rng = np.random.default_rng(6)
    for shape in ((4, 4), (3, 5), (5, 3), (2, 4, 4)):
        a = rng.standard_normal(shape)
        P, L, U = ember.linalg.lu(ember.tensor(a))
        _close(P @ L @ U, torch.tensor(a), 1e-10)
        e = ember.linalg.lu_factor(ember.tensor(a))
        t = torch.linalg.lu_factor(torch.tensor(a))
        assert e.pivots.tolist() == t.pivots.tolist()


def _cofactors(a: np.ndarray) -> np.ndarray:
    """The cofactor matrix of a square float64 matrix (det's gradient), from its minors."""
    n = a.shape[0]
    return np.array([[(-1) ** (i + j) * np.linalg.det(np.delete(np.delete(a, i, 0), j, 1))
                      for j in range(n)] for i in range(n)])


def test_det_gradient_at_singular_matrices_is_the_cofactor_matrix():
    # rank n-1 (the adjugate is nonzero) and rank n-2 (it is zero), batched with a regular
    # matrix: first-order gradients against NumPy float64 cofactors (torch's own value at an
    # exactly singular matrix depends on its LAPACK: 0 with OpenBLAS, the cofactors with MKL)
    rng = np.random.default_rng(8)
    mats = np.stack([np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]]),
                     np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 6.0, 9.0]]),
                     rng.standard_normal((3, 3))])
    w = rng.standard_normal(3)
    x = ember.tensor(mats, requires_grad=True)
    (ember.linalg.det(x) * ember.tensor(w)).sum().backward()
    want = np.stack([wi * _cofactors(m) for wi, m in zip(w, mats)])
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-9, atol=1e-12)


def test_det_double_backward_at_singular_matrix_matches_torch():
    a = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]])
    grads = []
    for m in (ember, torch):
        x = m.tensor(a, requires_grad=True)
        (g,) = m.autograd.grad(m.linalg.det(x), x, create_graph=True)
        (gg,) = m.autograd.grad((g * g).sum(), x)
        grads.append((g, gg))
    _close(grads[0][0], grads[1][0], 1e-8)
    _close(grads[0][1], grads[1][1], 1e-8)
