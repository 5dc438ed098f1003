"""A Python that a systemd service running as an unprivileged user can execute.

The tests' own interpreter may live where other users cannot reach (a pyenv
build under /root, mode 0700), so services started by a test user manager
(see :mod:`tests.support.usermanager`) run from a virtualenv built with
Debian's ``/usr/bin/python3`` under ``/var/tmp``, world-readable.

:func:`venv_python` installs a source tree into such a venv (``pip install
DIR``, not editable, so a later change to the tree does not leak into a
running service) and returns its interpreter.  Venvs are cached by a hash of
the files that make up the installed project, so the suite builds one only
when those files change; tests of upgrades install a modified copy of the
tree and get a second venv beside the first.  One lock file serialises
builds between concurrent test sessions, and a venv counts as built only
once its completion marker exists, so a build that was interrupted is
thrown away and redone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

#: The interpreter the venvs are built from: Debian's, readable by everyone.
BASE_PYTHON = Path("/usr/bin/python3")
#: Where the venvs live: ``VENV_ROOT/consoled-sd-venv-<key>``.
VENV_ROOT = Path("/var/tmp")
VENV_PREFIX = "consoled-sd-venv-"
LOCK_PATH = VENV_ROOT / "consoled-sd-venv.lock"
MARKER = ".consoled-complete"
#: What of a source tree is installed, and so what the cache key covers.
PROJECT_FILES = (
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "MANIFEST.in",
    "README.md",
    "LICENSE",
    "consoled",
)
_SKIP_DIRS = frozenset({"__pycache__", "build", "dist"})
#: Seconds to wait for another session's build, and for one pip install.
LOCK_TIMEOUT = 900.0
INSTALL_TIMEOUT = 600.0
#: Venvs not used for this long are removed when another one is built.
STALE_AFTER = 3 * 24 * 3600.0


class VenvError(Exception):
    """The venv could not be built (missing base interpreter, pip failed, ...)."""


def _project_files(tree: Path, include: Sequence[str]) -> Iterator[Path]:
    """The files of ``tree`` under the ``include`` paths, in a stable order."""
    for name in sorted(include):
        top = tree / name
        if top.is_file():
            yield top
        elif top.is_dir():
            for dirpath, dirnames, filenames in os.walk(top):
                # Caches (.ruff_cache, __pycache__) and build output are not the project.
                dirnames[:] = sorted(
                    d for d in dirnames
                    if d not in _SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info")
                )  # fmt: skip
                for filename in sorted(filenames):
                    # A built extension (the native relay, built in place for the
                    # suite's interpreter) is not the project: pip builds its own.
                    if not filename.startswith(".") and not filename.endswith(
                        (".pyc", ".pyo", ".so")
                    ):
                        yield Path(dirpath) / filename


def tree_key(tree: Path, include: Sequence[str] = PROJECT_FILES) -> str:
    """A short hash of the base interpreter and the project files of ``tree``.

    Args:
        tree: the source tree (a directory with a ``pyproject.toml``).
        include: the paths, relative to ``tree``, that make up the project.

    Returns:
        16 hex digits; equal for trees that would install the same files.
    """
    digest = hashlib.sha256()
    digest.update(os.path.realpath(BASE_PYTHON).encode() + b"\0")
    for path in _project_files(tree, include):
        mode = path.stat().st_mode
        digest.update(f"{path.relative_to(tree)}\0{bool(mode & stat.S_IXUSR)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _build_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the exclusive build lock; wait at most ``timeout`` seconds for it."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # flock cannot be awaited with a bound; another session is
                # building, which takes seconds, so a short poll is cheap.
                if time.monotonic() > deadline:
                    raise VenvError(f"{LOCK_PATH} still locked after {timeout} s") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def _run(argv: Sequence[str], what: str, timeout: float = INSTALL_TIMEOUT) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )
    if result.returncode != 0:
        raise VenvError(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def _make_world_readable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                mode = os.lstat(path).st_mode
                extra = stat.S_IROTH | stat.S_IRGRP
                if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
                    extra |= stat.S_IXOTH | stat.S_IXGRP
                os.chmod(path, stat.S_IMODE(mode) | extra)
    os.chmod(root, 0o755)


def _copy_project(tree: Path, include: Sequence[str], dest: Path) -> None:
    """Copy the project files only: pip builds in the tree it is given."""
    for path in _project_files(tree, include):
        target = dest / path.relative_to(tree)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def _prune(keep: Iterable[Path]) -> None:
    """Remove venvs nobody has used for STALE_AFTER seconds (under the lock)."""
    now = time.time()
    kept = set(keep)
    for venv in VENV_ROOT.glob(VENV_PREFIX + "*"):
        if venv in kept or not venv.is_dir():
            continue
        marker = venv / MARKER
        with contextlib.suppress(FileNotFoundError):
            if now - marker.stat().st_mtime < STALE_AFTER:
                continue
        shutil.rmtree(venv, ignore_errors=True)


def venv_python(tree: Path, *, include: Sequence[str] = PROJECT_FILES) -> Path:
    """The interpreter of a world-readable venv with ``tree`` installed.

    Builds the venv on first use (``/usr/bin/python3 -m venv``, then ``pip
    install`` of a copy of the project files, dependencies from PyPI) and
    reuses it while those files are unchanged.  Blocking: call it from a
    synchronous (session) fixture or through ``trio.to_thread.run_sync``.

    Args:
        tree: the source tree to install, for example the checkout itself or
            a modified copy of it.
        include: the paths, relative to ``tree``, that make up the project.

    Returns:
        ``/var/tmp/consoled-sd-venv-<key>/bin/python``.

    Raises:
        VenvError: Debian's python3 or its venv module is missing (run
            ``scripts/setup``), or pip failed.
    """
    if not os.access(BASE_PYTHON, os.X_OK):
        raise VenvError(f"{BASE_PYTHON} is missing: run scripts/setup (installs python3-venv)")
    venv = VENV_ROOT / (VENV_PREFIX + tree_key(tree, include))
    python = venv / "bin" / "python"
    marker = venv / MARKER
    if marker.exists():
        marker.touch()  # in use: not stale
        return python
    with _build_lock():
        if marker.exists():  # another session built it while we waited
            marker.touch()
            return python
        shutil.rmtree(venv, ignore_errors=True)  # an interrupted build
        _run([str(BASE_PYTHON), "-m", "venv", str(venv)], f"{BASE_PYTHON} -m venv")
        with tempfile.TemporaryDirectory(prefix="consoled-sd-src-") as src:
            _copy_project(tree, include, Path(src))
            _run(
                [str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                 "-q", src],
                f"pip install {tree}",
            )  # fmt: skip
        _make_world_readable(venv)
        marker.touch()
        _prune(keep=[venv])
    return python
