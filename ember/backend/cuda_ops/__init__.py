"""CUDA implementations of the hot ops: fused NVRTC kernels and library-backed (cuDNN, nvmath).

Each module of this package exposes ``IMPLS: dict[str, type]``, mapping a registered op name
to a class with ``forward(ctx, xp, *arrays)`` and ``backward(ctx, *grads)`` in the same form
as the op's own declaration. :func:`install` runs once, on the first successful CUDA
availability check, and sets ``OPS[name].cuda_impl``; ``import ember`` never imports this.

Contract (see ``registry.apply``):
- ``forward`` may return ``NotImplemented`` for a case it does not cover (dtype, layout,
  arguments); the generic xp code then runs, and its own backward is used.
- ``backward`` is used unless the graph is being differentiated again (``create_graph``); then
  the op's generic backward runs on the same ctx, so ``forward`` must save what the generic
  backward reads (same ``ctx.save`` layout and ``ctx.p``).
- Set ``EMBER_CUDA_IMPLS=0`` to run the generic CuPy code only (for A/B tests and debugging).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import warnings

_installed: list = []


def install() -> list:
    """Attach every available CUDA implementation to its op; returns the op names covered."""
    if _installed:
        return _installed[0]
    names: list = []
    _installed.append(names)
    if os.environ.get("EMBER_CUDA_IMPLS", "1") == "0":
        return names
    from ember.ops.registry import OPS
    for info in pkgutil.iter_modules(__path__):
        try:
            mod = importlib.import_module(f"{__name__}.{info.name}")
        except Exception as exc:  # a broken optional library must not break CUDA ops
            warnings.warn(f"ember: CUDA implementations in {info.name} unavailable ({exc}); "
                          "the generic CuPy code runs instead", stacklevel=2)
            continue
        for name, impl in getattr(mod, "IMPLS", {}).items():
            OPS[name].cuda_impl = impl
            names.append(name)
    return names


def uninstall() -> None:
    """Detach every CUDA implementation (tests use this to compare against the generic path);
    :func:`install` attaches them again."""
    from ember.ops.registry import OPS
    for op in OPS.values():
        op.cuda_impl = None
    _installed.clear()
