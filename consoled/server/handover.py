"""Handing every fd the daemon holds to a successor program: ``consoled reexec``.

The predecessor starts the successor (the program now installed, with the
same arguments) with one end of a ``SOCK_SEQPACKET`` pair, and keeps serving
until the successor says it is *ready* (it has imported everything and
parsed its arguments).  Then the predecessor quiesces (see
:mod:`.daemon`), and sends every fd it holds, named, in batches of at most
:data:`~consoled.io.fdpass.BATCH_FDS` (one ``SCM_RIGHTS`` message carries at
most 253).  The fds are the same objects the daemon serves from: listening
sockets with their backlogs, masters with unread output in the kernel's
buffers, session records with their rings, log files at their positions.

The successor rebuilds everything from them and says *adopted*; only then
does the predecessor *commit*, and exit without closing anything that
matters (the successor holds every fd too).  Until the commit, the
predecessor can take everything back: if the successor exits, fails or
says nothing in time, it is killed and the predecessor serves on as if
nothing had happened.  A successor that has adopted everything and then
loses its predecessor before the commit takes over anyway: at that point it
is the only holder of the consoles.

Every message is one msgpack map; the successor's stderr is a pipe the
predecessor relays into its own log (so a successor that cannot even start
explains why) until the commit hands it the real one.

The emulated screens (see :mod:`.screenstate`) go along in one more fd,
``screens``: a memfd of msgpack, each screen frozen to its render with the
offset it continues from (:func:`write_screens`).  A successor rebuilding a
screen from the ring alone would have only the ring's output; with this it
goes on exactly where the predecessor was.  One that does not know the
name closes it, and rebuilds from the ring as before.

A successor says which versions of session records it reads (*ready*
carries ``records``).  One that cannot read this daemon's (an older program,
which sends no such list) would find no session in them, and hold every
terminal as ``unnamed-N`` without its output: it is not handed anything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import structlog
import trio

from ..io.fdpass import BATCH_FDS, receive_with_fds, send_with_fds
from ..io.fds import OwnedFd
from ..io.record import LOADABLE
from ..io.record import VERSION as RECORD_VERSION
from .screenstate import ScreenHandover

log = structlog.get_logger("consoled.handover")

#: The environment variable that gives the successor its end of the pair.
HANDOVER_ENV: Final = "CONSOLED_HANDOVER_FD"
#: Seconds the successor has to start and say it is ready.
READY_TIMEOUT: Final = 60.0
#: Seconds the successor has to adopt everything once it has it.
ADOPT_TIMEOUT: Final = 60.0
#: Largest handover message.
MAX_MESSAGE: Final = 256 * 1024
#: Lines of the successor's stderr kept to explain a failure.
KEPT_LINES: Final = 20
#: Seconds the successor has to switch to its real stderr after the commit.
STDERR_TIMEOUT: Final = 2.0


class HandoverError(Exception):
    """The handover failed; the message says why (for the log and for the requester)."""


#: Largest ``screens`` memfd read: about 20,000 screens of 200x60.
MAX_SCREENS_BYTES: Final = 256 * 1024 * 1024


def write_screens(screens: dict[int, ScreenHandover]) -> OwnedFd:
    """The screens, by session serial, in a memfd for the successor (at offset 0)."""
    data = msgpack.packb([[serial, *state] for serial, state in screens.items()])
    owner = OwnedFd(os.memfd_create("consoled:screens", os.MFD_CLOEXEC), "screens")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(owner.fd, view) :]
        os.lseek(owner.fd, 0, os.SEEK_SET)
    except BaseException:
        owner.close()
        raise
    return owner


def read_screens(owner: OwnedFd) -> dict[int, ScreenHandover]:
    """The screens a predecessor handed over (closes ``owner``).

    Raises:
        ValueError: it is not what :func:`write_screens` writes; the message says how.
    """
    try:
        size = os.fstat(owner.fd).st_size
        if size > MAX_SCREENS_BYTES:
            raise ValueError(f"{size} bytes, more than {MAX_SCREENS_BYTES}")
        data = os.pread(owner.fd, size, 0)
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    finally:
        owner.close()
    try:
        entries = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"garbled: {exc}") from None
    match entries:
        case list():
            pass
        case _:
            raise ValueError("garbled: not a list")
    screens: dict[int, ScreenHandover] = {}
    for entry in entries:
        match entry:
            case [int(serial), int(fed), bool(approximate), int(rows), int(cols), bytes(render)]:
                screens[serial] = ScreenHandover(fed, approximate, rows, cols, render)
            case _:
                raise ValueError(
                    "garbled: an entry is not [serial, fed, approximate, rows, cols, render]"
                )
    return screens


def _pack(message: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(message)
    return packed


def _unpack(data: bytes) -> dict[str, Any]:
    if not data:
        raise HandoverError("the other side closed the handover socket")
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise HandoverError(f"garbled handover message: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise HandoverError("garbled handover message: not a typed map")
    return message


class StderrRelay:
    """Relays the successor's stderr into our log, keeping its last lines."""

    def __init__(self) -> None:
        self.kept: deque[str] = deque(maxlen=KEPT_LINES)
        self.done = trio.Event()

    async def run(self, stream: trio.abc.ReceiveStream) -> None:
        buf = b""
        try:
            async for chunk in stream:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace")
                    self.kept.append(text)
                    log.info("reexec.successor_output", line=text[:2000])
            if buf:
                self.kept.append(buf.decode(errors="replace"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.done.set()

    def last_words(self) -> str:
        return next((line.strip() for line in reversed(self.kept) if line.strip()), "")


@dataclass(slots=True)
class Successor:
    """A successor process that said it is ready."""

    process: trio.Process
    sock: trio.socket.SocketType
    pid: int
    version: str
    stderr: StderrRelay


def successor_argv() -> list[str]:
    """The command that started this daemon: the successor runs the same, as installed now."""
    return [sys.executable, *sys.orig_argv[1:]]


class Predecessor:
    """The old daemon's side of a handover.

    Args:
        argv: the successor's command line.
        nursery: where the successor's stderr relay runs.
    """

    def __init__(self, argv: Sequence[str], nursery: trio.Nursery) -> None:
        self.argv = list(argv)
        self._nursery = nursery
        self.successor: Successor | None = None

    async def start(self) -> Successor:
        """Start the successor and wait until it says it is ready.

        Raises:
            HandoverError: it could not start, exited, or did not answer in time.
        """
        ours, theirs = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
        )
        env = dict(os.environ)
        env[HANDOVER_ENV] = str(theirs.fileno())
        # systemd set WATCHDOG_PID to our pid; the successor pings as the new main pid.
        env.pop("WATCHDOG_PID", None)
        relay = StderrRelay()
        sock = trio.socket.from_stdlib_socket(ours)
        try:
            try:
                process = await trio.lowlevel.open_process(
                    self.argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=False,
                )
            except OSError as exc:
                raise HandoverError(f"cannot start {self.argv[0]}: {exc.strerror}") from None
            finally:
                theirs.close()
            assert process.stderr is not None
            self._nursery.start_soon(relay.run, process.stderr)
            try:
                with trio.fail_after(READY_TIMEOUT):
                    message = await self._receive_or_exit(sock, process, relay)
            except trio.TooSlowError:
                await self._kill(process)
                raise HandoverError(
                    f"the new program did not get ready within {READY_TIMEOUT:g} s"
                ) from None
            if message["type"] != "ready":
                await self._kill(process)
                raise HandoverError(f"the new program failed to start: {message.get('error')}")
            readable = message.get("records", [1])
            if not isinstance(readable, list) or RECORD_VERSION not in readable:
                await self._kill(process)
                raise HandoverError(
                    f"the new program reads session records of version {readable} only, not "
                    f"{RECORD_VERSION} (it is older than this one): it would lose every "
                    "session's name and output"
                )
        except BaseException:
            sock.close()
            raise
        self.successor = Successor(
            process, sock, int(message["pid"]), str(message.get("version", "?")), relay
        )
        log.info("reexec.successor_ready", pid=self.successor.pid, version=self.successor.version)
        return self.successor

    async def _receive_or_exit(
        self, sock: trio.socket.SocketType, process: trio.Process, relay: StderrRelay
    ) -> dict[str, Any]:
        """The successor's next message; if it exits first, why."""
        result: dict[str, Any] | None = None
        async with trio.open_nursery() as race:

            async def receive() -> None:
                nonlocal result
                with contextlib.suppress(HandoverError, OSError):
                    result = _unpack(await sock.recv(MAX_MESSAGE))
                race.cancel_scope.cancel()

            async def exited() -> None:
                await process.wait()
                race.cancel_scope.cancel()

            race.start_soon(receive)
            race.start_soon(exited)
        if result is not None:
            return result
        status = await process.wait()
        with trio.move_on_after(1):  # the last lines of its stderr
            await relay.done.wait()
        why = relay.last_words()
        raise HandoverError(
            f"the new program exited with status {status} before it took over"
            + (f": {why}" if why else "")
        )

    async def send(self, fds: Sequence[tuple[str, int]], state: dict[str, Any]) -> int:
        """Send the daemon's state and every fd; wait until the successor adopted them.

        Returns:
            How many sessions the successor adopted.

        Raises:
            HandoverError: anything went wrong (the successor is killed).
        """
        successor = self.successor
        assert successor is not None
        sock = successor.sock
        try:
            with trio.fail_after(ADOPT_TIMEOUT):
                await send_with_fds(sock, _pack({"type": "state", "count": len(fds), **state}), [])
                for start in range(0, len(fds), BATCH_FDS):
                    batch = fds[start : start + BATCH_FDS]
                    names = [name for name, _ in batch]
                    await send_with_fds(
                        sock, _pack({"type": "fds", "names": names}), [f for _, f in batch]
                    )
                await send_with_fds(sock, _pack({"type": "end"}), [])
                message = await self._receive_or_exit(sock, successor.process, successor.stderr)
        except OSError as exc:
            await self._kill(successor.process)
            raise HandoverError(f"cannot send the state to the new program: {exc}") from None
        except trio.TooSlowError:
            await self._kill(successor.process)
            raise HandoverError(
                f"the new program did not take over within {ADOPT_TIMEOUT:g} s"
            ) from None
        except HandoverError:
            await self._kill(successor.process)
            raise
        if message["type"] != "adopted":
            await self._kill(successor.process)
            raise HandoverError(f"the new program could not take over: {message.get('error')}")
        return int(message.get("sessions", 0))

    async def commit(self) -> None:
        """Tell the successor it owns everything now."""
        assert self.successor is not None
        try:
            await self.successor.sock.send(_pack({"type": "commit"}))
        except OSError as exc:
            # It got everything and said so: it takes over even without the word.
            log.warning("reexec.commit_unsent", error=exc.strerror)

    async def abort(self) -> None:
        """Kill the successor (before a commit) and forget it."""
        if self.successor is not None:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(0.5),
                contextlib.suppress(OSError),
            ):
                await self.successor.sock.send(_pack({"type": "abort"}))
            self.successor.sock.close()
            await self._kill(self.successor.process)
            self.successor = None

    async def wait_stderr_closed(self) -> None:
        """Relay what the successor logs until it takes over its real stderr (bounded)."""
        if self.successor is not None:
            with trio.move_on_after(STDERR_TIMEOUT):
                await self.successor.stderr.done.wait()

    @staticmethod
    async def _kill(process: trio.Process) -> None:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
            with trio.move_on_after(5):
                await process.wait()


class HandoverLink:
    """The successor's side: its end of the pair, from ``$CONSOLED_HANDOVER_FD``."""

    def __init__(self, fd: int) -> None:
        os.set_inheritable(fd, False)
        self.sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))

    @classmethod
    def from_env(cls, env: MutableMapping[str, str]) -> HandoverLink | None:
        value = env.pop(HANDOVER_ENV, None)
        if value is None or not value.isdigit():
            return None
        return cls(int(value))

    def close(self) -> None:
        self.sock.close()

    async def ready(self, version: str) -> None:
        await self.sock.send(
            _pack(
                {"type": "ready", "pid": os.getpid(), "version": version, "records": list(LOADABLE)}
            )
        )

    async def failed(self, error: str) -> None:
        with contextlib.suppress(OSError):
            await self.sock.send(_pack({"type": "failed", "error": error[:4000]}))

    async def receive_state(self) -> tuple[dict[str, Any], list[tuple[str, OwnedFd]]]:
        """The predecessor's state and every fd it holds, named (owned from now on).

        Raises:
            HandoverError: the transfer broke off (every fd received is closed).
        """
        named: list[tuple[str, OwnedFd]] = []
        try:
            message, fds = await receive_with_fds(self.sock, MAX_MESSAGE)
            for owner in fds:
                owner.close()
            state = _unpack(message)
            if state["type"] != "state":
                raise HandoverError(f"expected the state, got {state['type']!r}")
            while True:
                message, fds = await receive_with_fds(self.sock, MAX_MESSAGE)
                body = _unpack(message)
                if body["type"] == "end":
                    for owner in fds:
                        owner.close()
                    break
                names = body.get("names", [])
                if body["type"] != "fds" or len(names) != len(fds):
                    for owner in fds:
                        owner.close()
                    raise HandoverError("a batch of fds does not match its names")
                named.extend(zip(map(str, names), fds, strict=True))
            if len(named) != state.get("count"):
                raise HandoverError(f"expected {state.get('count')} fds, got {len(named)}")
        except BaseException:
            for _, owner in named:
                owner.close()
            raise
        return state, named

    async def adopted(self, sessions: int) -> None:
        await self.sock.send(_pack({"type": "adopted", "sessions": sessions}))

    async def wait_commit(self) -> str:
        """``commit``, ``abort``, or ``gone`` if the predecessor went away without a word."""
        try:
            message = _unpack(await self.sock.recv(MAX_MESSAGE))
        except (OSError, HandoverError):
            return "gone"
        return "commit" if message["type"] == "commit" else "abort"
