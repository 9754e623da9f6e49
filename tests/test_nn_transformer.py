"""nn.Transformer and its encoder/decoder stacks and layers against torch: outputs and
gradients after copying weights, post-/pre-norm, relu/gelu/callable activations,
batch_first, causal and padding masks (bool and float), unbatched input, train-mode dropout,
parameter names, a torch -> ember -> torch state_dict round trip, and error types."""
from __future__ import annotations

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")


def _load(em, tm):
    assert list(em.state_dict()) == list(tm.state_dict())
    em.load_state_dict({k: ember.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})


def _close(e, t, tol=1e-10):
    np.testing.assert_allclose(e.detach().numpy(), t.detach().numpy(), rtol=tol, atol=tol)


def _grads_match(em, tm, eo, to, leaves=(), seed=0):
    g = np.random.default_rng(seed).standard_normal(tuple(to.shape))
    (eo * ember.tensor(g)).sum().backward()
    (to * torch.tensor(g)).sum().backward()
    eparams = dict(em.named_parameters())
    for n, p in tm.named_parameters():
        if p.grad is None:
            continue
        _close(eparams[n].grad, p.grad)
    for a, b in leaves:
        _close(a.grad, b.grad)


LAYER_CASES = [dict(norm_first=nf, activation=act, batch_first=bf)
               for nf in (False, True) for act in ("relu", "gelu") for bf in (False, True)]


@pytest.mark.parametrize("cfg", LAYER_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_encoder_layer_matches_torch(cfg):
    rng = np.random.default_rng(1)
    kw = dict(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, **cfg)
    tm = torch.nn.TransformerEncoderLayer(**kw).double()
    em = ember.nn.TransformerEncoderLayer(**kw).double()
    _load(em, tm)
    bf = cfg["batch_first"]
    x = rng.standard_normal((3, 6, 8) if bf else (6, 3, 8))
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    kpm = rng.random((3, 6)) > 0.7
    kpm[:, 0] = False
    emask = ember.nn.Transformer.generate_square_subsequent_mask(6, dtype=ember.float64)
    tmask = torch.nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64)
    eo = em(ex, emask, ember.tensor(kpm))
    to = tm(tx, tmask, torch.tensor(kpm))
    _close(eo, to)
    _grads_match(em, tm, eo, to, [(ex, tx)])


@pytest.mark.parametrize("cfg", LAYER_CASES[::3], ids=lambda c: "-".join(f"{v}" for v in
                                                                         c.values()))
def test_decoder_layer_matches_torch(cfg):
    rng = np.random.default_rng(2)
    kw = dict(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, **cfg)
    tm = torch.nn.TransformerDecoderLayer(**kw).double()
    em = ember.nn.TransformerDecoderLayer(**kw).double()
    _load(em, tm)
    bf = cfg["batch_first"]
    x = rng.standard_normal((3, 4, 8) if bf else (4, 3, 8))
    mem = rng.standard_normal((3, 5, 8) if bf else (5, 3, 8))
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    emm, tmm = ember.tensor(mem, requires_grad=True), torch.tensor(mem, requires_grad=True)
    causal = np.triu(np.ones((4, 4), bool), 1)  # bool: True = may not attend
    mkpm = rng.random((3, 5)) > 0.7
    mkpm[:, 0] = False
    eo = em(ex, emm, tgt_mask=ember.tensor(causal),
            memory_key_padding_mask=ember.tensor(mkpm))
    to = tm(tx, tmm, tgt_mask=torch.tensor(causal), memory_key_padding_mask=torch.tensor(mkpm))
    _close(eo, to)
    _grads_match(em, tm, eo, to, [(ex, tx), (emm, tmm)])


@pytest.mark.parametrize("norm_first", [False, True])
def test_full_transformer_matches_torch(norm_first):
    rng = np.random.default_rng(3)
    kw = dict(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=2,
              dim_feedforward=16, dropout=0.0, norm_first=norm_first)
    tm = torch.nn.Transformer(**kw).double()
    em = ember.nn.Transformer(**kw).double()
    _load(em, tm)
    src, tgt = rng.standard_normal((6, 2, 8)), rng.standard_normal((4, 2, 8))
    es, et = ember.tensor(src, requires_grad=True), ember.tensor(tgt, requires_grad=True)
    ts, tt = torch.tensor(src, requires_grad=True), torch.tensor(tgt, requires_grad=True)
    skpm = np.zeros((2, 6), bool)
    skpm[1, 4:] = True
    emk = ember.nn.Transformer.generate_square_subsequent_mask(4, dtype=ember.float64)
    tmk = torch.nn.Transformer.generate_square_subsequent_mask(4, dtype=torch.float64)
    eo = em(es, et, tgt_mask=emk, src_key_padding_mask=ember.tensor(skpm),
            memory_key_padding_mask=ember.tensor(skpm))
    to = tm(ts, tt, tgt_mask=tmk, src_key_padding_mask=torch.tensor(skpm),
            memory_key_padding_mask=torch.tensor(skpm))
    _close(eo, to)
    _grads_match(em, tm, eo, to, [(es, ts), (et, tt)])


def test_encoder_stack_callable_activation_unbatched_and_nested_flag():
    rng = np.random.default_rng(4)
    act_e = lambda x: ember.tanh(x) * 2  # noqa: E731
    act_t = lambda x: torch.tanh(x) * 2  # noqa: E731
    tl = torch.nn.TransformerEncoderLayer(8, 2, 16, 0.0, act_t).double()
    el = ember.nn.TransformerEncoderLayer(8, 2, 16, 0.0, act_e).double()
    tm = torch.nn.TransformerEncoder(tl, 2, torch.nn.LayerNorm(8).double(),
                                     enable_nested_tensor=False)
    em = ember.nn.TransformerEncoder(el, 2, ember.nn.LayerNorm(8).double(),
                                     enable_nested_tensor=False)
    _load(em, tm)
    x = rng.standard_normal((5, 8))  # unbatched (S, E)
    _close(em(ember.tensor(x), is_causal=False), tm(torch.tensor(x), is_causal=False))
    xb = rng.standard_normal((5, 2, 8))
    emask = ember.nn.Transformer.generate_square_subsequent_mask(5, dtype=ember.float64)
    tmask = torch.nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    _close(em(ember.tensor(xb), emask), tm(torch.tensor(xb), tmask))  # causal mask detected


def test_train_mode_dropout_changes_output_eval_restores():
    rng = np.random.default_rng(5)
    tm = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.3).double()
    em = ember.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.3).double()
    _load(em, tm)
    x = rng.standard_normal((4, 2, 8))
    em.eval()
    tm.eval()
    _close(em(ember.tensor(x)), tm(torch.tensor(x)))
    em.train()
    a, b = em(ember.tensor(x)), em(ember.tensor(x))
    assert not np.allclose(a.detach().numpy(), b.detach().numpy())


def test_generate_square_subsequent_mask_and_names():
    e = ember.nn.Transformer.generate_square_subsequent_mask(4)
    t = torch.nn.Transformer.generate_square_subsequent_mask(4)
    assert e.dtype == ember.float32
    np.testing.assert_array_equal(e.numpy(), t.numpy())
    kw = dict(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
              dim_feedforward=16, bias=False)
    e_sd = ember.nn.Transformer(**kw).state_dict()
    t_sd = torch.nn.Transformer(**kw).state_dict()
    assert [(k, tuple(v.shape)) for k, v in e_sd.items()] == \
        [(k, tuple(v.shape)) for k, v in t_sd.items()]


def _tiny(m):
    nn = m.nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.tr = nn.Transformer(8, 2, 1, 1, 16, 0.0, batch_first=True)
            self.out = nn.Linear(8, 20)

        def forward(self, src, tgt):
            return self.out(self.tr(self.emb(src), self.emb(tgt)))
    return Model()


def test_small_transformer_state_dict_round_trip_and_sgd_step():
    rng = np.random.default_rng(6)
    tm = _tiny(torch).double()
    em = _tiny(ember).double()
    _load(em, tm)
    src, tgt = rng.integers(0, 20, (2, 5)), rng.integers(0, 20, (2, 4))
    eo = em(ember.tensor(src), ember.tensor(tgt))
    to = tm(torch.tensor(src), torch.tensor(tgt))
    _close(eo, to)
    for m, model, out in ((ember, em, eo), (torch, tm, to)):
        (out ** 2).mean().backward()
        with m.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
    back = _tiny(torch).double()
    back.load_state_dict({k: torch.tensor(v.numpy()) for k, v in em.state_dict().items()})
    for (k, a), (_, b) in zip(back.state_dict().items(), tm.state_dict().items()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10, err_msg=k)


@pytest.mark.parametrize("call, exc", [
    (lambda m: m.nn.TransformerEncoderLayer(8, 2, activation="swish"), RuntimeError),
    (lambda m: m.nn.TransformerEncoderLayer(8, 3), AssertionError),
    (lambda m: m.nn.Transformer(8, 2, 1, 1, 16)(m.randn(5, 2, 8), m.randn(4, 3, 8)),
     RuntimeError),
    (lambda m: m.nn.Transformer(8, 2, 1, 1, 16)(m.randn(5, 2, 8), m.randn(4, 2, 6)),
     RuntimeError),
])
def test_errors_match_torch_types(call, exc):
    with pytest.raises(exc):
        call(torch)
    with pytest.raises(exc):
        call(ember)


@pytest.mark.cuda
def test_transformer_layer_and_embedding_bag_on_cuda_match_cpu():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 3, 8))
    w = rng.standard_normal((10, 8))
    results = []
    for dev in ("cpu", "cuda"):
        ember.manual_seed(2)
        layer = ember.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0).double().to(dev)
        ex = ember.tensor(x, device=dev, requires_grad=True)
        mask = ember.nn.Transformer.generate_square_subsequent_mask(5, device=dev,
                                                                    dtype=ember.float64)
        out = layer(ex, mask)
        ew = ember.tensor(w, device=dev, requires_grad=True)
        bag = ember.nn.functional.embedding_bag(ember.tensor([1, 2, 4, 4, 3], device=dev), ew,
                                                ember.tensor([0, 2], device=dev), mode="max")
        (out.sum() + (bag * bag).sum()).backward()
        results.append([out.detach().cpu().numpy(), ex.grad.cpu().numpy(),
                        layer.self_attn.in_proj_weight.grad.cpu().numpy(),
                        bag.detach().cpu().numpy(), ew.grad.cpu().numpy()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-10)
