"""``GradScaler``: dynamic loss scaling for float16 training.

Scale the loss so small gradients survive float16, unscale before the optimizer step, skip
the step (and shrink the scale) when any gradient is inf/NaN, and grow the scale after
``growth_interval`` clean steps. ``skipped_steps`` counts the skipped ones.
"""
from __future__ import annotations

import warnings
from typing import Any

_READY, _UNSCALED, _STEPPED = 0, 1, 2


class GradScaler:
    """Args:
        device: ``"cuda"`` or ``"cpu"``.
        init_scale: initial scale factor.
        growth_factor, backoff_factor: scale multipliers after clean / overflowing steps.
        growth_interval: clean steps between growths.
        enabled: with False every method is a pass-through.

    Example::

        >>> scaler = ember.amp.GradScaler("cuda")
        >>> scaler.scale(loss).backward()
        >>> scaler.step(opt)
        >>> scaler.update()
    """

    def __init__(self, device: str = "cuda", init_scale: float = 2.0 ** 16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True) -> None:
        self._device = device
        if enabled and device == "cuda":
            from ember import cuda
            if not cuda.is_available():
                warnings.warn("ember.amp.GradScaler is enabled, but CUDA is not available. "
                              "Disabling.", UserWarning, stacklevel=2)
                enabled = False
        if growth_factor <= 1.0:
            raise ValueError("The growth factor must be > 1.0.")
        if backoff_factor >= 1.0:
            raise ValueError("The backoff factor must be < 1.0.")
        self._enabled = enabled
        self._scale = float(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0
        self._per_opt: dict = {}
        self.skipped_steps = 0

    def is_enabled(self) -> bool:
        return self._enabled

    def scale(self, outputs: Any) -> Any:
        """Multiply a tensor (or nested list/tuple of tensors) by the current scale."""
        if not self._enabled:
            return outputs
        from ember.tensor import Tensor
        if isinstance(outputs, Tensor):
            return outputs * self._scale
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        raise ValueError("outputs must be a Tensor or an iterable of Tensors")

    def _state(self, optimizer: Any) -> dict:
        return self._per_opt.setdefault(id(optimizer), {"stage": _READY, "found_inf": False})

    def unscale_(self, optimizer: Any) -> None:
        """Divide ``optimizer``'s gradients by the scale and look for inf/NaN."""
        if not self._enabled:
            return
        st = self._state(optimizer)
        if st["stage"] == _UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the "
                               "last update().")
        if st["stage"] == _STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        import ember
        inv = 1.0 / self._scale
        found = False
        with ember.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    g = p.grad
                    g.mul_(inv)
                    if not found and not bool(ember.isfinite(g).all()):
                        found = True
        st["found_inf"] = found
        st["stage"] = _UNSCALED

    def step(self, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        """Unscale if needed, then run ``optimizer.step`` unless a gradient overflowed."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        st = self._state(optimizer)
        if st["stage"] == _STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if st["stage"] == _READY:
            self.unscale_(optimizer)
        result = None
        if st["found_inf"]:
            self.skipped_steps += 1
        else:
            result = optimizer.step(*args, **kwargs)
        st["stage"] = _STEPPED
        return result

    def update(self, new_scale: Any = None) -> None:
        """Adjust the scale after the step(s) of this iteration."""
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = float(new_scale)
        else:
            found = any(st["found_inf"] for st in self._per_opt.values())
            if found:
                self._scale *= self._backoff_factor
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    self._scale *= self._growth_factor
                    self._growth_tracker = 0
        self._per_opt = {}

    def get_scale(self) -> float:
        return self._scale if self._enabled else 1.0

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, v: float) -> None:
        self._growth_factor = v

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, v: float) -> None:
        self._backoff_factor = v

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, v: int) -> None:
        self._growth_interval = v

    def state_dict(self) -> dict:
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state: dict) -> None:
        if not self._enabled:
            return
        if not state:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        self._scale = float(state["scale"])
        self._growth_factor = float(state["growth_factor"])
        self._backoff_factor = float(state["backoff_factor"])
        self._growth_interval = int(state["growth_interval"])
        self._growth_tracker = int(state["_growth_tracker"])
