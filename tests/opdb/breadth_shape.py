"""Records for the extra shape ops and products (issue: ops breadth): flips, rolls, repeats,
triangles, diagonals, stacking/splitting, broadcasting helpers, meshgrid, outer/cross/kron,
cdist, tensordot, the add*mm family, block_diag, cartesian_prod, combinations, trace, vander."""
from __future__ import annotations

import itertools

import numpy as np

from opdb import ErrorInput, OpEntry, Sample

ENTRIES: list = []
DT = ("float32", "int64")


def add(*entries: OpEntry) -> None:
    ENTRIES.extend(entries)


def entry(name, call, shapes, ref, dtypes=DT, errors=(), covers=(), noncontig=True, **kw):
    """Samples from (shape, kwargs) pairs; the first pair again as a non-contiguous input."""
    def samples(rng):
        out = [Sample((rng.uniform(-1, 1, shp),), dict(k)) for shp, k in shapes]
        shp, k = shapes[0]
        if noncontig and len(shp) >= 2:
            out.append(Sample((rng.uniform(-1, 1, shp),), dict(k), noncontig=True))
        return out
    return OpEntry(name, call, samples, ref=ref, dtypes=dtypes, errors=errors, covers=covers,
                   **kw)


def multi(name, call, shape_sets, ref, dtypes=DT, errors=(), **kw):
    """Samples with several array arguments: each item a tuple of shapes (and kwargs)."""
    def samples(rng):
        out = []
        for item in shape_sets:
            shapes, k = (item[:-1], item[-1]) if isinstance(item[-1], dict) else (item, {})
            out.append(Sample(tuple(rng.uniform(-1, 1, s) for s in shapes), dict(k)))
        return out
    return OpEntry(name, call, samples, ref=ref, dtypes=dtypes, errors=errors, **kw)


def listed(name, call, shape_sets, ref, dtypes=DT, errors=(), **kw):
    """Samples whose single argument is a list of arrays (hstack, vstack ...)."""
    def samples(rng):
        return [Sample(([rng.uniform(-1, 1, s) for s in shapes],)) for shapes in shape_sets]
    return OpEntry(name, call, samples, ref=ref, dtypes=dtypes, errors=errors, **kw)


# ---------------------------------------------------------------- flips, rolls, repeats
add(
    entry("flip", lambda m, x, dims: m.flip(x, dims),
          [((3, 4), {"dims": (0,)}), ((2, 3, 4), {"dims": (0, 2)}), ((4,), {"dims": [-1]}),
           ((), {"dims": ()})],
          lambda x, dims: np.flip(x, dims) if dims else x, dtypes=DT + ("bool",),
          errors=[ErrorInput(Sample((np.ones((2, 3)),), {"dims": (2,)}), IndexError,
                             "out of range"),
                  ErrorInput(Sample((np.ones((2, 3)),), {"dims": (0, 0)}), RuntimeError,
                             "multiple times")]),
    entry("fliplr", lambda m, x: m.fliplr(x), [((3, 4), {})], lambda x: np.fliplr(x),
          errors=[ErrorInput(Sample((np.ones(3),)), RuntimeError, "Input must be >= 2-d")]),
    entry("flipud", lambda m, x: m.flipud(x), [((3, 4), {}), ((5,), {})], lambda x: np.flipud(x)),
    entry("roll", lambda m, x, **k: m.roll(x, **k),
          [((3, 4), {"shifts": 1, "dims": 0}), ((3, 4), {"shifts": (2, -1), "dims": (1, 0)}),
           ((3, 4), {"shifts": 5}), ((0, 2), {"shifts": 1, "dims": 0})],
          lambda x, shifts, dims=None: np.roll(x, shifts, dims),
          errors=[ErrorInput(Sample((np.ones((2, 3)),), {"shifts": (1, 2), "dims": 0}),
                             RuntimeError, "shifts and dimensions must align")]),
    entry("rot90", lambda m, x, **k: m.rot90(x, **k),
          [((3, 4), {}), ((3, 4), {"k": 2}), ((2, 3, 4), {"k": -1, "dims": (2, 0)}),
           ((3, 4), {"k": 4})],
          lambda x, k=1, dims=(0, 1): np.rot90(x, k, dims),
          errors=[ErrorInput(Sample((np.ones((2, 3)),), {"dims": (0, 0)}), RuntimeError,
                             "different")]),
    entry("repeat", lambda m, x, r: x.repeat(*r),
          [((3, 4), {"r": (2, 1)}), ((3,), {"r": (2, 2)}), ((2, 3), {"r": (1, 2, 3)}),
           ((), {"r": (3,)}), ((2, 3), {"r": (0, 1)})],
          lambda x, r: np.tile(x, r), dtypes=DT + ("bool",),
          errors=[ErrorInput(Sample((np.ones((2, 3)),), {"r": (2,)}), RuntimeError,
                             "can not be smaller")]),
    entry("tile", lambda m, x, dims: m.tile(x, dims),
          [((3, 4), {"dims": (2,)}), ((3,), {"dims": (2, 2)}), ((2, 3), {"dims": (1, 2)})],
          lambda x, dims: np.tile(x, dims)),
)


def _ri_ref(x, repeats, dim=None, output_size=None):
    r = repeats.a if hasattr(repeats, "a") else repeats
    return np.repeat(x, r, axis=dim)


class _Counts:
    def __init__(self, a):
        self.a = np.asarray(a, dtype=np.int64)

    def __repr__(self):
        return f"counts{list(self.a)}"


def _ri_call(m, x, repeats, **k):
    r = m.tensor(repeats.a) if isinstance(repeats, _Counts) else repeats
    return m.repeat_interleave(x, r, **k)


add(OpEntry("repeat_interleave", _ri_call,
            lambda rng: [Sample((rng.uniform(-1, 1, (3, 2)), 2)),
                         Sample((rng.uniform(-1, 1, (3, 2)), _Counts([1, 0, 2])), {"dim": 0}),
                         Sample((rng.uniform(-1, 1, (3, 2)), _Counts([3])), {"dim": 1}),
                         Sample((rng.uniform(-1, 1, (3, 2)), 2), {"dim": -1,
                                                                  "output_size": 4})],
            ref=_ri_ref, dtypes=DT,
            errors=[ErrorInput(Sample((np.ones((2, 3)), _Counts([1, 2])), {"dim": 1}),
                               RuntimeError, "same size"),
                    ErrorInput(Sample((np.ones((2, 3)), -1)), RuntimeError, "negative")]),
    OpEntry("repeat_interleave_counts", lambda m, c: m.repeat_interleave(m.tensor(c.a)),
            lambda rng: [Sample((_Counts([2, 0, 3]),)), Sample((_Counts([]),))],
            ref=lambda c: np.repeat(np.arange(c.a.size), c.a), dtypes=("float32",),
            grad=False))


# ---------------------------------------------------------------- triangles and diagonals
add(
    entry("tril", lambda m, x, **k: m.tril(x, **k),
          [((4, 4), {}), ((3, 5), {"diagonal": 1}), ((2, 3, 4), {"diagonal": -1})],
          lambda x, diagonal=0: np.tril(x, diagonal), dtypes=DT + ("bool",),
          errors=[ErrorInput(Sample((np.ones(3),)), RuntimeError, "at least 2 dimensions")]),
    entry("triu", lambda m, x, **k: m.triu(x, **k),
          [((4, 4), {}), ((3, 5), {"diagonal": -1}), ((2, 3, 4), {"diagonal": 2})],
          lambda x, diagonal=0: np.triu(x, diagonal), dtypes=DT + ("bool",)),
    entry("tril_", lambda m, x: x.clone().tril_(1), [((3, 4), {})], lambda x: np.tril(x, 1),
          noncontig=False),
    entry("diag_embed", lambda m, x, **k: m.diag_embed(x, **k),
          [((2, 3), {}), ((2, 3), {"offset": 1}), ((2, 3), {"offset": -1, "dim1": 0, "dim2": 2}),
           ((3,), {})],
          lambda x, offset=0, dim1=-2, dim2=-1: _np_diag_embed(x, offset, dim1, dim2)),
    entry("diag", lambda m, x, **k: m.diag(x, **k),
          [((4,), {}), ((3,), {"diagonal": 2}), ((3, 4), {}), ((3, 4), {"diagonal": -1})],
          lambda x, diagonal=0: np.diag(x, diagonal),
          errors=[ErrorInput(Sample((np.ones((2, 2, 2)),)), RuntimeError, "1D or 2D")]),
    entry("diagflat", lambda m, x, **k: m.diagflat(x, **k),
          [((2, 2), {}), ((3,), {"offset": 1})], lambda x, offset=0: np.diagflat(x, offset)),
)


def _np_diag_embed(x, offset, dim1, dim2):
    n = x.shape[-1] + abs(offset)
    out = np.zeros(x.shape[:-1] + (n, n))
    idx = np.arange(x.shape[-1])
    rows, cols = (idx, idx + offset) if offset >= 0 else (idx - offset, idx)
    out[..., rows, cols] = x
    nd = out.ndim
    d1, d2 = dim1 % nd, dim2 % nd
    # out has the diagonal planes last; move them to dim1/dim2
    return np.moveaxis(out, (nd - 2, nd - 1), (d1, d2))


# ---------------------------------------------------------------- broadcasting and grids
add(
    entry("broadcast_to", lambda m, x, size: m.broadcast_to(x, size),
          [((3, 1), {"size": (3, 4)}), ((4,), {"size": (2, 4)}), ((1, 4), {"size": (-1, 4)})],
          lambda x, size: np.broadcast_to(x, tuple(s if s != -1 else x.shape[i]
                                                   for i, s in enumerate(size))),
          errors=[ErrorInput(Sample((np.ones((3, 2)),), {"size": (3, 4)}), RuntimeError,
                             "must match")]),
    multi("broadcast_tensors", lambda m, *ts: m.broadcast_tensors(*ts),
          [((3, 1), (4,)), ((2, 1, 3), (1, 4, 1), ()), ((5,),)],
          lambda *ts: tuple(np.broadcast_arrays(*ts)),
          errors=[ErrorInput(Sample((np.ones(3), np.ones(4))), RuntimeError, "must match")]),
    multi("meshgrid", lambda m, *ts, **k: m.meshgrid(*ts, **k),
          [((3,), (4,), {"indexing": "ij"}), ((3,), (4,), (2,), {"indexing": "xy"}),
           ((3,), (), {"indexing": "xy"})],
          lambda *ts, indexing="ij": tuple(np.meshgrid(*ts, indexing=indexing)),
          errors=[ErrorInput(Sample((np.ones((2, 2)),), {"indexing": "ij"}), RuntimeError,
                             "0D or 1D")]),
)
for _n, _np_fn in (("atleast_1d", np.atleast_1d), ("atleast_2d", np.atleast_2d),
                   ("atleast_3d", np.atleast_3d)):
    add(multi(_n, lambda m, *ts, _n=_n: getattr(m, _n)(*ts),
              [((),), ((3,),), ((2, 3),), ((2, 3, 4),), ((), (3,))],
              lambda *ts, _f=_np_fn: _f(*ts) if len(ts) == 1 else tuple(_f(*ts))))


# ---------------------------------------------------------------- stacking and splitting
add(
    listed("hstack", lambda m, ts: m.hstack(ts), [((2, 3), (2, 1)), ((3,), (2,)), ((), ())],
           lambda ts: np.hstack(ts),
           errors=[ErrorInput(Sample(([np.ones((2, 3)), np.ones((3, 3))],)), RuntimeError,
                              "Sizes of tensors must match")]),
    listed("vstack", lambda m, ts: m.vstack(ts), [((2, 3), (1, 3)), ((3,), (3,))],
           lambda ts: np.vstack(ts)),
    listed("row_stack", lambda m, ts: m.row_stack(ts), [((2, 3), (1, 3))],
           lambda ts: np.vstack(ts)),
    listed("dstack", lambda m, ts: m.dstack(ts), [((2, 3), (2, 3)), ((3,), (3,)),
                                                  ((2, 2, 1), (2, 2, 2))],
           lambda ts: np.dstack(ts)),
    listed("column_stack", lambda m, ts: m.column_stack(ts), [((3,), (3, 2), (3,)), ((), ())],
           lambda ts: np.column_stack(ts)),
    entry("tensor_split", lambda m, x, ios, **k: m.tensor_split(x, ios, **k),
          [((7, 2), {"ios": 3}), ((3, 7), {"ios": [1, 4], "dim": 1}),
           ((6,), {"ios": [-2, 8]}), ((2, 5), {"ios": 7, "dim": -1})],
          lambda x, ios, dim=0: tuple(np.array_split(x, ios, axis=dim)),
          errors=[ErrorInput(Sample((np.ones(3),), {"ios": 0}), RuntimeError,
                             "larger than 0")]),
    entry("hsplit", lambda m, x, s: m.hsplit(x, s), [((3, 4), {"s": 2}), ((6,), {"s": [2, 3]})],
          lambda x, s: tuple(np.hsplit(x, s)),
          errors=[ErrorInput(Sample((np.ones((3, 5)),), {"s": 2}), RuntimeError,
                             "not divisible")]),
    entry("vsplit", lambda m, x, s: m.vsplit(x, s), [((4, 3), {"s": 2}), ((4, 3), {"s": [1]})],
          lambda x, s: tuple(np.vsplit(x, s))),
    entry("dsplit", lambda m, x, s: m.dsplit(x, s), [((2, 3, 4), {"s": 2})],
          lambda x, s: tuple(np.dsplit(x, s))),
)


# ---------------------------------------------------------------- products
FL = ("float32", "float64")
add(
    multi("outer", lambda m, a, b: m.outer(a, b), [((3,), (4,)), ((0,), (2,))], np.outer,
          dtypes=FL + ("int64",), covers=("ger",),
          errors=[ErrorInput(Sample((np.ones((2, 2)), np.ones(2))), RuntimeError, "1D")]),
    multi("cross", lambda m, a, b, **k: m.cross(a, b, **k),
          [((4, 3), (4, 3), {"dim": 1}), ((3, 2), (3, 1), {"dim": 0}), ((2, 3), (1, 3), {"dim": -1})],
          lambda a, b, dim: np.cross(a, b, axis=dim), dtypes=FL + ("int64",),
          errors=[ErrorInput(Sample((np.ones((2, 4)), np.ones((2, 4))), {"dim": 1}),
                             RuntimeError, "must have length 3"),
                  ErrorInput(Sample((np.ones((2, 3)), np.ones(3)), {"dim": -1}), RuntimeError,
                             "same number of dimensions")]),
    multi("kron", lambda m, a, b: m.kron(a, b), [((2, 3), (3, 2)), ((2,), (2, 3)), ((2, 1, 2), (2, 2))],
          np.kron, dtypes=FL + ("int64",)),
    multi("tensordot", lambda m, a, b, **k: m.tensordot(a, b, **k),
          [((3, 4, 5), (4, 5, 2), {"dims": 2}), ((3, 4), (3, 2), {"dims": ([0], [0])}),
           ((2, 3), (4,), {"dims": 0})],
          lambda a, b, dims: np.tensordot(a, b, dims), dtypes=FL + ("int64",),
          errors=[ErrorInput(Sample((np.ones((2, 3)), np.ones((4, 3))), {"dims": ([0], [0])}),
                             RuntimeError, "contracted dimensions need to match")]),
    multi("baddbmm", lambda m, c, a, b, **k: m.baddbmm(c, a, b, **k),
          [((2, 3, 2), (2, 3, 4), (2, 4, 2), {"beta": 0.5, "alpha": 2.0}),
           ((3, 1), (2, 3, 4), (2, 4, 2)), ((2, 3, 2), (2, 3, 4), (2, 4, 2), {"beta": 0})],
          lambda c, a, b, beta=1, alpha=1: (beta * c if beta else 0) + alpha * (a @ b),
          dtypes=FL),
    multi("addbmm", lambda m, c, a, b, **k: m.addbmm(c, a, b, **k),
          [((3, 2), (2, 3, 4), (2, 4, 2), {"beta": 0.5, "alpha": 2.0})],
          lambda c, a, b, beta=1, alpha=1: beta * c + alpha * (a @ b).sum(0), dtypes=FL),
    multi("addmv", lambda m, c, a, b, **k: m.addmv(c, a, b, **k),
          [((3,), (3, 4), (4,), {"beta": 2.0}), ((), (3, 4), (4,))],
          lambda c, a, b, beta=1, alpha=1: beta * c + alpha * (a @ b), dtypes=FL),
    multi("addr", lambda m, c, a, b, **k: m.addr(c, a, b, **k),
          [((3, 4), (3,), (4,), {"alpha": 0.5}), ((4,), (3,), (4,))],
          lambda c, a, b, beta=1, alpha=1: beta * c + alpha * np.outer(a, b), dtypes=FL,
          errors=[ErrorInput(Sample((np.ones((2, 5)), np.ones(3), np.ones(4))), RuntimeError,
                             "must match")]),
    multi("chain_matmul", lambda m, *ts: m.chain_matmul(*ts),
          [((2, 3), (3, 4), (4, 2)), ((3, 3),)],
          lambda *ts: np.linalg.multi_dot(ts) if len(ts) > 1 else ts[0], dtypes=FL),
    multi("block_diag", lambda m, *ts: m.block_diag(*ts),
          [((2, 3), (), (2,), (1, 1))],
          lambda *ts: _np_block_diag(ts), dtypes=FL + ("int64",),
          errors=[ErrorInput(Sample((np.ones((2, 2, 2)),)), RuntimeError, "2 or fewer")]),
    multi("cartesian_prod", lambda m, *ts: m.cartesian_prod(*ts),
          [((3,), (2,)), ((2,), (2,), (3,)), ((4,),)],
          lambda *ts: np.array(list(itertools.product(*ts))) if len(ts) > 1 else ts[0],
          dtypes=FL + ("int64",)),
    entry("combinations", lambda m, x, **k: m.combinations(x, **k),
          [((4,), {}), ((4,), {"r": 3}), ((3,), {"r": 2, "with_replacement": True}),
           ((3,), {"r": 1}), ((2,), {"r": 3})],
          lambda x, r=2, with_replacement=False: _np_comb(x, r, with_replacement),
          dtypes=FL + ("int64",)),
    entry("trace", lambda m, x: m.trace(x), [((3, 4), {}), ((4, 4), {})],
          lambda x: np.trace(x), dtypes=FL + ("int64", "int32"),
          errors=[ErrorInput(Sample((np.ones(3),)), RuntimeError, "2D")]),
    entry("vander", lambda m, x, **k: m.vander(x, **k),
          [((4,), {}), ((3,), {"N": 5}), ((3,), {"N": 2, "increasing": True}),
           ((3,), {"N": 0})],
          lambda x, N=None, increasing=False: np.vander(x, N, increasing),
          dtypes=FL + ("int64",), noncontig=False,
          torch_grad=False),  # torch's vander backward fails (in-place on a saved view)
)


def _np_block_diag(ts):
    mats = [np.atleast_2d(t) for t in ts]
    rows = sum(m.shape[0] for m in mats)
    cols = sum(m.shape[1] for m in mats)
    out = np.zeros((rows, cols))
    r = c = 0
    for m in mats:
        out[r:r + m.shape[0], c:c + m.shape[1]] = m
        r, c = r + m.shape[0], c + m.shape[1]
    return out


def _np_comb(x, r, rep):
    gen = itertools.combinations_with_replacement if rep else itertools.combinations
    rows = [list(c) for c in gen(x, r)]
    return np.array(rows).reshape(-1, r)


def _cdist_samples(rng):
    r = lambda *s: rng.uniform(-1, 1, s)  # noqa: E731
    return [Sample((r(4, 3), r(5, 3))), Sample((r(2, 4, 3), r(2, 2, 3)), {"p": 1.0}),
            Sample((r(3, 2), r(4, 2)), {"p": 3.0}),
            Sample((r(3, 2), r(4, 2)), {"p": float("inf")}),
            Sample((r(30, 3), r(2, 3)), name="mm-path"),
            Sample((r(3, 2), r(4, 2)), {"compute_mode": "donot_use_mm_for_euclid_dist"})]


def _np_cdist(a, b, p=2.0, compute_mode=None):
    d = np.abs(a[..., :, None, :] - b[..., None, :, :])
    if p == float("inf"):
        return d.max(-1)
    return (d ** p).sum(-1) ** (1 / p)


add(OpEntry("cdist", lambda m, a, b, **k: m.cdist(a, b, **k), _cdist_samples, ref=_np_cdist,
            dtypes=FL, atol=1e-5, rtol=1e-5,
            grad_samples=lambda rng: [s for s in _cdist_samples(rng) if s.name != "mm-path"][:4],
            errors=[ErrorInput(Sample((np.ones((2, 3)), np.ones((2, 4)))), RuntimeError,
                               "same number of columns"),
                    ErrorInput(Sample((np.ones(3), np.ones(3))), RuntimeError, "at least 2D")]))
