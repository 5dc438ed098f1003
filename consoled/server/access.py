"""Who may do what on the control socket, decided from the peer's credentials.

Pure logic.  The daemon reads every control connection's peer with
``SO_PEERCRED`` and ``SO_PEERGROUPS`` and decides from its uid and groups, not
from the socket file's mode alone:

- root and the daemon's own user may do everything;
- members of ``--group`` may do everything but ``reexec`` (as docker's socket
  group: whoever can attach can type into a root shell, so this group is as
  good as root on a host of containers);
- members of ``--watch-group`` may list, read logs and attach ``--read-only``;
- anyone else is refused at once with ``permission_denied``.
"""

from __future__ import annotations

import enum

from ..io.peer import Credentials
from ..protocol import events as ev


class Access(enum.IntEnum):
    """What a client may do; higher includes lower."""

    WATCH = 1
    FULL = 2
    OWNER = 3


#: Requests a watch-only client may make (attach only when read-only).
_WATCH_REQUESTS: tuple[type[ev.Event], ...] = (
    ev.ListSessions,
    ev.GetInfo,
    ev.Logs,
    ev.Attach,
    ev.Wait,
)
#: What a request is called where people see it: the ``consoled`` command that makes it.
_COMMANDS: dict[type[ev.Event], str] = {
    ev.CreateSocket: "socket",
    ev.Remove: "rm",
    ev.Resize: "resize",
    ev.Rename: "rename",
    ev.Reexec: "reexec",
    ev.Attach: "attach",
    ev.ReportExit: "exec",
}
_WATCH_ONLY = "this client may only watch (consoled's --watch-group)"
_WATCH_WHAT = "ls, info, logs, wait and attach --read-only"


def access_for(
    creds: Credentials, *, daemon_uid: int, group: int | None, watch_group: int | None
) -> Access | None:
    """The access ``creds`` grant, or None for none at all."""
    if creds.uid in (0, daemon_uid):
        return Access.OWNER
    if group is not None and creds.in_group(group):
        return Access.FULL
    if watch_group is not None and creds.in_group(watch_group):
        return Access.WATCH
    return None


def refusal(access: Access, request: ev.Event) -> str | None:
    """Why a client with ``access`` may not make ``request``, or None if it may.

    The reason starts ``not allowed: COMMAND:``, naming the ``consoled``
    command (or the request type) that was refused.
    """
    command = _COMMANDS.get(type(request), request.TYPE)
    if isinstance(request, ev.CreateSocket) and request.exec_base is not None:
        command = "exec"
    what = f"not allowed: {command}"
    if isinstance(request, ev.Reexec) and access < Access.OWNER:
        return f"{what}: only root or the daemon's own user may reexec the daemon"
    if access >= Access.FULL:
        return None
    if isinstance(request, ev.Attach) and not request.read_only:
        return f"{what}: {_WATCH_ONLY}: attach with --read-only"
    if not isinstance(request, _WATCH_REQUESTS):
        return f"{what}: {_WATCH_ONLY}: {_WATCH_WHAT}"
    return None
