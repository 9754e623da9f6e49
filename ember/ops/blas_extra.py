"""Products and constructions built on matmul and broadcasting: outer/ger, cross, kron, cdist,
tensordot, baddbmm/addbmm/addmv/addr, chain_matmul, block_diag, cartesian_prod,
combinations, trace and vander. All are composites: gradients come from the primitives."""
from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np

from ember import dtypes as _dt
from ember.errors import check, make
from ember.ops import meta as M
from ember.ops.registry import OPS, composite
from ember.tensor import Tensor


def _need(op: str, t: Any, ndim: int | None, name: str) -> None:
    check(isinstance(t, Tensor), op, f"argument '{name}' must be Tensor, not {type(t).__name__}",
          TypeError)
    if ndim is not None:
        check(t.ndim == ndim, op, f"{name} must be a {ndim}D tensor, got shape {tuple(t.shape)}")


def _scaled_sum(op: str, input: Tensor, prod: Tensor, beta: Any, alpha: Any) -> Tensor:
    """``beta * input + alpha * prod`` with torch's rules: beta=0 ignores input (NaN too)."""
    if input.dtype.category < 2 and (isinstance(beta, float) or isinstance(alpha, float)):
        raise make(RuntimeError, op, f"For integral input tensors, argument beta/alpha must not "
                                     f"be a floating point number (got beta={beta}, "
                                     f"alpha={alpha}).")
    if alpha != 1:
        prod = prod * alpha
    shape = M.broadcast_shapes(op, tuple(input.shape), tuple(prod.shape))
    check(tuple(shape) == tuple(prod.shape), op,
          f"input of shape {tuple(input.shape)} can't be broadcast to the product's shape "
          f"{tuple(prod.shape)}")
    if beta == 0:
        # torch ignores input (NaN/inf in it do not propagate) but still gives it a zero grad
        import ember
        everywhere = ember.ones((), dtype=ember.bool, device=input.device)
        return prod + input.masked_fill(everywhere, 0)
    return prod + (input if beta == 1 else input * beta)


@composite()
def outer(input: Tensor, vec2: Tensor) -> Tensor:
    """Outer product of two 1-d tensors: ``out[i, j] = input[i] * vec2[j]``."""
    _need("outer", input, 1, "input")
    _need("outer", vec2, 1, "vec2")
    return input.reshape(-1, 1) * vec2.reshape(1, -1)


@composite()
def ger(input: Tensor, vec2: Tensor) -> Tensor:
    """Alias of :func:`outer`."""
    return outer(input, vec2)


@composite()
def cross(input: Tensor, other: Tensor, dim: int | None = None) -> Tensor:
    """Cross product of 3-vectors along ``dim`` (inputs broadcast). With ``dim=None`` the
    first dim of size 3 is used, as torch does (with its deprecation warning)."""
    check(input.ndim == other.ndim, "cross", f"linalg.cross: inputs must have the same number of "
                                             f"dimensions, got {tuple(input.shape)} and "
                                             f"{tuple(other.shape)}")
    shape = M.broadcast_shapes("cross", tuple(input.shape), tuple(other.shape))
    a, b = input.expand(*shape), other.expand(*shape)
    if dim is None:
        warnings.warn("Using torch.cross without specifying the dim arg is deprecated. Please "
                      "either pass the dim explicitly or simply use torch.linalg.cross.",
                      UserWarning, stacklevel=2)
        sizes = [i for i, s in enumerate(shape) if s == 3]
        check(bool(sizes), "cross", f"no dimension of size 3 in input of shape {tuple(shape)}")
        d = sizes[0]
    else:
        d = M.wrap_dim("cross", dim, len(shape))
        check(shape[d] == 3, "cross", f"linalg.cross: inputs dimension {dim} must have length 3. "
                                      f"Got {input.shape[d] if input.ndim > d else '?'} and "
                                      f"{other.shape[d] if other.ndim > d else '?'}")
    a0, a1, a2 = (a.select(d, i) for i in range(3))
    b0, b1, b2 = (b.select(d, i) for i in range(3))
    return OPS["stack"].function([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], d)


@composite()
def kron(input: Tensor, other: Tensor) -> Tensor:
    """Kronecker product: block ``(i, j)`` of the result is ``input[i, j] * other``."""
    nd = max(input.ndim, other.ndim)
    a = input.reshape((1,) * (nd - input.ndim) + tuple(input.shape))
    b = other.reshape((1,) * (nd - other.ndim) + tuple(other.shape))
    # interleave: a's dims at even positions, b's at odd ones, then merge each pair
    ia = []
    ib = []
    for s, t in zip(a.shape, b.shape):
        ia.extend((s, 1))
        ib.extend((1, t))
    prod = a.reshape(ia) * b.reshape(ib)
    return prod.reshape(tuple(s * t for s, t in zip(a.shape, b.shape)))


_CDIST_MODES = ("use_mm_for_euclid_dist_if_necessary", "use_mm_for_euclid_dist",
                "donot_use_mm_for_euclid_dist")


@composite()
def cdist(x1: Tensor, x2: Tensor, p: float = 2.0,
          compute_mode: str = "use_mm_for_euclid_dist_if_necessary") -> Tensor:
    """Batched pairwise ``p``-norm distances between the rows of ``x1`` ``(B, P, M)`` and
    ``x2`` ``(B, R, M)``: a ``(B, P, R)`` tensor. For ``p=2`` the matrix-product form
    ``|a|^2 + |b|^2 - 2ab`` is used when ``compute_mode`` asks for it (torch: when P or R
    exceeds 25); it is faster and slightly less exact."""
    for name, t in (("x1", x1), ("x2", x2)):
        check(isinstance(t, Tensor) and t.dtype.category == 2, "cdist",
              f"cdist only supports floating-point dtypes, {name.upper()} got: "
              f"{getattr(t, 'dtype', type(t).__name__)}")
        check(t.ndim >= 2, "cdist", f"cdist only supports at least 2D tensors, {name.upper()} "
                                    f"got: {t.ndim}D")
    check(x1.shape[-1] == x2.shape[-1], "cdist",
          f"X1 and X2 must have the same number of columns. X1: {x1.shape[-1]} X2: "
          f"{x2.shape[-1]}")
    check(p >= 0, "cdist", f"cdist only supports non-negative p values, got {p}")
    check(compute_mode in _CDIST_MODES, "cdist", f"{compute_mode} is not a valid value for "
                                                 f"compute_mode", ValueError)
    r1, r2 = x1.shape[-2], x2.shape[-2]
    use_mm = p == 2 and (compute_mode == "use_mm_for_euclid_dist" or (
        compute_mode == _CDIST_MODES[0] and (r1 > 25 or r2 > 25)))
    if use_mm:
        from ember.ops.elementwise import _where
        sq = (x1 * x1).sum(-1, keepdim=True) + (x2 * x2).sum(-1).unsqueeze(-2) \
            - 2 * x1.matmul(x2.transpose(-1, -2))
        pos = sq > 0
        # zero distances get a zero gradient, as torch's cdist backward gives
        return _where(pos, _where(pos, sq, sq * 0 + 1).sqrt(), sq * 0)
    diff = x1.unsqueeze(-2) - x2.unsqueeze(-3)
    return OPS["linalg_vector_norm"].function(diff, p, -1)


def _tensordot_dims(a: Tensor, b: Tensor, dims: Any) -> tuple[list, list]:
    if isinstance(dims, Tensor):
        dims = dims.item() if dims.ndim == 0 else dims.tolist()
    if isinstance(dims, (int, np.integer)):
        n = int(dims)
        check(n >= 0, "tensordot", f"tensordot expects dims >= 0, but got dims={n}")
        check(n <= min(a.ndim, b.ndim), "tensordot",
              f"tensordot expects dims < ndim_a or ndim_b, but got dims={n}")
        return list(range(a.ndim - n, a.ndim)), list(range(n))
    da, db = dims
    da = [da] if isinstance(da, int) else list(da)
    db = [db] if isinstance(db, int) else list(db)
    check(len(da) == len(db), "tensordot", f"both dimension lists should have same length, got "
                                           f"{da} and {db}")
    return [M.wrap_dim("tensordot", d, a.ndim) for d in da], \
        [M.wrap_dim("tensordot", d, b.ndim) for d in db]


@composite()
def tensordot(a: Tensor, b: Tensor, dims: Any = 2, out: Any = None) -> Tensor:
    """Contract ``dims`` (a count of trailing/leading dims, or two lists of dims) of ``a`` and
    ``b``; the free dims of ``a`` then of ``b`` remain."""
    da, db = _tensordot_dims(a, b, dims)
    for i, j in zip(da, db):
        check(a.shape[i] == b.shape[j], "tensordot",
              f"contracted dimensions need to match, but first has size {a.shape[i]} in dim "
              f"{i} and second has size {b.shape[j]} in dim {j}")
    fa = [i for i in range(a.ndim) if i not in da]
    fb = [j for j in range(b.ndim) if j not in db]
    k = 1
    for i in da:
        k *= a.shape[i]
    am = a.permute(fa + da).reshape(-1, k)
    bm = b.permute(db + fb).reshape(k, -1)
    return am.matmul(bm).reshape([a.shape[i] for i in fa] + [b.shape[j] for j in fb])


@composite()
def baddbmm(input: Tensor, batch1: Tensor, batch2: Tensor, *, beta: Any = 1,
            alpha: Any = 1) -> Tensor:
    """``beta * input + alpha * (batch1 @ batch2)`` for ``(b, n, m) @ (b, m, p)``."""
    return _scaled_sum("baddbmm", input, _bmm(batch1, batch2), beta, alpha)


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    from ember.ops.registry import COMPOSITES
    return COMPOSITES["bmm"](a, b)


@composite()
def addbmm(input: Tensor, batch1: Tensor, batch2: Tensor, *, beta: Any = 1,
           alpha: Any = 1) -> Tensor:
    """``beta * input + alpha * sum_b(batch1[b] @ batch2[b])``."""
    return _scaled_sum("addbmm", input, _bmm(batch1, batch2).sum(0), beta, alpha)


@composite()
def addmv(input: Tensor, mat: Tensor, vec: Tensor, *, beta: Any = 1, alpha: Any = 1) -> Tensor:
    """``beta * input + alpha * (mat @ vec)``."""
    from ember.ops.registry import COMPOSITES
    return _scaled_sum("addmv", input, COMPOSITES["mv"](mat, vec), beta, alpha)


@composite()
def addr(input: Tensor, vec1: Tensor, vec2: Tensor, *, beta: Any = 1, alpha: Any = 1) -> Tensor:
    """``beta * input + alpha * outer(vec1, vec2)``."""
    return _scaled_sum("addr", input, outer(vec1, vec2), beta, alpha)


@composite(method=False)
def chain_matmul(*matrices: Tensor) -> Tensor:
    """Product of 2-d matrices, left to right (deprecated in torch in favour of
    ``linalg.multi_dot``)."""
    if len(matrices) == 1 and isinstance(matrices[0], (list, tuple)):
        matrices = tuple(matrices[0])
    check(len(matrices) > 0, "chain_matmul", "chain_matmul(): Expected one or more matrices")
    for i, m in enumerate(matrices):
        _need("chain_matmul", m, 2, f"matrices[{i}]")
    out = matrices[0]
    if len(matrices) == 1:
        return out.clone()
    from ember.ops.registry import COMPOSITES
    for m in matrices[1:]:
        out = COMPOSITES["mm"](out, m)
    return out


@composite(method=False)
def block_diag(*tensors: Tensor) -> Tensor:
    """A block-diagonal matrix of the 0-d, 1-d (one row) or 2-d ``tensors`` (dtypes
    promote)."""
    import ember
    mats = []
    for i, t in enumerate(tensors):
        _need("block_diag", t, None, f"tensors[{i}]")
        check(t.ndim <= 2, "block_diag", f"Input tensors must have 2 or fewer dimensions. Input "
                                         f"{i} has {t.ndim} dimensions")
        mats.append(t.reshape(1, 1) if t.ndim == 0 else t.reshape(1, -1) if t.ndim == 1 else t)
    if not mats:
        return ember.zeros(1, 0)
    dt = _dt.result_type_of(mats)
    cols = sum(m.shape[1] for m in mats)
    rows, start = [], 0
    for m in mats:
        r, c = m.shape
        left = ember.zeros(r, start, dtype=dt, device=m.device)
        right = ember.zeros(r, cols - start - c, dtype=dt, device=m.device)
        rows.append(OPS["cat"].function([left, m.to(dt), right], 1))
        start += c
    return OPS["cat"].function(rows, 0)


@composite(method=False)
def cartesian_prod(*tensors: Tensor) -> Tensor:
    """All combinations of one element from each 1-d tensor, as rows ``(N, len(tensors))``
    (a single tensor is returned as is)."""
    for i, t in enumerate(tensors):
        _need("cartesian_prod", t, 1, f"tensors[{i}]")
    if len(tensors) == 1:
        return tensors[0]
    from ember.ops.shape_extra import meshgrid
    grids = meshgrid(*tensors, indexing="ij")
    return OPS["stack"].function([g.reshape(-1) for g in grids], 1)


@composite()
def combinations(input: Tensor, r: int = 2, with_replacement: bool = False) -> Tensor:
    """Length-``r`` combinations of the elements of a 1-d tensor, as rows (like
    ``itertools.combinations``, or ``combinations_with_replacement``)."""
    import ember
    _need("combinations", input, 1, "input")
    check(r >= 0, "combinations", f"Expect a non-negative number, but got {r}")
    if r == 0:
        return ember.empty(0, dtype=input.dtype, device=input.device)
    gen = itertools.combinations_with_replacement if with_replacement else \
        itertools.combinations
    combos = list(gen(range(input.shape[0]), r))
    idx = ember.tensor(np.asarray(combos, dtype=np.int64).reshape(-1), dtype=ember.int64,
                       device=input.device)
    return input.index_select(0, idx).reshape(len(combos), r)


@composite()
def trace(input: Tensor) -> Tensor:
    """Sum of the main diagonal of a 2-d tensor (integers sum in int64)."""
    _need("trace", input, 2, "input")
    return input.diagonal().sum()


@composite()
def vander(x: Tensor, N: int | None = None, increasing: bool = False) -> Tensor:
    """The Vandermonde matrix: columns are powers of the 1-d ``x`` (``x^(N-1) ... x^0``, or
    increasing). Integer and bool inputs give int64."""
    import ember
    _need("vander", x, 1, "x")
    n = x.shape[0] if N is None else N
    check(n >= 0, "vander", f"N must be non-negative, got {n}")
    base = x.to(ember.int64) if x.dtype.category < 2 else x
    if n == 0:
        return ember.empty(x.shape[0], 0, dtype=base.dtype, device=x.device)
    cols = [ember.ones_like(base)]
    for _ in range(n - 1):
        cols.append(cols[-1] * base)  # repeated products, as torch's cumprod does
    out = OPS["stack"].function(cols, 1)
    return out if increasing else out.flip(1)
