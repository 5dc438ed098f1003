"""The daemon's settings, gathered in immutable objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .sizepolicy import SizePolicy

CONTROL_SOCKET = "control.sock"
CONSOLE_SOCKET = "console.sock"
INTAKE_DIR = "intake"
LOCK_FILE = "lock"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what clients can make the daemon hold; each has a sane default.

    Hitting one costs only the request or connection that hit it, with an
    error that names the limit.

    Attributes:
        connections: open control connections.
        idle_timeout: seconds a control connection may sit between requests.
        sessions: sessions of every state together.
        waiting: sessions waiting for their master (per-session console sockets).
        clients_per_session: attached clients (and ``logs -f`` followers) per session.
        buffered: bytes of unfinished frames held for all control connections together.
    """

    connections: int = 4096
    idle_timeout: float = 600.0
    sessions: int = 100_000
    waiting: int = 4096
    clients_per_session: int = 64
    buffered: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything ``consoled serve`` can be told.

    Attributes:
        state_dir: holds the control socket, the well-known console socket and
            the per-session console sockets (mode 0700, or 0711 with groups).
        scrollback: bytes of newest output retained per session.
        max_exited: exited sessions kept (oldest forgotten first).
        intake_timeout: seconds a session waits for its master before it is
            dropped; 0 waits forever.
        client_queue: bytes of live output queued for one client before it is
            disconnected as lagged.
        size_policy: how several clients' window sizes combine.
        log_dir: where session log files go, or None for no log files.
        log_file_format: ``raw`` or ``cri``.
        log_max_size: rotate a log file past this many bytes (0: never).
        log_max_files: log files kept per session, the current one included.
        shutdown_grace: seconds given to clients to receive their last words on
            shutdown before everything is cancelled.
        group: gid whose members may use the control socket fully.
        watch_group: gid whose members may only list, read logs and attach read-only.
        fd_store: keep fds in the service manager's fd store (when there is one).
        terminal_state: keep a screen per session (see consoled.server.screenstate):
            answer terminal queries, attach draws the current screen. Off, attach
            replays raw output and no query is answered.
        limits: see :class:`Limits`.
        native_relay: let the native relay's thread read the masters and write
            echoes (see consoled.io.relay), if consoled was built with it.
    """

    state_dir: Path
    scrollback: int = 512 * 1024
    max_exited: int = 128
    intake_timeout: float = 300.0
    client_queue: int = 4 * 1024 * 1024
    size_policy: SizePolicy = SizePolicy.LATEST
    log_dir: Path | None = None
    log_file_format: str = "raw"
    log_max_size: int = 10 * 1024 * 1024
    log_max_files: int = 5
    shutdown_grace: float = 2.0
    group: int | None = None
    watch_group: int | None = None
    fd_store: bool = True
    terminal_state: bool = True
    limits: Limits = field(default_factory=Limits)
    native_relay: bool = True

    @property
    def control_socket(self) -> Path:
        return self.state_dir / CONTROL_SOCKET

    @property
    def console_socket(self) -> Path:
        return self.state_dir / CONSOLE_SOCKET

    @property
    def intake_dir(self) -> Path:
        return self.state_dir / INTAKE_DIR
