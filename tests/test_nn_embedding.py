"""nn.Embedding / nn.EmbeddingBag and their functional forms against torch: outputs and
gradients after copying weights, padding_idx, max_norm renormalisation, scale_grad_by_freq,
from_pretrained, modes, per-sample weights, offsets layouts and torch's error types."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")


def _pair(module_name: str, *args, **kwargs):
    tm = getattr(torch.nn, module_name)(*args, **kwargs).double()
    em = getattr(ember.nn, module_name)(*args, **kwargs).double()
    em.load_state_dict({k: ember.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})
    return em, tm


def _close(e, t, tol=1e-12):
    np.testing.assert_allclose(e.detach().numpy(), t.detach().numpy(), rtol=tol, atol=tol)


def _backward_both(eo, to, rng):
    g = rng.standard_normal(tuple(to.shape))
    (eo * ember.tensor(g)).sum().backward()
    (to * torch.tensor(g)).sum().backward()


@pytest.mark.parametrize("kwargs", [{}, {"padding_idx": 2}, {"padding_idx": -1},
                                    {"scale_grad_by_freq": True},
                                    {"padding_idx": 0, "scale_grad_by_freq": True}])
def test_embedding_matches_torch(kwargs):
    rng = np.random.default_rng(0)
    em, tm = _pair("Embedding", 10, 4, **kwargs)
    idx = rng.integers(0, 10, (3, 5))
    idx[0, :3] = 2  # repeats, so scale_grad_by_freq matters
    eo, to = em(ember.tensor(idx)), tm(torch.tensor(idx))
    _close(eo, to)
    _backward_both(eo, to, rng)
    _close(em.weight.grad, tm.weight.grad)


def test_embedding_padding_row_starts_at_zero_and_gets_no_grad():
    emb = ember.nn.Embedding(5, 3, padding_idx=1)
    assert not emb.weight[1].detach().numpy().any()
    emb(ember.tensor([1, 1, 2])).sum().backward()
    assert not emb.weight.grad[1].numpy().any()
    assert emb.weight.grad[2].numpy().all()


def test_embedding_int32_indices_and_shapes():
    emb = ember.nn.Embedding(6, 2)
    assert emb(ember.tensor([[1, 2]], dtype=ember.int32)).shape == (1, 2, 2)
    assert emb(ember.tensor(3)).shape == (2,)
    assert emb(ember.tensor([], dtype=ember.int64)).shape == (0, 2)


@pytest.mark.parametrize("norm_type", [2.0, 1.0])
def test_embedding_max_norm_renormalises_rows_in_place(norm_type):
    rng = np.random.default_rng(1)
    em, tm = _pair("Embedding", 8, 4, max_norm=1.0, norm_type=norm_type)
    with torch.no_grad():
        tm.weight.mul_(3)
    em.load_state_dict({"weight": ember.tensor(tm.weight.detach().numpy())})
    idx = np.array([[1, 3, 3], [0, 7, 1]])
    eo, to = em(ember.tensor(idx)), tm(torch.tensor(idx))
    _close(eo, to, 1e-9)
    _close(em.weight, tm.weight, 1e-9)  # the looked-up rows changed in place, the others not
    _backward_both(eo, to, rng)
    _close(em.weight.grad, tm.weight.grad, 1e-9)


def test_embedding_from_pretrained():
    w = torch.randn(4, 3, dtype=torch.float64)
    e = ember.nn.Embedding.from_pretrained(ember.tensor(w.numpy()))
    t = torch.nn.Embedding.from_pretrained(w)
    assert e.weight.requires_grad is t.weight.requires_grad is False
    _close(e(ember.tensor([3, 0])), t(torch.tensor([3, 0])))
    e2 = ember.nn.Embedding.from_pretrained(ember.tensor(w.numpy()), freeze=False, padding_idx=0)
    assert e2.weight.requires_grad and e2.padding_idx == 0
    with pytest.raises(AssertionError):
        ember.nn.Embedding.from_pretrained(ember.zeros(3))


def test_embedding_repr_and_state_dict_keys():
    e = ember.nn.Embedding(10, 3, padding_idx=1, max_norm=2.0)
    t = torch.nn.Embedding(10, 3, padding_idx=1, max_norm=2.0)
    assert repr(e) == repr(t)
    assert list(e.state_dict()) == list(t.state_dict()) == ["weight"]
    e_bag = ember.nn.EmbeddingBag(10, 3, mode="sum")
    assert repr(e_bag) == repr(torch.nn.EmbeddingBag(10, 3, mode="sum"))


def test_functional_embedding_double_backward():
    w = ember.tensor(np.random.default_rng(2).standard_normal((5, 3)), requires_grad=True)
    idx = ember.tensor([[0, 4], [4, 2]])
    fn = lambda w: ember.nn.functional.embedding(idx, w).pow(2)  # noqa: E731
    assert ember.autograd.gradgradcheck(fn, (w,))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_embedding_bag_1d_offsets_matches_torch(mode, padding_idx):
    rng = np.random.default_rng(3)
    em, tm = _pair("EmbeddingBag", 10, 4, mode=mode, padding_idx=padding_idx)
    idx = np.array([1, 2, 3, 3, 5, 9, 0, 3, 3])
    off = np.array([0, 3, 3, 6])  # an empty bag too
    eo = em(ember.tensor(idx), ember.tensor(off))
    to = tm(torch.tensor(idx), torch.tensor(off))
    _close(eo, to)
    _backward_both(eo, to, rng)
    _close(em.weight.grad, tm.weight.grad)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_2d_input_and_include_last_offset(mode):
    rng = np.random.default_rng(4)
    em, tm = _pair("EmbeddingBag", 7, 3, mode=mode)
    idx = rng.integers(0, 7, (4, 3))
    _close(em(ember.tensor(idx)), tm(torch.tensor(idx)))
    em2, tm2 = _pair("EmbeddingBag", 7, 3, mode=mode, include_last_offset=True)
    flat, off = np.array([1, 2, 6, 6, 0]), np.array([0, 2, 2, 5])
    eo, to = em2(ember.tensor(flat), ember.tensor(off)), tm2(torch.tensor(flat), torch.tensor(off))
    assert eo.shape == to.shape == (3, 3)
    _close(eo, to)


def test_embedding_bag_per_sample_weights_grads():
    rng = np.random.default_rng(5)
    em, tm = _pair("EmbeddingBag", 6, 3, mode="sum")
    idx, off = np.array([0, 5, 5, 2, 1]), np.array([0, 2])
    psw = rng.standard_normal(5)
    ep, tp = ember.tensor(psw, requires_grad=True), torch.tensor(psw, requires_grad=True)
    eo = em(ember.tensor(idx), ember.tensor(off), per_sample_weights=ep)
    to = tm(torch.tensor(idx), torch.tensor(off), per_sample_weights=tp)
    _close(eo, to)
    _backward_both(eo, to, rng)
    _close(em.weight.grad, tm.weight.grad)
    _close(ep.grad, tp.grad)


def test_embedding_bag_scale_grad_by_freq_uses_true_frequency():
    # ember divides by the real count of each index (like embedding); checked in NumPy
    w = ember.zeros(6, 1, requires_grad=True)
    idx = ember.tensor([1, 2, 4, 4, 3, 0, 5])
    ember.nn.functional.embedding_bag(idx, w, ember.tensor([0, 2, 5]), mode="sum",
                                      scale_grad_by_freq=True).sum().backward()
    np.testing.assert_allclose(w.grad.numpy()[:, 0], [1, 1, 1, 1, 1, 1])


def _idle(m, *args):
    """``args``, after waiting for the GPU when they live there: an embedding call made while
    the GPU is busy checks its indices on the device and raises later
    (tests/test_cuda_embedding_check.py); with the GPU idle it raises at the call."""
    if m.__name__ == "ember" and any(a.device.type == "cuda" for a in args):
        m.cuda.synchronize()
    return args


@pytest.mark.parametrize("call, exc", [
    (lambda m: m.nn.functional.embedding(m.tensor([1.0]), m.randn(3, 2)), RuntimeError),
    (lambda m: m.nn.functional.embedding(*_idle(m, m.tensor([3]), m.randn(3, 2))), IndexError),
    (lambda m: m.nn.functional.embedding(m.tensor([1]), m.randn(3)), RuntimeError),
    (lambda m: m.nn.functional.embedding(m.tensor([1]), m.randn(3, 2), padding_idx=5),
     AssertionError),
    (lambda m: m.nn.Embedding(3, 2, padding_idx=-4), AssertionError),
    (lambda m: m.nn.functional.embedding_bag(m.tensor([[1, 2]]), m.randn(3, 2),
                                             m.tensor([0])), ValueError),
    (lambda m: m.nn.functional.embedding_bag(m.tensor([1, 2]), m.randn(3, 2)), ValueError),
    (lambda m: m.nn.functional.embedding_bag(m.tensor([1, 2]), m.randn(3, 2), m.tensor([0]),
                                             mode="median"), ValueError),
    (lambda m: m.nn.functional.embedding_bag(m.tensor([1, 2]), m.randn(3, 2), m.tensor([0]),
                                             mode="max", scale_grad_by_freq=True), ValueError),
    (lambda m: m.nn.functional.embedding_bag(m.tensor([1, 2]), m.randn(3, 2), m.tensor([0]),
                                             mode="mean", per_sample_weights=m.ones(2)),
     NotImplementedError),
    (lambda m: m.nn.functional.embedding_bag(m.tensor([1, 2]), m.randn(3, 2), m.tensor([0]),
                                             mode="sum", per_sample_weights=m.ones(3)),
     ValueError),
    (lambda m: m.nn.functional.embedding_bag(m.tensor([1, 7]), m.randn(3, 2), m.tensor([0])),
     RuntimeError),
])
def test_errors_match_torch_types(call, exc):
    with pytest.raises(exc):
        call(torch)
    with pytest.raises(exc) as info:
        call(ember)
    assert "numpy" not in str(info.value).lower()
