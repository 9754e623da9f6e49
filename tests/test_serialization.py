"""ember.save / ember.load against real torch.save / torch.load, both directions, bit for bit."""
from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest

import ember
from ember.serialization import load, save

torch = pytest.importorskip("torch")

# torch dtype -> ember dtype, for every dtype ember has.
DTYPES = [
    (torch.float32, ember.float32), (torch.float64, ember.float64),
    (torch.float16, ember.float16), (torch.bfloat16, ember.bfloat16),
    (torch.int64, ember.int64), (torch.int32, ember.int32), (torch.int16, ember.int16),
    (torch.int8, ember.int8), (torch.uint8, ember.uint8), (torch.bool, ember.bool),
    (torch.complex64, ember.complex64), (torch.complex128, ember.complex128),
]


def _torch_sample(tdtype: "torch.dtype", shape=(3, 4)) -> "torch.Tensor":
    g = torch.Generator().manual_seed(0)
    if tdtype is torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if tdtype.is_complex:
        return torch.randn(shape, dtype=tdtype, generator=g)
    if tdtype.is_floating_point:
        x = torch.randn(shape, generator=g).to(tdtype)
        x.view(-1)[0] = float("nan")  # NaN payloads must survive too
        x.view(-1)[1] = float("-inf")
        return x
    info = torch.iinfo(tdtype)
    return torch.randint(info.min, info.max, shape, dtype=tdtype, generator=g)


def _bits(x) -> bytes:
    """The raw bytes of a tensor's values (comparison that treats NaN payloads exactly)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().contiguous().reshape(-1)
        return x.view(torch.uint8).numpy().tobytes() if x.numel() else b""
    arr = np.ascontiguousarray(x.detach().numpy()).reshape(-1)
    return arr.view(np.uint8).tobytes()


def _torch_roundtrip(obj, **kw) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def _ember_bytes(obj, **kw) -> bytes:
    buf = io.BytesIO()
    save(obj, buf, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------------- dtypes, both ways
@pytest.mark.parametrize("tdtype,edtype", DTYPES, ids=lambda d: str(d))
def test_torch_to_ember_every_dtype(tdtype, edtype):
    src = _torch_sample(tdtype)
    out = load(io.BytesIO(_torch_roundtrip({"x": src, "empty": src[:0], "scalar": src[0, 0]})))
    x = out["x"]
    assert isinstance(x, ember.Tensor) and x.dtype is edtype
    assert tuple(x.shape) == tuple(src.shape)
    assert _bits(x) == _bits(src)
    assert tuple(out["empty"].shape) == (0, 4)
    assert out["scalar"].dim() == 0 and _bits(out["scalar"]) == _bits(src[0, 0])


@pytest.mark.parametrize("tdtype,edtype", DTYPES, ids=lambda d: str(d))
def test_ember_to_torch_every_dtype(tdtype, edtype):
    src = _torch_sample(tdtype)
    x = load(io.BytesIO(_torch_roundtrip(src)))
    back = torch.load(io.BytesIO(_ember_bytes({"x": x, "t": x.t()})), weights_only=True)
    assert back["x"].dtype is tdtype
    assert _bits(back["x"]) == _bits(src)
    assert torch.equal(back["t"].contiguous().view(torch.uint8) if tdtype is not torch.bool
                       else back["t"], src.t().contiguous().view(torch.uint8)
                       if tdtype is not torch.bool else src.t())


def test_ember_tensor_made_in_ember_loads_in_torch():
    x = ember.arange(12, dtype=ember.float32).reshape(3, 4)
    back = torch.load(io.BytesIO(_ember_bytes(x)))
    assert torch.equal(back, torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert back.stride() == (4, 1)


def test_requires_grad_round_trip():
    x = ember.ones(3, requires_grad=True)
    back = torch.load(io.BytesIO(_ember_bytes(x)))
    assert back.requires_grad and back.is_leaf
    again = load(io.BytesIO(_torch_roundtrip(back)))
    assert again.requires_grad and again.is_leaf


# ---------------------------------------------------------------------- views and shared storage
def test_views_share_memory_after_loading_torch_file():
    base = torch.arange(24, dtype=torch.float32)
    obj = {"base": base, "slice": base[3:9], "view": base.view(4, 6), "t": base.view(4, 6).t(),
           "strided": base[::5], "expand": base[:4].unsqueeze(0).expand(3, 4)}
    out = load(io.BytesIO(_torch_roundtrip(obj)))
    for k, v in obj.items():
        assert out[k].shape == tuple(v.shape) and out[k].stride() == v.stride(), k
        assert out[k].storage_offset() == v.storage_offset(), k
        assert np.array_equal(out[k].numpy(), v.numpy()), k
    out["base"].numpy()[5] = -1.0  # a write through the base is seen by every view
    assert out["slice"].numpy()[2] == -1.0
    assert out["view"].numpy()[0, 5] == -1.0
    assert out["t"].numpy()[5, 0] == -1.0


def test_ember_views_saved_once_and_shared_in_torch():
    base = ember.arange(20, dtype=ember.float64)
    obj = {"a": base, "b": base[4:10], "c": base.reshape(4, 5).t()}
    raw = _ember_bytes(obj)
    names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    assert [n for n in names if "/data/" in n] == ["archive/data/0"]  # one storage
    back = torch.load(io.BytesIO(raw))
    assert back["b"].untyped_storage().data_ptr() == back["a"].untyped_storage().data_ptr()
    assert back["b"].storage_offset() == 4
    assert back["c"].stride() == (1, 5)
    back["a"][5] = 100.0
    assert back["b"][1] == 100.0 and back["c"][0, 1] == 100.0


def test_strided_views_made_by_as_strided_share_the_storage():
    x = ember.arange(16, dtype=ember.float32).reshape(4, 4)
    obj = {"x": x, "diag": x.diagonal(offset=1), "strided": x.as_strided((2, 2), (5, 1), 2)}
    raw = _ember_bytes(obj)
    assert len([n for n in zipfile.ZipFile(io.BytesIO(raw)).namelist() if "/data/" in n]) == 1
    back = torch.load(io.BytesIO(raw))
    tx = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    assert torch.equal(back["diag"], tx.diagonal(offset=1))
    assert back["diag"].storage_offset() == 1 and back["diag"].stride() == (5,)
    assert torch.equal(back["strided"], tx.as_strided((2, 2), (5, 1), 2))
    back["x"][0, 1] = -1.0
    assert back["diag"][0] == -1.0


def test_same_storage_two_dtypes_refused_like_torch():
    x = ember.zeros(4, dtype=ember.float32)
    y = x.view(ember.int32)
    with pytest.raises(RuntimeError, match="view the same data as different types"):
        save([x, y], io.BytesIO())
    tx = torch.zeros(4)
    with pytest.raises(RuntimeError, match="view the same data as different types"):
        torch.save([tx, tx.view(torch.int32)], io.BytesIO())


def test_same_tensor_twice_is_one_object():
    x = ember.ones(3)
    out = torch.load(io.BytesIO(_ember_bytes([x, x])))
    assert out[0] is out[1]
    out2 = load(io.BytesIO(_torch_roundtrip([out[0], out[0]])))
    assert out2[0] is out2[1]


# ---------------------------------------------------------------------- Parameters, modules, optim
def test_parameters_both_ways():
    p = torch.nn.Parameter(torch.randn(2, 3))
    q = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    out = load(io.BytesIO(_torch_roundtrip({"p": p, "q": q})))
    assert isinstance(out["p"], ember.nn.Parameter) and out["p"].requires_grad
    assert isinstance(out["q"], ember.nn.Parameter) and not out["q"].requires_grad
    assert _bits(out["p"]) == _bits(p)
    back = torch.load(io.BytesIO(_ember_bytes(out)), weights_only=True)
    assert isinstance(back["p"], torch.nn.Parameter) and back["p"].requires_grad
    assert not back["q"].requires_grad
    assert _bits(back["p"]) == _bits(p)


def test_tensor_attributes_travel():
    t = torch.ones(2)
    t.tag = "hello"
    out = load(io.BytesIO(_torch_roundtrip(t)))
    assert out.tag == "hello"
    back = torch.load(io.BytesIO(_ember_bytes(out)))
    assert back.tag == "hello" and torch.equal(back, t)


def test_state_dict_from_torch_module():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                              torch.nn.ReLU(), torch.nn.Linear(8, 2))
    sd = net.state_dict()
    out = load(io.BytesIO(_torch_roundtrip(sd)))
    assert type(out) is collections.OrderedDict and list(out) == list(sd)
    for k in sd:
        assert out[k].dtype.name == str(sd[k].dtype).split(".")[1]
        assert _bits(out[k]) == _bits(sd[k]), k
    assert getattr(out, "_metadata", None) == getattr(sd, "_metadata", None)
    back = torch.load(io.BytesIO(_ember_bytes(out)), weights_only=True)
    net2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 2))
    net2.load_state_dict(back)
    for k, v in net2.state_dict().items():
        assert _bits(v) == _bits(sd[k])


def test_optimizer_state_dict_written_by_torch():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    osd = opt.state_dict()
    out = load(io.BytesIO(_torch_roundtrip({"optim": osd, "epoch": 3})))
    assert out["epoch"] == 3
    st = out["optim"]["state"]
    assert set(st) == {0, 1}
    for i in (0, 1):
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert _bits(st[i][k]) == _bits(osd["state"][i][k])
    assert out["optim"]["param_groups"][0]["betas"] == (0.8, 0.99)
    assert out["optim"]["param_groups"][0]["params"] == [0, 1]
    back = torch.load(io.BytesIO(_ember_bytes(out)), weights_only=True)
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(back["optim"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], osd["state"][0]["exp_avg"])


def test_nested_containers_numbers_strings_size_dtype_device():
    obj = {"list": [1, -2**70, 3.5, float("inf"), complex(1, 2), None, True],
           "tuple": (("a", b"\x00\xff"), bytearray(b"xy")), "set": {1, 2}, "str": "üñí",
           "size": torch.Size([2, 3]), "dtype": torch.bfloat16, "dev": torch.device("cpu"),
           "od": collections.OrderedDict(b=1, a=2), "counter": collections.Counter("aab"),
           "nested": {"deep": [{"t": torch.tensor([1, 2])}]}}
    out = load(io.BytesIO(_torch_roundtrip(obj)))
    assert out["list"] == obj["list"] and out["tuple"] == obj["tuple"]
    assert out["set"] == {1, 2} and out["str"] == "üñí"
    assert isinstance(out["size"], ember.Size) and out["size"] == (2, 3)
    assert out["dtype"] is ember.bfloat16 and out["dev"] == ember.device("cpu")
    assert list(out["od"]) == ["b", "a"] and out["counter"] == collections.Counter("aab")
    assert out["nested"]["deep"][0]["t"].tolist() == [1, 2]
    back = torch.load(io.BytesIO(_ember_bytes(out)), weights_only=True)
    assert back["size"] == torch.Size([2, 3]) and isinstance(back["size"], torch.Size)
    assert back["dtype"] is torch.bfloat16 and back["dev"] == torch.device("cpu")
    assert back["list"] == obj["list"] and back["od"] == obj["od"]
    assert torch.equal(back["nested"]["deep"][0]["t"], torch.tensor([1, 2]))


def test_conj_bit_from_torch_is_materialized():
    z = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    out = load(io.BytesIO(_torch_roundtrip({"c": z.conj(), "n": z._neg_view()})))
    assert out["c"].tolist() == z.conj().resolve_conj().tolist()
    assert out["n"].tolist() == (-z).tolist()


# ---------------------------------------------------------------------- format details
def test_archive_layout_matches_torch():
    x = ember.ones(3)
    ours = zipfile.ZipFile(io.BytesIO(_ember_bytes({"x": x})))
    theirs = zipfile.ZipFile(io.BytesIO(_torch_roundtrip({"x": torch.ones(3)})))
    assert ours.namelist() == theirs.namelist()
    for name in ("archive/version", "archive/byteorder", "archive/.format_version",
                 "archive/.storage_alignment", "archive/data/0"):
        assert ours.read(name) == theirs.read(name), name
    assert ours.read("archive/data.pkl") == theirs.read("archive/data.pkl")
    raw = _ember_bytes({"x": x})
    for info in ours.infolist():  # every record's data starts 64-byte aligned, stored
        assert info.compress_type == zipfile.ZIP_STORED
        n, e = np.frombuffer(raw[info.header_offset + 26:info.header_offset + 30], "<u2")
        assert (info.header_offset + 30 + n + e) % 64 == 0
    sid = ours.read("archive/.data/serialization_id")
    assert len(sid) == 40 and sid.isdigit()


def test_archive_folder_with_spaces_and_unicode(tmp_path):
    path = tmp_path / "my model (v2) ü.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert load(path)["w"].tolist() == [1.0, 1.0]
    save({"w": ember.zeros(1)}, path)
    assert torch.load(path)["w"].tolist() == [0.0]


def test_path_archive_name_and_file_object(tmp_path):
    path = tmp_path / "model.ckpt.pt"
    save({"w": ember.ones(2)}, path)
    assert zipfile.ZipFile(path).namelist()[0] == "model.ckpt/data.pkl"
    assert torch.equal(torch.load(path)["w"], torch.ones(2))
    assert torch.equal(torch.load(path, mmap=True)["w"], torch.ones(2))  # aligned records
    torch.save({"w": torch.zeros(2)}, str(path))
    with open(path, "rb") as fh:
        assert load(fh)["w"].tolist() == [0.0, 0.0]
    assert load(str(path))["w"].tolist() == [0.0, 0.0]


def test_zip64_layout_read_by_torch(monkeypatch):
    from ember.serialization import _zip
    monkeypatch.setattr(_zip, "ZIP64_LIMIT", 16)  # force zip64 fields on every record
    raw = _ember_bytes({"x": ember.arange(10, dtype=ember.float32), "y": ember.ones(2)})
    back = torch.load(io.BytesIO(raw))
    assert torch.equal(back["x"], torch.arange(10, dtype=torch.float32))
    assert load(io.BytesIO(raw))["y"].tolist() == [1.0, 1.0]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_protocols():
    x = ember.arange(4, dtype=ember.int32)
    for proto in (2, 3, 4, 5):
        # torch's own weights_only unpickler has no FRAME opcode (protocol >= 4).
        back = torch.load(io.BytesIO(_ember_bytes({"x": x, "d": ember.float16},
                                                  pickle_protocol=proto)),
                          weights_only=proto < 4)
        assert torch.equal(back["x"], torch.arange(4, dtype=torch.int32))
        assert back["d"] is torch.float16
        out = load(io.BytesIO(_torch_roundtrip({"x": torch.ones(2)}, pickle_protocol=proto)))
        assert out["x"].tolist() == [1.0, 1.0]


def test_big_endian_record_is_swapped():
    raw = _torch_roundtrip({"x": torch.arange(3, dtype=torch.int32)})
    zin = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                data = np.frombuffer(data, "<i4").astype(">i4").tobytes()
            zout.writestr(info.filename, data)
    assert load(io.BytesIO(out.getvalue()))["x"].tolist() == [0, 1, 2]


# ---------------------------------------------------------------------- legacy format
def test_legacy_format_from_torch():
    base = torch.arange(12, dtype=torch.float64)
    obj = {"a": base, "b": base[2:6], "p": torch.nn.Parameter(torch.ones(2)),
           "h": torch.tensor([1.5], dtype=torch.bfloat16), "n": 7}
    raw = _torch_roundtrip(obj, _use_new_zipfile_serialization=False)
    assert not raw.startswith(b"PK")
    out = load(io.BytesIO(raw))
    assert _bits(out["a"]) == _bits(base) and out["b"].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert np.shares_memory(out["a"].numpy(), out["b"].numpy())
    assert isinstance(out["p"], ember.nn.Parameter) and out["n"] == 7
    assert out["h"].dtype is ember.bfloat16


def test_legacy_format_from_ember():
    base = ember.arange(6, dtype=ember.int16)
    raw = _ember_bytes({"a": base, "b": base[1:3]}, _use_new_zipfile_serialization=False)
    back = torch.load(io.BytesIO(raw))
    assert torch.equal(back["a"], torch.arange(6, dtype=torch.int16))
    assert back["b"].tolist() == [1, 2] and back["b"].storage_offset() == 1
    assert load(io.BytesIO(raw))["b"].tolist() == [1, 2]


# ---------------------------------------------------------------------- mmap, map_location
def test_mmap_loads_views_of_the_file(tmp_path):
    path = tmp_path / "m.pt"
    src = torch.randn(64, 32)
    torch.save({"w": src, "v": src[3]}, path)
    out = load(path, mmap=True)
    assert _bits(out["w"]) == _bits(src)
    import mmap as _mmap
    root = out["w"].numpy()
    while isinstance(root.base, np.ndarray):
        root = root.base
    assert isinstance(getattr(root.base, "obj", root.base), _mmap.mmap)
    assert np.shares_memory(out["w"].numpy(), out["v"].numpy())
    out["w"].numpy()[0, 0] = 123.0  # copy-on-write: the file is unchanged
    assert torch.load(path)["w"][0, 0] == src[0, 0]
    again = io.BytesIO()  # re-saving writes the storages, not the mapped file
    save(out, again)
    back = torch.load(io.BytesIO(again.getvalue()))
    assert back["w"][0, 0] == 123.0 and torch.equal(back["w"][1:], src[1:])
    assert back["v"].storage_offset() == 3 * 32
    with pytest.raises(ValueError, match="file path"):
        load(io.BytesIO(path.read_bytes()), mmap=True)
    legacy = tmp_path / "legacy.pt"
    torch.save(src, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(RuntimeError, match="mmap can only be used"):
        load(legacy, mmap=True)


def test_map_location_forms():
    raw = _torch_roundtrip({"x": torch.ones(2)})
    for ml in (None, "cpu", ember.device("cpu"), {"cpu": "cpu"}, lambda s, loc: s,
               lambda s, loc: None, lambda s, loc: s.cpu(), b"cpu"):
        out = load(io.BytesIO(raw), map_location=ml)
        assert out["x"].device == ember.device("cpu") and out["x"].tolist() == [1.0, 1.0]
    seen = []
    load(io.BytesIO(raw), map_location=lambda s, loc: seen.append((loc, s.nbytes())))
    assert seen == [("cpu", 8)]
    with pytest.raises(TypeError):
        load(io.BytesIO(raw), map_location=lambda s, loc: 5)
    with pytest.raises(RuntimeError, match="don't know how to restore"):
        load(io.BytesIO(raw), map_location="meta")


def test_cuda_location_without_gpu_errors_like_torch():
    from ember.backend import cuda_available
    if cuda_available():
        pytest.skip("a GPU is present")
    raw = _torch_roundtrip({"x": torch.ones(2)})
    with pytest.raises(RuntimeError, match="map_location"):
        load(io.BytesIO(raw), map_location="cuda:0")
    out = load(io.BytesIO(raw), map_location={"cuda:0": "cpu"})
    assert out["x"].tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------- arguments and errors
def test_minimal_file_objects_and_tar_format():
    class ReadOnly:  # read/seek/tell only, no readinto
        def __init__(self, data: bytes) -> None:
            self._b = io.BytesIO(data)
            self.read, self.seek, self.tell = self._b.read, self._b.seek, self._b.tell

    for kw in ({}, {"_use_new_zipfile_serialization": False}):
        raw = _torch_roundtrip({"x": torch.arange(5)}, **kw)
        assert load(ReadOnly(raw))["x"].tolist() == [0, 1, 2, 3, 4]
    import tarfile
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as tf:
        info = tarfile.TarInfo("storages")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"\x00"))
    with pytest.raises(RuntimeError, match="tar"):
        load(io.BytesIO(tar.getvalue()))


def test_argument_errors_match_torch():
    raw = _torch_roundtrip(torch.ones(1))
    with pytest.raises(RuntimeError, match="explicit pickle_module"):
        load(io.BytesIO(raw), pickle_module=pickle)
    assert load(io.BytesIO(raw), pickle_module=pickle, weights_only=False).tolist() == [1.0]
    with pytest.raises(EOFError):
        load(io.BytesIO(b""))


def test_weights_only_false_runs_full_pickle():
    out = load(io.BytesIO(_torch_roundtrip({"t": torch.ones(2), "cls": collections.deque([1])})),
               weights_only=False)
    assert out["cls"] == collections.deque([1]) and out["t"].tolist() == [1.0, 1.0]
    with pytest.raises(pickle.UnpicklingError, match="collections.deque"):
        load(io.BytesIO(_torch_roundtrip({"cls": collections.deque([1])})))


def test_whole_torch_module_maps_to_ember_with_weights_only_false():
    lin = torch.nn.Linear(2, 3)
    out = load(io.BytesIO(_torch_roundtrip(lin)), weights_only=False)
    assert type(out).__name__ == "Linear" and type(out).__module__.startswith("ember")
    assert _bits(out.weight) == _bits(lin.weight)


def test_top_level_names():
    assert ember.save is save and ember.load is load
    assert ember.serialization.add_safe_globals is not None


def test_import_does_not_pull_torch_or_heavy_modules():
    import subprocess
    code = ("import sys, ember; ember.save; import io; b = io.BytesIO(); "
            "ember.save({'a': ember.ones(2)}, b); b.seek(0); ember.load(b); "
            "print('torch' in sys.modules)")
    lazy = ("import sys, ember; print(sorted(m for m in sys.modules if m.startswith("
            "'ember.serialization.')))")
    out_lazy = subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(__file__)), timeout=60)
    # import ember loads only the light allowlist and error modules.
    assert out_lazy.stdout.strip() == ("['ember.serialization._allowlist', "
                                       "'ember.serialization._names']"), out_lazy.stderr
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)), timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_training_checkpoint_round_trip_with_ember_optim():
    ember.manual_seed(0)
    model = ember.nn.Linear(3, 2)
    opt = ember.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model(ember.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    ckpt = torch.load(io.BytesIO(_ember_bytes({"model": model.state_dict(),
                                               "optim": opt.state_dict()})), weights_only=True)
    tmodel = torch.nn.Linear(3, 2)
    tmodel.load_state_dict(ckpt["model"])
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    topt.load_state_dict(ckpt["optim"])
    topt.zero_grad()
    tmodel(torch.randn(4, 3)).pow(2).sum().backward()
    topt.step()
    back = load(io.BytesIO(_torch_roundtrip({"model": tmodel.state_dict(),
                                             "optim": topt.state_dict()})))
    model2 = ember.nn.Linear(3, 2)
    model2.load_state_dict(back["model"])
    opt2 = ember.optim.Adam(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(back["optim"])
    assert float(opt2.state_dict()["state"][0]["step"]) == 3.0
    assert _bits(model2.weight) == _bits(tmodel.weight)


@pytest.mark.cuda
def test_cuda_tensors_round_trip():
    x = ember.arange(6, dtype=ember.float32).to("cuda:0")
    raw = _ember_bytes({"x": x, "v": x[2:]})
    names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    assert [n for n in names if "/data/" in n] == ["archive/data/0"]
    out = load(io.BytesIO(raw))
    assert out["x"].device == ember.device("cuda:0") and out["v"].tolist() == [2, 3, 4, 5]
    on_cpu = load(io.BytesIO(raw), map_location="cpu")
    assert on_cpu["x"].device == ember.device("cpu")
    to_gpu = load(io.BytesIO(_torch_roundtrip(torch.ones(2))), map_location="cuda:0")
    assert to_gpu.device == ember.device("cuda:0") and to_gpu.tolist() == [1.0, 1.0]
    moved = load(io.BytesIO(_torch_roundtrip(torch.ones(2))),
                 map_location=lambda s, loc: s.cuda(0))
    assert moved.device == ember.device("cuda:0")


def test_torch_features_ember_lacks_give_clear_errors():
    cases = [(torch.zeros(3, dtype=torch.uint16), "torch.uint16"),
             (torch.zeros(2, dtype=torch.float8_e4m3fn), "float8_e4m3fn"),
             (torch.zeros(2).to_sparse(), "strided layout")]
    for t, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            load(io.BytesIO(_torch_roundtrip({"t": t})))
