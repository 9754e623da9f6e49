"""Behaviour of the ops-breadth families that op records can't express: views and in-place
writes, named-tuple results, complex leaves and their gradients, namespaces, factories, and
``ember.testing``."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")


def _np(t):
    if isinstance(t, ember.Tensor):
        return t.detach()._host()
    return t.detach().resolve_conj().numpy()


# ---------------------------------------------------------------- in-place and views
def test_inplace_scatter_family_writes_through_views_and_bumps_versions():
    base = ember.zeros(3, 4)
    row = base[1]
    v0 = base._version[0]
    row.scatter_(0, ember.tensor([0, 2]), ember.tensor([1.0, 2.0]))
    row.index_add_(0, ember.tensor([3, 3]), ember.tensor([1.0, 1.0]))
    row.masked_fill_(row == 0, -1.0)
    assert base[1].tolist() == [1.0, -1.0, 2.0, 2.0]
    assert base._version[0] > v0
    base.index_put_((ember.tensor([0, 0]), ember.tensor([1, 1])), ember.tensor([5.0, 5.0]),
                    accumulate=True)
    base.put_(ember.tensor([-1]), ember.tensor([7.0]))
    assert base[0, 1].item() == 10.0 and base[2, 3].item() == 7.0


def test_inplace_on_leaf_requiring_grad_raises():
    x = ember.ones(3, requires_grad=True)
    for fn in (lambda: x.scatter_(0, ember.tensor([0]), 2.0),
               lambda: x.index_fill_(0, ember.tensor([0]), 2.0),
               lambda: x.put_(ember.tensor([0]), ember.tensor([2.0])),
               lambda: x.index_put_((ember.tensor([0]),), ember.tensor([2.0]))):
        with pytest.raises(RuntimeError, match="leaf Variable"):
            fn()


def test_inplace_scatter_gradient_matches_torch():
    outs = []
    for m in (ember, torch):
        w = m.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=m.float64, requires_grad=True)
        src = m.tensor([[0.5, 1.5]], dtype=m.float64, requires_grad=True)
        y = w * 2
        y.scatter_(1, m.tensor([[2, 0]]), src)
        y.index_fill_(0, m.tensor([1]), 0.0)
        (y * m.arange(6.0, dtype=m.float64).reshape(2, 3)).sum().backward()
        outs.append((_np(w.grad), _np(src.grad)))
    np.testing.assert_allclose(outs[0][0], outs[1][0])
    np.testing.assert_allclose(outs[0][1], outs[1][1])


def test_real_imag_are_views_that_write_through():
    z = ember.tensor([1 + 2j, 3 - 1j])
    z.real.mul_(2)
    z.imag = ember.tensor([5.0, 6.0])
    assert z.tolist() == [2 + 5j, 6 + 6j]
    r = ember.view_as_real(z)
    r[0, 1] = -1.0
    assert z[0].item() == 2 - 1j
    c = ember.view_as_complex(r)
    c[1] = 0j
    assert z[1].item() == 0j
    assert ember.tensor([1.0, 2.0]).real.tolist() == [1.0, 2.0]
    with pytest.raises(RuntimeError, match="non-complex"):
        ember.tensor([1.0]).imag


def test_view_as_complex_checks_strides():
    with pytest.raises(RuntimeError, match="stride 1"):
        ember.view_as_complex(ember.ones(2, 3).t())
    with pytest.raises(RuntimeError, match="stride divisible by 2"):
        ember.view_as_complex(ember.ones(3, 3)[:, :2])
    with pytest.raises(RuntimeError, match="storage_offset divisible by 2"):
        ember.view_as_complex(ember.ones(3, 4)[:, 1:3])


# ---------------------------------------------------------------- complex leaves
_COMPLEX_FNS = {
    "exp": lambda m, z, w: z.exp(),
    "abs": lambda m, z, w: z.abs(),
    "mul": lambda m, z, w: z * w,
    "div": lambda m, z, w: w / z,
    "add": lambda m, z, w: z + w * 2,
    "sum": lambda m, z, w: (z * w).sum(),
    "matmul": lambda m, z, w: z @ w,
    "real": lambda m, z, w: m.real(z * w),
    "imag": lambda m, z, w: (z * w).imag,
    "angle": lambda m, z, w: z.angle(),
    "log": lambda m, z, w: z.log(),
    "pow": lambda m, z, w: z ** 2.5,
    "sgn": lambda m, z, w: z.sgn(),
    "conj": lambda m, z, w: z.conj() * w,
    "mean": lambda m, z, w: z.mean(),
    "view_as_real": lambda m, z, w: m.view_as_real(z),
}


@pytest.mark.parametrize("name", sorted(_COMPLEX_FNS))
def test_complex_leaf_gradients_match_torch(name):
    fn = _COMPLEX_FNS[name]
    zv = np.array([1 + 2j, -3 + 0.5j, 0.25 - 1j])
    wv = np.array([0.5 - 1j, 2 + 1j, -1 + 0.5j])
    grads, vals = [], []
    for m in (ember, torch):
        z = m.tensor(zv, requires_grad=True)
        y = fn(m, z, m.tensor(wv))
        vals.append(_np(y))
        if y.is_complex():
            loss = y.real.sum() + 0.3 * y.imag.sum()
        else:
            loss = (y * m.arange(y.numel(), dtype=y.dtype).reshape(y.shape)).sum()
        loss.backward()
        grads.append(_np(z.grad))
    np.testing.assert_allclose(vals[0], vals[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_complex_dtypes_and_promotion():
    z = ember.tensor([1 + 1j], dtype=ember.complex64)
    assert z.abs().dtype is ember.float32 and z.angle().dtype is ember.float32
    assert (z * ember.tensor([2.0], dtype=ember.float64)).dtype is ember.complex128
    assert ember.complex(ember.ones(2), ember.zeros(2)).dtype is ember.complex64
    assert ember.is_complex(z) and not ember.is_complex(z.real)
    assert not z.is_conj() and ember.resolve_conj(z) is z and ember.resolve_neg(z) is z
    np.testing.assert_allclose(_np(ember.polar(ember.tensor([2.0]), ember.tensor([0.5]))),
                               [2 * np.exp(0.5j)], rtol=1e-6)


def test_real_input_gets_real_gradient_from_complex_intermediates():
    for m in (ember, torch):
        x = m.tensor([1.0, 2.0], dtype=m.float64, requires_grad=True)
        (x * m.tensor([1j, 2 + 1j])).abs().sum().backward()
        assert x.grad.dtype == m.float64
    np.testing.assert_allclose(_np(x.grad), [1.0, np.sqrt(5)])


# ---------------------------------------------------------------- results and namespaces
def test_named_tuple_results_match_torch_fields():
    x = ember.tensor([[3.0, 1.0, 2.0], [0.5, 4.0, 4.0]])
    assert ember.sort(x).values.shape == (2, 3) and ember.sort(x).indices.dtype is ember.int64
    assert ember.topk(x, 2).indices.tolist() == [[0, 2], [1, 2]]
    assert ember.kthvalue(x, 1).values.tolist() == [1.0, 0.5]
    assert ember.median(x, 1)._fields == ("values", "indices")
    assert ember.mode(x, 1).values.tolist() == [1.0, 4.0]
    mn, mx = ember.aminmax(x)
    assert (mn.item(), mx.item()) == (0.5, 4.0) and ember.aminmax(x, dim=0).max.tolist() == \
        [3.0, 4.0, 4.0]
    assert ember.cummax(x, 1).indices.tolist() == [[0, 0, 0], [0, 1, 2]]
    h = ember.histogram(x, bins=2)
    assert h.hist.tolist() == [3.0, 3.0] and h.bin_edges.tolist() == [0.5, 2.25, 4.0]
    f = ember.frexp(ember.tensor([8.0, 3.0]))
    assert f.mantissa.tolist() == [0.5, 0.75] and f.exponent.dtype is ember.int32
    assert type(ember.sort(x)).__name__ == "sort"


def test_nonzero_as_tuple_and_argwhere():
    x = ember.tensor([[0, 1], [2, 0]])
    rows, cols = ember.nonzero(x, as_tuple=True)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    assert ember.argwhere(x).tolist() == [[0, 1], [1, 0]]
    assert ember.nonzero(ember.tensor(5)).shape == (1, 0)
    assert [t.tolist() for t in ember.nonzero(ember.tensor(5), as_tuple=True)] == [[0]]
    assert x.nonzero().shape == (2, 2)


def test_unique_variants_match_torch():
    data = [[3, 1, 3], [2, 1, 2], [3, 1, 3]]
    for kw in ({}, {"return_inverse": True}, {"return_counts": True, "dim": 0},
               {"return_inverse": True, "return_counts": True, "dim": 1}):
        e = ember.unique(ember.tensor(data), **kw)
        t = torch.unique(torch.tensor(data), **kw)
        e, t = (e, t) if isinstance(e, tuple) else ((e,), (t,))
        assert [a.tolist() for a in e] == [b.tolist() for b in t], kw
    assert ember.tensor([2, 2, 1]).unique().tolist() == [1, 2]
    e = ember.unique_consecutive(ember.tensor([[1, 1], [1, 1], [2, 1]]), return_counts=True,
                                 dim=0)
    assert e[0].tolist() == [[1, 1], [2, 1]] and e[1].tolist() == [2, 1]


def test_mode_gradient_matches_torch():
    grads = []
    for m in (ember, torch):
        x = m.tensor([[3.0, 1.0, 3.0, 1.0, 2.0], [5.0, 5.0, 2.0, 2.0, 7.0]], dtype=m.float64,
                     requires_grad=True)
        (m.mode(x, 1).values * m.tensor([2.0, 3.0], dtype=m.float64)).sum().backward()
        grads.append(_np(x.grad))
    np.testing.assert_allclose(grads[0], grads[1])


def test_factories_and_shape_helpers_match_torch():
    for off in (-1, 0, 2):
        assert ember.tril_indices(3, 4, off).tolist() == torch.tril_indices(3, 4, off).tolist()
        assert ember.triu_indices(4, 3, off).tolist() == torch.triu_indices(4, 3, off).tolist()
    assert ember.broadcast_shapes((2, 1), (3,), ()) == (2, 3)
    assert repr(ember.broadcast_shapes((1,), (4,))) == "ember.Size([4])"
    with pytest.raises(RuntimeError, match="must match"):
        ember.broadcast_shapes((2,), (3,))
    with pytest.warns(UserWarning, match="indexing"):
        ember.meshgrid(ember.arange(2), ember.arange(3))
    assert ember.repeat_interleave(ember.tensor([2, 0, 1])).tolist() == [0, 0, 2]
    a, b = ember.meshgrid(ember.arange(3), ember.arange(2), indexing="xy")
    assert a.shape == (2, 3) and b[:, 0].tolist() == [0, 1]


def test_special_namespace_matches_torch_special():
    import ember.special as es
    x = np.linspace(0.1, 0.9, 5)
    for name in es.__all__:
        assert hasattr(torch.special, name), name
        fn_e, fn_t = getattr(es, name), getattr(torch.special, name)
        if name in ("softmax", "log_softmax", "logsumexp"):
            e, t = fn_e(ember.tensor(x), 0), fn_t(torch.tensor(x), 0)
        elif name in ("xlogy", "xlog1py", "zeta"):
            e, t = fn_e(ember.tensor(x) + 2, ember.tensor(x)), fn_t(torch.tensor(x) + 2,
                                                                    torch.tensor(x))
        elif name == "polygamma":
            e, t = fn_e(2, ember.tensor(x)), fn_t(2, torch.tensor(x))
        elif name == "multigammaln":
            e, t = fn_e(ember.tensor(x) + 2, 2), fn_t(torch.tensor(x) + 2, 2)
        else:
            e, t = fn_e(ember.tensor(x)), fn_t(torch.tensor(x))
        np.testing.assert_allclose(_np(e), _np(t), rtol=1e-10, atol=1e-12, err_msg=name)
    assert ember.special is es


def test_zeta_gradient_wrt_x_is_not_implemented_like_torch():
    x = ember.tensor([3.0], dtype=ember.float64, requires_grad=True)
    q = ember.tensor([1.5], dtype=ember.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        ember.special.zeta(x, q).sum().backward()
    q.grad = None
    ember.special.zeta(3.0, q).sum().backward()
    tq = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    torch.special.zeta(3.0, tq).sum().backward()
    np.testing.assert_allclose(_np(q.grad), _np(tq.grad))


def test_bad_indices_name_the_op_and_shapes_without_numpy_text():
    x = ember.ones(2, 3)
    cases = [(lambda: x.gather(1, ember.tensor([[7]])), RuntimeError, r"\[gather\]"),
             (lambda: x.index_select(0, ember.tensor([2])), RuntimeError, r"\[index_select\]"),
             (lambda: x.scatter_add(0, ember.tensor([[0, 0, 0, 0]]), x), RuntimeError,
              r"\[scatter_add\].*\[1, 4\]"),
             (lambda: x.take(ember.tensor([6])), IndexError, r"\[take\].*6 elements"),
             (lambda: x.index_copy(1, ember.tensor([0, 1]), ember.ones(2, 3)), RuntimeError,
              r"\[index_copy\] .*Number of indices \(2\)"),
             (lambda: x.masked_scatter(x > 0, ember.ones(2)), RuntimeError,
              r"\[masked_scatter\].*\(2,\)")]
    for fn, exc, pattern in cases:
        with pytest.raises(exc, match=pattern) as info:
            fn()
        assert "numpy" not in str(info.value).lower()


def test_tensor_methods_exist_like_torch():
    names = ["scatter", "scatter_", "scatter_add", "scatter_add_", "scatter_reduce",
             "scatter_reduce_", "gather", "index_select", "index_add", "index_add_",
             "index_copy", "index_copy_", "index_fill", "index_fill_", "index_put",
             "index_put_", "masked_fill", "masked_fill_", "masked_select", "masked_scatter",
             "masked_scatter_", "take", "take_along_dim", "put", "put_", "nonzero", "argwhere",
             "flip", "fliplr", "flipud", "roll", "rot90", "repeat", "tile", "repeat_interleave",
             "tril", "tril_", "triu", "triu_", "diag", "diag_embed", "diagflat", "broadcast_to",
             "tensor_split", "hsplit", "vsplit", "dsplit", "outer", "ger", "cross", "kron",
             "addbmm", "baddbmm", "addmv", "addr", "trace", "sort", "argsort", "msort", "topk",
             "kthvalue", "median", "nanmedian", "mode", "quantile", "nanquantile", "unique",
             "unique_consecutive", "histc", "histogram", "bincount", "count_nonzero",
             "cumprod", "cumprod_", "cummax", "cummin", "logcumsumexp", "nansum", "nanmean",
             "aminmax", "diff", "erfinv", "erfinv_", "lgamma", "digamma", "polygamma",
             "polygamma_", "mvlgamma", "mvlgamma_", "i0", "sinc", "xlogy", "xlogy_", "logit",
             "logit_", "hypot", "hypot_", "logaddexp", "logaddexp2", "copysign", "copysign_",
             "nextafter", "frexp", "ldexp", "ldexp_", "float_power", "float_power_", "fmax",
             "fmin", "heaviside", "gcd", "gcd_", "lcm", "nan_to_num", "nan_to_num_", "signbit",
             "isclose", "allclose", "equal", "isreal", "isneginf", "isposinf", "deg2rad",
             "rad2deg", "angle", "conj_physical", "resolve_conj", "resolve_neg", "is_conj"]
    missing = [n for n in names if hasattr(torch.Tensor, n) and not hasattr(ember.Tensor, n)]
    assert not missing, missing


# ---------------------------------------------------------------- ember.testing
def test_assert_close_tolerances_follow_dtype():
    ember.testing.assert_close(ember.tensor([1.0]), ember.tensor([1.0 + 1e-6]))
    with pytest.raises(AssertionError):
        ember.testing.assert_close(ember.tensor([1.0], dtype=ember.float64),
                                   ember.tensor([1.0 + 1e-6], dtype=ember.float64))
    ember.testing.assert_close(ember.tensor([1.0], dtype=ember.float16),
                               ember.tensor([1.0005], dtype=ember.float16))
    with pytest.raises(AssertionError, match="not equal"):
        ember.testing.assert_close(ember.tensor([1, 2]), ember.tensor([1, 3]))
    ember.testing.assert_close(ember.tensor([1.0]), ember.tensor([1.1]), rtol=0.2, atol=0.0)


def test_assert_close_messages_match_torch():
    def msg(fn, *a, **k):
        with pytest.raises(AssertionError) as info:
            fn(*a, **k)
        return str(info.value)
    pairs = [([1.0, 2.0, 3.0], [1.0, 2.5, 3.0]), ([1, 2], [1, 3]), (1.0, 2.0)]
    for a, b in pairs:
        e = msg(ember.testing.assert_close, ember.tensor(a), ember.tensor(b))
        t = msg(torch.testing.assert_close, torch.tensor(a), torch.tensor(b))
        assert e.splitlines()[:3] == t.splitlines()[:3]
        assert e.splitlines()[0] in ("Tensor-likes are not close!", "Tensor-likes are not equal!",
                                     "Scalars are not close!")
    e = msg(ember.testing.assert_close, ember.ones(2), ember.ones(2, dtype=ember.float64))
    assert e == "The values for attribute 'dtype' do not match: torch.float32 != torch.float64."
    e = msg(ember.testing.assert_close, ember.ones(2), ember.ones(3))
    assert "shape" in e
    e = msg(ember.testing.assert_close, {"a": [ember.ones(1)]}, {"a": [ember.zeros(1)]})
    assert e.endswith("The failure occurred for item ['a'][0]")
    assert msg(ember.testing.assert_close, ember.ones(1), ember.zeros(1), msg="custom") == \
        "custom"
    assert msg(ember.testing.assert_close, 1.0, 1.1).startswith("Scalars are not close!")


def test_assert_close_options_and_bad_arguments():
    nan = float("nan")
    ember.testing.assert_close(ember.tensor([nan]), ember.tensor([nan]), equal_nan=True)
    with pytest.raises(AssertionError):
        ember.testing.assert_close(ember.tensor([nan]), ember.tensor([nan]))
    ember.testing.assert_close(ember.ones(2), ember.ones(2, dtype=ember.float64),
                               check_dtype=False)
    ember.testing.assert_close([ember.ones(2), 3], (ember.ones(2), 3))
    with pytest.raises(TypeError, match="No comparison pair"):
        ember.testing.assert_close(ember.ones(1), 1.0)
    with pytest.raises(ValueError, match="atol"):
        ember.testing.assert_close(ember.ones(1), ember.ones(1), rtol=1e-3)


def test_make_tensor():
    t = ember.testing.make_tensor(3, 4, dtype=ember.float32, device="cpu", low=-1, high=1,
                                  noncontiguous=True, requires_grad=True)
    assert t.shape == (3, 4) and t.dtype is ember.float32 and not t.is_contiguous()
    assert t.requires_grad and float(t.abs().max()) <= 1
    i = ember.testing.make_tensor((5,), dtype=ember.int64, device="cpu", exclude_zero=True)
    assert i.dtype is ember.int64 and bool((i != 0).all())
    b = ember.testing.make_tensor(4, dtype=ember.bool, device="cpu")
    assert b.dtype is ember.bool
