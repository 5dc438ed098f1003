"""Turning one message into the msgpack body of one frame, and back.

A frame body is a msgpack map with a ``type`` key naming the message and one
key per field.  Decoding checks every field's type and bounds; keys it does
not know are ignored, so a later minor revision can add optional fields.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgpack

from ..frozen import Frozen
from . import events as ev
from .elements import count_elements
from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError

#: Longest string field accepted (session names are at most 257 characters).
MAX_STR_LEN: Final = 4096
#: Most sessions in one ``session_list`` page.
MAX_LIST_LEN: Final = 1024
#: Most elements (see :mod:`.elements`) in one message from a client: the
#: largest, ``attach``, holds 17; this leaves room for optional fields.
MAX_ELEMENTS_FROM_CLIENT: Final = 256
#: Most elements in one message from the daemon: a ``session_list`` page of
#: 256 sessions holds about 7,400 (29 per session).
MAX_ELEMENTS_FROM_SERVER: Final = 65_536

_Check = Callable[[object, str], object]


def _fail(field: str, expected: str, value: object) -> typing.NoReturn:
    raise RemoteProtocolError(
        f"field {field!r} must be {expected}, got {type(value).__name__}", ErrorCode.BAD_MESSAGE
    )


def _check_str(value: object, field: str) -> str:
    if not isinstance(value, str):
        _fail(field, "a string", value)
    if len(value) > MAX_STR_LEN:
        raise RemoteProtocolError(f"field {field!r} is longer than {MAX_STR_LEN} characters")
    return value


def _check_int(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(field, "an integer", value)
    return value


def _check_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        _fail(field, "a boolean", value)
    return value


def _check_bytes(value: object, field: str) -> bytes:
    if not isinstance(value, bytes):
        _fail(field, "binary", value)
    return value


def _enum_check(cls: type[enum.StrEnum]) -> _Check:
    def check(value: object, field: str) -> object:
        if not isinstance(value, str):
            _fail(field, "a string", value)
        try:
            return cls(value)
        except ValueError:
            raise RemoteProtocolError(f"field {field!r} has unknown value {value!r}") from None

    return check


def _optional(inner: _Check) -> _Check:
    def check(value: object, field: str) -> object:
        return None if value is None else inner(value, field)

    return check


def _session_info(value: object, field: str) -> ev.SessionInfo:
    if not isinstance(value, dict):
        _fail(field, "a map", value)
    return typing.cast(ev.SessionInfo, _build(ev.SessionInfo, value, field + "."))


def _tuple_of_sessions(value: object, field: str) -> tuple[ev.SessionInfo, ...]:
    if not isinstance(value, list):
        _fail(field, "an array", value)
    if len(value) > MAX_LIST_LEN:
        raise RemoteProtocolError(f"field {field!r} holds more than {MAX_LIST_LEN} items")
    return tuple(_session_info(item, f"{field}[{i}]") for i, item in enumerate(value))


#: The checker for each field type, by its annotation as written in :mod:`.events`.
_SIMPLE: Final[dict[str, _Check]] = {
    "str": _check_str,
    "int": _check_int,
    "bool": _check_bool,
    "bytes": _check_bytes,
    "ErrorCode": _enum_check(ErrorCode),
    "EndReason": _enum_check(ev.EndReason),
    "SessionState": _enum_check(ev.SessionState),
    "tuple[SessionInfo, ...]": _tuple_of_sessions,
}


def _checker_for(hint: str) -> _Check:
    if hint in _SIMPLE:
        return _SIMPLE[hint]
    if hint.endswith(" | None"):
        return _optional(_checker_for(hint.removesuffix(" | None")))
    raise TypeError(f"no wire checker for {hint!r}")  # pragma: no cover - a bug in events.py


class _Field:
    __slots__ = ("check", "name", "required")

    def __init__(self, name: str, check: _Check, required: bool) -> None:
        self.name = name
        self.check = check
        self.required = required


def _fields_of(cls: type[Frozen]) -> tuple[_Field, ...]:
    hints: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        hints.update(getattr(klass, "__annotations__", {}))
    return tuple(
        _Field(name, _checker_for(hints[name]), name not in cls._defaults) for name in cls._fields
    )


class _Schema(dict[type, tuple[_Field, ...]]):
    """Each message class's fields and their checkers, worked out on first use."""

    def __missing__(self, cls: type) -> tuple[_Field, ...]:
        if not (isinstance(cls, type) and issubclass(cls, ev.Event | ev.SessionInfo)):
            raise KeyError(cls)
        fields = self[cls] = _fields_of(cls)
        return fields


_SCHEMA: Final = _Schema()
_BY_NAME: Final[dict[str, type[ev.Event]]] = {cls.TYPE: cls for cls in ev.ALL_EVENTS}


def _build(cls: type, body: Mapping[object, object], prefix: str = "") -> object:
    kwargs: dict[str, Any] = {}
    for field in _SCHEMA[cls]:
        if field.name in body:
            kwargs[field.name] = field.check(body[field.name], prefix + field.name)
        elif field.required:
            raise RemoteProtocolError(f"field {prefix + field.name!r} is missing")
    return cls(**kwargs)


def _plain(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Frozen):
        return _as_map(value)
    return value


def _as_map(obj: object) -> dict[str, object]:
    return {f.name: _plain(getattr(obj, f.name)) for f in _SCHEMA[type(obj)]}


#: The start of an ``output`` or ``input`` body as msgpack packs ``{"type": ..., "data": ...}``:
#: a map of two, ``type`` first, then the ``data`` key (its ``bin`` header follows).
OUTPUT_PREFIX: Final = b"\x82\xa4type\xa6output\xa4data"
INPUT_PREFIX: Final = b"\x82\xa4type\xa5input\xa4data"
#: The ``bin`` headers by their first byte: the size of the length that follows.
BIN_LENGTH_SIZE: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def bin_header(size: int) -> bytes:
    """The msgpack header of a ``bin`` of ``size`` bytes, as msgpack writes it."""
    if size < 0x100:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 0x10000:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def stream_data_at(
    body: bytes | bytearray, start: int, end: int
) -> tuple[type[ev.Event], int] | None:
    """Whether ``body[start:end]`` is an ``output`` or ``input`` body in the usual layout.

    Every keystroke and every chunk of output is one; recognising them
    without msgpack and the generic checks is most of an echo's decoding
    cost (run cold, between keystrokes, the generic path costs several times
    its warm cost).  Any other layout (keys in another order, extra keys)
    is left to :func:`decode_body`, which gives the same message.

    Returns:
        The message class and where its data starts (the data ends at
        ``end``), or None when it is not such a body.
    """
    if body.startswith(OUTPUT_PREFIX, start):
        cls: type[ev.Event] = ev.Output
        at = start + len(OUTPUT_PREFIX)
    elif body.startswith(INPUT_PREFIX, start):
        cls = ev.Input
        at = start + len(INPUT_PREFIX)
    else:
        return None
    if at >= end:
        return None
    width = BIN_LENGTH_SIZE.get(body[at], 0)
    data = at + 1 + width
    if not width or data > end or int.from_bytes(body[at + 1 : data], "big") != end - data:
        return None
    return cls, data


def encode_body(event: ev.Event) -> bytes:
    """Encode one message as the msgpack body of a frame."""
    kind = type(event)
    if kind is ev.Input or (
        kind is ev.Output and event.offset is None and event.cursor is None  # type: ignore[attr-defined]
    ):
        # The hot path: skip the generic walk.
        data: bytes = event.data  # type: ignore[attr-defined]
        prefix = OUTPUT_PREFIX if kind is ev.Output else INPUT_PREFIX
        return b"".join((prefix, bin_header(len(data)), data))
    if not isinstance(event, ev.Event) or type(event) is ev.Event:
        raise LocalProtocolError(f"{event!r} is not a protocol message")
    body = _as_map(event)
    body["type"] = event.TYPE
    encoded: bytes = msgpack.packb(body)
    return encoded


def decode_body(body: bytes, max_bin_len: int, max_elements: int) -> ev.Event:
    """Decode and check one frame body.

    Raises:
        RemoteProtocolError: the body holds more than ``max_elements`` elements,
            is not valid msgpack, not a map, names an unknown message, or has a
            field of the wrong type.
    """
    if len(body) > max_elements:  # every element takes a byte at least: else no need
        count_elements(body, max_elements)
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_str_len=4 * MAX_STR_LEN,  # bytes; _check_str counts characters
            max_bin_len=max_bin_len,
            max_array_len=MAX_LIST_LEN,
            max_map_len=64,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types for bad input
        raise RemoteProtocolError(
            f"frame body is not valid msgpack ({type(exc).__name__}: {exc})", ErrorCode.BAD_FRAME
        ) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"a message must be a map, got {type(obj).__name__}")
    name = obj.get("type")
    if not isinstance(name, str):
        raise RemoteProtocolError("a message needs a string 'type' field")
    cls = _BY_NAME.get(name)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {name[:64]!r}")
    return typing.cast(ev.Event, _build(cls, obj))
