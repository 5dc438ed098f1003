"""One owner object per file descriptor, and what an errno means.

Every fd the daemon holds (a pty master, a listening or connected socket, a
session record, a log file, a directory) belongs to exactly one
:class:`OwnedFd` from the moment the kernel hands it over.  The owner closes
it, or hands it on with :meth:`OwnedFd.release`; once closed it forgets the
number, so a number the kernel reuses is never touched.  An owner that is
garbage-collected while still open closes the fd and warns
(``ResourceWarning``): a leak is a bug, and the tests turn the warning into a
failure.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Final

import trio

#: errnos that say the peer or the device is gone for good.
BROKEN_ERRNOS: Final = frozenset(
    {
        errno.EPIPE,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.EIO,
        errno.ENXIO,
    }
)
#: errnos that pass once other fds or memory are freed: back off and retry.
EXHAUSTED_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def translate_oserror(exc: OSError, what: str = "file descriptor") -> Exception:
    """The trio error for an OSError on an fd: closed by us, or broken by the other side.

    ``EBADF`` means we closed it; anything else means the other side broke it
    (or the device failed).  This is the one place that decides.
    """
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError(f"this {what} was already closed")
    return trio.BrokenResourceError(f"{what} broken: {exc.strerror or exc}")


class OwnedFd:
    """Owns one file descriptor until it is closed or handed on.

    Args:
        fd: the descriptor; from now on this object owns it.
        kind: what it is, for messages and leak warnings (``pty``, ``socket``...).
    """

    __slots__ = ("_fd", "before_close", "kind")

    def __init__(self, fd: int, kind: str = "fd") -> None:
        self._fd = fd
        self.kind = kind
        #: Called once, before the fd is closed or handed on: whatever else
        #: uses the number (the native relay's epoll) lets go of it first.
        self.before_close: Callable[[], object] | None = None

    def _letting_go(self) -> None:
        hook, self.before_close = self.before_close, None
        if hook is not None:
            hook()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<OwnedFd {self.kind} {state}>"

    @property
    def fd(self) -> int:
        """The number; raises ``trio.ClosedResourceError`` once closed or released."""
        if self._fd < 0:
            raise trio.ClosedResourceError(f"{self.kind} already closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        return self.fd

    def release(self) -> int:
        """Give up ownership and return the fd; the caller now owns it."""
        fd = self.fd
        self._letting_go()
        self._fd = -1
        return fd

    def dup(self) -> OwnedFd:
        """A new owner of a duplicate (close-on-exec) of this fd."""
        return OwnedFd(fcntl.fcntl(self.fd, fcntl.F_DUPFD_CLOEXEC, 0), self.kind)

    def close(self) -> None:
        """Close the fd (idempotent); tasks waiting on it are woken first."""
        if self._fd >= 0:
            self._letting_go()
            fd, self._fd = self._fd, -1
            # Wake any task waiting on this fd before the number can be reused
            # (outside a trio run, as in pure tests and tools, none can be).
            if trio.lowlevel.in_trio_run():
                trio.lowlevel.notify_closing(fd)
            try:
                os.close(fd)
            except OSError as exc:
                # Linux releases the fd whatever close(2) says: an error is a
                # network or FUSE file system's late one (its server gone, say),
                # which nobody can act on here.  EBADF is a bug.
                if exc.errno == errno.EBADF:
                    raise

    def __enter__(self) -> OwnedFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._fd >= 0:
            self._letting_go()
            fd, self._fd = self._fd, -1
            os.close(fd)
            warnings.warn(
                f"leaked {self.kind} fd {fd} was closed by the garbage collector",
                ResourceWarning,
                stacklevel=1,
            )


@contextlib.contextmanager
def close_on_error(*owners: OwnedFd) -> Iterator[None]:
    """Close ``owners`` if the block raises; on success the caller keeps them."""
    try:
        yield
    except BaseException:
        for owner in owners:
            owner.close()
        raise


#: File descriptors kept free for control connections and arriving masters.
FD_HEADROOM: Final = 32


def fds_in_use() -> int:
    """How many fds this process has open (a directory read: not for hot paths)."""
    return len(os.listdir("/proc/self/fd")) - 1  # the directory's own fd


def set_nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & os.O_NONBLOCK:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


def set_cloexec(fd: int, on: bool = True) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFD)
    new = flags | fcntl.FD_CLOEXEC if on else flags & ~fcntl.FD_CLOEXEC
    if new != flags:
        fcntl.fcntl(fd, fcntl.F_SETFD, new)
