"""Parametrization-based ``orthogonal``, ``weight_norm`` and ``spectral_norm``.

Each registers a small parametrization Module through
:func:`ember.nn.utils.parametrize.register_parametrization`; state_dict keys follow torch
(``parametrizations.weight.original0`` / ``original1`` for weight norm, ``...original`` for
the others).
"""
from __future__ import annotations

import math
from enum import Enum, auto

import ember
from ember.nn.functional.activation import normalize
from ember.nn.modules.module import Module
from ember.nn.utils import parametrize
from ember.nn.utils.weight_norm import _weight_norm, norm_except_dim
from ember.tensor import Tensor

__all__ = ["orthogonal", "spectral_norm", "weight_norm"]


# ---------------------------------------------------------------------- matrix helpers
def _matrix_exp(A: Tensor) -> Tensor:
    """``exp(A)`` by scaling and squaring of a degree-18 Taylor polynomial, in ember ops (so
    it is differentiable; accurate to rounding for the skew-symmetric inputs used here)."""
    n = A.shape[-1]
    norm = float(A.detach().abs().sum(-2).amax()) if A.numel() else 0.0
    s = max(0, int(math.ceil(math.log2(norm))) + 1) if norm > 0.5 else 0
    X = A / (2 ** s)
    eye = ember.eye(n, dtype=A.dtype, device=A.device)
    result = eye + X
    term = X
    for k in range(2, 19):
        term = term.matmul(X) / k
        result = result + term
    for _ in range(s):
        result = result.matmul(result)
    return result


def _householder_product(A: Tensor, tau: Tensor) -> Tensor:
    """``H_1 ... H_k`` restricted to the first k columns, ``H_i = I - tau_i v_i v_i^H`` with
    ``v_i`` the i-th column of ``A`` below the diagonal and a unit on it (LAPACK's orgqr)."""
    m, k = A.shape[-2], A.shape[-1]
    eye = ember.eye(m, dtype=A.dtype, device=A.device)
    Q = eye
    rows = ember.arange(m, device=A.device)
    for i in range(k):
        col = A[..., :, i]
        below = (rows > i).to(A.dtype)
        unit = (rows == i).to(A.dtype)
        v = col * below + unit
        H = eye - tau[..., i].unsqueeze(-1).unsqueeze(-1) * (v.unsqueeze(-1) * v.unsqueeze(-2))
        Q = Q.matmul(H)
    return Q[..., :, :k]


def _make_orthogonal(A: Tensor) -> Tensor:
    """The Q of A's QR decomposition, with signs making R's diagonal positive."""
    import numpy as np
    a = A.detach()._host().astype(np.float64)
    q, r = np.linalg.qr(a)
    d = np.sign(np.diagonal(r, axis1=-2, axis2=-1))
    d = np.where(d == 0, 1.0, d)
    q = q * d[..., None, :]
    return ember.tensor(q, dtype=A.dtype, device=A.device)


def _geqrf_signs(Q: Tensor) -> Tensor:
    """geqrf's reflector matrix of Q with its diagonal replaced by the signs that make
    ``householder_product`` reproduce Q (torch's right_inverse for householder)."""
    import numpy as np
    a = Q.detach()._host().astype(np.float64)
    flat = a.reshape((-1,) + a.shape[-2:])
    out = np.empty_like(flat)
    for b in range(flat.shape[0]):
        h, tau = np.linalg.qr(flat[b], mode="raw")
        r = h.T.copy()
        d = np.sign(np.diagonal(r)).copy()
        d[tau == 0.0] *= -1
        idx = np.arange(len(d))
        r[idx, idx] = d
        out[b] = r
    return ember.tensor(out.reshape(a.shape), dtype=Q.dtype, device=Q.device)


def _is_orthogonal(Q: Tensor, eps: float | None = None) -> bool:
    n, k = Q.size(-2), Q.size(-1)
    Id = ember.eye(k, dtype=Q.dtype, device=Q.device)
    eps = 10.0 * n * ember.finfo(Q.dtype).eps
    return bool(((Q.mT.matmul(Q) - Id).abs() <= eps).all())


class _OrthMaps(Enum):
    matrix_exp = auto()
    cayley = auto()
    householder = auto()


class _Orthogonal(Module):
    base: Tensor

    def __init__(self, weight: Tensor, orthogonal_map: _OrthMaps, *,
                 use_trivialization: bool = True) -> None:
        super().__init__()
        if weight.is_complex() and orthogonal_map == _OrthMaps.householder:
            raise ValueError("The householder parametrization does not support complex tensors.")
        self.shape = tuple(weight.shape)
        self.orthogonal_map = orthogonal_map
        if use_trivialization:
            self.register_buffer("base", None)

    def forward(self, X: Tensor) -> Tensor:
        n, k = X.size(-2), X.size(-1)
        transposed = n < k
        if transposed:
            X = X.mT
            n, k = k, n
        if self.orthogonal_map in (_OrthMaps.matrix_exp, _OrthMaps.cayley):
            X = X.tril()
            if n != k:
                X = ember.cat([X, X.new_zeros((n, n - k)).expand(*X.shape[:-2], -1, -1)], -1)
            A = X - X.mT
            if self.orthogonal_map == _OrthMaps.matrix_exp:
                Q = _matrix_exp(A)
            else:
                Id = ember.eye(n, dtype=A.dtype, device=A.device)
                Q = ember.linalg.solve(Id - 0.5 * A, Id + 0.5 * A)
            if n != k:
                Q = Q[..., :k]
        else:
            A = X.tril(diagonal=-1)
            tau = 2.0 / (1.0 + (A * A).sum(dim=-2))
            Q = _householder_product(A, tau)
            # X's diagonal holds the signs (+-1) of Q's columns; not differentiated
            Q = Q * X.diagonal(dim1=-2, dim2=-1).detach().sign().unsqueeze(-2)
        if getattr(self, "base", None) is not None:
            Q = self.base.matmul(Q)
        if transposed:
            Q = Q.mT
        return Q

    def right_inverse(self, Q: Tensor) -> Tensor:
        with ember.no_grad():
            if tuple(Q.shape) != self.shape:
                raise ValueError(f"Expected a matrix or batch of matrices of shape {self.shape}. "
                                 f"Got a tensor of shape {tuple(Q.shape)}.")
            Q_init = Q
            n, k = Q.size(-2), Q.size(-1)
            transpose = n < k
            if transpose:
                Q = Q.mT
                n, k = k, n
            if "base" not in self._buffers:
                if self.orthogonal_map in (_OrthMaps.cayley, _OrthMaps.matrix_exp):
                    raise NotImplementedError(
                        "It is not possible to assign to the matrix exponential or the Cayley "
                        "parametrizations when use_trivialization=False.")
                # Householder without trivialization: store the reflectors of Q's QR
                # (LAPACK geqrf, from NumPy's raw QR) with the signs on the diagonal.
                A = _geqrf_signs(Q)
                return A.mT if transpose else A
            if n == k:
                Q = _make_orthogonal(Q) if not _is_orthogonal(Q) else Q.clone()
            else:
                N = ember.randn(*(tuple(Q.shape[:-2]) + (n, n - k)), dtype=Q.dtype,
                                device=Q.device)
                Q = _make_orthogonal(ember.cat([Q, N], -1))
            self.base = Q
            neg_Id = ember.zeros_like(Q_init)
            m = min(neg_Id.shape[-2], neg_Id.shape[-1])
            idx = ember.arange(m, device=Q.device)
            neg_Id[..., idx, idx] = -1.0
            return neg_Id


def orthogonal(module: Module, name: str = "weight", orthogonal_map: str | None = None, *,
               use_trivialization: bool = True) -> Module:
    """Constrain ``module.<name>`` to be orthogonal (or semi-orthogonal): ``Q^T Q = I``.

    Args:
        module: the module.
        name: the matrix parameter. Default: ``'weight'``.
        orthogonal_map: ``'matrix_exp'``, ``'cayley'`` or ``'householder'``. Default:
            ``'matrix_exp'`` for square matrices, ``'householder'`` otherwise.
        use_trivialization: keep a base and parametrize around it (dynamic trivialization).

    Example::

        >>> m = nn.utils.parametrizations.orthogonal(nn.Linear(20, 40))
        >>> Q = m.weight
        >>> ember.dist(Q.T @ Q, ember.eye(20)) < 1e-4  # doctest: +SKIP
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"Module '{module}' has no parameter or buffer with name '{name}'")
    if weight.ndim < 2:
        raise ValueError("Expected a matrix or batch of matrices. "
                         f"Got a tensor of {weight.ndim} dimensions.")
    if orthogonal_map is None:
        orthogonal_map = ("matrix_exp" if weight.size(-2) == weight.size(-1) or weight.is_complex()
                          else "householder")
    orth_enum = getattr(_OrthMaps, orthogonal_map, None)
    if orth_enum is None:
        raise ValueError('orthogonal_map has to be one of "matrix_exp", "cayley", "householder". '
                         f"Got: {orthogonal_map}")
    orth = _Orthogonal(weight, orth_enum, use_trivialization=use_trivialization)
    parametrize.register_parametrization(module, name, orth, unsafe=True)
    return module


class _WeightNorm(Module):
    def __init__(self, dim: int | None = 0) -> None:
        super().__init__()
        if dim is None:
            dim = -1
        self.dim = dim

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        return _weight_norm(weight_v, weight_g, self.dim)

    def right_inverse(self, weight: Tensor) -> tuple:
        weight_g = norm_except_dim(weight, 2, self.dim)
        weight_v = weight
        return weight_g, weight_v


def weight_norm(module: Module, name: str = "weight", dim: int | None = 0) -> Module:
    """Reparametrize ``module.<name>`` as ``g * v / ||v||``; ``g`` and ``v`` are
    ``parametrizations.<name>.original0`` and ``original1``.

    Example::

        >>> m = nn.utils.parametrizations.weight_norm(nn.Linear(20, 40))
        >>> m.parametrizations.weight.original0.shape
        ember.Size([40, 1])
    """
    _weight_norm_mod = _WeightNorm(dim)
    parametrize.register_parametrization(module, name, _weight_norm_mod, unsafe=True)

    def _weight_norm_compat_hook(state_dict: dict, prefix: str, local_metadata: dict,
                                 strict: bool, missing_keys: list, unexpected_keys: list,
                                 error_msgs: list) -> None:
        # load checkpoints written with the hook-based weight_norm (name_g / name_v)
        g_key = f"{prefix}{name}_g"
        v_key = f"{prefix}{name}_v"
        if g_key in state_dict and v_key in state_dict:
            original0 = state_dict.pop(g_key)
            original1 = state_dict.pop(v_key)
            state_dict[f"{prefix}parametrizations.{name}.original0"] = original0
            state_dict[f"{prefix}parametrizations.{name}.original1"] = original1

    module._register_load_state_dict_pre_hook(_weight_norm_compat_hook)
    return module


class _SpectralNorm(Module):
    def __init__(self, weight: Tensor, n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12) -> None:
        super().__init__()
        ndim = weight.ndim
        if dim >= ndim or dim < -ndim:
            raise IndexError("Dimension out of range (expected to be in range of "
                             f"[-{ndim}, {ndim - 1}] but got {dim})")
        if n_power_iterations <= 0:
            raise ValueError("Expected n_power_iterations to be positive, but got "
                             f"n_power_iterations={n_power_iterations}")
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps = eps
        if ndim > 1:
            self.n_power_iterations = n_power_iterations
            weight_mat = self._reshape_weight_to_matrix(weight)
            h, w = weight_mat.size()
            u = weight_mat.new_empty(h).normal_(0, 1)
            v = weight_mat.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", normalize(v, dim=0, eps=self.eps))
            self._power_method(weight_mat, 15)

    def _reshape_weight_to_matrix(self, weight: Tensor) -> Tensor:
        if self.dim != 0:
            weight = weight.movedim(self.dim, 0)
        return weight.flatten(1)

    def _power_method(self, weight_mat: Tensor, n_power_iterations: int) -> None:
        with ember.no_grad():
            for _ in range(n_power_iterations):
                self._u = normalize(weight_mat.mv(self._v), dim=0, eps=self.eps, out=self._u)
                self._v = normalize(weight_mat.mH.mv(self._u), dim=0, eps=self.eps,
                                    out=self._v)

    def forward(self, weight: Tensor) -> Tensor:
        if weight.ndim == 1:
            return normalize(weight, dim=0, eps=self.eps)
        weight_mat = self._reshape_weight_to_matrix(weight)
        if self.training:
            self._power_method(weight_mat.detach(), self.n_power_iterations)
        u = self._u.clone()
        v = self._v.clone()
        sigma = (u.conj() * weight_mat.mv(v)).sum()
        return weight / sigma

    def right_inverse(self, value: Tensor) -> Tensor:
        return value


def spectral_norm(module: Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None) -> Module:
    """Spectrally normalise ``module.<name>`` (power iteration on buffers ``_u``, ``_v`` of
    the parametrization, run in training mode).

    Example::

        >>> m = nn.utils.parametrizations.spectral_norm(nn.Linear(20, 40))
        >>> m.parametrizations.weight.original.shape
        ember.Size([40, 20])
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"Module '{module}' has no parameter or buffer with name '{name}'")
    if dim is None:
        dim = 1 if type(module).__name__.startswith("ConvTranspose") else 0
    parametrize.register_parametrization(
        module, name, _SpectralNorm(weight, n_power_iterations, dim, eps))
    return module
