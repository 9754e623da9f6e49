"""``ember.utils.data._utils``: the module paths torch documents under
``torch.utils.data._utils`` (e.g. ``_utils.collate.collate`` and
``_utils.collate.default_collate_fn_map`` for extending ``default_collate``), re-exporting
ember's implementation modules."""
from ember.utils.data._utils import collate, fetch, worker  # noqa: F401
from ember.utils.data._worker import MP_STATUS_CHECK_INTERVAL  # noqa: F401
