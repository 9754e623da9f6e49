"""``ember.fft``: torch.fft's discrete Fourier transforms (with autograd), backed by the ops
in ``ember/ops/fft_ops.py``.

Example::

    >>> x = ember.randn(8)
    >>> X = ember.fft.rfft(x)            # complex64, 5 bins
    >>> y = ember.fft.irfft(X, n=8)      # back to x
"""
from __future__ import annotations

from ember.ops.fft_ops import FFT_NAMES as _NAMES

globals().update(_NAMES)

__all__ = sorted(_NAMES)
