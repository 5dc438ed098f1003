"""The command line's errors and limits, against a real daemon (or none).

Every failure is one clear line on stderr and exit status 1 (an error) or 2
(usage), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from consoled.cli import build_parser
from consoled.protocol import NEED_DATA, PROTOCOL_VERSION, Connection, ErrorCode, Role
from consoled.protocol import events as ev
from tests.conftest import BundleFactory
from tests.support.cli import CLI_TIMEOUT, cli
from tests.support.client import AsyncClient, wait_output
from tests.support.daemon import DaemonProcess
from tests.support.holder import PtyHolder
from tests.support.piped import piped_cli
from tests.support.runtime import Runtime

#: Commands naming one session, the session called ``nosuch``.
SESSION_COMMANDS = [
    ("logs", "nosuch"),
    ("logs", "-f", "nosuch"),
    ("rm", "nosuch"),
    ("rm", "--force", "nosuch"),
    ("attach", "--no-tty", "nosuch"),
    ("resize", "nosuch", "24", "80"),
    ("rename", "nosuch", "other"),
]
#: The command line as the tests run it.
CONSOLED = (sys.executable, "-m", "consoled")
INVALID_NAMES = {
    "two-slashes": ("bad/na/me", "at most one '/'"),
    "dash": ("-x", "invalid container id '-x'"),
    "too-long": ("a" * 129, "at most 128 characters"),
    "long-exec": ("a/" + "b" * 129, "invalid exec name"),
    "empty-exec": ("a/", "invalid exec name ''"),
    "space": ("a b", "invalid container id 'a b'"),
}


def stderr_of(result: subprocess.CompletedProcess[bytes]) -> str:
    """The stderr of a failed command, checked to be clean: one message, no traceback."""
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    assert err.strip(), "no message on stderr"
    assert result.stdout == b"", result.stdout
    return err


def usage_error(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 2, result
    return stderr_of(result)


def error(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 1, result
    err = stderr_of(result)
    assert len(err.splitlines()) == 1, err
    return err


# --- no daemon ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("ls",),
        ("ls", "--json"),
        ("info",),
        ("socket", "web1"),
        ("logs", "web1"),
        ("logs", "-f", "web1"),
        ("rm", "web1"),
        ("attach", "--no-tty", "web1"),
        ("resize", "web1", "24", "80"),
        ("rename", "web1", "web2"),
    ],
    ids=" ".join,
)
async def test_daemon_not_running(short_tmp: Path, argv: tuple[str, ...]) -> None:
    absent = DaemonProcess(short_tmp / "none")  # never started: only its environment is used
    result = await cli(absent, *argv)
    err = error(result)
    assert absent.control_socket in err, err
    assert "not running" in err, err


async def test_stale_control_socket(short_tmp: Path) -> None:
    # A daemon that was killed leaves its socket file: nothing listens there.
    absent = DaemonProcess(short_tmp)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(absent.control_socket)
    result = await cli(absent, "ls")
    err = error(result)
    assert absent.control_socket in err and "not running" in err, err


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", SESSION_COMMANDS, ids=" ".join)
async def test_unknown_session(daemon: DaemonProcess, argv: tuple[str, ...]) -> None:
    err = error(await cli(daemon, *argv))
    assert "no session named 'nosuch'" in err, err


@pytest.mark.parametrize(("name", "reason"), INVALID_NAMES.values(), ids=INVALID_NAMES.keys())
async def test_invalid_name_is_a_usage_error(daemon: DaemonProcess, name: str, reason: str) -> None:
    # `--` so that `-x` is taken as the name, not as an option.
    for argv in (("socket", "--", name), ("logs", "--", name), ("rm", "--", name)):
        err = usage_error(await cli(daemon, *argv))
        assert reason in err, err
    assert await daemon_sessions(daemon) == []


async def test_invalid_names_refused_by_the_daemon(client: AsyncClient) -> None:
    """Clients other than the CLI get the daemon's own check."""
    for name, reason in INVALID_NAMES.values():
        reply = await client.request(ev.CreateSocket(name))
        assert isinstance(reply, ev.Error), reply
        assert reply.code is ErrorCode.INVALID_NAME
        assert reason in reply.message
    reply = await client.request(ev.ListSessions("bad/id"))
    assert isinstance(reply, ev.Error) and reply.code is ErrorCode.INVALID_NAME


async def test_option_like_name_without_separator(daemon: DaemonProcess) -> None:
    err = usage_error(await cli(daemon, "socket", "-x"))
    assert "usage:" in err


async def test_ls_invalid_name(daemon: DaemonProcess) -> None:
    err = usage_error(await cli(daemon, "ls", "--", "-x"))
    assert "invalid container id '-x'" in err, err
    err = usage_error(await cli(daemon, "ls", "bad/na/me"))
    assert "at most one '/'" in err, err
    # The usage is the command's, not the top level's.
    assert err.startswith("usage: consoled ls "), err


async def test_name_in_use(daemon: DaemonProcess) -> None:
    first = await cli(daemon, "socket", "web1")
    assert first.returncode == 0, first.stderr
    err = error(await cli(daemon, "socket", "web1"))
    assert "session web1 already exists (waiting)" in err, err
    # The first socket is untouched.
    (entry,) = await daemon_sessions(daemon)
    assert entry.state is ev.SessionState.WAITING
    assert entry.socket == first.stdout.decode().strip()
    other = await cli(daemon, "socket", "web1/x")
    assert other.returncode == 0, other.stderr
    err = error(await cli(daemon, "rename", "web1", "web1/x"))
    assert "session web1/x already exists" in err, err


async def test_exited_name_in_use_says_rm(
    daemon: DaemonProcess,
    runc: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("again")
    path = (await cli(daemon, "socket", cid)).stdout.decode().strip()
    await runc.run(cid, bundle(["true"]), path)
    await daemon.wait_event("session.exited", session=cid)
    err = error(await cli(daemon, "socket", cid))
    assert f"consoled rm {cid}" in err, err


async def test_longest_name_socket_fits_and_works(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("long")
    cid += "x" * (128 - len(cid))
    exec_name = "e" * 128
    paths = []
    for name in (cid, f"{cid}/{exec_name}"):
        result = await cli(daemon, "socket", name)
        assert result.returncode == 0, result.stderr
        path = result.stdout.decode().strip()
        assert os.path.isabs(path) and len(os.fsencode(path)) < 108, path
        paths.append(path)
    await runtime.run(cid, bundle(["sh", "-c", "echo init-up; exec cat"]), paths[0])
    await daemon.wait_event("session.running", session=cid)
    await runtime.exec(cid, ["echo", "exec-up"], paths[1])
    await daemon.wait_event("session.exited", session=f"{cid}/{exec_name}")
    result = await cli(daemon, "logs", f"{cid}/{exec_name}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"exec-up\r\n"
    result = await cli(daemon, "ls", "--json", cid)
    assert result.returncode == 0, result.stderr
    states = {e["session"]: e["state"] for e in json.loads(result.stdout)}
    assert states == {cid: "running", f"{cid}/{exec_name}": "exited"}


async def daemon_sessions(daemon: DaemonProcess) -> list[ev.SessionInfo]:
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        return await client.list_sessions()
    finally:
        await client.aclose()


# --- help -----------------------------------------------------------------------------------


def test_every_command_and_option_has_help() -> None:
    """Walks the parser: each command has a summary and a description, each option a help."""
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {action.dest: action.help for action in sub._choices_actions}
    missing = []
    for name, command in sub.choices.items():
        if not summaries.get(name):
            missing.append(f"{name}: no summary")
        if not command.description:
            missing.append(f"{name}: no description")
        for action in command._actions:
            if action.help is argparse.SUPPRESS:
                continue  # hidden on purpose (options for the tests)
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    missing += [f"consoled {a.dest}" for a in parser._actions if not a.help]
    assert not missing, missing
    assert len(sub.choices) >= 12


async def test_every_help_prints_without_a_traceback(short_tmp: Path) -> None:
    absent = DaemonProcess(short_tmp / "none")  # --help needs no daemon
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for argv in [("--help",), *((name, "--help") for name in sub.choices)]:
        result = await cli(absent, *argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert result.stderr == b"", (argv, result.stderr)
        usage = " ".join(("usage: consoled", *argv[:-1]))
        assert result.stdout.decode().startswith(usage), (argv, result.stdout[:200])


@pytest.mark.parametrize(
    "argv",
    [
        ("attach", "c1"),
        ("--state-dir", "/x", "attach", "--no-replay", "--detach-keys", "ctrl-a,d", "c1/e"),
        ("--state-dir=/x", "logs", "-f", "--tail", "3", "c1"),
        ("--state-dir", "attach", "ls", "--json"),  # a directory called attach
        ("exec", "--user", "7", "c1", "--", "sh", "-c", "id"),
        ("serve", "--log-dir", "/l", "--max-sessions", "9"),
        ("ls",),
    ],
)
def test_a_parser_for_one_command_parses_as_the_whole_one(argv: tuple[str, ...]) -> None:
    """``main`` defines only the command on its line (5 ms saved per attach): same result."""
    whole = vars(build_parser().parse_args(argv))
    one = vars(build_parser(argv).parse_args(argv))
    assert whole.pop("usage_of").prog == one.pop("usage_of").prog
    assert one == whole


def test_the_attach_command_imports_only_what_it_needs() -> None:
    """What ``consoled attach`` loads before it connects: no trio, no structlog, and no
    dataclasses (which bring inspect, ast, dis and tokenize: 5 ms of every attach)."""
    code = (
        "import sys; from consoled.cli import build_parser; "
        "build_parser(['attach', 'x']).parse_args(['attach', 'x']); "
        "import consoled.client.attach; print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, timeout=CLI_TIMEOUT
    )
    loaded = set(out.stdout.decode().split())
    assert "consoled.client.attach" in loaded
    assert not loaded & {"trio", "structlog", "dataclasses", "inspect"}, sorted(
        loaded & {"trio", "structlog", "dataclasses", "inspect"}
    )


# --- output to a reader that has gone -------------------------------------------------------


async def closed_pipe(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``consoled ARGS`` writing to a pipe whose reader has gone (EPIPE on the first write)."""
    r, w = os.pipe()
    os.close(r)
    try:
        with trio.fail_after(CLI_TIMEOUT):
            return await trio.run_process(
                [sys.executable, "-m", "consoled", *args], env=daemon.env(), stdout=w,
                capture_stderr=True, check=False, stdin=subprocess.DEVNULL,
            )  # fmt: skip
    finally:
        os.close(w)


async def test_output_to_a_closed_pipe_is_no_error(
    daemon: DaemonProcess,
    runc: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    # Was: `consoled ls | head -2` printed a BrokenPipeError traceback and exited 1.
    cid = container_id("pipe")
    path = (await cli(daemon, "socket", cid)).stdout.decode().strip()
    await runc.run(cid, bundle(["sh", "-c", "seq 1 20000; exec sleep 600"]), path)
    await wait_output(daemon.control_socket, cid, b"20000\r\n")
    for argv in (("ls",), ("ls", "--json"), ("info",), ("logs", cid), ("logs", "-t", cid)):
        result = await closed_pipe(daemon, *argv)
        assert (result.returncode, result.stderr) == (0, b""), (argv, result)
    # And as people type it (bash, for pipefail: the status is consoled's).
    for line in ("consoled ls | head -1", f"consoled logs {cid} | head -1"):
        script = f"set -o pipefail; {line.replace('consoled', shlex.join(CONSOLED))}"
        with trio.fail_after(CLI_TIMEOUT):
            result = await trio.run_process(
                ["bash", "-c", script], env=daemon.env(), capture_stdout=True,
                capture_stderr=True, check=False,
            )  # fmt: skip
        assert (result.returncode, result.stderr) == (0, b""), (line, result)
        assert len(result.stdout.splitlines()) == 1, result.stdout


# --- ls, confirmations, rename ----------------------------------------------------------------


async def test_ls_sorts_naturally_and_takes_one_session(daemon: DaemonProcess) -> None:
    for name in ("n10", "n1/s10", "n2", "n1/s2", "n1", "n1/s1"):
        assert (await cli(daemon, "socket", name)).returncode == 0
    result = await cli(daemon, "ls")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.decode().splitlines()[1:]]
    assert names == ["n1", "n1/s1", "n1/s2", "n1/s10", "n2", "n10"]
    # Was a usage error: one exec session, in both forms.
    result = await cli(daemon, "ls", "n1/s2")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.decode().splitlines()[1:]] == ["n1/s2"]
    result = await cli(daemon, "ls", "--json", "n1/s2")
    assert [e["session"] for e in json.loads(result.stdout)] == ["n1/s2"]
    result = await cli(daemon, "ls", "--json", "n1/s3")
    assert (result.returncode, json.loads(result.stdout)) == (0, [])


async def test_commands_confirm_what_they_did_on_stdout(daemon: DaemonProcess) -> None:
    """socket prints the path, rm each name removed, resize the size, rename the new name."""
    for name in ("c1", "c2", "c3"):
        assert (await cli(daemon, "socket", name)).stdout.startswith(b"/")
    done = {
        ("resize", "c1", "40", "120"): "40x120\n",  # as ls shows sizes
        ("rename", "c1", "c4"): "c4\n",
        ("rm", "c2", "c3"): "c2\nc3\n",  # was: nothing at all
        ("rm", "--force", "c4"): "c4\n",
    }
    for argv, said in done.items():
        result = await cli(daemon, *argv)
        assert (result.returncode, result.stdout.decode()) == (0, said), (argv, result)
        assert result.stderr == b"", (argv, result.stderr)
    assert await daemon_sessions(daemon) == []


async def test_rm_and_wait_go_on_past_a_session_they_cannot_take(daemon: DaemonProcess) -> None:
    """As docker rm and docker wait: each refused name is said, the rest are done, status 1."""
    for name in ("m1", "m2"):
        assert (await cli(daemon, "socket", name)).returncode == 0
    result = await cli(daemon, "rm", "m1", "nosuch", "m2")
    assert (result.returncode, result.stdout) == (1, b"m1\nm2\n"), result
    assert result.stderr.decode().count("consoled: ") == 1 and "nosuch" in result.stderr.decode()
    result = await cli(daemon, "wait", "nosuch", "nosuch2")
    assert (result.returncode, result.stdout) == (1, b""), result
    assert result.stderr.decode().count("consoled: ") == 2, result.stderr
    assert await daemon_sessions(daemon) == []


async def test_wait_on_a_daemon_that_stops_says_so_at_once(
    daemon: DaemonProcess, nursery: trio.Nursery
) -> None:
    """A stopping daemon tells a ``wait`` it will not see the end: the client
    says so, and does not take the closed connection for a crash to wait out."""
    # Was: "consoled closed the connection", the same words as a crash.
    assert (await cli(daemon, "socket", "w1")).returncode == 0
    idle = await AsyncClient.connect(daemon.control_socket)  # between requests
    try:
        async with piped_cli(daemon, nursery, "wait", "w1") as waiting:
            await daemon.wait_event("client.waiting", session="w1")
            assert await daemon.stop() == 0
            told = await idle.receive()
            assert isinstance(told, ev.Error) and told.code is ErrorCode.SHUTTING_DOWN, told
            assert await waiting.wait(timeout=5) == 1
            await waiting.wait_for(b"\n", stderr=True)
            said = bytes(waiting.err).decode()
            assert said == "consoled: the daemon is stopping; w1 has not ended\n", said
            assert waiting.out == b""
    finally:
        await idle.aclose()


async def test_rename_refuses_what_would_split_a_container(daemon: DaemonProcess) -> None:
    for name in ("web1", "web1/sh-1", "web1/sh-2", "other"):
        assert (await cli(daemon, "socket", name)).returncode == 0
    # An exec stays in its container.
    err = error(await cli(daemon, "rename", "web1/sh-2", "other/x"))
    assert "exec of container web1" in err and "within its container" in err, err
    err = error(await cli(daemon, "rename", "web1/sh-2", "x"))
    assert "within its container" in err, err
    # A container with execs is renamed to a container id, not into a session of another.
    err = error(await cli(daemon, "rename", "web1", "other/web1"))
    assert "has exec sessions (web1/sh-1, web1/sh-2)" in err, err
    # Nor onto a container that has sessions already.
    err = error(await cli(daemon, "rename", "web1", "other"))
    assert "container other already has sessions (other)" in err, err
    # The new name is a session name, not a "container id".
    err = usage_error(await cli(daemon, "rename", "web1/sh-2", "a b"))
    assert "invalid new name 'a b'" in err and "container id" not in err, err
    assert err.startswith("usage: consoled rename "), err
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await client.request(ev.Rename("web1/sh-2", "a b"))
        assert isinstance(reply, ev.Error) and reply.code is ErrorCode.INVALID_NAME, reply
        assert "invalid new name 'a b'" in reply.message, reply
    finally:
        await client.aclose()
    # Nothing moved.
    names = [s.session for s in await daemon_sessions(daemon)]
    assert names == ["other", "web1", "web1/sh-1", "web1/sh-2"]
    # Within its container, and a whole container: fine.
    assert (await cli(daemon, "rename", "web1/sh-2", "web1/shell")).stdout == b"web1/shell\n"
    assert (await cli(daemon, "rename", "web1", "web2")).stdout == b"web2\n"
    names = [s.session for s in await daemon_sessions(daemon)]
    assert names == ["other", "web2", "web2/sh-1", "web2/shell"]


async def test_a_daemon_gone_mid_call_is_one_line(
    daemon: DaemonProcess, nursery: trio.Nursery
) -> None:
    """Commands waiting on the daemon when it dies (kill -9, no systemd) say so, in one line."""
    holder = await PtyHolder.start(nursery)
    r, w = os.pipe()  # a stdin that stays open: attach does not end on its own
    procs: dict[str, trio.Process] = {}
    try:
        path = (await cli(daemon, "socket", "gone")).stdout.decode().strip()
        assert await holder.hand([path]) == 1
        await holder.say(0, "hello")
        for argv in (("wait", "gone"), ("logs", "-f", "gone"), ("attach", "--no-tty", "gone")):
            procs[argv[0]] = await trio.lowlevel.open_process(
                [*CONSOLED, *argv], env=daemon.env(), stdin=r, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
        await daemon.wait_event("client.waiting", session="gone")
        await daemon.wait_event("client.attached", session="gone")
        logs = procs["logs"].stdout
        assert logs is not None
        with trio.fail_after(CLI_TIMEOUT):
            seen = b""
            while b"hello" not in seen:
                seen += await logs.receive_some(4096)  # following, then
        await daemon.stop(signal.SIGKILL)
        for command, proc in procs.items():
            assert proc.stderr is not None
            err = b""
            with trio.fail_after(CLI_TIMEOUT):  # attach tries to resume for 10 s
                while chunk := await proc.stderr.receive_some(4096):
                    err += chunk
                status = await proc.wait()
            text = err.decode()
            assert "Traceback" not in text, text
            assert len(text.strip().splitlines()) == 1, (command, text)
            # attach: EX_IOERR, the connection was lost and could not be resumed.
            assert status == (74 if command == "attach" else 1), (command, status, text)
    finally:
        os.close(r)
        os.close(w)
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await holder.aclose()


async def _sh(env: dict[str, str], script: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(CLI_TIMEOUT):
        return await trio.run_process(
            ["sh", "-c", script], env=env, capture_stdout=True, capture_stderr=True, check=False
        )


async def test_a_closed_stdin_stdout_or_stderr_is_said_never_a_traceback(
    daemon: DaemonProcess,
) -> None:
    """As coreutils do: no output can be given on a closed stdout, so that is the
    error; a closed stdin or stderr is /dev/null."""
    # Was: AttributeError tracebacks ('NoneType' object has no attribute ...).
    consoled = shlex.join([sys.executable, "-m", "consoled"])
    env = daemon.env()
    for command in ("ls", "logs nosuch", "attach --no-tty nosuch", "socket c1"):
        result = await _sh(env, f"exec {consoled} {command} >&-")
        assert result.returncode == 1, (command, result)
        assert result.stderr == b"consoled: standard output is closed\n", (command, result)
    result = await _sh(env, f"exec {consoled} socket c2 <&- 2>&-")
    assert result.returncode == 0, result
    assert result.stdout.decode().strip().endswith(".sock"), result
    result = await _sh(env, f"exec {consoled} ls nosuch-container 2>&-")
    assert (result.returncode, result.stderr) == (0, b""), result


async def test_a_daemon_started_with_its_standard_fds_closed_keeps_them_for_dev_null(
    short_tmp: Path,
) -> None:
    """Nothing the daemon opens lands on fd 0, 1 or 2, where its log lines go."""
    # Was: its event loop's epoll on fd 1 and a socket of trio's on fd 2, into
    # which it wrote its log; a pty master could as well have landed there.
    state = short_tmp / "closed"
    consoled = shlex.join([sys.executable, "-m", "consoled"])
    proc = await trio.lowlevel.open_process(
        ["sh", "-c", f"exec {consoled} serve --state-dir {state} <&- >&- 2>&-"]
    )
    try:
        env = dict(os.environ, CONSOLED_STATE_DIR=str(state))
        with trio.fail_after(CLI_TIMEOUT):
            while True:  # the socket appearing is the only sign (no stderr to read)
                result = await _sh(env, f"exec {consoled} ls")
                if result.returncode == 0:
                    break
                await trio.sleep(0.05)
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{proc.pid}/fd/{fd}") == os.devnull, fd
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(CLI_TIMEOUT):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0


def _fake_daemon(path: Path, answer: Callable[[ev.Event], list[ev.Event]]) -> threading.Thread:
    """A daemon that dies on its first client's request without a word (a crash),
    then, started again on the same socket, answers the next with ``answer``."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        with server:
            for survives in (False, True):
                conn, _ = server.accept()
                with conn:
                    proto = Connection(Role.SERVER)
                    requests: list[ev.Event] = []
                    while len(requests) < 2:  # hello, then the request pipelined with it
                        event = proto.next_event()
                        if event is NEED_DATA:
                            proto.receive_data(conn.recv(65536))
                        elif isinstance(event, ev.Event):
                            requests.append(event)
                    if survives:
                        replies = [ev.Welcome(PROTOCOL_VERSION, "fake", os.getpid())]
                        conn.sendall(b"".join(proto.send(e) for e in replies + answer(requests[1])))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("command", ["logs", "attach", "wait", "ls", "info", "resize"])
async def test_a_request_the_daemon_died_on_goes_to_the_one_that_comes_back(
    short_tmp: Path, command: str
) -> None:
    """A crash between a request and its reply (a service manager starts the
    daemon again on the same socket): every command whose request may be
    answered twice sends it again."""

    # Was, for logs and attach: "consoled closed the connection", status 1
    # (found by a soak of readers through random kills).
    def answer(request: ev.Event) -> list[ev.Event]:
        if isinstance(request, ev.Wait):
            return [ev.Waited("x", 3)]
        if isinstance(request, ev.ListSessions):
            return [ev.SessionList(())]
        if isinstance(request, ev.GetInfo):
            return [ev.DaemonInfo("9", 1, "/s", "/s/c", "/s/k", None, 0, "latest", 1)]
        if isinstance(request, ev.Resize):
            return [ev.Resized("x", 30, 90)]
        end = ev.EndReason.END_OF_LOG if isinstance(request, ev.Logs) else ev.EndReason.EXITED
        return [
            ev.Attached("x", ev.SessionState.RUNNING, 24, 80, 0, uid="u"),
            ev.Output(b"from-the-second-daemon\n", offset=23),
            ev.Ended(end, "", exit_code=3 if end is ev.EndReason.EXITED else None),
        ]

    thread = _fake_daemon(short_tmp / "control.sock", answer)
    env = dict(os.environ, CONSOLED_STATE_DIR=str(short_tmp))
    argv = {
        "attach": ["attach", "--no-tty", "x"],
        "ls": ["ls", "--json"],
        "info": ["info", "--json"],
        "resize": ["resize", "x", "30", "90"],
    }.get(command, [command, "x"])
    with trio.fail_after(CLI_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "consoled", *argv],
            env=env, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    thread.join(timeout=CLI_TIMEOUT)
    assert result.returncode == (3 if command == "attach" else 0), result.stderr
    said = {"wait": b"3\n", "ls": b"[]\n", "resize": b"30x90\n"}
    if command == "info":
        assert json.loads(result.stdout)["version"] == "9"
    else:
        assert result.stdout == said.get(command, b"from-the-second-daemon\n")
