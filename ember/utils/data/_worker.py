"""The worker process side of the multi-process loader: seeding, ``get_worker_info``, the
fetchers and the loop that turns index messages into batches.

Protocol (main -> worker, on the worker's index pipe): ``(send_idx, index, freed)`` to fetch
(``freed``: shared-memory segments the main process is done with, see ``_shm``),
``_ResumeIteration()`` to start a new epoch with persistent workers, ``None`` to exit; end of
file on the pipe (the main process closed it, or died) also means exit.
Worker -> main, on the worker's own result pipe: one pickled ``(send_idx, data)`` per task,
where ``data`` is the batch, an ``ExceptionWrapper`` or ``_IterableDatasetStopIteration``.
Large arrays in the batch travel by shared-memory reference (see ``_shm``).
"""
from __future__ import annotations

import os
import random
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import ember
from ember.utils.data import _shm

__all__ = ["WorkerInfo", "get_worker_info", "ExceptionWrapper"]

# How often (seconds) an idle worker checks that the main process is still alive.
MP_STATUS_CHECK_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    r"""What a worker knows about itself, returned by :func:`get_worker_info` in a worker.

    Attributes:
        id (int): the worker's index, ``0 .. num_workers - 1``.
        num_workers (int): the total number of workers.
        seed (int): the seed of this worker's RNGs (``base_seed + id``).
        dataset: this worker's copy of the dataset.
        rng: per-thread RNG state in torch's thread workers; always ``None`` here, since
            ember's workers are processes with their own global RNGs.
        worker_method (str): ``"multiprocessing"``.
    """

    id: int
    num_workers: int
    seed: int
    dataset: Any
    rng: Any = None
    worker_method: str | None = "multiprocessing"


_worker_info: WorkerInfo | None = None


def get_worker_info() -> WorkerInfo | None:
    r"""Information about the current loader worker, or ``None`` in the main process.

    Use it in ``Dataset.__iter__``/``__getitem__`` or a ``worker_init_fn`` to give each worker a
    different shard of an :class:`IterableDataset`, or to seed other libraries from
    ``info.seed``.

    Example::

        >>> def __iter__(self):
        ...     info = get_worker_info()
        ...     start, step = (0, 1) if info is None else (info.id, info.num_workers)
        ...     return iter(self.items[start::step])
    """
    return _worker_info


class ExceptionWrapper:
    """An exception and its formatted traceback, picklable, to be re-raised in the main process
    with torch's ``Caught X in DataLoader worker process N. Original Traceback...`` text."""

    def __init__(self, exc_info: tuple | None = None, where: str = "in background") -> None:
        if exc_info is None:
            exc_info = sys.exc_info()
        self.exc_type = exc_info[0]
        # the text only: the traceback object itself holds frames and cannot be pickled
        self.exc_msg = "".join(traceback.format_exception(*exc_info))
        self.where = where

    def reraise(self) -> None:
        msg = f"Caught {self.exc_type.__name__} {self.where}.\nOriginal {self.exc_msg}"
        if self.exc_type is KeyError:
            # KeyError repr()s its argument, which would print the traceback on one line
            msg = _KeyErrorMessage(msg)
        elif getattr(self.exc_type, "message", None):
            raise self.exc_type(message=msg)
        try:
            exception = self.exc_type(msg)
        except Exception:
            # the exception type needs other constructor arguments
            raise RuntimeError(msg) from None
        raise exception


class _KeyErrorMessage(str):
    def __repr__(self) -> str:
        return str(self)


@dataclass(frozen=True)
class _IterableDatasetStopIteration:
    worker_id: int


@dataclass(frozen=True)
class _ResumeIteration:
    seed: int | None = None


class _MapDatasetFetcher:
    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool) -> None:
        self.dataset = dataset
        self.auto_collation = auto_collation
        self.collate_fn = collate_fn
        self.drop_last = drop_last

    def fetch(self, possibly_batched_index: Any) -> Any:
        if self.auto_collation:
            getitems = getattr(self.dataset, "__getitems__", None)
            if getitems:
                data = getitems(possibly_batched_index)
            else:
                data = [self.dataset[idx] for idx in possibly_batched_index]
        else:
            data = self.dataset[possibly_batched_index]
        return self.collate_fn(data)


class _IterableDatasetFetcher:
    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool) -> None:
        self.dataset = dataset
        self.auto_collation = auto_collation
        self.collate_fn = collate_fn
        self.drop_last = drop_last
        self.dataset_iter = iter(dataset)
        self.ended = False

    def fetch(self, possibly_batched_index: Any) -> Any:
        if self.ended:
            raise StopIteration
        if self.auto_collation:
            data = []
            for _ in possibly_batched_index:
                try:
                    data.append(next(self.dataset_iter))
                except StopIteration:
                    self.ended = True
                    break
            if len(data) == 0 or (self.drop_last and len(data) < len(possibly_batched_index)):
                raise StopIteration
        else:
            data = next(self.dataset_iter)
        return self.collate_fn(data)


def create_fetcher(is_iterable: bool, dataset: Any, auto_collation: bool, collate_fn: Callable,
                   drop_last: bool) -> Any:
    cls = _IterableDatasetFetcher if is_iterable else _MapDatasetFetcher
    return cls(dataset, auto_collation, collate_fn, drop_last)


def _generate_state(base_seed: int, worker_id: int) -> list[int]:
    """NumPy's legacy seed for a worker: torch's SeedSequence-style hash of
    ``(worker_id, base_seed)``, so consecutive workers get unrelated NumPy streams."""
    INIT_A, MULT_A = 0x43B0D7E5, 0x931E8875
    INIT_B, MULT_B = 0x8B51F9DD, 0x58F38DED
    MIX_MULT_L, MIX_MULT_R = 0xCA01F9DD, 0x4973F715
    XSHIFT = 16
    MASK32 = 0xFFFFFFFF
    entropy = [worker_id, base_seed & MASK32, base_seed >> 32, 0]
    pool = [0] * 4
    hash_const_a = INIT_A

    def hash_(value: int) -> int:
        nonlocal hash_const_a
        value = (value ^ hash_const_a) & MASK32
        hash_const_a = (hash_const_a * MULT_A) & MASK32
        value = (value * hash_const_a) & MASK32
        return (value ^ (value >> XSHIFT)) & MASK32

    def mix(x: int, y: int) -> int:
        result = ((MIX_MULT_L * x) & MASK32) - ((MIX_MULT_R * y) & MASK32)
        result &= MASK32
        return (result ^ (result >> XSHIFT)) & MASK32

    for i in range(4):
        pool[i] = hash_(entropy[i])
    for i_src in range(4):
        for i_dst in range(4):
            if i_src != i_dst:
                pool[i_dst] = mix(pool[i_dst], hash_(pool[i_src]))
    hash_const_b = INIT_B
    state = []
    for i_dst in range(4):
        v = (pool[i_dst] ^ hash_const_b) & MASK32
        hash_const_b = (hash_const_b * MULT_B) & MASK32
        v = (v * hash_const_b) & MASK32
        state.append((v ^ (v >> XSHIFT)) & MASK32)
    return state


def _seed_worker(base_seed: int, worker_id: int) -> int:
    """Seed ``random``, ember and NumPy's global RNG for this worker; returns the seed."""
    seed = base_seed + worker_id
    # one compute thread per worker, as torch: the workers are the parallelism
    ember.set_num_threads(1)
    random.seed(seed)
    ember.manual_seed(seed)
    np.random.seed(_generate_state(base_seed, worker_id))
    return seed


def _send(conn: Any, idx: Any, data: Any, worker_id: int) -> None:
    """Send one result; a batch that cannot be pickled becomes an error for the main process
    instead of a silent hang."""
    try:
        payload = _shm.dumps((idx, data))
    except Exception:
        wrapped = ExceptionWrapper(where=f"in DataLoader worker process {worker_id} "
                                         "(pickling the batch)")
        try:
            payload = _shm.dumps((idx, wrapped))
        except Exception:
            # the exception type itself is not picklable: keep its text only
            wrapped.exc_type = RuntimeError
            payload = _shm.dumps((idx, wrapped))
    conn.send_bytes(payload)


def _worker_loop(is_iterable: bool, dataset: Any, index_conn: Any, result_conn: Any,
                 done_event: Any, auto_collation: bool, collate_fn: Callable, drop_last: bool,
                 base_seed: int, init_fn: Callable | None, worker_id: int, num_workers: int,
                 persistent_workers: bool, shm_tag: str | None) -> None:
    """The body of a worker process (see the module docstring for the protocol)."""
    global _worker_info
    try:
        seed = _seed_worker(base_seed, worker_id)
        _worker_info = WorkerInfo(id=worker_id, num_workers=num_workers, seed=seed,
                                  dataset=dataset)
        _shm.enable_in_worker(shm_tag, worker_id)
        init_exception = None
        fetcher = None
        try:
            if init_fn is not None:
                init_fn(worker_id)
            fetcher = create_fetcher(is_iterable, dataset, auto_collation, collate_fn, drop_last)
        except Exception:
            # reported with the first task, so the main process raises it in order
            init_exception = ExceptionWrapper(where=f"in DataLoader worker process {worker_id}")
        iteration_end = False
        manager_pid = os.getppid()
        while True:
            try:
                if not index_conn.poll(MP_STATUS_CHECK_INTERVAL):
                    if os.getppid() != manager_pid:
                        break  # the main process died: nobody will read our results
                    continue
                r = index_conn.recv()
            except (EOFError, OSError):
                break  # the main process closed our index pipe: shut down
            if isinstance(r, _ResumeIteration):
                # a new epoch with persistent workers: acknowledge, then start afresh
                _send(result_conn, r, None, worker_id)
                iteration_end = False
                fetcher = create_fetcher(is_iterable, dataset, auto_collation, collate_fn,
                                         drop_last)
                continue
            if r is None:
                break
            if done_event.is_set() or iteration_end:
                continue  # draining until the exit message
            idx, index, freed = r
            if freed:
                _shm.release(freed)  # segments of earlier batches, ready for reuse
            if init_exception is not None:
                data: Any = init_exception
                init_exception = None
            else:
                try:
                    data = fetcher.fetch(index)
                except Exception as e:
                    if isinstance(e, StopIteration) and is_iterable:
                        data = _IterableDatasetStopIteration(worker_id)
                        iteration_end = True
                    else:
                        data = ExceptionWrapper(
                            where=f"in DataLoader worker process {worker_id}")
            _send(result_conn, idx, data, worker_id)
            del data, idx, index, r  # free the batch before blocking on the next index
    except (KeyboardInterrupt, BrokenPipeError, EOFError, OSError):
        # Ctrl-C goes to the main process; a closed pipe means the main process shut down.
        pass
    finally:
        # Every batch this worker sent has been read by now (results of a pipe arrive in
        # order, before our exit), so our segment names can go; this also covers a main
        # process that died without cleaning up.
        _shm.unlink_all()
        for conn in (result_conn, index_conn):
            try:
                conn.close()
            except OSError:
                pass
