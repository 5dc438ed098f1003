"""The ``consoled`` command line.

Only ``serve`` imports trio and structlog (lazily); every other command is a
thin, fast client of the control protocol.  Exit status: 0 success, 1 an
error (with a one-line message on stderr, never a traceback), 2 usage.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..client.conn import ClientError
from ..protocol import ProtocolError
from .common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, UsageError, quiet_stdout
from .parser import build_parser

__all__ = ["build_parser", "main"]


def _open_standard_fds() -> set[int]:
    """Open /dev/null on whichever of fds 0, 1 and 2 is closed; return those.

    A closed standard fd is the lowest free one: whatever the program opens
    next takes it (the daemon's event loop, a socket, a pty master), and what
    is meant for stderr is written there.  Python leaves ``sys.stdin`` and the
    like None for a closed one; they are made again on /dev/null.
    """
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        got = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if got != fd:
            os.dup2(got, fd)
            os.close(got)
    if 0 in closed:
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - for the whole run
    if 1 in closed:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if 2 in closed:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    return closed


def main(argv: Sequence[str] | None = None) -> int:
    closed = _open_standard_fds()
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "state_dir"):
        args.state_dir = None
    if 1 in closed and args.command != "serve":
        print("consoled: standard output is closed", file=sys.stderr)
        return EXIT_ERROR
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # here, where a reader that has gone is handled
        return status
    except UsageError as exc:
        command = getattr(args, "usage_of", parser)
        command.print_usage(sys.stderr)
        print(f"{command.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `consoled ls | head -1`: the reader has all it wanted.
        quiet_stdout()
        return EXIT_OK
    except ClientError as exc:
        print(f"consoled: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except ProtocolError as exc:
        print(f"consoled: protocol error talking to the daemon: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # The machine said no (a full disk, a missing directory): say what, not where.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"consoled: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
