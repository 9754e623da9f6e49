"""Helpers of ``Module``: indented reprs, and the layer path that error messages name.

A layer's path (``encoder.layers.3.linear1``) is found only when an error is raised: walk the
Python frames for running modules and look the layer up in the outermost one. This costs
nothing on the normal path and works whether the root was called or a method ran directly.
"""
from __future__ import annotations

import sys

from ember.errors import make


def _addindent(s_: str, num_spaces: int) -> str:
    lines = s_.split("\n")
    if len(lines) == 1:
        return s_
    first = lines.pop(0)
    lines = [(num_spaces * " ") + line for line in lines]
    return first + "\n" + "\n".join(lines)


# ---------------------------------------------------------------------- error paths
def _calling_modules() -> list:
    """The modules running on the Python stack (``__call__``, or a method such as ``forward``
    called directly), innermost first, each once."""
    found: list = []
    frame = sys._getframe(1)
    while frame is not None:
        m = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        if isinstance(m, _module_cls()) and not any(m is x for x in found):
            found.append(m)
        frame = frame.f_back
    return found


def module_path(module: "Module") -> str:
    """The qualified name of ``module`` inside the outermost running module that contains it
    ('' when it is that root, or when no running module contains it)."""
    stack = _calling_modules()
    for root in reversed(stack):  # outermost first
        if root is module:
            return ""
        for name, m in root.named_modules():
            if m is module:
                return name
    return ""


def layer_error(module: "Module", kind: type, msg: str, hint: str | None = None) -> Exception:
    """An exception of type ``kind`` whose message names the layer: ``[Linear encoder.fc1] msg``."""
    path = module_path(module)
    tag = type(module).__name__ + (f" {path}" if path else "")
    return make(kind, tag, msg, hint)


def _module_cls() -> type:
    from ember.nn.modules.module import Module
    return Module
