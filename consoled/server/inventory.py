"""Rebuilding the daemon from named fds: a predecessor's, or the fd store's after a crash.

Both ways in give the same thing, a list of ``(name, fd)``, and this module
turns it back into listeners and sessions, whichever way it came:

============================  =================================================
``control``, ``console``      sockets of a ``.socket`` unit (the manager's file)
any other name                a ``.socket`` unit's socket, known by its path
``listen.control``, ...       the daemon's own listening sockets
``lock``, ``stderr``          the state directory's lock, the log's destination
``screens``                   the emulated screens (a predecessor's only)
``s<N>.rec``                  session N's record: name, state, ring
``s<N>.pty``                  its master, while it runs
``s<N>.sock``                 its console socket, while it waits
``s<N>.log``                  its log file, while it runs
``s<N>.pid``                  a pidfd on its terminal's leader (a predecessor's only)
============================  =================================================

Nothing a successor or the fd store hands back is trusted blindly: a master
is checked with ``TIOCGPTN``, a record's header and metadata are validated,
and anything unknown or broken is closed and logged, never fatal.  A master
without a readable record is still held, as ``unnamed-N``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import structlog

from ..io.fdpass import IntakeError, check_master
from ..io.fds import OwnedFd
from ..io.listener import Listener, Origin
from ..io.process import Leader
from ..io.record import Record, RecordError
from ..protocol.events import EndReason, SessionState
from .handover import read_screens
from .logfile import LogDir, LogFile, LogFileError
from .registry import SessionTable
from .screenstate import ScreenHandover
from .session import Session

log = structlog.get_logger("consoled.inventory")

_SESSION_FD: Final = re.compile(r"s([0-9]{1,18})\.(rec|pty|sock|log|pid)")
#: Names of the daemon's own listening sockets, and of a socket unit's.
LISTENERS: Final = {
    "listen.control": ("control", Origin.BOUND),
    "listen.console": ("console", Origin.BOUND),
    "control": ("control", Origin.MANAGER),
    "console": ("console", Origin.MANAGER),
}


class Orphan(NamedTuple):
    """A master that came back without a session that can take it."""

    owner: OwnedFd
    #: The pty's number.
    number: int
    #: The serial it was stored under: a session made for it keeps the names
    #: (see :meth:`.SessionTable.adopt`), unless a restored session has them.
    serial: int


@dataclass(slots=True)
class Inventory:
    """What a set of named fds turned out to hold."""

    listeners: dict[str, Listener] = field(default_factory=dict)
    lock: OwnedFd | None = None
    stderr: OwnedFd | None = None
    sessions: int = 0
    orphans: list[Orphan] = field(default_factory=list)
    #: A predecessor's emulated screens, by session serial (a handover only).
    screens: dict[int, ScreenHandover] = field(default_factory=dict)

    def close(self) -> None:
        for listener in self.listeners.values():
            listener.close(unlink=False)
        for owner in (self.lock, self.stderr):
            if owner is not None:
                owner.close()
        for orphan in self.orphans:
            orphan.owner.close()


def _take_listener(inventory: Inventory, name: str, owner: OwnedFd) -> None:
    role, origin = LISTENERS[name]
    fd = owner.release()
    try:
        listener = Listener.adopt(fd, f"listen.{role}", origin)
    except ValueError as exc:
        log.warning("inventory.rejected", fd=name, error=str(exc))
        return
    previous = inventory.listeners.get(role)
    if previous is not None:
        # The same socket twice (a socket unit's, also in the fd store): keep one.
        if previous.origin is Origin.MANAGER:
            listener.close(unlink=False)
            return
        previous.close(unlink=False)
    inventory.listeners[role] = listener


def _by_path(inventory: Inventory, name: str, owner: OwnedFd, table: SessionTable) -> bool:
    """Take a socket unit's listening socket whose name says nothing, by its path."""
    config = table.config
    roles = {str(config.control_socket): "control", str(config.console_socket): "console"}
    try:
        listener = Listener.adopt(owner.dup().release(), name, Origin.MANAGER)
    except (ValueError, OSError):
        return False
    role = roles.get(str(listener.path))
    listener.close(unlink=False)
    if role is None:
        return False
    _take_listener(inventory, role, owner)
    return True


def restore(
    named: list[tuple[str, OwnedFd]],
    table: SessionTable,
    log_dir: LogDir | None,
    *,
    handed_over: bool = False,
) -> Inventory:
    """Rebuild listeners and sessions from ``named`` (all of which this takes over).

    Sessions go into ``table``; the rest is returned.

    Args:
        handed_over: a predecessor that quiesced sent them (a reexec): each
            log fd is the file being written, as the records say.  Else (the
            fd store, after a crash) they may be from just before a change.
    """
    inventory = Inventory()
    parts: dict[int, dict[str, OwnedFd]] = defaultdict(dict)
    for name, owner in named:
        match = _SESSION_FD.fullmatch(name)
        if match:
            serial, kind = int(match.group(1)), match.group(2)
            if kind in parts[serial]:
                parts[serial][kind].close()  # the same fd stored twice
            parts[serial][kind] = owner
        elif name in LISTENERS:
            _take_listener(inventory, name, owner)
        elif name == "screens":
            try:
                inventory.screens = read_screens(owner)
            except ValueError as exc:
                log.warning("inventory.rejected", fd=name, error=str(exc))
        elif name in ("lock", "stderr") and getattr(inventory, name) is None:
            owner.kind = name
            setattr(inventory, name, owner)
        elif not _by_path(inventory, name, owner, table):
            log.warning("inventory.rejected", fd=name, error="unknown fd name")
            owner.close()
    for serial in sorted(parts):
        table.reserve(serial)
        try:
            _restore_session(
                serial, parts[serial], table, log_dir, inventory, handed_over=handed_over
            )
        except Exception as exc:
            # A bug, or a record no daemon of ours wrote: it costs this session,
            # never the daemon.  Raised here, it would fail every restart the
            # same way, for ever, with every terminal held and none drained.
            log.error("inventory.session_failed", serial=serial, error=repr(exc), exc_info=exc)
            _salvage(serial, parts[serial], table, inventory)
    return inventory


def _salvage(
    serial: int, fds: dict[str, OwnedFd], table: SessionTable, inventory: Inventory
) -> None:
    """After a session failed to restore: keep its terminal (as ``unnamed-N``),
    close its other fds, and leave alone whatever a session already took."""
    taken = {id(owner) for session in table for _, owner in session.fds()}
    taken.update(id(orphan.owner) for orphan in inventory.orphans)
    for kind, owner in fds.items():
        if owner.closed or id(owner) in taken:
            continue
        number = _master_number(owner, "salvaged") if kind == "pty" else None
        if number is not None:
            inventory.orphans.append(Orphan(owner, number, serial))
        elif not owner.closed:
            owner.close()


def _master_number(owner: OwnedFd, what: str) -> int | None:
    try:
        return check_master(owner.fd)
    except IntakeError as exc:
        log.warning("inventory.rejected", fd=what, error=str(exc))
        owner.close()
        return None


def _restore_session(
    serial: int,
    fds: dict[str, OwnedFd],
    table: SessionTable,
    log_dir: LogDir | None,
    inventory: Inventory,
    *,
    handed_over: bool,
) -> None:
    rec, pty, sock, log_fd = (fds.get(k) for k in ("rec", "pty", "sock", "log"))
    # The leader's pidfd: the only way to its exit status once it is gone (a
    # terminal whose leader exited during the handover names nobody).
    pid_fd = fds.get("pid")
    leader = None if pid_fd is None else Leader.adopt(pid_fd)
    number = None if pty is None else _master_number(pty, f"s{serial}.pty")
    if number is None:
        pty = None
    session = None
    if rec is not None:
        rec.kind = "record"
        try:
            session = Session.restore(
                serial, Record.load(rec), size_policy=table.config.size_policy
            )
        except RecordError as exc:
            log.warning("inventory.rejected", fd=f"s{serial}.rec", error=str(exc))
            rec.close()
    if session is None or table.lookup(session.name) is not None:
        if session is not None:
            log.warning("inventory.rejected", fd=f"s{serial}.rec", error="duplicate session name")
            session.record.close()
        if leader is not None:
            leader.close()
        for owner in (sock, log_fd):
            if owner is not None:
                owner.close()
        if pty is not None and number is not None:
            inventory.orphans.append(Orphan(pty, number, serial))  # kept, as unnamed-N
        return
    if session.end_reason is EndReason.REMOVED:
        # Removed (`rm`), and the daemon died before the service manager let
        # go of its fds: finish it.  Its terminal hangs up, as `rm --force` said.
        log.info("inventory.removed_again", session=str(session.name))
        for owner in (pty, sock, log_fd):
            if owner is not None:
                owner.close()
        if leader is not None:
            leader.close()
        session.record.close()
        return
    meta_log = session.record.meta.get("log")
    if log_dir is not None and isinstance(meta_log, dict):
        try:
            file = LogFile.adopt(
                log_dir,
                meta_log,
                log_fd,
                writing=session.state is SessionState.RUNNING,
                handed_over=handed_over,
            )
            log_fd = None
            session.give_log(table.log_writers, file, create=False)
        except (LogFileError, OSError, KeyError, ValueError, TypeError, OverflowError) as exc:
            log.warning("inventory.log_lost", session=str(session.name), error=str(exc))
    if log_fd is not None:
        log_fd.close()
    session.catch_up_log()  # a crash may have come between the ring and the file
    if session.state is SessionState.WAITING:
        try:
            if sock is None:
                raise ValueError("a waiting session without its console socket")
            session.intake = Listener.adopt(sock.release(), f"s{serial}.sock", Origin.BOUND)
        except ValueError as exc:
            log.warning("inventory.rejected", fd=f"s{serial}.sock", error=str(exc))
            if pty is not None and number is not None:
                inventory.orphans.append(Orphan(pty, number, serial))
            if leader is not None:
                leader.close()
            session.close()
            return
    elif sock is not None:
        sock.close()
    if pty is not None and number is not None:
        if session.state is SessionState.RUNNING:
            session.resume_master(pty, number, leader)
            leader = None
        elif session.state is SessionState.EXITED and session.end_reason is EndReason.EXITED:
            # Its terminal hung up, and the daemon died before the service
            # manager let go of the master: let go of it now (no `unnamed-N`
            # for a terminal that ended).
            log.info("inventory.exited_again", session=str(session.name))
            pty.close()
        else:
            log.warning("inventory.rejected", fd=f"s{serial}.pty", error="session not running")
            inventory.orphans.append(Orphan(pty, number, serial))
    elif session.state is SessionState.RUNNING:
        # The terminal hung up while no daemon held it (the manager drops a
        # stored master that reports a hangup): it ended.
        session.master = None
        session.exit(EndReason.EXITED, f"session {session.name} ended while the daemon was down")
    if leader is not None:
        leader.close()  # no terminal of ours for it to lead
    table.restored(session)
    inventory.sessions += 1
