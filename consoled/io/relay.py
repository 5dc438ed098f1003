"""The native relay: one thread, in C, that drains every master and writes echoes.

A keystroke's echo costs the event loop two wake-ups in Python: the reader's
and the client's writer's.  The native relay (``_relay.c``) takes both off
the echo's path.  Its thread reads each master it is given (a
:class:`Source`) as soon as the terminal writes, without the GIL; puts the
bytes in the session's ring; writes them as ``output`` frames to every
attached client whose connection is idle (an active :class:`Link`); and
queues them for Python, which does everything else with them (the log file,
the time index, the screen, the other clients) when it takes them.

Python keeps every decision.  A source reads only between ``resume()`` and
``pause()``; a link writes only between ``activate()`` and
``deactivate()``, and activating fails while Python has output the client
must get first.  The thread never owns an fd Python owns: a source is closed
before its master (see :attr:`.OwnedFd.before_close`), and a link writes to
a duplicate of its client's socket.  See docs/performance.md, "The native
relay", for what it measured, and ``consoled serve --relay python`` for the
relay without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import trio

from .fds import OwnedFd

try:
    from . import _relay
except ImportError:  # built without a C compiler: sessions are relayed in Python
    _relay = None  # type: ignore[assignment]

#: The native relay was built (``pip install`` found a C compiler).
AVAILABLE: bool = _relay is not None

#: Bytes of a client's input the thread may hold while it reads the client
#: (more than one message of ``consoled attach``'s).
INPUT_BUFFER: int = _relay.INPUT_BUFFER if _relay is not None else 0

#: Seconds the event loop may hear late of output every client got from the
#: thread: a keystroke's echo then does not wake it while the next key is on
#: its way, and the time index (10 ms resolution) still dates it within its
#: resolution.  Output with an escape byte in it (it may be a terminal query,
#: which the event loop answers) and floods are told at once.
NOTIFY_DELAY: float = 0.010


class RingLayout(NamedTuple):
    """Where a session's ring lives in its record (see :mod:`.record`)."""

    fd: int
    capacity: int
    data_offset: int
    end_at: int
    end: int
    #: The ring's bytes beyond those exposed: how far the thread may read
    #: ahead of Python.
    slack: int


class NativeRelay:
    """The relay's thread, and the task that hands its events to their owners.

    Args:
        prefix: the ``output`` message's bytes before its data's ``bin``
            header (:data:`consoled.protocol.codec.OUTPUT_PREFIX`).
        input_prefix: the same for ``input`` (``codec.INPUT_PREFIX``): a
            message from a client that starts so is keys for the terminal.
        notify_delay: see :data:`NOTIFY_DELAY`.
    """

    def __init__(
        self, prefix: bytes, input_prefix: bytes, notify_delay: float = NOTIFY_DELAY
    ) -> None:
        if _relay is None:
            raise RuntimeError("consoled was installed without its native relay (no C compiler)")
        self._relay = _relay.Relay(prefix, input_prefix, notify_delay)

    def source(
        self,
        master: OwnedFd,
        record: OwnedFd,
        ring: RingLayout,
        on_output: Callable[[], object],
    ) -> _relay.Source:
        """A source for ``master`` (paused: ``resume()`` it) that appends to the
        ring in ``record``, closed before either fd is.

        ``on_output`` is called (in the event loop) when it has output or a
        hangup to take.
        """
        assert ring.fd == record.fd
        source = _relay.Source(
            self._relay,
            master.fd,
            ring.fd,
            ring.capacity,
            ring.data_offset,
            ring.end_at,
            ring.end,
            ring.slack,
        )
        source.data = on_output
        master.before_close = record.before_close = source.close
        return source

    @staticmethod
    def link(source: _relay.Source, sock: int, on_stopped: Callable[[], object]) -> _relay.Link:
        """A link to the client on socket ``sock`` (inactive; it keeps a duplicate of it).

        ``on_stopped`` is called (in the event loop) when the thread
        deactivated it: the socket did not take a whole frame.
        """
        link = _relay.Link(source, sock)
        link.data = on_stopped
        return link

    async def run(self) -> None:
        """Hand the thread's events to their owners, until cancelled."""
        fd = self._relay.fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            sources, links = self._relay.events()
            for source in sources:
                source.data()
            for link in links:
                link.data()

    def close(self) -> None:
        """Stop the thread and close its fds (once :meth:`run` is cancelled)."""
        fd = self._relay.fileno()
        if fd >= 0 and trio.lowlevel.in_trio_run():
            trio.lowlevel.notify_closing(fd)
        self._relay.close()
