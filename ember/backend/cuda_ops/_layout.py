"""Memory layouts of CuPy arrays for the flat (layout-agnostic) CUDA kernels.

CuPy's elementwise kernels walk an array in logical (C) order, so on a channels-last tensor
(logical NCHW, memory NHWC) neighbouring threads touch elements ``C`` apart: every access is
uncoalesced. A *dense* array (its elements fill one block of memory, no gaps or overlaps)
can instead be processed as the flat block it is, when every operand shares the layout; the
result is then allocated in that same layout, as torch keeps the input's memory format.
Pure Python on ``shape``/``strides``: nothing here imports CuPy.
"""
from __future__ import annotations

from typing import Any


_ORDERS: dict = {}       # (shape, strides, itemsize) -> dense_order (a training loop repeats a
_MISS = object()         # few hundred geometries; the analysis costs ~4 us of Python each)


def dense_order(a: Any) -> list | None:
    """Axes of ``a`` from outermost to innermost in memory when ``a`` is dense with positive
    strides (size-1 axes, whose strides mean nothing, first), else None. The list is shared:
    callers must not change it."""
    key = (a.shape, a.strides, a.itemsize)
    hit = _ORDERS.get(key, _MISS)
    if hit is not _MISS:
        return hit
    if len(_ORDERS) > 4096:
        _ORDERS.clear()
    res = _ORDERS[key] = _dense_order(a.shape, a.strides, a.itemsize)
    return res


def _dense_order(shape: tuple, strides: tuple, itemsize: int) -> list | None:
    big = [i for i in range(len(shape)) if shape[i] != 1]
    big.sort(key=lambda i: -strides[i])
    expect = itemsize
    for ax in reversed(big):
        if strides[ax] != expect:
            return None
        expect *= shape[ax]
    return [i for i in range(len(shape)) if shape[i] == 1] + big


def same_layout(*arrays: Any) -> list | None:
    """The common :func:`dense_order` when every array is dense, of one shape, and has the
    same element strides (so one flat index addresses the same element in each), else None."""
    a0 = arrays[0]
    order = dense_order(a0)
    if order is None:
        return None
    st0 = None
    for a in arrays[1:]:
        if a.shape != a0.shape:
            return None
        if a.strides == a0.strides and a.itemsize == a0.itemsize:
            continue   # the same geometry (the usual case: no element strides to build)
        if st0 is None:
            st0 = _elem_strides(a0)
        if _elem_strides(a) != st0 or dense_order(a) is None:
            return None
    return order


def _elem_strides(a: Any) -> tuple:
    return tuple(s // a.itemsize if n != 1 else 0 for s, n in zip(a.strides, a.shape))


def empty_like(xp: Any, a: Any, dtype: Any = None, order: list | None = None) -> Any:
    """A new array of ``a``'s shape laid out like ``a`` (dense arrays; C order otherwise)."""
    dt = a.dtype if dtype is None else dtype
    if order is None:
        if getattr(xp, "cuda", None) is not None:   # CuPy: the geometry's strides, kept
            key = (a.shape, a.strides, a.itemsize, dt)
            plan = _LIKE.get(key)
            if plan is not None:
                return from_plan(xp, a.shape, dt, plan)
            return planned_empty(xp, _LIKE, key, a.shape, dt, dense_order(a))
        order = dense_order(a)
    return _empty_in(xp, a.shape, dt, order)[0]


def from_plan(cp: Any, shape: tuple, dt: Any, plan: tuple) -> Any:
    """A CuPy array over one new pool allocation, as :func:`planned_empty` recorded it: one
    allocation and one array, where empty + transpose and the layout analysis cost ~4 us
    more (on ~300 outputs a ResNet-50 step)."""
    if plan[1] is None:
        return cp.ndarray(shape, dt)
    return cp.ndarray(shape, dt, cp.cuda.alloc(plan[1]), strides=plan[0])


def planned_empty(cp: Any, plans: dict, key: Any, shape: tuple, dt: Any,
                  order: list | None) -> Any:
    """A new CuPy array of logical ``shape`` stored in axis ``order`` (outermost first; None
    is C order), recording its ``(strides, bytes)`` in ``plans[key]`` for :func:`from_plan`."""
    out, c_order = _empty_in(cp, shape, dt, order)
    if out.nbytes:
        if len(plans) > 4096:
            plans.clear()
        plans[key] = (out.strides, None if c_order else out.nbytes)
    return out


def _empty_in(xp: Any, shape: tuple, dt: Any, order: list | None) -> tuple:
    """(a new array of ``shape`` stored in axis ``order``, whether that is plain C order)."""
    if order is None:
        return xp.empty(shape, dt), True
    key = (shape, tuple(order))
    plan = _EMPTY.get(key)
    if plan is None:
        if len(_EMPTY) > 4096:
            _EMPTY.clear()
        plan = _EMPTY[key] = False if order == sorted(order) else \
            (tuple(shape[i] for i in order), inverse(order))
    if plan is False:
        return xp.empty(shape, dt), True
    return xp.empty(plan[0], dt).transpose(plan[1]), False


def inverse(order: Any) -> tuple:
    """The permutation that undoes ``order``: ``physical.transpose(inverse(order))`` is the
    logical view of an array allocated with its axes in ``order``."""
    inv = [0] * len(order)
    for k, ax in enumerate(order):
        inv[ax] = k
    return tuple(inv)


# (shape, strides, itemsize, new dtype) -> (the new array's strides, its bytes; None for a
# plain C-ordered allocation): empty_like's result geometry for CuPy arrays
_LIKE: dict = {}
# (shape, dense order) -> (physical shape, axes back to logical), False for C order: the
# per-call list building cost ~10 us of Python on each of ~240 outputs of a ResNet-50 step
_EMPTY: dict = {}


def as_layout(xp: Any, a: Any, like: Any, dtype: Any = None) -> Any:
    """``a`` (same shape as ``like``) with ``like``'s layout and ``dtype``: ``a`` itself when
    it already has them, else one copy."""
    dt = a.dtype if dtype is None else dtype
    if a.dtype == dt and same_layout(a, like) is not None:
        return a
    out = empty_like(xp, like, dt)
    order = dense_order(out)
    # copy through the physical order of the destination: its writes are coalesced
    out.transpose(order)[...] = a.transpose(order)
    return out


def is_channels_last(a: Any) -> bool:
    """Whether ``a`` (N, C, *spatial) is dense with the channel axis innermost in memory."""
    if a.ndim < 3:
        return False
    want = [0] + list(range(2, a.ndim)) + [1]
    st = a.strides
    acc = a.itemsize
    for ax in reversed(want):
        if a.shape[ax] != 1 and st[ax] != acc:
            return False
        acc *= a.shape[ax]
    return True
