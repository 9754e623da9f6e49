"""The layer classes of ``ember.nn``, one family per file (``module``, ``container``,
``linear``, ``activation``, ``conv`` ...); their ``__all__`` names are re-exported."""
from ember._discover import export_all as _export_all

__all__ = _export_all(__name__, __path__, globals())
