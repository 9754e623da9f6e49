"""``*_like`` factories follow torch's ``memory_format`` rule: ``preserve_format`` (the
default) keeps a dense input's strides, a non-dense one gets its suggested format; strides
and values compared with torch."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")


def _pair(shape, perm=None, index=None):
    """A torch tensor and the ember tensor with the same shape and strides."""
    base = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t, e = torch.from_numpy(base.copy()), ember.tensor(base.copy())
    if perm is not None:
        t, e = t.permute(*perm), e.permute(*perm)
    if index is not None:
        t, e = t[index], e[index]
    assert t.stride() == e.stride()
    return t, e


CASES = {
    "channels_last": dict(shape=(2, 4, 5, 3), perm=(0, 3, 1, 2)),
    "channels_last_3d": dict(shape=(2, 3, 4, 5, 3), perm=(0, 4, 1, 2, 3)),
    "transposed": dict(shape=(4, 3), perm=(1, 0)),
    "permuted_3d": dict(shape=(2, 3, 4), perm=(2, 0, 1)),
    "contiguous": dict(shape=(2, 3, 4)),
    "sliced": dict(shape=(4, 6), index=(slice(None), slice(None, None, 2))),
    "sliced_channels_last": dict(shape=(2, 6, 5, 3), perm=(0, 3, 1, 2),
                                 index=(slice(None), slice(None), slice(None, None, 2))),
    "sliced_transposed": dict(shape=(6, 4), perm=(1, 0),
                              index=(slice(None), slice(None, None, 2))),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fn", ["empty_like", "zeros_like", "ones_like", "full_like"])
def test_preserve_format_strides(case, fn):
    t, e = _pair(**CASES[case])
    args = (2.5,) if fn == "full_like" else ()
    rt, re = getattr(torch, fn)(t, *args), getattr(ember, fn)(e, *args)
    assert re.shape == tuple(rt.shape)
    assert re.stride() == rt.stride(), (re.stride(), rt.stride())
    if fn != "empty_like":
        np.testing.assert_array_equal(re.numpy(), rt.numpy())


@pytest.mark.parametrize("case", ["channels_last", "transposed", "sliced_channels_last"])
def test_dtype_change_keeps_layout(case):
    t, e = _pair(**CASES[case])
    rt = torch.zeros_like(t, dtype=torch.float64)
    re = ember.zeros_like(e, dtype=ember.float64)
    assert re.dtype == ember.float64 and re.stride() == rt.stride()


@pytest.mark.parametrize("case", ["channels_last", "contiguous"])
@pytest.mark.parametrize("fmt", ["contiguous_format", "channels_last", "preserve_format"])
def test_explicit_memory_format(case, fmt):
    t, e = _pair(**CASES[case]) if case == "channels_last" else _pair((2, 3, 4, 5))
    rt = torch.empty_like(t, memory_format=getattr(torch, fmt))
    re = ember.empty_like(e, memory_format=getattr(ember, fmt))
    assert re.stride() == rt.stride()


def test_channels_last_needs_rank_4():
    t, e = _pair((2, 3, 4))
    with pytest.raises(RuntimeError, match="rank 4"):
        torch.empty_like(t, memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="rank 4"):
        ember.empty_like(e, memory_format=ember.channels_last)


def test_requires_grad_and_values():
    t, e = _pair(**CASES["channels_last"])
    re = ember.ones_like(e, requires_grad=True)
    assert re.requires_grad and re.is_leaf
    (re * 2).sum().backward()
    np.testing.assert_array_equal(re.grad.numpy(), np.full(re.shape, 2.0, np.float32))
