"""The backward engine: a reverse topological sweep over the graph.

Gradients are summed per (node, output), reduced to each input's shape (un-broadcast) and
cast to its dtype, then handed on. The sweep runs with grad mode off unless
``create_graph=True``, so the common case records nothing.
"""
from __future__ import annotations

import os as _os
import sys as _sys

from typing import Any, Sequence

import numpy as _np

from ember.autograd.grad_mode import _State
from ember.autograd.graph import AccumulateGrad, Node, accumulate_node
from ember.backend.cuda import stream_capturing
from ember.tensor import Tensor, _make


def _root_node(t: Tensor, i: int) -> tuple:
    if not t._requires_grad:
        raise RuntimeError(f"element {i} of tensors does not require grad and does not have a "
                           "grad_fn")
    if t._grad_fn is None:
        return accumulate_node(t), 0
    return t._grad_fn, t._output_nr


def _make_root_grad(t: Tensor, g: Any, i: int) -> Tensor:
    if g is None:
        if t._data.size != 1:
            raise RuntimeError("grad can be implicitly created only for scalar outputs "
                               f"(output {i} has shape {tuple(t.shape)})")
        return _make(_ones_like(t._data), t._dtype, t._device)
    import ember
    if not isinstance(g, Tensor):
        g = ember.tensor(g, dtype=t._dtype, device=t._device)
    if g._data.shape != t._data.shape:
        raise RuntimeError(f"Mismatch in shape: grad_output[{i}] has a shape of {g.shape} and "
                           f"output[{i}] has a shape of {t.shape}.")
    return g


def _ones_like(arr: Any) -> Any:
    if type(arr) is _np.ndarray:
        if not arr.shape:   # a scalar loss: copying a cached 1 is ~5x cheaper than np.ones
            one = _ONE.get(arr.dtype)
            if one is None:
                one = _ONE[arr.dtype] = _np.ones((), arr.dtype)
            return one.copy()
        return _np.ones(arr.shape, arr.dtype)
    out = type(arr)(arr.shape, arr.dtype)   # uninitialised memory: fill, never * 0 (NaN bits)
    if arr.size == 1:
        # a scalar loss on the GPU: a memcpy from a cached device 1 (~6 us of host time)
        # instead of CuPy's fill kernel (~13 us); the cached array is never handed out
        key = (arr.dtype, arr.data.device_id)
        one = _ONE.get(key)
        if one is None:
            if stream_capturing():   # made in a capture, it would hold its 1 only after a replay
                out.fill(1)
                return out
            with arr.device:
                one = _ONE[key] = type(arr)((), arr.dtype)
                one.fill(1)
        out.data.copy_from_device_async(one.data, out.nbytes)
        return out
    out.fill(1)
    return out


_ONE: dict = {}


def _const_one(arr: Any) -> Any:
    """A cached device 1 of ``arr``'s shape (one element) and dtype: handed only to backwards
    that never write their gradient or pass it on (``reads_grad_only``). None while a CUDA
    graph is captured and none was made yet (made there, it would be 1 only after a replay)."""
    key = (arr.dtype, arr.shape, arr.data.device_id, "const")
    one = _ONE.get(key)
    if one is None:
        if stream_capturing():
            return None
        with arr.device:
            one = _ONE[key] = type(arr)(arr.shape, arr.dtype)
            one.fill(1)
    return one


def run_backward(tensors: Sequence[Tensor], grads: Sequence[Any], retain_graph: bool,
                 create_graph: bool, inputs: Sequence[Tensor] | None = None,
                 capture: bool = False, allow_unused: bool = False) -> list | None:
    """Backpropagate from ``tensors``.

    With ``capture`` (``autograd.grad``) the gradients of ``inputs`` are returned instead of
    accumulated; with ``inputs`` and no capture (``backward(inputs=...)``) only those leaves
    accumulate.
    """
    roots = []
    for i, (t, g) in enumerate(zip(tensors, grads)):
        node, nr = _root_node(t, i)
        if g is None and not create_graph and t._data.size == 1 and \
                getattr(getattr(node, "_impl", None), "reads_grad_only", False) and \
                not (node._tensor_pre_hooks or node._retains or node._pre_hooks):
            # A scalar loss whose CUDA backward only reads its gradient (cross_entropy's
            # fused kernels) and that no hook can see: a cached device 1 instead of a new
            # array and a copy each step
            one = _const_one(t._data)
            if one is not None:
                roots.append((node, nr, _make(one, t._dtype, t._device)))
                continue
        roots.append((node, nr, _make_root_grad(t, g, i)))

    # Targets: where gradients are captured (grad) or the only places accumulated (inputs=).
    targets: dict = {}
    if inputs is not None:
        for k, t in enumerate(inputs):
            if not t._requires_grad:
                raise RuntimeError(f"One of the differentiated Tensors (input {k}) does not "
                                   "require grad")
            if t._grad_fn is None:
                targets[(accumulate_node(t), 0)] = k
            else:
                targets[(t._grad_fn, t._output_nr)] = k

    # Topological order of the reachable graph (iterative DFS, post-order, reversed). A node
    # is pushed again under a marker when first expanded; popping the marker finishes it.
    order: list = []
    seen = set()
    stack = [r[0] for r in roots]
    push = stack.append
    pop = stack.pop
    while stack:
        node = pop()
        if node is _MARK:
            order.append(pop())
            continue
        if node in seen:
            continue
        seen.add(node)
        push(node)
        push(_MARK)
        for e in node.next_edges:
            if e is not None and e[0] not in seen:
                push(e[0])
    order.reverse()

    needed = None
    if targets:
        target_nodes = {k[0] for k in targets}
        needed = set()
        for node in reversed(order):  # children before parents
            if node in target_nodes or any(e is not None and e[0] in needed
                                           for e in node.next_edges):
                needed.add(node)

    buffers: dict = {}
    for node, nr, g in roots:
        buf = buffers.setdefault(node, [None] * max(node.n_outputs, nr + 1))
        buf[nr] = g if buf[nr] is None else buf[nr] + g

    captured: list = [None] * len(inputs) if inputs is not None else []
    stolen = set()   # user-given grads are never stolen
    for r in roots:
        stolen.add(id(r[2]._data))
    # autocast's bulk weight casts: their gradients are cast back together after the sweep
    # (only where no hook, capture, anomaly check or double backward could tell the difference)
    deferred: list | None = [] if _DEFER_CASTS and not (create_graph or targets or
                                                        _State.anomaly) else None
    prev = _State.enabled
    _State.enabled = bool(create_graph)
    try:
        for node in order:
            buf = buffers.pop(node, None)
            if buf is None or (needed is not None and node not in needed):
                continue
            if node._tensor_pre_hooks or node._retains or node._pre_hooks:
                buf = _pre_hooks(node, buf)
            if targets:
                for nr, g in enumerate(buf):
                    k = targets.get((node, nr))
                    if k is not None and g is not None:
                        captured[k] = g if captured[k] is None else captured[k] + g
            if type(node) is AccumulateGrad:
                if capture:
                    continue
                if targets and (node, 0) not in targets:
                    continue
                if buf[0] is not None:
                    _accumulate(node.variable, buf[0], create_graph, stolen)
                continue
            if node._defer and deferred is not None and _defer(node, buf, deferred):
                if not retain_graph:
                    node.release()
                continue
            # The node's backward, then its gradients handed to the next nodes' buffers
            # (written here rather than in a helper: this runs once per node of every step).
            if node.n_outputs > 1:
                buf = _materialize(node, buf)
                if buf is None:
                    continue
            try:
                res = node.apply_backward(buf)
            except Exception as exc:
                if node._traceback is not None:
                    _anomaly_report(node)
                raise exc
            edges = node.next_edges
            if len(res) != len(edges):
                raise RuntimeError(f"function {node.name()} returned an incorrect number of "
                                   f"gradients (expected {len(edges)}, got {len(res)})")
            if _State.anomaly:
                _check_finite(node, res)
            if node._post_hooks:
                for fn in list(node._post_hooks.values()):
                    fn(tuple(res), tuple(buf))
            for e, g in zip(edges, res):
                if e is None or g is None:
                    continue
                nxt, nr, shape, dt = e
                if type(g) is not Tensor and not isinstance(g, Tensor):
                    raise TypeError(f"function {node.name()} returned a gradient of type "
                                    f"{type(g).__name__}; expected a Tensor")
                if g._data.shape != shape:
                    g = _reduce_to(g, shape, node)
                if g._dtype is not dt:
                    if g._dtype.is_complex and not dt.is_complex:
                        g = g.real  # real inputs take the real part of a complex gradient
                    g = g.to(dt)
                nbuf = buffers.get(nxt)
                if nbuf is None:
                    n = nxt.n_outputs
                    if n == 1 and nr == 0:
                        buffers[nxt] = [g]
                        continue
                    nbuf = buffers[nxt] = [None] * (n if n > nr else nr + 1)
                old = nbuf[nr]
                nbuf[nr] = g if old is None else _sum(old, g)
            if not retain_graph:
                node.release()
        if deferred:
            _cast_deferred(deferred, stolen)
    finally:
        _State.enabled = prev

    if capture:
        if not allow_unused:
            for k, g in enumerate(captured):
                if g is None:
                    raise RuntimeError(
                        f"One of the differentiated Tensors (input {k}) appears to not have been "
                        "used in the graph. Set allow_unused=True if this is the desired "
                        "behavior.")
        return captured
    return None


_DEFER_CASTS = _os.environ.get("EMBER_DEFER_CASTS", "1") != "0"   # 0: each cast's backward


def _defer(node: Node, buf: list, deferred: list) -> bool:
    """Whether the gradient of a bulk weight cast (``node``: the cast of a leaf parameter to
    bf16/fp16 under autocast, made by :func:`ember.amp.autocast_mode._bulk_cast` on CUDA)
    was set aside in ``deferred`` for :func:`_cast_deferred`, instead of running the cast's
    backward now: one launch for all of a step's weights, where each had a cast kernel, an
    allocation and a node's dispatch (~50 in a ResNet-50 or GPT-2 step). Only when nothing
    can observe the leaf's gradient before the sweep ends: no hooks on the node, the leaf or
    its sink, and a gradient of the leaf's shape."""
    e = node.next_edges[0]
    g = buf[0]
    if e is None or g is None or node._post_hooks or len(buf) != 1:
        return False
    acc = e[0]
    if type(acc) is not AccumulateGrad or acc._tensor_pre_hooks or acc._retains or \
            acc._pre_hooks:
        return False
    leaf = acc.variable
    if leaf._hooks or (leaf.__dict__ and leaf.__dict__.get("_post_acc_hooks")) or \
            g._data.shape != e[2] or g._device is not leaf._device:
        return False
    deferred.append((leaf, g, e[3]))
    return True


def _cast_deferred(deferred: list, stolen: set) -> None:
    """Cast the gradients :func:`_defer` set aside to their leaves' dtypes (one launch for
    each device and pair of dtypes) and accumulate them."""
    from ember.backend.cuda_ops.kernels_pointwise import cast_all  # noqa: PLC0415
    import cupy  # noqa: PLC0415 - deferred gradients are CUDA arrays
    groups: dict = {}
    for leaf, g, dt in deferred:
        groups.setdefault((leaf._device, g._data.dtype, dt), []).append((leaf, g))
    for (dev, _, dt), pairs in groups.items():
        with cupy.cuda.Device(dev.index or 0):   # one launch per device and pair of dtypes
            outs = cast_all(cupy, [g._data for _, g in pairs], dt.np)
        for (leaf, g), arr in zip(pairs, outs):
            _accumulate(leaf, _make(arr, dt, dev), False, stolen)


def _pre_hooks(node: Node, buf: list) -> list:
    tph = node._tensor_pre_hooks
    if tph:
        for nr, hooks in tph.items():
            if nr < len(buf) and buf[nr] is not None:
                for fn in list(hooks.values()):
                    res = fn(buf[nr])
                    if res is not None:
                        buf[nr] = res
    ret = node._retains
    if ret:
        for nr, ref in ret.items():
            t = ref()
            if t is not None and nr < len(buf) and buf[nr] is not None:
                g = buf[nr]
                t._grad = g.detach().clone() if t._grad is None else t._grad + g.detach()
    if node._pre_hooks:
        for fn in list(node._pre_hooks.values()):
            res = fn(tuple(buf))
            if res is not None:
                buf = list(res)
    return buf


def _materialize(node: Node, buf: list) -> list | None:
    """A multi-output node's gradients with zeros for the missing ones (None: none arrived,
    the node is skipped), unless the node opted out (``ctx.set_materialize_grads(False)``)."""
    if not getattr(node, "materialize_grads", True) or all(g is not None for g in buf):
        return buf
    if all(g is None for g in buf):
        return None
    import ember
    # outputs an op declares non-differentiable (indices, batch statistics) get no zeros:
    # their backwards never read those gradients
    skip = getattr(getattr(node, "op", None), "nondiff_outputs", ())
    return [g if g is not None or k in skip else ember.zeros(m[0], dtype=m[1], device=m[2])
            for k, (g, m) in enumerate(zip(buf, node.out_meta))]


_MARK = object()   # the DFS's "finish the node below" entry


def _sum(a: Tensor, b: Tensor) -> Tensor:
    """Two gradients of one input, added. Off the CPU through the dispatcher: the no-grad
    ``+`` fast path hands the arrays to CuPy, whose result is C-ordered even for two
    channels-last gradients (and its strided reads are uncoalesced); the op's CUDA
    implementation keeps their layout."""
    if a._device.type == "cpu" or _State.enabled:
        return a + b
    from ember.ops.registry import OPS, apply
    return apply(OPS["add"], (a, b, 1))


def _reduce_to(g: Tensor, shape: tuple, node: Node) -> Tensor:
    """Sum a gradient over broadcast dimensions back to the input's shape."""
    gs = g._data.shape
    lead = len(gs) - len(shape)
    if lead < 0 or any(s != 1 and s != gs[lead + i] for i, s in enumerate(shape)):
        raise RuntimeError(f"function {node.name()} returned an invalid gradient: shape "
                           f"{tuple(gs)} can't be reduced to the input's shape {tuple(shape)}")
    return g.sum_to_size(shape)


def _accumulate(leaf: Tensor, g: Tensor, create_graph: bool, stolen: set) -> None:
    if leaf._hooks:
        for fn in list(leaf._hooks.values()):
            res = fn(g)
            if res is not None:
                g = res
    if leaf._grad is None:
        if not create_graph:
            arr = g._data
            # Steal the gradient only when nothing else can see or alias its memory, and it
            # has the leaf's layout or C order (torch's gradient layout contract: a dense
            # channels-last weight keeps a channels-last gradient).
            # (CuPy arrays have no read-only flag: asking their flags object for one cost
            # a failed attribute lookup per parameter and step)
            if (id(arr) in stolen or g._base is not None or not _owns(arr)
                    or (isinstance(arr, _np.ndarray) and not arr.flags.writeable)
                    or not _layout_ok(arr, leaf._data)):
                arr = _copy_like(arr, leaf._data)
            stolen.add(id(arr))
            leaf._grad = _make(arr, leaf._dtype, leaf._device)
        else:
            leaf._grad = g
    elif create_graph or leaf._grad._requires_grad:
        leaf._grad = leaf._grad + g
    else:
        leaf._grad._data += g._data
        leaf._grad._version[0] += 1
    hooks = leaf.__dict__.get("_post_acc_hooks") if leaf.__dict__ else None
    if hooks:
        for fn in list(hooks.values()):
            fn(leaf)


def _layout_ok(arr: Any, like: Any) -> bool:
    """Torch's gradient layout contract: a dense leaf's gradient has the leaf's strides,
    any other leaf's is C-contiguous."""
    if like.flags.c_contiguous:
        return arr.flags.c_contiguous
    lay = _LAYOUT[0]
    if lay is None:
        from ember.backend.cuda_ops import _layout as lay   # pure Python; loaded once
        _LAYOUT[0] = lay
    if lay.dense_order(like) is None:
        return arr.flags.c_contiguous
    return arr.shape == like.shape and lay.same_layout(arr, like) is not None


# ember.backend.cuda_ops._layout, bound on first use (an import statement per call costs ~1 us
# on each channels-last weight's gradient every step)
_LAYOUT: list = [None]


def _copy_like(arr: Any, like: Any) -> Any:
    """A copy of ``arr`` in the leaf's layout when the leaf is dense (C order otherwise)."""
    if like.flags.c_contiguous or arr.shape != like.shape:
        return arr.copy()
    from ember.backend.cuda_ops import _layout
    order = _layout.dense_order(like)
    if order is None:
        return arr.copy()
    import numpy as np
    xp = np if isinstance(arr, np.ndarray) else __import__("cupy")
    out = _layout.empty_like(xp, like, arr.dtype, order)
    out.transpose(order)[...] = arr.transpose(order)
    return out


def _owns(arr: Any) -> bool:
    if isinstance(arr, _np.ndarray):
        return bool(arr.flags.owndata)
    # CuPy: its flags' owndata is only ``base is None``, so a view is judged here (it had
    # been asked first, and every CuPy view gradient was copied: 6 copies an MLP step, one
    # per parameter of a GPT-2 or ResNet-50 step).
    base = arr.base
    if base is None:
        return True
    # A channels-last gradient is a permuted view of one fresh block (cuda_ops._layout's
    # empty_like). It owns that block when it covers all of it and nothing else holds the
    # block: the references are the view's own, this local and getrefcount's argument.
    # (Copying instead cost a kernel and ~100 us of host time per conv weight and step.)
    return (base.base is None and arr.data.ptr == base.data.ptr and arr.nbytes == base.nbytes
            and _sys.getrefcount(base) <= 3)


def _check_finite(node: Node, res: tuple) -> None:
    for i, g in enumerate(res):
        if isinstance(g, Tensor) and g._dtype.category >= 2:
            xp = g._data
            import numpy as np
            mod = np if isinstance(xp, np.ndarray) else __import__("cupy")
            if not bool(mod.isfinite(xp).all()):
                if node._traceback is not None:
                    _anomaly_report(node)
                raise RuntimeError(f"Function '{node.name()}' returned nan values in its {i}th "
                                   "output.")


def _anomaly_report(node: Node) -> None:
    import warnings
    tb = "".join(node._traceback or [])
    warnings.warn(f"Error detected in {node.name()}. Traceback of forward call that caused the "
                  f"error:\n{tb}", RuntimeWarning, stacklevel=2)


class CopySlices(Node):
    """History of a base tensor after an in-place op wrote through one of its views.

    Backward: the base's old value gets the gradient outside the view's region; the op that
    produced the view's new value gets the gradient inside it.
    """

    _name = "CopySlices"
    _pre_hooks = None
    _tensor_pre_hooks = None
    _post_hooks = None
    _retains = None
    _traceback = None

    def __init__(self, base: Tensor, chain: tuple, out: Tensor) -> None:
        super().__init__()
        self.chain = chain
        self.out_meta = [(base._data.shape, base._dtype, base._device)]
        base_edge = None
        if base._requires_grad:
            node = base._grad_fn if base._grad_fn is not None else accumulate_node(base)
            base_edge = (node, base._output_nr, base._data.shape, base._dtype)
        out_edge = (out._grad_fn, out._output_nr, out._data.shape, out._dtype)
        self.next_edges = [base_edge, out_edge]

    def apply_backward(self, grads: list) -> tuple:
        import ember
        from ember.ops.registry import _replay_view
        g = grads[0]
        with ember.no_grad():
            mask = ember.ones(g.shape, dtype=g.dtype, device=g.device)
            _replay_view(mask, self.chain).zero_()
        return g * mask, _replay_view(g, self.chain)
