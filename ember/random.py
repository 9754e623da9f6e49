"""Random numbers: ``Generator``, the default generators, seeding and the random factories.

Each device has a default generator. The CPU one is NumPy's PCG64; CUDA generators use
CuPy's generator on the device. ``manual_seed`` seeds them all, so runs are reproducible
(ember's streams differ from torch's mt19937/Philox: same statistics, other numbers).
"""
from __future__ import annotations

import pickle
from typing import Any, Sequence

import numpy as np

from ember import dtypes as _dt
from ember.backend import get_xp
from ember.backend.device import device, to_device
from ember.errors import check, make
from ember.tensor import Tensor, _make

__all__ = ["Generator", "default_generator", "manual_seed", "seed", "initial_seed",
           "get_rng_state", "set_rng_state", "rand", "randn", "randint", "randperm", "normal",
           "bernoulli", "multinomial", "rand_like", "randn_like", "randint_like", "poisson"]

_DEFAULT_SEED = 67280421310721


class Generator:
    """A random number generator for one device; pass it as ``generator=`` to random ops.

    Example::

        >>> g = ember.Generator().manual_seed(0)
        >>> ember.rand(2, generator=g)
    """

    def __init__(self, device: Any = "cpu") -> None:
        self.device = to_device(device)
        self._seed = _DEFAULT_SEED
        self._impl: Any = None

    def _rng(self) -> Any:
        if self._impl is None:
            self._impl = _make_impl(self.device, self._seed)
        return self._impl

    def manual_seed(self, seed: int) -> "Generator":
        """Seed this generator; returns it."""
        seed = int(seed)
        if seed < -0x8000_0000_0000_0000 or seed > 0xFFFF_FFFF_FFFF_FFFF:
            raise RuntimeError(f"Overflow when unpacking long: seed {seed} out of range")
        self._seed = seed & 0xFFFF_FFFF_FFFF_FFFF
        self._impl = None
        return self

    def seed(self) -> int:
        """Seed from the OS entropy source; returns the seed."""
        s = int(np.random.SeedSequence().entropy) & 0xFFFF_FFFF_FFFF_FFFF
        self.manual_seed(s)
        return s

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> Tensor:
        """The state as a uint8 tensor (opaque; feed it back to ``set_state``)."""
        rng = self._rng()
        if self.device.type == "cpu":
            payload = pickle.dumps((self._seed, rng.bit_generator.state))
        else:
            payload = pickle.dumps((self._seed, _cuda_state(rng)))
        return _make(np.frombuffer(payload, dtype=np.uint8).copy(), _dt.uint8,
                     device("cpu"))

    def set_state(self, new_state: Tensor) -> "Generator":
        if not isinstance(new_state, Tensor) or new_state.dtype is not _dt.uint8:
            raise TypeError("expected a torch.ByteTensor (uint8 tensor) as the RNG state")
        seed, state = _safe_state_load(new_state._host().tobytes())
        self._seed = seed
        self._impl = _make_impl(self.device, seed)
        if self.device.type == "cpu":
            self._impl.bit_generator.state = state
        else:
            _cuda_set_state(self._impl, state, seed)
        return self

    def __repr__(self) -> str:
        return f"<ember.Generator object at {hex(id(self))}>"

    def __getstate__(self) -> dict:
        return {"device": str(self.device), "state": self.get_state()._host().tobytes()}

    def __setstate__(self, d: dict) -> None:
        self.__init__(d["device"])
        self.set_state(_make(np.frombuffer(d["state"], np.uint8).copy(), _dt.uint8,
                             device("cpu")))


def _safe_state_load(raw: bytes) -> Any:
    """Unpickle an RNG state, allowing only plain containers and numbers."""
    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "builtins" and name in ("dict", "tuple", "list", "int", "str"):
                import builtins
                return getattr(builtins, name)
            if module == "numpy" or module.startswith("numpy."):
                if name in ("ndarray", "dtype", "_reconstruct", "uint64", "uint32"):
                    import importlib
                    return getattr(importlib.import_module(module), name)
            raise pickle.UnpicklingError(f"RNG state refers to a forbidden global {module}.{name}")
    import io
    return _Restricted(io.BytesIO(raw)).load()


def _make_impl(dev: device, seed: int) -> Any:
    if dev.type == "cpu":
        return np.random.Generator(np.random.PCG64(seed))
    cp = get_xp(dev)
    with cp.cuda.Device(dev.index or 0):
        return _CudaRng(cp, seed)


class _CudaRng:
    """A counter-based CUDA stream: each draw uses a generator keyed by (seed, offset), so
    (seed, offset) is the whole state and ``set_state`` resumes the exact stream."""

    def __init__(self, cp: Any, seed: int, offset: int = 0) -> None:
        self.cp = cp
        self.seed_ = seed
        self.offset = offset

    def _next(self) -> Any:
        key = np.random.SeedSequence([self.seed_ & 0xFFFFFFFF, self.seed_ >> 32, self.offset])
        self.offset += 1
        return self.cp.random.default_rng(int(key.generate_state(1, np.uint64)[0] >> 1))


def _cuda_state(rng: "_CudaRng") -> tuple:
    return (rng.seed_, rng.offset)


def _cuda_set_state(rng: "_CudaRng", state: tuple, seed: int) -> None:
    rng.seed_, rng.offset = state


default_generator = Generator("cpu")
_cuda_generators: dict = {}


def _gen_for(dev: device, generator: Generator | None) -> Any:
    if generator is not None:
        if generator.device.type != dev.type:
            raise make(RuntimeError, "random", f"Expected a '{dev.type}' device type for generator "
                                               f"but found '{generator.device.type}'")
        rng = generator._rng()
    elif dev.type == "cpu":
        rng = default_generator._rng()
    else:
        g = _cuda_generators.get(dev.index or 0)
        if g is None:
            g = _cuda_generators[dev.index or 0] = Generator(device("cuda", dev.index or 0))
            g.manual_seed(default_generator.initial_seed())
        rng = g._rng()
    return rng._next() if isinstance(rng, _CudaRng) else rng


def manual_seed(seed: int) -> Generator:
    """Seed every device's default generator (returns the CPU one)."""
    default_generator.manual_seed(seed)
    for g in _cuda_generators.values():
        g.manual_seed(seed)
    return default_generator


def seed() -> int:
    """Seed the default generators nondeterministically; returns the seed."""
    s = default_generator.seed()
    for g in _cuda_generators.values():
        g.manual_seed(s)
    return s


def initial_seed() -> int:
    return default_generator.initial_seed()


def get_rng_state() -> Tensor:
    """The CPU default generator's state as a uint8 tensor."""
    return default_generator.get_state()


def set_rng_state(new_state: Tensor) -> None:
    default_generator.set_state(new_state)


# ---------------------------------------------------------------------- factories
def _size(size: Sequence) -> tuple:
    from ember._factory import _size_args
    return _size_args(size)


def _float_dtype(dtype: Any, op: str) -> _dt.dtype:
    dt = _dt.to_dtype(dtype) if dtype is not None else _dt.get_default_dtype()
    check(dt.category >= 2, op, f"\"{op}\" not implemented for '{dt.name}'",
          NotImplementedError, hint="random floats need a floating dtype; use randint for ints")
    return dt


def _device(dev: Any) -> device:
    from ember._factory import _resolve_device
    return _resolve_device(dev)


def _wrap(arr: Any, dt: _dt.dtype, dev: device, requires_grad: bool) -> Tensor:
    t = _make(arr, dt, dev)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _uniform(rng: Any, shape: tuple, dt: _dt.dtype, low: float = 0.0, high: float = 1.0) -> Any:
    work = np.float64 if dt is _dt.float64 else np.float32
    if isinstance(rng, np.random.Generator):
        arr = rng.random(shape, dtype=work)
    else:
        arr = rng.random(shape, dtype=work)
    if low != 0.0 or high != 1.0:
        arr = arr * (high - low) + low
    return arr if arr.dtype == dt.np else arr.astype(dt.np)


def _normal(rng: Any, shape: tuple, dt: _dt.dtype, mean: float = 0.0, std: float = 1.0) -> Any:
    work = np.float64 if dt is _dt.float64 else np.float32
    arr = rng.standard_normal(shape, dtype=work)
    if std != 1.0 or mean != 0.0:
        arr = arr * std + mean
    return arr if arr.dtype == dt.np else arr.astype(dt.np)


def rand(*size: Any, generator: Generator | None = None, out: Any = None, dtype: Any = None,
         layout: Any = None, device: Any = None, requires_grad: bool = False,
         pin_memory: bool = False) -> Tensor:
    """Uniform samples in ``[0, 1)``."""
    dt = _float_dtype(dtype, "rand")
    dev = _device(device)
    return _wrap(_uniform(_gen_for(dev, generator), _size(size), dt), dt, dev, requires_grad)


def randn(*size: Any, generator: Generator | None = None, out: Any = None, dtype: Any = None,
          layout: Any = None, device: Any = None, requires_grad: bool = False,
          pin_memory: bool = False) -> Tensor:
    """Standard normal samples."""
    dt = _float_dtype(dtype, "randn")
    dev = _device(device)
    return _wrap(_normal(_gen_for(dev, generator), _size(size), dt), dt, dev, requires_grad)


def randint(low: int = 0, high: Any = None, size: Any = None, *, generator: Generator | None = None,
            out: Any = None, dtype: Any = None, layout: Any = None, device: Any = None,
            requires_grad: bool = False, pin_memory: bool = False) -> Tensor:
    """Integers uniform in ``[low, high)``; ``randint(high, size)`` starts at 0."""
    if size is None:
        if high is None:
            raise TypeError("randint() missing required argument 'size'")
        low, high, size = 0, low, high
    elif high is None:
        low, high = 0, low
    check(high > low, "randint", f"random_ expects 'from' to be less than 'to', but got "
                                 f"from={low} >= to={high}")
    dt = _dt.to_dtype(dtype) if dtype is not None else _dt.int64
    dev = _device(device)
    rng = _gen_for(dev, generator)
    arr = rng.integers(low, high, size=_size((size,)), dtype=np.int64)
    return _wrap(arr.astype(dt.np, copy=False), dt, dev, requires_grad)


def randperm(n: int, *, generator: Generator | None = None, out: Any = None, dtype: Any = None,
             layout: Any = None, device: Any = None, requires_grad: bool = False,
             pin_memory: bool = False) -> Tensor:
    """A random permutation of ``0..n-1``."""
    check(n >= 0, "randperm", f"n must be non-negative, got {n}")
    dt = _dt.to_dtype(dtype) if dtype is not None else _dt.int64
    dev = _device(device)
    rng = _gen_for(dev, generator)
    if hasattr(rng, "permutation"):
        arr = rng.permutation(n).astype(dt.np)
    else:  # CuPy's Generator has no permutation: sort uniform keys on the device instead
        arr = rng.random(n).argsort().astype(dt.np)
    return _wrap(arr, dt, dev, requires_grad)


def normal(mean: Any = 0.0, std: Any = 1.0, size: Any = None, *,
           generator: Generator | None = None, out: Any = None, dtype: Any = None,
           layout: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """Normal samples; ``mean``/``std`` may be tensors (broadcast) or numbers with ``size``."""
    if isinstance(mean, Tensor) or isinstance(std, Tensor):
        ref = mean if isinstance(mean, Tensor) else std
        if isinstance(std, Tensor):
            check(not bool((std < 0).any()), "normal", "normal expects all elements of std >= 0.0")
        elif std < 0:
            raise make(RuntimeError, "normal", f"normal expects std >= 0.0, but found std {std}")
        shape = np.broadcast_shapes(tuple(getattr(mean, "shape", ())), tuple(getattr(std, "shape", ())))
        z = _normal(_gen_for(ref._device, generator), tuple(shape), ref._dtype)
        zt = _make(z, ref._dtype, ref._device)
        from ember import no_grad
        with no_grad():
            return zt * std + mean
    check(std >= 0, "normal", f"normal expects std >= 0.0, but found std {std}")
    if size is None:
        raise make(TypeError, "normal", "normal() with scalar mean and std needs size=")
    dt = _float_dtype(dtype, "normal")
    dev = _device(device)
    return _wrap(_normal(_gen_for(dev, generator), _size((size,)), dt, mean, std), dt, dev,
                 requires_grad)


def bernoulli(input: Tensor, p: Any = None, *, generator: Generator | None = None,
              out: Any = None) -> Tensor:
    """Samples 1 with probability ``input`` (or ``p``), else 0; same dtype as ``input``."""
    probs = input._data if p is None else p
    if p is None:
        check(input._dtype.category >= 2, "bernoulli", f"\"bernoulli\" not implemented for "
                                                       f"'{input._dtype.name}'")
        xp = get_xp(input._device)
        check(bool(((probs >= 0) & (probs <= 1)).all()), "bernoulli",
              "Expected p_in >= 0 && p_in <= 1 to be true, but got false.")
    u = _uniform(_gen_for(input._device, generator), input._data.shape, _dt.float64)
    return _make((u < probs).astype(input._dtype.np), input._dtype, input._device)


def multinomial(input: Tensor, num_samples: int, replacement: bool = False, *,
                generator: Generator | None = None, out: Any = None) -> Tensor:
    """Sample category indices with probabilities proportional to the rows of ``input``."""
    check(input.ndim in (1, 2), "multinomial", f"prob_dist must be 1 or 2 dim, got {input.ndim}")
    check(input._dtype.category >= 2, "multinomial", "multinomial only supports floating-point "
                                                     "dtypes for input")
    probs = np.asarray(input._host(), dtype=np.float64)
    rows = probs.reshape(-1, probs.shape[-1])
    n_cat = rows.shape[1]
    check(num_samples > 0, "multinomial", "cannot sample n_sample <= 0 samples")
    check(replacement or num_samples <= n_cat, "multinomial",
          f"cannot sample n_sample > prob_dist.size(-1) samples without replacement "
          f"({num_samples} > {n_cat})")
    check(bool(np.isfinite(rows).all()) and bool((rows >= 0).all()), "multinomial",
          "probability tensor contains either `inf`, `nan` or element < 0")
    sums = rows.sum(1)
    check(bool((sums > 0).all()), "multinomial", "invalid multinomial distribution (sum of "
                                                 "probabilities <= 0)")
    rng = _gen_for(device("cpu"), generator if generator is None or
                   generator.device.type == "cpu" else None)
    out_rows = []
    for r, s in zip(rows, sums):
        pr = r / s
        if replacement:
            out_rows.append(rng.choice(n_cat, size=num_samples, replace=True, p=pr))
        else:
            # Gumbel-top-k: exact sampling without replacement, zero-probability never chosen
            keys = np.log(rng.random(n_cat)) / np.where(pr > 0, pr, 1e-300)
            keys = np.where(pr > 0, keys, -np.inf)
            check(int((pr > 0).sum()) >= num_samples, "multinomial",
                  "invalid multinomial distribution (with replacement=False, not enough "
                  "non-negative category to sample)")
            out_rows.append(np.argsort(-keys, kind="stable")[:num_samples])
    arr = np.stack(out_rows).astype(np.int64)
    if input.ndim == 1:
        arr = arr[0]
    t = _make(arr, _dt.int64, device("cpu"))
    return t.to(input._device) if input._device.type != "cpu" else t


def poisson(input: Tensor, generator: Generator | None = None) -> Tensor:
    """Poisson samples with rates ``input``."""
    rng = _gen_for(input._device, generator)
    return _make(rng.poisson(input._data).astype(input._dtype.np), input._dtype, input._device)


def rand_like(input: Tensor, *, dtype: Any = None, device: Any = None, requires_grad: bool = False,
              **kw: Any) -> Tensor:
    return rand(tuple(input.shape), dtype=dtype or input._dtype, device=device or input._device,
                requires_grad=requires_grad)


def randn_like(input: Tensor, *, dtype: Any = None, device: Any = None,
               requires_grad: bool = False, **kw: Any) -> Tensor:
    return randn(tuple(input.shape), dtype=dtype or input._dtype, device=device or input._device,
                 requires_grad=requires_grad)


def randint_like(input: Tensor, low: int = 0, high: Any = None, *, dtype: Any = None,
                 device: Any = None, requires_grad: bool = False, **kw: Any) -> Tensor:
    if high is None:
        low, high = 0, low
    return randint(low, high, tuple(input.shape), dtype=dtype or input._dtype,
                   device=device or input._device)


# ---------------------------------------------------------------------- in-place samplers
def _fill_inplace(self: Tensor, arr: Any, name: str) -> Tensor:
    from ember.autograd.grad_mode import _State
    if _State.enabled and self._requires_grad and self._grad_fn is None:
        raise make(RuntimeError, name, "a leaf Variable that requires grad is being used in an "
                                       "in-place operation.",
                   hint="initialise parameters under `with ember.no_grad():`")
    self._data[...] = arr
    self._version[0] += 1
    return self


def uniform_(self: Tensor, a: float = 0.0, b: float = 1.0, *,
             generator: Generator | None = None) -> Tensor:
    """Fill in place with uniform samples from ``[a, b)``."""
    check(a <= b, "uniform_", f"uniform_ expects to return a [from, to) range, but found "
                              f"from={a} > to={b}")
    return _fill_inplace(self, _uniform(_gen_for(self._device, generator), self._data.shape,
                                        self._dtype, a, b), "uniform_")


def normal_(self: Tensor, mean: float = 0.0, std: float = 1.0, *,
            generator: Generator | None = None) -> Tensor:
    """Fill in place with normal samples."""
    check(std >= 0, "normal_", f"normal expects std >= 0.0, but found std {std}")
    return _fill_inplace(self, _normal(_gen_for(self._device, generator), self._data.shape,
                                       self._dtype, mean, std), "normal_")


def bernoulli_(self: Tensor, p: Any = 0.5, *, generator: Generator | None = None) -> Tensor:
    probs = p._data if isinstance(p, Tensor) else p
    u = _uniform(_gen_for(self._device, generator), self._data.shape, _dt.float64)
    return _fill_inplace(self, (u < probs), "bernoulli_")


def random_(self: Tensor, from_: int = 0, to: Any = None, *,
            generator: Generator | None = None) -> Tensor:
    """Fill with integers uniform in ``[from, to)`` (to defaults to the dtype's range)."""
    if to is None:
        if self._dtype.category >= 2:
            to = 2 ** (np.finfo(self._dtype.np).nmant + 1) if self._dtype is not _dt.bfloat16 \
                else 2 ** 8
        else:
            to = int(np.iinfo(self._dtype.np).max) + 1 if self._dtype is not _dt.bool else 2
    rng = _gen_for(self._device, generator)
    return _fill_inplace(self, rng.integers(from_, to, size=self._data.shape), "random_")


def exponential_(self: Tensor, lambd: float = 1.0, *,
                 generator: Generator | None = None) -> Tensor:
    rng = _gen_for(self._device, generator)
    return _fill_inplace(self, rng.exponential(1.0 / lambd, size=self._data.shape), "exponential_")


def geometric_(self: Tensor, p: float, *, generator: Generator | None = None) -> Tensor:
    rng = _gen_for(self._device, generator)
    return _fill_inplace(self, rng.geometric(p, size=self._data.shape), "geometric_")


def log_normal_(self: Tensor, mean: float = 1.0, std: float = 2.0, *,
                generator: Generator | None = None) -> Tensor:
    rng = _gen_for(self._device, generator)
    return _fill_inplace(self, rng.lognormal(mean, std, size=self._data.shape), "log_normal_")


def cauchy_(self: Tensor, median: float = 0.0, sigma: float = 1.0, *,
            generator: Generator | None = None) -> Tensor:
    rng = _gen_for(self._device, generator)
    return _fill_inplace(self, median + sigma * rng.standard_cauchy(size=self._data.shape),
                         "cauchy_")


for _fn in (uniform_, normal_, bernoulli_, random_, exponential_, geometric_, log_normal_,
            cauchy_):
    setattr(Tensor, _fn.__name__, _fn)
Tensor.bernoulli = lambda self, p=None, *, generator=None: bernoulli(self, p, generator=generator)
Tensor.multinomial = lambda self, num_samples, replacement=False, *, generator=None: multinomial(
    self, num_samples, replacement, generator=generator)
