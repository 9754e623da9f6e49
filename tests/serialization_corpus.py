"""A corpus of hostile and broken checkpoint files for ``ember.load(weights_only=True)``.

Every file must be rejected with ``pickle.UnpicklingError`` and must have no side effect:
the payloads that would run code all try to create ``marker`` (through ``os.system``,
``open``, ``exec`` ...), so a test checks that the marker never appears.

The generator needs neither torch nor ember's writer for the hostile parts: pickles are
assembled opcode by opcode and zip archives byte by byte, so each file is exactly the attack
it names.
"""
from __future__ import annotations

import io
import pickle
import struct
import zlib

__all__ = ["build_corpus", "tensor_pickle", "torch_zip", "raw_zip"]


# ---------------------------------------------------------------------- pickle assembly
def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return pickle.BININT1 + bytes([value])
    data = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def _glob(module: str, name: str) -> bytes:
    return pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n"


def _tuple(*parts: bytes) -> bytes:
    return pickle.MARK + b"".join(parts) + pickle.TUPLE


def _p2(body: bytes) -> bytes:
    return pickle.PROTO + b"\x02" + body + pickle.STOP


def _call(module: str, name: str, *args: bytes) -> bytes:
    return _glob(module, name) + _tuple(*args) + pickle.REDUCE


def tensor_pickle(storage_type: str = "FloatStorage", key: str = "0", location: str = "cpu",
                  numel: int = 4, offset: int = 0, size: tuple = (4,), stride: tuple = (1,),
                  pid: bytes | None = None) -> bytes:
    """data.pkl of one tensor, as torch writes it, with every field under the caller's control."""
    if pid is None:
        pid = _tuple(_str("storage"), _glob("torch", storage_type), _str(key), _str(location),
                     _int(numel))
    args = _tuple(pid + pickle.BINPERSID, _int(offset), _tuple(*map(_int, size)),
                  _tuple(*map(_int, stride)), pickle.NEWFALSE,
                  _glob("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE)
    return _p2(_glob("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE)


# ---------------------------------------------------------------------- zip assembly
def raw_zip(entries: list[dict], *, truncate_directory: bool = False) -> bytes:
    """A zip archive assembled field by field.

    Each entry: ``name`` (str), ``data`` (bytes), optional ``method`` (0 stored, 8 deflate),
    ``flags``, ``crc``, ``size`` (claimed uncompressed size), ``offset`` (claimed local
    header offset in the central directory).
    """
    out = io.BytesIO()
    central = []
    for e in entries:
        name = e["name"].encode("utf-8")
        data = e["data"]
        method = e.get("method", 0)
        stored = zlib.compress(data)[2:-4] if method == 8 else data
        crc = e.get("crc", zlib.crc32(data) & 0xFFFFFFFF)
        size = e.get("size", len(data))
        flags = e.get("flags", 0x800)
        at = out.tell()
        out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, method, 0, 0, crc,
                              len(stored), size, len(name), 0) + name + stored)
        central.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, flags, method,
                                   0, 0, crc, len(stored), size, len(name), 0, 0, 0, 0, 0,
                                   e.get("offset", at)) + name)
    cd_at = out.tell()
    directory = b"".join(central)
    out.write(directory)
    if not truncate_directory:
        out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                              len(directory), cd_at, 0))
    return out.getvalue()


def torch_zip(data_pkl: bytes, storages: dict[str, bytes] | None = None,
              extra: dict[str, bytes] | None = None) -> bytes:
    """A well-formed torch-layout archive around ``data_pkl`` (the attack is in the pickle)."""
    from ember.serialization._zip import ZipWriter
    buf = io.BytesIO()
    writer = ZipWriter(buf, "archive")
    writer.write_record("data.pkl", data_pkl)
    writer.write_record("byteorder", "little")
    for key, data in (storages or {}).items():
        writer.write_record(f"data/{key}", data)
    for name, data in (extra or {}).items():
        writer.write_record(name, data)
    writer.finish()
    return buf.getvalue()


def _legacy(main: bytes, tail: bytes = b"") -> bytes:
    """torch's legacy stream: magic, protocol, sys_info, ``main`` pickle, then ``tail``."""
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    proto = pickle.dumps(1001, protocol=2)
    info = pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    return magic + proto + info + main + tail


# ---------------------------------------------------------------------- the corpus
def build_corpus(marker: str) -> dict[str, bytes]:
    """``{case name: file bytes}``; ``marker`` is the path every code payload tries to create."""
    touch = f"touch {marker}"
    py = f"open({marker!r}, 'w').write('pwned')"
    floats = struct.pack("<4f", 1, 2, 3, 4)
    good_tensor = tensor_pickle()
    cases: dict[str, bytes] = {}

    def pk(name: str, body: bytes) -> None:
        cases[name] = torch_zip(_p2(body), {"0": floats})

    # -- globals that run code, reached through every opcode that resolves or calls one
    pk("global_os_system", _call("os", "system", _str(touch)))
    pk("global_posix_system", _call("posix", "system", _str(touch)))
    pk("global_subprocess_popen", _call("subprocess", "Popen", _tuple(_str("touch"),
                                                                      _str(marker))))
    pk("global_subprocess_check_call", _call("subprocess", "check_call",
                                             _tuple(_str("touch"), _str(marker))))
    pk("global_builtins_eval", _call("builtins", "eval", _str(py)))
    pk("global_builtins_exec", _call("builtins", "exec", _str(py)))
    pk("global_py2_builtin_eval", _call("__builtin__", "eval", _str(py)))
    pk("global_builtins_open", _call("builtins", "open", _str(marker), _str("w")))
    pk("global_builtins_getattr", _glob("builtins", "getattr")
       + _tuple(_call("builtins", "__import__", _str("os")), _str("system")) + pickle.REDUCE
       + _tuple(_str(touch)) + pickle.REDUCE)
    pk("global_builtins_import", _call("builtins", "__import__", _str("os")))
    pk("global_numpy_runstring", _call("numpy.testing._private.utils", "runstring",
                                       _str(py), pickle.EMPTY_DICT))
    pk("global_pickle_loads", _call("pickle", "loads", pickle.SHORT_BINBYTES + b"\x01."))
    pk("global_torch_load", _call("torch", "load", _str(marker)))
    pk("global_webbrowser", _call("webbrowser", "open", _str("http://x")))
    cases["stack_global_os_system"] = torch_zip(
        pickle.PROTO + b"\x04" + _str("os") + _str("system") + pickle.STACK_GLOBAL
        + _tuple(_str(touch)) + pickle.REDUCE + pickle.STOP)
    cases["stack_global_eval"] = torch_zip(
        pickle.PROTO + b"\x04" + _str("builtins") + _str("eval") + pickle.STACK_GLOBAL
        + _tuple(_str(py)) + pickle.REDUCE + pickle.STOP)
    cases["inst_os_system"] = torch_zip(
        pickle.MARK + b"V" + touch.encode() + b"\n" + pickle.INST + b"os\nsystem\n"
        + pickle.STOP)
    cases["inst_allowed_class"] = torch_zip(
        pickle.MARK + pickle.INST + b"collections\nOrderedDict\n" + pickle.STOP)
    pk("obj_os_system", pickle.MARK + _glob("os", "system") + _str(touch) + pickle.OBJ)
    pk("obj_allowed_class", pickle.MARK + _glob("collections", "OrderedDict") + pickle.OBJ)
    pk("newobj_popen", _glob("subprocess", "Popen") + _tuple(_str("touch")) + pickle.NEWOBJ)
    pk("newobj_allowed_but_not_constructible",
       _glob("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.NEWOBJ)
    cases["newobj_ex_popen"] = torch_zip(
        pickle.PROTO + b"\x04" + _str("subprocess") + _str("Popen") + pickle.STACK_GLOBAL
        + _tuple(_str("touch")) + pickle.EMPTY_DICT + pickle.NEWOBJ_EX + pickle.STOP)
    # -- REDUCE on allowed callables with hostile arguments
    pk("reduce_on_storage_object", _tuple(_str("storage"), _glob("torch", "FloatStorage"),
                                          _str("0"), _str("cpu"), _int(4))
       + pickle.BINPERSID + pickle.EMPTY_TUPLE + pickle.REDUCE)
    pk("codecs_encode_odd_codec", _call("_codecs", "encode", _str("x"), _str("zlib_codec")))
    pk("bytearray_huge_allocation", _call("builtins", "bytearray", _int(2 ** 40)))
    pk("from_type_calls_set", _call("torch._tensor", "_rebuild_from_type_v2",
                                    _glob("builtins", "set"), _glob("torch", "Tensor"),
                                    _tuple(pickle.EMPTY_LIST), pickle.EMPTY_DICT))
    pk("rebuild_with_string_storage", _call("torch._utils", "_rebuild_tensor_v2",
                                            _str("storage"), _int(0), _tuple(_int(1)),
                                            _tuple(_int(1)), pickle.NEWFALSE, pickle.EMPTY_DICT))
    # -- BUILD abusing __setstate__ / __dict__ / attributes
    pk("build_tensor_class_swap", good_tensor[2:-1] + pickle.EMPTY_DICT + _str("__class__")
       + _glob("collections", "OrderedDict") + pickle.SETITEM + pickle.BUILD)
    pk("build_tensor_internal_slot", good_tensor[2:-1] + pickle.EMPTY_DICT + _str("_data")
       + _str("x") + pickle.SETITEM + pickle.BUILD)
    pk("build_tensor_shadows_method", good_tensor[2:-1] + pickle.EMPTY_DICT + _str("numpy")
       + _glob("collections", "OrderedDict") + pickle.SETITEM + pickle.BUILD)
    pk("from_type_state_shadows_method", _call(
        "torch._tensor", "_rebuild_from_type_v2", _glob("torch._utils", "_rebuild_tensor_v2"),
        _glob("torch", "Tensor"), good_tensor[2 + len(_glob("torch._utils",
                                                            "_rebuild_tensor_v2")):-2],
        pickle.EMPTY_DICT + _str("backward") + _int(1) + pickle.SETITEM))
    pk("build_ordereddict_dunder", _glob("collections", "OrderedDict") + pickle.EMPTY_TUPLE
       + pickle.REDUCE + pickle.EMPTY_DICT + _str("__setstate__") + _glob("builtins", "eval")
       + pickle.SETITEM + pickle.BUILD)
    pk("build_on_list", pickle.EMPTY_LIST + pickle.EMPTY_DICT + pickle.BUILD)
    pk("setitem_on_list", pickle.EMPTY_LIST + _int(0) + _int(1) + pickle.SETITEM)
    pk("append_on_dict", pickle.EMPTY_DICT + _int(0) + pickle.APPEND)
    # -- opcodes refused outright
    pk("ext1_copyreg_extension", pickle.EXT1 + b"\x01" + _tuple(_str(touch)) + pickle.REDUCE)
    pk("ext2_copyreg_extension", pickle.EXT2 + b"\x01\x00")
    pk("ext4_copyreg_extension", pickle.EXT4 + b"\x01\x00\x00\x00")
    cases["next_buffer_out_of_band"] = torch_zip(pickle.PROTO + b"\x05" + pickle.NEXT_BUFFER
                                                 + pickle.STOP)
    # -- persistent ids
    pk("persid_int", _int(0) + pickle.BINPERSID)
    pk("persid_module_kind", _tuple(_str("module"), _glob("collections", "OrderedDict"),
                                    _str("x"), _str("y")) + pickle.BINPERSID)
    pk("persid_type_is_string", _tuple(_str("storage"), _str("FloatStorage"), _str("0"),
                                       _str("cpu"), _int(4)) + pickle.BINPERSID)
    pk("persid_text_protocol0", pickle.PERSID + b"0\n")
    pk("persid_non_ascii_bytes_kind", _tuple(pickle.SHORT_BINBYTES + b"\x02\xff\xfe",
                                             _glob("torch", "FloatStorage"), _str("0"),
                                             _str("cpu"), _int(4)) + pickle.BINPERSID)
    cases["persid_key_path_traversal"] = torch_zip(tensor_pickle(key="../../etc/passwd"),
                                                   {"0": floats})
    cases["persid_key_missing_record"] = torch_zip(tensor_pickle(key="7"), {"0": floats})
    cases["persid_negative_numel"] = torch_zip(tensor_pickle(numel=-4), {"0": floats})
    cases["persid_bad_location"] = torch_zip(tensor_pickle(location="cpu; rm -rf"),
                                             {"0": floats})
    cases["persid_numel_2_60"] = torch_zip(tensor_pickle(numel=2 ** 60, size=(2 ** 60,)),
                                           {"0": floats})
    cases["storage_bytes_mismatch_short"] = torch_zip(tensor_pickle(numel=4), {"0": floats[:12]})
    cases["storage_bytes_mismatch_long"] = torch_zip(tensor_pickle(numel=4), {"0": floats * 2})
    cases["storage_used_with_two_dtypes"] = torch_zip(
        _p2(_tuple(tensor_pickle()[2:-1], tensor_pickle(storage_type="IntStorage")[2:-1])),
        {"0": floats})
    # -- tensor views outside their storage
    cases["view_size_out_of_range"] = torch_zip(tensor_pickle(size=(100,)), {"0": floats})
    cases["view_offset_out_of_range"] = torch_zip(tensor_pickle(offset=3, size=(2,)),
                                                  {"0": floats})
    cases["view_stride_out_of_range"] = torch_zip(tensor_pickle(size=(2, 2), stride=(3, 1)),
                                                  {"0": floats})
    cases["view_negative_stride"] = torch_zip(tensor_pickle(offset=3, stride=(-1,)),
                                              {"0": floats})
    cases["view_huge_dims"] = torch_zip(tensor_pickle(size=(2 ** 62, 2 ** 62), stride=(0, 0)),
                                        {"0": floats})
    # -- zip structure
    cases["zip_parent_traversal"] = raw_zip([{"name": "archive/../evil/data.pkl",
                                              "data": good_tensor}])
    cases["zip_absolute_name"] = raw_zip([{"name": "/archive/data.pkl", "data": good_tensor}])
    cases["zip_traversal_storage"] = raw_zip([{"name": "archive/data.pkl", "data": good_tensor},
                                              {"name": "archive/data/../../0", "data": floats}])
    cases["zip_two_folders"] = raw_zip([{"name": "archive/data.pkl", "data": good_tensor},
                                        {"name": "other/data/0", "data": floats}])
    cases["zip_duplicate_record"] = raw_zip([{"name": "archive/data.pkl", "data": good_tensor},
                                             {"name": "archive/data/0", "data": floats},
                                             {"name": "archive/data/0", "data": floats[::-1]}])
    cases["zip_overlapping_records"] = raw_zip([{"name": "archive/data.pkl",
                                                 "data": good_tensor},
                                                {"name": "archive/data/0", "data": floats,
                                                 "offset": 0}])
    cases["zip_crc_mismatch"] = raw_zip([{"name": "archive/data.pkl", "data": good_tensor},
                                         {"name": "archive/data/0", "data": floats,
                                          "crc": 12345}])
    cases["zip_deflate_size_bomb"] = raw_zip([{"name": "archive/data.pkl", "data": good_tensor},
                                              {"name": "archive/data/0", "data": b"\0" * 64,
                                               "method": 8, "size": 2 ** 31}])
    cases["zip_encrypted_flag"] = raw_zip([{"name": "archive/data.pkl", "data": good_tensor,
                                            "flags": 0x801}])
    cases["zip_unknown_method"] = raw_zip([{"name": "archive/data.pkl", "data": good_tensor,
                                            "method": 99}])
    cases["zip_no_central_directory_end"] = raw_zip([{"name": "archive/data.pkl",
                                                      "data": good_tensor}],
                                                    truncate_directory=True)
    good = torch_zip(good_tensor, {"0": floats})
    cases["zip_truncated_half"] = good[:len(good) // 2]
    cases["zip_truncated_tail"] = good[:-10]
    cases["zip_torchscript_archive"] = torch_zip(good_tensor, {"0": floats},
                                                 {"constants.pkl": b"\x80\x02N."})
    # -- truncated and malformed pickles
    cases["pickle_truncated"] = torch_zip(good_tensor[:len(good_tensor) // 2], {"0": floats})
    cases["pickle_no_stop"] = torch_zip(good_tensor[:-1], {"0": floats})
    cases["pickle_binbytes8_2_60"] = torch_zip(pickle.PROTO + b"\x04" + pickle.BINBYTES8
                                               + struct.pack("<Q", 2 ** 60) + pickle.STOP)
    cases["pickle_long4_huge"] = torch_zip(pickle.PROTO + b"\x02" + pickle.LONG4
                                           + struct.pack("<i", 2 ** 31 - 1) + pickle.STOP)
    cases["pickle_memo_undefined"] = torch_zip(_p2(pickle.BINGET + b"\x07"))
    cases["pickle_stack_underflow"] = torch_zip(_p2(pickle.REDUCE))
    cases["pickle_unclosed_mark"] = torch_zip(_p2(pickle.MARK + pickle.NONE))
    cases["pickle_bad_protocol"] = torch_zip(pickle.PROTO + b"\x09" + pickle.NONE + pickle.STOP)
    cases["pickle_unknown_opcode"] = torch_zip(_p2(b"\xff"))
    # -- polyglots and the legacy stream
    cases["polyglot_pickle_then_zip"] = _p2(_call("os", "system", _str(touch))) + good
    cases["polyglot_junk_then_zip"] = b"JUNK" * 16 + good
    cases["polyglot_zip_with_pickle_prefix_in_data"] = torch_zip(
        _p2(_call("builtins", "exec", _str(py))) + good_tensor, {"0": floats})
    cases["legacy_os_system"] = _legacy(_p2(_call("os", "system", _str(touch))))
    cases["legacy_bad_magic"] = pickle.dumps(1234, protocol=2) + good_tensor
    cases["legacy_numel_2_60"] = _legacy(_p2(_glob("torch._utils", "_rebuild_tensor_v2") + _tuple(
        _tuple(_str("storage"), _glob("torch", "FloatStorage"), _str("1"), _str("cpu"),
               _int(2 ** 60), pickle.NONE) + pickle.BINPERSID, _int(0), _tuple(_int(1)),
        _tuple(_int(1)), pickle.NEWFALSE, pickle.EMPTY_DICT) + pickle.REDUCE))
    cases["legacy_truncated"] = _legacy(_p2(_str("x")))[:-3]
    cases["raw_pickle_eval"] = _p2(_call("builtins", "eval", _str(py)))
    return cases
