"""torch's ``_utils.worker`` path; the implementation is ``ember.utils.data._worker``."""
from ember.utils.data._worker import (  # noqa: F401
    ExceptionWrapper, WorkerInfo, _generate_state, _IterableDatasetStopIteration,
    _ResumeIteration, _worker_loop, get_worker_info)
