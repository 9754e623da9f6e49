"""``ember.nn.utils``: gradient clipping, parameter/vector conversion, weight and spectral
normalisation, parametrizations, conv/linear-batchnorm fusion. Submodules such as ``rnn`` and
``stateless`` load on first access."""
import importlib as _importlib
from typing import Any as _Any

from ember.nn.utils import parametrizations, parametrize  # noqa: F401
from ember.nn.utils.clip_grad import (  # noqa: F401
    clip_grad_norm, clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm)
from ember.nn.utils.convert_parameters import (  # noqa: F401
    parameters_to_vector, vector_to_parameters)
from ember.nn.utils.fusion import (  # noqa: F401
    fuse_conv_bn_eval, fuse_conv_bn_weights, fuse_linear_bn_eval, fuse_linear_bn_weights)
from ember.nn.utils.spectral_norm import remove_spectral_norm, spectral_norm  # noqa: F401
from ember.nn.utils.weight_norm import remove_weight_norm, weight_norm  # noqa: F401


def skip_init(module_cls: type, *args: _Any, **kwargs: _Any) -> _Any:
    """Build ``module_cls(*args, **kwargs)`` and leave its parameters uninitialised (ember
    builds it normally and then overwrites nothing: the values are whatever reset_parameters
    produced, which is a valid, if wasted, initialisation)."""
    if "device" not in module_cls.__init__.__code__.co_varnames:
        raise RuntimeError("Module must support a 'device' arg to skip initialization")
    return module_cls(*args, **kwargs)


def __getattr__(name: str) -> _Any:
    try:
        mod = _importlib.import_module(f"ember.nn.utils.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"ember.nn.utils.{name}":
            raise AttributeError(f"module 'ember.nn.utils' has no attribute '{name}'") from None
        raise
    globals()[name] = mod
    return mod
