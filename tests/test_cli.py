"""The command line's errors and limits, against a real daemon (or none).

Every failure is one clear line on stderr and exit status 1 (an error) or 2
(usage), never a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from consoled.protocol import ErrorCode
from consoled.protocol import events as ev
from tests.conftest import BundleFactory
from tests.support.cli import cli
from tests.support.client import AsyncClient
from tests.support.daemon import DaemonProcess
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


async def test_ls_invalid_container_id(daemon: DaemonProcess) -> None:
    err = usage_error(await cli(daemon, "ls", "bad/id"))
    assert "invalid container id 'bad/id'" in err, err


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
