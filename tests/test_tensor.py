"""Tensor parity with torch: creation, dtypes and promotion, devices, attributes,
conversions, Python protocols, repr, views, indexing (get and set) and in-place semantics."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import ember
from parity import check

torch = pytest.importorskip("torch")

CASES = {
    # creation and dtype inference
    "tensor int": lambda m: m.tensor([1, 2]),
    "tensor float": lambda m: m.tensor([1.0]),
    "tensor mixed": lambda m: m.tensor([1, 2.5]),
    "tensor bool": lambda m: m.tensor([True, False]),
    "tensor nested": lambda m: m.tensor([[1, 2], [3, 4]]),
    "tensor ragged": lambda m: m.tensor([[1, 2], [3]]),
    "tensor str": lambda m: m.tensor(["a"]),
    "tensor np f64": lambda m: m.tensor(np.array([1.0, 2.0])),
    "tensor np i32": lambda m: m.tensor(np.array([1, 2], np.int32)),
    "tensor dtype": lambda m: m.tensor([1.7, -2.2], dtype=m.int32),
    "zeros": lambda m: m.zeros(2, 3),
    "zeros tuple": lambda m: m.zeros((2, 3), dtype=m.int64),
    "ones like": lambda m: m.ones_like(m.zeros(2, dtype=m.int16)),
    "full int": lambda m: m.full((2,), 3),
    "full float": lambda m: m.full((2,), 3.5),
    "full bool": lambda m: m.full((2,), True),
    "full_like": lambda m: m.full_like(m.zeros(3), 7),
    "neg size": lambda m: m.zeros(-1),
    "arange int": lambda m: m.arange(5),
    "arange float": lambda m: m.arange(0, 1, 0.1),
    "arange neg": lambda m: m.arange(5, 0, -2),
    "arange bad": lambda m: m.arange(0, 5, -1),
    "arange zero step": lambda m: m.arange(0, 5, 0),
    "linspace": lambda m: m.linspace(0, 1, 7),
    "linspace f64": lambda m: m.linspace(-1, 3, 9, dtype=m.float64),
    "logspace": lambda m: m.logspace(0, 2, 3),
    "eye": lambda m: m.eye(2, 3),
    "empty shape": lambda m: m.empty(2, 0).shape,
    # promotion
    "int32 + float": lambda m: (m.tensor([1], dtype=m.int32) + 2.5),
    "uint8 + 0dim int64": lambda m: (m.tensor([1], dtype=m.uint8) + m.tensor(1000)).dtype,
    "f16 + 0dim f64": lambda m: (m.tensor([1.], dtype=m.float16) + m.tensor(1., dtype=m.float64)).dtype,
    "0dim int + f16": lambda m: (m.tensor(1) + m.tensor([1.], dtype=m.float16)).dtype,
    "bool + True": lambda m: (m.tensor([True]) + True),
    "int8 + uint8": lambda m: (m.tensor([1], dtype=m.int8) + m.tensor([1], dtype=m.uint8)).dtype,
    "bf16 * f16": lambda m: (m.tensor([1.], dtype=m.bfloat16) * m.tensor([1.], dtype=m.float16)).dtype,
    "int / int": lambda m: m.tensor([1, 2]) / 2,
    "int // int": lambda m: m.tensor([7, -7]) // 2,
    "int ** int": lambda m: m.tensor([3]) ** 2,
    "int rpow": lambda m: 2 ** m.tensor([3]),
    "float rpow": lambda m: 2.5 ** m.tensor([3]),
    "neg int pow": lambda m: m.tensor([2]) ** -1,
    "int ** float": lambda m: m.tensor([2]) ** 0.5,
    "where scalars": lambda m: m.where(m.tensor([True, False]), 1.0, 0),
    "clamp int float": lambda m: m.clamp(m.tensor([1, 5]), 2.5),
    "complex promo": lambda m: (m.tensor([1.0], dtype=m.float64) * m.tensor([1j], dtype=m.complex64)).dtype,
    "sum int32": lambda m: m.tensor([1, 2], dtype=m.int32).sum(),
    "sum bool": lambda m: m.tensor([True, True]).sum(),
    "mean int": lambda m: m.tensor([1, 2]).mean(),
    "div int zero": lambda m: m.tensor([1]) // m.tensor([0]),
    "bool sub": lambda m: m.tensor([True]) - m.tensor([False]),
    "bool neg": lambda m: -m.tensor([True]),
    # attributes
    "shape": lambda m: m.zeros(2, 3).shape,
    "size dim": lambda m: m.zeros(2, 3).size(-1),
    "size bad dim": lambda m: m.zeros(2, 3).size(2),
    "stride": lambda m: m.zeros(2, 3, 4).permute(2, 0, 1).stride(),
    "contiguous?": lambda m: m.zeros(2, 3).t().is_contiguous(),
    "contiguous strides": lambda m: m.zeros(2, 3).t().contiguous().stride(),
    "dim numel": lambda m: (m.zeros(2, 3).dim(), m.zeros(2, 3).numel(), m.zeros(2, 3).ndim),
    "T": lambda m: m.arange(6).reshape(2, 3).T,
    "mT": lambda m: m.arange(12).reshape(2, 2, 3).mT,
    "item": lambda m: m.tensor([2.5]).item(),
    "item many": lambda m: m.tensor([2.5, 1]).item(),
    "tolist": lambda m: m.tensor([[1, 2]]).tolist(),
    "type()": lambda m: m.zeros(2).type(),
    "type(str)": lambda m: m.zeros(2).type("torch.LongTensor"),
    "to dtype": lambda m: m.zeros(2).to(m.float64),
    "to tensor": lambda m: m.zeros(2).to(m.zeros(1, dtype=m.int32)),
    "to kw": lambda m: m.zeros(2).to(dtype=m.int64, device="cpu"),
    "long()": lambda m: m.tensor([1.7, -1.7]).long(),
    "bool()": lambda m: m.tensor([0.0, 2.0]).bool(),
    "half()": lambda m: m.tensor([1.0]).half().dtype,
    "numpy rg": lambda m: m.ones(2, requires_grad=True).numpy(),
    "requires int": lambda m: m.ones(2, dtype=m.int64).requires_grad_(),
    "finfo": lambda m: (m.finfo(m.float32).eps, m.finfo(m.float16).max, m.finfo(m.bfloat16).eps),
    "iinfo": lambda m: (m.iinfo(m.int8).min, m.iinfo(m.uint8).max),
    "promote_types": lambda m: m.promote_types(m.uint8, m.int8),
    "result_type": lambda m: m.result_type(m.tensor([1], dtype=m.int32), 1.0),
    "can_cast": lambda m: (m.can_cast(m.float32, m.int32), m.can_cast(m.int32, m.float32)),
    "default dtype": lambda m: m.get_default_dtype(),
    # devices
    "device repr": lambda m: repr(m.device("cuda:1")),
    "device str": lambda m: str(m.device("cuda", 0)),
    "device eq": lambda m: m.device("cpu") == m.device("cpu"),
    "device eq str": lambda m: m.device("cpu") == "cpu",
    "device bad": lambda m: m.device("tpu"),
    "tensor device": lambda m: str(m.zeros(1).device),
    # protocols
    "len": lambda m: len(m.zeros(3, 2)),
    "len 0d": lambda m: len(m.tensor(1.)),
    "bool 1": lambda m: bool(m.tensor([2])),
    "bool many": lambda m: bool(m.ones(2)),
    "float": lambda m: float(m.tensor([2.5])),
    "int": lambda m: int(m.tensor(3.9)),
    "index": lambda m: [10, 20, 30][m.tensor(1)],
    "index float": lambda m: [10, 20][m.tensor(1.0)],
    "iter": lambda m: [t.item() for t in m.tensor([1, 2])],
    "iter 0d": lambda m: list(m.tensor(1)),
    "format": lambda m: f"{m.tensor(2.5):.2f}",
    "array": lambda m: np.asarray(m.tensor([1.0, 2.0])).tolist(),
    "hash": lambda m: len({m.ones(1), m.ones(1)}),
    # operators
    "ops": lambda m: [(m.arange(4.) + 1) * 2 - 1, m.arange(4.) / 3, -m.arange(3), abs(m.tensor([-1, 2])),
                      m.arange(4) % 3, m.tensor([5, 6]) & 3, m.tensor([5, 6]) | 8, m.tensor([5, 6]) ^ 1,
                      ~m.tensor([True, False]), m.tensor([1, 2]) << 2, m.tensor([8, 9]) >> 1,
                      3 - m.arange(3), 1 / m.arange(1., 3.), m.arange(3.) @ m.arange(3.)],
    "compare": lambda m: [m.arange(3) == 1, m.arange(3) != 1, m.arange(3) < 1, m.arange(3) >= 1.5],
    "inplace ops": lambda m: (lambda x: (x.add_(1), x.mul_(2), x.sub_(1, alpha=2), x.div_(4), x)[-1])(m.arange(4.)),
    "iadd": lambda m: (lambda x: (x.__iadd__(m.ones(3)), x)[-1])(m.zeros(3)),
    "int add_ float": lambda m: m.ones(2, dtype=m.int64).add_(1.5),
    "add_ broadcast self": lambda m: m.ones(3).add_(m.ones(2, 3)),
    "clamp_": lambda m: m.arange(5.).clamp_(1, 3),
    "zero_ fill_": lambda m: (m.ones(3).zero_(), m.ones(2).fill_(7)),
    "copy_": lambda m: m.zeros(2, 3).copy_(m.tensor([1., 2., 3.])),
    "copy_ dtype": lambda m: m.zeros(3, dtype=m.int64).copy_(m.tensor([1.7, 2.2, 3.9])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch(name):
    check(CASES[name], torch, ember)


REPRS = {
    "float": lambda m: m.tensor([1.0, 2.5, 3.0]),
    "int": lambda m: m.tensor([[1, 2], [3, 40]]),
    "sci": lambda m: m.tensor([1e-5, 1e5, 3.0]),
    "big": lambda m: m.arange(2000.).reshape(2, 1000),
    "big 3d": lambda m: m.arange(3000).reshape(10, 10, 30),
    "f64": lambda m: m.tensor([1.5], dtype=m.float64),
    "requires_grad": lambda m: m.tensor([1.5, 2.0], requires_grad=True),
    "grad_fn": lambda m: m.tensor([1.5, 2.0], requires_grad=True) * 2,
    "sum grad_fn": lambda m: (m.tensor([1.5, 2.0], requires_grad=True) + 1).sum(),
    "bool": lambda m: m.tensor([True, False]),
    "empty": lambda m: m.zeros(0, 3),
    "empty 1d": lambda m: m.zeros(0),
    "empty int": lambda m: m.zeros(0, dtype=m.int64),
    "0d": lambda m: m.tensor(3.25),
    "0d int": lambda m: m.tensor(-7),
    "half": lambda m: m.tensor([1.5, 2.25], dtype=m.float16),
    "bf16": lambda m: m.tensor([1.5, -2.25], dtype=m.bfloat16),
    "nan inf": lambda m: m.tensor([float("nan"), 1.0, float("inf")]),
    "3d": lambda m: m.arange(24).reshape(2, 3, 4),
    "long line": lambda m: m.linspace(0, 1, 30),
    "neg": lambda m: m.tensor([-1.5, 2.0, -0.001]),
    "int8": lambda m: m.tensor([1, -2], dtype=m.int8),
    "uint8 big": lambda m: m.arange(1500, dtype=m.int64).reshape(30, 50) % 256,
    "wide": lambda m: m.tensor([123456.789, 0.5, 1.0]),
    "tiny": lambda m: m.tensor([1e-10, 2e-10]),
    "int mode float": lambda m: m.tensor([100.0, -3.0, 2000.0]),
    "size": lambda m: m.zeros(2, 3).shape,
    "max tuple": lambda m: m.tensor([[1., 5.], [7., 2.]]).max(1),
    "dtype": lambda m: m.float16,
}


@pytest.mark.parametrize("name", sorted(REPRS))
def test_repr_matches_torch(name):
    t = repr(REPRS[name](torch)).replace("torch.", "ember.")
    e = repr(REPRS[name](ember))
    assert e == t


def test_set_printoptions_matches_torch():
    try:
        torch.set_printoptions(precision=2)
        ember.set_printoptions(precision=2)
        assert repr(ember.tensor([1.23456, 2.0])) == repr(torch.tensor([1.23456, 2.0]))
    finally:
        torch.set_printoptions(profile="default")
        ember.set_printoptions(profile="default")


# ---------------------------------------------------------------- views share memory
VIEW_OPS = {
    "slice": lambda x: x[1:, ::2],
    "int": lambda x: x[1],
    "view": lambda x: x.view(4, 3),
    "reshape": lambda x: x.reshape(2, 6),
    "flatten": lambda x: x.flatten(),
    "unflatten": lambda x: x.unflatten(1, (2, 2)),
    "squeeze": lambda x: x.unsqueeze(0).squeeze(0),
    "unsqueeze": lambda x: x.unsqueeze(1),
    "permute": lambda x: x.permute(1, 0),
    "transpose": lambda x: x.transpose(0, 1),
    "t": lambda x: x.t(),
    "expand": lambda x: x[:1].expand(3, 4),
    "narrow": lambda x: x.narrow(1, 1, 2),
    "select": lambda x: x.select(1, 2),
    "unbind": lambda x: x.unbind(1)[2],
    "chunk": lambda x: x.chunk(2, 1)[1],
    "split": lambda x: x.split(1, 0)[2],
    "movedim": lambda x: x.movedim(0, 1),
    "diagonal": lambda x: x.diagonal(),
    "unfold": lambda x: x.unfold(1, 2, 2),
    "as_strided": lambda x: x.as_strided((2, 2), (1, 4), 1),
    "detach": lambda x: x.detach(),
    "T": lambda x: x.T,
}


@pytest.mark.parametrize("name", sorted(VIEW_OPS))
def test_views_share_memory_like_torch(name):
    fn = VIEW_OPS[name]
    te = ember.arange(12.).reshape(3, 4)
    tt = torch.arange(12.).reshape(3, 4)
    ve, vt = fn(te), fn(tt)
    assert ve.shape == tuple(vt.shape)
    np.testing.assert_array_equal(ve.numpy(), vt.numpy())
    if name != "expand":
        ve.mul_(10)
        vt.mul_(10)
        np.testing.assert_array_equal(te.numpy(), tt.numpy())
        assert te._version[0] == tt._version
    np.testing.assert_array_equal(ve.numpy(), vt.numpy())


def test_view_errors_like_torch():
    check(lambda m: m.zeros(3, 4).t().view(12), torch, ember)
    check(lambda m: m.zeros(3, 4)[:1].expand(3, 4).add_(1), torch, ember)
    check(lambda m: m.zeros(3, 4).view(5, -1), torch, ember)
    check(lambda m: m.zeros(3, 4).view(-1, -1), torch, ember)


def test_from_numpy_shares_memory():
    a = np.arange(6.0)
    t = ember.from_numpy(a)
    t[0] = 100
    assert a[0] == 100
    a[1] = 50
    assert t[1].item() == 50
    n = t.numpy()
    assert np.shares_memory(n, a)
    with pytest.raises(TypeError):
        ember.from_numpy([1, 2])


def test_as_tensor_shares_memory_and_dlpack():
    a = np.arange(4, dtype=np.float32)
    t = ember.as_tensor(a)
    a[0] = 9
    assert t[0].item() == 9
    u = ember.from_dlpack(t)
    u[1] = 7
    assert a[1] == 7
    tt = torch.from_dlpack(ember.arange(3.))
    assert tt.tolist() == [0.0, 1.0, 2.0]
    back = ember.from_dlpack(torch.arange(3.))
    assert back.tolist() == [0.0, 1.0, 2.0]


def test_pickle_and_deepcopy():
    x = ember.tensor([[1.5, 2.0]], requires_grad=True)
    y = pickle.loads(pickle.dumps(x))
    assert y.requires_grad and y.tolist() == x.tolist() and y.dtype is x.dtype
    z = copy.deepcopy(x)
    z.data[0, 0] = 5
    assert x[0, 0].item() == 1.5
    with pytest.raises(RuntimeError):
        copy.deepcopy(x * 2)


# ---------------------------------------------------------------- indexing
GET = {
    "basic": lambda m, x: x[1:, ::2],
    "ellipsis": lambda m, x: x[..., 1],
    "none": lambda m, x: x[None, :, None, 1],
    "neg": lambda m, x: x[-1, -2],
    "list": lambda m, x: x[[0, 2]],
    "list 2d": lambda m, x: x[[0, 2], [1, 3]],
    "tensor": lambda m, x: x[m.tensor([0, 2, 2])],
    "bool mask": lambda m, x: x[x > 4],
    "bool rows": lambda m, x: x[m.tensor([True, False, True])],
    "mixed": lambda m, x: x[1:, [0, 3]],
    "split adv": lambda m, x: x.reshape(3, 2, 2)[[0, 1], :, [1, 0]],
    "0d tensor": lambda m, x: x[m.tensor(1)],
    "bool scalar": lambda m, x: x[True],
    "empty list": lambda m, x: x[[]],
    "out of range": lambda m, x: x[3],
    "out of range tensor": lambda m, x: x[m.tensor([5])],
    "float index": lambda m, x: x[m.tensor([1.0])],
    "neg step": lambda m, x: x[::-1],
    "too many": lambda m, x: x[0, 0, 0],
    "bad mask": lambda m, x: x[m.tensor([True, False])],
    "str index": lambda m, x: x["a"],
}


@pytest.mark.parametrize("name", sorted(GET))
def test_getitem_matches_torch(name):
    check(lambda m: GET[name](m, m.arange(12).reshape(3, 4)), torch, ember)


SET = {
    "slice scalar": lambda m, x: x.__setitem__((slice(None), 1), 7),
    "slice tensor": lambda m, x: x.__setitem__((slice(None), 1), m.tensor([9., 8, 7])),
    "broadcast": lambda m, x: x.__setitem__(slice(0, 2), m.tensor([1., 2, 3, 4])),
    "mask": lambda m, x: x.__setitem__(x > 5, 0),
    "mask tensor": lambda m, x: x.__setitem__(x > 9, m.tensor([1., 2.])),
    "int list": lambda m, x: x.__setitem__([0, 2], -1),
    "int tensor 2d": lambda m, x: x.__setitem__((m.tensor([0, 1]), m.tensor([3, 0])), 5.5),
    "ellipsis none": lambda m, x: x.__setitem__((Ellipsis, None, 0), 3),
    "wrong shape": lambda m, x: x.__setitem__(0, m.tensor([1., 2.])),
    "out of range": lambda m, x: x.__setitem__(4, 1),
    "float into int": lambda m, x: x.__setitem__(0, 2.7),
}


@pytest.mark.parametrize("name", sorted(SET))
def test_setitem_matches_torch(name):
    def run(m):
        x = m.arange(12.).reshape(3, 4)
        if name == "float into int":
            x = m.arange(12).reshape(3, 4)
        SET[name](m, x)
        return x
    check(run, torch, ember)


def test_setitem_bumps_version_and_writes_through_views():
    x = ember.zeros(3, 4)
    v = x[1]
    x[1, 2] = 5
    assert x._version[0] == 1 and v[2].item() == 5
    v[0] = 3
    assert x[1, 0].item() == 3 and x._version[0] == 2


def test_setitem_autograd_matches_torch():
    def run(m):
        w = m.tensor([1.0, 2.0, 3.0], requires_grad=True)
        v = m.tensor([10.0, 20.0], requires_grad=True)
        y = w * 2
        y[1:] = v * v
        y.sum().backward()
        return w.grad, v.grad, y
    check(run, torch, ember)
    check(lambda m: m.ones(2, requires_grad=True).__setitem__(0, 1.0), torch, ember)
