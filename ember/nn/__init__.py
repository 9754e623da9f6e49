"""``ember.nn``: Modules, layers, losses, ``functional``, ``init`` and ``utils``."""
from ember.nn.modules import *  # noqa: F401,F403
from ember.nn.modules import __all__ as _modules_all
from ember.nn import functional, init, utils  # noqa: F401
from ember.nn.parameter import (  # noqa: F401
    Buffer, Parameter, UninitializedBuffer, UninitializedParameter)

__all__ = list(_modules_all) + ["functional", "init", "utils", "Parameter", "Buffer",
                                "UninitializedParameter", "UninitializedBuffer"]
