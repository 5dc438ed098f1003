"""The command line: every command, its options and their checks."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from typing import Final, TypeAlias

from .. import __version__
from ..client.detachkeys import (
    DEFAULT_DETACH_KEYS,
    DEFAULT_WAIT,
    DetachKeysError,
    parse_detach_keys,
)
from ..client.timespec import parse_time
from ..names import InvalidName, SessionName
from .commands import (
    cmd_attach,
    cmd_exec,
    cmd_info,
    cmd_logs,
    cmd_ls,
    cmd_reexec,
    cmd_rename,
    cmd_resize,
    cmd_rm,
    cmd_socket,
    cmd_wait,
)
from .common import parse_bytes, parse_lines
from .serve import cmd_serve


def _session_arg(text: str) -> str:
    try:
        SessionName.parse(text)
    except InvalidName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _new_name_arg(text: str) -> str:
    try:
        SessionName.parse(text, "new name")
    except InvalidName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _detach_keys_arg(text: str) -> str:
    try:
        parse_detach_keys(text)
    except DetachKeysError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _tail_arg(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of lines, nor 'all': {text!r}") from None
    return None if value < 0 else value  # as docker: a negative count is all of it


def _time_arg(text: str) -> int:
    try:
        return parse_time(text, time.time_ns())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _dimension(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {value}")
    return value


def _add_attach_options(p: argparse.ArgumentParser, *, read_only: bool = True) -> None:
    if read_only:
        p.add_argument("--read-only", action="store_true", help="see everything, send nothing")
    p.add_argument(
        "--detach-keys",
        type=_detach_keys_arg,
        default=os.environ.get("CONSOLED_DETACH_KEYS", DEFAULT_DETACH_KEYS),
        metavar="SPEC",
        help="key sequence that detaches, docker syntax (default: %(default)s; '' disables)",
    )
    p.add_argument(
        "--detach-wait",
        type=float,
        default=float(os.environ.get("CONSOLED_DETACH_WAIT", DEFAULT_WAIT)),
        metavar="SECONDS",
        help="how long a typed prefix of the detach keys is held before it is sent on "
        "(default: %(default)s)",
    )
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--history",
        type=parse_lines,
        default=None,
        metavar="N",
        help="put N lines of history above the current screen (default: 0)",
    )
    start.add_argument(
        "--replay",
        type=parse_bytes,
        default=None,
        metavar="BYTES",
        help="instead of the current screen, replay the last BYTES of raw output "
        "(queries in it are not answered again)",
    )
    start.add_argument(
        "--no-replay", action="store_true", help="start with live output only, no screen"
    )
    p.add_argument(
        "--no-tty",
        action="store_true",
        help="pipe mode: no raw mode, no resizing; forward stdin, and at its end send "
        "ctrl-d (the terminal's end-of-file) and stay until the session ends (automatic "
        "when stdin is not a terminal)",
    )
    p.add_argument(
        "--detach-on-eof",
        action="store_true",
        help="in pipe mode, detach when stdin ends instead of sending ctrl-d",
    )


_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_serve(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the daemon in the foreground",
        description="Run the daemon in the foreground: it listens on the state directory's "
        "control and console sockets, holds every pty master it is handed, drains it into "
        "the session's scrollback (and log file), and serves attach, logs and the other "
        "commands. See docs/operations.md.",
    )
    p.add_argument(
        "--log-format",
        choices=("json", "console"),
        default="json",
        help="daemon log format on stderr (default: json lines)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the least severe daemon events logged (default: info)",
    )
    p.add_argument(
        "--scrollback",
        type=parse_bytes,
        default=512 * 1024,
        metavar="BYTES",
        help="newest output retained per session (default: 512K)",
    )
    p.add_argument(
        "--max-exited",
        type=int,
        default=128,
        metavar="N",
        help="exited sessions kept, oldest forgotten first (default: 128)",
    )
    p.add_argument(
        "--intake-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long a session waits for its master; 0 waits forever (default: 300)",
    )
    p.add_argument(
        "--client-queue",
        type=parse_bytes,
        default=4 * 1024 * 1024,
        metavar="BYTES",
        help="output queued per client before it is disconnected as lagged (default: 4M)",
    )
    p.add_argument(
        "--size-policy",
        choices=("latest", "smallest", "largest"),
        default="latest",
        help="window size with several clients, as tmux's window-size (default: latest)",
    )
    p.add_argument("--log-dir", metavar="DIR", help="write each session's output to DIR")
    p.add_argument(
        "--log-format-file",
        choices=("raw", "cri"),
        default="raw",
        help="session log file format: raw bytes, or Kubernetes CRI lines",
    )
    p.add_argument(
        "--log-max-size",
        type=parse_bytes,
        default=10 * 1024 * 1024,
        metavar="BYTES",
        help="rotate a session log file past this size; 0 never rotates (default: 10M, as kubelet)",
    )
    p.add_argument(
        "--log-max-files",
        type=_positive_int,
        default=5,
        metavar="N",
        help="log files kept per session, the current one included (default: 5, as kubelet)",
    )
    p.add_argument(
        "--group",
        metavar="GROUP",
        help="members of GROUP may use every command but reexec, as docker's socket group",
    )
    p.add_argument(
        "--watch-group",
        metavar="GROUP",
        help="members of GROUP may only list, read logs and attach --read-only",
    )
    p.add_argument(
        "--no-fd-store",
        action="store_true",
        help="do not keep fds in systemd's fd store (sessions then do not survive a crash)",
    )
    limits = p.add_argument_group("limits (each refuses only what goes past it)")
    limits.add_argument(
        "--max-connections",
        type=_positive_int,
        default=4096,
        metavar="N",
        help="open control connections (default: %(default)s)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="close a control connection idle between requests this long (default: %(default)s)",
    )
    limits.add_argument(
        "--max-sessions",
        type=_positive_int,
        default=100_000,
        metavar="N",
        help="sessions in every state together (default: %(default)s)",
    )
    limits.add_argument(
        "--max-waiting",
        type=_positive_int,
        default=4096,
        metavar="N",
        help="sessions waiting for their master (default: %(default)s)",
    )
    limits.add_argument(
        "--max-clients-per-session",
        type=_positive_int,
        default=64,
        metavar="N",
        help="attached clients and log followers per session (default: %(default)s)",
    )
    limits.add_argument(
        "--max-buffered",
        type=parse_bytes,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="unfinished messages held for all clients together (default: 64M)",
    )
    p.add_argument(
        "--no-terminal-state",
        action="store_true",
        help="keep no screen per session: attach replays raw output instead of drawing the "
        "current screen, and terminal queries go unanswered (saves CPU on floods of queries)",
    )
    p.add_argument(
        "--relay",
        choices=("native", "python"),
        default="native",
        help="what reads the terminals and writes echoes to attached clients: a thread in C "
        "(default, when consoled was built with it) or the event loop",
    )
    p.add_argument(
        "--shutdown-grace", type=float, default=2.0, metavar="SECONDS", help=argparse.SUPPRESS
    )
    # journald's native socket, when $JOURNAL_STREAM says stderr is the journal (for tests).
    p.add_argument("--journal-socket", metavar="PATH", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)


def _add_wait(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "wait",
        parents=[common],
        help="wait until sessions end and print their exit statuses",
        description="Block until each SESSION has ended, then print how its process exited "
        "(its exit code, or 128+N if signal N killed it; 'unknown' where the kernel cannot "
        "tell), one line per session, as docker wait does.",
    )
    p.add_argument(
        "sessions", nargs="+", type=_session_arg, metavar="SESSION", help="ID or ID/EXEC"
    )
    p.set_defaults(func=cmd_wait)


def _add_reexec(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "reexec",
        parents=[common],
        help="replace the running daemon's program with the one installed now, dropping nothing",
        description="Start the consoled program now installed with the daemon's arguments and "
        "hand it every console, socket, session and log file. Attached clients resume where "
        "they were. If the new program fails before it has taken everything over, the old one "
        "serves on and this command exits 1 saying why. `systemctl reload consoled` runs this.",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="how long to wait for the handover (default: %(default)s)",
    )
    p.set_defaults(func=cmd_reexec)


def _add_socket(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "socket",
        parents=[common],
        help="create a console socket for a session and print its path",
        description="Create a session waiting for its terminal, and a console socket for it: "
        "give the printed path to a runtime's --console-socket (runc run|create|exec "
        "--console-socket PATH). The socket takes one pty master, then disappears. This is "
        "the exact form for container managers; the well-known socket (consoled info "
        "--console-socket) names sessions by itself.",
    )
    p.add_argument(
        "session",
        type=_session_arg,
        metavar="SESSION",
        help="ID for a container's init terminal, ID/EXEC for an exec's",
    )
    p.set_defaults(func=cmd_socket)


def _add_ls(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ls",
        parents=[common],
        help="list sessions",
        description="List sessions, each container's execs under it, sorted naturally "
        "(s2 before s10): state (running, waiting for its terminal, or exited with its "
        "status and when), attached clients, window size (ROWSxCOLS, as resize takes it), "
        "age and output so far.",
    )
    p.add_argument(
        "name",
        nargs="?",
        metavar="ID|ID/EXEC",
        help="only this container's sessions, or only this one session",
    )
    p.add_argument(
        "--json", action="store_true", help="a JSON array of session objects, for scripts"
    )
    p.set_defaults(func=cmd_ls)


def _add_logs(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "logs",
        parents=[common],
        help="print a session's output",
        description="Print what a session's program wrote: its log files with the daemon's "
        "--log-dir, else its scrollback. Filtering happens in the daemon, as docker logs "
        "does it: --tail takes the last lines, then --since and --until keep those in the "
        "time range; a line's time is when its first byte was read.",
    )
    p.add_argument("session", type=_session_arg, metavar="SESSION", help="ID or ID/EXEC")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep following new output until it ends"
    )
    p.add_argument(
        "-n",
        "--tail",
        type=_tail_arg,
        default=None,
        metavar="N",
        help="only the last N lines ('all' for every line, the default)",
    )
    p.add_argument(
        "--since",
        type=_time_arg,
        default=None,
        metavar="TIME",
        help="only lines since TIME: RFC 3339 (2026-11-29T10:00:00Z, or local time without a "
        "zone), a Unix timestamp, or a duration ago such as 10m or 1h30m",
    )
    p.add_argument(
        "--until",
        type=_time_arg,
        default=None,
        metavar="TIME",
        help="only lines up to TIME (same forms as --since); with -f, following stops there",
    )
    p.add_argument(
        "-t",
        "--timestamps",
        action="store_true",
        help="start each line with the time it was read (RFC 3339, nanoseconds, UTC)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="write the bytes as they are, even to a terminal (which then answers the "
        "terminal queries in them, typing the answers into your shell)",
    )
    p.set_defaults(func=cmd_logs)


def _add_rm(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "rm",
        parents=[common],
        help="forget sessions, and delete their log files",
        description="Forget exited sessions and delete their log files (as docker rm does), "
        "printing each name removed. A running session is refused unless --force, which "
        "closes its master: the container's terminal hangs up (its processes get SIGHUP).",
    )
    p.add_argument(
        "sessions", nargs="+", type=_session_arg, metavar="SESSION", help="ID or ID/EXEC"
    )
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="also remove running sessions, closing their terminals (hangup)",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the sessions' log files on disk")
    p.set_defaults(func=cmd_rm)


def _add_attach(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "attach",
        parents=[common],
        help="attach this terminal to a session",
        description="Attach to a session: see its output, type into it; the window size "
        "follows yours. Detach with ctrl-p ctrl-q (see --detach-keys). Exit status: the "
        "status of the session's program if it ends while attached (128+N if signal N killed "
        "it), 0 when you detach, 69 the daemon stopped, 74 the connection to it was lost, "
        "75 this client fell behind the output (lagged), 1 an error, 2 usage.",
    )
    p.add_argument("session", type=_session_arg, metavar="SESSION", help="ID or ID/EXEC")
    _add_attach_options(p)
    p.set_defaults(func=cmd_attach)


def _add_resize(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "resize",
        parents=[common],
        help="set a session's window size",
        description="Set a session's window size from a script, and print it (ROWSxCOLS). The "
        "program on the terminal gets SIGWINCH. An attached client's size takes over again "
        "when it next attaches, resizes or types (the daemon's --size-policy).",
    )
    p.add_argument("session", type=_session_arg, metavar="SESSION", help="ID or ID/EXEC")
    p.add_argument("rows", type=_dimension, metavar="ROWS", help="lines, 1 to 65535")
    p.add_argument("cols", type=_dimension, metavar="COLS", help="columns, 1 to 65535")
    p.set_defaults(func=cmd_resize)


def _add_rename(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "rename",
        parents=[common],
        help="rename a session, or a container with its execs",
        description="Rename a session and print its new name; attached clients stay attached "
        "and log files are renamed too. Renaming a container (rename web1 web2) moves its "
        "exec sessions with it; an exec is renamed only within its container (rename "
        "web1/sh-1 web1/shell). Fixes names the daemon could not tell (unnamed-N).",
    )
    p.add_argument(
        "session", type=_session_arg, metavar="SESSION", help="the session or container id"
    )
    p.add_argument("new", type=_new_name_arg, metavar="NEW", help="its new name")
    p.set_defaults(func=cmd_rename)


def _add_info(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "info",
        parents=[common],
        help="show the daemon's sockets and settings",
        description="Show the daemon's version, pid, when it started serving, its sockets, "
        "log directory, number of sessions and settings.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.add_argument(
        "--console-socket",
        action="store_true",
        help="print only the well-known console socket path (for a runtime's --console-socket)",
    )
    p.set_defaults(func=cmd_info)


def _add_exec(sub: _Commands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "exec",
        parents=[common],
        help="run a command in a container on a new terminal and attach (docker exec -it)",
        description="As docker exec -it: picks a free exec name (ID/CMD-N), runs RUNTIME "
        "exec -d -t --console-socket SOCK [options] ID CMD... and attaches. Exit status: "
        "the command's (128+N if signal N killed it; 127 command not found, 126 not "
        "executable, 125 the runtime failed otherwise), or as for attach if you detach. "
        "Its session is removed once the command has ended, unless --keep or --detach.",
    )
    p.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help="start the command, print its session's name and exit 0 without attaching; "
        "the session is kept after the command ends, until `consoled wait` has taken its "
        "exit status (or `consoled rm`)",
    )
    p.add_argument(
        "-u",
        "--user",
        metavar="USER[:GROUP]",
        help="run as this user and group: names or numbers, names looked up in the "
        "container's /etc/passwd and /etc/group as docker does (a user without a group "
        "gets its primary group)",
    )
    p.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="set an environment variable in the container; NAME alone passes this "
        "environment's value on, if it is set (repeatable)",
    )
    p.add_argument(
        "-w", "--workdir", metavar="DIR", help="working directory in the container (absolute)"
    )
    p.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="accepted for docker's -it: stdin is always forwarded",
    )
    p.add_argument(
        "-t",
        "--tty",
        action="store_true",
        help="accepted for docker's -it: the command always gets a terminal",
    )
    p.add_argument(
        "--runtime",
        metavar="PATH",
        default=os.environ.get("CONSOLED_RUNTIME") or None,
        help="the OCI runtime, runc or crun (default: $CONSOLED_RUNTIME, else runc on PATH)",
    )
    p.add_argument(
        "--root",
        metavar="DIR",
        default=os.environ.get("CONSOLED_RUNTIME_ROOT") or None,
        help="the runtime's state directory, passed as its global --root (default: "
        "$CONSOLED_RUNTIME_ROOT, else the runtime's own default)",
    )
    p.add_argument(
        "--runtime-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="another global option for the runtime, e.g. --runtime-arg=--systemd-cgroup "
        "(repeatable)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the session (and its log) after the command ended; by default it is "
        "removed once its exit status is known",
    )
    _add_attach_options(p, read_only=False)
    p.add_argument("id", metavar="ID", help="the container")
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS...]",
        help="the command and its arguments ('--' first if they start with '-')",
    )
    p.set_defaults(func=cmd_exec)


#: Each command and what defines its arguments, in the order ``--help`` lists them.
_COMMANDS: Final[dict[str, Callable[[_Commands, argparse.ArgumentParser], None]]] = {
    "serve": _add_serve,
    "wait": _add_wait,
    "reexec": _add_reexec,
    "socket": _add_socket,
    "ls": _add_ls,
    "logs": _add_logs,
    "rm": _add_rm,
    "attach": _add_attach,
    "resize": _add_resize,
    "rename": _add_rename,
    "info": _add_info,
    "exec": _add_exec,
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser.

    With ``argv``, only the command it names has its arguments defined when
    nothing but ``--state-dir`` comes before it: defining all of them costs
    about 5 ms, paid by every ``consoled attach`` before it can connect.
    Anything else (``--help``, an abbreviated option, a mistyped command)
    gets every command, so what argparse says about it is unchanged.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="daemon state directory (default: $CONSOLED_STATE_DIR, else /run/consoled for "
        "root, $XDG_RUNTIME_DIR/consoled otherwise)",
    )
    parser = argparse.ArgumentParser(
        prog="consoled",
        description="Console-socket broker for runc and crun: holds containers' pty masters, "
        "drains them, and lets many clients attach.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"consoled {__version__}")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="one of these (consoled COMMAND --help says more):",
    )

    chosen = _command_in(argv)
    for name, add in _COMMANDS.items():
        if chosen is None or name == chosen:
            add(sub, common)
    for command in sub.choices.values():
        command.set_defaults(usage_of=command)
    return parser


def _command_in(argv: Sequence[str] | None) -> str | None:
    """The command ``argv`` names, if only ``--state-dir DIR`` comes before it."""
    rest = list(argv or ())
    while rest:
        arg = rest.pop(0)
        if arg in _COMMANDS:
            return arg
        if arg == "--state-dir" and rest:
            rest.pop(0)
        elif not arg.startswith("--state-dir="):
            return None
    return None
