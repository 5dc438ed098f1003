"""structlog set-up for the daemon: JSON lines on stderr, or a console format for people.

Every event goes through a :class:`~.logsink.LogSink`, so logging never
blocks the event loop or raises into it, whatever stderr is; when stderr is
the journal, events go to journald as native entries instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

import structlog
from structlog.typing import EventDict

from .journal import JOURNAL_SOCKET, JournalSocket, stream_is_journal
from .logsink import BATCH_DELAY, MAX_BYTES, MAX_LINES, LogSink

LEVELS = ("debug", "info", "warning", "error")


def stamp_time(logger: object, method_name: str, event_dict: EventDict) -> EventDict:
    """Note when the event happened (:func:`iso_time` formats it later)."""
    event_dict["timestamp"] = time.time()
    return event_dict


def iso_time(logger: object, method_name: str, event_dict: EventDict) -> EventDict:
    """The time :func:`stamp_time` noted, as structlog's ISO UTC ``TimeStamper`` writes it."""
    stamp = event_dict.get("timestamp")
    if type(stamp) is float:
        when = datetime.fromtimestamp(stamp, UTC)
        event_dict["timestamp"] = when.isoformat().replace("+00:00", "Z")
    return event_dict


#: What the caller adds to each event (see :class:`~.logsink.LogSink`).
CAPTURE: tuple[structlog.typing.Processor, ...] = (
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    stamp_time,
    structlog.processors.format_exc_info,
)
#: What the writer does to each event before rendering it.
PROCESSORS: tuple[structlog.typing.Processor, ...] = (iso_time,)


def make_sink(
    fd: int,
    fmt: str = "json",
    *,
    journal: JournalSocket | None = None,
    max_lines: int = MAX_LINES,
    max_bytes: int = MAX_BYTES,
    batch_delay: float = BATCH_DELAY,
) -> LogSink:
    """The daemon's sink: events rendered as ``fmt`` lines for ``fd`` (or sent to ``journal``).

    Each event gets its ``level``, an ISO ``timestamp`` (UTC), the context
    bound in its task, and its exception's traceback as ``exception``.  The
    caller takes the time; the writer thread formats it with the rest.
    """
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    return LogSink(
        fd,
        capture=CAPTURE,
        processors=PROCESSORS,
        renderer=renderer,
        journal=journal,
        max_lines=max_lines,
        max_bytes=max_bytes,
        batch_delay=batch_delay,
    )


def configure(
    fmt: str = "json",
    level: str = "info",
    stream: TextIO | None = None,
    *,
    journal_socket: str | None = None,
    env: Mapping[str, str] | None = None,
) -> LogSink:
    """Configure structlog for ``consoled serve``.

    Args:
        fmt: ``json`` (one JSON object per line) or ``console``.
        level: the lowest level logged.
        stream: where to write, a stream with a file descriptor; stderr by default.
        journal_socket: journald's native socket (default
            ``/run/systemd/journal/socket``), used when ``$JOURNAL_STREAM`` says
            ``stream`` is connected to the journal.
        env: the environment to read ``$JOURNAL_STREAM`` from; ours by default.

    Returns:
        The sink; :meth:`~.logsink.LogSink.close` it at exit to flush.
    """
    out = stream or sys.stderr
    if out is None:
        # Started with stderr closed: fd 2 may become a socket or a terminal
        # we receive later, so never write there.  Events go nowhere, as asked.
        fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    else:
        with contextlib.suppress(OSError, ValueError):
            out.flush()  # what was printed before comes first
        fd = out.fileno()
    journal_socket = journal_socket or JOURNAL_SOCKET
    journal = None
    journal_error = None
    if stream_is_journal(fd, os.environ if env is None else env):
        try:
            journal = JournalSocket(journal_socket)
        except OSError as exc:
            journal_error = exc.strerror or str(exc)
    sink = make_sink(fd, fmt, journal=journal)
    structlog.configure(
        processors=[sink],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # The sink is the last processor and writes itself: no logger is called.
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    if journal_error is not None:
        structlog.get_logger("consoled.log").warning(
            "log.journal_unavailable", socket=journal_socket, error=journal_error
        )
    return sink
