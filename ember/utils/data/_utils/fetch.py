"""torch's ``_utils.fetch`` path; the fetchers live in ``ember.utils.data._worker``."""
from ember.utils.data._worker import (  # noqa: F401
    _IterableDatasetFetcher, _MapDatasetFetcher)
