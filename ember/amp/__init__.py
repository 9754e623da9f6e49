"""``ember.amp``: mixed precision (``autocast``) and loss scaling (``GradScaler``)."""
from ember.amp.autocast_mode import (  # noqa: F401
    autocast, custom_bwd, custom_fwd, get_autocast_dtype, is_autocast_enabled)
from ember.amp.grad_scaler import GradScaler  # noqa: F401

__all__ = ["autocast", "GradScaler", "custom_fwd", "custom_bwd", "is_autocast_enabled",
           "get_autocast_dtype"]
