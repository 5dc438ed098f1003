"""The sans-io connection object: bytes in, events out; events in, bytes out.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack
(see :mod:`.codec`).  The length is checked before anything is buffered, so a
peer can never make us hold more than ``max_frame_size`` + 4 bytes of one
incomplete frame.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Final

from . import codec
from . import events as ev
from .errors import ErrorCode, RemoteProtocolError
from .state import Role, State, StateMachine

#: Default bound on one frame's body, in bytes (either direction).
DEFAULT_MAX_FRAME_SIZE: Final = 1024 * 1024
#: Largest ``data`` in one ``output`` or ``input`` message that we send.
MAX_DATA_CHUNK: Final = 256 * 1024
_HEADER: Final = 4
#: Elements (see :mod:`.elements`) in an ``output`` or ``input`` message.
STREAM_DATA_ELEMENTS: Final = 5


class EncodedOutput:
    """Output encoded once as ``output`` frames, to be sent as it is on any connection.

    A session's output goes to every attached client alike: the daemon frames
    each chunk once and every client's connection sends the same bytes
    (:meth:`Connection.send_encoded`).  Data longer than :data:`MAX_DATA_CHUNK`
    becomes several frames.  The bytes are exactly those of
    ``Connection.send(Output(data))`` for each piece.

    Attributes:
        size: bytes of output data it carries (not counting the framing).
        frames: the frames, ready to send.
    """

    __slots__ = ("frames", "size")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.size = size = len(data)
        if size <= MAX_DATA_CHUNK:
            header = codec.bin_header(size)
            body_len = len(codec.OUTPUT_PREFIX) + len(header) + size
            self.frames = b"".join(
                (body_len.to_bytes(_HEADER, "big"), codec.OUTPUT_PREFIX, header, data)
            )
            return
        view = memoryview(data)
        self.frames = b"".join(
            EncodedOutput(view[start : start + MAX_DATA_CHUNK]).frames
            for start in range(0, size, MAX_DATA_CHUNK)
        )

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"EncodedOutput(size={self.size})"


class Sentinel(enum.Enum):
    NEED_DATA = "need_data"
    CLOSED = "closed"


#: Stands for any ``output`` message when the state machine checks an encoded one.
_OUTPUT_PROBE: Final = ev.Output(b"")

NEED_DATA: Final = Sentinel.NEED_DATA
CLOSED: Final = Sentinel.CLOSED


class Connection:
    """One end of a control connection.

    Args:
        our_role: ``Role.CLIENT`` or ``Role.SERVER``.
        max_frame_size: the largest frame body accepted from the peer.
        max_elements: the most msgpack elements accepted in one message from
            the peer (see :mod:`.elements`); by default the bound for the
            peer's role.
    """

    def __init__(
        self,
        our_role: Role,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_elements: int | None = None,
    ) -> None:
        self.our_role: Final = our_role
        self.their_role: Final = Role.SERVER if our_role is Role.CLIENT else Role.CLIENT
        self.max_frame_size: Final = max_frame_size
        if max_elements is None:
            from_server = self.their_role is Role.SERVER
            max_elements = (
                codec.MAX_ELEMENTS_FROM_SERVER if from_server else codec.MAX_ELEMENTS_FROM_CLIENT
            )
        self.max_elements: Final = max_elements
        #: An ``output`` or ``input`` message holds 5 elements: decode them quickly
        #: (see :func:`.codec.stream_data_at`) unless the bound is lower still.
        self._quick = max_elements >= STREAM_DATA_ELEMENTS
        #: The peer's stream data while streaming: a client reads ``output``,
        #: the server ``input`` (see :meth:`_stream_data`).
        self._their_data: Final = ev.Output if self.their_role is Role.SERVER else ev.Input
        self._machine = StateMachine()
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    @property
    def state(self) -> State:
        return self._machine.state

    def send(self, event: ev.Event) -> bytes:
        """Return the bytes that carry ``event`` to the peer.

        Raises:
            LocalProtocolError: ``event`` may not be sent in the current state.
        """
        body = codec.encode_body(event)
        self._machine.process(self.our_role, event, ours=True)
        return len(body).to_bytes(_HEADER, "big") + body

    def send_encoded(self, output: EncodedOutput) -> bytes:
        """Return the bytes of ``output``, framed beforehand, for this connection.

        The state machine checks it as it checks an ``output`` message: only
        the server sends it, and only while streaming.

        Raises:
            LocalProtocolError: output may not be sent in the current state.
        """
        self._machine.process(self.our_role, _OUTPUT_PROBE, ours=True)
        return output.frames

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer; ``b""`` means the peer closed."""
        if not data:
            self._eof = True
            return
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buf) - self._pos

    def next_event(self) -> ev.Event | Sentinel:
        """Return the next complete event, ``NEED_DATA`` or ``CLOSED``.

        Raises:
            RemoteProtocolError: the peer sent a bad frame or an illegal message;
                the connection is then in state ERROR and raises again if asked.
        """
        state = self._machine.state
        if state is State.STREAMING and self._quick:
            data = self._stream_data()
            if data is not None:
                return data
        elif state is State.ERROR:
            raise RemoteProtocolError("connection is in ERROR state", ErrorCode.BAD_FRAME)
        while True:
            event = self._next_frame_event()
            if isinstance(event, Sentinel):
                return event
            if self._machine.process(self.their_role, event, ours=False):
                return event

    def events(self) -> Iterator[ev.Event]:
        """Yield every complete event buffered so far."""
        while True:
            event = self.next_event()
            if isinstance(event, Sentinel):
                return
            yield event

    def _stream_data(self) -> ev.Event | None:
        """The next frame, if it is the peer's stream data in the usual layout.

        The hot path of every keystroke and chunk of output, in one call: such
        a frame is always allowed while streaming, so the state machine has
        nothing to check.  Anything else (another message, another layout, a
        frame not all here or too large) is None: the general path reads it.
        """
        buf = self._buf
        pos = self._pos
        head = pos + _HEADER
        if len(buf) < head:
            return None
        end = head + int.from_bytes(buf[pos:head], "big")
        if end > len(buf) or end - head > self.max_frame_size:
            return None
        found = codec.stream_data_at(buf, head, end)
        if found is None or found[0] is not self._their_data:
            return None
        event: ev.Event = found[0](bytes(buf[found[1] : end]))
        if end == len(buf):
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return event

    def _taken(self, end: int) -> None:
        """The buffer's bytes before ``end`` are decoded."""
        self._pos = end
        if end == len(self._buf):
            self._buf.clear()
            self._pos = 0

    def _next_frame_event(self) -> ev.Event | Sentinel:
        available = len(self._buf) - self._pos
        if available >= _HEADER:
            start = self._pos + _HEADER
            size = int.from_bytes(self._buf[self._pos : start], "big")
            if size == 0 or size > self.max_frame_size:
                self._machine.state = State.ERROR
                if size == 0:
                    raise RemoteProtocolError("empty frame", ErrorCode.BAD_FRAME)
                raise RemoteProtocolError(
                    f"frame of {size} bytes exceeds the limit of {self.max_frame_size}",
                    ErrorCode.FRAME_TOO_LARGE,
                )
            if available >= _HEADER + size:
                end = start + size
                found = codec.stream_data_at(self._buf, start, end) if self._quick else None
                if found is not None:
                    kind, at = found
                    with memoryview(self._buf) as view:
                        event: ev.Event = kind(bytes(view[at:end]))  # type: ignore[call-arg]
                    self._taken(end)
                    return event
                body = bytes(self._buf[start:end])
                self._taken(end)
                try:
                    return codec.decode_body(body, self.max_frame_size, self.max_elements)
                except RemoteProtocolError:
                    self._machine.state = State.ERROR
                    raise
        if self._eof:
            if available:
                self._machine.state = State.ERROR
                raise RemoteProtocolError(
                    f"connection closed inside a frame ({available} bytes left over)",
                    ErrorCode.BAD_FRAME,
                )
            return CLOSED
        return NEED_DATA
