"""Run the same expression on torch and on ember and compare the results.

``check(f)`` calls ``f(torch)`` and ``f(ember)``: both must raise the same exception type
(ember's may be a subclass) or return equal values after normalising (tensors to nested
lists, dtypes and Sizes to their names, 'torch.' to 'ember.' in strings).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


def normalise(x: Any) -> Any:
    mod = type(x).__module__ or ""
    if hasattr(x, "tolist") and hasattr(x, "dtype") and not isinstance(x, np.ndarray) and (
            mod.startswith("torch") or mod.startswith("ember")):
        return ("tensor", str(x.dtype).split(".")[-1], tuple(x.shape),
                _nan_safe(x.detach().double().tolist() if x.dtype.is_floating_point
                          else x.tolist()))
    if hasattr(x, "is_floating_point") and hasattr(x, "itemsize") and "dtype" in type(x).__name__:
        return ("dtype", str(x).split(".")[-1])
    if type(x).__name__ == "dtype" and mod.startswith(("torch", "ember")):
        return ("dtype", str(x).split(".")[-1])
    if isinstance(x, str):
        return x.replace("torch.", "ember.")
    if isinstance(x, (tuple, list)):
        return type(x).__name__ if False else [normalise(v) for v in x]
    if isinstance(x, float) and x != x:
        return "nan"
    return x


def _nan_safe(v: Any) -> Any:
    if isinstance(v, list):
        return [_nan_safe(x) for x in v]
    if isinstance(v, float) and v != v:
        return "nan"
    return v


def check(f: Callable, torch: Any, ember: Any, approx: bool = False) -> None:
    t_exc = e_exc = None
    try:
        t = f(torch)
    except Exception as exc:  # noqa: BLE001 - the type is what we compare
        t_exc = exc
    try:
        e = f(ember)
    except Exception as exc:  # noqa: BLE001
        e_exc = exc
    if t_exc is not None:
        assert e_exc is not None, f"torch raised {type(t_exc).__name__}: {t_exc}; ember returned {e!r}"
        assert isinstance(e_exc, type(t_exc)), (
            f"torch raised {type(t_exc).__name__}, ember raised {type(e_exc).__name__}: {e_exc}")
        msg = str(e_exc).lower()
        assert "ufunc" not in msg and "numpy." not in msg, f"NumPy text leaked: {e_exc}"
        return
    assert e_exc is None, f"ember raised {type(e_exc).__name__}: {e_exc}; torch returned {t!r}"
    nt, ne = normalise(t), normalise(e)
    if approx:
        np.testing.assert_allclose(np.asarray(ne[3], float), np.asarray(nt[3], float), rtol=1e-6)
        assert ne[:3] == nt[:3]
    else:
        assert ne == nt, f"\ntorch: {nt}\nember: {ne}"


def cross_entropy_rows_match(ember: Any, torch: Any, x: np.ndarray, y: np.ndarray) -> None:
    """``cross_entropy(reduction='none')`` of float32 logits ``x`` (non-finite values
    allowed) and targets ``y``: ember's per-row losses and logit gradients against torch's,
    NaN where torch's are NaN, within float32 tolerance elsewhere."""
    res = []
    for m in (ember, torch):
        t = m.tensor(x, requires_grad=True)
        loss = m.nn.functional.cross_entropy(t, m.tensor(y), reduction="none")
        loss.sum().backward()
        res.append((loss.detach().numpy(), t.grad.numpy()))
    for e, t in zip(*res):
        np.testing.assert_array_equal(np.isnan(e), np.isnan(t))
        fin = ~np.isnan(t)
        np.testing.assert_allclose(e[fin], t[fin], rtol=2e-5, atol=1e-6)
