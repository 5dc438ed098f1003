"""The process on a session's terminal, and how it exited.

Runtimes make the process they start on a terminal (a container's init, an
exec'd command) the leader of a new session with that terminal as its
controlling terminal, before they hand the master out.  ``TIOCGSID`` on the
master names it; a pidfd pins it and says when it exits.  Its exit status
comes from either of two places, whichever has it first, so the daemon
learns every session's status without being the process's parent:

- while it is a zombie (not yet reaped by its parent), ``/proc/PID/stat``
  field 52 (Linux 3.5+; the pidfd guarantees the pid is still its, and the
  start time is checked);
- once it has been reaped, the pidfd itself (``PIDFD_GET_INFO`` with
  ``PIDFD_INFO_EXIT``, Linux 6.15+).

On an older kernel with a parent that reaps at once, it can be unknown.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from typing import Final

import trio

from .fds import OwnedFd

#: ``TIOCGSID``: on a pty master, the session of its slave side.
TIOCGSID: Final = getattr(termios, "TIOCGSID", 0x5429)
#: ``struct pidfd_info`` (linux/pidfd.h): mask, cgroupid, then u32 ids, exit_code (s32).
_PIDFD_INFO: Final = struct.Struct("=QQIIIIIIIIIIIiII")
#: ``_IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info)``.
PIDFD_GET_INFO: Final = (3 << 30) | (_PIDFD_INFO.size << 16) | (0xFF << 8) | 11
PIDFD_INFO_EXIT: Final = 1 << 3
#: Seconds to wait, once the process has exited, for it to be reaped (only then
#: does the kernel give its status), and how often to look.
REAP_WAIT: Final = 2.0
REAP_POLL: Final = 0.02


def terminal_leader(master_fd: int) -> int | None:
    """The session leader of a pty's slave side (``TIOCGSID`` on the master), or None."""
    try:
        packed = fcntl.ioctl(master_fd, TIOCGSID, b"\0" * 4)
    except OSError:
        return None  # no session has it as its controlling terminal (ENOTTY)
    sid: int = struct.unpack("i", packed)[0]
    return sid if sid > 0 else None


def exit_code(wait_status: int) -> int:
    """A wait status as a shell reports it: the code, or 128 + the signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


class Leader:
    """A pidfd on the process that leads a terminal's session.

    Use :meth:`find`; ``pid`` is its pid in the daemon's pid namespace.
    """

    def __init__(self, pid: int, owner: OwnedFd, start_time: str | None) -> None:
        self.pid = pid
        self._owner = owner
        self._start_time = start_time

    @classmethod
    def find(cls, master_fd: int) -> Leader | None:
        """The leader of the terminal behind ``master_fd``, if there is one (and it lives)."""
        pid = terminal_leader(master_fd)
        if pid is None:
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None  # gone already, or pidfds not available
        stat = _stat_fields(pid)
        return cls(pid, OwnedFd(fd, "pidfd"), None if stat is None else stat[19])

    @classmethod
    def adopt(cls, owner: OwnedFd) -> Leader | None:
        """The leader whose pidfd a predecessor handed over; it may have exited since.

        A terminal whose leader is gone names nobody (``TIOCGSID``): its pidfd
        is then the only way to its exit status.  None (and ``owner`` closed)
        if the fd is not a pidfd.
        """
        pid = _pidfd_pid(owner.fd)
        if pid is None:
            owner.close()
            return None
        stat = _stat_fields(pid) if pid > 0 else None  # -1: exited and reaped already
        return cls(pid, owner, None if stat is None else stat[19])

    @property
    def owner(self) -> OwnedFd:
        """The pidfd's owner, for handing it on."""
        return self._owner

    def close(self) -> None:
        self._owner.close()

    def _exit_status(self) -> int | None:
        """The wait status if it can be had now (see the module docstring), else None."""
        buf = bytearray(_PIDFD_INFO.pack(PIDFD_INFO_EXIT, *([0] * 15)))
        try:
            fcntl.ioctl(self._owner.fd, PIDFD_GET_INFO, buf, True)
        except OSError:
            pass  # before Linux 6.15 (ENOTTY, EINVAL), or gone (ESRCH): try /proc
        else:
            mask, *rest = _PIDFD_INFO.unpack(buf)
            if mask & PIDFD_INFO_EXIT:
                status: int = rest[12]  # after cgroupid and 11 ids
                return status
        stat = _stat_fields(self.pid)
        if stat is None or stat[0] != "Z" or stat[19] != self._start_time or len(stat) < 50:
            return None  # not a zombie yet, or reaped (the pid may be another's now)
        return int(stat[49])

    async def wait_status(self, within: float) -> int | None:
        """Wait (at most ``within`` seconds, then :data:`REAP_WAIT` for the reaping)
        for the process to exit; return its wait status, or None if it cannot be known
        (also when the leader is closed meanwhile: the session was removed).
        """
        try:
            with trio.move_on_after(within):
                await trio.lowlevel.wait_readable(self._owner.fd)
                # Exited; the kernel has the status once its parent has reaped it.
                with trio.move_on_after(REAP_WAIT):
                    while True:
                        status = self._exit_status()
                        if status is not None:
                            return status
                        # Neither a zombie's nor a reaped process's status yet: the
                        # kernel sends no event for either; look again shortly.
                        await trio.sleep(REAP_POLL)
        except trio.ClosedResourceError:
            pass  # closed under us (rm --force while waiting): nobody wants the status
        return None


def _pidfd_pid(fd: int) -> int | None:
    """The pid a pidfd refers to (-1 once reaped), or None if ``fd`` is not a pidfd."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after ``(comm)``: [0] is the state (field 3)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()
