"""The control socket: one task per client connection.

Each connection is checked at accept (the peer's credentials decide its
access; a full daemon refuses it), shakes hands, then sends requests one at a
time; ``attach`` and ``logs`` turn it into a stream (see :mod:`.streams`).  A
protocol error costs only that connection: the client gets a fatal ``error``
and is closed.

When the daemon hands over to a successor (a reexec) it *drains* the control
socket: a connection waiting for its next request is told ``restarting``
(the client sends it again to the successor, whose socket is the same one),
and one in the middle of a request is answered first.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
from collections.abc import Callable
from typing import Final

import structlog
import trio

from .. import __version__
from ..io.listener import FdReserve, Listener, serve_listener
from ..io.peer import Credentials, command_name, credentials
from ..protocol import PROTOCOL_VERSION, Connection, ErrorCode, RemoteProtocolError, Role
from ..protocol import events as ev
from .access import Access, access_for, refusal
from .audit import AuditRecord, audit
from .channel import ByteBudget, Channel
from .config import DaemonConfig
from .errors import RequestError
from .logstream import stream_logs
from .registry import SessionTable, parse_name
from .session import rfc3339
from .sizepolicy import size_error
from .streams import StreamContext, stream_attach

log = structlog.get_logger("consoled.control")

#: Seconds a new connection has to say hello.
HELLO_TIMEOUT: Final = 10.0
#: Seconds to deliver a fatal error before closing anyway.
LAST_WORDS_TIMEOUT: Final = 1.0
#: Sessions per ``session_list`` page.
LIST_PAGE: Final = 256

#: Takes over a connection that asked for a reexec; False if one is already running.
ReexecHook = Callable[[Channel], bool]


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (possibly nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class ClientConnection:
    """One control connection and what the server knows about it."""

    def __init__(self, number: int, channel: Channel, creds: Credentials, access: Access) -> None:
        self.number = number
        self.channel = channel
        self.creds = creds
        self.access = access
        #: Cancelled to interrupt the wait for the next request (draining).
        self.waiting = trio.CancelScope()
        self.idle = True
        self.streaming = False
        self.handed_off = False


class ControlServer:
    """Serves the control socket of one daemon.

    Args:
        config: the daemon's settings.
        table: the sessions.
        listener: the control socket.
        reexec: takes over a ``reexec`` request's connection.
        started: when this program started serving (wall clock).
    """

    def __init__(
        self,
        config: DaemonConfig,
        table: SessionTable,
        listener: Listener,
        reexec: ReexecHook,
        started: float,
    ) -> None:
        self.config = config
        self.table = table
        self.listener = listener
        self._reexec = reexec
        self.started = started
        self._ids = itertools.count(1)
        self._connections: set[ClientConnection] = set()
        self._budget = ByteBudget(config.limits.buffered)
        self._draining = False
        self._drained = trio.Event()
        self._stopping = False
        #: Connections told that the daemon stops, until each has closed.
        self._told: set[ClientConnection] = set()
        self._all_told = trio.Event()
        self._uid = os.geteuid()
        self.streams = StreamContext(table, config)

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept control connections until cancelled (the listener stays open)."""
        self._draining = False
        reserve = FdReserve()
        try:
            async with trio.open_nursery() as nursery:

                def handle(sock: socket.socket) -> None:
                    nursery.start_soon(self._handle, sock)

                await serve_listener(
                    self.listener,
                    handle,
                    gate=self.table.gate,
                    refuse=self._refuse_exhausted,
                    reserve=reserve,
                    task_status=task_status,
                )
        finally:
            reserve.close()

    def _refuse_exhausted(self, sock: socket.socket) -> None:
        """Tell a client the daemon has no fd to serve it with, and close (never blocks)."""
        with sock:
            frame = Connection(Role.SERVER).send(
                ev.Error(
                    ErrorCode.OUT_OF_RESOURCES,
                    "the daemon is out of file descriptors: it keeps serving its sessions but "
                    "takes no new request until some are freed (raise its open-file limit)",
                )
            )
            with contextlib.suppress(OSError):
                sock.send(frame)
        log.warning("client.refused", why="out of file descriptors")

    async def _handle(self, sock: socket.socket) -> None:
        """Run one client connection to its end; nothing a client does escapes it."""
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        channel = Channel(stream, self._budget)
        number = next(self._ids)
        try:
            creds = credentials(sock, groups=True)
        except OSError:
            creds = Credentials(0, -1, -1)
        access = access_for(
            creds,
            daemon_uid=self._uid,
            group=self.config.group,
            watch_group=self.config.watch_group,
        )
        peer = {
            "peer_uid": creds.uid,
            "peer_gid": creds.gid,
            "peer_pid": creds.pid,
            "peer_comm": command_name(creds.pid),
        }
        with structlog.contextvars.bound_contextvars(client=number, **peer):
            conn = None
            try:
                if access is None:
                    log.warning("client.refused", why="permission denied")
                    raise RemoteProtocolError(
                        f"permission denied: uid {creds.uid} may not use this consoled "
                        "(ask its operator for --group or --watch-group)",
                        ErrorCode.PERMISSION_DENIED,
                    )
                if len(self._connections) >= self.config.limits.connections:
                    log.warning("client.refused", why="too many connections")
                    raise RemoteProtocolError(
                        f"the daemon already serves {self.config.limits.connections} "
                        "connections (its --max-connections)",
                        ErrorCode.TOO_MANY_CONNECTIONS,
                    )
                conn = ClientConnection(number, channel, creds, access)
                self._connections.add(conn)
                await self._converse(conn)
            except* RemoteProtocolError as group:
                # Not bound to a name here: the error's traceback holds this frame,
                # and the cycle would keep the client's last frame (up to 1 MiB) and
                # its buffer alive until Python's full garbage collection.
                await self._last_words(channel, first_leaf(group))
            except* (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("client.gone")
            except* Exception as group:
                # A bug in serving this client: log it, drop the client, keep serving.
                log.error("client.internal_error", exc_info=first_leaf(group))
            finally:
                channel.release()
                if conn is not None:
                    self._connections.discard(conn)
                    if self._draining and not self._busy():
                        self._drained.set()
                    self._told.discard(conn)
                    if self._stopping and not self._told:
                        self._all_told.set()
                if conn is None or not conn.handed_off:
                    await trio.aclose_forcefully(stream)

    async def _last_words(self, channel: Channel, exc: BaseException) -> None:
        """Log a client's protocol error and tell the client, before it is closed."""
        assert isinstance(exc, RemoteProtocolError)
        said_to_all = exc.code in (ErrorCode.RESTARTING, ErrorCode.SHUTTING_DOWN)
        level = log.info if said_to_all else log.warning
        level("client.protocol_error", code=str(exc.code), error=exc.message)
        with trio.move_on_after(LAST_WORDS_TIMEOUT) as timer:
            timer.shield = True  # also when the daemon is cancelling everything
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await channel.send(ev.Error(exc.code, exc.message))

    async def _receive(self, conn: ClientConnection, limit: float, what: str) -> ev.Event | None:
        """The next message, unless the daemon stops or drains, or the client idles too long."""
        if self._stopping:
            raise RemoteProtocolError("the daemon is stopping", ErrorCode.SHUTTING_DOWN)
        if self._draining:
            raise RemoteProtocolError("the daemon is restarting", ErrorCode.RESTARTING)
        conn.idle = True
        # One scope for both ends of the wait (a scope costs every request its
        # enter and exit): the idle limit is its deadline, draining cancels it.
        conn.waiting = trio.CancelScope(deadline=trio.current_time() + limit)
        try:
            with conn.waiting:
                return await conn.channel.receive()
        finally:
            conn.idle = False
        if self._stopping:
            raise RemoteProtocolError("the daemon is stopping", ErrorCode.SHUTTING_DOWN)
        if self._draining:
            raise RemoteProtocolError(
                "the daemon is restarting; send the request again", ErrorCode.RESTARTING
            )
        code = ErrorCode.UNEXPECTED_MESSAGE if what == "hello" else ErrorCode.IDLE_TIMEOUT
        raise RemoteProtocolError(f"no {what} within {limit:g} s", code)

    async def _converse(self, conn: ClientConnection) -> None:
        channel = conn.channel
        hello = await self._receive(conn, HELLO_TIMEOUT, "hello")
        if hello is None:
            return
        assert isinstance(hello, ev.Hello)  # the state machine allows nothing else
        if hello.version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"protocol version {hello.version} is not supported; "
                f"this daemon speaks version {PROTOCOL_VERSION}",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        await channel.send(ev.Welcome(PROTOCOL_VERSION, f"consoled {__version__}", os.getpid()))
        while True:
            request = await self._receive(conn, self.config.limits.idle_timeout, "request")
            if request is None:
                return
            try:
                problem = refusal(conn.access, request)
                if problem is not None:
                    raise RequestError(ErrorCode.NOT_ALLOWED, problem)
                if isinstance(request, ev.Attach | ev.Logs):
                    conn.streaming = True
                    stream = stream_attach if isinstance(request, ev.Attach) else stream_logs
                    await stream(channel, self.streams, request)  # type: ignore[arg-type]
                    return
                if isinstance(request, ev.Reexec):
                    audit("reexec")
                    if not self._reexec(channel):
                        raise RequestError(
                            ErrorCode.REEXEC_FAILED, "a reexec or a shutdown is already under way"
                        )
                    conn.handed_off = True  # the daemon answers it when the reexec is over
                    return
                replies: list[ev.Event]
                record: AuditRecord | None = None
                if isinstance(request, ev.Wait):
                    replies = [await self._wait(conn, request)]
                else:
                    replies, record = await self._answer(request)
            except RequestError as exc:
                log.info(
                    "request.failed", request=request.TYPE, code=str(exc.code), error=exc.message
                )
                await channel.send(ev.Error(exc.code, exc.message))
                continue
            try:
                await channel.send(*replies)
            finally:
                # Recorded after the reply is on its way, whatever becomes of it:
                # rendering the record and waking the log writer took a quarter of
                # a resize's round trip (docs/performance.md).
                if record is not None:
                    audit(record.action, **record.fields)

    async def _wait(self, conn: ClientConnection, request: ev.Wait) -> ev.Waited:
        """Answer once the session has ended; a draining daemon says ``restarting``
        instead, and a stopping one ``shutting_down``."""
        session = self.table.get(request.session)
        log.info("client.waiting", session=str(session.name))
        conn.idle = True  # as good as idle: a handover need not wait for it
        conn.waiting = trio.CancelScope()
        try:
            with conn.waiting:
                await session.done.wait()
        finally:
            conn.idle = False
        if not session.done.is_set():
            if self._stopping:
                raise RemoteProtocolError(
                    f"the daemon is stopping; {session.name} has not ended",
                    ErrorCode.SHUTTING_DOWN,
                )
            raise RemoteProtocolError(
                "the daemon is restarting; send the request again", ErrorCode.RESTARTING
            )
        reply = ev.Waited(str(session.name), session.exit_code)
        self.table.delivered(session)
        return reply

    async def _answer(self, request: ev.Event) -> tuple[list[ev.Event], AuditRecord | None]:
        """The replies to ``request``, and what the audit trail records of it (if anything)."""
        table = self.table
        if isinstance(request, ev.CreateSocket):
            if request.exec_base is not None:
                name = table.free_exec_name(request.session, request.exec_base)
            else:
                name = parse_name(request.session)
            session = table.create_waiting(name, ephemeral=request.ephemeral)
            assert session.socket_path is not None
            log.info("session.created", session=str(name), socket=session.socket_path)
            record = AuditRecord(
                "create_socket", {"session": str(name), "exec": request.exec_base is not None}
            )
            return [ev.SocketCreated(str(name), session.socket_path)], record
        if isinstance(request, ev.ListSessions):
            infos = [s.info() for s in table.listing(request.id)]
            pages = [infos[i : i + LIST_PAGE] for i in range(0, len(infos), LIST_PAGE)] or [[]]
            return [
                ev.SessionList(tuple(page), more=i < len(pages) - 1) for i, page in enumerate(pages)
            ], None
        if isinstance(request, ev.GetInfo):
            return [self.info()], None
        if isinstance(request, ev.Remove):
            state = await table.remove(
                request.session, force=request.force, keep_logs=request.keep_logs
            )
            record = AuditRecord(
                "rm", {"session": request.session, "force": request.force, "state": str(state)}
            )
            return [ev.Removed(request.session, state)], record
        if isinstance(request, ev.Resize):
            session = table.get(request.session)
            problem = size_error(request.rows, request.cols)
            if problem is not None:
                raise RequestError(ErrorCode.INVALID_SIZE, problem)
            if session.state is ev.SessionState.EXITED:
                raise RequestError(
                    ErrorCode.SESSION_NOT_RUNNING, f"session {session.name} has exited"
                )
            session.set_size(request.rows, request.cols)
            record = AuditRecord(
                "resize", {"session": str(session.name), "rows": request.rows, "cols": request.cols}
            )
            return [ev.Resized(str(session.name), request.rows, request.cols)], record
        if isinstance(request, ev.ReportExit):
            session = table.get(request.session)
            if not 0 <= request.exit_code <= 255:
                raise RequestError(ErrorCode.INVALID_ARGUMENT, "an exit code is 0 to 255")
            if session.state is ev.SessionState.EXITED and session.exit_status is None:
                session.report_exit(request.exit_code)
            return [ev.ExitReported(str(session.name), session.exit_code)], None
        if isinstance(request, ev.Rename):
            new = table.rename(request.session, request.new)
            await table.wait_files_moved(table.listing(new.id))
            record = AuditRecord("rename", {"session": request.session, "new": str(new)})
            return [ev.Renamed(request.session, str(new))], record
        raise RemoteProtocolError(  # pragma: no cover - the state machine prevents it
            f"unexpected request {request.TYPE!r}", ErrorCode.UNEXPECTED_MESSAGE
        )

    def info(self) -> ev.DaemonInfo:
        config = self.config
        return ev.DaemonInfo(
            version=__version__,
            pid=os.getpid(),
            state_dir=os.fspath(config.state_dir),
            control_socket=os.fspath(config.control_socket),
            console_socket=os.fspath(config.console_socket),
            log_dir=None if config.log_dir is None else os.fspath(config.log_dir),
            sessions=len(self.table),
            size_policy=str(config.size_policy),
            scrollback=config.scrollback,
            started=rfc3339(self.started),
        )

    # --- draining, for a handover; stopping ------------------------------------------

    def _busy(self) -> bool:
        return any(not c.streaming and not c.handed_off for c in self._connections)

    def drain(self) -> None:
        """Answer what is being answered, tell every waiting connection ``restarting``."""
        self._draining = True
        self._drained = trio.Event()
        for conn in self._connections:
            if conn.idle:
                conn.waiting.cancel()
        if not self._busy():
            self._drained.set()

    async def stop(self) -> None:
        """Tell every connection waiting (for a session's end, or between
        requests) that the daemon is stopping, rather than closing it without
        a word, which a client takes for a crash and waits out; return once
        each has been told and closed."""
        self._stopping = True
        self._told = {conn for conn in self._connections if conn.idle}
        for conn in self._told:
            conn.waiting.cancel()
        if self._told:
            # Not cancelled meanwhile: each must raise its error, not Cancelled.
            await self._all_told.wait()

    async def wait_drained(self) -> None:
        """Wait until every connection that is not a stream has been answered and closed."""
        await self._drained.wait()

    def undrain(self) -> None:
        """Serve normally again (a handover failed)."""
        self._draining = False
