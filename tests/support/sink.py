"""Log sinks for the tests, each with its own bound logger (structlog's global
configuration is left alone)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import structlog

from consoled.server.logsink import LogSink

#: ``new_sink(fd, fmt="json", journal=None, max_lines=..., max_bytes=...)``
SinkFactory = Callable[..., LogSink]


def sink_logger(sink: LogSink) -> Any:
    """A bound logger whose events end in ``sink``, as the daemon's do."""
    return structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[sink],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
