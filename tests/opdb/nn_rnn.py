"""Records for the recurrent primitives (ember/ops/nn_rnn.py): the fused layer ops against
their reference decomposition run in torch (and so against torch's own matmul/sigmoid/tanh),
on padded and packed (decreasing batch sizes) layouts, both directions; and the single-step
cells against torch.lstm_cell / gru_cell / rnn_tanh_cell / rnn_relu_cell."""
from __future__ import annotations

from opdb import OpEntry, Sample


def _layer_call(name, ref_name):
    def call(m, *args, **kw):
        from ember.ops import nn_rnn
        ref = getattr(nn_rnn, ref_name)
        extra = tuple(kw.values())
        if m.__name__ == "torch":
            return ref(m, *args, *extra)
        from ember.ops.registry import OPS, apply
        return apply(OPS[name], tuple(args) + extra)
    return call


def _lstm_samples(rng):
    def r(*s):
        return rng.standard_normal(s) * 0.5
    H, P = 4, 3
    return [
        Sample((r(9, 4 * H), r(3, H), r(3, H), r(4 * H, H), None),
               {"bs": (3, 3, 3), "rev": False}, name="padded"),
        Sample((r(8, 4 * H), r(3, H), r(3, H), r(4 * H, H), None),
               {"bs": (3, 2, 2, 1), "rev": True}, name="packed reverse"),
        Sample((r(6, 4 * H), r(3, P), r(3, H), r(4 * H, P), r(P, H)),
               {"bs": (3, 2, 1), "rev": False}, name="proj packed"),
    ]


def _lstm_grad_samples(rng):
    # gradcheck/gradgradcheck perturb every element: keep these tiny
    def r(*s):
        return rng.standard_normal(s) * 0.5
    H, P = 2, 1
    return [
        Sample((r(3, 4 * H), r(2, H), r(2, H), r(4 * H, H), None),
               {"bs": (2, 1), "rev": False}, name="packed"),
        Sample((r(3, 4 * H), r(2, P), r(2, H), r(4 * H, P), r(P, H)),
               {"bs": (2, 1), "rev": True}, name="proj reverse"),
    ]


def _gru_grad_samples(rng):
    def r(*s):
        return rng.standard_normal(s) * 0.5
    H = 2
    return [Sample((r(3, 3 * H), r(2, H), r(3 * H, H), r(3 * H)), {"bs": (2, 1), "rev": True},
                   name="packed reverse")]


def _gru_samples(rng):
    def r(*s):
        return rng.standard_normal(s) * 0.5
    H = 4
    return [
        Sample((r(9, 3 * H), r(3, H), r(3 * H, H), r(3 * H)), {"bs": (3, 3, 3), "rev": False},
               name="padded"),
        Sample((r(8, 3 * H), r(3, H), r(3 * H, H), None), {"bs": (3, 2, 2, 1), "rev": True},
               name="packed reverse no bias"),
    ]


def _rnn_samples(rng):
    def r(*s):
        return rng.standard_normal(s) * 0.5
    H = 4
    return [
        Sample((r(9, H), r(3, H), r(H, H)), {"bs": (3, 3, 3), "rev": False, "nl": "tanh"},
               name="tanh"),
        Sample((r(8, H), r(3, H), r(H, H)), {"bs": (3, 2, 2, 1), "rev": True, "nl": "relu"},
               name="relu packed reverse"),
    ]


def _cell_call(name, lstm=False):
    def call(m, x, h, *rest):
        if lstm:
            c, rest = rest[0], rest[1:]
            return getattr(m, name)(x, (h, c), *rest)
        return getattr(m, name)(x, h, *rest)
    return call


def _cell_samples(gates, lstm=False):
    def samples(rng):
        def r(*s):
            return rng.standard_normal(s) * 0.5
        H, F = 4, 3
        state = (r(2, H), r(2, H)) if lstm else (r(2, H),)
        return [Sample((r(2, F),) + state + (r(gates * H, F), r(gates * H, H), r(gates * H),
                                             r(gates * H)), name="bias"),
                Sample((r(2, F),) + state + (r(gates * H, F), r(gates * H, H)), name="no bias")]
    return samples


ENTRIES = [
    OpEntry("_lstm_layer", _layer_call("_lstm_layer", "lstm_layer_reference"), _lstm_samples,
            atol=1e-6, rtol=1e-6, grad_samples=_lstm_grad_samples),
    OpEntry("_gru_layer", _layer_call("_gru_layer", "gru_layer_reference"), _gru_samples,
            atol=1e-6, rtol=1e-6, grad_samples=_gru_grad_samples),
    OpEntry("_rnn_layer", _layer_call("_rnn_layer", "rnn_layer_reference"), _rnn_samples,
            atol=1e-6, rtol=1e-6),
    OpEntry("lstm_cell", _cell_call("lstm_cell", lstm=True), _cell_samples(4, lstm=True)),
    OpEntry("gru_cell", _cell_call("gru_cell"), _cell_samples(3)),
    OpEntry("rnn_tanh_cell", _cell_call("rnn_tanh_cell"), _cell_samples(1)),
    OpEntry("rnn_relu_cell", _cell_call("rnn_relu_cell"), _cell_samples(1)),
]
