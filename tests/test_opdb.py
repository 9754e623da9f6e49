"""Generic tests over every op record in tests/opdb: forward against NumPy float64, dtype and
shape against torch, gradients against torch, gradcheck/gradgradcheck in float64, error
inputs, and a registry test that fails when an op has no record."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from opdb import OpEntry, Sample, collect

ENTRIES = collect()
_RNG_SEED = 1234


def _samples(entry: OpEntry, grad: bool = False) -> list:
    rng = np.random.default_rng(_RNG_SEED)
    fn = entry.grad_samples if grad and entry.grad_samples is not None else entry.samples
    return fn(rng)


def _cases(kind: str = "all") -> list:
    cases = []
    for e in ENTRIES:
        for i, s in enumerate(_samples(e)):
            cases.append(pytest.param(e, s, id=f"{e.name}-{i}-{s!r}"))
    return cases


def _np_cast(a: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype is None:
        return a
    if dtype == "bool":
        return a > 0
    if dtype.startswith(("int", "uint")):
        return np.round(np.asarray(a) * 3).astype(dtype)
    if dtype == "bfloat16":
        return a.astype(np.float32)
    return a.astype(dtype)


def _convert(m, sample: Sample, dtype: str = "float64", requires_grad: bool = False):
    """Sample args as tensors of framework ``m`` (ember or torch)."""
    def conv(a):
        if isinstance(a, np.ndarray):
            arr = _np_cast(a, dtype)
            if sample.noncontig and arr.ndim >= 2:
                t = m.tensor(np.ascontiguousarray(arr.swapaxes(0, 1))).transpose(0, 1)
            else:
                t = m.tensor(arr)
            if dtype == "bfloat16":
                t = t.to(m.bfloat16)
            if requires_grad and t.is_floating_point():
                if sample.noncontig and t.ndim >= 2:
                    base = t.transpose(0, 1).detach().requires_grad_(True)
                    return base.transpose(0, 1), base
                t.requires_grad_(True)
            return t, t
        if isinstance(a, list) and a and isinstance(a[0], np.ndarray):
            ts = [conv(x) for x in a]
            return [t for t, _ in ts], [leaf for _, leaf in ts]
        return a, None
    pairs = [conv(a) for a in sample.args]
    args = [p[0] for p in pairs]
    leaves = []
    for p in pairs:
        if isinstance(p[1], list):
            leaves.extend(p[1])
        elif p[1] is not None:
            leaves.append(p[1])
    return args, leaves


def _outputs(out) -> list:
    if isinstance(out, (tuple, list)):
        return [o for o in out]
    return [out]


def _to_np(t) -> np.ndarray:
    if isinstance(t, ember.Tensor):
        return np.asarray(t.detach()._host(), dtype=np.float64 if not t.is_complex() else None)
    if hasattr(t, "detach"):
        d = t.detach()
        if str(d.dtype) == "torch.bfloat16":
            d = d.float()
        return d.numpy()
    return np.asarray(t)


@pytest.mark.parametrize("entry,sample", _cases())
def test_forward_matches_numpy(entry: OpEntry, sample: Sample) -> None:
    if entry.ref is None:
        pytest.skip("no NumPy reference; checked against torch")
    args, _ = _convert(ember, sample)
    out = _outputs(entry.call(ember, *args, **sample.kwargs))
    ref = entry.ref(*sample.args, **sample.kwargs)
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    assert len(out) == len(refs)
    for o, r in zip(out, refs):
        r = np.asarray(r)
        got = _to_np(o)
        assert got.shape == r.shape, f"shape {got.shape} != reference {r.shape}"
        np.testing.assert_allclose(got, r, rtol=max(entry.rtol, 1e-7), atol=max(entry.atol, 1e-9),
                                   equal_nan=True)


def _dtype_cases() -> list:
    cases = []
    for e in ENTRIES:
        for i, s in enumerate(_samples(e)):
            for d in e.dtypes:
                if d in e.skip_torch_dtype:
                    continue
                cases.append(pytest.param(e, s, d, id=f"{e.name}-{i}-{d}"))
    return cases


@pytest.mark.parametrize("entry,sample,dtype", _dtype_cases())
def test_dtype_shape_and_values_match_torch(entry: OpEntry, sample: Sample, dtype: str,
                                           torch_mod) -> None:
    torch = torch_mod
    t_args, _ = _convert(torch, sample, dtype)
    e_args, _ = _convert(ember, sample, dtype)
    try:
        t_out = entry.call(torch, *t_args, **sample.kwargs)
    except Exception as exc:  # torch rejects this dtype: ember must reject it the same way
        with pytest.raises(type(exc) if not isinstance(exc, NotImplementedError) else
                           (RuntimeError, TypeError, NotImplementedError)):
            entry.call(ember, *e_args, **sample.kwargs)
        return
    e_out = entry.call(ember, *e_args, **sample.kwargs)
    t_list, e_list = _outputs(t_out), _outputs(e_out)
    assert len(t_list) == len(e_list)
    for t, e in zip(t_list, e_list):
        if not hasattr(t, "dtype"):
            assert e == t
            continue
        assert str(e.dtype).split(".")[-1] == str(t.dtype).split(".")[-1], \
            f"dtype {e.dtype} != torch {t.dtype}"
        assert tuple(e.shape) == tuple(t.shape)
        tol = {"float16": 2e-3, "bfloat16": 2e-2, "float32": 1e-5}.get(dtype, 1e-7)
        np.testing.assert_allclose(_to_np(e).astype(np.float64) if not e.is_complex() else
                                   _to_np(e), _to_np(t), rtol=max(tol, entry.rtol),
                                   atol=max(tol, entry.atol), equal_nan=True)


def _grad_cases() -> list:
    cases = []
    for e in ENTRIES:
        if not e.grad:
            continue
        for i, s in enumerate(_samples(e, grad=True)):
            cases.append(pytest.param(e, s, id=f"{e.name}-{i}-{s!r}"))
    return cases


def _weighted_sum(m, outs: list, rng: np.random.Generator):
    total = None
    for o in outs:
        if not (hasattr(o, "requires_grad") and o.requires_grad):
            continue
        w = m.tensor(rng.standard_normal(tuple(o.shape)), dtype=o.dtype)
        term = (o * w).sum()
        total = term if total is None else total + term
    return total


@pytest.mark.parametrize("entry,sample", _grad_cases())
def test_gradients_match_torch(entry: OpEntry, sample: Sample, torch_mod) -> None:
    if not entry.torch_grad:
        pytest.skip("gradient compared by gradcheck only")
    torch = torch_mod
    e_args, e_leaves = _convert(ember, sample, "float64", requires_grad=True)
    t_args, t_leaves = _convert(torch, sample, "float64", requires_grad=True)
    e_loss = _weighted_sum(ember, _outputs(entry.call(ember, *e_args, **sample.kwargs)),
                           np.random.default_rng(7))
    t_loss = _weighted_sum(torch, _outputs(entry.call(torch, *t_args, **sample.kwargs)),
                           np.random.default_rng(7))
    if t_loss is None:
        assert e_loss is None
        return
    e_loss.backward()
    t_loss.backward()
    for el, tl in zip(e_leaves, t_leaves):
        if tl.grad is None:
            assert el.grad is None or not np.any(_to_np(el.grad))
            continue
        assert el.grad is not None, "ember produced no gradient where torch did"
        np.testing.assert_allclose(_to_np(el.grad), tl.grad.numpy(force=True), rtol=1e-6,
                                   atol=1e-8)


def _check_cases(flag: str) -> list:
    cases = []
    for e in ENTRIES:
        if not getattr(e, flag) or not e.grad:
            continue
        for i, s in enumerate(_samples(e, grad=True)[:4]):
            cases.append(pytest.param(e, s, id=f"{e.name}-{i}-{s!r}"))
    return cases


def _fn_for_check(entry: OpEntry, sample: Sample, args: list):
    tensor_pos = [i for i, a in enumerate(args) if isinstance(a, ember.Tensor)
                  and a.requires_grad]

    def fn(*ts):
        call_args = list(args)
        for i, t in zip(tensor_pos, ts):
            call_args[i] = t
        outs = _outputs(entry.call(ember, *call_args, **sample.kwargs))
        return tuple(o for o in outs if isinstance(o, ember.Tensor) and o.is_floating_point())
    return fn, [args[i] for i in tensor_pos]


@pytest.mark.parametrize("entry,sample", _check_cases("grad"))
def test_gradcheck(entry: OpEntry, sample: Sample) -> None:
    if sample.noncontig:
        pytest.skip("gradcheck perturbs contiguous leaves")
    args, _ = _convert(ember, sample, "float64", requires_grad=True)
    fn, inputs = _fn_for_check(entry, sample, args)
    if not inputs or not any(i.numel() for i in inputs):
        pytest.skip("no differentiable input")
    assert ember.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("entry,sample", _check_cases("gradgrad"))
def test_gradgradcheck(entry: OpEntry, sample: Sample) -> None:
    if sample.noncontig:
        pytest.skip("gradcheck perturbs contiguous leaves")
    args, _ = _convert(ember, sample, "float64", requires_grad=True)
    fn, inputs = _fn_for_check(entry, sample, args)
    if not inputs or not any(i.numel() for i in inputs):
        pytest.skip("no differentiable input")
    assert ember.autograd.gradgradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-4, rtol=1e-3)


def _error_cases() -> list:
    cases = []
    for e in ENTRIES:
        for i, err in enumerate(e.errors):
            cases.append(pytest.param(e, err, id=f"{e.name}-err{i}"))
    return cases


@pytest.mark.parametrize("entry,err", _error_cases())
def test_error_inputs(entry: OpEntry, err) -> None:
    args, _ = _convert(ember, err.sample, None)
    with pytest.raises(err.exc, match=err.match) as info:
        entry.call(ember, *args, **err.sample.kwargs)
    msg = str(info.value)
    assert "ufunc" not in msg.lower() and "numpy." not in msg.lower(), f"NumPy text leaked: {msg}"
    try:
        import torch
    except ImportError:
        return
    t_args, _ = _convert(torch, err.sample, None)
    with pytest.raises(err.exc):
        entry.call(torch, *t_args, **err.sample.kwargs)


def test_every_registered_op_has_a_record() -> None:
    from ember.ops.registry import COMPOSITES, OPS
    covered = set()
    for e in ENTRIES:
        covered.add(e.name)
        covered.update(e.covers)
    missing = sorted(n for n in list(OPS) + list(COMPOSITES) if n not in covered)
    assert not missing, f"ops without an opdb record: {missing}"


def _to_cuda_args(args: list) -> list:
    out = []
    for a in args:
        if isinstance(a, ember.Tensor):
            out.append(a.detach().to("cuda").requires_grad_(a.requires_grad))
        elif isinstance(a, list) and a and isinstance(a[0], ember.Tensor):
            out.append([t.detach().to("cuda").requires_grad_(t.requires_grad) for t in a])
        else:
            out.append(a)
    return out


def _as_leaves(args: list) -> list:
    out = []
    for a in args:
        if isinstance(a, ember.Tensor):
            out.append(a.detach().requires_grad_(a.requires_grad))
        elif isinstance(a, list) and a and isinstance(a[0], ember.Tensor):
            out.append([t.detach().requires_grad_(t.requires_grad) for t in a])
        else:
            out.append(a)
    return out


def _leaves(args: list) -> list:
    flat = []
    for a in args:
        if isinstance(a, ember.Tensor):
            flat.append(a)
        elif isinstance(a, list):
            flat.extend(t for t in a if isinstance(t, ember.Tensor))
    return [t for t in flat if t.requires_grad]


def _on_cuda(fn):
    """Run ``fn`` with CUDA as the default device (tensors a record makes inside land there)."""
    ember.set_default_device("cuda")
    try:
        return fn()
    finally:
        ember.set_default_device(None)


@pytest.mark.cuda
@pytest.mark.parametrize("entry,sample", _cases())
def test_cpu_and_cuda_agree(entry: OpEntry, sample: Sample) -> None:
    """Forward and gradients of every op record on the GPU equal the CPU's (float64)."""
    args, _ = _convert(ember, sample, "float64", requires_grad=entry.grad)
    args = _as_leaves(args)  # non-contiguous samples arrive as views; make both sides leaves
    gargs = _to_cuda_args(args)
    try:
        c_out = _outputs(entry.call(ember, *args, **sample.kwargs))
    except Exception as exc:
        with pytest.raises(type(exc)):
            _on_cuda(lambda: entry.call(ember, *gargs, **sample.kwargs))
        return
    g_out = _outputs(_on_cuda(lambda: entry.call(ember, *gargs, **sample.kwargs)))
    assert len(c_out) == len(g_out)
    for c, g in zip(c_out, g_out):
        if not isinstance(c, ember.Tensor):
            assert c == g
            continue
        assert g.device.type == "cuda" and g.dtype is c.dtype and g.shape == c.shape
        np.testing.assert_allclose(_to_np(g), _to_np(c), rtol=1e-7, atol=1e-9, equal_nan=True)
    if not entry.grad:
        return
    rng_c, rng_g = np.random.default_rng(3), np.random.default_rng(3)
    lc = _weighted_sum(ember, c_out, rng_c)
    if lc is None:
        return
    lg = _weighted_sum(ember, [o.cpu() if isinstance(o, ember.Tensor) else o for o in g_out],
                       rng_g)
    try:
        lc.backward()
    except Exception as exc:  # not differentiable here: the GPU must refuse the same way
        with pytest.raises(type(exc)):
            lg.backward()
        return
    lg.backward()
    for a, b in zip(_leaves(args), _leaves(gargs)):
        if a.grad is None:
            assert b.grad is None or not np.any(_to_np(b.grad))
            continue
        assert b.grad is not None and b.grad.device.type == "cuda"
        np.testing.assert_allclose(_to_np(b.grad), _to_np(a.grad), rtol=1e-7, atol=1e-9)
