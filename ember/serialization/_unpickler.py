"""Unpicklers for checkpoints: a restricted one (``weights_only=True``) and a full one.

The restricted unpickler interprets pickle opcodes itself, in the manner of torch's
``_weights_only_unpickler`` and CPython's ``pickle._Unpickler``, so it decides on every
opcode: globals resolve only through an allowlist (torch's tensor machinery, containers,
``torch.Size``/``device``/dtypes, plus what the user added with :func:`add_safe_globals`);
calls (REDUCE, NEWOBJ, BUILD ...) go only to allowed callables, which check their
arguments; extension codes and out-of-band buffers are refused; every length is checked
against the bytes left before anything is allocated. A rejection raises
:class:`pickle.UnpicklingError` naming the opcode and the global, and nothing from the file
has been executed.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import pickle
import struct
from typing import IO, Any, Callable

from ember import dtypes as _dt
from ember.backend.device import device
from ember.serialization import _rebuild
from ember.serialization._names import (
    KNOWN_UNSUPPORTED_DTYPES, STORAGE_TYPES, UNSUPPORTED_STORAGES, CheckpointError,
    WeightsOnlyError, unsupported_dtype)
from ember.serialization._allowlist import (  # noqa: F401  (re-exported)
    add_safe_globals, clear_safe_globals, get_safe_globals, safe_globals, user_allowed)
from ember.tensor import Size, Tensor

__all__ = ["add_safe_globals", "get_safe_globals", "clear_safe_globals", "safe_globals",
           "SafeUnpickler", "make_full_unpickler", "resolve_torch_global",
           "get_unsafe_globals_in_pickle"]

# Never allowed, even when a user allowlists something from them (torch blocks the first
# four; the rest run programs, import modules or unpickle without restriction).
_BLOCKED_MODULES = {"sys", "os", "posix", "nt", "subprocess", "importlib", "runpy", "ctypes",
                    "pickle", "_pickle", "marshal", "code", "codeop", "pty", "shutil", "socket",
                    "posixpath", "ntpath", "io", "_io", "webbrowser", "platform"}
_BLOCKED_BUILTINS = {"eval", "exec", "compile", "getattr", "setattr", "delattr", "__import__",
                     "open", "globals", "locals", "vars", "breakpoint", "input", "exit", "quit",
                     "help", "memoryview", "type", "object", "super", "classmethod",
                     "staticmethod", "property"}

# ---------------------------------------------------------------------- checked callables
_TEXT_CODECS = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "ascii",
                          "utf-8", "utf8"})


def _safe_encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
    # Protocol 2 pickles bytes as _codecs.encode(str, 'latin1'); any other codec could run
    # arbitrary codec machinery, so only the plain text codecs are accepted.
    # The name is checked as text, before codecs.lookup could import an encodings module.
    if rest or type(text) is not str or type(encoding) is not str or \
            encoding.lower().replace("_", "-") not in _TEXT_CODECS:
        raise CheckpointError(f"[load] _codecs.encode is allowed only on str with a latin1/"
                              f"ascii/utf-8 codec, got encoding {encoding!r}")
    return text.encode(encoding)


def _items(args: tuple, what: str) -> Any:
    if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset, dict))):
        raise CheckpointError(f"[load] {what} may only be built from a list, tuple, set or dict")
    return args[0] if args else ()


def _safe_set(*args: Any) -> set:
    return set(_items(args, "set"))


def _safe_frozenset(*args: Any) -> frozenset:
    return frozenset(_items(args, "frozenset"))


def _safe_ordered_dict(*args: Any) -> collections.OrderedDict:
    return collections.OrderedDict(_items(args, "OrderedDict"))


def _safe_counter(*args: Any) -> collections.Counter:
    return collections.Counter(_items(args, "Counter"))


def _safe_bytearray(*args: Any) -> bytearray:
    # bytearray(n) would allocate n bytes: only data already in the file is accepted.
    if len(args) > 1 or (args and type(args[0]) not in (bytes, list, tuple)):
        raise CheckpointError("[load] bytearray may only be built from bytes or a list")
    return bytearray(*args)


def _safe_complex(*args: Any) -> complex:
    if len(args) > 2 or any(type(a) not in (int, float) for a in args):
        raise CheckpointError("[load] complex may only be built from numbers")
    return complex(*args)


def _safe_device(*args: Any) -> device:
    if not 1 <= len(args) <= 2 or type(args[0]) is not str or \
            (len(args) == 2 and type(args[1]) is not int):
        raise CheckpointError(f"[load] invalid device arguments {args!r}")
    try:
        return device(*args)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"[load] invalid device {args!r}: {exc}") from None


class _Lazy:
    """An allowed global resolved only when a checkpoint names it (avoids importing nn)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


_BUILTINS = {
    "collections.OrderedDict": (collections.OrderedDict, _safe_ordered_dict),
    "collections.Counter": (collections.Counter, _safe_counter),
    "builtins.set": (set, _safe_set),
    "builtins.frozenset": (frozenset, _safe_frozenset),
    "builtins.bytearray": (bytearray, _safe_bytearray),
    "builtins.complex": (complex, _safe_complex),
    "_codecs.encode": (codecs.encode, _safe_encode),
    "torch.Size": (Size, _rebuild.checked_size),
    "torch.device": (device, _safe_device),
}


def resolve_torch_global(full: str) -> Any:
    """The ember object for a torch global name, or ``None`` when it is not one of torch's
    serialization names. Raises CheckpointError for torch features ember lacks."""
    if full in _BUILTINS:
        return _BUILTINS[full][0]
    fn = _rebuild.REBUILD_FUNCTIONS.get(full)
    if fn is not None:
        return fn
    module, _, name = full.rpartition(".")
    if module in ("torch", "torch.cuda", "torch.storage") and name.endswith("Storage"):
        if name in STORAGE_TYPES:
            return STORAGE_TYPES[name]
        if name == "TypedStorage":
            return STORAGE_TYPES["UntypedStorage"]
        if name in UNSUPPORTED_STORAGES:
            raise unsupported_dtype(name)
        return None
    if module == "torch":
        if name in _dt._NAMES:
            return _dt._NAMES[name]
        if name in KNOWN_UNSUPPORTED_DTYPES:
            raise unsupported_dtype(name)
        if name == "Tensor":
            return Tensor
    if full in ("torch.nn.parameter.Parameter", "torch.nn.Parameter"):
        return _rebuild._parameter_class()
    return None


def _checked_callable(obj: Any) -> Callable[..., Any] | None:
    """The checked implementation to run when ``obj`` is called by REDUCE, if allowed."""
    for real, safe in _BUILTINS.values():
        if obj is real:
            return safe
    if obj in _rebuild.REBUILD_FUNCTIONS.values():
        return obj
    if isinstance(obj, type) and obj.__name__ == "Parameter" and \
            obj.__module__ == "ember.nn.parameter":
        return obj
    return None


# ---------------------------------------------------------------------- the restricted unpickler
class _External(Exception):
    """Carries an exception raised by caller code (map_location, an allowlisted class) through
    the unpickler's own error translation unchanged."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc


def _external(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except CheckpointError:
        raise
    except Exception as exc:
        raise _External(exc) from None


_OPNAMES = {op.code.encode("latin-1")[0]: op.name for op in __import__("pickletools").opcodes}


class SafeUnpickler:
    """Unpickle ``stream`` allowing only safe globals and calls (``weights_only=True``).

    Args:
        stream: a binary file object positioned at the pickle.
        persistent_load: called with each persistent id (storages).
        encoding, errors: how to decode Python 2 ``str`` (``'bytes'`` keeps bytes).
    """

    def __init__(self, stream: IO[bytes], persistent_load: Callable[[Any], Any],
                 encoding: str = "utf-8", errors: str = "strict") -> None:
        self._f = stream
        self._read = stream.read
        self._readline = stream.readline
        self.persistent_load = persistent_load
        self.encoding = encoding
        self.errors = errors
        self.proto = 0
        start = stream.tell()
        stream.seek(0, io.SEEK_END)
        self._end = stream.tell()
        stream.seek(start)
        self._user = user_allowed()

    # ------------------------------------------------------------------ helpers
    def _fail(self, msg: str, policy: bool = False) -> CheckpointError:
        cls = WeightsOnlyError if policy else CheckpointError
        return cls(f"[load] weights_only unpickler: {msg} (opcode {self._opname} at byte "
                   f"{self._pos})")

    def _refuse(self, msg: str) -> CheckpointError:
        return self._fail(msg, policy=True)

    def read(self, n: int) -> bytes:
        if n < 0:
            raise self._fail(f"negative length {n}")
        if n > 65536 and n > self._end - self._f.tell():
            raise self._fail(f"length {n} runs past the end of the data (truncated or hostile)")
        data = self._read(n)
        if len(data) != n:
            raise self._fail("pickle data was truncated")
        return data

    def readline(self) -> bytes:
        line = self._readline(1 << 16)
        if not line.endswith(b"\n"):
            raise self._fail("pickle data was truncated (or a text line is too long)")
        return line[:-1]

    def _pop_mark(self) -> list:
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _decode_str(self, data: bytes) -> Any:
        if self.encoding == "bytes":
            return data
        return data.decode(self.encoding, self.errors)

    def _resolve(self, module: str, name: str, opname: str) -> Any:
        if self.proto < 3:  # Python 2 names, as pickle's fix_imports does
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if module.split(".")[0] in _BLOCKED_MODULES or \
                (module == "builtins" and name in _BLOCKED_BUILTINS):
            raise self._refuse(f"{opname} {full} is blocked: loading it could run code")
        obj = resolve_torch_global(full)
        if obj is not None:
            return obj.fn() if isinstance(obj, _Lazy) else obj
        if full in self._user:
            return self._user[full]
        raise self._refuse(
            f"{opname} {full} is not an allowed global. If you trust this checkpoint, allow it "
            f"with ember.serialization.add_safe_globals([{name}]) or the "
            f"ember.serialization.safe_globals([{name}]) context manager, or load with "
            f"weights_only=False")

    def _is_user_type(self, cls: Any) -> bool:
        return any(cls is v for v in self._user.values())

    def _call(self, func: Any, args: Any, opname: str) -> Any:
        if not isinstance(args, tuple):
            raise self._fail(f"{opname} arguments must be a tuple, got {type(args).__name__}")
        safe = _checked_callable(func)
        if safe is not None:
            return safe(*args)
        if self._is_user_type(func):
            return _external(func, *args)
        raise self._refuse(f"{opname} refuses to call {func!r}: not an allowed callable")

    # ------------------------------------------------------------------ main loop
    def load(self) -> Any:
        """Read one pickle and return the object it describes."""
        self.stack: list = []
        self.metastack: list = []
        self.memo: dict = {}
        self._opname = "?"
        self._pos = self._f.tell()
        dispatch = self._dispatch
        try:
            while True:
                self._pos = self._f.tell()
                key = self._read(1)
                if not key:
                    raise self._fail("pickle data was truncated (no STOP)")
                code = key[0]
                self._opname = _OPNAMES.get(code, f"0x{code:02x}")
                handler = dispatch.get(code)
                if handler is None:
                    raise self._refuse(f"unsupported or unsafe opcode {self._opname}")
                if handler(self):
                    return self.stack.pop()
        except CheckpointError:
            raise
        except _External as ext:
            raise ext.exc
        except (LookupError, struct.error, ValueError, TypeError, UnicodeError, OverflowError,
                AttributeError, RecursionError, EOFError, MemoryError) as exc:
            raise self._fail(f"malformed pickle: {type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------------ opcode handlers
    def _proto(self) -> None:
        proto = self.read(1)[0]
        if proto > pickle.HIGHEST_PROTOCOL:
            raise self._fail(f"unsupported pickle protocol {proto}")
        self.proto = proto

    def _frame(self) -> None:
        size = struct.unpack("<Q", self.read(8))[0]
        if size > self._end - self._f.tell():
            raise self._fail("frame runs past the end of the data")

    def _stop(self) -> bool:
        if self.metastack:
            raise self._fail("MARK without matching pop at STOP")
        if len(self.stack) != 1:
            raise self._fail(f"the stack holds {len(self.stack)} items at STOP")
        return True

    def _mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def _pop(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()

    def _pop_mark_op(self) -> None:
        self._pop_mark()

    def _dup(self) -> None:
        self.stack.append(self.stack[-1])

    def _push(self, value: Any) -> None:
        self.stack.append(value)

    # numbers
    def _int(self) -> None:
        data = self.readline()
        if data == b"00":
            self._push(False)
        elif data == b"01":
            self._push(True)
        else:
            self._push(int(data, 0))

    def _binint(self) -> None:
        self._push(struct.unpack("<i", self.read(4))[0])

    def _binint1(self) -> None:
        self._push(self.read(1)[0])

    def _binint2(self) -> None:
        self._push(struct.unpack("<H", self.read(2))[0])

    def _long(self) -> None:
        data = self.readline()
        if data.endswith(b"L"):
            data = data[:-1]
        self._push(int(data, 0))

    def _long1(self) -> None:
        n = self.read(1)[0]
        self._push(int.from_bytes(self.read(n), "little", signed=True))

    def _long4(self) -> None:
        n = struct.unpack("<i", self.read(4))[0]
        self._push(int.from_bytes(self.read(n), "little", signed=True))

    def _float(self) -> None:
        self._push(float(self.readline()))

    def _binfloat(self) -> None:
        self._push(struct.unpack(">d", self.read(8))[0])

    # strings and bytes
    def _string(self) -> None:
        data = self.readline()
        if len(data) < 2 or data[0] != data[-1] or data[:1] not in (b'"', b"'"):
            raise self._fail("the STRING opcode argument must be quoted")
        self._push(self._decode_str(codecs.escape_decode(data[1:-1])[0]))

    def _binstring(self) -> None:
        n = struct.unpack("<i", self.read(4))[0]
        self._push(self._decode_str(self.read(n)))

    def _short_binstring(self) -> None:
        self._push(self._decode_str(self.read(self.read(1)[0])))

    def _binbytes(self) -> None:
        self._push(self.read(struct.unpack("<I", self.read(4))[0]))

    def _short_binbytes(self) -> None:
        self._push(self.read(self.read(1)[0]))

    def _binbytes8(self) -> None:
        self._push(self.read(struct.unpack("<Q", self.read(8))[0]))

    def _bytearray8(self) -> None:
        self._push(bytearray(self.read(struct.unpack("<Q", self.read(8))[0])))

    def _unicode(self) -> None:
        self._push(str(self.readline(), "raw-unicode-escape"))

    def _binunicode(self) -> None:
        self._push(str(self.read(struct.unpack("<I", self.read(4))[0]), "utf-8", "surrogatepass"))

    def _short_binunicode(self) -> None:
        self._push(str(self.read(self.read(1)[0]), "utf-8", "surrogatepass"))

    def _binunicode8(self) -> None:
        self._push(str(self.read(struct.unpack("<Q", self.read(8))[0]), "utf-8", "surrogatepass"))

    # constants
    def _none(self) -> None:
        self._push(None)

    def _true(self) -> None:
        self._push(True)

    def _false(self) -> None:
        self._push(False)

    # containers
    def _empty_tuple(self) -> None:
        self._push(())

    def _tuple(self) -> None:
        self._push(tuple(self._pop_mark()))

    def _tuple1(self) -> None:
        self.stack[-1] = (self.stack[-1],)

    def _tuple2(self) -> None:
        if len(self.stack) < 2:
            raise IndexError("stack underflow")
        self.stack[-2:] = [(self.stack[-2], self.stack[-1])]

    def _tuple3(self) -> None:
        if len(self.stack) < 3:
            raise IndexError("stack underflow")
        self.stack[-3:] = [(self.stack[-3], self.stack[-2], self.stack[-1])]

    def _empty_list(self) -> None:
        self._push([])

    def _list(self) -> None:
        self._push(self._pop_mark())

    def _empty_dict(self) -> None:
        self._push({})

    def _dict(self) -> None:
        items = self._pop_mark()
        if len(items) % 2:
            raise self._fail("DICT needs key/value pairs")
        self._push({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    def _empty_set(self) -> None:
        self._push(set())

    def _frozenset(self) -> None:
        self._push(frozenset(self._pop_mark()))

    def _append(self) -> None:
        value = self.stack.pop()
        target = self.stack[-1]
        if type(target) is not list:
            raise self._fail(f"APPEND only works on lists, got {type(target).__name__}")
        target.append(value)

    def _appends(self) -> None:
        items = self._pop_mark()
        target = self.stack[-1]
        if type(target) is not list:
            raise self._fail(f"APPENDS only works on lists, got {type(target).__name__}")
        target.extend(items)

    def _check_mapping(self, target: Any) -> None:
        if type(target) not in (dict, collections.OrderedDict, collections.Counter):
            raise self._fail(f"{self._opname} only works on dict, OrderedDict and Counter, got "
                             f"{type(target).__name__}")

    def _setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._check_mapping(self.stack[-1])
        self.stack[-1][key] = value

    def _setitems(self) -> None:
        items = self._pop_mark()
        target = self.stack[-1]
        self._check_mapping(target)
        if len(items) % 2:
            raise self._fail("SETITEMS needs key/value pairs")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _additems(self) -> None:
        items = self._pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise self._fail(f"ADDITEMS only works on sets, got {type(target).__name__}")
        target.update(items)

    # memo
    def _memo_get(self, index: int) -> None:
        if index not in self.memo:
            raise self._fail(f"memo key {index} is not defined")
        self._push(self.memo[index])

    def _get(self) -> None:
        self._memo_get(int(self.readline()))

    def _binget(self) -> None:
        self._memo_get(self.read(1)[0])

    def _long_binget(self) -> None:
        self._memo_get(struct.unpack("<I", self.read(4))[0])

    def _memo_put(self, index: int) -> None:
        if index < 0:
            raise self._fail("negative memo index")
        self.memo[index] = self.stack[-1]

    def _put(self) -> None:
        self._memo_put(int(self.readline()))

    def _binput(self) -> None:
        self._memo_put(self.read(1)[0])

    def _long_binput(self) -> None:
        self._memo_put(struct.unpack("<I", self.read(4))[0])

    def _memoize(self) -> None:
        self.memo[len(self.memo)] = self.stack[-1]

    # persistent ids
    def _persid(self) -> None:
        pid = self.readline().decode("ascii")
        self._push(_external(self.persistent_load, pid))

    def _binpersid(self) -> None:
        self._push(_external(self.persistent_load, self.stack.pop()))

    # globals and calls: the only places where the file could reach code
    def _global(self) -> None:
        module = self.readline().decode("utf-8")
        name = self.readline().decode("utf-8")
        self._push(self._resolve(module, name, "GLOBAL"))

    def _stack_global(self) -> None:
        name = self.stack.pop()
        module = self.stack.pop()
        if type(module) is not str or type(name) is not str:
            raise self._fail("STACK_GLOBAL needs str module and name")
        self._push(self._resolve(module, name, "STACK_GLOBAL"))

    def _reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self.stack[-1] = self._call(func, args, "REDUCE")

    def _newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._push(self._new(cls, args, {}, "NEWOBJ"))

    def _newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if type(kwargs) is not dict:
            raise self._fail("NEWOBJ_EX keyword arguments must be a dict")
        self._push(self._new(cls, args, kwargs, "NEWOBJ_EX"))

    def _new(self, cls: Any, args: Any, kwargs: dict, opname: str) -> Any:
        if not isinstance(args, tuple):
            raise self._fail(f"{opname} arguments must be a tuple")
        if _checked_callable(cls) is not None and isinstance(cls, type) and \
                getattr(cls, "__name__", "") == "Parameter" and not kwargs:
            return cls(*args)
        if isinstance(cls, type) and self._is_user_type(cls):
            return _external(cls.__new__, cls, *args, **kwargs)
        raise self._refuse(f"{opname} can only create Parameters or classes allowed with "
                         f"add_safe_globals, got {cls!r}")

    def _inst(self) -> None:
        module = self.readline().decode("ascii")
        name = self.readline().decode("ascii")
        cls = self._resolve(module, name, "INST")
        args = tuple(self._pop_mark())
        self._push(self._instantiate(cls, args, "INST"))

    def _obj(self) -> None:
        args = self._pop_mark()
        if not args:
            raise self._fail("OBJ needs a class")
        cls = args.pop(0)
        self._push(self._instantiate(cls, tuple(args), "OBJ"))

    def _instantiate(self, cls: Any, args: tuple, opname: str) -> Any:
        # INST/OBJ call the class itself: only classes the user allowlisted.
        if isinstance(cls, type) and self._is_user_type(cls):
            return _external(cls, *args)
        raise self._refuse(f"{opname} may only instantiate classes allowed with add_safe_globals, "
                         f"got {cls!r}")

    def _build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Tensor):
            _rebuild._set_state(inst, state)
        elif type(inst) is collections.OrderedDict:
            if not isinstance(state, dict) or any(type(k) is not str or k.startswith("__")
                                                  for k in state):
                raise self._fail("BUILD state for an OrderedDict must be a dict of plain names")
            inst.__dict__.update(state)
        elif self._is_user_type(type(inst)):
            _external(self._build_user, inst, state)
        else:
            raise self._refuse(f"BUILD can only set state on tensors, OrderedDict and classes "
                             f"allowed with add_safe_globals, got {type(inst).__name__}")

    def _build_user(self, inst: Any, state: Any) -> None:
        setstate = getattr(inst, "__setstate__", None)
        if setstate is not None and getattr(type(inst), "__setstate__", None) is not \
                getattr(object, "__setstate__", None):
            setstate(state)
            return
        slotstate = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slotstate = state
        if state:
            inst.__dict__.update(state)
        if slotstate:
            for k, v in slotstate.items():
                setattr(inst, k, v)

    _dispatch: dict[int, Callable[["SafeUnpickler"], Any]] = {}


def _fill_dispatch() -> None:
    table = {
        pickle.PROTO: SafeUnpickler._proto, pickle.FRAME: SafeUnpickler._frame,
        pickle.STOP: SafeUnpickler._stop, pickle.MARK: SafeUnpickler._mark,
        pickle.POP: SafeUnpickler._pop, pickle.POP_MARK: SafeUnpickler._pop_mark_op,
        pickle.DUP: SafeUnpickler._dup, pickle.INT: SafeUnpickler._int,
        pickle.BININT: SafeUnpickler._binint, pickle.BININT1: SafeUnpickler._binint1,
        pickle.BININT2: SafeUnpickler._binint2, pickle.LONG: SafeUnpickler._long,
        pickle.LONG1: SafeUnpickler._long1, pickle.LONG4: SafeUnpickler._long4,
        pickle.FLOAT: SafeUnpickler._float, pickle.BINFLOAT: SafeUnpickler._binfloat,
        pickle.STRING: SafeUnpickler._string, pickle.BINSTRING: SafeUnpickler._binstring,
        pickle.SHORT_BINSTRING: SafeUnpickler._short_binstring,
        pickle.BINBYTES: SafeUnpickler._binbytes,
        pickle.SHORT_BINBYTES: SafeUnpickler._short_binbytes,
        pickle.BINBYTES8: SafeUnpickler._binbytes8, pickle.BYTEARRAY8: SafeUnpickler._bytearray8,
        pickle.UNICODE: SafeUnpickler._unicode, pickle.BINUNICODE: SafeUnpickler._binunicode,
        pickle.SHORT_BINUNICODE: SafeUnpickler._short_binunicode,
        pickle.BINUNICODE8: SafeUnpickler._binunicode8, pickle.NONE: SafeUnpickler._none,
        pickle.NEWTRUE: SafeUnpickler._true, pickle.NEWFALSE: SafeUnpickler._false,
        pickle.EMPTY_TUPLE: SafeUnpickler._empty_tuple, pickle.TUPLE: SafeUnpickler._tuple,
        pickle.TUPLE1: SafeUnpickler._tuple1, pickle.TUPLE2: SafeUnpickler._tuple2,
        pickle.TUPLE3: SafeUnpickler._tuple3, pickle.EMPTY_LIST: SafeUnpickler._empty_list,
        pickle.LIST: SafeUnpickler._list, pickle.EMPTY_DICT: SafeUnpickler._empty_dict,
        pickle.DICT: SafeUnpickler._dict, pickle.EMPTY_SET: SafeUnpickler._empty_set,
        pickle.FROZENSET: SafeUnpickler._frozenset, pickle.APPEND: SafeUnpickler._append,
        pickle.APPENDS: SafeUnpickler._appends, pickle.SETITEM: SafeUnpickler._setitem,
        pickle.SETITEMS: SafeUnpickler._setitems, pickle.ADDITEMS: SafeUnpickler._additems,
        pickle.GET: SafeUnpickler._get, pickle.BINGET: SafeUnpickler._binget,
        pickle.LONG_BINGET: SafeUnpickler._long_binget, pickle.PUT: SafeUnpickler._put,
        pickle.BINPUT: SafeUnpickler._binput, pickle.LONG_BINPUT: SafeUnpickler._long_binput,
        pickle.MEMOIZE: SafeUnpickler._memoize, pickle.PERSID: SafeUnpickler._persid,
        pickle.BINPERSID: SafeUnpickler._binpersid, pickle.GLOBAL: SafeUnpickler._global,
        pickle.STACK_GLOBAL: SafeUnpickler._stack_global, pickle.REDUCE: SafeUnpickler._reduce,
        pickle.NEWOBJ: SafeUnpickler._newobj, pickle.NEWOBJ_EX: SafeUnpickler._newobj_ex,
        pickle.INST: SafeUnpickler._inst, pickle.OBJ: SafeUnpickler._obj,
        pickle.BUILD: SafeUnpickler._build,
        # EXT1/2/4 (copyreg extension registry) and NEXT_BUFFER/READONLY_BUFFER (out-of-band
        # buffers) are deliberately absent: they are refused as unsupported opcodes.
    }
    SafeUnpickler._dispatch = {code[0]: fn for code, fn in table.items()}


_fill_dispatch()


# ---------------------------------------------------------------------- the full unpickler
def make_full_unpickler(pickle_module: Any, stream: IO[bytes],
                        persistent_load: Callable[[Any], Any], **kwargs: Any) -> Any:
    """An unpickler of ``pickle_module`` that runs anything (``weights_only=False``), with
    torch's names translated to ember's (``torch.nn.Linear`` -> ``ember.nn.Linear`` ...)."""

    class _Unpickler(pickle_module.Unpickler):  # type: ignore[name-defined]
        def find_class(self, module: str, name: str) -> Any:
            full = f"{module}.{name}"
            obj = resolve_torch_global(full)
            if obj is not None:
                return obj.fn() if isinstance(obj, _Lazy) else obj
            if module == "torch" or module.startswith("torch."):
                return _ember_counterpart(module, name)
            return super().find_class(module, name)

        def persistent_load(self, pid: Any) -> Any:
            return persistent_load(pid)

    return _Unpickler(stream, **kwargs)


def _ember_counterpart(module: str, name: str) -> Any:
    """``torch.a.b.Name`` -> ``ember.a.b.Name`` (or the nearest ember package exporting it)."""
    import importlib
    parts = ["ember"] + module.split(".")[1:]
    while parts:
        try:
            mod = importlib.import_module(".".join(parts))
        except ImportError:
            parts.pop()
            continue
        obj = mod
        for attr in name.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is not None:
            return obj
        parts.pop()
    raise pickle.UnpicklingError(f"[load] the checkpoint refers to {module}.{name}, which has no "
                                 "ember counterpart")


def get_unsafe_globals_in_pickle(data: bytes) -> list[str]:
    """The globals a pickle names that ``weights_only`` loading would refuse."""
    import pickletools
    found: list[str] = []
    allowed = user_allowed()
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            full = None
            if op.name in ("GLOBAL", "INST"):
                full = arg.replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                full = f"{strings[-2]}.{strings[-1]}"
            if full is None:
                continue
            try:
                known = resolve_torch_global(full) is not None
            except CheckpointError:
                known = False
            if not known and full not in allowed and full not in found:
                found.append(full)
    except (ValueError, IndexError) as exc:
        raise CheckpointError(f"[load] malformed pickle: {exc}") from None
    return found
