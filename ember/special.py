"""``ember.special``: the ``torch.special`` namespace.

Most entries are the registered ops under their torch.special names (``expit`` is
``sigmoid``, ``gammaln`` is ``lgamma``, ``psi`` is ``digamma`` ...); the ``special_*`` ops
(erfcx, log_ndtr, ndtr, ndtri, entr, i0e, i1, i1e, xlog1py, zeta) live only here.

Example::

    >>> import ember
    >>> ember.special.ndtr(ember.tensor([0.0]))
    tensor([0.5000])
"""
from __future__ import annotations

from typing import Any

from ember.ops.registry import COMPOSITES, OPS
from ember.tensor import Tensor

__all__ = ["expit", "logit", "erf", "erfc", "erfcx", "erfinv", "log_ndtr", "ndtr", "ndtri",
           "xlogy", "xlog1py", "entr", "softmax", "log_softmax", "logsumexp", "gammaln",
           "digamma", "psi", "polygamma", "multigammaln", "i0", "i0e", "i1", "i1e", "zeta",
           "sinc", "round", "expm1", "exp2", "log1p"]


def _op(name: str) -> Any:
    return OPS[name].function


expit = _op("sigmoid")
erf = _op("erf")
erfc = _op("erfc")
erfinv = _op("erfinv")
gammaln = _op("lgamma")
digamma = _op("digamma")
psi = digamma
i0 = _op("i0")
sinc = _op("sinc")
expm1 = _op("expm1")
exp2 = _op("exp2")
log1p = _op("log1p")
xlogy = _op("xlogy")
polygamma = _op("polygamma")
erfcx = _op("special_erfcx")
log_ndtr = _op("special_log_ndtr")
ndtr = _op("special_ndtr")
ndtri = _op("special_ndtri")
entr = _op("special_entr")
i0e = _op("special_i0e")
i1 = _op("special_i1")
i1e = _op("special_i1e")


def logit(input: Tensor, eps: float | None = None) -> Tensor:
    """``log(p / (1 - p))``; ``eps`` clamps ``p`` to ``[eps, 1 - eps]`` first."""
    return OPS["logit"].function(input, eps)


def xlog1py(input: Any, other: Any) -> Tensor:
    """``input * log1p(other)``, 0 where ``input`` is 0 (unless ``other`` is NaN)."""
    return OPS["special_xlog1py"].function(input, other)


def zeta(input: Any, other: Any) -> Tensor:
    """Hurwitz zeta ``sum_k (k + other) ** -input``."""
    return OPS["special_zeta"].function(input, other)


def multigammaln(input: Tensor, p: int) -> Tensor:
    """Multivariate log-gamma of dimension ``p`` (``ember.mvlgamma``)."""
    return COMPOSITES["mvlgamma"](input, p)


def softmax(input: Tensor, dim: int, *, dtype: Any = None) -> Tensor:
    """``exp(x) / sum(exp(x), dim)``."""
    return OPS["softmax"].function(input, dim, dtype)


def log_softmax(input: Tensor, dim: int, *, dtype: Any = None) -> Tensor:
    """``x - logsumexp(x, dim)``."""
    return OPS["log_softmax"].function(input, dim, dtype)


def logsumexp(input: Tensor, dim: Any, keepdim: bool = False) -> Tensor:
    """``log(sum(exp(input), dim))``, computed stably."""
    return OPS["logsumexp"].function(input, dim, keepdim)


def round(input: Tensor, *, decimals: int = 0) -> Tensor:  # noqa: A001 - torch's name
    """Round half to even, to ``decimals`` places."""
    return OPS["round"].function(input, decimals)
