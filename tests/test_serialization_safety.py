"""weights_only loading: the hostile corpus is refused without side effects; the allowlist API."""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import tracemalloc

import pytest

import ember
from ember.serialization import (WeightsOnlyError, add_safe_globals, clear_safe_globals,
                                 get_safe_globals, get_unsafe_globals_in_checkpoint, load,
                                 safe_globals, save)
from serialization_corpus import build_corpus, tensor_pickle, torch_zip


@dataclasses.dataclass
class Config:
    """A user class stored inside a checkpoint."""
    lr: float = 0.1
    name: str = "run"


class Dangerous:
    def __reduce__(self):
        return (os.system, ("echo never",))


@pytest.fixture
def marker(tmp_path):
    return str(tmp_path / "MARKER")


@pytest.fixture(autouse=True)
def _clean_allowlist():
    clear_safe_globals()
    yield
    clear_safe_globals()


def test_corpus_is_large_enough(marker):
    assert len(build_corpus(marker)) >= 40


def _corpus_cases():
    return sorted(build_corpus("/nonexistent/MARKER"))


@pytest.mark.parametrize("case", _corpus_cases())
def test_hostile_file_rejected_without_side_effect(case, marker, tmp_path):
    data = build_corpus(marker)[case]
    path = tmp_path / f"{case}.pt"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        for source in (io.BytesIO(data), str(path)):
            with pytest.raises(pickle.UnpicklingError):
                load(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not os.path.exists(marker), f"{case} ran code"
    assert peak < 64 * 2 ** 20, f"{case} allocated {peak} bytes before being refused"
    assert sorted(os.listdir(tmp_path)) == [f"{case}.pt"]  # nothing written next to it


def test_rejection_names_the_global_and_opcode(marker):
    corpus = build_corpus(marker)
    with pytest.raises(pickle.UnpicklingError, match=r"GLOBAL os\.system.*blocked"):
        load(io.BytesIO(corpus["global_os_system"]))
    with pytest.raises(pickle.UnpicklingError, match=r"STACK_GLOBAL builtins\.eval"):
        load(io.BytesIO(corpus["stack_global_eval"]))
    with pytest.raises(pickle.UnpicklingError, match=r"opcode EXT1"):
        load(io.BytesIO(corpus["ext1_copyreg_extension"]))
    with pytest.raises(pickle.UnpicklingError, match=r"numpy\.testing\._private\.utils\.runstring"):
        load(io.BytesIO(corpus["global_numpy_runstring"]))
    with pytest.raises(pickle.UnpicklingError, match="weights_only=False"):
        load(io.BytesIO(corpus["global_torch_load"]))


def test_corruption_errors_are_also_runtime_errors(marker):
    # torch raises RuntimeError for broken archives; ember's error is both kinds.
    corpus = build_corpus(marker)
    with pytest.raises(RuntimeError) as info:
        load(io.BytesIO(corpus["zip_truncated_half"]))
    # A corrupt file is not a policy refusal: no advice to retry with weights_only=False.
    assert not isinstance(info.value, WeightsOnlyError)
    assert "weights_only=False" not in str(info.value)
    with pytest.raises(WeightsOnlyError, match="weights_only=False"):
        load(io.BytesIO(corpus["global_os_system"]))


def test_dangerous_object_saved_by_ember_is_refused(tmp_path, marker):
    path = tmp_path / "d.pt"
    save({"x": ember.ones(1), "bad": Dangerous()}, path)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        load(path)
    assert get_unsafe_globals_in_checkpoint(path) in (["posix.system"], ["os.system"])


def test_the_corpus_baseline_is_loadable():
    # The hostile files are small edits of this one, which must load.
    t = load(io.BytesIO(torch_zip(tensor_pickle(), {"0": b"\0" * 16})))
    assert t.tolist() == [0.0, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------------- allowlist API
def _ckpt_with_config() -> bytes:
    buf = io.BytesIO()
    save({"cfg": Config(0.5, "a"), "w": ember.ones(2)}, buf)
    return buf.getvalue()


def test_user_class_refused_then_allowed():
    raw = _ckpt_with_config()
    with pytest.raises(pickle.UnpicklingError, match="Config"):
        load(io.BytesIO(raw))
    add_safe_globals([Config])
    assert Config in get_safe_globals()
    out = load(io.BytesIO(raw))
    assert out["cfg"] == Config(0.5, "a") and out["w"].tolist() == [1.0, 1.0]
    clear_safe_globals()
    assert get_safe_globals() == []
    with pytest.raises(pickle.UnpicklingError):
        load(io.BytesIO(raw))


def test_safe_globals_context_manager_and_named_tuple_entries():
    raw = _ckpt_with_config()
    with safe_globals([Config]):
        assert load(io.BytesIO(raw))["cfg"].lr == 0.5
    assert get_safe_globals() == []
    with pytest.raises(pickle.UnpicklingError):
        load(io.BytesIO(raw))
    name = f"{Config.__module__}.{Config.__qualname__}"
    add_safe_globals([(Config, name)])
    assert load(io.BytesIO(raw))["cfg"].name == "a"
    with pytest.raises(ValueError):
        add_safe_globals([(Config, name, 1)])
    with pytest.raises(TypeError):
        add_safe_globals([(Config, 3)])


def test_blocked_modules_stay_blocked_even_if_allowlisted(marker):
    add_safe_globals([os.system, (os.system, "posix.system")])
    with pytest.raises(pickle.UnpicklingError, match="blocked"):
        load(io.BytesIO(build_corpus(marker)["global_os_system"]))
    assert not os.path.exists(marker)


def test_weights_only_false_allows_user_classes():
    out = load(io.BytesIO(_ckpt_with_config()), weights_only=False)
    assert out["cfg"] == Config(0.5, "a")


def test_torch_file_with_user_class():
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"cfg": Config(), "od": collections.OrderedDict(a=torch.ones(1))}, buf)
    with pytest.raises(pickle.UnpicklingError):
        load(io.BytesIO(buf.getvalue()))
    with safe_globals([Config]):
        out = load(io.BytesIO(buf.getvalue()))
    assert out["cfg"] == Config() and out["od"]["a"].tolist() == [1.0]


def test_numpy_scalars_need_allowlisting_like_torch():
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    buf = io.BytesIO()
    torch.save({"epoch": np.int64(3), "acc": np.float64(0.5), "arr": np.arange(3)}, buf)
    raw = buf.getvalue()
    with pytest.raises(pickle.UnpicklingError, match="numpy._core.multiarray.scalar"):
        load(io.BytesIO(raw))
    assert set(get_unsafe_globals_in_checkpoint(io.BytesIO(raw))) == set(
        torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(raw)))
    allowed = [np._core.multiarray.scalar, np.dtype, np.dtypes.Int64DType,
               np.dtypes.Float64DType, np._core.multiarray._reconstruct, np.ndarray]
    with safe_globals(allowed):
        out = load(io.BytesIO(raw))
    assert out["epoch"] == 3 and out["acc"] == 0.5 and out["arr"].tolist() == [0, 1, 2]


def test_mutation_fuzz_only_unpickling_errors():
    """Random byte flips, insertions and truncations of valid checkpoints (zip and legacy)
    either load or raise UnpicklingError: no other exception type escapes."""
    import random
    base = ember.arange(12, dtype=ember.float32)
    obj = {"w": base, "v": base[3:7], "p": ember.nn.Parameter(ember.ones(2, 2)),
           "meta": {"name": "x", "steps": [1, 2.5, None], "size": base.shape},
           "dtype": ember.bfloat16}
    seeds = []
    for kw in ({}, {"_use_new_zipfile_serialization": False}, {"pickle_protocol": 4}):
        buf = io.BytesIO()
        save(obj, buf, **kw)
        seeds.append(buf.getvalue())
    rng = random.Random(7)
    for i in range(400):
        data = bytearray(rng.choice(seeds))
        kind = i % 4
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:
            del data[rng.randrange(len(data)):]
        elif kind == 2:
            at = rng.randrange(len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            at = rng.randrange(len(data))
            del data[at:at + rng.randint(1, 16)]
        try:
            load(io.BytesIO(bytes(data)))
        except (pickle.UnpicklingError, EOFError):
            pass
