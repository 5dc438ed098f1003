"""Exec sessions: each exec's terminal is its own, with runc and with crun.

A container runs a shell as init, and ``exec -d -t`` adds more shells, each
with a console socket of its own.  What is typed into one session reaches
that shell and no other: the tests prove it with the shells' own pids
(``$$``), written to marker files in the bind-mounted /out, and with the
other sessions' output.  ``consoled exec`` is driven under a real pty, as a
person would run it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from consoled.protocol import ErrorCode
from consoled.protocol import events as ev
from tests.conftest import BundleFactory
from tests.support.cli import cli, logs, ls_json
from tests.support.client import RECEIVE_TIMEOUT, AsyncClient
from tests.support.daemon import DaemonProcess
from tests.support.piped import piped_cli
from tests.support.ptyproc import PtyProcess
from tests.support.runtime import CRUN_WRAPPER, Runtime
from tests.test_reexec import reexec

#: The prompt of busybox's interactive sh, as root.
PROMPT = re.compile(rb"# ")


class Terminal:
    """One attached session over the protocol, its output kept for matching."""

    def __init__(self, name: str, client: AsyncClient) -> None:
        self.name = name
        self.client = client
        self.output = bytearray()
        self._pos = 0

    async def type(self, line: str) -> None:
        await self.client.send(ev.Input(line.encode() + b"\r"))

    async def expect(
        self, pattern: re.Pattern[bytes], timeout: float = RECEIVE_TIMEOUT
    ) -> re.Match[bytes]:
        """Wait for ``pattern`` in the output after the last match."""
        with trio.move_on_after(timeout):
            while True:
                match = pattern.search(self.output, self._pos)
                if match:
                    self._pos = match.end()
                    return match
                event = await self.client.receive(timeout + 5)  # the bound above fires first
                assert isinstance(event, ev.Output), f"{self.name}: {event} while waiting"
                self.output += event.data
        raise AssertionError(
            f"{self.name}: {pattern.pattern!r} not seen within {timeout} s; "
            f"output after the last match: {bytes(self.output[self._pos :])!r}"
        )


@contextlib.asynccontextmanager
async def attached(daemon: DaemonProcess, name: str) -> AsyncIterator[Terminal]:
    """Attach to ``name`` with its whole scrollback (so the first prompt is seen)."""
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await client.request(ev.Attach(name, rows=24, cols=80))
        assert isinstance(reply, ev.Attached), reply
        yield Terminal(name, client)
    finally:
        await client.aclose()


@dataclass
class Containers:
    """Containers whose init is a shell, on the test's daemon and runtime."""

    daemon: DaemonProcess
    client: AsyncClient
    runtime: Runtime
    bundle: BundleFactory

    async def start(self, cid: str, execs: Sequence[str], *, init_terminal: bool = True) -> None:
        """Start ``cid`` and one ``exec -d -t sh`` per name in ``execs``, each on its socket.

        Returns once every session is running (its master arrived).
        """
        if init_terminal:
            socket = await self.client.create_socket(cid)
            await self.runtime.run(cid, self.bundle(["sh"]), socket)
        else:
            # No terminal: init inherits the runtime's stdio, which the test is reading
            # until EOF, so it lets go of them first.
            args = ["sh", "-c", "exec </dev/null >/dev/null 2>&1; exec sleep 600"]
            await self.runtime.run(cid, self.bundle(args, terminal=False), None)
        for name in execs:
            socket = await self.client.create_socket(f"{cid}/{name}")
            await self.runtime.exec(cid, ["sh"], socket)
        names = ([cid] if init_terminal else []) + [f"{cid}/{name}" for name in execs]
        for name in names:
            await self.daemon.wait_event("session.running", session=name)


@pytest.fixture
def containers(
    daemon: DaemonProcess, client: AsyncClient, runtime: Runtime, bundle: BundleFactory
) -> Containers:
    return Containers(daemon, client, runtime, bundle)


async def test_input_reaches_only_its_own_shell(
    containers: Containers, daemon: DaemonProcess, out_dir: Path, container_id: Callable[[str], str]
) -> None:
    cid = container_id("iso")
    await containers.start(cid, ["sh1", "sh2"])
    names = {"init": cid, "sh1": f"{cid}/sh1", "sh2": f"{cid}/sh2"}
    async with contextlib.AsyncExitStack() as stack:
        terms = {
            key: await stack.enter_async_context(attached(daemon, n)) for key, n in names.items()
        }
        for term in terms.values():
            await term.expect(PROMPT)
        # Each marker command is typed into one session; $((6*7)) only turns
        # into 42 in the output, never in the echo of what was typed.
        for key in ("sh1", "init"):
            await terms[key].type(f"echo $$ >/out/typed-into-{key}; echo {key}-done-$((6*7))")
            await terms[key].expect(re.compile(rb"%s-done-42" % key.encode()))
        # A later command's output in every session: all earlier echo is in by now.
        pids = {}
        for key, term in terms.items():
            await term.type("echo pid-is-$$")
            pids[key] = int((await term.expect(re.compile(rb"pid-is-(\d+)"))).group(1))
    assert len(set(pids.values())) == 3, pids
    assert pids["init"] == 1  # init is pid 1 of the container; the execs joined its namespace
    for key in ("sh1", "init"):
        assert (out_dir / f"typed-into-{key}").read_text().strip() == str(pids[key])
    assert not (out_dir / "typed-into-sh2").exists()
    output = {key: await logs(daemon, name) for key, name in names.items()}
    for key, data in output.items():
        for typed in ("sh1", "init"):
            assert (b"typed-into-" + typed.encode() in data) == (key == typed), (key, data)


async def test_ls_groups_execs_under_their_container(
    containers: Containers, daemon: DaemonProcess, container_id: Callable[[str], str]
) -> None:
    first, second = sorted([container_id("lsa"), container_id("lsb")])
    # Created out of order: the listing sorts, it does not keep creation order.
    await containers.start(second, ["x"])
    await containers.start(first, ["sh2", "sh1"])

    result = await cli(daemon, "ls", "--json", first)
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [(e["session"], e["id"], e["exec"]) for e in entries] == [
        (first, first, None),
        (f"{first}/sh1", first, "sh1"),
        (f"{first}/sh2", first, "sh2"),
    ]
    assert {e["state"] for e in entries} == {"running"}

    result = await cli(daemon, "ls", second)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.decode().splitlines()[1:]]
    assert names == [second, f"{second}/x"]

    result = await cli(daemon, "ls")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.decode().splitlines()
    assert header.split()[0] == "SESSION"
    # The init session at the margin, its execs indented under it.
    shown = [(row[:2] == "  ", row.split()[0]) for row in rows]
    assert shown == [
        (False, first),
        (True, f"{first}/sh1"),
        (True, f"{first}/sh2"),
        (False, second),
        (True, f"{second}/x"),
    ]


async def test_attach_to_unknown_exec_is_refused(
    containers: Containers,
    daemon: DaemonProcess,
    client: AsyncClient,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("unk")
    await containers.start(cid, ["sh1"])
    # Neither a missing exec nor a prefix of an existing one lands anywhere else.
    for name in (f"{cid}/sh3", f"{cid}/sh"):
        reply = await client.request(ev.Attach(name, replay=0))
        assert isinstance(reply, ev.Error), reply
        assert reply.code is ErrorCode.UNKNOWN_SESSION
        assert name in reply.message
    # The refusal cost only that request; nobody was attached or typed at.
    sessions = await client.list_sessions(cid)
    assert [(s.session, s.clients) for s in sessions] == [(cid, 0), (f"{cid}/sh1", 0)]

    result = await cli(daemon, "attach", f"{cid}/sh3", stdin=b"echo nope\n")
    assert result.returncode == 1
    assert f"{cid}/sh3".encode() in result.stderr, result.stderr
    assert b"nope" not in result.stdout
    # Each shell has run whatever it was sent by the time it answers this.
    for name in (cid, f"{cid}/sh1"):
        async with attached(daemon, name) as term:
            await term.type("echo barrier-$((6*7))")
            await term.expect(re.compile(rb"barrier-42"))
        assert b"nope" not in await logs(daemon, name)


async def test_exec_session_without_init_session(
    containers: Containers,
    daemon: DaemonProcess,
    client: AsyncClient,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("noinit")
    await containers.start(cid, ["sh1"], init_terminal=False)
    sessions = await client.list_sessions(cid)
    assert [(s.session, s.exec, s.state) for s in sessions] == [
        (f"{cid}/sh1", "sh1", ev.SessionState.RUNNING)
    ]
    async with attached(daemon, f"{cid}/sh1") as term:
        await term.expect(PROMPT)
        await term.type("echo alone-$((6*7))")
        await term.expect(re.compile(rb"alone-42"))


def runtime_path(runtime: Runtime, tmp_path: Path) -> str:
    """What ``consoled exec --runtime`` runs for ``runtime``."""
    if runtime.name == "crun":
        # crun must run through the same unshare wrapper as everywhere in the tests.
        wrapper = tmp_path / "crun-wrapper"
        wrapper.write_text(
            f'#!/bin/sh\nexec unshare -m sh -c {shlex.quote(CRUN_WRAPPER)} crun "$@"\n'
        )
        wrapper.chmod(0o755)
        return str(wrapper)
    found = shutil.which(runtime.name)
    assert found is not None
    return found


def runtime_options(runtime: Runtime, tmp_path: Path) -> list[str]:
    """``consoled exec`` options that run ``runtime`` on the test's state root."""
    return [f"--runtime={runtime_path(runtime, tmp_path)}", f"--root={runtime.root}"]


async def test_consoled_exec_gives_an_interactive_shell(
    containers: Containers,
    container_id: Callable[[str], str],
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    daemon = containers.daemon
    cid = container_id("cexec")
    await containers.start(cid, [])
    argv = [
        sys.executable, "-m", "consoled", "exec", *runtime_options(containers.runtime, tmp_path),
        cid, "--", "sh",
    ]  # fmt: skip
    proc = await PtyProcess.spawn(nursery, argv, env=daemon.env())
    try:
        await proc.expect(PROMPT.pattern)
        proc.write(b"echo $((6*7))\r")
        await proc.expect(re.compile(rb"\r\n42\r\n"))
        proc.write(b"exit 3\r")
        assert await proc.wait() == 3  # the command's status, as docker exec
        await proc.wait_eof()
        assert b"consoled:" not in proc.output, bytes(proc.output)  # and nothing said
    finally:
        proc.close()
    # Its status delivered, the exec's session is gone (consoled exec --keep keeps it).
    result = await cli(daemon, "ls", "--json", cid)
    assert result.returncode == 0, result.stderr
    states = [(e["session"], e["state"]) for e in json.loads(result.stdout)]
    assert states == [(cid, "running")]


async def test_consoled_exec_with_failing_runtime_leaves_nothing(
    daemon: DaemonProcess, runtime: Runtime, tmp_path: Path, container_id: Callable[[str], str]
) -> None:
    cid = container_id("absent")  # never started
    result = await cli(daemon, "exec", *runtime_options(runtime, tmp_path), cid, "--", "sh")
    # The runtime failed, not the command (was 127 with crun: its "No such file"
    # for a missing container read as a command not found).
    assert result.returncode == 125, result
    stderr = result.stderr.decode()
    assert re.search(rf"exec failed \(exit \d+\): no running container {cid}: ", stderr), stderr
    # The runtime's own words reach the user, without its log format.
    runtime_says = "container does not exist" if runtime.name == "runc" else "No such file"
    assert runtime_says in stderr, stderr
    assert "time=" not in stderr and "level=" not in stderr, stderr
    result = await cli(daemon, "ls", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    intake = daemon.state_dir / "intake"
    assert not intake.exists() or list(intake.iterdir()) == []


async def test_exited_exec_name_is_held_until_removed(
    containers: Containers,
    daemon: DaemonProcess,
    client: AsyncClient,
    runtime: Runtime,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("held")
    name = f"{cid}/sh1"
    await containers.start(cid, [])
    await runtime.exec(cid, ["sh", "-c", "echo short-lived"], await client.create_socket(name))
    await daemon.wait_event("session.exited", session=name)

    reply = await client.request(ev.CreateSocket(name))
    assert isinstance(reply, ev.Error), reply
    assert reply.code is ErrorCode.NAME_IN_USE
    assert f"consoled rm {name}" in reply.message
    result = await cli(daemon, "socket", name)
    assert result.returncode == 1
    assert f"consoled rm {name}".encode() in result.stderr, result.stderr
    # Its output is still there to read, which is why the name is kept.
    assert b"short-lived" in await logs(daemon, name)

    result = await cli(daemon, "rm", name)
    assert result.returncode == 0, result.stderr
    assert (await client.session(cid)).state is ev.SessionState.RUNNING
    path = await client.create_socket(name)
    assert (await client.session(name)).socket == path


#: A user and a group the busybox rootfs does not have: bind-mounted over its files.
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345:app:/tmp:/bin/sh\n"
GROUP = "root:x:0:\ngrp:x:3456:app\n"
#: Prints what each option changes, as the command inside sees it.
SHOW = (
    'echo "id=$(id -u):$(id -g) groups=$(echo $(sed -n s/^Groups://p /proc/self/status)) '
    'foo=$FOO fromenv=$FROMENV unset=${UNSET-none} pwd=$(pwd)."'
)


async def start_with_users(
    daemon: DaemonProcess, runtime: Runtime, bundle: BundleFactory, tmp_path: Path, cid: str
) -> None:
    """A running container whose /etc/passwd and /etc/group are PASSWD and GROUP."""
    b = bundle(["sh"])
    config = json.loads((b / "config.json").read_text())
    for name, text in (("passwd", PASSWD), ("group", GROUP)):
        (tmp_path / name).write_text(text)
        config["mounts"].append(
            {"destination": f"/etc/{name}", "type": "bind", "source": str(tmp_path / name),
             "options": ["bind", "ro"]}
        )  # fmt: skip
    (b / "config.json").write_text(json.dumps(config))
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        await runtime.run(cid, b, await client.create_socket(cid))
    finally:
        await client.aclose()
    await daemon.wait_event("session.running", session=cid)


@pytest.mark.parametrize(
    ("user", "ids"),
    [
        # A name: its uid, primary group, and the groups /etc/group lists it in (as docker).
        (["-u", "app"], "1234:2345 groups=2345 3456"),
        (["--user", "app:grp"], "1234:3456 groups=3456"),  # a group given: that one only
        (["-u", "1234"], "1234:2345 groups=2345 3456"),  # a number the container knows
        (["-u", "4321:7"], "4321:7 groups=7"),  # numbers the container does not know
        ([], "0:0 groups="),  # the container's own user
    ],
    ids=["name", "name-group", "uid", "numbers", "default"],
)
async def test_exec_options_take_effect_in_the_container(
    *,
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
    user: list[str],
    ids: str,
) -> None:
    cid = container_id("opts")
    await start_with_users(daemon, runtime, bundle, tmp_path, cid)
    options = [*user, "-e", "FOO=bar", "--env", "FROMENV", "-e", "UNSET", "-w", "/tmp"]
    result = await cli(
        daemon, "exec", "--no-tty", *runtime_options(runtime, tmp_path), *options, cid,
        "--", "sh", "-c", SHOW, env={"FROMENV": "from-here", "UNSET": None},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"id={ids} foo=bar fromenv=from-here unset=none pwd=/tmp.".encode() in result.stdout


async def test_exec_as_a_user_keeps_the_containers_process(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    """``-u`` describes the command to the runtime as the container's own process (for
    its groups): its capabilities stay those any exec gets."""
    cid = container_id("caps")
    await start_with_users(daemon, runtime, bundle, tmp_path, cid)
    show = "echo caps=$(sed -n s/^CapEff:.//p /proc/self/status)."
    runtime_args = runtime_options(runtime, tmp_path)
    plain = await cli(daemon, "exec", "--no-tty", *runtime_args, cid, "sh", "-c", show)
    as_root = await cli(
        daemon, "exec", "--no-tty", "-u", "root", *runtime_args, cid, "sh", "-c", show
    )
    assert plain.returncode == as_root.returncode == 0, (plain.stderr, as_root.stderr)
    caps = re.search(rb"caps=([0-9a-f]+)\.", plain.stdout)
    assert caps is not None and int(caps.group(1), 16) != 0, plain.stdout
    assert caps.group(0) in as_root.stdout, as_root.stdout


async def test_exec_with_user_and_env_asks_the_runtime_for_the_state_once(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    """``-u`` (the user's files, in the container's root) and ``-e`` (the
    container's environment) both need ``RUNTIME state``: one call serves both."""
    cid = container_id("once")
    await start_with_users(daemon, runtime, bundle, tmp_path, cid)
    calls = tmp_path / "calls"
    counting = tmp_path / "counting-runtime"
    counting.write_text(
        f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\n'
        f'exec {shlex.quote(runtime_path(runtime, tmp_path))} "$@"\n'
    )
    counting.chmod(0o755)
    result = await cli(
        daemon, "exec", "--no-tty", f"--runtime={counting}", f"--root={runtime.root}",
        "-u", "app", "-e", "FOO=bar", cid, "--", "sh", "-c", SHOW,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"id=1234:2345 groups=2345 3456 foo=bar" in result.stdout, result.stdout
    asked = [line.split() for line in calls.read_text().splitlines()]
    assert [a for a in asked if "state" in a] == [["--root", str(runtime.root), "state", cid]]


async def test_exec_runtime_and_root_from_the_environment(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("env")
    await start_with_users(daemon, runtime, bundle, tmp_path, cid)
    defaults = {
        "CONSOLED_RUNTIME": runtime_path(runtime, tmp_path),
        "CONSOLED_RUNTIME_ROOT": str(runtime.root),
    }
    result = await cli(daemon, "exec", "-it", "-u", "app", cid, "sh", "-c", SHOW, env=defaults)
    assert result.returncode == 0, result.stderr
    assert b"id=1234:2345 groups=2345 3456 foo= fromenv= unset=none pwd=/." in result.stdout
    # Without them, runc on PATH with its default root, which knows no such container.
    result = await cli(daemon, "exec", cid, "true", env={"CONSOLED_RUNTIME_ROOT": None})
    assert result.returncode == 125, result
    assert b"runc exec failed" in result.stderr, result.stderr


async def test_exec_as_an_unknown_user_leaves_nothing(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("nouser")
    await start_with_users(daemon, runtime, bundle, tmp_path, cid)
    for user, why in (("nosuch", "unable to find user nosuch"), ("app:nogrp", "find group")):
        result = await cli(
            daemon, "exec", "-u", user, *runtime_options(runtime, tmp_path), cid, "true"
        )
        assert result.returncode == 126, result  # as docker exec
        assert why.encode() in result.stderr, result.stderr
        assert b"Traceback" not in result.stderr
    sessions = await ls_json(daemon)
    assert [s["session"] for s in sessions] == [cid]


async def test_exec_detach_prints_the_session_which_waits_for_wait(
    *,
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    out_dir: Path,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("xd")
    await start_with_users(daemon, runtime, bundle, tmp_path, cid)
    script = "while [ ! -e /out/go ]; do usleep 20000; done; echo done-$((6*7)); exit 5"
    result = await cli(
        daemon, "exec", "-d", *runtime_options(runtime, tmp_path), cid, "sh", "-c", script
    )
    assert result.returncode == 0, result.stderr
    name = f"{cid}/sh-1"
    assert (result.stdout, result.stderr) == (f"{name}\n".encode(), b"")

    def states(listing: bytes) -> list[tuple[str, int | None]]:
        return [(e["state"], e["exit_code"]) for e in json.loads(listing) if e["session"] == name]

    assert states((await cli(daemon, "ls", "--json", cid)).stdout) == [("running", None)]
    (out_dir / "go").touch()
    result = await cli(daemon, "logs", "-f", name)  # to its end
    assert b"done-42\r\n" in result.stdout, result
    # Ended, it is kept until its status is taken...
    assert states((await cli(daemon, "ls", "--json", cid)).stdout) == [("exited", 5)]
    waited = await cli(daemon, "wait", name)
    assert (waited.returncode, waited.stdout) == (0, b"5\n")
    # ...and then it is gone.
    sessions = await ls_json(daemon)
    assert [s["session"] for s in sessions] == [cid]


async def test_exec_ends_when_its_stdin_does(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    # `printf 'hello\n' | consoled exec ID cat`: ctrl-d at the end of the input ends cat.
    cid = container_id("eof")
    await start_with_users(daemon, runtime, bundle, tmp_path, cid)
    result = await cli(
        daemon, "exec", *runtime_options(runtime, tmp_path), cid, "cat", stdin=b"hello\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b"hello\r\n") == 2  # the terminal's echo, and cat's copy


@pytest.mark.parametrize("meanwhile", ["reexec", "rename"])
async def test_an_exec_rides_out_a_reexec_or_a_rename_and_leaves_nothing(
    *,
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    out_dir: Path,
    tmp_path: Path,
    container_id: Callable[[str], str],
    nursery: trio.Nursery,
    meanwhile: str,
) -> None:
    """While someone runs ``consoled exec``: ``systemctl reload`` (the exec goes
    on through the new daemon), or ``consoled rename`` of the container (its
    execs move with it).  The exec ends with its program's exit code, names
    the session as it is called then, and removes it, as after any exec."""
    # Was, for the rename: "session ID/sh-1 ended", and the exited session
    # kept as ID-x/sh-1, its removal asked for by the old name.
    cid = container_id("xr")
    await start_with_users(daemon, runtime, bundle, tmp_path, cid)
    script = "echo started; while [ ! -e /out/go ]; do usleep 20000; done; echo done-42; exit 7"
    options = runtime_options(runtime, tmp_path)
    name = cid
    async with piped_cli(daemon, nursery, "exec", *options, cid, "sh", "-c", script) as proc:
        await proc.wait_for(b"started")
        if meanwhile == "reexec":
            await reexec(daemon)
        else:
            name = f"{cid}-x"
            assert (await cli(daemon, "rename", cid, name)).returncode == 0
        (out_dir / "go").touch()
        assert await proc.wait() == 7
        assert proc.out.count(b"done-42\r\n") == 1, bytes(proc.out)
        assert proc.out.count(b"started\r\n") == 1, bytes(proc.out)
        said = bytes(proc.err).decode()
        assert said == "", said  # the command's own status, nothing said
    assert [s["session"] for s in await ls_json(daemon)] == [name]
