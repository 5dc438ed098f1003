"""``consoled serve``: the daemon's nursery tree, start-up, reexec and shutdown.

::

    serve
    ├── signal watcher, service-manager notifier (watchdog, status)
    └── work (one nursery per serving period)
        ├── control listener ── one task per client connection
        ├── well-known console socket listener
        └── sessions (one task each: intake or pump)

Every fd the daemon holds is owned by an object that outlives the work
nursery: the listeners, the lock, and the sessions in the
:class:`~.registry.SessionTable`.  So the work nursery can be cancelled and
opened again.  A reexec does exactly that: quiesce (stop accepting, let
intake and requests in flight finish, end client streams with
``restarting``), cancel the work, hand every fd to the successor; and if the
successor fails before it commits, serve again from the same objects as if
nothing had happened.

A signal (SIGTERM, SIGINT) starts shutdown: clients are told the daemon is
going and get ``shutdown_grace`` seconds to receive it, then everything is
cancelled and closed.  Closing a master hangs up its container's terminal
unless the service manager's fd store still holds it (see
docs/operations.md).  SIGHUP is ignored: a closed terminal or a log rotation
must not stop the consoles of every container.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import os
import re
import resource
import signal
import time
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog
import trio

from .. import __version__
from ..io.fds import OwnedFd
from ..io.listener import Gate, Listener, Origin
from ..io.manager import FdSource, ServiceManager, take_listen_fds
from ..io.relay import AVAILABLE as relay_built
from ..io.relay import NativeRelay
from ..protocol import ErrorCode
from ..protocol import events as ev
from ..protocol.codec import INPUT_PREFIX, OUTPUT_PREFIX
from .channel import Channel
from .config import LOCK_FILE, DaemonConfig
from .control import ControlServer
from .handover import HandoverError, HandoverLink, Predecessor, successor_argv, write_screens
from .inventory import Inventory, restore
from .logfile import LogDir, LogFileError
from .registry import SessionTable
from .screenstate import ScreenHandover
from .session import Session
from .statedir import StartupError, acquire_lock, check_paths, prepare_dir, write_pid
from .wellknown import WellKnownSocket

log = structlog.get_logger("consoled.daemon")

#: Seconds a quiescing daemon lets intake, requests and streams in flight finish.
QUIESCE_TIMEOUT: Final = 1.0
#: Signals whose default action would end the daemon, and every console with
#: it, and that reach daemons by habit: a closed terminal or a logrotate
#: postrotate (SIGHUP), "reopen your logs" or "dump your state" (SIGUSR1,
#: SIGUSR2).  Logged and ignored: only SIGTERM and SIGINT stop consoled.
IGNORED_SIGNALS: Final = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
#: Seconds between looks at whether the listening sockets' files are still there.
SOCKET_CHECK_INTERVAL: Final = 2.0
#: Seconds between STATUS= updates to the service manager.
STATUS_INTERVAL: Final = 5.0
#: Bytes of answers to terminal queries, for all sessions together, that a
#: reexec hands over (they go in one message of at most 256 KiB).
HANDED_ANSWERS: Final = 64 * 1024
#: Bytes of input that clients cut off by a reexec did not get to the terminal,
#: for all sessions together, that it hands over (see Session.hand_on_input).
HANDED_INPUT: Final = 128 * 1024
#: The names this daemon stores fds under (a socket unit's are its own).
STORED_NAME: Final = re.compile(r"s\d+\.[a-z]+|listen\.[a-z]+")


def _by_serial(room: int, held: Iterable[tuple[Session, bytes]]) -> dict[str, bytes]:
    """What sessions hold, by serial, for the handover state: as many as fit ``room``."""
    out = {}
    for session, data in held:
        if data and len(data) <= room:
            out[str(session.serial)] = data
            room -= len(data)
    return out


def _bytes_by_serial(given: object) -> Iterator[tuple[str, bytes]]:
    """What :func:`_by_serial` made, read back from a predecessor (checked)."""
    if isinstance(given, dict):
        for serial, data in given.items():
            if isinstance(serial, str) and isinstance(data, bytes):
                yield serial, data


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a burst of allocations that
    ends by itself: adopting 1,000 sessions ran it about 50 times, a sixth
    of the 110 ms a reexec's successor spent adopting them, while every
    attached client waited.  It runs again at its next threshold after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _stuck_logs(paths: list[str]) -> str:
    """Why a reexec is refused: a log file's writer is stuck (the successor
    would write the file while it does)."""
    more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
    return f"log file {paths[0]}{more} is not being written (a stalled disk?); try again once it is"


def raise_nofile_limit() -> int:
    """Raise the open-file soft limit to the hard limit: we hold fds per session."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Command(enum.Enum):
    STOP = "stop"
    REEXEC = "reexec"


@dataclass(slots=True)
class Request:
    command: Command
    channel: Channel | None = None  # a reexec's requester


class Daemon:
    """One daemon: what it holds, and how it serves, hands over and stops.

    Args:
        config: the settings.
        env: the environment (the service manager's variables are taken from it).
    """

    def __init__(self, config: DaemonConfig, env: MutableMapping[str, str]) -> None:
        self.config = config
        self.env = env
        self.manager = ServiceManager(env, fd_store=config.fd_store)
        self.gate = Gate()
        self.started = time.time()
        self.lock: OwnedFd | None = None
        self.log_dir: LogDir | None = None
        self.listeners: dict[str, Listener] = {}
        self.table: SessionTable | None = None
        self.handed_over = False
        #: The socket files are ours to remove (a successor owns them only after the commit).
        self.owns_paths = False
        self._send, self._receive = trio.open_memory_channel[Request](8)
        self._busy = False  # a reexec or shutdown is under way
        #: The screens frozen for the successor of a reexec under way (by serial).
        self._screens: dict[int, ScreenHandover] = {}
        #: The native relay's thread (see consoled.io.relay), unless the
        #: sessions are relayed in Python.
        self.relay: NativeRelay | None = None
        if config.native_relay and relay_built:
            self.relay = NativeRelay(OUTPUT_PREFIX, INPUT_PREFIX)

    # --- holding -----------------------------------------------------------------

    def close(self) -> None:
        """Close everything; socket files are removed unless a successor serves them."""
        unlink = self.owns_paths and not self.handed_over
        if self.table is not None:
            self.table.close(unlink=unlink)  # the masters' sources first
        if self.relay is not None:
            self.relay.close()
        for listener in self.listeners.values():
            listener.close(unlink=unlink)
        if self.log_dir is not None:
            self.log_dir.close()
        if self.lock is not None:
            self.lock.close()
        self.manager.close()

    def fds(self) -> list[tuple[str, int]]:
        """Every fd to hand to a successor, named."""
        assert self.lock is not None
        named: list[tuple[str, int]] = [("lock", self.lock.fd), ("stderr", 2)]
        named.extend((name, source.fileno()) for name, source in self.fd_sources())
        return named

    def fd_sources(self) -> list[tuple[str, FdSource]]:
        """The listeners' and sessions' fds, by the names they are handed over
        and stored under (a socket unit's listeners by their role)."""
        assert self.table is not None
        named: list[tuple[str, FdSource]] = []
        for role, listener in self.listeners.items():
            if listener.origin is Origin.MANAGER:
                named.append((role, listener))
            else:
                named.append((f"listen.{role}", listener))
        named.extend(self.table.fds())
        return named

    # --- start-up ----------------------------------------------------------------

    def _open_log_dir(self) -> None:
        if self.config.log_dir is not None:
            try:
                self.log_dir = LogDir.open(self.config.log_dir)
            except LogFileError as exc:
                raise StartupError(str(exc)) from None

    def _restore(self, named: list[tuple[str, OwnedFd]], *, handed_over: bool) -> Inventory:
        assert self.table is not None
        with _collector_paused():
            inventory = restore(named, self.table, self.log_dir, handed_over=handed_over)
        taken = {session.serial for session in self.table}
        for orphan in inventory.orphans:
            # Under its own serial if it is free: the fd store holds the master
            # by that name already (it keeps one entry per open file).
            serial = None if orphan.serial in taken else orphan.serial
            if serial is None:
                # Its name is a restored session's: stored under a new one, the
                # master would be taken for the same entry and kept by the old
                # name, which is forgotten below.  Drop the old name first.
                self.manager.unstore(f"s{orphan.serial}.pty")
            taken.add(orphan.serial)
            session = self.table.adopt(
                self.table.unnamed_name(), orphan.owner, orphan.number, serial=serial
            )
            log.warning(
                "inventory.unnamed",
                session=str(session.name),
                why="a master came back without a readable session record",
            )
        inventory.orphans.clear()
        return inventory

    def _forget_stale(self, received: set[str]) -> None:
        """Have the fd store drop what it holds that we did not take back by its name.

        A master whose record could not be read comes back as ``unnamed-N``,
        stored under its new session's names; a session removed just before a
        crash comes back to be let go.  Left in the store under their old
        names, their masters would stay open for ever: those terminals could
        never hang up, not even by ``rm --force``.
        """
        if not self.manager.fd_store:
            return
        kept = {name for name, _ in self.fd_sources()}
        stale = sorted(n for n in received - kept if STORED_NAME.fullmatch(n))
        for name in stale:
            self.manager.unstore(name)
        if stale:
            log.info("fd_store.forgotten", names=stale[:20], count=len(stale))

    @property
    def _shared(self) -> bool:
        """A group may use the daemon: it must reach the control socket."""
        return self.config.group is not None or self.config.watch_group is not None

    @property
    def _state_dir_mode(self) -> int:
        return 0o711 if self._shared else 0o700

    def _wanted_listeners(self) -> dict[str, tuple[Path, int, int]]:
        """Each listening socket's path, backlog and mode, by role."""
        config = self.config
        return {
            "control": (config.control_socket, 128, 0o666 if self._shared else 0o600),
            "console": (config.console_socket, 512, 0o600),
        }

    def _take_listeners(self, inventory: Inventory) -> None:
        self.listeners.update(inventory.listeners)
        inventory.listeners.clear()
        for role, (path, backlog, mode) in self._wanted_listeners().items():
            if role in self.listeners:
                continue
            try:
                self.listeners[role] = Listener.bind(
                    path, f"listen.{role}", backlog=backlog, mode=mode
                )
            except OSError as exc:
                raise StartupError(f"cannot listen on {path}: {exc.strerror}") from None
            if self.manager.fd_store:
                self.manager.store(f"listen.{role}", self.listeners[role])

    async def _watch_socket_files(self) -> None:
        """Make the state directory again and bind a listening socket again if
        its file was removed (``rm -rf /run/consoled`` by mistake, a cleaner):
        else no client, no runtime and no ``reexec`` could reach the daemon,
        and it holds every console."""
        told: set[str] = set()
        while True:
            await trio.sleep(SOCKET_CHECK_INTERVAL)
            if self.owns_paths and not self._state_dir_again(told):
                continue
            for role, (path, backlog, mode) in self._wanted_listeners().items():
                listener = self.listeners.get(role)
                if listener is None or listener.closed or not listener.gone():
                    told.discard(role)
                    continue
                if listener.origin is Origin.MANAGER:
                    if role not in told:  # the socket unit's file: not ours to make
                        log.error(
                            "listener.removed",
                            listener=role,
                            path=str(path),
                            why="its socket unit made it; restart consoled.socket",
                        )
                        told.add(role)
                    continue
                try:
                    fresh = Listener.bind(path, f"listen.{role}", backlog=backlog, mode=mode)
                except OSError as exc:
                    if role not in told:
                        log.error("listener.rebind_failed", listener=role, error=exc.strerror)
                        told.add(role)
                    continue
                listener.take_over(fresh)
                told.discard(role)
                log.warning("listener.rebound", listener=role, path=str(path))
                if self.manager.fd_store:
                    self.manager.unstore(f"listen.{role}")
                    self.manager.store(f"listen.{role}", listener)

    def _state_dir_again(self, told: set[str]) -> bool:
        """Make the state directory, its intake directory and its lock again if
        they were removed; False if that cannot be done (said once)."""
        config = self.config
        lock = config.state_dir / LOCK_FILE
        if os.path.lexists(lock) and config.intake_dir.is_dir():
            told.discard("state")
            return True
        try:
            prepare_dir(config.state_dir, self._state_dir_mode)
            prepare_dir(config.intake_dir)
            if not os.path.lexists(lock):
                fresh = acquire_lock(config.state_dir)  # another daemon's by now: refused
                write_pid(fresh)
                old, self.lock = self.lock, fresh
                if old is not None:
                    old.close()
        except (StartupError, OSError) as exc:
            if "state" not in told:
                log.error("statedir.remake_failed", path=str(config.state_dir), error=str(exc))
                told.add("state")
            return False
        log.warning("statedir.remade", path=str(config.state_dir))
        told.discard("state")
        return True

    def _clean_intake_dir(self) -> None:
        """Remove console sockets no session of ours serves (left by a daemon that died)."""
        assert self.table is not None
        ours = {s.socket_path for s in self.table}
        for entry in self.config.intake_dir.iterdir():
            if entry.name.endswith(".sock") and str(entry) not in ours:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()

    def start_fresh(self) -> int:
        """Take the state directory and whatever the service manager handed back."""
        config = self.config
        check_paths(config)
        prepare_dir(config.state_dir, self._state_dir_mode)
        self.lock = acquire_lock(config.state_dir)
        self.owns_paths = True
        write_pid(self.lock)
        prepare_dir(config.intake_dir)
        self._open_log_dir()
        self.table = SessionTable(config, self.log_dir, self.manager, self.gate)
        named = take_listen_fds(self.env)
        received = {name for name, _ in named}
        inventory = self._restore(named, handed_over=False)
        self._take_listeners(inventory)
        inventory.close()  # what is left: a lock or stderr, not used on a fresh start
        self._forget_stale(received)
        self._clean_intake_dir()
        return len(self.table)

    async def start_successor(self, link: HandoverLink) -> int:
        """Take everything over from a predecessor (see :mod:`.handover`).

        Returns:
            The number of sessions taken over.
        """
        await link.ready(__version__)
        state, named = await link.receive_state()
        received = {name for name, _ in named}
        log.debug("reexec.received", fds=len(named))
        try:
            self._open_log_dir()
            self.table = SessionTable(self.config, self.log_dir, self.manager, self.gate)
            inventory = self._restore(named, handed_over=True)
            screens = self.table.take_screens(inventory.screens)
        except BaseException as exc:
            await link.failed(f"{type(exc).__name__}: {exc}")
            raise
        self.lock, inventory.lock = inventory.lock, None
        stderr, inventory.stderr = inventory.stderr, None
        self._take_listeners(inventory)
        log.debug("reexec.adopted", sessions=len(self.table), screens=screens)
        await link.adopted(len(self.table))
        outcome = await link.wait_commit()
        if outcome == "abort":
            # The predecessor serves on: let go of our copies, touch nothing else.
            self.handed_over = True
            if stderr is not None:
                stderr.close()
            raise HandoverError("the old daemon aborted the handover")
        if stderr is not None:
            os.dup2(stderr.fd, 2)
            stderr.close()
        self.owns_paths = True
        if outcome == "gone":
            log.warning("reexec.predecessor_gone", why="it left before it committed; taking over")
        made, skipped = self.manager.replay_fd_store(state.get("fd_store"), dict(self.fd_sources()))
        if made or skipped:
            log.info("reexec.fd_store_caught_up", changes=made, skipped=skipped[:10])
        self._forget_stale(received)
        self._take_held(state.get("answers"), state.get("input"))
        if self.lock is None:
            self.lock = acquire_lock(self.config.state_dir)
        write_pid(self.lock)
        return len(self.table)

    def _take_held(self, answers: object, handed: object) -> None:
        """Take the answers and input the predecessor still held for terminals
        (only once it has committed: until then it may serve on, and write
        them itself).  The answers are written now if the terminal takes them,
        the input once serving starts, before any new input."""
        assert self.table is not None
        sessions = {str(session.serial): session for session in self.table}
        for serial, data in _bytes_by_serial(answers):
            if serial in sessions:
                sessions[serial].take_answers(data)
        for serial, data in _bytes_by_serial(handed):
            if serial in sessions:
                sessions[serial].hand_on_input(data)

    # --- serving -----------------------------------------------------------------

    def request_reexec(self, channel: Channel) -> bool:
        """Queue a reexec for ``channel``'s requester; False if one is already under way."""
        if self._busy:
            return False
        try:
            self._send.send_nowait(Request(Command.REEXEC, channel))
        except trio.WouldBlock:
            return False
        self._busy = True
        return True

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, *IGNORED_SIGNALS) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    log.info("daemon.sighup_ignored", why="SIGHUP does not stop consoled")
                    continue
                if signum in IGNORED_SIGNALS:
                    log.warning(
                        "daemon.signal_ignored",
                        signal=name,
                        why="only SIGTERM and SIGINT stop consoled",
                    )
                    continue
                log.info("daemon.stopping", signal=name)
                self._busy = True
                await self._send.send(Request(Command.STOP))

    async def _report_status(self) -> None:
        assert self.table is not None
        last = ""
        while True:
            sessions = list(self.table)
            running = sum(1 for s in sessions if s.state is ev.SessionState.RUNNING)
            clients = sum(s.hub.attached for s in sessions)
            status = f"{running} running of {len(sessions)} sessions, {clients} clients attached"
            if status != last:
                self.manager.notify(f"STATUS={status}")
                last = status
            await trio.sleep(STATUS_INTERVAL)

    async def run(
        self, task_status: trio.TaskStatus[SessionTable] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until stopped, or until a successor has taken over."""
        assert self.table is not None
        table = self.table
        control = ControlServer(
            self.config, table, self.listeners["control"], self.request_reexec, self.started
        )
        wellknown = WellKnownSocket(self.listeners["console"], table)
        table.relay = self.relay
        async with trio.open_nursery() as root:
            if self.relay is not None:
                root.start_soon(self.relay.run)
            root.start_soon(self._watch_signals)
            root.start_soon(self.manager.run)
            root.start_soon(self._report_status)
            root.start_soon(self._watch_socket_files)
            first = True
            while True:
                request, predecessor = await self._serve_once(
                    root, control, wellknown, task_status if first else None
                )
                first = False
                if request.command is Command.STOP:
                    break
                assert predecessor is not None
                assert request.channel is not None
                if await self._hand_over(predecessor, request.channel):
                    break
                table.log_writers.hurry_all(eager=False)
                table.thaw()
                self._busy = False
            root.cancel_scope.cancel()

    async def _serve_once(
        self,
        root: trio.Nursery,
        control: ControlServer,
        wellknown: WellKnownSocket,
        task_status: trio.TaskStatus[SessionTable] | None,
    ) -> tuple[Request, Predecessor | None]:
        """One serving period: serve until a stop, or a reexec that is ready to hand over."""
        assert self.table is not None
        table = self.table
        async with trio.open_nursery() as work:
            self.gate.open()
            control.undrain()
            # Listening first: a client that waited through a restart is answered
            # while the pumps start.
            await work.start(control.serve)
            await work.start(wellknown.serve)
            await table.serve(work, root)
            self._ready(table)
            if task_status is not None:
                task_status.started(table)
            while True:
                request = await self._receive.receive()
                if request.command is Command.STOP:
                    self.manager.notify("STOPPING=1")
                    table.shutdown()
                    with trio.move_on_after(self.config.shutdown_grace):
                        await control.stop()
                        await table.wait_streams_done()
                    work.cancel_scope.cancel()
                    return request, None
                assert request.channel is not None
                stuck = table.logs_stuck()
                if stuck:  # refused before anything stops: no client is cut off
                    await self._reexec_failed(request.channel, _stuck_logs(stuck))
                    self._busy = False
                    continue
                # The files are written as output comes until the pause, which
                # then waits for no output that lingered (see logpool).
                table.log_writers.hurry_all()
                self.manager.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
                log.info("reexec.starting", argv=successor_argv())
                predecessor = Predecessor(successor_argv(), root)
                try:
                    await predecessor.start()
                except HandoverError as exc:
                    table.log_writers.hurry_all(eager=False)
                    await self._reexec_failed(request.channel, str(exc))
                    self._busy = False
                    continue
                # Rendered before the pause begins (a screen is caught up only
                # on demand: the successor goes on from each one's offset).
                self._screens = table.screens_to_hand_over()
                await self._quiesce(control, table)
                # The readers stop where they are (cancelling a thousand of them
                # took 27 ms of every attached client's pause); the rest of this
                # serving period's tasks are cancelled.
                table.freeze()
                table.stop_serving()
                work.cancel_scope.cancel()
                log.debug("reexec.quiesced")
                return request, predecessor
        raise AssertionError("unreachable")  # pragma: no cover

    def _ready(self, table: SessionTable) -> None:
        log.info(
            "daemon.ready",
            version=__version__,
            pid=os.getpid(),
            state_dir=os.fspath(self.config.state_dir),
            control_socket=os.fspath(self.config.control_socket),
            console_socket=os.fspath(self.config.console_socket),
            sessions=len(table),
            nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        self.manager.notify(f"READY=1\nSTATUS=serving {len(table)} sessions\nMAINPID={os.getpid()}")

    async def _quiesce(self, control: ControlServer, table: SessionTable) -> None:
        """Stop taking anything new and let what is in flight finish (bounded)."""
        self.gate.close()
        with trio.move_on_after(QUIESCE_TIMEOUT):
            await table.in_flight.wait_idle()
        control.drain()
        table.end_streams(ev.EndReason.RESTARTING, "the daemon is restarting; resume")
        with trio.move_on_after(QUIESCE_TIMEOUT):
            await control.wait_drained()
            await table.wait_streams_done()

    async def _hand_over(self, predecessor: Predecessor, requester: Channel) -> bool:
        """Send everything; commit if the successor adopted it, else take it all back."""
        assert self.table is not None
        try:
            # The files have what the readers read before they stopped: a stuck
            # writer would write it after the successor (or not at all).
            with trio.move_on_after(QUIESCE_TIMEOUT):
                await self.table.wait_logs_written()
            late = self.table.logs_unwritten()
            if late:
                raise HandoverError(_stuck_logs(late))
            # The records are up to date (every change is written as it happens;
            # the window size is read back from the terminal), but for a CRI log
            # file's position: only those, and a record kept in memory (it
            # needs a memfd now), are written here.
            for session in self.table:
                if not session.record.durable:
                    session.record.make_durable(f"s{session.serial}")
                    session.persist()
                elif session.log_unrecorded:
                    session.persist()
            named = self.fds()
            screens = self._screens_fd()
            if screens is not None:
                named.append(("screens", screens.fd))
            # What the fd store has not been told yet, the successor tells it;
            # answers to queries that wait for a terminal to read, it writes.
            table = list(self.table)
            state = {
                "version": __version__,
                "fd_store": self.manager.pending_fd_store(),
                "answers": _by_serial(HANDED_ANSWERS, ((s, s.pending_answers) for s in table)),
                "input": _by_serial(HANDED_INPUT, ((s, s.handed_input) for s in table)),
            }
            try:
                sessions = await predecessor.send(named, state)
            finally:
                if screens is not None:
                    screens.close()  # the successor has its own copy
        except (HandoverError, OSError) as exc:
            await predecessor.abort()
            # READY=1 comes once serving resumes (see _serve_once).
            await self._reexec_failed(requester, str(exc), ready=False)
            return False
        successor = predecessor.successor
        assert successor is not None
        self.manager.notify(f"MAINPID={successor.pid}")
        await predecessor.commit()
        self.handed_over = True
        log.info("reexec.done", pid=successor.pid, version=successor.version, sessions=sessions)
        with trio.move_on_after(2):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await requester.send(ev.Reexeced(successor.pid, successor.version, sessions))
        await trio.aclose_forcefully(requester.stream)
        await predecessor.wait_stderr_closed()
        return True

    def _screens_fd(self) -> OwnedFd | None:
        """The screens frozen for the successor, in a memfd; None if there are none.

        Without a memfd (out of memory or fds) the successor rebuilds them from
        the rings: the handover goes on.
        """
        screens, self._screens = self._screens, {}
        if not screens:
            return None
        try:
            return write_screens(screens)
        except OSError as exc:
            log.warning("reexec.screens_not_sent", error=exc.strerror or str(exc))
            return None

    async def _reexec_failed(self, requester: Channel, why: str, *, ready: bool = True) -> None:
        log.error("reexec.failed", error=why)
        if ready:
            self.manager.notify("READY=1")
        with trio.move_on_after(2):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await requester.send(ev.Error(ErrorCode.REEXEC_FAILED, f"reexec failed: {why}"))
        await trio.aclose_forcefully(requester.stream)


async def serve(
    config: DaemonConfig,
    *,
    env: MutableMapping[str, str] | None = None,
    task_status: trio.TaskStatus[SessionTable] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGTERM or SIGINT, or until a successor takes over.

    A successor (``$CONSOLED_HANDOVER_FD`` set by its predecessor) first
    takes everything over, then serves.

    Raises:
        StartupError: the state directory or log directory cannot be used.
    """
    env = os.environ if env is None else env
    daemon = Daemon(config, env)
    link = HandoverLink.from_env(env)
    try:
        nofile = raise_nofile_limit()
        if link is not None:
            try:
                sessions = await daemon.start_successor(link)
            finally:
                link.close()
        else:
            sessions = daemon.start_fresh()
        log.info(
            "daemon.starting",
            sessions=sessions,
            nofile=nofile,
            successor=link is not None,
            listeners={role: str(lst.origin.value) for role, lst in daemon.listeners.items()},
            fd_store=daemon.manager.fd_store,
            relay="python" if daemon.relay is None else "native",
        )
        if config.native_relay and daemon.relay is None:
            log.warning(
                "daemon.relay_in_python",
                why="consoled was installed without its native relay (no C compiler then)",
            )
        await daemon.run(task_status=task_status)
    finally:
        daemon.close()
    log.info("daemon.stopped" if not daemon.handed_over else "daemon.handed_over")
