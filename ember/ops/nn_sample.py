"""Padding and rearrangement ops: ``_pad`` (constant/reflect/replicate/circular, N-d) with its
adjoint, and the composites ``pixel_shuffle``, ``pixel_unshuffle`` and ``channel_shuffle``.

Constant padding with pads ``p`` has the adjoint "constant padding with ``-p``" (negative
pads crop), so its backward is the same op. Reflect/replicate/circular padding fold the
gradient of the padded border back onto the input (``_pad_backward``), whose own adjoint is
the padding again.
"""
from __future__ import annotations

from typing import Any

from ember.errors import EmberError, check, make
from ember.ops.registry import OPS, OpDef, TensorMeta, apply, composite, register
from ember.tensor import Tensor

class _NotImpl(EmberError, NotImplementedError):
    """torch raises NotImplementedError for unsupported padding modes and ranks."""


_NP_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad_pairs(pad: tuple, ndim: int) -> list:
    """torch's flat pad (last dim first) as ``(dim, before, after)`` triples."""
    out = []
    for i in range(len(pad) // 2):
        out.append((ndim - 1 - i, int(pad[2 * i]), int(pad[2 * i + 1])))
    return out


def _pad_meta(op: Any, input: Any, pad: Any, mode: str = "constant", value: Any = None) -> TensorMeta:
    check(isinstance(input, Tensor), "pad", f"argument 'input' must be Tensor, not "
                                            f"{type(input).__name__}", TypeError)
    xs = tuple(input._data.shape)
    check(len(pad) % 2 == 0, "pad", f"Padding length must be divisible by 2, got {len(pad)} "
                                    f"({list(pad)})")
    check(len(pad) // 2 <= len(xs), "pad",
          f"Padding length should be less than or equal to two times the input dimension but "
          f"got padding length {len(pad)} and input of dimension {len(xs)} (shape {xs})")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise _NotImpl(f"[pad] Unrecognised padding mode {mode!r}; expected one of 'constant', 'reflect', "
                   f"'replicate' or 'circular'")
    shape = list(xs)
    for dim, a, b in pad_pairs(tuple(pad), len(xs)):
        size = xs[dim]
        if mode == "reflect":
            check(a < size and b < size, "pad",
                  f"Padding size should be less than the corresponding input dimension, but got: "
                  f"padding ({a}, {b}) at dimension {dim} of input {list(xs)}",
                  hint="reflect padding needs pad < input size; use mode='replicate'")
        elif mode == "circular":
            check(a <= size and b <= size, "pad",
                  f"Padding value causes wrapping around more than once: padding ({a}, {b}) at "
                  f"dimension {dim} of input {list(xs)}")
        elif mode == "replicate":
            check(size > 0 or (a == 0 and b == 0), "pad", f"input dimension {dim} is empty: "
                                                          f"{list(xs)}")
        if mode != "constant":
            check(a >= 0 and b >= 0 or mode == "circular", "pad",
                  f"negative padding ({a}, {b}) is only supported in constant mode")
        shape[dim] = size + a + b
        check(shape[dim] >= 0, "pad",
              f"The input size {size}, plus negative padding {a} and {b} resulted in a negative "
              f"output size, which is invalid. Check dimension {dim} of your input {list(xs)}.")
    if mode != "constant":
        npad = len(pad) // 2
        if len(xs) not in (npad + 1, npad + 2) or npad > 3:
            raise _NotImpl(f"[pad] Padding size {len(pad)} is not supported for {len(xs)}D input "
                           f"tensor (shape {xs}) in {mode} mode: padding {npad} dims needs a "
                           f"{npad + 1}D (unbatched) or {npad + 2}D (batched) input")
    return TensorMeta(tuple(shape))


@register("_pad", meta=_pad_meta, method=False, function=False, onnx="Pad")
class Pad(OpDef):
    """Pad ``input``; ``pad`` lists ``(before, after)`` for the last dim first (torch's order)."""

    def forward(ctx, xp, input, pad, mode="constant", value=None):
        pairs = pad_pairs(tuple(pad), input.ndim)
        ctx.p = (tuple(pad), mode, input.shape)
        if mode == "constant":
            x = input
            crop = [slice(None)] * input.ndim
            for dim, a, b in pairs:
                crop[dim] = slice(max(-a, 0), input.shape[dim] - max(-b, 0))
            x = x[tuple(crop)]
            shape = list(x.shape)
            place = [slice(None)] * input.ndim
            for dim, a, b in pairs:
                a, b = max(a, 0), max(b, 0)
                shape[dim] += a + b
                place[dim] = slice(a, a + x.shape[dim])
            fill = 0 if value is None else value
            out = xp.full(shape, fill, dtype=input.dtype)
            out[tuple(place)] = x
            return out
        width = [(0, 0)] * input.ndim
        for dim, a, b in pairs:
            width[dim] = (a, b)
        return xp.pad(input, width, mode=_NP_MODE[mode])

    def backward(ctx, g):
        pad, mode, shape = ctx.p
        if mode == "constant":
            return apply(OPS["_pad"], (g, tuple(-p for p in pad), "constant", 0.0)), None, None, \
                None
        return apply(OPS["_pad_backward"], (g, pad, mode, shape)), None, None, None


def _fold_axis(xp: Any, g: Any, axis: int, size: int, a: int, b: int, mode: str) -> Any:
    """Adjoint of padding one axis by (a, b): fold the padded border back into ``size``."""
    g = xp.moveaxis(g, axis, -1)
    out = g[..., a:a + size].copy()
    left, right = g[..., :a], g[..., a + size:]
    if mode == "reflect":
        if a:
            out[..., 1:a + 1] += left[..., ::-1]
        if b:
            out[..., size - 1 - b:size - 1] += right[..., ::-1]
    elif mode == "replicate":
        if a:
            out[..., 0] += left.sum(-1)
        if b:
            out[..., size - 1] += right.sum(-1)
    else:  # circular
        if a:
            out[..., size - a:] += left
        if b:
            out[..., :b] += right
    return xp.moveaxis(out, -1, axis)


@register("_pad_backward", meta=None, method=False, function=False)
class PadBackward(OpDef):
    """Adjoint of reflect/replicate/circular padding: ``grad`` of the padded shape -> ``shape``."""

    def forward(ctx, xp, grad, pad, mode, shape):
        ctx.p = (pad, mode)
        g = grad
        for dim, a, b in pad_pairs(tuple(pad), grad.ndim):
            g = _fold_axis(xp, g, dim, shape[dim], a, b, mode)
        return xp.ascontiguousarray(g)

    def backward(ctx, gg):
        pad, mode = ctx.p
        return apply(OPS["_pad"], (gg, pad, mode, None)), None, None, None


# ---------------------------------------------------------------------- rearrangements
@composite(method=False)
def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:
    """Rearrange ``(*, C*r^2, H, W)`` into ``(*, C, H*r, W*r)``."""
    r = int(upscale_factor)
    check(input.ndim >= 3, "pixel_shuffle", f"expected input with at least 3 dims (*, C*r^2, H, "
                                            f"W), got shape {tuple(input.shape)}")
    check(r > 0, "pixel_shuffle", f"upscale_factor must be greater than 0, got {r}")
    *lead, c, h, w = input.shape
    check(c % (r * r) == 0, "pixel_shuffle",
          f"pixel_shuffle expects its input's 'channel' dimension to be divisible by the square "
          f"of upscale_factor, but input.size(-3)={c} is not divisible by {r * r} (input "
          f"{tuple(input.shape)})")
    oc = c // (r * r)
    n = len(lead)
    x = input.reshape(*lead, oc, r, r, h, w)
    x = x.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return x.reshape(*lead, oc, h * r, w * r)


@composite(method=False)
def pixel_unshuffle(input: Tensor, downscale_factor: int) -> Tensor:
    """Rearrange ``(*, C, H*r, W*r)`` into ``(*, C*r^2, H, W)``; inverse of pixel_shuffle."""
    r = int(downscale_factor)
    check(input.ndim >= 3, "pixel_unshuffle", f"expected input with at least 3 dims (*, C, H, "
                                              f"W), got shape {tuple(input.shape)}")
    check(r > 0, "pixel_unshuffle", f"downscale_factor must be greater than 0, got {r}")
    *lead, c, h, w = input.shape
    check(h % r == 0 and w % r == 0, "pixel_unshuffle",
          f"pixel_unshuffle expects height ({h}) and width ({w}) to be divisible by "
          f"downscale_factor {r} (input {tuple(input.shape)})")
    n = len(lead)
    x = input.reshape(*lead, c, h // r, r, w // r, r)
    x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return x.reshape(*lead, c * r * r, h // r, w // r)


@composite(method=False)
def channel_shuffle(input: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``(N, C, *)`` across ``groups`` (ShuffleNet)."""
    check(input.ndim >= 3, "channel_shuffle", f"expected input with at least 3 dims (N, C, *), "
                                              f"got shape {tuple(input.shape)}")
    g = int(groups)
    c = input.shape[1]
    check(g > 0, "channel_shuffle", f"Number of groups to divide channels in must be positive. "
                                    f"Value of groups:{g}")
    check(c % g == 0, "channel_shuffle", f"Number of channels must be divisible by groups. Got "
                                         f"{c} channels and {g} groups.")
    n = input.shape[0]
    rest = tuple(input.shape[2:])
    return input.reshape(n, g, c // g, *rest).transpose(1, 2).reshape(n, c, *rest)


def constant_pad_nd(input: Tensor, pad: Any, value: float = 0) -> Tensor:
    """``torch.constant_pad_nd``: constant padding (negative pads crop)."""
    return apply(OPS["_pad"], (input, tuple(int(p) for p in pad), "constant", value))


def _top_level() -> None:
    from ember.ops.registry import PUBLIC_FUNCTIONS
    PUBLIC_FUNCTIONS["constant_pad_nd"] = constant_pad_nd
    PUBLIC_FUNCTIONS["native_channel_shuffle"] = channel_shuffle


_top_level()
