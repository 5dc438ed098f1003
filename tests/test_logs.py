"""``consoled logs --tail/--since/--until/--timestamps/-f``, as docker logs takes them.

Real runc containers print numbered lines, a few milliseconds apart, so that
they arrive in many batches with many times.  The output is read from the
scrollback alone, from rotated raw log files (times from their sidecars)
and from rotated CRI files (times from their records); in each case the
times ``--timestamps`` shows are the ones ``--since`` and ``--until`` select
by, and the filtering is done by the daemon (a ``--tail 3`` sends three lines).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from consoled.client.timespec import parse_time
from consoled.protocol import events as ev
from consoled.server.cri import parse_timestamp
from tests.conftest import BundleFactory, DaemonFactory
from tests.support.cli import cli
from tests.support.client import AsyncClient, wait_output
from tests.support.daemon import DaemonProcess
from tests.support.runtime import Runtime
from tests.test_logfiles import cri_records
from tests.test_reexec import reexec

LINES = 300
#: Prints LINES numbered lines, 3 ms apart, then one more when /out/go appears.
SCRIPT = (
    f'i=0; while [ $i -lt {LINES} ]; do echo "line-$i ........................................"; '
    "i=$((i+1)); usleep 3000; done; "
    "while [ ! -e /out/go ]; do usleep 20000; done; echo after-go; exec sleep 600"
)
LINE = re.compile(rb"line-(\d+) \.+\r")
STAMPED = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (.*)")


def numbers(out: bytes) -> list[int]:
    """The line numbers of ``logs`` output, each line checked whole.

    The first line may be the end of one whose start is no longer retained
    (the ring wrapped, or a raw file rotated in the middle of it): it is
    left out.
    """
    lines = out.split(b"\n")
    assert lines.pop() == b"", out[-100:]
    if lines and not lines[0].startswith(b"line-"):
        assert lines[0].endswith(b".\r"), lines[0]
        del lines[0]
    found = []
    for line in lines:
        match = LINE.fullmatch(line)
        assert match, line
        found.append(int(match.group(1)))
    return found


def stamped(out: bytes) -> list[tuple[int, int]]:
    """``logs -t`` output as (time, line number) pairs, checking each line's form."""
    pairs: list[tuple[int, int]] = []
    for line in out.split(b"\n")[:-1]:
        match = STAMPED.fullmatch(line)
        assert match, line
        if pairs or match.group(2).startswith(b"line-"):
            (number,) = numbers(match.group(2) + b"\n")
            pairs.append((parse_timestamp(match.group(1)), number))
    return pairs


async def logs(daemon: DaemonProcess, *args: str) -> bytes:
    result = await cli(daemon, "logs", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    return result.stdout


async def printed(daemon: DaemonProcess, runc: Runtime, bundle: BundleFactory, cid: str) -> None:
    """Run the SCRIPT container and wait until its last numbered line is out."""
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        path = await client.create_socket(cid)
    finally:
        await client.aclose()
    await runc.run(cid, bundle(["sh", "-c", SCRIPT]), path)
    await wait_output(daemon.control_socket, cid, f"line-{LINES - 1} ".encode())


async def check_options(daemon: DaemonProcess, cid: str, began: int) -> list[tuple[int, int]]:
    """What every option gives, checked against ``logs -t``; returns its (time, line) pairs."""
    everything = numbers(await logs(daemon, cid))
    assert everything == list(range(everything[0], LINES))  # the newest, in order
    assert len(everything) > 100
    # --timestamps: one time per line, in order, when the test ran.
    pairs = stamped(await logs(daemon, "-t", cid))
    assert [n for _, n in pairs] == everything
    times = [t for t, _ in pairs]
    assert times == sorted(times)
    assert began <= times[0] and times[-1] <= time.time_ns()
    assert len(set(times)) > 10  # lines 3 ms apart: many distinct times (10 ms resolution)
    # --tail: the last lines.
    assert numbers(await logs(daemon, "--tail", "5", cid)) == everything[-5:]
    assert numbers(await logs(daemon, "-n", "40", cid)) == everything[-40:]
    assert await logs(daemon, "--tail", "0", cid) == b""
    assert numbers(await logs(daemon, "--tail", "all", cid)) == everything
    assert numbers(await logs(daemon, "--tail", str(10 * LINES), cid)) == everything
    # --since and --until, by the times -t showed (both ends included).
    middle = times[len(times) // 2]
    text = stamp_text(middle)
    since = numbers(await logs(daemon, "--since", text, cid))
    assert since == [n for t, n in pairs if t >= middle]
    until = numbers(await logs(daemon, "--until", text, cid))
    assert until == [n for t, n in pairs if t <= middle]
    assert set(since) & set(until) and set(since) | set(until) == set(everything)
    both = numbers(await logs(daemon, "--since", stamp_text(times[5]), "--until", text, cid))
    assert both == [n for t, n in pairs if times[5] <= t <= middle]
    # Docker's order: the tail first, then the range.
    tail = numbers(await logs(daemon, "--tail", "20", "--until", text, cid))
    assert tail == [n for t, n in pairs[-20:] if t <= middle]
    # Relative times and other forms.
    assert numbers(await logs(daemon, "--since", "1h", cid)) == everything
    assert await logs(daemon, "--until", "1h", cid) == b""
    assert await logs(daemon, "--since", str(time.time() + 60), cid) == b""
    stamped_since = stamped(await logs(daemon, "-t", "--since", text, cid))
    assert stamped_since == [(t, n) for t, n in pairs if t >= middle]
    return pairs


def stamp_text(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


async def test_logs_options_over_the_scrollback_alone(
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    out_dir: Path,
    container_id: Callable[[str], str],
) -> None:
    daemon = await daemon_factory("--scrollback", "64K")
    began = time.time_ns()
    cid = container_id("ring")
    await printed(daemon, runc, bundle, cid)
    pairs = await check_options(daemon, cid, began)
    # The daemon filters: three lines of output are all a --tail 3 sends.
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        assert isinstance(await client.request(ev.Logs(cid, tail=3)), ev.Attached)
        out, ended = await client.read_output_until(b"\x00never")
        assert ended is not None and ended.reason is ev.EndReason.END_OF_LOG
        assert numbers(out) == [n for _, n in pairs[-3:]]
    finally:
        await client.aclose()
    # The times are the record's: a reexec hands them over with it.
    before = await logs(daemon, "-t", cid)
    await reexec(daemon)
    assert await logs(daemon, "-t", cid) == before
    await follow_tail_then_new_output(daemon, cid, out_dir, pairs)


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def follow_tail_then_new_output(
    daemon: DaemonProcess, cid: str, out_dir: Path, pairs: list[tuple[int, int]]
) -> None:
    """``logs -f --tail 2 -t``: the last two lines, then what comes, stamped; ctrl-c ends it."""
    argv = [sys.executable, "-m", "consoled", "logs", "-f", "--tail", "2", "-t", cid]
    proc = await trio.lowlevel.open_process(
        argv,
        env=daemon.env(),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        # As at a terminal: a suite started in the background (`.ci/run &`)
        # would otherwise pass on SIGINT ignored, as a shell does for such jobs.
        preexec_fn=default_sigint,
    )
    try:
        assert proc.stdout is not None
        out = bytearray()
        with trio.fail_after(20):
            while out.count(b"\n") < 2:
                out += await proc.stdout.receive_some(65536)
            assert stamped(bytes(out)) == pairs[-2:]
            (out_dir / "go").touch()
            while b"after-go\r\n" not in out:
                out += await proc.stdout.receive_some(65536)
        new = out.split(b"\n")[2]
        match = STAMPED.fullmatch(new)
        assert match and match.group(2) == b"after-go\r", new
        assert parse_timestamp(match.group(1)) > pairs[-1][0]
        proc.send_signal(2)  # ctrl-c
        with trio.fail_after(10):
            assert await proc.wait() == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("fmt", ["raw", "cri"])
async def test_logs_options_over_rotated_files(
    *,
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
    fmt: str,
) -> None:
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory(
        "--log-dir", str(log_dir), "--log-format-file", fmt, "--log-max-size", "4K",
        "--log-max-files", "4", "--scrollback", "4096",
    )  # fmt: skip
    began = time.time_ns()
    cid = container_id("rot")
    await printed(daemon, runc, bundle, cid)
    assert (log_dir / f"{cid}.log.3").exists()  # rotated: the tail and ranges span the files
    pairs = await check_options(daemon, cid, began)
    # More than the ring holds: the lines come from the files.
    assert len(pairs) * 50 > 2 * 4096
    if fmt == "cri":
        # The times are the records' own, those of each line's first record.
        files = [log_dir / f"{cid}.log.{n}" for n in (3, 2, 1)] + [log_dir / f"{cid}.log"]
        records: list[tuple[int, bytes]] = []
        for path in files:
            text = path.read_bytes()
            stamps = [line.split(b" ", 1)[0] for line in text.split(b"\n")[:-1]]
            records += [
                (parse_timestamp(s), content)
                for s, (_, content) in zip(stamps, cri_records(text), strict=True)
            ]
        first_of_line = {
            int(m.group(1)): when
            for when, content in records
            if (m := re.match(rb"line-(\d+) ", content))
        }
        assert [(first_of_line[n], n) for _, n in pairs] == pairs
    else:
        # A raw file's times are in its sidecar, which rotated with it.
        for n in ("3", "2", "1"):
            assert (log_dir / f"{cid}.log.{n}.idx").stat().st_size > 0


async def test_logs_follow_until_ends_by_itself(
    daemon: DaemonProcess, runc: Runtime, bundle: BundleFactory, container_id: Callable[[str], str]
) -> None:
    cid = container_id("until")
    await printed(daemon, runc, bundle, cid)
    # A time one second ahead: following stops then, though the session goes on.
    ahead = stamp_text(time.time_ns() + 1_000_000_000)
    began = time.monotonic()
    result = await cli(daemon, "logs", "-f", "--tail", "1", "--until", ahead, cid)
    assert result.returncode == 0, result.stderr
    assert 0.5 < time.monotonic() - began < 15
    assert numbers(result.stdout) == [LINES - 1]
    # A time that has passed: nothing to follow; a duration is a time ago, as docker takes it.
    result = await cli(daemon, "logs", "-f", "--until", "1s", cid)
    assert result.returncode == 0, result.stderr


async def test_logs_refuses_bad_options(daemon: DaemonProcess) -> None:
    for args, why in (
        (("--tail", "x"), "not a number of lines"),
        (("--since", "yesterday"), "not a time: 'yesterday'"),
        (("--until", "2026-13-01"), "not a valid time"),
    ):
        result = await cli(daemon, "logs", *args, "web1")
        assert result.returncode == 2, result
        err = result.stderr.decode()
        assert err.startswith("usage: consoled logs "), err
        assert why in err, err
    # The daemon checks what a client other than the CLI sends.
    await cli(daemon, "socket", "web1")
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await client.request(ev.Logs("web1", tail=-1))
        assert isinstance(reply, ev.Error) and "tail must be" in reply.message, reply
    finally:
        await client.aclose()


def test_time_forms_are_dockers() -> None:
    now = 1_800_000_000_000_000_000
    assert parse_time("10m", now) == now - 600 * 10**9
    assert parse_time("1h30m", now) == now - 5400 * 10**9
    assert parse_time("1.5s", now) == now - 1_500_000_000
    assert parse_time("250ms", now) == now - 250_000_000
    assert parse_time("2026-11-29T10:00:00Z", now) == 1_795_946_400 * 10**9
    assert parse_time("2026-11-29T10:00:00.5+01:00", now) == 1_795_942_800_500_000_000
    assert parse_time("1795946400.25", now) == 1_795_946_400_250_000_000
    assert parse_time("0", now) == 0  # as docker: the epoch, not a duration
    for bad in ("x", "-5m", "10", "2026-11-29T25:00:00Z"):
        if bad == "10":
            assert parse_time(bad, now) == 10 * 10**9  # a Unix timestamp
            continue
        with pytest.raises(ValueError, match="not a"):
            parse_time(bad, now)
