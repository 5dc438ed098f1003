"""A client's bounded output queue, fed by a session's reader without ever blocking it.

The session's reader calls :meth:`Subscriber.push` for every batch; it never
waits.  A subscriber whose queue would grow past its bound is ended as
*lagged* and dropped from the session, so one stalled client costs only
itself.

Live output arrives framed already (:class:`~consoled.protocol.EncodedOutput`,
encoded once for all clients).  While the client's pump waits with nothing
queued, a push first offers the frame to :attr:`Subscriber.send_now`, which
writes it straight to the client's socket: an echo then needs no task switch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..protocol import EncodedOutput
from ..protocol.events import EndReason
from .sizepolicy import ClientSize

if TYPE_CHECKING:
    from ..io import _relay
    from .channel import InputRelay


@dataclass(frozen=True, slots=True)
class EndNotice:
    reason: EndReason
    message: str
    exit_code: int | None = None


class Subscriber:
    """One attached client (or ``logs -f`` follower) of a session.

    Args:
        limit: bytes of live output that may wait here before the client is lagged.
        read_only: the client's input and size are ignored.
        label: names the client in logs.
        follower: a ``logs -f`` reader rather than an attached client.
        raw: wants the output as bytes rather than framed (see :attr:`raw`).
    """

    def __init__(
        self,
        limit: int,
        *,
        read_only: bool,
        label: str,
        follower: bool = False,
        raw: bool = False,
    ) -> None:
        self.limit = limit
        self.read_only = read_only or follower
        self.follower = follower
        #: Takes the output as bytes, not framed (a ``logs`` reader filters it first).
        self.raw = raw
        self.label = label
        self.size: ClientSize | None = None
        self._chunks: deque[bytes | EncodedOutput] = deque()
        self._queued = 0
        self._allowance = 0  # replay bytes that do not count against the limit
        self._wakeup = trio.Event()
        self.end_notice: EndNotice | None = None
        self.ended = trio.Event()
        #: Stream offset of the next byte :meth:`take` returns: where a client
        #: that lost this stream resumes.
        self.offset = 0
        #: Writes output to the client now, without waiting; False if it cannot
        #: (then it is queued).  Set by the pump; used only while it waits.
        self.send_now: Callable[[EncodedOutput], bool] | None = None
        self._pump_waiting = False
        #: Called (once) when the subscriber is ended as lagged: its stream bounds
        #: how long delivering the ``ended`` notice may take.
        self.on_lagged: Callable[[], None] | None = None
        #: The native relay's link to this client (see :mod:`..io.relay`): what
        #: its thread wrote to the client is not queued here, only counted.
        self.link: _relay.Link | None = None
        #: Lets that thread read the client's input (see .streams.RelayedInput).
        self.relayed_input: InputRelay | None = None

    @property
    def queued(self) -> int:
        return self._queued

    def preload(self, chunks: list[bytes]) -> None:
        """Queue replayed scrollback; it does not count against the live limit."""
        for chunk in chunks:
            self._chunks.append(chunk)
            self._queued += len(chunk)
            self._allowance += len(chunk)
        if chunks:
            self._wakeup.set()

    def push(self, data: bytes | EncodedOutput) -> bool:
        """Queue live output, or send it at once (see :attr:`send_now`).

        It goes straight to the client only when nothing is queued and the
        pump is waiting, so holds nothing either: it cannot overtake older
        output.  It then counts as taken (the offset moves past it).

        Returns:
            False if the subscriber is (now) ended: the caller drops it.
        """
        if self.end_notice is not None:
            return False
        if self._queued + len(data) > self.limit + self._allowance:
            self.end(
                EndReason.LAGGED,
                f"this client fell more than {self.limit} bytes behind the output",
            )
            return False
        if (
            self._pump_waiting
            and not self._chunks
            and self.send_now is not None
            and isinstance(data, EncodedOutput)
            and self.send_now(data)
        ):
            self.offset += data.size
            return True
        self._chunks.append(data)
        self._queued += len(data)
        self._wakeup.set()
        return True

    def end(self, reason: EndReason, message: str = "", exit_code: int | None = None) -> None:
        """End the stream; queued output is still delivered unless it lagged or detached,
        or the daemon is restarting (the client resumes from what it has)."""
        if self.end_notice is not None:
            return
        self.end_notice = EndNotice(reason, message, exit_code)
        if reason in (EndReason.LAGGED, EndReason.DETACHED, EndReason.RESTARTING):
            self._chunks.clear()
            self._queued = 0
        self._wakeup.set()
        self.ended.set()
        if reason is EndReason.LAGGED and self.on_lagged is not None:
            self.on_lagged()

    def take(self, max_bytes: int) -> list[bytes | EncodedOutput]:
        """Take queued chunks, about ``max_bytes`` worth (at least one)."""
        out: list[bytes | EncodedOutput] = []
        total = 0
        chunks = self._chunks
        while chunks and (not out or total + len(chunks[0]) <= max_bytes):
            chunk = chunks.popleft()
            out.append(chunk)
            total += len(chunk)
        self._queued -= total
        self.offset += total
        self._allowance = max(0, self._allowance - total)
        if not chunks and self.end_notice is None:
            self._wakeup = trio.Event()
        return out

    @property
    def resume_offset(self) -> int:
        """Where the client resumes: past what it got from us and from the relay's thread.

        Only once the link is deactivated (see :meth:`.Channel.deactivate_link`).
        """
        if self.link is None:
            return self.offset
        return max(self.offset, self.link.handled)

    def wake(self) -> None:
        """Wake the pump with nothing queued (a frame it must finish was started)."""
        self._wakeup.set()

    async def wait_output(self) -> None:
        """Wait until there is output to take or the stream has ended (or :meth:`wake`)."""
        self._pump_waiting = True
        try:
            await self._wakeup.wait()
        finally:
            self._pump_waiting = False
