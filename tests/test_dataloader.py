"""ember.utils.data.DataLoader: ordering and options against torch's DataLoader, seeding,
worker processes, shared-memory transport, failure reporting and clean shutdown.

Worker tests use tiny datasets and short timeouts; every blocking wait is bounded.
"""
from __future__ import annotations

import gc
import mmap
import os
import pickle
import random
import signal
import time
import warnings

import numpy as np
import pytest

import ember
from ember.utils import data as ed
from ember.utils.data import _shm

torch = pytest.importorskip("torch")
td = torch.utils.data


# ---------------------------------------------------------------------- datasets
def make_ds(base, n=10):
    """A map-style dataset of (float vector, int label, str) samples for either framework."""
    class DS(base):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return np.full(3, i, np.float32), i, f"s{i}"
    return DS()


def make_stream(base, start, end, shard=True):
    """An IterableDataset over range(start, end), sharded across workers by worker info."""
    info_fn = ed.get_worker_info if base is ed.IterableDataset else td.get_worker_info

    class Stream(base):
        def __iter__(self):
            info = info_fn()
            if info is None or not shard:
                return iter(range(start, end))
            per = int(np.ceil((end - start) / info.num_workers))
            lo = start + info.id * per
            return iter(range(lo, min(lo + per, end)))
    return Stream()


class Seeds(ed.Dataset):
    """Reports, per sample, the worker's id and seed and one draw from each global RNG."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        info = ed.get_worker_info()
        return {"id": info.id if info else -1, "seed": info.seed if info else -1,
                "ember": float(ember.rand(1)), "np": float(np.random.rand()),
                "py": random.random()}


class Failing(ed.Dataset):
    """Misbehaves at index ``bad`` in one of several ways."""

    def __init__(self, how, bad=5, n=12):
        self.how, self.bad, self.n = how, bad, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            if self.how == "raise":
                raise ValueError(f"bad sample {i}")
            if self.how == "keyerror":
                raise KeyError("missing")
            if self.how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.how == "segfault":
                import ctypes
                import faulthandler
                faulthandler.disable()  # pytest's handler would print the worker's stack
                ctypes.string_at(0)
            if self.how == "exit":
                os._exit(3)
            if self.how == "hang":
                time.sleep(30)
        return i


class Big(ed.Dataset):
    """Samples of 64 KiB each, so a batch is well above the shared-memory threshold."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return np.full((16, 32, 32), i, np.float32), i


class Slow(ed.Dataset):
    def __init__(self, slow_index, delay):
        self.slow_index, self.delay = slow_index, delay

    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == self.slow_index:
            time.sleep(self.delay)
        return i


def canon(obj):
    if isinstance(obj, (ember.Tensor, torch.Tensor)):
        return (str(obj.dtype).split(".")[-1], tuple(obj.shape), obj.tolist())
    if isinstance(obj, dict):
        return {k: canon(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [canon(v) for v in obj])
    return obj


def backing(t):
    """The object that owns a CPU tensor's memory."""
    base = t.numpy()
    while isinstance(base, np.ndarray):
        base = base.base
    return base


def shm_entries():
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith("ember_dl_")) \
        if os.path.isdir("/dev/shm") else []


def gone(pid):
    """True once the process is reaped (no zombie left behind)."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture(autouse=True)
def no_leaks():
    before = set(shm_entries())
    yield
    leaked = set(shm_entries()) - before
    if leaked:  # a loader may still wait for collection: give it the chance first
        gc.collect()
        leaked = set(shm_entries()) - before
    assert not leaked, f"shared-memory segments leaked: {leaked}"


# ---------------------------------------------------------------------- ordering vs torch
@pytest.mark.parametrize("kw", [
    dict(batch_size=3), dict(batch_size=3, drop_last=True), dict(batch_size=1),
    dict(batch_size=None), dict(batch_size=4, num_workers=2), dict(batch_size=3, num_workers=3),
    dict(batch_size=None, num_workers=2), dict(batch_size=2, num_workers=2, prefetch_factor=1),
])
def test_map_dataset_matches_torch(kw):
    e = [canon(b) for b in ed.DataLoader(make_ds(ed.Dataset), **kw)]
    t = [canon(b) for b in td.DataLoader(make_ds(td.Dataset), **kw)]
    assert e == t
    assert len(ed.DataLoader(make_ds(ed.Dataset), **kw)) == len(td.DataLoader(make_ds(td.Dataset), **kw))


def test_samplers_and_batch_sampler_match_torch():
    idx = [9, 0, 4, 4, 1]
    e = list(ed.DataLoader(make_ds(ed.Dataset), sampler=idx, batch_size=2))
    t = list(td.DataLoader(make_ds(td.Dataset), sampler=idx, batch_size=2))
    assert [canon(b) for b in e] == [canon(b) for b in t]
    bs = [[1, 2], [7], [0, 3, 5]]
    for nw in (0, 2):
        e = list(ed.DataLoader(make_ds(ed.Dataset), batch_sampler=bs, num_workers=nw))
        t = list(td.DataLoader(make_ds(td.Dataset), batch_sampler=bs))
        assert [canon(b) for b in e] == [canon(b) for b in t]


@pytest.mark.parametrize("nw", [0, 2])
@pytest.mark.parametrize("batch_size,drop_last", [(2, False), (3, True), (None, False)])
def test_iterable_dataset_matches_torch(nw, batch_size, drop_last):
    e = list(ed.DataLoader(make_stream(ed.IterableDataset, 3, 10), num_workers=nw,
                           batch_size=batch_size, drop_last=drop_last))
    t = list(td.DataLoader(make_stream(td.IterableDataset, 3, 10), num_workers=nw,
                           batch_size=batch_size, drop_last=drop_last))
    assert [canon(b) for b in e] == [canon(b) for b in t]


def test_iterable_dataset_sharding_and_duplication():
    # sharded by get_worker_info: every item exactly once
    out = ed.DataLoader(make_stream(ed.IterableDataset, 0, 23), num_workers=3, batch_size=None)
    assert sorted(int(x) for x in out) == list(range(23))
    # not sharded: each worker yields the whole stream, as torch documents
    out = ed.DataLoader(make_stream(ed.IterableDataset, 0, 4, shard=False), num_workers=2,
                        batch_size=None)
    assert sorted(int(x) for x in out) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_option_clashes_match_torch():
    ds_e, ds_t = make_ds(ed.Dataset), make_ds(td.Dataset)
    st_e, st_t = make_stream(ed.IterableDataset, 0, 3), make_stream(td.IterableDataset, 0, 3)
    cases = [
        dict(batch_sampler=[[0]], batch_size=2), dict(batch_sampler=[[0]], shuffle=True),
        dict(batch_sampler=[[0]], sampler=[0]), dict(batch_sampler=[[0]], drop_last=True),
        dict(sampler=[0], shuffle=True), dict(batch_size=None, drop_last=True),
        dict(num_workers=-1), dict(timeout=-1), dict(prefetch_factor=2),
        dict(num_workers=1, prefetch_factor=-1), dict(persistent_workers=True),
        dict(multiprocessing_context="spawn"), dict(num_workers=1, multiprocessing_context="nope"),
        dict(num_workers=1, multiprocessing_context=3),
    ]
    for kw in cases:
        with pytest.raises(Exception) as te:
            td.DataLoader(ds_t, **kw)
        with pytest.raises(te.type) as ee:
            ed.DataLoader(ds_e, **kw)
        assert str(ee.value) == str(te.value), kw
    for kw in [dict(shuffle=True), dict(sampler=[0]), dict(batch_sampler=[[0]])]:
        with pytest.raises(ValueError) as te:
            td.DataLoader(st_t, **kw)
        with pytest.raises(ValueError) as ee:
            ed.DataLoader(st_e, **kw)
        assert str(ee.value).split("got")[0] == str(te.value).split("got")[0]
    dl = ed.DataLoader(ds_e, batch_size=2)
    with pytest.raises(ValueError, match="batch_size attribute should not be set after"):
        dl.batch_size = 3


def test_shuffle_determinism_and_worker_parity():
    ds = make_ds(ed.Dataset, 20)

    def run(nw, seed):
        g = ember.Generator().manual_seed(seed)
        return [canon(b) for b in ed.DataLoader(ds, batch_size=4, shuffle=True, generator=g,
                                                num_workers=nw)]
    a = run(0, 1)
    assert run(0, 1) == a and run(0, 2) != a
    assert run(2, 1) == a  # workers give exactly the single-process batches
    labels = [i for b in a for i in b[1][1][2]]
    assert sorted(labels) == list(range(20))
    ember.manual_seed(4)
    b1 = [canon(b) for b in ed.DataLoader(ds, batch_size=4, shuffle=True)]
    ember.manual_seed(4)
    assert [canon(b) for b in ed.DataLoader(ds, batch_size=4, shuffle=True)] == b1


def test_worker_seeds_and_info():
    g = ember.Generator().manual_seed(0)
    dl = ed.DataLoader(Seeds(), batch_size=None, num_workers=2, generator=g)
    epoch1, epoch2 = list(dl), list(dl)
    assert ed.get_worker_info() is None  # main process
    assert {int(s["id"]) for s in epoch1} == {0, 1}
    seeds = {int(s["id"]): int(s["seed"]) for s in epoch1}
    assert seeds[1] == seeds[0] + 1  # base_seed + worker_id
    for key in ("ember", "np", "py"):  # augmentations never repeat across workers
        vals = [float(s[key]) for s in epoch1]
        assert len(set(vals)) == len(vals), key
    # a new epoch draws a new base seed
    assert {int(s["seed"]) for s in epoch2}.isdisjoint(seeds.values())
    # the loader's generator fixes the base seed
    again = list(ed.DataLoader(Seeds(), batch_size=None, num_workers=2,
                               generator=ember.Generator().manual_seed(0)))
    assert [float(s["ember"]) for s in again] == [float(s["ember"]) for s in epoch1]


def test_numpy_worker_seed_hash_matches_torch():
    from torch.utils.data._utils.worker import _generate_state
    for base in [0, 1, 2**32 - 1, 2**32 + 5, 5995351910379070738]:
        for wid in [0, 1, 7]:
            assert ed._worker._generate_state(base, wid) == _generate_state(base, wid)


def _record_init(worker_id):
    info = ed.get_worker_info()
    assert info.id == worker_id
    info.dataset.tag = f"init{worker_id}"


class Tagged(ed.Dataset):
    tag = "unset"

    def __len__(self):
        return 4

    def __getitem__(self, i):
        info = ed.get_worker_info()
        return f"{self.tag}/{info.num_workers}/{type(info.dataset).__name__}"


def test_worker_init_fn_and_worker_dataset_copy():
    out = list(ed.DataLoader(Tagged(), batch_size=None, num_workers=2, worker_init_fn=_record_init))
    assert out == ["init0/2/Tagged", "init1/2/Tagged"] * 2
    info = ed._worker.WorkerInfo(id=0, num_workers=1, seed=0, dataset=None)
    with pytest.raises(AttributeError):
        info.id = 3


def test_in_order_false_yields_ready_batches():
    # batch 0 is slow: in order it comes first, out of order it comes last
    kw = dict(batch_size=1, num_workers=2)
    ordered = [int(b) for b in ed.DataLoader(Slow(0, 0.8), **kw)]
    assert ordered == list(range(8))
    unordered = [int(b) for b in ed.DataLoader(Slow(0, 0.8), in_order=False, **kw)]
    assert sorted(unordered) == list(range(8)) and unordered[0] != 0


def test_pin_memory_accepted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for nw in (0, 2):
            e = [canon(b) for b in ed.DataLoader(make_ds(ed.Dataset), batch_size=4, pin_memory=True,
                                                 num_workers=nw)]
            t = [canon(b) for b in td.DataLoader(make_ds(td.Dataset), batch_size=4, pin_memory=True)]
            assert e == t


def make_sized_stream(base, true_len, claimed_len):
    class Sized(base):
        def __iter__(self):
            return iter(range(true_len))

        def __len__(self):
            return claimed_len
    return Sized()


def test_len_and_iterable_len_warning():
    dl = ed.DataLoader(make_sized_stream(ed.IterableDataset, 5, 3), batch_size=None)
    assert len(dl) == 3
    with pytest.warns(UserWarning, match="was reported to be 3"):
        list(dl)
    for bs, drop in [(2, False), (2, True), (4, False), (None, False)]:
        e = ed.DataLoader(make_sized_stream(ed.IterableDataset, 7, 7), batch_size=bs,
                          drop_last=drop)
        t = td.DataLoader(make_sized_stream(td.IterableDataset, 7, 7), batch_size=bs,
                          drop_last=drop)
        assert len(e) == len(t)
        assert [canon(b) for b in e] == [canon(b) for b in t]


# ---------------------------------------------------------------------- shared memory
def test_large_batches_travel_through_shared_memory():
    before = shm_entries()
    dl = ed.DataLoader(Big(), batch_size=4, num_workers=2)
    for k, (x, y) in enumerate(dl):
        assert x.shape == (4, 16, 32, 32) and x.dtype == ember.float32
        expect = np.repeat(np.arange(4 * k, 4 * k + 4, dtype=np.float32), 16 * 32 * 32)
        np.testing.assert_array_equal(x.numpy().ravel(), expect)
        assert y.tolist() == list(range(4 * k, 4 * k + 4))
        # the batch's memory is a mapping of a shared segment, not an unpickled copy
        assert isinstance(backing(x), mmap.mmap)
    assert shm_entries() == before  # received segments are unlinked at once


class Frames(ed.Dataset):
    def __len__(self):
        return 65  # 32 batches of 2, then a short one

    def __getitem__(self, i):
        return np.full((16, 32, 32), i, np.float32)


def test_shared_memory_segments_are_recycled():
    names = set()
    for k, b in enumerate(ed.DataLoader(Frames(), batch_size=2, num_workers=2)):
        names |= set(_shm._ATTACHED.keys())
        assert b[:, 0, 0, 0].tolist() == list(range(2 * k, min(2 * k + 2, 65)))
        del b  # released: its segment goes back to its worker for a later batch
    assert k == 32
    assert len(names) <= 12  # not one fresh segment per batch (33)


def test_without_shared_memory_batches_are_pickled(monkeypatch):
    # platforms without /dev/shm: the same loader, batches travel as ordinary pickles
    monkeypatch.setattr(_shm, "available", lambda: False)
    for k, (x, y) in enumerate(ed.DataLoader(Big(), batch_size=8, num_workers=2)):
        assert x[:, 0, 0, 0].tolist() == list(range(8 * k, 8 * k + 8))
        assert not isinstance(backing(x), mmap.mmap)


def test_pickled_message_is_small():
    batch = ed.default_collate([Big()[i] for i in range(4)])  # 256 KiB of float32
    plain = pickle.dumps(batch)
    tag = _shm.new_tag()
    _shm.enable_in_worker(tag, 0)
    try:
        msg = _shm.dumps((0, batch))
        arr = np.arange(50_000, dtype=np.int64)
        msg2 = _shm.dumps(arr)
        small = _shm.dumps(np.arange(10))
    finally:
        _shm.enable_in_worker(None, 0)
    assert len(plain) > 250_000 and len(msg) < 1_000
    assert len(msg2) < 500 and len(small) > 80  # small arrays still go inline
    idx, back = pickle.loads(msg)
    np.testing.assert_array_equal(back[0].numpy(), batch[0].numpy())
    assert back[1].tolist() == batch[1].tolist() and back[0].dtype == ember.float32
    np.testing.assert_array_equal(pickle.loads(msg2), arr)
    np.testing.assert_array_equal(pickle.loads(small), np.arange(10))
    assert _shm.cleanup(tag) == 2


def test_bfloat16_and_views_through_shared_memory():
    x = ember.arange(0, 40000, dtype=ember.float32).to(ember.bfloat16)
    view = ember.arange(0, 60000, dtype=ember.float64).reshape(300, 200)[::2, 5:105]
    tag = _shm.new_tag()
    _shm.enable_in_worker(tag, 0)
    try:
        msg = _shm.dumps([x, view, view])
    finally:
        _shm.enable_in_worker(None, 0)
    xb, vb, vb2 = pickle.loads(msg)
    assert xb.dtype == ember.bfloat16 and xb.tolist() == x.tolist()
    assert vb.tolist() == view.tolist() and vb2.tolist() == view.tolist()
    assert vb2 is vb and _shm.cleanup(tag) == 2  # pickle memo: a repeated object goes once


# ---------------------------------------------------------------------- failures
def test_worker_exception_is_reraised_with_traceback():
    dl = ed.DataLoader(Failing("raise", bad=5), batch_size=2, num_workers=2)
    it = iter(dl)
    assert next(it).tolist() == [0, 1] and next(it).tolist() == [2, 3]
    t0 = time.monotonic()
    with pytest.raises(ValueError) as ei:
        next(it)
    assert time.monotonic() - t0 < 2
    msg = str(ei.value)
    assert msg.startswith("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback")
    assert "bad sample 5" in msg and "__getitem__" in msg
    assert next(it).tolist() == [6, 7]  # the worker survives and loading goes on
    del it
    with pytest.raises(KeyError, match="Caught KeyError in DataLoader worker process"):
        list(ed.DataLoader(Failing("keyerror", bad=0), num_workers=1))


def test_worker_init_fn_exception():
    def bad_init(worker_id):
        raise RuntimeError(f"init failed in {worker_id}")
    with pytest.raises(RuntimeError, match="in DataLoader worker process 0[\\s\\S]*init failed in 0"):
        list(ed.DataLoader(make_ds(ed.Dataset), num_workers=1, worker_init_fn=bad_init))


@pytest.mark.parametrize("how,pattern", [
    ("sigkill", r"DataLoader worker \(pid \d+\) is killed by signal: Killed"),
    ("segfault", r"DataLoader worker \(pid \d+\) is killed by signal: Segmentation fault"),
    ("exit", r"DataLoader worker \(pid\(s\) \d+\) exited unexpectedly with exit code 3"),
])
def test_dead_worker_is_reported_fast(how, pattern):
    dl = ed.DataLoader(Failing(how, bad=6), batch_size=2, num_workers=2, timeout=20)
    it = iter(dl)
    pids = [w.pid for w in it._workers]
    # Batches before the bad one arrive in order. The death may be noticed while receiving
    # batch 3 or already while sending worker 1 its next index (earlier batches may still be in
    # flight then): either way the error names the dead worker and the batch it was loading.
    got = []
    t0 = None
    with pytest.raises(RuntimeError, match=pattern) as ei:
        for _ in range(4):
            t0 = time.monotonic()
            got.append(next(it).tolist())
    assert got == [[0, 1], [2, 3], [4, 5]][:len(got)] and len(got) >= 1
    assert time.monotonic() - t0 < 2.0
    assert "Worker 1 was loading batch index 3" in str(ei.value)
    assert all(gone(p) for p in pids)  # the other worker is shut down and reaped too


def test_worker_killed_from_outside_while_main_is_busy():
    it = iter(ed.DataLoader(make_ds(ed.Dataset, 40), batch_size=1, num_workers=2, timeout=20))
    next(it)
    victim = it._workers[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(5)  # main is "busy" elsewhere while the worker dies
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"DataLoader worker \(pid {victim.pid}\) is killed by "
                                           r"signal: Killed\. Worker 1 "):
        for _ in range(40):
            next(it)
    assert time.monotonic() - t0 < 2.0
    assert gone(it._workers[0].pid)


def test_hanging_worker_times_out():
    dl = ed.DataLoader(Failing("hang", bad=2), batch_size=2, num_workers=2, timeout=0.5)
    it = iter(dl)
    assert next(it).tolist() == [0, 1]
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"DataLoader timed out after 0.5 seconds waiting for "
                                           r"batch 1 from worker 1"):
        next(it)
    assert time.monotonic() - t0 < 2.0
    pids = [w.pid for w in it._workers]
    t0 = time.monotonic()
    del it
    gc.collect()
    assert time.monotonic() - t0 < 5.0 and all(gone(p) for p in pids)


# ---------------------------------------------------------------------- lifecycle
def test_workers_exit_after_epoch_and_on_early_delete():
    it = iter(ed.DataLoader(Big(), batch_size=2, num_workers=2))
    pids = [w.pid for w in it._workers]
    list(it)
    assert all(gone(p) for p in pids)
    it = iter(ed.DataLoader(Big(), batch_size=2, num_workers=2))
    next(it)  # prefetched batches are in flight
    pids = [w.pid for w in it._workers]
    del it
    gc.collect()
    assert all(gone(p) for p in pids)


def test_persistent_workers():
    dl = ed.DataLoader(make_ds(ed.Dataset), batch_size=3, num_workers=2, persistent_workers=True)
    expect = [canon(b) for b in td.DataLoader(make_ds(td.Dataset), batch_size=3)]
    assert [canon(b) for b in dl] == expect
    pids = [w.pid for w in dl._iterator._workers]
    assert [canon(b) for b in dl] == expect
    it = iter(dl)
    next(it)  # abandon this epoch midway
    assert [canon(b) for b in dl] == expect
    assert [w.pid for w in dl._iterator._workers] == pids
    assert all(w.is_alive() for w in dl._iterator._workers)
    # persistent iterable workers restart their streams each epoch
    dls = ed.DataLoader(make_stream(ed.IterableDataset, 0, 7), batch_size=2, num_workers=2,
                        persistent_workers=True)
    assert sorted(i for b in dls for i in b.tolist()) == list(range(7))
    assert sorted(i for b in dls for i in b.tolist()) == list(range(7))
    its = [dl._iterator, dls._iterator]
    all_pids = pids + [w.pid for w in dls._iterator._workers]
    del dl, dls
    for i in its:
        i._shutdown_workers()
    assert all(gone(p) for p in all_pids)


def test_spawn_start_method():
    # rows of 80 KB, so the batches also take the shared-memory path under spawn
    x = ember.arange(6 * 20000, dtype=ember.float32).reshape(6, 20000)
    ds = ed.TensorDataset(x, ember.arange(6))
    out = list(ed.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn",
                             timeout=60))
    assert [xb.tolist() for xb, _ in out] == [x[:4].tolist(), x[4:].tolist()]
    assert [y.tolist() for _, y in out] == [[0, 1, 2, 3], [4, 5]]


class Unpicklable(ed.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return lambda: i  # a lambda cannot cross the process boundary


def test_unpicklable_batch_is_an_error_not_a_hang():
    with pytest.raises(Exception, match="in DataLoader worker process 0 \\(pickling the batch\\)"):
        list(ed.DataLoader(Unpicklable(), batch_size=None, num_workers=1, timeout=10))
