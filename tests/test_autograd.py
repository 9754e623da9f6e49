"""Autograd parity with torch: backward options, autograd.grad, higher-order gradients,
accumulation, retain_grad, hooks, grad modes, custom Functions, in-place checks, anomaly mode."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import ember
from parity import check

torch = pytest.importorskip("torch")


def leaf(m, values, dtype="float64"):
    return m.tensor(values, dtype=getattr(m, dtype), requires_grad=True)


CASES = {
    "basic": lambda m: (lambda a, b: ((a * b + a).sum().backward(), a.grad, b.grad)[1:])(
        leaf(m, [1., 2., 3.]), leaf(m, [4., 5., 6.])),
    "broadcast": lambda m: (lambda a, b: ((a * b).sum().backward(), a.grad, b.grad)[1:])(
        leaf(m, [[1., 2., 3.], [4., 5., 6.]]), leaf(m, [2., 3., 4.])),
    "accumulate": lambda m: (lambda a: ((a * 2).sum().backward(), (a * a).sum().backward(), a.grad)[-1])(
        leaf(m, [1., 2.])),
    "nonscalar no grad": lambda m: (leaf(m, [1., 2.]) * 2).backward(),
    "gradient arg": lambda m: (lambda a: ((a * a).backward(m.tensor([1., 10.], dtype=m.float64)), a.grad)[-1])(
        leaf(m, [1., 2.])),
    "gradient shape": lambda m: (leaf(m, [1., 2.]) * 2).backward(m.ones(3, dtype=m.float64)),
    "twice": lambda m: (lambda y: (y.backward(retain_graph=False), y.backward()))(
        (leaf(m, [1., 2.]).exp()).sum()),
    "retain": lambda m: (lambda a: (lambda y: (y.backward(retain_graph=True), y.backward(), a.grad)[-1])(
        (a.exp()).sum()))(leaf(m, [1., 2.])),
    "no grad tensor": lambda m: m.ones(2).sum().backward(),
    "grad fn": lambda m: m.autograd.grad((leaf(m, [1., 2.]) ** 2).sum(), leaf(m, [1.])),
    "grad": lambda m: (lambda a: m.autograd.grad((a ** 3).sum(), a))(leaf(m, [1., 2.])),
    "grad unused": lambda m: (lambda a, b: m.autograd.grad((a * 2).sum(), [a, b]))(
        leaf(m, [1.]), leaf(m, [2.])),
    "grad allow_unused": lambda m: (lambda a, b: m.autograd.grad((a * 2).sum(), [a, b], allow_unused=True))(
        leaf(m, [1.]), leaf(m, [2.])),
    "grad materialize": lambda m: (lambda a, b: m.autograd.grad((a * 2).sum(), [a, b], materialize_grads=True))(
        leaf(m, [1.]), leaf(m, [2.])),
    "grad no .grad": lambda m: (lambda a: (m.autograd.grad((a * 2).sum(), a), a.grad)[1])(leaf(m, [1.])),
    "grad nonleaf": lambda m: (lambda a: (lambda h: m.autograd.grad((h * h).sum(), h))(a * 3))(leaf(m, [1., 2.])),
    "double backward": lambda m: (lambda a: (lambda g: m.autograd.grad(g.sum(), a))(
        m.autograd.grad((a ** 3).sum(), a, create_graph=True)[0]))(leaf(m, [1., 2.])),
    "triple": lambda m: (lambda a: (lambda g1: (lambda g2: m.autograd.grad(g2.sum(), a))(
        m.autograd.grad(g1.sum(), a, create_graph=True)[0]))(
        m.autograd.grad(a.sin().sum(), a, create_graph=True)[0]))(leaf(m, [0.3, 1.2])),
    "create_graph backward": lambda m: (lambda a: ((a ** 2).sum().backward(create_graph=True),
                                                   a.grad.requires_grad, a.grad)[1:])(leaf(m, [1., 2.])),
    "backward inputs": lambda m: (lambda a, b: ((a * b).sum().backward(inputs=[a]), a.grad, b.grad)[1:])(
        leaf(m, [1., 2.]), leaf(m, [3., 4.])),
    "retain_grad": lambda m: (lambda a: (lambda h: (h.retain_grad(), (h * h).sum().backward(), h.grad)[-1])(
        a * 2))(leaf(m, [1., 2.])),
    "leaf is_leaf": lambda m: (lambda a: (a.is_leaf, (a * 2).is_leaf, a.detach().is_leaf, (a * 2).requires_grad))(
        leaf(m, [1.])),
    "int requires_grad": lambda m: m.tensor([1, 2], requires_grad=True),
    "nonleaf requires_grad_ False": lambda m: (leaf(m, [1.]) * 2).requires_grad_(False),
    "no_grad": lambda m: (lambda a: [(a * 2).requires_grad for _ in [0] if m.no_grad().__enter__() is None]
                          + [m.set_grad_enabled(True) is not None])(leaf(m, [1.])),
    "leaf inplace": lambda m: leaf(m, [1.]).add_(1),
    "leaf view inplace": lambda m: leaf(m, [1., 2.])[0].mul_(2),
    "leaf inplace no_grad": lambda m: (lambda a: (a.__class__, [a.mul_(3) for _ in [0] if not m.no_grad().__enter__()],
                                                  m.set_grad_enabled(True), a)[-1])(leaf(m, [1.])),
    "modified saved": lambda m: (lambda a: (lambda y: (y.add_(1), y.sum().backward()))(a.exp()))(leaf(m, [1.])),
    "modified input": lambda m: (lambda a: (lambda b: (lambda y: (b.mul_(2), y.sum().backward()))(b * b))(a * 1))(
        leaf(m, [1.])),
    "inplace nonleaf ok": lambda m: (lambda a: (lambda b: (b.mul_(3), b.sum().backward(), a.grad)[-1])(a * 2))(
        leaf(m, [1., 2.])),
    "inplace view of nonleaf": lambda m: (lambda a: (lambda b: (b[0].mul_(10), b.sum().backward(), a.grad, b)[2:])(
        a * 2))(leaf(m, [1., 2., 3.])),
    "inplace exp_ twice": lambda m: (lambda a: (lambda b: (b.exp_(), b.exp_(), b.sum().backward(), a.grad)[-1])(
        a * 1))(leaf(m, [0.1, 0.2])),
    "inplace mul_ saved self": lambda m: (lambda a, c: (lambda b: (b.mul_(c), b.sum().backward(), a.grad, c.grad)[2:])(
        a * 1))(leaf(m, [1., 2.]), leaf(m, [3., 4.])),
    "setitem grad": lambda m: (lambda a, v: (lambda b: (b.__setitem__(slice(0, 1), v * 5), b.sum().backward(), a.grad, v.grad)[2:])(
        a * 2))(leaf(m, [1., 2., 3.]), leaf(m, [1.])),
    "detach shares": lambda m: (lambda a: (lambda d: (d.add_(1), a)[-1])(a.detach()))(leaf(m, [1., 2.])),
    "grad_fn names": lambda m: [type(f(leaf(m, [1., 2.]))).__name__ if False else f(leaf(m, [1., 2.])).grad_fn.name()
                                for f in (lambda x: x * 2, lambda x: x + 1, lambda x: x.exp(), lambda x: x.sum())],
    "next_functions": lambda m: [type(f[0]).__name__ if f[0] is not None else None
                                 for f in ((leaf(m, [1.]) * 2) + 1).grad_fn.next_functions],
    "requires_grad propagation": lambda m: ((m.ones(2) * leaf(m, [1., 2.], "float32")).requires_grad,
                                            (m.ones(2) * m.ones(2)).requires_grad),
    "float32 float64 grad dtype": lambda m: (lambda a, b: ((a * b).sum().backward(), a.grad.dtype, b.grad.dtype)[1:])(
        leaf(m, [1., 2.], "float32"), leaf(m, [1., 2.], "float64")),
    "int operand": lambda m: (lambda a: ((a * m.tensor([2, 3])).sum().backward(), a.grad)[-1])(leaf(m, [1., 2.])),
    "zero grad flows": lambda m: (lambda a: ((a * 0).sum().backward(), a.grad)[-1])(leaf(m, [1., 2.])),
    "max ties": lambda m: (lambda a: (a.max().backward(), a.grad)[-1])(leaf(m, [3., 1., 3.])),
    "max dim": lambda m: (lambda a: (a.max(0).values.sum().backward(), a.grad)[-1])(leaf(m, [[3., 1.], [3., 5.]])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch(name):
    try:
        check(CASES[name], torch, ember)
    finally:
        torch.set_grad_enabled(True)
        ember.set_grad_enabled(True)


def test_grad_modes_context_and_decorator():
    x = ember.ones(2, requires_grad=True)
    with ember.no_grad():
        assert not (x * 2).requires_grad
        with ember.enable_grad():
            assert (x * 2).requires_grad
    assert (x * 2).requires_grad

    @ember.no_grad()
    def f(t):
        return t * 2
    assert not f(x).requires_grad and ember.is_grad_enabled()

    @ember.enable_grad()
    def g(t):
        return t * 2
    with ember.no_grad():
        assert g(x).requires_grad
    with ember.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert ember.is_grad_enabled()
    ember.set_grad_enabled(False)
    assert not ember.is_grad_enabled()
    ember.set_grad_enabled(True)
    with ember.inference_mode():
        y = x * 2
        assert not y.requires_grad and y.is_inference()
    assert not (x * 2).is_inference()

    @ember.inference_mode()
    def h(t):
        return t + 1
    assert not h(x).requires_grad

    def gen():
        yield (x * 2).requires_grad
        yield (x * 3).requires_grad
    wrapped = ember.no_grad()(gen)
    assert list(wrapped()) == [False, False]


def test_tensor_hooks_match_torch():
    def run(m):
        seen = []
        a = leaf(m, [1., 2.])
        h1 = a.register_hook(lambda g: seen.append(g.tolist()) or g * 2)
        b = a * 3
        b.register_hook(lambda g: g + 1)
        (b * b).sum().backward()
        h1.remove()
        a.grad = None
        (a * 1).sum().backward()
        return seen, a.grad
    check(run, torch, ember)


def test_post_accumulate_and_node_hooks():
    for m in (torch, ember):
        a = leaf(m, [1., 2.])
        seen = []
        a.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.tolist()))
        y = a * 2
        calls = []
        y.grad_fn.register_hook(lambda gi, go: calls.append(len(gi)))
        y.grad_fn.register_prehook(lambda go: calls.append("pre"))
        y.sum().backward()
        assert seen == [[2.0, 2.0]]
        assert calls == ["pre", 2]  # prehook first, then the hook with both input grads


class _Exp:
    @staticmethod
    def build(m):
        class Exp(m.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                y = x.exp()
                ctx.save_for_backward(y)
                return y

            @staticmethod
            def backward(ctx, g):
                (y,) = ctx.saved_tensors
                return g * y
        return Exp


def test_custom_function_matches_torch():
    def run(m):
        Exp = _Exp.build(m)
        x = leaf(m, [0.5, 1.0])
        y = Exp.apply(x)
        (y * y).sum().backward()
        return y, x.grad, y.grad_fn.name() if hasattr(y.grad_fn, "name") else None
    t = run(torch)
    e = run(ember)
    np.testing.assert_allclose(e[1].numpy(), t[1].numpy())
    assert e[2] == "ExpBackward"


def test_custom_function_features():
    class Split(ember.autograd.Function):
        @staticmethod
        def forward(ctx, x, k):
            ctx.k = k
            idx = ember.arange(x.shape[0])
            ctx.mark_non_differentiable(idx)
            assert ctx.needs_input_grad == (True, False)
            return x * k, idx

        @staticmethod
        def backward(ctx, g, g_idx):
            assert g_idx is not None  # materialized
            return g * ctx.k, None

    x = ember.ones(3, dtype=ember.float64, requires_grad=True)
    y, idx = Split.apply(x, 4.0)
    assert not idx.requires_grad
    y.sum().backward()
    assert x.grad.tolist() == [4.0] * 3
    assert ember.autograd.gradcheck(lambda t: Split.apply(t, 2.0)[0], (ember.rand(3, dtype=ember.float64, requires_grad=True),))

    class Dirty(ember.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            x.mul_(2)
            ctx.mark_dirty(x)
            return x

        @staticmethod
        def backward(ctx, g):
            return g * 2

    a = ember.ones(2, requires_grad=True)
    b = a * 1
    c = Dirty.apply(b)
    assert c is b and b.grad_fn.name() == "DirtyBackward"
    c.sum().backward()
    assert a.grad.tolist() == [2.0, 2.0]

    class NoMat(ember.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.set_materialize_grads(False)
            return x * 1, x * 2

        @staticmethod
        @ember.autograd.once_differentiable
        def backward(ctx, g1, g2):
            assert g2 is None
            return g1

    a = ember.ones(2, requires_grad=True)
    o1, _ = NoMat.apply(a)
    o1.sum().backward()
    assert a.grad.tolist() == [1.0, 1.0]

    class Setup(ember.autograd.Function):
        @staticmethod
        def forward(x):
            return x * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * g * x

    a = ember.tensor([3.0], requires_grad=True)
    Setup.apply(a).backward()
    assert a.grad.tolist() == [6.0]


def test_version_error_message_names_tensor_and_op():
    a = ember.ones(2, 3, requires_grad=True)
    y = a.exp()
    y.add_(1)
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation: \[ember.float32 \[2, 3\]\], "
                                           r"which is output 0 of ExpBackward0, is at version 1; "
                                           r"expected version 0"):
        y.sum().backward()


def test_detect_anomaly_names_op_and_forward_stack():
    a = ember.tensor([0.0, 1.0], requires_grad=True)
    with ember.autograd.detect_anomaly():
        y = a.sqrt()  # backward at 0: grad/(2*0) -> inf
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with pytest.raises(RuntimeError, match="Function 'SqrtBackward0' returned nan values"):
                (y * 0).sum().backward()
        assert any("test_autograd.py" in str(x.message) and "a.sqrt()" in str(x.message) for x in w)
    assert not ember.autograd.is_anomaly_enabled()


def test_gradcheck_detects_wrong_gradient():
    class Bad(ember.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * x

        @staticmethod
        def backward(ctx, g):
            return g  # wrong: should be 2*x*g

    x = ember.rand(3, dtype=ember.float64, requires_grad=True)
    with pytest.raises(ember.autograd.GradcheckError):
        ember.autograd.gradcheck(Bad.apply, (x,))
    assert not ember.autograd.gradcheck(Bad.apply, (x,), raise_exception=False)
    assert ember.autograd.gradgradcheck(lambda t: (t * t * t).sum(), (x,))


def test_graph_is_freed_and_grads_do_not_alias():
    a = ember.ones(3, requires_grad=True)
    b = ember.ones(3, requires_grad=True)
    (a + b).sum().backward()
    a.grad.add_(1)
    assert b.grad.tolist() == [1.0, 1.0, 1.0]
    g = ember.ones(3)
    c = ember.ones(3, requires_grad=True)
    (c * 1).backward(g)
    c.grad.add_(5)
    assert g.tolist() == [1.0, 1.0, 1.0]
