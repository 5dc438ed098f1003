"""Who may use the daemon, and what each may do: real users, real groups, real processes.

The daemon runs as root (``daemon_factory``); ``consoled`` commands run as
throw-away users made with ``useradd``/``groupadd`` for this module (see
:mod:`tests.support.accounts`), through ``setpriv``.  They run Debian's
python3 from a world-readable venv with this checkout installed
(``service_python``): the tests' own interpreter is under /root (0700),
which no other user can execute.  Sessions are busybox ``sh`` in real runc
containers, or ptys held by :class:`PtyHolder`.

What is proved: the socket file's mode and the daemon's credential check
each keep strangers out; ``--group`` members may do everything but
``reexec``, ``--watch-group`` members only watch, supplementary groups
count; every connection's actions are audited with the peer's identity and
never with what was typed; the CLI refuses to talk to a server run by
someone else (an impostor on the socket path); and the daemon refuses a
state directory that another user could redirect.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from consoled.io.peer import credentials
from consoled.protocol import ErrorCode
from consoled.protocol import events as ev
from tests.conftest import BundleFactory, DaemonFactory
from tests.support.accounts import Account, Accounts, Group, can_reach, connect_as, setpriv
from tests.support.cli import CLI_TIMEOUT
from tests.support.client import AsyncClient
from tests.support.daemon import DaemonProcess
from tests.support.holder import PtyHolder
from tests.support.ptyproc import EXIT_TIMEOUT, PtyProcess, wait_raw
from tests.support.runtime import Runtime, new_container_id

DETACH = b"\x10\x11"  # ctrl-p ctrl-q


@dataclass(frozen=True, slots=True)
class People:
    """The module's users: each in its own user group, and maybe one more."""

    full: Group  # the daemon's --group
    watch: Group  # the daemon's --watch-group
    outsider: Account  # in neither
    member: Account  # in `full`, a supplementary group
    watcher: Account  # in `watch`, a supplementary group

    def serve_args(self) -> list[str]:
        return ["--group", self.full.name, "--watch-group", self.watch.name]


@pytest.fixture(scope="module")
def people() -> Iterator[People]:
    """Throw-away users and groups, removed after the module whatever happened.

    Synchronous and module-scoped: set up before and torn down after every
    trio fixture, so no process of these users outlives them.
    """
    accounts = Accounts()
    try:
        full = accounts.group("full")
        watch = accounts.group("watch")
        yield People(
            full=full,
            watch=watch,
            outsider=accounts.user("out"),
            member=accounts.user("member", [full]),
            watcher=accounts.user("watcher", [watch]),
        )
    finally:
        accounts.close()


@pytest.fixture
async def shared_tmp(short_tmp: Path, people: People) -> Path:
    """``short_tmp`` (root's, under sticky /tmp) made searchable, so users reach its sockets.

    It stays unwritable by others: the daemon refuses a state directory
    whose parent another user could write.
    """
    short_tmp.chmod(0o711)
    assert await can_reach(people.outsider, short_tmp), f"{people.outsider.name} cannot reach it"
    return short_tmp


def user_env(state_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["CONSOLED_STATE_DIR"] = str(state_dir)
    env.pop("CONSOLED_DAEMON_USER", None)
    env.update(extra or {})
    return env


async def run_as(
    python: Path,
    account: Account | None,
    state_dir: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    gid: int | None = None,
    groups: list[int] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``consoled ARGS`` as ``account`` (root with our interpreter when None)."""
    if account is None:
        prefix = [sys.executable]
    else:
        prefix = [*setpriv(account, gid=gid, groups=groups), str(python)]
    with trio.fail_after(CLI_TIMEOUT):
        return await trio.run_process(
            [*prefix, "-m", "consoled", *args],
            env=user_env(state_dir, env),
            cwd="/",  # not the checkout: the venv's consoled, not the source tree's
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def refusal(result: subprocess.CompletedProcess[bytes]) -> str:
    """The one line a refused command prints: exit 1, no traceback."""
    err = result.stderr.decode()
    assert result.returncode == 1, (result.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("consoled: "), err
    return lines[0]


AttachAs = Callable[..., Awaitable[PtyProcess]]


@pytest.fixture
async def attach_as(
    nursery: trio.Nursery, daemon_factory: DaemonFactory, service_python: Path
) -> AsyncIterator[AttachAs]:
    """``await attach_as(account, state_dir, *args, env=)``: ``consoled attach`` under a pty.

    As ``account`` (root when None).  Returns once the terminal is raw.
    Every client is killed and reaped on teardown, before its daemon stops.
    """
    started: list[PtyProcess] = []

    async def spawn(
        account: Account | None,
        state_dir: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
    ) -> PtyProcess:
        python = str(service_python)
        prefix = [sys.executable] if account is None else [*setpriv(account), python]
        argv = [*prefix, "-m", "consoled", "attach", *args]
        proc = await PtyProcess.spawn(nursery, argv, env=user_env(state_dir, env), cwd="/")
        started.append(proc)
        await wait_raw(proc)
        return proc

    try:
        yield spawn
    finally:
        with trio.CancelScope(shield=True):
            for proc in started:
                proc.close()
                with trio.move_on_after(EXIT_TIMEOUT):
                    await proc.proc.wait()


@dataclass(frozen=True, slots=True)
class Rig:
    """What every test here uses: the people, their interpreter, daemons, attach clients."""

    people: People
    python: Path  # an interpreter the test users can execute
    tmp: Path  # short, root's, searchable by all
    start_daemon: DaemonFactory
    attach: AttachAs

    async def run(
        self, account: Account | None, state_dir: Path, *args: str, **options: Any
    ) -> subprocess.CompletedProcess[bytes]:
        return await run_as(self.python, account, state_dir, *args, **options)


@pytest.fixture
def rig(
    people: People,
    service_python: Path,
    shared_tmp: Path,
    daemon_factory: DaemonFactory,
    attach_as: AttachAs,
) -> Rig:
    return Rig(people, service_python, shared_tmp, daemon_factory, attach_as)


class Shells:
    """busybox ``sh`` in runc containers, on sessions of a daemon."""

    def __init__(self, runc: Runtime, bundle: BundleFactory) -> None:
        self.runc = runc
        self.bundle = bundle

    async def start(self, daemon: DaemonProcess) -> str:
        """A container on a new session of ``daemon``; returns the session's name."""
        cid = new_container_id("acc")
        root = await AsyncClient.connect(daemon.control_socket)
        try:
            path = await root.create_socket(cid)
        finally:
            await root.aclose()
        await self.runc.run(cid, self.bundle(["sh"]), path)
        await daemon.wait_event("session.running", session=cid)
        return cid


@pytest.fixture
def shells(runc: Runtime, bundle: BundleFactory) -> Shells:
    return Shells(runc, bundle)


async def session_info(daemon: DaemonProcess, name: str) -> ev.SessionInfo:
    root = await AsyncClient.connect(daemon.control_socket)
    try:
        return await root.session(name)
    finally:
        await root.aclose()


async def session_names(daemon: DaemonProcess) -> list[str]:
    root = await AsyncClient.connect(daemon.control_socket)
    try:
        return [s.session for s in await root.list_sessions()]
    finally:
        await root.aclose()


async def run_in(proc: PtyProcess, command: str, result: bytes) -> None:
    """Type a command line and Enter, wait for what it prints."""
    proc.write(command.encode() + b"\r")
    await proc.expect(result)


def mode_of(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- strangers ------------------------------------------------------------------------------


async def test_without_groups_the_socket_mode_keeps_others_out(rig: Rig) -> None:
    people = rig.people
    daemon = await rig.start_daemon()
    state_dir = daemon.state_dir
    assert mode_of(state_dir) == 0o700
    assert mode_of(daemon.control_socket) == 0o600
    assert mode_of(daemon.console_socket) == 0o600
    for account in (people.outsider, people.member):
        for args in (("ls",), ("attach", "nosuch")):
            line = refusal(await rig.run(account, state_dir, *args))
            assert line == (
                f"consoled: permission denied: cannot connect to {daemon.control_socket} "
                "(ask the daemon's operator for --group or --watch-group)"
            )
    # The directory searchable, the socket file alone stops them: still EACCES.
    state_dir.chmod(0o711)
    try:
        line = refusal(await rig.run(people.outsider, state_dir, "ls"))
        assert line.startswith("consoled: permission denied: cannot connect to"), line
    finally:
        state_dir.chmod(0o700)
    assert not daemon.find("client.refused")  # the kernel refused them; the daemon never saw them


async def test_with_groups_the_daemon_refuses_anyone_in_neither(rig: Rig) -> None:
    people = rig.people
    daemon = await rig.start_daemon(*people.serve_args())
    state_dir = daemon.state_dir
    assert mode_of(state_dir) == 0o711  # credentials decide, not the file modes
    assert mode_of(daemon.control_socket) == 0o666
    assert mode_of(daemon.console_socket) == 0o600  # runtimes are root's
    assert mode_of(state_dir / "intake") == 0o700
    outsider = people.outsider
    expected = (
        f"consoled: permission denied: uid {outsider.uid} may not use this consoled "
        "(ask its operator for --group or --watch-group)"
    )
    for count, args in enumerate((("ls",), ("attach", "nosuch"), ("logs", "nosuch")), 1):
        line = refusal(await rig.run(outsider, state_dir, *args))
        assert line == expected
        await daemon.wait_event("client.refused", count=count, peer_uid=outsider.uid)
    refused = daemon.find("client.refused", peer_uid=outsider.uid)[0]
    assert refused["peer_gid"] == outsider.gid
    assert refused["why"] == "permission denied"

    # On the wire: told at once, before it says anything, and closed.
    sock = await connect_as(outsider, rig.python, daemon.control_socket)
    client = AsyncClient(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
    try:
        error = await client.receive()
        assert isinstance(error, ev.Error), error
        assert error.code is ErrorCode.PERMISSION_DENIED
        assert await client.receive() is None
    finally:
        await client.aclose()


# --- the full group -------------------------------------------------------------------------


async def test_group_member_may_do_everything_but_reexec(rig: Rig, shells: Shells) -> None:
    daemon = await rig.start_daemon(*rig.people.serve_args())
    state_dir, member = daemon.state_dir, rig.people.member
    cid = await shells.start(daemon)

    listed = json.loads(ok(await rig.run(member, state_dir, "ls", "--json")))
    assert [s["session"] for s in listed] == [cid]

    extra = f"{cid}-x"
    path = ok(await rig.run(member, state_dir, "socket", extra)).strip()
    assert path.startswith(str(state_dir / "intake") + "/"), path
    assert ok(await rig.run(member, state_dir, "rename", extra, f"{extra}2")) == (f"{extra}2\n")
    ok(await rig.run(member, state_dir, "rm", f"{extra}2"))
    assert await session_names(daemon) == [cid]

    ok(await rig.run(member, state_dir, "resize", cid, "40", "120"))
    info = await session_info(daemon, cid)
    assert (info.rows, info.cols) == (40, 120)

    proc = await rig.attach(member, state_dir, cid)
    await run_in(proc, "echo member-$((6*7))", b"member-42")
    proc.write(DETACH)
    assert await proc.wait(EXIT_TIMEOUT) == 0

    line = refusal(await rig.run(member, state_dir, "reexec"))
    assert line == (
        "consoled: not allowed: reexec: only root or the daemon's own user may reexec the daemon"
    )
    failed = await daemon.wait_event("request.failed", request="reexec")
    assert failed["code"] == "not_allowed"
    assert failed["peer_uid"] == member.uid
    assert daemon.readies == 1 and not daemon.find("reexec.starting")


async def test_supplementary_groups_count(rig: Rig) -> None:
    """The member's primary group is its own: only its supplementary group lets it in."""
    people = rig.people
    daemon = await rig.start_daemon(*people.serve_args())
    state_dir, member, full = daemon.state_dir, people.member, people.full
    assert member.gid != full.gid
    ok(await rig.run(member, state_dir, "ls"))  # groups from /etc/group
    ok(await rig.run(member, state_dir, "ls", groups=[full.gid]))
    # Without its supplementary groups, the same user is a stranger ...
    line = refusal(await rig.run(member, state_dir, "ls", groups=[]))
    assert line.startswith(f"consoled: permission denied: uid {member.uid} may not"), line
    # ... and anyone whose primary group is the group is in.
    ok(await rig.run(people.outsider, state_dir, "ls", gid=full.gid, groups=[]))
    # The watch group, as a supplementary group among others, gives watching only.
    groups = [people.outsider.gid, people.watch.gid]
    ok(await rig.run(people.outsider, state_dir, "ls", groups=groups))
    line = refusal(await rig.run(people.outsider, state_dir, "socket", "x1", groups=groups))
    assert line.startswith("consoled: not allowed: socket: "), line


# --- the watch group ------------------------------------------------------------------------


async def test_watch_group_may_only_watch(rig: Rig, shells: Shells, out_dir: Path) -> None:
    daemon = await rig.start_daemon(*rig.people.serve_args())
    state_dir, watcher = daemon.state_dir, rig.people.watcher
    cid = await shells.start(daemon)

    watching = await rig.attach(watcher, state_dir, "--read-only", cid)
    typing = await rig.attach(None, state_dir, cid)  # root, read-write
    await run_in(typing, "echo seen-$((6*7))", b"seen-42")
    await watching.expect(b"seen-42")
    # What the watcher types goes nowhere.
    watching.write(b"touch /out/from-watcher\r")
    await run_in(typing, "echo after-$((2+3))", b"after-5")
    await watching.expect(b"after-5")

    listed = json.loads(ok(await rig.run(watcher, state_dir, "ls", "--json")))
    assert [s["session"] for s in listed] == [cid]
    info = json.loads(ok(await rig.run(watcher, state_dir, "info", "--json")))
    assert info["pid"] == daemon.pid
    assert "seen-42" in ok(await rig.run(watcher, state_dir, "logs", cid))

    before = await session_info(daemon, cid)
    for args, what in (
        (("attach", cid), "attach"),
        (("socket", f"{cid}-w"), "socket"),
        (("resize", cid, "50", "150"), "resize"),
        (("rename", cid, f"{cid}-w"), "rename"),
        (("rm", "--force", cid), "rm"),
        (("reexec",), "reexec"),
    ):
        line = refusal(await rig.run(watcher, state_dir, *args))
        assert line.startswith(f"consoled: not allowed: {what}: "), line
        if what == "attach":
            assert line.endswith("attach with --read-only"), line
        elif what != "reexec":
            assert "may only watch (consoled's --watch-group" in line, line
    # Logged as each was refused; the daemon's log may reach us a few ms later.
    await daemon.wait_event("request.failed", count=6, code="not_allowed", peer_uid=watcher.uid)
    assert len(daemon.find("request.failed", code="not_allowed", peer_uid=watcher.uid)) == 6
    after = await session_info(daemon, cid)
    assert (after.session, after.state, after.rows, after.cols) == (
        before.session, before.state, before.rows, before.cols
    )  # fmt: skip
    assert await session_names(daemon) == [cid]
    assert not (out_dir / "from-watcher").exists()
    assert b"from-watcher" not in bytes(typing.output)
    # Only the watcher's read-only attach is on its record.
    actions = [e["action"] for e in daemon.find("audit", peer_uid=watcher.uid)]
    assert actions == ["attach"]
    assert daemon.find("audit", action="attach", peer_uid=watcher.uid)[0]["read_only"] is True


async def test_read_only_keys_never_reach_the_session(
    rig: Rig, shells: Shells, out_dir: Path
) -> None:
    """A watcher speaking the protocol itself, sending keys the CLI would never send."""
    people = rig.people
    daemon = await rig.start_daemon(*people.serve_args())
    cid = await shells.start(daemon)
    typing = await rig.attach(None, daemon.state_dir, cid)

    async def watcher_client() -> AsyncClient:
        sock = await connect_as(people.watcher, rig.python, daemon.control_socket)
        client = AsyncClient(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
        welcome = await client.request(ev.Hello(1, "watcher"))
        assert isinstance(welcome, ev.Welcome), welcome
        return client

    client = await watcher_client()
    try:
        reply = await client.request(ev.Attach(cid, read_only=False, replay=0))
        assert isinstance(reply, ev.Error), reply
        assert reply.code is ErrorCode.NOT_ALLOWED
    finally:
        await client.aclose()

    client = await watcher_client()
    try:
        reply = await client.request(ev.Attach(cid, read_only=True, replay=0, rows=50, cols=150))
        assert isinstance(reply, ev.Attached), reply
        await client.send(ev.Input(b"touch /out/from-watcher; echo typed-$((6*7))\r"))
        await client.send(ev.WindowSize(51, 151))
        # The daemon says once that it ignored the input: by then it has handled it.
        while not isinstance(event := await client.receive(), ev.Error):
            assert isinstance(event, ev.Output), event
        assert event.code is ErrorCode.READ_ONLY
        await run_in(typing, "echo later-$((2+3))", b"later-5")
        out, _ = await client.read_output_until(b"later-5")
        assert b"later-5" in out  # it watches
    finally:
        await client.aclose()
    assert b"typed-42" not in bytes(typing.output)
    assert not (out_dir / "from-watcher").exists()
    info = await session_info(daemon, cid)
    assert (info.rows, info.cols) == (24, 80)  # root's window, not the watcher's
    assert not daemon.find("audit", action="input", peer_uid=people.watcher.uid)


# --- the audit trail ------------------------------------------------------------------------


async def test_audit_trail_names_the_peer_and_never_the_keys(rig: Rig, shells: Shells) -> None:
    daemon = await rig.start_daemon(*rig.people.serve_args(), "--log-level", "debug")
    state_dir, member = daemon.state_dir, rig.people.member
    cid = await shells.start(daemon)
    secret = "pw-" + secrets.token_hex(8)

    proc = await rig.attach(member, state_dir, cid)
    pid = proc.proc.pid  # setpriv execs: the client's pid
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    # The secret is typed, and echoed by the container's terminal; `:` does nothing.
    await run_in(proc, f": {secret}; echo done-$((6*7))", b"done-42")
    proc.write(DETACH)
    assert await proc.wait(EXIT_TIMEOUT) == 0
    detach = await daemon.wait_event("audit", action="detach", peer_uid=member.uid)
    assert detach["reason"] == "detached"
    ok(await rig.run(member, state_dir, "resize", cid, "30", "100"))
    await daemon.wait_event("audit", action="resize", peer_uid=member.uid)

    trail = [e for e in daemon.find("audit") if e.get("peer_uid") == member.uid]
    assert [e["action"] for e in trail] == ["attach", "input", "detach", "resize"]
    for event in trail[:3]:
        assert event["session"] == cid
        assert event["peer_gid"] == member.gid
        assert event["peer_pid"] == pid
        assert event["peer_comm"] == comm
    assert trail[0]["read_only"] is False
    assert (trail[3]["rows"], trail[3]["cols"]) == (30, 100)
    assert trail[3]["peer_pid"] != pid  # another connection, another process
    # Root made the container's session: its creation is on record under uid 0.
    created = daemon.find("audit", action="create_socket", session=cid)
    assert len(created) == 1 and created[0]["peer_uid"] == 0 and created[0]["exec"] is False
    # Typed bytes are in no log line, at any level.
    assert secret.encode() in bytes(proc.output)  # it was typed (and echoed)
    leaked = [line for line in daemon.raw_stderr if secret in line]
    assert not leaked, leaked


# --- an impostor on the socket path ---------------------------------------------------------


async def test_client_refuses_a_server_run_by_another_user(rig: Rig, nursery: trio.Nursery) -> None:
    """Another user's daemon where root's client looks: root's client will not talk to it."""
    impostor = rig.people.outsider
    home = rig.tmp / "imp"
    home.mkdir(mode=0o755)
    os.chown(home, impostor.uid, impostor.gid)
    daemon = await rig.start_daemon(
        "--log-level", "debug",
        state_dir=home / "state", python=rig.python, user=(impostor.uid, impostor.gid),
    )  # fmt: skip
    state_dir = daemon.state_dir
    # Its own user may use it (the server is itself): make a session with a pty behind it.
    path = ok(await rig.run(impostor, state_dir, "socket", "imp1")).strip()
    holder = await PtyHolder.start(nursery)
    try:
        assert await holder.hand([path]) == 1
        await daemon.wait_event("session.running", session="imp1")

        expected = (
            f"consoled: refusing to talk to {daemon.control_socket}: the server on it runs as "
            f"uid {impostor.uid} ({impostor.name}), not as root, so it may be an impostor; "
            "if that user really runs the daemon, set "
            f"CONSOLED_DAEMON_USER={impostor.name}"
        )
        for args in (("ls",), ("attach", "--no-tty", "imp1"), ("rm", "--force", "imp1")):
            assert refusal(await rig.run(None, state_dir, *args)) == expected
        # Nothing of root's reached it: no request, no attach.
        assert not daemon.find("request.failed")
        assert not daemon.find("audit", peer_uid=0)
        assert not daemon.find("client.attached")

        # Told who the daemon's user is, root's client talks to it.
        for who in (impostor.name, str(impostor.uid)):
            env = {"CONSOLED_DAEMON_USER": who}
            assert "imp1" in ok(await rig.run(None, state_dir, "ls", env=env))
        proc = await rig.attach(
            None, state_dir, "imp1", env={"CONSOLED_DAEMON_USER": impostor.name}
        )
        await holder.say(0, "hello-from-imp1")
        await proc.expect(b"hello-from-imp1")
        proc.write(DETACH)
        assert await proc.wait(EXIT_TIMEOUT) == 0
        attached = await daemon.wait_event("audit", action="attach", session="imp1")
        assert attached["peer_uid"] == 0

        # A name that is no user is said so.
        env = {"CONSOLED_DAEMON_USER": "cdac-no-such-user"}
        line = refusal(await rig.run(None, state_dir, "ls", env=env))
        assert "CONSOLED_DAEMON_USER" in line and "cdac-no-such-user" in line, line
    finally:
        await holder.aclose()


# --- the state directory --------------------------------------------------------------------


async def serve_refused(state_dir: Path) -> str:
    """``consoled serve`` on ``state_dir`` must refuse to start: its one-line reason."""
    with trio.fail_after(CLI_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "consoled", "serve", "--state-dir", str(state_dir)],
            stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("consoled: ")]
    assert len(lines) == 1, err
    return lines[0]


async def test_state_dir_that_others_could_redirect_is_refused(rig: Rig) -> None:
    people, shared_tmp = rig.people, rig.tmp
    open_dir = shared_tmp / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # writable by all, not sticky
    line = await serve_refused(open_dir / "state")
    assert f"{open_dir} can be written by other users (mode 0777, uid 0)" in line, line
    assert "they could replace the daemon's sockets" in line, line
    assert not (open_dir / "state").exists()  # refused before anything was made there

    # Further up counts too: whoever can write `open` can move `mid` away and put theirs.
    mid = open_dir / "mid"
    mid.mkdir(mode=0o755)
    line = await serve_refused(mid / "state")
    assert f"{open_dir} can be written by other users" in line, line

    # A directory of another user's.
    theirs = shared_tmp / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, people.outsider.uid, people.outsider.gid)
    line = await serve_refused(theirs / "state")
    assert f"{theirs} belongs to uid {people.outsider.uid}" in line, line

    # A symbolic link its owner could point elsewhere.
    safe = shared_tmp / "safe"
    safe.mkdir(mode=0o755)
    link = shared_tmp / "link"
    link.symlink_to(safe)
    os.lchown(link, people.outsider.uid, people.outsider.gid)
    line = await serve_refused(link / "state")
    assert f"{link} is a symbolic link owned by uid {people.outsider.uid}" in line, line

    # Sticky and root's, as /tmp: nobody can move our entries; accepted.
    sticky = shared_tmp / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    daemon = await rig.start_daemon(state_dir=sticky / "state")
    assert mode_of(daemon.state_dir) == 0o700
    # So is a state directory right under /tmp itself.
    under_tmp = Path(f"/tmp/cdac-{os.getpid()}-state")
    try:
        daemon = await rig.start_daemon(state_dir=under_tmp)
        ok(await run_as(Path(sys.executable), None, under_tmp, "ls"))  # root's own client
        assert await daemon.stop() == 0
    finally:
        shutil.rmtree(under_tmp, ignore_errors=True)


# --- the peer's groups ----------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 300])
async def test_peer_groups_are_read_however_many(short_tmp: Path, count: int) -> None:
    """SO_PEERGROUPS past what Python's getsockopt can return (1,024 bytes: 256 groups)."""
    gids = list(range(70_000, 70_000 + count))
    path = str(short_tmp / "peer.sock")
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        await listener.bind(path)
        listener.listen()
        child = await trio.lowlevel.open_process(
            ["setpriv", "--groups=" + ",".join(map(str, gids)), "--", sys.executable, "-c",
             "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
             "s.recv(1)", path],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with trio.fail_after(CLI_TIMEOUT):
                conn, _ = await listener.accept()
            with socket.socket(fileno=conn.detach()) as accepted:
                creds = credentials(accepted, groups=True)
        finally:
            with trio.move_on_after(EXIT_TIMEOUT) as timer:
                timer.shield = True
                await child.wait()
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert creds.pid == child.pid
    assert sorted(creds.groups) == gids
    assert all(creds.in_group(g) for g in gids) and not creds.in_group(70_000 + count)
