"""``consoled serve``: the daemon (trio, structlog and the server are imported here only)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .common import EXIT_ERROR, EXIT_OK, UsageError, state_dir_of


def _group_id(text: str | None) -> int | None:
    if text is None:
        return None
    import grp

    try:
        return int(text) if text.isdigit() else grp.getgrnam(text).gr_gid
    except KeyError:
        raise UsageError(f"no group named {text!r}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    import structlog
    import trio

    from ..server import logconfig
    from ..server.config import DaemonConfig, Limits
    from ..server.daemon import IGNORED_SIGNALS, serve
    from ..server.handover import HandoverError
    from ..server.sizepolicy import SizePolicy
    from ..server.statedir import StartupError

    # A closed terminal, a log rotation or a "reopen your logs" must not stop
    # every console (the daemon logs them while it serves).  A write past
    # RLIMIT_FSIZE must fail with EFBIG, not kill the daemon and hang up every
    # terminal it holds (CPython ignores SIGXFSZ at start-up already; an
    # embedding interpreter might not).
    for signum in (*IGNORED_SIGNALS, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_IGN)
    sink = logconfig.configure(args.log_format, args.log_level, journal_socket=args.journal_socket)
    config = DaemonConfig(
        state_dir=Path(state_dir_of(args)),
        scrollback=args.scrollback,
        max_exited=args.max_exited,
        intake_timeout=args.intake_timeout,
        client_queue=args.client_queue,
        size_policy=SizePolicy(args.size_policy),
        log_dir=None if args.log_dir is None else Path(os.path.abspath(args.log_dir)),
        log_file_format=args.log_format_file,
        log_max_size=args.log_max_size,
        log_max_files=args.log_max_files,
        shutdown_grace=args.shutdown_grace,
        group=_group_id(args.group),
        watch_group=_group_id(args.watch_group),
        fd_store=not args.no_fd_store,
        terminal_state=not args.no_terminal_state,
        native_relay=args.relay == "native",
        limits=Limits(
            connections=args.max_connections,
            idle_timeout=args.idle_timeout,
            sessions=args.max_sessions,
            waiting=args.max_waiting,
            clients_per_session=args.max_clients_per_session,
            buffered=args.max_buffered,
        ),
    )
    status, problem = EXIT_OK, None
    try:
        trio.run(serve, config)
    except (StartupError, HandoverError) as exc:
        status, problem = EXIT_ERROR, f"consoled: {exc}"
    except Exception as exc:
        # A bug: the last words go where every event goes, as an event (with
        # the traceback), not as a raw traceback on a stderr that may be broken.
        structlog.get_logger("consoled.daemon").critical("daemon.crashed", exc_info=exc)
        status = EXIT_ERROR
    finally:
        sink.close()  # bounded: the last events ("daemon.stopped") normally make it out
    if problem is not None:
        with contextlib.suppress(OSError):
            print(problem, file=sys.stderr, flush=True)
    return status
