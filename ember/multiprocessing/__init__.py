"""``ember.multiprocessing``: Python's multiprocessing with tensors shared, not copied.

Everything of :mod:`multiprocessing` is here (Process, Queue, SimpleQueue, Pool,
get_context, set_start_method ...). Importing this module registers a reducer so that CPU
tensors put on a Queue (or passed to a spawned process) travel as a handle to shared memory,
and adds ``Tensor.share_memory_()``/``Tensor.is_shared()``. ``Module.share_memory()`` moves
a model's parameters there, e.g. for Hogwild training.
"""
from __future__ import annotations

import multiprocessing as _mp
import sys as _sys
from multiprocessing import *  # noqa: F401,F403

from ember.multiprocessing.reductions import init_reductions, is_shared, share_memory_  # noqa
from ember.multiprocessing.spawn import (  # noqa: F401
    ProcessContext, ProcessException, ProcessExitedException, ProcessRaisedException,
    SpawnContext, spawn, start_processes)

__all__ = list(_mp.__all__) + ["spawn", "start_processes", "ProcessContext", "SpawnContext",
                               "ProcessRaisedException", "ProcessExitedException",
                               "get_sharing_strategy", "set_sharing_strategy",
                               "get_all_sharing_strategies"]

init_reductions()

# file descriptors are passed between processes (torch's default on Linux); 'file_system'
# is accepted for compatibility and maps onto the same mechanism
_sharing_strategy = ["file_descriptor"]


def get_all_sharing_strategies() -> set[str]:
    return {"file_descriptor", "file_system"} if _sys.platform != "darwin" else {"file_system"}


def get_sharing_strategy() -> str:
    return _sharing_strategy[0]


def set_sharing_strategy(new_strategy: str) -> None:
    if new_strategy not in get_all_sharing_strategies():
        raise ValueError(f"invalid sharing strategy {new_strategy!r}")
    _sharing_strategy[0] = new_strategy
