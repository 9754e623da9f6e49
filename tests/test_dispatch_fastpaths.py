"""The dispatcher's and the views' fast paths against torch: weak Python scalars beside
tensors, single-pass shape inference, view/copy decisions of reshape, dims given as numpy
ints or negatives, split sizes, expand with leading dims, and a backward through views."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ember

DTYPES = ["float16", "float32", "float64", "complex64", "int32", "int64", "bool"]


def _pair(shape, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape) * 3
    if dtype == "bool":
        a = a > 0
    elif dtype.startswith("complex"):
        a = a + 1j * rng.standard_normal(shape)
    a = a.astype(dtype)
    return ember.tensor(a), torch.tensor(a)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scalar", [2, -3, 2.5, True])
@pytest.mark.parametrize("op", ["add", "mul", "sub", "lt"])
def test_scalar_operand_promotion_matches_torch(dtype: str, scalar, op: str) -> None:
    e, t = _pair((3, 4), dtype)
    if op == "sub" and (dtype == "bool" or isinstance(scalar, bool)):
        pytest.skip("torch rejects bool subtraction")
    if op == "lt" and dtype.startswith("complex"):
        pytest.skip("complex has no ordering")
    fe, ft = getattr(ember, op), getattr(torch, op)
    re_, rt = fe(e, scalar), ft(t, scalar)
    assert str(re_.dtype).split(".")[-1] == str(rt.dtype).split(".")[-1]
    np.testing.assert_allclose(re_.numpy().astype(np.complex128),
                               rt.numpy().astype(np.complex128), rtol=1e-3)


@pytest.mark.parametrize("shape", [(16,), (2, -1), (-1, 4), (2, 2, -1), (4, 4), (-1,)])
def test_view_infers_like_torch(shape: tuple) -> None:
    e, t = _pair((4, 4), "float32")
    assert tuple(e.view(*shape).shape) == tuple(t.view(*shape).shape)
    assert tuple(e.reshape(shape).shape) == tuple(t.reshape(shape).shape)


@pytest.mark.parametrize("shape", [(-1, -1), (3, -1), (5, 5), (0, -1), (-2, 8), (4, -1, -2)])
def test_bad_view_shapes_raise_like_torch(shape: tuple) -> None:
    e, t = _pair((4, 4), "float32")
    with pytest.raises(RuntimeError) as te:
        t.view(*shape)
    with pytest.raises(type(te.value)):
        e.view(*shape)


def test_reshape_is_a_view_only_when_torch_makes_one() -> None:
    for make_input in (lambda m: m.arange(12.0).reshape(3, 4),
                       lambda m: m.arange(12.0).reshape(3, 4).t(),
                       lambda m: m.arange(12.0).reshape(3, 4)[:, ::2]):
        e, t = make_input(ember), make_input(torch)
        re_, rt = e.reshape(-1), t.reshape(-1)
        re_.add_(100.0)   # through a view the input changes; after a copy it does not
        rt.add_(100.0)
        np.testing.assert_array_equal(e.numpy(), t.numpy())


def test_view_of_a_non_viewable_tensor_raises_like_torch() -> None:
    t = torch.arange(12.0).reshape(3, 4).t()
    e = ember.arange(12.0).reshape(3, 4).t()
    with pytest.raises(RuntimeError):
        t.view(12)
    with pytest.raises(RuntimeError):
        e.view(12)


@pytest.mark.parametrize("dims", [(0, 1), (-1, 0), (2, -3), (np.int64(1), np.int64(2))])
def test_transpose_dims_like_torch(dims: tuple) -> None:
    e, t = _pair((2, 3, 4), "float32")
    np.testing.assert_array_equal(e.transpose(*dims).numpy(),
                                  t.transpose(*[int(d) for d in dims]).numpy())


@pytest.mark.parametrize("perm", [(2, 0, 1), (-1, 0, 1), (0, 1, 2), (1, -1, 0)])
def test_permute_like_torch(perm: tuple) -> None:
    e, t = _pair((2, 3, 4), "float32")
    np.testing.assert_array_equal(e.permute(*perm).numpy(), t.permute(*perm).numpy())


@pytest.mark.parametrize("perm", [(0, 0, 1), (0, 1), (0, 1, 3), (0, 1, -4)])
def test_bad_permutations_raise_like_torch(perm: tuple) -> None:
    e, t = _pair((2, 3, 4), "float32")
    with pytest.raises((RuntimeError, IndexError)) as te:
        t.permute(*perm)
    with pytest.raises(type(te.value)):
        e.permute(*perm)


@pytest.mark.parametrize("dim", [0, 1, 2, 3, -1, -4])
def test_unsqueeze_of_a_strided_tensor_is_a_view_like_torch(dim: int) -> None:
    e = ember.arange(24.0).reshape(2, 3, 4).transpose(0, 2)
    t = torch.arange(24.0).reshape(2, 3, 4).transpose(0, 2)
    ue, ut = e.unsqueeze(dim), t.unsqueeze(dim)
    assert tuple(ue.shape) == tuple(ut.shape)
    ue.mul_(2.0)
    ut.mul_(2.0)
    np.testing.assert_array_equal(e.numpy(), t.numpy())


@pytest.mark.parametrize("n,size", [(8, 3), (8, 4), (8, 8), (8, 1), (3, 5), (8, [2, 6])])
def test_split_sizes_like_torch(n: int, size) -> None:
    e, t = _pair((n, 2), "float32")
    se, st = e.split(size), t.split(size)
    assert [tuple(x.shape) for x in se] == [tuple(x.shape) for x in st]


@pytest.mark.parametrize("shape,sizes", [((1, 4), (3, 4)), ((4,), (2, 3, 4)), ((), (2, 2)),
                                         ((1, 4), (-1, 4)), ((1,), (2, -1)),
                                         ((2, 4), (3, 4)), ((4,), (-1, 4)), ((2, 1), (2,))])
def test_expand_like_torch(shape: tuple, sizes: tuple) -> None:
    t = torch.zeros(shape)
    e = ember.zeros(shape)
    try:
        want = tuple(t.expand(*sizes).shape)
    except RuntimeError as exc:
        with pytest.raises(type(exc)):
            e.expand(*sizes)
        return
    assert tuple(e.expand(*sizes).shape) == want


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backward_through_views_matches_torch(dtype: str) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 6, 8)).astype(dtype)
    grads = []
    for m in (ember, torch):
        x = m.tensor(a, requires_grad=True)
        q, k = x.split(4, dim=2)
        q = q.view(2, 6, 2, 2).transpose(1, 2)
        k = k.reshape(2, 6, 2, 2).permute(0, 2, 3, 1)
        y = (q @ k).relu().flatten(1).unsqueeze(0) * 2.5
        y.sum().backward()
        grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_scalar_root_gradient_keeps_the_dtype_and_is_fresh() -> None:
    for dt in (ember.float64, ember.float32):
        x = ember.ones(3, dtype=dt, requires_grad=True)
        y = (x * 2).sum()
        y.backward(retain_graph=True)
        y.backward()
        assert x.grad.dtype is dt
        np.testing.assert_array_equal(x.grad.numpy(), np.full(3, 4.0))
    x = ember.ones((), requires_grad=True)
    x.backward()   # the root is the leaf itself: its gradient must not alias a shared 1
    x.grad.add_(5.0)
    x2 = ember.ones((), requires_grad=True)
    x2.backward()
    assert float(x2.grad) == 1.0
