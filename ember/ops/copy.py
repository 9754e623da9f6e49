"""Copies and casts: ``clone`` and ``_to_copy`` (dtype/device conversion, behind ``Tensor.to``)."""
from __future__ import annotations

from typing import Any

from ember import dtypes as _dt
from ember.backend import device_of_array
from ember.ops.registry import OpDef, TensorMeta, register


def _same(op: Any, input: Any, *rest: Any) -> TensorMeta:
    return TensorMeta(input._data.shape)


@register("clone", meta=_same, sig="input, *, memory_format=None", onnx="Identity")
class Clone(OpDef):
    """A copy of ``input`` with its own memory (recorded by autograd)."""

    def forward(ctx, xp, input, memory_format):
        if memory_format is not None and str(memory_format).endswith("channels_last") and \
                input.ndim == 4:
            out = xp.empty((input.shape[0], input.shape[2], input.shape[3], input.shape[1]),
                           dtype=input.dtype).transpose(0, 3, 1, 2)
            out[...] = input
            return out
        return input.copy()

    def backward(ctx, grad):
        return grad, None


@register("_to_copy", meta=_same, function=False, method=False, node_name="ToCopy",
          onnx="Cast")
class ToCopy(OpDef):
    """A copy converted to ``dtype`` on ``device`` (either may be None: unchanged)."""

    changes_device = True

    def forward(ctx, xp, input, dtype, device):
        ctx.src = (_dt._FROM_NP[input.dtype], _device_of(input))
        out = input
        if device is not None and device != ctx.src[1]:
            from ember.backend import get_xp
            if device.type == "cpu":
                out = input.get() if hasattr(input, "get") else input
            else:
                cp = get_xp(device)
                with cp.cuda.Device(device.index or 0):
                    out = cp.asarray(input)
        if dtype is not None and out.dtype != dtype.np:
            if input.dtype.kind == "c" and dtype.category < 3:
                import warnings
                warnings.warn("Casting complex values to real discards the imaginary part",
                              UserWarning, stacklevel=6)
                out = out.real
            out = out.astype(dtype.np)
        elif out is input:
            out = input.copy()
        return out

    @staticmethod
    def adopt(ctx, input, out):
        """The forward of a dtype cast already made (autocast's bulk casts): ``out``."""
        ctx.src = (_dt._FROM_NP[input.dtype], _device_of(input))
        return out

    def backward(ctx, grad):
        dt, dev = ctx.src
        if dt.category < 2:
            return None, None, None
        if grad.is_complex() and not dt.is_complex:
            grad = grad.real  # a real input gets the real part of a complex gradient (torch)
        return grad.to(dtype=dt, device=dev), None, None


# bound once: a per-call import statement costs ~0.3 us on every cast
_device_of = device_of_array
