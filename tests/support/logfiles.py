"""Waiting for a session's log file: a writer thread of the daemon's writes it."""

from __future__ import annotations

from pathlib import Path

import trio


async def wait_file(path: Path, needle: bytes, timeout: float = 15.0) -> bytes:
    """The file's bytes once they hold ``needle``."""
    with trio.fail_after(timeout):
        while needle not in (data := path.read_bytes() if path.exists() else b""):  # noqa: ASYNC110 - a file has no event
            await trio.sleep(0.02)
    return data
