"""The op registry: one declaration per op, and the dispatcher that runs it.

A declaration is a class decorated with :func:`register`::

    @register("exp", meta=same_shape, promote="int_to_float", onnx="Exp")
    class Exp(OpDef):
        def forward(ctx, xp, input):
            y = xp.exp(input)
            ctx.save(y)                 # save only what backward needs
            return y

        def backward(ctx, grad):         # ember ops, so double backward comes free
            (y,) = ctx.saved
            return grad * y

From it the registry makes ``ember.exp``, ``Tensor.exp``, ``Tensor.exp_`` (with
``inplace=True``), the autograd node class ``ExpBackward0``, and the entries a tracer and an
exporter walk (``OPS``). ``forward`` gets arrays and the array module ``xp``; ``backward`` gets
and returns Tensors, one gradient per positional argument of ``forward``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import numpy as np

from ember import dtypes as _dt
from ember._state import _State
from ember.autograd.graph import Node, accumulate_node
from ember.backend import device_of_array as _device_of_array, get_xp
from ember.errors import EmberError, op_error
from ember.backend.device import cpu_device as _CPU
from ember.tensor import Tensor, _make

OPS: dict[str, "OpDef"] = {}
_FROM_NP = _dt._FROM_NP


class TensorMeta(NamedTuple):
    """What a meta rule returns: the output shape, and its dtype (None: the promoted dtype)."""

    shape: tuple
    dtype: Any = None


class OpDef:
    """Base class of op declarations; the attributes are set by :func:`register`."""

    name: str = ""
    meta: Callable | None = None
    promote: str | None = None
    promote_args: tuple = (0,)
    differentiable: bool = True
    view: bool = False
    variadic: bool = False
    nondiff_outputs: tuple = ()
    onnx: Any = None
    node_cls: type = None  # type: ignore[assignment]
    changes_device: bool = False  # outputs may live on another device (``_to_copy``)
    out_type: Any = None   # a namedtuple type for multi-output ops (values, indices)
    # A CUDA implementation (an OpDef-like class with forward/backward over CuPy arrays) that
    # ember.backend.cuda_ops installs on first GPU use; its forward may return NotImplemented
    # to fall back to the generic xp code for cases it does not cover.
    cuda_impl: Any = None

    def forward(ctx, xp, *args):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(ctx, *grads):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<op {self.name}>"


# ---------------------------------------------------------------------- autograd node for ops
class OpNode(Node):
    """The ``grad_fn`` of an op call; it is also the op's ``ctx`` during forward."""

    op: OpDef
    _saved = ()
    _raw = ()
    _released = False
    _impl = None  # the CUDA implementation whose forward ran, when one did
    # (apply makes op nodes without __init__; their edges and traceback are set there)

    def save(self, *arrays: Any) -> None:
        """Forward-time: keep these arrays (inputs, outputs or temporaries) for backward."""
        self._raw = arrays

    def save_for_backward(self, *arrays: Any) -> None:
        self._raw = arrays

    @property
    def saved(self) -> tuple:
        """Backward-time: the saved values as Tensors, after the in-place version check."""
        if self._released:
            raise RuntimeError(
                "Trying to backward through the graph a second time (or directly access saved "
                "tensors after they have already been freed). Saved intermediate values of the "
                "graph are freed when you call .backward() or autograd.grad(). Specify "
                "retain_graph=True if you need to backward through the graph a second time or if "
                "you need to access saved tensors after calling backward.")
        out = []
        for entry in self._saved:
            kind = entry[0]
            if kind == 1:    # an input tensor
                t, version = entry[1], entry[2]
                if t._version[0] != version:
                    raise _version_error(t, self, version)
                out.append(t)
            elif kind == 2:  # one of our outputs: re-wrap, pointing back at this node
                _, k, arr, vlist, version, dt, dev = entry
                if vlist[0] != version:
                    raise _version_error(_make(arr, dt, dev), self, version, vlist[0], k)
                t = _make(arr, dt, dev, True)
                t._grad_fn = self
                t._output_nr = k
                t._version = vlist
                out.append(t)
            elif kind == 3:  # a temporary array: a constant for backward
                arr = entry[1]
                out.append(_make(arr, _FROM_NP[arr.dtype], entry[2]))
            elif kind == 4:  # a Python value (a scalar operand)
                out.append(entry[1])
            else:
                out.append(None)
        return tuple(out)

    saved_tensors = saved

    @property
    def next_functions(self) -> tuple:
        # torch lists its tensor operands (a Python scalar operand shows as (None, 0)), not
        # non-tensor parameters such as alpha or dim.
        keep = set(self.op.promote_args) | {0}
        return tuple((e[0], e[1]) if e is not None else (None, 0)
                     for i, e in enumerate(self.next_edges) if e is not None or i in keep)

    @property
    def needs_input_grad(self) -> tuple:
        # read by forwards (mul, div ...) on each recorded call: a list comprehension is
        # cheaper than tuple() over a generator
        return tuple([e is not None for e in self.next_edges])

    def apply_backward(self, grads: list) -> tuple:
        impl = self._impl
        op = self.op
        # A fused CUDA backward works on raw arrays; double backward needs the generic one.
        if impl is not None and not _State.enabled:
            res = impl.backward(self, *grads)
        else:
            res = op.backward(self, *grads)
        if op.variadic:
            return tuple(res[0])  # one gradient per tensor of the sequence argument
        if type(res) is not tuple and not isinstance(res, (tuple, list)):
            res = (res,)
        return res

    def release(self) -> None:
        self._saved = ()
        self._released = True


def _version_error(t: Tensor, node: Node, expected: int, actual: int | None = None,
                   k: int | None = None) -> RuntimeError:
    actual = t._version[0] if actual is None else actual
    shape = list(t._data.shape)
    owner = f", which is output {k} of {node.name()}," if k is not None else ""
    return RuntimeError(
        "one of the variables needed for gradient computation has been modified by an inplace "
        f"operation: [{t._dtype} {shape}]{owner} is at version {actual}; expected version "
        f"{expected} instead. Hint: enable anomaly detection to find the operation that failed "
        "to compute its gradient, with ember.autograd.set_detect_anomaly(True).")


# ---------------------------------------------------------------------- promotion
def _compute_dtype(op: OpDef, args: tuple) -> tuple[_dt.dtype, _dt.dtype]:
    """(dtype the operands are cast to, dtype of the result) for an op's promotion kind."""
    operands = args[0] if op.variadic else [args[i] for i in op.promote_args if i < len(args)]
    common = _dt.result_type_of(operands)
    kind = op.promote if isinstance(op.promote, str) else op.promote(args)
    if kind == "default":
        return common, common
    if kind == "int_to_float":
        if common.category < 2:
            common = _dt.get_default_dtype()
        return common, common
    if kind == "bool":
        return common, _dt.bool
    if kind == "float_only":
        if common.category < 2:
            common = _dt.get_default_dtype()
        return common, common
    raise ValueError(f"unknown promotion kind {kind!r} for op {op.name}")


def _cast_operand(a: Any, dt: _dt.dtype, xp: Any) -> Any:
    """The array of one operand in the compute dtype; Python scalars stay (NumPy 2 keeps them weak)."""
    if isinstance(a, Tensor):
        if a._dtype is dt:
            return a._data
        if a._requires_grad and _State.enabled:
            return a.to(dt)  # differentiable cast: the cast tensor becomes the input
        return a._data.astype(dt.np)
    if isinstance(a, bool) and dt.category != 0:
        return int(a)
    if dt.category <= 1 and isinstance(a, float):
        return a
    if dt.category == 1 and isinstance(a, int) and not isinstance(a, bool):
        # Torch wraps out-of-range integer scalars; NumPy would raise OverflowError.
        info = np.iinfo(dt.np)
        if not info.min <= a <= info.max:
            return np.array(a).astype(dt.np)
    return a


# ---------------------------------------------------------------------- dispatcher
def apply(op: OpDef, args: tuple) -> Any:
    """Run one op call: checks, meta rule, promotion, forward on xp, and graph recording."""
    # This runs ~1,500 times a ResNet-50 step: the common case (tensors on one device, one
    # dtype, one array out) is written inline, without helper calls or lists built twice.
    dest = _DEST[0]
    if dest is not None:   # taken here, so the nested calls below (autocast casts) never see it
        _DEST[0] = None
    if op.variadic:
        return _apply_variadic(op, args, dest)
    # One pass: the arrays, the device, and whether any input requires grad (casts below
    # keep that: a differentiable cast of such an input requires grad).
    arrs = []
    dev = None
    mixed = False
    rg = False
    for a in args:
        if type(a) is Tensor or isinstance(a, Tensor):
            arrs.append(a._data)
            if a._requires_grad:
                rg = True
            if dev is None:
                dev = a._device
            elif a._device is not dev:
                mixed = True
        else:
            arrs.append(a)
    if mixed:
        dev = _common_device(op, [a for a in args if isinstance(a, Tensor)])
    elif dev is None:
        dev = _CPU
    arr_args = tuple(arrs)
    if _State.autocast is not None:
        cast_args = _CAST_ARGS[0]
        if cast_args is None:
            from ember.amp.autocast_mode import cast_args
            _CAST_ARGS[0] = cast_args
        cast = cast_args(op, args, dev.type)
        if cast is not args:  # a listed op: operands may have been cast
            args = cast
            arr_args = tuple(a._data if isinstance(a, Tensor) else a for a in args)
    meta = op.meta
    if meta is not None:
        meta(op, *args)
    xp = _np if dev is _CPU or dev.type == "cpu" else _gpu_xp(dev)

    # Promotion: cast operands to the compute dtype first (torch's rule, not NumPy's).
    out_dt = None
    promote = op.promote
    if promote is not None:
        # Fast: the promoted operands are Tensors of one dtype, with at most Python int/float
        # scalars beside a floating dtype (weak scalars: the tensors' dtype wins, nothing is
        # cast, and NumPy 2 keeps the array's dtype too). Else the promotion machinery.
        dt = None
        scalar = False
        n = len(args)
        for i in op.promote_args:
            if i >= n:
                continue
            a = args[i]
            if type(a) is Tensor or isinstance(a, Tensor):
                if dt is None:
                    dt = a._dtype
                elif a._dtype is not dt:
                    dt = None
                    break
            elif a is None:
                continue
            elif type(a) is float or type(a) is int:
                scalar = True
            else:
                dt = None
                break
        if dt is not None and (not scalar or dt.category >= 2):
            kind = promote if type(promote) is str else promote(args)
            if kind == "default":
                out_dt = dt
            elif kind == "bool":
                out_dt = _dt.bool
            elif dt.category >= 2 and (kind == "int_to_float" or kind == "float_only"):
                out_dt = dt
        if out_dt is None:
            # a CUDA implementation may take operands of two float dtypes as they are (add of
            # a float32 residual and a bf16 sublayer output): no cast of either first
            impl = op.cuda_impl
            takes = getattr(impl, "takes_mixed", None) if xp is not _np and dest is None \
                else None
            if takes is not None and takes(arr_args):
                out_dt = _compute_dtype(op, args)[1]
            else:
                args, arr_args, out_dt = _promote(op, args, arr_args, xp)

    ctx = _node(op, args) if rg and _State.enabled and op.differentiable else _NO_CTX
    out = _forward(op, ctx, xp, dest, arr_args, args)

    if type(out) is _ndarray or (xp is not _np and type(out) is xp.ndarray):
        # the common case: one array out (NumPy or CuPy), in the dtype promotion expects
        dt = _FROM_NP.get(out.dtype)
        if dt is not None and (out_dt is None or dt is out_dt):
            # a device-changing op (a cast under autocast, .to()) finds the output's device
            # from its array; a NumPy array is on the CPU
            if op.changes_device:
                dev = _CPU if type(out) is _ndarray else _device_of_array(out)
            res = _make(out, dt, dev)
            if op.view:
                _link_views(op, args, (res,), xp)
            if ctx is not _NO_CTX:
                _record(op, ctx, args, arr_args, (res,))
            return res
    return _wrap_outputs(op, args, arr_args, out, ctx, dev, out_dt, xp)


def _forward(op: OpDef, ctx: Any, xp: Any, dest: Any, arr_args: tuple, args: tuple) -> Any:
    """The op's forward on arrays: its CUDA implementation first on CuPy (``forward_into``
    ``dest`` for an in-place call; ``NotImplemented`` falls back to the generic forward),
    NumPy's exceptions re-raised as torch's types naming the op and the inputs."""
    try:
        impl = op.cuda_impl
        if impl is not None and xp is not _np:
            if dest is not None:
                out = impl.forward_into(ctx, xp, dest, *arr_args)
            else:
                out = impl.forward(ctx, xp, *arr_args)
            if out is NotImplemented:
                out = op.forward(ctx, xp, *arr_args)
            elif ctx is not _NO_CTX:
                ctx._impl = impl
            return out
        return op.forward(ctx, xp, *arr_args)
    except EmberError:
        raise
    except (TypeError, ValueError, IndexError, RuntimeError, ArithmeticError, AttributeError,
            KeyError, NotImplementedError, MemoryError) as exc:
        raise op_error(op.name, exc, args) from None


def _apply_variadic(op: OpDef, args: tuple, dest: Any) -> Any:
    """``apply`` for ops whose first argument is a sequence of tensors (``cat``, ``stack``)."""
    seq = tuple(args[0])
    for i, t in enumerate(seq):
        if not isinstance(t, Tensor):
            raise TypeError(f"[{op.name}] expected a sequence of Tensors, but element {i} "
                            f"is {type(t).__name__}")
    dev = _common_device(op, seq)
    if _State.autocast is not None:   # einsum is on autocast's low-precision list
        cast_args = _CAST_ARGS[0]
        if cast_args is None:
            from ember.amp.autocast_mode import cast_args
            _CAST_ARGS[0] = cast_args
        cast = cast_args(op, seq, dev.type)
        if cast is not seq:
            seq = tuple(cast)
            args = (seq,) + tuple(args[1:])
    meta = op.meta
    if meta is not None:
        meta(op, *args)
    xp = _np if dev.type == "cpu" else _gpu_xp(dev)
    out_dt = None
    arr_args = None
    if op.promote is not None:
        cdt, out_dt = _compute_dtype(op, args)
        casted = tuple(_cast_operand(t, cdt, xp) for t in seq)
        seq = tuple(c if isinstance(c, Tensor) else t for c, t in zip(casted, seq))
        arr_args = (tuple(c._data if isinstance(c, Tensor) else c for c in casted),) + \
            tuple(args[1:])
    if arr_args is None:
        arr_args = (tuple(t._data for t in seq),) + tuple(args[1:])
    need_grad = False
    if _State.enabled and op.differentiable:
        for t in seq:
            if t._requires_grad:
                need_grad = True
                break
    ctx = _node(op, args[0]) if need_grad else _NO_CTX
    out = _forward(op, ctx, xp, dest, arr_args, args)
    return _wrap_outputs(op, args, arr_args, out, ctx, dev, out_dt, xp)


def _promote(op: OpDef, args: tuple, arr_args: tuple, xp: Any) -> tuple:
    """(args, arrays, result dtype) after casting the promoted operands to the compute dtype."""
    cdt, out_dt = _compute_dtype(op, args)
    new_args = list(args)
    arr = list(arr_args)
    for i in op.promote_args:
        if i < len(args):
            c = _cast_operand(args[i], cdt, xp)
            if isinstance(c, Tensor):
                new_args[i] = c
                c = c._data
            arr[i] = c
    return tuple(new_args), tuple(arr), out_dt


def _wrap_outputs(op: OpDef, args: tuple, arr_args: tuple, out: Any, ctx: Any, dev: Any,
                  out_dt: Any, xp: Any) -> Any:
    """The general output step of ``apply``: several outputs, 0-d scalars, dtype fixes."""
    need_grad = ctx is not _NO_CTX
    multi = type(out) is tuple
    outs = out if multi else (out,)
    results = []
    changes_device = op.changes_device
    nd = xp.ndarray
    for arr in outs:
        if changes_device:
            odev = _device_of_array(arr)
        else:
            odev = dev
            if type(arr) is not nd and not isinstance(arr, nd):
                # NumPy returns scalars for 0-d results; keep what forward saved pointing at
                # the output array that the tensor will hold.
                orig, arr = arr, xp.asarray(arr)
                if need_grad and ctx._raw:
                    ctx._raw = tuple(arr if r is orig else r for r in ctx._raw)
        dt = _FROM_NP.get(arr.dtype)
        if out_dt is not None and dt is not out_dt and not multi and dt is not None and \
                dt.category == out_dt.category and out_dt is not _dt.bool:
            # Python-scalar-only operands: NumPy picked float64/int64; torch's is weaker.
            arr = arr.astype(out_dt.np)
            dt = out_dt
        if dt is None:
            raise op_error(op.name, TypeError(f"produced unsupported dtype {arr.dtype}"), args)
        results.append(_make(arr, dt, odev))

    if op.view:
        _link_views(op, args, results, xp)
    if need_grad:
        _record(op, ctx, args, arr_args, results)
    if multi:
        return op.out_type(*results) if op.out_type is not None else tuple(results)
    return results[0]


def apply_cast(a: Tensor, dt: _dt.dtype, made: Any = None) -> Tensor:
    """``apply(OPS["_to_copy"], (a, dt, None))`` for autocast's casts of real floating
    operands on their own device: the same forward (CUDA impl first), node and recording,
    without the steps such a cast never needs (argument scan, nested autocast lookup, meta
    rule, promotion, output dtype and device checks). An autocast Linear makes up to three of
    these inside its own call, each then about half the dispatcher's host cost.

    ``made``: the cast's result array, already computed (autocast's bulk weight casts on
    CUDA); only the node is made then."""
    op = OPS["_to_copy"]
    if made is not None:
        return _adopt_cast(op, a, dt, made)
    if _DEST[0] is not None or _State.anomaly or a._dtype.is_complex or a._dtype is dt:
        return apply(op, (a, dt, None))
    arr = a._data
    dev = a._device
    args = (a, dt, None)
    need_grad = a._requires_grad and _State.enabled
    ctx = _node(op, args) if need_grad else _NO_CTX
    try:
        out = NotImplemented
        if dev.type == "cpu":
            xp = _np
        else:
            xp = _gpu_xp(dev)
            impl = op.cuda_impl
            if impl is not None:
                out = impl.forward(ctx, xp, arr, dt, None)
                if out is not NotImplemented and need_grad:
                    ctx._impl = impl
        if out is NotImplemented:
            out = op.forward(ctx, xp, arr, dt, None)
    except EmberError:
        raise
    except (TypeError, ValueError, IndexError, RuntimeError, ArithmeticError, AttributeError,
            KeyError, NotImplementedError, MemoryError) as exc:
        raise op_error(op.name, exc, args) from None
    res = _make(out, dt, dev)
    if need_grad:
        _record(op, ctx, args, (arr, dt, None), (res,))
    return res


def _adopt_cast(op: OpDef, a: Tensor, dt: _dt.dtype, made: Any) -> Tensor:
    """:func:`apply_cast` with the result ``made`` already computed (a bulk cast): the tensor,
    and its node when ``a`` needs a gradient (on CUDA the impl's backward, as apply_cast)."""
    args = (a, dt, None)
    res = _make(made, dt, a._device)
    if a._requires_grad and _State.enabled:
        ctx = _node(op, args)
        impl = op.cuda_impl if a._device.type != "cpu" else None
        if impl is not None:
            impl.adopt(ctx, a._data, made)
            ctx._impl = impl   # its backward casts the gradient back directly
            ctx._defer = True  # or the engine casts all such gradients at once (engine._defer)
        else:
            op.adopt(ctx, a._data, made)
        _record(op, ctx, args, (a._data, dt, None), (res,))
    return res


class _AllFalse:
    """``needs_input_grad`` when nothing is recorded: every position is False."""

    def __getitem__(self, i: int) -> bool:
        return False


class _NoCtx:
    """The ctx handed to forward when no graph is recorded: saving is a no-op. One shared
    instance; attributes a forward sets on it are never read back."""

    __slots__ = ("__dict__",)

    def save(self, *arrays: Any) -> None:
        pass

    save_for_backward = save
    needs_input_grad = _AllFalse()


_NO_CTX = _NoCtx()
_np = np
_ndarray = np.ndarray
_new = object.__new__


def _common_device(op: OpDef, tin: Any) -> Any:
    if not tin:
        return _CPU
    dev = tin[0]._device
    for t in tin:
        if t._device is not dev:
            return _check_devices(op, list(tin))
    return dev


def _check_devices(op: OpDef, tin: list) -> Any:
    # Torch lets 0-dim CPU tensors mix with tensors on another device (they act as scalars).
    devs = {t._device for t in tin if not (t._device.type == "cpu" and t._data.ndim == 0)}
    if len(devs) > 1:
        desc = ", ".join(f"{tuple(t._data.shape)} on {t._device}" for t in tin)
        names = sorted(str(d) for d in devs)
        raise RuntimeError(f"[{op.name}] Expected all tensors to be on the same device, but found "
                           f"at least two devices, {names[0]} and {names[1]}! Tensors: {desc}")
    return devs.pop() if devs else tin[0]._device


def _link_views(op: OpDef, args: tuple, results: Any, xp: Any) -> None:
    """Outputs of a view op share the version counter of (and point at) the input's base;
    the chain of view ops from that base lets an in-place write through a view be replayed."""
    src = args[0]
    root = src._base
    if root is None:
        root = src
    chain = src._view_chain
    link = (op, args[1:])
    chain = (link,) if chain is None else chain + (link,)
    maybe = op.view == "maybe"
    for r in results:
        # a "maybe" view (reshape) is one unless the op had to copy; a C-contiguous input
        # never needs the copy (the flags read is ~5x cheaper than the memory check)
        if maybe and not (src._data.size and src._data.flags.c_contiguous) and \
                not xp.may_share_memory(r._data, src._data):
            continue
        r._base = root
        r._version = src._version
        r._view_chain = chain


def _gpu_xp(dev: Any) -> Any:
    """CuPy for a GPU device, bound once it has loaded (raises without it)."""
    xp = _GPU_XP[0]
    if xp is None:
        xp = _GPU_XP[0] = get_xp(dev)
    return xp


def _node(op: OpDef, inputs: Any) -> OpNode:
    """A new graph node for a recorded call of ``op`` on ``inputs``, its edges set (and,
    under anomaly detection, the forward's traceback)."""
    ctx = _new(op.node_cls)  # no __init__: the dispatcher fills the node in
    ctx.next_edges = _edges(inputs)
    if _State.anomaly:
        import traceback
        ctx._traceback = traceback.format_stack()[:-3]
    return ctx


def _edges(inputs: Any) -> list:
    """One edge per positional input: (grad_fn or AccumulateGrad, output_nr, shape, dtype),
    or None where no gradient is needed. Set on ctx before forward, so a forward can save
    only what the needed gradients use (``ctx.needs_input_grad``), as torch does."""
    edges = []
    for a in inputs:
        if (type(a) is Tensor or isinstance(a, Tensor)) and a._requires_grad:
            node = a._grad_fn
            if node is None:
                ref = a._acc
                node = ref() if ref is not None else None
                if node is None:
                    node = accumulate_node(a)
            edges.append((node, a._output_nr, a._data.shape, a._dtype))
        else:
            edges.append(None)
    return edges


def _record(op: OpDef, ctx: OpNode, args: tuple, arr_args: tuple, results: Any) -> None:
    """Finish a recorded call: what forward saved becomes ``ctx._saved``, and the
    differentiable outputs point at ``ctx``."""
    if len(results) > 1:
        ctx.n_outputs = len(results)
        ctx.out_meta = [(r._data.shape, r._dtype, r._device) for r in results]
    if ctx._raw:
        _save_raw(op, ctx, args, arr_args, results)
    nondiff = op.nondiff_outputs
    for k, r in enumerate(results):
        if k in nondiff or r._dtype.category < 2:
            continue
        r._requires_grad = True
        r._grad_fn = ctx
        r._output_nr = k


def _save_raw(op: OpDef, ctx: OpNode, args: tuple, arr_args: tuple, results: Any) -> None:
    """Turn the arrays forward saved into entries that backward's ``saved`` re-checks: an
    input tensor with its version (1), an output (2), a temporary (3), a Python value (4)."""
    inputs = args[0] if op.variadic else args
    arrays = arr_args[0] if op.variadic else arr_args
    saved = []
    for s in ctx._raw:
        entry = None
        if s is None:
            entry = (0,)
        else:
            for i, a in enumerate(arrays):
                if a is s and isinstance(inputs[i], Tensor):
                    t = inputs[i]
                    entry = (1, t, t._version[0])
                    break
            if entry is None:
                for k, r in enumerate(results):
                    if r._data is s:
                        entry = (2, k, s, r._version, r._version[0], r._dtype, r._device)
                        break
            if entry is None:
                if isinstance(s, Tensor):
                    entry = (1, s, s._version[0])
                elif hasattr(s, "dtype") and hasattr(s, "shape"):
                    entry = (3, s, results[0]._device)
                else:
                    entry = (4, s)
        saved.append(entry)
    ctx._saved = tuple(saved)
    ctx._raw = ()


# ---------------------------------------------------------------------- in-place
def apply_inplace(op: OpDef, self: Tensor, args: tuple) -> Tensor:
    """Run ``op`` out of place, then write the result into ``self`` and rebase its history."""
    if _State.enabled:
        if self._requires_grad and self._grad_fn is None:
            raise RuntimeError(
                f"[{op.name}_] a leaf Variable that requires grad is being used in an in-place "
                "operation.\n  hint: wrap it in `with ember.no_grad():` (as initialisers and "
                "optimizers do), or clone() the tensor first")
        base = self._base
        if base is not None and base._requires_grad and base._grad_fn is None:
            raise RuntimeError(
                f"[{op.name}_] a view of a leaf Variable that requires grad is being used in an "
                "in-place operation.")
    impl = op.cuda_impl
    if impl is not None and self._device.type != "cpu" and \
            getattr(impl, "forward_into", None) is not None:
        # A CUDA implementation may write straight into self (relu_, add_ of a ResNet
        # block): no out-of-place result copied back, one kernel instead of two. It takes
        # the destination only when its input is self's own array and it can run in place;
        # write_inplace then finds the result already stored.
        _DEST[0] = self._data
        try:
            out = apply(op, args)
        finally:
            _DEST[0] = None
    else:
        out = apply(op, args)
    if isinstance(out, tuple):
        out = out[0]
    return write_inplace(self, out, op.name + "_")


# The destination array an in-place call offers its op's CUDA ``forward_into`` (see above).
_DEST: list = [None]
# Looked up once instead of by an import statement / backend call on each op (~1-2 us each).
_CAST_ARGS: list = [None]
_GPU_XP: list = [None]


def write_inplace(self: Tensor, out: Tensor, name: str) -> Tensor:
    """Store ``out``'s values in ``self`` (same shape, castable dtype) and record it for autograd."""
    if not _dt.can_cast(out._dtype, self._dtype):
        raise RuntimeError(f"[{name}] result type {_torch_name(out._dtype)} can't be cast to the "
                           f"desired output type {_torch_name(self._dtype)}")
    if out._data.shape != self._data.shape:
        raise RuntimeError(f"[{name}] output with shape {list(self._data.shape)} doesn't match the "
                           f"broadcast shape {list(out._data.shape)}")
    if not getattr(self._data.flags, "writeable", True):
        raise RuntimeError(
            f"[{name}] unsupported operation: more than one element of the written-to tensor "
            "refers to a single memory location. Please clone() the tensor before performing "
            "the operation.")
    track = out._requires_grad and _State.enabled
    data = out._data
    dst = self._data
    if data is dst:
        # written in place by a CUDA forward_into: what the node saved of "self" is the
        # result now held there, so it becomes an alias of self like a saved output
        self._version[0] += 1
        if track:
            _alias_saved_output(out, self, direct=True)
            _rebase_history(self, out)
        return self
    if track:
        _snapshot_saved_self(out._grad_fn, self)
    store(dst, data)
    self._version[0] += 1
    if track:
        _alias_saved_output(out, self)
        _rebase_history(self, out)
    return self


def store(dst: Any, data: Any) -> None:
    """``dst[...] = data`` into a tensor's array (in-place ops, ``copy_``), the cheapest way
    for CuPy: one device memcpy for arrays of one dtype and shape, both C-contiguous and not
    partly overlapping (CuPy's assignment launches a kernel: ~17 us of host time against
    ~6); in memory order when ``dst`` has another dense layout that ``data`` shares."""
    if type(dst) is not _ndarray and getattr(data, "shape", None) == dst.shape:
        if type(data) is type(dst) and _memcpy(dst, data):
            return
        if not dst.flags.c_contiguous:
            _store_permuted(dst, data)
            return
    if dst.ndim == 0:
        dst[()] = data
    else:
        dst[...] = data


def _memcpy(dst: Any, src: Any) -> bool:
    """``dst[...] = src`` as one device-to-device copy on the current stream when both are
    C-contiguous with one dtype and do not partly overlap (the same array: nothing to do);
    False otherwise."""
    if dst.dtype != src.dtype or not dst.flags.c_contiguous or not src.flags.c_contiguous:
        return False
    a, b, n = dst.data.ptr, src.data.ptr, dst.nbytes
    if a == b or not n:
        return True
    if a < b + n and b < a + n:
        return False
    dst.data.copy_from_device_async(src.data, n)
    return True


def _store_permuted(dst: Any, src: Any) -> None:
    """``dst[...] = src`` for a non-C-contiguous CuPy ``dst``: when both share one dense
    layout (channels-last), copy in memory order; CuPy's logical-order copy would be strided
    on both sides (every access uncoalesced)."""
    from ember.backend.cuda_ops._layout import same_layout
    order = same_layout(dst, src)
    if order is None:
        dst[...] = src
    else:
        dst.transpose(order)[...] = src.transpose(order)


def _alias_saved_output(out: Tensor, self: Tensor, direct: bool = False) -> None:
    """A node that saved its output now sees ``self`` (which holds that value): a later
    in-place write to ``self`` is then caught by the version check, as in torch. With
    ``direct`` (the forward wrote into self's array) a saved "input self" is that array too."""
    node = out._grad_fn
    saved = getattr(node, "_saved", ())
    if not saved:
        return
    k = out._output_nr
    node._saved = tuple(
        (2, k, self._data, self._version, self._version[0], self._dtype, self._device)
        if (e[0] == 2 and e[1] == k) or (direct and e[0] == 1 and e[1] is self) else e
        for e in saved)


def _snapshot_saved_self(node: Any, self: Tensor) -> None:
    """Nodes that saved ``self`` get a copy of its old value before ``self`` is overwritten."""
    saved = getattr(node, "_saved", ())
    if not saved:
        return
    new = []
    for entry in saved:
        if entry[0] == 1 and entry[1] is self:
            snap = _make(self._data.copy(), self._dtype, self._device, self._requires_grad)
            snap._grad_fn = self._grad_fn
            snap._output_nr = self._output_nr
            if self._grad_fn is None and self._requires_grad:
                snap._acc = self._acc
                snap._grad_fn = None
            entry = (1, snap, 0)
        new.append(entry)
    node._saved = tuple(new)


def _rebase_history(self: Tensor, out: Tensor) -> None:
    base = self._base
    if base is None:
        self._grad_fn = out._grad_fn
        self._output_nr = out._output_nr
        self._requires_grad = True
        return
    # self is a view: the base's new history scatters the view's new value into it
    # (torch's CopySlices), and the view is regenerated from the new base.
    from ember.autograd.engine import CopySlices
    node = CopySlices(base, self._view_chain, out)
    base._grad_fn = node
    base._output_nr = 0
    base._requires_grad = True
    regenerated = _replay_view(base, self._view_chain)
    self._grad_fn = regenerated._grad_fn
    self._output_nr = regenerated._output_nr
    self._requires_grad = True


def _replay_view(base: Tensor, chain: tuple) -> Tensor:
    t = base
    for op, params in chain:
        t = apply(op, (t,) + tuple(params))
    return t


def _torch_name(d: _dt.dtype) -> str:
    return {"float32": "Float", "float64": "Double", "float16": "Half", "bfloat16": "BFloat16",
            "int64": "Long", "int32": "Int", "int16": "Short", "int8": "Char", "uint8": "Byte",
            "bool": "Bool", "complex64": "ComplexFloat", "complex128": "ComplexDouble"}[d.name]


# ---------------------------------------------------------------------- registration
_METHOD_TEMPLATE = """
def {fname}({sig}):
    return _apply(_op, ({call},))
"""


def register(name: str, *, meta: Callable | None = None, promote: str | None = None,
             promote_args: tuple = (0,), sig: str | None = None, method: bool | str = True,
             function: bool | str = True, inplace: bool = False, dunders: tuple = (),
             differentiable: bool = True, view: bool | str = False, variadic: bool = False,
             nondiff_outputs: tuple = (), onnx: Any = None, out_type: Any = None,
             node_name: str | None = None, call: str | None = None,
             env: dict | None = None) -> Callable[[type], OpDef]:
    """Declare an op; see the module docstring.

    Args:
        name: torch's name of the op.
        meta: shape/dtype rule run before any compute; raises on bad input.
        promote: type-promotion kind (``default``, ``int_to_float``, ``bool``) over the
            arguments at ``promote_args``.
        sig: the public signature, when it differs from ``forward``'s (``*`` and defaults).
        method/function: also expose as ``Tensor.<name>`` / ``ember.<name>`` (a string renames).
        inplace: also make ``Tensor.<name>_``.
        dunders: operator methods bound to the op (``__add__``...).
        view: the output shares memory with input 0 (``"maybe"``: when NumPy could avoid a copy).
        variadic: the first argument is a sequence of tensors (``cat``, ``stack``).
        call: with ``sig``, the expression list passed to forward (``input, _size(shape)``);
            ``env`` supplies the helpers it names.
        nondiff_outputs: output indices that never carry gradients (indices of ``max``).
        onnx: ONNX op type or converter, for the exporter.
    """
    def deco(cls: type) -> OpDef:
        op = cls()
        op.name = name
        op.meta = meta
        op.promote = promote
        op.promote_args = promote_args
        op.differentiable = differentiable
        op.view = view
        op.variadic = variadic
        op.nondiff_outputs = nondiff_outputs
        op.onnx = onnx
        op.out_type = out_type
        for attr in ("forward", "backward"):
            fn = cls.__dict__.get(attr)
            if fn is not None and not isinstance(fn, staticmethod):
                setattr(op, attr, fn)
        camel = node_name or "".join(p.capitalize() for p in name.strip("_").split("_"))
        op.node_cls = type(f"{camel}Backward0", (OpNode,), {"op": op, "_name": f"{camel}Backward0"})
        if name in OPS:
            raise RuntimeError(f"op {name!r} is declared twice")
        OPS[name] = op
        _bind(op, sig, method, function, inplace, dunders, call, env)
        return op
    return deco


def _param_list(op: OpDef, sig: str | None) -> tuple[str, str]:
    """(public signature, the call tuple in forward order)."""
    params = list(inspect.signature(op.forward).parameters.values())[2:]
    names = [p.name for p in params]
    if sig is None:
        parts = []
        for p in params:
            if p.kind is p.VAR_POSITIONAL:
                raise TypeError(f"op {op.name}: use variadic=True instead of *args")
            parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
        sig = ", ".join(parts)
    return sig, ", ".join(names)


PUBLIC_FUNCTIONS: dict[str, Callable] = {}


def _bind(op: OpDef, sig: str | None, method: bool | str, function: bool | str, inplace: bool,
          dunders: tuple, call_expr: str | None = None, extra_env: dict | None = None) -> None:
    psig, call = _param_list(op, sig)
    if call_expr is not None:
        call = call_expr
    first = call.split(",")[0].strip()
    env = {"_apply": apply, "_op": op, "_apply_inplace": apply_inplace, **(extra_env or {})}
    fname = function if isinstance(function, str) else op.name
    code = _METHOD_TEMPLATE.format(fname=fname, sig=psig, call=call)
    exec(code, env)  # noqa: S102 - builds a plain function with the op's exact signature
    fn = env[fname]
    fn.__doc__ = (type(op).__doc__ or "").strip() or None
    fn.__qualname__ = fname
    fn.__module__ = "ember"
    op.function = fn
    if function:
        PUBLIC_FUNCTIONS[fname] = fn
    if method:
        mname = method if isinstance(method, str) else op.name
        setattr(Tensor, mname, _as_method(fn, mname))
    if inplace:
        ip_sig = psig.replace(first, "self", 1)
        ip_call = call.replace(first, "self", 1)
        code = (f"def {op.name}_({ip_sig}):\n"
                f"    return _apply_inplace(_op, self, ({ip_call},))\n")
        exec(code, env)  # noqa: S102
        setattr(Tensor, op.name + "_", env[op.name + "_"])
    for d in dunders:
        setattr(Tensor, d, _as_method(fn, d))


def _as_method(fn: Callable, name: str) -> Callable:
    return fn  # a plain function binds as a method already; keep one object per op


COMPOSITES: dict[str, Callable] = {}


def composite(name: str | None = None, *, method: bool | str = True,
              function: bool = True) -> Callable[[Callable], Callable]:
    """Declare a composite op: a function written in ember ops (gradients, devices and tracing
    come from the primitives it calls). It becomes ``ember.<name>`` and ``Tensor.<name>``."""
    def deco(fn: Callable) -> Callable:
        n = name or fn.__name__
        # on an autocast list (addmv, cdist, linalg_multi_dot ...): cast its inputs as a
        # listed op's are, since no registered op of that name reaches cast_args
        from ember.amp import autocast_mode as am
        for listed in (n, fn.__name__):
            if listed in am.LOWER or listed in am.FP32 or listed in am.FP32_CPU:
                fn = am.composite(listed)(fn)
                break
        COMPOSITES[n] = fn
        if function:
            PUBLIC_FUNCTIONS[n] = fn
        if method:
            setattr(Tensor, method if isinstance(method, str) else n, fn)
        return fn
    return deco
