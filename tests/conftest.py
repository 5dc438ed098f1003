"""Fixtures: real daemons, real runtimes, real bundles, real ptys.

Every test that starts a daemon also checks, on teardown, that it stops
cleanly on SIGTERM (exit 0, control socket removed) and logged no internal
error: a crash or a swallowed bug fails the test that caused it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from consoled.server.logconfig import make_sink
from consoled.server.logsink import LogSink
from tests.support.bundle import build_rootfs, make_bundle
from tests.support.client import AsyncClient
from tests.support.daemon import DaemonProcess
from tests.support.ptyproc import EXIT_TIMEOUT, PtyProcess, wait_raw
from tests.support.runtime import Runtime, new_container_id
from tests.support.servicevenv import venv_python
from tests.support.sink import SinkFactory
from tests.support.usermanager import UserManager

RUNTIMES = ("runc", "crun")


@pytest.fixture
def slaves() -> Iterator[list[int]]:
    """Pty slave fds a test opened: closed at the end (their terminals hang up)."""
    opened: list[int] = []
    yield opened
    for fd in opened:
        os.close(fd)


@pytest.fixture(scope="session")
def rootfs_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared busybox rootfs (and config template): $CONSOLED_TEST_ROOTFS or built once."""
    preset = os.environ.get("CONSOLED_TEST_ROOTFS")
    base = Path(preset) if preset else tmp_path_factory.mktemp("rootfs")
    base.mkdir(parents=True, exist_ok=True)
    build_rootfs(base)
    return base


@pytest.fixture(scope="session")
def runtime_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: tmp_path_factory.mktemp(f"{name}-root") for name in RUNTIMES}


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory under /tmp: socket paths must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def new_sink() -> Iterator[SinkFactory]:
    """``new_sink(fd, fmt="json", **options)``: the daemon's log sink on ``fd``,
    closed (briefly waited for) at the end of the test."""
    made: list[LogSink] = []

    def factory(fd: int, fmt: str = "json", **options: Any) -> LogSink:
        sink = make_sink(fd, fmt, **options)
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close(0.5)


@pytest.fixture
async def runc(runtime_roots: dict[str, Path]) -> AsyncIterator[Runtime]:
    rt = Runtime("runc", runtime_roots["runc"])
    try:
        yield rt
    finally:
        await rt.cleanup()


@pytest.fixture
async def crun(runtime_roots: dict[str, Path]) -> AsyncIterator[Runtime]:
    rt = Runtime("crun", runtime_roots["crun"])
    try:
        yield rt
    finally:
        await rt.cleanup()


@pytest.fixture(params=RUNTIMES)
async def runtime(
    request: pytest.FixtureRequest, runtime_roots: dict[str, Path]
) -> AsyncIterator[Runtime]:
    """Each test using this runs once with runc and once with crun."""
    rt = Runtime(request.param, runtime_roots[request.param])
    try:
        yield rt
    finally:
        await rt.cleanup()


BundleFactory = Callable[..., Path]


@pytest.fixture
def bundle(rootfs_base: Path, tmp_path: Path) -> BundleFactory:
    """``bundle(args, tag=..., terminal=True, env=())`` -> a bundle dir.

    The bundle's /out is ``tmp_path/out``.
    """
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    counter = iter(range(1, 10_000))

    def factory(args: Sequence[str], *, terminal: bool = True, env: Sequence[str] = ()) -> Path:
        return make_bundle(
            rootfs_base, tmp_path / f"bundle{next(counter)}", args,
            out_dir=out, terminal=terminal, env=env,
        )  # fmt: skip

    return factory


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return out


@pytest.fixture
def container_id() -> Callable[[str], str]:
    return new_container_id


DaemonFactory = Callable[..., Awaitable[DaemonProcess]]


@pytest.fixture
async def daemon_factory(nursery: trio.Nursery, short_tmp: Path) -> AsyncIterator[DaemonFactory]:
    """Start daemons with extra ``serve`` options (and DaemonProcess keyword
    options); each is checked on teardown."""
    started: list[DaemonProcess] = []
    counter = iter(range(1, 100))

    async def start(*args: str, state_dir: Path | None = None, **options: Any) -> DaemonProcess:
        d = DaemonProcess(state_dir or short_tmp / f"s{next(counter)}", args, **options)
        started.append(d)
        await d.start(nursery)
        return d

    yield start
    failures = []
    for d in started:
        if d.returncode is None:
            rc = await d.stop()
            if rc != 0:
                failures.append(f"daemon exited {rc} on SIGTERM")
            if os.path.exists(d.control_socket):
                failures.append("control socket left behind")
        failures.extend(f"internal error logged: {e}" for e in d.internal_errors())
    assert not failures, failures


@pytest.fixture
async def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    return await daemon_factory()


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[AsyncClient]:
    c = await AsyncClient.connect(daemon.control_socket)
    try:
        yield c
    finally:
        await c.aclose()


Spawn = Callable[..., Awaitable[PtyProcess]]


@pytest.fixture
async def attach(nursery: trio.Nursery, daemon_factory: DaemonFactory) -> AsyncIterator[Spawn]:
    """``await attach(daemon, *args, rows=, cols=)``: ``consoled attach ARGS`` under a pty.

    Returns once the client's terminal is raw, that is once the daemon has
    accepted the attach.  Every client is killed and reaped on teardown.
    (Depends on ``daemon_factory`` so that clients go before their daemons.)
    """
    started: list[PtyProcess] = []

    async def spawn(
        daemon: DaemonProcess, *args: str, rows: int = 24, cols: int = 80, wait: bool = True
    ) -> PtyProcess:
        argv = [sys.executable, "-m", "consoled", "attach", *args]
        proc = await PtyProcess.spawn(nursery, argv, env=daemon.env(), rows=rows, cols=cols)
        started.append(proc)
        if wait:
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


@pytest.fixture(scope="session")
def service_python() -> Path:
    """Debian's python3 in a world-readable venv with this checkout installed.

    For services run by a test user (see ``user_manager``), who cannot
    execute an interpreter under /root.  Built once per change of the
    project's files, shared between sessions (tests.support.servicevenv).
    """
    return venv_python(Path(__file__).resolve().parent.parent)


@pytest.fixture
async def user_manager() -> AsyncIterator[UserManager]:
    """A running ``systemd --user`` for a throw-away user, removed afterwards.

    See tests.support.usermanager for how it is run safely on a shared host.
    """
    async with UserManager.start() as um:
        yield um
