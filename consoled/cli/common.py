"""What every command shares: exit statuses, usage errors, sizes, the state directory."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys

from ..client.conn import Client

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

_SIZE_UNITS = {
    "": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
}


class UsageError(Exception):
    pass


def parse_bytes(text: str) -> int:
    """``4096``, ``512K``, ``1MiB``... as a byte count (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use a byte count such as 65536, 512K or 4MiB"
        )
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_lines(text: str) -> int:
    """A count of lines: a whole number, 0 or more."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"invalid line count {text!r}: use a number such as 100")
    return int(text)


def default_state_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    if env.get("CONSOLED_STATE_DIR"):
        return env["CONSOLED_STATE_DIR"]
    if os.geteuid() == 0:
        return "/run/consoled"
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if not runtime_dir:
        raise UsageError(
            "no state directory: pass --state-dir, or set CONSOLED_STATE_DIR or XDG_RUNTIME_DIR"
        )
    return os.path.join(runtime_dir, "consoled")


def state_dir_of(args: argparse.Namespace) -> str:
    return os.path.abspath(args.state_dir or default_state_dir())


def connect(args: argparse.Namespace) -> Client:
    return Client(os.path.join(state_dir_of(args), "control.sock"))


def quiet_stdout() -> None:
    """Whoever read our stdout has gone: let nothing more be written, nor fail, there."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
