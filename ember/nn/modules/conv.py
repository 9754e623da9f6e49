"""Convolution layers: ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` and their lazy forms.

Parameters, defaults and ``extra_repr`` follow torch: ``weight`` is
``(out, in/groups, *kernel)`` (``(in, out/groups, *kernel)`` when transposed), initialised
with ``kaiming_uniform_(a=sqrt(5))``, and ``bias`` with U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import ember
from ember.nn import functional as F
from ember.nn import init
from ember.nn.modules.module import LazyModuleMixin, Module
from ember.nn.parameter import Parameter, UninitializedParameter
from ember.tensor import Tensor

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
           "ConvTranspose3d", "LazyConv1d", "LazyConv2d", "LazyConv3d", "LazyConvTranspose1d",
           "LazyConvTranspose2d", "LazyConvTranspose3d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def _ntuple(v: Any, n: int) -> tuple:
    if isinstance(v, (list, tuple)):
        v = tuple(v)
        return v * n if len(v) == 1 and n > 1 else v
    return (v,) * n


class _ConvNd(Module):
    """Shared state and checks of the convolution layers."""

    _nd = 2
    __constants__ = ["stride", "padding", "dilation", "groups", "padding_mode", "output_padding",
                     "in_channels", "out_channels", "kernel_size"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any,
                 padding: Any, dilation: Any, transposed: bool, output_padding: Any,
                 groups: int, bias: bool, padding_mode: str, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        nd = self._nd
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        kernel_size = _ntuple(kernel_size, nd)
        stride = _ntuple(stride, nd)
        dilation = _ntuple(dilation, nd)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Invalid padding string {padding!r}, should be one of "
                                 f"{{'valid', 'same'}}")
            if padding == "same" and any(s != 1 for s in stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
        else:
            padding = _ntuple(padding, nd)
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {set(_PADDING_MODES)}, but got "
                             f"padding_mode='{padding_mode}'")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.transposed = transposed
        self.output_padding = _ntuple(output_padding, nd)
        self.groups = groups
        self.padding_mode = padding_mode
        # F.pad order (last dim first) of the padding, for the non-zeros padding modes
        if isinstance(padding, str):
            rev = [0, 0] * nd
            if padding == "same":
                for d, k, i in zip(dilation, kernel_size, range(nd - 1, -1, -1)):
                    total = d * (k - 1)
                    left = total // 2
                    rev[2 * i] = left
                    rev[2 * i + 1] = total - left
        else:
            rev = [p for p in reversed(padding) for _ in range(2)]
        self._reversed_padding_repeated_twice = rev
        if transposed:
            shape = (in_channels, out_channels // groups) + kernel_size
        else:
            shape = (out_channels, in_channels // groups) + kernel_size
        self.weight = Parameter(ember.empty(shape, device=device, dtype=dtype))
        if bias:
            self.bias = Parameter(ember.empty(out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch's default
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}"
        nd = len(self.kernel_size)
        if self.padding != (0,) * nd:
            s += ", padding={padding}"
        if self.dilation != (1,) * nd:
            s += ", dilation={dilation}"
        if self.output_padding != (0,) * nd:
            s += ", output_padding={output_padding}"
        if self.groups != 1:
            s += ", groups={groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += ", padding_mode={padding_mode}"
        return s.format(**self.__dict__)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if not hasattr(self, "padding_mode"):
            self.padding_mode = "zeros"

    def _check_input(self, input: Any) -> None:
        """Rank and channel checks that name this layer (before the functional call)."""
        nd = self._nd
        chans = self.in_channels
        # the array's shape (no ember.Size per access): this runs per conv call
        shape = input._data.shape if isinstance(input, Tensor) else None
        if shape is None or len(shape) not in (nd + 1, nd + 2):
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise self._layer_error(
                RuntimeError, f"expected input (N, C_in={chans}, {_SPATIAL[nd]}) or unbatched "
                              f"(C_in={chans}, {_SPATIAL[nd]}), got {got}",
                hint=f"{type(self).__name__} takes {nd + 2}-d batched input")
        c = shape[1] if len(shape) == nd + 2 else shape[0]
        if c != chans:
            raise self._layer_error(
                RuntimeError, f"expected input with {chans} channels (in_channels), got input of "
                              f"shape {tuple(input.shape)} with {c} channels",
                hint="the channel dim is dim 1 (NCHW layout)")


class _Conv(_ConvNd):
    _fn: Any = None

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         False, 0, groups, bias, padding_mode, device, dtype)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        fn = type(self)._fn
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return fn(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return fn(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        # parameters straight from their dict (each ``self.<name>`` goes through
        # Module.__getattr__); a name missing there (parametrized) is read the usual way
        params = self._parameters
        weight = params["weight"] if "weight" in params else self.weight
        bias = params["bias"] if "bias" in params else self.bias
        return self._conv_forward(input, weight, bias)


class Conv1d(_Conv):
    """1-d convolution over ``(N, C_in, L)`` (or unbatched ``(C_in, L)``).

    Args:
        in_channels, out_channels: channels of the input and the output.
        kernel_size, stride, padding, dilation: ints or 1-tuples; ``padding`` may also be
            ``'valid'`` or ``'same'``.
        groups: blocked connections from input to output channels. Default: 1.
        bias: add a learnable bias. Default: ``True``.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Example::

        >>> nn.Conv1d(16, 33, 3, stride=2)(ember.randn(20, 16, 50)).shape
        ember.Size([20, 33, 24])
    """

    _nd = 1
    _fn = staticmethod(F.conv1d)


class Conv2d(_Conv):
    """2-d convolution over ``(N, C_in, H, W)`` (or unbatched ``(C_in, H, W)``).

    ``H_out = floor((H + 2*padding - dilation*(kernel_size-1) - 1) / stride + 1)``.

    Args:
        in_channels, out_channels: channels of the input and the output.
        kernel_size, stride, padding, dilation: ints or pairs; ``padding`` may also be
            ``'valid'`` or ``'same'``.
        groups: blocked connections from input to output channels. Default: 1.
        bias: add a learnable bias. Default: ``True``.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Example::

        >>> nn.Conv2d(16, 33, (3, 5), stride=(2, 1), padding=(4, 2))(ember.randn(2, 16, 20, 30)).shape
        ember.Size([2, 33, 13, 30])
    """

    _nd = 2
    _fn = staticmethod(F.conv2d)


class Conv3d(_Conv):
    """3-d convolution over ``(N, C_in, D, H, W)`` (or unbatched ``(C_in, D, H, W)``)."""

    _nd = 3
    _fn = staticmethod(F.conv3d)


class _ConvTranspose(_ConvNd):
    _fn: Any = None

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, output_padding: Any = 0, groups: int = 1, bias: bool = True,
                 dilation: Any = 1, padding_mode: str = "zeros", device: Any = None,
                 dtype: Any = None) -> None:
        if padding_mode != "zeros":
            raise ValueError(f'Only "zeros" padding mode is supported for {type(self).__name__}')
        if isinstance(padding, str):
            raise ValueError(f"{type(self).__name__} does not support string padding, got "
                             f"{padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         True, output_padding, groups, bias, padding_mode, device, dtype)

    def _output_padding(self, input: Tensor, output_size: Sequence[int] | None, stride: tuple,
                        padding: tuple, kernel_size: tuple, num_spatial_dims: int,
                        dilation: tuple | None = None) -> tuple:
        if output_size is None:
            return self.output_padding
        has_batch = input.dim() == num_spatial_dims + 2
        non_spatial = 2 if has_batch else 1
        output_size = list(output_size)
        if len(output_size) == non_spatial + num_spatial_dims:
            output_size = output_size[non_spatial:]
        if len(output_size) != num_spatial_dims:
            raise ValueError(f"ConvTranspose{num_spatial_dims}D: for {input.dim()}D input, "
                             f"output_size must have {num_spatial_dims} or "
                             f"{non_spatial + num_spatial_dims} elements (got {len(output_size)})")
        min_sizes, max_sizes = [], []
        for d in range(num_spatial_dims):
            size = ((input.size(d + non_spatial) - 1) * stride[d] - 2 * padding[d] +
                    (dilation[d] if dilation is not None else 1) * (kernel_size[d] - 1) + 1)
            min_sizes.append(size)
            max_sizes.append(size + stride[d] - 1)
        for i, size in enumerate(output_size):
            if size < min_sizes[i] or size > max_sizes[i]:
                raise ValueError(f"requested an output size of {output_size}, but valid sizes "
                                 f"range from {min_sizes} to {max_sizes} (for an input of "
                                 f"{list(input.size()[non_spatial:])})")
        return tuple(output_size[d] - min_sizes[d] for d in range(num_spatial_dims))

    def forward(self, input: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        self._check_input(input)
        nd = self._nd
        op = self._output_padding(input, output_size, self.stride, self.padding,
                                  self.kernel_size, nd, self.dilation)
        return type(self)._fn(input, self.weight, self.bias, self.stride, self.padding, op,
                              self.groups, self.dilation)


class ConvTranspose1d(_ConvTranspose):
    """1-d transposed convolution over ``(N, C_in, L)``; the gradient of Conv1d in its input.

    ``L_out = (L - 1)*stride - 2*padding + dilation*(kernel_size - 1) + output_padding + 1``.
    """

    _nd = 1
    _fn = staticmethod(F.conv_transpose1d)


class ConvTranspose2d(_ConvTranspose):
    """2-d transposed convolution ("deconvolution") over ``(N, C_in, H, W)``.

    ``forward(input, output_size=None)``: ``output_size`` picks ``output_padding`` so the
    output has that spatial size.

    Example::

        >>> up = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1)
        >>> up(ember.randn(1, 16, 6, 6), output_size=[12, 12]).shape
        ember.Size([1, 8, 12, 12])
    """

    _nd = 2
    _fn = staticmethod(F.conv_transpose2d)


class ConvTranspose3d(_ConvTranspose):
    """3-d transposed convolution over ``(N, C_in, D, H, W)``."""

    _nd = 3
    _fn = staticmethod(F.conv_transpose3d)


# ---------------------------------------------------------------------- lazy forms
class _LazyConvMixin(LazyModuleMixin):
    """``in_channels`` is inferred from the first input (dim 1, or dim 0 when unbatched)."""

    groups: int
    transposed: bool
    in_channels: int
    out_channels: int
    kernel_size: tuple
    weight: UninitializedParameter
    bias: UninitializedParameter

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.in_channels != 0:
            super().reset_parameters()

    def initialize_parameters(self, input: Tensor, *args: Any, **kwargs: Any) -> None:
        if self.has_uninitialized_params():
            nd = self._nd
            self.in_channels = input.shape[1] if input.dim() == nd + 2 else input.shape[0]
            if self.in_channels % self.groups != 0:
                raise ValueError("in_channels must be divisible by groups")
            with ember.no_grad():
                if self.transposed:
                    shape = (self.in_channels, self.out_channels // self.groups)
                else:
                    shape = (self.out_channels, self.in_channels // self.groups)
                self.weight.materialize(shape + tuple(self.kernel_size))
                if self.bias is not None:
                    self.bias.materialize((self.out_channels,))
                self.reset_parameters()


def _lazy_init(self: Any, base: type, out_channels: int, bias: bool, device: Any, dtype: Any,
               **kw: Any) -> None:
    LazyModuleMixin.__init__(self, 0, 0, bias=False, **kw)  # runs base.__init__ via the MRO
    self.weight = UninitializedParameter(device=device, dtype=dtype)
    self.out_channels = out_channels
    if bias:
        self.bias = UninitializedParameter(device=device, dtype=dtype)


def _make_lazy(name: str, base: type) -> type:
    transposed = issubclass(base, _ConvTranspose)

    if transposed:
        def __init__(self, out_channels: int, kernel_size: Any, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                     bias: bool = True, dilation: Any = 1, padding_mode: str = "zeros",
                     device: Any = None, dtype: Any = None) -> None:
            # in/out channels 0 (divisible by any groups) until the first input arrives
            _lazy_init(self, base, out_channels, bias, device, dtype, kernel_size=kernel_size,
                       stride=stride, padding=padding, output_padding=output_padding,
                       groups=1, dilation=dilation, padding_mode=padding_mode)
            self.groups = groups
    else:
        def __init__(self, out_channels: int, kernel_size: Any, stride: Any = 1,
                     padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                     padding_mode: str = "zeros", device: Any = None,
                     dtype: Any = None) -> None:
            _lazy_init(self, base, out_channels, bias, device, dtype, kernel_size=kernel_size,
                       stride=stride, padding=padding, dilation=dilation, groups=1,
                       padding_mode=padding_mode)
            self.groups = groups
    doc = (f"A :class:`{base.__name__}` whose ``in_channels`` is inferred from the first "
           f"input; it becomes a ``{base.__name__}`` after that call.")
    return type(name, (_LazyConvMixin, base), {"__init__": __init__, "cls_to_become": base,
                                               "__doc__": doc, "__module__": __name__})


LazyConv1d = _make_lazy("LazyConv1d", Conv1d)
LazyConv2d = _make_lazy("LazyConv2d", Conv2d)
LazyConv3d = _make_lazy("LazyConv3d", Conv3d)
LazyConvTranspose1d = _make_lazy("LazyConvTranspose1d", ConvTranspose1d)
LazyConvTranspose2d = _make_lazy("LazyConvTranspose2d", ConvTranspose2d)
LazyConvTranspose3d = _make_lazy("LazyConvTranspose3d", ConvTranspose3d)
