"""Recurrent layers: ``RNN``, ``LSTM``, ``GRU`` and their single-step cells.

Parameter names, shapes, gate order (LSTM: input, forget, cell, output; GRU: reset, update,
new) and initialisation (U(-1/sqrt(hidden), 1/sqrt(hidden))) are torch's, so torch
state_dicts load unchanged.

Speed: each layer direction is two ops: one matmul projects the inputs of every timestep
at once, then a fused primitive (``_lstm_layer`` / ``_gru_layer`` / ``_rnn_layer`` in
``ember/ops/nn_rnn.py``) runs the recurrence over arrays, with a matching fused backward.
Padded and packed inputs share one path: a padded ``(T, B, F)`` batch is a packed sequence
whose batch size is ``B`` at every step.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import ember
from ember.nn import init
from ember.nn.functional.linear import linear
from ember.nn.modules.module import Module
from ember.nn.parameter import Parameter
from ember.nn.utils.rnn import PackedSequence
from ember.ops.registry import OPS, apply
from ember.tensor import Tensor

__all__ = ["RNNBase", "RNN", "LSTM", "GRU", "RNNCellBase", "RNNCell", "LSTMCell", "GRUCell"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _dropout(x: Tensor, p: float, training: bool) -> Tensor:
    from ember.nn.functional import dropout
    return dropout(x, p=p, training=training)


class RNNBase(Module):
    """Base class of RNN, LSTM and GRU: parameters, checks and the layer loop.

    Args:
        mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
        input_size: features of the input ``x``.
        hidden_size: features of the hidden state ``h``.
        num_layers: stacked recurrent layers. Default ``1``.
        bias: use ``bias_ih`` and ``bias_hh``. Default ``True``.
        batch_first: inputs and outputs are ``(B, T, F)`` instead of ``(T, B, F)``.
        dropout: dropout on the outputs of every layer but the last (in training).
        bidirectional: also run each layer backwards in time; outputs are concatenated.
        proj_size: LSTM only: project ``h`` to this size with ``weight_hr_l{k}``.
    """

    __constants__ = ["mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                     "dropout", "bidirectional", "proj_size"]

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) \
                or not 0 <= dropout <= 1:
            raise ValueError(f"[{name}] dropout should be a number in range [0, 1] representing "
                             f"the probability of an element being zeroed, got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=2)
        if not isinstance(bias, bool):
            raise TypeError(f"[{name}] bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"[{name}] batch_first should be of type bool, got: "
                            f"{type(batch_first).__name__}")
        if not isinstance(input_size, int):
            raise TypeError(f"[{name}] input_size should be of type int, got: "
                            f"{type(input_size).__name__}")
        if input_size <= 0:
            raise ValueError(f"[{name}] input_size must be greater than zero, got {input_size}")
        if not isinstance(hidden_size, int):
            raise TypeError(f"[{name}] hidden_size should be of type int, got: "
                            f"{type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError(f"[{name}] hidden_size must be greater than zero, got "
                             f"{hidden_size}")
        if num_layers <= 0:
            raise ValueError(f"[{name}] num_layers must be greater than zero, got {num_layers}")
        if proj_size < 0:
            raise ValueError(f"[{name}] proj_size should be a positive integer or zero to "
                             f"disable projections, got {proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(f"[{name}] proj_size has to be smaller than hidden_size, got "
                             f"proj_size={proj_size}, hidden_size={hidden_size}")
        if mode not in _GATES:
            raise ValueError(f"[{name}] Unrecognized RNN mode: {mode}")
        if proj_size and mode != "LSTM":
            raise ValueError(f"[{name}] proj_size argument is only supported for LSTM, not "
                             "RNN or GRU")
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        gate_size = _GATES[mode] * hidden_size
        num_directions = 2 if bidirectional else 1
        real_hidden = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: list = []
        self._all_weights: list = []
        kw = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input = input_size if layer == 0 else real_hidden * num_directions
                suffix = "_reverse" if direction == 1 else ""
                params = [("weight_ih_l{}{}", (gate_size, layer_input)),
                          ("weight_hh_l{}{}", (gate_size, real_hidden))]
                if bias:
                    params += [("bias_ih_l{}{}", (gate_size,)), ("bias_hh_l{}{}", (gate_size,))]
                if proj_size > 0:
                    params += [("weight_hr_l{}{}", (proj_size, hidden_size))]
                names = []
                for fmt, shape in params:
                    pname = fmt.format(layer, suffix)
                    setattr(self, pname, Parameter(ember.empty(shape, **kw)))
                    names.append(pname)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters
    @property
    def _flat_weights(self) -> list:
        return [getattr(self, n, None) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list:
        return [[getattr(self, w) for w in ws] for ws in self._all_weights]

    def flatten_parameters(self) -> None:
        """A no-op: ember keeps the per-layer weights and needs no cuDNN flat buffer."""

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)

    # ------------------------------------------------------------------ checks
    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        w = self._flat_weights[0]
        if input.dtype != w.dtype:
            raise ValueError(f"[{type(self).__name__}] RNN input dtype ({input.dtype}) does not "
                             f"match weight dtype ({w.dtype}). Convert input: "
                             f"input.to({w.dtype}), or convert model: model.to({input.dtype})")
        expected = 2 if batch_sizes is not None else 3
        if input.dim() != expected:
            raise RuntimeError(f"[{type(self).__name__}] input must have {expected} dimensions, "
                               f"got {input.dim()} (shape {tuple(input.shape)})")
        if self.input_size != input.shape[-1]:
            raise RuntimeError(f"[{type(self).__name__}] input.size(-1) must be equal to "
                               f"input_size. Expected {self.input_size}, got {input.shape[-1]} "
                               f"(input shape {tuple(input.shape)})")

    def get_expected_hidden_size(self, input: Tensor, batch_sizes: Tensor | None) -> tuple:
        if batch_sizes is not None:
            mini_batch = int(batch_sizes[0])
        else:
            mini_batch = input.shape[0] if self.batch_first else input.shape[1]
        num_directions = 2 if self.bidirectional else 1
        size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (self.num_layers * num_directions, mini_batch, size)

    def check_hidden_size(self, hx: Tensor, expected: tuple,
                          msg: str = "Expected hidden size {}, got {}") -> None:
        if tuple(hx.shape) != tuple(expected):
            raise RuntimeError(f"[{type(self).__name__}] " + msg.format(list(expected),
                                                                         list(hx.shape)))

    def check_forward_args(self, input: Tensor, hidden: Any, batch_sizes: Tensor | None) -> None:
        self.check_input(input, batch_sizes)
        expected = self.get_expected_hidden_size(input, batch_sizes)
        if self.mode == "LSTM":
            self.check_hidden_size(hidden[0], expected, "Expected hidden[0] size {}, got {}")
            cell = (expected[0], expected[1], self.hidden_size)
            self.check_hidden_size(hidden[1], cell, "Expected hidden[1] size {}, got {}")
        else:
            self.check_hidden_size(hidden, expected)

    def permute_hidden(self, hx: Any, permutation: Tensor | None) -> Any:
        if permutation is None:
            return hx
        if isinstance(hx, tuple):
            return tuple(h[:, permutation] for h in hx)
        return hx[:, permutation]

    # ------------------------------------------------------------------ forward
    def forward(self, input: Any, hx: Any = None) -> tuple:
        lstm = self.mode == "LSTM"
        name = type(self).__name__
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes_t, sorted_indices, unsorted_indices = input
            batch_sizes = tuple(int(b) for b in batch_sizes_t._host())
            is_batched = True
            self.check_input(data, batch_sizes_t)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"[{name}] {name}: Expected input to be 2D or 3D, got "
                                 f"{input.dim()}D instead (shape {tuple(input.shape)})")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
            sorted_indices = unsorted_indices = None
            self.check_input(input, None)
            seq = input.transpose(0, 1) if self.batch_first else input
            T, B = seq.shape[0], seq.shape[1]
            batch_sizes = (B,) * T
            data = seq.reshape(T * B, seq.shape[2])
            batch_sizes_t = None
        B = batch_sizes[0] if batch_sizes else 0
        if hx is None:
            h0 = ember.zeros((self.num_layers * num_directions, B, real_hidden),
                             dtype=data.dtype, device=data.device)
            hx = (h0, ember.zeros((self.num_layers * num_directions, B, self.hidden_size),
                                  dtype=data.dtype, device=data.device)) if lstm else h0
        else:
            if not is_batched:
                hs = hx if lstm else (hx,)
                if any(h.dim() != 2 for h in hs):
                    dims = ", ".join(f"{h.dim()}-D" for h in hs)
                    raise RuntimeError(f"[{name}] For unbatched 2-D input, hx"
                                       f"{' and cx' if lstm else ''} should also be 2-D but got "
                                       f"({dims}) tensor{'s' if lstm else ''}")
                hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
            elif not packed:
                hs = hx if lstm else (hx,)
                if any(h.dim() != 3 for h in hs):
                    dims = ", ".join(f"{h.dim()}-D" for h in hs)
                    raise RuntimeError(f"[{name}] For batched 3-D input, hx"
                                       f"{' and cx' if lstm else ''} should also be 3-D but got "
                                       f"({dims}) tensor{'s' if lstm else ''}")
            check_in = data if packed else input
            self.check_forward_args(check_in, hx, batch_sizes_t)
            hx = self.permute_hidden(hx, sorted_indices)

        out, h_n, c_n = self._layers(data, hx, batch_sizes)

        if packed:
            output = PackedSequence(out, batch_sizes_t, sorted_indices, unsorted_indices)
            hidden = (h_n, c_n) if lstm else h_n
            return output, self.permute_hidden(hidden, unsorted_indices)
        output = out.reshape(T, B, out.shape[-1])
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
        return output, ((h_n, c_n) if lstm else h_n)

    def _layers(self, x: Tensor, hx: Any, batch_sizes: tuple) -> tuple:
        """Run every layer and direction over packed rows ``x`` ``(N, F)``."""
        lstm = self.mode == "LSTM"
        gru = self.mode == "GRU"
        h_all, c_all = (hx if lstm else (hx, None))
        num_directions = 2 if self.bidirectional else 1
        h_out, c_out = [], []
        weights = self.all_weights
        for layer in range(self.num_layers):
            outs = []
            for d in range(num_directions):
                k = layer * num_directions + d
                ws = weights[k]
                w_ih, w_hh = ws[0], ws[1]
                b_ih, b_hh = (ws[2], ws[3]) if self.bias else (None, None)
                w_hr = ws[-1] if self.proj_size > 0 else None
                reverse = d == 1
                if gru:
                    xproj = linear(x, w_ih, b_ih)
                    o, h = apply(OPS["_gru_layer"], (xproj, h_all[k], w_hh, b_hh, batch_sizes,
                                                     reverse))
                else:
                    # both biases act on the pre-activation alike: fold them into the projection
                    xproj = linear(x, w_ih, b_ih + b_hh if self.bias else None)
                    if lstm:
                        o, h, c = apply(OPS["_lstm_layer"], (xproj, h_all[k], c_all[k], w_hh,
                                                             w_hr, batch_sizes, reverse))
                        c_out.append(c)
                    else:
                        nl = "relu" if self.mode == "RNN_RELU" else "tanh"
                        o, h = apply(OPS["_rnn_layer"], (xproj, h_all[k], w_hh, batch_sizes,
                                                         reverse, nl))
                outs.append(o)
                h_out.append(h)
            x = outs[0] if num_directions == 1 else ember.cat(outs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = _dropout(x, self.dropout, True)
        h_n = ember.stack(h_out, 0)
        c_n = ember.stack(c_out, 0) if lstm else None
        return x, h_n, c_n


class RNN(RNNBase):
    """Elman RNN: ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``, act tanh or relu.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional:
            see :class:`RNNBase`.
        nonlinearity: ``"tanh"`` (default) or ``"relu"``.

    Inputs: ``input`` ``(T, B, F)`` / ``(B, T, F)`` / unbatched ``(T, F)`` / PackedSequence,
    and ``h_0`` ``(D * num_layers, B, H)`` (zeros if omitted).

    Outputs: ``output`` ``(T, B, D * H)`` (or packed) and ``h_n`` ``(D * num_layers, B, H)``.

    Example::

        >>> rnn = nn.RNN(10, 20, 2)
        >>> output, hn = rnn(ember.randn(5, 3, 10), ember.randn(2, 3, 20))
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "proj_size" in kwargs:
            raise ValueError("[RNN] proj_size argument is only supported for LSTM, not RNN or "
                             "GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"[RNN] Unknown nonlinearity '{self.nonlinearity}'. Select from "
                             "'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)


class LSTM(RNNBase):
    """Long short-term memory, torch's gate order (input, forget, cell, output):

    ``i, f, g, o = split(x W_ih^T + b_ih + h W_hh^T + b_hh)``;
    ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``; ``h' = sigmoid(o) * tanh(c')``
    (then ``h' W_hr^T`` with ``proj_size > 0``).

    Inputs: ``input`` and optionally ``(h_0, c_0)`` with ``h_0`` ``(D * num_layers, B, P)``
    (``P = proj_size or hidden_size``) and ``c_0`` ``(D * num_layers, B, H)``.

    Outputs: ``output``, ``(h_n, c_n)``.

    Example::

        >>> lstm = nn.LSTM(10, 20, 2, batch_first=True)
        >>> output, (hn, cn) = lstm(ember.randn(3, 5, 10))
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("LSTM", *args, **kwargs)

    def get_expected_cell_size(self, input: Tensor, batch_sizes: Tensor | None) -> tuple:
        size = self.get_expected_hidden_size(input, batch_sizes)
        return (size[0], size[1], self.hidden_size)


class GRU(RNNBase):
    """Gated recurrent unit, torch's gate order (reset, update, new):

    ``r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)``, ``z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.

    Example::

        >>> gru = nn.GRU(10, 20, 2)
        >>> output, hn = gru(ember.randn(5, 3, 10))
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "proj_size" in kwargs:
            raise ValueError("[GRU] proj_size argument is only supported for LSTM, not RNN or "
                             "GRU")
        super().__init__("GRU", *args, **kwargs)


# ---------------------------------------------------------------------- cells
class RNNCellBase(Module):
    """Parameters of a single-step cell: ``weight_ih`` ``(chunks * H, F)``, ``weight_hh``
    ``(chunks * H, H)``, ``bias_ih`` and ``bias_hh`` ``(chunks * H,)``."""

    __constants__ = ["input_size", "hidden_size", "bias"]

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        kw = {"device": device, "dtype": dtype}
        self.weight_ih = Parameter(ember.empty((num_chunks * hidden_size, input_size), **kw))
        self.weight_hh = Parameter(ember.empty((num_chunks * hidden_size, hidden_size), **kw))
        if bias:
            self.bias_ih = Parameter(ember.empty(num_chunks * hidden_size, **kw))
            self.bias_hh = Parameter(ember.empty(num_chunks * hidden_size, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if "bias" in self.__dict__ and self.bias is not True:
            s += ", bias={bias}"
        if "nonlinearity" in self.__dict__ and self.nonlinearity != "tanh":
            s += ", nonlinearity={nonlinearity}"
        return s.format(**self.__dict__)

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def _prepare(self, input: Tensor, hx: Any, n_states: int) -> tuple:
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"[{name}] {name}: Expected input to be 1D or 2D, got "
                             f"{input.dim()}D instead (shape {tuple(input.shape)})")
        states = () if hx is None else (hx if n_states == 2 else (hx,))
        for h in states:
            if h.dim() not in (1, 2):
                raise ValueError(f"[{name}] {name}: Expected hidden to be 1D or 2D, got "
                                 f"{h.dim()}D instead (shape {tuple(h.shape)})")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"[{name}] input has inconsistent input_size: got "
                               f"{input.shape[-1]} expected {self.input_size}")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            z = ember.zeros((input.shape[0], self.hidden_size), dtype=input.dtype,
                            device=input.device)
            states = (z,) * n_states
        elif not is_batched:
            states = tuple(h.unsqueeze(0) for h in states)
        for h in states:
            if tuple(h.shape) != (input.shape[0], self.hidden_size):
                raise RuntimeError(f"[{name}] hidden state has shape {tuple(h.shape)}, expected "
                                   f"{(input.shape[0], self.hidden_size)} for input "
                                   f"{tuple(input.shape)}")
        return input, states, is_batched


class RNNCell(RNNCellBase):
    """One Elman RNN step: ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``.

    Example::

        >>> cell = nn.RNNCell(10, 20)
        >>> h = cell(ember.randn(3, 10))
    """

    __constants__ = ["input_size", "hidden_size", "bias", "nonlinearity"]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device: Any = None, dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device,
                         dtype=dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        input, (h,), is_batched = self._prepare(input, hx, 1)
        if self.nonlinearity == "tanh":
            ret = ember.rnn_tanh_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih,
                                      self.bias_hh)
        elif self.nonlinearity == "relu":
            ret = ember.rnn_relu_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih,
                                      self.bias_hh)
        else:
            raise RuntimeError(f"[RNNCell] Unknown nonlinearity: {self.nonlinearity}")
        return ret if is_batched else ret.squeeze(0)


class LSTMCell(RNNCellBase):
    """One LSTM step; returns ``(h', c')``.

    Example::

        >>> cell = nn.LSTMCell(10, 20)
        >>> h, c = cell(ember.randn(3, 10))
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device,
                         dtype=dtype)

    def forward(self, input: Tensor, hx: tuple | None = None) -> tuple:
        input, (h, c), is_batched = self._prepare(input, hx, 2)
        h1, c1 = ember.lstm_cell(input, (h, c), self.weight_ih, self.weight_hh, self.bias_ih,
                                 self.bias_hh)
        if not is_batched:
            return h1.squeeze(0), c1.squeeze(0)
        return h1, c1


class GRUCell(RNNCellBase):
    """One GRU step; returns ``h'``.

    Example::

        >>> cell = nn.GRUCell(10, 20)
        >>> h = cell(ember.randn(3, 10))
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device,
                         dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        input, (h,), is_batched = self._prepare(input, hx, 1)
        ret = ember.gru_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih,
                             self.bias_hh)
        return ret if is_batched else ret.squeeze(0)
