"""The streaming half of the protocol: ``attach`` (``logs`` is in :mod:`.logstream`).

An attached client gets three tasks in a nursery of its own: the output pump
moves its bounded queue to the socket, the input loop takes keys, sizes and
detach from it, and an input writer moves its keys to the terminal.  The
writer is separate so that a program that does not read its terminal blocks
only that client's keys, never its resizes or its detach.  Whichever of the
pump and the input loop ends first ends the rest.
"""

from __future__ import annotations

import contextvars
import itertools
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Final

import structlog
import trio

from ..protocol import MAX_DATA_CHUNK, EncodedOutput, ErrorCode
from ..protocol import events as ev
from .audit import audit
from .channel import Channel
from .config import DaemonConfig
from .errors import RequestError
from .registry import SessionTable
from .screenstate import ScreenRender
from .session import Session
from .sizepolicy import size_error, valid_size
from .subscriber import Subscriber

if TYPE_CHECKING:
    from ..io import _relay

log = structlog.get_logger("consoled.stream")

#: Seconds a lagged client gets to take its "lagged" notice before it is cut off.
LAGGED_GRACE: Final = 5.0
#: Bytes of one client's input that may wait for a terminal that is not
#: reading; more is dropped (as a full tty input buffer drops keys).
INPUT_QUEUE: Final = 64 * 1024
#: Seconds a detaching client's last keys get to reach the terminal.
INPUT_FLUSH_TIMEOUT: Final = 1.0


_labels = itertools.count(1)


class StreamContext:
    """What a stream needs from the daemon: its sessions and settings."""

    def __init__(self, table: SessionTable, config: DaemonConfig) -> None:
        self.table = table
        self.config = config

    def session_for_stream(self, name: str, uid: str | None) -> Session:
        """The session, if it may take one more client (see SessionTable.get_resumed)."""
        session = self.table.get_resumed(name, uid)
        limit = self.config.limits.clients_per_session
        if len(session.hub) >= limit:
            raise RequestError(
                ErrorCode.LIMIT_EXCEEDED,
                f"session {session.name} already has {limit} clients (--max-clients-per-session)",
            )
        return session


class PendingInput:
    """One client's keys on their way to the terminal: bounded, in order."""

    def __init__(self, limit: int = INPUT_QUEUE) -> None:
        self.limit = limit
        #: Bytes of this client's input that are done with: written to the
        #: terminal, or dropped (and the client told).  A client that resumes
        #: after a restart sends again whatever lies beyond.
        self.consumed = 0
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._writing = False
        self._queued = trio.Event()
        #: Set (and replaced) whenever a write ends: waiters look again.
        self._written = trio.Event()
        self._stopped = False
        #: Starts the task that moves queued input to the terminal, on the
        #: first input that has to wait (set by the stream that owns it).
        self.start_writer: Callable[[], object] | None = None

    def put(self, data: bytes) -> bool:
        """Queue ``data``; False (and nothing queued) if it would pass the bound."""
        if self._size + len(data) > self.limit:
            return False
        if self.start_writer is not None:
            self.start_writer()
            self.start_writer = None
        self._chunks.append(data)
        self._size += len(data)
        self._queued.set()
        return True

    def unconsumed(self) -> bytes:
        """What is queued (a write cut short puts its rest back first)."""
        return b"".join(self._chunks)

    async def take(self) -> bytes | None:
        """Wait for queued input and take all of it; call :meth:`written` after.

        Returns:
            None once :meth:`stop` was called: nothing more is written.
        """
        while not self._chunks and not self._stopped:
            self._queued = trio.Event()
            await self._queued.wait()
        if self._stopped:
            return None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._writing = True
        return data

    def written(self, rest: bytes = b"") -> None:
        """The write of what :meth:`take` returned has ended (see ``consumed``);
        ``rest`` did not reach the terminal (the write was cancelled): it goes
        back to the front of the queue."""
        if rest:
            self._chunks.appendleft(rest)
            self._size += len(rest)
        self._writing = False
        self._written.set()
        self._written = trio.Event()

    @property
    def idle(self) -> bool:
        """Nothing is queued or being written."""
        return not self._chunks and not self._writing

    async def wait_idle(self) -> None:
        """Wait until everything queued has been written."""
        while self._chunks or self._writing:
            await self._written.wait()

    async def stop(self) -> None:
        """Write nothing more; wait for a write under way to end (its writer was
        cancelled).  What is queued stays queued, not consumed.

        A writer woken but not yet running would otherwise take the queue and
        write some of it before it could notice its cancellation.
        """
        self._stopped = True
        self._queued.set()
        while self._writing:
            await self._written.wait()


async def _write_input(session: Session, pending: PendingInput) -> None:
    """Move a client's keys to the terminal, waiting as long as it is not reading.

    ``pending.consumed`` counts each part as it reaches the terminal: a
    restart that stops this mid-write tells the client exactly where to go
    on, and the client sends the rest to the successor, nothing twice.
    """
    while True:
        data = await pending.take()
        if data is None:
            return  # stopped for a restart
        left = len(data)

        def wrote(n: int) -> None:
            nonlocal left
            left -= n
            pending.consumed += n

        try:
            if not await session.write_input(data, wrote):
                log.debug("input.dropped", reason="session not running")
                pending.consumed += left  # never sent again: the session is gone
                left = 0
        finally:
            pending.written(data[len(data) - left :] if left else b"")


class InputSide:
    """An attached client's input: the keys on their way, and how to stop taking more."""

    def __init__(self) -> None:
        self.pending = PendingInput()
        #: The loop reading the client's input.
        self.scope = trio.CancelScope()
        #: The task writing queued input to the terminal (see PendingInput.start_writer).
        self.writer_scope: trio.CancelScope | None = None
        #: Stopped for a restart: what is queued is the successor's to write.
        self.stopping = False
        #: The client was told how much of its input was consumed (``ended``
        #: with reason ``restarting``): it sends the rest again itself.
        self.told = False
        #: Its first keys were audited.
        self.typed = False
        #: The native relay's thread reading its input, when it may (see RelayedInput).
        self.relayed: RelayedInput | None = None

    async def stop(self) -> int:
        """Take no more input and stop writing it now: the daemon is restarting.

        Whatever has not reached the terminal (a write cut short, the keys
        still queued) is not consumed: the client sends it again to the
        successor, which writes it.  Waiting here for a terminal that is not
        reading would hold up the restart for every client, and past the
        restart's own bound lose the count the client needs.

        Returns:
            The bytes of input consumed, final from now on.
        """
        self.stopping = True
        if self.relayed is not None:
            self.relayed.stop()  # what its thread wrote is counted now, not when the loop ends
        self.scope.cancel()
        if self.writer_scope is not None:
            self.writer_scope.cancel()
        await self.pending.stop()  # at once: the writer was cancelled
        return self.pending.consumed


class RelayedInput:
    """An attached client's input read by the native relay's thread (see :mod:`..io.relay`).

    The thread reads the client's socket, writes the keys of each ``input``
    message to the terminal itself, and puts each ``window_size`` in force;
    neither an echo nor a resize then wakes the event loop before it is
    done.  It may only while nothing else could come between: the client is
    the session's only attached one (whose size is the terminal's by any
    policy, and whose typing decides nothing), may type, has no keys waiting
    for the terminal, and nothing it sent is half read here.  Anything else
    (a detach, a size out of range, a message encoded otherwise, a full
    terminal, the end of the stream) stops the thread, and :meth:`stop`
    hands what it read back to the channel.  A second client stops it too.
    """

    def __init__(
        self,
        link: _relay.Link,
        channel: Channel,
        session: Session,
        sub: Subscriber,
        inputs: InputSide,
    ) -> None:
        self.link = link
        self.channel = channel
        self.session = session
        self.sub = sub
        self.inputs = inputs
        self.returned = trio.Event()
        self.returned.set()
        self.active = False
        #: The client's connection's context (its peer, for the audit trail):
        #: the relay's events are handled in another task.
        self._context = contextvars.copy_context()
        #: The thread stopped and handed back nothing: what stopped it (the end
        #: of the stream, an error) is for the event loop's own read to see.
        self._read_here = False

    def start(self) -> bool:
        session = self.session
        if self._read_here:
            self._read_here = False
            return False
        if (
            self.sub.read_only
            or self.sub.end_notice is not None
            or self.inputs.stopping
            or not self.inputs.pending.idle
            or session.state is not ev.SessionState.RUNNING
            or session.handed_input
            or session.hub.attached != 1
            or not self.channel.reserve_input_buffer()
        ):
            return False
        if not self.link.start_input():
            self.channel.release_input_buffer()
            return False
        self.active = True
        self.returned = trio.Event()
        return True

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        stopped = self.link.input_stopped
        left, keys, written = self.link.stop_input()
        self.take_size()  # it came before anything the thread hands back
        self._read_here = stopped and not left and not keys
        pending = self.inputs.pending
        pending.consumed += written
        if written:
            self.typed()
        # Keys the terminal did not take wait for it as any client's do (a
        # restart hands them on, or the client sends them again); then what
        # the thread read and did not use is read here.
        if keys and not pending.put(keys):
            pending.consumed += len(keys)  # (never: at most one message, and nothing queued)
        self.channel.release_input_buffer()
        self.channel.hand_back(left)
        self.returned.set()

    def typed(self) -> None:
        """The client's keys reached the terminal (the thread says so once, a stop too)."""
        self.session.client_typed(self.sub)
        if not self.inputs.typed:
            self.inputs.typed = True
            self._context.run(audit, "input", session=str(self.session.name))

    def take_size(self) -> None:
        """Record the window size the thread put in force, if it did since."""
        size = self.link.take_size()
        if size is not None:
            self.session.client_resized(self.sub, *size, in_force=True)

    def woken(self) -> None:
        """The relay's thread has something for us (an event for the link)."""
        self.take_size()
        if self.active and self.link.input_stopped:
            self.stop()
        elif self.active and self.link.typed and not self.inputs.typed:
            self.typed()


async def _pump_output(
    channel: Channel,
    session: Session,
    sub: Subscriber,
    inputs: InputSide | None = None,
    delivered: Callable[[Session], None] | None = None,
) -> None:
    """Send queued output, then the ``ended`` notice.

    The client leaves the session before it is told the stream ended, so
    that whatever it does next (``consoled ls``) no longer counts it.  When
    the daemon is restarting, the notice says where the client resumes its
    output and how much of its input was consumed.
    """

    def send_now(output: EncodedOutput) -> bool:
        if not channel.send_encoded_now(output):
            return False
        if channel.unfinished:
            sub.wake()  # the rest of the frame is ours to write
        else:
            # The pump waits with the link stopped (it could not start while
            # the relay's thread held output, or a send stopped it): the thread
            # may write what comes next, now that the client has all of it.
            _start_link(channel, sub)
        return True

    sub.send_now = send_now
    try:
        await _pump_queue(channel, sub)
    finally:
        sub.send_now = None
    notice = sub.end_notice
    assert notice is not None
    session.detach(sub)
    if notice.reason is not ev.EndReason.RESTARTING:
        await channel.send(
            ev.Ended(
                notice.reason,
                notice.message,
                exit_code=notice.exit_code,
                session=str(session.name),
            )
        )
        if notice.reason is ev.EndReason.EXITED and not sub.follower and delivered is not None:
            delivered(session)
        return
    consumed = None if inputs is None else await inputs.stop()
    channel.deactivate_link()  # the relay's thread stops where the client resumes
    await channel.send(
        ev.Ended(
            notice.reason,
            notice.message,
            resume=sub.resume_offset,
            input=consumed,
            session=str(session.name),
        )
    )
    if inputs is not None:
        inputs.told = True


async def _pump_queue(channel: Channel, sub: Subscriber) -> None:
    """Send queued output until the stream has ended and nothing is left.

    While nothing is queued, the native relay's thread (if it has a link to
    the client) writes the session's output itself.
    """
    while True:
        _start_link(channel, sub)
        await sub.wait_output()
        chunks = sub.take(MAX_DATA_CHUNK)
        if chunks:
            await channel.send_output(_encoded(chunks))
        elif sub.end_notice is not None:
            return
        else:  # woken to finish a frame the session's reader started
            await channel.flush()


def _start_link(channel: Channel, sub: Subscriber) -> bool:
    """Let the relay's thread write ``sub``'s output from now on, if it has a
    link, nothing is queued for it and its stream goes on.

    Returns:
        False if any of those does not hold; True if it was tried (the
        thread may still hold output the event loop has not taken).
    """
    if sub.link is None or sub.queued or sub.end_notice is not None:
        return False
    channel.activate_link()
    return True


def _encoded(chunks: list[bytes | EncodedOutput]) -> list[EncodedOutput]:
    """Chunks as frames: live output is framed already, replayed bytes are joined and framed."""
    out: list[EncodedOutput] = []
    raw: list[bytes] = []
    for chunk in chunks:
        if isinstance(chunk, EncodedOutput):
            if raw:
                out.append(EncodedOutput(b"".join(raw)))
                raw = []
            out.append(chunk)
        else:
            raw.append(chunk)
    if raw:
        out.append(EncodedOutput(raw[0] if len(raw) == 1 else b"".join(raw)))
    return out


def _bound_when_lagged(sub: Subscriber, scope: trio.CancelScope) -> None:
    """Once ``sub`` is ended as lagged, bound how long delivering the rest may take.

    A hook rather than a task watching the subscriber: every attach would
    pay for starting and cancelling the task.
    """

    def bound() -> None:
        scope.deadline = min(scope.deadline, trio.current_time() + LAGGED_GRACE)

    sub.on_lagged = bound
    if sub.end_notice is not None and sub.end_notice.reason is ev.EndReason.LAGGED:
        bound()  # already, while the reply and the screen were sent


async def stream_attach(channel: Channel, context: StreamContext, request: ev.Attach) -> None:
    session = context.session_for_stream(request.session, request.uid)
    if session.state is ev.SessionState.EXITED and request.resume is None:
        raise RequestError(
            ErrorCode.SESSION_NOT_RUNNING,
            f"session {session.name} has exited; its output is in `consoled logs {session.name}`",
        )
    if request.replay is not None and request.replay < 0:
        raise RequestError(ErrorCode.INVALID_ARGUMENT, "replay must be >= 0 bytes")
    if request.resume is not None and request.resume < 0:
        raise RequestError(ErrorCode.INVALID_ARGUMENT, "resume must be an offset >= 0")
    size: tuple[int, int] | None = None
    if request.rows or request.cols:
        problem = size_error(request.rows, request.cols)
        if problem is not None:
            raise RequestError(ErrorCode.INVALID_SIZE, problem)
        size = (request.rows, request.cols)
    label = f"attach-{next(_labels)}"
    sub = Subscriber(context.config.client_queue, read_only=request.read_only, label=label)
    # No await between the replay snapshot and the `attached` reply's bytes
    # being queued: Session.attach is synchronous.
    if request.history < 0:
        raise RequestError(ErrorCode.INVALID_ARGUMENT, "history must be >= 0 lines")
    first, screen = session.attach(
        sub,
        replay=request.replay,
        resume=request.resume,
        size=size,
        screen=request.screen,
        history=request.history,
    )
    if isinstance(channel.stream, trio.SocketStream):
        channel.link = session.relay_link(sub, channel.stream.socket.fileno(), sub.wake)
    with context.table.track_stream():
        await _attached(
            channel,
            session,
            sub,
            first,
            screen,
            resumed=request.resume is not None,
            delivered=context.table.delivered,
        )


async def _attached(
    channel: Channel,
    session: Session,
    sub: Subscriber,
    first: int,
    screen: ScreenRender | None,
    *,
    resumed: bool,
    delivered: Callable[[Session], None],
) -> None:
    replayed = session.record.end - first
    inputs = InputSide()
    link = channel.link
    if link is not None:
        if not sub.read_only:
            relayed = RelayedInput(link, channel, session, sub, inputs)
            inputs.relayed = channel.relayed_input = sub.relayed_input = relayed

        def link_event() -> None:
            # The relay's thread deactivated the link (its socket was full), or
            # stopped reading the client's input, or wrote its first keys.
            if channel.link_stopped:
                sub.wake()
            if inputs.relayed is not None:
                inputs.relayed.woken()

        link.data = link_event
    try:
        try:
            await channel.send(
                ev.Attached(
                    str(session.name),
                    session.state,
                    session.rows,
                    session.cols,
                    replayed,
                    offset=first,
                    uid=session.uid,
                )
            )
            if screen is not None:
                # Drawn as of `first`: the queued output continues it.
                drawn = await screen.finish()
                for start in range(0, max(len(drawn), 1), MAX_DATA_CHUNK):
                    chunk = drawn[start : start + MAX_DATA_CHUNK]
                    last = start + MAX_DATA_CHUNK >= len(drawn)
                    await channel.send(ev.Screen(chunk, approximate=screen.approximate and last))
            # The relay's thread takes the client on at once, if nothing is queued
            # for it (a replay) nor read from it past the request: its first
            # keystroke's echo then waits neither for the records below nor for
            # the stream's tasks to start.
            if (
                _start_link(channel, sub)
                and inputs.relayed is not None
                and not channel.conn.buffered
            ):
                inputs.relayed.start()
        finally:
            # Logged once the client has its answer (each event costs the
            # event loop its rendering and a wake-up of the log writer).
            log.info(
                "client.attached",
                session=str(session.name),
                read_only=sub.read_only,
                replay=replayed,
                rows=session.rows,
                cols=session.cols,
                resumed=resumed,
                screen=screen is not None,
                approximate=screen is not None and screen.approximate,
            )
            audit("attach", session=str(session.name), read_only=sub.read_only, resumed=resumed)
        async with trio.open_nursery() as nursery:
            _bound_when_lagged(sub, nursery.cancel_scope)

            async def output_then_stop() -> None:
                await _pump_output(channel, session, sub, inputs, delivered)
                nursery.cancel_scope.cancel()

            nursery.start_soon(output_then_stop)
            pending = inputs.pending
            async with trio.open_nursery() as writer:
                # Started when input must wait first (the terminal is full, or
                # not there yet): most keys go straight to the terminal.
                pending.start_writer = partial(writer.start_soon, _write_input, session, pending)
                inputs.writer_scope = writer.cancel_scope
                with inputs.scope:
                    await _input_loop(channel, session, sub, inputs)
                # Let keys typed just before detaching reach the terminal
                # (not on a restart: the client sends them to the successor).
                if not pending.idle and not inputs.stopping:
                    with trio.move_on_after(INPUT_FLUSH_TIMEOUT):
                        await pending.wait_idle()
                writer.cancel_scope.cancel()
            # The client closed its side, or asked to detach: the pump finishes.
    finally:
        session.detach(sub)
        notice = sub.end_notice
        if notice is not None and notice.reason is ev.EndReason.RESTARTING and not inputs.told:
            # Cut off before it could be told what of its input was consumed
            # (its socket was full): it goes on as after a crash, sending none
            # of it again.  What did not reach the terminal is handed on.
            session.hand_on_input(inputs.pending.unconsumed())
        reason = notice.reason if notice is not None else "disconnected"
        log.info("client.detached", session=str(session.name), reason=str(reason))
        audit("detach", session=str(session.name), reason=str(reason))


async def _input_loop(
    channel: Channel, session: Session, sub: Subscriber, inputs: InputSide
) -> None:
    pending = inputs.pending
    warned_read_only = False
    warned_dropped = False
    while True:
        event = await channel.receive()
        if event is None:
            sub.end(ev.EndReason.DETACHED, "client closed the connection")
            return
        if isinstance(event, ev.Input):
            if sub.read_only:
                pending.consumed += len(event.data)
                if not warned_read_only:
                    warned_read_only = True
                    await channel.send(
                        ev.Error(ErrorCode.READ_ONLY, "this client is read-only; input ignored")
                    )
                continue
            session.client_typed(sub)
            data = event.data
            if pending.idle:
                # The usual keystroke: straight to the terminal, no task switch.
                written = session.write_input_now(data)
                pending.consumed += written
                data = data[written:]
            if not inputs.typed:
                inputs.typed = True  # recorded after the first keys are on their way
                audit("input", session=str(session.name))
            if data and not pending.put(data):
                pending.consumed += len(data)  # dropped, and the client is told: never resent
                if not warned_dropped:
                    warned_dropped = True
                    log.info(
                        "input.dropped",
                        session=str(session.name),
                        reason="the terminal is not reading its input",
                    )
                    await channel.send(
                        ev.Error(
                            ErrorCode.INPUT_DROPPED,
                            "the program is not reading its terminal; input beyond "
                            f"{pending.limit} bytes was dropped",
                        )
                    )
        elif isinstance(event, ev.WindowSize):
            if not valid_size(event.rows, event.cols):
                problem = size_error(event.rows, event.cols)
                await channel.send(ev.Error(ErrorCode.INVALID_SIZE, str(problem)))
                continue
            session.client_resized(sub, event.rows, event.cols)
        elif isinstance(event, ev.Detach):
            sub.end(ev.EndReason.DETACHED, "detached")
            return
