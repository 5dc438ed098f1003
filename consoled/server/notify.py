"""The systemd notification protocol (sd_notify), without libsystemd.

With ``Type=notify`` systemd sets ``$NOTIFY_SOCKET``; we send ``READY=1`` once
every socket is listening and ``STOPPING=1`` when shutting down.  Tests use
the same socket to learn, without polling, when the daemon is ready.
"""

from __future__ import annotations

import os
import socket


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send ``state`` (``KEY=VALUE`` lines) to ``$NOTIFY_SOCKET``.

    Returns:
        True if a notification socket was set and the message was sent.
    """
    path = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False
    return True
