"""Session log files (``serve --log-dir``): exact bytes, CRI records, rotation, safety.

A container cats a known byte stream (whole lines, a partial line, every
byte value) to its terminal.  With ``stty raw`` the terminal passes it
through untouched; in the default mode the line discipline turns each
``\\n`` into ``\\r\\n`` (``onlcr``), and the test expects exactly that.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from consoled.io import pty
from consoled.io.fds import OwnedFd
from consoled.protocol import ErrorCode
from consoled.protocol import events as ev
from consoled.server.logfile import LogDir, LogFile, LogFormat, LogPart
from consoled.server.logstream import FileIdentity
from tests.conftest import BundleFactory, DaemonFactory
from tests.support.cli import cli
from tests.support.client import AsyncClient, wait_output
from tests.support.daemon import DaemonProcess
from tests.support.holder import PtyHolder, running_session, streamed
from tests.support.runtime import Runtime

#: One CRI record: RFC 3339 with nanoseconds in UTC, the stream, full/partial, the content.
CRI_RECORD = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) stdout ([FP]) (.*)", re.DOTALL)
#: The bytes a CRI record adds to its content (timestamp, stream, tag, spaces, newline).
CRI_OVERHEAD = len(b"2026-01-01T00:00:00.000000000Z stdout F \n")
#: The most the daemon reads from a pty before it writes: a log file passes its
#: size limit by at most this much (as CRI records, plus their overhead).
ONE_CHUNK = pty.BATCH_SIZE + pty.READ_SIZE
SCROLLBACK = 4096


def sample_stream(size: int, line: int = 100) -> bytes:
    """Whole lines, every byte value, ending in a partial line (no newline)."""
    head = b"a whole line\n" + b"every byte value: " + bytes(range(256)) + b"\n"
    body = bytearray()
    n = 0
    while len(head) + len(body) < size:
        text = b"line %06d " % n
        body += text + b"." * (line - len(text) - 1) + b"\n"
        n += 1
    return head + bytes(body) + b"the end, without a newline"


def on_terminal(data: bytes, raw_tty: bool) -> bytes:
    """What a program writing ``data`` puts on its terminal (onlcr unless raw)."""
    return data if raw_tty else data.replace(b"\n", b"\r\n")


def cri_records(text: bytes) -> list[tuple[bytes, bytes]]:
    """The (tag, content) of each record of a CRI log file, checking every one."""
    assert text.endswith(b"\n"), text[-80:]
    records = []
    stamps = []
    for line in text[:-1].split(b"\n"):
        match = CRI_RECORD.fullmatch(line)
        assert match, f"not a CRI record: {line[:100]!r}"
        stamp, tag, content = match.groups()
        stamps.append(stamp)
        records.append((tag, content))
    assert stamps == sorted(stamps)
    return records


def parse_cri(text: bytes) -> bytes:
    """The bytes a CRI log file records: a full line's newline is implied."""
    return b"".join(content + (b"\n" if tag == b"F" else b"") for tag, content in cri_records(text))


def decoded(path: Path, fmt: str) -> bytes:
    data = path.read_bytes()
    return data if fmt == "raw" else parse_cri(data)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


#: ``await cat(daemon, data, raw_tty=...)``: the id of an exited container that cat ``data``.
CatFn = Callable[..., Awaitable[str]]


@pytest.fixture
def cat(
    runc: Runtime, bundle: BundleFactory, out_dir: Path, container_id: Callable[[str], str]
) -> CatFn:
    """Run a container that puts ``data`` on its terminal; return once it has exited."""

    async def run(daemon: DaemonProcess, data: bytes, *, raw_tty: bool) -> str:
        cid = container_id("cat")
        (out_dir / "data.bin").write_bytes(data)
        script = ("stty raw -echo; " if raw_tty else "") + "cat /out/data.bin"
        client = await AsyncClient.connect(daemon.control_socket)
        try:
            path = await client.create_socket(cid)
        finally:
            await client.aclose()
        await runc.run(cid, bundle(["sh", "-c", script]), path)
        # Logged once the master hung up and the log file was closed.
        await daemon.wait_event("session.exited", session=cid, timeout=30)
        return cid

    return run


@pytest.mark.parametrize("raw_tty", [True, False], ids=["stty-raw", "onlcr"])
@pytest.mark.parametrize("fmt", ["raw", "cri"])
async def test_log_file_holds_exactly_the_output(
    daemon_factory: DaemonFactory, cat: CatFn, tmp_path: Path, fmt: str, raw_tty: bool
) -> None:
    log_dir = tmp_path / "logs"  # the daemon creates it
    daemon = await daemon_factory(
        "--log-dir", str(log_dir), "--log-format-file", fmt, "--scrollback", str(SCROLLBACK)
    )
    data = sample_stream(64 * 1024)
    cid = await cat(daemon, data, raw_tty=raw_tty)
    expected = on_terminal(data, raw_tty)
    path = log_dir / f"{cid}.log"
    result = await cli(daemon, "ls", "--json", cid)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["log_path"] == str(path)
    assert decoded(path, fmt) == expected
    if fmt == "cri":
        # The unfinished last line is a partial record; its newline is not implied.
        assert path.read_bytes().endswith(b" stdout P the end, without a newline\n")
    assert mode_of(path) == 0o600
    assert mode_of(log_dir) == 0o700
    # `consoled logs` reads the file: far more than the scrollback holds.
    result = await cli(daemon, "logs", cid)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) > SCROLLBACK
    assert result.stdout == expected


@pytest.mark.parametrize("files", [2, 4])
@pytest.mark.parametrize("fmt", ["raw", "cri"])
async def test_log_file_rotates_at_its_size_limit(
    daemon_factory: DaemonFactory, cat: CatFn, tmp_path: Path, fmt: str, files: int
) -> None:
    limit = 64 * 1024
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory(
        "--log-dir", str(log_dir), "--log-format-file", fmt, "--log-max-size", "64K",
        "--log-max-files", str(files),
    )  # fmt: skip
    data = sample_stream(8 * limit)
    assert len(data) > ONE_CHUNK  # at least two reads, so a CRI file rotates too
    cid = await cat(daemon, data, raw_tty=True)
    # NAME.log.N (oldest) ... NAME.log.1, then NAME.log: files - 1 older ones are kept.
    paths = [log_dir / f"{cid}.log.{n}" for n in range(files - 1, 0, -1)] + [log_dir / f"{cid}.log"]
    # A raw file's times are in its sidecar, which rotates with it.
    sidecars = [path.with_name(path.name + ".idx") for path in paths] if fmt == "raw" else []
    assert sorted(p.name for p in log_dir.iterdir()) == sorted(p.name for p in paths + sidecars)
    # As CRI, one chunk of sample_stream's 100-byte lines is at most this many records.
    records = ONE_CHUNK // 100 + 2
    bound = limit + ONE_CHUNK + (0 if fmt == "raw" else records * CRI_OVERHEAD)
    for path in paths:
        sidecar = path.with_name(path.name + ".idx")
        taken = path.stat().st_size + (sidecar.stat().st_size if fmt == "raw" else 0)
        assert 0 < path.stat().st_size <= taken < bound, path  # the sidecar counts
        assert mode_of(path) == 0o600
    # Together, oldest first, they are the newest output, in order.
    kept = b"".join(decoded(path, fmt) for path in paths)
    assert data.endswith(kept)
    assert len(kept) >= (files - 1) * limit // 2
    result = await cli(daemon, "logs", cid)
    assert result.returncode == 0, result.stderr
    assert result.stdout == kept


async def test_planted_links_are_replaced_not_followed(
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir(mode=0o700)
    precious = {name: tmp_path / name for name in ("target", "target.1", "hardlinked")}
    for target in precious.values():
        target.write_bytes(b"precious\n")
        target.chmod(0o644)
    cid = container_id("link")
    exec_name = f"{cid}/sh1"
    # Whoever can write to the log directory plants links at the sessions' file names.
    (log_dir / f"{cid}.log").symlink_to(precious["target"])
    (log_dir / f"{cid}.log.1").symlink_to(precious["target.1"])
    os.link(precious["hardlinked"], log_dir / f"{cid}@sh1.log")

    daemon = await daemon_factory("--log-dir", str(log_dir))
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        b = bundle(["sh", "-c", "echo init-says-hi; exec sleep 600"])
        await runc.run(cid, b, await client.create_socket(cid))
        await runc.exec(cid, ["echo", "exec-says-hi"], await client.create_socket(exec_name))
        await daemon.wait_event("session.exited", session=exec_name)
        await runc.kill(cid)
        await daemon.wait_event("session.exited", session=cid)
    finally:
        await client.aclose()
    for target in precious.values():
        assert target.read_bytes() == b"precious\n"
        assert mode_of(target) == 0o644
    assert not os.path.lexists(log_dir / f"{cid}.log.1")
    for name, said in (
        (f"{cid}.log", b"init-says-hi\r\n"),
        (f"{cid}@sh1.log", b"exec-says-hi\r\n"),
    ):
        path = log_dir / name
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1, name
        assert mode_of(path) == 0o600
        assert path.read_bytes() == said


async def test_cri_partial_line_is_continued_by_the_next_record(
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir), "--log-format-file", "cri")
    cid = container_id("part")
    client = await AsyncClient.connect(daemon.control_socket)
    attach = await AsyncClient.connect(daemon.control_socket)
    try:
        path = await client.create_socket(cid)
        reply = await attach.request(ev.Attach(cid))  # waiting: streams from the first byte
        assert isinstance(reply, ev.Attached), reply
        script = 'stty -echo; printf "question? "; read x; echo "answer=$x"'
        await runc.run(cid, bundle(["sh", "-c", script]), path)
        # The daemon writes each batch to the file before it takes the next input,
        # so the question is logged, as an unfinished line, before the answer exists.
        out, ended = await attach.read_output_until(b"question? ")
        assert ended is None, out
        await attach.send(ev.Input(b"42\r"))
        out, ended = await attach.read_output_until(b"\x00never")
        assert ended is not None and ended.reason is ev.EndReason.EXITED, out
        await daemon.wait_event("session.exited", session=cid)
    finally:
        await attach.aclose()
        await client.aclose()
    records = cri_records((log_dir / f"{cid}.log").read_bytes())
    assert records[-1] == (b"F", b"answer=42\r")
    assert {tag for tag, _ in records[:-1]} == {b"P"}
    assert b"".join(content for _, content in records[:-1]) == b"question? "


def test_a_cri_file_written_past_its_record_goes_on_where_it_stands(tmp_path: Path) -> None:
    """After a crash, a CRI file's own records say how far it got, not the session's record."""
    # Was: the successor took the position the session's record last stored
    # (when the file was created or rotated) and wrote everything after it again.
    logs = tmp_path / "logs"
    stream = b""
    with contextlib.closing(LogDir.open(logs)) as logdir:
        log = LogFile.create(logdir, "web", LogFormat.CRI, max_size=0, max_files=2)
        try:

            def write(data: bytes) -> None:
                nonlocal stream
                stream += data
                log.write(data, len(stream))

            write(b"one\n")
            write(b"half")
            recorded = log.meta()  # the record as the daemon last wrote it
            write(b" a line\nprogress " + b"\r." * 300_000)  # a 600 KB record: longer than a read
            write(b"\ntwo\nthree")
            write(b"\n")
            whole = (logs / "web.log").stat().st_size
            with open(logs / "web.log", "ab") as f:  # the daemon died inside a write
                f.write(b"2026-11-30T00:00:00.000000000Z stdout F fo")
            adopted = LogFile.adopt(logdir, recorded, log.owner.dup(), writing=True)
        finally:
            log.close()
        try:
            assert adopted.written_to == len(stream)
            assert adopted.size == whole == (logs / "web.log").stat().st_size, "cut record gone"
            stream += b"four\n"
            adopted.write(b"four\n", len(stream))
        finally:
            adopted.close()
    assert parse_cri((logs / "web.log").read_bytes()) == stream


def logged(logs: Path, fmt: LogFormat) -> bytes:
    """The output a log's files hold, oldest file first."""
    files = [f for f in logs.glob("web.log*") if not f.name.endswith(".idx")]
    files.sort(key=lambda f: -int(f.name.removeprefix("web.log").lstrip(".") or 0))
    data = [f.read_bytes() for f in files]
    return b"".join(parse_cri(d) if fmt is LogFormat.CRI else d for d in data)


@pytest.mark.parametrize("fmt", [LogFormat.RAW, LogFormat.CRI])
@pytest.mark.parametrize("when", ["stored late", "recorded late"])
def test_a_crash_just_after_a_rotation_loses_and_repeats_nothing(
    tmp_path: Path, fmt: LogFormat, when: str
) -> None:
    """The fd kept by the service manager, or the session's record, may be
    from before the last rotation when the daemon dies.

    "stored late": the record says the new file, but the manager still holds
    the old one's fd (the daemon died before the manager read the FDSTORE).
    "recorded late": both are from before the rotation (the daemon died
    between rotating and writing the record).
    """
    # Was: the successor wrote on in the old file (renamed .1 by then) and took
    # its size for the new one's: a gap of up to a file in every format (found
    # by a throwaway soak of crashes under systemd: 302 lines missing at a rotation).
    logs = tmp_path / "logs"
    stream = b""
    with contextlib.closing(LogDir.open(logs)) as logdir:
        log = LogFile.create(logdir, "web", fmt, max_size=400, max_files=4)
        try:

            def write(data: bytes) -> bool:
                nonlocal stream
                stream += data
                return log.write(data, len(stream))

            n = 0
            while log.rotations < 1:
                write(b"line %03d\n" % n)
                n += 1
            kept, recorded = log.owner.dup(), log.meta()  # just before the next rotation
            rotations = log.rotations
            while log.rotations == rotations:
                write(b"line %03d\n" % n)
                n += 1
            if when == "stored late":
                recorded = log.meta()
            for _ in range(3):  # more after it, in the new file
                write(b"line %03d\n" % n)
                n += 1
            adopted = LogFile.adopt(logdir, recorded, kept, writing=True)
            expected_rotations = log.rotations
        finally:
            log.close()
        try:
            assert adopted.written_to == len(stream)
            assert adopted.rotations == expected_rotations
            stream += b"after\n"
            adopted.write(b"after\n", len(stream))
        finally:
            adopted.close()
    assert logged(logs, fmt) == stream


@pytest.mark.parametrize("fmt", [LogFormat.RAW, LogFormat.CRI])
def test_a_crash_in_the_middle_of_a_rename_keeps_writing_the_file(
    tmp_path: Path, fmt: LogFormat
) -> None:
    """The files were renamed, the record not yet: the name it gives is gone,
    and the fd handed back is the file to go on with."""
    logs = tmp_path / "logs"
    with contextlib.closing(LogDir.open(logs)) as logdir:
        log = LogFile.create(logdir, "web", fmt, max_size=0, max_files=2)
        try:
            log.write(b"one\n", 4)
            recorded = log.meta()
            log.rename("web2")  # and the daemon dies before writing the record
            adopted = LogFile.adopt(logdir, recorded, log.owner.dup(), writing=True)
        finally:
            log.close()
        try:
            assert adopted.written_to == 4
            adopted.write(b"two\n", 8)
        finally:
            adopted.close()
    data = (logs / "web2.log").read_bytes()
    assert (parse_cri(data) if fmt is LogFormat.CRI else data) == b"one\ntwo\n"


def test_a_cri_file_with_foreign_bytes_past_its_record_keeps_the_recorded_position(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    with contextlib.closing(LogDir.open(logs)) as logdir:
        log = LogFile.create(logdir, "web", LogFormat.CRI, max_size=0, max_files=2)
        try:
            log.write(b"one\n", 4)
            recorded = log.meta()
            with open(logs / "web.log", "ab") as f:
                f.write(b"not a record\n")
            adopted = LogFile.adopt(logdir, recorded, log.owner.dup(), writing=True)
            older = LogFile.adopt(
                logdir,
                {k: v for k, v in recorded.items() if k != "size"},  # an older daemon's record
                log.owner.dup(),
                writing=True,
            )
        finally:
            log.close()
        for other in (adopted, older):
            assert other.written_to == 4
            other.close()
    assert (logs / "web.log").read_bytes().endswith(b"not a record\n"), "nothing cut"


async def logs_from(
    daemon: DaemonProcess, request: ev.Logs
) -> tuple[ev.Attached | ev.Error, list[ev.Output]]:
    """Send ``request`` on a connection of its own and collect its stream to the end."""
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        attached = await client.request(request)
        outputs: list[ev.Output] = []
        while isinstance(attached, ev.Attached):
            event = await client.receive()
            if isinstance(event, ev.Ended):
                assert event.reason is ev.EndReason.END_OF_LOG, event
                break
            assert isinstance(event, ev.Output), event
            outputs.append(event)
        assert isinstance(attached, ev.Attached | ev.Error), attached
        return attached, outputs
    finally:
        await client.aclose()


@pytest.mark.parametrize("fmt", ["raw", "cri"])
async def test_logs_resume_at_a_cursor_in_the_files_and_say_when_it_rotated_away(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path, fmt: str
) -> None:
    """Each `output` from the files says where it ends (`cursor`); a stream
    started there goes on with the next byte, through a rotation (the file
    keeps its identity when renamed); once the file is gone, the oldest file
    kept comes next and `attached.gap` says some output was lost."""
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory(
        "--log-dir", str(log_dir), "--log-format-file", fmt, "--log-max-size", "300K",
        "--log-max-files", "3",
    )  # fmt: skip
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "cur")
        await holder.stream(0, 0.5, 20000)
        written = (await holder.wait_streams(30))[0]
        everything = streamed(0, written)
        await wait_output(daemon.control_socket, "cur", everything[-64:])
        attached, outputs = await logs_from(daemon, ev.Logs("cur"))
        assert isinstance(attached, ev.Attached)
        data = b"".join(o.data for o in outputs)
        assert everything.endswith(data) and len(data) > 400_000
        # Every output from the files has a cursor; the files end at an offset.
        files = [o for o in outputs if o.cursor is not None]
        assert len(files) >= 3 and all(o.offset is None for o in files)
        assert outputs[len(files)] == ev.Output(b"", offset=attached.offset)
        # Opaque, and no inode numbers in it (nor generations: NFS handles are made of them).
        assert files[0].cursor is not None
        assert re.fullmatch(r"f[0-9a-f]{16}\.\d+\.\d+\.[01]{3}", files[0].cursor)
        inodes = {str(path.stat().st_ino) for path in log_dir.iterdir()}
        assert not any(ino in files[0].cursor.split(".") for ino in inodes)
        # A stream from the second one's cursor: the same bytes from there on.
        second = len(files[0].data)
        resumed = ev.Logs("cur", cursor=files[0].cursor, uid=attached.uid)
        again, rest = await logs_from(daemon, resumed)
        assert isinstance(again, ev.Attached) and not again.gap
        assert b"".join(o.data for o in rest) == data[second:]
        # Through rotations the cursor finds its file (renamed); once the
        # file is gone (the inode number perhaps taken by a new one), the
        # oldest file kept is next, and `gap` says so.
        total = everything
        skip = len(everything) - len(data) + second  # where the cursor is in all output
        with trio.fail_after(60):
            for mark in itertools.count():
                again, rest = await logs_from(daemon, resumed)
                assert isinstance(again, ev.Attached)
                rest_data = b"".join(o.data for o in rest)
                if again.gap:
                    break
                assert rest_data == total[skip:]
                await holder.stream(0, 0.3, 20000)
                total += streamed(0, (await holder.wait_streams(30))[0])  # numbered from 1 again
                await holder.say(0, f"mark-{mark}")
                total += f"mark-{mark}\n".encode()
                await wait_output(daemon.control_socket, "cur", f"mark-{mark}\n".encode())
        assert mark > 0, "rotated at least once with the file still there"
        assert total.endswith(rest_data) and len(rest_data) < len(total) - skip
        # Cursors this daemon did not make, or with an offset too.
        for request, why in (
            (ev.Logs("cur", cursor="x1.2.3.11"), "'x1.2.3.11' is not a log cursor"),
            (ev.Logs("cur", cursor=files[0].cursor, resume=0), "cannot both be given"),
        ):
            reply, _ = await logs_from(daemon, request)
            assert isinstance(reply, ev.Error) and why in reply.message, reply
            assert reply.code is ErrorCode.INVALID_ARGUMENT
    finally:
        await holder.aclose()


def test_a_log_file_is_not_taken_for_the_one_whose_inode_number_it_got(tmp_path: Path) -> None:
    """A rotation deletes the oldest file, and ext4 gives its inode number to
    the next file made: a cursor into the deleted file must not find it."""
    path = tmp_path / "c.log.3"
    path.write_bytes(b"2026-11-30T09:00:00.000000001Z stdout F the old file\n")
    part = LogPart(OwnedFd(os.open(path, os.O_RDONLY), "log"), path.stat().st_size, str(path))
    old = FileIdentity.of(part)
    part.close()
    path.unlink()
    for n, content in enumerate(
        (b"2026-11-30T09:00:01.000000001Z stdout F new\n", path.name.encode())
    ):
        new = tmp_path / f"c.log.new{n}"
        new.write_bytes(content)
        part = LogPart(OwnedFd(os.open(new, os.O_RDONLY), "log"), new.stat().st_size, str(new))
        try:
            assert new.stat().st_ino == old.ino, "the file system reuses inode numbers (ext4 does)"
            assert FileIdentity.of(part, old.head) != old
        finally:
            part.close()
        new.unlink()


async def test_logs_kept_by_rm_are_moved_aside_not_deleted_by_the_next_session_of_the_name(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``rm --keep-logs`` keeps the files; a new session of the name (a new
    container with the id, or the same after a daemon that lost its sessions)
    moves them aside to ``NAME~1.log``, as a previous generation's."""
    # Was: the new session's log file replaced them, and its rotated files
    # were deleted.
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir), "--log-max-size", "4K")
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "kept")
        for n in range(100):  # 1.6 KB a line: the file rotates
            await holder.say(0, f"first-{n:03d}-" + "x" * 1600)
        await wait_output(daemon.control_socket, "kept", b"first-099-")
        before = {p.name: p.read_bytes() for p in log_dir.iterdir()}
        assert {"kept.log", "kept.log.1"} <= set(before), sorted(before)
        assert (await cli(daemon, "rm", "--force", "--keep-logs", "kept")).returncode == 0
        assert (await cli(daemon, "socket", "kept")).returncode == 0
        after = {p.name: p.read_bytes() for p in log_dir.iterdir()}
        assert after["kept.log"] == b""
        for name, data in before.items():
            assert after[name.replace("kept.", "kept~1.", 1)] == data, name
    finally:
        await holder.aclose()


async def test_a_rename_onto_kept_logs_moves_them_aside_and_mixes_nothing(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Was: the renamed session's files replaced them, and their rotated files
    # beyond its own were read by `logs` as older parts of its log.
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir), "--log-max-size", "4K")
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "name")
        for n in range(100):  # the file rotates: name.log.1 to name.log.4
            await holder.say(0, f"kept-{n:03d}-" + "x" * 1600)
        await wait_output(daemon.control_socket, "name", b"kept-099-")
        assert (await cli(daemon, "rm", "--force", "--keep-logs", "name")).returncode == 0
        kept = {p.name: p.read_bytes() for p in log_dir.iterdir()}
        assert "name.log.4" in kept, sorted(kept)
        await running_session(daemon, holder, "other")
        await holder.say(1, "the-renamed-one")
        await wait_output(daemon.control_socket, "other", b"the-renamed-one")
        assert (await cli(daemon, "rename", "other", "name")).returncode == 0
        logs = await cli(daemon, "logs", "name")
        assert logs.stdout == b"the-renamed-one\r\n", logs.stdout[:200]
        for name, data in kept.items():
            assert (log_dir / name.replace("name.", "name~1.", 1)).read_bytes() == data, name
    finally:
        await holder.aclose()
