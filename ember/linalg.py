"""``ember.linalg``: torch.linalg's functions (batched, with autograd), backed by the ops in
``ember/ops/linalg_solve.py``, ``linalg_decomp.py`` and ``linalg_ops.py``.

Example::

    >>> A = ember.randn(3, 3, dtype=ember.float64)
    >>> x = ember.linalg.solve(A, ember.ones(3, dtype=ember.float64))
"""
from __future__ import annotations

from ember.ops.linalg_ops import LINALG_NAMES as _NAMES

globals().update(_NAMES)

__all__ = sorted(_NAMES)
