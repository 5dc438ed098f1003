"""One console session: its master, scrollback, log file, clients and window size.

The session's task (:meth:`Session.run`) waits for the master (intake), then
drains it until the container side hangs up, publishing every batch to the
scrollback, the log file and each subscriber's bounded queue, none of which
can block it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
import trio

from ..names import SessionName
from ..protocol.events import EndReason, SessionInfo, SessionState
from .fdpass import FdHolder
from .intake import IntakeGone
from .logfile import LogFile
from .pty import Hangup, PtyMaster
from .scrollback import Scrollback
from .sizepolicy import ClientSize, SizePolicy, choose_size
from .subscriber import Subscriber

log = structlog.get_logger("consoled.session")

#: Waits for the master of a session: returns its holder and pty number.
Intake = Callable[["Session"], Awaitable[tuple[FdHolder, int]]]


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Session:
    """A session and everything it holds.

    Args:
        name: the session's name.
        scrollback: bytes of newest output retained.
        size_policy: how attached clients' sizes combine.
        log_file: where every byte read goes, or None.
    """

    def __init__(
        self,
        name: SessionName,
        *,
        scrollback: int,
        size_policy: SizePolicy,
        log_file: LogFile | None = None,
    ) -> None:
        self.name = name
        self.state = SessionState.WAITING
        self.created = time.time()
        self.exited_at: float | None = None
        self.scrollback = Scrollback(scrollback)
        self.size_policy = size_policy
        self.log_file = log_file
        self.subscribers: dict[Subscriber, None] = {}
        self.master: PtyMaster | None = None
        self.rows = 0
        self.cols = 0
        self.socket_path: str | None = None
        self.end_reason = EndReason.EXITED
        self.end_message: str | None = None
        self._activity = itertools.count(1)
        self._cancel_scope = trio.CancelScope()
        self.done = trio.Event()

    # --- introspection -----------------------------------------------------------

    @property
    def bytes_out(self) -> int:
        return self.scrollback.end

    def info(self) -> SessionInfo:
        return SessionInfo(
            session=str(self.name),
            id=self.name.id,
            exec=self.name.exec,
            state=self.state,
            clients=sum(1 for s in self.subscribers if not s.follower),
            rows=self.rows,
            cols=self.cols,
            created=rfc3339(self.created),
            bytes_out=self.bytes_out,
            exited_at=None if self.exited_at is None else rfc3339(self.exited_at),
            socket=self.socket_path,
            log_path=None if self.log_file is None else self.log_file.path,
            scrollback_bytes=len(self.scrollback),
        )

    # --- life --------------------------------------------------------------------

    async def run(self, intake: Intake | None, master: tuple[FdHolder, int] | None = None) -> None:
        """Wait for the master (unless given), drain it until hangup, then exit.

        Cancelled by :meth:`cancel`; whatever the way out, the master is closed,
        the log file flushed and every subscriber told why the session ended.
        """
        try:
            with self._cancel_scope:
                if master is None:
                    assert intake is not None
                    try:
                        master = await intake(self)
                    except IntakeGone as exc:
                        self.end_message = f"session {self.name} gave up waiting: {exc}"
                        raise
                self._start(*master)
                await self._drain()
        finally:
            self._finish()

    def cancel(self, reason: EndReason) -> None:
        """Stop the session (``rm --force``, shutdown): the master is closed."""
        self.end_reason = reason
        self._cancel_scope.cancel()

    def _start(self, holder: FdHolder, number: int) -> None:
        self.master = PtyMaster(holder, number)
        self.state = SessionState.RUNNING
        self.socket_path = None
        rows, cols = self.master.get_size()
        wanted = self._wanted_size()
        if wanted is not None:
            rows, cols = wanted
            self.master.set_size(rows, cols)
        elif self.rows and self.cols and (rows, cols) != (self.rows, self.cols):
            rows, cols = self.rows, self.cols  # set by `resize` while waiting
            self.master.set_size(rows, cols)
        self.rows, self.cols = rows, cols
        log.info("session.running", pty=number, rows=rows, cols=cols)

    async def _drain(self) -> None:
        assert self.master is not None
        master = self.master
        while True:
            try:
                data = await master.read_batch()
            except Hangup:
                return
            self._publish(data)
            if not master.drained:
                # More is waiting and read_batch will not yield: let the rest run.
                # (When the pty was emptied, read_batch's wait is the yield.)
                await trio.lowlevel.checkpoint()

    def _publish(self, data: bytes) -> None:
        self.scrollback.append(data)
        if self.log_file is not None:
            try:
                self.log_file.write(data)
            except OSError as exc:
                log.error("logfile.write_failed", error=exc.strerror, path=self.log_file.path)
                self.log_file.close()
        lagged = [sub for sub in self.subscribers if not sub.push(data)]
        for sub in lagged:
            log.warning("client.lagged", client=sub.label, limit=sub.limit)
            self.remove_subscriber(sub)

    def _finish(self) -> None:
        was_running = self.master is not None
        if self.master is not None:
            # Whatever is still buffered is lost on rm --force; on hangup it is all read.
            self.master.close()
        if self.log_file is not None:
            self.log_file.close()
        self.state = SessionState.EXITED
        self.exited_at = time.time()
        self.socket_path = None
        reason = self.end_reason
        message = self.end_message or {
            EndReason.EXITED: f"session {self.name} ended",
            EndReason.REMOVED: f"session {self.name} was removed",
            EndReason.SHUTDOWN: "the consoled daemon is shutting down",
        }.get(reason, f"session {self.name} ended ({reason})")
        for sub in list(self.subscribers):
            sub.end(reason, message)
        self.subscribers.clear()
        if was_running:
            log.info("session.exited", reason=str(reason), bytes_out=self.bytes_out)
        self.done.set()

    # --- clients -----------------------------------------------------------------

    def add_subscriber(
        self,
        sub: Subscriber,
        replay: int | None,
        size: tuple[int, int] | None,
        *,
        nudge: bool = True,
    ) -> int:
        """Attach ``sub``: queue the replay and register it, with no gap in between.

        Nothing here awaits, so no output can be read between the replay
        snapshot and the registration: the client sees every byte exactly once.

        Returns:
            The number of replayed bytes.
        """
        chunks = self.scrollback.tail(replay) if replay != 0 else []
        sub.preload(chunks)
        if self.state is SessionState.EXITED:
            sub.end(self.end_reason, f"session {self.name} ended")
            return sum(map(len, chunks))
        self.subscribers[sub] = None
        if size is not None and not sub.read_only:
            sub.size = ClientSize(size[0], size[1], next(self._activity))
        self._resize_to_policy(nudge=nudge)
        return sum(map(len, chunks))

    def remove_subscriber(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            del self.subscribers[sub]
            if sub.size is not None:
                self._resize_to_policy()

    def client_resized(self, sub: Subscriber, rows: int, cols: int) -> None:
        if sub.read_only or sub not in self.subscribers:
            return
        sub.size = ClientSize(rows, cols, next(self._activity))
        self._resize_to_policy()

    def client_typed(self, sub: Subscriber) -> None:
        if sub.size is None or self.size_policy is not SizePolicy.LATEST:
            return
        sub.size = ClientSize(sub.size.rows, sub.size.cols, next(self._activity))
        if (sub.size.rows, sub.size.cols) != (self.rows, self.cols):
            self._resize_to_policy()

    def set_size(self, rows: int, cols: int) -> None:
        """Set the size directly (the ``resize`` request)."""
        self._apply_size(rows, cols)

    async def write_input(self, data: bytes) -> bool:
        """Write input to the terminal; False if the session cannot take it."""
        master = self.master
        if master is None or self.state is not SessionState.RUNNING:
            return False
        try:
            await master.write(data)
        except (Hangup, trio.ClosedResourceError):
            return False
        return True

    def write_input_now(self, data: bytes) -> int:
        """Write what the terminal takes now; all of ``data`` counts as done if the
        session cannot take input any more."""
        master = self.master
        if master is None or self.state is not SessionState.RUNNING:
            return len(data)
        try:
            return master.write_now(data)
        except (Hangup, trio.ClosedResourceError):
            return len(data)

    def _wanted_size(self) -> tuple[int, int] | None:
        return choose_size(
            self.size_policy, (s.size for s in self.subscribers if s.size is not None)
        )

    def _resize_to_policy(self, *, nudge: bool = False) -> None:
        wanted = self._wanted_size()
        if wanted is None:
            if nudge:
                self._nudge()
            return
        if wanted != (self.rows, self.cols):
            self._apply_size(*wanted)
        elif nudge:
            self._nudge()

    def _apply_size(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        if self.master is not None and not self.master.closed:
            self.master.set_size(rows, cols)
            log.debug("session.resized", rows=rows, cols=cols)

    def _nudge(self) -> None:
        """Make a full-screen program redraw by changing the size and back.

        The kernel only sends SIGWINCH when the size changes; docker and podman
        nudge the same way so an attach never shows a blank screen.
        """
        master = self.master
        if master is None or master.closed or not (self.rows and self.cols):
            return
        other = self.rows + 1 if self.rows < 65535 else self.rows - 1
        master.set_size(other, self.cols)
        master.set_size(self.rows, self.cols)
