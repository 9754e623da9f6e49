"""ember.utils.safetensors against safetensors.torch: files interchangeable, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.utils import safetensors as est

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
          torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64]


def _sample(dtype):
    g = torch.Generator().manual_seed(1)
    if dtype is torch.bool:
        return torch.rand(3, 5, generator=g) > 0.5
    if dtype.is_complex or dtype.is_floating_point:
        x = torch.randn(3, 5, generator=g, dtype=torch.float64).to(dtype)
        if not dtype.is_complex:
            x[0, 0] = float("nan")
        return x
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, (3, 5), dtype=dtype, generator=g)


def _raw(x) -> bytes:
    if isinstance(x, torch.Tensor):
        return x.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return np.ascontiguousarray(x.numpy()).reshape(-1).view(np.uint8).tobytes()


def test_torch_file_to_ember_and_back(tmp_path):
    tensors = {str(d).split(".")[1]: _sample(d) for d in DTYPES}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 3)
    path = tmp_path / "t.safetensors"
    st_torch.save_file(tensors, path, metadata={"epoch": "3", "format": "pt"})
    out = est.load_file(path)
    assert list(out) == sorted(tensors) or set(out) == set(tensors)
    for k, v in tensors.items():
        assert out[k].dtype.name == str(v.dtype).split(".")[1], k
        assert tuple(out[k].shape) == tuple(v.shape) and _raw(out[k]) == _raw(v), k
    path2 = tmp_path / "e.safetensors"
    est.save_file(out, path2, metadata={"epoch": "3"})
    back = st_torch.load_file(path2)
    for k, v in tensors.items():
        assert back[k].dtype is v.dtype and _raw(back[k]) == _raw(v), k
    with est.safe_open(path2) as f:
        assert f.metadata() == {"epoch": "3"}


def test_bytes_api_both_ways():
    data = est.save({"w": ember.arange(6, dtype=ember.float32).reshape(2, 3),
                     "h": ember.ones(2, dtype=ember.bfloat16)}, metadata={"k": "v"})
    back = st_torch.load(data)
    assert torch.equal(back["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert back["h"].dtype is torch.bfloat16
    out = est.load(st_torch.save({"x": torch.tensor([1, 2, 3])}))
    assert out["x"].tolist() == [1, 2, 3] and out["x"].dtype is ember.int64
    out["x"].numpy()[0] = 7  # loaded tensors are writable


def test_safe_open_is_lazy_and_sliceable(tmp_path):
    path = tmp_path / "s.safetensors"
    st_torch.save_file({"a": torch.arange(20.).reshape(4, 5), "b": torch.ones(2)}, path)
    with est.safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == ["a", "b"]
        assert f.metadata() is None
        sl = f.get_slice("a")
        assert sl.get_shape() == [4, 5] and sl.get_dtype() == "F32"
        assert sl[1:3].tolist() == torch.arange(20.).reshape(4, 5)[1:3].tolist()
        assert f.get_tensor("b").tolist() == [1.0, 1.0]


def test_errors_match_safetensors_torch(tmp_path):
    base = ember.arange(10, dtype=ember.float32)
    with pytest.raises(RuntimeError, match="share memory"):
        est.save({"a": base, "b": base[2:5]})
    with pytest.raises(RuntimeError, match="share memory"):
        tb = torch.arange(10.)
        st_torch.save({"a": tb, "b": tb[2:5]})
    with pytest.raises(RuntimeError, match="share memory"):
        est.save({"a": base, "s": base.as_strided((4,), (1,), 2)})
    est.save({"a": base[:5], "b": base[5:]})  # disjoint slices of one array are fine
    with pytest.raises(ValueError, match="non contiguous"):
        est.save({"t": base.reshape(2, 5).t()})
    with pytest.raises(ValueError, match="invalid"):
        est.save({"x": np.ones(2)})
    with pytest.raises(ValueError):
        est.save({"c": ember.zeros(2, dtype=ember.complex128)})


def test_save_model_and_load_model_with_tied_weights(tmp_path):
    nn = ember.nn
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # tied
    path = tmp_path / "m.safetensors"
    est.save_model(model, path)
    fresh = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    fresh[1].weight = fresh[0].weight
    missing, unexpected = est.load_model(fresh, path)
    assert missing == [] and unexpected == []
    assert np.array_equal(fresh[0].weight.detach().numpy(), model[0].weight.detach().numpy())
    with est.safe_open(path) as f:
        assert len(f.keys()) == 1
