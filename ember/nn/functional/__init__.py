"""``ember.nn.functional``: every layer's functional form (torch.nn.functional's names).

Each family lives in its own file here (activation, loss, conv, pooling, normalization,
sparse, attention, vision ...); their ``__all__`` names are re-exported.
"""
from ember._discover import export_all as _export_all

__all__ = _export_all(__name__, __path__, globals())
