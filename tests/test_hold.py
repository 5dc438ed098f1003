"""The daemon takes masters from real runc and crun, holds and drains them."""

from __future__ import annotations

import json
from collections.abc import Callable

from consoled.protocol import events as ev
from tests.conftest import BundleFactory
from tests.support.cli import cli
from tests.support.client import AsyncClient
from tests.support.daemon import DaemonProcess
from tests.support.runtime import Runtime


async def test_master_held_output_logged_and_exit_seen(
    daemon: DaemonProcess,
    client: AsyncClient,
    runtime: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("hold")
    path = await client.create_socket(cid)
    # The container prints, then waits for a line on its terminal before exiting.
    b = bundle(["sh", "-c", "echo hello-from-$(hostname); read x; echo bye-$x"])
    await runtime.run(cid, b, path)
    await daemon.wait_event("session.running", session=cid)
    info = await client.session(cid)
    assert info.state is ev.SessionState.RUNNING
    # Nobody attached: the output is still read and retained.
    result = await cli(daemon, "logs", cid)
    assert result.returncode == 0, result.stderr
    assert b"hello-from-consoled-test" in result.stdout
    # Let it finish: the session turns exited and keeps its output.
    attach = await AsyncClient.connect(daemon.control_socket)
    reply = await attach.request(ev.Attach(cid, replay=0))
    assert isinstance(reply, ev.Attached)
    await attach.send(ev.Input(b"now\r"))
    out, ended = await attach.read_output_until(b"\x00never")
    assert b"bye-now" in out
    assert ended is not None and ended.reason is ev.EndReason.EXITED
    await attach.aclose()
    info = await client.session(cid)
    assert info.state is ev.SessionState.EXITED
    result = await cli(daemon, "ls", "--json")
    (entry,) = [e for e in json.loads(result.stdout) if e["session"] == cid]
    assert entry["state"] == "exited"
    assert entry["id"] == cid and entry["exec"] is None
    assert entry["bytes_out"] == info.bytes_out > 0
    for key in ("clients", "rows", "cols", "created"):
        assert key in entry
