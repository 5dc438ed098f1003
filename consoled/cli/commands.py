"""The client commands: thin, fast clients of the control protocol."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from ..client.conn import RESTART_WAIT, Client, ClientError, DaemonUnavailable
from ..client.detachkeys import DetachKeysError, parse_detach_keys
from ..names import InvalidName, SessionName
from ..protocol import ProtocolError
from ..protocol import events as ev
from .common import EXIT_ERROR, EXIT_OK, UsageError, connect, quiet_stdout, state_dir_of

if TYPE_CHECKING:
    from ..terminal.filter import OutputFilter


def _each_session(names: Sequence[str], one: Callable[[str], None]) -> int:
    """Do ``one`` for each session, as docker's commands on several containers do.

    A session the daemon refuses is named on stderr and the rest go on; the
    status is 1 if any was refused.  A daemon that is gone ends it all.
    """
    status = EXIT_OK
    for name in names:
        try:
            one(name)
        except DaemonUnavailable:
            raise
        except ClientError as exc:
            print(f"consoled: {exc.message}", file=sys.stderr)
            status = EXIT_ERROR
    return status


def cmd_wait(args: argparse.Namespace) -> int:
    """As ``docker wait``: block until each session has ended, print its exit status.

    The wait goes on through a reexec, and through a crash the daemon's service
    manager restarts it from (the sessions survive those); a daemon that stops
    ends it with an error.
    """
    with Client(os.path.join(state_dir_of(args), "control.sock"), timeout=None) as client:

        def wait(name: str) -> None:
            reply = client.call(ev.Wait(name), ev.Waited, again_if_lost=True)
            print("unknown" if reply.exit_code is None else reply.exit_code, flush=True)

        return _each_session(args.sessions, wait)


#: Seconds an answer sent just before the daemon exited has to be read.
MAIN_PID_GRACE = 1.0


def _watch_main_pid(client: Client, env: Mapping[str, str]) -> Callable[[], bool]:
    """Stop waiting if the daemon being replaced dies (``$MAINPID``, which
    systemd sets for ``ExecReload``): a crash during the reexec.  Otherwise the
    reload would wait for an answer that never comes, and systemd would not
    restart the daemon meanwhile: no terminal would be drained.

    Returns:
        Whether it died.
    """
    text = env.get("MAINPID", "")
    if not text.isdigit() or int(text) <= 0:
        return lambda: False
    try:
        pidfd = os.pidfd_open(int(text))
    except ProcessLookupError:
        client.sock.shutdown(socket.SHUT_RDWR)
        return lambda: True
    except OSError:
        return lambda: False
    died = threading.Event()

    def watch() -> None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)  # readable once the process has exited
        poller.poll()
        os.close(pidfd)
        died.set()
        time.sleep(MAIN_PID_GRACE)  # an answer sent before it exited is read first
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=watch, name="consoled-mainpid", daemon=True).start()
    return died.is_set


def cmd_reexec(args: argparse.Namespace) -> int:
    with Client(os.path.join(state_dir_of(args), "control.sock"), timeout=args.timeout) as client:
        died = _watch_main_pid(client, os.environ)
        try:
            reply = client.call(ev.Reexec(), ev.Reexeced)
        except DaemonUnavailable:
            if not died():
                raise
            raise DaemonUnavailable(
                f"the daemon (pid {os.environ['MAINPID']}) died during the reexec; "
                "its service manager starts it again"
            ) from None
    print(
        f"consoled {reply.version} (pid {reply.pid}) took over {reply.sessions} "
        + ("session" if reply.sessions == 1 else "sessions"),
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
            from ..terminal.filter import OutputFilter

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
    # The same window of time when going on after a restart; the tail was taken already.
    window = functools.partial(
        ev.Logs,
        args.session,
        follow=args.follow,
        since=args.since,
        until=args.until,
        timestamps=args.timestamps,
    )
    #: Where the stream goes on if the daemon dies (see ev.Output.offset and .cursor).
    place = _LogPlace()
    #: Output of a resumed stream that was written already (see _LogPlace.since).
    skip = 0
    try:
        attached = client.call(window(tail=args.tail), ev.Attached, again_if_lost=True)
        try:
            while True:
                try:
                    event = client.receive()
                except (DaemonUnavailable, ProtocolError):
                    if not place.known:
                        raise
                    event = None  # the connection broke (inside a message, perhaps): as closed
                if event is None:
                    # The daemon died (a crash: no `ended`), or a reexec could
                    # not wait for us: go on with the one that took over.
                    client.close()
                    if place.known:
                        client, attached, skip = _logs_again(
                            path, window, place, attached.uid, timeout
                        )
                    elif not place.since:
                        # Cut off before any output: the request starts again.
                        client = Client(path, timeout=timeout, wait=RESTART_WAIT)
                        attached = client.call(
                            window(tail=args.tail), ev.Attached, again_if_lost=True
                        )
                    else:
                        raise DaemonUnavailable(
                            "consoled closed the connection before the log ended"
                        )
                    continue
                if isinstance(event, ev.Output):
                    data = event.data
                    if skip:
                        data, skip = data[skip:], max(skip - len(data), 0)
                    output.write(data)
                    place.update(event)
                elif isinstance(event, ev.Ended):
                    if event.reason is ev.EndReason.RESTARTING and event.resume is not None:
                        # The daemon handed over to its successor: go on from there.
                        client.close()
                        place = _LogPlace(offset=event.resume)
                        client, attached, skip = _logs_again(
                            path, window, place, attached.uid, timeout
                        )
                        continue
                    if event.reason is ev.EndReason.SHUTDOWN:
                        print("consoled: the consoled daemon stopped", file=sys.stderr)
                        return EXIT_ERROR
                    if event.reason is ev.EndReason.LAGGED:
                        print(f"consoled: {event.message}", file=sys.stderr)
                        return EXIT_ERROR
                    return EXIT_OK
                elif isinstance(event, ev.Error):
                    # The stream cannot go on (a log file it cannot read): what
                    # came so far was written, and this says why it stopped.
                    print(f"consoled: {event.message}", file=sys.stderr)
                    return EXIT_ERROR
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            # `consoled logs x | head`: the reader has all it wanted.
            quiet_stdout()
            return EXIT_OK
    finally:
        output.close()
        client.close()


class _LogPlace:
    """Where a ``logs`` stream stands: a stream offset, or a cursor in the log files."""

    __slots__ = ("cursor", "offset", "since")

    def __init__(self, offset: int | None = None) -> None:
        self.offset = offset
        self.cursor: str | None = None
        #: Bytes of output after that place, from messages that said none (a
        #: message cut in several says it on its last): a stream resumed there
        #: sends them again, and they are not written twice.
        self.since = 0

    @property
    def known(self) -> bool:
        return self.offset is not None or self.cursor is not None

    def update(self, event: ev.Output) -> None:
        if event.cursor is not None:
            self.offset, self.cursor, self.since = None, event.cursor, 0
        elif event.offset is not None:
            self.offset, self.cursor, self.since = event.offset, None, 0
        else:
            self.since += len(event.data)


def _logs_again(
    path: str,
    window: Callable[..., ev.Logs],
    place: _LogPlace,
    uid: str,
    timeout: float | None,
) -> tuple[Client, ev.Attached, int]:
    """Go on at ``place`` with the daemon that took over (after a reexec), or was
    started again (after a crash), waited for up to RESTART_WAIT seconds.

    Returns:
        The connection, its ``attached``, and how many bytes of the output
        that follows were written already (``place.since``; none if output
        was lost between, as the stream then starts elsewhere).

    Raises:
        DaemonUnavailable: no daemon came back in time.
        ClientError: it cannot go on with the session any more (it was
            removed, or its name reused).
    """
    client = Client(path, timeout=timeout, wait=RESTART_WAIT)
    try:
        request = window(resume=place.offset, cursor=place.cursor, uid=uid)
        attached = client.call(request, ev.Attached, again_if_lost=True)
    except BaseException:
        client.close()
        raise
    skip = place.since
    if place.offset is not None and attached.offset > place.offset:
        print(
            f"consoled: the daemon restarted; {attached.offset - place.offset} bytes of output "
            "were lost before this client could go on",
            file=sys.stderr,
        )
        skip = 0
    if attached.gap:
        print(
            "consoled: the daemon restarted, and the log file this client was reading "
            "has rotated away since; what follows starts at the oldest file kept",
            file=sys.stderr,
        )
        skip = 0
    return client, attached, skip


def cmd_rm(args: argparse.Namespace) -> int:
    with connect(args) as client:

        def remove(name: str) -> None:
            request = ev.Remove(name, force=args.force, keep_logs=args.keep_logs)
            reply = client.call(request, ev.Removed)
            print(reply.session, flush=True)
            if reply.state is ev.SessionState.RUNNING:
                print(f"consoled: {name} was running: its terminal was closed", file=sys.stderr)

        return _each_session(args.sessions, remove)


def cmd_resize(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resize = ev.Resize(args.session, args.rows, args.cols)
        reply = client.call(resize, ev.Resized, again_if_lost=True)  # the same size twice is once
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
        info = client.call(ev.GetInfo(), ev.DaemonInfo, again_if_lost=True)
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
    from ..client.attach import AttachOptions

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
    from ..client.attach import AttachOptions, attach

    options = _attach_options(args, args.session)
    assert isinstance(options, AttachOptions)
    return attach(os.path.join(state_dir_of(args), "control.sock"), options).status


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
    from ..client.attach import AttachOptions, attach
    from ..client.container import (
        ContainerError,
        container_process,
        container_state,
        container_user,
        merge_env,
    )
    from ..client.execute import EXIT_CANNOT_RUN, Runtime, run_exec
    from ..frozen import replace

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
    # `RUNTIME state`, asked once for the user and the process (an error is not kept).
    state = functools.cache(functools.partial(container_state, runtime.prefix, args.id))
    if args.user is not None:
        try:
            user = container_user(args.user, state, args.id)
        except ContainerError as exc:
            print(f"consoled: {exc}", file=sys.stderr)
            return EXIT_CANNOT_RUN  # as docker exec -u with a user the container does not have
        runtime = replace(runtime, user=user)
    additions = _exec_env(args.env)
    if additions or args.user is not None:
        # The container's environment and these, as docker gives them, and the
        # process the user's groups are given with (see .client.container).
        try:
            process = container_process(state, args.id)
        except ContainerError as exc:
            lost = ["with the -e variables only"] if additions else []
            if args.user is not None:
                lost.append("without the user's groups")
            print(f"consoled: {exc}; running {' and '.join(lost)}", file=sys.stderr)
            process = {}
        if additions:
            env = merge_env(process.get("env", []), additions)
            runtime = replace(runtime, env=tuple(env))
        if args.user is not None and process:
            runtime = replace(runtime, process=process)
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
