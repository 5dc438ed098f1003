"""``logs`` goes on from wherever it was cut: a property test over random output.

A reexec that cannot wait for a slow reader, and a crash, cut a ``logs``
stream after any message; the client goes on from the last
``output.cursor`` (in the log files) or ``output.offset`` (in the ring).
Here random output (lines of random lengths, some unfinished when a burst
ends, some longer than a CRI record) goes, in bursts at distinct times,
into log files that rotate every few KiB, or into the ring alone; for each
set of options (``-t``, ``--since``, ``--until``, ``--tail``) a stream resumed after
each message of the whole stream must give exactly the rest of it.
Cutting without a restart is enough: a successor reads the same files and
the same ring.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import tty
from pathlib import Path
from typing import Any

import pytest
import trio

from consoled.protocol import events as ev
from consoled.server import logstream
from consoled.server.session import Session
from tests.support.client import AsyncClient
from tests.support.inproc import InProcDaemon, hand_master, inproc_daemon

#: Bursts of output, each at its own time (the ring's times have 10 ms steps).
BURSTS = 4
SEEDS = range(4)


def burst(rng: random.Random) -> bytes:
    """Lines of random lengths (a few long ones), the last perhaps unfinished."""
    lines = []
    for _ in range(rng.randint(5, 60)):
        size = rng.choice([0, 1, 5, 40, 80, 200, 3000])
        text = bytes(rng.choice(b"abcdefghij \t-=") for _ in range(size))
        lines.append(text + b"\n")
    if rng.random() < 0.5:
        lines.append(b"unfinished " * rng.randint(1, 20))
    return b"".join(lines)


async def write_all(slave: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        await trio.lowlevel.wait_writable(slave)
        with contextlib.suppress(BlockingIOError):
            view = view[os.write(slave, view) :]


async def followed(
    d: InProcDaemon, name: str, slaves: list[int]
) -> tuple[AsyncClient, Session, int]:
    """A running session on a raw, non-blocking pty of the test's, and a client
    following it (``logs -f``); returns both and the slave."""
    client = await d.connect()
    path = await client.create_socket(name)
    _, slave = hand_master(path)
    slaves.append(slave)
    session = d.table.get(name)
    with trio.fail_after(10):
        await session.running.wait()
    tty.setraw(slave)
    os.set_blocking(slave, False)
    assert isinstance(await client.request(ev.Logs(name, follow=True)), ev.Attached)
    return client, session, slave


async def read_until(follower: AsyncClient, offset: int) -> None:
    """Until a follower's stream says it reached ``offset``."""
    with trio.fail_after(10):
        while True:
            event = await follower.receive()
            assert isinstance(event, ev.Output), event
            if event.offset is not None and event.offset >= offset:
                return


async def stream(d: InProcDaemon, request: ev.Logs) -> list[ev.Output]:
    client = await d.connect()
    try:
        attached = await client.request(request)
        assert isinstance(attached, ev.Attached), attached
        assert not attached.gap
        outputs = []
        while not isinstance(event := await client.receive(), ev.Ended):
            assert isinstance(event, ev.Output), event
            outputs.append(event)
        assert event.reason in (ev.EndReason.END_OF_LOG, ev.EndReason.EXITED), event
        return outputs
    finally:
        await client.aclose()
        d.clients.remove(client)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("where", ["raw", "cri", "ring"])
async def test_a_logs_stream_resumed_after_any_message_gives_exactly_the_rest(
    short_tmp: Path, slaves: list[int], where: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files read, and output sent, 1,000 bytes at a time (not 256 KiB): the
    # cuts fall inside files, inside lines, inside lines left out.
    monkeypatch.setattr(logstream, "FILE_CHUNK", 1000)
    monkeypatch.setattr(logstream, "MAX_DATA_CHUNK", 32 * 1000)  # what 1,000 can make, stamped
    rng = random.Random(f"{where}-{seed}")
    options: dict[str, Any] = {"scrollback": 64 * 1024}
    if where != "ring":
        options = {
            "log_dir": short_tmp / "logs",
            "log_file_format": where,
            "log_max_size": 4096,
            "log_max_files": 1000,
            "scrollback": 4096,  # less than the files: the ring holds only the end
        }
        (short_tmp / "logs").mkdir()
    async with inproc_daemon(short_tmp / "s", **options) as d:
        client, session, slave = await followed(d, "r", slaves)
        written = 0
        between = []
        for _ in range(BURSTS):
            data = burst(rng)
            await write_all(slave, data)
            written += len(data)
            await read_until(client, written)
            await trio.sleep(0.02)
            between.append(time.time_ns())
            await trio.sleep(0.02)
        if where != "ring":
            assert session.log_file is not None
            await session.log_file.wait_idle()  # written by a writer thread
            assert len(list((short_tmp / "logs").iterdir())) > 3, "the files rotated"
        windows: list[dict[str, Any]] = [
            {},
            {"timestamps": True},
            {"since": between[0]},
            {"until": between[2], "timestamps": True},
            {"since": between[1], "until": between[2]},
            {"tail": 7},
            {"tail": 40, "timestamps": True, "until": between[3]},
        ]
        for window in windows:
            whole = await stream(d, ev.Logs("r", **window))
            everything = b"".join(o.data for o in whole)
            if not window:
                assert len(everything) == written or (where == "ring" and written > 64 * 1024)
            places = [
                i for i, o in enumerate(whole) if o.cursor is not None or o.offset is not None
            ]
            assert places, "every stream says where it stands"
            for i in places:
                cut = whole[i]
                sent = b"".join(o.data for o in whole[: i + 1])
                request = ev.Logs(
                    "r", **window, uid=session.uid, cursor=cut.cursor,
                    resume=cut.offset if cut.cursor is None else None,
                )  # fmt: skip
                rest = b"".join(o.data for o in await stream(d, request))
                assert sent + rest == everything, (window, i, cut)


@pytest.mark.parametrize("where", ["raw", "cri", "ring"])
async def test_every_message_of_a_stamped_stream_says_where_it_stands(
    short_tmp: Path, slaves: list[int], where: str
) -> None:
    """`logs -t` makes more of short lines than it reads (a stamp each): still
    one message per piece read, each with its place, so that a client cut
    off between two never gets the first again."""
    # Was: a 256 KiB read of 64-byte lines made 384 KiB, sent as two
    # messages, the first with no place: a client cut off after it resumed
    # from the place before and wrote it twice.
    options: dict[str, Any] = {"scrollback": 4 * 1024 * 1024}
    if where != "ring":
        options = {"log_dir": short_tmp / "logs", "log_file_format": where}
        (short_tmp / "logs").mkdir()
    async with inproc_daemon(short_tmp / "s", **options) as d:
        client, _, slave = await followed(d, "t", slaves)
        lines = b"".join(b"%063d\n" % n for n in range(12000))  # 768 KB
        await write_all(slave, lines)
        await read_until(client, len(lines))
        windows: list[dict[str, Any]] = [{"timestamps": True}, {}]
        for window in windows:
            whole = await stream(d, ev.Logs("t", **window))
            assert [o for o in whole if o.cursor is None and o.offset is None] == []
            assert len(b"".join(o.data for o in whole)) >= len(lines)
