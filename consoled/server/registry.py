"""The daemon's table of sessions: creation, lookup, rename, removal, retention.

One :class:`SessionTable` per daemon, created inside ``serve``; there is no
module-level state.  Sessions outlive the tasks that serve them: while the
daemon serves, :meth:`SessionTable.serve` runs each session's task (intake or
pump) in the work nursery it is given, and a reexec cancels that nursery and
hands the sessions, with every fd they hold, to the successor.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import resource
from collections.abc import Iterable, Iterator
from typing import Final

import structlog
import trio

from ..io.fds import FD_HEADROOM, OwnedFd, close_on_error, fds_in_use
from ..io.listener import Gate, Listener
from ..io.manager import ServiceManager
from ..io.pty import readable_now
from ..io.record import RecordError
from ..io.relay import NativeRelay
from ..names import InvalidName, SessionName, check_part
from ..protocol.errors import ErrorCode
from ..protocol.events import EndReason, SessionState
from .config import DaemonConfig
from .errors import RequestError
from .intake import InFlight, IntakeGone, wait_master
from .logfile import LogDir, LogFile, LogFormat
from .logpool import LogWriters
from .logwriter import STALL_TIMEOUT
from .screenstate import (
    DEFAULT_SIZE,
    RENDER_SHARE,
    RENDER_TIME,
    EmulationBudget,
    ScreenHandover,
    SessionScreen,
)
from .session import LEADER_SEARCH, LEADER_SEARCH_INTERVAL, LEADER_SEARCH_INTERVAL_MAX, Session

log = structlog.get_logger("consoled.registry")

#: Seconds ``rm --force`` waits for a session's task to let go of its master.
REMOVE_TIMEOUT = 5.0
#: Seconds an emulated screen stays live unused (no query, attach or resize) before it
#: is frozen to its render (see consoled.server.screenstate).
SCREEN_IDLE = 300.0
#: Sessions' tasks started between two turns of the event loop when serving begins.
SPAWN_BATCH = 64


def parse_name(text: str, what: str = "container id") -> SessionName:
    try:
        return SessionName.parse(text, what)
    except InvalidName as exc:
        raise RequestError(ErrorCode.INVALID_NAME, str(exc)) from None


def _names(sessions: list[Session], most: int = 3) -> str:
    """A few sessions' names, for a message."""
    names = sorted((s.name for s in sessions), key=SessionName.sort_key)
    shown = ", ".join(str(n) for n in names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def exec_base(command: str) -> str:
    """A valid exec-name stem from a command: its basename, cleaned up."""
    base = re.sub(r"[^A-Za-z0-9_.+-]", "_", os.path.basename(command))
    base = base.lstrip("_.+-")[:100]
    return base or "exec"


#: Seconds the daemon, stopping, waits for the log files to be written.
LOG_CLOSE_TIMEOUT: Final = 2.0


class SessionTable:
    """All sessions of one daemon.

    Args:
        config: the daemon's settings.
        log_dir: the open log directory, or None without log files.
        manager: the service manager (its fd store keeps every session's fds).
        gate: closed while the daemon hands over: no accept loop accepts then.
    """

    def __init__(
        self,
        config: DaemonConfig,
        log_dir: LogDir | None,
        manager: ServiceManager,
        gate: Gate | None = None,
    ) -> None:
        self.config = config
        self.gate = gate or Gate()
        self.log_dir = log_dir
        self.manager = manager
        #: The threads that write the sessions' log files.
        self.log_writers = LogWriters()
        self._sessions: dict[SessionName, Session] = {}
        #: The same sessions by container id (a container's init and its execs).
        self._by_id: dict[str, dict[SessionName, Session]] = {}
        #: The exited sessions kept (for the retention limit, without a scan of all).
        self._kept_exited: dict[Session, None] = {}
        self._serials = itertools.count(1)
        self._unnamed = itertools.count(1)
        #: Where intake tasks run: one serving period's (cancelled for a handover).
        self._nursery: trio.Nursery | None = None
        #: Where the sessions' readers run: the daemon's whole life (frozen, not
        #: cancelled, for a handover; see freeze).
        self._pumps: trio.Nursery | None = None
        self._pumping: set[Session] = set()
        #: The native relay's thread, which reads the masters when there is one
        #: (see :mod:`..io.relay`; set by the daemon).
        self.relay: NativeRelay | None = None
        self.in_flight = InFlight()
        #: What emulators may cost on the draining path, all sessions together.
        self.emulation = EmulationBudget()
        #: What catching screens up may cost attaches and resizes, all together:
        #: one may take RENDER_TIME, many in a row a quarter of the daemon's time.
        self.render_budget = EmulationBudget(share=RENDER_SHARE, burst=RENDER_TIME)
        #: Sessions whose leader is looked for: (give up at, next look, interval).
        self._leaderless: dict[Session, tuple[float, float, float]] = {}
        self._leaderless_changed = trio.Event()
        self.shutting_down = False
        self._streams = 0
        self._streams_done = trio.Event()
        self._streams_done.set()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    # --- serving ------------------------------------------------------------------

    async def serve(self, nursery: trio.Nursery, pumps: trio.Nursery) -> None:
        """Run every session's task, and new sessions' from now on, until :meth:`stop_serving`.

        Readers run in ``pumps``, which lives as long as the daemon: a reader
        already running (a handover failed and serving resumes) is not started
        again.  Intake tasks and the leader search run in ``nursery``.

        Sessions whose terminal has output waiting start first; the others
        follow in batches, the event loop turning in between.  After a reexec
        with thousands of sessions, the terminals that are printing are drained,
        and the clients that reconnect answered, before every idle session's
        task has started (starting 1,000 took 29 ms of an attached client's
        pause).  Returns once every session's task has started.
        """
        self._nursery = nursery
        self._pumps = pumps
        nursery.start_soon(self._find_leaders)
        nursery.start_soon(self._freeze_idle_screens)
        sessions = list(self._sessions.values())
        for session in sessions:
            self._look_for_leader(session)
        masters = {
            s.master.fd: s
            for s in sessions
            if s.state is SessionState.RUNNING and s.master is not None and not s.master.closed
        }
        printing = [masters[fd] for fd in readable_now(masters)]
        first = set(printing)
        queue = printing + [s for s in sessions if s not in first]
        for start in range(0, len(queue), SPAWN_BATCH):
            if start:
                await trio.lowlevel.checkpoint()
            for session in queue[start : start + SPAWN_BATCH]:
                if self._nursery is None:
                    return  # a handover began meanwhile
                if self._sessions.get(session.name) is session:  # not removed meanwhile
                    self._spawn(session)

    def _look_for_leader(self, session: Session) -> None:
        if session.state is SessionState.RUNNING and session.leader is None:
            now = trio.current_time()
            self._leaderless[session] = (
                now + LEADER_SEARCH,
                now + LEADER_SEARCH_INTERVAL,
                LEADER_SEARCH_INTERVAL,
            )
            self._leaderless_changed.set()

    async def _freeze_idle_screens(self) -> None:
        """Freeze emulated screens unused for a while: a quiet host costs little memory."""
        while True:
            await trio.sleep(SCREEN_IDLE / 4)
            now = trio.current_time()
            for session in self._sessions.values():
                screen = session.screen
                if screen is not None and not screen.frozen and screen.idle_for(now) > SCREEN_IDLE:
                    screen.freeze(session.record)  # or on a later round

    async def _find_leaders(self) -> None:
        """Look again for the leaders not known yet (one task for every session)."""
        while True:
            while not self._leaderless:
                self._leaderless_changed = trio.Event()
                await self._leaderless_changed.wait()
            now = trio.current_time()
            due = min(next_look for _, next_look, _ in self._leaderless.values())
            if due > now:
                # No event says a runtime has made the terminal controlling: look
                # again when the next look is due, or for a session new meanwhile.
                self._leaderless_changed = trio.Event()
                with trio.move_on_at(due):
                    await self._leaderless_changed.wait()
                continue
            # Looks due soon are taken now too: one pass, not one wake-up each.
            soon = now + LEADER_SEARCH_INTERVAL
            for session, (deadline, next_look, last) in list(self._leaderless.items()):
                if next_look > soon:
                    continue
                if session.find_leader() or now > deadline:
                    del self._leaderless[session]
                    continue
                interval = min(last * 2, LEADER_SEARCH_INTERVAL_MAX)
                self._leaderless[session] = (deadline, now + interval, interval)
            await trio.lowlevel.checkpoint()

    def stop_serving(self) -> None:
        """Spawn no more tasks (the serving period's nursery is being cancelled)."""
        self._nursery = None

    def freeze(self) -> None:
        """Every reader stops reading, where it is, until :meth:`thaw` (a handover).

        Call it once nothing else changes a session (intake and requests
        quiesced): the records and logs then hold exactly what was read, and
        the rest stays in the kernel's buffers for the successor.
        """
        for session in self._sessions.values():
            master = session.master
            if master is not None:
                master.freeze()
                if master.source is not None and not master.closed:
                    session.take_relayed()  # what its thread read before it stopped

    def thaw(self) -> None:
        """The readers go on (the handover failed)."""
        for session in self._sessions.values():
            if session.master is not None:
                session.master.thaw()

    def _spawn(self, session: Session) -> None:
        if self._nursery is None or self._pumps is None:
            return
        if session.state is SessionState.RUNNING:
            if session not in self._pumping:
                self._pumping.add(session)
                self._pumps.start_soon(self._pump, session, name=f"pump {session.name}")
            if session.handed_input:
                # In this serving period's nursery: a reexec stops it before it
                # hands the rest on.
                self._nursery.start_soon(session.write_handed_input)
        elif session.state is SessionState.WAITING and session.intake is not None:
            self._nursery.start_soon(self._intake, session, name=f"intake {session.name}")

    async def _pump(self, session: Session) -> None:
        structlog.contextvars.clear_contextvars()  # not the requesting client's
        try:
            with structlog.contextvars.bound_contextvars(session=str(session.name)):
                try:
                    await session.pump(self.relay)
                except Exception as exc:
                    # A bug or an unexpected errno in this session: it ends, the daemon goes on.
                    log.error("session.failed", error=str(exc), exc_info=exc)
                    session.exit(EndReason.EXITED, f"session {session.name} failed: {exc}")
                if session.state is SessionState.EXITED:
                    self._exited(session)
        finally:
            self._pumping.discard(session)

    async def _intake(self, session: Session) -> None:
        structlog.contextvars.clear_contextvars()
        with structlog.contextvars.bound_contextvars(session=str(session.name)):
            intake = session.intake
            if intake is None:
                return  # removed before this task first ran
            try:
                await wait_master(
                    intake,
                    session.intake_deadline,
                    lambda owner, number: self._arrived(session, owner, number),
                    self.in_flight,
                    self.gate,
                )
            except trio.ClosedResourceError:
                return  # removed while waiting
            except IntakeGone as exc:
                reason = str(exc)
                if session.intake is not None and session.intake.present():
                    reason = f"no master arrived within {self.config.intake_timeout:g} s"
                log.warning("intake.gave_up", reason=reason)
                session.end_message = f"session {session.name} gave up waiting: {reason}"
                session.exit(EndReason.EXITED)
                self._forget(session)

    def _arrived(self, session: Session, owner: OwnedFd, number: int) -> None:
        """A waiting session's master came: it runs from now on."""
        if session.intake is not None:
            self.manager.unstore(f"s{session.serial}.sock")
            session.intake.close()
            session.intake = None
        session.start(owner, number)
        self.manager.store(f"s{session.serial}.pty", owner)
        self._look_for_leader(session)
        self._spawn(session)

    # --- lookup --------------------------------------------------------------------

    def get(self, text: str) -> Session:
        name = parse_name(text)
        session = self._sessions.get(name)
        if session is None:
            raise RequestError(ErrorCode.UNKNOWN_SESSION, f"no session named {text!r}")
        return session

    def get_resumed(self, text: str, uid: str | None) -> Session:
        """The session a stream resumes: named ``text``, or renamed since from it.

        A client resuming after a restart asks by the name it attached with and
        the ``uid`` its first ``attached`` gave: a session renamed meanwhile is
        found by the uid (the names are looked through only then).

        Raises:
            RequestError: no such session (``unknown_session``; the name was
                reused by another session, or the session is gone).
        """
        session = self._sessions.get(parse_name(text))
        if uid is None or (session is not None and session.uid == uid):
            return self.get(text)
        renamed = next((s for s in self._sessions.values() if s.uid == uid), None)
        if renamed is not None:
            return renamed
        if session is None:
            raise RequestError(ErrorCode.UNKNOWN_SESSION, f"no session named {text!r}")
        raise RequestError(
            ErrorCode.UNKNOWN_SESSION,
            f"session {session.name} is not the one this client was streaming "
            "(it ended and the name was reused)",
        )

    def lookup(self, name: SessionName) -> Session | None:
        return self._sessions.get(name)

    def new_generation(self, container: str) -> list[Session]:
        """A new container takes the id ``container``: retire the old one's exited sessions.

        Runtimes only reuse an id once its container was deleted, so the exited
        sessions of that id (its init and its execs) belong to a container that
        is gone: they are forgotten, and their log files moved aside to
        ``STEM~1.log`` (replacing older ones), as kubelet keeps the previous
        instance's logs.  So ``ls`` never shows an old exec under a new
        container, and the two generations' logs stay apart.  Sessions of the id
        that still run or wait are left alone.

        Returns:
            The sessions retired.
        """
        retired = [s for s in self._of_id(container) if s.state is SessionState.EXITED]
        for session in retired:
            moved = None
            if session.log_file is not None and not session.log_file.lost:
                moved = session.log_file.move_aside()
            log.info(
                "session.replaced",
                session=str(session.name),
                why="its container id was reused by a new container",
                log_path=moved,
            )
            self._forget(session)
        return retired

    def listing(self, container: str | None = None) -> list[Session]:
        """Sessions sorted naturally by container (s2 before s10), the init session first."""
        if container is not None:
            try:
                check_part(container, "container id")
            except InvalidName as exc:
                raise RequestError(ErrorCode.INVALID_NAME, str(exc)) from None
        chosen = list(self._sessions.values()) if container is None else self._of_id(container)
        chosen.sort(key=lambda s: s.name.sort_key())
        return chosen

    # --- creation --------------------------------------------------------------------

    def _fds_scarce(self) -> bool:
        """Fewer than FD_HEADROOM fds left under the soft limit (counted only when near)."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # At most four fds per session and one per connection: far from the
        # limit there is nothing to count.
        worst = 4 * len(self._sessions) + self.config.limits.connections + 2 * FD_HEADROOM
        if worst < soft:
            return False
        return soft - fds_in_use() < FD_HEADROOM

    def _check_free(self, name: SessionName) -> None:
        existing = self._sessions.get(name)
        if existing is None:
            return
        if existing.state is SessionState.EXITED:
            raise RequestError(
                ErrorCode.NAME_IN_USE,
                f"session {name} has exited but is still kept; "
                f"remove it first with: consoled rm {name}",
            )
        raise RequestError(
            ErrorCode.NAME_IN_USE, f"session {name} already exists ({existing.state})"
        )

    def unnamed_name(self) -> SessionName:
        """A free ``unnamed-N``, for a master whose container cannot be told."""
        while True:
            name = SessionName(f"unnamed-{next(self._unnamed)}")
            if name not in self._sessions:
                return name

    def free_exec_name(self, container: str, base: str) -> SessionName:
        """The first free ``container/base-N``."""
        try:
            check_part(container, "container id")
        except InvalidName as exc:
            raise RequestError(ErrorCode.INVALID_NAME, str(exc)) from None
        stem = exec_base(base)
        for n in itertools.count(1):
            name = SessionName(container, f"{stem}-{n}")
            if name not in self._sessions:
                return name
        raise AssertionError("unreachable")  # pragma: no cover

    def _new_session(self, name: SessionName, serial: int | None = None) -> Session:
        if self.shutting_down:
            raise RequestError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down")
        self._check_free(name)
        limit = self.config.limits.sessions
        if len(self._sessions) >= limit:
            raise RequestError(
                ErrorCode.LIMIT_EXCEEDED,
                f"the daemon already holds {limit} sessions (--max-sessions); "
                "remove exited ones with consoled rm",
            )
        if serial is None:
            serial = next(self._serials)
        try:
            session = Session.new(
                serial,
                name,
                scrollback=self.config.scrollback,
                size_policy=self.config.size_policy,
            )
        except (OSError, RecordError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise RequestError(ErrorCode.INTERNAL, f"cannot create session {name}: {why}") from None
        if not session.record.durable:
            log.warning(
                "session.not_durable",
                session=str(name),
                why="no memfd could be created (out of fds?): this session's name and "
                "output will not survive a crash",
            )
        self._open_log(session)
        self._register(session)
        for fd_name, owner in session.fds():
            self.manager.store(fd_name, owner)
        return session

    def _open_log(self, session: Session) -> None:
        """Give ``session`` its log file; if that fails it is served without one."""
        if self.log_dir is None:
            return
        config = self.config
        # Created by its writer thread, as everything done to it: a disk that
        # stalls holds no request.  If it cannot be created, the session is
        # served without it (logfile.create_failed).
        file = LogFile.unopened(
            self.log_dir,
            session.name.file_stem,
            LogFormat(config.log_file_format),
            max_size=config.log_max_size,
            max_files=config.log_max_files,
            written_to=session.record.end,
        )
        session.give_log(self.log_writers, file, create=True)
        session.persist()

    def create_waiting(self, name: SessionName, *, ephemeral: bool = False) -> Session:
        """A new session waiting on its own console socket (``consoled socket``)."""
        if self._fds_scarce():
            raise RequestError(
                ErrorCode.LIMIT_EXCEEDED,
                "the daemon is close to its open-file limit; it keeps the last "
                f"{FD_HEADROOM} fds for the sessions it holds and its clients "
                "(raise its limit, or remove sessions)",
            )
        limit = self.config.limits.waiting
        # Counted only when it could be reached: a scan of every session on every
        # create_socket made taking in thousands of sessions quadratic.
        if len(self._sessions) >= limit and (
            sum(1 for s in self._sessions.values() if s.state is SessionState.WAITING) >= limit
        ):
            raise RequestError(
                ErrorCode.LIMIT_EXCEEDED,
                f"{limit} sessions are already waiting for their master (--max-waiting)",
            )
        if name.exec is None and name not in self._sessions:
            # A new container under this id (the old one's init session was
            # removed): its exited execs belong to the old one.
            self.new_generation(name.id)
        session = self._new_session(name)
        session.ephemeral = ephemeral
        path = self.config.intake_dir / f"{session.serial}.sock"
        try:
            session.intake = Listener.bind(path, f"s{session.serial}.sock", backlog=16)
        except OSError as exc:
            self._forget(session)
            raise RequestError(
                ErrorCode.INTERNAL,
                f"cannot create a console socket at {path}: {exc.strerror or exc}",
            ) from None
        if self.config.intake_timeout:
            session.intake_deadline = session.created + self.config.intake_timeout
        session.persist()
        self.manager.store(session.intake.name, session.intake)
        self._spawn(session)
        return session

    def adopt(
        self, name: SessionName, owner: OwnedFd, number: int, *, serial: int | None = None
    ) -> Session:
        """A new running session for a master that already arrived (well-known socket).

        Args:
            serial: the serial to use, for a master that came back from the fd
                store without a session record it could use: whatever else
                is stored under that serial's names is dropped first, and the
                master stays stored by its name.
        """
        with close_on_error(owner):
            if serial is not None:
                for kind in ("rec", "log", "sock", "pid"):
                    self.manager.unstore(f"s{serial}.{kind}")
            session = self._new_session(name, serial)
        self._arrived(session, owner, number)
        return session

    def restored(self, session: Session) -> None:
        """Take in a session rebuilt from a predecessor's or the fd store's fds."""
        self._register(session)
        self.reserve(session.serial)

    def reserve(self, serial: int) -> None:
        """New sessions get serials above ``serial``: a predecessor's session that
        could not be restored keeps its names in the fd store until they are
        forgotten, and a new session must not take them."""
        self._serials = itertools.count(max(serial + 1, next(self._serials)))

    def _of_id(self, container: str) -> list[Session]:
        """The sessions of container ``container`` (its init and its execs)."""
        return list(self._by_id.get(container, {}).values())

    def _add(self, session: Session) -> None:
        self._sessions[session.name] = session
        self._by_id.setdefault(session.name.id, {})[session.name] = session
        if session.state is SessionState.EXITED:
            self._kept_exited[session] = None

    def _remove(self, session: Session) -> None:
        name = session.name
        del self._sessions[name]
        members = self._by_id[name.id]
        del members[name]
        if not members:
            del self._by_id[name.id]
        self._kept_exited.pop(session, None)

    def _register(self, session: Session) -> None:
        self._add(session)
        session.terminal_state = self.config.terminal_state
        session.emulation = self.emulation
        session.render_budget = self.render_budget

        def replaced(name: str, owner: OwnedFd) -> None:
            self.manager.unstore(name)
            self.manager.store(name, owner)

        session.fd_replaced = replaced

    # --- endings -----------------------------------------------------------------------

    def _exited(self, session: Session) -> None:
        """A session ended: keep it (and its output) until rm or the retention limit."""
        if self._sessions.get(session.name) is not session:
            session.close()
            return
        if session.end_reason is EndReason.REMOVED:
            self._forget(session)
            return
        self.manager.unstore(f"s{session.serial}.pty")
        self.manager.unstore(f"s{session.serial}.log")
        kept = self._kept_exited
        kept[session] = None
        excess = len(kept) - self.config.max_exited
        if excess <= 0:
            return
        for oldest in sorted(kept, key=lambda s: s.exited_at or 0.0)[:excess]:
            log.info("session.expired", session=str(oldest.name))
            self._forget(oldest)

    def _forget(self, session: Session) -> None:
        self._leaderless.pop(session, None)
        if self._sessions.get(session.name) is session:
            self._remove(session)
        for suffix in ("rec", "pty", "sock", "log"):
            self.manager.unstore(f"s{session.serial}.{suffix}")
        session.close()

    # --- changes -------------------------------------------------------------------------

    async def remove(self, text: str, *, force: bool, keep_logs: bool = False) -> SessionState:
        """``rm``: forget a session, and delete its log files as ``docker rm`` does."""
        session = self.get(text)
        state = session.state
        if state is SessionState.RUNNING:
            if not force:
                raise RequestError(
                    ErrorCode.SESSION_RUNNING,
                    f"session {session.name} is running; `consoled rm --force {session.name}` "
                    "closes its terminal (the program on it gets a hangup)",
                )
            log.info("session.remove", session=str(session.name), forced=True)
        if state is not SessionState.EXITED:
            session.exit(EndReason.REMOVED)
        if session.log_file is not None and not keep_logs:
            session.log_file.remove_files()
        self._forget(session)
        await self.wait_files_moved([session])
        return state

    def delivered(self, session: Session) -> None:
        """Its exit status reached someone: an ephemeral session is done with."""
        if (
            session.ephemeral
            and session.state is SessionState.EXITED
            and self._sessions.get(session.name) is session
        ):
            log.info("session.removed", session=str(session.name), why="ephemeral, delivered")
            if session.log_file is not None:
                session.log_file.remove_files()
            self._forget(session)

    def rename(self, text: str, new_text: str) -> SessionName:
        """``rename``: a session, or a whole container with its execs.

        ``rename ID NEW`` moves every session of container ``ID`` (its init
        and its execs, log files and all) to container ``NEW``, which must
        have no session yet.  An exec is renamed only within its container
        (``ID/a`` to ``ID/b``); a lone session without execs may take any
        free name (``rename unnamed-3 web1/sh-1`` fixes a misnamed exec).

        Returns:
            The new name.
        """
        old = parse_name(text)
        new = parse_name(new_text, "new name")
        if old.exec is None:
            members = self._of_id(old.id)
            if not members:
                raise RequestError(ErrorCode.UNKNOWN_SESSION, f"no session named {text!r}")
            if new == old:
                return new
            if new.exec is not None:
                self._check_free(new)
            execs = [s for s in members if s.name.exec is not None]
            if new.exec is not None and execs:
                raise RequestError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"container {old.id} has exec sessions ({_names(execs)}): "
                    f"rename the container to a container id, not to {new}",
                )
            if new.exec is None and new.id != old.id:
                taken = self._of_id(new.id)
                if taken:
                    raise RequestError(
                        ErrorCode.NAME_IN_USE,
                        f"container {new.id} already has sessions ({_names(taken)}); "
                        "remove them first with consoled rm",
                    )
            moves = [
                (s, new if new.exec is not None else SessionName(new.id, s.name.exec))
                for s in members
            ]
        else:
            session = self.get(text)
            if new == old:
                return new
            if new.exec is None or new.id != old.id:
                raise RequestError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"session {old} is an exec of container {old.id}: it can only be renamed "
                    f"within its container, to {old.id}/NAME",
                )
            moves = [(session, new)]
        for _, name in moves:
            self._check_free(name)
        for session, name in moves:
            self._move(session, name)
        return new

    def _move(self, session: Session, new: SessionName) -> None:
        old = session.name
        self._remove(session)
        session.name = new
        self._add(session)
        if session.log_file is not None:
            session.log_file.rename(new.file_stem)
        session.persist()
        log.info("session.renamed", old=str(old), new=str(new))

    @contextlib.contextmanager
    def track_stream(self) -> Iterator[None]:
        """Count an attach or logs stream while it runs (shutdown waits for them)."""
        if self._streams == 0:
            self._streams_done = trio.Event()
        self._streams += 1
        try:
            yield
        finally:
            self._streams -= 1
            if self._streams == 0:
                self._streams_done.set()

    async def wait_streams_done(self) -> None:
        await self._streams_done.wait()

    def end_streams(self, reason: EndReason, message: str) -> None:
        """End every client's stream (shutdown, or a reexec: they resume)."""
        for session in self._sessions.values():
            session.hub.end_all(reason, message)

    def shutdown(self) -> None:
        """Tell every client the daemon is going; refuse new sessions."""
        self.shutting_down = True
        self.end_streams(EndReason.SHUTDOWN, "the consoled daemon is shutting down")

    def close(self, *, unlink: bool = True) -> None:
        """Close every session's fds (the daemon stops, or has handed them over).

        Args:
            unlink: remove console socket files too; False when a successor serves them.
        """
        for session in self._sessions.values():
            session.close(unlink=unlink)
        self._sessions.clear()
        self._by_id.clear()
        self._kept_exited.clear()
        # What was read is in the files before the daemon goes, unless a disk stalls.
        if not self.log_writers.close(LOG_CLOSE_TIMEOUT):
            log.warning("logfile.not_flushed", waited=LOG_CLOSE_TIMEOUT,
                        why="a log file's writer did not return (a stalled disk?)")  # fmt: skip

    async def wait_files_moved(self, sessions: Iterable[Session]) -> None:
        """Wait until the log files of ``sessions`` are renamed or removed as asked
        (a disk that stalls: at most :data:`.logwriter.STALL_TIMEOUT`).  A
        script may look at the directory once its command returns."""
        with trio.move_on_after(STALL_TIMEOUT):
            await self.wait_logs_written(sessions)

    async def wait_logs_written(self, sessions: Iterable[Session] | None = None) -> None:
        """Wait until the log files of ``sessions`` (all by default) have what was
        queued for them (a handover: no bound here)."""
        for session in list(self._sessions.values()) if sessions is None else sessions:
            if session.log_file is not None:
                await session.log_file.wait_idle()

    def logs_stuck(self) -> list[str]:
        """The paths of the log files whose writer is stuck, or stalled (see :mod:`.logwriter`)."""
        stuck = set(self.log_writers.stuck())
        return [
            s.log_file.path
            for s in self._sessions.values()
            if s.log_file is not None and (s.log_file in stuck or s.log_file.stalled)
        ]

    def logs_unwritten(self) -> list[str]:
        """The paths of the log files that do not have all that was queued for them yet."""
        return [
            s.log_file.path
            for s in self._sessions.values()
            if s.log_file is not None and not s.log_file.idle
        ]

    def screens_to_hand_over(self) -> dict[int, ScreenHandover]:
        """The running sessions' emulated screens, by serial, frozen for a successor.

        A screen whose output so far ends inside a sequence is left out: the
        successor rebuilds it from the ring, as it would without this.
        """
        screens: dict[int, ScreenHandover] = {}
        for session in self._sessions.values():
            screen = session.screen
            if screen is None or session.state is not SessionState.RUNNING:
                continue
            state = screen.handover(session.record)
            if state is not None:
                screens[session.serial] = state
        return screens

    def take_screens(self, screens: dict[int, ScreenHandover]) -> int:
        """A predecessor's screens for the sessions it handed over.

        Returns:
            How many were taken: not one whose session is unknown, ended, or
            of another size (a resize crossed the handover), or whose offset is
            past the output.
        """
        by_serial = {s.serial: s for s in self._sessions.values()}
        taken = 0
        for serial, state in screens.items():
            session = by_serial.get(serial)
            if session is None or session.state is not SessionState.RUNNING:
                continue
            size = (session.rows, session.cols) if session.rows and session.cols else DEFAULT_SIZE
            if (state.rows, state.cols) != size or not 0 <= state.fed <= session.record.end:
                continue
            session.screen = SessionScreen.taken_over(state, clock=trio.current_time)
            taken += 1
        return taken

    def fds(self) -> Iterator[tuple[str, OwnedFd | Listener]]:
        """Every fd the sessions hold, named, for a handover."""
        for session in self._sessions.values():
            yield from session.fds()
            if session.intake is not None:
                yield session.intake.name, session.intake
