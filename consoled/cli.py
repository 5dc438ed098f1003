"""The ``consoled`` command line.

Only ``serve`` imports trio and structlog (lazily); every other command is a
thin, fast client of the control protocol.  Exit status: 0 success, 1 an
error (with a one-line message on stderr, never a traceback), 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .client.conn import Client, ClientError, DaemonUnavailable
from .client.detachkeys import DEFAULT_DETACH_KEYS, DEFAULT_WAIT, DetachKeysError, parse_detach_keys
from .client.timespec import parse_time
from .names import InvalidName, SessionName
from .protocol import ProtocolError
from .protocol import events as ev

if TYPE_CHECKING:
    from .terminal.filter import OutputFilter

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

_SIZE_UNITS = {
    "": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
}


class UsageError(Exception):
    pass


def parse_bytes(text: str) -> int:
    """``4096``, ``512K``, ``1MiB``... as a byte count (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use a byte count such as 65536, 512K or 4MiB"
        )
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_lines(text: str) -> int:
    """A count of lines: a whole number, 0 or more."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"invalid line count {text!r}: use a number such as 100")
    return int(text)


def default_state_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    if env.get("CONSOLED_STATE_DIR"):
        return env["CONSOLED_STATE_DIR"]
    if os.geteuid() == 0:
        return "/run/consoled"
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if not runtime_dir:
        raise UsageError(
            "no state directory: pass --state-dir, or set CONSOLED_STATE_DIR or XDG_RUNTIME_DIR"
        )
    return os.path.join(runtime_dir, "consoled")


def state_dir_of(args: argparse.Namespace) -> str:
    return os.path.abspath(args.state_dir or default_state_dir())


def connect(args: argparse.Namespace) -> Client:
    return Client(os.path.join(state_dir_of(args), "control.sock"))


# --- commands ---------------------------------------------------------------------


def _group_id(text: str | None) -> int | None:
    if text is None:
        return None
    import grp

    try:
        return int(text) if text.isdigit() else grp.getgrnam(text).gr_gid
    except KeyError:
        raise UsageError(f"no group named {text!r}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import contextlib
    import signal
    from pathlib import Path

    import structlog
    import trio

    from .server import logconfig
    from .server.config import DaemonConfig, Limits
    from .server.daemon import serve
    from .server.handover import HandoverError
    from .server.sizepolicy import SizePolicy
    from .server.statedir import StartupError

    # A closed terminal or a log rotation must not stop every console.  A write
    # past RLIMIT_FSIZE must fail with EFBIG, not kill the daemon and hang up
    # every terminal it holds (CPython ignores SIGXFSZ at start-up already; an
    # embedding interpreter might not).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sink = logconfig.configure(args.log_format, args.log_level, journal_socket=args.journal_socket)
    config = DaemonConfig(
        state_dir=Path(state_dir_of(args)),
        scrollback=args.scrollback,
        max_exited=args.max_exited,
        intake_timeout=args.intake_timeout,
        client_queue=args.client_queue,
        size_policy=SizePolicy(args.size_policy),
        log_dir=None if args.log_dir is None else Path(os.path.abspath(args.log_dir)),
        log_file_format=args.log_format_file,
        log_max_size=args.log_max_size,
        log_max_files=args.log_max_files,
        shutdown_grace=args.shutdown_grace,
        group=_group_id(args.group),
        watch_group=_group_id(args.watch_group),
        fd_store=not args.no_fd_store,
        terminal_state=not args.no_terminal_state,
        limits=Limits(
            connections=args.max_connections,
            idle_timeout=args.idle_timeout,
            sessions=args.max_sessions,
            waiting=args.max_waiting,
            clients_per_session=args.max_clients_per_session,
            buffered=args.max_buffered,
        ),
    )
    status, problem = EXIT_OK, None
    try:
        trio.run(serve, config)
    except (StartupError, HandoverError) as exc:
        status, problem = EXIT_ERROR, f"consoled: {exc}"
    except Exception as exc:
        # A bug: the last words go where every event goes, as an event (with
        # the traceback), not as a raw traceback on a stderr that may be broken.
        structlog.get_logger("consoled.daemon").critical("daemon.crashed", exc_info=exc)
        status = EXIT_ERROR
    finally:
        sink.close()  # bounded: the last events ("daemon.stopped") normally make it out
    if problem is not None:
        with contextlib.suppress(OSError):
            print(problem, file=sys.stderr, flush=True)
    return status


def cmd_wait(args: argparse.Namespace) -> int:
    """As ``docker wait``: block until each session has ended, print its exit status."""
    status = EXIT_OK
    with Client(os.path.join(state_dir_of(args), "control.sock"), timeout=None) as client:
        for name in args.sessions:
            try:
                reply = client.call(ev.Wait(name), ev.Waited)
            except ClientError as exc:
                if isinstance(exc, DaemonUnavailable):
                    raise
                print(f"consoled: {exc.message}", file=sys.stderr)
                status = EXIT_ERROR
                continue
            print("unknown" if reply.exit_code is None else reply.exit_code, flush=True)
    return status


def cmd_reexec(args: argparse.Namespace) -> int:
    with Client(os.path.join(state_dir_of(args), "control.sock"), timeout=args.timeout) as client:
        reply = client.call(ev.Reexec(), ev.Reexeced)
    print(
        f"consoled {reply.version} (pid {reply.pid}) took over {reply.sessions} sessions",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_socket(args: argparse.Namespace) -> int:
    with connect(args) as client:
        reply = client.call(ev.CreateSocket(args.session), ev.SocketCreated)
    print(reply.path)
    return EXIT_OK


def _age(created: str, now: float) -> str:
    from datetime import datetime

    seconds = max(0, int(now - datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def session_json(info: ev.SessionInfo) -> dict[str, object]:
    """The stable ``ls --json`` object of one session."""
    return {
        "session": info.session,
        "id": info.id,
        "exec": info.exec,
        "state": str(info.state),
        "clients": info.clients,
        "rows": info.rows,
        "cols": info.cols,
        "created": info.created,
        "bytes_out": info.bytes_out,
        "exited_at": info.exited_at,
        "socket": info.socket,
        "log_path": info.log_path,
        "scrollback_bytes": info.scrollback_bytes,
        "exit_code": info.exit_code,
    }


def cmd_ls(args: argparse.Namespace) -> int:
    wanted = None
    if args.name is not None:
        try:
            wanted = SessionName.parse(args.name)
        except InvalidName as exc:
            raise UsageError(str(exc)) from None
    with connect(args) as client:
        sessions = client.list_sessions(None if wanted is None else wanted.id)
    if wanted is not None and wanted.exec is not None:
        sessions = [s for s in sessions if s.session == str(wanted)]
    if args.json:
        import json  # not at the top: attach must start fast

        # dumps, not dump: json.dump writes every token separately (200,000
        # writes for 4,000 sessions, most of `ls --json`'s time).
        sys.stdout.write(json.dumps([session_json(s) for s in sessions]) + "\n")
        return EXIT_OK
    now = time.time()
    rows = [("SESSION", "STATE", "CLIENTS", "SIZE", "AGE", "OUTPUT")]
    for s in sessions:
        name = s.session if s.exec is None else f"  {s.session}"
        size = f"{s.rows}x{s.cols}" if s.rows and s.cols else "-"
        state = str(s.state)
        if s.state is ev.SessionState.EXITED:
            # As docker ps -a: "exited (3) 5s ago".
            code = "?" if s.exit_code is None else str(s.exit_code)
            when = f" {_age(s.exited_at, now)} ago" if s.exited_at else ""
            state = f"exited ({code}){when}"
        rows.append(
            (
                name,
                state,
                str(s.clients),
                size,
                _age(s.created, now),
                _human_bytes(s.bytes_out),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def _write_stdout(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


class _LogsOutput:
    """Where ``consoled logs`` writes: to a terminal, queries taken out and modes reset at the end.

    The output holds the queries the session's programs asked their terminal
    (busybox ash asks for the cursor position at every prompt); the user's
    terminal would answer them, into the user's shell.
    """

    def __init__(self, raw: bool) -> None:
        self.filter: OutputFilter | None = None
        if not raw and sys.stdout.isatty():
            from .terminal.filter import OutputFilter

            self.filter = OutputFilter()

    def write(self, data: bytes) -> None:
        if self.filter is not None:
            data = self.filter.feed(data)
        _write_stdout(data)

    def close(self) -> None:
        if self.filter is not None:
            with contextlib.suppress(OSError):
                _write_stdout(self.filter.flush() + self.filter.reset_sequence())


def cmd_logs(args: argparse.Namespace) -> int:
    path = os.path.join(state_dir_of(args), "control.sock")
    timeout = None if args.follow else 30.0
    client = Client(path, timeout=timeout)
    output = _LogsOutput(args.raw)
    # The same window of time when following on after a restart; the tail was taken already.
    window = functools.partial(
        ev.Logs, args.session, since=args.since, until=args.until, timestamps=args.timestamps
    )
    try:
        request = window(follow=args.follow, tail=args.tail)
        attached = client.call(request, ev.Attached)
        try:
            while True:
                event = client.receive()
                if event is None:
                    raise DaemonUnavailable("consoled closed the connection before the log ended")
                if isinstance(event, ev.Output):
                    output.write(event.data)
                elif isinstance(event, ev.Ended):
                    if event.reason is ev.EndReason.RESTARTING and event.resume is not None:
                        # The daemon handed over to its successor: follow on from there.
                        client.close()
                        client = Client(path, timeout=timeout, wait=10.0)
                        request = window(follow=True, resume=event.resume, uid=attached.uid)
                        attached = client.call(request, ev.Attached)
                        continue
                    if event.reason is ev.EndReason.SHUTDOWN:
                        print("consoled: the consoled daemon stopped", file=sys.stderr)
                        return EXIT_ERROR
                    if event.reason is ev.EndReason.LAGGED:
                        print(f"consoled: {event.message}", file=sys.stderr)
                        return EXIT_ERROR
                    return EXIT_OK
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            # `consoled logs x | head`: the reader has all it wanted.
            _quiet_stdout()
            return EXIT_OK
    finally:
        output.close()
        client.close()


def cmd_rm(args: argparse.Namespace) -> int:
    status = EXIT_OK
    with connect(args) as client:
        for name in args.sessions:
            try:
                request = ev.Remove(name, force=args.force, keep_logs=args.keep_logs)
                reply = client.call(request, ev.Removed)
            except ClientError as exc:
                if isinstance(exc, DaemonUnavailable):
                    raise
                print(f"consoled: {exc.message}", file=sys.stderr)
                status = EXIT_ERROR
                continue
            print(reply.session, flush=True)
            if reply.state is ev.SessionState.RUNNING:
                print(f"consoled: {name} was running: its terminal was closed", file=sys.stderr)
    return status


def cmd_resize(args: argparse.Namespace) -> int:
    with connect(args) as client:
        reply = client.call(ev.Resize(args.session, args.rows, args.cols), ev.Resized)
    print(f"{reply.rows}x{reply.cols}")  # as ls shows sizes
    return EXIT_OK


def cmd_rename(args: argparse.Namespace) -> int:
    with connect(args) as client:
        reply = client.call(ev.Rename(args.session, args.new), ev.Renamed)
    print(reply.new)
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    state_dir = state_dir_of(args)
    with connect(args) as client:
        info = client.call(ev.GetInfo(), ev.DaemonInfo)
    if args.json:
        fields = (
            "version",
            "pid",
            "state_dir",
            "control_socket",
            "console_socket",
            "log_dir",
            "sessions",
            "size_policy",
            "scrollback",
            "started",
        )
        import json

        print(json.dumps({f: getattr(info, f) for f in fields}))
    elif args.console_socket:
        print(info.console_socket)
    else:
        print(f"consoled {info.version}, pid {info.pid}, serving {state_dir} since {info.started}")
        print(f"console socket:  {info.console_socket}")
        print(f"control socket:  {info.control_socket}")
        print(f"log directory:   {info.log_dir or '-'}")
        print(f"sessions:        {info.sessions}")
        print(f"size policy:     {info.size_policy}; scrollback {info.scrollback} bytes")
    return EXIT_OK


def _attach_options(args: argparse.Namespace, session: str) -> object:
    from .client.attach import AttachOptions

    try:
        keys = parse_detach_keys(args.detach_keys)
    except DetachKeysError as exc:
        raise UsageError(str(exc)) from None
    # Default: the current screen, as tmux. --replay/--no-replay: raw bytes instead.
    replay = 0 if args.no_replay else args.replay
    return AttachOptions(
        session=session,
        read_only=getattr(args, "read_only", False),
        detach_keys=keys,
        detach_wait=args.detach_wait,
        replay=replay,
        tty=not args.no_tty,
        screen=replay is None,
        history=args.history or 0,
        detach_on_eof=args.detach_on_eof,
    )


def cmd_attach(args: argparse.Namespace) -> int:
    from .client.attach import AttachOptions, attach

    options = _attach_options(args, args.session)
    assert isinstance(options, AttachOptions)
    return attach(os.path.join(state_dir_of(args), "control.sock"), options)


def _exec_env(given: Sequence[str]) -> tuple[str, ...]:
    """docker's ``-e``: ``NAME=VALUE``, or ``NAME`` for this environment's value if it is set."""
    env = []
    for item in given:
        name, sep, _ = item.partition("=")
        if not name:
            raise UsageError(f"invalid environment variable {item!r}: use NAME=VALUE or NAME")
        if sep:
            env.append(item)
        elif name in os.environ:
            env.append(f"{name}={os.environ[name]}")
    return tuple(env)


def cmd_exec(args: argparse.Namespace) -> int:
    from .client.attach import AttachOptions, attach
    from .client.container import ContainerError, container_env, container_user, merge_env
    from .client.execute import EXIT_CANNOT_RUN, Runtime, run_exec

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError(
            "consoled exec needs a command after the container id: ID -- CMD [ARGS...]"
        )
    if args.workdir is not None and not args.workdir.startswith("/"):
        raise UsageError(f"the working directory must be an absolute path, not {args.workdir!r}")
    options = _attach_options(args, "")
    assert isinstance(options, AttachOptions)
    import shutil

    path = args.runtime or shutil.which("runc")
    if path is None:
        raise ClientError(
            "runc was not found on PATH; name the runtime with --runtime PATH or $CONSOLED_RUNTIME"
        )
    runtime = Runtime(
        path, root=args.root, global_args=tuple(args.runtime_arg), workdir=args.workdir
    )
    if args.user is not None:
        try:
            user = container_user(args.user, runtime.prefix, args.id)
        except ContainerError as exc:
            print(f"consoled: {exc}", file=sys.stderr)
            return EXIT_CANNOT_RUN  # as docker exec -u with a user the container does not have
        runtime = dataclasses.replace(runtime, user=user)
    additions = _exec_env(args.env)
    if additions:
        # The container's environment and these, as docker gives them (see .client.container).
        try:
            env = merge_env(container_env(runtime.prefix, args.id), additions)
        except ContainerError as exc:
            print(f"consoled: {exc}; passing only the -e variables", file=sys.stderr)
            env = list(additions)
        runtime = dataclasses.replace(runtime, env=tuple(env))
    return run_exec(
        os.path.join(state_dir_of(args), "control.sock"),
        container=args.id,
        command=command,
        runtime=runtime,
        options=options,
        attach=attach,
        keep=args.keep,
        detach=args.detach,
    )


# --- parser -----------------------------------------------------------------------


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


def build_parser() -> argparse.ArgumentParser:
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
        "--max-connections", type=_positive_int, default=4096, metavar="N",
        help="open control connections (default: %(default)s)",
    )  # fmt: skip
    limits.add_argument(
        "--idle-timeout", type=float, default=600.0, metavar="SECONDS",
        help="close a control connection idle between requests this long (default: %(default)s)",
    )  # fmt: skip
    limits.add_argument(
        "--max-sessions", type=_positive_int, default=100_000, metavar="N",
        help="sessions in every state together (default: %(default)s)",
    )  # fmt: skip
    limits.add_argument(
        "--max-waiting", type=_positive_int, default=4096, metavar="N",
        help="sessions waiting for their master (default: %(default)s)",
    )  # fmt: skip
    limits.add_argument(
        "--max-clients-per-session", type=_positive_int, default=64, metavar="N",
        help="attached clients and log followers per session (default: %(default)s)",
    )  # fmt: skip
    limits.add_argument(
        "--max-buffered", type=parse_bytes, default=64 * 1024 * 1024, metavar="BYTES",
        help="unfinished messages held for all clients together (default: 64M)",
    )  # fmt: skip
    p.add_argument(
        "--no-terminal-state",
        action="store_true",
        help="keep no screen per session: attach replays raw output instead of drawing the "
        "current screen, and terminal queries go unanswered (saves CPU on floods of queries)",
    )
    p.add_argument(
        "--shutdown-grace", type=float, default=2.0, metavar="SECONDS", help=argparse.SUPPRESS
    )
    # journald's native socket, when $JOURNAL_STREAM says stderr is the journal (for tests).
    p.add_argument("--journal-socket", metavar="PATH", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

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
    for command in sub.choices.values():
        command.set_defaults(usage_of=command)
    return parser


def _quiet_stdout() -> None:
    """Whoever read our stdout has gone: let nothing more be written, nor fail, there."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "state_dir"):
        args.state_dir = None
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # here, where a reader that has gone is handled
        return status
    except UsageError as exc:
        command = getattr(args, "usage_of", parser)
        command.print_usage(sys.stderr)
        print(f"{command.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `consoled ls | head -1`: the reader has all it wanted.
        _quiet_stdout()
        return EXIT_OK
    except ClientError as exc:
        print(f"consoled: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except ProtocolError as exc:
        print(f"consoled: protocol error talking to the daemon: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # The machine said no (a full disk, a missing directory): say what, not where.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"consoled: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
