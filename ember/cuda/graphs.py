"""CUDA graphs: capture a sequence of ember ops on a side stream and replay it.

Capture uses a private CuPy memory pool kept alive with the graph: blocks freed during
capture must not return to the shared pool, or arrays allocated after capture would be
overwritten on replay (GPU.md's hazard). CuPy refuses cuBLAS calls during capture; ember's
``linear``/``matmul`` then run on cuBLASLt through nvmath-python (installed with the 'cuda'
extra), which captures. Without it a captured matmul raises a clear error.

:func:`make_graphed_callables` follows ``torch.cuda.make_graphed_callables``: the forward and
the backward of a callable are each captured once and replayed on every call.
"""
from __future__ import annotations

import gc
from sys import getrefcount as _getrefcount
from typing import Any, Callable

from ember.tensor import _make


def _cp() -> Any:
    from ember.backend import cuda
    return cuda.xp()


def graph_pool_handle() -> Any:
    """A private memory pool that several graphs can share."""
    return _cp().cuda.MemoryPool()


class CUDAGraph:
    """A captured CUDA graph; ``replay()`` re-runs the captured kernels on the same buffers,
    on the current stream (ordered after the work queued before it, as torch's)."""

    def __init__(self) -> None:
        self._graph: Any = None
        self._pool: Any = None
        self._stream: Any = None

    def capture_begin(self, pool: Any = None, capture_error_mode: str = "global") -> None:
        cp = _cp()
        self._pool = pool if pool is not None else cp.cuda.MemoryPool()
        if self._stream is None:
            self._stream = cp.cuda.Stream(non_blocking=True)
        self._prev_stream = cp.cuda.get_current_stream()
        cp.cuda.get_current_stream().synchronize()
        # No garbage collection inside the capture: a finalizer that frees or synchronises
        # CUDA objects there would invalidate it (torch collects before capturing too).
        gc.collect()
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        self._alloc_ctx = cp.cuda.using_allocator(self._pool.malloc)
        self._alloc_ctx.__enter__()
        self._stream.use()
        self._stream.begin_capture()

    def capture_end(self) -> None:
        try:
            self._graph = self._stream.end_capture()
        finally:
            self._alloc_ctx.__exit__(None, None, None)
            self._prev_stream.use()
            if self._gc_was_enabled:
                gc.enable()

    def replay(self) -> None:
        if self._graph is None:
            raise RuntimeError("CUDAGraph.replay: nothing was captured")
        self._graph.launch(_cp().cuda.get_current_stream())

    def reset(self) -> None:
        self._graph = None

    def pool(self) -> Any:
        return self._pool


class graph:
    """``with ember.cuda.graph(g): ...`` captures the block's GPU work into ``g``.

    Args:
        cuda_graph: the :class:`CUDAGraph` to capture into.
        pool: a memory pool (from :func:`graph_pool_handle` or ``other.pool()``) to share.
        stream: the :class:`ember.cuda.Stream` to capture on (a new side stream by default).
    """

    def __init__(self, cuda_graph: CUDAGraph, pool: Any = None, stream: Any = None,
                 capture_error_mode: str = "global") -> None:
        self.g = cuda_graph
        self.pool = pool
        if stream is not None:
            self.g._stream = stream._s

    def __enter__(self) -> CUDAGraph:
        self.g.capture_begin(self.pool)
        return self.g

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.g.capture_end()
        except Exception:
            if exc is None:
                raise
        if exc is not None and "not supported" in str(exc).lower():
            raise RuntimeError(
                "[cuda.graph] an op in the captured region is not capturable (CuPy refuses "
                "cuBLAS calls such as matmul during stream capture; install nvmath-python so "
                "ember's linear/matmul run on cuBLASLt)") from exc


# ---------------------------------------------------------------------- graphed callables
def make_graphed_callables(callables: Any, sample_args: Any, num_warmup_iters: int = 3,
                           allow_unused_input: bool = False, pool: Any = None) -> Any:
    """Capture the forward and backward of each callable into CUDA graphs.

    Follows ``torch.cuda.make_graphed_callables``. Each callable (a function or an
    ``nn.Module``) runs ``num_warmup_iters`` times on a side stream, then its forward is
    captured into one graph and the backward of its outputs (with respect to the sample
    arguments that require grad and the module's parameters) into another, all under one
    private memory pool. The returned callables replay those graphs: calling one copies its
    tensor arguments into the static sample buffers (unless they are those buffers),
    replays the forward and returns the static outputs; ``backward`` through them copies
    the incoming gradients into static buffers and replays the backward graph, and the
    parameters' ``.grad`` accumulate as usual.

    Args:
        callables: a callable or a tuple of callables. A Module's ``forward`` is replaced
            in place (while it is in the training state it had at capture) and the module
            itself is returned.
        sample_args: a tuple of Tensors (or a tuple of such tuples, one per callable). Their
            shapes, dtypes, devices and ``requires_grad`` flags must match the real calls;
            they become the static input buffers.
        num_warmup_iters: eager iterations before capture (cuDNN graphs, cuBLASLt plans and
            memory are set up there, never during capture).
        allow_unused_input: allow inputs that do not reach any output (their grads are None).
        pool: a memory pool to share (:func:`graph_pool_handle`); a new one by default.

    Returns:
        The graphed callable, or a tuple of them when ``callables`` was a tuple.

    Replayed outputs live in static memory: each call overwrites the previous call's
    outputs, so consume (or clone) them before calling again. Random ops (dropout) replay
    the mask drawn during capture.

    Example::

        >>> model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10)).cuda()
        >>> x = ember.randn(64, 784, device="cuda")
        >>> model = ember.cuda.make_graphed_callables(model, (x,))
        >>> loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
    """
    import ember
    from ember import nn

    just_one = not isinstance(callables, tuple)
    if just_one:
        callables = (callables,)
        sample_args = (tuple(sample_args),)
    else:
        sample_args = tuple(tuple(a) for a in sample_args)
    if len(callables) != len(sample_args):
        raise ValueError("make_graphed_callables: expected one tuple of sample args per "
                         f"callable, got {len(callables)} callables and {len(sample_args)} "
                         "tuples")
    cp = _cp()
    mempool = pool if pool is not None else graph_pool_handle()
    side = ember.cuda.Stream()
    results = []
    for fn, args in zip(callables, sample_args):
        for a in args:
            if not isinstance(a, ember.Tensor):
                raise TypeError("make_graphed_callables: sample_args must be Tensors, got "
                                f"{type(a).__name__}")
        is_module = isinstance(fn, nn.Module)
        if is_module and any(len(m._forward_hooks) or len(m._forward_pre_hooks)
                             for m in fn.modules()):
            raise RuntimeError("make_graphed_callables: modules must not have hooks "
                               "registered at capture time")
        params = tuple(p for p in fn.parameters() if p.requires_grad) if is_module else ()
        graphed = _graph_one(cp, fn.forward if is_module else fn, args, params,
                             num_warmup_iters, allow_unused_input, mempool, side)
        if is_module:
            orig_forward = fn.forward
            training = fn.training

            def new_forward(*user_args: Any, _g: Callable = graphed, _m: Any = fn,
                            _orig: Callable = orig_forward, _t: bool = training) -> Any:
                if _m.training == _t:
                    return _g(*user_args)
                return _orig(*user_args)
            fn.forward = new_forward
            results.append(fn)
        else:
            results.append(graphed)
    return results[0] if just_one else tuple(results)


_ALIGN = 256  # bytes: each packed gradient starts where a fresh allocation would


def _pack_grads(cp: Any, grads: list) -> tuple[list, list]:
    """Inside the backward capture: copy the C-contiguous gradients of each dtype into one
    flat static buffer (the copies replay with the graph). Returns ``packs`` (flat buffer,
    [(slot, byte offset, shape, array dtype, ember dtype, device)]) and the ``loose`` slots left out
    (other layouts, empty tensors), which are cloned at each call instead."""
    groups: dict = {}
    loose = []
    for i, g in enumerate(grads):
        if g is None:
            continue
        a = g._data
        if not a.flags.c_contiguous or a.size == 0:
            loose.append((i, g))
            continue
        groups.setdefault(a.dtype, []).append((i, g))
    packs = []
    for dt, members in groups.items():
        entries, off = [], 0
        for i, g in members:
            entries.append((i, off, g._data.shape, g._data.dtype, g._dtype, g._device))
            off += (g._data.nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        flat = cp.empty(off, dtype=cp.uint8)   # from the graph's pool, kept by the graph
        for (_, g), entry in zip(members, entries):
            a = g._data
            (flat.data + entry[1]).copy_from_device_async(a.data, a.nbytes)
        packs.append((flat, entries))
    return packs, loose


class _HandOut:
    """A pack's output blocks: fresh memory for the gradients handed out at each call, reused.

    The engine adopts a returned gradient as a leaf's ``.grad`` and the next replay rewrites
    the pack, so each call hands out a copy. Up to two blocks (with their gradient arrays)
    are kept: a block is copied into again only when nothing outside holds any of its
    arrays, or a view of one (Python reference counts, compared with those taken when the
    block was new). A training loop's ``zero_grad()`` frees the gradients of the last step:
    one block serves every step (``set_to_none=False`` keeps the first block as the
    ``.grad``s and alternates with the second); else a fresh block is allocated each call.
    This saves an allocation and one array per gradient of each call."""

    __slots__ = ("blocks",)

    def __init__(self) -> None:
        self.blocks: list = []   # [(memory, arrays, their reference counts when free)]

    def take(self, cp: Any, flat: Any, entries: list) -> tuple:
        for mem, arrays, free in self.blocks:
            if _refcounts(arrays) == free:
                mem.copy_from_device_async(flat.data, flat.nbytes)
                return arrays
        mem = cp.cuda.alloc(flat.nbytes)
        mem.copy_from_device_async(flat.data, flat.nbytes)
        arrays = tuple(cp.ndarray(shape, np_dt, mem + off) for _, off, shape, np_dt, _, _
                       in entries)
        if len(self.blocks) < 2:
            self.blocks.append((mem, arrays, _refcounts(arrays)))
        return arrays


def _refcounts(arrays: tuple) -> list:
    return [_getrefcount(a) for a in arrays]


def _unpack_grads(cp: Any, packs: list, hand: list, loose: list, n: int) -> tuple:
    """Copies of the static gradients: per pack one device copy into a block of
    :class:`_HandOut`, each gradient an array over its part of it (base-less, so the engine
    adopts it)."""
    out: list = [None] * n
    for (flat, entries), h in zip(packs, hand):
        for (i, _, _, _, dt, dev), arr in zip(entries, h.take(cp, flat, entries)):
            out[i] = _make(arr, dt, dev)
    for i, g in loose:
        out[i] = g.clone()
    return tuple(out)


def _copy_into(static: Any, new: Any) -> None:
    """``static.copy_(new)`` for a graph's static input: nothing when ``new`` is ``static``'s
    memory already (a loop that passes the captured sample tensor; torch skips it too), one
    device copy on the current stream for two dense arrays of one dtype and shape (the
    dispatcher's copy_ costs several times its host time), else ``copy_``."""
    from ember.ops.registry import _memcpy
    a, b = static._data, new._data
    if a.shape == b.shape and new._device == static._device and _memcpy(a, b):
        if a.data.ptr != b.data.ptr:
            static._version[0] += 1
        return
    static.copy_(new)


def _gemm_force_flag() -> list:
    """The switch that sends every GEMM to cuBLASLt (a dummy without nvmath-python)."""
    try:
        from ember.backend.cuda_ops import nvmath_linear
    except Exception:
        return [False]
    return nvmath_linear.FORCE


def _flatten(out: Any) -> tuple:
    import ember
    if isinstance(out, ember.Tensor):
        return (out,), True
    if isinstance(out, (tuple, list)) and all(isinstance(o, ember.Tensor) for o in out):
        return tuple(out), False
    raise TypeError("make_graphed_callables: a callable must return a Tensor or a tuple of "
                    f"Tensors, got {type(out).__name__}")


def _graph_one(cp: Any, fn: Callable, args: tuple, params: tuple, warmup: int,
               allow_unused: bool, mempool: Any, side: Any) -> Callable:
    """Warm up, capture the forward and the backward of ``fn``; return the replaying call."""
    import ember
    from ember.autograd.function import once_differentiable
    inputs = tuple(args) + params
    grad_in_idx = [i for i, t in enumerate(inputs) if t.requires_grad]
    grad_inputs_of = [inputs[i] for i in grad_in_idx]

    def run_backward(outs: tuple, grads: tuple) -> tuple:
        pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
        if not pairs or not grad_inputs_of:
            return ()
        return ember.autograd.grad([o for o, _ in pairs], grad_inputs_of,
                                   grad_outputs=[g for _, g in pairs], only_inputs=True,
                                   allow_unused=allow_unused)

    ember.cuda.synchronize()
    force = _gemm_force_flag()
    prev, force[0] = force[0], True  # GEMMs on cuBLASLt in warmup and capture alike
    try:
        # Warm up on the capture stream: cuDNN handles/graphs and cuBLASLt plans are keyed
        # by stream and must exist before capture (creating them is not capturable).
        with ember.cuda.stream(side):
            for _ in range(max(warmup, 1)):
                outs, _single = _flatten(fn(*args))
                run_backward(outs, tuple(ember.ones_like(o) for o in outs))
            del outs
        ember.cuda.synchronize()

        fwd_graph, bwd_graph = CUDAGraph(), CUDAGraph()
        with graph(fwd_graph, pool=mempool, stream=side):
            static_outputs, single = _flatten(fn(*args))
        static_grad_outputs = tuple(ember.empty_like(o) if o.requires_grad else None
                                    for o in static_outputs)
        with graph(bwd_graph, pool=mempool, stream=side):
            grads = run_backward(static_outputs, static_grad_outputs)
            # one gradient slot per Function input (user args, then parameters)
            static_grad_inputs: list = [None] * len(inputs)
            for i, g in zip(grad_in_idx, grads):
                static_grad_inputs[i] = g.detach() if g is not None else None
            packs, loose = _pack_grads(cp, static_grad_inputs)
    finally:
        force[0] = prev
    static_outputs = tuple(o.detach() for o in static_outputs)
    hand = [_HandOut() for _ in packs]
    n_args = len(args)
    n_inputs = len(inputs)

    class Graphed(ember.autograd.Function):
        @staticmethod
        def forward(ctx: Any, *func_inputs: Any) -> Any:
            for static, new in zip(args, func_inputs[:n_args]):
                _copy_into(static, new)
            fwd_graph.replay()
            return tuple(_make(o._data, o._dtype, o._device) for o in static_outputs)

        @staticmethod
        @once_differentiable
        def backward(ctx: Any, *grads_out: Any) -> Any:
            for static, g in zip(static_grad_outputs, grads_out):
                if static is not None and g is not None:
                    _copy_into(static, g)
            bwd_graph.replay()
            # Memory of their own for the returned gradients: the engine adopts a returned
            # gradient as a leaf's .grad, and the next replay would overwrite it (breaking
            # gradient accumulation). One device copy per dtype (_HandOut), not a clone each.
            return _unpack_grads(cp, packs, hand, loose, n_inputs)

    def call(*user_args: Any) -> Any:
        if len(user_args) != n_args:
            raise TypeError(f"graphed callable expects {n_args} tensor arguments, got "
                            f"{len(user_args)}")
        out = Graphed.apply(*(tuple(user_args) + params))
        return out[0] if single else out

    call._graphs = (fwd_graph, bwd_graph)  # type: ignore[attr-defined]
    return call
