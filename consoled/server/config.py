"""The daemon's settings, gathered in one immutable object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .sizepolicy import SizePolicy

CONTROL_SOCKET = "control.sock"
CONSOLE_SOCKET = "console.sock"
INTAKE_DIR = "intake"
LOCK_FILE = "lock"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything ``consoled serve`` can be told.

    Attributes:
        state_dir: holds the control socket, the well-known console socket and
            the per-session console sockets (mode 0700).
        scrollback: bytes of newest output retained per session.
        max_exited: exited sessions kept (oldest forgotten first).
        intake_timeout: seconds a session waits for its master before it is
            dropped; 0 waits forever.
        client_queue: bytes of live output queued for one client before it is
            disconnected as lagged.
        size_policy: how several clients' window sizes combine.
        log_dir: where session log files go, or None for no log files.
        log_file_format: ``raw`` or ``cri``.
        log_max_size: rotate a log file to ``.1`` past this many bytes (0: never).
        shutdown_grace: seconds given to clients to receive their last words on
            shutdown before everything is cancelled.
    """

    state_dir: Path
    scrollback: int = 512 * 1024
    max_exited: int = 128
    intake_timeout: float = 300.0
    client_queue: int = 4 * 1024 * 1024
    size_policy: SizePolicy = SizePolicy.LATEST
    log_dir: Path | None = None
    log_file_format: str = "raw"
    log_max_size: int = 0
    shutdown_grace: float = 2.0

    @property
    def control_socket(self) -> Path:
        return self.state_dir / CONTROL_SOCKET

    @property
    def console_socket(self) -> Path:
        return self.state_dir / CONSOLE_SOCKET

    @property
    def intake_dir(self) -> Path:
        return self.state_dir / INTAKE_DIR
