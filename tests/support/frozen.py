"""A real file system that can be frozen: writes to it block, as on a stalled disk.

An ext4 file system in a file, mounted on a loop device.  ``fsfreeze -f``
makes every write(2), create, rename and unlink on it wait in the kernel
(uninterruptibly, as on an NFS server that went away or a dying disk) until
``fsfreeze -u``.  Reads still work.  Needs root.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

#: Size of the file system; enough for the tests' logs.
SIZE = "64M"
#: Seconds after which it is thawed whatever the test does: code that blocks
#: on it where it must not (the event loop) then goes on, and the test fails
#: on what it measured instead of hanging.
WATCHDOG = 60.0


class FreezableDir:
    """The file system's root directory (``path``); freeze and thaw it at will."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frozen = False

    def freeze(self) -> None:
        subprocess.run(["fsfreeze", "-f", str(self.path)], check=True, timeout=30)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            subprocess.run(["fsfreeze", "-u", str(self.path)], check=True, timeout=30)
            self.frozen = False


@contextlib.contextmanager
def freezable_dir(base: Path) -> Iterator[FreezableDir]:
    """A :class:`FreezableDir` mounted under ``base``; thawed and unmounted on the way out.

    Its image and mount point live in ``base`` (which must not be on a
    file system that is frozen).
    """
    image = base / "disk.img"
    mountpoint = base / "disk"
    mountpoint.mkdir()
    subprocess.run(["truncate", "-s", SIZE, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
    # A loop device of its own, released when it is unmounted (autoclear).
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True, timeout=60)
    disk = FreezableDir(mountpoint)
    watchdog = threading.Timer(WATCHDOG, _thaw, (mountpoint,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield disk
    finally:
        watchdog.cancel()
        # Never leave it frozen: anything that touched it (pytest removing
        # the temporary directory) would wait for ever.
        _thaw(mountpoint)
        disk.frozen = False
        done = subprocess.run(
            ["umount", str(mountpoint)], check=False, capture_output=True, timeout=60
        )
        if done.returncode != 0:  # a process of the test still holds a file there
            subprocess.run(["umount", "-l", str(mountpoint)], check=True, timeout=60)
        image.unlink()


def _thaw(mountpoint: Path) -> None:
    subprocess.run(
        ["fsfreeze", "-u", str(mountpoint)], check=False, capture_output=True, timeout=30
    )
