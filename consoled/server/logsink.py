"""Where the daemon's own log events go: a bounded queue and one writer thread.

The daemon holds every container's terminal, so its logging must neither
kill it nor stall it.  Every structlog event ends in :class:`LogSink`, the
last processor: the caller (the event loop) captures what only it knows
(the task's context, the time, the exception being handled), appends the
event to a bounded queue, and that is all it does; it never waits for I/O
and never sees an exception.  A dedicated thread takes the events off the
queue, renders them (JSON, the console format, journal entries) and writes
them to stderr, or sends them to journald when stderr is the journal (see
:mod:`.journal`).  Rendering was nearly half of an event's cost: one with a
client's context and eight fields took the event loop 9 us when it
rendered it, 5 us now (about 32 and 21 us cold; docs/performance.md).

Values other than strings, numbers, bytes and plain lists, tuples and dicts
are turned into their ``repr`` when captured, as the renderers would turn
them later: an object's ``repr`` is never taken in the writer's thread,
which could see it half-changed.  Lists and dicts are rendered as they
are when the writer gets to them: log a copy of one you change afterwards.

- A stderr that blocks (a pipe nobody reads, a terminal stopped with
  ctrl-s, a stalled disk) stalls only the thread: the queue fills, and
  further events are dropped and counted.
- A stderr that fails (EPIPE, EFBIG, ENOSPC, EIO, ...) loses events, counted.
  The thread drops what is queued and pauses (0.05 s, doubling up to 1 s)
  before it tries the next event, so a broken stderr costs about one
  system call a second, and a disk that gets space back is written to again.
- After any loss, the next event written is preceded by a ``log.dropped``
  event whose ``count`` says how many events are missing at that point
  (and ``error``, the errno name, when a write failed).

The writer is woken only when it waits with nothing queued, and then
gives the burst that woke it :data:`BATCH_DELAY` to arrive before it writes:
a woken thread takes the GIL from the event loop, and an attach, which logs
five events, made it do so five times (docs/performance.md).
:meth:`LogSink.flush` and :meth:`LogSink.close` cut the delay short.

Why a thread and not a trio task: a trio task can only wait for a file
descriptor that is non-blocking, and stderr's open file description is
shared with whoever started us (a shell, a terminal, systemd), so setting
O_NONBLOCK on it would change it under them too.  A regular file is never
"not ready" for poll(2) either: write(2) on a full or stalled disk blocks or
fails whatever poll says.  ``trio.to_thread`` for each write would be a
thread anyway, one that cancellation cannot take back from a blocked
write(2).  And events are logged outside ``trio.run`` too (a crash, the
last words).
"""

from __future__ import annotations

import enum
import errno
import os
import select
import threading
from collections import deque
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from . import journal
from .journal import JournalSocket

#: Events queued at most while the writer is busy or blocked.
MAX_LINES = 4096
#: Bytes queued at most, about (an event counts its strings' lengths and
#: :data:`EVENT_BYTES`); an event bigger than this is dropped.
MAX_BYTES = 1024 * 1024
#: What an event counts against :data:`MAX_BYTES` besides its strings.
EVENT_BYTES = 256
#: Seconds :meth:`LogSink.close` waits for the queue to be written.
FLUSH_TIMEOUT = 1.0
#: Seconds the woken writer waits for the rest of a burst before writing it.
BATCH_DELAY = 0.005
#: Pause after a failed write, doubled after each further failure...
PAUSE_FIRST = 0.05
#: ...up to this.
PAUSE_MAX = 1.0


class Record(NamedTuple):
    """One rendered event, ready for the writer."""

    #: The rendered event and a newline, for stderr.
    line: bytes
    #: The same event as a native journal entry, when the journal is the target.
    entry: bytes | None


class _Event(NamedTuple):
    """One event as it was logged, to be rendered by the writer."""

    logger: WrappedLogger
    method_name: str
    event_dict: EventDict
    #: What it counts against the queue's bytes (see :data:`MAX_BYTES`).
    size: int


class _Queued(NamedTuple):
    item: _Event | Record
    #: Events lost just before this one, to be reported before it is written.
    missing: int
    #: What it counts against the queue's bytes.
    size: int


#: Values kept as they are when an event is captured (see the module's docstring).
_KEPT = (str, bytes, int, float, type(None), list, tuple, dict)
#: The same, as exact types: the quick test (subclasses, enums say, take the slow one).
_KEPT_TYPES = frozenset(_KEPT) | {bool}


@dataclass(frozen=True, slots=True)
class SinkStats:
    """What became of the events given to a :class:`LogSink`.

    Attributes:
        written: events written to stderr or sent to the journal.
        dropped: events dropped because the queue was full.
        failed: events lost because a write or send failed.
        errors: writes or sends that failed.
        unrenderable: events that could not be rendered (each replaced by a
            ``log.render_failed`` event when that could be).
        last_error: the errno name of the last failure, if any.
    """

    written: int
    dropped: int
    failed: int
    errors: int
    unrenderable: int
    last_error: str | None


class _Outcome(enum.Enum):
    SENT = "sent"
    SKIPPED = "skipped"  # it could not be rendered: counted, nothing written
    LOST = "lost"  # this one event is lost (journald's queue is full)
    BROKEN = "broken"  # stderr failed: drop what is queued, pause


class LogSink:
    """The last structlog processor: queues each event for the writer thread.

    Args:
        fd: where events are written (stderr); left blocking, never closed.
        capture: run on each event by the caller, as it is logged: what
            only the caller knows (context, level, time, exceptions).
        processors: run on each event by the writer, before it is rendered.
        renderer: turns an event into its line (JSON, console), in the writer.
        journal: send events to journald through this socket instead, and
            write to ``fd`` only those journald cannot take.
        max_lines: events queued at most.
        max_bytes: bytes queued at most.
        batch_delay: seconds the writer, woken by an event, waits for more
            before it writes them.
    """

    def __init__(
        self,
        fd: int,
        *,
        capture: Sequence[Processor] = (),
        processors: Sequence[Processor] = (),
        renderer: Processor,
        journal: JournalSocket | None = None,
        max_lines: int = MAX_LINES,
        max_bytes: int = MAX_BYTES,
        batch_delay: float = BATCH_DELAY,
    ) -> None:
        self._fd = fd
        self._batch_delay = batch_delay
        self._capture = tuple(capture)
        self._processors = tuple(processors)
        self._renderer = renderer
        self._journal = journal
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        # Shared with the callers, under the lock (held only for a few list
        # operations, never across I/O; reentrant, so that an event logged by
        # a signal handler that interrupted a caller holding it cannot deadlock):
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # the writer waits here for events
        self._idle = threading.Condition(lock)  # flush() waits here for the writer
        self._busy = False  # the writer holds an event it took
        self._sleeping = False  # the writer waits for an event: the next one wakes it
        self._hurry = False  # flush() or close() wants the queue written now
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0
        self._missing = 0  # events lost since the last one queued
        self._closing = False
        self._finished = False
        self._dropped = 0
        self._unrenderable = 0
        # The writer thread's own (read under the lock by stats()):
        self._written = 0
        self._failed = 0
        self._errors = 0
        self._last_error: str | None = None
        self._unreported = 0  # events lost since the last line written
        self._gap_error: str | None = None  # why, if a write failed
        self._cut_line = False  # a failed write left half a line behind
        self._pause = 0.0
        self._wake = threading.Event()  # ends a pause early: closing
        self._thread = threading.Thread(target=self._run, name="consoled-log", daemon=True)
        self._thread.start()

    # --- the callers' side: never blocks, never raises -----------------------------

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> NoReturn:
        """Queue the event; structlog then drops it (nothing else is done with it)."""
        item: _Event | Record | None
        try:
            item = self._captured(logger, method_name, event_dict)
        except Exception as exc:
            item = self._render_failed(logger, event_dict, exc)
        self._put(item)
        raise structlog.DropEvent

    def _captured(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> _Event:
        """The event with what only its caller knows, and its values made safe to keep."""
        event_dict = _processed(self._capture, logger, method_name, event_dict)
        size = EVENT_BYTES
        for key, value in event_dict.items():
            kind = type(value)
            if kind is str:
                size += len(value)
            elif kind not in _KEPT_TYPES and not isinstance(value, _KEPT):
                shown = event_dict[key] = repr(value)  # a new value, not a new key: safe
                size += len(shown)
        return _Event(logger, method_name, event_dict, size)

    def _render(self, event: _Event) -> Record:
        logger, method_name, event_dict, _ = event
        event_dict = _processed(self._processors, logger, method_name, event_dict)
        line = self._renderer(logger, method_name, event_dict)
        if not isinstance(line, str):
            raise TypeError(f"renderer returned {type(line).__name__}")
        entry = None if self._journal is None else journal.entry(event_dict, line)
        return Record(line.encode("utf-8", "backslashreplace") + b"\n", entry)

    def _render_failed(
        self, logger: WrappedLogger, event_dict: EventDict, exc: Exception
    ) -> Record | None:
        """Stand-in for an event that could not be rendered, if even that can be."""
        with self._cond:
            self._unrenderable += 1
        try:
            name = event_dict.get("event")
            stand_in: dict[str, Any] = {
                "event": "log.render_failed",
                "failed_event": name if isinstance(name, str) else None,
                "error": type(exc).__name__,  # not str(exc): it may quote any value
            }
            return self._render(self._captured(logger, "error", stand_in))
        except Exception:
            return None

    def _rendered(self, event: _Event) -> Record | None:
        """In the writer: the event's record, a stand-in, or None if not even that renders."""
        try:
            return self._render(event)
        except Exception as exc:
            return self._render_failed(event.logger, event.event_dict, exc)

    def _put(self, item: _Event | Record | None) -> None:
        size = 0 if item is None else item.size if isinstance(item, _Event) else _size(item)
        with self._cond:
            if (
                item is None
                or self._closing
                or len(self._queue) >= self._max_lines
                or self._queued_bytes + size > self._max_bytes
            ):
                if item is not None:
                    self._dropped += 1
                self._missing += 1
                return
            self._queue.append(_Queued(item, self._missing, size))
            self._missing = 0
            self._queued_bytes += size
            if self._sleeping:
                self._sleeping = False
                self._cond.notify()

    def stats(self) -> SinkStats:
        with self._cond:
            return SinkStats(
                written=self._written,
                dropped=self._dropped,
                failed=self._failed,
                errors=self._errors,
                unrenderable=self._unrenderable,
                last_error=self._last_error,
            )

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Wait at most ``timeout`` seconds for every event queued so far to be
        written (or given up on).

        Returns:
            True if the writer is idle, False if it is still busy (blocked).
        """
        with self._cond:
            self._hurry = True
            self._cond.notify()  # ends the writer's batch delay
            try:
                return self._idle.wait_for(
                    lambda: self._finished or not (self._queue or self._busy), timeout
                )
            finally:
                self._hurry = False

    def close(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Write what is queued and stop the writer, waiting at most ``timeout`` seconds.

        Events logged afterwards are dropped (and counted in a last
        ``log.dropped`` if the writer is still at work).  Safe to call more
        than once.

        Returns:
            True if the writer finished in time; False if it is still
            blocked (it is a daemon thread: it does not keep the process alive).
        """
        with self._cond:
            self._closing = True
            self._hurry = True
            self._cond.notify_all()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if self._journal is not None:
            self._journal.close()
        return True

    # --- the writer thread ----------------------------------------------------------

    def _run(self) -> None:
        while (item := self._take()) is not None:
            try:
                outcome = self._deliver(item)
            except Exception as exc:  # a bug here must not end the thread
                self._note_error(exc)
                self._lose(1)
                outcome = _Outcome.BROKEN
            if outcome is _Outcome.BROKEN:
                self._drop_queued()
                self._wake.wait(self._next_pause())
        try:
            if self._unreported:
                self._emit(self._report(self._unreported))
        except Exception as exc:  # pragma: no cover - as above
            self._note_error(exc)
        finally:
            with self._cond:
                self._finished = True
                self._idle.notify_all()

    def _take(self) -> _Queued | None:
        with self._cond:
            self._busy = False
            while not self._queue:
                self._idle.notify_all()
                if self._closing:
                    self._unreported += self._missing  # for the last report
                    self._missing = 0
                    return None
                self._sleeping = True
                self._cond.wait()
                self._sleeping = False
                if not (self._hurry or self._closing) and self._batch_delay > 0:
                    # Let the rest of the burst come without waking us again.
                    self._cond.wait(self._batch_delay)
            item = self._queue.popleft()
            self._busy = True
            self._queued_bytes -= item.size
            return item

    def _deliver(self, item: _Queued) -> _Outcome:
        """Render and write one event, after a report of what is missing before it."""
        self._unreported += item.missing
        record = item.item if isinstance(item.item, Record) else self._rendered(item.item)
        if record is None:
            self._unreported += 1  # reported before the next line written
            return _Outcome.SKIPPED
        if self._unreported:
            outcome = self._emit(self._report(self._unreported))
            if outcome is not _Outcome.SENT:
                # Nothing is written after a gap that was not reported.
                self._lose(1)
                return outcome
            self._unreported = 0
            self._gap_error = None
        outcome = self._emit(record)
        if outcome is _Outcome.SENT:
            self._written += 1
            self._pause = 0.0
        else:
            self._lose(1)
        return outcome

    def _lose(self, count: int) -> None:
        self._unreported += count
        self._failed += count
        self._gap_error = self._last_error

    def _drop_queued(self) -> None:
        """After a failed write: what is queued is lost too (it would only be stale)."""
        with self._cond:
            dropped = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        self._unreported += sum(q.missing for q in dropped)
        self._lose(len(dropped))

    def _next_pause(self) -> float:
        self._pause = min(max(self._pause * 2, PAUSE_FIRST), PAUSE_MAX)
        return self._pause

    def _report(self, count: int) -> Record:
        report: dict[str, Any] = {"event": "log.dropped", "count": count}
        if self._gap_error is not None:
            report["error"] = self._gap_error
        try:
            return self._render(self._captured(None, "warning", report))
        except Exception:  # pragma: no cover - our own event always renders
            line = f'{{"event": "log.dropped", "count": {count}, "level": "warning"}}'
            entry = None if self._journal is None else journal.entry(report, line)
            return Record(line.encode() + b"\n", entry)

    def _emit(self, record: Record) -> _Outcome:
        if self._journal is not None and record.entry is not None:
            try:
                self._journal.send(record.entry)
                return _Outcome.SENT
            except OSError as exc:
                self._note_error(exc)
                if isinstance(exc, BlockingIOError) or exc.errno == errno.ENOBUFS:
                    return _Outcome.LOST  # journald is busy: drop this one
                # journald is gone: its stream (our stderr) may still take the line.
        return self._write(record.line)

    def _write(self, data: bytes) -> _Outcome:
        prefix = b"\n" if self._cut_line else b""  # ends the line a failed write cut short
        data = prefix + data
        view = memoryview(data)
        try:
            while view:
                try:
                    written = os.write(self._fd, view)
                    if not written:  # never seen, but it would loop for ever
                        raise OSError(errno.EIO, "write(2) wrote nothing")
                    view = view[written:]
                except BlockingIOError:
                    # Someone set O_NONBLOCK on the description we share: wait
                    # as a blocking write would.
                    poller = select.poll()
                    poller.register(self._fd, select.POLLOUT)
                    poller.poll()
        except OSError as exc:
            written = len(data) - len(view)
            if written:
                self._cut_line = written > len(prefix)
            self._note_error(exc)
            return _Outcome.BROKEN
        self._cut_line = False
        return _Outcome.SENT

    def _note_error(self, exc: Exception) -> None:
        code = exc.errno if isinstance(exc, OSError) else None
        name = errno.errorcode.get(code, str(code)) if code else type(exc).__name__
        with self._cond:
            self._errors += 1
            self._last_error = name


def _processed(
    processors: tuple[Processor, ...],
    logger: WrappedLogger,
    method_name: str,
    event_dict: EventDict,
) -> EventDict:
    for processor in processors:
        result = processor(logger, method_name, event_dict)
        if type(result) is not dict and not isinstance(result, MutableMapping):
            raise TypeError(f"processor {processor!r} returned {type(result).__name__}")
        event_dict = result
    return event_dict


def _size(record: Record) -> int:
    """What ``record`` counts against the queue's bytes."""
    return len(record.line) + len(record.entry or b"")
