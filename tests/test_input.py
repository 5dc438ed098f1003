"""Input to a program that does not read its terminal stalls nothing else.

The daemon writes a client's keys from a task of its own with a bounded
queue: while the terminal is full, that client's resizes and detach still
work, output keeps flowing to everyone, and keys past the bound are dropped
with an ``input_dropped`` error (as a full tty input buffer drops them).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import trio

from consoled.protocol import ErrorCode
from consoled.protocol import events as ev
from tests.conftest import BundleFactory
from tests.support.client import AsyncClient
from tests.support.daemon import DaemonProcess
from tests.support.runtime import Runtime

#: The container never reads its terminal (raw mode, so the kernel's input
#: buffer really fills) and prints a numbered tick every 50 ms.
TICKER = "stty raw -echo; echo ready; i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.05; done"
TICK = re.compile(rb"tick-(\d+)")


async def tick_after(client: AsyncClient, after: int) -> int:
    """Read output until a tick numbered above ``after`` arrives; return its number."""
    pending = b""
    with trio.fail_after(15):
        while True:
            event = await client.receive()
            assert isinstance(event, ev.Output | ev.Error), event
            if isinstance(event, ev.Output):
                pending += event.data
                lines = pending.split(b"\n")
                pending = lines.pop()  # an unfinished line waits for its end
                for line in lines:
                    if (match := TICK.search(line)) and int(match[1]) > after:
                        return int(match[1])


async def test_unread_terminal_blocks_only_that_clients_keys(
    daemon: DaemonProcess,
    client: AsyncClient,
    runc: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("noread")
    path = await client.create_socket(cid)
    await runc.run(cid, bundle(["sh", "-c", TICKER]), path)
    typist = await AsyncClient.connect(daemon.control_socket)
    watcher = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await typist.request(ev.Attach(cid, replay=None, rows=24, cols=80))
        assert isinstance(reply, ev.Attached)
        assert isinstance(await watcher.request(ev.Attach(cid, replay=0)), ev.Attached)
        before = await tick_after(typist, 0)

        # 1 MiB of keys the program never reads: far more than the kernel's
        # buffers and the daemon's per-client queue hold.
        chunk = b"k" * 65536
        for _ in range(16):
            await typist.send(ev.Input(chunk))
        dropped: ev.Error | None = None
        with trio.fail_after(15):
            while dropped is None:
                event = await typist.receive()
                if isinstance(event, ev.Error):
                    dropped = event
                else:
                    assert isinstance(event, ev.Output), event
        assert dropped.code is ErrorCode.INPUT_DROPPED
        assert "not reading its terminal" in dropped.message
        await daemon.wait_event("input.dropped", session=cid)

        # Output keeps flowing, to the typist and to another client.
        later = await tick_after(typist, before)
        await tick_after(watcher, later)

        # The typist's resize is still taken while its keys wait.
        await typist.send(ev.WindowSize(33, 111))
        with trio.fail_after(15):
            # No event to await without debug logs: poll the daemon, bounded.
            while (info := await client.session(cid)).rows != 33:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert (info.rows, info.cols) == (33, 111)

        # And so is its detach, within the daemon's 1 s flush bound plus slack.
        await typist.send(ev.Detach())
        with trio.fail_after(10):
            while True:
                event = await typist.receive()
                if isinstance(event, ev.Ended):
                    break
                assert isinstance(event, ev.Output | ev.Error), event
        assert event.reason is ev.EndReason.DETACHED

        # The session is unharmed: still running, still drained, still served.
        await tick_after(watcher, later + 1)
        info = await client.session(cid)
        assert info.state is ev.SessionState.RUNNING
        assert info.clients == 1
    finally:
        await typist.aclose()
        await watcher.aclose()
