"""Per-session console sockets: where a runtime hands over a session's pty master.

The socket takes connections until one delivers exactly one pty master; every
other delivery (nothing, several fds, a file, a socket, a slave, truncated
control data, silence) is closed and logged with a specific reason, and the
socket keeps waiting.  Once a master has arrived the socket is closed and its
file removed.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Callable, Iterator
from typing import Final

import structlog
import trio

from ..io.fdpass import IntakeError, receive_master
from ..io.fds import OwnedFd
from ..io.listener import Gate, Listener, serve_listener
from ..io.peer import Peer, identify_peer

log = structlog.get_logger("consoled.intake")

#: Seconds a connected runtime has to send its master.
SEND_TIMEOUT: Final = 10.0
#: How often we look whether someone removed the socket file.
PRESENCE_CHECK_INTERVAL: Final = 1.0


class IntakeGone(Exception):
    """The session stopped waiting: its socket was removed or the timeout passed."""


class InFlight:
    """Counts operations that a quiescing daemon lets finish (a master being received,
    a request being answered) before it hands everything over."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = trio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return self._count

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        if self._count == 0:
            self._idle = trio.Event()
        self._count += 1
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


async def receive_or_reject(
    conn: trio.socket.SocketType, in_flight: InFlight | None = None, peer: Peer | None = None
) -> tuple[OwnedFd, int, bytes] | None:
    """Receive a runtime's master within :data:`SEND_TIMEOUT`.

    A runtime that connects and closes without sending anything is a runtime
    that failed (``runc run`` with an invalid configuration connects first,
    then fails its own validation): that is logged at info level with its
    command line, to tell it from a misbehaving peer.

    Args:
        conn: the runtime's connection.
        in_flight: counts masters being received.
        peer: who connected, as identified at accept.

    Returns:
        The master's owner, pty number and payload; or None after logging
        why the peer's intake was rejected (every fd it sent is closed).
    """
    who = {} if peer is None else {"peer_pid": peer.pid, "argv": peer.argv}
    with in_flight.track() if in_flight is not None else contextlib.nullcontext():
        try:
            with trio.fail_after(SEND_TIMEOUT):
                return await receive_master(conn)
        except trio.TooSlowError:
            log.warning(
                "intake.rejected",
                kind="silent",
                error=f"the peer connected but sent nothing within {SEND_TIMEOUT:g} s",
            )
        except IntakeError as exc:
            if exc.kind == "closed_early":
                log.info(
                    "intake.rejected",
                    kind=exc.kind,
                    error=f"{exc}: the runtime failed before it had a console to hand over",
                    **who,
                )
            else:
                log.warning("intake.rejected", kind=exc.kind, error=str(exc), **who)
        except OSError as exc:
            log.warning("intake.rejected", kind="socket_error", error=exc.strerror)
    return None


def wall_deadline(deadline: float | None) -> float:
    """A trio deadline for a wall-clock time (None: never)."""
    if deadline is None:
        return math.inf
    return trio.current_time() + max(0.0, deadline - time.time())


async def wait_master(
    listener: Listener,
    deadline: float | None,
    arrived: Callable[[OwnedFd, int], None],
    in_flight: InFlight | None = None,
    gate: Gate | None = None,
) -> None:
    """Serve a waiting session's console socket until a valid master arrives.

    The master goes to ``arrived`` synchronously, the moment it is checked: a
    cancellation can never come between its arrival and its new owner.  The
    listener stays open on every way out; the caller closes it.

    Args:
        listener: the session's console socket.
        deadline: wall-clock time to give up at, or None to wait forever.
        arrived: takes the master's owner and pty number.
        in_flight: counts masters being received.
        gate: accept only while it is open.

    Raises:
        IntakeGone: the socket file was removed or the deadline passed.
    """
    done = False
    removed = False

    async def receive(
        conn: trio.socket.SocketType, peer: Peer | None, scope: trio.CancelScope
    ) -> None:
        nonlocal done
        with conn:
            try:
                received = await receive_or_reject(conn, in_flight, peer)
            except trio.Cancelled:
                if done:
                    # The master came on another connection while this one was
                    # still open: it is closed, with any fds it had in flight.
                    log.warning(
                        "intake.rejected",
                        kind="second_connection",
                        error="a master arrived on another connection first; closed this one",
                    )
                raise
        if received is None:
            return
        owner, number, payload = received
        if done:
            owner.close()
            log.warning(
                "intake.rejected",
                kind="second_master",
                error="a master already arrived for this session; closed the extra one",
            )
            return
        done = True
        log.info("intake.master", pty=number, payload=payload[:64].decode("ascii", "replace"))
        scope.cancel()
        arrived(owner, number)

    async def watch_presence(scope: trio.CancelScope) -> None:
        nonlocal removed
        while True:
            await trio.sleep(PRESENCE_CHECK_INTERVAL)
            if not listener.present():
                log.warning("intake.socket_removed", path=str(listener.path))
                removed = True
                scope.cancel()
                return

    with trio.move_on_at(wall_deadline(deadline)) as timer:
        async with trio.open_nursery() as nursery:

            def handle(conn: socket.socket) -> None:
                # Who connected, taken at once (a runtime that fails exits fast).
                peer = identify_peer(conn)
                nursery.start_soon(
                    receive, trio.socket.from_stdlib_socket(conn), peer, nursery.cancel_scope
                )

            nursery.start_soon(watch_presence, nursery.cancel_scope)
            await serve_listener(listener, handle, gate=gate)
    if done:
        return
    if removed:
        raise IntakeGone("its console socket file was removed")
    assert timer.cancelled_caught
    raise IntakeGone("no master arrived within its intake timeout")
