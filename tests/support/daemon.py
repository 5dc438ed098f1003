"""A real ``consoled serve`` process for the tests.

Readiness is awaited, not guessed: the daemon is started with
``$NOTIFY_SOCKET`` pointing at a datagram socket we hold, and says
``READY=1`` there once it serves, exactly as under systemd.  Its JSON log
lines are read as they come so a test can await a specific event.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

#: Seconds the daemon gets to become ready or to stop.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
#: Seconds the last lines of its stderr may take to be read after it exited.
LAST_LINES_TIMEOUT = 5.0


class DaemonProcess:
    """One daemon, its log events, and its control socket path.

    Args:
        state_dir: the daemon's --state-dir.
        args: extra ``serve`` options.
        nofile: start the daemon with this (soft, hard) RLIMIT_NOFILE, or
            inherit ours when None.
    """

    def __init__(
        self, state_dir: Path, args: Sequence[str] = (), *, nofile: tuple[int, int] | None = None
    ) -> None:
        self.state_dir = state_dir
        self.args = list(args)
        self.nofile = nofile
        self.events: list[dict[str, Any]] = []
        self.raw_stderr: list[str] = []
        self._changed = trio.Event()
        self._log_done = trio.Event()
        self.proc: trio.Process | None = None
        self.returncode: int | None = None

    @property
    def control_socket(self) -> str:
        return str(self.state_dir / "control.sock")

    @property
    def console_socket(self) -> str:
        return str(self.state_dir / "console.sock")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CONSOLED_STATE_DIR"] = str(self.state_dir)
        env.pop("NOTIFY_SOCKET", None)
        return env

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the daemon and wait until it says READY=1."""
        notify_path = str(self.state_dir) + ".notify"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notify_path)
        notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await notify.bind(notify_path)
        env = self.env()
        env["NOTIFY_SOCKET"] = notify_path
        argv = [
            sys.executable, "-m", "consoled", "serve", "--state-dir", str(self.state_dir),
            *self.args,
        ]  # fmt: skip
        nofile = self.nofile

        def set_limits() -> None:  # in the child, between fork and exec
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = await trio.lowlevel.open_process(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=None if nofile is None else set_limits,
        )
        nursery.start_soon(self._read_log)
        try:
            with trio.fail_after(START_TIMEOUT):
                async with trio.open_nursery() as race:

                    async def ready() -> None:
                        while b"READY=1" not in (await notify.recv(4096)).split(b"\n"):
                            pass
                        race.cancel_scope.cancel()

                    async def died() -> None:
                        assert self.proc is not None
                        rc = await self.proc.wait()
                        with trio.move_on_after(2):
                            await self._log_done.wait()  # the last lines of stderr
                        raise AssertionError(
                            f"daemon exited {rc} before it was ready; stderr:\n"
                            + "".join(self.raw_stderr)
                        )

                    race.start_soon(ready)
                    race.start_soon(died)
        except trio.TooSlowError:
            raise AssertionError(
                f"daemon not ready within {START_TIMEOUT} s; stderr:\n" + "".join(self.raw_stderr)
            ) from None
        finally:
            notify.close()
            os.unlink(notify_path)
        # daemon.ready is logged before READY=1 is sent, but written by the
        # daemon's log thread: it may come a little later.
        await self.wait_event("daemon.ready", START_TIMEOUT)

    async def _read_log(self) -> None:
        try:
            await self._read_lines()
        finally:
            self._log_done.set()

    async def _read_lines(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        buf = b""
        async for chunk in self.proc.stderr:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                self.raw_stderr.append(text + "\n")
                try:
                    event = json.loads(text)
                except ValueError:
                    event = {"event": "<unparsed>", "text": text}
                self.events.append(event)
            self._changed.set()
            self._changed = trio.Event()

    def find(self, event: str, **match: object) -> list[dict[str, Any]]:
        return [
            e for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]  # fmt: skip

    async def wait_event(
        self, event: str, timeout: float = 15.0, count: int = 1, **match: object
    ) -> dict[str, Any]:
        """Wait until ``count`` log events named ``event`` with these fields were logged."""
        with trio.move_on_after(timeout):
            while len(self.find(event, **match)) < count:
                await self._changed.wait()
            return self.find(event, **match)[count - 1]
        raise AssertionError(
            f"no {event} {match} within {timeout} s; events so far:\n"
            + "".join(self.raw_stderr[-40:])
        )

    def internal_errors(self) -> list[dict[str, Any]]:
        return [
            e for e in self.events
            if e.get("event", "").endswith("internal_error") or e.get("event") == "session.failed"
            or e.get("event") == "<unparsed>"
        ]  # fmt: skip

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the daemon and wait for it to exit; kill it if it hangs."""
        if self.proc is None:
            return 0
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        with trio.move_on_after(STOP_TIMEOUT):
            self.returncode = await self.proc.wait()
        if self.returncode is None:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"daemon did not stop within {STOP_TIMEOUT} s of {sig}")
        with trio.move_on_after(LAST_LINES_TIMEOUT):
            await self._log_done.wait()  # what it wrote last, read after its exit
        return self.returncode
