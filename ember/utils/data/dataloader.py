"""``DataLoader``: a dataset, a sampler and a collate function, iterated in this process or in
worker processes.

The loader only composes: the sampler says which keys, the fetcher (in ``_worker``) reads the
samples and collates them, and one of two iterators drives it. ``_SingleProcessDataLoaderIter``
fetches inline. ``_MultiProcessingDataLoaderIter`` starts ``num_workers`` processes, keeps
``prefetch_factor * num_workers`` batches in flight (round-robin), and hands batches back in
sampler order (or as they are ready with ``in_order=False``).

Each worker has an index queue and its own result pipe. The main process waits on the pipes
*and* on the workers' process sentinels together, so a worker that dies (signal, segfault,
``os._exit``) is reported at once, with its id and the batch it was loading, rather than after a
polling interval. Batches carry large arrays by shared-memory reference (``_shm``).
"""
from __future__ import annotations

import atexit
import collections.abc
import copy
import itertools
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Generic, Iterable, TypeVar

import ember
from ember.utils.data import _collate, _shm, _worker
from ember.utils.data.dataset import Dataset, IterableDataset
from ember.utils.data.sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler

__all__ = ["DataLoader", "get_worker_info", "default_collate", "default_convert"]

_T_co = TypeVar("_T_co", covariant=True)

default_collate = _collate.default_collate
default_convert = _collate.default_convert
get_worker_info = _worker.get_worker_info

# Seconds a worker gets to exit on its own at shutdown before it is terminated.
_SHUTDOWN_GRACE = 1.0


class _DatasetKind:
    Map = 0
    Iterable = 1


class _InfiniteConstantSampler(Sampler):
    """The sampler of an ``IterableDataset``: the dataset decides when to stop, so this yields
    ``None`` for ever."""

    def __iter__(self):
        while True:
            yield None


def _default_context() -> Any:
    """fork on Linux (as torch, and cheap: workers share the parent's pages), unless the user
    chose a start method globally."""
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None and sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context(method)


def _accelerator_available() -> bool:
    try:
        return bool(ember.cuda.is_available())
    except (ImportError, AttributeError):
        return False


def _pin(data: Any) -> Any:
    """``pin_memory()`` on every tensor in a (nested) batch, keeping the structure (torch's
    rules: mutable containers are copied and updated, tuples keep their type)."""
    if isinstance(data, ember.Tensor) or hasattr(data, "pin_memory"):
        return data.pin_memory()
    if isinstance(data, (str, bytes)):
        return data
    if isinstance(data, collections.abc.Mapping):
        try:
            if isinstance(data, collections.abc.MutableMapping):
                clone = copy.copy(data)
                clone.update({k: _pin(v) for k, v in data.items()})
                return clone
            return type(data)({k: _pin(v) for k, v in data.items()})
        except TypeError:
            return {k: _pin(v) for k, v in data.items()}
    if isinstance(data, tuple):
        if hasattr(data, "_fields"):  # namedtuple
            return type(data)(*(_pin(v) for v in data))
        return type(data)(_pin(v) for v in data)
    if isinstance(data, collections.abc.Sequence):
        try:
            if isinstance(data, collections.abc.MutableSequence):
                clone = copy.copy(data)
                for i, item in enumerate(data):
                    clone[i] = _pin(item)
                return clone
            return type(data)([_pin(v) for v in data])
        except TypeError:
            return [_pin(v) for v in data]
    return data


class DataLoader(Generic[_T_co]):
    r"""Combines a dataset and a sampler, and iterates over batches of the dataset.

    Supports map-style and iterable-style datasets, single- or multi-process loading,
    custom loading order and automatic batching (collation), with torch's arguments and rules.

    Args:
        dataset (Dataset): dataset from which to load the data.
        batch_size (int, optional): samples per batch (default: ``1``); ``None`` turns
            automatic batching off.
        shuffle (bool, optional): reshuffle the data at every epoch (default: ``False``).
        sampler (Sampler or Iterable, optional): the order of keys; excludes ``shuffle``.
        batch_sampler (Sampler or Iterable, optional): like ``sampler`` but yields lists of
            keys; excludes ``batch_size``, ``shuffle``, ``sampler`` and ``drop_last``.
        num_workers (int, optional): worker processes (default: ``0``, load in this process).
        collate_fn (Callable, optional): merges a list of samples into a batch (default:
            :func:`default_collate`, or :func:`default_convert` without batching).
        pin_memory (bool, optional): copy tensors into page-locked memory before returning
            them (needs a GPU; otherwise a warning and a no-op, as in torch).
        drop_last (bool, optional): drop the last incomplete batch (default: ``False``).
        timeout (numeric, optional): seconds to wait for a batch from the workers before
            raising (default: ``0``, wait for ever).
        worker_init_fn (Callable, optional): called with the worker id in each worker after
            seeding and before loading.
        multiprocessing_context (str or context, optional): start method for the workers
            (default: ``fork`` on Linux).
        generator (Generator, optional): generator for the ``RandomSampler`` and the workers'
            base seed.
        prefetch_factor (int, optional, keyword-only): batches loaded in advance by each
            worker (default: ``2`` with workers, else ``None``).
        persistent_workers (bool, optional): keep the workers alive between epochs.
        pin_memory_device (str, optional): deprecated in torch; accepted and ignored.
        in_order (bool, optional): ``False`` yields batches as soon as they are ready,
            not in sampler order (default: ``True``).

    Example::

        >>> ds = TensorDataset(ember.arange(10.0), ember.arange(10))
        >>> for x, y in DataLoader(ds, batch_size=4, shuffle=True, num_workers=2):
        ...     print(x.shape, y.dtype)
    """

    dataset: Dataset
    batch_size: int | None
    num_workers: int
    pin_memory: bool
    drop_last: bool
    timeout: float
    sampler: Any
    pin_memory_device: str
    prefetch_factor: int | None
    __initialized = False

    def __init__(self, dataset: Dataset[_T_co], batch_size: int | None = 1,
                 shuffle: bool | None = None, sampler: Sampler | Iterable | None = None,
                 batch_sampler: Sampler | Iterable | None = None, num_workers: int = 0,
                 collate_fn: Callable | None = None, pin_memory: bool = False,
                 drop_last: bool = False, timeout: float = 0,
                 worker_init_fn: Callable[[int], None] | None = None,
                 multiprocessing_context: Any = None, generator: ember.Generator | None = None,
                 *, prefetch_factor: int | None = None, persistent_workers: bool = False,
                 pin_memory_device: str = "", in_order: bool = True) -> None:
        # Option clashes are rejected here, with torch's messages, before any work starts.
        if num_workers < 0:
            raise ValueError("num_workers option should be non-negative; "
                             "use num_workers=0 to disable multiprocessing.")
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError("prefetch_factor option could only be specified in multiprocessing."
                             "let num_workers > 0 to enable multiprocessing, otherwise set "
                             "prefetch_factor to None.")
        elif num_workers > 0 and prefetch_factor is None:
            prefetch_factor = 2
        elif prefetch_factor is not None and prefetch_factor < 0:
            raise ValueError("prefetch_factor option should be non-negative")
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers option needs num_workers > 0")

        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.pin_memory_device = pin_memory_device
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = multiprocessing_context
        self.in_order = in_order

        if isinstance(dataset, IterableDataset):
            self._dataset_kind = _DatasetKind.Iterable
            # An iterable dataset owns its order: samplers and shuffling cannot apply.
            if shuffle not in {False, None}:
                raise ValueError("DataLoader with IterableDataset: expected unspecified shuffle "
                                 f"option, but got shuffle={shuffle}")
            if sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified sampler "
                                 f"option, but got sampler={sampler}")
            if batch_sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified "
                                 f"batch_sampler option, but got batch_sampler={batch_sampler}")
        else:
            shuffle = bool(shuffle)
            self._dataset_kind = _DatasetKind.Map

        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, "
                                 "shuffle, sampler, and drop_last")
            batch_size = None
            drop_last = False
        elif batch_size is None and drop_last:
            raise ValueError("batch_size=None option disables auto-batching and is mutually "
                             "exclusive with drop_last")

        if sampler is None:
            if self._dataset_kind == _DatasetKind.Iterable:
                sampler = _InfiniteConstantSampler()
            elif shuffle:
                sampler = RandomSampler(dataset, generator=generator)  # type: ignore[arg-type]
            else:
                sampler = SequentialSampler(dataset)  # type: ignore[arg-type]
        if batch_size is not None and batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)

        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.generator = generator
        if collate_fn is None:
            collate_fn = default_collate if self._auto_collation else default_convert
        self.collate_fn = collate_fn
        self.persistent_workers = persistent_workers
        self.__initialized = True
        self._IterableDataset_len_called: int | None = None
        self._iterator: _BaseDataLoaderIter | None = None
        self.check_worker_number_rationality()

    # ------------------------------------------------------------------ configuration
    @property
    def multiprocessing_context(self) -> Any:
        return self.__multiprocessing_context

    @multiprocessing_context.setter
    def multiprocessing_context(self, multiprocessing_context: Any) -> None:
        if multiprocessing_context is not None:
            if self.num_workers > 0:
                if isinstance(multiprocessing_context, str):
                    valid_start_methods = multiprocessing.get_all_start_methods()
                    if multiprocessing_context not in valid_start_methods:
                        raise ValueError(
                            "multiprocessing_context option should specify a valid start method "
                            f"in {valid_start_methods!r}, but got "
                            f"multiprocessing_context={multiprocessing_context!r}")
                    multiprocessing_context = multiprocessing.get_context(multiprocessing_context)
                if not isinstance(multiprocessing_context, multiprocessing.context.BaseContext):
                    raise TypeError("multiprocessing_context option should be a valid context "
                                    "object or a string specifying the start method, but got "
                                    f"multiprocessing_context={multiprocessing_context}")
            else:
                raise ValueError("multiprocessing_context can only be used with multi-process "
                                 "loading (num_workers > 0), but got "
                                 f"num_workers={self.num_workers}")
        self.__multiprocessing_context = multiprocessing_context

    def __setattr__(self, attr: str, val: Any) -> None:
        if self.__initialized and attr in ("batch_size", "batch_sampler", "sampler", "drop_last",
                                           "dataset", "persistent_workers"):
            raise ValueError(f"{attr} attribute should not be set after "
                             f"{self.__class__.__name__} is initialized")
        super().__setattr__(attr, val)

    @property
    def _auto_collation(self) -> bool:
        return self.batch_sampler is not None

    @property
    def _index_sampler(self) -> Any:
        # What the iterator draws from: batches of keys with auto-collation, else keys.
        return self.batch_sampler if self._auto_collation else self.sampler

    # ------------------------------------------------------------------ iteration
    def _get_iterator(self) -> "_BaseDataLoaderIter":
        if self.num_workers == 0:
            return _SingleProcessDataLoaderIter(self)
        self.check_worker_number_rationality()
        return _MultiProcessingDataLoaderIter(self)

    def __iter__(self) -> "_BaseDataLoaderIter":
        # Persistent workers: one iterator for the loader's lifetime, reset each epoch.
        if self.persistent_workers and self.num_workers > 0:
            if self._iterator is None:
                self._iterator = self._get_iterator()
            else:
                self._iterator._reset(self)
            return self._iterator
        return self._get_iterator()

    def __len__(self) -> int:
        if self._dataset_kind == _DatasetKind.Iterable:
            # Remembered so the iterator can warn when the dataset yields more than it claimed.
            length = self._IterableDataset_len_called = len(self.dataset)  # type: ignore
            if self.batch_size is not None:
                if self.drop_last:
                    length = length // self.batch_size
                else:
                    length = math.ceil(length / self.batch_size)
            return length
        return len(self._index_sampler)

    def check_worker_number_rationality(self) -> None:
        """Warn when more workers are requested than this process may use CPUs."""
        if not self.num_workers:
            return
        cpuset_checked = hasattr(os, "sched_getaffinity")
        try:
            max_workers = len(os.sched_getaffinity(0)) if cpuset_checked else os.cpu_count()
        except OSError:
            max_workers = os.cpu_count()
        if max_workers is None or self.num_workers > max_workers:
            suggest = (
                f"Our suggested max number of worker in current system is {max_workers}"
                f"{'' if cpuset_checked else ' (`cpuset` is not taken into account)'}, which is "
                "smaller than what this DataLoader is going to create."
                if max_workers is not None else
                "DataLoader is not able to compute a suggested max number of worker in current "
                "system.")
            warnings.warn(f"This DataLoader will create {self.num_workers} worker processes in "
                          f"total. {suggest} Please be aware that excessive worker creation might "
                          "get DataLoader running slow or even freeze, lower the worker number to "
                          "avoid potential slowness/freeze if necessary.", stacklevel=2)


class _BaseDataLoaderIter:
    def __init__(self, loader: DataLoader) -> None:
        self._dataset = loader.dataset
        self._dataset_kind = loader._dataset_kind
        self._IterableDataset_len_called = loader._IterableDataset_len_called
        self._auto_collation = loader._auto_collation
        self._drop_last = loader.drop_last
        self._index_sampler = loader._index_sampler
        self._num_workers = loader.num_workers
        if loader.pin_memory and loader.pin_memory_device:
            warnings.warn("pin_memory_device is deprecated, the current accelerator will be used "
                          f"as the device,ignore pin_memory_device='{loader.pin_memory_device}'.",
                          stacklevel=3)
        accelerator = _accelerator_available()
        if loader.pin_memory and not accelerator:
            warnings.warn("'pin_memory' argument is set as true but no accelerator is found, then "
                          "device pinned memory won't be used.", stacklevel=3)
        self._pin_memory = loader.pin_memory and accelerator
        self._timeout = loader.timeout
        self._collate_fn = loader.collate_fn
        self._sampler_iter = iter(self._index_sampler)
        # Drawn from the loader's generator (or the global RNG) per iterator, i.e. per epoch
        # without persistent workers; workers seed from base_seed + worker_id.
        self._base_seed = int(ember.empty((), dtype=ember.int64)
                              .random_(generator=loader.generator).item())
        self._persistent_workers = loader.persistent_workers
        self._num_yielded = 0

    def __iter__(self) -> "_BaseDataLoaderIter":
        return self

    def _reset(self, loader: DataLoader, first_iter: bool = False) -> None:
        self._sampler_iter = iter(self._index_sampler)
        self._num_yielded = 0
        self._IterableDataset_len_called = loader._IterableDataset_len_called

    def _next_index(self) -> Any:
        return next(self._sampler_iter)  # may raise StopIteration

    def _next_data(self) -> Any:
        raise NotImplementedError  # each iterator kind defines it

    def __next__(self) -> Any:
        data = self._next_data()
        self._num_yielded += 1
        if (self._dataset_kind == _DatasetKind.Iterable
                and self._IterableDataset_len_called is not None
                and self._num_yielded > self._IterableDataset_len_called):
            msg = (f"Length of IterableDataset {self._dataset} was reported to be "
                   f"{self._IterableDataset_len_called}(when accessing len(dataloader)), but "
                   f"{self._num_yielded} samples have been fetched. ")
            if self._num_workers > 0:
                msg += ("For multiprocessing data-loading, this could be caused by not properly "
                        "configuring the IterableDataset replica at each worker. Please see "
                        "https://pytorch.org/docs/stable/data.html#torch.utils.data."
                        "IterableDataset for examples.")
            warnings.warn(msg, stacklevel=2)
        return data

    def __len__(self) -> int:
        return len(self._index_sampler)

    def __getstate__(self) -> Any:
        raise NotImplementedError(f"{self.__class__.__name__} cannot be pickled")


class _SingleProcessDataLoaderIter(_BaseDataLoaderIter):
    def __init__(self, loader: DataLoader) -> None:
        super().__init__(loader)
        if self._timeout != 0:
            raise AssertionError("_SingleProcessDataLoaderIter requires timeout == 0")
        self._dataset_fetcher = _worker.create_fetcher(
            self._dataset_kind == _DatasetKind.Iterable, self._dataset, self._auto_collation,
            self._collate_fn, self._drop_last)

    def _next_data(self) -> Any:
        index = self._next_index()  # may raise StopIteration
        data = self._dataset_fetcher.fetch(index)  # may raise StopIteration
        if self._pin_memory:
            data = _pin(data)
        return data


# Live multi-process iterators, shut down at interpreter exit so no worker or segment outlives
# the program (daemonic workers alone would be killed without the shared-memory cleanup).
_LIVE_ITERATORS: "weakref.WeakSet[_MultiProcessingDataLoaderIter]" = weakref.WeakSet()
_atexit_lock = threading.Lock()
_atexit_registered = [False]


def _shutdown_all_at_exit() -> None:
    for it in list(_LIVE_ITERATORS):
        it._shutdown_workers()


class _MultiProcessingDataLoaderIter(_BaseDataLoaderIter):
    def __init__(self, loader: DataLoader) -> None:
        super().__init__(loader)
        self._prefetch_factor = loader.prefetch_factor
        self._in_order = loader.in_order
        if self._prefetch_factor is None or self._prefetch_factor <= 0:
            raise AssertionError("prefetch_factor must be greater than 0 for "
                                 "MultiProcessingDataLoaderIter")
        ctx = loader.multiprocessing_context or _default_context()
        self._shutdown = False
        self._shm_tag = _shm.new_tag() if _shm.available() else None
        if self._shm_tag is not None:
            _shm.register(self._shm_tag)
        # per worker: shared-memory segments the main process released, to send back for reuse
        self._released: list[list] = [[] for _ in range(self._num_workers)]
        self._workers_done_event = ctx.Event()
        self._index_pipes: list = []
        self._result_conns: list = []
        self._workers: list = []
        with _atexit_lock:
            if not _atexit_registered[0]:
                atexit.register(_shutdown_all_at_exit)
                _atexit_registered[0] = True
        _LIVE_ITERATORS.add(self)
        try:
            for i in range(self._num_workers):
                # Plain pipes, not multiprocessing.Queue: a send is done when it returns (no
                # feeder thread that a garbage-collection finaliser could stop before our exit
                # message goes out), and closing our end is itself an exit signal (EOF).
                index_reader, index_writer = ctx.Pipe(duplex=False)
                reader, writer = ctx.Pipe(duplex=False)
                w = ctx.Process(
                    target=_worker._worker_loop,
                    args=(self._dataset_kind == _DatasetKind.Iterable, self._dataset,
                          index_reader, writer, self._workers_done_event, self._auto_collation,
                          self._collate_fn, self._drop_last, self._base_seed,
                          loader.worker_init_fn, i, self._num_workers,
                          self._persistent_workers, self._shm_tag))
                w.daemon = True
                w.start()
                # Only the worker may hold the write end: then EOF on the pipe means the
                # worker is gone, and workers started later do not inherit it.
                writer.close()
                index_reader.close()
                self._index_pipes.append(index_writer)
                self._result_conns.append(reader)
                self._workers.append(w)
        except BaseException:
            self._shutdown_workers()
            raise
        self._reset(loader, first_iter=True)

    # ------------------------------------------------------------------ epoch bookkeeping
    def _reset(self, loader: DataLoader, first_iter: bool = False) -> None:
        super()._reset(loader, first_iter)
        self._send_idx = 0  # index of the next task to send to a worker
        self._rcvd_idx = 0  # index of the next task to return from __next__
        # task index -> (worker_id,) while in flight, (worker_id, data) once received early
        self._task_info: dict[int, tuple] = {}
        self._tasks_outstanding = 0
        self._workers_status = [True] * self._num_workers
        self._workers_num_tasks = [0] * self._num_workers
        self._worker_queue_idx_cycle = itertools.cycle(range(self._num_workers))
        if not first_iter:
            # Persistent workers: every worker acknowledges the new epoch; results still in
            # flight from the abandoned one are dropped (which releases their shared memory).
            for wid in range(self._num_workers):
                self._send_index(wid, _worker._ResumeIteration())
            pending = self._num_workers
            while pending > 0:
                return_idx, _data, _wid = self._get_data()
                if isinstance(return_idx, _worker._ResumeIteration):
                    pending -= 1
        for _ in range(self._prefetch_factor * self._num_workers):
            self._try_put_index()

    def _try_put_index(self) -> None:
        max_tasks = self._prefetch_factor * self._num_workers
        try:
            index = self._next_index()
        except StopIteration:
            return
        for _ in range(self._num_workers):  # find the next active worker, if any
            worker_queue_idx = next(self._worker_queue_idx_cycle)
            if self._workers_status[worker_queue_idx]:
                if self._in_order:
                    break
                # out of order: keep the load balanced so a slow worker is not buried
                if self._workers_num_tasks[worker_queue_idx] < max_tasks // sum(
                        self._workers_status):
                    break
        else:
            return
        if self._shm_tag is not None:
            _shm.take_released(self._shm_tag, self._released)
        freed, self._released[worker_queue_idx] = self._released[worker_queue_idx], []
        self._task_info[self._send_idx] = (worker_queue_idx,)
        self._send_index(worker_queue_idx, (self._send_idx, index, freed))
        self._workers_num_tasks[worker_queue_idx] += 1
        self._tasks_outstanding += 1
        self._send_idx += 1

    def _send_index(self, wid: int, message: Any) -> None:
        try:
            self._index_pipes[wid].send(message)
        except OSError:  # BrokenPipeError: the worker is gone; report it like any death
            self._worker_failed(wid)

    # ------------------------------------------------------------------ receiving
    def _listening(self) -> list[int]:
        """Workers expected to be alive and able to send."""
        return [i for i in range(self._num_workers)
                if (self._workers_status[i] or self._persistent_workers)
                and self._result_conns[i] is not None]

    def _get_data(self) -> tuple:
        """The next message from any worker as ``(task_idx, data, worker_id)``; raises if a
        worker died or nothing arrived within ``timeout``."""
        deadline = time.monotonic() + self._timeout if self._timeout > 0 else None
        while True:
            ids = self._listening()
            if not ids:
                raise RuntimeError("DataLoader: no worker is left to produce data")
            conns = {self._result_conns[i]: i for i in ids}
            sentinels = {self._workers[i].sentinel: i for i in ids}
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait([*conns, *sentinels], timeout=remaining)
            if not ready:
                self._raise_timeout()
            # Data first: a worker may have sent its last batch just before exiting.
            for obj in ready:
                wid = conns.get(obj)
                if wid is None:
                    continue
                try:
                    payload = obj.recv_bytes()
                except (EOFError, OSError):
                    self._worker_failed(wid)
                idx, data = _shm.loads(payload)
                return idx, data, wid
            for obj in ready:
                wid = sentinels.get(obj)
                if wid is not None and not self._result_conns[wid].poll():
                    self._worker_failed(wid)

    def _pending_tasks(self, wid: int) -> list[int]:
        return sorted(i for i, info in self._task_info.items() if info[0] == wid and len(info) == 1)

    def _raise_timeout(self) -> None:
        info = self._task_info.get(self._rcvd_idx)
        if self._in_order and info is not None and len(info) == 1:
            who = f" waiting for batch {self._rcvd_idx} from worker {info[0]}"
        else:
            busy = sorted({info[0] for info in self._task_info.values() if len(info) == 1})
            who = f" waiting for worker(s) {busy}"
        raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds{who} "
                           "(worker is stuck or too slow; raise `timeout` if it is just slow)")

    def _worker_failed(self, wid: int) -> None:
        """Report a worker that exited while it was expected to work, then shut down."""
        w = self._workers[wid]
        w.join(timeout=1.0)  # the pipe may close a moment before the process is reaped
        code = w.exitcode
        pending = self._pending_tasks(wid)
        if pending:
            where = f" Worker {wid} was loading batch index {pending[0]}"
            where += f" ({len(pending) - 1} more queued)." if len(pending) > 1 else "."
        else:
            where = f" Worker {wid} had no batch in progress."
        if code is not None and code < 0:
            try:
                name = signal.strsignal(-code) or signal.Signals(-code).name
            except (ValueError, AttributeError):
                name = f"signal {-code}"
            msg = f"DataLoader worker (pid {w.pid}) is killed by signal: {name}."
        else:
            msg = f"DataLoader worker (pid(s) {w.pid}) exited unexpectedly with exit code {code}."
        self._shutdown_workers()
        raise RuntimeError(msg + where)

    # ------------------------------------------------------------------ the main loop
    def _next_data(self) -> Any:
        while True:
            # Skip tasks of workers that ended (an exhausted IterableDataset shard) without
            # producing them.
            while self._rcvd_idx < self._send_idx:
                info = self._task_info.get(self._rcvd_idx, None)
                if info:
                    worker_id = info[0]
                    if len(info) == 2 or self._workers_status[worker_id]:
                        break
                    del self._task_info[self._rcvd_idx]
                self._rcvd_idx += 1
            else:
                if not self._persistent_workers:
                    self._shutdown_workers()
                raise StopIteration

            if len(self._task_info[self._rcvd_idx]) == 2:  # arrived earlier, out of order
                worker_id, data = self._task_info.pop(self._rcvd_idx)
                self._rcvd_idx += 1
                return self._process_data(data, worker_id)

            if self._shutdown or self._tasks_outstanding <= 0:
                raise AssertionError("Invalid iterator state: shutdown or no outstanding tasks "
                                     "when fetching next data")
            idx, data, _wid = self._get_data()
            if isinstance(idx, _worker._ResumeIteration):
                continue  # a late acknowledgement; nothing to do
            self._tasks_outstanding -= 1
            if self._dataset_kind == _DatasetKind.Iterable and isinstance(
                    data, _worker._IterableDatasetStopIteration):
                if self._persistent_workers:
                    self._workers_status[data.worker_id] = False
                else:
                    self._mark_worker_as_unavailable(data.worker_id)
                self._try_put_index()
                continue
            if idx != self._rcvd_idx:
                if not self._in_order:
                    worker_id = self._task_info.pop(idx)[0]
                    return self._process_data(data, worker_id)
                self._task_info[idx] += (data,)
            else:
                worker_id = self._task_info.pop(idx)[0]
                self._rcvd_idx += 1
                return self._process_data(data, worker_id)

    def _process_data(self, data: Any, worker_idx: int) -> Any:
        self._workers_num_tasks[worker_idx] -= 1
        self._try_put_index()
        if isinstance(data, _worker.ExceptionWrapper):
            data.reraise()
        if self._pin_memory:
            data = _pin(data)
        return data

    # ------------------------------------------------------------------ shutdown
    def _mark_worker_as_unavailable(self, worker_id: int, shutdown: bool = False) -> None:
        # Tell the worker to exit; it must not be sent more indices.
        try:
            self._index_pipes[worker_id].send(None)
        except (OSError, ValueError):
            pass  # already closed (e.g. by a finaliser): the worker sees end of file instead
        self._workers_status[worker_id] = False

    def _shutdown_workers(self) -> None:
        """Stop the workers, reap them (no zombies) and unlink any shared-memory segment they
        left behind. Idempotent; safe from ``__del__`` and at interpreter exit."""
        if getattr(self, "_shutdown", True):
            return
        self._shutdown = True
        try:
            self._workers_done_event.set()
            for wid in range(len(self._workers)):
                self._mark_worker_as_unavailable(wid, shutdown=True)
            for q in self._index_pipes:
                q.close()
            # Drain results while waiting, so a worker blocked writing a big message can finish
            # and see the exit message; the bytes are dropped unread.
            deadline = time.monotonic() + _SHUTDOWN_GRACE
            while time.monotonic() < deadline:
                alive = [w for w in self._workers if w.is_alive()]
                if not alive:
                    break
                conns = [c for c in self._result_conns if c is not None]
                ready = multiprocessing.connection.wait(
                    conns + [w.sentinel for w in alive], timeout=0.05)
                for obj in ready:
                    if obj in conns:
                        try:
                            obj.recv_bytes()
                        except (EOFError, OSError):
                            self._close_conn(obj)
        finally:
            for w in self._workers:
                if w.is_alive():
                    w.terminate()
                w.join(timeout=_SHUTDOWN_GRACE)
                if w.is_alive():  # ignored SIGTERM
                    w.kill()
                    w.join()
            for c in list(self._result_conns):
                if c is not None:
                    self._close_conn(c)
            for q in self._index_pipes:
                q.close()
            if self._shm_tag is not None:
                _shm.cleanup(self._shm_tag)
            _LIVE_ITERATORS.discard(self)

    def _close_conn(self, conn: Any) -> None:
        for i, c in enumerate(self._result_conns):
            if c is conn:
                self._result_conns[i] = None
        try:
            conn.close()
        except OSError:
            pass

    def __del__(self) -> None:
        try:
            self._shutdown_workers()
        except Exception:
            # at interpreter teardown modules may already be gone; atexit did the work
            pass
