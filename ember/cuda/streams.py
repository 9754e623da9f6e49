"""CUDA streams and events over CuPy's, with torch's API."""
from __future__ import annotations

from typing import Any


def _cp() -> Any:
    from ember.backend import cuda
    return cuda.xp()


class Stream:
    """A CUDA stream. ``with ember.cuda.stream(s):`` makes it current for ember's ops."""

    def __init__(self, device: Any = None, priority: int = 0, *, _cupy_stream: Any = None,
                 **kwargs: Any) -> None:
        cp = _cp()
        self._s = _cupy_stream if _cupy_stream is not None else cp.cuda.Stream(non_blocking=True)
        self.priority = priority

    @property
    def cuda_stream(self) -> int:
        return int(self._s.ptr)

    def wait_event(self, event: "Event") -> None:
        self._s.wait_event(event._e)

    def wait_stream(self, other: "Stream") -> None:
        ev = Event()
        ev.record(other)
        self.wait_event(ev)

    def record_event(self, event: "Event | None" = None) -> "Event":
        event = event or Event()
        event.record(self)
        return event

    def query(self) -> bool:
        return bool(self._s.done)

    def synchronize(self) -> None:
        self._s.synchronize()

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Stream) and other.cuda_stream == self.cuda_stream

    def __hash__(self) -> int:
        return hash(self.cuda_stream)

    def __repr__(self) -> str:
        return f"<ember.cuda.Stream cuda_stream={hex(self.cuda_stream)}>"


class Event:
    """A CUDA event, for synchronisation and timing (``elapsed_time`` in ms)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False,
                 interprocess: bool = False) -> None:
        cp = _cp()
        self._e = cp.cuda.Event(block=blocking, disable_timing=not enable_timing,
                                interprocess=interprocess)

    def record(self, stream: Stream | None = None) -> None:
        self._e.record((stream or current_stream())._s)

    def wait(self, stream: Stream | None = None) -> None:
        (stream or current_stream()).wait_event(self)

    def query(self) -> bool:
        return bool(self._e.done)

    def synchronize(self) -> None:
        self._e.synchronize()

    def elapsed_time(self, end_event: "Event") -> float:
        """Milliseconds between this event and ``end_event`` (both recorded)."""
        return float(_cp().cuda.get_elapsed_time(self._e, end_event._e))


def current_stream(device: Any = None) -> Stream:
    """The stream ember's CUDA ops run on now."""
    return Stream(_cupy_stream=_cp().cuda.get_current_stream())


def default_stream(device: Any = None) -> Stream:
    cp = _cp()
    return Stream(_cupy_stream=cp.cuda.Stream.null)


def set_stream(s: Stream) -> None:
    s._s.use()


class StreamContext:
    """Makes ``stream`` current inside the ``with`` block."""

    def __init__(self, s: Stream | None) -> None:
        self.s = s
        self.prev: Any = None

    def __enter__(self) -> Stream | None:
        if self.s is not None:
            self.prev = _cp().cuda.get_current_stream()
            self.s._s.use()
        return self.s

    def __exit__(self, *exc: Any) -> None:
        if self.prev is not None:
            self.prev.use()


def stream(s: Stream | None) -> StreamContext:
    return StreamContext(s)
