"""Run a command as a child subreaper and exit as the last of its descendants did.

``consoled reexec`` starts a successor daemon, and the predecessor exits: the
successor is orphaned.  The tests start the daemon under this wrapper, which
adopts such orphans (``PR_SET_CHILD_SUBREAPER``), so that the test can still
learn how the daemon finally exited: the wrapper waits for every descendant
it adopts and exits with the status of the last one (re-raising its signal),
just as a service manager tracks a ``MAINPID`` that changes.

Usage: ``python -m tests.support.reaper COMMAND [ARGS...]``.  Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    # Signals meant for the daemon go to it by pid; the wrapper only waits.
    for ignored in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(ignored, signal.SIG_IGN)
    status = 0
    while True:
        try:
            _, status = os.wait()
        except ChildProcessError:
            break
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
