"""The daemon's table of sessions: creation, lookup, rename, removal, retention.

One :class:`SessionTable` per daemon, created inside ``serve`` and handed the
nursery its sessions run in; there is no module-level state.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections import deque
from collections.abc import Iterator

import structlog
import trio

from ..names import InvalidName, SessionName, check_part
from ..protocol.errors import ErrorCode
from ..protocol.events import EndReason, SessionState
from .config import DaemonConfig
from .errors import RequestError
from .fdpass import FdHolder
from .intake import ConsoleSocket, IntakeGone
from .logfile import LogFile, LogFileError, LogFormat
from .session import Session

log = structlog.get_logger("consoled.registry")

#: Seconds ``rm --force`` waits for a session's task to let go of its master.
REMOVE_TIMEOUT = 5.0


def parse_name(text: str) -> SessionName:
    try:
        return SessionName.parse(text)
    except InvalidName as exc:
        raise RequestError(ErrorCode.INVALID_NAME, str(exc)) from None


def exec_base(command: str) -> str:
    """A valid exec-name stem from a command: its basename, cleaned up."""
    base = re.sub(r"[^A-Za-z0-9_.+-]", "_", os.path.basename(command))
    base = base.lstrip("_.+-")[:100]
    return base or "exec"


class SessionTable:
    """All sessions of one daemon.

    Args:
        config: the daemon's settings.
        nursery: where session tasks run.
        log_dir_fd: the open log directory, or None without log files.
    """

    def __init__(
        self, config: DaemonConfig, nursery: trio.Nursery, log_dir_fd: int | None = None
    ) -> None:
        self.config = config
        self._nursery = nursery
        self._log_dir_fd = log_dir_fd
        self._sessions: dict[SessionName, Session] = {}
        self._exited: deque[Session] = deque()
        self._socket_numbers = itertools.count(1)
        self.shutting_down = False
        self._streams = 0
        self._streams_done = trio.Event()
        self._streams_done.set()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    # --- lookup --------------------------------------------------------------

    def get(self, text: str) -> Session:
        name = parse_name(text)
        session = self._sessions.get(name)
        if session is None:
            raise RequestError(ErrorCode.UNKNOWN_SESSION, f"no session named {text!r}")
        return session

    def lookup(self, name: SessionName) -> Session | None:
        return self._sessions.get(name)

    def discard(self, session: Session) -> None:
        """Forget an exited session (its name is about to be reused)."""
        assert session.state is SessionState.EXITED
        self._forget(session)

    def listing(self, container: str | None = None) -> list[Session]:
        """Sessions sorted by container, the init session before its execs."""
        if container is not None:
            try:
                check_part(container, "container id")
            except InvalidName as exc:
                raise RequestError(ErrorCode.INVALID_NAME, str(exc)) from None
        chosen = [s for s in self._sessions.values() if container in (None, s.name.id)]
        chosen.sort(key=lambda s: (s.name.id, s.name.exec is not None, s.name.exec or ""))
        return chosen

    # --- creation ------------------------------------------------------------

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

    def _new_session(self, name: SessionName) -> Session:
        if self.shutting_down:
            raise RequestError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down")
        self._check_free(name)
        log_file = None
        if self._log_dir_fd is not None and self.config.log_dir is not None:
            try:
                log_file = LogFile(
                    self._log_dir_fd,
                    os.fspath(self.config.log_dir),
                    name.file_stem,
                    LogFormat(self.config.log_file_format),
                    self.config.log_max_size,
                )
            except (OSError, LogFileError) as exc:
                message = getattr(exc, "strerror", None) or str(exc)
                raise RequestError(
                    ErrorCode.INTERNAL, f"cannot create the log file for {name}: {message}"
                ) from None
        session = Session(
            name,
            scrollback=self.config.scrollback,
            size_policy=self.config.size_policy,
            log_file=log_file,
        )
        self._sessions[name] = session
        return session

    def create_waiting(self, name: SessionName) -> Session:
        """A new session waiting on its own console socket (``consoled socket``)."""
        session = self._new_session(name)
        path = self.config.intake_dir / f"{next(self._socket_numbers)}.sock"
        try:
            console = ConsoleSocket(path, self.config.intake_timeout)
        except OSError as exc:
            self._forget(session)
            raise RequestError(
                ErrorCode.INTERNAL, f"cannot create a console socket at {path}: {exc}"
            ) from None
        session.socket_path = os.fspath(path)
        self._nursery.start_soon(self._run, session, console, None)
        return session

    def adopt(self, name: SessionName, master: tuple[FdHolder, int]) -> Session:
        """A new running session for a master that already arrived (well-known socket)."""
        try:
            session = self._new_session(name)
        except BaseException:
            master[0].close()
            raise
        self._nursery.start_soon(self._run, session, None, master)
        return session

    async def _run(
        self,
        session: Session,
        console: ConsoleSocket | None,
        master: tuple[FdHolder, int] | None,
    ) -> None:
        async def intake(_: Session) -> tuple[FdHolder, int]:
            assert console is not None
            return await console.wait_master()

        structlog.contextvars.clear_contextvars()  # not the requesting client's
        with structlog.contextvars.bound_contextvars(session=str(session.name)):
            try:
                await session.run(intake if console is not None else None, master)
            except IntakeGone as exc:
                log.warning("intake.gave_up", reason=str(exc))
                self._forget(session)
                return
            except Exception as exc:
                # A bug or an unexpected errno in this session: it ends, the daemon goes on.
                log.error("session.failed", error=str(exc), exc_info=exc)
                if session.master is None:
                    self._forget(session)
                    return
            finally:
                if console is not None:
                    console.close()
            if session.end_reason is EndReason.REMOVED:
                self._forget(session)
            else:
                self._retire(session)

    def _retire(self, session: Session) -> None:
        if self._sessions.get(session.name) is not session:
            return
        self._exited.append(session)
        while len(self._exited) > self.config.max_exited:
            oldest = self._exited.popleft()
            log.info("session.expired", session=str(oldest.name))
            self._forget(oldest)

    def _forget(self, session: Session) -> None:
        if self._sessions.get(session.name) is session:
            del self._sessions[session.name]
        with contextlib.suppress(ValueError):
            self._exited.remove(session)

    # --- changes -------------------------------------------------------------

    async def remove(self, text: str, *, force: bool) -> SessionState:
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
            session.cancel(EndReason.REMOVED)
            with trio.move_on_after(REMOVE_TIMEOUT):
                await session.done.wait()
        self._forget(session)
        return state

    def rename(self, text: str, new_text: str) -> Session:
        session = self.get(text)
        new = parse_name(new_text)
        if new == session.name:
            return session
        self._check_free(new)
        old = session.name
        del self._sessions[old]
        session.name = new
        self._sessions[new] = session
        if session.log_file is not None:
            try:
                session.log_file.rename(new.file_stem)
            except OSError as exc:
                log.error("logfile.rename_failed", error=exc.strerror)
        log.info("session.renamed", old=str(old), new=str(new))
        return session

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

    def shutdown(self) -> None:
        """Tell every client the daemon is going and stop every session."""
        self.shutting_down = True
        for session in self._sessions.values():
            session.end_reason = EndReason.SHUTDOWN
            for sub in list(session.subscribers):
                sub.end(EndReason.SHUTDOWN, "the consoled daemon is shutting down")
