"""Automatic mixed precision: ``ember.autocast(device_type, dtype)``.

Inside the region, the dispatcher casts the floating inputs of matrix-heavy ops (matmul,
linear, conv, attention, RNN layers) to the low-precision dtype, and the inputs of
precision-sensitive ops (softmax, norms, losses, reductions, exp/log ...) to float32 — torch's
op lists, keyed by ember's registry names. Casts are differentiable, so gradients come back
in each parameter's own dtype. batch_norm is on neither list (as in torch): it runs in its
input's dtype with float32 weights and statistics.

Cast cache (torch's autocast cache): the low-precision copy of a leaf that requires grad
(a parameter) is made once per region and reused by every op that reads it, so a weight
shared by several layers is cast, and its gradient cast back, once. The cache is emptied
when the outermost region exits; an entry is dropped when its leaf's version changes (an
in-place update inside the region).
"""
from __future__ import annotations

import collections
import functools
import os
import weakref
from typing import Any

from ember import dtypes as _dt
from ember._state import _State
from ember.backend.cuda import stream_capturing

# Ops that run in the autocast dtype (torch: "lower_precision_fp" list; bilinear is on its
# "promote" list instead, which leaves one-dtype inputs as they are).
LOWER = frozenset({
    "matmul", "convolution", "scaled_dot_product_attention", "_lstm_layer", "_gru_layer",
    "_rnn_layer", "einsum", "addmm", "baddbmm", "addbmm", "addmv", "addr", "linear",
    "prelu", "chain_matmul", "multi_dot",
    "_linear_activation",   # ember's fused Linear + ReLU/GELU (torch: _addmm_activation)
})
# The CPU's list is shorter: addmv, addr, chain_matmul and multi_dot stay in their dtype.
LOWER_CPU = LOWER - {"addmv", "addr", "chain_matmul", "multi_dot"}
# torch's "promote" list (functions written in other ember ops): floating inputs of mixed
# dtypes meet in the widest, and the body runs without autocast (one dtype: nothing cast)
PROMOTE = frozenset({"bilinear"})
# Ops that run in float32 (torch: "fp32" and "fp32_set_opt_dtype" lists; mean, var and std
# are on neither: they keep the input's low precision, accumulating in float32).
FP32 = frozenset({
    "exp", "expm1", "log", "log2", "log10", "log1p", "pow", "reciprocal", "rsqrt", "sinh", "cosh",
    "tan", "acos", "asin", "softmax", "log_softmax", "cross_entropy", "layer_norm",
    "group_norm", "rms_norm", "sum", "prod", "cumsum", "cumprod",
    "linalg_vector_norm", "logsumexp", "erfinv", "cdist", "dist", "pdist",
    "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div",
    "binary_cross_entropy_with_logits", "soft_margin_loss", "softplus", "softmin",
    "cosine_similarity", "normalize", "embedding_bag", "poisson_nll_loss",
    "cosine_embedding_loss", "hinge_embedding_loss", "margin_ranking_loss",
    "multilabel_margin_loss", "triplet_margin_loss", "multi_margin_loss",
})
# On the CPU torch keeps most math in the autocast dtype and only moves losses and a few
# numerically fragile ops to float32.
FP32_CPU = frozenset({
    "prod", "cdist", "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss",
    "huber_loss", "kl_div", "binary_cross_entropy_with_logits", "soft_margin_loss",
    "margin_ranking_loss", "hinge_embedding_loss", "poisson_nll_loss", "triplet_margin_loss",
    "multi_margin_loss", "multilabel_margin_loss", "cosine_embedding_loss", "ctc_loss",
    "binary_cross_entropy", "quantile", "nanquantile", "inv_ex", "cholesky_ex", "lu_factor_ex",
    "eigh", "svd", "qr", "fft_c2c", "fft_r2c", "fft_c2r",
})
# (low-precision list, float32 list) by device type: cast_args and the composites read these
_LISTS = {"cuda": (LOWER, FP32), "cpu": (LOWER_CPU, FP32_CPU)}
_LOW = (_dt.float16, _dt.bfloat16)

# The cast cache: id(leaf) -> (leaf, its version when cast, the cast tensor). Holding the leaf
# keeps its id from being reused while the entry lives.
_CACHE: dict = {}
_depth = [0]          # nesting of entered autocast regions (the cache dies with the outermost)
_cache_on = [True]    # cache_enabled of the innermost region


def _cast(a: Any, dt: Any) -> Any:
    if not _LAZY:
        _load()
    return _LAZY[0](a, dt)


# (registry.apply_cast, Tensor): imported on first use (ember.amp is imported before them);
# a function-level import statement cost ~1 us on each of ~300 casts a step
_LAZY: list = []


def _load() -> None:
    from ember.ops.registry import apply_cast
    from ember.tensor import Tensor
    _LAZY[:] = [apply_cast, Tensor]


def _cast_low(a: Any, dt: Any) -> Any:
    """``a`` in the region's low-precision dtype, through the cache for parameters (leaves
    that require grad, cast while grad mode is on: a cast made under no_grad has no history
    and must not be handed to a later op that needs the gradient)."""
    if not (a._requires_grad and a._grad_fn is None and _State.enabled and _cache_on[0]
            and a._base is None):
        return _cast(a, dt)
    key = id(a)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is a and hit[1] == a._version[0] and hit[2]._dtype is dt:
        return hit[2]
    out = _from_bulk(a, dt) if (a._device.type == "cuda" and _BULK_ON) or _BULK_CPU[0] \
        else None
    if out is None:
        out = _cast(a, dt)
    _CACHE[key] = (a, a._version[0], out)
    return out


# Bulk weight casts. A training loop's regions cast the same parameters in the same order
# every step, one launch each (~100 in a GPT-2 forward, ~25 us of host time apiece on CUDA).
# So each outermost region records the parameters it cast, keyed by the first; when a later
# region's first cast is that parameter, all of them are cast there in one launch
# (kernels_pointwise.bulk_cast) and each later cast only wraps its ready result in the
# autograd node. An entry is used only if its parameter's version is unchanged since.
_SEQS: dict = {}       # id(first parameter) -> [weakref to each parameter cast, in order]
_SEQ: list = []        # the parameters this region has cast so far
_BULK: dict = {}       # id(parameter) -> (parameter, version, array) cast ahead this region
_BULK_CPU = [False]    # tests: the bulk path on the CPU too (NumPy casts, one per array)
_BULK_ON = os.environ.get("EMBER_BULK_CASTS", "1") != "0"   # 0: one cast per parameter
_MAX_SEQS = 8


def _from_bulk(a: Any, dt: Any) -> Any:
    """``a`` cast through this region's bulk cast (started here at the region's first
    cast), or None when it has no ready, current entry."""
    if not _LAZY:
        _load()
    if not _SEQ:
        refs = _SEQS.get(id(a))
        if refs is not None and refs[0]() is a:
            _bulk_cast(refs, a, dt)
    _SEQ.append(a)
    entry = _BULK.pop(id(a), None)
    if entry is None or entry[0] is not a or entry[1] != a._version[0]:
        return None
    return _LAZY[0](a, dt, entry[2])


def _bulk_cast(refs: list, first: Any, dt: Any) -> None:
    """Cast the live parameters of ``refs`` that share ``first``'s device and dtype into
    ``dt`` at once, as ``_BULK`` entries (nothing while a CUDA graph is captured: the
    per-cast path, whose kernels the graph records, stays the one captured)."""
    dev, src = first._device, first._dtype
    params = []
    for r in refs:
        p = r()
        if p is not None and p._device == dev and p._dtype is src and p._requires_grad \
                and p._grad_fn is None and p._base is None and id(p) not in _CACHE:
            params.append(p)
    if dev.type == "cuda":
        import cupy  # noqa: PLC0415 - only reached with CUDA parameters
        if stream_capturing():
            return
        from ember.backend.cuda_ops.kernels_pointwise import bulk_cast  # noqa: PLC0415
        arrays = bulk_cast(cupy, [p._data for p in params], dt.np)
    else:
        arrays = [p._data.astype(dt.np) for p in params]
    for p, arr in zip(params, arrays):
        if arr is not None:
            _BULK[id(p)] = (p, p._version[0], arr)


def _end_region() -> None:
    """The outermost region exits: keep its cast order for the next region, drop the rest."""
    if _SEQ:
        if len(_SEQS) >= _MAX_SEQS and id(_SEQ[0]) not in _SEQS:
            del _SEQS[next(iter(_SEQS))]
        _SEQS[id(_SEQ[0])] = [weakref.ref(p) for p in _SEQ]
        _SEQ.clear()
    _BULK.clear()
    _CACHE.clear()


def clear_autocast_cache() -> None:
    """Drop every cached cast (torch.clear_autocast_cache)."""
    _CACHE.clear()
    _BULK.clear()


def cast_args(op: Any, args: tuple, device_type: str) -> tuple:
    """The op's arguments cast for the active autocast region (unchanged if not listed).

    A float32-listed op whose CUDA implementation computes in float32 from bf16/fp16 inputs
    itself says so for a call (``cuda_impl.fp32_from_low(args)``, cross_entropy's fused
    kernels): its inputs then go uncast, and it returns float32 as if they had been cast."""
    dt = _State.autocast.get(device_type)
    if dt is None:
        return args
    if not _LAZY:
        _load()
    Tensor = _LAZY[1]
    op_name = op.name
    lower, fp32 = _LISTS[device_type]
    if op_name in lower:
        return tuple(_cast_low(a, dt) if isinstance(a, Tensor) and a._dtype.category == 2
                     and a._dtype is not dt and not a._dtype.is_complex else a for a in args)
    if op_name in fp32:
        if device_type == "cuda":
            native = getattr(op.cuda_impl, "fp32_from_low", None)
            if native is not None and native(args):
                return args
        return tuple(_cast(a, _dt.float32) if isinstance(a, Tensor) and a._dtype in _LOW
                     else a for a in args)
    return args


def composite(name: str) -> Any:
    """Decorator for a function written in other ember ops (no registered op of its own)
    that torch's autocast lists as ``name``: inside an active region its floating Tensor
    arguments (also inside list/tuple arguments) are cast as a listed op's are before the
    body runs, so ``F.mse_loss`` of bf16 inputs is float32 and ``addmv`` low precision, as
    in torch. The body then runs with autocast off, as torch runs a listed op's kernel.
    Outside a region it costs one attribute check."""
    if name not in LOWER and name not in FP32 and name not in FP32_CPU and name not in PROMOTE:
        raise ValueError(f"autocast.composite: {name!r} is on no autocast list")

    listed_as = _Listed(name, None)   # what cast_args reads of an op

    def deco(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            regions = _State.autocast
            if regions is None:
                return fn(*args, **kwargs)
            args, kwargs, listed = _cast_call(listed_as, args, kwargs)
            if not listed:   # not on this device's lists: its inner ops autocast themselves
                return fn(*args, **kwargs)
            # the body is one op to autocast, as in torch (its kernel runs with autocast
            # excluded): addbmm's inner sum must not move to float32 on its own
            _State.autocast = None
            try:
                return fn(*args, **kwargs)
            finally:
                _State.autocast = regions
        return wrapper
    return deco


_Listed = collections.namedtuple("_Listed", "name cuda_impl")


def _cast_call(op: Any, args: tuple, kwargs: dict) -> tuple:
    """A composite's arguments cast by :func:`cast_args`'s rule for its name, each Tensor
    (also inside a list/tuple argument) by its own device's region and lists; and whether
    any was listed there."""
    if not _LAZY:
        _load()
    Tensor = _LAZY[1]
    regions = _State.autocast
    name = op.name
    if name in PROMOTE:
        ts = [a for a in args if isinstance(a, Tensor) and a._dtype.category == 2]
        if not any(regions.get(t._device.type) is not None for t in ts):
            return args, kwargs, False
        wide = _dt.result_type_of(ts) if ts else None
        return tuple(_cast(a, wide) if isinstance(a, Tensor) and a._dtype.category == 2 and
                     a._dtype is not wide else a for a in args), kwargs, True
    listed = []

    def one(a: Any) -> Any:
        if isinstance(a, (list, tuple)) and a and all(isinstance(x, Tensor) for x in a):
            return type(a)(one(x) for x in a)
        if not isinstance(a, Tensor):
            return a
        kind = a._device.type
        if regions.get(kind) is None:
            return a
        lower, fp32 = _LISTS[kind]
        if name not in lower and name not in fp32:
            return a
        listed.append(True)
        return cast_args(op, (a,), kind)[0]
    args, kwargs = tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}
    return args, kwargs, bool(listed)


class autocast:
    """Context manager and decorator enabling mixed precision for one device type.

    Args:
        device_type: ``"cuda"`` or ``"cpu"``.
        dtype: the low-precision dtype (default float16 on cuda, bfloat16 on cpu).
        enabled: turn the region off without removing the ``with``.
        cache_enabled: cache the low-precision copies of parameters for the region
            (default True, as torch).

    Example::

        >>> with ember.autocast("cpu", dtype=ember.bfloat16):
        ...     y = model(x)          # matmuls in bfloat16, softmax/losses in float32
    """

    def __init__(self, device_type: str, dtype: Any = None, enabled: bool = True,
                 cache_enabled: bool | None = None) -> None:
        if device_type not in ("cuda", "cpu"):
            raise RuntimeError(f"User specified an unsupported autocast device_type "
                               f"'{device_type}'")
        self.device_type = device_type
        default = _dt.float16 if device_type == "cuda" else _dt.bfloat16
        self.dtype = _dt.to_dtype(dtype) if dtype is not None else default
        if self.dtype not in _LOW:
            raise RuntimeError(f"In autocast, but the target dtype is not supported. "
                               f"Disabling autocast. Supported: float16, bfloat16; got "
                               f"{self.dtype}")
        self.enabled = enabled
        self.cache_enabled = True if cache_enabled is None else bool(cache_enabled)

    def __enter__(self) -> "autocast":
        self._prev = _State.autocast
        self._prev_cache = _cache_on[0]
        _cache_on[0] = self.cache_enabled
        _depth[0] += 1
        if self.enabled:
            new = dict(self._prev or {})
            new[self.device_type] = self.dtype
            _State.autocast = new
        else:
            if self._prev and self.device_type in self._prev:
                new = dict(self._prev)
                del new[self.device_type]
                _State.autocast = new or None
        return self

    def __exit__(self, *exc: Any) -> None:
        _State.autocast = self._prev
        _cache_on[0] = self._prev_cache
        _depth[0] -= 1
        if _depth[0] <= 0:
            _depth[0] = 0
            _end_region()

    def __call__(self, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            with autocast(self.device_type, self.dtype, self.enabled, self.cache_enabled):
                return fn(*a, **k)
        return wrapper


def is_autocast_enabled(device_type: str = "cuda") -> bool:
    return bool(_State.autocast and device_type in _State.autocast)


def get_autocast_dtype(device_type: str) -> Any:
    if _State.autocast and device_type in _State.autocast:
        return _State.autocast[device_type]
    return _dt.float16 if device_type == "cuda" else _dt.bfloat16


def custom_fwd(fwd: Any = None, *, device_type: str = "cuda", cast_inputs: Any = None) -> Any:
    """Decorator for a custom Function's forward: optionally run it with inputs cast and
    autocast off (torch.amp.custom_fwd)."""
    if fwd is None:
        return functools.partial(custom_fwd, device_type=device_type, cast_inputs=cast_inputs)

    @functools.wraps(fwd)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if cast_inputs is None or not is_autocast_enabled(device_type):
            return fwd(*args, **kwargs)
        from ember.tensor import Tensor
        cast = tuple(a.to(cast_inputs) if isinstance(a, Tensor) and a.is_floating_point() else a
                     for a in args)
        with autocast(device_type, enabled=False):
            return fwd(*cast, **kwargs)
    return wrapper


def custom_bwd(bwd: Any = None, *, device_type: str = "cuda") -> Any:
    if bwd is None:
        return functools.partial(custom_bwd, device_type=device_type)
    return bwd
