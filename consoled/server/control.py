"""The control socket: one task per client connection, in a nursery we own.

Each connection shakes hands, then sends requests one at a time; ``attach``
and ``logs`` turn it into a stream (see :mod:`.streams`).  A protocol error
costs only that connection: the client gets a fatal ``error`` and is closed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import Final

import structlog
import trio

from .. import __version__
from ..protocol import PROTOCOL_VERSION, ErrorCode, RemoteProtocolError
from ..protocol import events as ev
from .channel import Channel
from .config import DaemonConfig
from .errors import RequestError
from .intake import bind_listen, unlink_if_ours
from .registry import SessionTable, parse_name
from .sizepolicy import size_error
from .streams import stream_attach, stream_logs

log = structlog.get_logger("consoled.control")

#: Seconds a new connection has to say hello.
HELLO_TIMEOUT: Final = 10.0
#: Seconds to deliver a fatal error before closing anyway.
LAST_WORDS_TIMEOUT: Final = 1.0
#: Sessions per ``session_list`` page.
LIST_PAGE: Final = 256


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (possibly nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class ControlServer:
    """Serves the control socket of one daemon."""

    def __init__(self, config: DaemonConfig, table: SessionTable) -> None:
        self.config = config
        self.table = table
        self._ids = itertools.count(1)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the control socket until cancelled; remove it on the way out."""
        path = self.config.control_socket
        sock = bind_listen(path, backlog=128)
        ino = os.stat(path).st_ino
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self.handle, stream)
        finally:
            # No checkpoint here: under cancellation one would raise before the unlink.
            sock.close()
            unlink_if_ours(path, ino)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Run one client connection to its end; nothing a client does escapes it."""
        channel = Channel(stream)
        with structlog.contextvars.bound_contextvars(client=next(self._ids)):
            try:
                await self._converse(channel)
            except* RemoteProtocolError as group:
                exc = first_leaf(group)
                assert isinstance(exc, RemoteProtocolError)
                log.warning("client.protocol_error", code=str(exc.code), error=exc.message)
                with trio.move_on_after(LAST_WORDS_TIMEOUT):
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await channel.send(ev.Error(exc.code, exc.message))
            except* (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("client.gone")
            except* Exception as group:
                # A bug in serving this client: log it, drop the client, keep serving.
                log.error("client.internal_error", exc_info=first_leaf(group))
            finally:
                await trio.aclose_forcefully(stream)

    async def _converse(self, channel: Channel) -> None:
        with trio.move_on_after(HELLO_TIMEOUT) as timer:
            hello = await channel.receive()
        if timer.cancelled_caught:
            raise RemoteProtocolError(
                f"no hello within {HELLO_TIMEOUT:g} s", ErrorCode.UNEXPECTED_MESSAGE
            )
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
            request = await channel.receive()
            if request is None:
                return
            try:
                if isinstance(request, ev.Attach):
                    await stream_attach(channel, self.table, request)
                    return
                if isinstance(request, ev.Logs):
                    await stream_logs(channel, self.table, request)
                    return
                replies = await self._answer(request)
            except RequestError as exc:
                log.info(
                    "request.failed", request=request.TYPE, code=str(exc.code), error=exc.message
                )
                await channel.send(ev.Error(exc.code, exc.message))
                continue
            await channel.send(*replies)

    async def _answer(self, request: ev.Event) -> list[ev.Event]:
        table = self.table
        if isinstance(request, ev.CreateSocket):
            if request.exec_base is not None:
                name = table.free_exec_name(request.session, request.exec_base)
            else:
                name = parse_name(request.session)
            session = table.create_waiting(name)
            assert session.socket_path is not None
            log.info("session.created", session=str(name), socket=session.socket_path)
            return [ev.SocketCreated(str(name), session.socket_path)]
        if isinstance(request, ev.ListSessions):
            infos = [s.info() for s in table.listing(request.id)]
            pages = [infos[i : i + LIST_PAGE] for i in range(0, len(infos), LIST_PAGE)] or [[]]
            return [
                ev.SessionList(tuple(page), more=i < len(pages) - 1) for i, page in enumerate(pages)
            ]
        if isinstance(request, ev.GetInfo):
            return [self.info()]
        if isinstance(request, ev.Remove):
            state = await table.remove(request.session, force=request.force)
            return [ev.Removed(request.session, state)]
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
            return [ev.Resized(str(session.name), request.rows, request.cols)]
        if isinstance(request, ev.Rename):
            session = table.rename(request.session, request.new)
            return [ev.Renamed(request.session, str(session.name))]
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
        )
