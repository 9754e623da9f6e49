"""Activation checkpointing (torch.utils.checkpoint): run a segment without keeping its
activations, and recompute them during backward.

Two variants, as in torch:

* ``use_reentrant=True`` (torch's default, with a warning when not passed): a custom
  :class:`~ember.autograd.Function` runs the segment under ``no_grad`` and, in backward,
  re-runs it with grad enabled and calls ``ember.autograd.backward`` on the recomputed
  outputs. Like torch, it does not work with ``autograd.grad`` for parameters captured by
  the segment, and takes no keyword arguments.
* ``use_reentrant=False``: the segment runs once with grad enabled only to find the leaf
  tensors it depends on (inputs and captured parameters); that graph and its activations are
  dropped at once, and a single node whose inputs are those leaves is recorded instead. Its
  backward recomputes the segment and returns the gradients with ``autograd.grad``, so
  ``autograd.grad``, keyword arguments and parameters without any input requiring grad work.

With ``preserve_rng_state=True`` the CPU (and, for CUDA tensors, CUDA) generator state is
saved before the forward and restored for the recomputation, so dropout masks are identical.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterable

import ember
from ember.autograd.function import Function
from ember.autograd.graph import AccumulateGrad
from ember.tensor import Tensor

__all__ = ["checkpoint", "checkpoint_sequential", "CheckpointError", "noop_context_fn",
           "set_checkpoint_early_stop"]


class CheckpointError(RuntimeError):
    """Raised when the recomputation does not reproduce the forward pass."""


def noop_context_fn() -> tuple:
    """The default ``context_fn``: no context around the forward or the recomputation."""
    return contextlib.nullcontext(), contextlib.nullcontext()


@contextlib.contextmanager
def set_checkpoint_early_stop(enable: bool) -> Any:
    """Accepted for API parity: ember always recomputes the whole segment."""
    yield


# ---------------------------------------------------------------------- RNG state
def _devices(args: Iterable) -> list:
    return sorted({str(a.device) for a in args if isinstance(a, Tensor) and a.device.type ==
                   "cuda"})


class _RngState:
    """The CPU generator state, and the CUDA ones of the devices the inputs live on."""

    def __init__(self, args: tuple) -> None:
        self.cpu = ember.get_rng_state()
        self.cuda = {}
        for d in _devices(args):
            self.cuda[d] = ember.cuda.get_rng_state(d)

    @contextlib.contextmanager
    def restored(self) -> Any:
        """Run with the saved states, then put back whatever the states were before."""
        now = _RngState.__new__(_RngState)
        now.cpu = ember.get_rng_state()
        now.cuda = {d: ember.cuda.get_rng_state(d) for d in self.cuda}
        ember.set_rng_state(self.cpu)
        for d, s in self.cuda.items():
            ember.cuda.set_rng_state(s, d)
        try:
            yield
        finally:
            ember.set_rng_state(now.cpu)
            for d, s in now.cuda.items():
                ember.cuda.set_rng_state(s, d)


def _detach_args(args: tuple) -> tuple:
    out = []
    for a in args:
        if isinstance(a, Tensor):
            d = a.detach()
            d.requires_grad_(a.requires_grad)
            out.append(d)
        else:
            out.append(a)
    return tuple(out)


# ---------------------------------------------------------------------- reentrant variant
class CheckpointFunction(Function):
    """The reentrant checkpoint node: forward under no_grad, recompute in backward."""

    @staticmethod
    def forward(ctx: Any, run_function: Callable, preserve_rng_state: bool, *args: Any) -> Any:
        ctx.run_function = run_function
        ctx.preserve_rng_state = preserve_rng_state
        ctx.rng = _RngState(args) if preserve_rng_state else None
        ctx.inputs = [None if isinstance(a, Tensor) else a for a in args]
        ctx.tensor_indices = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        ctx.save_for_backward(*[a for a in args if isinstance(a, Tensor)])
        return run_function(*args)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple:
        inputs = list(ctx.inputs)
        for i, t in zip(ctx.tensor_indices, ctx.saved_tensors):
            inputs[i] = t
        detached = _detach_args(tuple(inputs))
        rng = ctx.rng.restored() if ctx.rng is not None else contextlib.nullcontext()
        with rng, ember.enable_grad():
            outputs = ctx.run_function(*detached)
        if isinstance(outputs, Tensor):
            outputs = (outputs,)
        outs, gs = [], []
        for o, g in zip(outputs, grads):
            if isinstance(o, Tensor) and o.requires_grad and g is not None:
                outs.append(o)
                gs.append(g)
        if not outs:
            raise RuntimeError("none of output has requires_grad=True, this checkpoint() is not "
                               "necessary")
        ember.autograd.backward(outs, gs)
        in_grads = tuple(d.grad if isinstance(d, Tensor) else None for d in detached)
        return (None, None) + in_grads


# ---------------------------------------------------------------------- non-reentrant variant
def _flatten(out: Any) -> tuple[list, Callable]:
    """Tensors of an output that is a Tensor or a (nested) tuple/list, and how to rebuild it."""
    if isinstance(out, Tensor):
        return [out], lambda ts: ts[0]
    if isinstance(out, (tuple, list)):
        parts = [_flatten(o) for o in out]
        sizes = [len(p[0]) for p in parts]

        def rebuild(ts: list) -> Any:
            res, k = [], 0
            for (_, rb), n in zip(parts, sizes):
                res.append(rb(ts[k:k + n]))
                k += n
            return type(out)(res) if not hasattr(out, "_fields") else type(out)(*res)
        return [t for p in parts for t in p[0]], rebuild
    return [], lambda ts: out


def _graph_leaves(outputs: list, inputs: list) -> list:
    """Tensors requiring grad that the recorded graph of ``outputs`` depends on: the leaves it
    reaches, stopping at the segment's inputs (which stand for their own history)."""
    stop = {(id(a.grad_fn), a._output_nr): a for a in inputs if a.grad_fn is not None}
    found = [a for a in inputs]
    seen, stack = set(), []
    for o in outputs:
        if o.grad_fn is not None:
            stack.append(o.grad_fn)
        elif o.requires_grad:
            found.append(o)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, AccumulateGrad):
            found.append(node.variable)
            continue
        for e in getattr(node, "next_edges", ()) or ():
            if e is None:
                continue
            if (id(e[0]), e[1]) in stop:
                continue
            stack.append(e[0])
    uniq, ids = [], set()
    for t in found:
        if id(t) not in ids:
            ids.add(id(t))
            uniq.append(t)
    return uniq


class _NonReentrant(Function):
    """One node standing for the whole segment; its inputs are the leaves it depends on."""

    @staticmethod
    def forward(ctx: Any, state: dict, *leaves: Tensor) -> Any:
        ctx.state = state
        return tuple(state.pop("outputs"))

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple:
        st = ctx.state
        rng = st["rng"].restored() if st["rng"] is not None else contextlib.nullcontext()
        leaves = st["leaves"]
        # recompute on fresh leaves standing for the segment's inputs; captured parameters
        # are used as they are
        args = list(st["args"])
        fresh = {}
        for i, a in enumerate(args):
            if isinstance(a, Tensor) and a.requires_grad:
                d = a.detach().requires_grad_(True)
                fresh[id(a)] = d
                args[i] = d
        with rng, ember.enable_grad(), st["recompute_ctx"]:
            out = st["fn"](*args, **st["kwargs"])
        tensors, _ = _flatten(out)
        if st["check"]:
            for k, (t, meta) in enumerate(zip(tensors, st["meta"])):
                if (tuple(t.shape), t.dtype, t.device) != meta:
                    raise CheckpointError(
                        "torch.utils.checkpoint: Recomputed values for the following tensors "
                        "have different metadata than during the forward pass.\n"
                        f"tensor at position {k}:\nsaved metadata: {{'shape': {meta[0]}, "
                        f"'dtype': {meta[1]}, 'device': {meta[2]}}}\nrecomputed metadata: "
                        f"{{'shape': {tuple(t.shape)}, 'dtype': {t.dtype}, 'device': "
                        f"{t.device}}}\n")
        outs, gs = [], []
        for t, g in zip(tensors, grads):
            if t.requires_grad and g is not None:
                outs.append(t)
                gs.append(g)
        targets = [fresh.get(id(leaf), leaf) for leaf in leaves]
        if not outs:
            return (None,) + (None,) * len(leaves)
        res = ember.autograd.grad(outs, targets, gs, allow_unused=True,
                                  create_graph=ember.is_grad_enabled())
        return (None,) + tuple(res)


def _checkpoint_without_reentrant(function: Callable, preserve_rng_state: bool,
                                  context_fn: Callable, determinism_check: str, args: tuple,
                                  kwargs: dict) -> Any:
    fwd_ctx, recompute_ctx = context_fn()
    rng = _RngState(args) if preserve_rng_state else None
    if not ember.is_grad_enabled():
        with fwd_ctx:
            return function(*args, **kwargs)
    # Run once with grad to learn which leaves the segment depends on; the recorded graph and
    # its saved activations are dropped when this frame lets go of ``out``.
    with fwd_ctx:
        out = function(*args, **kwargs)
    tensors, rebuild = _flatten(out)
    arg_tensors = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
    leaves = _graph_leaves([t for t in tensors if t.requires_grad], arg_tensors)
    detached = [t.detach() for t in tensors]
    del out, tensors
    if not leaves:
        return rebuild(detached)
    state = {"fn": function, "args": args, "kwargs": kwargs, "rng": rng, "leaves": leaves,
             "recompute_ctx": recompute_ctx, "outputs": detached,
             "check": determinism_check == "default",
             "meta": [(tuple(t.shape), t.dtype, t.device) for t in detached]}
    res = _NonReentrant.apply(state, *leaves)
    res = (res,) if isinstance(res, Tensor) else res
    return rebuild(list(res))


# ---------------------------------------------------------------------- public API
def checkpoint(function: Callable, *args: Any, use_reentrant: bool | None = None,
               context_fn: Callable = noop_context_fn, determinism_check: str = "default",
               debug: bool = False, preserve_rng_state: bool = True, **kwargs: Any) -> Any:
    """Run ``function(*args, **kwargs)`` without storing its intermediate activations; they
    are recomputed in backward.

    Args:
        function: the segment to run.
        *args: its inputs.
        use_reentrant: the variant (see the module docstring). None warns and uses True,
            as torch does.
        context_fn: returns two context managers, for the forward and the recomputation
            (``use_reentrant=False`` only).
        determinism_check: ``"default"`` compares the recomputed outputs' shapes, dtypes and
            devices with the forward's; ``"none"`` skips it.
        debug: accepted for parity (``use_reentrant=False`` only).
        preserve_rng_state: restore the RNG state for the recomputation (same dropout masks).

    Returns:
        ``function``'s output.

    Example::

        >>> y = ember.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
    """
    if use_reentrant is None:
        warnings.warn(
            "torch.utils.checkpoint: the use_reentrant parameter should be passed explicitly. "
            "Starting in PyTorch 2.9, calling checkpoint without use_reentrant will raise an "
            "exception. use_reentrant=False is recommended, but if you need to preserve the "
            "current default behavior, you can pass use_reentrant=True. Refer to docs for more "
            "details on the differences between the two variants.", UserWarning, stacklevel=2)
        use_reentrant = True
    if determinism_check not in ("default", "none"):
        raise ValueError(f"determinism_check should be one of ['default', 'none'], but got "
                         f"{determinism_check}")
    if use_reentrant:
        if context_fn is not noop_context_fn or debug:
            raise ValueError("Passing `context_fn` or `debug` is only supported when "
                             "use_reentrant=False.")
        if kwargs:
            raise ValueError("Unexpected keyword arguments: " + ",".join(kwargs))
        if ember.is_grad_enabled() and not any(isinstance(a, Tensor) and a.requires_grad
                                               for a in args):
            warnings.warn("None of the inputs have requires_grad=True. Gradients will be None",
                          UserWarning, stacklevel=2)
        return CheckpointFunction.apply(function, preserve_rng_state, *args)
    return _checkpoint_without_reentrant(function, preserve_rng_state, context_fn,
                                         determinism_check, args, kwargs)


def checkpoint_sequential(functions: Any, segments: int, input: Any,
                          use_reentrant: bool | None = None, **kwargs: Any) -> Any:
    """Run a sequence of modules/functions in ``segments`` chunks, checkpointing all but the
    last chunk.

    Args:
        functions: an ``nn.Sequential`` or a list of callables run in order.
        segments: the number of chunks.
        input: the input of the first function.
        use_reentrant: passed to :func:`checkpoint`.
        preserve_rng_state: (keyword) passed to :func:`checkpoint` (default True).
    """
    if use_reentrant is None:
        warnings.warn(
            "torch.utils.checkpoint.checkpoint_sequential: the use_reentrant parameter should be "
            "passed explicitly. In version 2.9 we will raise an exception if use_reentrant is "
            "not passed. use_reentrant=False is recommended, but if you need to preserve the "
            "current default behavior, you can pass use_reentrant=True. Refer to docs for more "
            "details on the differences between the two variants.", UserWarning, stacklevel=2)
        use_reentrant = True
    preserve = kwargs.pop("preserve_rng_state", True)
    if kwargs:
        raise ValueError("Unexpected keyword arguments: " + ",".join(kwargs))

    def run_function(start: int, end: int, fns: list) -> Callable:
        def forward(x: Any) -> Any:
            for j in range(start, end + 1):
                x = fns[j](x)
            return x
        return forward

    if isinstance(functions, ember.nn.Sequential):
        functions = list(functions.children())
    functions = list(functions)
    segment_size = len(functions) // segments
    end = -1
    for start in range(0, segment_size * (segments - 1), segment_size):
        end = start + segment_size - 1
        input = checkpoint(run_function(start, end, functions), input,
                           use_reentrant=use_reentrant, preserve_rng_state=preserve)
    return run_function(end + 1, len(functions) - 1, functions)(input)
