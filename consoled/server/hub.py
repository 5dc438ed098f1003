"""The clients of one session: fan-out of output, and the window size they agree on.

Bookkeeping that never waits: the session's pump calls :meth:`ClientHub.publish`
for every batch, which frames it once for all clients (a client whose pump
is idle gets it written at once, see :mod:`.subscriber`); a client that
falls too far behind is ended as *lagged*.  Window sizes combine by the daemon's size policy; the
session applies the result to its terminal.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator

import structlog

from ..protocol import EncodedOutput
from ..protocol.events import EndReason
from .sizepolicy import ClientSize, SizePolicy, choose_size
from .subscriber import Subscriber

log = structlog.get_logger("consoled.session")


class ClientHub:
    """The subscribers of one session.

    Args:
        size_policy: how attached clients' sizes combine.
    """

    def __init__(self, size_policy: SizePolicy) -> None:
        self.size_policy = size_policy
        self._subscribers: dict[Subscriber, None] = {}
        self._activity = itertools.count(1)
        #: The terminal's size as a predecessor chose it (see hold).
        self._held: ClientSize | None = None

    def __iter__(self) -> Iterator[Subscriber]:
        return iter(list(self._subscribers))

    def __contains__(self, sub: object) -> bool:
        return sub in self._subscribers

    def __len__(self) -> int:
        return len(self._subscribers)

    @property
    def attached(self) -> int:
        """Attached clients (``logs -f`` followers not counted)."""
        return sum(1 for s in self._subscribers if not s.follower)

    def publish(self, data: bytes, start: int) -> bool:
        """Queue ``data`` (at stream offset ``start``) for every subscriber; drop
        those that lagged now or ended before.

        What the native relay's thread wrote to a client itself (its link
        handled it) is only counted.

        Returns:
            True if a dropped one's size counted (the size should be recomputed).
        """
        if not self._subscribers:
            return False
        output: EncodedOutput | None = None  # framed once, whatever the number of clients
        dropped = []
        for sub in self._subscribers:
            link = sub.link
            if link is not None and (handled := link.handled - start) > 0:
                if handled >= len(data):
                    sub.offset += len(data)
                    continue
                sub.offset += handled
                pushed = sub.push(EncodedOutput(data[handled:]))
            elif sub.raw:
                pushed = sub.push(data)
            else:
                if output is None:
                    output = EncodedOutput(data)
                pushed = sub.push(output)
            if not pushed:
                dropped.append(sub)
        resize = False
        for sub in dropped:
            # Only this push ends a stream as lagged; the others ended (detached,
            # say) and their pump had not taken them out yet.
            if sub.end_notice is not None and sub.end_notice.reason is EndReason.LAGGED:
                log.warning("client.lagged", client=sub.label, limit=sub.limit)
            resize = self.remove(sub) or resize
        return resize

    def hold(self, rows: int, cols: int) -> None:
        """Keep ``rows`` x ``cols``, the size chosen before a restart, until a client is active.

        After a restart every client attaches again, and none is newly active
        for that: under ``latest`` the last one back would otherwise take the
        terminal to its own window's size.  A client that types or resizes,
        a new attach, or a ``resize`` request ends the hold.
        """
        if self.size_policy is SizePolicy.LATEST and rows and cols:
            self._held = ClientSize(rows, cols, sys.maxsize)

    def release(self) -> None:
        """End the hold (the size was set directly)."""
        self._held = None

    def add(self, sub: Subscriber, size: tuple[int, int] | None, *, resumed: bool = False) -> None:
        """Register ``sub``; ``resumed``: it was attached before a restart (see hold).

        A second attached client takes the first one's input back from the
        native relay's thread: whose typing decides the size is known here.
        """
        if not sub.follower:
            for other in self._subscribers:
                if other.relayed_input is not None:
                    other.relayed_input.stop()
        self._subscribers[sub] = None
        if size is not None and not sub.read_only:
            sub.size = ClientSize(size[0], size[1], next(self._activity))
            if not resumed:
                self._held = None

    def remove(self, sub: Subscriber) -> bool:
        """Forget ``sub``; True if its size counted (the size should be recomputed)."""
        if sub not in self._subscribers:
            return False
        del self._subscribers[sub]
        return sub.size is not None

    def resized(self, sub: Subscriber, rows: int, cols: int) -> bool:
        """A client's window changed; True if it counts."""
        if sub.read_only or sub not in self._subscribers:
            return False
        sub.size = ClientSize(rows, cols, next(self._activity))
        self._held = None
        return True

    def typed(self, sub: Subscriber) -> bool:
        """A client typed; True if that may change the size (policy ``latest``)."""
        if sub.size is None or self.size_policy is not SizePolicy.LATEST:
            return False
        sub.size = ClientSize(sub.size.rows, sub.size.cols, next(self._activity))
        self._held = None
        return True

    def wanted_size(self) -> tuple[int, int] | None:
        """The size the policy picks, or None when no client has a size."""
        sizes = [s.size for s in self._subscribers if s.size is not None]
        if self._held is not None:
            sizes.append(self._held)
        return choose_size(self.size_policy, sizes)

    def end_all(self, reason: EndReason, message: str, exit_code: int | None = None) -> None:
        """End every stream (queued output is still delivered unless the reason drops it)."""
        for sub in list(self._subscribers):
            sub.end(reason, message, exit_code)
        self._subscribers.clear()
