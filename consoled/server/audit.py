"""The audit trail: who attached to which console, typed, resized, renamed, removed.

Each record is one ``audit`` event with an ``action``; the peer's uid, gid,
pid and command name are bound to every event of its connection (see
:mod:`.control`).  The bytes typed are never logged: they may be passwords.
"""

from __future__ import annotations

from typing import NamedTuple

import structlog

log = structlog.get_logger("consoled.audit")


def audit(action: str, **fields: object) -> None:
    """Log one audit record."""
    log.info("audit", action=action, **fields)


class AuditRecord(NamedTuple):
    """An audit record to log later: once the reply it concerns is sent."""

    action: str
    fields: dict[str, object]
