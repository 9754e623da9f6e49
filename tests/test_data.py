"""ember.utils.data: datasets, samplers and collation against torch.utils.data.

Deterministic behaviour (sequential/batch/distributed index sequences without shuffling,
collate structures, dtypes and values, error types and messages) is compared with torch.
Random samplers use ember's generator streams, so for them the tests check the properties
torch guarantees (permutations, coverage, lengths, padding) rather than torch's numbers.
"""
from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

import ember
from ember.utils import data as ed

torch = pytest.importorskip("torch")
td = torch.utils.data

Point = collections.namedtuple("Point", ["x", "y"])


# ---------------------------------------------------------------------- helpers
def canon(obj):
    """A comparable, framework-neutral description of a (nested) batch."""
    if isinstance(obj, (ember.Tensor, torch.Tensor)):
        dt = str(obj.dtype).split(".")[-1]
        return ("T", dt, tuple(obj.shape), obj.tolist())
    if isinstance(obj, np.ndarray):
        return ("np", obj.dtype.str, obj.tolist())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return (type(obj).__name__, tuple(canon(v) for v in obj))
    if isinstance(obj, dict):
        return (type(obj).__name__, {k: canon(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [canon(v) for v in obj])
    return ("py", type(obj).__name__, obj)


def both(fn_name, sample_fn):
    """Run an ember and a torch function on the same data built for each framework."""
    e = getattr(ed, fn_name)(sample_fn(ember))
    t = getattr(td, fn_name)(sample_fn(torch))
    return e, t


def raises_like(fn_e, fn_t):
    """Both raise the same exception type with the same message."""
    with pytest.raises(Exception) as te:
        fn_t()
    with pytest.raises(te.type) as ee:
        fn_e()
    assert str(ee.value) == str(te.value)
    return ee.value


# ---------------------------------------------------------------------- datasets
def test_tensor_dataset():
    x = np.arange(12.0).reshape(6, 2)
    e = ed.TensorDataset(ember.tensor(x), ember.arange(6))
    t = td.TensorDataset(torch.tensor(x), torch.arange(6))
    assert len(e) == len(t) == 6
    for i in (0, 5, -1, slice(1, 4)):
        assert canon(e[i]) == canon(t[i])
    raises_like(lambda: ed.TensorDataset(ember.ones(3), ember.ones(4)),
                lambda: td.TensorDataset(torch.ones(3), torch.ones(4)))


def test_concat_dataset_and_add():
    e = ed.TensorDataset(ember.arange(3)) + ed.TensorDataset(ember.arange(10, 15))
    t = td.TensorDataset(torch.arange(3)) + td.TensorDataset(torch.arange(10, 15))
    assert isinstance(e, ed.ConcatDataset) and e.cumulative_sizes == t.cumulative_sizes
    assert len(e) == len(t) == 8
    for i in [0, 2, 3, 7, -1, -8]:
        assert canon(e[i]) == canon(t[i])
    raises_like(lambda: e[-9], lambda: t[-9])
    raises_like(lambda: ed.ConcatDataset([]), lambda: td.ConcatDataset([]))
    with pytest.warns(FutureWarning):
        assert e.cummulative_sizes == [3, 8]


class _Stream:
    """An IterableDataset over a range, for either framework's base class."""

    @staticmethod
    def make(base, start, end):
        class S(base):
            def __iter__(self):
                return iter(range(start, end))

            def __len__(self):
                return end - start
        return S()


def test_iterable_and_chain_dataset():
    e = _Stream.make(ed.IterableDataset, 0, 3) + _Stream.make(ed.IterableDataset, 5, 7)
    t = _Stream.make(td.IterableDataset, 0, 3) + _Stream.make(td.IterableDataset, 5, 7)
    assert isinstance(e, ed.ChainDataset)
    assert list(e) == list(t) and len(e) == len(t) == 5
    bad_e = ed.ChainDataset([ed.TensorDataset(ember.ones(2))])
    bad_t = td.ChainDataset([td.TensorDataset(torch.ones(2))])
    raises_like(lambda: list(bad_e), lambda: list(bad_t))
    raises_like(lambda: ed.ConcatDataset([_Stream.make(ed.IterableDataset, 0, 1)]),
                lambda: td.ConcatDataset([_Stream.make(td.IterableDataset, 0, 1)]))


def test_subset():
    base_e, base_t = ed.TensorDataset(ember.arange(10)), td.TensorDataset(torch.arange(10))
    e, t = ed.Subset(base_e, [7, 2, 5]), td.Subset(base_t, [7, 2, 5])
    assert len(e) == 3
    assert canon(e[1]) == canon(t[1])
    assert canon(e.__getitems__([0, 2])) == canon(t.__getitems__([0, 2]))

    class BadE(ed.Subset):
        def __getitem__(self, idx):
            return 0

    class BadT(td.Subset):
        def __getitem__(self, idx):
            return 0
    ee = pytest.raises(NotImplementedError, BadE, base_e, [0])
    tt = pytest.raises(NotImplementedError, BadT, base_t, [0])
    assert str(ee.value).replace("BadE", "X") == str(tt.value).replace("BadT", "X")


def test_stack_dataset():
    a, b = list(range(4)), ["a", "b", "c", "d"]
    for args, kwargs in [((a, b), {}), ((), {"num": a, "txt": b})]:
        e, t = ed.StackDataset(*args, **kwargs), td.StackDataset(*args, **kwargs)
        assert len(e) == len(t) == 4
        assert canon(e[2]) == canon(t[2])
        assert canon(e.__getitems__([3, 0])) == canon(t.__getitems__([3, 0]))
    raises_like(lambda: ed.StackDataset(a, x=b), lambda: td.StackDataset(a, x=b))
    raises_like(lambda: ed.StackDataset(a, b[:2]), lambda: td.StackDataset(a, b[:2]))
    raises_like(lambda: ed.StackDataset(x=a, y=b[:2]), lambda: td.StackDataset(x=a, y=b[:2]))
    raises_like(lambda: ed.StackDataset(), lambda: td.StackDataset())
    # a nested dataset's batched fetch is used
    sub_e = ed.Subset(ed.TensorDataset(ember.arange(10)), [9, 8, 7, 6])
    sub_t = td.Subset(td.TensorDataset(torch.arange(10)), [9, 8, 7, 6])
    assert canon(ed.StackDataset(sub_e, a).__getitems__([0, 3])) == \
        canon(td.StackDataset(sub_t, a).__getitems__([0, 3]))


@pytest.mark.parametrize("n,lengths", [(10, [3, 7]), (30, [0.3, 0.3, 0.4]), (11, [0.5, 0.5]),
                                       (7, [0.1, 0.2, 0.7]), (5, [0.25, 0.25, 0.25, 0.25])])
def test_random_split_lengths_and_partition(n, lengths):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = ed.random_split(range(n), lengths, generator=ember.Generator().manual_seed(1))
        t = td.random_split(range(n), lengths, generator=torch.Generator().manual_seed(1))
    assert [len(s) for s in e] == [len(s) for s in t]  # torch's remainder distribution
    flat = [i for s in e for i in s]
    assert sorted(flat) == list(range(n))  # a partition of the dataset
    again = ed.random_split(range(n), lengths, generator=ember.Generator().manual_seed(1))
    assert [list(s) for s in again] == [list(s) for s in e]  # reproducible from the seed


def test_random_split_errors_and_warning():
    raises_like(lambda: ed.random_split(range(10), [3, 3]),
                lambda: td.random_split(range(10), [3, 3]))
    raises_like(lambda: ed.random_split(range(10), [1.5, -0.5]),
                lambda: td.random_split(range(10), [1.5, -0.5]))
    with pytest.warns(UserWarning, match="Length of split at index 1 is 0"):
        ed.random_split(range(1), [0.5, 0.5])
    ember.manual_seed(3)
    a = [list(s) for s in ed.random_split(range(8), [4, 4])]
    ember.manual_seed(3)
    assert [list(s) for s in ed.random_split(range(8), [4, 4])] == a  # default generator


# ---------------------------------------------------------------------- samplers
def test_sequential_and_batch_sampler_parity():
    for n in [0, 1, 7, 10]:
        assert list(ed.SequentialSampler(range(n))) == list(td.SequentialSampler(range(n)))
        for bs in [1, 3, 10, 11]:
            for drop in [False, True]:
                e = ed.BatchSampler(ed.SequentialSampler(range(n)), bs, drop)
                t = td.BatchSampler(td.SequentialSampler(range(n)), bs, drop)
                assert list(e) == list(t) and len(e) == len(t)
    for bad in [0, -1, 2.0, True]:
        raises_like(lambda: ed.BatchSampler(range(3), bad, False),
                    lambda: td.BatchSampler(range(3), bad, False))
    raises_like(lambda: ed.BatchSampler(range(3), 2, 1), lambda: td.BatchSampler(range(3), 2, 1))


def test_random_sampler_properties():
    n = 10
    g = ember.Generator().manual_seed(0)
    s = ed.RandomSampler(range(n), generator=g)
    first, second = list(s), list(s)
    assert sorted(first) == sorted(second) == list(range(n)) and first != second
    assert len(s) == n
    # more samples than the dataset: whole permutations, then a partial one
    s = ed.RandomSampler(range(n), num_samples=25, generator=g)
    out = list(s)
    assert len(out) == 25 and sorted(out[:10]) == list(range(10))
    assert sorted(out[10:20]) == list(range(10)) and len(set(out[20:])) == 5
    s = ed.RandomSampler(range(n), replacement=True, num_samples=70, generator=g)
    out = list(s)
    assert len(out) == len(s) == 70 and set(out) <= set(range(n))
    # without a generator the global seed decides, as in torch
    ember.manual_seed(5)
    a = list(ed.RandomSampler(range(20)))
    ember.manual_seed(5)
    assert list(ed.RandomSampler(range(20))) == a
    assert list(ed.RandomSampler(range(20), generator=ember.Generator().manual_seed(7))) == \
        list(ed.RandomSampler(range(20), generator=ember.Generator().manual_seed(7)))
    raises_like(lambda: ed.RandomSampler(range(3), replacement=1),
                lambda: td.RandomSampler(range(3), replacement=1))
    raises_like(lambda: ed.RandomSampler(range(3), num_samples=0),
                lambda: td.RandomSampler(range(3), num_samples=0))
    raises_like(lambda: ed.RandomSampler([], num_samples=None),
                lambda: td.RandomSampler([], num_samples=None))


def test_subset_random_sampler():
    idx = [3, 9, 4, 100]
    s = ed.SubsetRandomSampler(idx, generator=ember.Generator().manual_seed(0))
    out = list(s)
    assert sorted(out) == sorted(idx) and len(s) == 4


def test_weighted_random_sampler():
    g = ember.Generator().manual_seed(0)
    w = [0.0, 1.0, 0.0, 3.0]
    s = ed.WeightedRandomSampler(w, 400, generator=g)
    out = list(s)
    assert len(out) == len(s) == 400 and set(out) == {1, 3}
    assert 0.65 < out.count(3) / 400 < 0.85  # p = 0.75
    out = list(ed.WeightedRandomSampler([1, 2, 3, 4, 5], 5, replacement=False, generator=g))
    assert sorted(out) == [0, 1, 2, 3, 4]
    assert ed.WeightedRandomSampler(w, 3).weights.dtype == ember.float64
    for args in [(w, 0), (w, True), (w, 2.0)]:
        raises_like(lambda: ed.WeightedRandomSampler(*args), lambda: td.WeightedRandomSampler(*args))
    raises_like(lambda: ed.WeightedRandomSampler(w, 2, replacement=None),
                lambda: td.WeightedRandomSampler(w, 2, replacement=None))
    raises_like(lambda: ed.WeightedRandomSampler([[1.0, 2.0]], 2),
                lambda: td.WeightedRandomSampler([[1.0, 2.0]], 2))


@pytest.mark.parametrize("n", [1, 7, 10, 13])
@pytest.mark.parametrize("replicas", [1, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_sampler_parity_unshuffled(n, replicas, drop_last):
    ds = list(range(n))
    for rank in range(replicas):
        e = ed.DistributedSampler(ds, replicas, rank, shuffle=False, drop_last=drop_last)
        t = td.DistributedSampler(ds, replicas, rank, shuffle=False, drop_last=drop_last)
        assert list(e) == list(t)
        assert (len(e), e.num_samples, e.total_size) == (len(t), t.num_samples, t.total_size)


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 3, False), (10, 3, True), (2, 5, False),
                                                  (12, 4, False)])
def test_distributed_sampler_shuffled_properties(n, replicas, drop_last):
    ds = list(range(n))

    def shards(epoch, seed=0):
        out = []
        for rank in range(replicas):
            s = ed.DistributedSampler(ds, replicas, rank, shuffle=True, seed=seed,
                                      drop_last=drop_last)
            s.set_epoch(epoch)
            out.append(list(s))
        return out

    e0 = shards(0)
    t0 = [len(td.DistributedSampler(ds, replicas, r, drop_last=drop_last)) for r in range(replicas)]
    assert [len(s) for s in e0] == t0
    flat = [i for s in e0 for i in s]
    total = ed.DistributedSampler(ds, replicas, 0, drop_last=drop_last).total_size
    assert len(flat) == total
    if drop_last:
        assert len(set(flat)) == total  # trimmed: no index twice
    else:
        assert set(flat) == set(range(n))  # padded: everything covered
        assert len(flat) - len(set(flat)) == total - n  # exactly the padding repeats
    assert shards(0) == e0  # same seed and epoch: same split on every replica
    if n > 2:
        assert shards(1) != e0 and shards(0, seed=1) != e0


def test_distributed_sampler_errors():
    raises_like(lambda: ed.DistributedSampler(range(4), 2, 2),
                lambda: td.DistributedSampler(range(4), 2, 2))
    raises_like(lambda: ed.DistributedSampler(range(4), 2, -1),
                lambda: td.DistributedSampler(range(4), 2, -1))


# ---------------------------------------------------------------------- collation
def _samples(fw):
    """Batches of several kinds, built for ember or torch."""
    t = fw.tensor
    return {
        "tensors": [t([1.0, 2.0]), t([3.0, 4.0])],
        "int_tensors": [t(1), t(2), t(3)],
        "floats": [1.5, 2.0],
        "ints": [1, 2, 3],
        "bools": [True, False],
        "mixed_int_bool": [1, True],
        "strings": ["a", "bc"],
        "bytes": [b"x", b"y"],
        "np_arrays": [np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32)],
        "np_int16": [np.arange(3, dtype=np.int16), np.arange(3, dtype=np.int16)],
        "np_scalars": [np.float32(1.0), np.float32(2.5)],
        "np_int_scalars": [np.int32(1), np.int32(2)],
        "np_0d": [np.array(1.0), np.array(2.0)],
        "dicts": [{"a": 1, "b": t([1.0])}, {"a": 2, "b": t([2.0])}],
        "ordered": [collections.OrderedDict(z=1.0, a=2), collections.OrderedDict(z=3.0, a=4)],
        "namedtuples": [Point(1, 2.0), Point(3, 4.0)],
        "tuples": [(1, "a"), (2, "b")],
        "lists": [[1, 2.0], [3, 4.0]],
        "nested": [{"x": [t([1]), (np.int64(2), "s")]}, {"x": [t([3]), (np.int64(4), "t")]}],
        "uint8_images": [np.full((3, 4, 4), i, np.uint8) for i in range(3)],
    }


@pytest.mark.parametrize("kind", [
    "tensors", "int_tensors", "floats", "ints", "bools", "mixed_int_bool", "strings", "bytes",
    "np_arrays", "np_int16", "np_scalars", "np_int_scalars", "np_0d", "dicts", "ordered",
    "namedtuples", "tuples", "lists", "nested", "uint8_images"])
def test_default_collate_parity(kind):
    e, t = both("default_collate", lambda fw: _samples(fw)[kind])
    assert canon(e) == canon(t)


@pytest.mark.parametrize("kind", ["tensors", "floats", "strings", "np_arrays", "np_scalars",
                                  "dicts", "ordered", "namedtuples", "tuples", "lists", "nested"])
def test_default_convert_parity(kind):
    e, t = both("default_convert", lambda fw: _samples(fw)[kind])
    assert canon(e) == canon(t)


def test_default_convert_keeps_string_arrays():
    arr = np.array(["a", "b"])
    assert ed.default_convert(arr) is arr
    assert canon(ed.default_convert({"k": np.arange(3)})) == \
        canon(td.default_convert({"k": np.arange(3)}))


def test_default_collate_errors_match_torch():
    raises_like(lambda: ed.default_collate([[1, 2], [3]]), lambda: td.default_collate([[1, 2], [3]]))
    objs = [np.array([{}], dtype=object), np.array([{}], dtype=object)]
    raises_like(lambda: ed.default_collate(objs), lambda: td.default_collate(objs))
    strs = [np.array(["a"]), np.array(["b"])]
    raises_like(lambda: ed.default_collate(strs), lambda: td.default_collate(strs))
    raises_like(lambda: ed.default_collate([object(), object()]),
                lambda: td.default_collate([object(), object()]))
    with pytest.raises(TypeError, match="default_collate: batch must contain tensors"):
        ed.default_collate([{1}, {2}])
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        ed.default_collate([ember.ones(2), ember.ones(3)])


def test_collate_fn_map_via_torch_documented_path():
    # torch documents extending default_collate through torch.utils.data._utils.collate
    from ember.utils.data._utils.collate import collate, default_collate_fn_map
    fn_map = {**default_collate_fn_map, str: lambda batch, *, collate_fn_map: "".join(batch)}
    e = collate([("a", 1), ("b", 2)], collate_fn_map=fn_map)
    t_collate = td._utils.collate
    t_map = {**t_collate.default_collate_fn_map, str: lambda batch, *, collate_fn_map: "".join(batch)}
    t = t_collate.collate([("a", 1), ("b", 2)], collate_fn_map=t_map)
    assert canon(e) == canon(t)


def test_collate_fn_map_extension():
    class Box:
        def __init__(self, v):
            self.v = v

    def collate_box(batch, *, collate_fn_map=None):
        return sum(b.v for b in batch)

    fn_map = {**ed._collate.default_collate_fn_map, Box: collate_box}
    out = ed._collate.collate([{"b": Box(1), "t": 1.0}, {"b": Box(2), "t": 2.0}],
                              collate_fn_map=fn_map)
    assert out["b"] == 3 and out["t"].dtype == ember.float64
    # isinstance lookup for subclasses, as torch
    class SubBox(Box):
        pass
    assert ed._collate.collate([SubBox(4), SubBox(5)], collate_fn_map=fn_map) == 9


def test_public_names_match_torch():
    names = ["Dataset", "IterableDataset", "TensorDataset", "ConcatDataset", "ChainDataset",
             "Subset", "StackDataset", "random_split", "Sampler", "SequentialSampler",
             "RandomSampler", "SubsetRandomSampler", "WeightedRandomSampler", "BatchSampler",
             "DistributedSampler", "DataLoader", "default_collate", "default_convert",
             "get_worker_info"]
    for n in names:
        assert hasattr(td, n) and hasattr(ed, n), n
    assert ember.utils.data is ed
    import inspect
    for cls in ["DataLoader", "RandomSampler", "WeightedRandomSampler", "BatchSampler",
                "DistributedSampler", "Subset", "StackDataset"]:
        pe = inspect.signature(getattr(ed, cls)).parameters
        pt = inspect.signature(getattr(td, cls)).parameters
        assert list(pe) == list(pt), cls
        for k in pe:
            assert pe[k].kind == pt[k].kind, (cls, k)
            if pe[k].default is not inspect.Parameter.empty:
                assert pe[k].default == pt[k].default, (cls, k)
