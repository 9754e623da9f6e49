"""RNN / LSTM / GRU, their cells and nn.utils.rnn against torch: weights copied through
state_dict, outputs, final states and gradients (input, initial states, every parameter) for
layers x directions x batch_first x bias x proj_size, padded and packed inputs, unbatched
input, train/eval dropout, error types, and a torch -> ember -> torch state_dict round trip
of an LSTM language model."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import ember

torch = pytest.importorskip("torch")
ER = ember.nn.utils.rnn
TR = torch.nn.utils.rnn


def _pair(cls: str, **kw):
    tm = getattr(torch.nn, cls)(**kw).double()
    em = getattr(ember.nn, cls)(**kw).double()
    assert list(em.state_dict()) == list(tm.state_dict())
    em.load_state_dict({k: ember.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})
    return em, tm


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [x for o in out for x in _flat(o)]
    return [out]


def _run_and_compare(em, tm, x, hx=None, lengths=None, batch_first=False, tol=1e-10):
    rng = np.random.default_rng(0)
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    eh = th = None
    if hx is not None:
        hs = hx if isinstance(hx, tuple) else (hx,)
        eh = tuple(ember.tensor(h, requires_grad=True) for h in hs)
        th = tuple(torch.tensor(h, requires_grad=True) for h in hs)
    e_in, t_in = ex, tx
    if lengths is not None:
        e_in = ER.pack_padded_sequence(ex, lengths, batch_first=batch_first, enforce_sorted=False)
        t_in = TR.pack_padded_sequence(tx, lengths, batch_first=batch_first, enforce_sorted=False)
    e_h = None if eh is None else (eh if isinstance(hx, tuple) else eh[0])
    t_h = None if th is None else (th if isinstance(hx, tuple) else th[0])
    eo, e_state = em(e_in, e_h)
    to, t_state = tm(t_in, t_h)
    if lengths is not None:
        assert isinstance(eo, ER.PackedSequence)
        eo = ER.pad_packed_sequence(eo, batch_first=batch_first)[0]
        to = TR.pad_packed_sequence(to, batch_first=batch_first)[0]
    e_outs, t_outs = _flat([eo, e_state]), _flat([to, t_state])
    for e, t in zip(e_outs, t_outs):
        assert tuple(e.shape) == tuple(t.shape)
        np.testing.assert_allclose(e.detach().numpy(), t.detach().numpy(), rtol=tol, atol=tol)
    grads = [rng.standard_normal(tuple(t.shape)) for t in t_outs]
    sum((e * ember.tensor(g)).sum() for e, g in zip(e_outs, grads)).backward()
    sum((t * torch.tensor(g)).sum() for t, g in zip(t_outs, grads)).backward()
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=tol, atol=tol)
    for a, b in zip(eh or (), th or ()):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=tol, atol=tol)
    eparams = dict(em.named_parameters())
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(eparams[name].grad.numpy(), p.grad.numpy(), rtol=tol,
                                   atol=tol, err_msg=name)


CONFIGS = [dict(num_layers=nl, bidirectional=bd, batch_first=bf, bias=bias)
           for nl, bd, bf, bias in itertools.product([1, 2], [False, True], [False, True],
                                                     [True, False])
           if not (bias is False and bf)]


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_recurrent_layers_match_torch(cls, cfg):
    rng = np.random.default_rng(1)
    T, B, F, H = 4, 3, 3, 5
    em, tm = _pair(cls, input_size=F, hidden_size=H, **cfg)
    x = rng.standard_normal((B, T, F) if cfg["batch_first"] else (T, B, F))
    D = 2 if cfg["bidirectional"] else 1
    h0 = rng.standard_normal((cfg["num_layers"] * D, B, H))
    hx = (h0, rng.standard_normal(h0.shape)) if cls == "LSTM" else h0
    _run_and_compare(em, tm, x, hx if cfg["bias"] else None, batch_first=cfg["batch_first"])


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequences_match_torch(cls, batch_first):
    rng = np.random.default_rng(2)
    em, tm = _pair(cls, input_size=3, hidden_size=4, num_layers=2, bidirectional=True,
                   batch_first=batch_first)
    x = rng.standard_normal((4, 5, 3) if batch_first else (5, 4, 3))
    h0 = rng.standard_normal((4, 4, 4))
    hx = (h0, rng.standard_normal(h0.shape)) if cls == "LSTM" else h0
    _run_and_compare(em, tm, x, hx, lengths=[3, 5, 1, 4], batch_first=batch_first)


def test_lstm_proj_size_packed_and_padded():
    rng = np.random.default_rng(3)
    em, tm = _pair("LSTM", input_size=3, hidden_size=5, num_layers=2, proj_size=2,
                   bidirectional=True)
    assert "weight_hr_l1_reverse" in em.state_dict()
    x = rng.standard_normal((4, 3, 3))
    hx = (rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 5)))
    _run_and_compare(em, tm, x, hx)
    _run_and_compare(em, tm, x, hx, lengths=[4, 2, 3])


def test_relu_rnn_and_unbatched_input():
    rng = np.random.default_rng(4)
    em, tm = _pair("RNN", input_size=3, hidden_size=4, nonlinearity="relu", num_layers=2)
    _run_and_compare(em, tm, rng.standard_normal((5, 2, 3)))
    em, tm = _pair("GRU", input_size=3, hidden_size=4, bidirectional=True)
    _run_and_compare(em, tm, rng.standard_normal((5, 3)), rng.standard_normal((2, 4)))
    em, tm = _pair("LSTM", input_size=3, hidden_size=4)
    _run_and_compare(em, tm, rng.standard_normal((5, 3)),
                     (rng.standard_normal((1, 4)), rng.standard_normal((1, 4))))


def test_dropout_between_layers_train_and_eval():
    rng = np.random.default_rng(5)
    em, tm = _pair("LSTM", input_size=3, hidden_size=4, num_layers=3, dropout=0.5)
    x = rng.standard_normal((6, 2, 3))
    em.eval()
    tm.eval()
    _run_and_compare(em, tm, x)  # eval: dropout off, identical to torch
    em.train()
    ember.manual_seed(0)
    out1, _ = em(ember.tensor(x))
    ember.manual_seed(0)
    out2, _ = em(ember.tensor(x))
    em.eval()
    out_eval, _ = em(ember.tensor(x))
    np.testing.assert_array_equal(out1.detach().numpy(), out2.detach().numpy())
    assert not np.allclose(out1.detach().numpy(), out_eval.detach().numpy())


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("bias", [True, False])
def test_cells_match_torch(cls, bias):
    rng = np.random.default_rng(6)
    em, tm = _pair(cls, input_size=3, hidden_size=4, bias=bias)
    x = rng.standard_normal((2, 3))
    hx = rng.standard_normal((2, 4))
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    state_e = ember.tensor(hx, requires_grad=True)
    state_t = torch.tensor(hx, requires_grad=True)
    if cls == "LSTMCell":
        c = rng.standard_normal((2, 4))
        eo, to = em(ex, (state_e, ember.tensor(c))), tm(tx, (state_t, torch.tensor(c)))
    else:
        eo, to = em(ex, state_e), tm(tx, state_t)
    e_outs, t_outs = _flat(eo), _flat(to)
    for e, t in zip(e_outs, t_outs):
        np.testing.assert_allclose(e.detach().numpy(), t.detach().numpy(), atol=1e-12)
    sum(e.sum() * (i + 1) for i, e in enumerate(e_outs)).backward()
    sum(t.sum() * (i + 1) for i, t in enumerate(t_outs)).backward()
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(state_e.grad.numpy(), state_t.grad.numpy(), atol=1e-12)
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(dict(em.named_parameters())[name].grad.numpy(),
                                   p.grad.numpy(), atol=1e-12)
    # unbatched input and default (zero) state
    u = em(ember.tensor(x[0]))
    t = tm(torch.tensor(x[0]))
    for e, tt in zip(_flat(u), _flat(t)):
        np.testing.assert_allclose(e.detach().numpy(), tt.detach().numpy(), atol=1e-12)


def test_parameter_names_shapes_init_and_repr():
    for cls, kw in (("LSTM", dict(proj_size=2, num_layers=2, bidirectional=True)),
                    ("GRU", dict(bias=False)), ("RNN", dict(nonlinearity="relu")),
                    ("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {})):
        e = getattr(ember.nn, cls)(3, 4, **kw)
        t = getattr(torch.nn, cls)(3, 4, **kw)
        assert [(k, tuple(v.shape)) for k, v in e.state_dict().items()] == \
            [(k, tuple(v.shape)) for k, v in t.state_dict().items()]
        assert repr(e) == repr(t)
        bound = 1 / np.sqrt(4)
        for p in e.parameters():
            assert np.abs(p.detach().numpy()).max() <= bound
    lstm = ember.nn.LSTM(3, 4, 2)
    assert len(lstm.all_weights) == 2 and len(lstm._flat_weights) == 8
    lstm.flatten_parameters()


@pytest.mark.parametrize("call, exc", [
    (lambda m: m.nn.LSTM(3, 4, proj_size=4), ValueError),
    (lambda m: m.nn.GRU(3, 4, proj_size=2), ValueError),
    (lambda m: m.nn.RNN(3, 4, nonlinearity="gelu"), ValueError),
    (lambda m: m.nn.LSTM(3, 4, dropout=1.5), ValueError),
    (lambda m: m.nn.LSTM(3, 0), ValueError),
    (lambda m: m.nn.LSTM(3.0, 4), TypeError),
    (lambda m: m.nn.LSTM(3, 4)(m.randn(5, 2, 6)), RuntimeError),
    (lambda m: m.nn.LSTM(3, 4)(m.randn(5, 3)[None, None]), ValueError),
    (lambda m: m.nn.GRU(3, 4)(m.randn(5, 2, 3), m.randn(1, 3, 4)), RuntimeError),
    (lambda m: m.nn.LSTM(3, 4)(m.randn(5, 2, 3), (m.randn(1, 2, 4), m.randn(1, 2, 5))),
     RuntimeError),
    (lambda m: m.nn.LSTM(3, 4)(m.randn(5, 2, 3), (m.randn(2, 4), m.randn(2, 4))), RuntimeError),
    (lambda m: m.nn.LSTM(3, 4)(m.randn(5, 2, 3, dtype=m.float64)), ValueError),
    (lambda m: m.nn.GRUCell(3, 4)(m.randn(2, 2, 3)), ValueError),
])
def test_errors_match_torch_types(call, exc):
    with pytest.raises(exc):
        call(torch)
    with pytest.raises(exc) as info:
        call(ember)
    assert "numpy" not in str(info.value).lower()


# ---------------------------------------------------------------------- nn.utils.rnn
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_pack_pad_round_trip_matches_torch(batch_first, enforce_sorted):
    rng = np.random.default_rng(7)
    lengths = [5, 4, 2, 1] if enforce_sorted else [2, 5, 1, 4]
    x = rng.standard_normal((4, 5, 2) if batch_first else (5, 4, 2))
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ep = ER.pack_padded_sequence(ex, lengths, batch_first, enforce_sorted)
    tp = TR.pack_padded_sequence(tx, lengths, batch_first, enforce_sorted)
    np.testing.assert_allclose(ep.data.detach().numpy(), tp.data.detach().numpy())
    assert ep.batch_sizes.tolist() == tp.batch_sizes.tolist()
    assert ep.batch_sizes.dtype == ember.int64
    for a, b in ((ep.sorted_indices, tp.sorted_indices),
                 (ep.unsorted_indices, tp.unsorted_indices)):
        assert (a is None) == (b is None) and (a is None or a.tolist() == b.tolist())
    for total in (None, 7):
        eo, el = ER.pad_packed_sequence(ep, batch_first, -1.0, total)
        to, tl = TR.pad_packed_sequence(tp, batch_first, -1.0, total)
        np.testing.assert_allclose(eo.detach().numpy(), to.detach().numpy())
        assert el.tolist() == tl.tolist()
    (eo * eo).sum().backward()
    (to * to).sum().backward()
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy())


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_sequence_and_list_helpers(batch_first, side):
    rng = np.random.default_rng(8)
    seqs = [rng.standard_normal((n, 2)) for n in (3, 5, 1)]
    e = ER.pad_sequence([ember.tensor(s) for s in seqs], batch_first, 9.0, side)
    t = TR.pad_sequence([torch.tensor(s) for s in seqs], batch_first, 9.0, side)
    np.testing.assert_allclose(e.numpy(), t.numpy())
    ep = ER.pack_sequence([ember.tensor(s) for s in seqs], enforce_sorted=False)
    tp = TR.pack_sequence([torch.tensor(s) for s in seqs], enforce_sorted=False)
    np.testing.assert_allclose(ep.data.numpy(), tp.data.numpy())
    for a, b in zip(ER.unpack_sequence(ep), TR.unpack_sequence(tp)):
        np.testing.assert_allclose(a.numpy(), b.numpy())
    padded = ER.pad_sequence([ember.tensor(s) for s in seqs], batch_first)
    for a, s in zip(ER.unpad_sequence(padded, ember.tensor([3, 5, 1]), batch_first), seqs):
        np.testing.assert_allclose(a.numpy(), s)


@pytest.mark.host_only
def test_packed_sequence_api_and_errors():
    ep = ER.pack_sequence([ember.ones(3, 2), ember.ones(2, 2)])
    assert isinstance(ep, tuple) and ep._fields == ("data", "batch_sizes", "sorted_indices",
                                                     "unsorted_indices")
    assert ep.to(ember.float64).data.dtype == ember.float64
    assert ep.double().float().data.dtype == ember.float32
    assert not ep.is_cuda
    for call, exc in ((lambda m, R: R.pack_padded_sequence(m.zeros(3, 2, 1), [1, 3]),
                       RuntimeError),
                      (lambda m, R: R.pack_padded_sequence(m.zeros(3, 2, 1), [3, 0]),
                       RuntimeError),
                      (lambda m, R: R.pack_padded_sequence(m.zeros(3, 2, 1), [3]), RuntimeError),
                      (lambda m, R: R.pad_sequence([m.zeros(2)], padding_side="up"), RuntimeError),
                      (lambda m, R: R.pad_packed_sequence(
                          R.pack_sequence([m.ones(3, 1)]), total_length=2), ValueError)):
        with pytest.raises(exc):
            call(torch, TR)
        with pytest.raises(exc):
            call(ember, ER)


# ---------------------------------------------------------------------- state_dict round trip
def _lm(m, vocab=50, d=8):
    nn = m.nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Embedding(vocab, d)
            self.rnn = nn.LSTM(d, d, 2, dropout=0.3)
            self.decoder = nn.Linear(d, vocab)

        def forward(self, x, hidden=None):
            out, hidden = self.rnn(self.encoder(x), hidden)
            return self.decoder(out), hidden
    return LM()


def test_lstm_language_model_state_dict_round_trip_and_training_step():
    rng = np.random.default_rng(9)
    tm = _lm(torch).double()
    em = _lm(ember).double()
    em.load_state_dict({k: ember.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})
    x = rng.integers(0, 50, (6, 3))
    em.eval()
    tm.eval()
    eo, (eh, ec) = em(ember.tensor(x))
    to, (th, tc) = tm(torch.tensor(x))
    np.testing.assert_allclose(eo.detach().numpy(), to.detach().numpy(), atol=1e-12)
    # one SGD step on both, then back to torch: the torch model reproduces ember's weights
    for m, model, out in ((ember, em, eo), (torch, tm, to)):
        loss = (out ** 2).mean()
        loss.backward()
        with m.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    back = _lm(torch).double()
    back.load_state_dict({k: torch.tensor(v.numpy()) for k, v in em.state_dict().items()})
    for (k, a), (_, b) in zip(back.state_dict().items(), tm.state_dict().items()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12, err_msg=k)


@pytest.mark.cuda
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_recurrent_layers_on_cuda_match_cpu(cls):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((6, 3, 5))
    results = []
    for dev in ("cpu", "cuda"):
        ember.manual_seed(1)
        model = getattr(ember.nn, cls)(5, 7, num_layers=2, bidirectional=True).double().to(dev)
        ex = ember.tensor(x, device=dev, requires_grad=True)
        out, _ = model(ER.pack_padded_sequence(ex, [6, 4, 2]))
        (out.data * out.data).sum().backward()
        results.append([out.data.detach().cpu().numpy(), ex.grad.cpu().numpy(),
                        model.weight_hh_l0.grad.cpu().numpy(),
                        model.weight_ih_l1_reverse.grad.cpu().numpy()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-10)
