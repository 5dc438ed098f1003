"""One console session: its record, its master and pump, its log file, its clients.

A session owns its fds and outlives the tasks that serve it: the pump
(:meth:`Session.pump`, which drains the master) and the intake (which waits
for the master, in :mod:`.intake`) run in the daemon's work nursery, and
cancelling them (a reexec quiescing the daemon) leaves every fd open and
every byte not yet read in the kernel's pty buffer, for whoever serves the
session next.  Only :meth:`Session.exit` (the terminal hung up, or
``rm --force``) and :meth:`Session.close` end it.

Every batch read goes to the record's ring first, then to the clients, then
to the log file's writer, all before the next await: a client is never sent
a byte the ring does not hold, so a client that resumes after a restart
finds its place.  The file is written by a writer thread (see
:mod:`.logwriter`); a reader whose file is far behind waits for it, so the
file is complete however loaded the daemon is, unless its disk stalls.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import structlog
import trio

from ..io.fds import OwnedFd
from ..io.listener import Listener
from ..io.process import Leader, exit_code
from ..io.pty import Hangup, PtyMaster
from ..io.record import Record, RecordError
from ..io.relay import NativeRelay, RingLayout
from ..names import SessionName
from ..protocol.events import EndReason, SessionInfo, SessionState
from .hub import ClientHub
from .logfile import LogFile, LogFormat
from .logpool import LogWriters
from .logwriter import STALL_TIMEOUT, LogWriter
from .screenstate import EmulationBudget, QueryWatch, ScreenRender, SessionScreen
from .sizepolicy import SizePolicy
from .subscriber import Subscriber

if TYPE_CHECKING:
    from ..io import _relay

log = structlog.get_logger("consoled.session")

#: Seconds a terminal that hung up waits for its leader's exit status.
LEADER_EXIT_WAIT: Final = 1.0
#: Bytes of answers to terminal queries that may wait for a terminal that is
#: not reading its input; more are dropped (the program stopped asking anyway).
MAX_PENDING_ANSWERS: Final = 4096
#: Bytes of input handed on by clients cut off by a restart (see
#: :meth:`Session.hand_on_input`) that a session keeps; more are dropped.
MAX_HANDED_INPUT: Final = 256 * 1024
#: How long, and how often, a terminal's leader not yet found is looked for
#: again: runc makes the terminal controlling only after it sent the master.
#: The first look is soon; the interval doubles after each miss, up to the
#: last, so a terminal nobody makes controlling costs a dozen looks, not 400
#: (a thousand such sessions after a reexec took half the event loop for 2 s).
LEADER_SEARCH: Final = 2.0
LEADER_SEARCH_INTERVAL: Final = 0.005
LEADER_SEARCH_INTERVAL_MAX: Final = 0.25


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def end_message(name: SessionName, reason: EndReason) -> str:
    return {
        EndReason.EXITED: f"session {name} ended",
        EndReason.REMOVED: f"session {name} was removed",
        EndReason.SHUTDOWN: "the consoled daemon is shutting down",
    }.get(reason, f"session {name} ended ({reason})")


class Session:
    """A session and everything it holds.

    Build one with :meth:`new` or :meth:`restore`.

    Args:
        serial: the daemon-wide number that names the session's fds.
        name: the session's name.
        record: its durable state and ring.
        size_policy: how attached clients' sizes combine.
    """

    def __init__(
        self,
        serial: int,
        name: SessionName,
        record: Record,
        *,
        size_policy: SizePolicy,
        uid: str,
        created: float,
    ) -> None:
        self.serial = serial
        self.name = name
        self.record = record
        self.uid = uid
        self.created = created
        self.state = SessionState.WAITING
        self.exited_at: float | None = None
        self.end_reason = EndReason.EXITED
        self.end_message: str | None = None
        self.hub = ClientHub(size_policy)
        self.master: PtyMaster | None = None
        self.intake: Listener | None = None
        #: Wall-clock time after which a waiting session gives up (None: never).
        self.intake_deadline: float | None = None
        #: The log file's writer (its file is the writer thread's), if it has one.
        self.log_file: LogWriter | None = None
        #: The process leading the terminal's session (whose status is the session's).
        self.leader: Leader | None = None
        #: How that process exited (a wait status), None while unknown.
        self.exit_status: int | None = None
        #: Removed once it has ended and its status has been delivered (``consoled exec``).
        self.ephemeral = False
        #: The emulated screen, made when first needed (see :mod:`.screenstate`).
        self.screen: SessionScreen | None = None
        #: Whether to keep one at all (``serve --no-terminal-state``).
        self.terminal_state = True
        #: What emulating may cost on the draining path (shared by all sessions).
        self.emulation: EmulationBudget | None = None
        #: What catching screens up may cost for attaches and resizes (shared).
        self.render_budget: EmulationBudget | None = None
        self._queries = QueryWatch()
        self._answers = b""
        #: Input clients gave the daemon that has not reached the terminal, and
        #: that they will not send again (see :meth:`hand_on_input`).
        self.handed_input = b""
        self._handed_written = trio.Event()
        self._handed_written.set()
        self.rows = 0
        self.cols = 0
        self.running = trio.Event()
        self.done = trio.Event()
        #: The log file's position as the record last stored it.
        self._log_recorded_to: int | None = None
        #: Told when one of the session's fds is replaced (a log file rotated):
        #: the service manager's fd store must follow.
        self.fd_replaced: Callable[[str, OwnedFd], None] = lambda name, owner: None

    @classmethod
    def new(
        cls, serial: int, name: SessionName, *, scrollback: int, size_policy: SizePolicy
    ) -> Session:
        """A new, waiting session with a fresh record.

        Raises:
            RecordError: its metadata does not fit (a bug: names are bounded).
        """
        uid = uuid.uuid4().hex[:16]
        created = time.time()
        record = Record.create(scrollback, {}, label=f"s{serial}")
        session = cls(serial, name, record, size_policy=size_policy, uid=uid, created=created)
        try:
            record.write_meta(session.meta())
        except BaseException:
            record.close()
            raise
        return session

    @classmethod
    def restore(cls, serial: int, record: Record, *, size_policy: SizePolicy) -> Session:
        """The session a record describes, as it was (no master, intake or log file yet).

        Raises:
            RecordError: the metadata is incomplete or invalid.
        """
        meta = record.meta
        try:
            name = SessionName.parse(str(meta["name"]))
            session = cls(
                serial,
                name,
                record,
                size_policy=size_policy,
                uid=str(meta["uid"]),
                created=float(meta["created"]),
            )
            session.state = SessionState(meta["state"])
            exited_at = meta.get("exited_at")
            session.exited_at = None if exited_at is None else float(exited_at)
            session.end_reason = EndReason(meta.get("end_reason", "exited"))
            message = meta.get("end_message")
            session.end_message = None if message is None else str(message)
            deadline = meta.get("intake_deadline")
            session.intake_deadline = None if deadline is None else float(deadline)
            session.rows, session.cols = int(meta.get("rows", 0)), int(meta.get("cols", 0))
            status = meta.get("exit_status")
            session.exit_status = None if status is None else int(status)
            session.ephemeral = bool(meta.get("ephemeral", False))
        except (KeyError, ValueError, TypeError, OverflowError) as exc:  # int(inf) overflows
            raise RecordError(f"session record metadata is invalid: {exc!r}") from None
        if session.state is SessionState.EXITED:
            session.done.set()
        return session

    # --- durable state -----------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """Everything a successor needs to carry on with this session."""
        return {
            "name": str(self.name),
            "uid": self.uid,
            "created": self.created,
            "state": str(self.state),
            "exited_at": self.exited_at,
            "end_reason": str(self.end_reason),
            "end_message": None if self.end_message is None else self.end_message[:200],
            "intake_deadline": self.intake_deadline,
            "rows": self.rows,
            "cols": self.cols,
            "log": None if self.log_file is None or self.log_file.lost else self.log_file.meta(),
            "exit_status": self.exit_status,
            "ephemeral": self.ephemeral,
        }

    def persist(self) -> None:
        """Write the metadata to the record; a failure is logged, never raised."""
        meta = self.meta()
        try:
            self.record.write_meta(meta)
        except (OSError, RecordError) as exc:
            log.error("session.persist_failed", session=str(self.name), error=str(exc))
            return
        self._log_recorded_to = None if meta["log"] is None else meta["log"]["written_to"]

    @property
    def log_unrecorded(self) -> bool:
        """The log file went on since the record was last written.

        Only a CRI file's position needs the record (a raw file's size says
        it): a handover writes the record first, or the successor would count
        the records since (see :meth:`.LogFile.adopt`).
        """
        log_file = self.log_file
        return (
            log_file is not None
            and log_file.format is LogFormat.CRI
            and log_file.written_to != self._log_recorded_to
        )

    def fds(self) -> Iterator[tuple[str, OwnedFd]]:
        """Every fd this session holds, with the name it is stored and handed over under."""
        if self.record.owner is not None:
            yield f"s{self.serial}.rec", self.record.owner
        if self.master is not None and not self.master.closed:
            yield f"s{self.serial}.pty", self.master.owner
        log_owner = None if self.log_file is None else self.log_file.owner
        if log_owner is not None:
            yield f"s{self.serial}.log", log_owner
        if self.leader is not None and not self.leader.owner.closed:
            yield f"s{self.serial}.pid", self.leader.owner

    # --- introspection -----------------------------------------------------------

    @property
    def bytes_out(self) -> int:
        return self.record.end

    @property
    def exit_code(self) -> int | None:
        """The exit code as a shell shows it (128 + N for signal N), None if unknown."""
        return None if self.exit_status is None else exit_code(self.exit_status)

    @property
    def socket_path(self) -> str | None:
        if self.intake is None or self.intake.path is None:
            return None
        return str(self.intake.path)

    def info(self) -> SessionInfo:
        return SessionInfo(
            session=str(self.name),
            id=self.name.id,
            exec=self.name.exec,
            state=self.state,
            clients=self.hub.attached,
            rows=self.rows,
            cols=self.cols,
            created=rfc3339(self.created),
            bytes_out=self.bytes_out,
            exited_at=None if self.exited_at is None else rfc3339(self.exited_at),
            socket=self.socket_path,
            log_path=None if self.log_file is None or self.log_file.lost else self.log_file.path,
            scrollback_bytes=len(self.record),
            uid=self.uid,
            exit_code=self.exit_code,
        )

    # --- life --------------------------------------------------------------------

    def start(self, owner: OwnedFd, number: int) -> None:
        """The master has arrived: the session runs (its pump is started by the caller)."""
        self.master = PtyMaster(owner, number)
        self.state = SessionState.RUNNING
        self.intake_deadline = None
        rows, cols = self.master.get_size()
        wanted = self.hub.wanted_size()
        if wanted is not None:
            rows, cols = wanted
            self.master.set_size(rows, cols)
        elif self.rows and self.cols and (rows, cols) != (self.rows, self.cols):
            rows, cols = self.rows, self.cols  # set by `resize` while waiting
            self.master.set_size(rows, cols)
        if self.screen is not None:
            self.screen.resize(self.record, rows, cols, self.render_budget)
        self.rows, self.cols = rows, cols
        self.leader = Leader.find(owner.fd)
        self.persist()
        self.running.set()
        log.info(
            "session.running",
            session=str(self.name),
            pty=number,
            rows=rows,
            cols=cols,
            leader=None if self.leader is None else self.leader.pid,
        )

    def resume_master(self, owner: OwnedFd, number: int, leader: Leader | None = None) -> None:
        """Take back the master of a session that was running before a restart.

        Args:
            leader: the terminal's leader as the predecessor knew it (its
                pidfd); else it is looked for again.
        """
        self.master = PtyMaster(owner, number)
        self.state = SessionState.RUNNING
        self.rows, self.cols = self.master.get_size()
        self.hub.hold(self.rows, self.cols)  # until a client is active again
        self._queries.resume(self.record)  # a query the predecessor read half of
        self.leader = leader if leader is not None else Leader.find(owner.fd)
        self.running.set()

    async def pump(self, relay: NativeRelay | None = None) -> None:
        """Drain the master until the terminal hangs up, then end the session.

        With ``relay``, its thread reads the master (see :mod:`..io.relay`),
        and this takes what it read; else this reads.  Cancelling it (a
        reexec) leaves everything as it is, unread bytes in the kernel's buffer.
        """
        master = self.master
        assert master is not None
        layout = None if relay is None else self.record.layout()
        if relay is not None and layout is not None:
            if not await self._pump_native(relay, master, layout):
                return
        elif not await self._pump_here(master):
            return
        if self.leader is not None:
            # Everything the terminal wrote has been read; how did its process end?
            self.exit_status = await self.leader.wait_status(LEADER_EXIT_WAIT)
        if self.log_file is not None:
            # Ended means the file has it all (a script may read it next), unless it stalls.
            with trio.move_on_after(STALL_TIMEOUT):
                await self.log_file.wait_idle()
        # A handover under way: the successor ends the session (or we do, if it failed).
        await master.wait_thawed()
        self.exit(EndReason.EXITED)

    async def _pump_native(self, relay: NativeRelay, master: PtyMaster, layout: RingLayout) -> bool:
        """Take what the relay's thread reads until the terminal hangs up (True)
        or the master is closed (False)."""
        if master.closed:
            return False
        ready = trio.Event()

        def woken() -> None:
            ready.set()

        if master.source is None:
            record = self.record.owner
            assert record is not None  # a record in memory has no layout
            master.relay_by(relay.source(master.owner, record, layout, woken))
        else:  # a pump that ended with the terminal, started again? (never: one per master)
            master.source.data = woken
        while True:
            if master.closed:
                return False  # closed under us by exit(): rm --force or shutdown
            if self.take_relayed():
                return True
            if self.log_file is not None and self.log_file.full:
                await self.log_file.wait_room()  # a slow disk paces the terminal
                continue
            await ready.wait()
            ready = trio.Event()

    def caught_up(self) -> None:
        """Take what the relay's thread has read, now: a client that attaches,
        or reads the logs, gets everything any other client may already have
        (the thread tells the event loop of output every client got up to
        :data:`.relay.NOTIFY_DELAY` late); and the window size it set
        (:meth:`sizes_caught_up`)."""
        master = self.master
        if master is not None and master.source is not None and not master.closed:
            self.take_relayed()
        self.sizes_caught_up()

    def sizes_caught_up(self) -> None:
        """Record a window size the relay's thread put in force (the event loop
        hears of it up to :data:`.relay.NOTIFY_DELAY` late): before the size
        changes again, or a client is shown the screen."""
        for sub in self.hub:
            if sub.relayed_input is not None:
                sub.relayed_input.take_size()

    def take_relayed(self) -> bool:
        """Publish what the relay's thread read (at once: a handover's freeze
        calls it); True once the terminal has hung up and all of it is taken."""
        master = self.master
        assert master is not None
        assert master.source is not None
        data, unstored, hung_up, error, read_ns = master.source.take()
        if data:
            record = self.record
            start = record.end
            clients = len(self.hub)
            # Dated when the thread read it, not when the event loop heard of it.
            if unstored > start:
                # The ring could not be written (out of memory): as publish does.
                cut = min(unstored - start, len(data))
                log.error(
                    "session.ring_write_failed", session=str(self.name), skipped=cut, by="relay"
                )
                record.skip(cut)
                record.appended(data[cut:], read_ns)
            else:
                record.appended(data, read_ns)
            self._deliver(data, start, read_ns)
            if len(self.hub) != clients:
                self._sync_relay()  # a client was dropped (it lagged)
        if hung_up and error:
            log.warning("session.read_failed", session=str(self.name), error=os.strerror(error))
        return hung_up

    async def _pump_here(self, master: PtyMaster) -> bool:
        """Read the master until the terminal hangs up (True) or it is closed (False)."""
        try:
            while True:
                try:
                    data = await master.read_batch()
                except Hangup:
                    break
                self.publish(data)
                if self.log_file is not None and self.log_file.full:
                    await self.log_file.wait_room()  # a slow disk paces the terminal
                elif not master.drained:
                    # More is waiting and read_batch will not yield: let the rest run.
                    # (When the pty was emptied, read_batch's wait is the yield.)
                    await trio.lowlevel.checkpoint()
        except trio.ClosedResourceError:
            return False  # closed under us by exit(): rm --force or shutdown
        return True

    def relay_link(
        self, sub: Subscriber, sock: int, on_stopped: Callable[[], object]
    ) -> _relay.Link | None:
        """A link from the native relay's thread to ``sub``'s client on ``sock``,
        if the thread reads this session's master (see :meth:`.NativeRelay.link`)."""
        master = self.master
        if master is None or master.source is None or master.source.closed:
            return None
        sub.link = NativeRelay.link(master.source, sock, on_stopped)
        self._sync_relay()
        return sub.link

    def _sync_relay(self) -> None:
        """Tell the relay's thread whether every client has a link (then output
        all of them got may wait a moment for the event loop: see _relay.c)."""
        master = self.master
        if master is not None and master.source is not None:
            subs = list(self.hub)
            master.source.only_links = bool(subs) and all(s.link is not None for s in subs)

    def report_exit(self, code: int) -> None:
        """Take the exit code a client reaped (``consoled exec``), as a wait status."""
        self.exit_status = (code - 128) if code > 128 else code << 8
        self.persist()

    def find_leader(self) -> bool:
        """Look for the terminal's leader again; True once it is known (or never will be)."""
        if self.leader is None and self.master is not None and not self.master.closed:
            self.leader = Leader.find(self.master.fd)
        return self.leader is not None or self.state is not SessionState.RUNNING

    def publish(self, data: bytes) -> None:
        """One batch of output: into the ring, to every client, then into the log file.

        A terminal query in it is answered, once, for the session.
        """
        record = self.record
        try:
            record.append(data)
        except OSError as exc:
            log.error("session.ring_write_failed", session=str(self.name), error=exc.strerror)
            record.skip(len(data))
        self._deliver(data, record.end - len(data))

    def _deliver(self, data: bytes, start: int, read_ns: int | None = None) -> None:
        """A batch at stream offset ``start``, in the ring already: to every client,
        then into the log file (dated ``read_ns``, now if None); a terminal query
        in it is answered."""
        record = self.record
        # The clients before the log file: an echo reaches its client a few
        # microseconds sooner, and the ring, which a resuming client reads, has
        # it already.  (Nothing awaits in between: a `logs -f` that snapshots
        # the file sees this batch in the ring.)
        if self.hub.publish(data, start):
            self._resize_to_policy()  # a client that counted is gone
        if self.log_file is not None:
            self.log_file.write(data, record.end, read_ns)
        if not self.terminal_state:
            return
        ends = self._queries.ends(data)
        if ends or self._answers:
            start = record.end - len(data)
            answers = b""
            if ends:
                answers = self.screen_state().catch_up(
                    record, upto=start + ends[-1], answer_from=start, budget=self.emulation
                )
            self._answer(answers)

    def screen_state(self) -> SessionScreen:
        """The emulated screen, made (from the ring) if it does not exist yet."""
        if self.screen is None:
            self.screen = SessionScreen(
                self.rows, self.cols, self.record.start, clock=trio.current_time
            )
        return self.screen

    @property
    def pending_answers(self) -> bytes:
        """Answers to queries still waiting for the terminal to read its input."""
        return self._answers

    def take_answers(self, answers: bytes) -> None:
        """Answers a predecessor could not write yet (a reexec): written now if
        the terminal takes them, else with the next output, as its own."""
        self._answer(answers[-MAX_PENDING_ANSWERS:])

    def _answer(self, answers: bytes) -> None:
        """Write answers to queries to the terminal, after any still waiting (never blocks)."""
        pending = self._answers + answers
        self._answers = b""
        if not pending or self.master is None or self.master.closed:
            return
        try:
            written = self.master.write_now(pending)
        except (Hangup, trio.ClosedResourceError):
            return
        self._answers = pending[written:][-MAX_PENDING_ANSWERS:]

    def give_log(self, pool: LogWriters, file: LogFile, *, create: bool) -> None:
        """Write output to ``file`` from now on (``create``: it is not created yet)."""
        make = LogWriter.create if create else LogWriter
        self.log_file = make(pool, file, self.record, self)

    def log_replaced(self, owner: OwnedFd) -> None:
        """The log file's writer opened a new file (the first, or a rotation's)."""
        self.persist()
        self.fd_replaced(f"s{self.serial}.log", owner)

    def catch_up_log(self) -> None:
        """Write to the log file what the ring holds beyond it (after a crash)."""
        if self.log_file is not None:
            self.log_file.catch_up()

    def exit(self, reason: EndReason, message: str | None = None) -> None:
        """End the session: close the master, tell every client why, keep the output.

        The terminal hangs up when the master closes (``rm --force``); after
        a hangup (EXITED) everything it wrote has been read.
        """
        if self.state is SessionState.EXITED:
            return
        was_running = self.master is not None
        if self.master is not None:
            self.master.close()
        if self.intake is not None:
            self.intake.close()
            self.intake = None
        if self.log_file is not None:
            self.log_file.close()
        if self.leader is not None:
            self.leader.close()
            self.leader = None
        self.screen = None
        self.handed_input = b""  # nobody will read it
        self._handed_written.set()
        self.state = SessionState.EXITED
        self.exited_at = time.time()
        self.end_reason = reason
        self.end_message = message or self.end_message or end_message(self.name, reason)
        self.hub.end_all(reason, self.end_message, self.exit_code)
        self.persist()
        if was_running:
            log.info(
                "session.exited", session=str(self.name), reason=str(reason),
                bytes_out=self.bytes_out,
            )  # fmt: skip
        self.running.set()  # wakes input waiting for a master that will never come
        self.done.set()

    def close(self, *, unlink: bool = True) -> None:
        """Close every fd this session holds (it is forgotten, or the daemon stops).

        Args:
            unlink: remove its console socket's file too; False once a
                successor serves it.
        """
        if self.master is not None:
            self.master.close()
        if self.intake is not None:
            self.intake.close(unlink=unlink)
            self.intake = None
        if self.log_file is not None:
            self.log_file.close()
        if self.leader is not None:
            self.leader.close()
        self.record.close()

    # --- clients -----------------------------------------------------------------

    def attach(
        self,
        sub: Subscriber,
        *,
        replay: int | None,
        resume: int | None = None,
        size: tuple[int, int] | None = None,
        nudge: bool = True,
        screen: bool = False,
        history: int = 0,
    ) -> tuple[int, ScreenRender | None]:
        """Attach ``sub``: queue the replay (or render the screen) and register it.

        Nothing here awaits, so no output can be read between the replay
        snapshot (or the screen's render) and the registration: the client
        sees every byte exactly once.

        Returns:
            The stream offset of the first byte queued for it, and with
            ``screen`` the render (its history lines still to be emulated:
            see :meth:`.ScreenRender.finish`).
        """
        self.caught_up()
        record = self.record
        screen = screen and self.terminal_state
        if screen and resume is None and self.state is not SessionState.EXITED:
            first = record.end
            sub.offset = first
            self.hub.add(sub, size)
            self._sync_relay()
            self._resize_to_policy()  # the render is at the size it gets
            drawn = self.screen_state().render(record, history, self.render_budget)
            if drawn.approximate and nudge:
                self._nudge()  # the program's own redraw makes it right
            return first, drawn
        if resume is not None:
            first, chunks = record.read_from(resume)
        elif replay == 0:
            first, chunks = record.end, []
        else:
            chunks = record.tail(replay)
            first = record.end - sum(map(len, chunks))
        sub.offset = first
        sub.preload(chunks)
        if self.state is SessionState.EXITED:
            message = self.end_message or end_message(self.name, self.end_reason)
            sub.end(self.end_reason, message, self.exit_code)
            return first, None
        self.hub.add(sub, size, resumed=resume is not None)
        self._sync_relay()
        self._resize_to_policy(nudge=nudge and resume is None)
        return first, None

    def detach(self, sub: Subscriber) -> None:
        if self.hub.remove(sub):
            self._resize_to_policy()
        self._sync_relay()

    def client_resized(
        self, sub: Subscriber, rows: int, cols: int, *, in_force: bool = False
    ) -> None:
        """A client's window changed; ``in_force``: the relay's thread already
        set the terminal's size to it (the client is the only one attached)."""
        if in_force:
            self._apply_size(rows, cols, in_force=True)
        if self.hub.resized(sub, rows, cols):
            self._resize_to_policy()

    def client_typed(self, sub: Subscriber) -> None:
        if self.hub.typed(sub) and self.hub.wanted_size() != (self.rows, self.cols):
            self._resize_to_policy()

    def set_size(self, rows: int, cols: int) -> None:
        """Set the size directly (the ``resize`` request)."""
        self.sizes_caught_up()  # a size the relay's thread set came first
        self.hub.release()
        self._apply_size(rows, cols)

    def hand_on_input(self, data: bytes) -> None:
        """Input a client sent that has not reached the terminal, and that the
        client will not send again: its stream was cut by a restart before it
        could be told how much of its input was consumed (its socket was full),
        so it goes on as after a crash.  A reexec hands it to the successor,
        which writes it before any new input."""
        if data:
            self.handed_input = (self.handed_input + data)[:MAX_HANDED_INPUT]
            self._handed_written = trio.Event()

    async def write_handed_input(self) -> None:
        """Write the input handed on (by a predecessor, or by clients cut off by a
        restart that did not happen), then let other input through."""

        def wrote(n: int) -> None:
            self.handed_input = self.handed_input[n:]

        try:
            if self.master is None:
                raise Hangup
            await self.master.write(self.handed_input, wrote)
        except (Hangup, trio.ClosedResourceError):
            self.handed_input = b""  # the terminal is gone: nobody will read it
        if not self.handed_input:
            self._handed_written.set()

    async def write_input(self, data: bytes, wrote: Callable[[int], None]) -> bool:
        """Write input to the terminal, waiting for the master if it has not arrived yet.

        Args:
            wrote: told the size of each part as it reaches the terminal.

        Returns:
            False if the session cannot take the rest (it ended).
        """
        if self.state is SessionState.WAITING:
            await self.running.wait()
        if not self._handed_written.is_set():
            await self._handed_written.wait()  # input handed on from before goes first
        master = self.master
        if master is None or self.state is not SessionState.RUNNING:
            return False
        try:
            await master.write(data, wrote)
        except (Hangup, trio.ClosedResourceError):
            return False
        return True

    def write_input_now(self, data: bytes) -> int:
        """Write what the terminal takes now, without waiting.

        Returns:
            The bytes written: 0 while the master has not arrived (the rest
            waits for it), all of ``data`` once the session can take no input.
        """
        if self.state is SessionState.WAITING or self.handed_input:
            return 0
        master = self.master
        if master is None or self.state is not SessionState.RUNNING:
            return len(data)
        try:
            return master.write_now(data)
        except (Hangup, trio.ClosedResourceError):
            return len(data)

    def _resize_to_policy(self, *, nudge: bool = False) -> None:
        wanted = self.hub.wanted_size()
        if wanted is None:
            if nudge:
                self._nudge()
            return
        if wanted != (self.rows, self.cols):
            self._apply_size(*wanted)
        elif nudge:
            self._nudge()

    def _apply_size(self, rows: int, cols: int, *, in_force: bool = False) -> None:
        """Set the terminal's size (``in_force``: it has it already) and the screen's."""
        if self.screen is not None and (rows, cols) != (self.rows, self.cols):
            self.screen.resize(self.record, rows, cols, self.render_budget)
        self.rows, self.cols = rows, cols
        if in_force:
            log.debug("session.resized", session=str(self.name), rows=rows, cols=cols, by="relay")
        elif self.master is not None and not self.master.closed:
            self.master.set_size(rows, cols)
            log.debug("session.resized", session=str(self.name), rows=rows, cols=cols)

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
