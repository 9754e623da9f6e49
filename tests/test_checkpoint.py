"""ember.utils.checkpoint: gradients equal to the uncheckpointed model and to torch, RNG
replay (identical dropout masks), activations not kept, and the API's edge cases."""
from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest

import ember
from ember.utils.checkpoint import CheckpointError, checkpoint, checkpoint_sequential

torch = pytest.importorskip("torch")
import torch.utils.checkpoint as tcp  # noqa: E402


def _mlp(m, dropout=0.0):
    m.manual_seed(0)
    layers = [m.nn.Linear(6, 16), m.nn.ReLU()]
    if dropout:
        layers.append(m.nn.Dropout(dropout))
    layers += [m.nn.Linear(16, 16), m.nn.Tanh(), m.nn.Linear(16, 3)]
    return m.nn.Sequential(*layers)


def _copy_weights(src, dst):
    with torch.no_grad():
        for p_e, p_t in zip(src.parameters(), dst.parameters()):
            p_t.copy_(torch.tensor(p_e.detach().numpy()))


X = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)


def _grads(m, net, x, ck, reentrant, seg_fn=None):
    inp = m.tensor(x, requires_grad=True)
    if ck == "sequential":
        out = (checkpoint_sequential if m is ember else tcp.checkpoint_sequential)(
            net, 2, inp, use_reentrant=reentrant)
    elif ck:
        fn = checkpoint if m is ember else tcp.checkpoint
        out = fn(net, inp, use_reentrant=reentrant)
    else:
        out = net(inp)
    (out * out).sum().backward()
    return [p.grad.numpy() for p in net.parameters()] + [inp.grad.numpy()]


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("ck", [True, "sequential"])
def test_gradients_equal_uncheckpointed_and_torch(reentrant, ck):
    net = _mlp(ember)
    plain = _grads(ember, net, X, False, reentrant)
    net.zero_grad()
    ckpt = _grads(ember, net, X, ck, reentrant)
    for a, b in zip(plain, ckpt):
        np.testing.assert_array_equal(a, b)
    tnet = _mlp(torch)
    _copy_weights(net, tnet)
    ref = _grads(torch, tnet, X, ck, reentrant)
    for a, b in zip(ckpt, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reentrant", [True, False])
def test_dropout_masks_are_replayed(reentrant):
    net = _mlp(ember, dropout=0.5)
    ember.manual_seed(123)
    plain = _grads(ember, net, X, False, reentrant)
    net.zero_grad()
    ember.manual_seed(123)
    ckpt = _grads(ember, net, X, True, reentrant)
    for a, b in zip(plain, ckpt):
        np.testing.assert_array_equal(a, b)


def test_without_preserve_rng_state_masks_differ():
    net = _mlp(ember, dropout=0.5)
    ember.manual_seed(123)
    plain = _grads(ember, net, X, False, False)
    net.zero_grad()
    ember.manual_seed(123)
    inp = ember.tensor(X, requires_grad=True)
    out = checkpoint(net, inp, use_reentrant=False, preserve_rng_state=False)
    (out * out).sum().backward()
    assert not np.array_equal(plain[-1], inp.grad.numpy())


def _graph_nodes(t):
    seen, stack, n = set(), [t.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ != "AccumulateGrad":
            n += 1
        stack.extend(e[0] for e in (getattr(node, "next_edges", None) or ()) if e is not None)
    return n


@pytest.mark.parametrize("reentrant", [True, False])
def test_activations_are_not_kept(reentrant):
    net = _mlp(ember)
    inp = ember.tensor(X, requires_grad=True)
    full = net(inp)
    ck = checkpoint(net, inp, use_reentrant=reentrant)
    # the whole segment is one node in the graph instead of one per layer op (four: the
    # Sequential runs its Linear + ReLU pair as one op)
    assert _graph_nodes(full) >= 4
    assert _graph_nodes(ck) == 1


def test_non_reentrant_forward_graph_is_freed():
    import weakref
    refs = []

    def seg(x):
        h = (x * 2).relu()
        refs.append(weakref.ref(h))
        return h.sum(-1)

    x = ember.randn(4, 3, requires_grad=True)
    out = checkpoint(seg, x, use_reentrant=False)
    gc.collect()
    assert refs[0]() is None  # the forward's intermediate is gone
    out.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2.0 * (x.detach().numpy() > 0))


def test_non_reentrant_works_with_autograd_grad_and_params_only():
    net = _mlp(ember)
    inp = ember.tensor(X)  # no input requires grad: parameters still get gradients
    out = checkpoint(net, inp, use_reentrant=False)
    grads = ember.autograd.grad(out.sum(), list(net.parameters()))
    ref = ember.autograd.grad(net(inp).sum(), list(net.parameters()))
    for a, b in zip(grads, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_non_reentrant_kwargs_and_tuple_outputs():
    def seg(x, *, scale):
        return x * scale, (x.sin(), 3)

    x = ember.randn(3, requires_grad=True)
    a, (b, c) = checkpoint(seg, x, use_reentrant=False, scale=2.0)
    assert c == 3
    (a.sum() + b.sum()).backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 + np.cos(x.detach().numpy()), rtol=1e-6)


def test_default_use_reentrant_warns_like_torch():
    x = ember.randn(3, requires_grad=True)
    with pytest.warns(UserWarning, match="use_reentrant parameter should be passed explicitly"):
        checkpoint(lambda a: a * 2, x)


def test_reentrant_rejects_kwargs_and_context_fn():
    x = ember.randn(3, requires_grad=True)
    for m, fn in ((ember, checkpoint), (torch, tcp.checkpoint)):
        xx = m.randn(3, requires_grad=True)
        with pytest.raises(ValueError):
            fn(lambda a, b=1: a * b, xx, use_reentrant=True, b=2)
    with pytest.raises(ValueError, match="context_fn"):
        checkpoint(lambda a: a, x, use_reentrant=True,
                   context_fn=lambda: (warnings.catch_warnings(), warnings.catch_warnings()))


def test_determinism_check_catches_changed_recompute():
    calls = []

    def seg(x):
        calls.append(1)
        return x * 2 if len(calls) == 1 else (x * 2).sum()

    x = ember.randn(3, requires_grad=True)
    out = checkpoint(seg, x, use_reentrant=False)
    with pytest.raises(CheckpointError, match="different metadata"):
        out.sum().backward()


def test_no_grad_mode_runs_plainly():
    x = ember.randn(3, requires_grad=True)
    with ember.no_grad():
        y = checkpoint(lambda a: a * 2, x, use_reentrant=False)
    assert not y.requires_grad
