"""Minimal OCI bundles from busybox, for real runc and crun containers.

The rootfs is built once (busybox and its applet links) and shared read-only
by every bundle; each container gets its own bundle directory whose
config.json comes from ``runc spec``, with a terminal, the test's command, a
tmpfs on /tmp and a host directory bind-mounted read-write at /out for
marker files.

``python -m tests.support.bundle DIR`` builds the rootfs into DIR (.ci/run
does this once); the tests use $CONSOLED_TEST_ROOTFS when it is set.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def find_busybox() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        if os.path.exists(candidate):
            return Path(candidate)
    raise RuntimeError("busybox not found: install busybox-static")


def build_rootfs(dest: Path) -> Path:
    """Build a busybox rootfs in ``dest/rootfs`` (idempotent) and return it."""
    rootfs = dest / "rootfs"
    marker = dest / ".complete"
    if marker.exists():
        return rootfs
    busybox = find_busybox()
    bindir = rootfs / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for sub in ("proc", "sys", "dev", "tmp", "etc", "root", "out"):
        (rootfs / sub).mkdir(exist_ok=True)
    shutil.copy2(busybox, bindir / "busybox")
    applets = subprocess.run(
        [str(bindir / "busybox"), "--list"], capture_output=True, check=True, text=True
    ).stdout.split()
    for applet in applets:
        link = bindir / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    spec_dir = Path(tempfile.mkdtemp(prefix="spec-"))
    try:
        subprocess.run(["runc", "spec"], cwd=spec_dir, check=True)
        shutil.copy2(spec_dir / "config.json", dest / "config.template.json")
    finally:
        shutil.rmtree(spec_dir)
    marker.touch()
    return rootfs


def make_bundle(
    base: Path,
    bundle: Path,
    args: Sequence[str],
    *,
    out_dir: Path,
    terminal: bool = True,
    env: Sequence[str] = (),
) -> Path:
    """Write a bundle at ``bundle`` running ``args`` on the shared rootfs."""
    template: dict[str, Any] = json.loads((base / "config.template.json").read_text())
    config = copy.deepcopy(template)
    config["process"]["terminal"] = terminal
    config["process"]["args"] = list(args)
    config["process"]["env"] = [*config["process"]["env"], *env]
    config["root"] = {"path": str(base / "rootfs"), "readonly": True}
    config["hostname"] = "consoled-test"
    config["mounts"].append(
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
    )
    config["mounts"].append(
        {"destination": "/out", "type": "bind", "source": str(out_dir), "options": ["rbind", "rw"]}
    )
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/consoled-test-rootfs")
    target.mkdir(parents=True, exist_ok=True)
    print(build_rootfs(target))
