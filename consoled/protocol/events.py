"""The messages of the consoled control protocol, as frozen records of typed fields.

Every message has a wire name (``TYPE``) and typed fields; :mod:`.codec`
turns them into msgpack maps and back, checking every field.  Which side may
send which message when is decided in :mod:`.state`.

docs/protocol.md is the reference for all of these; keep the two in step.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from ..frozen import Frozen, frozen
from .errors import ErrorCode

#: The protocol version this implementation speaks.
PROTOCOL_VERSION = 1


class EndReason(enum.StrEnum):
    """Why the daemon ended an attach or logs stream."""

    EXITED = "exited"  # the program on the terminal is gone (EIO on the master)
    DETACHED = "detached"  # the client asked to detach
    LAGGED = "lagged"  # the client fell behind its bounded queue
    REMOVED = "removed"  # the session was removed (rm --force)
    SHUTDOWN = "shutdown"  # the daemon is stopping
    END_OF_LOG = "end_of_log"  # logs without follow: everything retained was sent
    RESTARTING = "restarting"  # the daemon is handing over to its successor: resume


class SessionState(enum.StrEnum):
    WAITING = "waiting"  # console socket created, no master yet
    RUNNING = "running"  # master held and drained
    EXITED = "exited"  # the terminal hung up; scrollback kept until rm


@frozen
class Event(Frozen):
    """Base class of every protocol message."""

    TYPE: ClassVar[str] = ""


# --- handshake ----------------------------------------------------------------


@frozen
class Hello(Event):
    """Client -> server, first message on every connection."""

    TYPE: ClassVar[str] = "hello"
    version: int
    client: str = ""


@frozen
class Welcome(Event):
    """Server -> client, the answer to a ``hello`` the server accepts."""

    TYPE: ClassVar[str] = "welcome"
    version: int
    server: str
    pid: int


@frozen
class Error(Event):
    """Server -> client: a request failed, or (``code.fatal``) the connection ends."""

    TYPE: ClassVar[str] = "error"
    code: ErrorCode
    message: str


# --- requests and their replies -------------------------------------------------


@frozen
class CreateSocket(Event):
    """Ask for a console socket for ``session``.

    With ``exec_base`` set, ``session`` is a container id and the daemon picks
    a free exec name ``ID/<exec_base>-<n>``.
    """

    TYPE: ClassVar[str] = "create_socket"
    session: str
    exec_base: str | None = None
    #: Remove the session (and its log files) once it has ended and its exit
    #: status has been delivered (to an attached client, or a ``wait``).
    ephemeral: bool = False


@frozen
class SocketCreated(Event):
    TYPE: ClassVar[str] = "socket_created"
    session: str
    path: str


@frozen
class ListSessions(Event):
    """List every session, or only those of container ``id``."""

    TYPE: ClassVar[str] = "list_sessions"
    id: str | None = None


@frozen
class SessionInfo(Frozen):
    """One session as ``ls`` shows it (also the stable ``ls --json`` object)."""

    session: str
    id: str
    exec: str | None
    state: SessionState
    clients: int
    rows: int
    cols: int
    created: str  # RFC 3339, UTC
    bytes_out: int
    exited_at: str | None = None
    socket: str | None = None  # the console socket path while waiting
    log_path: str | None = None
    scrollback_bytes: int = 0
    uid: str = ""  # this incarnation of the name: a new session under an old name differs
    exit_code: int | None = None  # how its process ended (128 + N for signal N), if known


@frozen
class SessionList(Event):
    """One page of a session list; ``more`` is true on every page but the last."""

    TYPE: ClassVar[str] = "session_list"
    sessions: tuple[SessionInfo, ...]
    more: bool = False


@frozen
class GetInfo(Event):
    TYPE: ClassVar[str] = "get_info"


@frozen
class DaemonInfo(Event):
    TYPE: ClassVar[str] = "daemon_info"
    version: str
    pid: int
    state_dir: str
    control_socket: str
    console_socket: str
    log_dir: str | None
    sessions: int
    size_policy: str
    scrollback: int
    started: str = ""  # RFC 3339: when this program started serving (a reexec restarts it)


@frozen
class Remove(Event):
    TYPE: ClassVar[str] = "remove"
    session: str
    force: bool = False
    keep_logs: bool = False  # keep its log files (they are removed with it otherwise)


@frozen
class Removed(Event):
    TYPE: ClassVar[str] = "removed"
    session: str
    state: SessionState  # the state it was in when removed


@frozen
class Resize(Event):
    """Set a session's window size from outside (``consoled resize``)."""

    TYPE: ClassVar[str] = "resize"
    session: str
    rows: int
    cols: int


@frozen
class Resized(Event):
    TYPE: ClassVar[str] = "resized"
    session: str
    rows: int
    cols: int


@frozen
class Rename(Event):
    TYPE: ClassVar[str] = "rename"
    session: str
    new: str


@frozen
class Renamed(Event):
    TYPE: ClassVar[str] = "renamed"
    session: str
    new: str


@frozen
class Wait(Event):
    """Wait until a session has ended; the reply says how its process ended."""

    TYPE: ClassVar[str] = "wait"
    session: str


@frozen
class Waited(Event):
    TYPE: ClassVar[str] = "waited"
    session: str
    exit_code: int | None  # 128 + N for signal N; None when it cannot be known


@frozen
class ReportExit(Event):
    """A client that reaped a session's process says how it ended.

    ``consoled exec`` is the command's subreaper: it knows the status exactly.
    The daemon takes it only for an exited session whose status it does not know.
    """

    TYPE: ClassVar[str] = "report_exit"
    session: str
    exit_code: int


@frozen
class ExitReported(Event):
    TYPE: ClassVar[str] = "exit_reported"
    session: str
    exit_code: int | None  # the status the session has now


@frozen
class Reexec(Event):
    """Replace the daemon's program with the one now installed, dropping nothing."""

    TYPE: ClassVar[str] = "reexec"


@frozen
class Reexeced(Event):
    """The successor has taken everything over and serves now."""

    TYPE: ClassVar[str] = "reexeced"
    pid: int
    version: str
    sessions: int


@frozen
class Attach(Event):
    """Attach to a session.

    Attributes:
        replay: how many bytes of retained output to send first; ``None`` for
            all of it, 0 for none.
        rows, cols: the client's window size, 0 when it has none.
        resume: continue a stream that broke off: send output from this stream
            offset on (``replay`` is then ignored).
        uid: with ``resume``, the session incarnation the client was attached
            to; a different one is refused as ``unknown_session``.
        screen: start with a ``screen`` message that draws the session's current
            screen (``replay`` is then ignored), as tmux attaches.
        history: with ``screen``, put that many lines of history above it.
    """

    TYPE: ClassVar[str] = "attach"
    session: str
    read_only: bool = False
    replay: int | None = None
    rows: int = 0
    cols: int = 0
    resume: int | None = None
    uid: str | None = None
    screen: bool = False
    history: int = 0


@frozen
class Logs(Event):
    """Stream a session's retained output (its log file when it has one)."""

    TYPE: ClassVar[str] = "logs"
    session: str
    follow: bool = False
    resume: int | None = None  # continue from this stream offset, from the ring (no file)
    uid: str | None = None  # with ``resume``: the session incarnation followed
    tail: int | None = None  # only the last N lines retained (then what follows)
    since: int | None = None  # only lines read at or after this time (ns since the epoch)
    until: int | None = None  # only lines read at or before this time; following ends there
    timestamps: bool = False  # start each line with the time it was read (RFC 3339) and a space
    cursor: str | None = None  # continue sending the log files from this output.cursor


@frozen
class Attached(Event):
    """The stream has started: ``output`` messages follow, then ``ended``."""

    TYPE: ClassVar[str] = "attached"
    session: str
    state: SessionState
    rows: int
    cols: int
    replay: int  # bytes of retained output that come first
    offset: int = 0  # stream offset of the first byte that follows
    uid: str = ""  # the session incarnation, for resume
    #: A ``logs`` resumed at a cursor whose file is gone (rotated away): the
    #: output starts at the oldest file kept, and some between was lost.
    gap: bool = False


# --- the stream -----------------------------------------------------------------


@frozen
class Output(Event):
    TYPE: ClassVar[str] = "output"
    data: bytes
    #: In a following ``logs`` stream: the stream offset just past the session
    #: output this message was made from (before filtering).  A client that
    #: loses the connection with no ``ended`` (a crash) resumes there.
    offset: int | None = None
    #: In a ``logs`` stream, while it sends the log files: where in them this
    #: message ends (opaque).  A client that loses the connection resumes there.
    cursor: str | None = None


@frozen
class Screen(Event):
    """Draws the session's current screen; the output that follows continues it."""

    TYPE: ClassVar[str] = "screen"
    data: bytes
    approximate: bool = False  # some output went unemulated (a flood): not exact


@frozen
class Input(Event):
    TYPE: ClassVar[str] = "input"
    data: bytes


@frozen
class WindowSize(Event):
    TYPE: ClassVar[str] = "window_size"
    rows: int
    cols: int


@frozen
class Detach(Event):
    TYPE: ClassVar[str] = "detach"


@frozen
class Ended(Event):
    TYPE: ClassVar[str] = "ended"
    reason: EndReason
    message: str = ""
    resume: int | None = None  # with reason ``restarting``: the offset to resume from
    input: int | None = None  # with ``restarting``: bytes of this client's input consumed
    exit_code: int | None = None  # with ``exited``: how the process ended, if known
    session: str | None = None  # the session's name now (it may have been renamed meanwhile)


CLIENT_REQUESTS: tuple[type[Event], ...] = (
    CreateSocket,
    ListSessions,
    GetInfo,
    Remove,
    Resize,
    Rename,
    Attach,
    Logs,
    Reexec,
    Wait,
    ReportExit,
)
STREAM_INPUTS: tuple[type[Event], ...] = (Input, WindowSize, Detach)
ALL_EVENTS: tuple[type[Event], ...] = (
    Hello,
    Welcome,
    Error,
    *CLIENT_REQUESTS,
    SocketCreated,
    SessionList,
    DaemonInfo,
    Removed,
    Resized,
    Renamed,
    Reexeced,
    Waited,
    ExitReported,
    Attached,
    Screen,
    Output,
    *STREAM_INPUTS,
    Ended,
)
