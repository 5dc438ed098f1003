"""A private tmux server, driven from trio: a real terminal for attach tests.

Each test gets its own server (socket in a short directory), killed however
the test ends.  A pane is a real terminal emulator: what it shows
(``capture-pane``) and the modes it is in (``display-message`` formats) are
what a user would see.  tmux draws asynchronously, so every look is a poll,
bounded by :data:`TMUX_WAIT`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

TMUX = shutil.which("tmux")
#: Bound on one tmux command, and on waiting for a pane to show something.
TMUX_WAIT = 15.0
#: What tmux 3.3 says of a pane's modes (it has no format for bracketed paste).
PANE_FORMAT = (
    "cursor=#{cursor_x},#{cursor_y} alt=#{alternate_on} visible=#{cursor_flag}"
    " mouse=#{mouse_standard_flag}/#{mouse_button_flag}/#{mouse_all_flag}/#{mouse_sgr_flag}"
    " keys=#{keypad_cursor_flag}/#{keypad_flag}"
    " region=#{scroll_region_upper},#{scroll_region_lower} title=#{pane_title}"
)


def parse_flags(text: str) -> dict[str, str]:
    """``display-message -p PANE_FORMAT`` as a dict."""
    head, title = text.rstrip("\n").split(" title=", 1)
    flags = dict(item.split("=", 1) for item in head.split(" "))
    flags["title"] = title
    return flags


class TmuxServer:
    """A tmux server of our own; ``await server.kill()`` when done."""

    def __init__(self, tmp: Path) -> None:
        if TMUX is None:
            raise RuntimeError("tmux is not installed")
        self.socket = tmp / "tmux.sock"

    async def run(self, *args: str) -> str:
        assert TMUX is not None
        with trio.fail_after(TMUX_WAIT):
            proc = await trio.run_process(
                [TMUX, "-S", str(self.socket), "-f", "/dev/null", *args],
                capture_stdout=True,
                capture_stderr=True,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        if proc.returncode != 0:
            raise AssertionError(f"tmux {args[0]} failed: {proc.stderr.decode().strip()}")
        return proc.stdout.decode()

    async def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        rows: int,
        cols: int,
        env: Mapping[str, str] | None = None,
        keep: bool = False,
    ) -> None:
        """A new window ``name`` of ``rows`` x ``cols`` running ``argv``.

        With ``keep`` the pane stays once the program exits, and shows
        ``exited=STATUS``: its modes can still be looked at.
        """
        command = shlex.join(argv)
        if env:
            command = shlex.join(["env", *(f"{k}={v}" for k, v in env.items())]) + " " + command
        if keep:
            command = f"{command}; echo exited=$?; exec sleep 600"
        await self.run(
            "new-session", "-d", "-s", name, "-x", str(cols), "-y", str(rows), command
        )  # fmt: skip

    async def keys(self, name: str, *keys: str, literal: bool = False) -> None:
        """``send-keys``: tmux key names (``C-p``, ``Enter``), or text with ``literal``."""
        await self.run("send-keys", "-t", name, *(["-l"] if literal else []), *keys)

    async def text(self, name: str, *, escapes: bool = False) -> str:
        """What the pane shows now (``-e``: with attributes)."""
        return await self.run("capture-pane", "-p", "-t", name, *(["-e"] if escapes else []))

    async def history(self, name: str) -> str:
        """Everything the pane holds: its history and its screen."""
        return await self.run("capture-pane", "-p", "-S", "-", "-E", "-", "-t", name)

    async def flags(self, name: str) -> dict[str, str]:
        return parse_flags(await self.run("display-message", "-p", "-t", name, PANE_FORMAT))

    async def size(self, name: str) -> tuple[int, int]:
        out = await self.run("display-message", "-p", "-t", name, "#{pane_height} #{pane_width}")
        rows, cols = out.split()
        return int(rows), int(cols)

    async def wait_text(self, name: str, condition: Callable[[str], bool], what: str) -> str:
        """Poll the pane until ``condition(text)``; the text then."""
        text = ""
        with trio.move_on_after(TMUX_WAIT):
            while True:
                text = await self.text(name)
                if condition(text):
                    return text
                await trio.sleep(0.05)
        raise AssertionError(f"pane {name} never showed {what}; it shows:\n{text}")

    async def settled(self, name: str) -> str:
        """The pane's text with attributes, once two looks in a row agree."""
        previous = None
        with trio.move_on_after(TMUX_WAIT):
            while True:
                text = await self.text(name, escapes=True)
                if text == previous:
                    return text
                previous = text
                await trio.sleep(0.2)
        raise AssertionError(f"pane {name} never settled")

    async def kill(self) -> None:
        assert TMUX is not None
        with trio.CancelScope(shield=True), trio.move_on_after(TMUX_WAIT):
            await trio.run_process(
                [TMUX, "-S", str(self.socket), "kill-server"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if self.socket.exists():
            os.unlink(self.socket)
