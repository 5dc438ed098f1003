"""``consoled rename`` of a container: its execs and their log files move with it.

Was: ``rename web1 web2`` moved only the init session and left ``web1/sh-N``
behind, and ``rename web1/sh-2 other/x`` moved an exec into an unrelated
container.  With real runc and crun containers, each session writing before
and after the rename, and log files that must follow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import BundleFactory, DaemonFactory
from tests.support.cli import cli, ls_json
from tests.support.client import AsyncClient, wait_output
from tests.support.runtime import Runtime

#: Says NAME-before, waits for /out/go, says NAME-after, and stays.
SAYS = "echo {0}-before; while [ ! -e /out/go ]; do usleep 20000; done; echo {0}-after; sleep 600"


async def test_rename_moves_a_container_with_its_execs_and_logs(
    *,
    daemon_factory: DaemonFactory,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    out_dir: Path,
    container_id: Callable[[str], str],
) -> None:
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir))
    cid, new = container_id("old"), container_id("new")
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        await runtime.run(cid, bundle(["sh", "-c", SAYS.format("init")]),
                          await client.create_socket(cid))  # fmt: skip
        for name in ("e1", "e2"):
            socket = await client.create_socket(f"{cid}/{name}")
            await runtime.exec(cid, ["sh", "-c", SAYS.format(name)], socket)
    finally:
        await client.aclose()
    for name, says in ((cid, "init"), (f"{cid}/e1", "e1"), (f"{cid}/e2", "e2")):
        await wait_output(daemon.control_socket, name, f"{says}-before\r\n".encode())

    result = await cli(daemon, "rename", cid, new)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{new}\n".encode(), b"")
    listed = await ls_json(daemon)
    assert [(e["session"], e["state"]) for e in listed] == [
        (new, "running"),
        (f"{new}/e1", "running"),
        (f"{new}/e2", "running"),
    ]
    stems = [new, f"{new}@e1", f"{new}@e2"]
    names = sorted(p.name for p in log_dir.iterdir())
    assert names == sorted(f"{stem}.log{idx}" for stem in stems for idx in ("", ".idx"))
    assert [e["log_path"] for e in listed] == [str(log_dir / f"{stem}.log") for stem in stems]

    # What they write now goes on in the moved files.
    (out_dir / "go").touch()
    for name, says in ((new, "init"), (f"{new}/e1", "e1"), (f"{new}/e2", "e2")):
        await wait_output(daemon.control_socket, name, f"{says}-after\r\n".encode())
        result = await cli(daemon, "logs", name)
        assert result.stdout == f"{says}-before\r\n{says}-after\r\n".encode(), result
    assert (log_dir / f"{new}@e2.log").read_bytes() == b"e2-before\r\ne2-after\r\n"

    # An exec stays in its container; within it, it may take another name.
    result = await cli(daemon, "rename", f"{new}/e1", f"{cid}/e1")
    assert result.returncode == 1
    assert b"can only be renamed within its container" in result.stderr, result.stderr
    result = await cli(daemon, "rename", f"{new}/e1", f"{new}/first")
    assert result.stdout == f"{new}/first\n".encode(), result
    assert (log_dir / f"{new}@first.log").read_bytes() == b"e1-before\r\ne1-after\r\n"
    assert not (log_dir / f"{new}@e1.log").exists()
    # And the old name is free for a new container.
    assert (await cli(daemon, "socket", cid)).returncode == 0
