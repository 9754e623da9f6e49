"""``ember.cuda.amp``: torch's older spellings of ``ember.amp`` for CUDA."""
from __future__ import annotations

from typing import Any

from ember.amp import GradScaler as _GradScaler
from ember.amp import autocast as _autocast
from ember.amp import custom_bwd, custom_fwd  # noqa: F401


def autocast(enabled: bool = True, dtype: Any = None, cache_enabled: bool = True) -> _autocast:
    return _autocast("cuda", dtype=dtype, enabled=enabled)


def GradScaler(init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,  # noqa: N802
               backoff_factor: float = 0.5, growth_interval: int = 2000,
               enabled: bool = True) -> _GradScaler:
    return _GradScaler("cuda", init_scale, growth_factor, backoff_factor, growth_interval,
                       enabled)
