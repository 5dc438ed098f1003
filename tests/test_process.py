"""The process on a terminal: its leader's pidfd, and its exit status (consoled/io/process.py)."""

from __future__ import annotations

import os

import trio
import trio.testing

from consoled.io.fds import OwnedFd
from consoled.io.process import Leader


async def test_waiting_for_a_leader_that_is_let_go_gives_no_status() -> None:
    # Was: `rm --force` while the pump waited for the leader's status (after the
    # terminal hung up) closed the pidfd under it, and the session "failed" with
    # ClosedResourceError, an internal error in the daemon's log.
    proc = await trio.lowlevel.open_process(["sleep", "30"])
    try:
        leader = Leader(proc.pid, OwnedFd(os.pidfd_open(proc.pid), "pidfd"), None)
        found: list[int | None] = []
        async with trio.open_nursery() as nursery:

            async def wait() -> None:
                found.append(await leader.wait_status(10))

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            leader.close()  # what Session.exit does
        assert found == [None]
    finally:
        proc.kill()
        await proc.wait()


async def test_a_reaped_leaders_status_is_its_exit_code() -> None:
    # Was: the status of a process already reaped came from the wrong field of
    # the kernel's pidfd_info (the fsgid, not the exit code): 0 for root.
    proc = await trio.lowlevel.open_process(["sh", "-c", "exit 3"])
    leader = Leader(proc.pid, OwnedFd(os.pidfd_open(proc.pid), "pidfd"), None)
    try:
        assert await proc.wait() == 3  # reaped: no zombie left to read
        status = await leader.wait_status(10)
        assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3
    finally:
        leader.close()


async def test_a_handed_over_pidfd_is_adopted_and_anything_else_refused() -> None:
    proc = await trio.lowlevel.open_process(["sleep", "30"])
    try:
        adopted = Leader.adopt(OwnedFd(os.pidfd_open(proc.pid), "pidfd"))
        assert adopted is not None and adopted.pid == proc.pid
        adopted.close()
        read, write = os.pipe()
        os.close(write)
        not_a_pidfd = OwnedFd(read, "pipe")
        assert Leader.adopt(not_a_pidfd) is None
        assert not_a_pidfd.closed
    finally:
        proc.kill()
        await proc.wait()
